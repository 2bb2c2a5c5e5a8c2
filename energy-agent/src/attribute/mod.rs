//! The joins: the probe's per-thread time, the interval's energy per domain and process
//! identities become joules per process, model, container and host, with an explicit
//! idle bucket, so that Σ processes + idle = measured energy in every interval.
//!
//! Per interval and domain (DESIGN.md "Attribution, precisely"): a package's energy
//! (and its DRAM's) is split by on-CPU time on that package's CPUs (see [`split`]);
//! idle power is `--idle-power` where given, else the power model's idle figure, else the
//! lowest power observed so far on the domain. GPU energy is split by NVML's
//! per-process view and the probe's driver activity (see [`gpu`]).

pub mod gpu;
pub mod models;
pub mod report;
pub mod requests;
pub mod split;

use std::collections::{BTreeMap, HashMap};

pub use report::*;
use split::{IdlePolicy, split};

use crate::{
    identity::Identity,
    power::{Domain, DomainClass, PowerReading, topology::Topology},
    probe::{GpuCalls, SchedInterval},
};
use models::ModelRules;

/// How energy is attributed.
#[derive(Clone, Debug, Default)]
pub struct AttributionConfig {
    /// Idle energy: bucket or share.
    pub idle_policy: IdlePolicy,
    /// `--idle-power`: watts by domain name (`package-0`) or class (`package`, `dram`,
    /// `gpu`, applying to each domain of that class).
    pub idle_power: BTreeMap<String, f64>,
    /// Model rules.
    pub models: ModelRules,
}

/// Per-process activity weights for each GPU (index → pid → weight).
pub type GpuWeights = BTreeMap<u32, BTreeMap<u32, u64>>;

/// The stateful attribution stage (it remembers each domain's lowest power).
pub struct Attributor {
    config: AttributionConfig,
    topology: Topology,
    model_idle: BTreeMap<Domain, f64>,
    lowest_w: BTreeMap<Domain, f64>,
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
    /// An attributor for a host's `topology`; `model_idle` is the power source's own idle
    /// figures (the estimate model's), used when `--idle-power` does not give one.
    pub fn new(
        config: AttributionConfig,
        topology: Topology,
        model_idle: Vec<(Domain, f64)>,
    ) -> Self {
        Self {
            config,
            topology,
            model_idle: model_idle.into_iter().collect(),
            lowest_w: BTreeMap::new(),
        }
    }

    /// The model rules in use.
    pub fn models(&self) -> &ModelRules {
        &self.config.models
    }

    /// Idle power of `domain` given its power `observed_w` this interval.
    fn idle_power(&mut self, domain: Domain, observed_w: f64) -> IdlePower {
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

    /// Attributes one interval. Carbon figures are left at zero for the carbon stage.
    pub fn attribute(
        &mut self,
        sched: &SchedInterval,
        power: &PowerReading,
        sources: SourceNames,
        identity: &mut Identity,
    ) -> IntervalReport {
        identity.observe(&sched.lifecycle, sched.end_ns);
        let seconds = sched.duration_ns() as f64 / 1e9;

        // On-CPU time per process, per package, and the latest cgroup id seen.
        let mut cpu_ns: BTreeMap<u32, u64> = BTreeMap::new();
        let mut by_package: BTreeMap<u32, BTreeMap<u32, u64>> = BTreeMap::new();
        let mut cgroup_of: HashMap<u32, u64> = HashMap::new();
        let mut threads: HashMap<u32, BTreeMap<u32, u64>> = HashMap::new();
        for s in &sched.slices {
            *cpu_ns.entry(s.tgid).or_default() += s.on_cpu_ns;
            *threads.entry(s.tgid).or_default().entry(s.tid).or_default() += s.on_cpu_ns;
            *by_package
                .entry(self.topology.package_of(s.cpu))
                .or_default()
                .entry(s.tgid)
                .or_default() += s.on_cpu_ns;
            if s.cgroup_id != 0 {
                cgroup_of.insert(s.tgid, s.cgroup_id);
            }
        }
        let all_cpus: BTreeMap<u32, u64> = cpu_ns.clone();
        let empty = BTreeMap::new();

        // GPU-driver activity per process and thread, and each GPU's weights.
        let mut gpu_calls: BTreeMap<u32, GpuCalls> = BTreeMap::new();
        let mut gpu_threads: HashMap<u32, BTreeMap<u32, GpuCalls>> = HashMap::new();
        for t in &sched.gpu {
            gpu_calls.entry(t.tgid).or_default().add(&t.calls);
            gpu_threads
                .entry(t.tgid)
                .or_default()
                .entry(t.tid)
                .or_default()
                .add(&t.calls);
        }
        let gpu_ids: Vec<u32> = power
            .energies
            .iter()
            .filter_map(|e| match e.domain {
                Domain::Gpu(g) => Some(g),
                _ => None,
            })
            .collect();
        let (gpu_weights, gpus) = gpu::gpu_weights(&gpu_ids, &power.gpu_processes, &gpu_calls);

        let mut joules: BTreeMap<u32, Joules> = BTreeMap::new();
        let mut idle = Joules::default();
        let mut idle_power = Vec::new();
        for (domain, energy_j) in attributable(power) {
            let class = domain.class();
            let weights = match domain {
                Domain::Package(p) | Domain::Dram(p) => by_package.get(&p).unwrap_or(&empty),
                Domain::Psys => &all_cpus,
                Domain::Gpu(g) => gpu_weights.get(&g).unwrap_or(&empty),
                Domain::Core(_) | Domain::Uncore(_) => continue,
            };
            let observed_w = if seconds > 0.0 {
                energy_j / seconds
            } else {
                0.0
            };
            let ip = self.idle_power(domain, observed_w);
            let parts = split(
                energy_j,
                ip.watts * seconds,
                weights,
                self.config.idle_policy,
            );
            idle_power.push(ip);
            for (pid, share) in parts.shares {
                let j = joules.entry(pid).or_default();
                j.add(class, share.dynamic_j + share.idle_j);
                j.idle_j += share.idle_j;
            }
            idle.add(class, parts.idle_bucket_j);
        }

        let mut pids: Vec<u32> = cpu_ns
            .keys()
            .chain(joules.keys())
            .chain(gpu_calls.keys())
            .copied()
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let mut processes: Vec<ProcessReport> = pids
            .into_iter()
            .map(|pid| {
                let info =
                    identity.process(pid, cgroup_of.get(&pid).copied().unwrap_or(0), sched.end_ns);
                let ns = cpu_ns.get(&pid).copied().unwrap_or(0);
                let j = joules.get(&pid).copied().unwrap_or_default();
                ProcessReport {
                    pid,
                    comm: info.comm.clone(),
                    exe_name: info.exe_name.clone(),
                    model: self.config.models.model_of(info),
                    model_rule: self.config.models.matched(info).is_some(),
                    cgroup: info.cgroup.clone(),
                    container_id: info.container_id.clone(),
                    cpu_time_s: ns as f64 / 1e9,
                    cpu_time_ns: ns,
                    exited: info.exited,
                    threads: threads.remove(&pid).unwrap_or_default(),
                    thread_timeline: ThreadTimeline::default(),
                    gpu_activity: gpu_calls.get(&pid).copied().unwrap_or_default(),
                    gpu_threads: gpu_threads.remove(&pid).unwrap_or_default(),
                    gpu_timeline: GpuTimeline::default(),
                    energy_j: j.total(),
                    joules: j,
                    watts: if seconds > 0.0 {
                        j.total() / seconds
                    } else {
                        0.0
                    },
                    carbon_g: 0.0,
                    embodied_g: 0.0,
                }
            })
            .collect();
        processes.sort_by(|a, b| {
            b.energy_j
                .total_cmp(&a.energy_j)
                .then(b.cpu_time_ns.cmp(&a.cpu_time_ns))
                .then(a.pid.cmp(&b.pid))
        });
        identity.forget_exited();

        let total_ns: u64 = cpu_ns.values().sum();
        let idle_group = GroupReport {
            name: "idle".into(),
            energy_j: idle.total(),
            joules: idle,
            watts: if seconds > 0.0 {
                idle.total() / seconds
            } else {
                0.0
            },
            ..Default::default()
        };
        let mut report = IntervalReport {
            start_ns: sched.start_ns,
            end_ns: sched.end_ns,
            duration_s: seconds,
            models: Vec::new(),
            containers: Vec::new(),
            idle: idle_group,
            total_cpu_time_s: total_ns as f64 / 1e9,
            power: PowerSummary::new(power, sources, seconds),
            idle_policy: self.config.idle_policy,
            idle_power,
            gpus,
            carbon: CarbonSummary::default(),
            probe: sched.stats,
            probe_programs: sched.programs.clone(),
            processes,
        };
        regroup(&mut report);
        report
    }
}

/// Rebuilds the model and container groups from the processes (after any change to
/// the processes' figures, such as carbon).
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
pub fn attributed_total(report: &IntervalReport, class: DomainClass) -> f64 {
    let pick = |j: &Joules| match class {
        DomainClass::Cpu | DomainClass::Platform => j.cpu_j,
        DomainClass::Dram => j.dram_j,
        DomainClass::Gpu => j.gpu_j,
        DomainClass::PartOfPackage => 0.0,
    };
    report
        .processes
        .iter()
        .map(|p| pick(&p.joules))
        .sum::<f64>()
        + pick(&report.idle.joules)
}

#[cfg(test)]
mod tests;
