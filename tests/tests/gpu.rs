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

/// The agent, tracing the stand-in library's calls (no GPU power source).
fn tracing_agent(standin: &StandIn) -> AgentRun {
    AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--libcuda",
        standin.library.to_str().unwrap(),
    ])
}

#[test]
fn cuda_calls_are_counted_per_thread_with_the_time_blocked_in_sync() {
    require_root();
    let standin = StandIn::build();
    let mut agent = tracing_agent(&standin);
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
    let mut agent = tracing_agent(&standin);
    caller.go();
    caller.wait();
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    assert_caller_counts(&intervals, c, 500, 700);
}

#[test]
fn only_ioctls_of_the_nvidia_type_are_counted() {
    require_root();
    // This host has no NVIDIA driver: the tracepoint is asked for.
    let mut agent = AgentRun::start_with_env(
        &["--interval", "500ms", "--no-gpu"],
        &[("ENERGY_AGENT_NVIDIA_IOCTLS", "on")],
    );
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

/// The ioctl tracepoint (a syscall tracepoint: it slows every syscall on the host) is
/// attached only where the NVIDIA driver is, unless asked for.
#[test]
fn the_ioctl_tracepoint_is_attached_only_where_the_nvidia_driver_is_or_when_asked() {
    use energy_agent::probe::{Probe, ProbeConfig};

    require_root();
    let driver = std::path::Path::new("/dev/nvidiactl").exists();
    for (asked, attached) in [(None, driver), (Some(true), true), (Some(false), false)] {
        let config = ProbeConfig {
            nvidia_ioctls: asked,
            ..ProbeConfig::default()
        };
        let probe = Probe::load(&config).expect("loading the probe");
        let ioctl = &probe.gpu_status().ioctl;
        assert_eq!(ioctl.is_ok(), attached, "{asked:?}: {ioctl:?}");
        if asked.is_none() && !driver {
            let why = ioctl.as_ref().unwrap_err();
            assert!(why.contains("/dev/nvidiactl"), "{why}");
        }
    }
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

fn replay_agent(file: &tempfile::NamedTempFile, interval: &str, extra: &[&str]) -> AgentRun {
    let source = format!("replay:{}", file.path().display());
    let mut args = vec![
        "--interval",
        interval,
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
    let mut agent = replay_agent(&both, "500ms", &[]);
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
    let mut agent = replay_agent(&alone, "500ms", &[]);
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
    let mut agent = replay_agent(&file, "500ms", &["--libcuda", &lib]);
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

/// `check` names what is missing for GPU-driver tracing, and what it finds.
#[test]
fn check_reports_libcuda_absent_with_the_reason_or_found_with_its_entry_points() {
    require_root();
    let check = |extra: &[&str]| -> serde_json::Value {
        let out = Command::new(energy_tests::agent_bin())
            .args(["check", "--json"])
            .args(extra)
            .output()
            .expect("check");
        assert_eq!(out.status.code(), Some(0), "GPU parts never fail check");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "libcuda")
            .cloned()
            .expect("a libcuda line")
    };
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        let line = check(&[]);
        assert_eq!(line["status"], "warn");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains("no libcuda.so") && detail.contains("no NVIDIA driver"));
    }
    let standin = StandIn::build();
    let line = check(&["--libcuda", standin.library.to_str().unwrap()]);
    assert_eq!(line["status"], "pass");
    // 18 exported entry points, one of them an alias: 17 to trace.
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("17 CUDA driver entry points"),
        "{line}"
    );
    let missing = check(&["--libcuda", "/nonexistent/libcuda.so.1"]);
    assert_eq!(missing["status"], "warn");
    assert!(missing["detail"].as_str().unwrap().contains("no such file"));
}

/// `measure` carries GPU joules, launches and time in sync per process.
#[test]
fn measure_reports_gpu_energy_launches_and_sync_time() {
    require_root();
    let standin = StandIn::build();
    // NVML cannot list processes here: the driver view among active processes decides.
    let file = replay(|_| String::new());
    let source = format!("replay:{}", file.path().display());
    let out = Command::new(energy_tests::agent_bin())
        .args([
            "measure",
            "--json",
            "--interval",
            "100ms",
            "--power-source",
            &source,
        ])
        .args([
            "--idle-power",
            "gpu=100",
            "--libcuda",
            standin.library.to_str().unwrap(),
        ])
        .arg("--")
        .arg(&standin.caller)
        .args(["40", "60", "300000"])
        .output()
        .expect("measure");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stderr).expect("report on stderr");
    let p = &r["processes"][0];
    assert_eq!(p["comm"], "cuda_caller");
    assert_eq!(p["gpu_launches"], 105);
    // Two 300 ms stream syncs and one 20 ms context sync.
    let sync = f(&p["gpu_sync_s"]);
    assert!((0.62..0.75).contains(&sync), "sync {sync} s");
    // The only process driving the GPU: the dynamic GPU energy (150 W) of the reads in
    // which it did is its own — at least while it waited in sync.
    let gpu = f(&p["gpu_energy_j"]);
    assert!(
        gpu >= 150.0 * 0.3 && gpu <= 150.0 * f(&r["window_s"]),
        "gpu {gpu} J"
    );
    assert_eq!(r["sources"]["gpu"], "replay");
    assert!((f(&r["energy_j"]["gpu"]) - gpu).abs() < 1e-9);
}

/// Carbon per inference includes the GPU: request spans get their threads' share of
/// the process's GPU energy, by the threads' driver activity.
#[test]
fn request_spans_get_their_threads_share_of_gpu_energy() {
    use energy_tests::otlp::{Backend, free_port_pair, inference_server, wait_for};
    require_root();
    let standin = StandIn::build();
    let lib = standin.library.to_str().unwrap();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let file = replay(|_| String::new());
    let receive = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let mut agent = replay_agent(
        &file,
        "250ms",
        &[
            "--libcuda",
            lib,
            "--receive",
            &receive,
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    // Two workers, each waiting on the "GPU" for 0.2 s (big) or 0.1 s (small) per
    // request, back to back.
    let report = inference_server(
        &format!("http://127.0.0.1:{port}"),
        "grpc",
        24,
        0.1,
        &["--cuda", lib],
    );
    let pid = report["pid"].as_u64().unwrap();
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 48).then_some(s)
    })
    .expect("every span arrives");
    agent.wait_intervals(1, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let mut process_gpu = 0.0;
    // The reads in which both workers drove the GPU nearly all along: there the GPU's
    // dynamic energy is theirs to share; at the edges, one drove it for part of a read
    // and is given all of that read's energy (the replayed GPU draws the same power
    // busy or not), which says nothing about the split between requests.
    let mut steady: Vec<(u64, u64)> = Vec::new();
    for i in &intervals {
        let Some(p) = i["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"].as_u64() == Some(pid))
        else {
            continue;
        };
        process_gpu += f(&p["gpu_j"]);
        let busy: Vec<f64> = p["gpu_threads"]
            .as_object()
            .map(|t| {
                t.values()
                    .map(|c| c["busy_ns"].as_f64().unwrap() / 1e9)
                    .collect()
            })
            .unwrap_or_default();
        let secs = f(&i["duration_s"]);
        if busy.len() == 2 && busy.iter().all(|b| *b > 0.8 * secs) {
            let bound = |k: &str| i[k].as_u64().unwrap();
            steady.push((bound("start_unix_ns"), bound("end_unix_ns")));
        }
    }
    let within = |s: &serde_json::Value| {
        let (a, b) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        steady.iter().any(|&(x, _)| x <= a) && steady.iter().any(|&(_, y)| b <= y)
    };
    let (mut big, mut small, mut requests_gpu) = (Vec::new(), Vec::new(), 0.0);
    for s in spans.iter().filter(|s| s["name"] != "decode") {
        let a = &s["attributes"];
        assert_eq!(a["energy.source"], "replay+replay", "{s}");
        let gpu = f(&a["energy.gpu.joules"]);
        assert!(gpu > 0.0, "{s}");
        requests_gpu += gpu;
        if within(s) {
            match a["request.type"].as_str() {
                Some("big") => big.push(gpu),
                _ => small.push(gpu),
            }
        }
    }
    assert!(
        requests_gpu <= process_gpu * 1.0001 && requests_gpu > process_gpu * 0.5,
        "requests {requests_gpu} J of the process's {process_gpu} J"
    );
    assert!(
        big.len() >= 2 && small.len() >= 2,
        "steady requests: {big:?} {small:?}"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ratio = mean(&big) / mean(&small);
    eprintln!("gpu per request: big {big:?}, small {small:?}, ratio {ratio:.3}");
    assert!(
        (ratio - 2.0).abs() <= 0.2,
        "2× the GPU work, 2× the GPU energy (±10%): {ratio}"
    );
}
