//! `measure`'s whole run re-split with the idle power known at its end. Each interval
//! was attributed with the idle power known then (before a fit is good, a fallback);
//! the report applies the last figure to every interval, since a short command is
//! otherwise mostly attributed before the fit exists.
//!
//! A process's dynamic energy from a domain in an interval is `(E − P_idle·Δ)·f`, `f`
//! its share of the domain's weights: linear in `P_idle`. So per process and domain it
//! is enough to sum `Δ·f` (seconds), the idle energy its share stood for, and its
//! dynamic energy, each also weighted by the interval's grams per joule and intensity.
//! With the final `P'`, the process's dynamic energy becomes `D − (P'·Σ Δf − Σ I f)`,
//! never below zero. This is exact except in intervals whose power was below `P'`
//! (where the split clamps the idle part to the energy): there the result is lower by
//! at most that shortfall's share. With `--idle share` a process's total (`E·f`) does
//! not depend on `P_idle`, so nothing changes.

use std::collections::BTreeMap;

use crate::{
    attribute::{IdleExposure, IdlePower, ProcessReport, split::IdlePolicy},
    carbon::CarbonReport,
    power::Domain,
    units::{Joules, Watts},
};

/// Sums of one process's (or the host's) part of one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Part {
    /// Σ Δ·f, seconds.
    seconds: f64,
    /// Σ idle energy its share stood for.
    idle_j: f64,
    /// Σ dynamic energy given.
    dynamic_j: f64,
    /// The same sums weighted by each interval's grams per joule.
    seconds_g: f64,
    idle_g: f64,
    /// …and by each interval's intensity (g/kWh), for the energy-weighted average.
    seconds_i: f64,
    idle_i: f64,
}

impl Part {
    fn add(&mut self, seconds: f64, idle_j: f64, dynamic_j: f64, g_per_j: f64, g_per_kwh: f64) {
        self.seconds += seconds;
        self.idle_j += idle_j;
        self.dynamic_j += dynamic_j;
        self.seconds_g += seconds * g_per_j;
        self.idle_g += idle_j * g_per_j;
        self.seconds_i += seconds * g_per_kwh;
        self.idle_i += idle_j * g_per_kwh;
    }
}

/// How a process's figures change under the final idle power.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Change {
    /// Joules moved from the process to idle, per class (negative: from idle to it).
    pub moved: crate::attribute::EnergyByClass,
    /// Operational grams moved.
    pub grams: f64,
    /// Σ moved joules × intensity (for the energy-weighted intensity).
    pub joules_intensity: f64,
}

/// What a re-split needs, summed over the run.
#[derive(Clone, Debug, Default)]
pub struct Resplit {
    processes: BTreeMap<(u32, Domain), Part>,
    host: BTreeMap<Domain, Part>,
    policy: IdlePolicy,
}

impl Resplit {
    /// Adds one interval: the host's idle of each shared domain, and the parts of the
    /// processes `member` keeps.
    pub fn add<'a>(&mut self, r: &CarbonReport, members: impl Iterator<Item = &'a ProcessReport>) {
        self.policy = r.idle_policy;
        let g_per_j = r.carbon.grams(Joules(1.0));
        let g_per_kwh = r.carbon.intensity.g_per_kwh;
        for ip in r.idle_power.iter().filter(|ip| ip.shared) {
            let part = self.host.entry(ip.domain).or_default();
            part.add(r.duration_s, ip.charged_j.get(), 0.0, g_per_j, g_per_kwh);
        }
        for p in members {
            for e in &p.idle_exposure {
                let IdleExposure {
                    domain,
                    seconds,
                    idle_j,
                    dynamic_j,
                } = *e;
                let part = self.processes.entry((p.pid, domain)).or_default();
                part.add(seconds, idle_j.get(), dynamic_j.get(), g_per_j, g_per_kwh);
            }
        }
    }

    /// Per process, how its figures change when every interval uses `idle`'s figures;
    /// and the change of the host's idle bucket.
    pub fn apply(&self, idle: &[IdlePower]) -> (BTreeMap<u32, Change>, Joules) {
        let mut out: BTreeMap<u32, Change> = BTreeMap::new();
        if self.policy == IdlePolicy::Share {
            return (out, Joules::ZERO);
        }
        let watts = |d: Domain| idle.iter().find(|ip| ip.domain == d).map(|ip| ip.watts);
        for (&(pid, domain), part) in &self.processes {
            let Some(Watts(p)) = watts(domain) else {
                continue;
            };
            let linear = p * part.seconds - part.idle_j;
            let moved = linear.min(part.dynamic_j);
            let scale = if linear == 0.0 { 0.0 } else { moved / linear };
            let c = out.entry(pid).or_default();
            c.moved.add(domain.class(), Joules(moved));
            c.grams += scale * (p * part.seconds_g - part.idle_g);
            c.joules_intensity += scale * (p * part.seconds_i - part.idle_i);
        }
        let host: f64 = self
            .host
            .iter()
            .filter_map(|(d, part)| Some(watts(*d)?.get() * part.seconds - part.idle_j))
            .sum();
        (out, Joules(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{IdleOrigin, IntervalReport};
    use crate::carbon::CarbonSummary;

    fn interval(idle_w: f64, power_w: f64, f: f64) -> CarbonReport {
        // One 1 s interval of package-0 at `power_w`, attributed with `idle_w`; process
        // 1 had the share `f` of the package's CPU time.
        let mut ip = IdlePower::new(Domain::Package(0), Watts(idle_w), IdleOrigin::Lowest);
        ip.shared = true;
        ip.charged_j = Joules(idle_w);
        let energy = IntervalReport {
            duration_s: 1.0,
            idle_power: vec![ip],
            processes: vec![ProcessReport {
                pid: 1,
                idle_exposure: vec![IdleExposure {
                    domain: Domain::Package(0),
                    seconds: f,
                    idle_j: Joules(idle_w * f),
                    dynamic_j: Joules((power_w - idle_w) * f),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut carbon = CarbonSummary {
            pue: 1.0,
            ..Default::default()
        };
        carbon.intensity.g_per_kwh = 360.0;
        CarbonReport { energy, carbon }
    }

    #[test]
    fn the_final_idle_power_applies_to_every_interval() {
        let mut r = Resplit::default();
        // Early intervals used a busy power (30 W) as idle: process 1 got nothing; later
        // ones the fitted 10 W.
        for (idle, power) in [(30.0, 30.0), (30.0, 40.0), (10.0, 40.0)] {
            let i = interval(idle, power, 0.5);
            r.add(&i, i.processes.iter());
        }
        let mut fitted = IdlePower::new(Domain::Package(0), Watts(10.0), IdleOrigin::Fitted);
        fitted.shared = true;
        let (changes, host) = r.apply(&[fitted]);
        // Dynamic with 10 W throughout: (20 + 30 + 30) × 0.5 = 40 J; it had 20 J.
        let c = changes[&1];
        assert!((c.moved.cpu_j.get() + 20.0).abs() < 1e-9, "{c:?}");
        // The host's idle bucket shrinks by the 2 × 20 J the early intervals overcharged.
        assert!((host.get() + 40.0).abs() < 1e-9, "{host}");
        // 20 J more at 360 g/kWh = 1e-4 g/J.
        assert!((c.grams + 20.0 * 360.0 / 3.6e6).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn a_higher_final_idle_never_makes_dynamic_energy_negative() {
        let mut r = Resplit::default();
        let i = interval(5.0, 12.0, 1.0);
        r.add(&i, i.processes.iter());
        let (changes, _) = r.apply(&[IdlePower::new(
            Domain::Package(0),
            Watts(20.0),
            IdleOrigin::Fitted,
        )]);
        assert!(
            (changes[&1].moved.cpu_j.get() - 7.0).abs() < 1e-9,
            "all 7 J, no more"
        );
    }
}
