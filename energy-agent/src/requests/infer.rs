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
//! a pool still finds the pool's CPU.

use std::collections::{BTreeSet, HashMap};

use super::{IntervalRecord, ProcessInterval, RequestSpan, overlap};

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
/// Ridge, relative to the mean diagonal of the normal equations.
const RIDGE: f64 = 1e-3;

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
    let (grid, activity) = timelines(intervals, &declared);
    let mut out = Inference::default();
    for series in activity.values() {
        let fit = match_thread(&grid, series, all, spans);
        for (k, &ns) in series.iter().enumerate() {
            if ns == 0.0 {
                continue;
            }
            let b = grid[k];
            let in_flight = covered_share(b, spans.iter().map(|&i| &all[i]));
            out.per_interval.entry(b.interval).or_default().1 += ns * in_flight;
        }
        let Some(fit) = fit else { continue };
        for ((interval, span), ns) in fit {
            *out.given.entry((interval, span)).or_default() += ns;
            out.per_interval.entry(interval).or_default().0 += ns;
        }
    }
    out
}

/// The common bucket grid of the intervals and, per undeclared thread, its on-CPU ns
/// in each bucket (a thread without a timeline in an interval is spread evenly over
/// the interval's buckets).
fn timelines(
    intervals: &[(&IntervalRecord, &ProcessInterval)],
    declared: &BTreeSet<u32>,
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
            if declared.contains(&tid) || ns == 0 {
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

/// The fit of one thread's series: per (interval, span), the ns the span gets; None
/// when the spans do not explain the thread.
fn match_thread(
    grid: &[Bucket],
    series: &[f64],
    all: &[RequestSpan],
    spans: &[usize],
) -> Option<HashMap<(u64, usize), f64>> {
    let active: Vec<usize> = (0..grid.len()).filter(|&k| series[k] > 0.0).collect();
    let regressors: Vec<usize> = spans
        .iter()
        .copied()
        .filter(|&i| {
            active
                .iter()
                .any(|&k| overlap(&all[i], grid[k].start, grid[k].end) > 0)
        })
        .collect();
    if regressors.is_empty() || regressors.len() > MAX_SPANS {
        return None;
    }
    let x = fit(grid, series, all, &regressors);
    let (mut fitted_ns, mut total_ns, mut inside, mut outside, mut distinct) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut given: HashMap<(u64, usize), f64> = HashMap::new();
    for &k in &active {
        let b = grid[k];
        let (ns, len) = (series[k], b.len().max(1.0));
        let f: f64 = regressors
            .iter()
            .zip(&x)
            .map(|(&i, xi)| xi * overlap(&all[i], b.start, b.end) as f64 / len)
            .sum();
        total_ns += ns;
        fitted_ns += ns.min(f * len);
        for (a, e, weights) in segments(b, &regressors, &x, all) {
            let part = ns * (e - a) as f64 / len;
            let sum: f64 = weights.iter().map(|w| w.1).sum();
            if sum <= 0.0 {
                outside += part;
                continue;
            }
            inside += part;
            let top = weights.iter().map(|w| w.1).fold(0.0, f64::max);
            distinct += part * top / sum;
            for (i, w) in weights {
                *given.entry((b.interval, i)).or_default() += part * w / sum;
            }
        }
    }
    let explained = total_ns > 0.0
        && explains_the_variation(grid, series, all, &regressors, &x)
        && fitted_ns >= MIN_EXPLAINED * total_ns
        && outside <= MAX_OUTSIDE * inside
        && distinct >= MIN_DISTINCT * inside;
    explained.then_some(given)
}

/// Whether the fit's squared error is at most [`MAX_RESIDUAL`] of a constant rate's.
fn explains_the_variation(
    grid: &[Bucket],
    series: &[f64],
    all: &[RequestSpan],
    regressors: &[usize],
    x: &[f64],
) -> bool {
    let weight: f64 = grid.iter().map(|b| b.len()).sum();
    let mean = series.iter().sum::<f64>() / weight.max(1.0);
    let (mut constant, mut fitted) = (0.0, 0.0);
    for (b, &ns) in grid.iter().zip(series) {
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
    let mut cuts: BTreeSet<u64> = [b.start, b.end].into();
    for &i in regressors {
        for t in [all[i].start_ns, all[i].end_ns] {
            if t > b.start && t < b.end {
                cuts.insert(t);
            }
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
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
