//! 4. Enrichment throughput and delay: OTLP span batches at rising rates through the
//!    agent (pinned to one core) to a sink; the highest rate with no loss, and the added
//!    delay (arrival at the sink minus the span's end).

use std::{
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    common::{Agent, Settings, quantile},
    otlp,
};

/// Targets: spans/s sustained on one core; p99 delay over the interval, ms.
pub const TARGET_RATE: f64 = 50_000.0;
pub const TARGET_EXTRA_MS: f64 = 100.0;

/// Pins the calling thread and its later children to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The rates offered and the seconds each is held.
fn rates(smoke: bool) -> (Vec<u64>, f64) {
    if smoke {
        (vec![2_000], 2.0)
    } else {
        (
            vec![5_000, 10_000, 20_000, 35_000, 50_000, 75_000, 100_000],
            5.0,
        )
    }
}

/// The agent on CPU 0, receiving on `receive` and exporting to the sink's port.
fn start_agent(s: &Settings, receive: &str, sink_port: u16) -> Agent {
    let endpoint = format!("http://127.0.0.1:{sink_port}");
    Agent::start_with(
        s,
        &["taskset", "-c", "0"],
        &[
            "--interval",
            "1s",
            "--output",
            "none",
            "--no-gpu",
            "--receive",
            receive,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-queue",
            "1000000",
            "--otlp-queue-bytes",
            "1073741824",
        ],
        false,
    )
}

pub fn run(s: &Settings) -> Value {
    let (rates, step_s) = rates(s.smoke);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (port, sink_port) = (
        energy_tests::otlp::free_port_pair(),
        energy_tests::otlp::free_port_pair(),
    );
    let receive = format!("127.0.0.1:{port}");
    // The agent on CPU 0; the generator and the sink elsewhere when there is elsewhere.
    let agent = start_agent(s, &receive, sink_port);
    crate::common::wait_listening(port);
    if cpus > 1 {
        pin(cpus - 1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let sink = runtime.block_on(async { otlp::start_sink(([127, 0, 0, 1], sink_port).into()) });
    std::thread::sleep(Duration::from_millis(300));
    let next_id = Arc::new(AtomicU64::new(1));
    let target = format!("http://{receive}");
    let steps: Vec<Value> = rates
        .iter()
        .map(|&rate| offer(&runtime, &sink, &target, rate, step_s, &next_id))
        .collect();
    drop(runtime);
    agent.stop();
    summary(steps, step_s)
}

/// Offers `rate` spans/s for `step_s` seconds and measures what reached the sink.
fn offer(
    runtime: &tokio::runtime::Runtime,
    sink: &Mutex<otlp::SinkState>,
    target: &str,
    rate: u64,
    step_s: f64,
    next_id: &Arc<AtomicU64>,
) -> Value {
    let (before, delays_before, enriched_before) = {
        let s = sink.lock().unwrap();
        (s.received(), s.delays_ns.len(), s.enriched)
    };
    let sent = runtime.block_on(otlp::generate(target, rate, step_s, next_id.clone()));
    // Spans are held until their interval is attributed (≤ interval + hold margin).
    let deadline = Instant::now() + Duration::from_secs(6);
    while sink.lock().unwrap().received() < before + sent.spans && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = sink.lock().unwrap();
    let got = st.received() - before;
    let delays: Vec<f64> = st.delays_ns[delays_before..]
        .iter()
        .map(|d| d / 1e6)
        .collect();
    json!({
        "offered_per_s": rate,
        "accepted_per_s": sent.spans as f64 / sent.seconds,
        "sent": sent.spans,
        "failed_batches": sent.failed_batches,
        "received": got,
        "lost": sent.spans.saturating_sub(got),
        "enriched_fraction": (st.enriched - enriched_before) as f64 / got.max(1) as f64,
        "delay_p50_ms": quantile(&delays, 0.5),
        "delay_p99_ms": quantile(&delays, 0.99),
    })
}

/// The steps with the highest rates sustained with no loss, and with the delay target
/// met as well.
fn summary(steps: Vec<Value>, step_s: f64) -> Value {
    let no_loss = |s: &&Value| {
        s["lost"] == 0
            && s["failed_batches"] == 0
            && s["accepted_per_s"].as_f64().unwrap_or(0.0)
                >= 0.95 * s["offered_per_s"].as_f64().unwrap_or(f64::MAX)
    };
    let highest = |ok: &dyn Fn(&&Value) -> bool| {
        steps
            .iter()
            .filter(|s| ok(s))
            .filter_map(|s| s["offered_per_s"].as_f64())
            .fold(0.0, f64::max)
    };
    let target_p99 = 1000.0 + TARGET_EXTRA_MS;
    let sustained = highest(&no_loss);
    let within_delay =
        highest(&|s| no_loss(s) && s["delay_p99_ms"].as_f64().is_some_and(|d| d <= target_p99));
    json!({
        "steps": steps,
        "step_seconds": step_s,
        "sustained_per_s": sustained,
        "sustained_within_delay_per_s": within_delay,
        "interval_ms": 1000,
        "target_per_s": TARGET_RATE,
        "target_p99_ms": target_p99,
    })
}

pub fn table(r: &Value) -> String {
    let mut t = String::from(
        "| offered spans/s | accepted/s | lost | enriched | delay p50 | delay p99 |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in r["steps"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        t.push_str(&format!(
            "| {:.0} | {:.0} | {:.0} | {:.1}% | {:.0} ms | {:.0} ms |\n",
            f("offered_per_s"),
            f("accepted_per_s"),
            f("lost"),
            100.0 * f("enriched_fraction"),
            f("delay_p50_ms"),
            f("delay_p99_ms"),
        ));
    }
    t.push_str(&format!(
        "\nSustained with no loss on one core: **{:.0} spans/s** (target ≥ {TARGET_RATE:.0}); \
         with no loss and p99 delay ≤ interval + {TARGET_EXTRA_MS:.0} ms as well: **{:.0} spans/s**.\n",
        r["sustained_per_s"].as_f64().unwrap_or(0.0),
        r["sustained_within_delay_per_s"].as_f64().unwrap_or(0.0),
    ));
    t
}
