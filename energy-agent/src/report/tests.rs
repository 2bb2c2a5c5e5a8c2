//! The report over histories whose answers are known: written with the history's own
//! store, read back through the queries.

use std::time::{Duration, UNIX_EPOCH};

use super::{compare, html, render, *};
use crate::history::{
    RunKind,
    store::{Retention, Store},
    tests::{interval, request, run},
};

const J_PER_KWH: f64 = 3.6e6;

/// llama at 10 W for 10 s (0–10 s), then other at 5 W for 10 s (10–20 s), at
/// 100 g/kWh; 20 llama requests of 1..=20 J with 10 tokens each; the first five
/// intervals estimated.
fn known_history(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("h.db");
    let mut s = Store::open(
        &path,
        &run(RunKind::Run, 0, &[("version", "1")]),
        Retention::default(),
    )
    .expect("open");
    for i in 0..20 {
        let (model, watts) = if i < 10 {
            ("llama", 10.0)
        } else {
            ("other", 5.0)
        };
        let mut row = interval(i, model, watts, 100.0);
        row.estimated = i < 5;
        s.write_interval(&row).expect("write");
    }
    let samples: Vec<_> = (1..=20)
        .map(|j| request("llama", 0.4 * j as f64, j as f64, Some(10)))
        .collect();
    s.write_requests(&samples).expect("requests");
    path
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn per_model_figures_are_the_recorded_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = History::open(&known_history(dir.path())).expect("open");
    let r = h
        .report(&GroupBy::Model, &Window::default())
        .expect("report");
    assert_eq!(r.groups.len(), 2);
    let llama = &r.groups[0];
    assert_eq!(llama.name, "llama", "most energy first");
    assert!(close(llama.energy_j, 100.0), "{llama:?}");
    assert!(close(llama.estimated_j, 50.0) && close(llama.measured_j, 50.0));
    assert!(close(llama.carbon_g, 100.0 / J_PER_KWH * 100.0));
    assert!(close(llama.max_run_kwh, 100.0 / J_PER_KWH));
    assert_eq!(llama.requests, 20);
    assert!(close(llama.j_per_request.unwrap(), 10.5));
    assert!(close(
        llama.g_per_request.unwrap(),
        10.5 / J_PER_KWH * 100.0
    ));
    assert_eq!(llama.p50_j, Some(10.0));
    assert_eq!(llama.p95_j, Some(19.0));
    assert_eq!(llama.tokens, 200);
    assert!(close(llama.j_per_token.unwrap(), 210.0 / 200.0));
    assert!(close(llama.requests_per_j.unwrap(), 20.0 / 210.0));
    let other = &r.groups[1];
    assert!(close(other.energy_j, 50.0) && other.requests == 0 && other.j_per_request.is_none());
    // The host: twice the models' energy, half of it idle.
    assert!(close(r.host.energy_j, 300.0));
    assert!(close(r.host.idle_share.unwrap(), 0.5));
    assert!(close(r.host.estimated_j, 100.0));
    assert!(close(r.host.g_per_kwh.unwrap(), 100.0));
    assert_eq!(r.host.intervals, 20);
    assert_eq!(
        r.host.sources,
        vec!["rapl-powercap (estimated)", "rapl-powercap (measured)"]
    );
    assert_eq!(r.from_unix_ns, Some(0));
    assert_eq!(r.to_unix_ns, Some(20_000_000_000));
}

#[test]
fn the_window_and_the_grouping_select_what_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = History::open(&known_history(dir.path())).expect("open");
    let late = Window {
        since: Some(11_000_000_000),
        ..Default::default()
    };
    let r = h.report(&GroupBy::Model, &late).expect("report");
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].name, "other");
    assert!(close(r.groups[0].energy_j, 50.0));
    let early = Window {
        until: Some(4_000_000_000),
        ..Default::default()
    };
    let r = h.report(&GroupBy::Model, &early).expect("report");
    assert!(close(r.groups[0].energy_j, 40.0));
    assert_eq!(r.groups[0].requests, 10, "requests ending by 4 s");
    let r = h
        .report(&GroupBy::Label(None), &Window::default())
        .expect("report");
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].name, "version=1");
    assert!(close(r.groups[0].energy_j, 150.0));
    assert_eq!(r.groups[0].requests, 20);
    let r = h
        .report(&GroupBy::Process, &Window::default())
        .expect("report");
    assert_eq!(r.groups[0].name, "llama (pid 100)");
    let r = h
        .report(&GroupBy::Container, &Window::default())
        .expect("report");
    assert_eq!(r.groups.len(), 1);
    assert!(close(r.groups[0].energy_j, 150.0));
}

#[test]
fn the_formats_carry_the_same_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = History::open(&known_history(dir.path())).expect("open");
    let w = Window::default();
    let r = h.report(&GroupBy::Model, &w).expect("report");
    let table = render::table(&r);
    assert!(
        table.contains("llama") && table.contains("10.50") && table.contains("50% estimated"),
        "{table}"
    );
    assert!(table.contains("idle 50.0%"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&render::json(&r)).expect("json");
    assert_eq!(json["groups"][0]["p95_j"], 19.0);
    assert_eq!(json["host"]["energy_j"], 300.0);
    let csv = render::csv(&r);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    for l in &lines {
        assert_eq!(l.split(',').count(), 20, "{l}");
    }
    assert!(lines[1].starts_with("model,llama,1,100,"), "{}", lines[1]);
    let page = html::page(&h, &r, &w).expect("page");
    assert_eq!(page.matches("<svg").count(), 3);
    for id in [
        "plot-power",
        "plot-requests",
        "plot-carbon",
        "groups",
        "host",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(
        !page.contains("<script") && !page.contains("src=") && !page.contains("href="),
        "self-contained"
    );
    assert!(
        page.contains("<td>llama</td><td>100.0</td>"),
        "the table's figures"
    );
}

#[test]
fn drift_between_two_labels_is_found_with_its_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    for (version, base, start) in [("1.2", 10.0, 0u64), ("1.3", 12.0, 100)] {
        let mut s = Store::open(
            &path,
            &run(RunKind::Run, start, &[("version", version)]),
            Retention::default(),
        )
        .expect("open");
        s.write_interval(&interval(start, "llama", 10.0, 100.0))
            .expect("write");
        let samples: Vec<_> = (0..50)
            .map(|i| {
                let j = base + if i % 2 == 0 { -1.0 } else { 1.0 };
                request("llama", start as f64 + 0.01 * i as f64, j, Some(10))
            })
            .collect();
        s.write_requests(&samples).expect("requests");
    }
    let h = History::open(&path).expect("open");
    let now = UNIX_EPOCH + Duration::from_secs(1000);
    let (a, b) = compare::parse_spec("version=1.2..1.3", now).expect("spec");
    assert_eq!(b, compare::Side::Label("version".into(), "1.3".into()));
    let c = compare::compare(&h, &a, &b, &Window::default()).expect("compare");
    let m = &c.models[0];
    assert_eq!(m.requests, (50, 50));
    let jr = m.j_per_request.expect("enough samples");
    assert!(close(jr.change, 0.2), "{jr:?}");
    assert!(jr.low > 0.15 && jr.high < 0.25, "{jr:?}");
    assert!(jr.regressed(0.10) && !jr.regressed(0.25));
    let jt = m.j_per_token.expect("tokens");
    assert!(close(jt.change, 0.2));
    // The same split as windows: A ends by 50 s, B after.
    let (a, b) = compare::parse_spec("0/50..50/200", now).expect("spec");
    let c2 = compare::compare(&h, &a, &b, &Window::default()).expect("compare");
    assert_eq!(c2.models[0].j_per_request, Some(jr));
    assert!(
        compare::table(&c).contains("+20.0%"),
        "{}",
        compare::table(&c)
    );
    assert!(compare::parse_spec("1.2", now).is_err());
    assert!(
        compare::parse_spec("100/50..1/2", now)
            .unwrap_err()
            .contains("ends before")
    );
}

#[test]
fn times_parse_as_rfc3339_unix_seconds_or_ago() {
    let now = UNIX_EPOCH + Duration::from_secs(100_000);
    assert_eq!(
        parse_time("1700000000", now).unwrap(),
        1_700_000_000_000_000_000
    );
    assert_eq!(
        parse_time("2h", now).unwrap(),
        (100_000 - 7200) * 1_000_000_000
    );
    assert_eq!(
        parse_time("2023-11-14T22:13:20Z", now).unwrap(),
        1_700_000_000_000_000_000
    );
    assert!(
        parse_time("yesterday", now)
            .unwrap_err()
            .contains("not a time")
    );
    assert!(History::open(std::path::Path::new("/nonexistent/h.db")).is_err());
}

#[test]
fn by_pod_sums_a_pods_containers_and_leaves_the_rest_by_container() {
    use crate::attribute::K8sNames;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.db");
    let mut s = Store::open(&path, &run(RunKind::Run, 0, &[]), Retention::default()).expect("open");
    let names = |pod: Option<&str>| K8sNames {
        pod_uid: "u-1".into(),
        pod_name: pod.map(str::to_string),
        namespace: pod.map(|_| "ml".to_string()),
        container_name: None,
    };
    for i in 0..4 {
        let mut row = interval(i, "llama", 10.0, 100.0);
        let one = row.containers[0].clone();
        // Two containers of one pod (the metadata named it from the second interval
        // on), and a container in no pod.
        let pod = (i > 0).then_some("vllm-0");
        row.containers = vec![
            crate::history::rows::GroupRow {
                name: "c1".into(),
                energy_j: 3.0,
                k8s: Some(names(pod)),
                ..one.clone()
            },
            crate::history::rows::GroupRow {
                name: "c2".into(),
                energy_j: 2.0,
                k8s: Some(names(pod)),
                ..one.clone()
            },
            crate::history::rows::GroupRow {
                name: "c3".into(),
                energy_j: 1.0,
                k8s: None,
                ..one
            },
        ];
        s.write_interval(&row).expect("write");
    }
    drop(s);
    let h = History::open(&path).expect("open");
    let r = h.report(&GroupBy::Pod, &Window::default()).expect("report");
    let got: Vec<(String, f64)> = r
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.energy_j))
        .collect();
    assert_eq!(
        got,
        [
            ("ml/vllm-0".to_string(), 15.0),
            ("pod u-1".to_string(), 5.0),
            ("c3".to_string(), 4.0)
        ],
        "{got:?}"
    );
    assert_eq!("pod".parse::<GroupBy>(), Ok(GroupBy::Pod));
}
