//! Recent spans' data by (trace, span), forgotten a generation at a time (no sorting, no
//! per-span timestamps): at least the last `capacity` spans or the last `max_age`,
//! whichever are fewer, and at most twice that.

use std::time::{Duration, Instant};

// Ids come from senders: a keyed hasher (random per process) that is fast on
// fixed-size keys.
use foldhash::HashMap;

use super::traces::{SpanId, TraceId};

/// Values by (trace, span), in two generations.
pub(super) struct Generations<V> {
    current: HashMap<(TraceId, SpanId), V>,
    previous: HashMap<(TraceId, SpanId), V>,
    started: Instant,
    /// Spans per generation.
    capacity: usize,
    /// Longest a generation lasts.
    max_age: Duration,
}

impl<V: Default> Generations<V> {
    /// Keeps `capacity` spans per generation, each generation at most `max_age` long.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            started: Instant::now(),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// Starts a new generation (forgetting the previous one) when the current one is
    /// full or old at `now`; call before adding.
    pub fn rotate(&mut self, now: Instant) {
        if self.current.len() >= self.capacity || now.duration_since(self.started) >= self.max_age {
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
    }

    /// The value, if remembered.
    pub fn get(&self, key: (TraceId, SpanId)) -> Option<&V> {
        self.current.get(&key).or_else(|| self.previous.get(&key))
    }

    /// The value (default when new), brought into the current generation.
    pub fn entry(&mut self, key: (TraceId, SpanId)) -> &mut V {
        if !self.current.contains_key(&key) {
            let old = self.previous.remove(&key).unwrap_or_default();
            self.current.insert(key, old);
        }
        self.current.get_mut(&key).expect("just inserted")
    }

    /// Spans remembered (both generations).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(g: &mut Generations<u32>, span: SpanId, v: u32, now: Instant) {
        g.rotate(now);
        *g.entry((1, span)) = v;
    }

    #[test]
    fn remembers_two_generations_by_count_and_age() {
        let now = Instant::now();
        let mut g = Generations::new(2, Duration::from_secs(60));
        add(&mut g, 1, 10, now);
        add(&mut g, 2, 20, now);
        add(&mut g, 3, 30, now); // 1 and 2 become the previous generation
        assert_eq!(g.get((1, 1)), Some(&10));
        add(&mut g, 4, 40, now);
        add(&mut g, 5, 50, now); // 1 and 2 are forgotten
        assert!(g.get((1, 1)).is_none() && g.get((1, 2)).is_none());
        assert_eq!(g.get((1, 3)), Some(&30));
        assert!(g.len() <= 4);
        // Age rotates too.
        let later = now + Duration::from_secs(61);
        add(&mut g, 6, 60, later);
        add(&mut g, 7, 70, later + Duration::from_secs(61));
        assert!(g.get((1, 5)).is_none());
        assert_eq!(g.get((1, 6)), Some(&60));
    }

    #[test]
    fn an_entry_touched_is_brought_forward() {
        let now = Instant::now();
        let mut g = Generations::new(2, Duration::from_secs(60));
        add(&mut g, 1, 10, now);
        add(&mut g, 2, 20, now);
        add(&mut g, 3, 30, now); // 1 and 2 are previous
        *g.entry((1, 1)) += 1; // 1 is current again, beside 3
        add(&mut g, 4, 40, now); // 3 and 1 are previous, 2 forgotten
        assert_eq!(g.get((1, 1)), Some(&11));
        assert!(g.get((1, 2)).is_none());
    }
}
