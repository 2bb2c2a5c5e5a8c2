//! 1. Per-probe cost. The agent's `sched_switch` program against an empty program and a
//!    naive per-(tgid, pid) hash-sum program, measured in the same run, one loaded at a
//!    time, interleaved (`kernel.bpf_stats_enabled=1`, run time per run over `perf bench
//!    sched messaging`), reported as ratios per round; the ingredients of the program's
//!    cost (helpers, map types, typed reads) the same way; then every program of the
//!    agent under its own load (CUDA calls, NVIDIA-type ioctls).
//!
//! `ENERGY_BENCH_AGENTS="label=path,…"` measures several agent builds side by side
//! (A/B of variants) instead of the one under test.

use std::process::Command;

use serde_json::{Value, json};

use crate::{
    common::{Agent, Settings, quantile},
    probe_subjects::{RAW, References, SHARED, Subject, measure},
};

/// Target: the agent's `sched_switch` at most this many times the empty program's cost.
pub const TARGET_TO_EMPTY: f64 = 4.0;
/// Target: at most this fraction of the naive hash-sum program's cost.
pub const TARGET_TO_NAIVE: f64 = 0.5;

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

/// The switch load of one measurement, `perf bench sched messaging` arguments.
fn switch_load(smoke: bool) -> Vec<&'static str> {
    if smoke {
        vec!["messaging", "-g", "2", "-l", "20"]
    } else {
        vec!["messaging", "-g", "8", "-l", "300"]
    }
}

/// The agents measured: `ENERGY_BENCH_AGENTS` (label=path, comma-separated), else the
/// one under test.
fn agents(s: &Settings) -> Vec<Subject> {
    match std::env::var("ENERGY_BENCH_AGENTS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|item| {
                let (label, path) = item
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENERGY_BENCH_AGENTS: {item:?} is not label=path"));
                Subject::Agent(label.trim().into(), path.trim().into())
            })
            .collect(),
        _ => vec![Subject::Agent("energy-agent".into(), s.agent.clone())],
    }
}

fn bpftrace_installed() -> bool {
    Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Everything measured on `sched_switch`, in the order of the first round.
fn subjects(s: &Settings, refs: &References) -> Vec<Subject> {
    let mut all = vec![
        Subject::Reference("ref_empty"),
        Subject::Reference("ref_naive"),
    ];
    all.extend(agents(s));
    if bpftrace_installed() {
        all.push(Subject::Bpftrace(
            "bpftrace_empty",
            "tracepoint:sched:sched_switch { }",
        ));
        all.push(Subject::Bpftrace(
            "bpftrace_naive",
            "tracepoint:sched:sched_switch { @s[args->prev_pid] = sum(1); }",
        ));
    }
    let ingredients = RAW[2..].iter().chain(refs.typed.iter()).chain([&SHARED]);
    all.extend(ingredients.map(|name| Subject::Reference(name)));
    all
}

pub fn run(s: &Settings) -> Value {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").expect("enabling kernel.bpf_stats_enabled (needs root)");
    let mut refs = References::load();
    let subjects = subjects(s, &refs);
    let rounds = if s.smoke { 2 } else { 9 };
    let args = switch_load(s.smoke);
    let load = || {
        perf_bench(false, &args);
    };
    let mut per_round = vec![Vec::new(); subjects.len()];
    for round in 0..rounds {
        // Rotate the order, so that no subject always follows the same one.
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let (ns, runs) = measure(s, &mut refs, &subjects[i], &load);
            per_round[i].push(if runs > 0.0 { ns / runs } else { f64::NAN });
        }
        eprintln!("bench: probe round {} of {rounds}", round + 1);
    }
    drop(refs);
    let others = other_programs(s);
    let _ = std::fs::write(STATS, before.trim());
    let column = |name: &str| {
        let i = subjects.iter().position(|x| x.label() == name);
        i.map(|i| per_round[i].clone()).unwrap_or_default()
    };
    let (empty, naive, array) = (
        column("ref_empty"),
        column("ref_naive"),
        column("ing_array"),
    );
    let results: Vec<Value> = subjects
        .iter()
        .zip(&per_round)
        .map(|(subject, ns)| {
            let ratio = |base: &[f64]| ns.iter().zip(base).map(|(a, b)| a / b).collect::<Vec<_>>();
            let over_array: Vec<f64> = ns.iter().zip(&array).map(|(a, b)| a - b).collect();
            json!({
                "name": subject.label(),
                "kind": match subject {
                    Subject::Reference(n) if n.starts_with("ing_") => "ingredient",
                    Subject::Reference(_) => "reference",
                    Subject::Agent(..) => "agent",
                    Subject::Bpftrace(..) => "bpftrace",
                },
                "rounds_ns": ns,
                "ns": spread(ns),
                "to_empty": spread(&ratio(&empty)),
                "to_naive": spread(&ratio(&naive)),
                "over_array_ns": spread(&over_array),
            })
        })
        .collect();
    json!({
        "switch_load": args,
        "rounds": rounds,
        "subjects": results,
        "programs": others,
        "target_to_empty": TARGET_TO_EMPTY,
        "target_to_naive": TARGET_TO_NAIVE,
    })
}

/// Median, quartiles and range.
fn spread(v: &[f64]) -> Value {
    json!({
        "median": quantile(v, 0.5),
        "p25": quantile(v, 0.25),
        "p75": quantile(v, 0.75),
        "min": quantile(v, 0.0),
        "max": quantile(v, 1.0),
    })
}

/// Every program of the agent over a run with switch load, a CUDA caller on the
/// stand-in libcuda (tests/cuda) and NVIDIA-type ioctls on a regular file.
fn other_programs(s: &Settings) -> Vec<Value> {
    let standin = energy_tests::cuda::StandIn::build();
    let lib = standin.library.to_str().unwrap().to_string();
    // The ioctl program is measured here though this host has no NVIDIA driver.
    let agent = Agent::start_with(
        s,
        &["env", "ENERGY_AGENT_NVIDIA_IOCTLS=on"],
        &["--interval", "1s", "--no-gpu", "--libcuda", &lib],
        true,
    );
    let (launches, ioctls) = if s.smoke {
        (2_000u64, 2_000u32)
    } else {
        (50_000, 50_000)
    };
    perf_bench(false, &switch_load(s.smoke));
    standin.start(launches, launches, 1_000, false).wait();
    let ioctler = Command::new(crate::common::sibling("ioctler"))
        .args([ioctls.to_string(), "0".into()])
        .output()
        .expect("ioctler");
    assert!(ioctler.status.success());
    agent.wait_intervals(1, std::time::Duration::from_secs(5));
    let intervals = agent.stop();
    let last = intervals.last().cloned().unwrap_or_default();
    last["probe_programs"]
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
        .collect()
}

/// `median (p25–p75, min–max)` of a spread, with `digits` decimals.
fn cell(v: &Value, digits: usize) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "{:.d$} ({:.d$}–{:.d$}, {:.d$}–{:.d$})",
        f("median"),
        f("p25"),
        f("p75"),
        f("min"),
        f("max"),
        d = digits
    )
}

/// What each subject is, for the tables.
fn describe(name: &str) -> &'static str {
    match name {
        "ref_empty" => "empty program (raw tracepoint)",
        "ref_naive" => {
            "naive per-(tgid, pid) hash-sum: per-CPU hash lookup + update, as bpftrace compiles `@s[tid] = sum(1)`"
        }
        "bpftrace_empty" => "`bpftrace -e 'tracepoint:sched:sched_switch { }'`",
        "bpftrace_naive" => {
            "`bpftrace -e 'tracepoint:sched:sched_switch { @s[args->prev_pid] = sum(1); }'`"
        }
        "ing_array" => "per-CPU array lookup + store (the base of the rows below)",
        "ing_ktime" => "+ `bpf_ktime_get_ns`",
        "ing_pid_tgid" => "+ `bpf_get_current_pid_tgid`",
        "ing_cgroup" => "+ `bpf_get_current_cgroup_id`",
        "ing_probe_read" => "+ one `bpf_probe_read_kernel` of `task_struct` (8 bytes)",
        "ing_btf_empty" => "empty typed (tp_btf) program",
        "ing_btf_read" => "+ one direct read of `task_struct` through the typed argument (tp_btf)",
        "ing_pcpu_hash" => "+ per-CPU hash lookup of the outgoing thread, add in place",
        "ing_hash" => "+ shared hash lookup of the outgoing thread, add in place",
        _ => "",
    }
}

/// The tables of a result.
pub fn table(r: &Value) -> String {
    let subjects: Vec<&Value> = r["subjects"].as_array().into_iter().flatten().collect();
    let mut t = format!(
        "`sched_switch`, {} rounds of `perf bench sched {}`, one program loaded at a time, \
         the order rotated each round; ratios are per round (median (p25–p75, min–max)).\n\n\
         | program | ratio to the empty program | ratio to the naive hash-sum | ns per run |\n\
         |---|---:|---:|---:|\n",
        r["rounds"],
        r["switch_load"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for x in subjects.iter().filter(|x| x["kind"] != "ingredient") {
        let name = x["name"].as_str().unwrap_or("?");
        let label = match describe(name) {
            "" => format!("**{name}** (the agent's program)"),
            d => format!("{d} (`{name}`)"),
        };
        t.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            cell(&x["to_empty"], 2),
            cell(&x["to_naive"], 2),
            cell(&x["ns"], 0)
        ));
    }
    t.push_str(&format!(
        "\nTargets: ≤ {TARGET_TO_EMPTY}× the empty program and ≤ {TARGET_TO_NAIVE}× the naive \
         hash-sum.\n\nIngredients (one each on a per-CPU array store; the difference is per \
         round):\n\n| ingredient | ns per run | over the array store, ns |\n|---|---:|---:|\n"
    ));
    for x in subjects.iter().filter(|x| x["kind"] == "ingredient") {
        let name = x["name"].as_str().unwrap_or("?");
        t.push_str(&format!(
            "| {} (`{name}`) | {} | {} |\n",
            describe(name),
            cell(&x["ns"], 0),
            cell(&x["over_array_ns"], 0)
        ));
    }
    t.push_str("\nEvery program of the agent over one run (switch load, CUDA calls, ioctls):\n\n");
    t.push_str("| program | runs | ns per run |\n|---|---:|---:|\n");
    let mut programs: Vec<&Value> = r["programs"].as_array().into_iter().flatten().collect();
    programs.sort_by_key(|p| p["program"].as_str().unwrap_or(""));
    for p in programs {
        t.push_str(&format!(
            "| `{}` | {:.0} | {:.0} |\n",
            p["program"].as_str().unwrap_or("?"),
            p["runs"].as_f64().unwrap_or(0.0),
            p["ns_per_run"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    t
}
