//! Cgroup v2 ids (what `bpf_get_current_cgroup_id` returns) to paths and container ids.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

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

/// The container id in a cgroup path (docker, containerd, cri-o, podman, kubepods): the
/// last path segment holding a 64-hex-digit id.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.rsplit('/').find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = segment.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
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
