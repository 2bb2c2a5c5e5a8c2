//! The hot-task cache (`TASK_CACHE`), read from the agent's own memory.
//!
//! The switch program adds a thread's on-CPU time to its slot on that CPU (`tid % slots
//! per CPU`) without hashing; a thread finding its slot held by another moves that one's
//! time into the task map first. So a thread's time on a CPU is its task map value plus
//! its slot there. The map is memory-mapped: reading every slot costs no system call.
//!
//! Read order matters: the task map first, then the cache. An eviction between the two
//! reads then moves time out of the slot after the map was read, and that time is missed
//! by this read only (the next one sees it in the map; the accountant keeps high-water
//! marks, so nothing is counted twice). The other order could count it twice.
//!
//! A slot is read as a seqlock on its key: key, time, key again, skipped when the key
//! changed or is [`SLOT_BUSY`]. The agent writes a slot only to free that of a thread
//! that is gone, with compare-and-swap on the key, as the programs do.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use energy_common::{MAX_TASK_CACHE_SHIFT, SLOT_BUSY, SLOT_EMPTY, TaskKey, TaskSlot, TaskTime};

/// Set to a power of two, the cache's slots per CPU (fewer slots force evictions: for
/// tests of that path, and a way to trade memory for switch cost on many-CPU hosts).
pub const CACHE_SLOTS_ENV: &str = "ENERGY_AGENT_TASK_CACHE_SLOTS";

/// Memory the cache may take in all, bytes, when sized by itself.
const CACHE_BUDGET_BYTES: usize = 8 << 20;
/// Fewest slots per CPU (log2) the cache is sized to by itself.
const MIN_SHIFT: u32 = 8;

/// log2 of the slots per CPU: `configured` when a power of two up to
/// 2^[`MAX_TASK_CACHE_SHIFT`], else the most that fit the budget on `cpus` CPUs, between
/// 256 and 4,096.
pub fn slots_shift(cpus: u32, configured: Option<u32>) -> u32 {
    if let Some(slots) = configured
        && slots.is_power_of_two()
        && slots.trailing_zeros() <= MAX_TASK_CACHE_SHIFT
    {
        return slots.trailing_zeros();
    }
    let per_cpu = CACHE_BUDGET_BYTES / size_of::<TaskSlot>() / cpus.max(1) as usize;
    let fit = per_cpu.max(1).ilog2();
    fit.clamp(MIN_SHIFT, MAX_TASK_CACHE_SHIFT)
}

/// The cache, mapped into the agent's memory.
pub struct TaskCache {
    // Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
    base: NonNull<AtomicU64>,
    bytes: usize,
    cpus: usize,
    shift: u32,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for TaskCache {}
// SAFETY: as above.
unsafe impl Sync for TaskCache {}

/// `u64` words per slot.
const WORDS: usize = size_of::<TaskSlot>() / size_of::<u64>();

impl TaskCache {
    /// Maps `map` (created with `cpus << shift` entries and `BPF_F_MMAPABLE`).
    pub fn map(map: MapData, cpus: usize, shift: u32) -> io::Result<Self> {
        let page = page_size();
        let bytes = (cpus << shift) * size_of::<TaskSlot>();
        let bytes = bytes.div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own fd, of no more than its size; the
        // result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            _map: map,
            base: NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?,
            bytes,
            cpus,
            shift,
        })
    }

    /// Slots per CPU.
    pub fn slots_per_cpu(&self) -> usize {
        1 << self.shift
    }

    fn word(&self, slot: usize, word: usize) -> &AtomicU64 {
        debug_assert!(slot < self.cpus << self.shift && word < WORDS);
        // SAFETY: inside the mapping (slot < cpus << shift), 8-byte aligned (page-aligned
        // base, 24-byte slots), and only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(slot * WORDS + word) }
    }

    /// Every slot a thread holds, consistently read: (thread, CPU, its time there).
    pub fn read(&self) -> Vec<(TaskKey, u32, TaskTime)> {
        let mut held = Vec::new();
        for slot in 0..self.cpus << self.shift {
            let key = self.word(slot, 0).load(Ordering::Acquire);
            if key == SLOT_EMPTY || key == SLOT_BUSY {
                continue;
            }
            let on_cpu_ns = self.word(slot, 1).load(Ordering::Acquire);
            let cgroup_id = self.word(slot, 2).load(Ordering::Acquire);
            if self.word(slot, 0).load(Ordering::Acquire) != key {
                continue;
            }
            held.push((
                TaskKey::from_pid_tgid(key),
                (slot >> self.shift) as u32,
                TaskTime {
                    on_cpu_ns,
                    cgroup_id,
                },
            ));
        }
        held
    }

    /// The key word of thread `key`'s slot on each CPU (whoever holds it).
    fn keys_of(&self, key: &TaskKey) -> impl Iterator<Item = &AtomicU64> {
        let index = key.pid as usize & (self.slots_per_cpu() - 1);
        (0..self.cpus).map(move |cpu| self.word((cpu << self.shift) | index, 0))
    }

    /// Whether thread `key` holds a slot on some CPU.
    pub fn holds(&self, key: &TaskKey) -> bool {
        let pid_tgid = key.pid_tgid();
        self.keys_of(key)
            .any(|k| k.load(Ordering::Acquire) == pid_tgid)
    }

    /// Frees the slots thread `key` holds (it is gone and its final switch was missed);
    /// returns how many.
    pub fn release(&self, key: &TaskKey) -> usize {
        let pid_tgid = key.pid_tgid();
        self.keys_of(key)
            .filter(|k| {
                k.compare_exchange(pid_tgid, SLOT_EMPTY, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .count()
    }
}

impl Drop for TaskCache {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// Adds the cache's slots to the task map's `snapshot` (one value per CPU per thread):
/// a thread's time on a CPU is the sum of the two; a slot's cgroup is the newer.
pub fn merge_into(
    snapshot: &mut Vec<(TaskKey, Vec<TaskTime>)>,
    slots: &[(TaskKey, u32, TaskTime)],
    cpus: usize,
) {
    let mut index: std::collections::HashMap<TaskKey, usize> = snapshot
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (*key, i))
        .collect();
    for (key, cpu, time) in slots {
        let i = *index.entry(*key).or_insert_with(|| {
            snapshot.push((*key, vec![TaskTime::default(); cpus]));
            snapshot.len() - 1
        });
        let values = &mut snapshot[i].1;
        let cpu = *cpu as usize;
        if cpu >= values.len() {
            values.resize(cpu + 1, TaskTime::default());
        }
        values[cpu].on_cpu_ns += time.on_cpu_ns;
        if time.cgroup_id != 0 {
            values[cpu].cgroup_id = time.cgroup_id;
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32) -> TaskKey {
        TaskKey { tgid: 1, pid }
    }

    fn time(on_cpu_ns: u64, cgroup_id: u64) -> TaskTime {
        TaskTime {
            on_cpu_ns,
            cgroup_id,
        }
    }

    #[test]
    fn a_threads_time_on_a_cpu_is_its_map_value_plus_its_slot() {
        let mut snapshot = vec![(key(7), vec![time(100, 5), time(0, 0)])];
        let slots = [
            (key(7), 0, time(20, 0)),
            (key(7), 1, time(30, 9)),
            (key(8), 1, time(40, 3)),
        ];
        merge_into(&mut snapshot, &slots, 2);
        assert_eq!(
            snapshot,
            vec![
                // The slot's unknown cgroup keeps the map's; a known one is the newer.
                (key(7), vec![time(120, 5), time(30, 9)]),
                // A thread only in the cache gets an entry of its own.
                (key(8), vec![time(0, 0), time(40, 3)]),
            ]
        );
    }

    #[test]
    fn the_cache_is_sized_to_the_budget_or_as_configured() {
        // Two CPUs: the largest cache, 4,096 slots each (196 KiB).
        assert_eq!(slots_shift(2, None), 12);
        // 1,024 CPUs: 8 MiB / 24 B / 1,024 = 341 → 256 slots each.
        assert_eq!(slots_shift(1024, None), 8);
        // Very many CPUs: never below 256.
        assert_eq!(slots_shift(65_536, None), 8);
        assert_eq!(slots_shift(2, Some(4)), 2);
        assert_eq!(slots_shift(2, Some(1)), 0);
        // Not a power of two, or too large: sized by itself.
        assert_eq!(slots_shift(2, Some(6)), 12);
        assert_eq!(slots_shift(2, Some(8192)), 12);
        assert_eq!(slots_shift(2, Some(0)), 12);
    }
}
