//! Joins the probe's per-thread time with process identities into per-process figures,
//! next to the interval's energy per domain.

use std::collections::HashMap;

use crate::{
    identity::Identity,
    power::{Domain, DomainClass, DomainError, PowerReading},
    probe::{ProbeStats, SchedInterval},
};

/// Energy and average power of one domain in one interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DomainPower {
    /// The domain.
    pub domain: Domain,
    /// Joules in the interval.
    pub joules: f64,
    /// Average watts over the interval.
    pub watts: f64,
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
    /// CPU packages, joules.
    pub cpu_j: f64,
    /// DRAM, joules.
    pub dram_j: f64,
    /// GPUs, joules.
    pub gpu_j: f64,
    /// cpu + dram + gpu, joules.
    pub total_j: f64,
}

impl PowerSummary {
    /// Summarises a reading over an interval of `seconds`.
    pub fn new(reading: &PowerReading, sources: SourceNames, seconds: f64) -> Self {
        let domains: Vec<DomainPower> = reading
            .energies
            .iter()
            .map(|e| DomainPower {
                domain: e.domain,
                joules: e.joules,
                watts: if seconds > 0.0 {
                    e.joules / seconds
                } else {
                    0.0
                },
                source: e.source,
                estimated: e.estimated,
            })
            .collect();
        let cpu_j = reading.total(DomainClass::Cpu);
        let dram_j = reading.total(DomainClass::Dram);
        let gpu_j = reading.total(DomainClass::Gpu);
        Self {
            sources,
            estimated: domains.iter().any(|d| d.estimated),
            domains,
            errors: reading.errors.clone(),
            cpu_j,
            dram_j,
            gpu_j,
            total_j: cpu_j + dram_j + gpu_j,
        }
    }
}

/// One process's use of the machine in one interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Kernel task name.
    pub comm: String,
    /// Executable file name (or comm).
    pub exe_name: String,
    /// Cgroup v2 path, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Container id, when the cgroup is a container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// On-CPU time in the interval, seconds (all threads, all CPUs).
    pub cpu_time_s: f64,
    /// On-CPU time in the interval, nanoseconds (exact).
    pub cpu_time_ns: u64,
    /// Whether the process exited during the interval.
    pub exited: bool,
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
    /// Processes that ran in the interval, most CPU time first.
    pub processes: Vec<ProcessReport>,
    /// Sum of on-CPU time of all processes, seconds.
    pub total_cpu_time_s: f64,
    /// The host's energy per domain.
    pub power: PowerSummary,
    /// Probe counters after the interval.
    pub probe: ProbeStats,
}

/// Sums an interval's thread slices per process, names each process, and adds the
/// interval's energy per domain.
pub fn summarize(
    sched: &SchedInterval,
    power: &PowerReading,
    sources: SourceNames,
    identity: &mut Identity,
) -> IntervalReport {
    identity.observe(&sched.lifecycle, sched.end_ns);
    let mut per_process: HashMap<u32, (u64, u64)> = HashMap::new();
    for slice in &sched.slices {
        let entry = per_process.entry(slice.tgid).or_default();
        entry.0 += slice.on_cpu_ns;
        if slice.cgroup_id != 0 {
            entry.1 = slice.cgroup_id;
        }
    }
    let mut processes: Vec<ProcessReport> = per_process
        .into_iter()
        .map(|(pid, (ns, cgroup_id))| {
            let info = identity.process(pid, cgroup_id, sched.end_ns);
            ProcessReport {
                pid,
                comm: info.comm.clone(),
                exe_name: info.exe_name.clone(),
                cgroup: info.cgroup.clone(),
                container_id: info.container_id.clone(),
                cpu_time_s: ns as f64 / 1e9,
                cpu_time_ns: ns,
                exited: info.exited,
            }
        })
        .collect();
    processes.sort_by(|a, b| b.cpu_time_ns.cmp(&a.cpu_time_ns).then(a.pid.cmp(&b.pid)));
    let total_ns: u64 = processes.iter().map(|p| p.cpu_time_ns).sum();
    identity.forget_exited();
    let duration_s = sched.duration_ns() as f64 / 1e9;
    IntervalReport {
        start_ns: sched.start_ns,
        end_ns: sched.end_ns,
        duration_s,
        processes,
        total_cpu_time_s: total_ns as f64 / 1e9,
        power: PowerSummary::new(power, sources, duration_s),
        probe: sched.stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::cgroup::CgroupResolver,
        probe::{Lifecycle, TaskSlice},
    };

    #[test]
    fn sums_threads_and_cpus_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut identity = Identity::new(dir.path(), CgroupResolver::new(None));
        let slice = |tgid, tid, cpu, ns| TaskSlice {
            tgid,
            tid,
            cpu,
            on_cpu_ns: ns,
            cgroup_id: 0,
        };
        let sched = SchedInterval {
            start_ns: 1_000_000_000,
            end_ns: 2_000_000_000,
            slices: vec![
                slice(10, 10, 0, 300),
                slice(10, 11, 1, 200),
                slice(20, 20, 0, 600),
            ],
            lifecycle: vec![Lifecycle::Exit {
                tgid: 20,
                tid: 20,
                comm: "gone".into(),
                group_dead: true,
                cgroup_id: 0,
                ts_ns: 1_500_000_000,
            }],
            stats: ProbeStats::default(),
        };
        let info = crate::power::SourceInfo {
            name: "replay",
            estimated: false,
            resolution_j: 0.0,
        };
        let power = PowerReading {
            energies: vec![
                crate::power::energy(&info, Domain::Package(0), 30.0),
                crate::power::energy(&info, Domain::Core(0), 20.0),
                crate::power::energy(&info, Domain::Dram(0), 5.0),
            ],
            errors: vec![],
        };
        let sources = SourceNames {
            cpu: "replay",
            gpu: "none",
        };
        let report = summarize(&sched, &power, sources, &mut identity);
        assert_eq!(report.power.cpu_j, 30.0, "core is part of the package");
        assert_eq!(report.power.total_j, 35.0);
        assert_eq!(report.power.domains[0].watts, 30.0);
        assert!(!report.power.estimated);
        assert_eq!(report.duration_s, 1.0);
        assert_eq!(report.processes.len(), 2);
        assert_eq!(report.processes[0].pid, 20);
        assert_eq!(report.processes[0].comm, "gone");
        assert!(report.processes[0].exited);
        assert_eq!(report.processes[1].cpu_time_ns, 500);
        assert_eq!(report.total_cpu_time_s, 1_100.0 / 1e9);
        assert!(
            identity.process(20, 0, 0).comm.is_empty(),
            "exited process forgotten"
        );
    }
}
