//! The per-request split, the stage between carbon and enrichment
//! (docs/ARCHITECTURE.md, "Per request"): a span of process P
//! over [start, end] gets P's energy in each interval it overlaps, times the overlap
//! fraction, split among P's concurrent spans — by gen_ai token counts when they carry
//! them, else equally. When the spans carry live kernel thread ids, each span instead
//! gets its thread's own part of P's energy in the interval (the thread's CPU time over
//! P's), shared among that thread's spans in the interval by overlap: the thread's CPU
//! is where the work happened, however short the span is within the interval. GPU
//! energy follows the same rules with the threads' GPU-driver activity in place of
//! their CPU time. What no span claims stays with the process (unattributed to
//! requests).
//!
//! Pure: the caller keeps a [`History`] of recent intervals and asks [`enrich`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::{
    attribute::{
        EnergyByClass, GpuTimeline,
        gpu::{GpuSplitBasis, activity_weights},
    },
    carbon::{CarbonReport, operational_grams},
    clock::WallClock,
    probe::GpuCalls,
    units::{Joules, Nanos},
};

/// One process in one interval, as the span split needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInterval {
    /// The process's model (for per-model request metrics).
    pub model: String,
    /// Energy attributed to the process.
    pub joules: EnergyByClass,
    /// Its embodied carbon share, grams.
    pub embodied_g: f64,
    /// On-CPU time of the process.
    pub cpu_ns: Nanos,
    /// On-CPU ns per thread id.
    pub threads: BTreeMap<u32, u64>,
    /// When each thread ran: (start, end, ns) per sub-interval read, Unix ns; absent
    /// threads count as running evenly over the interval.
    pub timeline: Buckets,
    /// GPU-driver activity weight per thread id (one measure for every thread of the
    /// process: busy time, else submissions, else ioctls).
    pub gpu_threads: BTreeMap<u32, u64>,
    /// When each thread drove the GPU: (start, end, weight) per sub-interval read, Unix
    /// ns, in the same measure; absent threads count as evenly spread.
    pub gpu_timeline: Buckets,
}

/// Per thread: (start, end, amount) per sub-interval read, Unix ns.
type Buckets = BTreeMap<u32, Vec<(u64, u64, u64)>>;

/// Per-thread GPU weights of a process and their timeline in Unix ns, on the same
/// basis as the process's share of the GPU ([`activity_weights`]).
fn gpu_thread_weights(
    threads: &BTreeMap<u32, GpuCalls>,
    timeline: &GpuTimeline,
    clock: &WallClock,
) -> (BTreeMap<u32, u64>, Buckets) {
    let Some((basis, weights)) = activity_weights(threads.iter().map(|(&t, c)| (t, c))) else {
        return Default::default();
    };
    let measure: fn(&GpuCalls) -> u64 = match basis {
        GpuSplitBasis::DriverBusyTime => |c| c.busy_ns,
        GpuSplitBasis::DriverIoctls => |c| c.ioctls,
        _ => GpuCalls::submissions,
    };
    let timeline = timeline
        .iter()
        .map(|(tid, parts)| {
            let unix = parts
                .iter()
                .map(|(a, b, calls)| (clock.unix_ns(*a), clock.unix_ns(*b), measure(calls)))
                .collect();
            (*tid, unix)
        })
        .collect();
    (weights, timeline)
}

/// One attributed interval in wall-clock time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalRecord {
    /// Start, Unix ns.
    pub start_ns: u64,
    /// End, Unix ns.
    pub end_ns: u64,
    /// Per process.
    pub processes: HashMap<u32, ProcessInterval>,
    /// Grid intensity, g/kWh.
    pub g_per_kwh: f64,
    /// Where it came from.
    pub intensity_source: String,
    /// PUE.
    pub pue: f64,
    /// Whether the energy is estimated.
    pub estimated: bool,
    /// The energy sources (`rapl-powercap`, `estimate+nvml`, …).
    pub source: String,
}

impl IntervalRecord {
    /// The record of a finished interval report.
    pub fn from_report(r: &CarbonReport, clock: &WallClock) -> Self {
        let source = if r.power.sources.gpu == "none" {
            r.power.sources.cpu.to_string()
        } else {
            format!("{}+{}", r.power.sources.cpu, r.power.sources.gpu)
        };
        Self {
            start_ns: clock.unix_ns(r.start_ns),
            end_ns: clock.unix_ns(r.end_ns),
            processes: r
                .processes
                .iter()
                .map(|p| {
                    let (gpu_threads, gpu_timeline) =
                        gpu_thread_weights(&p.gpu_threads, &p.gpu_timeline, clock);
                    (
                        p.pid,
                        ProcessInterval {
                            model: p.model.clone(),
                            joules: p.joules,
                            embodied_g: r.carbon.process(p).embodied_g,
                            cpu_ns: p.cpu_time_ns,
                            threads: p.threads.clone(),
                            timeline: p
                                .thread_timeline
                                .iter()
                                .map(|(tid, parts)| {
                                    let unix = parts
                                        .iter()
                                        .map(|&(a, b, ns)| (clock.unix_ns(a), clock.unix_ns(b), ns))
                                        .collect();
                                    (*tid, unix)
                                })
                                .collect(),
                            gpu_threads,
                            gpu_timeline,
                        },
                    )
                })
                .collect(),
            g_per_kwh: r.carbon.intensity.g_per_kwh,
            intensity_source: r.carbon.intensity.source.clone(),
            pue: r.carbon.pue,
            estimated: r.power.estimated,
            source,
        }
    }
}

/// The recent intervals, oldest first, bounded.
#[derive(Clone, Debug, Default)]
pub struct History {
    records: VecDeque<IntervalRecord>,
    max: usize,
    /// The newest intervals kept with every process; older ones keep only the
    /// processes that sent spans (see [`History::compact`]).
    whole: usize,
    /// Records at the front already compacted.
    compacted: usize,
}

impl History {
    /// Keeps at most `max` intervals, the newest tenth of them (at least 8) with every
    /// process.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            records: VecDeque::new(),
            max,
            whole: (max / 10).max(8),
            compacted: 0,
        }
    }

    /// Adds the newest interval.
    pub fn push(&mut self, record: IntervalRecord) {
        self.records.push_back(record);
        while self.records.len() > self.max {
            self.records.pop_front();
            self.compacted = self.compacted.saturating_sub(1);
        }
    }

    /// Drops, from intervals older than the newest whole ones, the processes `keep`
    /// rejects (those that never sent a span): a busy host has hundreds of processes an
    /// interval, and ten minutes of all of them is most of the agent's memory. A process
    /// whose first span arrives later finds its energy only in the whole intervals.
    pub fn compact(&mut self, keep: impl Fn(u32) -> bool) {
        let end = self.records.len().saturating_sub(self.whole);
        for r in self.records.range_mut(self.compacted.min(end)..end) {
            r.processes.retain(|pid, _| keep(*pid));
            r.processes.shrink_to_fit();
        }
        self.compacted = self.compacted.max(end);
    }

    /// The end of the newest attributed interval (Unix ns); 0 before any.
    pub fn covered_until(&self) -> u64 {
        self.records.back().map_or(0, |r| r.end_ns)
    }

    /// The start of the oldest interval kept.
    pub fn covered_from(&self) -> u64 {
        self.records.front().map_or(0, |r| r.start_ns)
    }

    /// The kept intervals that overlap `[from, to]` (Unix ns), oldest first.
    fn overlapping(&self, from: u64, to: u64) -> impl Iterator<Item = &IntervalRecord> {
        let first = self.records.partition_point(|r| r.end_ns < from);
        self.records
            .range(first..)
            .take_while(move |r| r.start_ns <= to)
    }

    /// The (start, end) of each kept interval that overlaps `[from, to]`, oldest first.
    pub fn intervals_overlapping(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        self.overlapping(from, to)
            .map(|r| (r.start_ns, r.end_ns))
            .collect()
    }

    /// Whether `tid` ran as a thread of `pid` in any kept interval (newest first: a live
    /// thread is found at once).
    pub fn is_thread_of(&self, pid: u32, tid: u32) -> bool {
        self.records.iter().rev().any(|r| {
            r.processes
                .get(&pid)
                .is_some_and(|p| p.threads.contains_key(&tid))
        })
    }

    /// The model of `pid` in the newest interval that has it.
    pub fn model_of(&self, pid: u32) -> Option<&str> {
        self.records
            .iter()
            .rev()
            .find_map(|r| r.processes.get(&pid))
            .map(|p| p.model.as_str())
    }

    /// Whether `pid` ran in any kept interval.
    pub fn knows(&self, pid: u32) -> bool {
        self.records.iter().any(|r| r.processes.contains_key(&pid))
    }
}

/// A request span to enrich.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestSpan {
    /// Process that served it.
    pub pid: u32,
    /// Start, Unix ns.
    pub start_ns: u64,
    /// End, Unix ns.
    pub end_ns: u64,
    /// A live kernel thread id of `pid` that served it, when known.
    pub tid: Option<u32>,
    /// gen_ai input + output tokens, when given.
    pub tokens: Option<u64>,
}

/// What a span is given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanEnergy {
    /// Energy by domain class (idle_j: allocated idle share within it).
    pub joules: EnergyByClass,
    /// Operational carbon, grams.
    pub carbon_g: f64,
    /// Embodied carbon share, grams.
    pub embodied_g: f64,
    /// Energy-weighted grid intensity, g/kWh (PUE not included).
    pub g_per_kwh: f64,
    /// Intensity source.
    pub intensity_source: String,
    /// Whether any part is estimated.
    pub estimated: bool,
    /// Energy source names.
    pub source: String,
}

impl SpanEnergy {
    /// Adds a share of an interval's energy `j`: `share.cpu` of its CPU and DRAM parts
    /// (and of the embodied carbon), `share.gpu` of its GPU part; returns the joules
    /// added.
    fn add(
        &mut self,
        j: &EnergyByClass,
        share: Share,
        record: &IntervalRecord,
        embodied_g: f64,
    ) -> Joules {
        // The allocated idle part (`--idle share`) sits inside the classes; taken as
        // spread over them by their size.
        let total = j.total();
        let (cpu_idle, gpu_idle) = if total > Joules::ZERO {
            (
                j.idle_j * ((j.cpu_j + j.dram_j) / total),
                j.idle_j * (j.gpu_j / total),
            )
        } else {
            (Joules::ZERO, Joules::ZERO)
        };
        let part = EnergyByClass {
            cpu_j: j.cpu_j * share.cpu,
            dram_j: j.dram_j * share.cpu,
            gpu_j: j.gpu_j * share.gpu,
            idle_j: cpu_idle * share.cpu + gpu_idle * share.gpu,
        };
        let embodied_share = share.cpu;
        let carbon = operational_grams(part.total(), record.g_per_kwh, record.pue);
        self.joules.merge(&part);
        self.carbon_g += carbon;
        self.embodied_g += embodied_g * embodied_share;
        self.estimated |= record.estimated;
        self.source.clone_from(&record.source);
        self.intensity_source.clone_from(&record.intensity_source);
        part.total()
    }
}

/// The part of each process's interval energy already given to released spans, so
/// that spans arriving later can never make the requests claim more than the process.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// (pid, interval start, part: 0 CPU and DRAM, 1 GPU) → fraction given.
    given: HashMap<(u32, u64, u8), f64>,
}

impl Claims {
    /// Forgets intervals that ended before `before` (Unix ns).
    pub fn prune(&mut self, before: u64) {
        self.given.retain(|&(_, start, _), _| start >= before);
    }

    /// Scales `wanted` (the fractions spans ask of one part of one interval) so the
    /// total given never passes 1, and records it; returns the scale.
    fn grant(&mut self, key: (u32, u64, u8), wanted: f64) -> f64 {
        if wanted <= 0.0 {
            return 0.0;
        }
        let given = self.given.entry(key).or_default();
        let scale = ((1.0 - *given).max(0.0) / wanted).min(1.0);
        *given += wanted * scale;
        scale
    }
}

/// A span's fraction of one interval's CPU/DRAM and GPU energy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Share {
    cpu: f64,
    gpu: f64,
}

/// Each overlapping span's fraction of `proc`'s CPU/DRAM and GPU energy in `record`
/// (indices into `all`), before any cap.
fn fractions(
    record: &IntervalRecord,
    proc: &ProcessInterval,
    all: &[RequestSpan],
    indices: &[usize],
) -> Vec<(usize, Share)> {
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
    let cpu = if on_threads && proc.cpu_ns > Nanos(0) {
        thread_fractions(&here, all, proc.cpu_ns.get(), |tid| {
            proc.timeline
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| even(proc.threads.get(&tid).copied().unwrap_or(0)))
        })
    } else {
        segments.clone()
    };
    let gpu_total: u64 = proc.gpu_threads.values().sum();
    let gpu = if on_threads && gpu_total > 0 {
        thread_fractions(&here, all, gpu_total, |tid| {
            proc.gpu_timeline
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| even(proc.gpu_threads.get(&tid).copied().unwrap_or(0)))
        })
    } else {
        segments
    };
    here.iter()
        .map(|i| {
            let share = Share {
                cpu: cpu.get(i).copied().unwrap_or(0.0),
                gpu: gpu.get(i).copied().unwrap_or(0.0),
            };
            (*i, share)
        })
        .collect()
}

/// How long `span` overlaps [a, b).
fn overlap(span: &RequestSpan, a: u64, b: u64) -> u64 {
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

/// Segment mode: the interval is cut at every span boundary inside it; in each
/// segment the process's energy goes to the spans active then (by tokens, else
/// equally).
fn segment_fractions(
    record: &IntervalRecord,
    here: &[usize],
    all: &[RequestSpan],
) -> HashMap<usize, f64> {
    let len = record.end_ns.saturating_sub(record.start_ns);
    let mut cuts: BTreeSet<u64> = [record.start_ns, record.end_ns].into();
    for &i in here {
        for t in [all[i].start_ns, all[i].end_ns] {
            if t > record.start_ns && t < record.end_ns {
                cuts.insert(t);
            }
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut out: HashMap<usize, f64> = HashMap::new();
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
        for (i, share) in shares(&active, all) {
            *out.entry(i).or_default() += fraction * share;
        }
    }
    out
}

/// Energy for the spans `targets` (indices into `all`, every request span known of
/// the processes concerned, so that concurrent spans from other batches count).
pub fn enrich(
    targets: &[usize],
    all: &[RequestSpan],
    history: &History,
    claims: &mut Claims,
) -> Vec<SpanEnergy> {
    let mut out = vec![SpanEnergy::default(); targets.len()];
    // Σ joules × intensity per target, for the energy-weighted intensity.
    let mut weighted = vec![0.0; targets.len()];
    let slot: HashMap<usize, usize> = targets.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let mut by_pid: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in all.iter().enumerate() {
        by_pid.entry(s.pid).or_default().push(i);
    }
    let pids: BTreeSet<u32> = targets.iter().map(|&i| all[i].pid).collect();
    // Only the intervals the targets overlap can give them anything.
    let from = targets.iter().map(|&i| all[i].start_ns).min().unwrap_or(0);
    let to = targets.iter().map(|&i| all[i].end_ns).max().unwrap_or(0);
    for record in history.overlapping(from, to) {
        for pid in &pids {
            let Some(proc) = record.processes.get(pid) else {
                continue;
            };
            let mine: Vec<(usize, Share)> = fractions(record, proc, all, &by_pid[pid])
                .into_iter()
                .filter(|(i, _)| slot.contains_key(i))
                .collect();
            let cpu_scale = claims.grant(
                (*pid, record.start_ns, 0),
                mine.iter().map(|(_, f)| f.cpu).sum(),
            );
            let gpu_scale = claims.grant(
                (*pid, record.start_ns, 1),
                mine.iter().map(|(_, f)| f.gpu).sum(),
            );
            for (i, f) in mine {
                let share = Share {
                    cpu: f.cpu * cpu_scale,
                    gpu: f.gpu * gpu_scale,
                };
                let k = slot[&i];
                let added = out[k].add(&proc.joules, share, record, proc.embodied_g);
                weighted[k] += added.get() * record.g_per_kwh;
            }
        }
    }
    for (s, w) in out.iter_mut().zip(weighted) {
        if s.joules.total() > Joules::ZERO {
            s.g_per_kwh = w / s.joules.total().get();
        }
    }
    out
}

/// Each active span's share of a segment's process energy: by tokens, else equal.
fn shares(active: &[usize], spans: &[RequestSpan]) -> Vec<(usize, f64)> {
    if active
        .iter()
        .all(|&i| spans[i].tokens.is_some_and(|t| t > 0))
    {
        let total: u64 = active.iter().map(|&i| spans[i].tokens.unwrap_or(0)).sum();
        return active
            .iter()
            .map(|&i| (i, spans[i].tokens.unwrap_or(0) as f64 / total as f64))
            .collect();
    }
    let n = active.len() as f64;
    active.iter().map(|&i| (i, 1.0 / n)).collect()
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
