//! Which threads served which request spans, when the spans do not say
//! (docs/ARCHITECTURE.md, "Per request"): from each thread's on-CPU timeline (the
//! sub-interval reads, `--request-resolution`), a thread is matched to the spans whose
//! windows explain its activity — busy while they are in flight, idle otherwise.
//!
//! Per thread, its utilisation in each bucket `a_k` is fitted as `Σ_s x_s · in_s(k)`,
//! where `in_s(k)` is the fraction of bucket k that span s covers and `x_s ≥ 0`
//! (non-negative least squares, with a small ridge so that spans the data cannot tell
//! apart get equal weights). A thread is matched only when the fit explains it: at least
//! half its activity is fitted, at most a quarter as much again falls where none of its
//! spans is in flight, and at least 80% of it goes to one span at a time (else it is
//! ambiguous). A matched thread's CPU goes to its spans by their weights within each
//! bucket's span-covered part (the thread taken as running evenly within a bucket). The
//! confidence of an interval is the share of the CPU its undeclared threads used while
//! spans were in flight that matched threads explain.
//!
//! Threads a span declares (`thread.native_id`) are left to the thread split; the rest
//! are inferred here, so a declared event-loop thread whose requests run their work on
//! a pool still finds the pool's CPU. A span whose declared thread was on CPU for at
//! least a quarter of its window did its own work and gets no inferred threads (else a
//! busy undeclared thread, such as the exporter's at start-up, would be matched to it).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{
    IntervalRecord, ProcessInterval, RequestSpan,
    fractions::{cuts, overlap},
};

/// Least share of a thread's activity the fit must explain.
const MIN_EXPLAINED: f64 = 0.5;
/// Most activity outside its spans, as a share of the activity inside them.
const MAX_OUTSIDE: f64 = 0.25;
/// Least share of a thread's matched CPU that goes to one span at a time.
const MIN_DISTINCT: f64 = 0.8;
/// Most spans one thread is fitted against (more: not matched).
const MAX_SPANS: usize = 48;
/// Most squared error of the fit, as a share of a constant rate's over the window: the
/// spans must explain the thread's ups and downs, not only its level (a thread busy
/// all along is no evidence for any span).
const MAX_RESIDUAL: f64 = 0.5;
/// Longest bucket whose uncovered part, where a span covers the rest, is the span's.
const MAX_EDGE_BUCKET_NS: f64 = 100e6;
/// Ridge, relative to the mean diagonal of the normal equations.
const RIDGE: f64 = 1e-3;
/// Least share of its window a span's declared thread must be on CPU for the span to
/// count as served by that thread alone (no inferred threads for it): a thread doing
/// the request's work, not an event loop handing it to a pool.
const MIN_SELF_BUSY: f64 = 0.25;

/// What the inference found for one process over consecutive intervals.
#[derive(Debug, Default)]
pub(super) struct Inference {
    /// (interval start, span index) → on-CPU ns of matched threads given to the span.
    given: HashMap<(u64, usize), f64>,
    /// interval start → (ns given, ns the undeclared threads ran while spans were in
    /// flight).
    per_interval: HashMap<u64, (f64, f64)>,
}

impl Inference {
    /// On-CPU ns of inferred threads that span `span` gets in the interval starting at
    /// `start`.
    pub fn ns(&self, start: u64, span: usize) -> f64 {
        self.given.get(&(start, span)).copied().unwrap_or(0.0)
    }

    /// The share of the interval's in-flight CPU of undeclared threads that matched
    /// threads explain (0 when there was none).
    pub fn confidence(&self, start: u64) -> f64 {
        match self.per_interval.get(&start) {
            Some(&(given, in_flight)) if in_flight > 0.0 => (given / in_flight).min(1.0),
            _ => 0.0,
        }
    }
}

/// One bucket of the common grid: its bounds and the interval it belongs to.
#[derive(Clone, Copy)]
struct Bucket {
    start: u64,
    end: u64,
    interval: u64,
}

impl Bucket {
    fn len(&self) -> f64 {
        self.end.saturating_sub(self.start) as f64
    }
}

/// Matches the undeclared threads of one process to `spans` (indices into `all`) over
/// `intervals` (oldest first, each with the process's part of it).
pub(super) fn infer(
    intervals: &[(&IntervalRecord, &ProcessInterval)],
    all: &[RequestSpan],
    spans: &[usize],
) -> Inference {
    let declared: BTreeSet<u32> = spans.iter().filter_map(|&i| all[i].tid).collect();
    let (grid, mut activity) = timelines(intervals);
    // A span whose declared thread did its work is that thread's alone; the others
    // (no thread, or a thread that mostly waited) are what inferred threads explain.
    let candidates: Vec<usize> = spans
        .iter()
        .copied()
        .filter(|&i| !served_by_its_thread(intervals.iter().copied(), &all[i]))
        .collect();
    activity.retain(|tid, _| !declared.contains(tid));
    let mut out = Inference::default();
    // Threads with too many spans to tell apart give nothing; their in-flight CPU only
    // matters to the confidence of intervals where another thread gave, so they are
    // worked out only then (at high span rates every thread is such a thread).
    let mut ambiguous = Vec::new();
    for series in activity.values() {
        match match_thread(&grid, series, all, &candidates, false) {
            Some(fit) => out.add(fit),
            None => ambiguous.push(series),
        }
    }
    if !out.given.is_empty() {
        for series in ambiguous {
            if let Some(fit) = match_thread(&grid, series, all, &candidates, true) {
                out.add(fit);
            }
        }
    }
    out
}

impl Inference {
    /// Adds what one thread gave and ran while spans were in flight.
    fn add(&mut self, fit: ThreadFit) {
        for (interval, ns) in fit.in_flight {
            self.per_interval.entry(interval).or_default().1 += ns;
        }
        for ((interval, span), ns) in fit.given {
            *self.given.entry((interval, span)).or_default() += ns;
            self.per_interval.entry(interval).or_default().0 += ns;
        }
    }
}

/// Whether the thread `span` names did the request's own work: it was on CPU for at
/// least [`MIN_SELF_BUSY`] of the span's window in `intervals` (its process's part of
/// each; the thread taken as running evenly within a read, or within the interval
/// where it has no timeline). Such a span gets no inferred threads.
pub(super) fn served_by_its_thread<'a>(
    intervals: impl Iterator<Item = (&'a IntervalRecord, &'a ProcessInterval)>,
    span: &RequestSpan,
) -> bool {
    let Some(tid) = span.tid else {
        return false;
    };
    let share = |a: u64, b: u64, ns: u64| {
        ns as f64 * overlap(span, a, b) as f64 / b.saturating_sub(a).max(1) as f64
    };
    let ns: f64 = intervals
        .map(|(record, proc)| match proc.timeline.get(&tid) {
            Some(parts) => parts.iter().map(|&(a, b, ns)| share(a, b, ns)).sum(),
            None => proc
                .threads
                .get(&tid)
                .map_or(0.0, |&ns| share(record.start_ns, record.end_ns, ns)),
        })
        .sum();
    ns >= MIN_SELF_BUSY * span.end_ns.saturating_sub(span.start_ns).max(1) as f64
}

/// The common bucket grid of the intervals and, per thread, its on-CPU ns in each
/// bucket (a thread without a timeline in an interval is spread evenly over the
/// interval's buckets).
fn timelines(
    intervals: &[(&IntervalRecord, &ProcessInterval)],
) -> (Vec<Bucket>, HashMap<u32, Vec<f64>>) {
    let mut grid = Vec::new();
    let mut spans_of: Vec<(usize, usize)> = Vec::new();
    for (record, proc) in intervals {
        let bounds: BTreeSet<(u64, u64)> = proc
            .timeline
            .values()
            .flatten()
            .map(|&(a, b, _)| (a, b))
            .filter(|(a, b)| b > a)
            .collect();
        let first = grid.len();
        if bounds.is_empty() {
            grid.push(Bucket {
                start: record.start_ns,
                end: record.end_ns,
                interval: record.start_ns,
            });
        } else {
            // Reads in which no thread of the process ran are idle buckets too.
            let mut at = record.start_ns;
            let bucket = |start, end| Bucket {
                start,
                end,
                interval: record.start_ns,
            };
            for (start, end) in bounds {
                if start > at {
                    grid.push(bucket(at, start));
                }
                grid.push(bucket(start, end));
                at = at.max(end);
            }
            if record.end_ns > at {
                grid.push(bucket(at, record.end_ns));
            }
        }
        spans_of.push((first, grid.len()));
    }
    let mut activity: HashMap<u32, Vec<f64>> = HashMap::new();
    for ((_, proc), &(first, last)) in intervals.iter().zip(&spans_of) {
        for (&tid, &ns) in &proc.threads {
            if ns == 0 {
                continue;
            }
            let series = activity.entry(tid).or_insert_with(|| vec![0.0; grid.len()]);
            match proc.timeline.get(&tid) {
                Some(parts) => {
                    for &(a, b, ns) in parts {
                        if let Some(k) =
                            (first..last).find(|&k| grid[k].start == a && grid[k].end == b)
                        {
                            series[k] += ns as f64;
                        }
                    }
                }
                None => {
                    let total: f64 = (first..last).map(|k| grid[k].len()).sum();
                    for k in first..last {
                        series[k] += ns as f64 * grid[k].len() / total.max(1.0);
                    }
                }
            }
        }
    }
    (grid, activity)
}

/// The share of bucket `b` during which any of `spans` is in flight.
fn covered_share<'a>(b: Bucket, spans: impl Iterator<Item = &'a RequestSpan>) -> f64 {
    let mut parts: Vec<(u64, u64)> = spans
        .filter(|s| overlap(s, b.start, b.end) > 0)
        .map(|s| (s.start_ns.max(b.start), s.end_ns.min(b.end)))
        .collect();
    parts.sort_unstable();
    let (mut covered, mut until) = (0u64, b.start);
    for (a, e) in parts {
        let a = a.max(until);
        if e > a {
            covered += e - a;
            until = e;
        }
    }
    covered as f64 / b.len().max(1.0)
}

/// The bursts of a series: maximal runs of consecutive buckets in which the thread
/// ran, as index ranges.
fn bursts(series: &[f64]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (k, &ns) in series.iter().enumerate() {
        match (ns > 0.0, start) {
            (true, None) => start = Some(k),
            (false, Some(s)) => {
                out.push(s..k);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..series.len());
    }
    out
}

/// What one burst of a thread's activity came to under the fit.
#[derive(Default)]
struct BurstFit {
    total: f64,
    fitted: f64,
    inside: f64,
    outside: f64,
    distinct: f64,
    given: Vec<((u64, usize), f64)>,
}

impl BurstFit {
    /// Busy mostly while none of its spans is in flight.
    fn pending(&self) -> bool {
        self.outside > MAX_OUTSIDE * self.inside
    }

    /// Busy while its spans are in flight, idle otherwise, one span at a time.
    fn explained(&self) -> bool {
        self.total > 0.0
            && self.fitted >= MIN_EXPLAINED * self.total
            && self.outside <= MAX_OUTSIDE * self.inside
            && self.distinct >= MIN_DISTINCT * self.inside
    }
}

/// What one thread gave: per (interval, span) the ns of its explained bursts, and per
/// interval the ns it ran while spans were in flight, counting explained and ambiguous
/// bursts but not pending ones (busy mostly while no known span is: the work of a
/// request not seen yet, or of none), which say nothing against the matching.
#[derive(Default)]
struct ThreadFit {
    given: Vec<((u64, usize), f64)>,
    in_flight: Vec<(u64, f64)>,
}

/// The fit of one thread's series against the spans. A burst during which no span is
/// in flight is left out of the fit (a request not seen yet, or work of no request).
/// `None` for a thread touching more than [`MAX_SPANS`] spans (it cannot be matched)
/// unless `ambiguous` asks for its in-flight CPU all the same.
fn match_thread(
    grid: &[Bucket],
    series: &[f64],
    all: &[RequestSpan],
    spans: &[usize],
    ambiguous: bool,
) -> Option<ThreadFit> {
    let mut kept = series.to_vec();
    // Each burst with the spans that touch it: the rest play no part in it.
    let mut relevant = Vec::new();
    for burst in bursts(series) {
        let near = touching(grid, &burst, all, spans);
        if near.is_empty() {
            burst.for_each(|k| kept[k] = f64::NAN);
        } else {
            relevant.push((burst, near));
        }
    }
    let touched: HashSet<usize> = relevant
        .iter()
        .flat_map(|(_, near)| near)
        .copied()
        .collect();
    let regressors: Vec<usize> = spans
        .iter()
        .copied()
        .filter(|i| touched.contains(i))
        .collect();
    let mut out = ThreadFit::default();
    if regressors.is_empty() {
        return Some(out);
    }
    if regressors.len() > MAX_SPANS && !ambiguous {
        return None;
    }
    let (x, varies) = if regressors.len() > MAX_SPANS {
        // Too many to tell apart: every burst in flight is ambiguous.
        (vec![1.0; regressors.len()], false)
    } else {
        let x = fit(grid, &kept, all, &regressors);
        let varies = explains_the_variation(grid, &kept, all, &regressors, &x);
        (x, varies)
    };
    for (burst, near) in relevant {
        let in_flight: Vec<(u64, f64)> = burst
            .clone()
            .map(|k| {
                let cover = covered_share(grid[k], near.iter().map(|&i| &all[i]));
                (grid[k].interval, series[k] * cover)
            })
            .collect();
        // The regressors touching this burst, in their order, with their weights: the
        // others add nothing to any of its buckets.
        let near: HashSet<usize> = near.into_iter().collect();
        let (local, local_x): (Vec<usize>, Vec<f64>) = regressors
            .iter()
            .zip(&x)
            .filter(|(i, _)| near.contains(i))
            .map(|(&i, &xi)| (i, xi))
            .unzip();
        let b = fit_burst(grid, series, burst, all, &local, &local_x);
        if b.pending() {
            continue;
        }
        out.in_flight.extend(in_flight);
        if varies && b.explained() {
            out.given.extend(b.given);
        }
    }
    Some(out)
}

/// The spans among `spans` (in their order) that overlap a bucket of `burst`. Where the
/// burst's buckets are contiguous, as they are within and across consecutive intervals,
/// that is overlapping the time they cover together: one test per span, not one per
/// span and bucket (this was most of the agent's CPU at 1,000 spans/s).
fn touching(
    grid: &[Bucket],
    burst: &std::ops::Range<usize>,
    all: &[RequestSpan],
    spans: &[usize],
) -> Vec<usize> {
    let buckets = &grid[burst.clone()];
    let contiguous = buckets.windows(2).all(|w| w[0].end == w[1].start);
    match (buckets.first(), buckets.last()) {
        (Some(first), Some(last)) if contiguous => spans
            .iter()
            .copied()
            .filter(|&i| overlap(&all[i], first.start, last.end) > 0)
            .collect(),
        _ => spans
            .iter()
            .copied()
            .filter(|&i| buckets.iter().any(|b| overlap(&all[i], b.start, b.end) > 0))
            .collect(),
    }
}

/// One burst's figures under the fit `x` of `regressors`.
fn fit_burst(
    grid: &[Bucket],
    series: &[f64],
    burst: std::ops::Range<usize>,
    all: &[RequestSpan],
    regressors: &[usize],
    x: &[f64],
) -> BurstFit {
    let mut out = BurstFit::default();
    for k in burst {
        let b = grid[k];
        let (ns, len) = (series[k], b.len().max(1.0));
        let f: f64 = regressors
            .iter()
            .zip(x)
            .map(|(&i, xi)| xi * overlap(&all[i], b.start, b.end) as f64 / len)
            .sum();
        out.total += ns;
        out.fitted += ns.min(f * len);
        // The part of a sub-interval read no span covers, where a span covers the rest,
        // is taken as the covering spans' (within a read there is no telling when the
        // thread ran); a read no span touches is outside. Of a longer bucket (a read
        // the agent was late for, or a whole interval read once) the spans take only
        // the part they cover, the thread taken as running evenly, and the rest is
        // evidence neither way.
        let mut here: Vec<(usize, f64)> = Vec::new();
        let (mut covered, mut top) = (0.0, 0.0);
        for (a, e, weights) in segments(b, regressors, x, all) {
            let part = ns * (e - a) as f64 / len;
            let sum: f64 = weights.iter().map(|w| w.1).sum();
            if sum <= 0.0 {
                continue;
            }
            covered += part;
            top += part * weights.iter().map(|w| w.1).fold(0.0, f64::max) / sum;
            here.extend(weights.iter().map(|&(i, w)| (i, part * w / sum)));
        }
        if covered <= 0.0 {
            out.outside += ns;
            continue;
        }
        let taken = if len <= MAX_EDGE_BUCKET_NS {
            ns
        } else {
            covered
        };
        out.total -= ns - taken;
        out.fitted = out.fitted.min(out.total);
        out.inside += taken;
        out.distinct += top * taken / covered;
        for (i, part) in here {
            out.given.push(((b.interval, i), part * taken / covered));
        }
    }
    out
}

/// Whether the fit's squared error is at most [`MAX_RESIDUAL`] of a constant rate's
/// (buckets marked NaN are left out).
fn explains_the_variation(
    grid: &[Bucket],
    series: &[f64],
    all: &[RequestSpan],
    regressors: &[usize],
    x: &[f64],
) -> bool {
    let kept = || grid.iter().zip(series).filter(|(_, ns)| !ns.is_nan());
    let weight: f64 = kept().map(|(b, _)| b.len()).sum();
    let mean = kept().map(|(_, ns)| ns).sum::<f64>() / weight.max(1.0);
    let (mut constant, mut fitted) = (0.0, 0.0);
    for (b, &ns) in kept() {
        let len = b.len().max(1.0);
        let a = ns / len;
        let f: f64 = regressors
            .iter()
            .zip(x)
            .map(|(&i, xi)| xi * overlap(&all[i], b.start, b.end) as f64 / len)
            .sum();
        constant += len * (a - mean).powi(2);
        fitted += len * (a - f).powi(2);
    }
    constant > 0.0 && fitted <= MAX_RESIDUAL * constant
}

/// A piece of a bucket, (start, end), with the fitted spans in flight over it and
/// their weights (span index, weight > 0).
type Piece = (u64, u64, Vec<(usize, f64)>);

/// Bucket `b` cut at the fitted spans' edges: each piece with the spans in flight over
/// it and their weights (span index, weight > 0).
fn segments(b: Bucket, regressors: &[usize], x: &[f64], all: &[RequestSpan]) -> Vec<Piece> {
    let cuts = cuts((b.start, b.end), regressors.iter().map(|&i| &all[i]));
    cuts.windows(2)
        .map(|w| {
            let weights = regressors
                .iter()
                .zip(x)
                .filter(|&(&i, &xi)| xi > 0.0 && all[i].start_ns <= w[0] && all[i].end_ns >= w[1])
                .map(|(&i, &xi)| (i, xi))
                .collect();
            (w[0], w[1], weights)
        })
        .collect()
}

/// Ridge non-negative least squares of the thread's utilisation against the spans'
/// coverage of each bucket, weighted by bucket length.
fn fit(grid: &[Bucket], series: &[f64], all: &[RequestSpan], regressors: &[usize]) -> Vec<f64> {
    let n = regressors.len();
    let mut q = vec![vec![0.0; n]; n];
    let mut rhs = vec![0.0; n];
    for (k, b) in grid.iter().enumerate() {
        if series[k].is_nan() {
            continue;
        }
        let len = b.len().max(1.0);
        let cover: Vec<(usize, f64)> = regressors
            .iter()
            .enumerate()
            .map(|(j, &i)| (j, overlap(&all[i], b.start, b.end) as f64 / len))
            .filter(|c| c.1 > 0.0)
            .collect();
        let (w, a) = (len / 1e9, series[k] / len);
        for &(j, cj) in &cover {
            rhs[j] += w * a * cj;
            for &(l, cl) in &cover {
                q[j][l] += w * cj * cl;
            }
        }
    }
    let ridge = RIDGE * (0..n).map(|j| q[j][j]).sum::<f64>() / n as f64;
    for (j, row) in q.iter_mut().enumerate() {
        row[j] += ridge.max(f64::MIN_POSITIVE);
    }
    nnls(&q, &rhs)
}

/// Minimises ½xᵀQx − bᵀx over x ≥ 0 for a positive definite Q (Lawson and Hanson's
/// active set method on the normal equations).
pub(super) fn nnls(q: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut x = vec![0.0; n];
    let mut passive = vec![false; n];
    let tol = 1e-12 * b.iter().fold(0.0, |m: f64, v| m.max(v.abs())).max(1e-300);
    for _ in 0..3 * n + 3 {
        let gradient: Vec<f64> = (0..n)
            .map(|j| b[j] - (0..n).map(|l| q[j][l] * x[l]).sum::<f64>())
            .collect();
        let Some(j) = (0..n)
            .filter(|&j| !passive[j] && gradient[j] > tol)
            .max_by(|&a, &c| gradient[a].total_cmp(&gradient[c]))
        else {
            break;
        };
        passive[j] = true;
        for _ in 0..3 * n + 3 {
            let z = solve_on(q, b, &passive);
            if (0..n).all(|i| !passive[i] || z[i] > 0.0) {
                x = z;
                break;
            }
            let alpha = (0..n)
                .filter(|&i| passive[i] && z[i] <= 0.0)
                .map(|i| x[i] / (x[i] - z[i]))
                .fold(1.0, f64::min);
            for i in 0..n {
                x[i] += alpha * (z[i] - x[i]);
                if passive[i] && x[i] <= tol {
                    passive[i] = false;
                    x[i] = 0.0;
                }
            }
        }
    }
    x
}

/// Solves Q_PP z_P = b_P (Cholesky), zero outside the passive set P.
fn solve_on(q: &[Vec<f64>], b: &[f64], passive: &[bool]) -> Vec<f64> {
    let idx: Vec<usize> = (0..b.len()).filter(|&i| passive[i]).collect();
    let m = idx.len();
    let mut l = vec![vec![0.0; m]; m];
    for r in 0..m {
        for c in 0..=r {
            let dot: f64 = (0..c).map(|k| l[r][k] * l[c][k]).sum();
            let v = q[idx[r]][idx[c]] - dot;
            l[r][c] = if r == c {
                v.max(f64::MIN_POSITIVE).sqrt()
            } else {
                v / l[c][c]
            };
        }
    }
    let mut y = vec![0.0; m];
    for r in 0..m {
        y[r] = (b[idx[r]] - (0..r).map(|k| l[r][k] * y[k]).sum::<f64>()) / l[r][r];
    }
    let mut z = vec![0.0; b.len()];
    for r in (0..m).rev() {
        let s: f64 = (r + 1..m).map(|k| l[k][r] * z[idx[k]]).sum();
        z[idx[r]] = (y[r] - s) / l[r][r];
    }
    z
}

#[cfg(test)]
mod tests;
