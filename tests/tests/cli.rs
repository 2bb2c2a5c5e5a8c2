//! The binary's edges: no privileges gives one clear line, `check` reports, Ctrl-C
//! detaches every program.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

use energy_tests::{AgentRun, agent_bin, require_root};

/// Programs of ours loaded in the kernel now (by name).
fn loaded_sched_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("sched_switch") || n.starts_with("sched_process_"))
        })
        .count()
}

/// A copy of the agent that user `nobody` can execute, wherever the checkout lives.
fn agent_for_nobody() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("energy-agent");
    std::fs::copy(agent_bin(), &copy).expect("copying the agent");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

fn as_nobody(binary: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(binary)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running setpriv (util-linux)")
}

#[test]
fn unprivileged_run_prints_one_clear_line() {
    require_root();
    let (_dir, binary) = agent_for_nobody();
    let out = as_nobody(&binary, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without privileges");
    assert_eq!(stderr.trim().lines().count(), 1, "one line, got:\n{stderr}");
    assert!(stderr.contains("CAP_BPF"), "names the capability: {stderr}");
    assert!(
        stderr.contains("energy-agent check"),
        "points to check: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn unprivileged_check_fails_with_the_fix() {
    require_root();
    let (_dir, binary) = agent_for_nobody();
    let out = as_nobody(&binary, &["check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check exits 1 when the agent cannot run"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert_eq!(report["ok"], false);
    let privileges = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "privileges")
        .expect("privileges check");
    assert_eq!(privileges["status"], "fail");
    assert!(privileges["fix"].as_str().unwrap().contains("cap_bpf"));
}

#[test]
fn check_as_root_passes_every_scheduler_check() {
    require_root();
    let out = Command::new(agent_bin())
        .args(["check", "--json"])
        .output()
        .expect("running check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    let checks = report["checks"].as_array().unwrap();
    for name in [
        "privileges",
        "tracefs",
        "tracepoint sched:sched_switch",
        "tracepoint sched:sched_process_exit",
        "tracepoint sched:sched_process_exec",
        "btf",
        "bpf load",
        "ring buffer",
    ] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check named {name}: {report}"));
        assert_eq!(c["status"], "pass", "{name}: {c}");
    }
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(report["ok"], true);
}

#[test]
fn ctrl_c_exits_cleanly_and_detaches() {
    require_root();
    let before = loaded_sched_programs();
    let agent = AgentRun::start(&["--interval", "200ms"]);
    assert!(
        loaded_sched_programs() >= before + 4,
        "the agent's four programs are loaded while it runs"
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "exit status after SIGINT: {status}");
    // The kernel frees programs when their last reference closes; give it a moment.
    let mut after = loaded_sched_programs();
    for _ in 0..50 {
        if after <= before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = loaded_sched_programs();
    }
    assert!(
        after <= before,
        "programs left loaded after exit: {before} before, {after} after"
    );
}

#[test]
fn table_output_shows_a_burning_process() {
    require_root();
    let agent = Command::new(agent_bin())
        .args(["run", "--interval", "300ms", "--duration", "1500ms"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    std::thread::sleep(Duration::from_millis(400));
    let burner = Command::new(energy_tests::test_bin("burner"))
        .args(["0.6", "1"])
        .stdout(Stdio::null())
        .status()
        .expect("burner");
    assert!(burner.success());
    let out = agent.wait_with_output().expect("agent output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PID") && text.contains("mgCO2e"),
        "header: {text}"
    );
    assert!(
        text.contains("burner"),
        "the burner appears in the table:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("total (") && l.contains("proc)")),
        "{text}"
    );
}

/// The Prometheus text of the agent listening on `port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

#[test]
fn a_failing_output_is_logged_once_counted_and_the_run_goes_on() {
    require_root();
    // Every write to /dev/full fails with ENOSPC: the daemon must survive it (it used
    // to stop at the first failed interval), log it once within the rate limit, count
    // it, and end when --duration says, with exit code 0.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let port = energy_tests::otlp::free_port_pair();
    let started = std::time::Instant::now();
    let agent = Command::new(agent_bin())
        .args([
            "run",
            "--output",
            "json",
            "--interval",
            "200ms",
            "--duration",
            "3s",
        ])
        .args(["--prometheus", &format!("127.0.0.1:{port}")])
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let counted = energy_tests::otlp::wait_for(Duration::from_secs(3), || {
        scrape(port)
            .lines()
            .find(|l| l.starts_with("energy_agent_errors_total{component=\"output\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|n| *n >= 2.0)
    });
    let out = agent.wait_with_output().expect("the agent's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        counted.is_some(),
        "energy_agent_errors_total{{component=\"output\"}} did not count the failed writes:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "exit status {} with a failing output:\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the run ended before its --duration: {:?}\n{stderr}",
        started.elapsed()
    );
    let logged = stderr
        .lines()
        .filter(|l| l.contains("writing the interval report") && l.contains("going on"))
        .count();
    assert_eq!(
        logged, 1,
        "about 15 failed writes in 3 s, logged once within the 10 s rate limit:\n{stderr}"
    );
}
