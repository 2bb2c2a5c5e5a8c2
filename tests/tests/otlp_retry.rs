//! The forwarder against a backend that answers each export as scripted (tests/py
//! scripted_backend.py: opentelemetry-proto, grpcio, googleapis-common-protos), over
//! gRPC and over HTTP: the agent retries exactly what OTLP calls retryable, waits the
//! delay the backend asked for (RetryInfo, Retry-After), drops everything else at once
//! and counts it, counts partial_success rejections, and keeps delivering what follows.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use energy_tests::{
    AgentRun,
    otlp::{free_port_pair, python, run_script, script, start_peer, wait_for},
    require_root,
};

/// scripted_backend.py, recording every attempt.
struct Scripted {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Scripted {
    fn start(protocol: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = dir.path().join("attempts.jsonl");
        let child = start_peer(
            Command::new(python())
                .arg(script("scripted_backend.py"))
                .args([protocol, &port.to_string()])
                .arg(&out),
            "scripted_backend.py",
        );
        Self {
            child,
            out,
            _dir: dir,
        }
    }

    /// Every attempt so far, by case name, in order.
    fn attempts(&self) -> BTreeMap<String, Vec<serde_json::Value>> {
        let mut by_name: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for line in std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
        {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let name = v["name"].as_str().expect("a name").to_string();
            by_name.entry(name).or_default().push(v);
        }
        by_name
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scripted case: its span name (the script), spans in it, how many attempts the
/// agent must make, and the least time between consecutive attempts.
struct Case {
    name: &'static str,
    spans: u64,
    attempts: usize,
    gap: Duration,
}

/// The least wait between retries without a server-given delay: half of the first
/// backoff step (100 ms, jittered down to half).
const MIN_BACKOFF: Duration = Duration::from_millis(50);

const fn case(name: &'static str, spans: u64, attempts: usize, gap: Duration) -> Case {
    Case {
        name,
        spans,
        attempts,
        gap,
    }
}

const GRPC_CASES: [Case; 9] = [
    case("case:UNAVAILABLE,OK", 1, 2, MIN_BACKOFF),
    case(
        "case:RESOURCE_EXHAUSTED+retry=1500,OK",
        1,
        2,
        Duration::from_millis(1500),
    ),
    case("case:ABORTED,DEADLINE_EXCEEDED,OK", 1, 3, MIN_BACKOFF),
    case("case:RESOURCE_EXHAUSTED", 1, 1, Duration::ZERO),
    case("case:INVALID_ARGUMENT", 1, 1, Duration::ZERO),
    case("case:UNAUTHENTICATED", 1, 1, Duration::ZERO),
    case("case:UNKNOWN", 1, 1, Duration::ZERO),
    case("case:OK+partial=1", 3, 1, Duration::ZERO),
    case("case:OK", 2, 1, Duration::ZERO),
];

const HTTP_CASES: [Case; 10] = [
    case("case:503,200", 1, 2, MIN_BACKOFF),
    case("case:429+after=2,200", 1, 2, Duration::from_secs(2)),
    case("case:502,504,200", 1, 3, MIN_BACKOFF),
    case("case:400", 1, 1, Duration::ZERO),
    case("case:401", 1, 1, Duration::ZERO),
    case("case:404", 1, 1, Duration::ZERO),
    case("case:413", 1, 1, Duration::ZERO),
    case("case:500", 1, 1, Duration::ZERO),
    case("case:200+partial=1", 3, 1, Duration::ZERO),
    case("case:200", 2, 1, Duration::ZERO),
];

/// Whether the reply a case's attempt got (its script's step) is a failure the agent
/// was to retry, dropped for good, or a delivery.
fn outcome(reply: &str) -> &'static str {
    let code = reply.split('+').next().unwrap_or(reply);
    match code {
        "OK" | "200" => "delivered",
        "UNAVAILABLE" | "ABORTED" | "DEADLINE_EXCEEDED" | "503" | "502" | "504" | "429" => "retry",
        "RESOURCE_EXHAUSTED" if reply.contains("retry=") => "retry",
        _ => "drop",
    }
}

/// Sends one export per case name to the agent; returns its answers by name.
fn sends(grpc_port: u16, names: &[&str]) -> serde_json::Value {
    let port = grpc_port.to_string();
    let args: Vec<&str> = std::iter::once(port.as_str())
        .chain(names.iter().copied())
        .collect();
    run_script("send_spans.py", &args)
}

fn scripted_run(protocol: &str, cases: &[Case]) {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Scripted::start(protocol, backend_port);
    let receive = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let otlp_protocol = if protocol == "grpc" {
        "grpc"
    } else {
        "http/protobuf"
    };
    let agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        otlp_protocol,
        "--otlp-concurrency",
        "3",
    ]);
    let names: Vec<String> = cases
        .iter()
        .map(|c| format!("{}*{}", c.name, c.spans))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let answers = sends(port, &names);
    for c in cases {
        assert_eq!(
            answers[c.name], "OK",
            "the agent accepted {}: {answers}",
            c.name
        );
    }
    let done = |a: &BTreeMap<String, Vec<serde_json::Value>>| {
        cases
            .iter()
            .all(|c| a.get(c.name).is_some_and(|v| v.len() >= c.attempts))
    };
    wait_for(Duration::from_secs(30), || {
        done(&backend.attempts()).then_some(())
    })
    .unwrap_or_else(|| panic!("not every case ran its script: {:?}", backend.attempts()));
    // What follows the drops is still delivered.
    let after = sends(port, &["after:OK*2"]);
    assert_eq!(after["after:OK"], "OK");
    wait_for(Duration::from_secs(10), || {
        backend.attempts().contains_key("after:OK").then_some(())
    })
    .expect("a span sent after the rejections is delivered");
    std::thread::sleep(Duration::from_secs(1));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    check_attempts(cases, &backend.attempts());
    check_counters(cases, &intervals);
}

/// The reply a case's script gives on attempt `k` (OK past its end).
fn step(c: &Case, k: usize) -> &'static str {
    let script = c.name.trim_start_matches("case:");
    script.split(',').nth(k).unwrap_or("OK")
}

/// Each case got exactly its script's attempts: every reply but the last one retryable,
/// the last one not, each retry at least its gap after the attempt before.
fn check_attempts(cases: &[Case], attempts: &BTreeMap<String, Vec<serde_json::Value>>) {
    for c in cases {
        let a = &attempts[c.name];
        let replies: Vec<&str> = a
            .iter()
            .map(|v| v["reply"].as_str().unwrap_or(""))
            .collect();
        eprintln!("{}: {replies:?}", c.name);
        assert_eq!(a.len(), c.attempts, "{}: attempts {replies:?}", c.name);
        let last = replies.len() - 1;
        assert_ne!(
            outcome(replies[last]),
            "retry",
            "{}: gave up on a retryable reply",
            c.name
        );
        for (k, pair) in a.windows(2).enumerate() {
            assert_eq!(
                outcome(replies[k]),
                "retry",
                "{}: retried a final reply",
                c.name
            );
            let gap = pair[1]["t"].as_f64().unwrap_or(0.0) - pair[0]["t"].as_f64().unwrap_or(0.0);
            assert!(
                gap >= c.gap.as_secs_f64() - 0.005,
                "{}: attempt {} came {gap:.3} s after the previous, wanted ≥ {:?}",
                c.name,
                k + 1,
                c.gap
            );
        }
    }
}

/// The agent's own counters (`run --output json`'s `otlp`) say the same.
fn check_counters(cases: &[Case], intervals: &[serde_json::Value]) {
    let last = intervals.last().expect("an interval");
    let fwd = &last["otlp"]["forward"];
    eprintln!("agent's counters: {}", last["otlp"]);
    let dropped: u64 = cases
        .iter()
        .filter(|c| outcome(step(c, c.attempts - 1)) == "drop")
        .map(|c| c.spans)
        .sum();
    let retries: usize = cases.iter().map(|c| c.attempts - 1).sum();
    assert_eq!(fwd["dropped"], dropped, "the dropped spans, counted");
    assert_eq!(fwd["rejected"], 1, "the span the partial_success rejected");
    assert_eq!(
        fwd["retries"], retries as u64,
        "one retry per retryable reply"
    );
    assert_eq!(fwd["queued"], 0);
    let traces = &last["otlp"]["receiver"]["traces"];
    assert_eq!(traces["accepted_requests"], cases.len() as u64 + 1);
    assert_eq!(traces["throttled_requests"], 0);
}

#[test]
fn grpc_answers_are_retried_by_the_otlp_rules() {
    scripted_run("grpc", &GRPC_CASES);
}

#[test]
fn http_answers_are_retried_by_the_otlp_rules() {
    scripted_run("http", &HTTP_CASES);
}
