//! Power sources: how much energy each hardware domain used in each interval, from the
//! best source the host has, each saying what it measures and how.
//!
//! Every source implements [`PowerSource`]; [`select`] picks them (`--power-source`):
//! `auto` tries rapl-perf → rapl-powercap → estimate for CPU/DRAM and nvml for GPUs.

pub mod counter;
pub mod estimate;
pub mod gpu;
pub mod msr;
pub mod nvml;
pub mod packages;
pub mod perf;
pub mod powercap;
pub mod replay;
pub mod select;

use std::{fmt, str::FromStr, time::Duration};

pub use select::{PowerSources, SourceChoice, SourceStatus, select, survey};

use crate::units::{Joules, Nanos, Watts};

/// A hardware energy domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// A CPU package (socket), cores and uncore included.
    Package(u32),
    /// The cores of a package (part of the package).
    Core(u32),
    /// The uncore or integrated GPU of a package (part of the package).
    Uncore(u32),
    /// The DRAM attached to a package.
    Dram(u32),
    /// The whole platform (SoC, psys): overlaps every other domain.
    Psys,
    /// A GPU.
    Gpu(u32),
}

/// What a domain's energy adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainClass {
    /// CPU packages: the `cpu` total.
    Cpu,
    /// Memory: the `dram` total.
    Dram,
    /// GPUs: the `gpu` total.
    Gpu,
    /// Parts of a package (core, uncore): already in `cpu`, never added again.
    PartOfPackage,
    /// The platform total (psys): overlaps everything, never added.
    Platform,
}

impl Domain {
    /// Which total this domain belongs to.
    pub fn class(&self) -> DomainClass {
        match self {
            Domain::Package(_) => DomainClass::Cpu,
            Domain::Core(_) | Domain::Uncore(_) => DomainClass::PartOfPackage,
            Domain::Dram(_) => DomainClass::Dram,
            Domain::Psys => DomainClass::Platform,
            Domain::Gpu(_) => DomainClass::Gpu,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Package(n) => write!(f, "package-{n}"),
            Domain::Core(n) => write!(f, "core-{n}"),
            Domain::Uncore(n) => write!(f, "uncore-{n}"),
            Domain::Dram(n) => write!(f, "dram-{n}"),
            Domain::Psys => write!(f, "psys"),
            Domain::Gpu(n) => write!(f, "gpu-{n}"),
        }
    }
}

impl FromStr for Domain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "psys" {
            return Ok(Domain::Psys);
        }
        let (kind, index) = s.rsplit_once('-').ok_or_else(|| {
            format!("unknown domain {s:?} (expected e.g. package-0, dram-0, gpu-0, psys)")
        })?;
        let n: u32 = index
            .parse()
            .map_err(|_| format!("bad index in domain {s:?}"))?;
        match kind {
            "package" => Ok(Domain::Package(n)),
            "core" => Ok(Domain::Core(n)),
            "uncore" => Ok(Domain::Uncore(n)),
            "dram" => Ok(Domain::Dram(n)),
            "gpu" => Ok(Domain::Gpu(n)),
            _ => Err(format!(
                "unknown domain {s:?} (expected package-N, core-N, uncore-N, dram-N, gpu-N or psys)"
            )),
        }
    }
}

impl serde::Serialize for Domain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who measured a figure, and how.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SourceInfo {
    /// Source name as on the command line: `rapl-perf`, `rapl-powercap`, `rapl-msr`,
    /// `nvml`, `estimate`, `replay`.
    pub name: &'static str,
    /// True when the figures come from a model, not a meter.
    pub estimated: bool,
    /// Smallest energy step the source can report, joules (0 = continuous).
    pub resolution_j: f64,
}

/// Energy of one domain in one interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DomainEnergy {
    /// The domain.
    pub domain: Domain,
    /// Energy in the interval (never negative).
    pub joules: Joules,
    /// The source that measured or estimated it.
    pub source: &'static str,
    /// Whether it is an estimate.
    pub estimated: bool,
}

/// A domain that could not be read in this interval, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DomainError {
    /// The domain.
    pub domain: Domain,
    /// What went wrong.
    pub error: String,
}

/// One source's figures for one interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PowerReading {
    /// Energy per domain read successfully.
    pub energies: Vec<DomainEnergy>,
    /// Domains that failed this time (the others are still reported).
    pub errors: Vec<DomainError>,
    /// Per GPU: the processes on it and their SM utilisation since the last read (GPU
    /// sources only).
    pub gpu_processes: Vec<gpu::GpuProcesses>,
}

impl PowerReading {
    /// Joules of one domain, when it was read.
    pub fn joules_of(&self, domain: Domain) -> Option<Joules> {
        self.energies
            .iter()
            .find(|e| e.domain == domain)
            .map(|e| e.joules)
    }

    /// Joules of all domains of `class`.
    pub fn total(&self, class: DomainClass) -> Joules {
        self.energies
            .iter()
            .filter(|e| e.domain.class() == class)
            .map(|e| e.joules)
            .sum::<Joules>()
            + Joules::ZERO // an empty f64 sum is -0.0
    }

    /// Adds one raw read of a meter's counter: advanced through `counter`, each step
    /// worth `step` (1 µJ for powercap, the MSR's energy unit, perf's scale). The first read only sets the baseline; a failed read resets the
    /// counter (so no stale value makes a jump later) and is reported for the domain, as
    /// is a value beyond the counter's range.
    pub fn add_counter_read(
        &mut self,
        info: &SourceInfo,
        domain: Domain,
        counter: &mut counter::EnergyCounter,
        read: Result<u64, String>,
        step: Joules,
    ) {
        match read {
            Ok(raw) => match counter.advance(raw) {
                Some(steps) => self
                    .energies
                    .push(energy(info, domain, step * steps as f64)),
                None if raw >= counter.range() => self.errors.push(DomainError {
                    domain,
                    error: format!(
                        "counter value {raw} is beyond its range {}",
                        counter.range()
                    ),
                }),
                None => {}
            },
            Err(error) => {
                counter.reset();
                self.errors.push(DomainError { domain, error });
            }
        }
    }

    /// Adds another reading's domains (CPU source + GPU source).
    pub fn merge(&mut self, other: PowerReading) {
        self.energies.extend(other.energies);
        self.errors.extend(other.errors);
        self.gpu_processes.extend(other.gpu_processes);
    }
}

/// What a source is told at each sample.
#[derive(Clone, Debug, Default)]
pub struct SampleContext {
    /// Now (monotonic ns).
    pub now_ns: u64,
    /// Time since the previous sample.
    pub elapsed: Nanos,
    /// Busy time per CPU (index = CPU id) in that time, from the probe; models use it,
    /// meters ignore it.
    pub cpu_busy: Vec<Nanos>,
}

/// Why a source cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The source does not exist here or does not work (with the reason).
    #[error("{0}")]
    Unavailable(String),
    /// The source's input is malformed (replay files).
    #[error("{0}")]
    Invalid(String),
}

/// A source of energy figures for some domains.
pub trait PowerSource: Send {
    /// Name, whether estimated, and resolution.
    fn info(&self) -> SourceInfo;

    /// The domains this source reports.
    fn domains(&self) -> Vec<Domain>;

    /// Energy per domain since the previous call. The first call sets the baseline and
    /// reports no energy.
    fn sample(&mut self, ctx: &SampleContext) -> PowerReading;

    /// The source's own idle power per domain, when it has a model of it (the
    /// estimate does); meters have none and are calibrated by the attribution stage.
    fn idle_power(&self) -> Vec<(Domain, Watts)> {
        Vec::new()
    }

    /// A one-line description of how the figures are obtained (for `check`).
    fn describe(&self) -> String {
        let info = self.info();
        let domains: Vec<String> = self.domains().iter().map(Domain::to_string).collect();
        format!(
            "{} ({}), domains {}",
            info.name,
            if info.estimated {
                "estimated"
            } else {
                "measured"
            },
            domains.join(", ")
        )
    }
}

/// A source that reads hardware energy counters. It is trusted only once its counters
/// are seen to advance: VMs often expose RAPL interfaces whose counters always read 0 J,
/// and a tree nobody updates measures nothing.
pub trait Meter: PowerSource {
    /// Why the counters did not advance over `wait`, in this source's own terms (which
    /// counters, where, what they read).
    fn not_advancing(&self, wait: Duration) -> String;

    /// Reads the counters twice, `wait` apart; fails with [`Meter::not_advancing`]'s
    /// reason when no domain's energy advanced. Leaves the second read as the baseline.
    fn check_advancing(&mut self, wait: Duration) -> Result<(), PowerError> {
        self.sample(&SampleContext::default());
        std::thread::sleep(wait);
        let reading = self.sample(&SampleContext::default());
        if reading.energies.iter().any(|e| e.joules > Joules::ZERO) {
            return Ok(());
        }
        Err(PowerError::Unavailable(self.not_advancing(wait)))
    }
}

/// Builds a [`DomainEnergy`] for `source`.
pub fn energy(info: &SourceInfo, domain: Domain, joules: Joules) -> DomainEnergy {
    DomainEnergy {
        domain,
        joules: joules.non_negative(),
        source: info.name,
        estimated: info.estimated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_round_trip() {
        for d in [
            Domain::Package(1),
            Domain::Core(0),
            Domain::Uncore(2),
            Domain::Dram(0),
            Domain::Psys,
            Domain::Gpu(7),
        ] {
            assert_eq!(d.to_string().parse::<Domain>().unwrap(), d);
        }
        assert!("socket-0".parse::<Domain>().is_err());
        assert!("package-x".parse::<Domain>().is_err());
    }

    #[test]
    fn totals_never_add_overlapping_domains() {
        let info = SourceInfo {
            name: "test",
            estimated: false,
            resolution_j: 0.0,
        };
        let reading = PowerReading {
            energies: vec![
                energy(&info, Domain::Package(0), Joules(10.0)),
                energy(&info, Domain::Core(0), Joules(6.0)),
                energy(&info, Domain::Package(1), Joules(5.0)),
                energy(&info, Domain::Dram(0), Joules(2.0)),
                energy(&info, Domain::Psys, Joules(30.0)),
            ],
            ..Default::default()
        };
        assert_eq!(reading.total(DomainClass::Cpu), Joules(15.0));
        assert_eq!(reading.total(DomainClass::Dram), Joules(2.0));
        assert_eq!(reading.total(DomainClass::Gpu), Joules(0.0));
    }

    #[test]
    fn energy_is_never_negative() {
        let info = SourceInfo {
            name: "t",
            estimated: true,
            resolution_j: 0.0,
        };
        assert_eq!(
            energy(&info, Domain::Psys, Joules(-1.0)).joules,
            Joules(0.0)
        );
    }
}
