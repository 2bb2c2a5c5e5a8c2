//! Thread matching against timelines built as the probe's sub-interval reads give them
//! (20 ms buckets), for the shapes of tests/tests/servers.rs.

use crate::{
    attribute::EnergyByClass,
    requests::{
        Claims, History, IntervalRecord, ProcessInterval, RequestSpan, SpanEnergy, SplitMode,
        enrich,
    },
    units::{Joules, Nanos},
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
const BUCKET: u64 = 20 * MS;

/// A thread's activity: (from, to, utilisation) pieces, ms.
type Pattern<'a> = &'a [(u64, u64, f64)];

/// The interval [start, start + 1 s) of process 7 whose threads ran as `threads` say,
/// read every 20 ms; its CPU energy is 1 J per CPU-second.
fn record(start: u64, threads: &[(u32, Pattern)]) -> IntervalRecord {
    let mut p = ProcessInterval {
        model: "m".into(),
        ..Default::default()
    };
    for &(tid, pattern) in threads {
        let mut parts = Vec::new();
        for b in (start..start + S).step_by(BUCKET as usize) {
            let ns: f64 = pattern
                .iter()
                .map(|&(from, to, u)| {
                    let (from, to) = (from * MS, to * MS);
                    to.min(b + BUCKET).saturating_sub(from.max(b)) as f64 * u
                })
                .sum();
            if ns > 0.0 {
                parts.push((b, b + BUCKET, ns as u64));
            }
        }
        let total: u64 = parts.iter().map(|p| p.2).sum();
        if total > 0 {
            p.threads.insert(tid, total);
            p.timeline.insert(tid, parts);
        }
    }
    p.cpu_ns = Nanos(p.threads.values().sum());
    p.joules = EnergyByClass {
        cpu_j: Joules(p.cpu_ns.get() as f64 / S as f64),
        ..Default::default()
    };
    IntervalRecord {
        start_ns: start,
        end_ns: start + S,
        processes: [(7, p)].into(),
        g_per_kwh: 100.0,
        intensity_source: "fixed".into(),
        pue: 1.0,
        source: "rapl-powercap".into(),
        ..Default::default()
    }
}

fn span(from_ms: u64, to_ms: u64, tid: Option<u32>) -> RequestSpan {
    RequestSpan {
        pid: 7,
        start_ns: from_ms * MS,
        end_ns: to_ms * MS,
        tid,
        tokens: None,
    }
}

/// Two seconds: the threads' first second, then an idle one.
fn history(threads: &[(u32, Pattern)]) -> History {
    let mut h = History::new(8);
    h.push(record(0, threads));
    h.push(record(S, &[]));
    h
}

fn split(spans: &[RequestSpan], h: &History) -> Vec<SpanEnergy> {
    let targets: Vec<usize> = (0..spans.len()).collect();
    enrich(&targets, spans, h, &mut Claims::default())
}

fn j(e: &SpanEnergy) -> f64 {
    e.joules.total().get()
}

#[test]
fn two_requests_at_a_time_on_their_own_threads_get_their_threads_cpu() {
    // Heavy on thread 2 and light on thread 3 in flight together, sharing one CPU (the
    // GIL), then heavy alone; the main thread 1 accepts each request just before.
    let threads: &[(u32, Pattern)] = &[
        (1, &[(98, 100, 1.0)]),
        (2, &[(100, 700, 0.5), (700, 1000, 1.0)]),
        (3, &[(100, 700, 0.5)]),
    ];
    let h = history(threads);
    let e = split(&[span(100, 1000, None), span(100, 700, None)], &h);
    let (heavy, light) = (j(&e[0]), j(&e[1]));
    assert!(
        (heavy - 0.6).abs() < 0.01,
        "heavy: thread 2's 0.6 CPU-s: {heavy}"
    );
    assert!(
        (light - 0.3).abs() < 0.01,
        "light: thread 3's 0.3 CPU-s: {light}"
    );
    for s in &e {
        assert_eq!(s.split, SplitMode::ThreadInferred, "{s:?}");
        assert!(s.split_confidence > 0.9, "{s:?}");
    }
}

#[test]
fn a_waiting_request_beside_a_busy_one_gets_only_its_own_threads_little() {
    let threads: &[(u32, Pattern)] = &[
        // The waiting request's thread parses and answers; it sleeps in between.
        (2, &[(100, 102, 1.0), (398, 400, 1.0)]),
        (3, &[(100, 700, 1.0)]),
    ];
    let h = history(threads);
    let e = split(&[span(100, 400, None), span(100, 700, None)], &h);
    let (waiting, busy) = (j(&e[0]), j(&e[1]));
    assert!((busy - 0.6).abs() < 0.01, "{busy}");
    assert!(waiting <= 0.05 * busy, "waiting {waiting} J, busy {busy} J");
    assert_eq!(e[0].split, SplitMode::ThreadInferred);
}

#[test]
fn spans_the_timelines_cannot_tell_apart_are_split_equally_or_by_tokens() {
    let threads: &[(u32, Pattern)] = &[(2, &[(100, 700, 0.5)]), (3, &[(100, 700, 0.5)])];
    let h = history(threads);
    let e = split(&[span(100, 700, None), span(100, 700, None)], &h);
    // Segment mode: the process's energy over the 0.6 s they share, half each.
    assert!(
        (j(&e[0]) - 0.18).abs() < 1e-6 && (j(&e[1]) - 0.18).abs() < 1e-6,
        "{e:?}"
    );
    assert_eq!(e[0].split, SplitMode::Equal);
    assert!(e[0].split_confidence < super::super::MIN_CONFIDENCE);
    let mut by_tokens = [span(100, 700, None), span(100, 700, None)];
    by_tokens[0].tokens = Some(300);
    by_tokens[1].tokens = Some(100);
    let e = split(&by_tokens, &h);
    assert!((j(&e[0]) - 0.27).abs() < 1e-6, "{}", j(&e[0]));
    assert_eq!(e[1].split, SplitMode::Tokens);
}

#[test]
fn a_thread_still_busy_after_a_span_is_not_matched_to_it() {
    // The heavy request's span has not arrived yet: its thread 2 ran on after the
    // light one ended, so it is not the light one's.
    let threads: &[(u32, Pattern)] = &[
        (2, &[(100, 700, 0.5), (700, 1000, 1.0)]),
        (3, &[(100, 700, 0.5)]),
    ];
    let h = history(threads);
    let e = split(&[span(100, 700, None)], &h);
    assert!((j(&e[0]) - 0.3).abs() < 0.01, "thread 3 only: {}", j(&e[0]));
}

#[test]
fn a_thread_still_busy_in_the_next_interval_is_not_matched_to_a_span_ending_before_it() {
    // As above, but the light span ends 20 ms before the interval does and thread 2
    // runs on into the next interval: only the next interval shows that thread 2 is
    // not the light span's (seen in tests/tests/servers.rs: the light request of a pair
    // got both threads' CPU, 2.8x its own).
    let threads: &[(u32, Pattern)] = &[
        (2, &[(560, 980, 0.5), (980, 1180, 1.0)]),
        (3, &[(560, 980, 0.5)]),
    ];
    let mut h = History::new(8);
    h.push(record(0, threads));
    h.push(record(S, threads));
    let e = split(&[span(560, 980, None)], &h);
    assert!(
        (j(&e[0]) - 0.21).abs() < 0.01,
        "thread 3's 0.21 CPU-s only: {}",
        j(&e[0])
    );
    assert_eq!(e[0].split, SplitMode::ThreadInferred, "{:?}", e[0]);
}

#[test]
fn a_pool_thread_going_from_request_to_request_is_cut_at_their_edges() {
    let threads: &[(u32, Pattern)] = &[(4, &[(100, 400, 1.0), (400, 1000, 1.0)])];
    let h = history(threads);
    let e = split(&[span(100, 400, None), span(400, 1000, None)], &h);
    assert!((j(&e[0]) - 0.3).abs() < 0.01, "{}", j(&e[0]));
    assert!((j(&e[1]) - 0.6).abs() < 0.01, "{}", j(&e[1]));
}

#[test]
fn an_event_loop_span_declaring_its_thread_also_gets_its_pool_threads() {
    // Spans start on the loop (thread 10, declared); their work runs on pool threads
    // 2 and 3, which no span declares.
    let threads: &[(u32, Pattern)] = &[
        (10, &[(100, 102, 1.0), (698, 700, 1.0), (998, 1000, 1.0)]),
        (2, &[(102, 698, 0.5), (698, 998, 1.0)]),
        (3, &[(102, 698, 0.5)]),
    ];
    let h = history(threads);
    let e = split(&[span(100, 1000, Some(10)), span(100, 700, Some(10))], &h);
    let ratio = j(&e[0]) / j(&e[1]);
    assert!((ratio - 2.0).abs() < 0.1, "heavy/light {ratio}");
    assert_eq!(e[0].split, SplitMode::ThreadInferred);
}

#[test]
fn declared_threads_alone_are_thread_mode_and_a_busy_background_thread_is_nobodys() {
    let threads: &[(u32, Pattern)] = &[
        (2, &[(100, 700, 1.0)]),
        // Busy the whole time, whatever is in flight.
        (9, &[(0, 1000, 0.5)]),
    ];
    let mut h = History::new(8);
    h.push(record(0, threads));
    let e = split(&[span(100, 700, Some(2))], &h);
    assert!((j(&e[0]) - 0.6).abs() < 0.01, "{}", j(&e[0]));
    assert_eq!(e[0].split, SplitMode::Thread);
    assert_eq!(e[0].split_confidence, 1.0);
}

#[test]
fn a_span_whose_declared_thread_did_the_work_gets_no_inferred_threads() {
    // Thread 2 serves the request it declares; thread 9 (an exporter starting up) is
    // busy only while that request is in flight, which would match it to the request.
    let threads: &[(u32, Pattern)] = &[(2, &[(100, 700, 1.0)]), (9, &[(150, 450, 1.0)])];
    let h = history(threads);
    let e = split(&[span(100, 700, Some(2))], &h);
    assert!(
        (j(&e[0]) - 0.6).abs() < 0.01,
        "thread 2's 0.6 CPU-s: {}",
        j(&e[0])
    );
    assert_eq!(e[0].split, SplitMode::Thread, "{:?}", e[0]);
}

#[test]
fn the_requests_never_claim_more_than_the_process() {
    let threads: &[(u32, Pattern)] = &[
        (1, &[(0, 1000, 0.1)]),
        (2, &[(100, 700, 0.5), (700, 1000, 1.0)]),
        (3, &[(100, 700, 0.5)]),
    ];
    let h = history(threads);
    let spans = [
        span(100, 1000, None),
        span(100, 700, None),
        span(50, 950, None),
    ];
    let e = split(&spans, &h);
    let total: f64 = e.iter().map(j).sum();
    let process = h
        .overlapping(0, 2 * S)
        .map(|r| r.processes[&7].joules.total().get())
        .sum::<f64>();
    assert!(total <= process + 1e-9, "{total} > {process}");
}

#[test]
fn nnls_keeps_weights_non_negative_and_solves_the_unconstrained_case() {
    let q = vec![vec![2.0, 1.0], vec![1.0, 2.0]];
    let x = super::nnls(&q, &[3.0, 3.0]);
    assert!(
        (x[0] - 1.0).abs() < 1e-9 && (x[1] - 1.0).abs() < 1e-9,
        "{x:?}"
    );
    let x = super::nnls(&q, &[2.0, -1.0]);
    assert!((x[0] - 1.0).abs() < 1e-9 && x[1] == 0.0, "{x:?}");
}

#[test]
fn requests_and_what_stays_unattributed_add_up_to_the_process_per_interval() {
    // Two intervals; the heavy request straddles them. Thread 9 works for no request.
    let mut h = History::new(8);
    h.push(record(
        0,
        &[
            (2, &[(600, 1000, 0.5)]),
            (3, &[(600, 1000, 0.5)]),
            (9, &[(0, 1000, 0.2)]),
        ],
    ));
    h.push(record(
        S,
        &[
            (2, &[(1000, 1400, 1.0)]),
            (3, &[(1000, 1200, 0.5)]),
            (9, &[(1000, 2000, 0.2)]),
        ],
    ));
    h.push(record(2 * S, &[]));
    let spans = [span(600, 1400, None), span(600, 1200, None)];
    // Half the batch first, then the rest, as two exports would bring them.
    let mut claims = Claims::default();
    let first = enrich(&[1], &spans, &h, &mut claims);
    let second = enrich(&[0], &spans, &h, &mut claims);
    let requests = j(&first[0]) + j(&second[0]);
    let process: f64 = h
        .overlapping(0, 3 * S)
        .map(|r| r.processes[&7].joules.total().get())
        .sum();
    // Thread 9's 0.4 CPU-s (0.4 J) is the process's, not the requests'.
    let unattributed = process - requests;
    assert!(
        (unattributed - 0.4).abs() < 0.01,
        "requests {requests} J + unattributed {unattributed} J = process {process} J"
    );
    assert!(
        (j(&second[0]) - 0.6).abs() < 0.01,
        "heavy: {}",
        j(&second[0])
    );
    assert!((j(&first[0]) - 0.3).abs() < 0.01, "light: {}", j(&first[0]));
}
