//! The agent's one clock: CLOCK_MONOTONIC nanoseconds, the clock `bpf_ktime_get_ns` uses.
//! Wall time appears only at export, through [`WallClock`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts monotonic timestamps to wall-clock time, anchored once at start.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    wall_at_anchor: SystemTime,
    mono_at_anchor: u64,
}

impl WallClock {
    /// Anchors the conversion at this instant.
    pub fn now() -> Self {
        Self {
            mono_at_anchor: monotonic_ns(),
            wall_at_anchor: SystemTime::now(),
        }
    }

    /// Wall-clock time of a monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_at_anchor {
            self.wall_at_anchor + Duration::from_nanos(mono_ns - self.mono_at_anchor)
        } else {
            self.wall_at_anchor - Duration::from_nanos(self.mono_at_anchor - mono_ns)
        }
    }

    /// Unix time in nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        self.wall(mono_ns)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Monotonic timestamp of a Unix time in nanoseconds.
    pub fn mono_ns(&self, unix_ns: u64) -> u64 {
        let anchor = self.unix_ns(self.mono_at_anchor);
        (self.mono_at_anchor as i128 + unix_ns as i128 - anchor as i128).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trips() {
        let clock = WallClock::now();
        let mono = monotonic_ns();
        let unix = clock.unix_ns(mono);
        assert_eq!(clock.mono_ns(unix), mono);
        assert!(clock.unix_ns(mono + 1_000) - unix == 1_000);
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }
}
