//! Cgroup v2 ids (what `bpf_get_current_cgroup_id` returns) to paths and container ids,
//! and the v1 controller paths of `/proc/<pid>/cgroup` on v1 and hybrid hosts.
//!
//! Which wins: a process's cgroup is read from procfs first, the v2 (`0::`) line, and
//! its container from whichever line names one — the v2 path, else the v1 controllers
//! in the order [`V1_PREFERENCE`]. The eBPF cgroup id is a v2 id: on a v1-only process
//! it is the v2 root's, so it names the cgroup only when procfs cannot (a process gone
//! before first sight), and a v1 container is then not seen.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::container::{self, ContainerInfo};

/// Finds the cgroup2 mount point in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The cgroup v2 path (`0::/path` line) in a `/proc/<pid>/cgroup` text.
pub fn cgroup_v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The v1 controllers whose paths are read for a container, most trusted first (the
/// kubelet and the runtimes place a container in all of them alike).
pub const V1_PREFERENCE: [&str; 4] = ["cpu", "memory", "pids", "name=systemd"];

/// The lines of a `/proc/<pid>/cgroup` text: the v2 path and the v1 hierarchies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The `0::` line's path (v2 unified hierarchy; `/` on a v1-only process).
    pub v2: Option<String>,
    /// (controllers, path) of each v1 line, e.g. ("cpu,cpuacct", "/docker/…").
    pub v1: Vec<(String, String)>,
}

impl ProcCgroups {
    /// Parses a `/proc/<pid>/cgroup` text (`ID:CONTROLLERS:PATH` per line).
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim().to_string();
            if id == "0" && controllers.is_empty() {
                out.v2 = Some(path);
            } else if !controllers.is_empty() {
                out.v1.push((controllers.to_string(), path));
            }
        }
        out
    }

    /// The container this process is in: from the v2 path, else from the v1 lines in
    /// [`V1_PREFERENCE`] order, then any other v1 line.
    pub fn container(&self) -> Option<ContainerInfo> {
        if let Some(c) = self.v2.as_deref().and_then(container::parse) {
            return Some(c);
        }
        let rank = |controllers: &str| {
            (V1_PREFERENCE.iter())
                .position(|p| controllers.split(',').any(|c| c == *p))
                .unwrap_or(V1_PREFERENCE.len())
        };
        let mut v1: Vec<&(String, String)> = self.v1.iter().collect();
        v1.sort_by_key(|(controllers, _)| rank(controllers));
        v1.iter().find_map(|(_, path)| container::parse(path))
    }
}

/// How this host's cgroups are mounted: where the eBPF cgroup ids come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup2 alone, at this mount point (ids and containers from one tree).
    Unified(PathBuf),
    /// v1 controllers and a cgroup2 tree at this mount point beside them (ids from the
    /// cgroup2 tree; containers from it or the v1 paths).
    Hybrid(PathBuf),
    /// v1 only: no cgroup ids (containers from the v1 paths of procfs).
    V1,
    /// No cgroup mount seen.
    None,
}

impl Hierarchy {
    /// The hierarchy a `/proc/self/mountinfo` text describes.
    pub fn of(mountinfo: &str) -> Self {
        let v1 = mountinfo.lines().any(|line| {
            line.split_once(" - ")
                .is_some_and(|(_, right)| right.split_whitespace().next() == Some("cgroup"))
        });
        match (cgroup2_mount(mountinfo), v1) {
            (Some(at), false) => Self::Unified(at),
            (Some(at), true) => Self::Hybrid(at),
            (None, true) => Self::V1,
            (None, false) => Self::None,
        }
    }

    /// This host's.
    pub fn host() -> Self {
        Self::of(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }
}

/// The container id in a cgroup path (docker, containerd, cri-o, podman, kubepods): the
/// last path segment holding a 64-hex-digit id.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    container::parse(cgroup_path).map(|c| c.id)
}

/// Resolves cgroup ids (inode numbers in the cgroup2 tree) to paths, walking the tree
/// again only when an unknown id shows up, at most once per `refresh_ns`.
#[derive(Debug)]
pub struct CgroupResolver {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_walk_ns: Option<u64>,
    refresh_ns: u64,
}

impl CgroupResolver {
    /// A resolver for the cgroup2 tree mounted at `root` (None: ids stay unresolved).
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            last_walk_ns: None,
            refresh_ns: 5_000_000_000,
        }
    }

    /// A resolver for this host's cgroup2 mount, if there is one.
    pub fn for_host() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::new(cgroup2_mount(&mountinfo))
    }

    /// The path of cgroup `id` relative to the cgroup2 root ("/" for the root).
    pub fn path(&mut self, id: u64, now_ns: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let stale = self
            .last_walk_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= self.refresh_ns);
        if stale && let Some(root) = self.root.clone() {
            self.last_walk_ns = Some(now_ns);
            self.paths.clear();
            walk(&root, &root, &mut self.paths, 0);
        }
        self.paths.get(&id).cloned()
    }
}

fn walk(root: &Path, dir: &Path, paths: &mut HashMap<u64, String>, depth: usize) {
    if depth > 32 {
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
        paths.insert(meta.ino(), format!("/{}", rel.display()));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), paths, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_in_hybrid_layout() {
        let mountinfo = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw"), None);
    }

    #[test]
    fn reads_v2_line_among_v1_lines() {
        let text = "12:cpu:/user.slice\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            cgroup_v2_path(text).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(cgroup_v2_path("3:cpu:/\n"), None);
    }

    #[test]
    fn extracts_container_ids() {
        let id = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";
        assert_eq!(id.len(), 64);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/docker/{id}"),
            format!("/kubepods/besteffort/pod1234/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn v1_lines_name_the_container_when_the_v2_line_does_not() {
        let id = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";
        let uid = "0b4d7b3e-6a8c-4c39-9a55-2f1e8d6c7a10";
        // A v1 node, cgroupfs driver: the v2 line is the root.
        let text = format!(
            "12:pids:/kubepods/burstable/pod{uid}/{id}\n\
             4:cpu,cpuacct:/kubepods/burstable/pod{uid}/{id}\n\
             2:cpuset:/\n\
             1:name=systemd:/kubepods/burstable/pod{uid}/{id}\n\
             0::/\n"
        );
        let cg = ProcCgroups::parse(&text);
        assert_eq!(cg.v2.as_deref(), Some("/"));
        assert_eq!(cg.v1.len(), 4);
        assert_eq!(
            cg.v1[1],
            (
                "cpu,cpuacct".into(),
                format!("/kubepods/burstable/pod{uid}/{id}")
            )
        );
        let c = cg.container().unwrap();
        assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (id, Some(uid)));
        // Only an odd controller places it (a runtime that skipped the others).
        let c = ProcCgroups::parse(&format!("3:devices:/docker/{id}\n1:cpu:/\n0::/\n"))
            .container()
            .unwrap();
        assert_eq!(c.id, id);
        // The preferred controller wins when the lines disagree.
        let other = "b".repeat(64);
        let c = ProcCgroups::parse(&format!(
            "5:memory:/docker/{other}\n4:cpu,cpuacct:/docker/{id}\n"
        ))
        .container()
        .unwrap();
        assert_eq!(c.id, id);
        // A hybrid host: the v2 line wins.
        let c = ProcCgroups::parse(&format!(
            "4:cpu:/docker/{other}\n0::/system.slice/docker-{id}.scope\n"
        ))
        .container()
        .unwrap();
        assert_eq!(c.id, id);
        // This host's own, whatever it is, parses without a container for the tests.
        let own = ProcCgroups::parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        assert!(own.v2.is_some() || !own.v1.is_empty());
    }

    #[test]
    fn tells_the_hierarchy_from_mountinfo() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let v1 = "32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let hybrid = format!("31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n{v1}");
        assert_eq!(
            Hierarchy::of(unified),
            Hierarchy::Unified("/sys/fs/cgroup".into())
        );
        assert_eq!(
            Hierarchy::of(&hybrid),
            Hierarchy::Hybrid("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(Hierarchy::of(v1), Hierarchy::V1);
        assert_eq!(Hierarchy::of(""), Hierarchy::None);
    }

    #[test]
    fn resolves_ids_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let ino = std::fs::metadata(dir.path().join("a/b")).unwrap().ino();
        let mut r = CgroupResolver::new(Some(dir.path().to_path_buf()));
        assert_eq!(r.path(ino, 0).as_deref(), Some("/a/b"));
        assert_eq!(r.path(0, 0), None);
        assert_eq!(r.path(u64::MAX, 1), None);
    }
}
