//! 5. Why eBPF: CPU time of short-lived processes (5–500 ms) captured by the agent, by
//!    sampling /proc/PID/stat every second (what Kepler 0.10 and Scaphandre do), and by
//!    the kernel's own account of each reaped child (wait4's rusage).

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{Agent, Lcg, Settings, clock_ticks};

/// utime + stime ticks of every child of `parent` now.
fn children_ticks(parent: u32) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After the comm: ppid is field 1, utime 11, stime 12.
        if num(1) == u64::from(parent) {
            out.insert(pid, num(11) + num(12));
        }
    }
    out
}

/// Runs one burner of `cpu_s` CPU seconds; returns (pid, rusage CPU seconds).
// Reaped with wait4 (for its rusage), not Child::wait.
#[allow(clippy::zombie_processes)]
fn reap_one(cpu_s: f64) -> (u32, f64) {
    let child = Command::new(crate::common::sibling("burner"))
        .arg(format!("{cpu_s:.3}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("burner");
    let pid = child.id();
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; we reap our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (pid, tv(usage.ru_utime) + tv(usage.ru_stime))
}

pub fn run(s: &Settings) -> Value {
    let secs = if s.smoke { 3.0 } else { 30.0 };
    let agent = Agent::start(
        s,
        &["--interval", "1s", "--no-gpu", "--receive", "off"],
        true,
    );
    let me = std::process::id();
    // The procfs sampler: the last value seen of each child, read every second.
    let last_seen: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (last_seen, stop) = (last_seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = children_ticks(me);
                last_seen.lock().unwrap().extend(now);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Two at a time, each living 5–500 ms of CPU.
    let children: Arc<Mutex<Vec<(u32, f64)>>> = Arc::default();
    let start = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let children = children.clone();
            std::thread::spawn(move || {
                let mut rng = Lcg::new(42 + w);
                while start.elapsed().as_secs_f64() < secs {
                    let life = 0.005 + rng.next_f64() * 0.495;
                    let reaped = reap_one(life);
                    children.lock().unwrap().push(reaped);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    agent.wait_intervals(2, Duration::from_secs(5));
    let intervals = agent.stop();
    let children = children.lock().unwrap().clone();
    let pids: HashSet<u32> = children.iter().map(|c| c.0).collect();
    let truth: f64 = children.iter().map(|c| c.1).sum();
    let agent_s: f64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().cloned().unwrap_or_default())
        .filter(|p| {
            p["pid"]
                .as_u64()
                .is_some_and(|pid| pids.contains(&(pid as u32)))
        })
        .map(|p| p["cpu_time_ns"].as_f64().unwrap_or(0.0) / 1e9)
        .sum();
    let procfs_s: f64 = last_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(pid, _)| pids.contains(pid))
        .map(|(_, ticks)| *ticks as f64 / clock_ticks())
        .sum();
    let never_seen = pids
        .iter()
        .filter(|p| !last_seen.lock().unwrap().contains_key(p))
        .count();
    json!({
        "processes": children.len(),
        "seconds": secs,
        "kernel_cpu_s": truth,
        "agent_cpu_s": agent_s,
        "procfs_cpu_s": procfs_s,
        "agent_missed_fraction": 1.0 - agent_s / truth,
        "procfs_missed_fraction": 1.0 - procfs_s / truth,
        "procfs_never_seen": never_seen,
    })
}

pub fn table(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "{} processes living 5–500 ms of CPU over {:.0} s; the kernel's own total (wait4 rusage) {:.3} s.\n\n| method | CPU time captured | missed |\n|---|---:|---:|\n| energy-agent (eBPF, exit records) | {:.3} s | {:.2}% |\n| /proc/PID/stat every 1 s (Kepler 0.10, Scaphandre) | {:.3} s | {:.2}% ({} processes never seen) |\n",
        r["processes"],
        f("seconds"),
        f("kernel_cpu_s"),
        f("agent_cpu_s"),
        100.0 * f("agent_missed_fraction"),
        f("procfs_cpu_s"),
        100.0 * f("procfs_missed_fraction"),
        r["procfs_never_seen"],
    )
}
