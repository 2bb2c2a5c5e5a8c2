//! Units as types for the figures that cross stages: energy in [`Joules`], power in
//! [`Watts`], durations in [`Nanos`]. Only the physically meaningful operations exist
//! (W × ns = J, J / ns = W, J + J), so a J/µJ or ns/s mix-up does not compile. Each
//! serializes as its plain number: the unit stays in the field name of the reports
//! (`energy_j`, `watts`, `cpu_time_ns`), which is the users' contract.

use std::{
    fmt,
    iter::Sum,
    ops::{Add, AddAssign, Div, Mul, Sub},
};

/// Nanoseconds in a second.
const NS_PER_S: f64 = 1e9;

/// An amount of energy.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, serde::Serialize)]
#[serde(transparent)]
pub struct Joules(pub f64);

/// A power: energy per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, serde::Serialize)]
#[serde(transparent)]
pub struct Watts(pub f64);

/// A duration in nanoseconds (CLOCK_MONOTONIC, the clock of the eBPF programs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Nanos(pub u64);

impl Joules {
    /// Zero.
    pub const ZERO: Joules = Joules(0.0);

    /// From a counter in microjoules (powercap's `energy_uj`, perf's scaled counts).
    pub fn from_micro(uj: u64) -> Self {
        Joules(uj as f64 / 1e6)
    }

    /// From a counter in millijoules (NVML's total-energy counter).
    pub fn from_milli(mj: u64) -> Self {
        Joules(mj as f64 / 1e3)
    }

    /// The value in joules.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Never below zero (a meter or an estimate can only add energy).
    pub fn non_negative(self) -> Self {
        Joules(self.0.max(0.0))
    }

    /// The lesser of two amounts.
    pub fn min(self, other: Joules) -> Self {
        Joules(self.0.min(other.0))
    }

    /// Total order for sorting (NaN last).
    pub fn total_cmp(&self, other: &Joules) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }

    /// Average power over `over` (0 W over an empty duration).
    pub fn per(self, over: Nanos) -> Watts {
        if over.0 == 0 {
            Watts(0.0)
        } else {
            Watts(self.0 / over.seconds())
        }
    }
}

impl Watts {
    /// The value in watts.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The lesser of two powers.
    pub fn min(self, other: Watts) -> Self {
        Watts(self.0.min(other.0))
    }
}

impl Nanos {
    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Nanos(s * 1_000_000_000)
    }

    /// The duration in seconds.
    pub fn seconds(self) -> f64 {
        self.0 as f64 / NS_PER_S
    }

    /// The value in nanoseconds.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `later` (monotonic ns), zero if they are reversed.
    pub fn between(earlier: u64, later: u64) -> Self {
        Nanos(later.saturating_sub(earlier))
    }
}

impl From<Joules> for f64 {
    fn from(j: Joules) -> f64 {
        j.0
    }
}

impl From<Watts> for f64 {
    fn from(w: Watts) -> f64 {
        w.0
    }
}

impl From<std::time::Duration> for Nanos {
    fn from(d: std::time::Duration) -> Self {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Add for Joules {
    type Output = Joules;
    fn add(self, o: Joules) -> Joules {
        Joules(self.0 + o.0)
    }
}

impl AddAssign for Joules {
    fn add_assign(&mut self, o: Joules) {
        self.0 += o.0;
    }
}

impl Sub for Joules {
    type Output = Joules;
    fn sub(self, o: Joules) -> Joules {
        Joules(self.0 - o.0)
    }
}

/// A fraction of an amount.
impl Mul<f64> for Joules {
    type Output = Joules;
    fn mul(self, fraction: f64) -> Joules {
        Joules(self.0 * fraction)
    }
}

/// How many times `o` goes into `self` (a fraction when `o` is the whole).
impl Div for Joules {
    type Output = f64;
    fn div(self, o: Joules) -> f64 {
        self.0 / o.0
    }
}

impl Sum for Joules {
    fn sum<I: Iterator<Item = Joules>>(iter: I) -> Joules {
        Joules(iter.map(|j| j.0).sum())
    }
}

impl<'a> Sum<&'a Joules> for Joules {
    fn sum<I: Iterator<Item = &'a Joules>>(iter: I) -> Joules {
        Joules(iter.map(|j| j.0).sum())
    }
}

/// Energy drawn at a power for a time.
impl Mul<Nanos> for Watts {
    type Output = Joules;
    fn mul(self, t: Nanos) -> Joules {
        Joules(self.0 * t.seconds())
    }
}

impl Add for Watts {
    type Output = Watts;
    fn add(self, o: Watts) -> Watts {
        Watts(self.0 + o.0)
    }
}

impl AddAssign for Watts {
    fn add_assign(&mut self, o: Watts) {
        self.0 += o.0;
    }
}

impl Mul<f64> for Watts {
    type Output = Watts;
    fn mul(self, factor: f64) -> Watts {
        Watts(self.0 * factor)
    }
}

impl Add for Nanos {
    type Output = Nanos;
    fn add(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(o.0))
    }
}

impl AddAssign for Nanos {
    fn add_assign(&mut self, o: Nanos) {
        self.0 = self.0.saturating_add(o.0);
    }
}

impl Sum for Nanos {
    fn sum<I: Iterator<Item = Nanos>>(iter: I) -> Nanos {
        iter.fold(Nanos(0), |a, b| a + b)
    }
}

/// Formats like the plain number, honouring precision (`{:.2}`).
impl fmt::Display for Joules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Formats like the plain number, honouring precision (`{:.2}`).
impl fmt::Display for Watts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_times_time_is_energy_and_back() {
        let e = Watts(15.0) * Nanos(2_000_000_000);
        assert_eq!(e, Joules(30.0));
        assert_eq!(e.per(Nanos::from_secs(2)), Watts(15.0));
        assert_eq!(Joules(5.0).per(Nanos(0)), Watts(0.0));
    }

    #[test]
    fn counters_convert_once() {
        assert_eq!(Joules::from_micro(2_500_000), Joules(2.5));
        assert_eq!(Joules::from_milli(2_500), Joules(2.5));
        assert_eq!(Joules(-1.0).non_negative(), Joules::ZERO);
    }

    #[test]
    fn serializes_as_the_plain_number() {
        let v = serde_json::to_value((Joules(1.5), Watts(2.0), Nanos(7))).unwrap();
        assert_eq!(v, serde_json::json!([1.5, 2.0, 7]));
        assert_eq!(format!("{:.2}", Joules(1.0 / 3.0)), "0.33");
    }
}
