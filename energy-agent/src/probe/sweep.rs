//! Liveness sweeps of the kernel maps keyed by thread: the one mechanism that removes
//! the entries of threads that are gone when nothing else will.
//!
//! The programs remove a thread's `TASKS` and `EXITING` entries (and free its hot-task
//! cache slots) at its final switch,
//! and nothing removes `GPU_ACTIVITY` or a `SYNC_ENTRY` left by a thread killed in a
//! synchronize call. A final switch the programs miss (a recursion-guard skip, an
//! entry re-created after it) would leave an entry for ever, and the map would fill.
//! So every map keyed by thread is swept with [`Sweep`]: an entry whose thread did
//! nothing since the last sweep and no longer exists in procfs is removed. Liveness is
//! asked only of the idle entries, and `TASKS`/`EXITING` are swept every
//! [`ProbeConfig::sweep_every`](super::ProbeConfig) (10 s), so the common case costs
//! nothing.
//!
//! A thread is gone from procfs a little before its final switch (it is unhashed in
//! `exit_notify`); an entry idle through a whole sweep period in that window would be
//! removed and its last sliver of on-CPU time (what runs between the unhashing and the
//! final switch, microseconds) would not be reported. The map stays right either way:
//! the final switch re-creates the entry and removes it again.

use std::{collections::HashSet, hash::Hash, path::Path};

use energy_common::{TaskKey, TaskTime};

use super::Probe;

/// Which entries of a map keyed by thread belong to threads that are gone.
#[derive(Debug)]
pub struct Sweep<K> {
    every_ns: u64,
    last_ns: Option<u64>,
    active: HashSet<K>,
}

impl<K> Default for Sweep<K> {
    /// A sweep at every call.
    fn default() -> Self {
        Self {
            every_ns: 0,
            last_ns: None,
            active: HashSet::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Sweep<K> {
    /// A sweep at most every `every_ns` (0: at every call).
    pub fn new(every_ns: u64) -> Self {
        Self {
            every_ns,
            ..Self::default()
        }
    }

    /// Notes that `key`'s thread did something since the last sweep: its entry is in
    /// use, whatever procfs says.
    pub fn active(&mut self, key: K) {
        self.active.insert(key);
    }

    /// When a sweep is due at `now_ns`: the keys among `present` (the map's) whose
    /// thread did nothing since the last sweep and is gone (`alive` is asked of those
    /// only). Starts the next period.
    pub fn due(
        &mut self,
        now_ns: u64,
        present: impl IntoIterator<Item = K>,
        alive: impl Fn(&K) -> bool,
    ) -> Vec<K> {
        if self
            .last_ns
            .is_some_and(|last| now_ns.saturating_sub(last) < self.every_ns)
        {
            return Vec::new();
        }
        self.last_ns = Some(now_ns);
        let gone = present
            .into_iter()
            .filter(|k| !self.active.contains(k) && !alive(k))
            .collect();
        self.active.clear();
        gone
    }
}

/// Whether thread `key` still exists (its /proc entry is there).
pub fn thread_alive(key: &TaskKey) -> bool {
    Path::new(&format!("/proc/{}/task/{}", key.tgid, key.pid)).exists()
}

/// Whether thread id `tid` still exists (/proc/<tid> answers for any thread).
pub fn tid_alive(tid: &u32) -> bool {
    Path::new(&format!("/proc/{tid}")).exists()
}

impl Probe {
    /// Sweeps `TASKS` (`snapshot`: its entries as just read; `ran`: the threads that
    /// ran since the last read) and `EXITING` when due; returns how many `TASKS`
    /// entries it removed.
    pub(super) fn sweep_tasks(
        &mut self,
        snapshot: &[(TaskKey, Vec<TaskTime>)],
        ran: impl IntoIterator<Item = TaskKey>,
        now_ns: u64,
    ) -> usize {
        for key in ran {
            self.task_sweep.active(key);
        }
        let gone = self
            .task_sweep
            .due(now_ns, snapshot.iter().map(|(k, _)| *k), thread_alive);
        let removed = gone
            .iter()
            .filter(|k| {
                let in_map = self.tasks.remove(k).is_ok();
                let in_cache = self.cache.release(k) > 0;
                in_map || in_cache
            })
            .count();
        self.swept.tasks += removed as u64;
        // EXITING holds a thread from sched_process_exit to its final switch; nothing
        // marks one active, so only a gone thread's entry is ever removed.
        let exiting: Vec<u32> = self.exiting.keys().filter_map(Result::ok).collect();
        for tid in self.exiting_sweep.due(now_ns, exiting, tid_alive) {
            if self.exiting.remove(&tid).is_ok() {
                self.swept.exiting += 1;
            }
        }
        removed
    }
}

/// Entries the sweeps removed since the probe started.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Swept {
    pub tasks: u64,
    pub exiting: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_entries_of_gone_threads_are_swept_and_only_when_due() {
        let mut sweep = Sweep::new(10);
        // Threads 100 and up are gone.
        let alive = |k: &u32| *k < 100;
        // The first call sweeps: 100 and 101 are gone, but 101 ran since.
        sweep.active(101);
        assert_eq!(sweep.due(0, [1, 100, 101], alive), [100]);
        // Not due again before 10 ns; activity counts until the next sweep.
        sweep.active(102);
        assert!(sweep.due(5, [1, 101, 102], alive).is_empty());
        assert_eq!(sweep.due(10, [1, 101, 102], alive), [101]);
        // Activity is forgotten after each sweep.
        assert!(sweep.due(15, [102], alive).is_empty());
        assert_eq!(sweep.due(20, [102], alive), [102]);
    }

    #[test]
    fn alive_is_asked_of_idle_entries_only() {
        let mut sweep = Sweep::default();
        sweep.active(7);
        let asked = std::cell::RefCell::new(Vec::new());
        let gone = sweep.due(0, [7, 8], |k| {
            asked.borrow_mut().push(*k);
            true
        });
        assert!(gone.is_empty());
        assert_eq!(*asked.borrow(), [8]);
    }

    #[test]
    fn liveness_is_read_from_procfs() {
        let me = std::process::id();
        assert!(thread_alive(&TaskKey { tgid: me, pid: me }));
        assert!(tid_alive(&me));
        // Above the kernel's pid limit (4_194_304 at most): never a thread.
        assert!(!tid_alive(&4_194_305));
        assert!(!thread_alive(&TaskKey {
            tgid: me,
            pid: 4_194_305
        }));
    }
}
