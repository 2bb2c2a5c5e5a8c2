//! Helpers of the lifecycle tests (tests/tests/lifecycle.rs): the agent's subcommands
//! as a user runs them, the history's report as JSON, and a recorded run with a burner
//! and an inference server sending real request spans.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{
    AgentRun, agent_bin,
    otlp::{Backend, free_port_pair, inference_server, wait_for},
    test_bin,
};

/// A JSON number, or a panic naming the value.
pub fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Asserts `a` equals `b` to 1e-9 relative.
pub fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12),
        "{what}: {a} vs {b}"
    );
}

/// Runs the agent with `args`; returns its output.
pub fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("running energy-agent")
}

/// stdout and stderr of a finished command.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `report FILE --format json` with `extra` flags.
pub fn report_json(db: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["report", db.to_str().expect("path"), "--format", "json"];
    args.extend_from_slice(extra);
    let out = agent(&args);
    assert!(out.status.success(), "report failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// The group `name` of a report, or a panic showing the report.
pub fn group<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no group {name} in {r}"))
}

/// Σ over the printed intervals of `models[name].energy_j`.
pub fn printed_model_j(intervals: &[serde_json::Value], name: &str) -> f64 {
    intervals
        .iter()
        .flat_map(|i| i["models"].as_array().into_iter().flatten())
        .filter(|m| m["name"] == name)
        .map(|m| f(&m["energy_j"]))
        .sum()
}

/// A recorded run: the agent with `--record db --label version=V`, a burner, and the
/// inference server's 8 requests of `unit` s; returns the printed intervals and the
/// enriched request spans the backend received.
pub fn record_run(
    db: &Path,
    version: &str,
    unit: f64,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let (receive, endpoint) = (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{backend_port}"),
    );
    let label = format!("version={version}");
    let mut run = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--carbon-intensity",
        "300",
        "--pue",
        "1.2",
        "--model",
        "tiny-llama=inference_server",
        "--record",
        db.to_str().expect("path"),
        "--label",
        &label,
    ]);
    let mut burner = Command::new(test_bin("burner"))
        .args(["1.0", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the burner");
    inference_server(&format!("http://127.0.0.1:{port}"), "grpc", 8, unit, &[]);
    assert!(burner.wait().expect("burner").success());
    let spans = wait_for(Duration::from_secs(20), || {
        let s: Vec<_> = (backend.received("span").into_iter())
            .filter(|s| s["attributes"].get("energy.joules").is_some())
            .collect();
        (s.len() >= 8).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every request came back enriched: {:?}",
            backend.received("span")
        )
    });
    run.wait_intervals(1, Duration::from_secs(10));
    let (status, intervals) = run.stop();
    assert!(status.success(), "agent: {status}");
    let log = db.with_file_name(format!("{}-wal", db.file_name().expect("name").display()));
    assert!(
        !log.exists(),
        "a stopped run leaves its history in one file"
    );
    (intervals, spans)
}
