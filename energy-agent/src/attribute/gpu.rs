//! Who used each GPU: the weights its dynamic energy is split by, and on what basis.
//!
//! In order of preference (DESIGN.md "Attribution, precisely"):
//! 1. one process on the GPU (NVML's list) gets all of it;
//! 2. NVML's per-process SM-utilisation samples;
//! 3. the eBPF view of the driver — time with work in flight, else submissions (launches,
//!    copies, memsets), else NVIDIA ioctls — among the processes NVML lists on the GPU
//!    (all active ones when it cannot list them);
//! 4. the processes NVML lists, equally;
//! 5. nothing to go on: the dynamic energy stays in the idle bucket.

use std::collections::BTreeMap;

use super::GpuWeights;
use crate::{power::gpu::GpuProcesses, probe::GpuCalls};

/// What a GPU's dynamic energy was split by in an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSplitBasis {
    /// One process on the GPU: it gets all.
    SingleProcess,
    /// NVML per-process SM utilisation.
    SmUtilisation,
    /// eBPF: time each process had work in flight (submission to completed sync).
    DriverBusyTime,
    /// eBPF: driver submissions (launches, copies, memsets).
    DriverSubmissions,
    /// eBPF: NVIDIA ioctls (runtimes that bypass libcuda's entry points).
    DriverIoctls,
    /// The processes NVML lists, equally (no activity data for any of them).
    RunningProcesses,
    /// Nothing to go on: the dynamic energy went to the idle bucket.
    None,
}

/// How one GPU's energy was split in an interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GpuSplit {
    /// GPU index.
    pub gpu: u32,
    /// The basis used.
    pub basis: GpuSplitBasis,
    /// Processes NVML listed on the GPU (absent when it could not list them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Vec<u32>>,
    /// Whether the GPU is partitioned (MIG).
    pub mig: bool,
}

/// The weights of every GPU in `gpus`, from NVML's view (`usage`) and the probe's
/// per-process driver activity.
pub fn gpu_weights(
    gpus: &[u32],
    usage: &[GpuProcesses],
    activity: &BTreeMap<u32, GpuCalls>,
) -> (GpuWeights, Vec<GpuSplit>) {
    let mut weights = GpuWeights::new();
    let mut splits = Vec::new();
    for &gpu in gpus {
        let nvml = usage.iter().find(|u| u.gpu == gpu);
        let running: Option<Vec<u32>> = nvml
            .and_then(|u| u.running.as_ref())
            .map(|r| r.iter().map(|p| p.pid).collect());
        let (basis, w) = split_one(running.as_deref(), nvml, activity);
        splits.push(GpuSplit {
            gpu,
            basis,
            running,
            mig: nvml.is_some_and(|u| u.mig),
        });
        weights.insert(gpu, w);
    }
    (weights, splits)
}

fn split_one(
    running: Option<&[u32]>,
    nvml: Option<&GpuProcesses>,
    activity: &BTreeMap<u32, GpuCalls>,
) -> (GpuSplitBasis, BTreeMap<u32, u64>) {
    if let Some([only]) = running {
        return (GpuSplitBasis::SingleProcess, BTreeMap::from([(*only, 1)]));
    }
    if let Some(sm) = nvml.and_then(|u| u.sm_util.as_ref()) {
        let w: BTreeMap<u32, u64> = sm
            .iter()
            .filter(|&(_, &v)| v > 0)
            .map(|(&p, &v)| (p, v))
            .collect();
        if !w.is_empty() {
            return (GpuSplitBasis::SmUtilisation, w);
        }
    }
    // The driver's view, restricted to the processes on this GPU when NVML lists them.
    let on_gpu = |pid: &u32| match running {
        Some(list) if !list.is_empty() => list.contains(pid),
        _ => true,
    };
    let active = activity
        .iter()
        .filter(|(p, _)| on_gpu(p))
        .map(|(&p, c)| (p, c));
    if let Some(found) = activity_weights(active) {
        return found;
    }
    match running {
        Some(list) if !list.is_empty() => (
            GpuSplitBasis::RunningProcesses,
            list.iter().map(|&p| (p, 1)).collect(),
        ),
        _ => (GpuSplitBasis::None, BTreeMap::new()),
    }
}

/// Weights from driver activity, by id (process or thread): time with work in flight
/// when every submitter has some (else the ones without would get nothing for work
/// they did submit), else submissions, else NVIDIA ioctls; `None` without activity.
pub fn activity_weights<'a>(
    calls: impl Iterator<Item = (u32, &'a GpuCalls)>,
) -> Option<(GpuSplitBasis, BTreeMap<u32, u64>)> {
    let calls: Vec<(u32, &GpuCalls)> = calls.collect();
    let by = |f: fn(&GpuCalls) -> u64| -> BTreeMap<u32, u64> {
        calls
            .iter()
            .map(|(id, c)| (*id, f(c)))
            .filter(|&(_, v)| v > 0)
            .collect()
    };
    let submitters = by(GpuCalls::submissions);
    let busy = by(|c| c.busy_ns);
    if !busy.is_empty() && submitters.keys().all(|id| busy.contains_key(id)) {
        return Some((GpuSplitBasis::DriverBusyTime, busy));
    }
    if !submitters.is_empty() {
        return Some((GpuSplitBasis::DriverSubmissions, submitters));
    }
    let ioctls = by(|c| c.ioctls);
    (!ioctls.is_empty()).then_some((GpuSplitBasis::DriverIoctls, ioctls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::gpu::GpuProcess;

    fn on_gpu(pids: &[u32], sm: Option<&[(u32, u64)]>) -> GpuProcesses {
        GpuProcesses {
            gpu: 0,
            running: Some(
                pids.iter()
                    .map(|&pid| GpuProcess {
                        pid,
                        used_memory_bytes: Some(1 << 30),
                    })
                    .collect(),
            ),
            sm_util: sm.map(|s| s.iter().copied().collect()),
            mig: false,
            busy: None,
        }
    }

    fn calls(launches: u64, busy_ns: u64, ioctls: u64) -> GpuCalls {
        GpuCalls {
            launches,
            busy_ns,
            ioctls,
            ..Default::default()
        }
    }

    fn split(usage: &[GpuProcesses], activity: &[(u32, GpuCalls)]) -> GpuSplit {
        let activity = activity.iter().copied().collect();
        let (w, mut s) = gpu_weights(&[0], usage, &activity);
        let split = s.remove(0);
        assert_eq!(split.basis == GpuSplitBasis::None, w[&0].is_empty());
        split
    }

    fn weights(usage: &[GpuProcesses], activity: &[(u32, GpuCalls)]) -> Vec<(u32, u64)> {
        let activity = activity.iter().copied().collect();
        gpu_weights(&[0], usage, &activity).0[&0]
            .iter()
            .map(|(&p, &w)| (p, w))
            .collect()
    }

    #[test]
    fn sm_utilisation_comes_first_and_a_lone_process_gets_all() {
        let u = [on_gpu(&[10, 20], Some(&[(10, 300), (20, 100)]))];
        assert_eq!(split(&u, &[]).basis, GpuSplitBasis::SmUtilisation);
        assert_eq!(
            weights(&u, &[(20, calls(99, 99, 0))]),
            [(10, 300), (20, 100)]
        );
        let alone = [on_gpu(&[10], Some(&[]))];
        assert_eq!(split(&alone, &[]).basis, GpuSplitBasis::SingleProcess);
        assert_eq!(weights(&alone, &[(20, calls(5, 5, 0))]), [(10, 1)]);
    }

    #[test]
    fn without_samples_the_driver_view_decides_among_the_listed_processes() {
        let u = [on_gpu(&[10, 20], None)];
        let a = [
            (10, calls(4, 3_000, 0)),
            (20, calls(1, 1_000, 0)),
            (30, calls(50, 50_000, 0)), // active, but not on this GPU
        ];
        assert_eq!(split(&u, &a).basis, GpuSplitBasis::DriverBusyTime);
        assert_eq!(weights(&u, &a), [(10, 3_000), (20, 1_000)]);
        // One submitter without busy time: counts instead.
        let a = [(10, calls(4, 3_000, 0)), (20, calls(2, 0, 0))];
        assert_eq!(split(&u, &a).basis, GpuSplitBasis::DriverSubmissions);
        assert_eq!(weights(&u, &a), [(10, 4), (20, 2)]);
        // Only ioctls (a runtime that bypasses libcuda).
        let a = [(10, calls(0, 0, 30)), (20, calls(0, 0, 10))];
        assert_eq!(split(&u, &a).basis, GpuSplitBasis::DriverIoctls);
        // Nothing at all: the listed processes equally.
        assert_eq!(split(&u, &[]).basis, GpuSplitBasis::RunningProcesses);
        assert_eq!(weights(&u, &[]), [(10, 1), (20, 1)]);
    }

    #[test]
    fn unknown_processes_use_every_active_one_and_nothing_means_idle() {
        let a = [(10, calls(3, 0, 0)), (30, calls(1, 0, 0))];
        assert_eq!(weights(&[], &a), [(10, 3), (30, 1)]);
        assert_eq!(split(&[], &[]).basis, GpuSplitBasis::None);
        // Samples supported but none fell in the interval, and no other data.
        let u = [on_gpu(&[], Some(&[]))];
        assert_eq!(split(&u, &[]).basis, GpuSplitBasis::None);
    }
}
