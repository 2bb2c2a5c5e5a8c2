//! A domain's idle power, and where it came from. In order of precedence:
//!
//! 1. `--idle-power` ([`IdleOrigin::Configured`]);
//! 2. for a domain the estimate measures, the estimate's own idle figure (the source's
//!    `idle_power`): its figures are a model, so its idle power is known by
//!    construction and nothing is fitted ([`IdleOrigin::Model`]);
//! 3. a good fit of this run: the intercept of interval power regressed on the
//!    domain's busy CPUs (or GPU utilisation), see [`fit`] ([`IdleOrigin::Fitted`];
//!    once good, the last good fit is kept while the load is too steady to refit) —
//!    unless a stored calibration is more precise and within the two bands of it
//!    (then both estimate the same figure, and the calibration is the better one);
//! 4. a calibration stored in the state file, by `energy-agent calibrate` or a good fit
//!    of an earlier run, see [`state`] ([`IdleOrigin::Calibrated`]);
//! 5. the estimate model's idle figure for this host, when it is not above the lowest
//!    power seen ([`IdleOrigin::Model`], flagged uncertain);
//! 6. the lowest interval power seen so far ([`IdleOrigin::Lowest`], flagged
//!    uncertain: on a busy host it is a busy power).
//!
//! Where the load never varies enough to fit, this is said once in the log, and every
//! interval's `idle_power[].fit` says why (`steady_load`, `few_samples`, `poor`).

pub mod fit;
pub mod state;

use std::collections::BTreeMap;

use fit::{Fit, FitConfig, FitStatus, Sample, Window};

use super::report::{IdleOrigin, IdlePower};
use crate::{
    power::Domain,
    units::{Joules, Nanos, Watts},
};

/// A stored calibration of one domain, as the attribution stage uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The domain.
    pub domain: Domain,
    /// Its idle power.
    pub idle: Watts,
    /// The fit's uncertainty (twice its standard error).
    pub uncertainty: Watts,
    /// When it was made (RFC 3339).
    pub at: String,
}

/// What one interval tells about one domain.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// The domain's energy in the interval.
    pub energy: Joules,
    /// The interval's length.
    pub duration: Nanos,
    /// How busy the domain was (busy CPUs, or GPU utilisation 0–1), when known.
    pub busy: Option<f64>,
}

/// The `--idle-power` figure of `domain`: by its name (`package-0`), else its class
/// (`package`).
pub fn configured_for(configured: &BTreeMap<String, Watts>, domain: Domain) -> Option<Watts> {
    let name = domain.to_string();
    let class = name.split('-').next().unwrap_or(&name);
    (configured.get(&name))
        .or_else(|| configured.get(class))
        .copied()
}

/// Intervals shorter than this do not count for the lowest power (seconds).
const LOWEST_MIN_S: f64 = 0.1;

/// Intervals of steady load after which the log says the idle power cannot be fitted.
const SAY_STEADY_AFTER: u64 = 40;

/// What is known of one domain this run.
#[derive(Clone, Debug)]
struct Tracker {
    window: Window,
    lowest: Option<Watts>,
    /// Whether `lowest` is over intervals of at least [`LOWEST_MIN_S`].
    lowest_from_long: bool,
    good: Option<Fit>,
    status: FitStatus,
    intervals: u64,
    said: bool,
    last: Option<IdlePower>,
}

/// Chooses every domain's idle power, interval by interval.
#[derive(Clone, Debug)]
pub struct IdleModel {
    config: FitConfig,
    configured: BTreeMap<String, Watts>,
    source_model: BTreeMap<Domain, Watts>,
    prior: BTreeMap<Domain, Watts>,
    stored: BTreeMap<Domain, Calibration>,
    domains: BTreeMap<Domain, Tracker>,
}

impl IdleModel {
    /// `configured`: `--idle-power` by domain or class name; `source_model`: the power
    /// source's own idle figures (only the estimate has them, for the domains it
    /// estimates); `config`: how fits are made.
    pub fn new(
        config: FitConfig,
        configured: BTreeMap<String, Watts>,
        source_model: Vec<(Domain, Watts)>,
    ) -> Self {
        Self {
            config,
            configured,
            source_model: source_model.into_iter().collect(),
            prior: BTreeMap::new(),
            stored: BTreeMap::new(),
            domains: BTreeMap::new(),
        }
    }

    /// Stored calibrations of this host's meters.
    pub fn set_calibrations(&mut self, stored: Vec<Calibration>) {
        self.stored = stored.into_iter().map(|c| (c.domain, c)).collect();
    }

    /// The estimate model's idle figures for this host (a fallback for meters).
    pub fn set_prior(&mut self, prior: Vec<(Domain, Watts)>) {
        self.prior = prior.into_iter().collect();
    }

    fn configured(&self, domain: Domain) -> Option<Watts> {
        configured_for(&self.configured, domain)
    }

    /// The idle power of `domain` in an interval, given what the interval showed.
    pub fn idle_power(&mut self, domain: Domain, obs: Observation) -> IdlePower {
        let fixed = |watts, origin| IdlePower::new(domain, watts, origin);
        if let Some(watts) = self.configured(domain) {
            return fixed(watts, IdleOrigin::Configured);
        }
        if let Some(&watts) = self.source_model.get(&domain) {
            return fixed(watts, IdleOrigin::Model);
        }
        let config = self.config;
        let t = self.domains.entry(domain).or_insert_with(|| Tracker {
            window: Window::new(config),
            lowest: None,
            lowest_from_long: false,
            good: None,
            status: FitStatus::FewSamples,
            intervals: 0,
            said: false,
            last: None,
        });
        t.observe(obs);
        let chosen = choose(
            domain,
            t,
            self.stored.get(&domain),
            self.prior.get(&domain).copied(),
        );
        t.say_if_steady(domain, &chosen);
        t.last = Some(chosen.clone());
        chosen
    }

    /// The idle power each domain was last given (the figure a whole run's totals can
    /// be re-split with at its end).
    pub fn current(&self) -> Vec<IdlePower> {
        self.domains
            .values()
            .filter_map(|t| t.last.clone())
            .collect()
    }

    /// The good fits of this run, per domain (what the state file keeps).
    pub fn learned(&self) -> Vec<(Domain, Fit)> {
        self.domains
            .iter()
            .filter_map(|(d, t)| t.good.map(|f| (*d, f)))
            .collect()
    }

    /// Each fitted domain's current fit status and its latest fit, good or not (for
    /// `calibrate`'s report).
    pub fn fits(&self) -> Vec<(Domain, FitStatus, Option<Fit>)> {
        self.domains
            .iter()
            .map(|(d, t)| {
                let (status, fit) = t.window.fit();
                (*d, status, fit)
            })
            .collect()
    }
}

impl Tracker {
    fn observe(&mut self, obs: Observation) {
        self.intervals += 1;
        if obs.duration.0 == 0 {
            return;
        }
        let watts = obs.energy.per(obs.duration);
        // An interval shorter than a meter's update period can read 0 J: only intervals
        // of at least 100 ms count, unless there are none yet.
        let long = obs.duration.seconds() >= LOWEST_MIN_S;
        if long || !self.lowest_from_long {
            let lowest = match self.lowest {
                Some(l) if long == self.lowest_from_long => Watts(l.get().min(watts.get())),
                _ => watts,
            };
            self.lowest = Some(lowest);
            self.lowest_from_long = long;
        }
        if let Some(busy) = obs.busy {
            self.window.push(Sample {
                busy,
                watts: watts.get(),
                seconds: obs.duration.seconds(),
            });
            if let Some(good) = &self.good
                && self.window.drop_before_shift(good)
            {
                log::info!(
                    "idle power moved off its fit ({:.2} W); refitting",
                    good.idle_w
                );
            }
        }
        let (status, fit) = self.window.fit();
        self.status = status;
        if status == FitStatus::Good {
            self.good = fit;
        }
    }

    /// Says once in the log when the load has been too steady to fit for a while.
    fn say_if_steady(&mut self, domain: Domain, chosen: &IdlePower) {
        if self.said || self.good.is_some() || self.intervals < SAY_STEADY_AFTER {
            return;
        }
        self.said = true;
        let (_, fit) = self.window.fit();
        let range = fit.map_or(String::new(), |f| {
            format!(" (busy {:.2}–{:.2})", f.busy_min, f.busy_max)
        });
        log::warn!(
            "{domain}: idle power cannot be fitted ({}{range} over {} intervals); using {:.2} W ({}{}): run `energy-agent calibrate` or set --idle-power",
            self.status.name(),
            self.intervals,
            chosen.watts,
            chosen.origin.name(),
            if chosen.uncertain { ", uncertain" } else { "" },
        );
    }
}

/// Precedence 3–6 of the module doc for a measured domain.
fn choose(
    domain: Domain,
    t: &Tracker,
    stored: Option<&Calibration>,
    prior: Option<Watts>,
) -> IdlePower {
    // A stored calibration more precise than the fit and consistent with it is the
    // better estimate of the same figure; one the fit contradicts is stale.
    let consistent_calibration = match (t.good, stored) {
        (Some(fit), Some(c)) => {
            c.uncertainty.get() < fit.uncertainty_w
                && (fit.idle_w - c.idle.get()).abs() <= fit.uncertainty_w + c.uncertainty.get()
        }
        _ => false,
    };
    let mut ip = if let Some(fit) = t.good.filter(|_| !consistent_calibration) {
        let mut ip = IdlePower::new(domain, Watts(fit.idle_w), IdleOrigin::Fitted);
        ip.uncertainty_w = Some(Watts(fit.uncertainty_w));
        ip
    } else if let Some(c) = stored {
        let mut ip = IdlePower::new(domain, c.idle, IdleOrigin::Calibrated);
        ip.uncertainty_w = Some(c.uncertainty);
        ip.calibrated_at = Some(c.at.clone());
        ip
    } else {
        let lowest = t.lowest.unwrap_or_default();
        let mut ip = match prior {
            Some(p) if p <= lowest => IdlePower::new(domain, p, IdleOrigin::Model),
            _ => IdlePower::new(domain, lowest, IdleOrigin::Lowest),
        };
        ip.uncertain = true;
        ip
    };
    ip.fit = Some(t.status);
    ip
}

#[cfg(test)]
mod tests;
