//! The agent's per-process on-CPU time against the kernel's own accounting.
//!
//! Workers burn known CPU (1 s; 0.5 s; 4 threads × 0.3 s; and one living ~20 ms) while
//! `energy-agent run --output json` runs; each worker prints the sum of its threads'
//! `/proc/<pid>/task/*/schedstat` read just before it exits. The agent must agree within
//! 1% for each, and must not miss the short-lived one.

use std::{process::Command, time::Duration};

use energy_tests::{AgentRun, agent_cpu_ns, require_root, test_bin};

struct Worker {
    label: &'static str,
    child: std::process::Child,
}

fn spawn(label: &'static str, seconds: &str, threads: &str) -> Worker {
    let child = Command::new(test_bin("burner"))
        .args([seconds, threads])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning burner");
    Worker { label, child }
}

#[test]
fn per_process_cpu_time_matches_schedstat() {
    cpu_time_matches_schedstat(&[]);
}

/// The same with one hot-task cache slot per CPU, so that the workers' threads keep
/// taking each other's slots (the switch's slow path) and finish with their time split
/// between the task map and the cache.
#[test]
fn per_process_cpu_time_matches_schedstat_when_cache_slots_are_contended() {
    cpu_time_matches_schedstat(&[("ENERGY_AGENT_TASK_CACHE_SLOTS", "1")]);
}

/// The same with `sched_switch` traced by the raw tracepoint program (kernels that do not
/// take the typed one).
#[test]
fn per_process_cpu_time_matches_schedstat_with_the_raw_tracepoint_program() {
    cpu_time_matches_schedstat(&[("ENERGY_AGENT_SWITCH_PROGRAM", "raw")]);
}

fn cpu_time_matches_schedstat(env: &[(&str, &str)]) {
    require_root();
    let mut agent = AgentRun::start_with_env(&["--interval", "250ms"], env);
    let workers = vec![
        spawn("1 s, 1 thread", "1.0", "1"),
        spawn("0.5 s, 1 thread", "0.5", "1"),
        spawn("0.3 s x 4 threads", "0.3", "4"),
        spawn("20 ms, 1 thread", "0.02", "1"),
    ];
    let mut expected = Vec::new();
    for w in workers {
        let pid = w.child.id();
        let out = w.child.wait_with_output().expect("burner output");
        assert!(out.status.success(), "{} failed", w.label);
        let text = String::from_utf8_lossy(&out.stdout);
        let schedstat: u64 = text
            .trim()
            .strip_prefix("schedstat_ns=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: unexpected output {text:?}", w.label));
        expected.push((w.label, pid, schedstat));
    }
    // Two more intervals: the workers' exit records are in by then.
    agent.wait_intervals(2, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success(), "agent exited with {status}");

    let mut report = String::new();
    for &(label, pid, schedstat) in &expected {
        let agent_ns = agent_cpu_ns(&intervals, pid);
        let error = (agent_ns as f64 - schedstat as f64) / schedstat as f64;
        report.push_str(&format!(
            "{label:>20}: pid {pid} schedstat {schedstat} ns, agent {agent_ns} ns, error {:+.3}%\n",
            error * 100.0
        ));
        assert!(
            agent_ns > 0,
            "{label}: the agent never reported pid {pid}\n{report}"
        );
        // schedstat is read before the worker's exit path runs; the agent also counts
        // that tail (a fraction of a millisecond), so allow 1% or 1 ms, whichever is more.
        let tolerance = (schedstat as f64 * 0.01).max(1e6);
        assert!(
            (agent_ns as f64 - schedstat as f64).abs() <= tolerance,
            "{label}: agent {agent_ns} ns vs schedstat {schedstat} ns\n{report}"
        );
    }
    eprintln!("{report}");
}
