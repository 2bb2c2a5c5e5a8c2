//! Spans from the network are untrusted input, end to end with independent senders: a
//! server in its own pid namespace (`unshare --pid`), a sender lying about its
//! `process.pid`, an export sent twice (an SDK retry), spans with impossible times and
//! spans that already carry the agent's attribute keys. What the agent forwards is read
//! back from a Python OTLP backend, its counters from its Prometheus endpoint.

use std::{
    io::{Read, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use energy_tests::{
    AgentRun,
    otlp::{Backend, free_port_pair, python, script, wait_for},
    require_root, test_bin,
};

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The agent receiving on `port` (gRPC), forwarding to `backend_port`, with its
/// Prometheus endpoint on `prometheus`.
fn agent(port: u16, backend_port: u16, prometheus: u16) -> AgentRun {
    let receive = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let prometheus = format!("127.0.0.1:{prometheus}");
    AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--carbon-intensity",
        "300",
        "--prometheus",
        &prometheus,
    ])
}

/// `energy_agent_spans_total{state=STATE}` from the agent's Prometheus endpoint.
fn spans_counter(port: u16, state: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let label = format!("state=\"{state}\"");
    text.lines()
        .filter(|l| l.starts_with("energy_agent_spans_total{") && l.contains(&label))
        .find_map(|l| l.split_whitespace().last()?.parse().ok())
}

/// Waits until the counter reads `want`; panics with what it read.
fn assert_counter(port: u16, state: &str, want: f64) {
    let seen = wait_for(Duration::from_secs(10), || {
        spans_counter(port, state).filter(|&v| v == want)
    });
    assert!(
        seen.is_some(),
        "energy_agent_spans_total{{state=\"{state}\"}}: {:?}, want {want}",
        spans_counter(port, state)
    );
}

/// Joules the agent gave process `pid` over `intervals`.
fn process_j(intervals: &[serde_json::Value], pid: u32) -> f64 {
    intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .map(|p| f(&p["energy_j"]))
        .sum()
}

/// The children of `pid` (by the PPid in each process's status).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<u32>().ok());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// The inference server (tests/py) in a pid namespace of its own, and its pid on the
/// host: `unshare --fork` runs it as its child, pid 1 in the new namespace.
fn unshared_inference_server(endpoint: &str, args: &[&str]) -> (Child, u32) {
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(python())
        .arg(script("inference_server.py"))
        .arg(endpoint)
        .arg("grpc")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running unshare (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let host_pid = loop {
        if let Some(&pid) = children_of(child.id()).first() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "unshare started no child process"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    (child, host_pid)
}

/// The server's report (its pid as it sees it, its requests).
fn report_of(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("waiting for the server");
    assert!(
        out.status.success(),
        "inference server failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inference server report")
}

/// The `n` spans forwarded, once they all arrived.
fn spans_received(backend: &Backend, n: usize) -> Vec<serde_json::Value> {
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= n).then_some(s)
    })
    .unwrap_or_else(|| panic!("not every span arrived: {:?}", backend.received("span")));
    assert_eq!(spans.len(), n, "each span once");
    spans
}

/// The request spans ("chat tiny-llama") forwarded, once `n` spans arrived.
fn request_spans(backend: &Backend, n: usize) -> Vec<serde_json::Value> {
    spans_received(backend, n)
        .into_iter()
        .filter(|s| s["name"] == "chat tiny-llama")
        .collect()
}

/// A server in a container reports its pid there (1): the span is still its own,
/// because the connection names the host process and the claim is translated through
/// its pid namespace. Before, the agent took pid 1 to be the host's init.
#[test]
fn a_server_in_its_own_pid_namespace_is_credited_through_its_connection() {
    require_root();
    let (port, backend_port, prom) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let mut agent = agent(port, backend_port, prom);
    let endpoint = format!("http://127.0.0.1:{port}");
    let (child, host_pid) = unshared_inference_server(&endpoint, &["8", "0.15"]);
    let report = report_of(child);
    let inner_pid = report["pid"].as_u64().expect("the server's pid");
    let requests = request_spans(&backend, 16);
    agent.wait_intervals(1, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    assert_ne!(
        inner_pid,
        u64::from(host_pid),
        "the server is in its own namespace"
    );

    let (mut big, mut small) = (Vec::new(), Vec::new());
    for s in &requests {
        assert_eq!(
            s["resource"]["process.pid"], inner_pid,
            "resource untouched"
        );
        let a = &s["attributes"];
        assert!(a.get("energy.status").is_none(), "attributed: {s}");
        let j = f(&a["energy.joules"]);
        match a["request.type"].as_str() {
            Some("big") => big.push(j),
            _ => small.push(j),
        }
    }
    assert_eq!(requests.len(), 8);
    let requests_j: f64 = big.iter().chain(&small).sum();
    let server_j = process_j(&intervals, host_pid);
    let ratio = big.iter().sum::<f64>() / small.iter().sum::<f64>();
    eprintln!(
        "host pid {host_pid} (pid {inner_pid} inside): requests {requests_j:.3} J of its {server_j:.3} J; big/small {ratio:.3}"
    );
    assert!(
        requests_j <= server_j * 1.0001,
        "requests {requests_j} J ≤ the server's {server_j} J"
    );
    assert!(
        requests_j > server_j * 0.3,
        "the requests carry most of the server's energy: {requests_j} of {server_j} J"
    );
    assert!((ratio - 2.0).abs() <= 0.2, "2× work, 2× energy: {ratio}");
}

/// A sender in a container naming a busy host process as its `process.pid` gets its own
/// (small) energy, never that process's.
#[test]
fn a_sender_naming_a_process_it_cannot_see_is_credited_as_itself() {
    require_root();
    let (port, backend_port, prom) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let mut agent = agent(port, backend_port, prom);
    // The victim burns one CPU for the whole test.
    let mut victim = Command::new(test_bin("burner"))
        .args(["8", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting burner");
    let victim_pid = victim.id().to_string();
    let endpoint = format!("http://127.0.0.1:{port}");
    // Requests that sleep: the liar's own energy in them is next to nothing.
    let (child, liar_pid) = unshared_inference_server(
        &endpoint,
        &["6", "0.5", "--sleep", "--claim-pid", &victim_pid],
    );
    report_of(child);
    let requests = request_spans(&backend, 12);
    agent.wait_intervals(1, Duration::from_secs(10));
    let _ = victim.kill();
    let _ = victim.wait();
    let (status, intervals) = agent.stop();
    assert!(status.success());

    let mut requests_j = 0.0;
    for s in &requests {
        assert_eq!(
            s["resource"]["process.pid"],
            victim.id(),
            "the claim, untouched"
        );
        let a = &s["attributes"];
        assert!(a.get("energy.status").is_none(), "attributed: {s}");
        requests_j += f(&a["energy.joules"]);
    }
    assert_eq!(requests.len(), 6);
    let liar_j = process_j(&intervals, liar_pid);
    let victim_j = process_j(&intervals, victim.id());
    eprintln!(
        "liar {liar_pid}: requests {requests_j:.3} J of its {liar_j:.3} J; victim {victim_pid}: {victim_j:.3} J"
    );
    assert!(
        victim_j > 2.0 * liar_j,
        "the victim's energy ({victim_j} J) would stand out against the liar's ({liar_j} J)"
    );
    assert!(
        requests_j <= liar_j * 1.0001,
        "the requests got {requests_j} J, more than the sender's {liar_j} J: the victim's energy"
    );
}

/// The sender of tests/py/untrusted_sender.py SCENARIO; returns its report.
fn untrusted_sender(port: u16, scenario: &str, unit_s: f64) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script("untrusted_sender.py"))
        .args([&port.to_string(), scenario, &unit_s.to_string()])
        .output()
        .expect("running untrusted_sender.py");
    assert!(
        out.status.success(),
        "untrusted_sender.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sender report")
}

/// An export sent twice carries the same figures in both copies, the figures one
/// export gets: span A (sent twice) and span B (once) did the same work on the same
/// thread, so they get the same energy. Before, A's copies shared A's thread time.
#[test]
fn an_export_sent_twice_is_one_request() {
    require_root();
    let (port, backend_port, prom) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let agent = agent(port, backend_port, prom);
    let report = untrusted_sender(port, "resend", 0.5);
    let spans = spans_received(&backend, 3);
    let joules_of = |id: &serde_json::Value| -> Vec<f64> {
        spans
            .iter()
            .filter(|s| s["span_id"] == *id)
            .map(|s| f(&s["attributes"]["energy.joules"]))
            .collect()
    };
    let a = joules_of(&report["spans"]["a"]);
    let b = joules_of(&report["spans"]["b"]);
    eprintln!("A (sent twice): {a:?} J; B: {b:?} J");
    assert_eq!(a.len(), 2, "both copies of A passed on");
    assert_eq!(a[0], a[1], "the same figures on both copies");
    assert_eq!(b.len(), 1);
    assert!(
        (a[0] / b[0] - 1.0).abs() <= 0.15,
        "the same work, the same energy (±15%): A {} J, B {} J",
        a[0],
        b[0]
    );
    assert_counter(prom, "duplicate", 1.0);
    assert_counter(prom, "enriched", 2.0);
    agent.stop();
}

/// Request spans with impossible times are passed on marked and counted, and take no
/// share; a span carrying the agent's keys ends up with one of each, its other keys as
/// they were.
#[test]
fn impossible_times_and_our_own_keys_from_a_sender() {
    require_root();
    let (port, backend_port, prom) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let agent = agent(port, backend_port, prom);
    let report = untrusted_sender(port, "bad", 0.3);
    let spans = spans_received(&backend, 6);
    let by_id = |id: &serde_json::Value| {
        spans
            .iter()
            .find(|s| s["span_id"] == *id)
            .unwrap_or_else(|| panic!("span {id} not forwarded"))
    };
    for id in report["spans"]["invalid"].as_array().expect("invalid ids") {
        let a = &by_id(id)["attributes"];
        assert!(a.get("energy.joules").is_none(), "{a}");
        assert_eq!(a["energy.status"], "unattributed");
        let reason = a["energy.status_reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("invalid span times"), "{reason}");
    }
    let good = f(&by_id(&report["spans"]["good"])["attributes"]["energy.joules"]);
    assert!(good > 0.0);
    let keyed = by_id(&report["spans"]["keyed"]);
    let keys: Vec<&str> = keyed["attribute_keys"]
        .as_array()
        .expect("attribute keys")
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    for key in ["energy.joules", "carbon.gco2e", "energy.budget", "team"] {
        assert_eq!(
            keys.iter().filter(|k| **k == key).count(),
            1,
            "{key} once: {keys:?}"
        );
    }
    let a = &keyed["attributes"];
    let j = f(&a["energy.joules"]);
    assert!(j > 0.0 && j < 1e9, "ours, not the sender's 1e9: {j}");
    assert!(
        a["carbon.gco2e"].is_f64(),
        "ours, not the sender's \"lots\": {a}"
    );
    assert_eq!(a["energy.budget"], 5);
    assert_eq!(a["team"], "a");
    let client = &by_id(&report["spans"]["client"])["attributes"];
    assert!(
        client.as_object().is_some_and(|o| o.is_empty()),
        "not a request: untouched: {client}"
    );
    assert_counter(prom, "invalid", 3.0);
    agent.stop();
}
