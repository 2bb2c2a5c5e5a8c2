//! Reference programs for the probe benchmark (`cargo xtask bench probe`), never loaded
//! by the agent: what the agent's `sched_switch` program is measured against in the same
//! run, and the ingredients its cost is made of.
//!
//! - `ref_empty`: an empty raw tracepoint program, the floor (the kernel's own cost of
//!   running any program on `sched_switch`, with `bpf_stats`' two clock reads).
//! - `ref_naive`: the naive per-(tgid, pid) sum, the same instructions bpftrace 0.17
//!   generates for `@s[tid] = sum(1)`: a per-CPU hash lookup, then an update.
//! - `ing_*`: one ingredient each on top of a per-CPU array store, for the breakdown.
//!
//! Built by energy-agent's build.rs only with its `bench-reference` feature.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};

/// Byte offset of `task_struct.se.sum_exec_runtime`, set by the benchmark.
#[unsafe(no_mangle)]
static TASK_RUNTIME_OFFSET: Global<u32> = Global::new(0);

/// The naive program's sums: bpftrace's map type and size for `@s[..] = sum(..)`.
#[map]
static NAIVE: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Where the ingredient programs leave their result, so nothing is optimised away.
#[map]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU hash like the agent's task map.
#[map]
static PCPU_HASH: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(16_384, 0);

/// Shared hash (one value for all CPUs).
#[map]
static SHARED_HASH: HashMap<u64, u64> = HashMap::with_max_entries(16_384, 0);

/// Stores `value` in this CPU's sink slot.
#[inline(always)]
fn sink(value: u64) {
    if let Some(slot) = SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one CPU do not nest on sched_switch.
        unsafe { *slot = slot.read().wrapping_add(value) };
    }
}

/// The floor: a program that does nothing.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ref_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The naive per-(tgid, pid) switch count: lookup, add one, update.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ref_naive(_ctx: RawTracePointContext) -> i32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let sum = unsafe { NAIVE.get(&key) }.copied().unwrap_or(0) + 1;
    let _ = NAIVE.insert(&key, &sum, 0);
    0
}

/// A per-CPU array lookup and store: the base of every ingredient below.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_array(_ctx: RawTracePointContext) -> i32 {
    sink(1);
    0
}

/// One `bpf_ktime_get_ns`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_ktime(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: BPF helper with no preconditions.
    sink(unsafe { bpf_ktime_get_ns() });
    0
}

/// One `bpf_get_current_pid_tgid`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_pid_tgid(_ctx: RawTracePointContext) -> i32 {
    sink(bpf_get_current_pid_tgid());
    0
}

/// One `bpf_get_current_cgroup_id`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_cgroup(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: BPF helper with no preconditions.
    sink(unsafe { bpf_get_current_cgroup_id() });
    0
}

/// One `bpf_probe_read_kernel` of the outgoing task's runtime counter.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_probe_read(ctx: RawTracePointContext) -> i32 {
    let prev = ctx.arg::<u64>(1) + u64::from(TASK_RUNTIME_OFFSET.load());
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
    sink(unsafe { bpf_probe_read_kernel(prev as *const u64) }.unwrap_or(0));
    0
}

/// The same counter read directly through the typed (BTF) argument.
#[btf_tracepoint(function = "sched_switch")]
pub fn ing_btf_read(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let offset = TASK_RUNTIME_OFFSET.load() as usize;
    // SAFETY: the verifier checks the offset against task_struct's BTF; the load is
    // fault-protected.
    sink(unsafe { (prev.add(offset) as *const u64).read() });
    0
}

/// A typed (BTF) program that does nothing: the floor of that program type.
#[btf_tracepoint(function = "sched_switch")]
pub fn ing_btf_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// A per-CPU hash lookup of the outgoing thread and an add in place (insert on a miss).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_pcpu_hash(_ctx: RawTracePointContext) -> i32 {
    let key = bpf_get_current_pid_tgid();
    match PCPU_HASH.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of the entry.
        Some(v) => unsafe { *v += 1 },
        None => {
            let _ = PCPU_HASH.insert(&key, &1, 0);
        }
    }
    0
}

/// A shared hash lookup of the outgoing thread and an add (insert on a miss).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ing_hash(_ctx: RawTracePointContext) -> i32 {
    let key = bpf_get_current_pid_tgid();
    match SHARED_HASH.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: a valid pointer into the map value (a plain add: only the lookup's
            // cost is of interest here).
            unsafe { *v += 1 };
        }
        None => {
            let _ = SHARED_HASH.insert(&key, &1, 0);
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Some helpers (`bpf_probe_read*`) need a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
