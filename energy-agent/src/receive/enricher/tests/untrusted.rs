//! Spans from the network are untrusted: impossible times, copies sent again, pids a
//! sender cannot see, services found after their spans arrived.

use super::*;

#[test]
fn request_spans_with_impossible_times_are_marked_counted_and_take_no_share() {
    let mut e = enricher(1000);
    let gen_ai = || vec![kv("gen_ai.request.model", Value::StringValue("m".into()))];
    e.accept(
        batch(
            Some(42),
            vec![
                span(1, None, SpanKind::Server, T0, T0 + S / 2, vec![]),
                // Starts at the epoch: overlapping every span, it took half of span 1
                // and made every split scan all history.
                span(2, None, SpanKind::Server, 0, T0 + S, vec![]),
                span(3, None, SpanKind::Server, T0 + S / 2, T0, vec![]),
                span(4, None, SpanKind::Server, T0, u64::MAX, vec![]),
                // A request under an invalid one is still a root-most request.
                span(5, Some(4), SpanKind::Internal, T0 + S / 2, T0 + S, gen_ai()),
                // Not a request: passed on as it is, whatever its times.
                span(6, None, SpanKind::Client, 0, 0, vec![]),
            ],
        ),
        Origin::default(),
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    assert_eq!(out.len(), 1, "held no longer than its valid requests need");
    let attrs = attrs_of(&out[0]);
    assert_eq!(joules(&attrs[0]), Some(4.0), "the whole first half");
    assert_eq!(joules(&attrs[4]), Some(4.0), "the whole second half");
    for (i, a) in attrs.iter().enumerate().take(4).skip(1) {
        assert_eq!(joules(a), None, "span {i}");
        assert_eq!(
            spans::attr_str(a, names::ENERGY_STATUS),
            Some("unattributed")
        );
        let reason = spans::attr_str(a, names::ENERGY_STATUS_REASON).unwrap();
        assert!(
            reason.starts_with("invalid span times"),
            "span {i}: {reason}"
        );
    }
    assert!(attrs[5].is_empty(), "non-request span untouched");
    assert_eq!(e.stats.invalid, 3);
    assert_eq!(e.stats.unattributed, 0);
    assert_eq!(e.stats.enriched, 2);
    assert_eq!(e.known.len(), 2, "only valid requests are remembered");
}

#[test]
fn a_batch_sent_twice_gives_each_copy_the_energy_of_one_and_claims_once() {
    let server = |id, start, end| span(id, None, SpanKind::Server, start, end, vec![]);
    // Once: X and Y share the first half of the interval.
    let mut once = enricher(1000);
    once.accept(
        batch(Some(42), vec![server(1, T0, T0 + S / 2)]),
        Origin::default(),
    );
    once.accept(
        batch(Some(42), vec![server(2, T0, T0 + S / 2)]),
        Origin::default(),
    );
    let out = once.on_interval(record(T0, 42, 8.0));
    let x_once = joules(&attrs_of(&out[0])[0]);
    assert_eq!(x_once, Some(2.0));

    // Twice: the copy arrives while the first is held, and again after it went on.
    let mut e = enricher(1000);
    let x = batch(Some(42), vec![server(1, T0, T0 + S / 2)]);
    e.accept(x.clone(), Origin::default());
    e.accept(
        batch(Some(42), vec![server(2, T0, T0 + S / 2)]),
        Origin::default(),
    );
    e.accept(x.clone(), Origin::default());
    let out = e.on_interval(record(T0, 42, 8.0));
    assert_eq!(out.len(), 3);
    let got: Vec<Option<f64>> = out.iter().map(|r| joules(&attrs_of(r)[0])).collect();
    assert_eq!(got, vec![x_once, Some(2.0), x_once], "X, Y, X again");
    e.accept(x, Origin::default());
    let late = e.release(false);
    assert_eq!(joules(&attrs_of(&late[0])[0]), x_once, "a later retry");
    assert_eq!((e.stats.enriched, e.stats.duplicates), (2, 2));
    assert_eq!(
        e.take_requests().len(),
        2,
        "one request histogram entry per span"
    );

    // What X and Y did not claim is all there is for Z: the copies claimed nothing.
    e.accept(
        batch(Some(42), vec![server(3, T0 + S / 2, T0 + S)]),
        Origin::default(),
    );
    let z = e.release(false);
    assert_eq!(joules(&attrs_of(&z[0])[0]), Some(4.0));
}

#[test]
fn copies_in_one_batch_and_forgotten_copies() {
    let server = |id| span(id, None, SpanKind::Server, T0, T0 + S, vec![]);
    let mut e = enricher(1000);
    e.given = Generations::new(1, Duration::from_secs(60));
    e.accept(
        batch(Some(42), vec![server(1), server(1)]),
        Origin::default(),
    );
    let mut r = record(T0, 42, 8.0);
    let other = r.processes[&42].clone();
    r.processes.insert(43, other);
    let out = e.on_interval(r);
    let attrs = attrs_of(&out[0]);
    assert_eq!(
        (joules(&attrs[0]), joules(&attrs[1])),
        (Some(8.0), Some(8.0))
    );
    assert_eq!((e.stats.enriched, e.stats.duplicates), (1, 1));
    // Two other spans push span 1's energy out of memory (one span per generation).
    for id in [2, 3] {
        e.accept(batch(Some(43), vec![server(id)]), Origin::default());
    }
    assert_eq!(e.release(false).len(), 2);
    assert_eq!(e.stats.enriched, 3);
    e.accept(batch(Some(42), vec![server(1)]), Origin::default());
    let out = e.release(false);
    let attrs = attrs_of(&out[0]);
    assert_eq!(joules(&attrs[0]), None, "not given energy a second time");
    assert!(
        spans::attr_str(&attrs[0], names::ENERGY_STATUS_REASON)
            .unwrap()
            .contains("sent earlier"),
        "{attrs:?}"
    );
    assert_eq!(e.stats.duplicates, 2);
}

/// A process in an interval: pid, joules, on-CPU ns per thread.
type ProcessOf<'a> = (u32, f64, &'a [(u32, u64)]);

/// A record of `processes`.
fn record_of(start: u64, processes: &[ProcessOf]) -> IntervalRecord {
    let mut r = record(start, 0, 0.0);
    r.processes = processes
        .iter()
        .map(|&(pid, j, threads)| {
            let mut p = record(start, pid, j).processes.remove(&pid).unwrap();
            p.threads = threads.iter().copied().collect();
            p.cpu_ns = crate::units::Nanos(threads.iter().map(|t| t.1).sum());
            (pid, p)
        })
        .collect();
    r
}

/// A sender in a container: host pid 5000 is 1 there, its thread 5001 is 2.
fn from_container() -> Origin {
    Origin {
        pid: Some(5000),
        namespace: Some(std::sync::Arc::new(PidNamespace {
            is_agents: false,
            pids: [(1, 5000), (2, 5001)].into(),
        })),
    }
}

#[test]
fn a_containers_own_pids_are_read_through_its_namespace_and_other_claims_go_to_the_sender() {
    let interval = || {
        record_of(
            T0,
            &[
                (5000, 4.0, &[(5000, S / 4), (5001, 3 * S / 4)]),
                (42, 100.0, &[(42, S)]),
            ],
        )
    };
    let mut e = enricher(1000);
    // Its own pid as it sees it, on its thread 2 (5001 here).
    let thread_2 = vec![kv(names::THREAD_NATIVE_ID, Value::IntValue(2))];
    e.accept(
        batch(
            Some(1),
            vec![span(1, None, SpanKind::Server, T0, T0 + S, thread_2)],
        ),
        from_container(),
    );
    let out = e.on_interval(interval());
    // Thread 2 is 5001: a quarter of the process's CPU was its other thread's.
    assert_eq!(
        joules(&attrs_of(&out[0])[0]),
        Some(3.0),
        "thread mode via the namespace"
    );

    // A lie: host process 42 (busier) is none of the container's processes.
    let mut e = enricher(1000);
    e.accept(
        batch(
            Some(42),
            vec![span(2, None, SpanKind::Server, T0, T0 + S, vec![])],
        ),
        from_container(),
    );
    let out = e.on_interval(interval());
    assert_eq!(
        joules(&attrs_of(&out[0])[0]),
        Some(4.0),
        "the sender's, not 42's"
    );
}

#[test]
fn a_service_rule_found_after_the_batch_arrived_still_names_its_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("777")).unwrap();
    std::fs::write(dir.path().join("777/cmdline"), b"my-llm-server\0--port\0").unwrap();
    let mut e = Enricher::new(
        EnrichConfig {
            selection: Selection::Default,
            services: vec!["llm=my-llm-server".parse().unwrap()],
            max_delay: Duration::from_secs(30),
            max_held_spans: 1000,
            proc_root: dir.path().to_path_buf(),
        },
        16,
    );
    // No process.pid, not a local connection: only the rule can say. Its command lines
    // are read on another thread, so this first lookup misses.
    e.accept(
        batch(
            None,
            vec![span(1, None, SpanKind::Server, T0, T0 + S, vec![])],
        ),
        Origin::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.services.reads() == 0 {
        assert!(
            Instant::now() < deadline,
            "the command lines were never read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = e.on_interval(record(T0, 777, 8.0));
    assert_eq!(
        joules(&attrs_of(&out[0])[0]),
        Some(8.0),
        "{:?}",
        attrs_of(&out[0])
    );
}
