//! Power sources through the real binary: a powercap tree the test advances at known
//! power (one and two packages, dram, psys, wraps, a zone vanishing, a counter stuck
//! at zero), the estimate on this VM, replay files, and the verdict on this host's perf
//! power PMU against what the test reads from it itself.

use std::{process::Command, time::Duration};

use energy_tests::{
    AgentRun, agent_bin, domain_series,
    powercap::{PowercapTree, ZoneSpec},
    require_root,
};

fn zone(path: &'static str, name: &'static str, watts: f64, range_uj: u64) -> ZoneSpec {
    ZoneSpec {
        path,
        name,
        watts,
        range_uj,
    }
}

/// Asserts every full interval (not the partial one flushed at exit) reports `watts`
/// ±5% for `domain`: the writer advances the counters every 10 ms, so each read is up
/// to 10 ms stale and an interval of over 250 ms is exact to 4%.
fn assert_watts(intervals: &[serde_json::Value], domain: &str, watts: f64) {
    let full: Vec<serde_json::Value> = intervals
        .iter()
        .filter(|i| i["duration_s"].as_f64().unwrap() > 0.25)
        .cloned()
        .collect();
    let series = domain_series(&full, domain);
    assert!(series.len() >= 3, "{domain}: too few intervals: {series:?}");
    for d in &series {
        let w = d["watts"].as_f64().unwrap();
        let j = d["joules"].as_f64().unwrap();
        assert!(j >= 0.0, "{domain}: negative energy {d}");
        assert!(
            (w - watts).abs() <= watts * 0.05,
            "{domain}: {w} W, expected {watts} W ±5%: {d}"
        );
        assert_eq!(d["source"], "rapl-powercap");
        assert_eq!(d["estimated"], false);
    }
}

/// The agent reading `root` as its powercap tree, every `interval`.
fn agent_on(root: &std::path::Path, interval: &str) -> AgentRun {
    AgentRun::start(&[
        "--interval",
        interval,
        "--no-gpu",
        "--powercap-root",
        root.to_str().unwrap(),
    ])
}

/// The line named `name` of `check --json --no-gpu` with `args`.
fn check_line(name: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(agent_bin())
        .args(["check", "--json", "--no-gpu"])
        .args(args)
        .output()
        .expect("running energy-agent check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {out:?}"));
    report["checks"]
        .as_array()
        .expect("a checks array")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name:?} line in {report}"))
}

/// The `power rapl-powercap` line of `check --json` for a tree.
fn powercap_check(root: &std::path::Path) -> serde_json::Value {
    check_line(
        "power rapl-powercap",
        &["--powercap-root", root.to_str().unwrap()],
    )
}

#[test]
fn two_packages_dram_and_psys_at_known_power() {
    require_root();
    let tree = PowercapTree::start(
        vec![
            zone("intel-rapl:0", "package-0", 40.0, 262_143_328_850),
            zone("intel-rapl:0/intel-rapl:0:0", "core", 25.0, 262_143_328_850),
            zone("intel-rapl:0/intel-rapl:0:1", "dram", 6.0, 65_712_999_613),
            zone("intel-rapl:1", "package-1", 15.0, 262_143_328_850),
            zone("intel-rapl:2", "psys", 80.0, 262_143_328_850),
        ],
        1_000_000,
    );
    let root = tree.root();
    let mut agent = agent_on(&root, "400ms");
    agent.wait_intervals(4, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    assert_watts(&intervals, "package-0", 40.0);
    assert_watts(&intervals, "core-0", 25.0);
    assert_watts(&intervals, "dram-0", 6.0);
    assert_watts(&intervals, "package-1", 15.0);
    assert_watts(&intervals, "psys", 80.0);
    let last = &intervals[intervals.len() - 2]["power"];
    assert_eq!(last["sources"]["cpu"], "rapl-powercap");
    assert_eq!(last["estimated"], false);
    // Host total = packages + dram; core and psys overlap and are not added.
    let total_w = last["total_j"].as_f64().unwrap()
        / intervals[intervals.len() - 2]["duration_s"]
            .as_f64()
            .unwrap();
    assert!(
        (total_w - 61.0).abs() < 61.0 * 0.05,
        "host {total_w} W, expected 61 W"
    );
}

#[test]
fn counters_wrapping_mid_run_stay_exact_and_positive() {
    require_root();
    // A 30 J range at 20 W wraps every 1.5 s; start 1 J below the edge.
    let tree = PowercapTree::start(
        vec![zone("intel-rapl:0", "package-0", 20.0, 30_000_000)],
        29_000_000,
    );
    let root = tree.root();
    let mut agent = agent_on(&root, "300ms");
    agent.wait_intervals(12, Duration::from_secs(15));
    let (_, intervals) = agent.stop();
    assert_watts(&intervals, "package-0", 20.0);
}

#[test]
fn a_zone_vanishing_mid_run_is_reported_and_the_rest_continue() {
    require_root();
    let tree = PowercapTree::start(
        vec![
            zone("intel-rapl:0", "package-0", 30.0, 262_143_328_850),
            zone("intel-rapl:1", "package-1", 10.0, 262_143_328_850),
        ],
        0,
    );
    let root = tree.root();
    let mut agent = agent_on(&root, "300ms");
    agent.wait_intervals(2, Duration::from_secs(10));
    tree.remove("intel-rapl:1");
    agent.wait_intervals(4, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success(), "the agent keeps running");
    let later = &intervals[intervals.len() - 2]["power"];
    let errors = later["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["domain"] == "package-1"
                && e["error"].as_str().unwrap().contains("energy_uj")),
        "package-1 reported unreadable: {later}"
    );
    assert_watts(&intervals, "package-0", 30.0);
    // And check says so for this tree.
    let pc = powercap_check(&root);
    assert!(pc["detail"].as_str().unwrap().contains("package-0"), "{pc}");
}

#[test]
fn a_counter_stuck_at_zero_falls_back_to_the_estimate_with_a_reason() {
    require_root();
    let tree = PowercapTree::start(
        vec![zone("intel-rapl:0", "package-0", -1.0, 262_143_328_850)],
        0,
    );
    let root = tree.root();
    let mut agent = agent_on(&root, "300ms");
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let power = &intervals[1]["power"];
    assert_eq!(power["sources"]["cpu"], "estimate");
    assert_eq!(power["estimated"], true);
    let pc = powercap_check(&root);
    assert_eq!(pc["status"], "warn");
    assert!(
        pc["detail"].as_str().unwrap().contains("package-0=0"),
        "{pc}"
    );
}

#[test]
fn this_vm_uses_the_estimate_and_says_so() {
    require_root();
    let mut agent = AgentRun::start(&["--interval", "300ms", "--no-gpu"]);
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let power = &intervals[1]["power"];
    assert_eq!(power["sources"]["cpu"], "estimate", "{power}");
    assert_eq!(power["sources"]["gpu"], "none");
    assert_eq!(power["estimated"], true);
    let pkg = &domain_series(&intervals, "package-0")[1];
    assert!(
        pkg["watts"].as_f64().unwrap() > 0.0,
        "idle power is positive"
    );
    assert_eq!(pkg["estimated"], true);
}

#[test]
fn replay_files_play_back_and_bad_ones_name_the_line() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.csv");
    let mut text = String::from("# recorded\n");
    for t in 0..=20 {
        text.push_str(&format!(
            "{},package-0,power_w,50\n{},gpu-0,energy_mj,{}\n",
            t as f64 * 0.5,
            t as f64 * 0.5,
            t * 100_000
        ));
    }
    std::fs::write(&good, text).unwrap();
    let source = format!("replay:{}", good.display());
    let mut agent = AgentRun::start(&["--interval", "300ms", "--power-source", &source]);
    agent.wait_intervals(3, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let power = &intervals[2]["power"];
    assert_eq!(power["sources"]["cpu"], "replay");
    assert_eq!(power["sources"]["gpu"], "replay");
    for (domain, watts) in [("package-0", 50.0), ("gpu-0", 200.0)] {
        let d = &domain_series(&intervals, domain)[2];
        let w = d["watts"].as_f64().unwrap();
        assert!((w - watts).abs() < watts * 0.05, "{domain}: {d}");
    }

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "0,package-0,joules,1\n1,package-0,jouls,2\n").unwrap();
    let out = Command::new(agent_bin())
        .args([
            "run",
            "--power-source",
            &format!("replay:{}", bad.display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 2") && stderr.contains("unknown kind"),
        "{stderr}"
    );
}

/// What this host's perf `power` PMU does, seen by the test itself: sysfs read and
/// `perf_event_open(2)` called here, not through the agent's code.
#[derive(Debug, PartialEq)]
enum PmuSeen {
    /// No `/sys/bus/event_source/devices/power/type`.
    Absent,
    /// The PMU lists no `energy-*` event with a config and a scale.
    NoEvents,
    /// Every event failed to open (the errors).
    OpenRefused(Vec<String>),
    /// The events opened and no count changed over the wait.
    Frozen,
    /// Some event's count changed.
    Advancing,
}

const POWER_PMU: &str = "/sys/bus/event_source/devices/power";

/// The `config` of an event file like `event=0x02` (the only term RAPL events have).
fn event_config(text: &str) -> Option<u64> {
    let v = text.trim().strip_prefix("event=")?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Opens one system-wide counting event on `cpu`: `perf_event_attr` as 16 u32 words
/// (type, size = 64 = PERF_ATTR_SIZE_VER0, config low and high; all else zero).
fn open_event(pmu_type: u32, config: u64, cpu: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let mut attr = [0u32; 16];
    attr[0] = pmu_type;
    attr[1] = 64;
    attr[2] = config as u32;
    attr[3] = (config >> 32) as u32;
    // SAFETY: a 64-byte perf_event_attr; pid -1 with a cpu is a system-wide counter.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            cpu,
            -1i32,
            0u64,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

fn read_event(file: &mut std::fs::File) -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    file.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading an opened perf event: {e}"));
    u64::from_ne_bytes(buf)
}

/// Looks at the PMU: its events, opened on the first CPU of its cpumask, read `wait`
/// apart.
fn look_at_power_pmu(wait: Duration) -> PmuSeen {
    let pmu = std::path::Path::new(POWER_PMU);
    let Some(pmu_type) = std::fs::read_to_string(pmu.join("type"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return PmuSeen::Absent;
    };
    let cpu: i32 = std::fs::read_to_string(pmu.join("cpumask"))
        .ok()
        .and_then(|m| {
            let first = m.trim().split([',', '-']).next()?.to_string();
            first.parse().ok()
        })
        .unwrap_or(0);
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(pmu.join("events"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let has_scale = pmu.join("events").join(format!("{name}.scale")).exists();
        if name.starts_with("energy-") && !name.contains('.') && has_scale {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            configs.extend(event_config(&text).map(|c| (name, c)));
        }
    }
    if configs.is_empty() {
        return PmuSeen::NoEvents;
    }
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for (name, config) in &configs {
        match open_event(pmu_type, *config, cpu) {
            Ok(f) => opened.push(f),
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    if opened.is_empty() {
        return PmuSeen::OpenRefused(refused);
    }
    let before: Vec<u64> = opened.iter_mut().map(read_event).collect();
    std::thread::sleep(wait);
    let after: Vec<u64> = opened.iter_mut().map(read_event).collect();
    if before != after {
        PmuSeen::Advancing
    } else {
        PmuSeen::Frozen
    }
}

#[test]
fn this_hosts_pmu_verdict_matches_what_the_test_reads_itself() {
    require_root();
    // Twice the agent's 150 ms settle: a RAPL counter behind the PMU advances every
    // millisecond or so, so a live one cannot look frozen over 300 ms.
    let seen = look_at_power_pmu(Duration::from_millis(300));
    let line = check_line("power rapl-perf", &[]);
    let detail = line["detail"].as_str().expect("a detail");
    eprintln!("the test saw {seen:?}; the agent says {line}");
    match seen {
        PmuSeen::Advancing => {
            assert_eq!(
                line["status"], "pass",
                "advancing counters are usable: {line}"
            );
            assert!(detail.contains("rapl-perf (measured)"), "{line}");
        }
        unavailable => {
            assert_eq!(
                line["status"], "warn",
                "{unavailable:?} is unavailable: {line}"
            );
            let reason = match unavailable {
                PmuSeen::Absent => "no RAPL perf PMU",
                PmuSeen::NoEvents => "no energy-* events",
                PmuSeen::OpenRefused(_) => "perf_event_open failed",
                PmuSeen::Frozen => "read 0 J",
                PmuSeen::Advancing => unreachable!(),
            };
            assert!(detail.contains(reason), "expected {reason:?}: {line}");
        }
    }
}
