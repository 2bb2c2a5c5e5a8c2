//! What the agent reads from procfs about other processes (any local user shapes some
//! of it: a command line, a cgroup name): `/proc/net/tcp` lines to find a local
//! sender's socket, `status` files for credentials, `cgroup` and `mountinfo` for
//! containers and pods, a `cmdline`; and the pod list a kubelet or API server answers
//! (pod names and labels are anyone's who can create a pod).

use energy_agent::{
    identity::{
        cgroup::{Hierarchy, ProcCgroups, cgroup_v2_path, cgroup2_mount, container_id},
        container, k8s, read_cmdline,
    },
    lockdown::caps::ThreadCreds,
    probe::privileges::Capabilities,
    receive::peer::{parse_proc_addr, socket_table},
};

/// One input: the first byte picks the file.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 5 {
        // fuzz/regressions/procfs/net-tcp-non-ascii: a multi-byte character in an
        // address once panicked parse_proc_addr, which now slices with `str::get`.
        0 => {
            for field in text.split_whitespace().take(64) {
                let _ = parse_proc_addr(field);
            }
            let dir = tempfile::tempdir().expect("a fake procfs");
            std::fs::create_dir_all(dir.path().join("net")).expect("net/");
            std::fs::write(dir.path().join("net/tcp"), rest).expect("net/tcp");
            let _ = socket_table(dir.path());
        }
        1 => {
            let _ = ThreadCreds::parse(&text);
            let _ = Capabilities::parse(&text);
        }
        2 => {
            if let Some(path) = cgroup_v2_path(&text) {
                let _ = container_id(&path);
            }
            let _ = container_id(&text);
            let _ = cgroup2_mount(&text);
            let _ = Hierarchy::of(&text);
            let cgroups = ProcCgroups::parse(&text);
            if let Some(c) = cgroups.container() {
                assert_eq!(c.id.len(), 64, "a container id is 64 hex digits: {c:?}");
                assert!(c.pod_uid.is_some() == c.qos.is_some(), "{c:?}");
            }
            for line in text.lines().take(64) {
                let _ = container::parse(line);
            }
        }
        3 => {
            let dir = tempfile::tempdir().expect("a fake /proc/<pid>");
            std::fs::write(dir.path().join("cmdline"), rest).expect("cmdline");
            let _ = read_cmdline(dir.path());
        }
        _ => {
            if let Ok((index, malformed)) = k8s::parse_pod_list(rest, &["app".into()]) {
                assert!(malformed <= rest.len(), "{malformed} malformed items");
                let _ = index.len();
            }
        }
    }
}
