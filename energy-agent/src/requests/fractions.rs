//! Each span's fraction of its process's energy in one interval: by its threads' CPU
//! time (declared, or matched by [`super::infer`]), else among the spans in flight by
//! tokens or equally (docs/ARCHITECTURE.md, "Per request").

use std::collections::{BTreeSet, HashMap};

use super::{IntervalRecord, ProcessInterval, RequestSpan, Share, SplitMode, infer};
use crate::units::Nanos;

/// The least confidence of the thread matching (see [`infer`]) for an interval with
/// spans that declare no thread to be split by the matched threads' CPU time; below it
/// the interval is split among the spans in flight (by tokens, else equally).
pub const MIN_CONFIDENCE: f64 = 0.5;

/// One span's part of one interval: its fractions, how the CPU part was decided, and
/// the matching's confidence.
#[derive(Clone, Copy, Debug)]
pub(super) struct Part {
    pub share: Share,
    pub mode: SplitMode,
    pub confidence: f64,
}

/// Each overlapping span's fraction of `proc`'s CPU/DRAM and GPU energy in `record`
/// (indices into `all`), before any cap.
pub(super) fn fractions(
    record: &IntervalRecord,
    proc: &ProcessInterval,
    all: &[RequestSpan],
    indices: &[usize],
    inference: &infer::Inference,
) -> Vec<(usize, Part)> {
    let len = record.end_ns.saturating_sub(record.start_ns);
    let here: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| overlap(&all[i], record.start_ns, record.end_ns) > 0)
        .collect();
    if here.is_empty() || len == 0 {
        return Vec::new();
    }
    let on_threads = here.iter().all(|&i| all[i].tid.is_some());
    let even = |ns: u64| vec![(record.start_ns, record.end_ns, ns)];
    let segments = segment_fractions(record, &here, all);
    let confidence = inference.confidence(record.start_ns);
    let by_threads = on_threads || confidence >= MIN_CONFIDENCE;
    let mut modes: HashMap<usize, SplitMode> = HashMap::new();
    let cpu = if by_threads && proc.cpu_ns > Nanos(0) {
        let declared: Vec<usize> = here
            .iter()
            .copied()
            .filter(|&i| all[i].tid.is_some())
            .collect();
        let total = proc.cpu_ns.get();
        let mut cpu = thread_fractions(&declared, all, total, |tid| {
            proc.timeline
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| even(proc.threads.get(&tid).copied().unwrap_or(0)))
        });
        for &i in &here {
            let inferred = inference.ns(record.start_ns, i) / total as f64;
            let declares = all[i].tid.is_some();
            if inferred > 0.0 {
                *cpu.entry(i).or_default() += inferred;
            }
            let mode = if declares && inferred == 0.0 {
                SplitMode::Thread
            } else {
                SplitMode::ThreadInferred
            };
            modes.insert(i, mode);
        }
        cpu
    } else {
        for (&i, s) in &segments {
            modes.insert(i, s.mode());
        }
        segments.iter().map(|(&i, s)| (i, s.total)).collect()
    };
    let gpu_total: u64 = proc.gpu_threads.values().sum();
    let gpu: HashMap<usize, f64> = if on_threads && gpu_total > 0 {
        thread_fractions(&here, all, gpu_total, |tid| {
            proc.gpu_timeline
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| even(proc.gpu_threads.get(&tid).copied().unwrap_or(0)))
        })
    } else {
        segments.iter().map(|(&i, s)| (i, s.total)).collect()
    };
    here.iter()
        .map(|i| {
            let share = Share {
                cpu: cpu.get(i).copied().unwrap_or(0.0),
                gpu: gpu.get(i).copied().unwrap_or(0.0),
            };
            let mode = modes.get(i).copied().unwrap_or_default();
            let confidence = if mode == SplitMode::Thread {
                1.0
            } else {
                confidence
            };
            let part = Part {
                share,
                mode,
                confidence,
            };
            (*i, part)
        })
        .collect()
}

/// How long `span` overlaps [a, b).
pub(super) fn overlap(span: &RequestSpan, a: u64, b: u64) -> u64 {
    span.end_ns.min(b).saturating_sub(span.start_ns.max(a))
}

/// Thread mode: each span takes its thread's activity within the span (from the
/// thread's `buckets`: (start, end, amount)), over the process's `total`. Spans that
/// overlap on one thread (async runtimes) share the thread's activity in the overlap.
fn thread_fractions(
    here: &[usize],
    all: &[RequestSpan],
    total: u64,
    buckets: impl Fn(u32) -> Vec<(u64, u64, u64)>,
) -> HashMap<usize, f64> {
    here.iter()
        .map(|&i| {
            let tid = all[i].tid.unwrap_or(0);
            let mut amount = 0.0;
            for (a, b, thread_amount) in buckets(tid) {
                let mine = overlap(&all[i], a, b) as f64;
                if mine == 0.0 || b <= a {
                    continue;
                }
                let on_thread: f64 = here
                    .iter()
                    .filter(|&&j| all[j].tid == Some(tid))
                    .map(|&j| overlap(&all[j], a, b) as f64)
                    .sum();
                amount += thread_amount as f64 * mine / on_thread.max((b - a) as f64);
            }
            (i, amount / total as f64)
        })
        .collect()
}

/// `[a, b]` cut at every start and end of `spans` inside it, in order, with a and b.
pub(super) fn cuts<'a>(
    (a, b): (u64, u64),
    spans: impl Iterator<Item = &'a RequestSpan>,
) -> Vec<u64> {
    let mut cuts: BTreeSet<u64> = [a, b].into();
    for s in spans {
        for t in [s.start_ns, s.end_ns] {
            if t > a && t < b {
                cuts.insert(t);
            }
        }
    }
    cuts.into_iter().collect()
}

/// A span's segment-mode fraction of an interval, and how much of it came by tokens.
#[derive(Clone, Copy, Debug, Default)]
struct Segmented {
    total: f64,
    by_tokens: f64,
}

impl Segmented {
    /// Tokens when most of the fraction came by tokens, else equal.
    fn mode(&self) -> SplitMode {
        if self.by_tokens * 2.0 > self.total {
            SplitMode::Tokens
        } else {
            SplitMode::Equal
        }
    }
}

/// Segment mode: the interval is cut at every span boundary inside it; in each
/// segment the process's energy goes to the spans active then (by tokens, else
/// equally).
fn segment_fractions(
    record: &IntervalRecord,
    here: &[usize],
    all: &[RequestSpan],
) -> HashMap<usize, Segmented> {
    let len = record.end_ns.saturating_sub(record.start_ns);
    let cuts = cuts(
        (record.start_ns, record.end_ns),
        here.iter().map(|&i| &all[i]),
    );
    let mut out: HashMap<usize, Segmented> = HashMap::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let active: Vec<usize> = here
            .iter()
            .copied()
            .filter(|&i| all[i].start_ns <= a && all[i].end_ns >= b)
            .collect();
        if active.is_empty() {
            continue;
        }
        let fraction = (b - a) as f64 / len as f64;
        let (by_tokens, split) = shares(&active, all);
        for (i, share) in split {
            let s = out.entry(i).or_default();
            s.total += fraction * share;
            if by_tokens {
                s.by_tokens += fraction * share;
            }
        }
    }
    out
}

/// Each active span's share of a segment's process energy: by tokens (true), else
/// equal.
fn shares(active: &[usize], spans: &[RequestSpan]) -> (bool, Vec<(usize, f64)>) {
    if active
        .iter()
        .all(|&i| spans[i].tokens.is_some_and(|t| t > 0))
    {
        // Summed wide: token counts come from senders, and u64s can add up past u64.
        let total: u128 = active
            .iter()
            .map(|&i| u128::from(spans[i].tokens.unwrap_or(0)))
            .sum();
        let split = active
            .iter()
            .map(|&i| (i, spans[i].tokens.unwrap_or(0) as f64 / total as f64))
            .collect();
        return (true, split);
    }
    let n = active.len() as f64;
    (false, active.iter().map(|&i| (i, 1.0 / n)).collect())
}
