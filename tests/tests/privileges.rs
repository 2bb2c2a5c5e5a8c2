//! Least privilege, read back from the kernel: after start-up every thread of `run`
//! holds exactly the documented capabilities (the OTLP threads none), `--user nobody`
//! still reports and enriches, and an unprivileged user with file capabilities (set
//! on a copy of the binary by this test with `setcap`) really runs the agent — with
//! exactly the capabilities README names, and a clear error without one of them.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use energy_tests::{
    agent_bin, domain_series,
    otlp::{Backend, forwarding_agent, free_port_pair, inference_server, wait_for},
    powercap::{PowercapTree, ZoneSpec},
    require_root, test_bin,
};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_BPF: u32 = 39;

/// One thread's name and status fields.
struct Thread {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Thread {
    fn caps(&self, key: &str) -> u64 {
        u64::from_str_radix(self.fields[key].trim(), 16)
            .unwrap_or_else(|e| panic!("{key} of {}: {e}", self.name))
    }

    fn uid(&self) -> Vec<u32> {
        self.fields["Uid"]
            .split_whitespace()
            .map(|s| s.parse().expect("a uid"))
            .collect()
    }
}

/// Every thread of process `pid`, from /proc/PID/task/*/status.
fn threads(pid: u32) -> Vec<Thread> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the agent's threads")
        .flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let fields: BTreeMap<String, String> = status
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect();
            Some(Thread {
                name: fields.get("Name").cloned().unwrap_or_default(),
                fields,
            })
        })
        .collect()
}

/// The set docs/SECURITY.md documents for this kernel: CAP_DAC_READ_SEARCH and
/// CAP_SYS_PTRACE, and CAP_BPF before Linux 6.5 with unprivileged BPF disabled.
fn documented_set() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).expect("major");
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).expect("minor");
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let mut set = (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE);
    if (major, minor) < (6, 5) && sysctl != Some(0) {
        set |= 1 << CAP_BPF;
    }
    set
}

/// Asserts the drop: `kept` in every thread but the `energy-net` ones (none there),
/// nothing inheritable or ambient, the bounding set `bounding`, `no_new_privs`.
fn assert_dropped(pid: u32, kept: u64, bounding: u64) -> Vec<Thread> {
    let all = threads(pid);
    assert!(
        all.iter().any(|t| t.name == "energy-net"),
        "the OTLP runtime's threads"
    );
    for t in &all {
        let expected = if t.name == "energy-net" { 0 } else { kept };
        for key in ["CapEff", "CapPrm"] {
            assert_eq!(
                t.caps(key),
                expected,
                "{key} of thread {} is {:#x}, documented {expected:#x}",
                t.name,
                t.caps(key)
            );
        }
        assert_eq!(t.caps("CapInh"), 0, "{}", t.name);
        assert_eq!(t.caps("CapAmb"), 0, "{}", t.name);
        assert_eq!(t.caps("CapBnd"), bounding, "CapBnd of {}", t.name);
        assert_eq!(t.fields["NoNewPrivs"], "1", "no_new_privs of {}", t.name);
    }
    all
}

#[test]
fn after_start_up_every_thread_holds_only_the_documented_capabilities() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let _backend = Backend::start(backend_port);
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let mut agent = forwarding_agent(port, &endpoint, &[], |_| {});
    let set = documented_set();
    let all = assert_dropped(agent.pid(), set, set);
    eprintln!(
        "{} threads; CapEff {set:#x} in all but the energy-net ones",
        all.len()
    );
    // The main thread, as /proc/PID/status shows the process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(status.contains(&format!("CapEff:\t{set:016x}")), "{status}");
    agent.wait_intervals(2, Duration::from_secs(10));
    let (exit, _) = agent.stop();
    assert!(exit.success());
    // `check` names the same set.
    let out = Command::new(agent_bin())
        .args(["check", "--json", "--no-gpu"])
        .output()
        .expect("running check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    let line = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "privileges after start"))
        .cloned()
        .expect("a 'privileges after start' line");
    let names = if set & (1 << CAP_BPF) != 0 {
        "cap_dac_read_search,cap_sys_ptrace,cap_bpf"
    } else {
        "cap_dac_read_search,cap_sys_ptrace"
    };
    assert!(
        line["detail"].as_str().unwrap_or("").contains(names),
        "{line}"
    );
}

#[test]
fn as_nobody_the_agent_still_reports_and_enriches() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let mut agent = forwarding_agent(port, &endpoint, &["--user", "nobody"], |_| {});
    let set = documented_set();
    for t in assert_dropped(agent.pid(), set, set) {
        assert_eq!(t.uid(), vec![65534; 4], "uid of {}", t.name);
    }
    // Without process.pid: the sender is found from the connection, by the thread that
    // kept the capabilities for it (the sender runs as root, the agent as nobody).
    let report = inference_server(
        &format!("http://127.0.0.1:{port}"),
        "grpc",
        2,
        0.2,
        &["--no-pid"],
    );
    let pid = report["pid"].as_u64().expect("the server's pid");
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 4).then_some(s)
    })
    .expect("the spans arrive");
    agent.wait_intervals(1, Duration::from_secs(10));
    let (exit, intervals) = agent.stop();
    assert!(exit.success());
    for s in spans.iter().filter(|s| s["name"] == "chat tiny-llama") {
        assert!(
            s["attributes"]["energy.joules"].as_f64() > Some(0.0),
            "enriched as nobody, the sender found from its connection: {s}"
        );
    }
    let cpu_s: f64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(pid))
        .filter_map(|p| p["cpu_time_s"].as_f64())
        .sum();
    assert!(
        cpu_s > 0.3,
        "the server's 0.6 s of CPU are reported: {cpu_s}"
    );
}

/// A copy of the agent that `nobody` may run, in a directory it may enter.
fn unprivileged_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the dir");
    let bin = dir.path().join("energy-agent");
    std::fs::copy(agent_bin(), &bin).expect("copying the agent");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, bin)
}

fn setcap(caps: &str, bin: &Path) {
    let out = Command::new("setcap")
        .arg(caps)
        .arg(bin)
        .output()
        .expect("setcap (libcap2-bin; cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "setcap {caps}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bin args` as nobody (setpriv, no groups).
fn as_nobody(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(bin);
    c
}

#[test]
fn an_unprivileged_user_runs_the_agent_with_the_file_capabilities_readme_names() {
    require_root();
    // A powercap tree in a directory only root may enter (as the kernel's energy_uj is
    // readable by root only): reading it takes cap_dac_read_search, as tracefs does.
    let tree = PowercapTree::start(
        vec![ZoneSpec {
            path: "intel-rapl:0",
            name: "package-0",
            watts: 20.0,
            range_uj: 262_143_328_850,
        }],
        1_000_000,
    );
    std::fs::set_permissions(tree.root(), std::fs::Permissions::from_mode(0o700))
        .expect("making the tree root-only");
    let (_dir, bin) = unprivileged_copy();
    let root = tree.root().to_string_lossy().into_owned();
    let args = [
        "run",
        "--output",
        "json",
        "--interval",
        "500ms",
        "--duration",
        "3s",
        "--no-gpu",
        "--power-source",
        "rapl-powercap",
        "--powercap-root",
        &root,
    ];
    // What README says is enough.
    setcap("cap_bpf,cap_perfmon,cap_dac_read_search+ep", &bin);
    let mut burner = Command::new(test_bin("burner"))
        .args(["2.5", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the burner");
    let child = as_nobody(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the agent as nobody");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(1500));
    let all = threads(pid);
    let out = child.wait_with_output().expect("the agent's output");
    let _ = burner.kill();
    let burner_pid = burner.id();
    let _ = burner.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "as nobody with file capabilities: {stderr}"
    );
    // What it kept of its file capabilities: cap_dac_read_search; the bounding set
    // cannot be cut without cap_setpcap (no_new_privs stops execve from using it).
    for t in &all {
        assert_eq!(t.uid()[1], 65534, "{}", t.name);
        let expected = if t.name == "energy-net" {
            0
        } else {
            1 << CAP_DAC_READ_SEARCH
        };
        assert_eq!(t.caps("CapEff"), expected, "CapEff of {}", t.name);
        assert_eq!(t.caps("CapPrm"), expected, "CapPrm of {}", t.name);
        assert_eq!(t.fields["NoNewPrivs"], "1");
    }
    let intervals: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON interval"))
        .collect();
    let package = domain_series(&intervals, "package-0");
    assert!(package.len() >= 3, "powercap read as nobody: {package:?}");
    assert!(
        package
            .iter()
            .all(|d| d["source"] == "rapl-powercap" && d["joules"].as_f64() > Some(0.0)),
        "{package:?}"
    );
    let burner_s: f64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(burner_pid)))
        .filter_map(|p| p["cpu_time_s"].as_f64())
        .sum();
    assert!(burner_s > 1.0, "the burner's CPU time, by eBPF: {burner_s}");

    // Without cap_dac_read_search (the claim README used to make): a clear refusal.
    setcap("cap_bpf,cap_perfmon+ep", &bin);
    let out = as_nobody(&bin)
        .args(args)
        .output()
        .expect("running the agent as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cap_dac_read_search"),
        "the error names what is missing: {stderr}"
    );
}
