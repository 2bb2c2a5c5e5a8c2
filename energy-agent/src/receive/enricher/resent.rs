//! The energy recently given to each request span, so that a copy of it sent again (an
//! SDK retrying an export whose answer it did not see) carries the same figures as the
//! first, without claiming its process's energy a second time. Bounded: two
//! generations, each of at most `capacity` spans and `max_age` long.

use std::time::{Duration, Instant};

use foldhash::HashMap;

use super::traces::{SpanId, TraceId};
use crate::requests::SpanEnergy;

/// Energies given, by (trace, span).
pub(super) struct Given {
    current: HashMap<(TraceId, SpanId), SpanEnergy>,
    previous: HashMap<(TraceId, SpanId), SpanEnergy>,
    started: Instant,
    capacity: usize,
    max_age: Duration,
}

impl Given {
    /// Remembers at least the last `capacity` spans given energy, or those of the last
    /// `max_age`, whichever is fewer.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            started: Instant::now(),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// Records the energy a span was given at `now`.
    pub fn insert(&mut self, id: (TraceId, SpanId), energy: SpanEnergy, now: Instant) {
        if self.current.len() >= self.capacity || now.duration_since(self.started) >= self.max_age {
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
        self.current.insert(id, energy);
    }

    /// The energy the span was given, if remembered.
    pub fn get(&self, id: (TraceId, SpanId)) -> Option<&SpanEnergy> {
        self.current.get(&id).or_else(|| self.previous.get(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy(j: f64) -> SpanEnergy {
        SpanEnergy {
            carbon_g: j,
            ..Default::default()
        }
    }

    #[test]
    fn remembers_two_generations() {
        let now = Instant::now();
        let mut g = Given::new(2, Duration::from_secs(60));
        g.insert((1, 1), energy(1.0), now);
        g.insert((1, 2), energy(2.0), now);
        g.insert((1, 3), energy(3.0), now); // 1 and 2 become the previous generation
        assert_eq!(g.get((1, 1)).map(|e| e.carbon_g), Some(1.0));
        g.insert((1, 4), energy(4.0), now);
        g.insert((1, 5), energy(5.0), now); // 1 and 2 are forgotten
        assert!(g.get((1, 1)).is_none() && g.get((1, 2)).is_none());
        assert_eq!(g.get((1, 3)).map(|e| e.carbon_g), Some(3.0));
        // Age rotates too.
        let later = now + Duration::from_secs(61);
        g.insert((1, 6), energy(6.0), later);
        g.insert((1, 7), energy(7.0), later + Duration::from_secs(61));
        assert!(g.get((1, 5)).is_none());
        assert_eq!(g.get((1, 6)).map(|e| e.carbon_g), Some(6.0));
    }
}
