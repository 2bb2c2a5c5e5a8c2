//! Reading a per-CPU hash map in batches (`BPF_MAP_LOOKUP_BATCH`, Linux ≥ 5.6): one
//! system call per [`BATCH`] entries instead of two per entry (`get_next_key`, then
//! `lookup`), which is most of what the agent's own reads cost on a host with thousands
//! of threads read every `--request-resolution`.
//!
//! The kernel walks the map bucket by bucket and hands back a cursor; an entry deleted
//! during the walk is simply not returned (its thread ended, and its totals are on the
//! ring buffer), as with the one-by-one walk.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// Entries asked for per call.
pub const BATCH: u32 = 512;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Each entry of a per-CPU map: its key and its value on every possible CPU.
pub type PerCpuEntries<K, V> = Vec<(K, Vec<V>)>;

/// Every entry of the per-CPU hash map `fd` (values of `cpus` possible CPUs each), or
/// `Ok(None)` when this kernel has no batch operations for it (the caller walks the map
/// one entry at a time instead).
pub fn read_per_cpu<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    cpus: usize,
) -> io::Result<Option<PerCpuEntries<K, V>>> {
    // Per-CPU values are laid out 8-byte aligned, one per possible CPU.
    let stride = size_of::<V>().div_ceil(8) * 8;
    let mut count = BATCH;
    let mut keys = vec![0u8; count as usize * size_of::<K>()];
    let mut values = vec![0u8; count as usize * stride * cpus];
    // The cursor: a bucket index for hash maps (4 bytes); room for 8.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    let mut out = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &raw const cursor_in as u64
            },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values that outlive the
        // call; the kernel writes at most that many and says how many in `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match err.as_ref().and_then(io::Error::raw_os_error) {
            None => false,
            Some(libc::ENOENT) => true,
            // One bucket holds more entries than asked for: ask for more.
            Some(libc::ENOSPC) if attr.count == 0 && count < 1 << 16 => {
                count *= 4;
                keys.resize(count as usize * size_of::<K>(), 0);
                values.resize(count as usize * stride * cpus, 0);
                continue;
            }
            Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP | libc::ENOSYS) if first => {
                return Ok(None);
            }
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `attr.count` keys of size_of::<K>() bytes and, per
            // key, `cpus` values `stride` bytes apart; K and V are plain old data.
            let key = unsafe {
                std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast::<K>())
            };
            let per_cpu = (0..cpus)
                .map(|c| unsafe {
                    std::ptr::read_unaligned(
                        values.as_ptr().add((i * cpus + c) * stride).cast::<V>(),
                    )
                })
                .collect();
            out.push((key, per_cpu));
        }
        if done {
            return Ok(Some(out));
        }
        cursor_in = cursor_out;
        first = false;
    }
}
