//! Turns the kernel's cumulative per-thread, per-CPU counters into per-interval deltas.
//!
//! Pure logic (no syscalls), so every rule here is unit-tested:
//! - a delta is never negative: each (thread, CPU) keeps the highest total reported;
//! - a thread's final totals (exit records) close its account exactly, once;
//! - the running slice of a thread that has not switched out yet is included when the
//!   reader saw the CPU's state unchanged across the map read (see [`Running`]);
//! - accounts of threads that vanished without an exit record (a lost event) are
//!   dropped after a grace period, so memory stays bounded.

use std::collections::HashMap;

use energy_common::{
    COMM_LEN, CpuState, EVENT_EXEC, EVENT_EXIT, EVENT_EXIT_CPU, EVENT_FORK, Event, TaskKey,
    TaskTime,
};

/// Rounds an account may go unseen before it is dropped (its exit record was lost).
const GRACE_ROUNDS: u64 = 3;
/// Rounds a finished thread's key is remembered, so a stale map read cannot revive it.
const DEAD_ROUNDS: u64 = 3;

/// On-CPU time of one thread on one CPU during one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSlice {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the time was spent on.
    pub cpu: u32,
    /// Nanoseconds on that CPU in the interval.
    pub on_cpu_ns: u64,
    /// Cgroup v2 id (0 = not known yet).
    pub cgroup_id: u64,
}

/// The thread a CPU was running while the maps were read, seen consistently (the CPU's
/// switch counter was the same, and even, before and after the read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The CPU.
    pub cpu: u32,
    /// Thread id running there.
    pub pid: u32,
    /// Its process id.
    pub tgid: u32,
    /// What it has run since it was switched in, ns.
    pub ran_ns: u64,
}

/// A process lifecycle change seen by the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A thread finished.
    Exit {
        /// Process id.
        tgid: u32,
        /// Thread id.
        tid: u32,
        /// Its name at exit.
        comm: String,
        /// Whether it was the last thread of the process.
        group_dead: bool,
        /// Cgroup v2 id.
        cgroup_id: u64,
        /// When (monotonic ns).
        ts_ns: u64,
    },
    /// A process called exec.
    Exec {
        /// Process id.
        tgid: u32,
        /// Its new name.
        comm: String,
        /// When (monotonic ns).
        ts_ns: u64,
    },
    /// A task created another.
    Fork {
        /// Parent process id.
        parent_tgid: u32,
        /// The child's thread id (its pid, for a new process).
        child: u32,
        /// When (monotonic ns).
        ts_ns: u64,
    },
}

/// Decodes a NUL-padded kernel task name.
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[derive(Clone, Copy, Debug)]
struct Account {
    reported_ns: u64,
    seen_round: u64,
}

/// Per-(thread, CPU) high-water marks that turn cumulative counters into deltas.
#[derive(Debug, Default)]
pub struct Accountant {
    accounts: HashMap<(TaskKey, u32), Account>,
    dead: HashMap<TaskKey, u64>,
    round: u64,
}

/// What one accounting round produced.
#[derive(Debug, Default)]
pub struct Round {
    /// On-CPU time per thread and CPU in the interval.
    pub slices: Vec<TaskSlice>,
    /// Exits, execs and forks, in the order the kernel reported them.
    pub lifecycle: Vec<Lifecycle>,
}

impl Accountant {
    /// An accountant with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (thread, CPU) accounts held.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// One round: `events` drained from the ring buffer (before the map was read), the
    /// map `snapshot` (per-CPU values indexed by CPU) and the consistently seen
    /// `running` threads with their current slices.
    pub fn account(
        &mut self,
        events: &[Event],
        snapshot: &[(TaskKey, Vec<TaskTime>)],
        running: &[Running],
    ) -> Round {
        self.round += 1;
        let mut out = Round::default();
        for event in events {
            self.apply_event(event, &mut out);
        }
        self.report_snapshot(snapshot, running, &mut out.slices);
        self.forget_stale();
        out
    }

    /// One ring-buffer record: a thread's final totals close its account on that CPU,
    /// its exit closes the rest (and marks it dead, so a stale map read cannot revive
    /// it); exits, execs and forks become lifecycle records.
    fn apply_event(&mut self, event: &Event, out: &mut Round) {
        let key = TaskKey {
            tgid: event.tgid,
            pid: event.pid,
        };
        match event.kind {
            EVENT_EXIT_CPU => {
                let before = self
                    .accounts
                    .remove(&(key, event.cpu))
                    .map_or(0, |a| a.reported_ns);
                push_slice(
                    &mut out.slices,
                    key,
                    event.cpu,
                    event.value,
                    before,
                    event.cgroup_id,
                );
                self.dead.insert(key, self.round);
            }
            EVENT_EXIT => {
                self.accounts.retain(|(k, _), _| *k != key);
                self.dead.insert(key, self.round);
                out.lifecycle.push(Lifecycle::Exit {
                    tgid: key.tgid,
                    tid: key.pid,
                    comm: comm_str(&event.comm),
                    group_dead: event.value != 0,
                    cgroup_id: event.cgroup_id,
                    ts_ns: event.ts_ns,
                });
            }
            EVENT_EXEC => out.lifecycle.push(Lifecycle::Exec {
                tgid: key.tgid,
                comm: comm_str(&event.comm),
                ts_ns: event.ts_ns,
            }),
            EVENT_FORK => out.lifecycle.push(Lifecycle::Fork {
                parent_tgid: key.tgid,
                child: event.value as u32,
                ts_ns: event.ts_ns,
            }),
            other => log::debug!("unknown probe event kind {other}"),
        }
    }

    /// The map's totals of the live threads, each with the slice it is running now on
    /// that CPU; then the running threads the map does not have yet (they have not
    /// switched out since they started): their live slice alone.
    fn report_snapshot(
        &mut self,
        snapshot: &[(TaskKey, Vec<TaskTime>)],
        running: &[Running],
        slices: &mut Vec<TaskSlice>,
    ) {
        let running_on: HashMap<u32, Running> = running
            .iter()
            .filter(|r| r.pid != 0)
            .map(|r| (r.cpu, *r))
            .collect();
        let mut running_left: HashMap<u32, Running> = running_on.clone();

        for (key, per_cpu) in snapshot {
            if self.dead.contains_key(key) {
                continue;
            }
            for (cpu, time) in per_cpu.iter().enumerate() {
                let cpu = cpu as u32;
                let mut total = time.on_cpu_ns;
                if let Some(r) = running_on.get(&cpu).filter(|r| r.pid == key.pid) {
                    total += r.ran_ns;
                    running_left.remove(&cpu);
                }
                if total > 0 {
                    self.report(slices, *key, cpu, total, time.cgroup_id);
                }
            }
        }

        for r in running_left.values() {
            let key = TaskKey {
                tgid: r.tgid,
                pid: r.pid,
            };
            if self.dead.contains_key(&key) {
                continue;
            }
            self.report(slices, key, r.cpu, r.ran_ns, 0);
        }
    }

    /// Drops the accounts not seen for [`GRACE_ROUNDS`] (their exit record was lost) and
    /// the finished threads' keys after [`DEAD_ROUNDS`].
    fn forget_stale(&mut self) {
        let round = self.round;
        self.accounts
            .retain(|_, a| round.saturating_sub(a.seen_round) < GRACE_ROUNDS);
        self.dead
            .retain(|_, &mut died| round.saturating_sub(died) < DEAD_ROUNDS);
    }

    fn report(
        &mut self,
        slices: &mut Vec<TaskSlice>,
        key: TaskKey,
        cpu: u32,
        total_ns: u64,
        cgroup_id: u64,
    ) {
        let round = self.round;
        let account = self.accounts.entry((key, cpu)).or_insert(Account {
            reported_ns: 0,
            seen_round: round,
        });
        account.seen_round = round;
        let before = account.reported_ns;
        account.reported_ns = before.max(total_ns);
        push_slice(slices, key, cpu, total_ns, before, cgroup_id);
    }
}

/// The running slices (one per CPU, from `before`) that a seqlock read can trust: the
/// CPU's switch counter is even and the same in `before` and `after`, on the same
/// thread, so no switch happened while the map was read.
pub(super) fn consistent_running(
    before: &[CpuState],
    after: &[CpuState],
    slices: Vec<Option<u64>>,
) -> Vec<Running> {
    before
        .iter()
        .zip(after)
        .zip(slices)
        .enumerate()
        .filter_map(|(cpu, ((b, a), ran))| {
            let consistent = b.seq == a.seq && a.seq % 2 == 0 && a.pid == b.pid;
            Some(Running {
                cpu: cpu as u32,
                pid: a.pid,
                tgid: a.tgid,
                ran_ns: ran.filter(|_| consistent)?,
            })
        })
        .collect()
}

fn push_slice(
    slices: &mut Vec<TaskSlice>,
    key: TaskKey,
    cpu: u32,
    total_ns: u64,
    before_ns: u64,
    cgroup_id: u64,
) {
    if total_ns > before_ns {
        slices.push(TaskSlice {
            tgid: key.tgid,
            tid: key.pid,
            cpu,
            on_cpu_ns: total_ns - before_ns,
            cgroup_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, pid: u32) -> TaskKey {
        TaskKey { tgid, pid }
    }

    fn times(ns: &[u64]) -> Vec<TaskTime> {
        ns.iter()
            .map(|&on_cpu_ns| TaskTime {
                on_cpu_ns,
                cgroup_id: 7,
            })
            .collect()
    }

    fn exit_cpu(k: TaskKey, cpu: u32, ns: u64) -> Event {
        Event {
            kind: EVENT_EXIT_CPU,
            cpu,
            tgid: k.tgid,
            pid: k.pid,
            value: ns,
            cgroup_id: 7,
            ..Default::default()
        }
    }

    fn exit(k: TaskKey, group_dead: bool) -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"burn");
        Event {
            kind: EVENT_EXIT,
            tgid: k.tgid,
            pid: k.pid,
            value: group_dead as u64,
            comm,
            ..Default::default()
        }
    }

    fn total(slices: &[TaskSlice], tid: u32) -> u64 {
        slices
            .iter()
            .filter(|s| s.tid == tid)
            .map(|s| s.on_cpu_ns)
            .sum()
    }

    #[test]
    fn deltas_between_reads() {
        let mut a = Accountant::new();
        let k = key(10, 10);
        let r1 = a.account(&[], &[(k, times(&[100, 50]))], &[]);
        assert_eq!(total(&r1.slices, 10), 150);
        let r2 = a.account(&[], &[(k, times(&[130, 50]))], &[]);
        assert_eq!(r2.slices.len(), 1);
        assert_eq!(r2.slices[0].cpu, 0);
        assert_eq!(r2.slices[0].on_cpu_ns, 30);
    }

    #[test]
    fn never_negative_when_a_counter_goes_back() {
        let mut a = Accountant::new();
        let k = key(10, 10);
        a.account(&[], &[(k, times(&[100]))], &[]);
        let r = a.account(&[], &[(k, times(&[90]))], &[]);
        assert!(r.slices.is_empty());
        let r = a.account(&[], &[(k, times(&[120]))], &[]);
        assert_eq!(total(&r.slices, 10), 20);
    }

    #[test]
    fn exit_records_close_the_account_exactly() {
        let mut a = Accountant::new();
        let k = key(10, 11);
        a.account(&[], &[(k, times(&[100, 0]))], &[]);
        let events = [exit_cpu(k, 0, 160), exit_cpu(k, 1, 40), exit(k, true)];
        let r = a.account(&events, &[], &[]);
        assert_eq!(total(&r.slices, 11), 100);
        assert!(a.is_empty());
        assert_eq!(
            r.lifecycle,
            vec![Lifecycle::Exit {
                tgid: 10,
                tid: 11,
                comm: "burn".into(),
                group_dead: true,
                cgroup_id: 0,
                ts_ns: 0
            }]
        );
        // A stale map read of the dead thread right after must not count it again.
        let r = a.account(&[], &[(k, times(&[160, 40]))], &[]);
        assert!(r.slices.is_empty());
    }

    #[test]
    fn short_lived_thread_seen_only_at_exit_is_counted() {
        let mut a = Accountant::new();
        let k = key(20, 20);
        let events = [exit_cpu(k, 1, 30_000_000), exit(k, true)];
        let r = a.account(&events, &[], &[]);
        assert_eq!(total(&r.slices, 20), 30_000_000);
        assert_eq!(r.slices[0].cpu, 1);
    }

    #[test]
    fn running_slice_is_included_and_not_double_counted() {
        let mut a = Accountant::new();
        let k = key(30, 31);
        let running = |ran| {
            [Running {
                cpu: 1,
                pid: 31,
                tgid: 30,
                ran_ns: ran,
            }]
        };
        // Switched out once with 100 ns on CPU 1, running again for 500 ns.
        let r = a.account(&[], &[(k, times(&[0, 100]))], &running(500));
        assert_eq!(total(&r.slices, 31), 600);
        // Still running: 1500 ns into its slice now.
        let r = a.account(&[], &[(k, times(&[0, 100]))], &running(1_500));
        assert_eq!(total(&r.slices, 31), 1_000);
        // It switched out after 2000 ns (charged) and CPU 1 is idle.
        let r = a.account(&[], &[(k, times(&[0, 2_100]))], &[]);
        assert_eq!(total(&r.slices, 31), 500);
    }

    #[test]
    fn running_thread_never_switched_out_is_counted_from_its_start() {
        let mut a = Accountant::new();
        let running = [Running {
            cpu: 0,
            pid: 41,
            tgid: 40,
            ran_ns: 1_000,
        }];
        let r = a.account(&[], &[], &running);
        assert_eq!(
            r.slices,
            vec![TaskSlice {
                tgid: 40,
                tid: 41,
                cpu: 0,
                on_cpu_ns: 1_000,
                cgroup_id: 0
            }]
        );
        // Its first switch-out charges the whole slice: only the rest is new.
        let r = a.account(&[], &[(key(40, 41), times(&[1_500]))], &[]);
        assert_eq!(total(&r.slices, 41), 500);
    }

    #[test]
    fn a_dead_threads_running_record_is_ignored() {
        let mut a = Accountant::new();
        let k = key(50, 50);
        a.account(&[exit_cpu(k, 0, 10), exit(k, true)], &[], &[]);
        let running = [Running {
            cpu: 0,
            pid: 50,
            tgid: 50,
            ran_ns: 99,
        }];
        let r = a.account(&[], &[], &running);
        assert!(r.slices.is_empty());
    }

    #[test]
    fn lost_exit_records_do_not_leak_accounts() {
        let mut a = Accountant::new();
        a.account(&[], &[(key(1, 1), times(&[5]))], &[]);
        assert_eq!(a.len(), 1);
        for _ in 0..GRACE_ROUNDS {
            a.account(&[], &[], &[]);
        }
        assert!(a.is_empty());
    }

    #[test]
    fn exec_and_fork_pass_through_in_order() {
        let mut a = Accountant::new();
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        let events = [
            Event {
                kind: EVENT_FORK,
                tgid: 5,
                pid: 5,
                value: 6,
                ..Default::default()
            },
            Event {
                kind: EVENT_EXEC,
                tgid: 6,
                pid: 6,
                comm,
                ..Default::default()
            },
        ];
        let r = a.account(&events, &[], &[]);
        assert_eq!(
            r.lifecycle,
            vec![
                Lifecycle::Fork {
                    parent_tgid: 5,
                    child: 6,
                    ts_ns: 0
                },
                Lifecycle::Exec {
                    tgid: 6,
                    comm: "cat".into(),
                    ts_ns: 0
                },
            ]
        );
    }

    #[test]
    fn comm_decoding_stops_at_nul_and_survives_full_length() {
        let mut comm = [b'x'; COMM_LEN];
        assert_eq!(comm_str(&comm).len(), COMM_LEN);
        comm[2] = 0;
        assert_eq!(comm_str(&comm), "xx");
    }

    #[test]
    fn only_slices_read_without_a_switch_in_between_are_trusted() {
        let cpu = |pid, seq| CpuState {
            pid,
            tgid: 1,
            seq,
            ..Default::default()
        };
        // CPU 0: steady. 1: switched during the read. 2: mid-switch. 3: same seq,
        // another thread (cannot happen with a working seqlock; still not trusted).
        // 4: steady, but no slice was read (idle).
        let before = [cpu(10, 4), cpu(11, 4), cpu(12, 5), cpu(13, 6), cpu(0, 8)];
        let after = [cpu(10, 4), cpu(11, 6), cpu(12, 5), cpu(14, 6), cpu(0, 8)];
        let slices = vec![Some(100), Some(200), Some(300), Some(400), None];
        let running = consistent_running(&before, &after, slices);
        assert_eq!(
            running,
            [Running {
                cpu: 0,
                pid: 10,
                tgid: 1,
                ran_ns: 100
            }]
        );
    }
}
