//! The joins: the probe's per-thread time, the interval's energy per domain and process
//! identities become joules per process, model, container and host, with an explicit
//! idle bucket, so that Σ processes + idle = measured energy in every interval.
//!
//! Per interval and domain (docs/ARCHITECTURE.md, "Attribution"): a package's energy
//! (and its DRAM's) is split by on-CPU time on that package's CPUs (see [`split`]);
//! idle power is `--idle-power` where given, else the power model's idle figure, else the
//! lowest power observed so far on the domain. GPU energy is split by NVML's
//! per-process view and the probe's driver activity (see [`gpu`]).

pub mod gpu;
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
}

/// Per-process activity weights for each GPU (index → pid → weight).
pub type GpuWeights = BTreeMap<u32, BTreeMap<u32, u64>>;

/// The stateful attribution stage (it remembers each domain's lowest power).
pub struct Attributor {
    config: AttributionConfig,
    packages: CpuPackages,
    model_idle: BTreeMap<Domain, Watts>,
    lowest_w: BTreeMap<Domain, Watts>,
}

fn class_name(d: Domain) -> &'static str {
    match d {
        Domain::Package(_) => "package",
        Domain::Core(_) => "core",
        Domain::Uncore(_) => "uncore",
        Domain::Dram(_) => "dram",
        Domain::Psys => "psys",
        Domain::Gpu(_) => "gpu",
    }
}

impl Attributor {
    /// An attributor for a host.s CPU `packages`; `model_idle` is the power source's own idle
    /// figures (the estimate model's), used when `--idle-power` does not give one.
    pub fn new(
        config: AttributionConfig,
        packages: CpuPackages,
        model_idle: Vec<(Domain, Watts)>,
    ) -> Self {
        Self {
            config,
            packages,
            model_idle: model_idle.into_iter().collect(),
            lowest_w: BTreeMap::new(),
        }
    }

    /// The model rules in use.
    pub fn models(&self) -> &ModelRules {
        &self.config.models
    }

    /// Idle power of `domain` given its power `observed_w` this interval.
    fn idle_power(&mut self, domain: Domain, observed_w: Watts) -> IdlePower {
        let configured = self
            .config
            .idle_power
            .get(&domain.to_string())
            .or_else(|| self.config.idle_power.get(class_name(domain)));
        if let Some(&watts) = configured {
            return IdlePower {
                domain,
                watts,
                origin: IdleOrigin::Configured,
            };
        }
        if let Some(&watts) = self.model_idle.get(&domain) {
            return IdlePower {
                domain,
                watts,
                origin: IdleOrigin::Model,
            };
        }
        let lowest = self.lowest_w.entry(domain).or_insert(observed_w);
        *lowest = lowest.min(observed_w);
        IdlePower {
            domain,
            watts: *lowest,
            origin: IdleOrigin::Calibrated,
        }
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
        let domains = self.split_domains(power, duration, &cpu, &gpu_weights);
        let processes = self.process_reports(cpu, gpu, &domains.joules, sched, identity);
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
            gpus,
            probe: sched.stats,
            probe_programs: sched.programs.clone(),
            processes,
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
            let ip = self.idle_power(domain, energy_j.per(duration));
            let parts = split(
                energy_j,
                ip.watts * duration,
                weights,
                self.config.idle_policy,
            );
            out.idle_power.push(ip);
            let class = domain.class();
            for (pid, share) in parts.shares {
                let j = out.joules.entry(pid).or_default();
                j.add(class, share.dynamic_j + share.idle_j);
                j.idle_j += share.idle_j;
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
        joules: &BTreeMap<u32, EnergyByClass>,
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
/// power each domain used.
#[derive(Default)]
struct DomainSplits {
    joules: BTreeMap<u32, EnergyByClass>,
    idle: EnergyByClass,
    idle_power: Vec<IdlePower>,
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
