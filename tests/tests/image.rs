//! The image recipe, run the way the DaemonSet runs it. `deploy/image/rootfs.sh` builds
//! the image's root file system from the agent under test (the Dockerfile's builder
//! stage runs the same script on the release build, and its runtime stage is that tree
//! and nothing else); `deploy/image/run-rootfs.sh` runs the agent from it in its own
//! mount and pid namespaces, chrooted into the read-only tree, with the DaemonSet's host
//! mounts (/proc of the host pid namespace, /sys/kernel/tracing, the host's /sys at
//! /host/sys, the ConfigMap's config.toml), its capability list and its user. The agent
//! must attach, read the host's powercap tree through /host/sys as the DaemonSet's
//! flags say (the runtime masks /sys/devices/virtual/powercap), report a process of the
//! host with the kernel's CPU time, and answer its readiness probe.
//!
//! The host's /sys here has no powercap driver, so /host/sys is a tree shaped like
//! sysfs (class/powercap/intel-rapl:0 → ../../devices/virtual/powercap/intel-rapl/…)
//! whose zones a writer advances at known power.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use energy_tests::{
    agent_bin,
    otlp::{free_port_pair, wait_for},
    powercap::{PowercapTree, ZoneSpec},
    repo_root, require_root, test_bin,
};

/// The agent's capabilities in the image (rootfs.sh's CAPS), as bits of CapEff.
const CAPS: [(u32, &str); 3] = [
    (2, "cap_dac_read_search"),
    (38, "cap_perfmon"),
    (39, "cap_bpf"),
];

/// The image's tree, built by the recipe's own script.
fn build_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let out = Command::new(repo_root().join("deploy/image/rootfs.sh"))
        .arg(agent_bin())
        .arg(&rootfs)
        .output()
        .expect("running deploy/image/rootfs.sh");
    assert!(
        out.status.success(),
        "rootfs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rootfs
}

/// A directory shaped like the host's /sys where it matters here: the powercap class
/// links into devices/virtual/powercap/intel-rapl, where the tree gets bound.
fn sysfs_shaped(dir: &Path) -> PathBuf {
    let sys = dir.join("host-sys");
    std::fs::create_dir_all(sys.join("class/powercap")).expect("class/powercap");
    std::fs::create_dir_all(sys.join("devices/virtual/powercap/intel-rapl")).expect("devices");
    std::os::unix::fs::symlink(
        "../../devices/virtual/powercap/intel-rapl/intel-rapl:0",
        sys.join("class/powercap/intel-rapl:0"),
    )
    .expect("symlink");
    sys
}

fn zones() -> Vec<ZoneSpec> {
    vec![
        ZoneSpec {
            path: "intel-rapl:0",
            name: "package-0",
            watts: 20.0,
            range_uj: 262_143_328_850,
        },
        ZoneSpec {
            path: "intel-rapl:0/intel-rapl:0:0",
            name: "dram",
            watts: 3.0,
            range_uj: 65_712_999_613,
        },
    ]
}

/// The agent running from the tree, and its interval lines.
struct Jailed {
    script: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    intervals: Vec<serde_json::Value>,
}

impl Jailed {
    fn start(run_options: &[&str], rootfs: &Path, agent_args: &[&str]) -> Self {
        let mut script = Command::new(repo_root().join("deploy/image/run-rootfs.sh"))
            .args(run_options)
            .arg(rootfs)
            .arg("--")
            .args(agent_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running deploy/image/run-rootfs.sh");
        let stdout = script.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            script,
            lines: rx,
            intervals: Vec::new(),
        }
    }

    fn wait_intervals(&mut self, n: usize) {
        for _ in 0..n {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("an interval from the agent in the tree");
            self.intervals.push(v);
        }
    }

    /// The agent's pid on the host: the only child of unshare (which the script
    /// became), once it has exec'd the agent.
    fn agent_pid(&self) -> u32 {
        let unshare = self.script.id();
        wait_for(Duration::from_secs(10), || {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
            let pid: u32 = children.split_whitespace().next()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "energy-agent").then_some(pid)
        })
        .expect("the agent under unshare")
    }

    /// Stops the agent with SIGINT (unshare's parent ignores it) and collects the rest.
    fn stop(mut self, pid: u32) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        // SAFETY: signalling the agent this test started.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = self.script.wait().expect("waiting for run-rootfs.sh");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.intervals.push(v);
        }
        (status, self.intervals)
    }
}

/// One line of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// What the agent was run as, read from the host: its own namespaces, its root, its
/// ids and capabilities.
fn assert_contained(pid: u32, rootfs: &Path, uid: u32) {
    let ns = |p: &str, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).ok();
    for kind in ["mnt", "pid"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "the agent has its own {kind} namespace"
        );
    }
    let nspid = status_field(pid, "NSpid:");
    assert_eq!(
        nspid.split_whitespace().nth(1),
        Some("1"),
        "pid 1 of its pid namespace: {nspid}"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("root");
    assert_eq!(
        root.canonicalize().ok(),
        rootfs.canonicalize().ok(),
        "chrooted into the image's tree"
    );
    let uids = status_field(pid, "Uid:");
    assert!(
        uids.split_whitespace().all(|u| u == uid.to_string()),
        "uid {uid}: {uids}"
    );
    let granted: u64 = CAPS.iter().map(|(bit, _)| 1u64 << bit).sum();
    let bounding = u64::from_str_radix(&status_field(pid, "CapBnd:"), 16).expect("caps");
    assert_eq!(
        bounding,
        granted,
        "CapBnd is what the image grants, {:?} (no CAP_SETPCAP to cut it): {bounding:x}",
        CAPS.map(|c| c.1)
    );
    // Once started, the agent keeps only what reading needs (its lockdown): of what the
    // image grants, cap_dac_read_search, and cap_bpf only where map reads need it.
    let effective = u64::from_str_radix(&status_field(pid, "CapEff:"), 16).expect("caps");
    let (dac_read_search, bpf) = (1u64 << 2, 1u64 << 39);
    assert!(
        effective == dac_read_search || effective == dac_read_search | bpf,
        "CapEff after start-up is cap_dac_read_search (and cap_bpf where map reads need it): {effective:x}"
    );
    // Whether or not the runtime set it, the agent sets it itself once started.
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Builds the tree, runs the agent from it with `run_options`, burns 1 s of CPU in a
/// host process, and checks what the agent in the tree saw.
fn runs_from_the_image(run_options: &[&str], uid: u32) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = build_rootfs(dir.path());
    let host_sys = sysfs_shaped(dir.path());
    let tree = PowercapTree::start(zones(), 0);
    let bind = format!(
        "{}:/host/sys/devices/virtual/powercap/intel-rapl",
        tree.root().display()
    );
    let config = repo_root().join("deploy/helm/energy-agent/files");
    let port = free_port_pair();
    let health = format!("127.0.0.1:{port}");
    let mut options = run_options.to_vec();
    options.extend(["--host-sys", host_sys.to_str().expect("path")]);
    options.extend(["--bind", &bind, "--config", config.to_str().expect("path")]);
    let mut agent = Jailed::start(
        &options,
        &rootfs,
        &[
            "run",
            "--config",
            "/etc/energy-agent/config.toml",
            "--output",
            "json",
            "--interval",
            "500ms",
            "--no-gpu",
            "--powercap-root",
            "/host/sys/class/powercap",
            "--health",
            &health,
        ],
    );
    agent.wait_intervals(1);
    let pid = agent.agent_pid();
    assert_contained(pid, &rootfs, uid);
    let burner = Command::new(test_bin("burner"))
        .arg("1.0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the burner");
    let burner_pid = u64::from(burner.id());
    let burner = burner.wait_with_output().expect("the burner");
    assert!(burner.status.success());
    let schedstat_ns: u64 = String::from_utf8_lossy(&burner.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("schedstat_ns=")?.parse().ok())
        .expect("the burner's schedstat_ns line");
    agent.wait_intervals(2);
    let ready = energy_tests::http_get(port, "/readyz").map(|r| r.0);
    let (status, intervals) = agent.stop(pid);
    assert!(status.success(), "the agent in the tree exited {status}");
    assert_eq!(ready, Some(200), "/readyz from the tree");

    for i in &intervals {
        assert_eq!(
            i["power"]["sources"]["cpu"], "rapl-powercap",
            "the host's powercap through /host/sys: {}",
            i["power"]
        );
        assert_eq!(i["power"]["estimated"], false);
    }
    let burner_rows: Vec<&serde_json::Value> = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(burner_pid))
        .collect();
    assert!(
        burner_rows
            .iter()
            .all(|p| p["comm"] == "burner" && p["exe_name"] == "burner"),
        "the host's burner, by its host pid, name and executable: {burner_rows:?}"
    );
    let cpu_ns: u64 = burner_rows
        .iter()
        .map(|p| p["cpu_time_ns"].as_u64().unwrap_or(0))
        .sum();
    let error = cpu_ns.abs_diff(schedstat_ns) as f64 / schedstat_ns as f64;
    eprintln!(
        "burner {burner_pid}: agent {cpu_ns} ns, schedstat {schedstat_ns} ns ({:+.3}%)",
        (cpu_ns as f64 / schedstat_ns as f64 - 1.0) * 100.0
    );
    assert!(
        error <= 0.01,
        "the host process's CPU time as the kernel counts it: {cpu_ns} vs {schedstat_ns}"
    );
    let joules: f64 = burner_rows.iter().map(|p| f(&p["energy_j"])).sum();
    assert!(joules > 0.0, "measured energy for the host process");
}

#[test]
fn nonroot_with_the_daemonsets_capabilities_attaches_and_reports_a_host_process() {
    runs_from_the_image(&["--user", "nonroot"], 65532);
}

#[test]
fn root_with_no_new_privs_attaches_and_reports_a_host_process() {
    runs_from_the_image(&["--user", "root", "--no-new-privs"], 0);
}

#[test]
fn nonroot_with_no_new_privs_gets_no_capabilities_and_says_so() {
    // allowPrivilegeEscalation: false sets no_new_privs, under which the binary's file
    // capabilities are not granted: the agent must say what is missing, in one line.
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = build_rootfs(dir.path());
    let out = Command::new(repo_root().join("deploy/image/run-rootfs.sh"))
        .args(["--user", "nonroot", "--no-new-privs"])
        .arg(&rootfs)
        .args(["--", "run", "--no-gpu"])
        .output()
        .expect("running deploy/image/run-rootfs.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.trim().lines().count() == 1,
        "one line naming the missing capability: {stderr}"
    );
}
