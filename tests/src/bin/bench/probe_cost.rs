//! 1. Per-probe cost: each program's run time per run (`kernel.bpf_stats_enabled=1`)
//!    under context-switch-heavy load, CUDA calls and NVIDIA-type ioctls.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::{Agent, Settings, quantile};

/// Target for `sched_switch`, ns per run.
pub const TARGET_SWITCH_NS: f64 = 150.0;

/// Runs `perf bench sched ARGS` (on CPU 0 only when `pinned`, where `pipe`'s two
/// tasks then switch on every message instead of wandering between CPUs); returns its
/// "Total time" in seconds.
pub fn perf_bench(pinned: bool, args: &[&str]) -> f64 {
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "perf"]);
        c
    } else {
        Command::new("perf")
    };
    let out = cmd
        .args(["bench", "sched"])
        .args(args)
        .output()
        .expect("perf (linux-perf) is needed for the benchmarks");
    assert!(out.status.success(), "perf bench {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Total time:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no total time in perf output: {text}"))
}

/// The workloads' sizes: (rounds, messaging loops and pipe loops per round, launches
/// per thread, ioctls).
fn sizes(smoke: bool) -> (u32, u32, u32, u64, u32) {
    if smoke {
        (2, 25, 10_000, 2_000, 2_000)
    } else {
        (9, 60, 50_000, 50_000, 50_000)
    }
}

/// `sched_switch`'s cumulative (run time ns, runs) from the kernel's bpf_stats.
fn switch_stats() -> (f64, f64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some("sched_switch"))
        .map_or((0.0, 0.0), |p| {
            (p.run_time().as_nanos() as f64, p.run_count() as f64)
        })
}

pub fn run(s: &Settings) -> Value {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").expect("enabling kernel.bpf_stats_enabled (needs root)");
    let standin = energy_tests::cuda::StandIn::build();
    let lib = standin.library.to_str().unwrap().to_string();
    let agent = Agent::start(
        s,
        &["--interval", "1s", "--no-gpu", "--libcuda", &lib],
        true,
    );
    let (rounds, messaging, pipe, launches, ioctls) = sizes(s.smoke);
    // The switch load in rounds: this VM's noise moves one long run's figure by a
    // third, so the table gives the median round and the spread.
    let (mut messaging_s, mut pipe_s, mut per_round) = (0.0, 0.0, Vec::new());
    for _ in 0..rounds {
        let (ns0, runs0) = switch_stats();
        messaging_s += perf_bench(
            false,
            &["messaging", "-g", "5", "-l", &messaging.to_string()],
        );
        pipe_s += perf_bench(true, &["pipe", "-l", &pipe.to_string()]);
        let (ns1, runs1) = switch_stats();
        if runs1 > runs0 {
            per_round.push((ns1 - ns0) / (runs1 - runs0));
        }
    }
    standin.start(launches, launches, 1_000, false).wait();
    let ioctler = Command::new(crate::common::sibling("ioctler"))
        .args([ioctls.to_string(), "0".into()])
        .output()
        .expect("ioctler");
    assert!(ioctler.status.success());
    agent.wait_intervals(1, std::time::Duration::from_secs(5));
    let intervals = agent.stop();
    let _ = std::fs::write(STATS, before.trim());
    let last = intervals.last().cloned().unwrap_or_default();
    let programs: Vec<Value> = last["probe_programs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let runs = p["run_cnt"].as_f64().unwrap_or(0.0);
            let ns = p["run_time_ns"].as_f64().unwrap_or(0.0);
            json!({
                "program": p["name"],
                "runs": runs,
                "run_time_ns": ns,
                "ns_per_run": if runs > 0.0 { ns / runs } else { f64::NAN },
                "missed": p["recursion_misses"],
            })
        })
        .collect();
    json!({
        "programs": programs,
        "sched_switch_rounds_ns": per_round,
        "sched_switch_median_ns": quantile(&per_round, 0.5),
        "workloads": {
            "perf_bench_sched_messaging_s": messaging_s,
            "perf_bench_sched_pipe_s": pipe_s,
            "cuda_launches": 2 * launches + 5,
            "nvidia_ioctls": ioctls,
        },
        "target_sched_switch_ns": TARGET_SWITCH_NS,
    })
}

/// The table of a result.
pub fn table(r: &Value) -> String {
    let mut t = String::from("| program | runs | ns per run | target |\n|---|---:|---:|---|\n");
    let mut programs: Vec<&Value> = r["programs"].as_array().into_iter().flatten().collect();
    programs.sort_by_key(|p| p["program"].as_str().unwrap_or(""));
    for p in programs {
        let name = p["program"].as_str().unwrap_or("?");
        let target = if name == "sched_switch" {
            format!("≤ {TARGET_SWITCH_NS} ns")
        } else {
            String::new()
        };
        t.push_str(&format!(
            "| `{name}` | {:.0} | {:.0} | {target} |\n",
            p["runs"].as_f64().unwrap_or(0.0),
            p["ns_per_run"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let rounds: Vec<f64> = r["sched_switch_rounds_ns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    if !rounds.is_empty() {
        t.push_str(&format!(
            "\n`sched_switch` per round of switch load ({} rounds): median **{:.0} ns**, \
             p25–p75 {:.0}–{:.0}, min–max {:.0}–{:.0} (target ≤ {TARGET_SWITCH_NS} ns).\n",
            rounds.len(),
            quantile(&rounds, 0.5),
            quantile(&rounds, 0.25),
            quantile(&rounds, 0.75),
            quantile(&rounds, 0.0),
            quantile(&rounds, 1.0),
        ));
    }
    t
}
