//! The attribution invariants over random intervals: any package layout, any on-CPU
//! slices (more than the interval holds, on any CPU, of any process), any measured
//! energies with or without psys and core, any idle powers, both idle policies, over
//! several intervals in a row (so calibration from the lowest power seen takes part).
//! Σ processes + idle = what was measured, per class and interval; nothing negative,
//! nothing NaN or infinite; groups sum their processes.

use proptest::prelude::*;

use super::*;
use crate::units::{Joules, Watts};
use crate::{
    identity::cgroup::CgroupResolver,
    power::{SourceInfo, energy},
    probe::{ProbeStats, TaskSlice},
};

const S: u64 = 1_000_000_000;

/// One interval's input: its length, the slices, and joules per (package, dram, psys,
/// core).
#[derive(Clone, Debug)]
struct Input {
    duration_ns: u64,
    slices: Vec<(u32, u32, u64)>,
    energies: Vec<(f64, f64, Option<f64>, Option<f64>)>,
}

fn input(packages: usize, cpus: u32) -> impl Strategy<Value = Input> {
    (
        S / 10..10 * S,
        prop::collection::vec((1u32..12, 0..cpus, 0..4 * S), 0..24),
        prop::collection::vec(
            (
                0.0..1e4f64,
                0.0..1e3f64,
                prop::option::of(0.0..2e4f64),
                prop::option::of(0.0..1e4f64),
            ),
            packages,
        ),
    )
        .prop_map(|(duration_ns, slices, energies)| Input {
            duration_ns,
            slices,
            energies,
        })
}

fn reading(energies: &[(f64, f64, Option<f64>, Option<f64>)]) -> PowerReading {
    let info = SourceInfo {
        name: "rapl-powercap",
        estimated: false,
        resolution_j: 1e-6,
    };
    let mut out = Vec::new();
    for (p, &(pkg, dram, psys, core)) in energies.iter().enumerate() {
        let p = p as u32;
        out.push(energy(&info, Domain::Package(p), Joules(pkg)));
        out.push(energy(&info, Domain::Dram(p), Joules(dram)));
        if let Some(core) = core {
            out.push(energy(&info, Domain::Core(p), Joules(core)));
        }
        if p == 0
            && let Some(psys) = psys
        {
            out.push(energy(&info, Domain::Psys, Joules(psys)));
        }
    }
    PowerReading {
        energies: out,
        errors: vec![],
        gpu_processes: vec![],
    }
}

fn sane(what: &str, j: Joules) -> Result<(), TestCaseError> {
    let v = j.get();
    prop_assert!(v.is_finite() && v >= 0.0, "{} is {}", what, v);
    Ok(())
}

fn close(a: Joules, b: Joules) -> bool {
    (a.get() - b.get()).abs() <= 1e-9 * b.get().abs().max(1.0)
}

fn check(r: &IntervalReport) -> Result<(), TestCaseError> {
    for class in [DomainClass::Cpu, DomainClass::Dram, DomainClass::Gpu] {
        let measured = match class {
            DomainClass::Cpu => r.power.cpu_j,
            DomainClass::Dram => r.power.dram_j,
            _ => r.power.gpu_j,
        };
        let attributed = attributed_total(r, class);
        prop_assert!(
            close(attributed, measured),
            "{:?}: processes + idle = {} J, measured {} J",
            class,
            attributed.get(),
            measured.get()
        );
    }
    for p in &r.processes {
        sane("a process's energy", p.energy_j)?;
        for j in [
            p.joules.cpu_j,
            p.joules.dram_j,
            p.joules.gpu_j,
            p.joules.idle_j,
        ] {
            sane("a process's share", j)?;
        }
        prop_assert!(p.watts.get().is_finite() && p.watts.get() >= 0.0);
    }
    for j in [
        r.idle.joules.cpu_j,
        r.idle.joules.dram_j,
        r.idle.joules.gpu_j,
    ] {
        sane("the idle bucket", j)?;
    }
    let processes: Joules = r.processes.iter().map(|p| p.energy_j).sum();
    let models: Joules = r.models.iter().map(|m| m.energy_j).sum();
    let containers: Joules = r.containers.iter().map(|c| c.energy_j).sum();
    prop_assert!(close(models, processes), "models sum their processes");
    prop_assert!(
        close(containers, processes),
        "containers sum their processes"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conservation_and_sane_figures_over_random_intervals(
        (packages, cpus_per_package, intervals) in (1usize..4, 1u32..5).prop_flat_map(|(p, c)| {
            (Just(p), Just(c), prop::collection::vec(input(p, p as u32 * c), 1..5))
        }),
        idle in prop::option::of((0.0..200.0f64, 0.0..50.0f64)),
        share in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut identity = Identity::new(dir.path(), CgroupResolver::new(None));
        let pairs = (0..packages as u32 * cpus_per_package).map(|c| (c, c / cpus_per_package));
        let mut idle_power = std::collections::BTreeMap::new();
        if let Some((pkg, dram)) = idle {
            idle_power.insert("package".to_string(), Watts(pkg));
            idle_power.insert("dram".to_string(), Watts(dram));
        }
        let mut a = Attributor::new(
            AttributionConfig {
                idle_policy: if share { IdlePolicy::Share } else { IdlePolicy::Bucket },
                idle_power,
                models: Default::default(),
                idle_fit: Default::default(),
            },
            CpuPackages::from_pairs(pairs),
            vec![],
        );
        let mut start = S;
        for i in intervals {
            let sched = SchedInterval {
                start_ns: start,
                end_ns: start + i.duration_ns,
                slices: i
                    .slices
                    .iter()
                    .map(|&(tgid, cpu, ns)| TaskSlice {
                        tgid,
                        tid: tgid,
                        cpu,
                        on_cpu_ns: ns,
                        cgroup_id: 0,
                    })
                    .collect(),
                lifecycle: Vec::new(),
                gpu: Vec::new(),
                programs: Vec::new(),
                stats: ProbeStats::default(),
            };
            start += i.duration_ns;
            let sources = SourceNames { cpu: "rapl-powercap", gpu: "none" };
            let r = a.attribute(&sched, &reading(&i.energies), sources, &mut identity);
            check(&r)?;
        }
    }
}
