//! GPU-driver activity and the GPU energy join, on the real probe: uprobes on a
//! stand-in libcuda built here, the ioctl tracepoint on a regular file, and NVML's
//! per-process view through recorded-shaped samples played back by the replay source.

use std::{
    process::{Child, Command},
    time::Duration,
};

use energy_tests::{
    AgentRun,
    cuda::{StandIn, thread_calls},
    require_root, test_bin,
};

const MS: u64 = 1_000_000;

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The counts the caller's threads must show (see tests/cuda/cuda_caller.c).
fn assert_caller_counts(intervals: &[serde_json::Value], c: (u32, u32, u32, u32), n: u64, m: u64) {
    let (pid, a, b, main) = c;
    let calls = |tid, field| thread_calls(intervals, pid, tid, field);
    assert_eq!(calls(a, "launches"), n, "thread a launches");
    assert_eq!(calls(b, "launches"), m, "thread b launches");
    // Five graph launches through an alias of one function: counted once each.
    assert_eq!(calls(main, "launches"), 5, "main thread launches");
    assert_eq!(calls(main, "copies"), 5);
    assert_eq!(calls(main, "copy_bytes"), 3 * 1000 + 64 * 10 + 24);
    assert_eq!(calls(main, "memsets"), 3);
    assert_eq!(calls(main, "memset_bytes"), 2 * 256 * 4 + 8 * 4 * 2);
    for tid in [a, b, main] {
        assert_eq!(calls(tid, "syncs"), 1, "one synchronisation on {tid}");
    }
}

fn ids(c: &energy_tests::cuda::Caller) -> (u32, u32, u32, u32) {
    (c.pid, c.a, c.b, c.main)
}

#[test]
fn cuda_calls_are_counted_per_thread_with_the_time_blocked_in_sync() {
    require_root();
    let standin = StandIn::build();
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--libcuda",
        standin.library.to_str().unwrap(),
    ]);
    let caller = standin.start(1000, 3000, 100_000, false);
    let c = ids(&caller);
    caller.wait();
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    assert_caller_counts(&intervals, c, 1000, 3000);
    let (pid, a, b, main) = c;
    // The stand-in blocks 100 ms in each thread's stream sync, and 20 ms in the
    // context sync, which calls the exported stream sync inside: one sync, timed once.
    for tid in [a, b] {
        let ns = thread_calls(&intervals, pid, tid, "sync_ns");
        assert!((100 * MS..140 * MS).contains(&ns), "{tid} blocked {ns} ns");
        let busy = thread_calls(&intervals, pid, tid, "busy_ns");
        assert!(busy >= ns && busy < 400 * MS, "{tid} busy {busy} ns");
    }
    let ns = thread_calls(&intervals, pid, main, "sync_ns");
    assert!((20 * MS..60 * MS).contains(&ns), "context sync {ns} ns");
    let process_launches: u64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .filter_map(|p| p["gpu_activity"]["launches"].as_u64())
        .sum();
    assert_eq!(process_launches, 4005);
}

#[test]
fn a_process_that_mapped_libcuda_before_the_agent_started_is_traced_too() {
    require_root();
    let standin = StandIn::build();
    let mut caller = standin.start(500, 700, 10_000, true);
    let c = ids(&caller);
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--libcuda",
        standin.library.to_str().unwrap(),
    ]);
    caller.go();
    caller.wait();
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    assert_caller_counts(&intervals, c, 500, 700);
}

#[test]
fn only_ioctls_of_the_nvidia_type_are_counted() {
    require_root();
    let mut agent = AgentRun::start(&["--interval", "500ms", "--no-gpu"]);
    let out = Command::new(test_bin("ioctler"))
        .args(["25", "40"])
        .output()
        .expect("ioctler");
    assert!(out.status.success());
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    assert_eq!(thread_calls(&intervals, pid, pid, "ioctls"), 25);
}

/// A process that does nothing, to stand on a GPU in NVML's list.
fn idler() -> Child {
    Command::new("sleep").arg("30").spawn().expect("sleep")
}

/// A replay file: package 20 W and gpu-0 250 W for 30 s, plus `per_tick(t)` lines
/// every 0.1 s from 0 on.
fn replay(per_tick: impl Fn(f64) -> String) -> tempfile::NamedTempFile {
    let mut text = String::new();
    for tenth in 0..=300 {
        let t = f64::from(tenth) / 10.0;
        text.push_str(&format!(
            "{t},package-0,power_w,20\n{t},gpu-0,power_w,250\n"
        ));
        text.push_str(&per_tick(t));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

fn replay_agent(file: &tempfile::NamedTempFile, extra: &[&str]) -> AgentRun {
    let source = format!("replay:{}", file.path().display());
    let mut args = vec![
        "--interval",
        "500ms",
        "--power-source",
        &source,
        "--idle-power",
        "gpu=100",
    ];
    args.extend_from_slice(extra);
    AgentRun::start(&args)
}

/// GPU joules per pid in one interval.
fn gpu_j(interval: &serde_json::Value, pid: u32) -> f64 {
    interval["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .map_or(0.0, |p| f(&p["gpu_j"]))
}

/// Σ processes + idle = measured GPU energy; the idle bucket holds 100 W × the
/// interval, plus everything when nothing says who used the GPU.
fn assert_gpu_conservation(i: &serde_json::Value) {
    let measured = f(&i["power"]["gpu_j"]);
    let parts: f64 = i["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| f(&p["gpu_j"]))
        .sum::<f64>()
        + f(&i["idle"]["gpu_j"]);
    assert!(
        (parts - measured).abs() <= 1e-9 * measured.max(1.0),
        "gpu: {parts} vs {measured}"
    );
    let secs = f(&i["duration_s"]);
    if measured > 0.0 && i["gpus"][0]["basis"] != "none" {
        assert!(
            (f(&i["idle"]["gpu_j"]) - 100.0 * secs).abs() < 1e-6 * measured,
            "idle {} J in {secs} s, measured {measured} J",
            i["idle"]["gpu_j"]
        );
    }
}

#[test]
fn nvml_sm_samples_split_a_gpu_3_to_1_and_a_lone_process_gets_it_all() {
    require_root();
    let (mut x, mut y) = (idler(), idler());
    let (px, py) = (x.id(), y.id());
    let both = replay(|t| {
        format!(
            "{t},gpu-0,process,4096,{px}\n{t},gpu-0,process,1024,{py}\n\
             {t},gpu-0,process_sm,60,{px}\n{t},gpu-0,process_sm,20,{py}\n"
        )
    });
    let mut agent = replay_agent(&both, &[]);
    agent.wait_intervals(4, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let mut checked = 0;
    for i in &intervals {
        assert_gpu_conservation(i);
        let (jx, jy) = (gpu_j(i, px), gpu_j(i, py));
        // All of the dynamic part (150 W) goes to the two.
        let dynamic = f(&i["power"]["gpu_j"]) - f(&i["idle"]["gpu_j"]);
        assert!((jx + jy - dynamic).abs() < 1e-9 * dynamic.max(1.0));
        match i["gpus"][0]["basis"].as_str().unwrap() {
            "sm_utilisation" => {
                assert!((jx / jy - 3.0).abs() < 1e-9, "split {jx} : {jy}");
                checked += 1;
            }
            // A read too short to hold a sample (the last one, at shutdown).
            "running_processes" => assert!(f(&i["duration_s"]) < 0.1 && jx == jy),
            other => panic!("basis {other}"),
        }
    }
    assert!(checked >= 3, "intervals with both: {checked}");

    let alone = replay(|t| format!("{t},gpu-0,process,4096,{px}\n{t},gpu-0,process_sm,35,{px}\n"));
    let mut agent = replay_agent(&alone, &[]);
    agent.wait_intervals(3, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let mut checked = 0;
    for i in &intervals {
        assert_gpu_conservation(i);
        let measured = f(&i["power"]["gpu_j"]);
        if measured > 0.0 {
            assert_eq!(i["gpus"][0]["basis"], "single_process", "{i}");
            assert!((gpu_j(i, px) - (measured - f(&i["idle"]["gpu_j"]))).abs() < 1e-9 * measured);
            checked += 1;
        }
    }
    assert!(checked >= 2);
    let _ = (x.kill(), y.kill(), x.wait(), y.wait());
}

#[test]
fn without_per_process_samples_the_driver_activity_decides() {
    require_root();
    let standin = StandIn::build();
    let mut caller = standin.start(200, 600, 300_000, true);
    let mut other = idler();
    let (pc, po) = (caller.pid, other.id());
    // NVML lists both on the GPU but gives no per-process samples (like MIG or vGPU).
    let file = replay(|t| format!("{t},gpu-0,process,2048,{pc}\n{t},gpu-0,process,2048,{po}\n"));
    let lib = standin.library.to_str().unwrap().to_string();
    let mut agent = replay_agent(&file, &["--libcuda", &lib]);
    caller.go();
    caller.wait();
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let mut active = 0;
    for i in &intervals {
        assert_gpu_conservation(i);
        let basis = i["gpus"][0]["basis"].as_str().unwrap_or_default();
        let dynamic = f(&i["power"]["gpu_j"]) - f(&i["idle"]["gpu_j"]);
        match basis {
            // The caller is the only one driving the GPU: all of it is the caller's.
            "driver_busy_time" | "driver_submissions" => {
                assert!((gpu_j(i, pc) - dynamic).abs() < 1e-9 * dynamic.max(1.0));
                assert_eq!(gpu_j(i, po), 0.0);
                active += 1;
            }
            // Nothing drove it: the listed processes equally.
            "running_processes" => {
                assert!((gpu_j(i, pc) - gpu_j(i, po)).abs() < 1e-9 * dynamic.max(1.0));
            }
            other => panic!("unexpected basis {other:?} in {i}"),
        }
    }
    assert!(
        active >= 1,
        "intervals with the caller's activity: {active}"
    );
    let _ = (other.kill(), other.wait());
}
