//! 3. Agent cost: the agent's own CPU (utime + stime over wall time) and peak RSS at a
//!    1 s interval with many live processes and steady churn, with the OTLP receiver
//!    idle and busy.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    common::{Agent, Settings, cpu_seconds, peak_rss_mib},
    otlp,
};

/// Targets: % of one core, MiB.
pub const TARGET_CPU_PCT: f64 = 0.5;
pub const TARGET_RSS_MIB: f64 = 30.0;

/// Spawns `per_s` short processes a second until `stop`.
pub fn churn(per_s: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1.0 / f64::from(per_s));
        let (start, mut n) = (Instant::now(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            let _ = Command::new("true").status();
            n += 1;
            let next = start + gap * n as u32;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        n
    })
}

pub fn run(s: &Settings) -> Value {
    let (live_n, per_s, secs) = if s.smoke {
        (100, 50, 3.0)
    } else {
        (1000, 50, 30.0)
    };
    let mut live: Vec<Child> = (0..live_n)
        .map(|_| {
            Command::new("sleep")
                .arg("3600")
                .stdout(Stdio::null())
                .spawn()
                .expect("sleep")
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(per_s, stop.clone());
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let mut variants = Vec::new();
    // (receiver busy, task map read in batches); the last is the reference the batched
    // reads are measured against in the same run.
    for (busy, batched) in [(false, true), (true, true), (true, false)] {
        let (port, sink_port) = (
            energy_tests::otlp::free_port_pair(),
            energy_tests::otlp::free_port_pair(),
        );
        let receive = format!("127.0.0.1:{port}");
        let endpoint = format!("http://127.0.0.1:{sink_port}");
        let mut args = vec!["--interval", "1s", "--output", "none", "--no-gpu"];
        if busy {
            runtime.block_on(async {
                otlp::start_sink(([127, 0, 0, 1], sink_port).into());
            });
            args.extend(["--receive", &receive, "--otlp-endpoint", &endpoint]);
        } else {
            args.extend(["--receive", "off"]);
        }
        let agent = if batched {
            Agent::start(s, &args, false)
        } else {
            Agent::start_with(s, &["env", "ENERGY_AGENT_MAP_BATCH=off"], &args, false)
        };
        std::thread::sleep(Duration::from_secs(2));
        let profile = profile(agent.pid(), busy, batched);
        let (c0, t0) = (cpu_seconds(agent.pid()), Instant::now());
        let spans = if busy {
            let target = format!("http://{receive}");
            runtime
                .block_on(otlp::generate(
                    &target,
                    1_000,
                    secs,
                    Arc::new(AtomicU64::new(1)),
                ))
                .spans
        } else {
            std::thread::sleep(Duration::from_secs_f64(secs));
            0
        };
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(agent.pid()) - c0;
        let rss = peak_rss_mib(agent.pid());
        if let Some(mut perf) = profile {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
            let _ = perf.wait();
        }
        agent.stop();
        variants.push(json!({
            "receiver": match (busy, batched) {
                (false, _) => "off",
                (true, true) => "busy (1,000 spans/s)",
                (true, false) => "busy (1,000 spans/s), task map read one entry at a time",
            },
            "batched_map_reads": batched,
            "cpu_pct_of_one_core": 100.0 * cpu / wall,
            "peak_rss_mib": rss,
            "seconds": wall,
            "spans_sent": spans,
        }));
    }
    stop.store(true, Ordering::Relaxed);
    let churned = churner.join().unwrap_or(0);
    for c in &mut live {
        let _ = c.kill();
        let _ = c.wait();
    }
    json!({
        "live_processes": live_n,
        "churn_per_s": per_s,
        "churned": churned,
        "variants": variants,
        "target_cpu_pct": TARGET_CPU_PCT,
        "target_rss_mib": TARGET_RSS_MIB,
    })
}

/// With `ENERGY_BENCH_PROFILE=DIR`, a `perf record -g` of the agent over the measured
/// window, written to `DIR/agent-<variant>.perf.data` (read it with `perf report -i`).
fn profile(pid: u32, busy: bool, batched: bool) -> Option<Child> {
    let dir = std::env::var_os("ENERGY_BENCH_PROFILE")?;
    let variant = match (busy, batched) {
        (false, _) => "off",
        (true, true) => "busy",
        (true, false) => "busy-unbatched",
    };
    let out = std::path::Path::new(&dir).join(format!("agent-{variant}.perf.data"));
    Command::new("perf")
        .args(["record", "-q", "-F", "499", "--call-graph", "dwarf,16384"])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .spawn()
        .inspect_err(|e| eprintln!("bench: perf record unavailable: {e}"))
        .ok()
}

pub fn table(r: &Value) -> String {
    let mut t = format!(
        "{} live processes, {} short processes/s, 1 s interval.\n\n| OTLP receiver | CPU, % of one core | peak RSS, MiB | target |\n|---|---:|---:|---|\n",
        r["live_processes"], r["churn_per_s"]
    );
    for v in r["variants"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "| {} | {:.3} | {:.1} | ≤ {TARGET_CPU_PCT}%, ≤ {TARGET_RSS_MIB} MiB |\n",
            v["receiver"].as_str().unwrap_or("?"),
            v["cpu_pct_of_one_core"].as_f64().unwrap_or(f64::NAN),
            v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    t
}
