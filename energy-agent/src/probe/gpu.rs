//! GPU-driver activity per thread and interval, from the kernel's cumulative counters.
//!
//! The programs keep one cumulative [`GpuActivity`] per thread; each read turns them
//! into per-interval [`GpuCalls`] with high-water marks (a counter never goes back, so a
//! difference is never negative) and forgets threads that are gone, in the kernel map
//! too (the probe's liveness [`Sweep`], at every read), so it stays bounded without
//! relying on exit records.

use std::collections::HashMap;

use energy_common::{GpuActivity, TaskKey};

use super::sweep::Sweep;

/// One thread's (or process's) GPU-driver activity in an interval: the kernel record's
/// counters, as differences.
pub use energy_common::GpuCalls;

/// The cumulative counters of a kernel record, its open busy period included. That
/// period counts up to `now_ns` while the thread is blocked in a synchronize call
/// (waiting for the GPU to finish its work), else up to its last driver call (a thread
/// that stopped calling and is not waiting stops being busy).
fn cumulative(a: &GpuActivity, in_sync: bool, now_ns: u64) -> GpuCalls {
    let until = if in_sync {
        now_ns.max(a.last_ns)
    } else {
        a.last_ns
    };
    let open = if a.busy_since_ns != 0 {
        until.saturating_sub(a.busy_since_ns)
    } else {
        0
    };
    GpuCalls {
        busy_ns: a.calls.busy_ns + open,
        ..a.calls
    }
}

/// One thread's activity in an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuThreadActivity {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// What it did.
    pub calls: GpuCalls,
}

/// What one read of the kernel map produced.
#[derive(Debug, Default)]
pub struct GpuRound {
    /// Threads with activity in the interval.
    pub threads: Vec<GpuThreadActivity>,
    /// Threads that are gone: remove them from the kernel map.
    pub gone: Vec<TaskKey>,
}

/// Turns cumulative per-thread records into per-interval activity.
#[derive(Debug, Default)]
pub struct GpuTracker {
    marks: HashMap<TaskKey, GpuCalls>,
    sweep: Sweep<TaskKey>,
}

impl GpuTracker {
    /// One read at `now_ns`: the map's records, the threads blocked in a synchronize
    /// call, and `alive(key)`, whether a thread still exists (asked only of threads
    /// with nothing new, so the common case costs nothing).
    pub fn round(
        &mut self,
        records: &[(TaskKey, GpuActivity)],
        in_sync: &std::collections::HashSet<u32>,
        now_ns: u64,
        alive: impl Fn(&TaskKey) -> bool,
    ) -> GpuRound {
        let mut round = GpuRound::default();
        let mut present = std::collections::HashSet::new();
        for (key, record) in records {
            present.insert(*key);
            let mark = self.marks.entry(*key).or_default();
            let calls = cumulative(record, in_sync.contains(&key.pid), now_ns).advance(mark);
            if !calls.is_zero() {
                self.sweep.active(*key);
                round.threads.push(GpuThreadActivity {
                    tgid: key.tgid,
                    tid: key.pid,
                    calls,
                });
            }
        }
        round.gone = self
            .sweep
            .due(now_ns, records.iter().map(|(k, _)| *k), alive);
        for key in &round.gone {
            self.marks.remove(key);
        }
        // Entries someone else removed (or a reloaded program): forget their marks.
        self.marks.retain(|k, _| present.contains(k));
        round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tid: u32) -> TaskKey {
        TaskKey { tgid: 1, pid: tid }
    }

    fn none() -> std::collections::HashSet<u32> {
        Default::default()
    }

    fn launches(launches: u64) -> GpuCalls {
        GpuCalls {
            launches,
            ..Default::default()
        }
    }

    #[test]
    fn intervals_get_differences_and_gone_threads_are_dropped() {
        let mut t = GpuTracker::default();
        let mut a = GpuActivity {
            calls: GpuCalls {
                launches: 3,
                syncs: 1,
                sync_ns: 500,
                busy_ns: 900,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = t.round(&[(key(7), a)], &none(), 0, |_| true);
        assert_eq!(r.threads[0].calls.launches, 3);
        assert_eq!(r.threads[0].calls.busy_ns, 900);
        a.calls.launches = 5;
        let r = t.round(&[(key(7), a)], &none(), 0, |_| true);
        assert_eq!(r.threads.len(), 1);
        assert_eq!(r.threads[0].calls.launches, 2);
        assert_eq!(r.threads[0].calls.sync_ns, 0);
        // Nothing new and still alive: kept, not reported.
        let r = t.round(&[(key(7), a)], &none(), 0, |_| true);
        assert!(r.threads.is_empty() && r.gone.is_empty());
        // Nothing new and gone: removed.
        let r = t.round(&[(key(7), a)], &none(), 0, |_| false);
        assert_eq!(r.gone, [key(7)]);
        assert!(t.marks.is_empty());
    }

    #[test]
    fn an_open_busy_period_counts_to_the_last_call_and_never_twice() {
        let mut t = GpuTracker::default();
        let mut a = GpuActivity {
            calls: launches(1),
            busy_since_ns: 1_000,
            last_ns: 1_400,
        };
        let r = t.round(&[(key(1), a)], &none(), 0, |_| true);
        assert_eq!(r.threads[0].calls.busy_ns, 400);
        // The period closes at 2_000: 1_000 ns in all, 600 more.
        a.busy_since_ns = 0;
        a.calls.busy_ns = 1_000;
        a.last_ns = 2_000;
        let r = t.round(&[(key(1), a)], &none(), 0, |_| true);
        assert_eq!(r.threads[0].calls.busy_ns, 600);
    }

    #[test]
    fn a_thread_waiting_in_sync_is_busy_until_now() {
        let mut t = GpuTracker::default();
        let mut a = GpuActivity {
            calls: launches(1),
            busy_since_ns: 1_000,
            last_ns: 1_000,
        };
        let waiting: std::collections::HashSet<u32> = [1].into();
        let r = t.round(&[(key(1), a)], &waiting, 5_000, |_| true);
        assert_eq!(r.threads[0].calls.busy_ns, 4_000);
        let r = t.round(&[(key(1), a)], &waiting, 9_000, |_| true);
        assert_eq!(r.threads[0].calls.busy_ns, 4_000);
        // The sync returns at 9_500: 500 ns more, never the first 8_000 twice.
        a.busy_since_ns = 0;
        a.calls.busy_ns = 8_500;
        a.last_ns = 9_500;
        let r = t.round(&[(key(1), a)], &none(), 10_000, |_| true);
        assert_eq!(r.threads[0].calls.busy_ns, 500);
    }

    #[test]
    fn a_counter_going_back_never_gives_a_negative() {
        let mut t = GpuTracker::default();
        let a = GpuActivity {
            calls: launches(10),
            ..Default::default()
        };
        t.round(&[(key(1), a)], &none(), 0, |_| true);
        // A reused tid restarted its record at 4: nothing until it passes 10.
        let b = GpuActivity {
            calls: launches(4),
            ..Default::default()
        };
        let r = t.round(&[(key(1), b)], &none(), 0, |_| true);
        assert!(r.threads.is_empty());
        let c = GpuActivity {
            calls: launches(12),
            ..Default::default()
        };
        let r = t.round(&[(key(1), c)], &none(), 0, |_| true);
        assert_eq!(r.threads[0].calls.launches, 2);
    }

    #[test]
    fn reports_keep_the_counter_names() {
        // gpu_activity and gpu_threads in the JSON output are this struct, as it is.
        let json = serde_json::to_value(launches(1)).expect("GpuCalls serializes");
        let mut names: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "launches",
            "copies",
            "copy_bytes",
            "memsets",
            "memset_bytes",
            "syncs",
            "sync_ns",
            "busy_ns",
            "ioctls",
        ];
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected, "{json}");
        assert_eq!(json["launches"], 1, "{json}");
    }
}
