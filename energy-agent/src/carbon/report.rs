//! What the carbon stage hands on: the attribution stage's report, untouched, with the
//! intensity, PUE and embodied-carbon model of the interval. Grams are derived from
//! joules on request ([`CarbonSummary::process`], [`CarbonSummary::group`]), so the
//! two can never disagree.

use super::{Embodied, Intensity, operational_grams};
use crate::{
    attribute::{GroupReport, IntervalReport, ProcessReport},
    units::Joules,
};

/// The grams of CO2e of one figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Footprint {
    /// Operational carbon: energy × intensity × PUE, grams CO2e.
    pub carbon_g: f64,
    /// Embodied carbon share (SCI's M), grams CO2e; 0 unless configured.
    pub embodied_g: f64,
}

/// The carbon figures of one interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CarbonSummary {
    /// The intensity used, with its source.
    pub intensity: Intensity,
    /// PUE applied.
    pub pue: f64,
    /// Operational grams of the whole host's energy.
    pub host_g: f64,
    /// Embodied grams of the host over the interval (0 unless configured).
    pub embodied_host_g: f64,
    /// The embodied-carbon model, when configured.
    #[serde(skip)]
    pub embodied: Option<Embodied>,
}

impl CarbonSummary {
    /// Operational grams of `joules` in this interval.
    pub fn grams(&self, joules: Joules) -> f64 {
        operational_grams(joules, self.intensity.g_per_kwh, self.pue)
    }

    /// Grams of `joules` and of the embodied share of `cpu_seconds` of CPU time.
    pub fn footprint(&self, joules: Joules, cpu_seconds: f64) -> Footprint {
        Footprint {
            carbon_g: self.grams(joules),
            embodied_g: self.embodied.map_or(0.0, |e| e.process_g(cpu_seconds)),
        }
    }

    /// A process's grams.
    pub fn process(&self, p: &ProcessReport) -> Footprint {
        self.footprint(p.energy_j, p.cpu_time_s)
    }

    /// A group's grams (the sum of its processes': both parts are linear).
    pub fn group(&self, g: &GroupReport) -> Footprint {
        self.footprint(g.energy_j, g.cpu_time_s)
    }
}

/// An attributed interval with its carbon: what the exporters and the per-request split
/// read.
#[derive(Clone, Debug, Default)]
pub struct CarbonReport {
    /// The attribution stage's report, in joules.
    pub energy: IntervalReport,
    /// Intensity, PUE, host grams.
    pub carbon: CarbonSummary,
}

impl CarbonReport {
    /// The idle bucket's grams (no embodied share: the host's is in
    /// [`CarbonSummary::embodied_host_g`]).
    pub fn idle(&self) -> Footprint {
        self.carbon.footprint(self.energy.idle.energy_j, 0.0)
    }
}

impl std::ops::Deref for CarbonReport {
    type Target = IntervalReport;

    fn deref(&self) -> &IntervalReport {
        &self.energy
    }
}
