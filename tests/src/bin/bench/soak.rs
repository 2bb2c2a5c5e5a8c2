//! 6. Soak: the agent left running under production-like churn — 100 short processes
//!    a second, 2,000 spans a second through the receiver, and a backend that goes away
//!    twice (30 s each; 5 s in the smoke) — sampled every minute (10 s in the smoke):
//!    RSS, open file descriptors, the kernel task map's fill, the forward queue and what
//!    was dropped. At the end every span the agent accepted is either at the backend or
//!    counted by the agent as dropped: anything else is lost silently, and reported so.
//!    10 minutes by default, `--soak-seconds N` for longer; `--smoke` runs 60 s.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    agent_cost::churn,
    common::{Agent, Settings, wait_listening},
    otlp,
};

/// Short processes a second.
const CHURN_PER_S: u32 = 100;
/// Spans offered a second.
const SPANS_PER_S: u64 = 2_000;

/// The run's length, sampling period and outage length.
fn plan(s: &Settings) -> (Duration, Duration, Duration) {
    match (s.smoke, s.soak_seconds) {
        (true, _) => (
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(5),
        ),
        (false, secs) => (
            Duration::from_secs(secs.unwrap_or(600)),
            Duration::from_secs(60),
            Duration::from_secs(30),
        ),
    }
}

/// The agent's Prometheus text.
fn scrape(port: u16) -> String {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// The sum of every series of `name` (with any labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A /proc/PID/status field in kB.
fn status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// One sample of the agent's footprint.
fn sample(pid: u32, prometheus: u16, at: Duration, sink_up: bool) -> Value {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let text = scrape(prometheus);
    json!({
        "t_s": at.as_secs_f64(),
        "rss_mib": status_kb(pid, "VmRSS:") / 1024.0,
        "open_fds": fds,
        "tasks_tracked": metric(&text, "energy_agent_probe_tasks"),
        "tasks_max": metric(&text, "energy_agent_probe_tasks_max"),
        "otlp_queued": metric(&text, "energy_agent_otlp_queued"),
        "otlp_dropped": metric(&text, "energy_agent_otlp_dropped_total"),
        "spans_held": metric(&text, "energy_agent_spans_held"),
        "sink_up": sink_up,
    })
}

/// Takes the backend down twice, for `outage` each, at a third and two thirds of the run.
fn outages(
    runtime: &tokio::runtime::Runtime,
    state: otlp::SinkHandle,
    length: Duration,
    outage: Duration,
    up: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        for k in 1..=2u32 {
            std::thread::sleep((length * k / 3).saturating_sub(start.elapsed()));
            handle.block_on(state.stop());
            up.store(false, Ordering::Relaxed);
            std::thread::sleep(outage);
            handle.block_on(state.restart());
            up.store(true, Ordering::Relaxed);
        }
    })
}

pub fn run(s: &Settings) -> Value {
    let (length, every, outage) = plan(s);
    let (port, sink_port, prometheus) = (
        energy_tests::otlp::free_port_pair(),
        energy_tests::otlp::free_port_pair(),
        energy_tests::otlp::free_port_pair(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let sink = runtime.block_on(otlp::SinkHandle::start(([127, 0, 0, 1], sink_port).into()));
    let receive = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        s,
        &[
            "--interval",
            "1s",
            "--output",
            "none",
            "--no-gpu",
            "--receive",
            &receive,
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{sink_port}"),
            "--prometheus",
            &format!("127.0.0.1:{prometheus}"),
        ],
        false,
    );
    wait_listening(port);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(CHURN_PER_S, stop.clone());
    let up = Arc::new(AtomicBool::new(true));
    let outager = outages(&runtime, sink.clone(), length, outage, up.clone());
    let next_id = Arc::new(AtomicU64::new(1));
    let sender = runtime.spawn(otlp::generate_owned(
        format!("http://{receive}"),
        SPANS_PER_S,
        length.as_secs_f64(),
        next_id,
    ));
    let start = Instant::now();
    let mut samples = vec![sample(agent.pid(), prometheus, Duration::ZERO, true)];
    while start.elapsed() < length {
        std::thread::sleep(every.min(length.saturating_sub(start.elapsed())));
        let up = up.load(Ordering::Relaxed);
        samples.push(sample(agent.pid(), prometheus, start.elapsed(), up));
    }
    let sent = runtime.block_on(sender).unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let churned = churner.join().unwrap_or(0);
    let _ = outager.join();
    // Give the queue the time the backend was away to drain, then stop the agent (which
    // releases what it holds and drains once more) and read what it counted last.
    std::thread::sleep(outage);
    let last = sample(agent.pid(), prometheus, start.elapsed(), true);
    agent.stop();
    std::thread::sleep(Duration::from_secs(1));
    let received = sink.received();
    let result = summary(samples, last, sent, received, churned, (length, outage));
    // Not a figure but a correctness rule, so it fails the run (the smoke in CI too).
    assert_eq!(
        result["spans_lost_uncounted"], 0,
        "spans accepted by the agent were neither delivered nor counted as dropped: {result}"
    );
    result
}

/// Growth of `field` from the first sample after warm-up (a fifth of the run) to the
/// last, and the largest value seen.
fn drift(samples: &[Value], field: &str) -> (f64, f64) {
    let values: Vec<f64> = samples.iter().filter_map(|s| s[field].as_f64()).collect();
    let warm = values.len() / 5;
    let growth = match (values.get(warm.max(1)), values.last()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    (growth, values.iter().copied().fold(f64::NAN, f64::max))
}

fn summary(
    samples: Vec<Value>,
    last: Value,
    sent: otlp::Sent,
    received: u64,
    churned: u64,
    (length, outage): (Duration, Duration),
) -> Value {
    let dropped = last["otlp_dropped"].as_f64().unwrap_or(0.0) as u64;
    let lost = sent.spans.saturating_sub(received + dropped);
    let (rss_growth, rss_max) = drift(&samples, "rss_mib");
    let (fd_growth, fd_max) = drift(&samples, "open_fds");
    let (task_growth, task_max) = drift(&samples, "tasks_tracked");
    json!({
        "seconds": length.as_secs_f64(),
        "outages": [outage.as_secs_f64(), outage.as_secs_f64()],
        "churn_per_s": CHURN_PER_S,
        "spans_per_s": SPANS_PER_S,
        "processes_churned": churned,
        "spans_accepted": sent.spans,
        "batches_refused": sent.failed_batches,
        "spans_received": received,
        "spans_dropped_counted": dropped,
        "spans_lost_uncounted": lost,
        "rss_growth_after_warmup_mib": rss_growth,
        "rss_max_mib": rss_max,
        "fd_growth_after_warmup": fd_growth,
        "fd_max": fd_max,
        "task_map_growth_after_warmup": task_growth,
        "task_map_max": task_max,
        "samples": samples,
        "last": last,
    })
}

pub fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut t = format!(
        "{:.0} s, {} short processes/s, {} spans/s offered, the backend away twice for {:.0} s.\n\n\
         | t, s | RSS, MiB | open fds | task map | forward queue | dropped (counted) | backend |\n\
         |---:|---:|---:|---:|---:|---:|---|\n",
        f(&r["seconds"]),
        r["churn_per_s"],
        r["spans_per_s"],
        f(&r["outages"][0]),
    );
    for s in r["samples"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "| {:.0} | {:.1} | {} | {:.0} / {:.0} | {:.0} | {:.0} | {} |\n",
            f(&s["t_s"]),
            f(&s["rss_mib"]),
            s["open_fds"],
            f(&s["tasks_tracked"]),
            f(&s["tasks_max"]),
            f(&s["otlp_queued"]),
            f(&s["otlp_dropped"]),
            if s["sink_up"] == true { "up" } else { "away" },
        ));
    }
    t.push_str(&format!(
        "\nSpans: {} accepted by the agent ({} batches refused), {} at the backend, {} \
         dropped and counted by the agent, **{} lost without being counted**. After \
         warm-up: RSS {:+.1} MiB (max {:.1}), open fds {:+.0} (max {:.0}), task map {:+.0} \
         (max {:.0}); {} short processes churned.\n",
        r["spans_accepted"],
        r["batches_refused"],
        r["spans_received"],
        r["spans_dropped_counted"],
        r["spans_lost_uncounted"],
        f(&r["rss_growth_after_warmup_mib"]),
        f(&r["rss_max_mib"]),
        f(&r["fd_growth_after_warmup"]),
        f(&r["fd_max"]),
        f(&r["task_map_growth_after_warmup"]),
        f(&r["task_map_max"]),
        r["processes_churned"],
    ));
    t
}
