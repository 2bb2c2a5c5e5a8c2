//! The joins: the probe's per-thread time, the interval's energy per domain and process
//! identities become joules per process, model, container and host, with an explicit
//! idle bucket, so that Σ processes + idle = measured energy in every interval.
//!
//! Per interval and domain (docs/ARCHITECTURE.md, "Attribution"): a package's energy
//! (and its DRAM's) is split by on-CPU time on that package's CPUs (see [`split`]);
//! idle power is `--idle-power` where given, else a fit of the domain's power on its
//! busy time, a stored calibration, a power model or the lowest power seen (see
//! [`idle`]). GPU energy is split by NVML's per-process view and the probe's driver
//! activity (see [`gpu`]).

pub mod gpu;
pub mod idle;
pub mod models;
pub mod report;
pub mod split;

use std::collections::{BTreeMap, HashMap};

pub use report::*;
use split::{IdlePolicy, split};

use crate::{
    identity::Identity,
    power::{Domain, DomainClass, PowerReading, packages::CpuPackages},
    probe::{GpuCalls, SchedInterval},
    units::{Joules, Nanos, Watts},
};
use idle::{Calibration, IdleModel, Observation, fit::FitConfig};
use models::ModelRules;

/// How energy is attributed.
#[derive(Clone, Debug, Default)]
pub struct AttributionConfig {
    /// Idle energy: bucket or share.
    pub idle_policy: IdlePolicy,
    /// `--idle-power`: watts by domain name (`package-0`) or class (`package`, `dram`,
    /// `gpu`, applying to each domain of that class).
    pub idle_power: BTreeMap<String, Watts>,
    /// Model rules.
    pub models: ModelRules,
    /// How idle power is fitted.
    pub idle_fit: FitConfig,
}

/// Per-process activity weights for each GPU (index → pid → weight).
pub type GpuWeights = BTreeMap<u32, BTreeMap<u32, u64>>;

/// The stateful attribution stage (it learns each domain's idle power).
pub struct Attributor {
    config: AttributionConfig,
    packages: CpuPackages,
    idle: IdleModel,
}

impl Attributor {
    /// An attributor for a host's CPU `packages`; `model_idle` is the power source's own
    /// idle figures (the estimate's), used for the domains it estimates.
    pub fn new(
        config: AttributionConfig,
        packages: CpuPackages,
        model_idle: Vec<(Domain, Watts)>,
    ) -> Self {
        let idle = IdleModel::new(config.idle_fit, config.idle_power.clone(), model_idle);
        Self {
            config,
            packages,
            idle,
        }
    }

    /// Starts from stored calibrations of this host's meters.
    pub fn with_calibrations(mut self, stored: Vec<Calibration>) -> Self {
        self.idle.set_calibrations(stored);
        self
    }

    /// The estimate model's idle figures for this host: the fallback for meters before
    /// any fit or calibration (flagged uncertain).
    pub fn with_prior(mut self, prior: Vec<(Domain, Watts)>) -> Self {
        self.idle.set_prior(prior);
        self
    }

    /// The model rules in use.
    pub fn models(&self) -> &ModelRules {
        &self.config.models
    }

    /// What the stage knows of each domain's idle power.
    pub fn idle(&self) -> &IdleModel {
        &self.idle
    }

    /// Attributes one interval, in joules (grams are the carbon stage's).
    pub fn attribute(
        &mut self,
        sched: &SchedInterval,
        power: &PowerReading,
        sources: SourceNames,
        identity: &mut Identity,
    ) -> IntervalReport {
        identity.observe(&sched.lifecycle, sched.end_ns);
        let duration = Nanos::between(sched.start_ns, sched.end_ns);
        let cpu = CpuUse::of(sched, &self.packages);
        let gpu = GpuUse::of(sched);
        let gpu_ids: Vec<u32> = power
            .energies
            .iter()
            .filter_map(|e| match e.domain {
                Domain::Gpu(g) => Some(g),
                _ => None,
            })
            .collect();
        let (gpu_weights, gpus) = gpu::gpu_weights(&gpu_ids, &power.gpu_processes, &gpu.calls);
        let mut domains = self.split_domains(power, duration, &cpu, &gpu_weights);
        let exposure = std::mem::take(&mut domains.exposure);
        let processes =
            self.process_reports(cpu, gpu, (&domains.joules, exposure), sched, identity);
        let (idle_origin, idle_uncertain) = idle_summary(&domains.idle_power);
        identity.forget_exited();
        let total_cpu: Nanos = processes.iter().map(|p| p.cpu_time_ns).sum();
        let mut report = IntervalReport {
            start_ns: sched.start_ns,
            end_ns: sched.end_ns,
            duration_s: duration.seconds(),
            models: Vec::new(),
            containers: Vec::new(),
            idle: GroupReport {
                name: "idle".into(),
                energy_j: domains.idle.total(),
                joules: domains.idle,
                watts: domains.idle.total().per(duration),
                ..Default::default()
            },
            total_cpu_time_s: total_cpu.seconds(),
            power: PowerSummary::new(power, sources, duration),
            idle_policy: self.config.idle_policy,
            idle_power: domains.idle_power,
            idle_origin,
            idle_uncertain,
            gpus,
            probe: sched.stats,
            probe_programs: sched.programs.clone(),
            processes,
            pod_metadata: identity.pods().map(|p| p.counts()),
        };
        regroup(&mut report);
        report
    }

    /// Splits every attributable domain's energy among the processes by its weights:
    /// CPU time on a package's CPUs for the package and its DRAM (all CPUs for psys),
    /// the GPU weights for a GPU.
    fn split_domains(
        &mut self,
        power: &PowerReading,
        duration: Nanos,
        cpu: &CpuUse,
        gpu_weights: &GpuWeights,
    ) -> DomainSplits {
        let empty = BTreeMap::new();
        let mut out = DomainSplits::default();
        for (domain, energy_j) in attributable(power) {
            let weights = match domain {
                Domain::Package(p) | Domain::Dram(p) => cpu.by_package.get(&p).unwrap_or(&empty),
                Domain::Psys => &cpu.ns,
                Domain::Gpu(g) => gpu_weights.get(&g).unwrap_or(&empty),
                Domain::Core(_) | Domain::Uncore(_) => continue,
            };
            let obs = Observation {
                energy: energy_j,
                duration,
                busy: busy_of(domain, cpu, power, duration),
            };
            let mut ip = self.idle.idle_power(domain, obs);
            let parts = split(
                energy_j,
                ip.watts * duration,
                weights,
                self.config.idle_policy,
            );
            let charged = (ip.watts * duration)
                .non_negative()
                .min(energy_j.non_negative());
            let total_weight: u64 = weights.values().sum();
            ip.shared = total_weight > 0;
            ip.charged_j = if ip.shared {
                charged
            } else {
                energy_j.non_negative()
            };
            out.idle_power.push(ip);
            let class = domain.class();
            for (pid, share) in parts.shares {
                let j = out.joules.entry(pid).or_default();
                j.add(class, share.dynamic_j + share.idle_j);
                j.idle_j += share.idle_j;
                let f = weights.get(&pid).copied().unwrap_or(0) as f64 / total_weight as f64;
                out.exposure.entry(pid).or_default().push(IdleExposure {
                    domain,
                    seconds: duration.seconds() * f,
                    idle_j: charged * f,
                    dynamic_j: share.dynamic_j,
                });
            }
            out.idle.add(class, parts.idle_bucket_j);
        }
        out
    }

    /// One report per process that ran, held energy or drove a GPU, most energy first.
    fn process_reports(
        &self,
        mut cpu: CpuUse,
        mut gpu: GpuUse,
        (joules, mut exposure): (
            &BTreeMap<u32, EnergyByClass>,
            BTreeMap<u32, Vec<IdleExposure>>,
        ),
        sched: &SchedInterval,
        identity: &mut Identity,
    ) -> Vec<ProcessReport> {
        let duration = Nanos::between(sched.start_ns, sched.end_ns);
        let mut pids: Vec<u32> = cpu
            .ns
            .keys()
            .chain(joules.keys())
            .chain(gpu.calls.keys())
            .copied()
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let mut processes: Vec<ProcessReport> = pids
            .into_iter()
            .map(|pid| {
                let cgroup_id = cpu.cgroup_of.get(&pid).copied().unwrap_or(0);
                let info = identity.process(pid, cgroup_id, sched.end_ns);
                let ns = Nanos(cpu.ns.get(&pid).copied().unwrap_or(0));
                let j = joules.get(&pid).copied().unwrap_or_default();
                ProcessReport {
                    pid,
                    comm: info.comm.clone(),
                    exe_name: info.exe_name.clone(),
                    model: self.config.models.model_of(info),
                    model_rule: self.config.models.matched(info).is_some(),
                    cgroup: info.cgroup.clone(),
                    container_id: info.container_id.clone(),
                    container: info.container.clone(),
                    cpu_time_s: ns.seconds(),
                    cpu_time_ns: ns,
                    exited: info.exited,
                    threads: cpu.threads.remove(&pid).unwrap_or_default(),
                    thread_timeline: ThreadTimeline::default(),
                    gpu_activity: gpu.calls.get(&pid).copied().unwrap_or_default(),
                    gpu_threads: gpu.threads.remove(&pid).unwrap_or_default(),
                    gpu_timeline: GpuTimeline::default(),
                    energy_j: j.total(),
                    joules: j,
                    watts: j.total().per(duration),
                    idle_exposure: exposure.remove(&pid).unwrap_or_default(),
                }
            })
            .collect();
        processes.sort_by(|a, b| {
            b.energy_j
                .total_cmp(&a.energy_j)
                .then(b.cpu_time_ns.cmp(&a.cpu_time_ns))
                .then(a.pid.cmp(&b.pid))
        });
        processes
    }
}

/// On-CPU time in one interval: per process, per package, per thread, and the latest
/// cgroup id seen of each process.
#[derive(Default)]
struct CpuUse {
    ns: BTreeMap<u32, u64>,
    by_package: BTreeMap<u32, BTreeMap<u32, u64>>,
    threads: HashMap<u32, BTreeMap<u32, u64>>,
    cgroup_of: HashMap<u32, u64>,
}

impl CpuUse {
    fn of(sched: &SchedInterval, packages: &CpuPackages) -> Self {
        let mut cpu = Self::default();
        for s in &sched.slices {
            *cpu.ns.entry(s.tgid).or_default() += s.on_cpu_ns;
            *cpu.threads
                .entry(s.tgid)
                .or_default()
                .entry(s.tid)
                .or_default() += s.on_cpu_ns;
            *cpu.by_package
                .entry(packages.package_of(s.cpu))
                .or_default()
                .entry(s.tgid)
                .or_default() += s.on_cpu_ns;
            if s.cgroup_id != 0 {
                cpu.cgroup_of.insert(s.tgid, s.cgroup_id);
            }
        }
        cpu
    }
}

/// GPU-driver activity in one interval, per process and per thread.
#[derive(Default)]
struct GpuUse {
    calls: BTreeMap<u32, GpuCalls>,
    threads: HashMap<u32, BTreeMap<u32, GpuCalls>>,
}

impl GpuUse {
    fn of(sched: &SchedInterval) -> Self {
        let mut gpu = Self::default();
        for t in &sched.gpu {
            gpu.calls.entry(t.tgid).or_default().add(&t.calls);
            gpu.threads
                .entry(t.tgid)
                .or_default()
                .entry(t.tid)
                .or_default()
                .add(&t.calls);
        }
        gpu
    }
}

/// Every domain's split, summed: joules per process, the idle bucket, and the idle
/// power each domain used; each process's part of each domain.
#[derive(Default)]
struct DomainSplits {
    joules: BTreeMap<u32, EnergyByClass>,
    idle: EnergyByClass,
    idle_power: Vec<IdlePower>,
    exposure: BTreeMap<u32, Vec<IdleExposure>>,
}

/// How busy `domain` was over the interval: busy CPUs of its package (all CPUs for
/// psys), or the GPU's utilisation from NVML (None when NVML gave none).
fn busy_of(domain: Domain, cpu: &CpuUse, power: &PowerReading, duration: Nanos) -> Option<f64> {
    let secs = duration.seconds();
    if secs <= 0.0 {
        return None;
    }
    let ns = |m: &BTreeMap<u32, u64>| m.values().sum::<u64>() as f64 / 1e9;
    match domain {
        Domain::Package(p) | Domain::Dram(p) => Some(cpu.by_package.get(&p).map_or(0.0, ns) / secs),
        Domain::Psys => Some(ns(&cpu.ns) / secs),
        Domain::Gpu(g) => power
            .gpu_processes
            .iter()
            .find(|u| u.gpu == g)
            .and_then(|u| u.busy),
        Domain::Core(_) | Domain::Uncore(_) => None,
    }
}

/// Rebuilds the model and container groups from the processes.
pub fn regroup(report: &mut IntervalReport) {
    let mut models: BTreeMap<String, GroupReport> = BTreeMap::new();
    let mut containers: BTreeMap<String, GroupReport> = BTreeMap::new();
    for p in &report.processes {
        models
            .entry(p.model.clone())
            .or_insert_with(|| GroupReport {
                name: p.model.clone(),
                ..Default::default()
            })
            .add(p);
        let container = p
            .container_id
            .clone()
            .or_else(|| p.cgroup.clone())
            .unwrap_or_else(|| "/".into());
        containers
            .entry(container.clone())
            .or_insert_with(|| GroupReport {
                name: container,
                k8s: p.container.as_ref().and_then(K8sNames::of),
                ..Default::default()
            })
            .add(p);
    }
    let sorted = |m: BTreeMap<String, GroupReport>| {
        let mut v: Vec<GroupReport> = m.into_values().collect();
        v.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j).then(a.name.cmp(&b.name)));
        v
    };
    report.models = sorted(models);
    report.containers = sorted(containers);
}

/// Σ processes + idle bucket of `class` in a report (for the conservation check).
pub fn attributed_total(report: &IntervalReport, class: DomainClass) -> Joules {
    let pick = |j: &EnergyByClass| match class {
        DomainClass::Cpu | DomainClass::Platform => j.cpu_j,
        DomainClass::Dram => j.dram_j,
        DomainClass::Gpu => j.gpu_j,
        DomainClass::PartOfPackage => Joules::ZERO,
    };
    report
        .processes
        .iter()
        .map(|p| pick(&p.joules))
        .sum::<Joules>()
        + pick(&report.idle.joules)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
