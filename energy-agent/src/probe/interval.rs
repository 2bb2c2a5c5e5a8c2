//! What the probe hands on per interval: the scheduler data and the programs' counters.

use super::{GpuThreadActivity, Lifecycle, TaskSlice, progstats};

/// Loss and activity counters kept by the programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeStats {
    /// Thread-time inserts that failed because the task map was full.
    pub task_map_full: u64,
    /// Ring-buffer records lost because it was full.
    pub events_lost: u64,
    /// Exit flags lost because the exiting map was full.
    pub exiting_map_full: u64,
    /// `sched_switch` runs since attach.
    pub switches: u64,
    /// Switch-outs of a task whose switch-in the kernel did not trace (a sandbox that
    /// hides its own threads' switch-outs): the hidden thread is charged its runtime
    /// growth and this task the rest of the wall time since the last traced switch.
    pub unseen_switch_in: u64,
    /// Program runs the kernel skipped (recursion guard), summed over the programs.
    pub missed_runs: u64,
    /// Threads with time held in the kernel (task map or hot-task cache) at the last read.
    pub tasks_tracked: u64,
    /// Entries in the task map at the last read (its fill level, of `max_tasks`): the
    /// threads whose cache slot was taken over by another while they lived.
    pub task_map_entries: u64,
    /// Task map entries of gone threads the liveness sweep removed (each a final
    /// switch the programs missed), since start.
    pub tasks_swept: u64,
    /// Exiting map entries of gone threads the sweep removed, since start.
    pub exiting_swept: u64,
    /// GPU-driver records lost because the GPU activity map was full.
    pub gpu_map_full: u64,
    /// Threads in the GPU activity map at the last read.
    pub gpu_threads_tracked: u64,
    /// Capacity of the task map.
    pub max_tasks: u64,
    /// Hot-task cache slots handed from one thread to another, since attach (each moved
    /// the time the slot held into the task map: the switch's slow path).
    pub cache_evictions: u64,
    /// Final switches that gave up waiting for another CPU to finish evicting the
    /// thread's cache slot (that time then reaches the agent through the task map).
    pub cache_claim_timeouts: u64,
    /// Slots per CPU of the hot-task cache.
    pub cache_slots_per_cpu: u64,
}

/// Scheduler data for one interval.
#[derive(Debug, Default)]
pub struct SchedInterval {
    /// Start (monotonic ns): the end of the previous interval, or the attach time.
    pub start_ns: u64,
    /// End (monotonic ns).
    pub end_ns: u64,
    /// On-CPU time per thread and CPU in the interval, exited threads included.
    pub slices: Vec<TaskSlice>,
    /// Exits, execs and forks seen in the interval.
    pub lifecycle: Vec<Lifecycle>,
    /// GPU-driver activity per thread in the interval.
    pub gpu: Vec<GpuThreadActivity>,
    /// Each program's counters after the interval (run time with
    /// `kernel.bpf_stats_enabled=1`).
    pub programs: Vec<progstats::NamedProgramStats>,
    /// Counters after the interval.
    pub stats: ProbeStats,
}

impl SchedInterval {
    /// Joins consecutive reads into one interval: their slices and lifecycle in order,
    /// the first start, the last end and counters. `parts` must not be empty.
    pub fn merge(parts: Vec<SchedInterval>) -> SchedInterval {
        let mut parts = parts.into_iter();
        let mut merged = parts.next().unwrap_or_default();
        for p in parts {
            merged.end_ns = p.end_ns;
            merged.slices.extend(p.slices);
            merged.lifecycle.extend(p.lifecycle);
            merged.gpu.extend(p.gpu);
            merged.programs = p.programs;
            merged.stats = p.stats;
        }
        merged
    }

    /// Length of the interval, ns.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// On-CPU nanoseconds of all threads per CPU (index = CPU id), `cpus` entries long
    /// at least.
    pub fn busy_ns_per_cpu(&self, cpus: usize) -> Vec<u64> {
        let mut busy = vec![0u64; cpus];
        for s in &self.slices {
            let cpu = s.cpu as usize;
            if cpu >= busy.len() {
                busy.resize(cpu + 1, 0);
            }
            busy[cpu] += s.on_cpu_ns;
        }
        busy
    }
}
