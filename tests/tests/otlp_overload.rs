//! Backpressure, end to end: a Python sender (tests/py/flood.py, grpcio) offers the
//! agent at least 5× the spans it can take, over gRPC and HTTP, for 20 s; a Python sink
//! (tests/py/counting_sink.py) counts what the agent forwards. With its default bounds
//! the agent's memory stays bounded, every span it answered OK reaches the sink exactly
//! once, nothing it refused does, and every refusal is OTLP's throttling reply
//! (RESOURCE_EXHAUSTED with RetryInfo, 429 with Retry-After), never an error.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use energy_tests::{
    AgentRun,
    otlp::{free_port_pair, python, script},
    require_root,
};

/// How long the sender floods.
const FLOOD_S: u64 = 20;
/// Spans per request.
const BATCH: u64 = 200;
/// The agent's peak resident memory may not pass this (MiB), whatever it is offered:
/// its defaults bound what it holds to 200,000 items and 32 MiB as received.
const MAX_RSS_MIB: f64 = 100.0;

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// counting_sink.py: reports when its stdin closes.
struct Sink(Child);

impl Sink {
    fn start(port: u16) -> Self {
        let mut child = Command::new(python())
            .arg(script("counting_sink.py"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting counting_sink.py (cargo xtask test installs its packages)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("its stdout"))
            .read_line(&mut line)
            .expect("its first line");
        assert_eq!(line.trim(), "ready", "counting_sink.py did not start");
        Self(child)
    }

    fn report(mut self) -> serde_json::Value {
        drop(self.0.stdin.take());
        let mut text = String::new();
        self.0
            .stdout
            .take()
            .expect("its stdout")
            .read_to_string(&mut text)
            .expect("its report");
        let _ = self.0.wait();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// Samples the agent's VmRSS every 100 ms until stopped; returns the largest, KiB.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let most = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = status_kib(pid, "VmRSS") {
                most.fetch_max(kib, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(100));
        }
        most.load(Ordering::Relaxed)
    })
}

/// Reads intervals until the agent holds nothing it accepted (bounded wait).
fn drained(agent: &mut AgentRun) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        agent.wait_intervals(1, Duration::from_secs(10));
        let last = agent.intervals.last().expect("an interval").clone();
        let r = &last["otlp"]["receiver"];
        if r["pending_items"] == 0 && last["otlp"]["forward"]["queued"] == 0 {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not drain in 60 s: {}",
            last["otlp"]
        );
    }
}

/// The most items and bytes the agent held, over its intervals.
fn pending_peak(intervals: &[serde_json::Value]) -> (u64, u64) {
    intervals
        .iter()
        .map(|i| &i["otlp"]["receiver"])
        .map(|r| {
            (
                r["pending_items"].as_u64().unwrap_or(0),
                r["pending_bytes"].as_u64().unwrap_or(0),
            )
        })
        .fold((0, 0), |(a, b), (i, j)| (a.max(i), b.max(j)))
}

#[test]
fn five_times_what_the_agent_can_take_is_throttled_in_bounded_memory_and_nothing_accepted_is_lost()
{
    require_root();
    let (port, sink_port) = (free_port_pair(), free_port_pair());
    let sink = Sink::start(sink_port);
    let receive = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{sink_port}");
    let mut agent = AgentRun::start(&[
        "--interval",
        "1s",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
    ]);
    let pid = agent.pid();
    let before_kib = status_kib(pid, "VmHWM").expect("the agent's VmHWM");
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop.clone());
    let out = Command::new(python())
        .arg(script("flood.py"))
        .args([
            port.to_string(),
            (port + 1).to_string(),
            FLOOD_S.to_string(),
            BATCH.to_string(),
            "3".into(),
        ])
        .output()
        .expect("running flood.py");
    assert!(
        out.status.success(),
        "flood.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flood: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flood.py's report");
    let last = drained(&mut agent);
    stop.store(true, Ordering::Relaxed);
    let most_rss_kib = rss.join().expect("the RSS sampler");
    let peak_kib = status_kib(pid, "VmHWM").expect("the agent's VmHWM");
    let (status, intervals) = agent.stop();
    assert!(status.success(), "the agent exits cleanly");
    let received = sink.report();

    let accepted: BTreeMap<String, u64> = flood["accepted"]
        .as_object()
        .expect("accepted traces")
        .iter()
        .map(|(t, n)| (t.clone(), n.as_u64().expect("a span count")))
        .collect();
    let accepted_spans: u64 = accepted.values().sum();
    let offered = flood["offered_spans"].as_u64().expect("offered spans");
    let seconds = flood["seconds"].as_f64().expect("seconds");
    let throttled = flood["throttled"].as_u64().expect("throttled");
    eprintln!(
        "offered {offered} spans in {seconds:.1} s ({:.0}/s); accepted {accepted_spans} ({:.0}/s, {:.1}× less); throttled {throttled} requests; retry delays {}; errors {}",
        offered as f64 / seconds,
        accepted_spans as f64 / seconds,
        offered as f64 / accepted_spans.max(1) as f64,
        flood["retry_delays_s"],
        flood["errors"],
    );
    eprintln!("by protocol: {}", flood["by_protocol"]);
    eprintln!(
        "agent RSS: {:.1} MiB peak before the flood, {:.1} MiB the most sampled during it, {:.1} MiB peak (VmHWM) overall",
        before_kib as f64 / 1024.0,
        most_rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    eprintln!("agent's counters: {}", last["otlp"]);
    let (most_items, most_bytes) = pending_peak(&intervals);
    eprintln!(
        "the most the agent held at an interval's end: {most_items} items, {:.1} MiB",
        most_bytes as f64 / 1048576.0
    );

    // The sender saw throttling, never an error, and offered at least 5× what was taken.
    assert_eq!(
        flood["errors"],
        serde_json::json!({}),
        "every refusal is a throttling reply"
    );
    for protocol in ["grpc", "http"] {
        let p = &flood["by_protocol"][protocol];
        assert!(
            p["accepted"].as_u64() > Some(0) && p["throttled"].as_u64() > Some(0),
            "{protocol}: some accepted, some throttled: {p}"
        );
    }
    assert!(
        offered >= 5 * accepted_spans,
        "offered {offered} spans, at least 5× the {accepted_spans} accepted"
    );
    assert_eq!(flood["retry_delays_s"], serde_json::json!([1.0]));

    // Every accepted span reached the sink once; nothing refused did.
    let traces = received["traces"].as_object().expect("the sink's traces");
    let missing: Vec<(&String, u64, u64)> = accepted
        .iter()
        .filter_map(|(t, n)| {
            let got = traces.get(t).and_then(|v| v.as_u64()).unwrap_or(0);
            (got != *n).then_some((t, *n, got))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted traces did not fully arrive, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
    let extra = traces.keys().filter(|t| !accepted.contains_key(*t)).count();
    assert_eq!(extra, 0, "traces the agent refused reached the sink");
    assert_eq!(received["duplicates"], 0);
    assert_eq!(received["spans"], accepted_spans);

    // The agent counted the same, and lost nothing.
    let counts = &last["otlp"]["receiver"]["traces"];
    assert_eq!(counts["accepted_items"], accepted_spans);
    assert_eq!(counts["accepted_requests"], accepted.len() as u64);
    assert_eq!(counts["throttled_requests"], throttled);
    assert_eq!(last["otlp"]["forward"]["dropped"], 0);

    assert!(
        (peak_kib as f64 / 1024.0) < MAX_RSS_MIB,
        "the agent's peak RSS {:.1} MiB is under {MAX_RSS_MIB} MiB",
        peak_kib as f64 / 1024.0
    );
}
