//! Carbon per request on real servers: a threaded Flask app and a FastAPI app on
//! uvicorn, traced only by zero-code instrumentation (`opentelemetry-instrument` from
//! opentelemetry-distro, the OTLP exporter set by OTEL_* variables alone, pointed at the
//! agent), serve light and 2× heavy requests: (a) one at a time, (b) two at a time on
//! different threads, (c) a request that only waits beside a heavy one, (d) on the
//! event loop with the work on a thread pool. Their spans name no thread, so the agent
//! matches threads to spans from the threads' timelines; then the same with the
//! energy-otel helper (python/energy-otel) installed, which puts `thread.native_id` on
//! every span.
//!
//! Truth is the kernel's thread clock: each app reports the CPU time the thread doing a
//! request's work used within it (`time.thread_time`), and the meter is a powercap tree
//! the test advances at idle W + k W per busy CPU with the agent told the idle power,
//! so a request's truth is k × that CPU time (as in tests/tests/otlp.rs
//! `request_energy_is_the_dynamic_power_of_its_cpu_time`).
//!
//! Bounds, from the issue and the method: heavy/light within 1.6–2.4 for (a) and (b)
//! without thread ids (the matching's buckets are 20 ms; a light request is 0.2 s of
//! CPU, so each edge of a span is off by at most one bucket of its thread's CPU, 10%
//! each way, plus the apps' own overhead outside the work) and within 1.8–2.2 with them
//! (thread mode has only the GIL's 5 ms hand-overs at each edge); in (c) the waiting
//! request at most 0.25× the heavy one's joules (equal shares, the failure this
//! replaces, gave it 0.96×).

use std::{
    collections::BTreeMap,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use energy_tests::{
    AgentRun,
    otlp::{Backend, free_port_pair, python, run_script, script, wait_for},
    powercap::PowercapTree,
    require_root,
};

const IDLE_W: f64 = 10.0;
const W_PER_BUSY_CPU: f64 = 20.0;
/// A light request's CPU seconds; heavy is twice that.
const UNIT_S: f64 = 0.2;
const ROUNDS: u32 = 4;
/// OTLP's SpanKind SERVER.
const SERVER: i64 = 2;

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The Python helper, installed with pip from the repository path into a directory of
/// its own (put on PYTHONPATH for the runs that use it).
fn install_helper() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/energy-otel");
    let out = Command::new(python())
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(["--no-deps", "--no-build-isolation", "--target"])
        .arg(dir.path())
        .arg(&package)
        .output()
        .expect("running pip");
    assert!(
        out.status.success(),
        "pip install {}: {}",
        package.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // pip leaves its build tree in the source directory.
    let _ = std::fs::remove_dir_all(package.join("build"));
    let _ = std::fs::remove_dir_all(package.join("src/energy_otel.egg-info"));
    dir
}

/// A test app; killed if the test ends without stopping it.
struct App {
    child: Child,
    port: u16,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `app` (a script of tests/py) under `opentelemetry-instrument`, exporting to the agent
/// on `agent_port` by the standard variables only; on a port free a moment ago (tried
/// again on another when it was taken meanwhile).
fn start_app(app: &str, agent_port: u16, helper: Option<&Path>) -> App {
    let bin = python().with_file_name("opentelemetry-instrument");
    for _ in 0..3 {
        let port = free_port_pair();
        let mut command = Command::new(&bin);
        command
            .arg(python())
            .arg(script(app))
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", app.trim_end_matches(".py"))
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{agent_port}"),
            )
            .env_remove("PYTHONPATH")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(dir) = helper {
            command.env("PYTHONPATH", dir);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {} (cargo xtask test installs it): {e}",
                bin.display()
            )
        });
        let mut started = App { child, port };
        if first_line(&mut started.child) == "ready" {
            return started;
        }
        eprintln!(
            "{} did not start on port {port}; trying another",
            script(app).display()
        );
    }
    panic!("{app} did not start under opentelemetry-instrument");
}

/// The first line a child prints (byte by byte, so nothing after it is taken).
fn first_line(child: &mut Child) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let Some(stdout) = child.stdout.as_mut() else {
        return String::new();
    };
    while stdout.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_string()
}

/// Stops an app with SIGINT (its SDK flushes the spans it holds at exit).
fn stop_app(mut app: App) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(app.child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if app.child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One scenario's requests as the app answered them: (kind, span id, CPU seconds).
fn load(port: u16, scenario: &str, path: &str, wait: &str) -> Vec<(String, String, f64)> {
    let url = format!("http://127.0.0.1:{port}");
    let (rounds, unit) = (ROUNDS.to_string(), UNIT_S.to_string());
    let report = run_script(
        "server_load.py",
        &[&url, scenario, &rounds, &unit, path, wait],
    );
    report["requests"]
        .as_array()
        .expect("the load's requests")
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().expect("a kind").to_string(),
                r["span_id"].as_str().expect("a span id").to_string(),
                f(&r["cpu_s"]),
            )
        })
        .collect()
}

/// What one scenario measured.
struct Outcome {
    /// Mean heavy joules over mean light joules (waiting over heavy for (c)).
    ratio: f64,
    /// The same from the apps' CPU times.
    truth_ratio: f64,
    /// Mean |joules / (k × CPU s) − 1| over the CPU-bound requests.
    error: f64,
    /// energy.split values and how many spans had each.
    modes: BTreeMap<String, usize>,
}

fn outcome(requests: &[(String, String, f64)], spans: &[serde_json::Value]) -> Outcome {
    let mut sums: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    let (mut error, mut counted) = (0.0, 0);
    let mut modes = BTreeMap::new();
    for (kind, id, cpu_s) in requests {
        let span = spans
            .iter()
            .find(|s| s["span_id"] == id.as_str())
            .unwrap_or_else(|| panic!("span {id} not forwarded"));
        let a = &span["attributes"];
        let j = f(&a["energy.joules"]);
        let mode = a["energy.split"]
            .as_str()
            .expect("energy.split")
            .to_string();
        assert!(
            ["thread", "thread-inferred", "tokens", "equal"].contains(&mode.as_str()),
            "{span}"
        );
        *modes.entry(mode).or_insert(0) += 1;
        let e = sums.entry(kind.as_str()).or_default();
        (e.0, e.1, e.2) = (e.0 + j, e.1 + cpu_s, e.2 + 1);
        if kind != "waiting" {
            error += (j / (W_PER_BUSY_CPU * cpu_s) - 1.0).abs();
            counted += 1;
        }
    }
    let mean = |k: &str, truth: bool| {
        let (j, cpu, n) = sums.get(k).copied().unwrap_or_default();
        (if truth { cpu } else { j }) / n.max(1) as f64
    };
    // Heavy over light; for the waiting scenario, waiting over heavy.
    let (top, bottom) = if sums.contains_key("waiting") {
        ("waiting", "heavy")
    } else {
        ("heavy", "light")
    };
    Outcome {
        ratio: mean(top, false) / mean(bottom, false),
        truth_ratio: mean(top, true) / mean(bottom, true),
        error: error / counted.max(1) as f64,
        modes,
    }
}

/// Runs `app` through `scenarios` ((name, scenario, work path, wait path)) with the
/// agent receiving; checks that every SERVER span arrives once and enriched, and the
/// requests never claim more than the process; returns each scenario's outcome.
fn serve(
    app: &str,
    scenarios: &[(&str, &str, &str, &str)],
    helper: Option<&Path>,
) -> BTreeMap<String, Outcome> {
    require_root();
    let tree = PowercapTree::package_following_load(IDLE_W, W_PER_BUSY_CPU);
    let root = tree.root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let app_run = start_app(app, port, helper);
    let (pid, app_port) = (u64::from(app_run.child.id()), app_run.port);
    let backend = Backend::start(backend_port);
    let (receive, endpoint) = (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{backend_port}"),
    );
    let idle_power = format!("package={IDLE_W}");
    let mut agent = AgentRun::start(&[
        "--interval",
        "1s",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--powercap-root",
        root.to_str().expect("a UTF-8 temp path"),
        "--idle-power",
        &idle_power,
        "--request-resolution",
        "20ms",
        "--metrics-interval",
        "1s",
    ]);
    let mut runs = Vec::new();
    for &(name, scenario, path, wait) in scenarios {
        runs.push((name, load(app_port, scenario, path, wait)));
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_app(app_run);
    let expected: usize = runs.iter().map(|(_, r)| r.len()).sum();
    let server_spans = || -> Vec<serde_json::Value> {
        backend
            .received("span")
            .into_iter()
            .filter(|s| s["kind"].as_i64() == Some(SERVER))
            .collect()
    };
    // The load's /health checks are requests too: one per scenario.
    wait_for(Duration::from_secs(30), || {
        let s = server_spans();
        (s.len() >= expected + scenarios.len()).then_some(s)
    })
    .unwrap_or_else(|| panic!("{app}: SERVER spans: {:?}", server_spans().len()));
    agent.wait_intervals(1, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    std::thread::sleep(Duration::from_secs(1));
    let spans_now = server_spans();
    let mut ids: Vec<&str> = spans_now
        .iter()
        .map(|s| s["span_id"].as_str().expect("an id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), spans_now.len(), "{app}: a SERVER span twice");
    for s in &spans_now {
        let a = &s["attributes"];
        assert!(
            a["energy.joules"].as_f64().is_some(),
            "{app}: not enriched: {s}"
        );
        assert_eq!(a["energy.source"], "rapl-powercap", "{s}");
    }
    let requests_j: f64 = spans_now
        .iter()
        .map(|s| f(&s["attributes"]["energy.joules"]))
        .sum();
    let process_j: f64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().expect("processes").iter())
        .filter(|p| p["pid"].as_u64() == Some(pid))
        .map(|p| f(&p["energy_j"]))
        .sum();
    eprintln!(
        "{app}: requests {requests_j:.3} J of the process's {process_j:.3} J ({:.3} J unattributed to requests)",
        process_j - requests_j
    );
    assert!(
        requests_j <= process_j * 1.0001,
        "{app}: requests {requests_j} J ≤ process {process_j} J"
    );
    runs.into_iter()
        .map(|(name, requests)| {
            let o = outcome(&requests, &spans_now);
            eprintln!(
                "{app} {name} (helper: {}): ratio {:.3}, truth {:.3}, error vs CPU-time truth {:.1}%, split {:?}",
                helper.is_some(),
                o.ratio,
                o.truth_ratio,
                o.error * 100.0,
                o.modes
            );
            (name.to_string(), o)
        })
        .collect()
}

fn assert_within(app: &str, o: &BTreeMap<String, Outcome>, name: &str, lo: f64, hi: f64) {
    let r = o[name].ratio;
    assert!(
        (lo..=hi).contains(&r),
        "{app} {name}: heavy/light {r:.3} outside {lo}–{hi}"
    );
}

const FLASK: [(&str, &str, &str, &str); 3] = [
    ("a-sequential", "sequential", "/work", "/wait"),
    ("b-two-at-a-time", "pairs", "/work", "/wait"),
    ("c-waiting-beside-heavy", "waiting", "/work", "/wait"),
];

const FASTAPI: [(&str, &str, &str, &str); 4] = [
    ("a-sequential", "sequential", "/work", "/wait"),
    ("b-two-at-a-time", "pairs", "/work", "/wait"),
    ("c-waiting-beside-heavy", "waiting", "/work", "/wait"),
    (
        "d-event-loop-and-pool",
        "pairs",
        "/async_work",
        "/async_wait",
    ),
];

fn check(app: &str, o: &BTreeMap<String, Outcome>, (lo, hi): (f64, f64), with_d: bool) {
    assert_within(app, o, "a-sequential", lo, hi);
    assert_within(app, o, "b-two-at-a-time", lo, hi);
    let waiting = o["c-waiting-beside-heavy"].ratio;
    assert!(
        waiting <= 0.25,
        "{app}: the waiting request got {waiting:.3}× the heavy one's joules"
    );
    if with_d {
        assert_within(app, o, "d-event-loop-and-pool", lo, hi);
    }
}

#[test]
fn flask_under_zero_code_instrumentation() {
    let o = serve("flask_app.py", &FLASK, None);
    check("flask", &o, (1.6, 2.4), false);
}

#[test]
fn flask_with_the_energy_otel_helper() {
    let helper = install_helper();
    let o = serve("flask_app.py", &FLASK, Some(helper.path()));
    check("flask+helper", &o, (1.8, 2.2), false);
}

#[test]
fn fastapi_under_zero_code_instrumentation() {
    let o = serve("fastapi_app.py", &FASTAPI, None);
    // (d) is reported, not bounded, without thread ids.
    check("fastapi", &o, (1.6, 2.4), false);
}

#[test]
fn fastapi_with_the_energy_otel_helper() {
    let helper = install_helper();
    let o = serve("fastapi_app.py", &FASTAPI, Some(helper.path()));
    check("fastapi+helper", &o, (1.8, 2.2), true);
}
