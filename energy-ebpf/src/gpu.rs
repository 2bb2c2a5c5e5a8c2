//! GPU-driver activity per thread: CUDA driver API calls (uprobes on libcuda.so) and
//! NVIDIA ioctls (the `sys_enter_ioctl` tracepoint, filtered here to the NVIDIA type).
//!
//! One uprobe program serves every CUDA entry point: the agent attaches it to each
//! symbol the library exports with a cookie (`energy_common::CudaCall::cookie`) saying what the call is and
//! where its byte count sits. Synchronize calls are timed with a uretprobe; a thread's
//! "busy" time runs from its first submission after a completed synchronisation to the
//! end of the next one.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use energy_common::{
    BYTES_AREA, BYTES_ARG, BYTES_MEMCPY2D, CALL_COPY, CALL_LAUNCH, CALL_MEMSET, CALL_SYNC,
    GpuActivity, MEMCPY2D_WIDTH_OFFSET, NVIDIA_IOCTL_TYPE, STAT_GPU_MAP_FULL, SyncEntry, TaskKey,
    cookie_field,
};

use crate::maps::{GPU_ACTIVITY, SYNC_ENTRY, bump};

/// Byte offset of `cmd` in the `sys_enter_ioctl` record, set by the agent from tracefs.
#[unsafe(no_mangle)]
static IOCTL_CMD_OFFSET: Global<u32> = Global::new(24);

/// The current thread's key.
#[inline(always)]
fn current_key() -> TaskKey {
    let id = bpf_get_current_pid_tgid();
    TaskKey {
        tgid: (id >> 32) as u32,
        pid: id as u32,
    }
}

/// The current thread's activity entry, created empty when missing.
#[inline(always)]
fn activity(key: &TaskKey) -> Option<&'static mut GpuActivity> {
    if let Some(entry) = GPU_ACTIVITY.get_ptr_mut(key) {
        // SAFETY: a valid map value; only this thread updates its own entry.
        return Some(unsafe { &mut *entry });
    }
    // BPF_NOEXIST: another CPU cannot have created it (only this thread does), but be
    // safe against a stale entry of a reused tid.
    if GPU_ACTIVITY.insert(key, GpuActivity::default(), 1).is_err()
        && GPU_ACTIVITY.get_ptr_mut(key).is_none()
    {
        bump(STAT_GPU_MAP_FULL);
        return None;
    }
    // SAFETY: as above.
    GPU_ACTIVITY
        .get_ptr_mut(key)
        .map(|entry| unsafe { &mut *entry })
}

/// The first six arguments of a uprobe, as integers. The verifier only allows
/// constant offsets into the saved registers, so all are read and then indexed.
#[inline(always)]
fn args(ctx: &ProbeContext) -> [u64; 8] {
    let a = |n| ctx.arg::<u64>(n).unwrap_or(0);
    [a(0), a(1), a(2), a(3), a(4), a(5), 0, 0]
}

/// Argument `index` (0 beyond the sixth).
#[inline(always)]
fn arg(args: &[u64; 8], index: u8) -> u64 {
    args[usize::from(index & 7)]
}

/// The byte count a call's arguments give, per its cookie; 0 when unknown.
#[inline(always)]
fn bytes_of(ctx: &ProbeContext, cookie: u64) -> u64 {
    let form = cookie_field(cookie, 8);
    if form == 0 {
        return 0;
    }
    let args = &args(ctx);
    let (a, b, c) = (
        cookie_field(cookie, 16),
        cookie_field(cookie, 24),
        cookie_field(cookie, 32),
    );
    // Plain multiplies: BPF has no 128-bit helper for overflow checks, and byte counts
    // the driver accepted fit in 64 bits.
    match form {
        BYTES_ARG => arg(args, a).wrapping_mul(u64::from(b)),
        BYTES_AREA => arg(args, a)
            .wrapping_mul(arg(args, b))
            .wrapping_mul(u64::from(c)),
        BYTES_MEMCPY2D => {
            let desc = arg(args, 0);
            // SAFETY: bpf_probe_read_user checks the address; a failed read yields 0.
            let width = unsafe {
                bpf_probe_read_user((desc + MEMCPY2D_WIDTH_OFFSET) as *const u64).unwrap_or(0)
            };
            // SAFETY: as above.
            let height = unsafe {
                bpf_probe_read_user((desc + MEMCPY2D_WIDTH_OFFSET + 8) as *const u64).unwrap_or(0)
            };
            width.wrapping_mul(height)
        }
        _ => 0,
    }
}

/// Every CUDA driver entry point: counts the call for the current thread.
#[uprobe]
pub fn cuda_call(ctx: ProbeContext) -> u32 {
    // SAFETY: BPF helper; the context is this program's.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie_field(cookie, 0);
    // SAFETY: BPF helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = current_key();
    if kind == CALL_SYNC {
        match SYNC_ENTRY.get_ptr_mut(key.pid) {
            // SAFETY: a valid map value; only this thread updates it.
            Some(open) => unsafe { (*open).depth += 1 },
            None => {
                let entry = SyncEntry {
                    start_ns: now,
                    depth: 1,
                };
                if SYNC_ENTRY.insert(key.pid, entry, 0).is_err() {
                    bump(STAT_GPU_MAP_FULL);
                }
            }
        }
        return 0;
    }
    if !(CALL_LAUNCH..=CALL_MEMSET).contains(&kind) {
        return 0;
    }
    let bytes = bytes_of(&ctx, cookie);
    let Some(a) = activity(&key) else {
        return 0;
    };
    a.last_ns = now;
    if kind == CALL_LAUNCH {
        a.calls.launches += 1;
    } else if kind == CALL_COPY {
        a.calls.copies += 1;
        a.calls.copy_bytes = a.calls.copy_bytes.saturating_add(bytes);
    } else {
        a.calls.memsets += 1;
        a.calls.memset_bytes = a.calls.memset_bytes.saturating_add(bytes);
    }
    if a.busy_since_ns == 0 {
        a.busy_since_ns = now;
    }
    0
}

/// Return of a synchronize call: its time, and the end of the thread's busy period.
#[uretprobe]
pub fn cuda_sync_return(_ctx: RetProbeContext) -> u32 {
    // SAFETY: BPF helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = current_key();
    let Some(open) = SYNC_ENTRY.get_ptr_mut(key.pid) else {
        // Attached while this call was already in progress.
        return 0;
    };
    // SAFETY: a valid map value; only this thread updates it.
    let open = unsafe { &mut *open };
    open.depth = open.depth.saturating_sub(1);
    if open.depth > 0 {
        return 0;
    }
    let start = open.start_ns;
    let _ = SYNC_ENTRY.remove(key.pid);
    let Some(a) = activity(&key) else {
        return 0;
    };
    a.last_ns = now;
    a.calls.syncs += 1;
    a.calls.sync_ns += now.saturating_sub(start);
    if a.busy_since_ns != 0 {
        a.calls.busy_ns += now.saturating_sub(a.busy_since_ns);
        a.busy_since_ns = 0;
    }
    0
}

/// `syscalls/sys_enter_ioctl`: counts ioctls whose command has NVIDIA's type byte.
#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn nvidia_ioctl(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this tracepoint's format; the read is checked.
    let cmd = unsafe { ctx.read_at::<u64>(IOCTL_CMD_OFFSET.load() as usize) }.unwrap_or(0);
    // _IOC_TYPE: bits 8–15 of the command.
    if (cmd >> 8) & 0xff != u64::from(NVIDIA_IOCTL_TYPE) {
        return 0;
    }
    let key = current_key();
    if let Some(a) = activity(&key) {
        a.calls.ioctls += 1;
        // SAFETY: BPF helper with no preconditions.
        a.last_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}
