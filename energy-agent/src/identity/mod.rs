//! Who a pid is: name, command line, executable, cgroup and container, cached per
//! process and kept current from the probe's exec/exit records.
//!
//! A process is its pid *and* its start time (`/proc/<pid>/stat` field 22): the cache
//! holds at most one identity per pid, tagged with the start time it was read with,
//! and every lookup of a live entry checks that tag against procfs, so a reused pid —
//! a later process — is read afresh and never inherits the name, model or container of
//! the one before. Entries leave on the exit record of a process's last thread
//! (`group_dead`), and otherwise by liveness: a lookup that finds the process gone, the
//! check of a leader whose exit record could not say whether the process ended (kernels
//! without `group_dead`, a full exiting map), and a sweep of the entries no lookup
//! checked, every [`SWEEP_NS`]. So the cache holds the live processes that ran, plus
//! the last interval's dead, whatever records the kernel could send.

pub mod cgroup;
pub mod container;
pub mod k8s;
mod procfs;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, path::PathBuf};

use cgroup::CgroupResolver;
use container::ContainerInfo;
use k8s::Pods;
pub use procfs::{parse_start_time, read_cmdline};

use crate::probe::Lifecycle;

/// How often the entries no lookup checked are checked for liveness (monotonic ns).
pub const SWEEP_NS: u64 = 10_000_000_000;

/// What the agent knows about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Start time of the process this identity was read from (clock ticks after boot,
    /// as `/proc/<pid>/stat` gives it); None when it was never seen alive.
    pub start_time: Option<u64>,
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
    /// The container in full: runtime, pod uid and QoS class from the cgroup path, pod
    /// name, namespace and labels from the pod metadata when it is known.
    pub container: Option<ContainerInfo>,
    /// Whether the process has exited.
    pub exited: bool,
}

#[derive(Debug)]
struct Entry {
    info: ProcessInfo,
    /// When a lookup or a sweep last found it alive (monotonic ns).
    checked_ns: u64,
    /// The pod index generation its container was looked up in (0: never).
    pods_generation: u64,
}

/// Process identities, read from procfs on first sight and kept while the process
/// lives (see the module documentation).
pub struct Identity {
    proc_root: PathBuf,
    cache: HashMap<u32, Entry>,
    cgroups: CgroupResolver,
    /// Pod metadata, when a source is configured.
    pods: Option<Pods>,
    /// Pids to forget after the interval: their exit record came, or they were gone.
    dead: Vec<u32>,
    /// Leaders that exited this interval without saying whether their process ended:
    /// (name, cgroup id) from the exit record, for a process procfs no longer has.
    leader_exits: HashMap<u32, (String, u64)>,
    now_ns: u64,
    last_sweep_ns: u64,
}

impl Identity {
    /// Identities read from `proc_root` (normally `/proc`), cgroups from `cgroups`.
    pub fn new(proc_root: impl Into<PathBuf>, cgroups: CgroupResolver) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
            cgroups,
            pods: None,
            dead: Vec::new(),
            leader_exits: HashMap::new(),
            now_ns: 0,
            last_sweep_ns: 0,
        }
    }

    /// Identities of this host's processes.
    pub fn for_host() -> Self {
        Self::new("/proc", CgroupResolver::for_host())
    }

    /// Adds pod metadata: containers in pods get their pod's name, namespace and
    /// labels once the pod list names them.
    pub fn with_pods(mut self, pods: Pods) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The pod metadata source, when one is configured.
    pub fn pods(&self) -> Option<&Pods> {
        self.pods.as_ref()
    }

    /// Applies exec and exit records: an exec re-reads the process, an exit of its last
    /// thread marks it exited (kept until [`Identity::forget_exited`]); a leader's exit
    /// that does not say so has its liveness checked then.
    pub fn observe(&mut self, lifecycle: &[Lifecycle], now_ns: u64) {
        self.now_ns = now_ns;
        for event in lifecycle {
            match event {
                Lifecycle::Exec { tgid, comm, .. } => {
                    let mut info = self.read(*tgid);
                    if info.comm.is_empty() || info.exited {
                        info.comm = comm.clone();
                    }
                    if info.exited {
                        self.dead.push(*tgid);
                    }
                    self.insert(info);
                }
                Lifecycle::Exit {
                    tgid,
                    comm,
                    group_dead: true,
                    cgroup_id,
                    ..
                } => self.exited(*tgid, comm, *cgroup_id, now_ns),
                Lifecycle::Exit {
                    tgid,
                    tid,
                    comm,
                    cgroup_id,
                    ..
                } if tid == tgid => {
                    self.leader_exits.insert(*tgid, (comm.clone(), *cgroup_id));
                }
                _ => {}
            }
        }
    }

    /// Marks process `tgid` exited from its exit record (named from it when unknown).
    fn exited(&mut self, tgid: u32, comm: &str, cgroup_id: u64, now_ns: u64) {
        let entry = self.cache.entry(tgid).or_insert_with(|| Entry {
            info: ProcessInfo {
                pid: tgid,
                comm: comm.to_string(),
                exe_name: comm.to_string(),
                ..Default::default()
            },
            checked_ns: now_ns,
            pods_generation: 0,
        });
        let info = &mut entry.info;
        info.exited = true;
        if info.cgroup.is_none() {
            info.cgroup = self.cgroups.path(cgroup_id, now_ns);
            set_container(info);
        }
        self.dead.push(tgid);
    }

    /// The identity of process `pid`, reading procfs the first time it is asked for and
    /// again when the pid now belongs to another process. `cgroup_id` (from the probe)
    /// names the cgroup when procfs cannot.
    pub fn process(&mut self, pid: u32, cgroup_id: u64, now_ns: u64) -> &ProcessInfo {
        let known = match self.cache.get(&pid) {
            Some(e) if e.info.exited => true,
            Some(e) => match procfs::start_time(&self.dir(pid)) {
                same @ Some(_) if same == e.info.start_time => {
                    self.touch(pid, now_ns);
                    true
                }
                // Gone: the time of this interval was still its own.
                None => {
                    self.gone(pid);
                    true
                }
                // Another process has the pid now.
                Some(_) => false,
            },
            None => false,
        };
        if !known {
            let mut info = self.read(pid);
            if info.exited {
                // Gone before first sight: named from its leader's exit record, if any.
                if let Some((comm, exit_cgroup)) = self.leader_exits.get(&pid) {
                    info.comm.clone_from(comm);
                    info.exe_name.clone_from(comm);
                    if cgroup_id == 0 {
                        info.cgroup = self.cgroups.path(*exit_cgroup, now_ns);
                    }
                }
                self.dead.push(pid);
            }
            if info.cgroup.is_none() {
                info.cgroup = self.cgroups.path(cgroup_id, now_ns);
                set_container(&mut info);
            }
            self.insert(info);
        }
        self.attach_pod(pid);
        &self.cache[&pid].info
    }

    /// Gives a cached container its pod's metadata from the latest pod index (once per
    /// index); asks for an early fetch when the index lacks the pod.
    fn attach_pod(&mut self, pid: u32) {
        let Some(pods) = &self.pods else {
            return;
        };
        let Some(entry) = self.cache.get_mut(&pid) else {
            return;
        };
        let Some(c) = entry.info.container.as_mut() else {
            return;
        };
        let (generation, index) = pods.index();
        if generation == 0 || entry.pods_generation == generation {
            return;
        }
        entry.pods_generation = generation;
        match index.pod_for(c) {
            Some((pod, name)) => {
                c.pod_uid.get_or_insert_with(|| pod.uid.clone());
                c.pod = Some(pod);
                c.container_name = name;
            }
            // A pod the list does not have yet: it started after the last fetch.
            None if c.pod_uid.is_some() => pods.request_refresh(),
            None => {}
        }
    }

    /// Drops processes that exited or are gone; call after the interval that reported
    /// them. Checks the leaders whose exit did not say whether their process ended,
    /// and, every [`SWEEP_NS`], every entry no lookup checked in this interval.
    pub fn forget_exited(&mut self) {
        for pid in self.dead.drain(..) {
            if self.cache.get(&pid).is_some_and(|e| e.info.exited) {
                self.cache.remove(&pid);
            }
        }
        let leaders: Vec<u32> = self.leader_exits.drain().map(|(pid, _)| pid).collect();
        for pid in leaders {
            self.forget_if_gone(pid);
        }
        if self.now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_NS {
            let unchecked: Vec<u32> = (self.cache.iter())
                .filter(|(_, e)| e.checked_ns < self.now_ns)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in unchecked {
                self.forget_if_gone(pid);
            }
            self.last_sweep_ns = self.now_ns;
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

    /// Forgets `pid` unless procfs still has the process its identity was read from.
    fn forget_if_gone(&mut self, pid: u32) {
        let Some(entry) = self.cache.get(&pid) else {
            return;
        };
        let now = procfs::start_time(&self.dir(pid));
        if now.is_some() && now == entry.info.start_time {
            self.touch(pid, self.now_ns);
        } else {
            self.cache.remove(&pid);
        }
    }

    /// Marks a cached process exited, to be forgotten after this interval.
    fn gone(&mut self, pid: u32) {
        if let Some(e) = self.cache.get_mut(&pid) {
            e.info.exited = true;
            self.dead.push(pid);
        }
    }

    fn touch(&mut self, pid: u32, now_ns: u64) {
        if let Some(e) = self.cache.get_mut(&pid) {
            e.checked_ns = now_ns;
        }
    }

    fn insert(&mut self, info: ProcessInfo) {
        let entry = Entry {
            info,
            checked_ns: self.now_ns,
            pods_generation: 0,
        };
        self.cache.insert(entry.info.pid, entry);
    }

    fn dir(&self, pid: u32) -> PathBuf {
        self.proc_root.join(pid.to_string())
    }

    fn read(&self, pid: u32) -> ProcessInfo {
        procfs::read(pid, &self.dir(pid))
    }
}

/// The container a process's cgroup path (from its eBPF cgroup id) names.
fn set_container(info: &mut ProcessInfo) {
    info.container = info.cgroup.as_deref().and_then(container::parse);
    info.container_id = info.container.as_ref().map(|c| c.id.clone());
}
