//! Choosing sources: `--power-source auto` tries rapl-perf → rapl-powercap → estimate
//! for CPU/DRAM (a pointed-to `--powercap-root` is tried first) and nvml for GPUs; an
//! explicit choice is used or fails with its reason. [`survey`] reports every source for
//! `energy-agent check`.

use crate::units::Watts;
use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use super::{
    Domain, DomainClass, Meter, PowerError, PowerReading, PowerSource, SampleContext,
    estimate::{Estimate, HostFacts},
    msr::{self, MsrRapl},
    nvml::NvmlSource,
    packages::CpuPackages,
    perf::{self, PerfRapl},
    powercap::{self, Powercap},
    replay::{Recording, Replay},
};

/// The `--power-source` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceChoice {
    /// The best source this host has.
    Auto,
    /// The perf `power` PMU.
    RaplPerf,
    /// The powercap sysfs tree.
    RaplPowercap,
    /// The RAPL MSRs (opt-in).
    RaplMsr,
    /// The utilisation model.
    Estimate,
    /// A recording.
    Replay(PathBuf),
}

impl FromStr for SourceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "rapl-perf" => Ok(Self::RaplPerf),
            "rapl-powercap" => Ok(Self::RaplPowercap),
            "rapl-msr" => Ok(Self::RaplMsr),
            "estimate" => Ok(Self::Estimate),
            _ => match s.strip_prefix("replay:") {
                Some(path) if !path.is_empty() => Ok(Self::Replay(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown power source {s:?} (auto, rapl-perf, rapl-powercap, rapl-msr, estimate, replay:FILE)"
                )),
            },
        }
    }
}

/// Where each source looks, and how it is chosen.
#[derive(Clone, Debug)]
pub struct PowerOptions {
    /// `--power-source`.
    pub choice: SourceChoice,
    /// `--powercap-root`.
    pub powercap_root: PathBuf,
    /// The perf power PMU directory.
    pub perf_pmu: PathBuf,
    /// The MSR device directory.
    pub msr_dev: PathBuf,
    /// procfs (cpuinfo, meminfo).
    pub proc_root: PathBuf,
    /// sysfs CPU directory (topology).
    pub cpu_root: PathBuf,
    /// How long a meter is watched for its counters to advance before it is trusted.
    pub settle: Duration,
    /// Whether to look for GPUs (NVML).
    pub gpu: bool,
}

impl Default for PowerOptions {
    fn default() -> Self {
        Self {
            choice: SourceChoice::Auto,
            powercap_root: PathBuf::from(powercap::DEFAULT_ROOT),
            perf_pmu: PathBuf::from(perf::DEFAULT_PMU),
            msr_dev: PathBuf::from(msr::DEFAULT_DEV),
            proc_root: PathBuf::from("/proc"),
            cpu_root: PathBuf::from("/sys/devices/system/cpu"),
            settle: Duration::from_millis(150),
            gpu: true,
        }
    }
}

/// One source's state on this host, for `check` and the run header.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// Whether it works here.
    pub usable: bool,
    /// Whether the agent uses it.
    pub selected: bool,
    /// How it measures, or why it cannot.
    pub detail: String,
}

/// The sources in use: one for CPU/DRAM, at most one for GPUs.
pub struct PowerSources {
    /// CPU packages and DRAM (and their parts).
    pub cpu: Box<dyn PowerSource>,
    /// GPUs, when any can be read.
    pub gpu: Option<Box<dyn PowerSource>>,
    /// What was tried and why each was or was not chosen.
    pub statuses: Vec<SourceStatus>,
}

impl PowerSources {
    /// Samples every source in use.
    pub fn sample(&mut self, ctx: &SampleContext) -> PowerReading {
        let mut reading = self.cpu.sample(ctx);
        if let Some(gpu) = &mut self.gpu {
            reading.merge(gpu.sample(ctx));
        }
        reading
    }

    /// Whether any figure in use is estimated.
    pub fn estimated(&self) -> bool {
        self.cpu.info().estimated || self.gpu.as_ref().is_some_and(|g| g.info().estimated)
    }

    /// The sources' own idle power figures (see [`PowerSource::idle_power`]).
    pub fn idle_power(&self) -> Vec<(Domain, Watts)> {
        let mut v = self.cpu.idle_power();
        if let Some(g) = &self.gpu {
            v.extend(g.idle_power());
        }
        v
    }

    /// Name of the CPU source and of the GPU source (`none` when there is no GPU).
    pub fn names(&self) -> (&'static str, &'static str) {
        (
            self.cpu.info().name,
            self.gpu.as_ref().map_or("none", |g| g.info().name),
        )
    }
}

fn status(name: &str, usable: bool, selected: bool, detail: impl Into<String>) -> SourceStatus {
    SourceStatus {
        name: name.into(),
        usable,
        selected,
        detail: detail.into(),
    }
}

fn open_perf(opts: &PowerOptions, topology: &CpuPackages) -> Result<PerfRapl, PowerError> {
    let mut p = PerfRapl::open(&opts.perf_pmu, topology)?;
    p.check_advancing(opts.settle)?;
    Ok(p)
}

fn open_powercap(opts: &PowerOptions) -> Result<Powercap, PowerError> {
    let mut p = Powercap::open(&opts.powercap_root)?;
    p.check_advancing(opts.settle)?;
    Ok(p)
}

fn open_msr(opts: &PowerOptions, topology: &CpuPackages) -> Result<MsrRapl, PowerError> {
    let mut m = MsrRapl::open(&opts.msr_dev, topology)?;
    m.check_advancing(opts.settle)?;
    Ok(m)
}

fn is_gpu(d: Domain) -> bool {
    d.class() == DomainClass::Gpu
}

fn is_not_gpu(d: Domain) -> bool {
    !is_gpu(d)
}

fn boxed<S: PowerSource + 'static>(source: S) -> Box<dyn PowerSource> {
    Box::new(source)
}

/// `auto` for CPU/DRAM: the first meter whose counters advance (rapl-perf, then
/// rapl-powercap; the other way round for a pointed-to `--powercap-root`), else the
/// estimate. Each meter tried leaves its status.
fn auto_cpu(
    opts: &PowerOptions,
    topology: &CpuPackages,
    facts: &HostFacts,
    statuses: &mut Vec<SourceStatus>,
) -> Box<dyn PowerSource> {
    let custom_root = opts.powercap_root != Path::new(powercap::DEFAULT_ROOT);
    let order: [&str; 2] = if custom_root {
        ["rapl-powercap", "rapl-perf"]
    } else {
        ["rapl-perf", "rapl-powercap"]
    };
    for name in order {
        let opened = if name == "rapl-perf" {
            open_perf(opts, topology).map(boxed)
        } else {
            open_powercap(opts).map(boxed)
        };
        match opened {
            Ok(source) => {
                statuses.push(status(name, true, true, source.describe()));
                return source;
            }
            Err(e) => statuses.push(status(name, false, false, e.to_string())),
        }
    }
    let e = Estimate::new(facts, topology.clone());
    statuses.push(status("estimate", true, true, e.describe()));
    Box::new(e)
}

/// The GPU source: a recording's GPU domains when replaying, else NVML unless
/// `--no-gpu` (a replay never looks for real GPUs).
fn gpu_source(
    opts: &PowerOptions,
    replay: Option<Replay>,
    statuses: &mut Vec<SourceStatus>,
) -> Option<Box<dyn PowerSource>> {
    if let Some(replay) = replay {
        statuses.push(status("replay (gpu)", true, true, replay.describe()));
        return Some(Box::new(replay));
    }
    if !opts.gpu || matches!(opts.choice, SourceChoice::Replay(_)) {
        return None;
    }
    match NvmlSource::open() {
        Ok(n) => {
            statuses.push(status("nvml", true, true, n.describe()));
            Some(Box::new(n))
        }
        Err(e) => {
            statuses.push(status("nvml", false, false, e.to_string()));
            None
        }
    }
}

/// Opens the sources `opts` asks for.
pub fn select(opts: &PowerOptions) -> Result<PowerSources, PowerError> {
    let topology = CpuPackages::read(&opts.cpu_root);
    let facts = HostFacts::read(&opts.proc_root);
    let mut statuses = Vec::new();
    let mut gpu_from_replay = None;
    let cpu: Box<dyn PowerSource> = match &opts.choice {
        SourceChoice::Auto => auto_cpu(opts, &topology, &facts, &mut statuses),
        SourceChoice::RaplPerf => Box::new(open_perf(opts, &topology)?),
        SourceChoice::RaplPowercap => Box::new(open_powercap(opts)?),
        SourceChoice::RaplMsr => Box::new(open_msr(opts, &topology)?),
        SourceChoice::Estimate => Box::new(Estimate::new(&facts, topology.clone())),
        SourceChoice::Replay(path) => {
            let recording = Recording::load(path)?;
            if recording.domains().into_iter().any(is_gpu) {
                gpu_from_replay = Some(Replay::new(recording.clone(), is_gpu));
            }
            Box::new(Replay::new(recording, is_not_gpu))
        }
    };
    if !matches!(opts.choice, SourceChoice::Auto) {
        statuses.push(status(cpu.info().name, true, true, cpu.describe()));
    }
    let gpu = gpu_source(opts, gpu_from_replay, &mut statuses);
    Ok(PowerSources { cpu, gpu, statuses })
}

/// Every source, whether it works on this host, and why not (nothing is kept open).
pub fn survey(opts: &PowerOptions) -> Vec<SourceStatus> {
    let topology = CpuPackages::read(&opts.cpu_root);
    let facts = HostFacts::read(&opts.proc_root);
    let selected = select(opts).ok();
    let in_use = |name: &str| {
        selected.as_ref().is_some_and(|s| {
            let (cpu, gpu) = s.names();
            cpu == name || gpu == name
        })
    };
    let mut out = Vec::new();
    let mut add = |name: &str, result: Result<String, String>| {
        let used = in_use(name);
        out.push(match result {
            Ok(detail) => status(name, true, used, detail),
            Err(why) => status(name, false, false, why),
        });
    };
    add(
        "rapl-perf",
        open_perf(opts, &topology)
            .map(|p| p.describe())
            .map_err(|e| e.to_string()),
    );
    add(
        "rapl-powercap",
        open_powercap(opts)
            .map(|p| p.describe())
            .map_err(|e| e.to_string()),
    );
    add(
        "rapl-msr",
        open_msr(opts, &topology)
            .map(|p| format!("{} (opt-in only: --power-source rapl-msr)", p.describe()))
            .map_err(|e| format!("{e} (opt-in only: --power-source rapl-msr)")),
    );
    add(
        "estimate",
        Ok(Estimate::new(&facts, topology.clone()).describe()),
    );
    add(
        "nvml",
        NvmlSource::open()
            .map(|n| n.describe())
            .map_err(|e| e.to_string()),
    );
    if let SourceChoice::Replay(path) = &opts.choice {
        add(
            "replay",
            Recording::load(path)
                .map(|r| {
                    let d: Vec<String> = r.domains().iter().map(Domain::to_string).collect();
                    format!("{}: domains {}", path.display(), d.join(", "))
                })
                .map_err(|e| e.to_string()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::powercap::tests::write_zone;

    #[test]
    fn parses_choices() {
        assert_eq!("auto".parse::<SourceChoice>().unwrap(), SourceChoice::Auto);
        assert_eq!(
            "replay:/tmp/x.csv".parse::<SourceChoice>().unwrap(),
            SourceChoice::Replay("/tmp/x.csv".into())
        );
        assert!("replay:".parse::<SourceChoice>().is_err());
        assert!(
            "rapl"
                .parse::<SourceChoice>()
                .unwrap_err()
                .contains("rapl-perf")
        );
    }

    fn opts(root: &Path) -> PowerOptions {
        PowerOptions {
            powercap_root: root.to_path_buf(),
            settle: Duration::from_millis(30),
            gpu: false,
            ..Default::default()
        }
    }

    #[test]
    fn auto_falls_back_to_estimate_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        write_zone(&dir.path().join("intel-rapl:0"), "package-0", 0, 1_000_000);
        let s = select(&opts(dir.path())).unwrap();
        assert_eq!(s.names().0, "estimate");
        assert!(s.estimated());
        let powercap = s
            .statuses
            .iter()
            .find(|x| x.name == "rapl-powercap")
            .unwrap();
        assert!(!powercap.usable);
        assert!(powercap.detail.contains("advanced"), "{}", powercap.detail);
    }

    #[test]
    fn auto_takes_an_advancing_powercap_tree() {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("intel-rapl:0");
        write_zone(&zone, "package-0", 0, 1_000_000_000);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (zone, stop) = (zone.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut uj = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    uj += 1000;
                    // Atomic replace, as sysfs reads are: never a half-written number.
                    std::fs::write(zone.join(".tmp"), uj.to_string()).unwrap();
                    std::fs::rename(zone.join(".tmp"), zone.join("energy_uj")).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let s = select(&opts(dir.path())).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(s.names(), ("rapl-powercap", "none"));
        assert!(!s.estimated());
    }

    #[test]
    fn explicit_choice_fails_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.choice = SourceChoice::RaplPowercap;
        let err = select(&o).err().unwrap();
        assert!(err.to_string().contains("no intel-rapl zones"), "{err}");
        o.choice = SourceChoice::RaplMsr;
        o.msr_dev = dir.path().join("nope");
        assert!(select(&o).err().unwrap().to_string().contains("msr"));
    }

    #[test]
    fn replay_splits_cpu_and_gpu_domains() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.csv");
        std::fs::write(&file, "0,package-0,joules,0\n0,gpu-0,power_w,100\n").unwrap();
        let mut o = opts(dir.path());
        o.choice = SourceChoice::Replay(file);
        let s = select(&o).unwrap();
        assert_eq!(s.names(), ("replay", "replay"));
        assert_eq!(s.cpu.domains(), vec![Domain::Package(0)]);
        assert_eq!(s.gpu.as_ref().unwrap().domains(), vec![Domain::Gpu(0)]);
    }
}
