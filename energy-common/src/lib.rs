//! Types shared by the energy eBPF programs (kernel side) and the agent (user side).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each one is
//! `#[repr(C)]`, `Copy`, built from fixed-width integers with explicit padding, and
//! has its size pinned by a compile-time assertion. The `user` feature adds
//! `aya::Pod` so the agent can read them out of maps, and the agent's helpers and
//! `serde::Serialize` on [`GpuCalls`], which it reports as they are.
#![cfg_attr(not(test), no_std)]
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
    /// Memory-mappable array of [`TaskSlot`](crate::TaskSlot)s: the hot-task cache,
    /// `1 << TASK_CACHE_SHIFT` slots per CPU, CPU by CPU.
    pub const TASK_CACHE: &str = "TASK_CACHE";
    /// Global: log2 of the hot-task cache's slots per CPU.
    pub const TASK_CACHE_SHIFT: &str = "TASK_CACHE_SHIFT";
    /// Global: byte offset of `task_struct.pid` on the running kernel (from its BTF).
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// Global: byte offset of `task_struct.tgid` on the running kernel (from its BTF).
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Global: byte offset of `task_struct.se.sum_exec_runtime` (from the kernel's BTF).
    pub const TASK_RUNTIME_OFFSET: &str = "TASK_RUNTIME_OFFSET";
    /// Global: byte offset of `task_struct.se.exec_start` (from the kernel's BTF).
    pub const TASK_EXEC_START_OFFSET: &str = "TASK_EXEC_START_OFFSET";
    /// Global: `[u32; 4]`, byte offsets of `task_struct.cgroups`, `css_set.dfl_cgrp`,
    /// `cgroup.kn`, `kernfs_node.id` (all 0: not in the BTF).
    pub const CGROUP_CHAIN_OFFSETS: &str = "CGROUP_CHAIN_OFFSETS";
    /// Global: 1 when the `sched_process_exit` raw tracepoint passes `group_dead`.
    pub const EXIT_HAS_GROUP_DEAD: &str = "EXIT_HAS_GROUP_DEAD";
    /// Raw tracepoint program on `sched_switch` (where the typed one does not load).
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// Typed (tp_btf) program on `sched_switch`, attached in preference to the raw one.
    pub const PROG_SCHED_SWITCH_BTF: &str = "sched_switch_btf";
    /// Raw tracepoint program on `sched_process_exit`.
    pub const PROG_SCHED_EXIT: &str = "sched_process_exit";
    /// Raw tracepoint program on `sched_process_exec`.
    pub const PROG_SCHED_EXEC: &str = "sched_process_exec";
    /// Raw tracepoint program on `sched_process_fork`.
    pub const PROG_SCHED_FORK: &str = "sched_process_fork";
    /// Hash: [`TaskKey`](crate::TaskKey) → [`GpuActivity`](crate::GpuActivity).
    pub const GPU_ACTIVITY: &str = "GPU_ACTIVITY";
    /// Hash: tid → [`SyncEntry`](crate::SyncEntry), a synchronize call in progress.
    pub const SYNC_ENTRY: &str = "SYNC_ENTRY";
    /// Global: byte offset of `cmd` in the `sys_enter_ioctl` record (from tracefs).
    pub const IOCTL_CMD_OFFSET: &str = "IOCTL_CMD_OFFSET";
    /// Uprobe program on every CUDA driver entry point; its cookie says which call.
    pub const PROG_CUDA_CALL: &str = "cuda_call";
    /// Uretprobe program on the CUDA synchronize calls.
    pub const PROG_CUDA_SYNC_RETURN: &str = "cuda_sync_return";
    /// Tracepoint program on `syscalls/sys_enter_ioctl`.
    pub const PROG_NVIDIA_IOCTL: &str = "nvidia_ioctl";
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
    /// The CPU's task clock (`rq_clock_task`, ns; not the monotonic clock) when the
    /// current task was switched in; 0 = not yet seen.
    pub start_ns: u64,
    /// The current task's `se.sum_exec_runtime` when it was switched in.
    pub runtime_ns: u64,
    /// Thread id of the current task (0 = idle).
    pub pid: u32,
    /// Process id of the current task.
    pub tgid: u32,
    /// Switch counter: odd while being written, +2 per switch.
    pub seq: u64,
    /// Kernel address of the current task's `task_struct`: read back (checked) only when
    /// the task's switch-out was not traced, to learn what it ran.
    pub task: u64,
}
const _: () = assert!(core::mem::size_of::<CpuState>() == 40);

/// Index into the `STATS` per-CPU array: task map insert failed (map full).
pub const STAT_TASK_MAP_FULL: u32 = 0;
/// Index into `STATS`: a ring-buffer reservation failed (an event was lost).
pub const STAT_EVENTS_LOST: u32 = 1;
/// Index into `STATS`: the exiting map was full (the exit flag was lost, not the time).
pub const STAT_EXITING_MAP_FULL: u32 = 2;
/// Index into `STATS`: a task switched out whose switch-in the kernel did not trace (the
/// hidden task was charged its runtime growth, this one the rest of the wall time since
/// the last traced switch on its CPU).
pub const STAT_UNSEEN_SWITCH_IN: u32 = 3;
/// Index into `STATS`: the GPU activity map was full (a thread's driver calls were lost).
pub const STAT_GPU_MAP_FULL: u32 = 4;
/// Index into `STATS`: a hot-task cache slot was handed from one thread to another (the
/// thread it held moved to the task map).
pub const STAT_CACHE_EVICTIONS: u32 = 5;
/// Index into `STATS`: a finished thread's final switch gave up waiting for another CPU
/// that was moving the thread's cache slot to the task map (that slot's time then
/// reaches the agent through the task map instead of the exit record).
pub const STAT_CACHE_CLAIM_TIMEOUTS: u32 = 6;
/// Number of entries in `STATS`.
pub const STAT_COUNT: u32 = 7;

/// One slot of the hot-task cache: the on-CPU time of the thread that last switched out
/// of this slot's CPU with a thread id mapping to it (`tid % slots per CPU`).
///
/// The switch path adds to a slot in place, without hashing; a thread that finds its
/// slot held by another moves that one's time into the task map first (an eviction).
/// A thread's time on a CPU is its task map value plus its slot there, if it holds it.
/// `key` is claimed with compare-and-swap by every writer but the slot's own CPU adding
/// to its own thread ([`SLOT_EMPTY`], [`SLOT_BUSY`] while an eviction moves the time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSlot {
    /// The thread's `tgid << 32 | pid` (as `bpf_get_current_pid_tgid`), or a marker.
    pub key: u64,
    /// Nanoseconds run on this CPU not yet moved to the task map.
    pub on_cpu_ns: u64,
    /// Cgroup v2 id at its last switch-out here (0 = unknown: keep the task map's).
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<TaskSlot>() == 24);

/// [`TaskSlot::key`] of a slot no thread holds.
pub const SLOT_EMPTY: u64 = 0;
/// [`TaskSlot::key`] while the slot's CPU moves the time it held into the task map.
pub const SLOT_BUSY: u64 = u64::MAX;
/// Largest log2 of the slots per CPU the agent sizes the cache to.
pub const MAX_TASK_CACHE_SHIFT: u32 = 12;

impl TaskKey {
    /// The key of a [`TaskSlot`] or `bpf_get_current_pid_tgid` value.
    pub const fn from_pid_tgid(pid_tgid: u64) -> Self {
        Self {
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
        }
    }

    /// `tgid << 32 | pid`, as a [`TaskSlot`] holds it.
    pub const fn pid_tgid(&self) -> u64 {
        ((self.tgid as u64) << 32) | self.pid as u64
    }
}

/// Event kind: a finished thread's final on-CPU time on one CPU (`value` = ns, cumulative).
pub const EVENT_EXIT_CPU: u32 = 1;
/// Event kind: a thread finished; sent after its `EVENT_EXIT_CPU` records. `value` = 1
/// when it was the last thread of its process; `cgroup_id` is the cgroup it ended in.
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

/// NVIDIA's ioctl type (`NV_IOCTL_MAGIC`, the `_IOC_TYPE` byte of every command the
/// NVIDIA device files take). The framebuffer ioctls share it.
pub const NVIDIA_IOCTL_TYPE: u8 = b'F';

/// Default capacity of the GPU activity map (threads that called the driver).
pub const DEFAULT_MAX_GPU_TASKS: u32 = 16_384;

/// GPU-driver counters: one thread's cumulative totals in the kernel map (inside
/// [`GpuActivity`]) and, in the agent, per-interval differences and their sums. One
/// definition serves both sides so a counter added here reaches the agent's report.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct GpuCalls {
    /// Kernel launches (`cuLaunchKernel*`).
    pub launches: u64,
    /// Memory copies (`cuMemcpy*`).
    pub copies: u64,
    /// Bytes copied, where the arguments give them.
    pub copy_bytes: u64,
    /// Memory sets (`cuMemset*`).
    pub memsets: u64,
    /// Bytes set, where the arguments give them.
    pub memset_bytes: u64,
    /// Completed synchronize calls (outermost, when they nest).
    pub syncs: u64,
    /// Nanoseconds blocked in synchronize calls.
    pub sync_ns: u64,
    /// Nanoseconds from the first submission after a completed synchronisation to the
    /// end of the next one: how long this thread had work in flight (in the kernel map,
    /// closed periods only).
    pub busy_ns: u64,
    /// NVIDIA-type ioctls (the driver-level signal, whatever the runtime).
    pub ioctls: u64,
}
const _: () = assert!(core::mem::size_of::<GpuCalls>() == 72);

/// One thread's use of the GPU driver, cumulative since its first call: the counters
/// and the bookkeeping of its open busy period.
///
/// Only the thread itself updates its entry (programs run in its context, one at a
/// time), so plain adds are safe; the agent reads the counters and takes differences.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuActivity {
    /// The cumulative counters.
    pub calls: GpuCalls,
    /// Start of the open busy period (`bpf_ktime_get_ns`), 0 when none is open.
    pub busy_since_ns: u64,
    /// Time of the thread's last driver call.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<GpuActivity>() == 88);

/// A synchronize call in progress on a thread (entry time, nesting depth).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncEntry {
    /// `bpf_ktime_get_ns()` at the outermost entry.
    pub start_ns: u64,
    /// Synchronize calls open on the thread (a driver may call one from another).
    pub depth: u64,
}
const _: () = assert!(core::mem::size_of::<SyncEntry>() == 16);

/// What a CUDA driver entry point does, carried in its uprobe's attach cookie so one
/// program serves every symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaCall {
    /// A kernel launch.
    Launch,
    /// A copy; its byte count is given by `bytes`.
    Copy(ByteCount),
    /// A memset; its byte count is given by `bytes`.
    Memset(ByteCount),
    /// A synchronize call (entry; the return is a separate program).
    Sync,
}

/// Where a call's byte count is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCount {
    /// Not given (or not worth decoding).
    Unknown,
    /// Argument `index` × `unit` bytes.
    Arg {
        /// Argument index (0-based).
        index: u8,
        /// Bytes per element.
        unit: u8,
    },
    /// Argument `width` × argument `height` × `unit` bytes (2D memsets).
    Area {
        /// Argument index of the width (elements).
        width: u8,
        /// Argument index of the height (rows).
        height: u8,
        /// Bytes per element.
        unit: u8,
    },
    /// `WidthInBytes × Height` of the `CUDA_MEMCPY2D` (v2 layout) pointed to by
    /// argument 0.
    Memcpy2d,
}

/// Cookie kind byte: a launch.
pub const CALL_LAUNCH: u8 = 1;
/// Cookie kind byte: a copy.
pub const CALL_COPY: u8 = 2;
/// Cookie kind byte: a memset.
pub const CALL_MEMSET: u8 = 3;
/// Cookie kind byte: a synchronize call.
pub const CALL_SYNC: u8 = 4;
/// Cookie byte-count form: argument × unit.
pub const BYTES_ARG: u8 = 1;
/// Cookie byte-count form: argument × argument × unit.
pub const BYTES_AREA: u8 = 2;
/// Cookie byte-count form: the `CUDA_MEMCPY2D` at argument 0.
pub const BYTES_MEMCPY2D: u8 = 3;

/// The byte of `cookie` at bit `shift` (the eBPF side decodes cookies with this, not
/// through the enums, whose construction the verifier may not follow).
pub const fn cookie_field(cookie: u64, shift: u32) -> u8 {
    ((cookie >> shift) & 0xff) as u8
}

/// Byte offset of `WidthInBytes` in `CUDA_MEMCPY2D` (v2, 64-bit); `Height` follows.
pub const MEMCPY2D_WIDTH_OFFSET: u64 = 112;

impl CudaCall {
    /// The attach cookie: kind in bits 0–7, byte-count form in 8–15, its three
    /// parameters in 16–23, 24–31 and 32–39.
    pub const fn cookie(self) -> u64 {
        let (kind, bytes) = match self {
            CudaCall::Launch => (CALL_LAUNCH, ByteCount::Unknown),
            CudaCall::Copy(b) => (CALL_COPY, b),
            CudaCall::Memset(b) => (CALL_MEMSET, b),
            CudaCall::Sync => (CALL_SYNC, ByteCount::Unknown),
        };
        let (form, a, b, c) = match bytes {
            ByteCount::Unknown => (0u8, 0u8, 0u8, 0u8),
            ByteCount::Arg { index, unit } => (BYTES_ARG, index, unit, 0),
            ByteCount::Area {
                width,
                height,
                unit,
            } => (BYTES_AREA, width, height, unit),
            ByteCount::Memcpy2d => (BYTES_MEMCPY2D, 0, 0, 0),
        };
        kind as u64 | (form as u64) << 8 | (a as u64) << 16 | (b as u64) << 24 | (c as u64) << 32
    }

    /// Decodes a cookie made by [`CudaCall::cookie`]; `None` for anything else.
    pub const fn from_cookie(cookie: u64) -> Option<Self> {
        let bytes = match cookie_field(cookie, 8) {
            0 => ByteCount::Unknown,
            BYTES_ARG => ByteCount::Arg {
                index: cookie_field(cookie, 16),
                unit: cookie_field(cookie, 24),
            },
            BYTES_AREA => ByteCount::Area {
                width: cookie_field(cookie, 16),
                height: cookie_field(cookie, 24),
                unit: cookie_field(cookie, 32),
            },
            BYTES_MEMCPY2D => ByteCount::Memcpy2d,
            _ => return None,
        };
        match cookie_field(cookie, 0) {
            CALL_LAUNCH => Some(CudaCall::Launch),
            CALL_COPY => Some(CudaCall::Copy(bytes)),
            CALL_MEMSET => Some(CudaCall::Memset(bytes)),
            CALL_SYNC => Some(CudaCall::Sync),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and have no
    // implicit padding (sizes are asserted above), so any byte pattern is valid.
    unsafe impl aya::Pod for super::TaskKey {}
    unsafe impl aya::Pod for super::TaskTime {}
    unsafe impl aya::Pod for super::CpuState {}
    unsafe impl aya::Pod for super::TaskSlot {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::GpuActivity {}
    unsafe impl aya::Pod for super::SyncEntry {}
}

#[cfg(feature = "user")]
impl GpuCalls {
    /// Whether nothing happened.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Submissions: launches, copies and memsets.
    pub fn submissions(&self) -> u64 {
        self.launches + self.copies + self.memsets
    }

    /// Adds another thread's or interval's activity.
    pub fn add(&mut self, o: &GpuCalls) {
        self.launches += o.launches;
        self.copies += o.copies;
        self.copy_bytes += o.copy_bytes;
        self.memsets += o.memsets;
        self.memset_bytes += o.memset_bytes;
        self.syncs += o.syncs;
        self.sync_ns += o.sync_ns;
        self.busy_ns += o.busy_ns;
        self.ioctls += o.ioctls;
    }

    /// Field-wise `self − mark`, never negative (a kernel counter that went back, as a
    /// reused thread id's does, gives 0); `mark` becomes the high-water mark.
    pub fn advance(&self, mark: &mut GpuCalls) -> GpuCalls {
        let step = |now: u64, mark: &mut u64| {
            let d = now.saturating_sub(*mark);
            *mark = (*mark).max(now);
            d
        };
        GpuCalls {
            launches: step(self.launches, &mut mark.launches),
            copies: step(self.copies, &mut mark.copies),
            copy_bytes: step(self.copy_bytes, &mut mark.copy_bytes),
            memsets: step(self.memsets, &mut mark.memsets),
            memset_bytes: step(self.memset_bytes, &mut mark.memset_bytes),
            syncs: step(self.syncs, &mut mark.syncs),
            sync_ns: step(self.sync_ns, &mut mark.sync_ns),
            busy_ns: step(self.busy_ns, &mut mark.busy_ns),
            ioctls: step(self.ioctls, &mut mark.ioctls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip() {
        let calls = [
            CudaCall::Launch,
            CudaCall::Sync,
            CudaCall::Copy(ByteCount::Unknown),
            CudaCall::Copy(ByteCount::Arg { index: 4, unit: 1 }),
            CudaCall::Copy(ByteCount::Memcpy2d),
            CudaCall::Memset(ByteCount::Arg { index: 2, unit: 4 }),
            CudaCall::Memset(ByteCount::Area {
                width: 3,
                height: 4,
                unit: 2,
            }),
        ];
        for call in calls {
            assert_eq!(CudaCall::from_cookie(call.cookie()), Some(call), "{call:?}");
        }
        assert_eq!(CudaCall::from_cookie(0), None);
        assert_eq!(CudaCall::from_cookie(0x0901), None);
    }
}
