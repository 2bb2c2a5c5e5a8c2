use super::*;
use crate::units::{Joules, Nanos, Watts};
use crate::{
    identity::cgroup::CgroupResolver,
    power::{
        SourceInfo, energy,
        gpu::{GpuProcess, GpuProcesses},
    },
    probe::{GpuCalls, GpuThreadActivity, Lifecycle, ProbeStats, TaskSlice},
};

const S: u64 = 1_000_000_000;

fn slice(tgid: u32, cpu: u32, ns: u64) -> TaskSlice {
    TaskSlice {
        tgid,
        tid: tgid,
        cpu,
        on_cpu_ns: ns,
        cgroup_id: 0,
    }
}

fn sched(slices: Vec<TaskSlice>) -> SchedInterval {
    SchedInterval {
        start_ns: S,
        end_ns: 3 * S,
        slices,
        lifecycle: Vec::new(),
        gpu: Vec::new(),
        programs: Vec::new(),
        stats: ProbeStats::default(),
    }
}

fn reading(domains: &[(Domain, f64)]) -> PowerReading {
    let info = SourceInfo {
        name: "rapl-powercap",
        estimated: false,
        resolution_j: 1e-6,
    };
    PowerReading {
        energies: domains
            .iter()
            .map(|&(d, j)| energy(&info, d, Joules(j)))
            .collect(),
        errors: vec![],
        gpu_processes: vec![],
    }
}

fn identity() -> (tempfile::TempDir, Identity) {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::new(dir.path(), CgroupResolver::new(None));
    (dir, id)
}

fn sources() -> SourceNames {
    SourceNames {
        cpu: "rapl-powercap",
        gpu: "none",
    }
}

fn configured(idle: &[(&str, f64)], policy: IdlePolicy) -> AttributionConfig {
    AttributionConfig {
        idle_policy: policy,
        idle_power: idle
            .iter()
            .map(|(k, v)| (k.to_string(), Watts(*v)))
            .collect(),
        models: ModelRules::default(),
        idle_fit: Default::default(),
    }
}

fn close(a: impl Into<f64>, b: f64) -> bool {
    let a: f64 = a.into();
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn conservation_per_domain_and_proportional_split() {
    let (_d, mut id) = identity();
    // Two packages: CPUs 0,1 in package 0; CPUs 2,3 in package 1.
    let topo = CpuPackages::from_pairs([(0, 0), (1, 0), (2, 1), (3, 1)]);
    let mut a = Attributor::new(
        configured(&[("package", 5.0), ("dram", 1.0)], IdlePolicy::Bucket),
        topo,
        vec![],
    );
    let s = sched(vec![
        slice(10, 0, 2 * S),
        slice(20, 1, S),
        slice(30, 2, S / 2),
    ]);
    let p = reading(&[
        (Domain::Package(0), 70.0),
        (Domain::Core(0), 50.0),
        (Domain::Package(1), 30.0),
        (Domain::Dram(0), 8.0),
        (Domain::Psys, 200.0),
    ]);
    let r = a.attribute(&s, &p, sources(), &mut id);
    // Package 0: 70 J − 5 W × 2 s idle = 60 J dynamic, split 2:1 between 10 and 20.
    let j = |pid| r.processes.iter().find(|p| p.pid == pid).unwrap().joules;
    assert!(close(j(10).cpu_j, 40.0) && close(j(20).cpu_j, 20.0));
    // Package 1: 30 − 10 = 20 J, all to 30 (the only one on CPUs 2, 3).
    assert!(close(j(30).cpu_j, 20.0));
    // DRAM 0: 8 − 2 = 6 J, split like package 0.
    assert!(close(j(10).dram_j, 4.0) && close(j(20).dram_j, 2.0) && j(30).dram_j == Joules(0.0));
    // Σ processes + idle = measured, per class; core and psys are not attributed.
    assert!(close(attributed_total(&r, DomainClass::Cpu), 100.0));
    assert!(close(attributed_total(&r, DomainClass::Dram), 8.0));
    assert!(close(r.idle.joules.cpu_j, 20.0) && close(r.idle.joules.dram_j, 2.0));
    assert!(close(r.power.total_j, 108.0));
    assert_eq!(r.processes[0].pid, 10, "most energy first");
    assert!(
        r.idle_power
            .iter()
            .all(|i| i.origin == IdleOrigin::Configured)
    );
}

#[test]
fn share_policy_allocates_idle_and_still_conserves() {
    let (_d, mut id) = identity();
    let mut a = Attributor::new(
        configured(&[("package-0", 10.0)], IdlePolicy::Share),
        CpuPackages::single(2),
        vec![],
    );
    let s = sched(vec![slice(1, 0, 3 * S / 2), slice(2, 1, S / 2)]);
    let r = a.attribute(
        &s,
        &reading(&[(Domain::Package(0), 60.0)]),
        sources(),
        &mut id,
    );
    let p1 = r.processes.iter().find(|p| p.pid == 1).unwrap();
    // 20 J idle and 40 J dynamic, both 3:1.
    assert!(close(p1.joules.cpu_j, 45.0) && close(p1.joules.idle_j, 15.0));
    assert_eq!(r.idle.energy_j, Joules(0.0));
    assert!(close(attributed_total(&r, DomainClass::Cpu), 60.0));
}

#[test]
fn without_a_fit_idle_is_the_lowest_power_seen() {
    let (_d, mut id) = identity();
    let mut a = Attributor::new(AttributionConfig::default(), CpuPackages::single(1), vec![]);
    let busy = sched(vec![slice(1, 0, 2 * S)]);
    // 2 s at 40 W: no lower power seen yet, so it is all idle.
    let r = a.attribute(
        &busy,
        &reading(&[(Domain::Package(0), 80.0)]),
        sources(),
        &mut id,
    );
    assert_eq!(r.idle_power[0].origin, IdleOrigin::Lowest);
    assert!(r.idle_power[0].uncertain && r.idle_uncertain);
    assert!(close(r.idle.energy_j, 80.0));
    // An idle interval at 10 W lowers the estimate; then 40 W gives 30 W dynamic.
    a.attribute(
        &sched(vec![]),
        &reading(&[(Domain::Package(0), 20.0)]),
        sources(),
        &mut id,
    );
    let r = a.attribute(
        &busy,
        &reading(&[(Domain::Package(0), 80.0)]),
        sources(),
        &mut id,
    );
    assert!(close(r.idle_power[0].watts, 10.0));
    assert!(close(r.processes[0].joules.cpu_j, 60.0));
}

#[test]
fn model_idle_figures_come_before_calibration() {
    let (_d, mut id) = identity();
    let mut a = Attributor::new(
        AttributionConfig::default(),
        CpuPackages::single(1),
        vec![(Domain::Package(0), Watts(1.5))],
    );
    let r = a.attribute(
        &sched(vec![slice(1, 0, S)]),
        &reading(&[(Domain::Package(0), 10.0)]),
        sources(),
        &mut id,
    );
    assert_eq!(r.idle_power[0].origin, IdleOrigin::Model);
    assert!(close(r.processes[0].energy_j, 7.0));
}

#[test]
fn psys_alone_is_attributed_as_cpu() {
    let (_d, mut id) = identity();
    let mut a = Attributor::new(
        configured(&[("psys", 0.0)], IdlePolicy::Bucket),
        CpuPackages::single(2),
        vec![],
    );
    let r = a.attribute(
        &sched(vec![slice(1, 0, S), slice(2, 1, S)]),
        &reading(&[(Domain::Psys, 10.0)]),
        sources(),
        &mut id,
    );
    assert!(close(r.power.cpu_j, 10.0));
    assert!(close(attributed_total(&r, DomainClass::Cpu), 10.0));
    assert!(close(r.processes[0].joules.cpu_j, 5.0));
}

#[test]
fn gpu_energy_follows_gpu_weights_or_stays_idle() {
    let (_d, mut id) = identity();
    let mut a = Attributor::new(
        configured(&[("gpu", 50.0)], IdlePolicy::Bucket),
        CpuPackages::single(1),
        vec![],
    );
    let p = reading(&[(Domain::Gpu(0), 500.0)]);
    let r = a.attribute(&sched(vec![slice(7, 0, S)]), &p, sources(), &mut id);
    assert!(
        close(r.idle.joules.gpu_j, 500.0),
        "no GPU activity known: all unattributed"
    );
    // NVML: both on the GPU, SM samples 3:1.
    let mut p = p;
    p.gpu_processes.push(GpuProcesses {
        gpu: 0,
        running: Some(vec![
            GpuProcess {
                pid: 7,
                used_memory_bytes: None,
            },
            GpuProcess {
                pid: 8,
                used_memory_bytes: None,
            },
        ]),
        sm_util: Some([(7, 300), (8, 100)].into_iter().collect()),
        mig: false,
        busy: None,
    });
    let r = a.attribute(&sched(vec![slice(7, 0, S)]), &p, sources(), &mut id);
    assert_eq!(r.gpus[0].basis, gpu::GpuSplitBasis::SmUtilisation);
    let g = |pid| {
        r.processes
            .iter()
            .find(|x| x.pid == pid)
            .unwrap()
            .joules
            .gpu_j
    };
    assert!(close(g(7), 300.0) && close(g(8), 100.0));
    assert!(close(attributed_total(&r, DomainClass::Gpu), 500.0));
    // No samples: the probe's driver view, busy time 1:4 between two threads of 7 and
    // one of 8, which ran no CPU this interval but still appears.
    p.gpu_processes[0].sm_util = None;
    let mut s = sched(vec![slice(7, 0, S)]);
    let busy = |tgid, tid, busy_ns| GpuThreadActivity {
        tgid,
        tid,
        calls: GpuCalls {
            launches: 1,
            busy_ns,
            ..Default::default()
        },
    };
    s.gpu = vec![busy(7, 7, 50), busy(7, 70, 50), busy(8, 8, 400)];
    let r = a.attribute(&s, &p, sources(), &mut id);
    assert_eq!(r.gpus[0].basis, gpu::GpuSplitBasis::DriverBusyTime);
    let proc8 = r.processes.iter().find(|x| x.pid == 8).unwrap();
    assert!(close(proc8.joules.gpu_j, 320.0) && proc8.cpu_time_ns == Nanos(0));
    assert_eq!(proc8.gpu_activity.busy_ns, 400);
    let proc7 = r.processes.iter().find(|x| x.pid == 7).unwrap();
    assert_eq!(proc7.gpu_threads.len(), 2);
    assert_eq!(proc7.gpu_activity.launches, 2);
    assert!(close(attributed_total(&r, DomainClass::Gpu), 500.0));
}

#[test]
fn exited_processes_keep_their_share_and_groups_add_up() {
    let (_d, mut id) = identity();
    let rules = ModelRules::new(vec!["batch=short".parse().unwrap()]);
    let mut a = Attributor::new(
        AttributionConfig {
            models: rules,
            ..configured(&[("package", 0.0)], IdlePolicy::Bucket)
        },
        CpuPackages::single(1),
        vec![],
    );
    let mut s = sched(vec![slice(5, 0, S), slice(6, 0, S)]);
    s.lifecycle.push(Lifecycle::Exit {
        tgid: 6,
        tid: 6,
        comm: "short".into(),
        group_dead: true,
        cgroup_id: 0,
        ts_ns: 2 * S,
    });
    let r = a.attribute(
        &s,
        &reading(&[(Domain::Package(0), 10.0)]),
        sources(),
        &mut id,
    );
    let gone = r.processes.iter().find(|p| p.pid == 6).unwrap();
    assert!(gone.exited && close(gone.energy_j, 5.0));
    assert_eq!(gone.model, "batch");
    let total_models: Joules = r.models.iter().map(|m| m.energy_j).sum();
    assert!(close(total_models + r.idle.energy_j, 10.0));
    assert_eq!(r.containers.len(), 1);
}

#[test]
fn a_varied_load_is_fitted_and_dynamic_energy_is_k_times_cpu_time() {
    // Package at 10 W + 15 W per busy CPU; two processes whose CPU time varies.
    let (_d, mut id) = identity();
    let mut a = Attributor::new(AttributionConfig::default(), CpuPackages::single(2), vec![]);
    let mut last = None;
    for i in 0..12u64 {
        let (ns1, ns2) = ((i % 4 + 1) * S / 4, (i % 3) * S / 3);
        let s = sched(vec![slice(1, 0, ns1), slice(2, 1, ns2)]);
        let busy_s = (ns1 + ns2) as f64 / 1e9;
        let p = reading(&[(Domain::Package(0), 10.0 * 2.0 + 15.0 * busy_s)]);
        last = Some((a.attribute(&s, &p, sources(), &mut id), ns1, ns2));
    }
    let (r, ns1, ns2) = last.expect("intervals");
    let ip = &r.idle_power[0];
    assert_eq!(ip.origin, IdleOrigin::Fitted, "{ip:?}");
    assert!((ip.watts.get() - 10.0).abs() < 1e-6, "{ip:?}");
    assert!(!r.idle_uncertain && r.idle_origin == Some(IdleOrigin::Fitted));
    let j = |pid| r.processes.iter().find(|p| p.pid == pid).unwrap();
    assert!(close(j(1).joules.cpu_j, 15.0 * ns1 as f64 / 1e9));
    assert!(close(j(2).joules.cpu_j, 15.0 * ns2 as f64 / 1e9));
    // Each process's part of the domain: its share of the interval, and of the idle.
    let exposure: f64 = r
        .processes
        .iter()
        .flat_map(|p| &p.idle_exposure)
        .map(|e| e.seconds)
        .sum();
    assert!(close(exposure, 2.0), "{exposure}");
    assert!(close(ip.charged_j, 20.0) && ip.shared);
    let idle_parts: Joules = r
        .processes
        .iter()
        .flat_map(|p| &p.idle_exposure)
        .map(|e| e.idle_j)
        .sum();
    assert!(close(idle_parts, 20.0));
}
