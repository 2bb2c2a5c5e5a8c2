//! What one interval's attribution produces: per process, per model, per container,
//! the idle bucket, and the host — in joules only: plain data for the carbon stage.

use crate::{
    identity::container::ContainerInfo,
    power::{Domain, DomainClass, DomainError, PowerReading},
    probe::{GpuCalls, ProbeStats},
    units::{Joules, Nanos, Watts},
};

use super::{gpu::GpuSplit, idle::fit::FitStatus, split::IdlePolicy};

/// Energy by domain class.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct EnergyByClass {
    /// CPU packages (dynamic part, plus the idle share with `--idle share`).
    pub cpu_j: Joules,
    /// DRAM.
    pub dram_j: Joules,
    /// GPUs.
    pub gpu_j: Joules,
    /// Allocated idle share (only with `--idle share`; already inside cpu/dram/gpu).
    pub idle_j: Joules,
}

impl EnergyByClass {
    /// cpu + dram + gpu.
    pub fn total(&self) -> Joules {
        self.cpu_j + self.dram_j + self.gpu_j
    }

    /// Adds `j` to the total of `class`.
    pub fn add(&mut self, class: DomainClass, j: Joules) {
        match class {
            DomainClass::Cpu | DomainClass::Platform => self.cpu_j += j,
            DomainClass::Dram => self.dram_j += j,
            DomainClass::Gpu => self.gpu_j += j,
            DomainClass::PartOfPackage => {}
        }
    }

    /// Adds another set.
    pub fn merge(&mut self, other: &EnergyByClass) {
        self.cpu_j += other.cpu_j;
        self.dram_j += other.dram_j;
        self.gpu_j += other.gpu_j;
        self.idle_j += other.idle_j;
    }
}

/// Per thread: its on-CPU ns in each sub-interval read, (start, end, ns) in monotonic ns.
pub type ThreadTimeline = std::collections::BTreeMap<u32, Vec<(u64, u64, u64)>>;

/// Per thread: its GPU-driver activity in each sub-interval read, (start, end, calls).
pub type GpuTimeline = std::collections::BTreeMap<u32, Vec<(u64, u64, GpuCalls)>>;

/// One process's use of the machine in one interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Kernel task name.
    pub comm: String,
    /// Executable file name (or comm).
    pub exe_name: String,
    /// Model (rule match, else executable name).
    pub model: String,
    /// Whether a model rule matched (such processes always get their own series).
    #[serde(skip)]
    pub model_rule: bool,
    /// Cgroup v2 path, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Container id, when the cgroup is a container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container in full (runtime, pod uid, QoS, pod name, namespace, labels), when
    /// the cgroup is a container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    /// On-CPU time in the interval, seconds (all threads, all CPUs).
    pub cpu_time_s: f64,
    /// On-CPU time in the interval, nanoseconds (exact).
    pub cpu_time_ns: Nanos,
    /// Whether the process exited during the interval.
    pub exited: bool,
    /// On-CPU ns per thread id (for per-request splits; not exported).
    #[serde(skip)]
    pub threads: std::collections::BTreeMap<u32, u64>,
    /// When each thread ran within the interval, at the sub-interval resolution (for
    /// per-request splits; empty without sub-interval sampling; not exported).
    #[serde(skip)]
    pub thread_timeline: ThreadTimeline,
    /// GPU-driver activity of the process in the interval (absent when none).
    #[serde(skip_serializing_if = "GpuCalls::is_zero")]
    pub gpu_activity: GpuCalls,
    /// GPU-driver activity per thread id (absent when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub gpu_threads: std::collections::BTreeMap<u32, GpuCalls>,
    /// When each thread drove the GPU, at the sub-interval resolution (for per-request
    /// splits; not exported).
    #[serde(skip)]
    pub gpu_timeline: GpuTimeline,
    /// Energy attributed (cpu + dram + gpu).
    pub energy_j: Joules,
    /// By domain class.
    #[serde(flatten)]
    pub joules: EnergyByClass,
    /// Average power over the interval.
    pub watts: Watts,
    /// Its part of each domain's split (for re-splitting with another idle power; not
    /// exported).
    #[serde(skip)]
    pub idle_exposure: Vec<IdleExposure>,
}

/// A process's part of one domain's split in one interval: what a re-split with
/// another idle power needs (`measure` re-splits its whole run with the idle power
/// known at its end).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleExposure {
    /// The domain.
    pub domain: Domain,
    /// Its fraction of the domain's weights times the interval, seconds: the idle
    /// energy its part stands for is this × the idle power.
    pub seconds: f64,
    /// The idle energy its part stood for (in the bucket, or given to it with
    /// `--idle share`).
    pub idle_j: Joules,
    /// The dynamic energy it was given.
    pub dynamic_j: Joules,
}

/// A group of processes (a model, or a container).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GroupReport {
    /// Model name or container id/cgroup path.
    pub name: String,
    /// Processes in the group this interval.
    pub processes: u32,
    /// On-CPU time, seconds.
    pub cpu_time_s: f64,
    /// Energy.
    pub energy_j: Joules,
    /// By domain class.
    #[serde(flatten)]
    pub joules: EnergyByClass,
    /// Average power.
    pub watts: Watts,
    /// For a container in a pod: the pod and container names (absent otherwise).
    #[serde(flatten)]
    pub k8s: Option<K8sNames>,
}

/// A container's Kubernetes names, for its row and its metric labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct K8sNames {
    /// `k8s.pod.uid`.
    #[serde(rename = "k8s.pod.uid")]
    pub pod_uid: String,
    /// `k8s.pod.name`, when the pod metadata knows the pod.
    #[serde(rename = "k8s.pod.name", skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `k8s.namespace.name`, when the pod metadata knows the pod.
    #[serde(rename = "k8s.namespace.name", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `k8s.container.name`, when the pod metadata names the container.
    #[serde(rename = "k8s.container.name", skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

impl K8sNames {
    /// The metric labels of a container row: `k8s.pod.name`, `k8s.namespace.name` and
    /// `k8s.container.name`, those that are known.
    pub fn metric_labels(&self) -> Vec<(&'static str, String)> {
        [
            ("k8s.pod.name", &self.pod_name),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.container.name", &self.container_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.clone()?)))
        .collect()
    }

    /// The names of a container in a pod; None when it is in none.
    pub fn of(c: &ContainerInfo) -> Option<Self> {
        let pod_uid = c.pod_uid.clone()?;
        Some(Self {
            pod_uid,
            pod_name: c.pod.as_ref().map(|p| p.name.clone()),
            namespace: c.pod.as_ref().map(|p| p.namespace.clone()),
            container_name: c.container_name.clone(),
        })
    }
}

impl GroupReport {
    /// Adds a process to the group.
    pub fn add(&mut self, p: &ProcessReport) {
        self.processes += 1;
        self.cpu_time_s += p.cpu_time_s;
        self.energy_j += p.energy_j;
        self.joules.merge(&p.joules);
        self.watts += p.watts;
    }
}

/// Energy and average power of one domain in one interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DomainPower {
    /// The domain.
    pub domain: Domain,
    /// Energy in the interval.
    pub joules: Joules,
    /// Average power over the interval.
    pub watts: Watts,
    /// Which source measured it.
    pub source: &'static str,
    /// Whether it is an estimate.
    pub estimated: bool,
}

/// The sources in use.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SourceNames {
    /// CPU/DRAM source.
    pub cpu: &'static str,
    /// GPU source (`none` without GPUs).
    pub gpu: &'static str,
}

/// The host's energy in one interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PowerSummary {
    /// The sources in use.
    pub sources: SourceNames,
    /// Whether any figure is estimated.
    pub estimated: bool,
    /// Every domain read, including overlapping ones (core within package, psys).
    pub domains: Vec<DomainPower>,
    /// Domains that could not be read this interval.
    pub errors: Vec<DomainError>,
    /// CPU packages (or the platform, where only psys exists).
    pub cpu_j: Joules,
    /// DRAM.
    pub dram_j: Joules,
    /// GPUs.
    pub gpu_j: Joules,
    /// cpu + dram + gpu.
    pub total_j: Joules,
}

/// The domains whose energy is attributed: packages, DRAM and GPUs; psys stands in for
/// the packages on hosts that only have psys.
pub fn attributable(reading: &PowerReading) -> Vec<(Domain, Joules)> {
    let has_package = reading
        .energies
        .iter()
        .any(|e| e.domain.class() == DomainClass::Cpu);
    reading
        .energies
        .iter()
        .filter(|e| match e.domain.class() {
            DomainClass::Cpu | DomainClass::Dram | DomainClass::Gpu => true,
            DomainClass::Platform => !has_package,
            DomainClass::PartOfPackage => false,
        })
        .map(|e| (e.domain, e.joules))
        .collect()
}

impl PowerSummary {
    /// Summarises a reading over an interval of length `duration`.
    pub fn new(reading: &PowerReading, sources: SourceNames, duration: Nanos) -> Self {
        let domains: Vec<DomainPower> = reading
            .energies
            .iter()
            .map(|e| DomainPower {
                domain: e.domain,
                joules: e.joules,
                watts: e.joules.per(duration),
                source: e.source,
                estimated: e.estimated,
            })
            .collect();
        let mut totals = EnergyByClass::default();
        for (domain, j) in attributable(reading) {
            totals.add(domain.class(), j);
        }
        Self {
            sources,
            estimated: domains.iter().any(|d| d.estimated),
            domains,
            errors: reading.errors.clone(),
            cpu_j: totals.cpu_j,
            dram_j: totals.dram_j,
            gpu_j: totals.gpu_j,
            total_j: totals.total(),
        }
    }
}

/// Where a domain's idle power came from (the JSON values are a contract; README,
/// "Idle power").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleOrigin {
    /// `--idle-power`.
    Configured,
    /// A good fit of interval power on busy CPUs (or GPU utilisation) this run.
    Fitted,
    /// A stored calibration (`energy-agent calibrate`, or a good fit an earlier run
    /// stored), with its date.
    Calibrated,
    /// A power model's idle figure: the estimate's own where it measures, else the
    /// estimate model of this host standing in for a meter's (then uncertain).
    Model,
    /// The lowest interval power seen so far (uncertain: on a busy host it is a busy
    /// power). Before the fitted model this was reported as `calibrated`.
    Lowest,
}

impl IdleOrigin {
    /// The JSON, metric and span attribute value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Fitted => "fitted",
            Self::Calibrated => "calibrated",
            Self::Model => "model",
            Self::Lowest => "lowest",
        }
    }

    /// The least trustworthy of two origins (precedence order: configured, fitted,
    /// calibrated, model, lowest).
    pub fn weaker(self, other: Self) -> Self {
        self.max(other)
    }
}

impl std::fmt::Display for IdleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A domain's idle power in one interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IdlePower {
    /// The domain.
    pub domain: Domain,
    /// Its idle power.
    pub watts: Watts,
    /// Where the figure came from.
    pub origin: IdleOrigin,
    /// Half-width of its band, about 95% (twice the fit's standard error), where a fit
    /// gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty_w: Option<Watts>,
    /// Whether the figure is a fallback that may be far off (`lowest`, or the
    /// estimate model standing in for a meter).
    pub uncertain: bool,
    /// When the stored calibration was made (origin `calibrated`), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibrated_at: Option<String>,
    /// This run's fit of the domain: `good`, or why not (`few_samples`,
    /// `steady_load`, `poor`); absent where none is made (configured, the estimate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitStatus>,
    /// Idle energy this domain was charged in the interval (for re-splits).
    #[serde(skip)]
    pub charged_j: Joules,
    /// Whether any process had a claim on the domain (else all of it was idle).
    #[serde(skip)]
    pub shared: bool,
}

impl IdlePower {
    /// A figure of `origin`, with nothing else known about it.
    pub fn new(domain: Domain, watts: Watts, origin: IdleOrigin) -> Self {
        Self {
            domain,
            watts,
            origin,
            uncertainty_w: None,
            uncertain: false,
            calibrated_at: None,
            fit: None,
            charged_j: Joules::ZERO,
            shared: false,
        }
    }
}

/// The least trustworthy origin among `idle` (None when empty), and whether any is
/// uncertain: the interval's summary.
pub fn idle_summary(idle: &[IdlePower]) -> (Option<IdleOrigin>, bool) {
    let origin = idle.iter().map(|i| i.origin).reduce(IdleOrigin::weaker);
    (origin, idle.iter().any(|i| i.uncertain))
}

impl IntervalReport {
    /// The interval's length.
    pub fn duration(&self) -> Nanos {
        Nanos::between(self.start_ns, self.end_ns)
    }
}

/// Everything the agent knows about one interval.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IntervalReport {
    /// Interval start (monotonic ns).
    #[serde(skip)]
    pub start_ns: u64,
    /// Interval end (monotonic ns).
    #[serde(skip)]
    pub end_ns: u64,
    /// Interval length, seconds.
    pub duration_s: f64,
    /// Processes that ran (or held energy) in the interval, most energy first.
    pub processes: Vec<ProcessReport>,
    /// Per model, most energy first.
    pub models: Vec<GroupReport>,
    /// Per container (or cgroup), most energy first.
    pub containers: Vec<GroupReport>,
    /// The idle bucket: energy no process was given.
    pub idle: GroupReport,
    /// Sum of on-CPU time of all processes, seconds.
    pub total_cpu_time_s: f64,
    /// The host's energy per domain.
    pub power: PowerSummary,
    /// How idle energy was treated.
    pub idle_policy: IdlePolicy,
    /// The idle power used per domain.
    pub idle_power: Vec<IdlePower>,
    /// The least trustworthy origin among `idle_power` (absent without domains).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_origin: Option<IdleOrigin>,
    /// Whether any domain's idle power is uncertain (its figures too).
    pub idle_uncertain: bool,
    /// How each GPU's energy was split.
    pub gpus: Vec<GpuSplit>,
    /// Probe counters after the interval.
    pub probe: ProbeStats,
    /// Each eBPF program's counters after the interval: runs, run time (both counted only
    /// with `kernel.bpf_stats_enabled=1`) and runs the kernel skipped.
    pub probe_programs: Vec<crate::probe::progstats::NamedProgramStats>,
    /// The pod metadata source's counts so far (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_metadata: Option<crate::identity::k8s::PodCounts>,
}
