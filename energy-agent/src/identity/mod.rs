//! Who a pid is: name, command line, executable, cgroup and container, cached per
//! process and kept current from the probe's exec/exit records.

pub mod cgroup;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use cgroup::CgroupResolver;

use crate::probe::Lifecycle;

/// What the agent knows about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Kernel task name (`comm`).
    pub comm: String,
    /// Command line; empty when it could not be read (kernel threads, exited processes).
    pub cmdline: Vec<String>,
    /// File name of the executable, or `comm` when unknown.
    pub exe_name: String,
    /// Cgroup v2 path, when known.
    pub cgroup: Option<String>,
    /// Container id parsed from the cgroup path, when it is a container.
    pub container_id: Option<String>,
    /// Whether the process has exited.
    pub exited: bool,
}

/// Process identities, read from procfs on first sight and kept until the process ends.
pub struct Identity {
    proc_root: PathBuf,
    cache: HashMap<u32, ProcessInfo>,
    cgroups: CgroupResolver,
    dead: Vec<u32>,
}

impl Identity {
    /// Identities read from `proc_root` (normally `/proc`), cgroups from `cgroups`.
    pub fn new(proc_root: impl Into<PathBuf>, cgroups: CgroupResolver) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
            cgroups,
            dead: Vec::new(),
        }
    }

    /// Identities of this host's processes.
    pub fn for_host() -> Self {
        Self::new("/proc", CgroupResolver::for_host())
    }

    /// Applies exec and exit records: an exec re-reads the process, an exit of its last
    /// thread marks it exited (kept until [`Identity::forget_exited`]).
    pub fn observe(&mut self, lifecycle: &[Lifecycle], now_ns: u64) {
        for event in lifecycle {
            match event {
                Lifecycle::Exec { tgid, comm, .. } => {
                    let mut info = self.read(*tgid);
                    if info.comm.is_empty() || info.exited {
                        info.comm = comm.clone();
                    }
                    self.cache.insert(*tgid, info);
                }
                Lifecycle::Exit {
                    tgid,
                    comm,
                    group_dead,
                    cgroup_id,
                    ..
                } if *group_dead => {
                    let info = self.cache.entry(*tgid).or_insert_with(|| ProcessInfo {
                        pid: *tgid,
                        comm: comm.clone(),
                        exe_name: comm.clone(),
                        ..Default::default()
                    });
                    info.exited = true;
                    if info.cgroup.is_none() {
                        info.cgroup = self.cgroups.path(*cgroup_id, now_ns);
                        info.container_id = info.cgroup.as_deref().and_then(cgroup::container_id);
                    }
                    self.dead.push(*tgid);
                }
                _ => {}
            }
        }
    }

    /// The identity of process `pid`, reading procfs the first time it is asked for.
    /// `cgroup_id` (from the probe) names the cgroup when procfs cannot.
    pub fn process(&mut self, pid: u32, cgroup_id: u64, now_ns: u64) -> &ProcessInfo {
        if !self.cache.contains_key(&pid) {
            let mut info = self.read(pid);
            if info.cgroup.is_none() {
                info.cgroup = self.cgroups.path(cgroup_id, now_ns);
                info.container_id = info.cgroup.as_deref().and_then(cgroup::container_id);
            }
            self.cache.insert(pid, info);
        }
        &self.cache[&pid]
    }

    /// Drops processes that exited; call after the interval that reported them.
    pub fn forget_exited(&mut self) {
        for pid in self.dead.drain(..) {
            if self.cache.get(&pid).is_some_and(|i| i.exited) {
                self.cache.remove(&pid);
            }
        }
    }

    /// Number of cached processes.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    fn read(&self, pid: u32) -> ProcessInfo {
        let dir = self.proc_root.join(pid.to_string());
        let comm = read_trimmed(&dir.join("comm")).unwrap_or_default();
        let cmdline = read_cmdline(&dir);
        let exe_name = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .or_else(|| {
                cmdline
                    .first()
                    .and_then(|a| Path::new(a).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| comm.clone());
        let cgroup = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|t| cgroup::cgroup_v2_path(&t));
        ProcessInfo {
            pid,
            container_id: cgroup.as_deref().and_then(cgroup::container_id),
            exited: comm.is_empty(),
            comm,
            cmdline,
            exe_name,
            cgroup,
        }
    }
}

/// The command line of the process whose procfs directory is `dir` (`/proc/<pid>`):
/// its NUL-separated arguments, empty ones left out, read as lossy UTF-8. Empty when
/// it cannot be read (kernel threads, exited processes). The one reading of
/// `cmdline`, for identities and for the receiver's `--service` rules alike.
pub fn read_cmdline(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("comm"), "python3\n").unwrap();
        std::fs::write(
            p.join("cmdline"),
            b"/usr/bin/python3\0serve.py\0--model\0llama\0",
        )
        .unwrap();
        std::fs::write(p.join("cgroup"), "0::/system.slice/vllm.service\n").unwrap();
        dir
    }

    #[test]
    fn reads_a_live_process() {
        let dir = fake_proc();
        let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
        let info = id.process(42, 0, 0).clone();
        assert_eq!(info.comm, "python3");
        assert_eq!(
            info.cmdline,
            vec!["/usr/bin/python3", "serve.py", "--model", "llama"]
        );
        assert_eq!(info.exe_name, "python3");
        assert_eq!(info.cgroup.as_deref(), Some("/system.slice/vllm.service"));
        assert!(!info.exited);
    }

    #[test]
    fn command_lines_skip_empty_arguments_and_unreadable_ones_are_empty() {
        let dir = fake_proc();
        let p = dir.path().join("42");
        std::fs::write(p.join("cmdline"), b"a\0\0b c\0").unwrap();
        assert_eq!(read_cmdline(&p), vec!["a", "b c"]);
        assert!(
            read_cmdline(&dir.path().join("43")).is_empty(),
            "no such process"
        );
    }

    #[test]
    fn exited_process_keeps_its_exit_name_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
        id.observe(
            &[Lifecycle::Exit {
                tgid: 7,
                tid: 7,
                comm: "short".into(),
                group_dead: true,
                cgroup_id: 0,
                ts_ns: 0,
            }],
            0,
        );
        let info = id.process(7, 0, 0);
        assert_eq!(info.comm, "short");
        assert!(info.exited);
        id.forget_exited();
        assert!(id.is_empty());
    }

    #[test]
    fn exec_refreshes_the_name() {
        let dir = fake_proc();
        let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
        std::fs::write(dir.path().join("42/comm"), "bash\n").unwrap();
        assert_eq!(id.process(42, 0, 0).comm, "bash");
        std::fs::write(dir.path().join("42/comm"), "python3\n").unwrap();
        id.observe(
            &[Lifecycle::Exec {
                tgid: 42,
                comm: "python3".into(),
                ts_ns: 0,
            }],
            0,
        );
        assert_eq!(id.process(42, 0, 0).comm, "python3");
    }
}
