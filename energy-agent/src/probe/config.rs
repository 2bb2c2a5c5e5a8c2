//! How the probe is loaded: its settings, and the environment variables that set their
//! defaults (for A/B runs of variants and for tests on hosts without the hardware).

use std::{path::PathBuf, time::Duration};

use energy_common::DEFAULT_MAX_TASKS;

use super::cache;

/// Settings for loading the probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Capacity of the task map (threads tracked at once).
    pub max_tasks: u32,
    /// How often the task and exiting maps are swept for threads that are gone
    /// ([`sweep`](super::sweep)).
    pub sweep_every: Duration,
    /// Forward the programs' diagnostics (aya-log) to the agent's log.
    pub ebpf_log: bool,
    /// `--libcuda PATH`: the CUDA driver library (found by itself when `None`).
    pub libcuda: Option<PathBuf>,
    /// Load the programs as for a kernel whose `sched_process_exit` lacks `group_dead`
    /// (older kernels do not pass it): no exit record then says that a process ended,
    /// as when the exiting map is full. For tests of that path on newer kernels.
    pub without_group_dead: bool,
    /// Slots per CPU of the hot-task cache, a power of two (`None`: sized by itself to
    /// the host, see [`cache::slots_shift`]); the default comes from
    /// [`cache::CACHE_SLOTS_ENV`].
    pub task_cache_slots: Option<u32>,
    /// Trace `sched_switch` with the raw tracepoint program even where the kernel takes
    /// the typed (tp_btf) one; the default comes from [`SWITCH_PROGRAM_ENV`].
    pub raw_switch: bool,
    /// Count NVIDIA ioctls: `Some(true)` always, `Some(false)` never, `None` where the
    /// NVIDIA driver's device exists; the default comes from [`IOCTLS_ENV`].
    pub nvidia_ioctls: Option<bool>,
}

/// `on` or `off`: whether the NVIDIA ioctl tracepoint is attached whatever the host
/// (by default, only where the NVIDIA driver's device exists).
pub const IOCTLS_ENV: &str = "ENERGY_AGENT_NVIDIA_IOCTLS";

/// Set to `raw`, `sched_switch` is traced by the raw tracepoint program even where the
/// kernel takes the typed one (for an A/B of the two, and a way out should a kernel's
/// typed tracepoints misbehave).
pub const SWITCH_PROGRAM_ENV: &str = "ENERGY_AGENT_SWITCH_PROGRAM";

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            max_tasks: DEFAULT_MAX_TASKS,
            sweep_every: Duration::from_secs(10),
            ebpf_log: false,
            libcuda: None,
            without_group_dead: false,
            task_cache_slots: std::env::var(cache::CACHE_SLOTS_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            raw_switch: std::env::var_os(SWITCH_PROGRAM_ENV).is_some_and(|v| v == "raw"),
            nvidia_ioctls: match std::env::var(IOCTLS_ENV).as_deref() {
                Ok("on") => Some(true),
                Ok("off") => Some(false),
                _ => None,
            },
        }
    }
}

/// Set to `off`, the task map is read one entry at a time even where the kernel has
/// batch lookups (for an A/B of the two, and a way out should a kernel's batch lookups
/// misbehave).
pub const BATCH_READS_ENV: &str = "ENERGY_AGENT_MAP_BATCH";
