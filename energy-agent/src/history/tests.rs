use std::time::Duration;

use super::{
    rows::{GroupRow, IntervalRow, ProcessRow, RunInfo, RunKind},
    store::{Retention, Store},
    *,
};
use crate::{
    attribute::{IntervalReport, ProcessReport, regroup},
    carbon::{CarbonReport, CarbonSummary},
    clock::WallClock,
    requests::RequestSample,
    units::Joules,
};

/// One second of `model` at `watts`, starting at `start_s` (Unix s), with the host at
/// twice that; grams at `g_per_kwh` and PUE 1.
pub(crate) fn interval(start_s: u64, model: &str, watts: f64, g_per_kwh: f64) -> IntervalRow {
    let grams = |j: f64| j / 3.6e6 * g_per_kwh;
    let group = GroupRow {
        name: model.into(),
        processes: 1,
        cpu_time_s: 1.0,
        energy_j: watts,
        watts,
        carbon_g: grams(watts),
        ..Default::default()
    };
    IntervalRow {
        start_unix_ns: start_s * 1_000_000_000,
        end_unix_ns: (start_s + 1) * 1_000_000_000,
        duration_s: 1.0,
        cpu_source: "rapl-powercap".into(),
        gpu_source: "none".into(),
        cpu_j: 2.0 * watts,
        total_j: 2.0 * watts,
        idle_j: watts,
        cpu_time_s: 1.0,
        g_per_kwh,
        intensity_source: "fixed".into(),
        pue: 1.0,
        carbon_g: grams(2.0 * watts),
        processes: vec![ProcessRow {
            pid: 100,
            comm: model.into(),
            exe: model.into(),
            model: model.into(),
            container: "/".into(),
            cpu_time_s: 1.0,
            energy_j: watts,
            cpu_j: watts,
            carbon_g: grams(watts),
            ..Default::default()
        }],
        models: vec![group.clone()],
        containers: vec![GroupRow {
            name: "/".into(),
            ..group
        }],
        ..Default::default()
    }
}

/// A request of `model` ending at `end_s` (Unix s).
pub(crate) fn request(model: &str, end_s: f64, joules: f64, tokens: Option<u64>) -> RequestSample {
    RequestSample {
        model: model.into(),
        end_unix_ns: (end_s * 1e9) as u64,
        joules: Joules(joules),
        carbon_g: joules / 3.6e6 * 100.0,
        tokens,
        estimated: false,
        ..Default::default()
    }
}

/// A run started at `start_s` with `labels`.
pub(crate) fn run(kind: RunKind, start_s: u64, labels: &[(&str, &str)]) -> RunInfo {
    RunInfo {
        kind,
        started_unix_ns: start_s * 1_000_000_000,
        host: "test".into(),
        command: (kind == RunKind::Measure).then(|| vec!["burn".to_string()]),
        labels: (labels.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        idle_policy: "bucket".into(),
    }
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

#[test]
fn intervals_requests_and_labels_are_written_and_the_run_end_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    let mut s = Store::open(
        &path,
        &run(RunKind::Run, 1000, &[("version", "1.2")]),
        Retention::default(),
    )
    .expect("open");
    for i in 0..3 {
        s.write_interval(&interval(1000 + i, "llama", 10.0, 100.0))
            .expect("write");
    }
    s.write_requests(&[request("llama", 1001.5, 2.0, Some(10))])
        .expect("requests");
    drop(s);
    assert_eq!(count(&path, "SELECT count(*) FROM intervals"), 3);
    assert_eq!(count(&path, "SELECT count(*) FROM processes"), 3);
    assert_eq!(
        count(&path, "SELECT count(*) FROM models WHERE name = 'llama'"),
        3
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM requests WHERE tokens = 10"),
        1
    );
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM labels WHERE key = 'version' AND value = '1.2'"
        ),
        1
    );
    assert_eq!(
        count(&path, "SELECT ended_unix_ns FROM runs"),
        1003 * 1_000_000_000
    );
    assert_eq!(count(&path, "SELECT requests FROM request_aggregates"), 1);
    // A second run appends to the same file.
    let s = Store::open(
        &path,
        &run(RunKind::Measure, 2000, &[]),
        Retention::default(),
    )
    .expect("reopen");
    assert_eq!(s.run_id(), 2);
    assert_eq!(count(&path, "SELECT count(*) FROM runs"), 2);
}

#[test]
fn retention_by_age_deletes_what_is_older_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    let retention = Retention {
        max_age: Some(Duration::from_secs(10)),
        max_bytes: None,
    };
    let mut s = Store::open(&path, &run(RunKind::Run, 0, &[]), retention).expect("open");
    for i in 0..30 {
        s.write_interval(&interval(i, "m", 1.0, 100.0))
            .expect("write");
    }
    s.write_requests(&[request("m", 5.0, 1.0, None), request("m", 25.0, 1.0, None)])
        .expect("requests");
    s.prune(30 * 1_000_000_000).expect("prune");
    drop(s);
    // Intervals ending before 20 s are gone: the ones starting at 19..29 stay.
    assert_eq!(count(&path, "SELECT count(*) FROM intervals"), 11);
    assert_eq!(
        count(&path, "SELECT min(end_unix_ns) FROM intervals"),
        20 * 1_000_000_000
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM processes"),
        11,
        "children go with their interval"
    );
    assert_eq!(count(&path, "SELECT count(*) FROM requests"), 1);
}

#[test]
fn retention_by_size_keeps_the_file_under_its_limit_and_the_newest_intervals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    let max = 256 * 1024;
    let retention = Retention {
        max_age: None,
        max_bytes: Some(max),
    };
    let mut s = Store::open(&path, &run(RunKind::Run, 0, &[]), retention).expect("open");
    let mut row = interval(0, "m", 1.0, 100.0);
    // A hundred processes an interval: about 10 kB.
    row.processes = (0..100)
        .map(|pid| ProcessRow {
            pid,
            comm: format!("process-with-a-long-name-{pid}"),
            ..row.processes[0].clone()
        })
        .collect();
    for i in 0..300u64 {
        row.start_unix_ns = i * 1_000_000_000;
        row.end_unix_ns = (i + 1) * 1_000_000_000;
        s.write_interval(&row).expect("write");
    }
    s.prune(300 * 1_000_000_000).expect("prune");
    drop(s);
    let conn = rusqlite::Connection::open(&path).expect("open");
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("pages");
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("size");
    assert!(
        (pages * size) as u64 <= max + 64 * 1024,
        "{} bytes for a limit of {max}",
        pages * size
    );
    let newest: i64 = conn
        .query_row("SELECT max(end_unix_ns) FROM intervals", [], |r| r.get(0))
        .expect("newest");
    assert_eq!(newest, 300 * 1_000_000_000, "the newest interval stays");
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM intervals", [], |r| r.get(0))
        .expect("n");
    assert!(kept > 5 && kept < 300, "{kept} intervals kept");
}

#[test]
fn another_schema_version_is_refused_with_both_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    drop(Store::open(&path, &run(RunKind::Run, 0, &[]), Retention::default()).expect("open"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .expect("update");
    drop(conn);
    let e = Store::open(&path, &run(RunKind::Run, 0, &[]), Retention::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("99") && e.contains(&schema::SCHEMA_VERSION.to_string()),
        "{e}"
    );
    let e = std::fs::write(dir.path().join("x.db"), b"not a database");
    assert!(e.is_ok());
    let e = Store::open(
        &dir.path().join("x.db"),
        &run(RunKind::Run, 0, &[]),
        Retention::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("x.db"), "{e}");
}

#[test]
fn a_measured_command_keeps_its_processes_and_regroups_them() {
    let mut energy = IntervalReport {
        start_ns: 1,
        end_ns: 1_000_000_001,
        duration_s: 1.0,
        processes: [(7, "mine", 36_000.0), (8, "other", 72_000.0)]
            .into_iter()
            .map(|(pid, model, j)| ProcessReport {
                pid,
                model: model.into(),
                energy_j: Joules(j),
                cpu_time_s: 0.5,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    regroup(&mut energy);
    let mut carbon = CarbonSummary {
        pue: 1.5,
        ..Default::default()
    };
    carbon.intensity.g_per_kwh = 100.0;
    let report = CarbonReport { energy, carbon };
    let clock = WallClock::now();
    let all = IntervalRow::from_report(&report, &clock, |_| true);
    assert_eq!(all.processes.len(), 2);
    assert_eq!(all.models.len(), 2);
    let mine = IntervalRow::from_report(&report, &clock, |pid| pid == 7);
    assert_eq!(mine.processes.len(), 1);
    assert_eq!(mine.models.len(), 1);
    assert_eq!(mine.models[0].name, "mine");
    // 36 kJ = 0.01 kWh at 100 g/kWh × PUE 1.5 = 1.5 g.
    assert!((mine.models[0].carbon_g - 1.5).abs() < 1e-12);
    assert!((mine.processes[0].carbon_g - 1.5).abs() < 1e-12);
    assert_eq!(mine.end_unix_ns - mine.start_unix_ns, 1_000_000_000);
}

/// A sink writing a `run` to `h.db` in `dir`, with its configuration.
fn sink_in(dir: &std::path::Path) -> (RecordConfig, HistorySink) {
    let config = RecordConfig {
        path: dir.join("h.db"),
        labels: Vec::new(),
        retention: Retention::default(),
        idle_policy: "bucket".into(),
    };
    let sink = HistorySink::start(&config, &run(RunKind::Run, 0, &[])).expect("start");
    (config, sink)
}

#[test]
fn the_sink_writes_everything_queued_before_a_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, sink) = sink_in(dir.path());
    for i in 0..50 {
        sink.interval(interval(i, "m", 1.0, 100.0));
    }
    sink.requests(vec![request("m", 3.0, 1.0, Some(4)); 7]);
    assert!(sink.flush(Duration::from_secs(10)), "flushed in time");
    assert_eq!(count(&config.path, "SELECT count(*) FROM intervals"), 50);
    assert_eq!(count(&config.path, "SELECT count(*) FROM requests"), 7);
    sink.finish(60_000_000_000, Some(3));
    assert_eq!(count(&config.path, "SELECT exit_code FROM runs"), 3);
    assert_eq!(
        count(&config.path, "SELECT ended_unix_ns FROM runs"),
        60_000_000_000
    );
}

#[test]
fn a_closed_sink_leaves_the_whole_run_in_the_database_file_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, sink) = sink_in(dir.path());
    for i in 0..20 {
        sink.interval(interval(i, "m", 1.0, 100.0));
    }
    assert!(sink.flush(Duration::from_secs(10)), "flushed in time");
    let wal = dir.path().join("h.db-wal");
    assert!(wal.exists(), "an open history writes through its log");
    assert!(sink.close(Duration::from_secs(10)), "closed in time");
    assert!(!wal.exists(), "the log went into the file");
    // The file copied on its own, as a user backs it up, has every interval.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&config.path, &copy).expect("copy");
    assert_eq!(count(&copy, "SELECT count(*) FROM intervals"), 20);
    sink.interval(interval(21, "m", 1.0, 100.0));
    assert_eq!(
        sink.stats()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_container_in_a_pod_keeps_its_names_and_a_version_1_file_is_brought_up() {
    use crate::attribute::K8sNames;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    let mut row = interval(1, "llama", 10.0, 100.0);
    let names = K8sNames {
        pod_uid: "u-1".into(),
        pod_name: Some("vllm-0".into()),
        namespace: Some("ml".into()),
        container_name: Some("server".into()),
    };
    row.containers[0].name = "c0ffee".into();
    row.containers[0].k8s = Some(names);
    {
        let mut store =
            Store::open(&path, &run(RunKind::Run, 0, &[]), Retention::default()).expect("open");
        store.write_interval(&row).expect("write");
    }
    let conn = rusqlite::Connection::open(&path).expect("open");
    let got: (String, String, String, String) = conn
        .query_row(
            "SELECT p.pod_uid, p.pod_name, p.namespace, p.container_name
             FROM container_pods p JOIN containers c USING (interval_id, name)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("the container's pod");
    assert_eq!(
        got,
        ("u-1".into(), "vllm-0".into(), "ml".into(), "server".into())
    );
    // A file as version 1 wrote it: readable as it is, upgraded by a writer.
    conn.execute_batch(
        "DROP TABLE container_pods; UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    .expect("back to version 1");
    assert!(schema::check(&conn).is_ok(), "a reader takes version 1");
    drop(conn);
    drop(Store::open(&path, &run(RunKind::Run, 0, &[]), Retention::default()).expect("upgrade"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(
        schema::version(&conn).unwrap(),
        Some(schema::SCHEMA_VERSION)
    );
    let n: i64 = conn
        .query_row("SELECT count(*) FROM container_pods", [], |r| r.get(0))
        .expect("the table is back");
    assert_eq!(n, 0);
}
