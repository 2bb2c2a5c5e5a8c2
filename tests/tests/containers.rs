//! Containers and pods against the real kernel: a CPU burner in a pod-shaped cgroup2
//! subtree (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//! cri-containerd-<id>.scope`, as the kubelet's systemd driver makes it), and a
//! kubelet `/pods` endpoint served by the test naming that pod. The agent must give the
//! burner's energy to that container with its pod uid, name and namespace, and the
//! `--model` rule written on the pod's label must name its model. On a v1 or hybrid
//! host the cgroup2 tree is the one mounted beside v1 (or one the test mounts): an
//! empty cgroup2 hierarchy still holds membership, which is all the agent reads, from
//! `/proc/<pid>/cgroup`'s `0::` line and from the probe's cgroup id alike.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use energy_agent::identity::cgroup::cgroup2_mount;
use energy_tests::{AgentRun, require_root, test_bin};

/// A pod-shaped cgroup2 subtree; on drop its processes go back to the root and its
/// directories are removed leaves first (and a cgroup2 tree the test mounted is
/// unmounted), whatever the test did.
struct PodCgroup {
    root: PathBuf,
    /// From the top one down to the container's scope.
    dirs: Vec<PathBuf>,
    mounted: Option<tempfile::TempDir>,
}

impl PodCgroup {
    /// `segments` under a test directory of the cgroup2 tree (mounted if there is none).
    fn v2(segments: &[String]) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        match cgroup2_mount(&mountinfo) {
            Some(root) => Self::create(root, None, segments),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let ok = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(dir.path())
                    .status()
                    .expect("mount");
                assert!(ok.success(), "mounting cgroup2 at {}", dir.path().display());
                Self::create(dir.path().to_path_buf(), Some(dir), segments)
            }
        }
    }

    /// `segments` under a test directory of the v1 hierarchy holding the `cpu`
    /// controller; None on a host without one (cgroup v2 only).
    fn v1_cpu(segments: &[String]) -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let (fstype, options) = (right.next()?, right.nth(1)?);
            let cpu = options.split(',').any(|o| o == "cpu");
            let at = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" && cpu).then(|| PathBuf::from(at))
        })?;
        Some(Self::create(root, None, segments))
    }

    fn create(root: PathBuf, mounted: Option<tempfile::TempDir>, segments: &[String]) -> Self {
        let mut cgroup = Self {
            dirs: Vec::new(),
            root: root.clone(),
            mounted,
        };
        let mut dir = root.join(format!("energy-test-containers-{}", std::process::id()));
        for name in segments.iter().map(Some).chain([None]) {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            cgroup.dirs.push(dir.clone());
            if let Some(name) = name {
                dir = dir.join(name);
            }
        }
        cgroup
    }

    /// The container's scope.
    fn leaf(&self) -> &Path {
        self.dirs.last().expect("a leaf")
    }

    /// The leaf's path as `/proc/<pid>/cgroup` writes it (relative to the root).
    fn relative(&self) -> String {
        format!(
            "/{}",
            self.leaf().strip_prefix(&self.root).unwrap().display()
        )
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing {}: {e}", dir.display());
            }
        }
        if let Some(dir) = &self.mounted {
            let _ = Command::new("umount").arg(dir.path()).status();
        }
    }
}

/// A kubelet `/pods` stand-in: answers every request with `body`; counts requests.
fn kubelet(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/pods", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

/// A PodList as the kubelet serves it, with one pod: `uid`, its container `id`.
fn pod_list(uid: &str, id: &str) -> String {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [{
            "metadata": {
                "name": "vllm-e2e-0",
                "namespace": "inference",
                "uid": uid,
                "labels": {"app.kubernetes.io/name": "vllm-e2e", "pod-template-hash": "5f4"},
                "annotations": {"kubernetes.io/config.source": "api"}
            },
            "spec": {
                "containers": [{"name": "server", "image": "vllm/vllm-openai:v0.6.3"}],
                "nodeName": "node-e2e"
            },
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "containerStatuses": [{
                    "name": "server",
                    "ready": true,
                    "restartCount": 0,
                    "image": "vllm/vllm-openai:v0.6.3",
                    "imageID": "",
                    "containerID": format!("containerd://{id}"),
                    "started": true
                }]
            }
        }]
    })
    .to_string()
}

/// A fresh pod uid and container id (so runs never meet an earlier run's cgroups).
fn fresh_ids() -> (String, String) {
    let n = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n,
        nanos & 0xffff,
        (nanos >> 16) & 0xfff,
        (nanos >> 28) & 0xfff,
        nanos & 0xffff_ffff_ffff
    );
    let id = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        n,
        nanos,
        !nanos,
        u64::from(n) << 7
    );
    (uid, id)
}

/// What one agent run reported.
struct Seen {
    /// The burner's process entries.
    entries: Vec<serde_json::Value>,
    /// The container rows named for its container.
    rows: Vec<serde_json::Value>,
    /// `/metrics` just before the agent stopped.
    metrics: String,
    /// `report --by pod --format json` over the run's history.
    by_pod: serde_json::Value,
}

/// Runs the agent against a kubelet serving the pod (`uid`, container `id`) with
/// `model`, while a burner runs in `cgroup`'s leaf.
fn burn_in(cgroup: &PodCgroup, uid: &str, id: &str, model: &str) -> Seen {
    let (url, requests) = kubelet(pod_list(uid, id));
    let port = energy_tests::otlp::free_port_pair();
    let prometheus = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let none = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--no-state",
        "--power-source",
        "estimate",
        "--kubelet-url",
        &url,
        "--k8s-label",
        "app.kubernetes.io/name",
        "--k8s-token-file",
        &none("token"),
        "--k8s-ca-file",
        &none("ca.crt"),
        "--model",
        model,
        "--prometheus",
        &prometheus,
        "--record",
        &none("history.db"),
    ]);
    // The shell joins the container's cgroup, then becomes the burner: it never runs
    // outside it.
    let procs = cgroup.leaf().join("cgroup.procs");
    let burner = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} 1.5 1",
            procs.display(),
            test_bin("burner").display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("burner");
    let pid = burner.id();
    let status = burner.wait_with_output().expect("burner").status;
    assert!(status.success(), "burner: {status}");
    agent.wait_intervals(2, Duration::from_secs(10));
    // The thread that reads the pod lists holds no capability once the agent runs.
    let fetcher = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .expect("the agent's threads")
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "energy-net-pods")
        })
        .expect("the pod fetcher thread");
    let status = std::fs::read_to_string(fetcher.path().join("status")).expect("status");
    for set in ["CapEff:", "CapPrm:"] {
        let line = status.lines().find(|l| l.starts_with(set)).expect(set);
        assert!(
            line.ends_with("0000000000000000"),
            "the pod fetcher's {line}"
        );
    }
    let (status, metrics) = energy_tests::http_get(port, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    let (_, intervals) = agent.stop();
    assert!(
        requests.load(Ordering::SeqCst) >= 1,
        "the agent asked the kubelet"
    );
    // Every interval says what the pod source did: one pod, no failure.
    let last = &intervals.last().expect("intervals")["pod_metadata"];
    assert_eq!(last["pods"], 1, "{last}");
    assert!(last["fetches"].as_u64() >= Some(1), "{last}");
    assert_eq!(
        (last["errors"].as_u64(), last["malformed_items"].as_u64()),
        (Some(0), Some(0))
    );
    let rows = |key: &str| -> Vec<serde_json::Value> {
        intervals
            .iter()
            .flat_map(|i| i[key].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let entries: Vec<serde_json::Value> = (rows("processes").into_iter())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .collect();
    assert!(
        !entries.is_empty(),
        "the burner (pid {pid}) never showed up"
    );
    let rows = (rows("containers").into_iter())
        .filter(|r| r["name"] == id)
        .collect();
    let report = Command::new(energy_tests::agent_bin())
        .args([
            "report",
            &none("history.db"),
            "--by",
            "pod",
            "--format",
            "json",
        ])
        .output()
        .expect("energy-agent report");
    assert!(report.status.success(), "{report:?}");
    let by_pod = serde_json::from_slice(&report.stdout).expect("report JSON");
    Seen {
        entries,
        rows,
        metrics,
        by_pod,
    }
}

/// The `energy_container_joules_total` series of container `id`.
fn container_series<'a>(metrics: &'a str, id: &str) -> Vec<&'a str> {
    let label = format!("container_id=\"{id}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("energy_container_joules_total{") && l.contains(&label))
        .collect()
}

/// The energy of rows.
fn energy(rows: &[serde_json::Value]) -> f64 {
    rows.iter().map(|p| p["energy_j"].as_f64().unwrap()).sum()
}

/// The pod's names, as the served list gives them, on every entry (the list is
/// fetched at start-up, before the burner starts).
fn assert_named(entries: &[serde_json::Value], model: &str) {
    for p in entries {
        let c = &p["container"];
        assert_eq!(c["k8s.pod.name"], "vllm-e2e-0", "{p}");
        assert_eq!(c["k8s.namespace.name"], "inference");
        assert_eq!(c["k8s.container.name"], "server");
        assert_eq!(c["k8s.node.name"], "node-e2e");
        assert_eq!(c["k8s.pod.label.app.kubernetes.io/name"], "vllm-e2e");
        assert!(
            c.get("k8s.pod.label.pod-template-hash").is_none(),
            "not asked for"
        );
        assert_eq!(p["model"], model, "the model rule on the pod");
    }
}

#[test]
fn a_burner_in_a_pod_cgroup_is_attributed_to_its_container_pod_and_model() {
    require_root();
    let (uid, id) = fresh_ids();
    let cgroup = PodCgroup::v2(&[
        "kubepods.slice".into(),
        "kubepods-burstable.slice".into(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{id}.scope"),
    ]);
    let Seen {
        entries,
        rows,
        metrics,
        by_pod,
    } = burn_in(
        &cgroup,
        &uid,
        &id,
        "llama-e2e=^app.kubernetes.io/name=vllm-e2e$",
    );
    // The history: the pod is one group of the report, with at least the burner's.
    let pod = (by_pod["groups"].as_array().into_iter().flatten())
        .find(|g| g["name"] == "inference/vllm-e2e-0")
        .unwrap_or_else(|| panic!("no pod group in {by_pod}"));
    let recorded = pod["energy_j"].as_f64().unwrap();
    assert!(recorded >= energy(&entries) - 1e-9, "{recorded}: {pod}");
    // Prometheus: the container's series carries its pod and namespace.
    let series = container_series(&metrics, &id);
    assert_eq!(series.len(), 1, "{series:?}");
    for label in [
        "k8s_pod_name=\"vllm-e2e-0\"",
        "k8s_namespace_name=\"inference\"",
        "k8s_container_name=\"server\"",
    ] {
        assert!(series[0].contains(label), "{label} in {}", series[0]);
    }
    let burned = energy(&entries);
    assert!(burned > 0.0, "the burner's energy: {burned}");
    for p in &entries {
        // procfs (which wins) names the directory the test made; the probe's cgroup
        // id is that directory's inode, the same one.
        assert_eq!(p["cgroup"], cgroup.relative().as_str(), "{p}");
        let c = &p["container"];
        assert_eq!(c["container.id"], id.as_str(), "{p}");
        assert_eq!(c["container.runtime"], "containerd");
        assert_eq!(c["k8s.pod.uid"], uid.as_str());
        assert_eq!(c["k8s.pod.qos_class"], "burstable");
    }
    assert_named(&entries, "llama-e2e");
    // The container's row carries the pod's names and at least the burner's energy.
    for r in &rows {
        assert_eq!(r["k8s.pod.name"], "vllm-e2e-0", "{r}");
        assert_eq!(r["k8s.namespace.name"], "inference");
        assert_eq!(r["k8s.pod.uid"], uid.as_str());
    }
    assert!(
        energy(&rows) >= burned - 1e-9,
        "{} < {burned}",
        energy(&rows)
    );
    drop(cgroup);
}

#[test]
fn on_cgroup_v1_the_controller_paths_name_the_container_and_pod() {
    require_root();
    let (uid, id) = fresh_ids();
    // The kubelet's cgroupfs driver on a v1 host; the v2 line stays `0::/`.
    let Some(cgroup) = PodCgroup::v1_cpu(&[
        "kubepods".into(),
        "besteffort".into(),
        format!("pod{uid}"),
        id.clone(),
    ]) else {
        eprintln!("no cgroup v1 cpu hierarchy on this host: nothing to check");
        return;
    };
    // The pod's name, not its label, names the model this time.
    let Seen {
        entries,
        rows,
        metrics,
        ..
    } = burn_in(&cgroup, &uid, &id, "by-pod=^vllm-e2e-0$");
    let series = container_series(&metrics, &id);
    assert!(
        series.len() == 1 && series[0].contains("k8s_pod_name=\"vllm-e2e-0\""),
        "{series:?}"
    );
    assert!(energy(&entries) > 0.0);
    for p in &entries {
        let c = &p["container"];
        assert_eq!(c["container.id"], id.as_str(), "{p}");
        assert_eq!(c["k8s.pod.uid"], uid.as_str());
        assert_eq!(c["k8s.pod.qos_class"], "besteffort");
        assert!(c.get("container.runtime").is_none(), "a bare id names none");
    }
    assert_named(&entries, "by-pod");
    assert!(!rows.is_empty(), "a row for the container");
    drop(cgroup);
}

#[test]
fn check_names_the_cgroup_hierarchy_and_reaches_the_pod_source() {
    let (uid, id) = fresh_ids();
    let (url, requests) = kubelet(pod_list(&uid, &id));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(energy_tests::agent_bin())
        .args(["check", "--no-gpu", "--no-state", "--kubelet-url", &url])
        .arg("--k8s-token-file")
        .arg(dir.path().join("token"))
        .arg("--k8s-ca-file")
        .arg(dir.path().join("ca.crt"))
        .output()
        .expect("energy-agent check");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    let pods = line("pod");
    assert!(
        pods.starts_with("PASS") && pods.contains(&format!("1 pods from {url}")),
        "{pods}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one fetch");
    // What this host's mountinfo says, in the words of the line.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let v1 = mountinfo.contains(" - cgroup cgroup ");
    let cgroups = line("cgroups");
    let want = match (cgroup2_mount(&mountinfo), v1) {
        (Some(at), true) => format!(
            "hybrid: cgroup ids from the cgroup2 tree at {}",
            at.display()
        ),
        (Some(at), false) => format!("v2 unified at {}", at.display()),
        (None, true) => "v1 only".into(),
        (None, false) => "no cgroup mount".into(),
    };
    assert!(cgroups.contains(&want), "{cgroups} (want {want})");
}

/// The probe's own cgroup id of a thread is its cgroup2 directory's inode (what
/// `bpf_get_current_cgroup_id` returns), from the typed switch program (which walks
/// task → css_set → cgroup → kernfs node with direct loads) and the raw one (which calls
/// the helper) alike.
#[test]
fn the_probe_reads_a_threads_cgroup_id_as_its_cgroup2_directory_inode() {
    use std::os::unix::fs::MetadataExt;

    use energy_agent::probe::{Lifecycle, Probe, ProbeConfig};

    require_root();
    let cgroup = PodCgroup::v2(&["probe-cgroup-id".into()]);
    let inode = std::fs::metadata(cgroup.leaf()).expect("the cgroup").ino();
    let procs = cgroup.leaf().join("cgroup.procs");
    for raw_switch in [false, true] {
        let config = ProbeConfig {
            raw_switch,
            ..ProbeConfig::default()
        };
        let mut probe = Probe::load(&config).expect("loading the probe");
        probe.read_interval().expect("first read");
        // The shell moves itself into the cgroup, then becomes the burner.
        let mut burner = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo 0 > {} && exec {} 0.3 1 > /dev/null",
                procs.display(),
                test_bin("burner").display()
            ))
            .spawn()
            .expect("spawning the burner");
        let pid = burner.id();
        let (mut slices, mut exit) = (Vec::new(), None);
        while exit.is_none() {
            std::thread::sleep(Duration::from_millis(100));
            let interval = probe.read_interval().expect("read_interval");
            slices.extend(interval.slices.into_iter().filter(|s| s.tgid == pid));
            exit = interval.lifecycle.into_iter().find_map(|l| match l {
                Lifecycle::Exit {
                    tgid, cgroup_id, ..
                } if tgid == pid => Some(cgroup_id),
                _ => None,
            });
        }
        assert!(burner.wait().expect("the burner").success());
        let program = probe.switch_program();
        let last = slices.last().expect("the burner's slices");
        assert_eq!(last.cgroup_id, inode, "{program}: {slices:?}");
        assert_eq!(exit, Some(inode), "{program}: its exit record");
        eprintln!(
            "{program}: cgroup id {inode} on {} slices of the burner",
            slices.iter().filter(|s| s.cgroup_id == inode).count()
        );
    }
    drop(cgroup);
}
