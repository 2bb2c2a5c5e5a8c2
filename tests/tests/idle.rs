//! Idle power on busy hosts, against a powercap tree advancing at a known power model:
//! package = 10 W + 15 W per busy CPU of this machine (the tree follows `/proc/stat`),
//! DRAM 2 W. Under it a process's dynamic energy is exactly 15 W × its CPU time, so
//! `energy_j / (15 W × cpu_time_s)` is the error of the idle/dynamic split alone (the
//! CPU time is checked against the kernel's schedstat too). No test has an idle lead:
//! the load runs before the agent's first interval.
//!
//! A fit within the run needs the host's load to vary. Where other load saturates this
//! machine (other builds on a shared VM), no method can fit; the tests then check that
//! the agent said so (`fit`, `uncertain`) and that the tree — independently of the
//! agent — indeed saw too little variation: the largest spread of its busy CPUs over any
//! 16 intervals below [`MUST_FIT_SPREAD`]. With more spread than that, the agent
//! must have fitted, and its figures must be within the bound.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use energy_tests::{
    AgentRun, agent_bin,
    known_model::{
        Burned, IDLE_W, K_W, PKG, WORKLOAD, f, flags, idle_of, measure_workload, run_workload,
        spawn, sum_of, tree,
    },
    powercap::PowercapTree,
    require_root,
};

/// The interval of the accuracy tests: each interval boundary moves up to 10 ms of
/// energy between neighbours (`/proc/stat`'s 10 ms ticks, the writer's 10 ms period),
/// about 0.7 W of noise at 250 ms and half that at 500 ms, which is what bounds a
/// bursty process's error once the idle power is right (1–2%).
const INTERVAL: &str = "500ms";
/// The drift test's interval (it counts intervals).
const DRIFT_INTERVAL: &str = "250ms";

/// Spread (standard deviation of busy CPUs per interval over 16 intervals) above which
/// the agent must fit: it needs 0.1 CPU and a band within 10% of the dynamic power,
/// which at this tree's noise it reaches at about 0.3 CPU.
const MUST_FIT_SPREAD: f64 = 0.4;

/// The largest spread of the tree's busy CPUs (per `interval`) over any 16 intervals in
/// `[from, to]`.
fn tree_spread(tree: &PowercapTree, from: Instant, to: Instant, interval: &str) -> f64 {
    let ms = interval.strip_suffix("ms").and_then(|n| n.parse().ok());
    let bucket = Duration::from_millis(ms.expect("an interval in ms"));
    let busy = tree.busy_cpus(from, to, bucket);
    busy.windows(16.min(busy.len()).max(1))
        .map(|w| {
            let mean = w.iter().sum::<f64>() / w.len() as f64;
            (w.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Writes a state file holding `idle_w` ± `band_w` for package-0 of `root`'s tree
/// (and the tree's 2 W for its DRAM), as `calibrate` would (the README's format).
fn store_calibration(state: &Path, root: &Path, idle_w: f64, band_w: f64) {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let host = match read("/etc/machine-id") {
        Ok(id) if !id.is_empty() => format!("machine-id:{id}"),
        _ => format!(
            "hostname:{}",
            read("/proc/sys/kernel/hostname").unwrap_or_default()
        ),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let entry = |domain: &str, idle: f64, k: f64| {
        serde_json::json!({
            "meter": format!("rapl-powercap:{}", root.display()),
            "domain": domain, "idle_w": idle, "per_busy_w": k, "uncertainty_w": band_w,
            "samples": 100, "busy_min": 0.0, "busy_max": 2.0, "method": "calibrate",
            "at": "2026-01-01T00:00:00Z", "at_unix_s": now,
        })
    };
    let file = serde_json::json!({
        "version": 1,
        "hosts": { host: { "hostname": "test", "entries": [
            entry("package-0", idle_w, K_W), entry("dram-0", 2.0, 0.0)
        ]}}
    });
    std::fs::write(state.join("idle-power.json"), file.to_string()).expect("state file");
}

/// Checks every burner's CPU time against schedstat and its energy within `bound` of
/// the model; prints the figures.
fn assert_within(burned: &[Burned], bound: f64, what: &str) {
    for b in burned {
        eprintln!(
            "{what}: {:.2} J for {:.3} CPU-s (schedstat {:.3}): {:.3}× the true dynamic energy",
            b.energy_j,
            b.cpu_s,
            b.schedstat_s,
            b.ratio()
        );
    }
    for b in burned {
        assert!(
            (b.cpu_s - b.schedstat_s).abs() <= 0.02 * b.schedstat_s,
            "{what}: CPU time {} s vs schedstat {} s",
            b.cpu_s,
            b.schedstat_s
        );
        assert!(
            (b.ratio() - 1.0).abs() <= bound,
            "{what}: {:.3}× the true dynamic energy, beyond ±{bound}: {b:?}",
            b.ratio()
        );
    }
}

/// Where the agent did not fit: it must say so, and the tree must agree that the load
/// did not vary enough.
fn assert_not_fitting_was_right(
    idle: &serde_json::Value,
    tree: &PowercapTree,
    (from, to): (Instant, Instant),
    interval: &str,
) {
    let spread = tree_spread(tree, from, to, interval);
    eprintln!(
        "no fit this run (package-0: {idle}); the tree's largest 16-interval spread was {spread:.3} busy CPUs: the host's other load saturated it, accuracy not checked this time"
    );
    assert_eq!(
        idle["uncertain"], true,
        "an unfitted fallback is flagged: {idle}"
    );
    assert_ne!(idle["fit"], "good", "{idle}");
    assert!(
        spread < MUST_FIT_SPREAD,
        "the tree saw the load vary by {spread:.3} busy CPUs over 16 intervals, yet the agent did not fit: {idle}"
    );
}

#[test]
fn calibrate_fits_the_known_model_then_measure_is_within_5_percent() {
    require_root();
    let t = tree();
    let state = tempfile::tempdir().expect("tempdir");
    let (root, st) = (t.root(), state.path());
    let started = Instant::now();
    let out = Command::new(agent_bin())
        .args(["calibrate", "--duration", "24s", "--json"])
        .args(flags(&root, Some(st), INTERVAL))
        .output()
        .expect("running calibrate");
    let ended = Instant::now();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "calibrate printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("calibrate: {report}");
    let domains = report["domains"].as_array().expect("domains");
    let pkg = (domains.iter())
        .find(|d| d["domain"] == "package-0")
        .expect("package-0 calibrated");
    if pkg["status"] != "good" {
        let spread = tree_spread(&t, started, ended, INTERVAL);
        assert_ne!(out.status.code(), Some(0), "nothing stored, a failure");
        assert!(
            spread < MUST_FIT_SPREAD,
            "the tree saw {spread:.3} busy CPUs of spread, yet calibrate did not fit: {pkg}"
        );
        eprintln!("calibrate could not fit (spread {spread:.3}): the host was saturated");
        return;
    }
    assert_eq!(out.status.code(), Some(0));
    let fit = &pkg["fit"];
    let (idle, band, k) = (
        f(&fit["idle_w"]),
        f(&fit["uncertainty_w"]),
        f(&fit["per_busy_w"]),
    );
    assert!(
        (idle - IDLE_W).abs() <= band.max(0.5),
        "calibrated idle {idle} ± {band} W, the tree's is {IDLE_W} W"
    );
    assert!(
        (k - K_W).abs() <= 1.0,
        "{k} W per busy CPU, the tree's is {K_W}"
    );
    assert_eq!(pkg["stored"], true);
    // check shows it, with its date.
    let check = Command::new(agent_bin())
        .args(["check", "--json"])
        .args(&flags(&root, Some(st), INTERVAL)[..7])
        .output()
        .expect("running check");
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    let line = (check["checks"].as_array().expect("checks").iter())
        .find(|c| c["name"] == "idle power package-0")
        .unwrap_or_else(|| panic!("no idle power line: {check}"));
    let detail = line["detail"].as_str().expect("detail");
    assert!(detail.contains("calibrated on 20"), "{detail}");
    assert!(detail.starts_with(&format!("{idle:.2} ± ")), "{detail}");
    // measure starts from the calibration: within 5%, whatever the load does.
    let (burned, r, ..) = measure_workload(&WORKLOAD, &flags(&root, Some(st), INTERVAL));
    let origin = idle_of(&r["idle_power"], "package-0");
    assert!(
        origin["origin"] == "calibrated" || origin["origin"] == "fitted",
        "{origin}"
    );
    assert_eq!(r["idle_uncertain"], false, "{}", r["idle_power"]);
    assert_within(&burned, 0.05, "measure after calibrate");
}

#[test]
fn measure_without_calibration_fits_within_the_run_within_10_percent() {
    require_root();
    let t = tree();
    let state = tempfile::tempdir().expect("tempdir");
    let (burned, r, started, ended) =
        measure_workload(&WORKLOAD, &flags(&t.root(), Some(state.path()), INTERVAL));
    let idle = idle_of(&r["idle_power"], "package-0");
    eprintln!("measure: idle power {}", r["idle_power"]);
    if idle["origin"] != "fitted" {
        assert_not_fitting_was_right(idle, &t, (started, ended), INTERVAL);
        return;
    }
    assert!(
        (f(&idle["watts"]) - IDLE_W).abs() <= f(&idle["uncertainty_w"]).max(0.5),
        "{idle}"
    );
    assert_within(&burned, 0.10, "measure, fitted within the run");
    // The run's fit is kept for the next one.
    let stored = std::fs::read_to_string(state.path().join("idle-power.json")).expect("stored");
    assert!(stored.contains("\"fitted\""), "{stored}");
}

#[test]
fn run_json_with_a_stored_calibration_is_within_5_percent_from_the_first_interval() {
    require_root();
    let t = tree();
    let state = tempfile::tempdir().expect("tempdir");
    store_calibration(state.path(), &t.root(), IDLE_W, 0.2);
    let (intervals, pids, ..) =
        run_workload(&WORKLOAD, &flags(&t.root(), Some(state.path()), INTERVAL));
    for i in &intervals {
        let idle = idle_of(&i["idle_power"], "package-0");
        assert!(
            idle["origin"] == "calibrated" || idle["origin"] == "fitted",
            "every interval starts from the calibration: {idle}"
        );
        assert_eq!(i["idle_uncertain"], false, "{}", i["idle_power"]);
    }
    let burned: Vec<Burned> = pids
        .iter()
        .map(|&p| sum_of(&intervals, p, |_| true))
        .collect();
    assert_within(&burned, 0.05, "run --output json, stored calibration");
}

#[test]
fn run_json_without_calibration_is_within_10_percent_once_fitted_and_flagged_before() {
    require_root();
    let t = tree();
    let state = tempfile::tempdir().expect("tempdir");
    let (intervals, pids, started, ended) =
        run_workload(&WORKLOAD, &flags(&t.root(), Some(state.path()), INTERVAL));
    let fitted =
        |i: &serde_json::Value| idle_of(&i["idle_power"], "package-0")["origin"] == "fitted";
    for i in intervals.iter().filter(|i| !fitted(i)) {
        let idle = idle_of(&i["idle_power"], "package-0");
        assert_eq!(idle["uncertain"], true, "before a fit, flagged: {idle}");
        assert_eq!(i["idle_uncertain"], true);
    }
    let n_fitted = intervals.iter().filter(|i| fitted(i)).count();
    eprintln!("{n_fitted} of {} intervals fitted", intervals.len());
    let Some(last) = intervals.iter().rev().find(|i| !i["idle_power"].is_null()) else {
        panic!("no interval");
    };
    if n_fitted == 0 {
        let idle = idle_of(&last["idle_power"], "package-0");
        assert_not_fitting_was_right(idle, &t, (started, ended), INTERVAL);
        return;
    }
    let all: Vec<Burned> = pids
        .iter()
        .map(|&p| sum_of(&intervals, p, |_| true))
        .collect();
    for b in &all {
        eprintln!("whole run, flagged intervals included: {:.3}×", b.ratio());
    }
    // A fit that came late must have waited for the load to vary: the tree saw too
    // little spread in every 16 intervals before it.
    let first_fit = intervals
        .iter()
        .position(fitted)
        .expect("a fitted interval");
    let wall = |i: &serde_json::Value| {
        let unix = std::time::UNIX_EPOCH + Duration::from_nanos(i["end_unix_ns"].as_u64().unwrap());
        let ago = std::time::SystemTime::now()
            .duration_since(unix)
            .unwrap_or_default();
        Instant::now() - ago
    };
    let before_fit = wall(&intervals[first_fit]) - Duration::from_millis(500);
    if first_fit > 8 && before_fit > started {
        let spread = tree_spread(&t, started, before_fit, INTERVAL);
        assert!(
            spread < MUST_FIT_SPREAD,
            "the first fit came after {first_fit} intervals, yet the tree saw {spread:.3} busy CPUs of spread before it"
        );
    }
    let vouched: Vec<Burned> = pids
        .iter()
        .map(|&p| sum_of(&intervals, p, fitted))
        .filter(|b| b.cpu_s > 0.2)
        .collect();
    if vouched.is_empty() {
        eprintln!("the fit came after the workload: accuracy not checked this time");
        return;
    }
    assert_within(&vouched, 0.10, "run --output json, fitted intervals");
}

/// `run` for 12 intervals (6 s) on a host whose every CPU a burner keeps busy (one of
/// them the "workload", `pids[1]`).
fn never_idle_run(root: &Path, state: &Path) -> (Vec<serde_json::Value>, u32) {
    let mut burners = spawn(&[&["60", "1"], &["60", "1"]]);
    let mut agent = AgentRun::start(&flags(root, Some(state), INTERVAL));
    agent.wait_intervals(12, Duration::from_secs(30));
    let (_, intervals) = agent.stop();
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    // The first interval can hold the burners' start.
    (intervals[1..].to_vec(), burners[1].id())
}

#[test]
fn a_host_never_idle_uses_the_calibration_or_flags_the_figure_uncertain() {
    require_root();
    let t = tree();
    let calibrated = tempfile::tempdir().expect("tempdir");
    store_calibration(calibrated.path(), &t.root(), IDLE_W, 0.2);
    let (intervals, workload) = never_idle_run(&t.root(), calibrated.path());
    for i in &intervals {
        let idle = idle_of(&i["idle_power"], "package-0");
        assert!(
            idle["origin"] == "calibrated" || idle["origin"] == "fitted",
            "{idle}"
        );
    }
    let b = sum_of(&intervals, workload, |_| true);
    assert_within(&[b], 0.05, "never idle, stored calibration");

    let none = tempfile::tempdir().expect("tempdir");
    let (intervals, _) = never_idle_run(&t.root(), none.path());
    let last = idle_of(&intervals[intervals.len() - 1]["idle_power"], "package-0");
    eprintln!("never idle, no calibration: {last}");
    for i in &intervals {
        let idle = idle_of(&i["idle_power"], "package-0");
        assert_ne!(
            idle["origin"], "fitted",
            "a steady load cannot be fitted: {idle}"
        );
        assert_eq!(idle["uncertain"], true, "{idle}");
        assert_eq!(i["idle_uncertain"], true);
    }
    assert!(
        last["fit"] == "steady_load" || last["fit"] == "poor",
        "the agent says why: {last}"
    );
}

#[test]
fn a_step_of_the_idle_power_is_followed_within_24_intervals() {
    require_root();
    let t = tree();
    let state = tempfile::tempdir().expect("tempdir");
    let long: [&[&str]; 3] = [
        &["7.2", "1", "0.3"],
        &["9.6", "1", "0.4", "-", "800"],
        &["6.0", "2", "0.25", "-", "1200"],
    ];
    let mut burners = spawn(&long);
    let started = Instant::now();
    let mut agent = AgentRun::start(&flags(&t.root(), Some(state.path()), DRIFT_INTERVAL));
    let package = |i: &serde_json::Value| idle_of(&i["idle_power"], "package-0").clone();
    let fitted_near = |i: &serde_json::Value, w: f64| {
        let p = package(i);
        p["origin"] == "fitted"
            && p["fit"] == "good"
            && (f(&p["watts"]) - w).abs() <= f(&p["uncertainty_w"]).max(0.7)
    };
    // Until the fit has the first idle power (at most 40 intervals).
    let mut waited = 0;
    while !agent
        .intervals
        .last()
        .is_some_and(|i| fitted_near(i, IDLE_W))
        && waited < 40
    {
        agent.wait_intervals(1, Duration::from_secs(10));
        waited += 1;
    }
    let fitted_first = agent
        .intervals
        .last()
        .is_some_and(|i| fitted_near(i, IDLE_W));
    let step_at = t.set_watts(PKG, 14.0);
    let before = agent.intervals.len();
    agent.wait_intervals(40, Duration::from_secs(20));
    let (_, intervals) = agent.stop();
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    if !fitted_first {
        let last = package(&intervals[before - 1]);
        assert_not_fitting_was_right(&last, &t, (started, step_at), DRIFT_INTERVAL);
        return;
    }
    // The interval the step fell in is the first after `before`.
    let after = &intervals[before..];
    let followed = after.iter().position(|i| fitted_near(i, 14.0));
    let series: Vec<String> = after
        .iter()
        .map(|i| {
            let p = package(i);
            format!("{:.2} {} {}", f(&p["watts"]), p["origin"], p["fit"])
        })
        .collect();
    eprintln!("after the 10 → 14 W step: {series:?}");
    match followed {
        Some(n) => {
            eprintln!("followed after {} intervals", n + 1);
            assert!(n < 24, "followed after {} intervals", n + 1);
        }
        None => {
            let spread = tree_spread(&t, step_at, Instant::now(), DRIFT_INTERVAL);
            assert!(
                spread < MUST_FIT_SPREAD,
                "the load varied by {spread:.3} busy CPUs after the step, yet the fit did not follow: {series:?}"
            );
            eprintln!("the load was too steady after the step to follow it (spread {spread:.3})");
        }
    }
}
