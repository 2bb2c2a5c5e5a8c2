//! Types shared by the energy eBPF programs (kernel side) and the agent (user side).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each one is
//! `#[repr(C)]`, `Copy`, built from fixed-width integers with explicit padding, and
//! has its size pinned by a compile-time assertion. The `user` feature adds
//! `aya::Pod` so the agent can read them out of maps.
#![no_std]
#![deny(missing_docs)]

/// Length of a kernel task name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Names of the maps and programs, shared so the two sides cannot drift apart.
pub mod names {
    /// Per-CPU hash: [`TaskKey`](crate::TaskKey) → [`TaskTime`](crate::TaskTime).
    pub const TASKS: &str = "TASKS";
    /// Per-CPU array with one [`CpuState`](crate::CpuState): the task now on this CPU.
    pub const CPU_STATE: &str = "CPU_STATE";
    /// Per-CPU array of `u64` counters indexed by the `STAT_*` constants.
    pub const STATS: &str = "STATS";
    /// Ring buffer of [`Event`](crate::Event) records.
    pub const EVENTS: &str = "EVENTS";
    /// Hash: tid → group_dead flag, set by `sched_process_exit`, read at the final switch.
    pub const EXITING: &str = "EXITING";
    /// Global: number of possible CPUs (bounds the per-CPU read loop at exit).
    pub const NR_CPUS: &str = "NR_CPUS";
    /// Global: byte offset of `task_struct.pid` on the running kernel (from its BTF).
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// Global: byte offset of `task_struct.tgid` on the running kernel (from its BTF).
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Global: byte offset of `task_struct.se.sum_exec_runtime` (from the kernel's BTF).
    pub const TASK_RUNTIME_OFFSET: &str = "TASK_RUNTIME_OFFSET";
    /// Global: 1 when the `sched_process_exit` raw tracepoint passes `group_dead`.
    pub const EXIT_HAS_GROUP_DEAD: &str = "EXIT_HAS_GROUP_DEAD";
    /// Raw tracepoint program on `sched_switch`.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// Raw tracepoint program on `sched_process_exit`.
    pub const PROG_SCHED_EXIT: &str = "sched_process_exit";
    /// Raw tracepoint program on `sched_process_exec`.
    pub const PROG_SCHED_EXEC: &str = "sched_process_exec";
    /// Raw tracepoint program on `sched_process_fork`.
    pub const PROG_SCHED_FORK: &str = "sched_process_fork";
}

/// `TASK_DEAD`: the `__state` of a task at its final switch (include/linux/sched.h,
/// unchanged since Linux 4.14).
pub const TASK_DEAD: u32 = 0x80;

/// Default capacity of the task map (threads tracked at once); the agent may change it.
pub const DEFAULT_MAX_TASKS: u32 = 16_384;
/// Default capacity of the exiting-task map.
pub const DEFAULT_MAX_EXITING: u32 = 4_096;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Key of the task map: one entry per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Thread id (the kernel's `pid`).
    pub pid: u32,
}
const _: () = assert!(core::mem::size_of::<TaskKey>() == 8);

/// Value of the task map on one CPU: how long the thread ran on that CPU, cumulative.
///
/// The time is the kernel's own runtime accounting (`se.sum_exec_runtime`, which
/// excludes hypervisor steal time) taken at each switch-in and switch-out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskTime {
    /// Nanoseconds run on this CPU since the agent attached (or the thread started).
    pub on_cpu_ns: u64,
    /// Cgroup v2 id of the thread at its last switch-out on this CPU.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<TaskTime>() == 16);

/// What the probe knows about the task currently running on one CPU.
///
/// The agent reads it to account the running slice of a task that has not switched out
/// yet (a CPU-bound thread alone on a CPU may not switch for seconds). It is written as
/// a seqlock: `seq` is odd while the switch handler runs (from before it charges the
/// outgoing task until the new task is recorded) and even otherwise; `seq` is the last
/// field, so a reader that copies the struct reads it after the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// `bpf_ktime_get_ns()` when the current task was switched in; 0 = not yet seen.
    pub start_ns: u64,
    /// The current task's `se.sum_exec_runtime` when it was switched in.
    pub runtime_ns: u64,
    /// Thread id of the current task (0 = idle).
    pub pid: u32,
    /// Process id of the current task.
    pub tgid: u32,
    /// Switch counter: odd while being written, +2 per switch.
    pub seq: u64,
}
const _: () = assert!(core::mem::size_of::<CpuState>() == 32);

/// Index into the `STATS` per-CPU array: task map insert failed (map full).
pub const STAT_TASK_MAP_FULL: u32 = 0;
/// Index into `STATS`: a ring-buffer reservation failed (an event was lost).
pub const STAT_EVENTS_LOST: u32 = 1;
/// Index into `STATS`: the exiting map was full (the exit flag was lost, not the time).
pub const STAT_EXITING_MAP_FULL: u32 = 2;
/// Index into `STATS`: number of `sched_switch` runs.
pub const STAT_SWITCHES: u32 = 3;
/// Index into `STATS`: a task switched out whose switch-in the kernel did not trace (it
/// was charged from the last traced switch on its CPU).
pub const STAT_UNSEEN_SWITCH_IN: u32 = 4;
/// Number of entries in `STATS`.
pub const STAT_COUNT: u32 = 5;

/// Event kind: a finished thread's final on-CPU time on one CPU (`value` = ns, cumulative).
pub const EVENT_EXIT_CPU: u32 = 1;
/// Event kind: a thread finished; sent after its `EVENT_EXIT_CPU` records. `value` = 1
/// when it was the last thread of its process.
pub const EVENT_EXIT: u32 = 2;
/// Event kind: a process called exec; `comm` is its new name.
pub const EVENT_EXEC: u32 = 3;
/// Event kind: a task forked; `tgid`/`pid` are the parent, `value` the child's pid.
pub const EVENT_FORK: u32 = 4;

/// A record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    /// CPU the record is about (`EVENT_EXIT_CPU`) or the CPU it was sent from.
    pub cpu: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Kind-specific value (see the `EVENT_*` constants).
    pub value: u64,
    /// Cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` when the record was made.
    pub ts_ns: u64,
    /// Task name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Event>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and have no
    // implicit padding (sizes are asserted above), so any byte pattern is valid.
    unsafe impl aya::Pod for super::TaskKey {}
    unsafe impl aya::Pod for super::TaskTime {}
    unsafe impl aya::Pod for super::CpuState {}
    unsafe impl aya::Pod for super::Event {}
}
