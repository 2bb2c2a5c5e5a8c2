//! Carbon: grid intensity providers behind one trait, PUE, and embodied carbon (SCI's
//! M = TE × TiR/EL × RR/ToR). Every carbon figure carries its intensity source.
//!
//! Operational carbon of an energy E: `g = E[kWh] × I[g/kWh] × PUE`.
//!
//! The stage after attribution: [`Carbon::annotate`] takes the attribution stage's
//! report and returns a [`CarbonReport`]; nothing before this stage knows of grams.

pub mod forecast;
pub mod remote;
mod report;
pub mod series;
pub mod table;

use std::{path::PathBuf, time::Duration, time::SystemTime};

use remote::{Api, Remote, RemoteOptions};

use crate::{attribute::IntervalReport, units::Joules};
pub use report::{CarbonReport, CarbonSummary, Footprint};
use series::Series;
use table::{Fixed, Table};

/// Joules in a kilowatt-hour.
pub const J_PER_KWH: f64 = 3.6e6;
/// Operational grams of `joules` at `g_per_kwh` in a facility of `pue`: kWh × g/kWh ×
/// PUE. Every carbon figure the agent gives goes through here.
pub fn operational_grams(joules: Joules, g_per_kwh: f64, pue: f64) -> f64 {
    joules.get() / J_PER_KWH * g_per_kwh * pue
}

/// Seconds in a (Julian) year, for lifetimes.
pub const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

/// A grid carbon intensity and where it came from.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Intensity {
    /// gCO2e per kWh.
    pub g_per_kwh: f64,
    /// Which provider gave it (`table:FRA (…)`, `fixed`, `file:…`, `electricitymaps:DE`).
    pub source: String,
    /// Why a fallback or an edge value is in use, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A source of grid carbon intensity.
pub trait IntensityProvider: Send {
    /// The intensity in force at `at`.
    fn intensity(&mut self, at: SystemTime) -> Intensity;
}

/// How to find the intensity (the carbon flags / config section).
#[derive(Clone, Debug, Default)]
pub struct CarbonOptions {
    /// `--region`: table lookup (and fallback for the APIs).
    pub region: Option<String>,
    /// `--carbon-intensity G`: a fixed value.
    pub fixed: Option<f64>,
    /// `--carbon-file CSV`: a time series.
    pub file: Option<PathBuf>,
    /// A live API, with where to reach it.
    pub api: Option<(Api, RemoteOptions)>,
    /// `--pue`.
    pub pue: f64,
    /// `--embodied-kgco2e`: the host's total embodied emissions, kg.
    pub embodied_kgco2e: Option<f64>,
    /// `--lifetime-years`: its expected lifetime.
    pub lifetime_years: f64,
}

impl CarbonOptions {
    /// Defaults: PUE 1.0, 4-year lifetime, world-average table value.
    pub fn new() -> Self {
        Self {
            pue: 1.0,
            lifetime_years: 4.0,
            ..Self::default()
        }
    }
}

/// Chooses the provider: fixed, else file, else API (falling back to the table), else
/// the table.
pub fn provider(opts: &CarbonOptions) -> Result<Box<dyn IntensityProvider>, String> {
    if let Some(g) = opts.fixed {
        if !(g.is_finite() && g >= 0.0) {
            return Err(format!(
                "--carbon-intensity {g} is not a non-negative number"
            ));
        }
        return Ok(Box::new(Fixed(g)));
    }
    if let Some(path) = &opts.file {
        return Ok(Box::new(Series::load(path)?));
    }
    let table = Table::new(opts.region.as_deref())?;
    if let Some((api, remote)) = &opts.api {
        return Ok(Box::new(Remote::start(api.clone(), remote.clone(), table)));
    }
    Ok(Box::new(table))
}

/// Embodied carbon per SCI: the host's `TE` spread over its lifetime `EL`, and a
/// process's share `RR/ToR` taken as its share of the host's CPU capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Embodied {
    /// TE in grams.
    pub total_g: f64,
    /// EL in seconds.
    pub lifetime_s: f64,
    /// CPUs of the host (ToR, in CPU-seconds per second).
    pub cpus: f64,
}

impl Embodied {
    /// The host's embodied grams over `seconds` (TiR/EL of TE).
    pub fn host_g(&self, seconds: f64) -> f64 {
        self.total_g * seconds / self.lifetime_s
    }

    /// A process's embodied grams for `cpu_seconds` of CPU time in an interval:
    /// TE × (TiR/EL) × (RR/ToR) with RR/ToR = cpu_seconds / (TiR × cpus).
    pub fn process_g(&self, cpu_seconds: f64) -> f64 {
        self.total_g * cpu_seconds / (self.lifetime_s * self.cpus)
    }
}

/// Turns energy into grams with the current intensity, PUE and embodied carbon.
pub struct Carbon {
    provider: Box<dyn IntensityProvider>,
    /// Power usage effectiveness (facility energy / IT energy).
    pub pue: f64,
    /// Embodied carbon, when configured.
    pub embodied: Option<Embodied>,
}

impl Carbon {
    /// From options; `cpus` is the host's CPU count (for embodied shares).
    pub fn new(opts: &CarbonOptions, cpus: u32) -> Result<Self, String> {
        if !(opts.pue.is_finite() && opts.pue >= 1.0) {
            return Err(format!("--pue {} must be at least 1.0", opts.pue));
        }
        let embodied = match opts.embodied_kgco2e {
            Some(kg) if kg.is_finite() && kg >= 0.0 && opts.lifetime_years > 0.0 => {
                Some(Embodied {
                    total_g: kg * 1e3,
                    lifetime_s: opts.lifetime_years * SECONDS_PER_YEAR,
                    cpus: f64::from(cpus.max(1)),
                })
            }
            Some(kg) => {
                return Err(format!(
                    "--embodied-kgco2e {kg} with --lifetime-years {} is not usable",
                    opts.lifetime_years
                ));
            }
            None => None,
        };
        Ok(Self {
            provider: provider(opts)?,
            pue: opts.pue,
            embodied,
        })
    }

    /// The intensity in force at `at`.
    pub fn intensity(&mut self, at: SystemTime) -> Intensity {
        self.provider.intensity(at)
    }

    /// Operational grams of `joules` at `intensity`: kWh × g/kWh × PUE.
    pub fn grams(&self, joules: Joules, intensity: &Intensity) -> f64 {
        operational_grams(joules, intensity.g_per_kwh, self.pue)
    }

    /// The carbon of an attributed interval, with the intensity in force at `at` (the
    /// wall time of the interval's end).
    pub fn annotate(&mut self, energy: IntervalReport, at: SystemTime) -> CarbonReport {
        let intensity = self.intensity(at);
        let carbon = CarbonSummary {
            host_g: self.grams(energy.power.total_j, &intensity),
            embodied_host_g: self.embodied.map_or(0.0, |e| e.host_g(energy.duration_s)),
            intensity,
            pue: self.pue,
            embodied: self.embodied,
        };
        CarbonReport { energy, carbon }
    }
}

/// Default refresh of API values.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grams_are_kwh_times_intensity_times_pue() {
        let mut o = CarbonOptions::new();
        o.fixed = Some(400.0);
        o.pue = 1.5;
        let mut c = Carbon::new(&o, 2).unwrap();
        let i = c.intensity(SystemTime::now());
        assert_eq!(i.source, "fixed (--carbon-intensity)");
        // 3.6 MJ = 1 kWh → 400 g × 1.5.
        assert!((c.grams(Joules(3.6e6), &i) - 600.0).abs() < 1e-9);
    }

    #[test]
    fn embodied_follows_the_sci_formula() {
        // SPEC example scale: 1000 kg over 4 years, 1 h reserved of the whole host ≈ 28.5 g.
        let e = Embodied {
            total_g: 1_000_000.0,
            lifetime_s: 4.0 * SECONDS_PER_YEAR,
            cpus: 8.0,
        };
        assert!(
            (e.host_g(3600.0) - 28.52).abs() < 0.01,
            "{}",
            e.host_g(3600.0)
        );
        // A process using 2 of 8 CPUs for that hour reserves a quarter of it.
        assert!((e.process_g(2.0 * 3600.0) - e.host_g(3600.0) / 4.0).abs() < 1e-9);
    }

    #[test]
    fn provider_choice_and_bad_options() {
        let mut o = CarbonOptions::new();
        o.region = Some("FR".into());
        let mut c = Carbon::new(&o, 1).unwrap();
        assert!(
            c.intensity(SystemTime::now())
                .source
                .starts_with("table:FRA")
        );
        o.pue = 0.5;
        assert!(Carbon::new(&o, 1).err().unwrap().contains("--pue"));
        o.pue = 1.0;
        o.region = Some("Atlantis".into());
        assert!(Carbon::new(&o, 1).err().unwrap().contains("unknown region"));
        o.region = None;
        o.fixed = Some(-3.0);
        assert!(Carbon::new(&o, 1).err().unwrap().contains("non-negative"));
    }
}
