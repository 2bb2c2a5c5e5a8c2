//! Scheduler accounting: on-CPU time per thread and CPU, kept in the kernel.
//!
//! `sched_switch` charges the outgoing thread with what it ran since its switch-in on
//! this CPU (`CPU_STATE`): the growth of the kernel's own runtime counter
//! (`se.sum_exec_runtime`, steal time excluded, the figure /proc and cgroups report).
//! Nothing is charged before the program's first switch on each CPU after attach.
//!
//! The time goes to the thread's slot in the hot-task cache (`TASK_CACHE`, one slot per
//! `tid % slots` per CPU), added in place with no hashing: a hash lookup was about half
//! of what this program cost. A thread finding its slot held by another moves that one's
//! time into the per-CPU task map (`TASKS`) and takes the slot over; so a thread's time
//! on a CPU is its task map value plus its slot there. A thread's final switch (state
//! TASK_DEAD) claims its slots on every CPU, sends its per-CPU totals on the ring buffer
//! and removes its task map entry, so short-lived threads are never lost and the maps
//! stay bounded; the agent sweeps out what a missed final switch would leave (its
//! `probe::sweep`).
//!
//! These are raw tracepoints, not classic (perf) tracepoints, on purpose: the kernel
//! silently skips classic tracepoint programs on a CPU while any process there is inside
//! a BPF map syscall (`bpf_prog_active`), including the agent's own map reads when it is
//! preempted mid-syscall — measured here as up to a fifth of a busy task's time lost.
//! Raw tracepoints guard recursion per program and count any miss.
//!
//! `task_struct` offsets come from the kernel's BTF through globals set at load time.

use core::{
    intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg, atomic_xchg},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext, Global,
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_map_lookup_percpu_elem,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use aya_log_ebpf::warn;
use energy_common::{
    COMM_LEN, CpuState, EVENT_EXEC, EVENT_EXIT, EVENT_EXIT_CPU, EVENT_FORK, Event, SLOT_BUSY,
    SLOT_EMPTY, STAT_CACHE_CLAIM_TIMEOUTS, STAT_CACHE_EVICTIONS, STAT_EXITING_MAP_FULL,
    STAT_TASK_MAP_FULL, STAT_UNSEEN_SWITCH_IN, TASK_DEAD, TaskKey, TaskTime,
};

use crate::maps::{CPU_STATE, EXITING, NR_CPUS, TASK_CACHE, TASKS, bump, send, slot_index};

/// Byte offset of `task_struct.pid`, set by the agent from the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(0);
/// Byte offset of `task_struct.tgid`, set by the agent from the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u32> = Global::new(0);
/// Byte offset of `task_struct.se.sum_exec_runtime`, set by the agent from the BTF.
#[unsafe(no_mangle)]
static TASK_RUNTIME_OFFSET: Global<u32> = Global::new(0);
/// Byte offset of `task_struct.se.exec_start` (the CPU's task clock when the scheduler
/// last accounted the task), set by the agent from the BTF.
#[unsafe(no_mangle)]
static TASK_EXEC_START_OFFSET: Global<u32> = Global::new(0);
/// Byte offsets of `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and
/// `kernfs_node.id`: the chain `bpf_get_current_cgroup_id` follows, which the typed
/// program walks with direct loads. All four 0 when the BTF lacks one: then the helper.
#[unsafe(no_mangle)]
static CGROUP_CHAIN_OFFSETS: Global<[u32; 4]> = Global::new([0; 4]);
/// 1 when `sched_process_exit` passes `group_dead` as its second argument.
#[unsafe(no_mangle)]
static EXIT_HAS_GROUP_DEAD: Global<u32> = Global::new(0);

/// Upper bound of the per-CPU read loop at exit, for the verifier.
const MAX_CPUS: u32 = 1024;

/// How the switch program reads the `task_struct`s it is handed.
trait TaskFields {
    /// The `u32` at `offset` in `task`.
    fn read_u32(task: u64, offset: u32) -> u32;
    /// The `u64` at `offset` in `task`.
    fn read_u64(task: u64, offset: u32) -> u64;
    /// (pid, tgid) of `task`.
    #[inline(always)]
    fn pid_tgid(task: u64) -> (u32, u32) {
        (
            Self::read_u32(task, TASK_PID_OFFSET.load()),
            Self::read_u32(task, TASK_TGID_OFFSET.load()),
        )
    }
    /// The outgoing task `prev` (which is `current`).
    #[inline(always)]
    fn current_key(prev: u64) -> TaskKey {
        let (pid, tgid) = Self::pid_tgid(prev);
        TaskKey { tgid, pid }
    }
    /// Cgroup v2 id of `prev` (which is `current`).
    fn current_cgroup_id(prev: u64) -> u64;
}

/// Through `bpf_probe_read_kernel`: a raw tracepoint's arguments, and any address kept
/// in a map, are plain numbers (a failed read yields 0).
struct ProbeRead;

impl TaskFields for ProbeRead {
    #[inline(always)]
    fn read_u32(task: u64, offset: u32) -> u32 {
        // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
        unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) }.unwrap_or(0)
    }

    #[inline(always)]
    fn read_u64(task: u64, offset: u32) -> u64 {
        // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
        unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u64) }.unwrap_or(0)
    }

    #[inline(always)]
    fn current_key(_prev: u64) -> TaskKey {
        // One helper call instead of a probe read.
        TaskKey::from_pid_tgid(bpf_get_current_pid_tgid())
    }

    #[inline(always)]
    fn current_cgroup_id(_prev: u64) -> u64 {
        // SAFETY: BPF helper with no preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn pid_tgid(task: u64) -> (u32, u32) {
        let (pid_offset, tgid_offset) = (TASK_PID_OFFSET.load(), TASK_TGID_OFFSET.load());
        if tgid_offset == pid_offset + 4 {
            // Adjacent, as in every kernel since 2.6: one read instead of two.
            let both = Self::read_u64(task, pid_offset);
            (both as u32, (both >> 32) as u32)
        } else {
            (
                Self::read_u32(task, pid_offset),
                Self::read_u32(task, tgid_offset),
            )
        }
    }
}

/// Direct loads through a typed (tp_btf) program's arguments: the verifier checks each
/// offset (a load-time constant) against the kernel's BTF for `task_struct`, and the
/// loads are fault-protected. No helper call: about a probe read's cost saved per field.
struct TypedRead;

impl TaskFields for TypedRead {
    #[inline(always)]
    fn read_u32(task: u64, offset: u32) -> u32 {
        // SAFETY: `task` is the program's typed `task_struct` argument (see above).
        unsafe { ((task as *const u8).add(offset as usize) as *const u32).read_volatile() }
    }

    #[inline(always)]
    fn read_u64(task: u64, offset: u32) -> u64 {
        // SAFETY: as above.
        unsafe { ((task as *const u8).add(offset as usize) as *const u64).read_volatile() }
    }

    /// `prev->cgroups->dfl_cgrp->kn->id`, as the helper reads it for `current`, but as
    /// three dependent loads (each checked against the BTF type the previous one
    /// yields) instead of a helper call.
    #[inline(always)]
    fn current_cgroup_id(prev: u64) -> u64 {
        let [cgroups, dfl_cgrp, kn, id] = CGROUP_CHAIN_OFFSETS.load();
        if cgroups == 0 {
            return ProbeRead::current_cgroup_id(prev);
        }
        let css_set = Self::read_u64(prev, cgroups);
        if css_set == 0 {
            return 0;
        }
        let cgroup = Self::read_u64(css_set, dfl_cgrp);
        if cgroup == 0 {
            return 0;
        }
        let node = Self::read_u64(cgroup, kn);
        if node == 0 {
            return 0;
        }
        Self::read_u64(node, id)
    }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` (Linux ≥ 5.18), as a raw tracepoint: where the kernel does
/// not take the typed program below.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let (preempt, prev_state) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3));
    on_switch::<ProbeRead, _>(&ctx, preempt, ctx.arg(1), ctx.arg(2), prev_state)
}

/// The same, typed (BTF-enabled tracepoint, Linux ≥ 5.5): attached in preference.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let (prev, next): (*const u8, *const u8) = (ctx.arg(1), ctx.arg(2));
    let (preempt, prev_state) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3));
    on_switch::<TypedRead, _>(&ctx, preempt, prev as u64, next as u64, prev_state)
}

/// One switch on this CPU from `prev_task` (`current`) to `next`.
#[inline(always)]
fn on_switch<R: TaskFields, C: EbpfContext>(
    ctx: &C,
    preempt: u64,
    prev_task: u64,
    next: u64,
    prev_state: u64,
) -> i32 {
    let preempt = preempt & 0xff != 0;
    let prev_state = prev_state as u32;
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; the switch path runs with interrupts off, so nothing else
    // on this CPU touches it while we do.
    let state = unsafe { &mut *state };
    // Seqlock write side: odd from before the charge until the new task is recorded.
    // Volatile accesses keep their order, and the helper calls in between are barriers
    // for the stores to the task map.
    // SAFETY: `state` is a valid, exclusive reference to this CPU's slot.
    let seq = unsafe { read_volatile(&state.seq) };
    unsafe { write_volatile(&mut state.seq, seq.wrapping_add(1)) };

    // `current` is still the outgoing task while this tracepoint runs.
    let key = R::current_key(prev_task);
    // The CPU's task clock (`rq_clock_task`, which the runtime counters run on: steal
    // and irq time excluded), as the scheduler just stamped it on the outgoing task (or,
    // from the idle task, on the incoming one). No clock read: `bpf_ktime_get_ns` was
    // the dearest ingredient of this program.
    let exec_start = TASK_EXEC_START_OFFSET.load();
    let now = R::read_u64(if key.pid != 0 { prev_task } else { next }, exec_start);
    if key.pid != 0 {
        if state.start_ns != 0 {
            let ran = if state.pid == key.pid {
                // The scheduler updated the counter before this tracepoint fired.
                R::read_u64(prev_task, TASK_RUNTIME_OFFSET.load()).saturating_sub(state.runtime_ns)
            } else {
                bump(STAT_UNSEEN_SWITCH_IN);
                charge_untraced_switch(ctx, state, now)
            };
            if ran > 0 {
                charge(ctx, &key, ran, R::current_cgroup_id(prev_task));
            }
        }
        if !preempt && prev_state & TASK_DEAD != 0 {
            flush_exited(&key, R::current_cgroup_id(prev_task));
        }
    }
    let (next_pid, next_tgid) = R::pid_tgid(next);
    let next_runtime = R::read_u64(next, TASK_RUNTIME_OFFSET.load());
    // SAFETY: as above.
    unsafe {
        write_volatile(&mut state.start_ns, now);
        write_volatile(&mut state.runtime_ns, next_runtime);
        write_volatile(&mut state.task, next);
        write_volatile(&mut state.pid, next_pid);
        write_volatile(&mut state.tgid, next_tgid);
        write_volatile(&mut state.seq, seq.wrapping_add(2));
    }
    0
}

/// A switch-out whose switch-in the kernel did not trace (some sandboxed kernels hide
/// their own agent's threads as `prev`): since the last traced switch-in, this CPU ran
/// that task (`state`), then the one now switching out. The earlier task is charged the
/// growth of its runtime counter, read back from its `task_struct` (it is not running
/// any more, or it migrated and the growth is capped by the wall time); the outgoing
/// task gets the rest of the wall time. Returns the outgoing task's share.
#[inline(always)]
fn charge_untraced_switch<C: EbpfContext>(ctx: &C, state: &CpuState, now: u64) -> u64 {
    let wall = now.saturating_sub(state.start_ns);
    // The address is only trusted while it still holds the thread it was recorded for.
    if state.pid == 0
        || state.task == 0
        || ProbeRead::read_u32(state.task, TASK_PID_OFFSET.load()) != state.pid
    {
        return wall;
    }
    let hidden_ran = ProbeRead::read_u64(state.task, TASK_RUNTIME_OFFSET.load())
        .saturating_sub(state.runtime_ns)
        .min(wall);
    if hidden_ran > 0 {
        let hidden = TaskKey {
            tgid: state.tgid,
            pid: state.pid,
        };
        // Its cgroup is not `current`'s: leave the entry's as it is.
        charge(ctx, &hidden, hidden_ran, 0);
    }
    wall - hidden_ran
}

/// Adds `delta_ns` to the thread's time on this CPU and records its cgroup (`cgroup_id`
/// 0 = unknown: keep the one recorded): in its hot-task cache slot when it holds it (no
/// hashing: the common case), else it takes the slot over, moving the time of the thread
/// that held it into the task map.
#[inline(always)]
fn charge<C: EbpfContext>(ctx: &C, key: &TaskKey, delta_ns: u64, cgroup_id: u64) {
    // SAFETY: BPF helper with no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(slot) = TASK_CACHE.get_ptr_mut(slot_index(cpu, key.pid)) else {
        charge_map(ctx, key, delta_ns, cgroup_id);
        return;
    };
    // SAFETY: this CPU's slot. Only this CPU adds to it; other writers (a finished
    // thread's final switch elsewhere, the agent's sweep) only claim a slot whose thread
    // is not running, with compare-and-swap on its key.
    let slot = unsafe { &mut *slot };
    let pid_tgid = key.pid_tgid();
    // SAFETY: `slot` is valid; volatile keeps the read where it is.
    let held = unsafe { read_volatile(&slot.key) };
    if held == pid_tgid {
        slot.on_cpu_ns += delta_ns;
        if cgroup_id != 0 {
            slot.cgroup_id = cgroup_id;
        }
        return;
    }
    // Readers see the slot BUSY (not to be read) until it holds the new thread.
    if held != SLOT_EMPTY && swap_key(&mut slot.key, held, SLOT_BUSY) {
        bump(STAT_CACHE_EVICTIONS);
        if slot.on_cpu_ns > 0 {
            let evicted = TaskKey::from_pid_tgid(held);
            charge_map(ctx, &evicted, slot.on_cpu_ns, slot.cgroup_id);
        }
    }
    // SAFETY: as above; the key is published last, with a full barrier.
    unsafe {
        write_volatile(&mut slot.on_cpu_ns, delta_ns);
        write_volatile(&mut slot.cgroup_id, cgroup_id);
    }
    publish_key(&mut slot.key, pid_tgid);
}

/// Compare-and-swap of a cache slot's key: whether it held `old` (it holds `new` now).
#[inline(always)]
fn swap_key(key: &mut u64, old: u64, new: u64) -> bool {
    // SAFETY: an aligned u64 in a map value; every concurrent write of it is atomic.
    unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(key, old, new) }.1
}

/// Stores a cache slot's key after its time, so that a reader seeing the key sees both.
#[inline(always)]
fn publish_key(key: &mut u64, new: u64) {
    // SAFETY: as in `swap_key`.
    unsafe { atomic_xchg::<u64, { SeqCst }>(key, new) };
}

/// Adds `delta_ns` to the thread's task map entry on this CPU, creating it when needed.
#[inline(always)]
fn charge_map<C: EbpfContext>(ctx: &C, key: &TaskKey, delta_ns: u64, cgroup_id: u64) {
    match TASKS.get_ptr_mut(key) {
        Some(time) => {
            // SAFETY: this CPU's slot of the entry; only this CPU writes it.
            unsafe {
                (*time).on_cpu_ns += delta_ns;
                if cgroup_id != 0 {
                    (*time).cgroup_id = cgroup_id;
                }
            }
        }
        None => {
            let time = TaskTime {
                on_cpu_ns: delta_ns,
                cgroup_id,
            };
            if TASKS.insert(key, time, 0).is_err() {
                bump(STAT_TASK_MAP_FULL);
                warn!(
                    ctx,
                    "task map full: lost {} ns of tid {}", delta_ns, key.pid
                );
            }
        }
    }
}

/// Attempts at claiming a finished thread's cache slot on a CPU that is evicting it.
const CLAIM_TRIES: u32 = 512;

/// Takes a finished thread's slot on `cpu` if it holds it: (ns, cgroup id). A slot the
/// CPU is evicting at that moment is waited for (its time lands in the task map, which
/// the caller reads after this).
#[inline(always)]
fn claim_slot(cpu: u32, key: &TaskKey) -> Option<(u64, u64)> {
    let slot = TASK_CACHE.get_ptr_mut(slot_index(cpu, key.pid))?;
    let pid_tgid = key.pid_tgid();
    let mut tries = 0;
    while tries < CLAIM_TRIES {
        // SAFETY: a valid slot; the thread is not running, so its time there does not
        // change while the key is still its own.
        let (held, ns, cgroup_id) = unsafe {
            (
                read_volatile(&(*slot).key),
                read_volatile(&(*slot).on_cpu_ns),
                read_volatile(&(*slot).cgroup_id),
            )
        };
        if held != SLOT_BUSY {
            if held != pid_tgid {
                return None;
            }
            // SAFETY: as above.
            if swap_key(unsafe { &mut (*slot).key }, pid_tgid, SLOT_EMPTY) {
                return Some((ns, cgroup_id));
            }
        }
        tries += 1;
    }
    bump(STAT_CACHE_CLAIM_TIMEOUTS);
    None
}

/// Sends a finished thread's totals (one record per CPU it ran on, then an exit record
/// with the cgroup it ends in, `cgroup_id`) and forgets it.
#[inline(always)]
fn flush_exited(key: &TaskKey, cgroup_id: u64) {
    // SAFETY: BPF helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: lookup in a map the program owns; the value is copied out at once.
    let group_dead = unsafe { EXITING.get(&key.pid) }.copied().unwrap_or(0);
    let mut event = Event {
        kind: EVENT_EXIT_CPU,
        cpu: 0,
        tgid: key.tgid,
        pid: key.pid,
        value: 0,
        cgroup_id: 0,
        ts_ns: now,
        comm,
    };
    let nr_cpus = NR_CPUS.load();
    let mut cpu = 0;
    while cpu < MAX_CPUS && cpu < nr_cpus {
        // The cache slot first: an eviction of it in progress has moved its time into
        // the task map by the time the claim returns.
        let (mut on_cpu_ns, mut cgroup_id) = claim_slot(cpu, key).unwrap_or((0, 0));
        // SAFETY: TASKS is a per-CPU hash with TaskKey keys and TaskTime values.
        let time = unsafe {
            bpf_map_lookup_percpu_elem(
                &raw const TASKS as *mut c_void,
                key as *const TaskKey as *const c_void,
                cpu,
            )
        } as *const TaskTime;
        if !time.is_null() {
            // SAFETY: non-null pointer into the map value returned by the helper.
            let time = unsafe { *time };
            on_cpu_ns += time.on_cpu_ns;
            if cgroup_id == 0 {
                cgroup_id = time.cgroup_id;
            }
        }
        if on_cpu_ns > 0 {
            event.cpu = cpu;
            event.value = on_cpu_ns;
            event.cgroup_id = cgroup_id;
            send(&event);
        }
        cpu += 1;
    }
    event.kind = EVENT_EXIT;
    event.value = u64::from(group_dead);
    // The cgroup it ends in (each CPU's record keeps the one it last ran there in).
    event.cgroup_id = cgroup_id;
    send(&event);
    let _ = TASKS.remove(key);
    let _ = EXITING.remove(&key.pid);
}

/// `sched_process_exit(struct task_struct *p[, bool group_dead])`: remembers whether the
/// whole process ends with this thread, for its exit record.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let group_dead = if EXIT_HAS_GROUP_DEAD.load() != 0 {
        (ctx.arg::<u64>(1) & 0xff) as u32
    } else {
        0
    };
    if EXITING.insert(&tid, &group_dead, 0).is_err() {
        bump(STAT_EXITING_MAP_FULL);
    }
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    send(&current_event(EVENT_EXEC, pid, 0));
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let child = ProbeRead::read_u32(ctx.arg::<u64>(1), TASK_PID_OFFSET.load());
    let parent = bpf_get_current_pid_tgid() as u32;
    send(&current_event(EVENT_FORK, parent, u64::from(child)));
    0
}

/// An event about the current task.
#[inline(always)]
fn current_event(kind: u32, pid: u32, value: u64) -> Event {
    Event {
        kind,
        // SAFETY: BPF helpers with no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        pid,
        value,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}
