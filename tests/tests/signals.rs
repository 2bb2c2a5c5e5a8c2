//! Stopping at any moment: `run` with the OTLP receiver is sent SIGINT at random moments
//! of its first 3 s — while it loads programs and parses BTF, while it starts its
//! listeners, or while it serves — with and without CPU load. Each run must exit 0
//! within 2 s, and every span the agent accepted (answered OK) must reach the backend.
//!
//! The clock of each run starts once the agent catches SIGINT (its SigCgt mask in
//! /proc/PID/status): before that moment a signal has the effect the launcher left it
//! (the default kills; a shell's background job ignores it), which no program can change.
//! The agent catches it first thing, so the first two runs, signalled 0 and 20 ms after
//! that, land while it loads its programs: it must stop there, not start serving.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use energy_tests::{
    agent_bin,
    otlp::{Backend, free_port_pair, wait_for},
    require_root, test_bin,
};

/// Runs per load condition.
const RUNS: u32 = 20;
/// Latest signal, from the moment the agent catches it.
const WINDOW: Duration = Duration::from_secs(3);
/// How long a stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(2);

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_fraction(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether `pid` has a handler installed for SIGINT.
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// One OTLP/HTTP JSON request with one SERVER span of this process.
fn span_request(span_id: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"signals-test"}}}},{{"key":"process.pid","value":{{"intValue":"{pid}"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{span_id:032x}","spanId":"{span_id:016x}","name":"request","kind":2,"startTimeUnixNano":"{start}","endTimeUnixNano":"{now}"}}]}}]}}]}}"#,
        pid = std::process::id(),
        start = now - 5_000_000,
    )
}

/// Posts one span; true when the agent answered 200 (it accepted the span).
fn post(port: u16, span_id: u64) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let body = span_request(span_id);
    let request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

/// Sends spans every 20 ms until `done`; returns the ids the agent accepted.
fn sender(port: u16, first_id: u64, done: Arc<AtomicBool>) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut id = first_id;
        while !done.load(Ordering::Relaxed) {
            if post(port, id) {
                accepted.push(id);
            }
            id += 1;
            thread::sleep(Duration::from_millis(20));
        }
        accepted
    })
}

/// Starts the agent, signals it after `delay` from the moment it catches SIGINT, and
/// checks how it stops; returns the span ids it accepted and how long the stop took.
fn one_run(backend_port: u16, delay: Duration, first_id: u64) -> (Vec<u64>, Duration) {
    let port = free_port_pair();
    let mut agent: Child = Command::new(agent_bin())
        .args(["run", "--output", "none", "--interval", "500ms", "--no-gpu"])
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{backend_port}"),
        ])
        .args(["--receive", &format!("127.0.0.1:{port}")])
        .args(["--metrics-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting energy-agent");
    let pid = agent.id();
    let spawned = Instant::now();
    while !catches_sigint(pid) {
        assert!(
            spawned.elapsed() < Duration::from_secs(10),
            "the agent never installed its SIGINT handler"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let done = Arc::new(AtomicBool::new(false));
    let sending = sender(port + 1, first_id, done.clone());
    thread::sleep(delay);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().expect("waiting for the agent") {
            break status;
        }
        if signalled.elapsed() > STOP_LIMIT + Duration::from_secs(5) {
            let _ = agent.kill();
            break agent.wait().expect("reaping the agent");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let took = signalled.elapsed();
    done.store(true, Ordering::Relaxed);
    let accepted = sending.join().expect("sender thread");
    assert!(
        status.success(),
        "signalled {delay:?} after it caught SIGINT, the agent ended with {status}"
    );
    assert!(
        took <= STOP_LIMIT,
        "signalled {delay:?} after it caught SIGINT, the agent took {took:?} to stop"
    );
    (accepted, took)
}

/// A burner on every CPU for the whole test (the load condition).
fn load() -> Vec<Child> {
    (0..2)
        .map(|cpu| {
            Command::new(test_bin("burner"))
                .args(["120", "1", "1.0", &cpu.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("burner")
        })
        .collect()
}

fn runs_at_random_moments(loaded: bool) {
    require_root();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    eprintln!("seed {seed} (loaded: {loaded})");
    let mut rng = Lcg(seed);
    let backend_port = free_port_pair();
    let backend = Backend::start(backend_port);
    let mut burners = if loaded { load() } else { Vec::new() };
    let mut accepted = BTreeSet::new();
    for run in 0..RUNS {
        // The first runs land in start-up for sure (loading programs, parsing BTF).
        let delay = match run {
            0 => Duration::ZERO,
            1 => Duration::from_millis(20),
            _ => WINDOW.mul_f64(rng.next_fraction()),
        };
        let (ids, took) = one_run(backend_port, delay, u64::from(run) << 32 | 1);
        eprintln!(
            "run {run}: signal after {delay:?}, stopped in {took:?}, {} spans accepted",
            ids.len()
        );
        // Signalled as soon as it can catch the signal, the agent is still loading:
        // it must stop there, not finish starting and serve first.
        assert!(
            run > 1 || ids.is_empty(),
            "signalled {delay:?} after it could catch SIGINT, the agent finished starting \
             and accepted {} spans before it stopped",
            ids.len()
        );
        accepted.extend(ids);
    }
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    assert!(
        !accepted.is_empty(),
        "no run accepted a span: the test would prove nothing"
    );
    let received = |b: &Backend| -> BTreeSet<u64> {
        b.received("span")
            .iter()
            .filter_map(|s| u64::from_str_radix(s["span_id"].as_str()?, 16).ok())
            .collect()
    };
    let all_in = wait_for(Duration::from_secs(10), || {
        accepted.is_subset(&received(&backend)).then_some(())
    });
    let got = received(&backend);
    let missing: Vec<_> = accepted.difference(&got).collect();
    assert!(
        all_in.is_some(),
        "{} of {} accepted spans never reached the backend: {missing:x?}",
        missing.len(),
        accepted.len()
    );
}

#[test]
fn a_signal_at_any_moment_stops_promptly_and_loses_no_accepted_span() {
    runs_at_random_moments(false);
}

#[test]
fn under_load_too() {
    runs_at_random_moments(true);
}
