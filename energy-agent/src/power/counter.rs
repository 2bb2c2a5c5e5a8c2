//! The one counter-difference type every energy counter goes through: wrap-corrected,
//! never negative, and silent on the first read (there is no previous value yet).

/// A monotonically increasing hardware counter that wraps at `range`, or restarts
/// from zero (see [`EnergyCounter::restarting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnergyCounter {
    range: u64,
    last: Option<u64>,
    restarts: bool,
}

impl EnergyCounter {
    /// A counter whose values lie in `[0, range)` and wrap to 0 after `range - 1`
    /// (powercap: `max_energy_range_uj`; MSRs: 2^32; 64-bit perf counts: `u64::MAX`).
    pub fn new(range: u64) -> Self {
        Self {
            range: range.max(1),
            last: None,
            restarts: false,
        }
    }

    /// A 64-bit counter that never wraps but may restart from zero (NVML's total
    /// energy counts from the last driver load): a lower value is a new baseline.
    pub fn restarting() -> Self {
        Self {
            range: u64::MAX,
            last: None,
            restarts: true,
        }
    }

    /// The counter's range.
    pub fn range(&self) -> u64 {
        self.range
    }

    /// Feeds a new raw value; returns how much the counter advanced since the previous
    /// value (None on the first read, or when `raw` is outside the range, which only a
    /// broken or replaced counter produces). A value below the previous one is a wrap.
    pub fn advance(&mut self, raw: u64) -> Option<u64> {
        if raw >= self.range && self.range != u64::MAX {
            self.last = None;
            return None;
        }
        if self.restarts && self.last.is_some_and(|last| raw < last) {
            self.last = Some(raw);
            return None;
        }
        let delta = self.last.map(|last| {
            if raw >= last {
                raw - last
            } else {
                (self.range - last) + raw
            }
        });
        self.last = Some(raw);
        delta
    }

    /// Forgets the previous value (after a read error, so a stale value cannot produce
    /// a huge delta).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_read_is_a_baseline() {
        let mut c = EnergyCounter::new(1000);
        assert_eq!(c.advance(10), None);
        assert_eq!(c.advance(25), Some(15));
    }

    #[test]
    fn wrap_is_exact() {
        let mut c = EnergyCounter::new(1000);
        c.advance(990);
        // 990 → 999 is 9 steps, 999 → 0 one more, 0 → 5 five more.
        assert_eq!(c.advance(5), Some(15));
        assert_eq!(c.advance(5), Some(0));
    }

    #[test]
    fn thirty_two_bit_msr_wrap() {
        let mut c = EnergyCounter::new(1 << 32);
        c.advance(0xffff_fff0);
        assert_eq!(c.advance(0x10), Some(0x20));
    }

    #[test]
    fn out_of_range_value_resets_instead_of_lying() {
        let mut c = EnergyCounter::new(1000);
        c.advance(500);
        assert_eq!(c.advance(5000), None);
        assert_eq!(c.advance(600), None, "baseline again after the bad value");
        assert_eq!(c.advance(700), Some(100));
    }

    #[test]
    fn never_negative_over_many_wraps() {
        let mut c = EnergyCounter::new(97);
        let mut total = 0u64;
        let mut raw = 0u64;
        c.advance(raw);
        for step in [13u64, 96, 1, 50, 0, 96, 7] {
            raw = (raw + step) % 97;
            total += c.advance(raw).unwrap();
        }
        assert_eq!(total, 13 + 96 + 1 + 50 + 96 + 7);
    }

    #[test]
    fn a_restarting_counter_rebaselines_instead_of_wrapping() {
        let mut c = EnergyCounter::restarting();
        c.advance(5_000);
        assert_eq!(c.advance(7_000), Some(2_000));
        assert_eq!(c.advance(100), None, "driver reload: new baseline");
        assert_eq!(c.advance(400), Some(300));
    }

    #[test]
    fn full_width_counters_do_not_wrap_early() {
        let mut c = EnergyCounter::new(u64::MAX);
        c.advance(u64::MAX - 10);
        assert_eq!(c.advance(u64::MAX - 1), Some(9));
    }

    mod properties {
        use super::super::EnergyCounter;
        use crate::{
            power::{Domain, PowerReading, SourceInfo},
            units::Joules,
        };
        use proptest::prelude::*;

        proptest! {
            /// A counter wrapping at any range, advanced by any steps smaller than its
            /// range (wraps included), gives back exactly those steps.
            #[test]
            fn wrapping_counters_give_back_every_step(
                (range, start, steps) in (2u64..=u64::MAX).prop_flat_map(|r| {
                    (Just(r), 0..r, prop::collection::vec(0..r, 1..40))
                })
            ) {
                let mut c = EnergyCounter::new(range);
                prop_assert_eq!(c.advance(start), None, "the first read is a baseline");
                let mut raw = start;
                for step in steps {
                    raw = ((u128::from(raw) + u128::from(step)) % u128::from(range)) as u64;
                    prop_assert_eq!(c.advance(raw), Some(step));
                }
            }

            /// Whatever a counter reads (values past its range, going backwards,
            /// errors), the energy reported is never negative, NaN or infinite, and
            /// never more than the counter can hold.
            #[test]
            fn any_reads_give_sane_energy(
                range in 1u64..=u64::MAX,
                reads in prop::collection::vec(prop::option::of(any::<u64>()), 1..40),
                step_j in 1e-9..1.0f64,
            ) {
                let info = SourceInfo { name: "t", estimated: false, resolution_j: step_j };
                let mut c = EnergyCounter::new(range);
                for read in reads {
                    let mut reading = PowerReading::default();
                    let read = read.ok_or_else(|| "read error".to_string());
                    reading.add_counter_read(&info, Domain::Package(0), &mut c, read, Joules(step_j));
                    for e in &reading.energies {
                        let j = e.joules.get();
                        prop_assert!(j.is_finite() && j >= 0.0, "{}", j);
                        prop_assert!(j <= range as f64 * step_j * (1.0 + 1e-12), "{} > range", j);
                    }
                }
            }
        }
    }
}
