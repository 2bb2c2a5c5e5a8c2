//! Loads and attaches the eBPF programs and hands out per-interval scheduler data.
//!
//! Minimum kernel version: 5.19 (ring buffer 5.8, `sched_switch` raw tracepoint with
//! `prev_state` 5.18, `bpf_map_lookup_percpu_elem` 5.19), with kernel BTF and root or
//! CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH (tracefs is root-only). tracefs
//! (mounted here when missing) tells which arguments the exit tracepoint passes.

mod accounting;
mod attach;
mod batch;
pub mod btf;
pub mod cache;
mod config;
pub mod cuda;
pub mod gpu;
mod interval;
mod layout;
pub mod privileges;
pub mod progstats;
pub mod sweep;
pub mod tracefs;

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use accounting::consistent_running;
pub use accounting::{Accountant, Lifecycle, Round, Running, TaskSlice, comm_str};
pub use attach::{CudaAttached, GpuProbeStatus};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use cache::TaskCache;
pub use config::{BATCH_READS_ENV, IOCTLS_ENV, ProbeConfig, SWITCH_PROGRAM_ENV};
use energy_common::{
    CpuState, Event, GpuActivity, STAT_CACHE_CLAIM_TIMEOUTS, STAT_CACHE_EVICTIONS, STAT_COUNT,
    STAT_EVENTS_LOST, STAT_EXITING_MAP_FULL, STAT_GPU_MAP_FULL, STAT_TASK_MAP_FULL,
    STAT_UNSEEN_SWITCH_IN, SyncEntry, TaskKey, TaskTime, names,
};
use gpu::GpuTracker;
pub use gpu::{GpuCalls, GpuThreadActivity};
pub use interval::{ProbeStats, SchedInterval};
pub use layout::KernelLayout;
use privileges::Capabilities;
use sweep::{Sweep, Swept};
use tracefs::TracefsError;

use crate::clock::monotonic_ns;

/// The eBPF object built by build.rs (empty when built without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/energy"));

/// The probe benchmark's reference programs (an empty and a naive `sched_switch` program,
/// and the ingredients of the agent's), which the agent itself never loads; empty when
/// built without bpf-linker.
#[cfg(feature = "bench-reference")]
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reference"));

/// The raw tracepoints the scheduler programs attach to: (program, tracepoint); all are
/// in the `sched` category of tracefs.
pub const SCHED_TRACEPOINTS: [(&str, &str); 4] = [
    (names::PROG_SCHED_SWITCH, "sched_switch"),
    (names::PROG_SCHED_EXIT, "sched_process_exit"),
    (names::PROG_SCHED_EXEC, "sched_process_exec"),
    (names::PROG_SCHED_FORK, "sched_process_fork"),
];

/// Where the kernel's BTF is.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the probe could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The binary was built without the eBPF object.
    #[error(
        "this energy-agent was built without its eBPF programs (bpf-linker was missing); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    /// Not enough privilege to load BPF programs.
    #[error(
        "energy-agent needs root or CAP_BPF+CAP_PERFMON to load its eBPF programs (missing: {missing}); run `energy-agent check` for details"
    )]
    Privileges {
        /// The missing capabilities, comma-separated.
        missing: String,
    },
    /// tracefs is missing or a tracepoint is not what the programs expect.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The kernel's BTF is missing or lacks a field the programs read.
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf::BtfError),
    /// The object or one of its maps could not be loaded.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("eBPF program {program}: {action} failed: {source}")]
    Program {
        /// Program name.
        program: String,
        /// `load` or `attach`.
        action: &'static str,
        /// The kernel's or aya's reason.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map was missing or of the wrong type.
    #[error("eBPF map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Reading a map failed.
    #[error("reading eBPF map {map} failed: {source}")]
    Read {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Each thread's cumulative time, one value per possible CPU.
type TaskSnapshot = Vec<(TaskKey, Vec<TaskTime>)>;

/// The loaded and attached scheduler probe.
pub struct Probe {
    _ebpf: Ebpf,
    tasks: PerCpuHashMap<MapData, TaskKey, TaskTime>,
    cache: TaskCache,
    switch_program: &'static str,
    exiting: HashMap<MapData, u32, u32>,
    task_sweep: Sweep<TaskKey>,
    exiting_sweep: Sweep<u32>,
    sync_sweep: Sweep<u32>,
    swept: Swept,
    cpu_state: PerCpuArray<MapData, CpuState>,
    stats: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    gpu_activity: HashMap<MapData, TaskKey, GpuActivity>,
    sync_entry: HashMap<MapData, u32, SyncEntry>,
    gpu_tracker: GpuTracker,
    gpu_status: GpuProbeStatus,
    pending: Vec<Event>,
    accountant: Accountant,
    last_read_ns: u64,
    gpu_threads_tracked: usize,
    max_tasks: u32,
    /// Whether the task map is read in batches (until the kernel refuses them once).
    batch_reads: std::sync::atomic::AtomicBool,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probe {
    /// Checks privileges and tracefs, loads the programs and attaches them.
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        check_object()?;
        check_privileges()?;
        let mut layout = KernelLayout::read()?;
        if config.without_group_dead {
            layout.exit_has_group_dead = 0;
        }
        let log_level: u8 = if config.ebpf_log { 0xff } else { 0 };
        let cache_shift = cache::slots_shift(layout.nr_cpus, config.task_cache_slots);
        let mut ebpf = layout
            .loader()
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .override_global(names::TASK_CACHE_SHIFT, &cache_shift, true)
            .map_max_entries(names::TASK_CACHE, layout.nr_cpus << cache_shift)
            .map_max_entries(names::TASKS, config.max_tasks)
            .load(EBPF_OBJECT)
            .map_err(map_load_error)?;
        let logger = if config.ebpf_log {
            start_logger(&mut ebpf)
        } else {
            None
        };
        // The typed switch program is loaded against the kernel's BTF, parsed again only
        // now that the loader's own copy is gone (two at once would double the agent's
        // peak memory) and dropped once the programs are attached.
        let btf = if config.raw_switch {
            None
        } else {
            aya::Btf::from_sys_fs()
                .inspect_err(|e| log::info!("kernel BTF unreadable by aya: {e}"))
                .ok()
        };
        let switch_program = attach::sched_programs(&mut ebpf, btf.as_ref())?;
        drop(btf);
        log::debug!("sched_switch traced by {switch_program}");
        let tasks = typed_map(&mut ebpf, names::TASKS)?;
        let cache = map_cache(&mut ebpf, layout.nr_cpus as usize, cache_shift)?;
        let exiting = typed_map(&mut ebpf, names::EXITING)?;
        let cpu_state = typed_map(&mut ebpf, names::CPU_STATE)?;
        let stats = typed_map(&mut ebpf, names::STATS)?;
        let events = typed_map(&mut ebpf, names::EVENTS)?;
        let gpu_activity = typed_map(&mut ebpf, names::GPU_ACTIVITY)?;
        let sync_entry = typed_map(&mut ebpf, names::SYNC_ENTRY)?;
        let gpu_status = attach::gpu_programs(
            &mut ebpf,
            &layout,
            config.libcuda.as_deref(),
            config.nvidia_ioctls,
        );
        for line in gpu_status.lines() {
            log::info!("{line}");
        }
        let sweep_ns = config.sweep_every.as_nanos() as u64;
        Ok(Self {
            _ebpf: ebpf,
            tasks,
            cache,
            switch_program,
            exiting,
            task_sweep: Sweep::new(sweep_ns),
            exiting_sweep: Sweep::new(sweep_ns),
            sync_sweep: Sweep::default(),
            swept: Swept::default(),
            cpu_state,
            stats,
            events,
            gpu_activity,
            sync_entry,
            gpu_tracker: GpuTracker::default(),
            gpu_status,
            pending: Vec::new(),
            accountant: Accountant::new(),
            last_read_ns: monotonic_ns(),
            gpu_threads_tracked: 0,
            max_tasks: config.max_tasks,
            batch_reads: std::sync::atomic::AtomicBool::new(
                std::env::var_os(BATCH_READS_ENV).is_none_or(|v| v != "off"),
            ),
            logger,
        })
    }

    /// The ring buffer's descriptor: readable when exit/exec/fork records are waiting.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// The aya-log descriptor, when diagnostics are on: readable when logs are waiting.
    pub fn log_fd(&self) -> Option<BorrowedFd<'_>> {
        self.logger.as_ref().map(|l| l.as_fd())
    }

    /// Forwards waiting eBPF diagnostics to the log.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// Moves waiting ring-buffer records into memory; call it whenever the ring buffer
    /// is readable so bursts of exits cannot overflow it between intervals.
    pub fn drain_events(&mut self) {
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: Event is Pod and the record is at least that long; unaligned read.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                log::trace!("probe event {event:?}");
                self.pending.push(event);
            }
        }
    }

    /// Closes the current interval: on-CPU time per thread and CPU since the last call.
    pub fn read_interval(&mut self) -> Result<SchedInterval, ProbeError> {
        self.drain_events();
        let events = std::mem::take(&mut self.pending);
        // Seqlock read: `before` (its seq is read last), the map, the running slices,
        // then `after` (its seq is read last again). A CPU whose seq is even and
        // unchanged had no switch in between, so its map values and slice agree.
        let before = self.read_cpu_state()?;
        let (snapshot, in_map) = self.read_tasks()?;
        let now = monotonic_ns();
        let slices: Vec<Option<u64>> = before
            .iter()
            .map(|s| (s.pid != 0 && s.start_ns != 0).then(|| running_slice(s)))
            .collect();
        let after = self.read_cpu_state()?;
        let running = consistent_running(&before, &after, slices);
        let round = self.accountant.account(&events, &snapshot, &running);
        let ran = round.slices.iter().map(|s| TaskKey {
            tgid: s.tgid,
            pid: s.tid,
        });
        let swept = self.sweep_tasks(&snapshot, ran, now);
        let gpu = self.read_gpu()?;
        let mut stats = self.stats()?;
        stats.tasks_tracked = (snapshot.len() - swept) as u64;
        stats.task_map_entries = in_map.saturating_sub(swept) as u64;
        let programs: Vec<progstats::NamedProgramStats> = self
            .program_stats()
            .into_iter()
            .map(|(name, stats)| progstats::NamedProgramStats { name, stats })
            .collect();
        stats.missed_runs = programs.iter().map(|p| p.stats.recursion_misses).sum();
        let interval = SchedInterval {
            start_ns: self.last_read_ns,
            end_ns: now,
            slices: round.slices,
            lifecycle: round.lifecycle,
            gpu,
            programs,
            stats,
        };
        self.last_read_ns = now;
        Ok(interval)
    }

    /// Each thread's cumulative time per CPU: the task map, then the hot-task cache
    /// added to it (in that order: see [`cache`]).
    /// Also returns how many entries the task map itself held.
    fn read_tasks(&self) -> Result<(TaskSnapshot, usize), ProbeError> {
        let mut snapshot = self.read_task_map()?;
        let in_map = snapshot.len();
        cache::merge_into(&mut snapshot, &self.cache.read(), possible_cpus() as usize);
        Ok((snapshot, in_map))
    }

    /// The task map, in batches where the kernel has them ([`batch`]), else one entry at
    /// a time.
    fn read_task_map(&self) -> Result<TaskSnapshot, ProbeError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.batch_reads.load(Relaxed) {
            let fd = aya::maps::IterableMap::map(&self.tasks).fd().as_fd();
            match batch::read_per_cpu(fd, possible_cpus() as usize) {
                Ok(Some(snapshot)) => return Ok(snapshot),
                Ok(None) => {
                    log::info!(
                        "this kernel reads the task map one entry at a time (no batch lookups)"
                    );
                    self.batch_reads.store(false, Relaxed);
                }
                Err(io_error) => {
                    return Err(ProbeError::Read {
                        map: names::TASKS,
                        source: aya::sys::SyscallError {
                            call: "BPF_MAP_LOOKUP_BATCH",
                            io_error,
                        }
                        .into(),
                    });
                }
            }
        }
        let mut snapshot = Vec::new();
        for entry in self.tasks.iter() {
            match entry {
                Ok((key, values)) => snapshot.push((key, values.iter().copied().collect())),
                // An entry deleted between get_next_key and lookup: the thread just ended
                // and its exit records are on the ring buffer.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(ProbeError::Read {
                        map: names::TASKS,
                        source,
                    });
                }
            }
        }
        Ok(snapshot)
    }

    /// GPU-driver activity since the last read; forgets threads that are gone.
    fn read_gpu(&mut self) -> Result<Vec<GpuThreadActivity>, ProbeError> {
        let mut records = Vec::new();
        for entry in self.gpu_activity.iter() {
            match entry {
                Ok(record) => records.push(record),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(ProbeError::Read {
                        map: names::GPU_ACTIVITY,
                        source,
                    });
                }
            }
        }
        let in_sync: std::collections::HashSet<u32> =
            self.sync_entry.keys().filter_map(Result::ok).collect();
        let now = monotonic_ns();
        let round = self
            .gpu_tracker
            .round(&records, &in_sync, now, sweep::thread_alive);
        for key in &round.gone {
            let _ = self.gpu_activity.remove(key);
            let _ = self.sync_entry.remove(&key.pid);
        }
        // A thread killed inside a synchronize call leaves its entry behind.
        for tid in self.sync_sweep.due(now, in_sync, sweep::tid_alive) {
            let _ = self.sync_entry.remove(&tid);
        }
        self.gpu_threads_tracked = records.len() - round.gone.len();
        Ok(round.threads)
    }

    /// What the GPU-driver programs are attached to, or why not.
    pub fn gpu_status(&self) -> &GpuProbeStatus {
        &self.gpu_status
    }

    /// Number of threads in the kernel's task map or hot-task cache now.
    pub fn tasks_tracked(&self) -> usize {
        let mut keys: std::collections::HashSet<TaskKey> =
            self.tasks.keys().filter_map(Result::ok).collect();
        keys.extend(self.cache.read().into_iter().map(|(key, _, _)| key));
        keys.len()
    }

    /// The program tracing `sched_switch`: [`names::PROG_SCHED_SWITCH_BTF`] (typed) or
    /// [`names::PROG_SCHED_SWITCH`] (raw tracepoint).
    pub fn switch_program(&self) -> &'static str {
        self.switch_program
    }

    /// Whether thread `key` has time in the task map or the hot-task cache.
    pub fn tracks(&self, key: &TaskKey) -> bool {
        self.tasks.get(key, 0).is_ok() || self.cache.holds(key)
    }

    /// The kernel's counters for each attached program: (name, stats).
    pub fn program_stats(&self) -> Vec<(String, progstats::ProgramRunStats)> {
        self._ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?;
                let stats = progstats::program_stats(fd.as_fd()).ok()?;
                Some((name.to_string(), stats))
            })
            .collect()
    }

    /// The programs' counters, summed over CPUs.
    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        let mut sums = [0u64; STAT_COUNT as usize];
        for (index, sum) in sums.iter_mut().enumerate() {
            let values = self
                .stats
                .get(&(index as u32), 0)
                .map_err(|source| ProbeError::Read {
                    map: names::STATS,
                    source,
                })?;
            *sum = values.iter().sum();
        }
        Ok(ProbeStats {
            task_map_full: sums[STAT_TASK_MAP_FULL as usize],
            events_lost: sums[STAT_EVENTS_LOST as usize],
            exiting_map_full: sums[STAT_EXITING_MAP_FULL as usize],
            // Every switch advances its CPU's seq by two.
            switches: self.read_cpu_state()?.iter().map(|s| s.seq / 2).sum(),
            unseen_switch_in: sums[STAT_UNSEEN_SWITCH_IN as usize],
            missed_runs: 0,
            tasks_tracked: 0,
            task_map_entries: 0,
            tasks_swept: self.swept.tasks,
            exiting_swept: self.swept.exiting,
            gpu_map_full: sums[STAT_GPU_MAP_FULL as usize],
            cache_evictions: sums[STAT_CACHE_EVICTIONS as usize],
            cache_claim_timeouts: sums[STAT_CACHE_CLAIM_TIMEOUTS as usize],
            cache_slots_per_cpu: self.cache.slots_per_cpu() as u64,
            gpu_threads_tracked: self.gpu_threads_tracked as u64,
            max_tasks: u64::from(self.max_tasks),
        })
    }

    fn read_cpu_state(&self) -> Result<Vec<CpuState>, ProbeError> {
        self.cpu_state
            .get(&0, 0)
            .map(|values| values.iter().copied().collect())
            .map_err(|source| ProbeError::Read {
                map: names::CPU_STATE,
                source,
            })
    }
}

impl std::os::fd::AsRawFd for Probe {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.events.as_fd().as_raw_fd()
    }
}

/// Loads the object and its programs into the kernel without attaching them, to check
/// that the verifier accepts them here; everything is unloaded again on return.
pub fn try_load() -> Result<(), ProbeError> {
    check_object()?;
    let layout = KernelLayout::read()?;
    let mut ebpf = layout.loader().load(EBPF_OBJECT).map_err(map_load_error)?;
    attach::load_sched_programs(&mut ebpf)?;
    attach::load_gpu_programs(&mut ebpf)?;
    Ok(())
}

/// Refuses a binary built without the eBPF object, with how to build it.
fn check_object() -> Result<(), ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    Ok(())
}

/// Refuses early, with the missing capabilities named, when they are known to be
/// missing (when they cannot be read, the kernel decides at load).
fn check_privileges() -> Result<(), ProbeError> {
    if let Ok(caps) = Capabilities::current(Path::new("/proc")) {
        let missing = caps.missing_for_bpf();
        if !missing.is_empty() {
            return Err(ProbeError::Privileges {
                missing: missing.join(", "),
            });
        }
    }
    Ok(())
}

/// Forwards the programs' diagnostics to the log; without them the probe still runs.
fn start_logger(ebpf: &mut Ebpf) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::warn!("eBPF diagnostics unavailable: {e}");
            None
        }
    }
}

/// What the task on a CPU has run since its switch-in: its runtime counter now (from
/// `/proc/<tid>/schedstat`, the same counter the programs read) minus the counter at
/// switch-in; nothing when schedstat is gone (the thread just ended: its final totals
/// are on their way in its exit record).
fn running_slice(state: &CpuState) -> u64 {
    let path = format!("/proc/{}/schedstat", state.pid);
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |runtime| runtime.saturating_sub(state.runtime_ns))
}

/// Number of possible CPUs (the size of per-CPU map values).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1)
}

/// Takes the hot-task cache out of the object and maps it into memory.
fn map_cache(ebpf: &mut Ebpf, cpus: usize, shift: u32) -> Result<TaskCache, ProbeError> {
    let map_error = |reason: String| ProbeError::Map {
        map: names::TASK_CACHE,
        reason,
    };
    match ebpf.take_map(names::TASK_CACHE) {
        Some(aya::maps::Map::Array(data)) => TaskCache::map(data, cpus, shift)
            .map_err(|e| map_error(format!("mapping it into memory failed: {e}"))),
        Some(_) => Err(map_error("not an array".into())),
        None => Err(map_error("missing from the object".into())),
    }
}

/// Takes map `name` out of the object as the type the agent reads it as.
fn typed_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Map {
        map: name,
        reason: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}

/// Maps a permission failure from the kernel to the one-line privileges error.
fn privileged(err: ProbeError) -> ProbeError {
    // EACCES from a program load is the verifier saying no, whatever the privileges.
    if let ProbeError::Program {
        source: aya::programs::ProgramError::LoadError { io_error, .. },
        ..
    } = &err
        && io_error.raw_os_error() != Some(libc::EPERM)
    {
        return err;
    }
    let text = format!("{err:?}");
    if text.contains("PermissionDenied") || text.contains("EPERM") || text.contains("os error 1)") {
        ProbeError::Privileges {
            missing: "the kernel refused the BPF operation (EPERM)".into(),
        }
    } else {
        err
    }
}

fn map_load_error(e: aya::EbpfError) -> ProbeError {
    privileged(ProbeError::Load(e))
}
