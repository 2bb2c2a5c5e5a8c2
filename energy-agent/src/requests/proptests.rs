//! The per-request split over random span sets: any number of spans of one process,
//! anywhere in or around its intervals, with or without thread ids (live threads or
//! not) and tokens, enriched in several batches that share the claims. No span gets
//! a negative, NaN or infinite figure, and the spans never get more than the process
//! had, per class, whichever batch they arrive in.

use proptest::prelude::*;

use super::*;
use crate::units::{Joules, Nanos};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * S;
const PID: u32 = 7;

fn interval(start: u64, cpu_j: f64, gpu_j: f64, threads: &[(u32, u64)]) -> IntervalRecord {
    IntervalRecord {
        start_ns: start,
        end_ns: start + S,
        processes: [(
            PID,
            ProcessInterval {
                model: "m".into(),
                joules: EnergyByClass {
                    cpu_j: Joules(cpu_j),
                    dram_j: Joules(cpu_j / 4.0),
                    gpu_j: Joules(gpu_j),
                    idle_j: Joules(0.0),
                },
                embodied_g: 0.5,
                cpu_ns: Nanos(threads.iter().map(|t| t.1).sum()),
                threads: threads.iter().copied().collect(),
                timeline: BTreeMap::new(),
                gpu_threads: threads.iter().copied().collect(),
                gpu_timeline: BTreeMap::new(),
            },
        )]
        .into(),
        g_per_kwh: 300.0,
        intensity_source: "fixed".into(),
        pue: 1.3,
        estimated: true,
        source: "estimate".into(),
        ..Default::default()
    }
}

fn spans() -> impl Strategy<Value = Vec<RequestSpan>> {
    prop::collection::vec(
        (
            0..6 * S,
            0..3 * S,
            prop::option::of(70u32..76),
            prop::option::of(0u64..10_000),
        )
            .prop_map(|(start, len, tid, tokens)| RequestSpan {
                pid: PID,
                start_ns: T0 - S + start,
                end_ns: T0 - S + start + len,
                tid,
                tokens,
            }),
        1..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_never_claim_more_than_their_process(
        records in prop::collection::vec(
            (0.0..100.0f64, 0.0..50.0f64, prop::collection::vec((70u32..74, 0..S), 0..4)),
            1..5,
        ),
        all in spans(),
        batches in 1usize..4,
    ) {
        let mut history = History::new(16);
        let mut process = EnergyByClass::default();
        for (i, (cpu_j, gpu_j, threads)) in records.iter().enumerate() {
            let r = interval(T0 + i as u64 * S, *cpu_j, *gpu_j, threads);
            process.merge(&r.processes[&PID].joules);
            history.push(r);
        }
        let mut claims = Claims::default();
        let mut given = EnergyByClass::default();
        let n = all.len();
        for b in 0..batches {
            let targets: Vec<usize> = (0..n).filter(|i| i % batches == b).collect();
            for e in enrich(&targets, &all, &history, &mut claims) {
                for (what, v) in [
                    ("cpu", e.joules.cpu_j.get()),
                    ("dram", e.joules.dram_j.get()),
                    ("gpu", e.joules.gpu_j.get()),
                    ("carbon", e.carbon_g),
                    ("embodied", e.embodied_g),
                    ("intensity", e.g_per_kwh),
                ] {
                    prop_assert!(v.is_finite() && v >= 0.0, "{} is {}", what, v);
                }
                given.merge(&e.joules);
            }
        }
        for (what, g, p) in [
            ("cpu", given.cpu_j, process.cpu_j),
            ("dram", given.dram_j, process.dram_j),
            ("gpu", given.gpu_j, process.gpu_j),
        ] {
            prop_assert!(
                g.get() <= p.get() * (1.0 + 1e-9) + 1e-12,
                "{}: the requests got {} J of the process's {} J",
                what,
                g.get(),
                p.get()
            );
        }
    }
}
