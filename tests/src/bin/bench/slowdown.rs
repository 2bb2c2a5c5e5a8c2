//! 2. Workload slowdown: `perf bench sched messaging` and `pipe` (pinned to one CPU) with
//!    the agent running (default settings) and without, interleaved A/B, the median of
//!    per-pair ratios.

use serde_json::{Value, json};

use crate::{
    common::{Agent, Settings, quantile},
    probe_cost::perf_bench,
};

/// Target on messaging: at most 1% slower.
pub const TARGET: f64 = 1.01;
/// Target on pipe (one CPU, a switch per message): at most 5% slower.
pub const TARGET_PIPE: f64 = 1.05;

pub fn run(s: &Settings) -> Value {
    let pairs = if s.smoke { 2 } else { 12 };
    let workloads: [(&str, Vec<&str>); 2] = if s.smoke {
        [
            ("messaging", vec!["messaging", "-g", "5", "-l", "50"]),
            ("pipe", vec!["pipe", "-l", "20000"]),
        ]
    } else {
        [
            ("messaging", vec!["messaging", "-g", "10", "-l", "400"]),
            ("pipe", vec!["pipe", "-l", "300000"]),
        ]
    };
    let mut out = serde_json::Map::new();
    for (name, args) in workloads {
        let mut ratios = Vec::new();
        let mut runs = Vec::new();
        for pair in 0..pairs {
            // Alternate which goes first, so drift on the machine cancels.
            let timed = |with_agent: bool| {
                if with_agent {
                    let agent = Agent::start(s, &[], false);
                    let t = perf_bench(name == "pipe", &args);
                    agent.stop();
                    t
                } else {
                    perf_bench(name == "pipe", &args)
                }
            };
            let (without, with) = if pair % 2 == 0 {
                let a = timed(false);
                (a, timed(true))
            } else {
                let b = timed(true);
                (timed(false), b)
            };
            ratios.push(with / without);
            runs.push(json!({"without_s": without, "with_s": with}));
        }
        out.insert(
            name.into(),
            json!({
                "pairs": runs,
                "ratios": ratios,
                "median_ratio": quantile(&ratios, 0.5),
                "p25_ratio": quantile(&ratios, 0.25),
                "p75_ratio": quantile(&ratios, 0.75),
                "min_ratio": quantile(&ratios, 0.0),
                "max_ratio": quantile(&ratios, 1.0),
                "args": args,
            }),
        );
    }
    out.insert("target_messaging_ratio".into(), json!(TARGET));
    out.insert("target_pipe_ratio".into(), json!(TARGET_PIPE));
    Value::Object(out)
}

pub fn table(r: &Value) -> String {
    let mut t = String::from(
        "| workload | pairs | median with/without | p25–p75 | min–max | target |\n|---|---:|---:|---|---|---|\n",
    );
    for name in ["messaging", "pipe"] {
        let w = &r[name];
        let f = |k: &str| w[k].as_f64().unwrap_or(f64::NAN);
        t.push_str(&format!(
            "| `perf bench sched {name}`{} | {} | {:.4} | {:.4}–{:.4} | {:.4}–{:.4} | ≤ {} |\n",
            if name == "pipe" { " (one CPU)" } else { "" },
            w["pairs"].as_array().map_or(0, Vec::len),
            f("median_ratio"),
            f("p25_ratio"),
            f("p75_ratio"),
            f("min_ratio"),
            f("max_ratio"),
            if name == "messaging" {
                TARGET
            } else {
                TARGET_PIPE
            }
        ));
    }
    t
}
