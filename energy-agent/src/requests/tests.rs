use super::*;
use crate::units::{Joules, Nanos};

const S: u64 = 1_000_000_000;

fn record(start: u64, pid: u32, cpu_j: f64, threads: &[(u32, u64)]) -> IntervalRecord {
    let cpu_ns: u64 = threads.iter().map(|t| t.1).sum();
    IntervalRecord {
        start_ns: start,
        end_ns: start + S,
        processes: [(
            pid,
            ProcessInterval {
                model: "m".into(),
                joules: EnergyByClass {
                    cpu_j: Joules(cpu_j),
                    dram_j: Joules(cpu_j / 10.0),
                    gpu_j: Joules(0.0),
                    idle_j: Joules(0.0),
                },
                embodied_g: 1.0,
                cpu_ns: Nanos(cpu_ns),
                threads: threads.iter().copied().collect(),
                timeline: BTreeMap::new(),
                gpu_threads: BTreeMap::new(),
                gpu_timeline: BTreeMap::new(),
            },
        )]
        .into(),
        g_per_kwh: 360.0,
        intensity_source: "fixed".into(),
        pue: 1.5,
        estimated: false,
        source: "rapl-powercap".into(),
        idle_origin: Some(crate::attribute::IdleOrigin::Fitted),
        idle_uncertain: false,
    }
}

fn span(start: u64, end: u64, tid: Option<u32>, tokens: Option<u64>) -> RequestSpan {
    RequestSpan {
        pid: 7,
        start_ns: start,
        end_ns: end,
        tid,
        tokens,
    }
}

/// Every span a target, nothing claimed before.
fn enrich_all(spans: &[RequestSpan], h: &History) -> Vec<SpanEnergy> {
    enrich(
        &(0..spans.len()).collect::<Vec<_>>(),
        spans,
        h,
        &mut Claims::default(),
    )
}

fn close(a: impl Into<f64>, b: f64) -> bool {
    let a: f64 = a.into();
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn a_lone_span_gets_its_overlap_with_each_interval() {
    let mut h = History::new(8);
    h.push(record(0, 7, 10.0, &[(7, S)]));
    h.push(record(S, 7, 20.0, &[(7, S)]));
    // 0.5 s of the first interval and 0.25 s of the second: 5 + 5 J of CPU.
    let e = enrich_all(&[span(S / 2, S + S / 4, None, None)], &h);
    assert!(close(e[0].joules.cpu_j, 10.0));
    assert!(close(e[0].joules.dram_j, 1.0));
    // Carbon = 11 J / 3.6e6 × 360 × 1.5.
    assert!(close(e[0].carbon_g, 11.0 / 3.6e6 * 360.0 * 1.5));
    assert!(
        close(e[0].g_per_kwh, 360.0),
        "the grid's intensity, PUE apart"
    );
    assert!(close(e[0].embodied_g, 0.75));
    assert_eq!(e[0].source, "rapl-powercap");
    assert_eq!(e[0].idle_origin, Some(crate::attribute::IdleOrigin::Fitted));
    assert!(!e[0].idle_uncertain);
}

#[test]
fn a_span_carries_the_weakest_idle_origin_of_its_intervals() {
    let mut h = History::new(8);
    h.push(record(0, 7, 10.0, &[(7, S)]));
    let mut early = record(S, 7, 20.0, &[(7, S)]);
    early.idle_origin = Some(crate::attribute::IdleOrigin::Lowest);
    early.idle_uncertain = true;
    h.push(early);
    let e = enrich_all(&[span(S / 2, S + S / 4, None, None)], &h);
    assert_eq!(e[0].idle_origin, Some(crate::attribute::IdleOrigin::Lowest));
    assert!(e[0].idle_uncertain);
    let e = enrich_all(&[span(0, S / 2, None, None)], &h);
    assert_eq!(e[0].idle_origin, Some(crate::attribute::IdleOrigin::Fitted));
}

#[test]
fn concurrent_spans_on_threads_split_by_thread_cpu_and_leave_the_rest() {
    let mut h = History::new(8);
    // Threads 71 and 72 served requests; 73 did other work.
    h.push(record(
        0,
        7,
        30.0,
        &[(71, 2 * S / 3), (72, S / 3), (73, S / 3)],
    ));
    let e = enrich_all(
        &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
        &h,
    );
    let cpu = 30.0;
    assert!(close(e[0].joules.cpu_j, cpu * 0.5), "{:?}", e[0].joules);
    assert!(close(e[1].joules.cpu_j, cpu * 0.25));
    // A quarter stays with the process: the requests claim ≤ the process.
    assert!(e[0].joules.total() + e[1].joules.total() < Joules(33.0));
}

#[test]
fn tokens_then_equal_split() {
    let mut h = History::new(8);
    h.push(record(0, 7, 12.0, &[(7, S)]));
    let by_tokens = enrich_all(
        &[span(0, S, None, Some(300)), span(0, S, None, Some(100))],
        &h,
    );
    assert!(close(by_tokens[0].joules.cpu_j, 9.0) && close(by_tokens[1].joules.cpu_j, 3.0));
    let equal = enrich_all(&[span(0, S, None, Some(300)), span(0, S, None, None)], &h);
    assert!(close(equal[0].joules.cpu_j, 6.0) && close(equal[1].joules.cpu_j, 6.0));
}

#[test]
fn token_counts_near_the_limit_of_u64_split_without_overflow() {
    // Σ tokens overflowed u64 (a panic in debug builds; in release a wrapped, tiny total
    // gave shares far above 1).
    let mut h = History::new(8);
    h.push(record(0, 7, 12.0, &[(7, S)]));
    let e = enrich_all(
        &[
            span(0, S, None, Some(u64::MAX)),
            span(0, S, None, Some(u64::MAX)),
        ],
        &h,
    );
    assert!(
        close(e[0].joules.cpu_j, 6.0) && close(e[1].joules.cpu_j, 6.0),
        "{e:?}"
    );
}

#[test]
fn overlapping_spans_share_only_while_they_overlap() {
    let mut h = History::new(8);
    h.push(record(0, 7, 10.0, &[(7, S)]));
    // A covers [0, 0.6), B [0.4, 1.0): alone 0.4 s each, together 0.2 s.
    let e = enrich_all(
        &[
            span(0, 6 * S / 10, None, None),
            span(4 * S / 10, S, None, None),
        ],
        &h,
    );
    assert!(close(e[0].joules.cpu_j, 4.0 + 1.0));
    assert!(close(e[1].joules.cpu_j, 4.0 + 1.0));
    assert!(
        close(e[0].joules.cpu_j + e[1].joules.cpu_j, 10.0),
        "nothing counted twice"
    );
}

#[test]
fn the_threads_timeline_says_when_its_time_was_spent() {
    let mut h = History::new(8);
    // Worker 71 ran 0.1 s, all of it in [0.5, 0.6); the main thread 0.1 s elsewhere.
    let mut r = record(0, 7, 10.0, &[(71, S / 10), (70, S / 10)]);
    let p = r.processes.get_mut(&7).unwrap();
    let buckets = (0..10).map(|k| {
        (
            k * S / 10,
            (k + 1) * S / 10,
            if k == 5 { S / 10 } else { 0 },
        )
    });
    p.timeline.insert(71, buckets.collect());
    h.push(r);
    let e = enrich_all(&[span(S / 2, S / 2 + S / 10, Some(71), None)], &h);
    assert!(
        close(e[0].joules.cpu_j, 5.0),
        "its thread's whole part: {:?}",
        e[0].joules
    );
    // Without a timeline the thread's time is taken as even over the interval.
    let mut h2 = History::new(8);
    h2.push(record(0, 7, 10.0, &[(71, S / 10), (70, S / 10)]));
    let e = enrich_all(&[span(S / 2, S / 2 + S / 10, Some(71), None)], &h2);
    assert!(close(e[0].joules.cpu_j, 0.5), "{:?}", e[0].joules);
    // Two requests overlapping on one thread share its time where they overlap.
    let e = enrich_all(
        &[span(0, S, Some(71), None), span(0, S, Some(71), None)],
        &h,
    );
    assert!(close(e[0].joules.cpu_j, 2.5) && close(e[1].joules.cpu_j, 2.5));
}

#[test]
fn twice_the_work_on_its_thread_is_twice_the_energy() {
    let mut h = History::new(8);
    h.push(record(0, 7, 9.0, &[(71, 2 * S / 3), (72, S / 3)]));
    let e = enrich_all(
        &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
        &h,
    );
    assert!(close(e[0].joules.total() / e[1].joules.total(), 2.0));
}

#[test]
fn batches_see_each_others_spans_and_never_claim_more_than_the_process() {
    let mut h = History::new(8);
    h.push(record(0, 7, 12.0, &[(7, S)]));
    let all = [
        span(0, S, None, None),
        span(0, S, None, None),
        span(0, S, None, None),
    ];
    let mut claims = Claims::default();
    // First batch: span 0, while spans 0 and 1 are known: half each.
    let first = enrich(&[0], &all[..2], &h, &mut claims);
    assert!(close(first[0].joules.cpu_j, 6.0));
    // A later batch knows all three: a third each, but only 6 J are left for 1 and 2.
    let later = enrich(&[1, 2], &all, &h, &mut claims);
    assert!(close(later[0].joules.cpu_j, 3.0) && close(later[1].joules.cpu_j, 3.0));
    let total = first[0].joules.cpu_j + later[0].joules.cpu_j + later[1].joules.cpu_j;
    assert!(close(total, 12.0), "{total}");
    claims.prune(S);
    assert!(claims.given.is_empty());
}

#[test]
fn history_is_bounded_and_knows_threads() {
    let mut h = History::new(2);
    for i in 0..5 {
        h.push(record(i * S, 7, 1.0, &[(70 + i as u32, S)]));
    }
    assert_eq!(h.covered_from(), 3 * S);
    assert_eq!(h.covered_until(), 5 * S);
    assert!(h.is_thread_of(7, 74) && !h.is_thread_of(7, 70));
    assert!(h.knows(7) && !h.knows(8));
    assert!(
        enrich_all(&[span(0, S, None, None)], &h)[0].joules.total() == Joules(0.0),
        "outside the history"
    );
}

#[test]
fn old_intervals_keep_only_the_processes_that_sent_spans() {
    let mut h = History::new(20);
    for i in 0..20 {
        let mut r = record(i * S, 7, 1.0, &[(70, S)]);
        let other = record(i * S, 8, 5.0, &[(80, S)]);
        r.processes.extend(other.processes);
        h.push(r);
        h.compact(|pid| pid == 7);
    }
    // History::new(20) keeps its newest 8 whole.
    let with = |pid| {
        h.records
            .iter()
            .filter(|r| r.processes.contains_key(&pid))
            .count()
    };
    assert_eq!((with(7), with(8)), (20, 8));
    // The span of the process that sent spans still finds its energy in old intervals.
    let e = enrich_all(&[span(0, 3 * S, Some(70), None)], &h);
    assert!(close(e[0].joules.cpu_j, 3.0), "{:?}", e[0].joules);
}

#[test]
fn a_wall_clock_step_keeps_the_history_in_order_and_spans_on_their_own_interval() {
    // Intervals of one second; the clock is re-anchored at each interval's end.
    let mut h = History::new(8);
    h.push(record(0, 7, 10.0, &[(7, S)]));
    h.push(record(S, 7, 10.0, &[(7, S)]));
    // Stepped 10 s forward: a gap that no span time falls into.
    h.push(record(12 * S, 7, 20.0, &[(7, S)]));
    assert_eq!((h.covered_from(), h.covered_until()), (0, 13 * S));
    let e = enrich_all(&[span(12 * S, 13 * S, None, None)], &h);
    assert!(close(e[0].joules.cpu_j, 20.0), "{e:?}");
    // Stepped 12.5 s back: the next interval's wall times are [0.5 s, 1.5 s], which the
    // first intervals claimed too; they go, and a span there meets only the new one.
    h.push(record(S / 2, 7, 30.0, &[(7, S)]));
    assert_eq!((h.covered_from(), h.covered_until()), (S / 2, 3 * S / 2));
    let e = enrich_all(&[span(6 * S / 10, 14 * S / 10, None, None)], &h);
    assert!(
        close(e[0].joules.cpu_j, 24.0),
        "0.8 of the new interval: {e:?}"
    );
    assert_eq!(
        h.intervals_overlapping(0, 20 * S),
        vec![(S / 2, 3 * S / 2)],
        "in order, nothing from the old timeline"
    );
}

#[test]
fn gpu_energy_follows_the_threads_gpu_activity_then_the_span_rules() {
    let mut h = History::new(8);
    // CPU 2:1 between threads 71 and 72, but GPU activity 1:3.
    let mut r = record(0, 7, 9.0, &[(71, 2 * S / 3), (72, S / 3)]);
    let p = r.processes.get_mut(&7).unwrap();
    p.joules.gpu_j = Joules(40.0);
    p.gpu_threads = [(71, 100), (72, 300)].into();
    h.push(r.clone());
    let e = enrich_all(
        &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
        &h,
    );
    assert!(close(e[0].joules.cpu_j, 6.0) && close(e[1].joules.cpu_j, 3.0));
    assert!(close(e[0].joules.gpu_j, 10.0) && close(e[1].joules.gpu_j, 30.0));
    // Without thread ids: tokens for both parts.
    let e = enrich_all(
        &[span(0, S, None, Some(100)), span(0, S, None, Some(300))],
        &h,
    );
    assert!(close(e[0].joules.gpu_j, 10.0) && close(e[1].joules.gpu_j, 30.0));
    assert!(close(e[0].joules.cpu_j, 2.25));
    // With thread ids but no GPU activity known: overlap (equal here) for the GPU.
    let mut h2 = History::new(8);
    r.processes.get_mut(&7).unwrap().gpu_threads.clear();
    h2.push(r);
    let e = enrich_all(
        &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
        &h2,
    );
    assert!(close(e[0].joules.gpu_j, 20.0) && close(e[1].joules.gpu_j, 20.0));
    assert!(close(e[0].joules.cpu_j, 6.0));
}

#[test]
fn gpu_thread_weights_prefer_busy_time_then_submissions_then_ioctls() {
    let clock = WallClock::now();
    let weights =
        |t: &BTreeMap<u32, GpuCalls>| gpu_thread_weights(t, &Default::default(), &clock).0;
    let calls = |launches, busy_ns, ioctls| GpuCalls {
        launches,
        busy_ns,
        ioctls,
        ..Default::default()
    };
    let busy: BTreeMap<u32, GpuCalls> = [(1, calls(5, 100, 0)), (2, calls(1, 40, 9))].into();
    assert_eq!(weights(&busy), [(1, 100), (2, 40)].into());
    // A submitter without busy time: submissions for all.
    let launches: BTreeMap<u32, GpuCalls> = [(1, calls(5, 100, 0)), (2, calls(1, 0, 9))].into();
    assert_eq!(weights(&launches), [(1, 5), (2, 1)].into());
    let ioctls: BTreeMap<u32, GpuCalls> = [(2, calls(0, 0, 9))].into();
    assert_eq!(weights(&ioctls), [(2, 9)].into());
}
