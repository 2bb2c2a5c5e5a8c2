//! The agent's one clock: CLOCK_MONOTONIC nanoseconds, the clock `bpf_ktime_get_ns` uses.
//! Wall time appears only at export, through [`WallClock`].
//!
//! CLOCK_MONOTONIC never jumps, but its distance to CLOCK_REALTIME does: an NTP or
//! manual step moves the wall clock alone, and a suspend stops the monotonic clock
//! while the wall clock goes on (a VM pause does either, by hypervisor). Intervals meet
//! span timestamps, which applications take from CLOCK_REALTIME, so the conversion is
//! re-anchored every interval ([`WallClock::reanchor`]) rather than fixed at start.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Offset changes smaller than this are read jitter, not a step: a reading of the two
/// clocks is good to well under a microsecond, and NTP daemons step only past 128 ms
/// (ntpd) or a configured threshold (chrony's `makestep`, typically 1 s).
pub const STEP_TOLERANCE_NS: i64 = 1_000_000;

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// One reading of both clocks: (monotonic ns, Unix ns), the realtime read between two
/// monotonic reads and paired with their midpoint; the tightest of three tries.
pub fn read_clocks() -> (u64, u64) {
    let mut best = (i64::MAX, 0, 0);
    for _ in 0..3 {
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        if after - before < best.0 {
            best = (after - before, before + (after - before) / 2, real);
        }
    }
    (best.1 as u64, best.2.max(0) as u64)
}

/// Converts monotonic timestamps to wall-clock time and back. Clones share one anchor
/// (the Unix − monotonic offset), so re-anchoring it in the interval loop moves every
/// exporter holding a clone at once.
#[derive(Clone, Debug)]
pub struct WallClock {
    offset_ns: Arc<AtomicI64>,
}

impl WallClock {
    /// Anchored at this instant.
    pub fn now() -> Self {
        let (mono_ns, unix_ns) = read_clocks();
        Self::at(mono_ns, unix_ns)
    }

    /// Anchored at a given reading of the clocks: `unix_ns` was the wall time when the
    /// monotonic clock read `mono_ns`.
    pub fn at(mono_ns: u64, unix_ns: u64) -> Self {
        Self {
            offset_ns: Arc::new(AtomicI64::new(offset(mono_ns, unix_ns))),
        }
    }

    /// Re-reads the clocks; when the wall clock stepped (or the monotonic clock stood
    /// still through a suspend) by more than [`STEP_TOLERANCE_NS`], every clone converts
    /// with the new anchor from now on, and the step (ns, negative when the wall clock
    /// went back) is returned.
    pub fn reanchor(&self) -> Option<i64> {
        let (mono_ns, unix_ns) = read_clocks();
        self.reanchor_at(mono_ns, unix_ns)
    }

    /// [`WallClock::reanchor`] with a given reading of the clocks.
    pub fn reanchor_at(&self, mono_ns: u64, unix_ns: u64) -> Option<i64> {
        let new = offset(mono_ns, unix_ns);
        let old = self.offset_ns.load(Ordering::Relaxed);
        let step = new - old;
        (step.abs() > STEP_TOLERANCE_NS).then(|| {
            self.offset_ns.store(new, Ordering::Relaxed);
            step
        })
    }

    /// Wall-clock time of a monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_ns(mono_ns))
    }

    /// Unix time in nanoseconds of a monotonic timestamp (0 before the epoch).
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        let unix = i128::from(mono_ns) + i128::from(self.offset_ns.load(Ordering::Relaxed));
        unix.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Monotonic timestamp of a Unix time in nanoseconds (0 before the monotonic
    /// clock's origin).
    pub fn mono_ns(&self, unix_ns: u64) -> u64 {
        let mono = i128::from(unix_ns) - i128::from(self.offset_ns.load(Ordering::Relaxed));
        mono.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Unix − monotonic, ns (Unix ns fit an i64 until 2262).
fn offset(mono_ns: u64, unix_ns: u64) -> i64 {
    (i128::from(unix_ns) - i128::from(mono_ns)).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
        as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

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

    #[test]
    fn the_anchor_agrees_with_the_system_clock() {
        let clock = WallClock::now();
        let (mono, unix) = read_clocks();
        let error = clock.unix_ns(mono).abs_diff(unix);
        assert!(error < STEP_TOLERANCE_NS as u64, "off by {error} ns");
        assert_eq!(clock.reanchor(), None, "no step happened");
    }

    #[test]
    fn a_step_moves_every_clone_from_the_next_anchor_on() {
        // Monotonic 100 s was Unix 1_700_000_000 s; 10 s later the wall clock is
        // stepped 5 s forward (NTP), then 30 s back.
        let clock = WallClock::at(100 * S, 1_700_000_000 * S);
        let exporter = clock.clone();
        assert_eq!(exporter.unix_ns(110 * S), 1_700_000_010 * S);
        assert_eq!(
            clock.reanchor_at(110 * S, 1_700_000_015 * S),
            Some(5 * S as i64)
        );
        assert_eq!(exporter.unix_ns(110 * S), 1_700_000_015 * S);
        assert_eq!(exporter.unix_ns(111 * S), 1_700_000_016 * S);
        assert_eq!(exporter.mono_ns(1_700_000_016 * S), 111 * S);
        assert_eq!(
            clock.reanchor_at(120 * S, 1_699_999_995 * S),
            Some(-30 * S as i64)
        );
        assert_eq!(exporter.unix_ns(120 * S), 1_699_999_995 * S);
    }

    #[test]
    fn a_suspend_is_a_forward_step_and_jitter_is_not_one() {
        // The monotonic clock stood still for an hour of suspend.
        let clock = WallClock::at(100 * S, 1_700_000_000 * S);
        assert_eq!(
            clock.reanchor_at(101 * S, 1_700_003_601 * S),
            Some(3_600 * S as i64)
        );
        // A reading 20 µs off is noise: the anchor stays.
        assert_eq!(clock.reanchor_at(102 * S, 1_700_003_602 * S + 20_000), None);
        assert_eq!(clock.unix_ns(102 * S), 1_700_003_602 * S);
    }

    #[test]
    fn conversions_never_wrap() {
        let booted_before_1970 = WallClock::at(100 * S, 50 * S);
        assert_eq!(booted_before_1970.unix_ns(0), 0, "before the epoch");
        let clock = WallClock::at(50 * S, 100 * S);
        assert_eq!(clock.mono_ns(10 * S), 0, "before the monotonic origin");
    }
}
