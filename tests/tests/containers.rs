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
    fn create(pod_uid: &str, container_id: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let (root, mounted) = match cgroup2_mount(&mountinfo) {
            Some(root) => (root, None),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let ok = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(dir.path())
                    .status()
                    .expect("mount");
                assert!(ok.success(), "mounting cgroup2 at {}", dir.path().display());
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let slice_uid = pod_uid.replace('-', "_");
        let mut cgroup = Self {
            dirs: Vec::new(),
            root: root.clone(),
            mounted,
        };
        let mut dir = root.join(format!("energy-test-containers-{}", std::process::id()));
        for name in [
            "kubepods.slice".to_string(),
            "kubepods-burstable.slice".into(),
            format!("kubepods-burstable-pod{slice_uid}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            cgroup.dirs.push(dir.clone());
            dir = dir.join(name);
        }
        std::fs::create_dir(&dir).expect("creating the container's scope");
        cgroup.dirs.push(dir);
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

#[test]
fn a_burner_in_a_pod_cgroup_is_attributed_to_its_container_pod_and_model() {
    require_root();
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
    let cgroup = PodCgroup::create(&uid, &id);
    let (url, requests) = kubelet(pod_list(&uid, &id));
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
        "llama-e2e=^app.kubernetes.io/name=vllm-e2e$",
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
    let (_, intervals) = agent.stop();
    assert!(
        requests.load(Ordering::SeqCst) >= 1,
        "the agent asked the kubelet"
    );

    let entries: Vec<&serde_json::Value> = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .collect();
    assert!(
        !entries.is_empty(),
        "the burner (pid {pid}) never showed up"
    );
    let energy: f64 = entries
        .iter()
        .map(|p| p["energy_j"].as_f64().unwrap())
        .sum();
    assert!(energy > 0.0, "the burner's energy: {energy}");
    for p in &entries {
        // procfs and the probe's cgroup id name the same cgroup2 directory.
        assert_eq!(p["cgroup"], cgroup.relative().as_str(), "{p}");
        let c = &p["container"];
        assert_eq!(c["container.id"], id.as_str(), "{p}");
        assert_eq!(c["container.runtime"], "containerd");
        assert_eq!(c["k8s.pod.uid"], uid.as_str());
        assert_eq!(c["k8s.pod.qos_class"], "burstable");
    }
    // The list is fetched at start-up, before the burner starts: every entry has it.
    let named: Vec<&&serde_json::Value> = entries
        .iter()
        .filter(|p| p["container"]["k8s.pod.name"] == "vllm-e2e-0")
        .collect();
    assert_eq!(named.len(), entries.len(), "{entries:?}");
    for p in &named {
        let c = &p["container"];
        assert_eq!(c["k8s.namespace.name"], "inference");
        assert_eq!(c["k8s.container.name"], "server");
        assert_eq!(c["k8s.node.name"], "node-e2e");
        assert_eq!(c["k8s.pod.label.app.kubernetes.io/name"], "vllm-e2e");
        assert!(
            c.get("k8s.pod.label.pod-template-hash").is_none(),
            "not asked for"
        );
        assert_eq!(p["model"], "llama-e2e", "the rule on the pod label");
    }
    // The container's row carries the pod's names and at least the burner's energy.
    let row_energy: f64 = intervals
        .iter()
        .flat_map(|i| i["containers"].as_array().into_iter().flatten())
        .filter(|r| r["name"] == id.as_str())
        .inspect(|r| {
            assert_eq!(r["k8s.pod.name"], "vllm-e2e-0", "{r}");
            assert_eq!(r["k8s.namespace.name"], "inference");
            assert_eq!(r["k8s.pod.uid"], uid.as_str());
        })
        .map(|r| r["energy_j"].as_f64().unwrap())
        .sum();
    assert!(row_energy >= energy - 1e-9, "{row_energy} < {energy}");
    drop(cgroup);
}
