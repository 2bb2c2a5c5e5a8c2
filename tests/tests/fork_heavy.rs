//! Hundreds of short processes: none is lost, the kernel map returns to its size before,
//! and when the map is too small the loss is counted rather than silent.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};

use energy_agent::probe::{Lifecycle, Probe, ProbeConfig, ProbeStats, SchedInterval};
use energy_common::names;
use energy_tests::{require_root, test_bin};

/// Runs `forker` while reading the probe every 100 ms; returns each child's pid with
/// the CPU time the kernel accounted to it (wait4's rusage), and every interval read
/// until a second after the forker ended.
fn run_forker(probe: &mut Probe, args: &[&str]) -> (HashMap<u32, u64>, Vec<SchedInterval>) {
    let mut child = Command::new(test_bin("forker"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning forker");
    let mut intervals = Vec::new();
    let mut ended_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        intervals.push(probe.read_interval().expect("read_interval"));
        if ended_at.is_none() && child.try_wait().expect("try_wait").is_some() {
            ended_at = Some(Instant::now());
        }
        if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
    }
    let out = child.wait_with_output().expect("forker output");
    assert!(out.status.success(), "forker failed");
    let pids = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("done ")?.split(' ');
            let pid = f.next()?.parse().expect("pid");
            Some((pid, f.next()?.parse().expect("ns")))
        })
        .collect();
    (pids, intervals)
}

#[test]
fn no_short_lived_process_is_lost_and_the_map_stays_bounded() {
    children_keep_their_kernel_cpu_time(ProbeConfig::default());
}

/// The same with one hot-task cache slot per CPU: nearly every switch hands a slot from
/// one thread to another (the slow path), and a finished thread's slot is often held on
/// the other CPU by then.
#[test]
fn no_time_is_lost_or_doubled_when_every_switch_evicts_a_cache_slot() {
    let stats = children_keep_their_kernel_cpu_time(ProbeConfig {
        task_cache_slots: Some(1),
        ..ProbeConfig::default()
    });
    assert_eq!(stats.cache_slots_per_cpu, 1);
    assert!(
        stats.cache_evictions > 1_000,
        "the slow path was not exercised: {stats:?}"
    );
}

/// The same on the raw tracepoint program (kernels that do not take the typed one).
#[test]
fn the_raw_tracepoint_program_keeps_short_processes_exact_too() {
    let config = ProbeConfig {
        raw_switch: true,
        ..ProbeConfig::default()
    };
    children_keep_their_kernel_cpu_time(config);
}

/// 400 short children, read every 100 ms: none lost, each within its wait4 CPU time,
/// the task map back to its size; returns the last counters.
fn children_keep_their_kernel_cpu_time(config: ProbeConfig) -> ProbeStats {
    require_root();
    let mut probe = Probe::load(&config).expect("loading the probe");
    if config.raw_switch {
        assert_eq!(probe.switch_program(), names::PROG_SCHED_SWITCH);
    }
    eprintln!("sched_switch traced by {}", probe.switch_program());
    probe.read_interval().expect("first read");
    let tracked_before = probe.tasks_tracked();

    let (pids, intervals) = run_forker(&mut probe, &["400", "4", "3"]);
    assert_eq!(pids.len(), 400);

    let mut cpu_ns: HashMap<u32, u64> = HashMap::new();
    let mut exited = HashSet::new();
    for interval in &intervals {
        for slice in &interval.slices {
            *cpu_ns.entry(slice.tgid).or_default() += slice.on_cpu_ns;
        }
        for event in &interval.lifecycle {
            if let Lifecycle::Exit {
                tgid,
                group_dead: true,
                ..
            } = event
            {
                exited.insert(*tgid);
            }
        }
    }
    let missing: Vec<u32> = pids
        .keys()
        .copied()
        .filter(|p| !cpu_ns.contains_key(p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of 400 children never reported: {missing:?}",
        missing.len()
    );
    let no_exit: Vec<u32> = pids
        .keys()
        .copied()
        .filter(|p| !exited.contains(p))
        .collect();
    assert!(
        no_exit.is_empty(),
        "children without an exit record: {no_exit:?}"
    );
    // Each child's CPU time is what the kernel accounted to it (wait4's rusage, to the
    // microsecond): per child within 2% or 50 µs, and all of them within 0.5%.
    let off: Vec<(u32, u64, u64)> = pids
        .iter()
        .map(|(&p, &truth)| (p, cpu_ns[&p], truth))
        .filter(|&(_, ns, truth)| ns.abs_diff(truth) as f64 > (truth as f64 * 0.02).max(50e3))
        .collect();
    let (ours, truth): (u64, u64) = pids
        .iter()
        .fold((0, 0), |(a, b), (p, t)| (a + cpu_ns[p], b + t));
    let error = ours as f64 / truth as f64 - 1.0;
    eprintln!(
        "400 children: {:.3} ms on-CPU in all, the kernel's {:.3} ms ({:+.3}%); {} beyond 2% or 50 µs",
        ours as f64 / 1e6,
        truth as f64 / 1e6,
        100.0 * error,
        off.len()
    );
    assert!(
        off.is_empty(),
        "children off their kernel CPU time (pid, ours, kernel's): {off:?}"
    );
    assert!(error.abs() <= 0.005, "all children: {:+.3}%", 100.0 * error);

    let stats = intervals.last().expect("intervals").stats;
    assert_eq!(stats.task_map_full, 0, "{stats:?}");
    assert_eq!(stats.events_lost, 0, "{stats:?}");
    let tracked_after = probe.tasks_tracked();
    assert!(
        tracked_after <= tracked_before + 20,
        "task map grew from {tracked_before} to {tracked_after} entries: exits are not removing them"
    );
    stats
}

#[test]
fn a_full_task_map_counts_its_losses() {
    require_root();
    // One cache slot per CPU, so that threads reach the task map at all.
    let config = ProbeConfig {
        max_tasks: 8,
        task_cache_slots: Some(1),
        ..ProbeConfig::default()
    };
    let mut probe = Probe::load(&config).expect("loading the probe");
    // 64 concurrent children cannot fit in 8 entries next to the host's own threads.
    let (_, intervals) = run_forker(&mut probe, &["64", "64", "50"]);
    let stats = intervals.last().expect("intervals").stats;
    assert!(
        stats.task_map_full > 0,
        "a full map must count its losses: {stats:?}"
    );
    assert_eq!(stats.max_tasks, 8);
    assert!(stats.task_map_entries <= 8, "{stats:?}");
}
