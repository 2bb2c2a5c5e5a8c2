//! What one interval and one run become in the history: plain rows, built from the
//! carbon stage's report (joules and the grams derived from them with the interval's
//! own intensity, so the two always agree).

use crate::{
    attribute::{GroupReport, IntervalReport, K8sNames, regroup},
    carbon::CarbonReport,
    clock::WallClock,
};

/// What kind of run the rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// `energy-agent run --record`: every process of the host.
    Run,
    /// `energy-agent measure --record`: the measured command's processes (the host's
    /// figures are the whole host's, as in the measure report).
    Measure,
}

impl RunKind {
    /// The name stored in `runs.kind`.
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::Measure => "measure",
        }
    }
}

/// One run (a `run` or a `measure`), with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// What kind.
    pub kind: RunKind,
    /// When it started, Unix ns.
    pub started_unix_ns: u64,
    /// The host's name.
    pub host: String,
    /// The measured command (measure only).
    pub command: Option<Vec<String>>,
    /// `--label K=V`, e.g. model, version, commit.
    pub labels: Vec<(String, String)>,
    /// `--idle` (bucket or share).
    pub idle_policy: String,
}

impl RunInfo {
    /// A run of `kind` starting now, as `config` records it.
    pub fn starting_now(
        kind: RunKind,
        config: &super::RecordConfig,
        command: Option<Vec<String>>,
    ) -> Self {
        Self {
            kind,
            started_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            host: host_name(),
            command,
            labels: config.labels.clone(),
            idle_policy: config.idle_policy.clone(),
        }
    }
}

/// One domain's energy in one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainRow {
    /// Domain name (`package-0`, `dram-0`, `gpu-0`, …).
    pub domain: String,
    /// Its energy, J.
    pub joules: f64,
    /// The source that measured it.
    pub source: String,
    /// Whether it is an estimate.
    pub estimated: bool,
}

/// One process in one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessRow {
    /// Process id.
    pub pid: u32,
    /// Kernel task name.
    pub comm: String,
    /// Executable name.
    pub exe: String,
    /// Model.
    pub model: String,
    /// Container id, else cgroup, else `/`.
    pub container: String,
    /// On-CPU time, s.
    pub cpu_time_s: f64,
    /// Energy, J (cpu + dram + gpu).
    pub energy_j: f64,
    /// CPU part, J.
    pub cpu_j: f64,
    /// DRAM part, J.
    pub dram_j: f64,
    /// GPU part, J.
    pub gpu_j: f64,
    /// Allocated idle share within it (`--idle share`), J.
    pub idle_j: f64,
    /// Operational carbon, g.
    pub carbon_g: f64,
    /// Embodied carbon, g.
    pub embodied_g: f64,
}

/// A model or a container in one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupRow {
    /// Model name, or container id / cgroup.
    pub name: String,
    /// Processes in it.
    pub processes: u32,
    /// On-CPU time, s.
    pub cpu_time_s: f64,
    /// Energy, J.
    pub energy_j: f64,
    /// GPU part, J.
    pub gpu_j: f64,
    /// Allocated idle share within it, J.
    pub idle_j: f64,
    /// Average power, W.
    pub watts: f64,
    /// Operational carbon, g.
    pub carbon_g: f64,
    /// Embodied carbon, g.
    pub embodied_g: f64,
    /// A container's pod and names, when it was in a pod (`container_pods`).
    pub k8s: Option<K8sNames>,
}

/// One interval, as stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalRow {
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Length, s.
    pub duration_s: f64,
    /// CPU/DRAM source.
    pub cpu_source: String,
    /// GPU source (`none` without GPUs).
    pub gpu_source: String,
    /// Whether any figure is estimated.
    pub estimated: bool,
    /// Host CPU energy, J.
    pub cpu_j: f64,
    /// Host DRAM energy, J.
    pub dram_j: f64,
    /// Host GPU energy, J.
    pub gpu_j: f64,
    /// Host total, J.
    pub total_j: f64,
    /// The idle bucket, J.
    pub idle_j: f64,
    /// On-CPU time of all processes, s.
    pub cpu_time_s: f64,
    /// Grid intensity, g/kWh.
    pub g_per_kwh: f64,
    /// Where it came from.
    pub intensity_source: String,
    /// Why a fallback or edge value was used, if one was.
    pub intensity_note: Option<String>,
    /// PUE.
    pub pue: f64,
    /// The host's operational grams.
    pub carbon_g: f64,
    /// The host's embodied grams.
    pub embodied_g: f64,
    /// Every domain read.
    pub domains: Vec<DomainRow>,
    /// The processes kept.
    pub processes: Vec<ProcessRow>,
    /// Models of the kept processes.
    pub models: Vec<GroupRow>,
    /// Containers of the kept processes.
    pub containers: Vec<GroupRow>,
}

impl IntervalRow {
    /// The rows of one interval: the host's figures, and the processes `keep` accepts
    /// with their models and containers regrouped from just those.
    pub fn from_report(r: &CarbonReport, clock: &WallClock, keep: impl Fn(u32) -> bool) -> Self {
        let filtered;
        let energy: &IntervalReport = if r.processes.iter().all(|p| keep(p.pid)) {
            &r.energy
        } else {
            let mut e = r.energy.clone();
            e.processes.retain(|p| keep(p.pid));
            regroup(&mut e);
            filtered = e;
            &filtered
        };
        let group = |g: &GroupReport| {
            let f = r.carbon.group(g);
            GroupRow {
                name: g.name.clone(),
                processes: g.processes,
                cpu_time_s: g.cpu_time_s,
                energy_j: g.energy_j.get(),
                gpu_j: g.joules.gpu_j.get(),
                idle_j: g.joules.idle_j.get(),
                watts: g.watts.get(),
                carbon_g: f.carbon_g,
                embodied_g: f.embodied_g,
                k8s: g.k8s.clone(),
            }
        };
        Self {
            start_unix_ns: clock.unix_ns(r.start_ns),
            end_unix_ns: clock.unix_ns(r.end_ns),
            duration_s: r.duration_s,
            cpu_source: r.power.sources.cpu.to_string(),
            gpu_source: r.power.sources.gpu.to_string(),
            estimated: r.power.estimated,
            cpu_j: r.power.cpu_j.get(),
            dram_j: r.power.dram_j.get(),
            gpu_j: r.power.gpu_j.get(),
            total_j: r.power.total_j.get(),
            idle_j: r.idle.energy_j.get(),
            cpu_time_s: r.total_cpu_time_s,
            g_per_kwh: r.carbon.intensity.g_per_kwh,
            intensity_source: r.carbon.intensity.source.clone(),
            intensity_note: r.carbon.intensity.note.clone(),
            pue: r.carbon.pue,
            carbon_g: r.carbon.host_g,
            embodied_g: r.carbon.embodied_host_g,
            domains: domains(r),
            processes: processes(r, energy),
            models: energy.models.iter().map(group).collect(),
            containers: energy.containers.iter().map(group).collect(),
        }
    }
}

fn domains(r: &CarbonReport) -> Vec<DomainRow> {
    (r.power.domains.iter())
        .map(|d| DomainRow {
            domain: d.domain.to_string(),
            joules: d.joules.get(),
            source: d.source.to_string(),
            estimated: d.estimated,
        })
        .collect()
}

fn processes(r: &CarbonReport, energy: &IntervalReport) -> Vec<ProcessRow> {
    (energy.processes.iter())
        .map(|p| {
            let f = r.carbon.process(p);
            ProcessRow {
                pid: p.pid,
                comm: p.comm.clone(),
                exe: p.exe_name.clone(),
                model: p.model.clone(),
                container: (p.container_id.clone())
                    .or_else(|| p.cgroup.clone())
                    .unwrap_or_else(|| "/".into()),
                cpu_time_s: p.cpu_time_s,
                energy_j: p.energy_j.get(),
                cpu_j: p.joules.cpu_j.get(),
                dram_j: p.joules.dram_j.get(),
                gpu_j: p.joules.gpu_j.get(),
                idle_j: p.joules.idle_j.get(),
                carbon_g: f.carbon_g,
                embodied_g: f.embodied_g,
            }
        })
        .collect()
}

/// The host's name (from the kernel), or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
