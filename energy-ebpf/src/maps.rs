//! Maps shared by the programs, and the loss counters every failed write bumps.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use energy_common::{
    CpuState, DEFAULT_MAX_EXITING, DEFAULT_MAX_GPU_TASKS, DEFAULT_MAX_TASKS, EVENTS_BYTES, Event,
    GpuActivity, STAT_COUNT, STAT_EVENTS_LOST, SyncEntry, TaskKey, TaskSlot, TaskTime,
};

/// On-CPU time per thread, one value per CPU (no atomics: each CPU writes its own slot),
/// for the time not in the hot-task cache: what evicted slots held.
#[map]
pub static TASKS: PerCpuHashMap<TaskKey, TaskTime> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_TASKS, 0);

/// `BPF_F_MMAPABLE`: the agent reads the cache from its own memory, without a syscall.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The hot-task cache: `1 << TASK_CACHE_SHIFT` slots per CPU, CPU 0's first; sized by
/// the agent at load (one slot per CPU here).
#[map]
pub static TASK_CACHE: Array<TaskSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// log2 of the hot-task cache's slots per CPU, set by the agent at load.
#[unsafe(no_mangle)]
pub static TASK_CACHE_SHIFT: Global<u32> = Global::new(0);

/// Index of `tid`'s slot on `cpu` in `TASK_CACHE`.
#[inline(always)]
pub fn slot_index(cpu: u32, tid: u32) -> u32 {
    let shift = TASK_CACHE_SHIFT.load();
    (cpu << shift) | (tid & ((1 << shift) - 1))
}

/// The task now running on each CPU and when it started.
#[map]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Loss and activity counters (see `energy_common::STAT_*`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Exit/exec/fork records for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Threads that passed `sched_process_exit` and await their final switch: tid → group_dead.
#[map]
pub static EXITING: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_EXITING, 0);

/// GPU-driver activity per thread (one writer per entry: the thread itself).
#[map]
pub static GPU_ACTIVITY: HashMap<TaskKey, GpuActivity> =
    HashMap::with_max_entries(DEFAULT_MAX_GPU_TASKS, 0);

/// Synchronize calls in progress: tid → entry time and depth.
#[map]
pub static SYNC_ENTRY: HashMap<u32, SyncEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_GPU_TASKS, 0);

/// Number of possible CPUs, set by the agent at load time.
#[unsafe(no_mangle)]
pub static NR_CPUS: Global<u32> = Global::new(1);

/// Adds one to the counter `index` of `STATS` on this CPU.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it, and the pointer is valid.
        unsafe { *counter += 1 };
    }
}

/// Bytes waiting in `EVENTS` before the agent is woken. The agent drains the ring
/// buffer at every interval anyway; a wakeup per event (about three per short-lived
/// process) would cost it a context switch each and buy nothing. Past a quarter of the
/// buffer it is woken so that a burst cannot fill it.
const WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 4;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Sends `event` to the agent, counting it as lost when the ring buffer is full.
#[inline(always)]
pub fn send(event: &Event) {
    let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<Event>(event, wakeup).is_err() {
        bump(STAT_EVENTS_LOST);
    }
}
