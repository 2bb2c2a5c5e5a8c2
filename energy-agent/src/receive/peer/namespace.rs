//! Pid namespaces as the agent's procfs sees them: a process in a container numbers
//! processes in its own namespace, so the `process.pid` it reports means something only
//! translated (`/proc/<pid>/status` `NSpid`: its pid in each namespace from the
//! procfs's down to its own).

use std::{
    collections::HashMap,
    ffi::OsString,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

/// The pid namespace of a connection's sender.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PidNamespace {
    /// Whether it is the namespace of the agent's procfs (its pids are the agent's).
    pub is_agents: bool,
    /// For every thread of the namespace's processes: its id there → the agent's
    /// (empty for the agent's namespace).
    pub pids: HashMap<u32, u32>,
}

impl PidNamespace {
    /// The agent's id of the process or thread that this namespace calls `pid`.
    pub fn to_agents(&self, pid: u32) -> Option<u32> {
        if self.is_agents {
            Some(pid)
        } else {
            self.pids.get(&pid).copied()
        }
    }
}

/// Most threads mapped per namespace (a namespace with more is mapped in part).
const MAX_MAPPED: usize = 65_536;
/// Most namespaces cached.
const MAX_CACHED: usize = 256;
/// How long a namespace's map is used before it is read again.
const FRESH: Duration = Duration::from_secs(10);

/// The pid in the innermost namespace listed on a `status` file's `NSpid` line, and how
/// many namespaces it lists.
fn nspid(status: &str) -> Option<(u32, usize)> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some((*pids.last()?, pids.len()))
}

/// Namespace maps, cached by the namespace's link (`pid:[4026531836]`).
#[derive(Default)]
pub(super) struct Namespaces {
    cache: HashMap<OsString, (Arc<PidNamespace>, Instant)>,
}

impl Namespaces {
    /// The pid namespace of process `pid`, when it can be read. Blocking (reads procfs).
    pub fn of(&mut self, proc_root: &Path, pid: u32) -> Option<Arc<PidNamespace>> {
        let dir = proc_root.join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let (_, depth) = nspid(&status)?;
        if depth == 1 {
            return Some(Arc::new(PidNamespace {
                is_agents: true,
                pids: HashMap::new(),
            }));
        }
        let link = std::fs::read_link(dir.join("ns/pid"))
            .ok()?
            .into_os_string();
        if let Some((ns, at)) = self.cache.get(&link)
            && at.elapsed() < FRESH
            && ns.pids.values().any(|&p| p == pid)
        {
            return Some(ns.clone());
        }
        let ns = Arc::new(PidNamespace {
            is_agents: false,
            pids: map_namespace(proc_root, &link),
        });
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, (_, at)| at.elapsed() < FRESH);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        self.cache.insert(link, (ns.clone(), Instant::now()));
        Some(ns)
    }
}

/// Every thread of the processes whose pid namespace is `link`: its id there → the
/// agent's.
fn map_namespace(proc_root: &Path, link: &OsString) -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for (_, dir) in super::numbered(proc_root) {
        if !std::fs::read_link(dir.join("ns/pid")).is_ok_and(|l| l.as_os_str() == link) {
            continue;
        }
        for (tid, task) in super::numbered(&dir.join("task")) {
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            if let Some((inner, _)) = nspid(&status) {
                map.insert(inner, tid);
            }
            if map.len() >= MAX_MAPPED {
                return map;
            }
        }
    }
    map
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes a process of a fake procfs: its threads `(tid, NSpid line)` and its pid
    /// namespace link.
    pub fn fake_process(root: &Path, pid: u32, ns: &str, threads: &[(u32, &str)]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        symlink(ns, dir.join("ns/pid")).unwrap();
        for (tid, nspid) in threads {
            let task = dir.join("task").join(tid.to_string());
            std::fs::create_dir_all(&task).unwrap();
            let status = format!("Name:\tx\nPid:\t{tid}\nNSpid:\t{nspid}\n");
            std::fs::write(task.join("status"), &status).unwrap();
            if *tid == pid {
                std::fs::write(dir.join("status"), status).unwrap();
            }
        }
    }

    #[test]
    fn reads_nspid_lines() {
        assert_eq!(nspid("Name:\ta\nNSpid:\t4242\t1\n"), Some((1, 2)));
        assert_eq!(nspid("NSpid:\t77\n"), Some((77, 1)));
        assert_eq!(nspid("Pid:\t77\n"), None);
        assert_eq!(nspid("NSpid:\t77\tx\n"), None);
    }

    #[test]
    fn a_container_namespace_maps_its_own_threads_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Container A: its init 5000 (1 there) with a thread 5001 (2 there), and 5100
        // (7 there). Container B: 6000 (1 there). The host: 300.
        fake_process(
            root,
            5000,
            "pid:[91]",
            &[(5000, "5000\t1"), (5001, "5001\t2")],
        );
        fake_process(root, 5100, "pid:[91]", &[(5100, "5100\t7")]);
        fake_process(root, 6000, "pid:[92]", &[(6000, "6000\t1")]);
        fake_process(root, 300, "pid:[1]", &[(300, "300")]);
        let mut namespaces = Namespaces::default();
        let a = namespaces.of(root, 5100).expect("namespace of 5100");
        assert!(!a.is_agents);
        assert_eq!(a.pids, [(1, 5000), (2, 5001), (7, 5100)].into());
        assert_eq!(a.to_agents(7), Some(5100));
        assert_eq!(a.to_agents(300), None, "a host pid means nothing in there");
        let b = namespaces.of(root, 6000).unwrap();
        assert_eq!(b.to_agents(1), Some(6000));
        let host = namespaces.of(root, 300).unwrap();
        assert!(host.is_agents);
        assert_eq!(host.to_agents(5000), Some(5000));
        assert!(namespaces.of(root, 12345).is_none(), "no such process");
    }
}
