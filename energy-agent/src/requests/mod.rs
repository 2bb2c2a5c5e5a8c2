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

pub use fractions::MIN_CONFIDENCE;
use fractions::{Part, fractions};

use crate::{
    attribute::{
        EnergyByClass, GpuTimeline, IdleOrigin,
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
    /// The interval's least trustworthy idle-power origin.
    pub idle_origin: Option<IdleOrigin>,
    /// Whether any of its idle powers is uncertain.
    pub idle_uncertain: bool,
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
            idle_origin: r.idle_origin,
            idle_uncertain: r.idle_uncertain,
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

    /// Adds the newest interval. The kept intervals stay in time order, as the lookups
    /// need: after the wall clock went back (a step [`WallClock::reanchor`] followed),
    /// those that end after the new one starts are dropped, since their wall times now
    /// also name moments still to come and a later span there would be matched to them.
    /// A forward step leaves a gap, which no span time falls into.
    pub fn push(&mut self, record: IntervalRecord) {
        while self
            .records
            .back()
            .is_some_and(|r| r.end_ns > record.start_ns)
        {
            self.records.pop_back();
        }
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

    /// Whether `span` names a live thread of its process that did the request's own
    /// work in the kept intervals (so no other thread's work is inferred for it, and
    /// nothing past its end can change its split).
    pub fn served_by_its_thread(&self, span: &RequestSpan) -> bool {
        span.tid.is_some_and(|tid| self.is_thread_of(span.pid, tid))
            && infer::served_by_its_thread(
                self.overlapping(span.start_ns, span.end_ns)
                    .filter_map(|r| Some((r, r.processes.get(&span.pid)?))),
                span,
            )
    }

    /// The model of `pid` in the newest interval that has it.
    pub fn model_of(&self, pid: u32) -> Option<&str> {
        self.records
            .iter()
            .rev()
            .find_map(|r| r.processes.get(&pid))
            .map(|p| p.model.as_str())
    }

    /// Whether the newest interval was read more finely than whole (sub-interval
    /// timelines, `--request-resolution`).
    pub fn sub_sampled(&self) -> bool {
        self.records.back().is_some_and(|r| {
            r.processes
                .values()
                .any(|p| p.timeline.values().any(|t| t.len() > 1))
        })
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

/// One enriched request, as the history keeps it: the sample the report's
/// per-request figures (mean, p50/p95, J/token) and the drift's confidence interval
/// are computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestSample {
    /// Model of the process that served it.
    pub model: String,
    /// When the span ended, Unix ns.
    pub end_unix_ns: u64,
    /// Energy given to the request.
    pub joules: Joules,
    /// Its operational carbon, grams.
    pub carbon_g: f64,
    /// gen_ai input + output tokens, when the span or its gen_ai spans carried them.
    pub tokens: Option<u64>,
    /// gen_ai input tokens (its own, else its gen_ai spans'), for the per-token metrics.
    pub input_tokens: Option<u64>,
    /// gen_ai output tokens.
    pub output_tokens: Option<u64>,
    /// Whether any part of its energy is estimated.
    pub estimated: bool,
}

/// How a span's share of its process's CPU energy was decided (`energy.split`), in
/// the interval that gave it the most energy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SplitMode {
    /// By the CPU time of the thread the span declared (`thread.native_id`).
    Thread,
    /// By the CPU time of threads matched to the span from their timelines (with any
    /// declared thread's).
    ThreadInferred,
    /// Among the spans in flight, by their gen_ai token counts.
    Tokens,
    /// Equally among the spans in flight.
    #[default]
    Equal,
}

impl SplitMode {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitMode::Thread => "thread",
            SplitMode::ThreadInferred => "thread-inferred",
            SplitMode::Tokens => "tokens",
            SplitMode::Equal => "equal",
        }
    }

    const ALL: [SplitMode; 4] = [
        SplitMode::Thread,
        SplitMode::ThreadInferred,
        SplitMode::Tokens,
        SplitMode::Equal,
    ];

    fn index(self) -> usize {
        self as usize
    }
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
    /// The least trustworthy idle-power origin of the intervals it drew from.
    pub idle_origin: Option<IdleOrigin>,
    /// Whether any of those idle powers is uncertain.
    pub idle_uncertain: bool,
    /// How its CPU share was decided.
    pub split: SplitMode,
    /// The confidence of the thread matching in the intervals that gave the span its
    /// energy, energy-weighted (1 for declared threads; for `tokens` and `equal`, the
    /// matching's confidence that was too low).
    pub split_confidence: f64,
    /// gen_ai input tokens of the request (its own or its gen_ai spans'), for the
    /// per-token figures.
    pub input_tokens: Option<u64>,
    /// gen_ai output tokens of the request.
    pub output_tokens: Option<u64>,
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
        self.idle_uncertain |= record.idle_uncertain;
        self.idle_origin = match (self.idle_origin, record.idle_origin) {
            (Some(a), Some(b)) => Some(a.weaker(b)),
            (a, b) => a.or(b),
        };
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

/// How much of the timelines before the first and after the last target span the
/// thread inference looks at (the enricher holds spans whose threads may be inferred
/// until the intervals reach this far past them): enough to see a thread run on after
/// a span.
pub const INFERENCE_CONTEXT_NS: u64 = 250_000_000;

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
    let records: Vec<&IntervalRecord> = history.overlapping(from, to).collect();
    // The inference sees the timelines around the targets too: a thread still busy
    // after a span ended is not that span's, and only the next interval may show it.
    let context: Vec<&IntervalRecord> = history
        .overlapping(
            from.saturating_sub(INFERENCE_CONTEXT_NS),
            to.saturating_add(INFERENCE_CONTEXT_NS),
        )
        .collect();
    let inferences: HashMap<u32, infer::Inference> = pids
        .iter()
        .map(|pid| {
            let intervals: Vec<(&IntervalRecord, &ProcessInterval)> = context
                .iter()
                .filter_map(|r| Some((*r, r.processes.get(pid)?)))
                .collect();
            (*pid, infer::infer(&intervals, all, &by_pid[pid]))
        })
        .collect();
    let mut modes = vec![Modes::default(); targets.len()];
    for record in records {
        for pid in &pids {
            let Some(proc) = record.processes.get(pid) else {
                continue;
            };
            let mine: Vec<(usize, Part)> =
                fractions(record, proc, all, &by_pid[pid], &inferences[pid])
                    .into_iter()
                    .filter(|(i, _)| slot.contains_key(i))
                    .collect();
            let cpu_scale = claims.grant(
                (*pid, record.start_ns, 0),
                mine.iter().map(|(_, p)| p.share.cpu).sum(),
            );
            let gpu_scale = claims.grant(
                (*pid, record.start_ns, 1),
                mine.iter().map(|(_, p)| p.share.gpu).sum(),
            );
            for (i, p) in mine {
                let share = Share {
                    cpu: p.share.cpu * cpu_scale,
                    gpu: p.share.gpu * gpu_scale,
                };
                let k = slot[&i];
                let added = out[k].add(&proc.joules, share, record, proc.embodied_g);
                weighted[k] += added.get() * record.g_per_kwh;
                modes[k].add(p.mode, p.confidence, added.get());
            }
        }
    }
    for ((s, w), m) in out.iter_mut().zip(weighted).zip(modes) {
        if s.joules.total() > Joules::ZERO {
            s.g_per_kwh = w / s.joules.total().get();
        }
        (s.split, s.split_confidence) = m.decided();
    }
    out
}

/// The split modes of one span's intervals, by the joules each gave it.
#[derive(Clone, Debug, Default)]
struct Modes {
    joules: [f64; 4],
    /// Σ joules × confidence, Σ joules.
    confidence: (f64, f64),
    /// The first interval's mode and confidence (for a span given nothing).
    first: Option<(SplitMode, f64)>,
}

impl Modes {
    fn add(&mut self, mode: SplitMode, confidence: f64, joules: f64) {
        self.first.get_or_insert((mode, confidence));
        self.joules[mode.index()] += joules;
        self.confidence.0 += joules * confidence;
        self.confidence.1 += joules;
    }

    /// The mode that gave the most energy, and the energy-weighted confidence.
    fn decided(&self) -> (SplitMode, f64) {
        if self.confidence.1 <= 0.0 {
            return self.first.unwrap_or_default();
        }
        let mode = SplitMode::ALL
            .into_iter()
            .max_by(|a, b| self.joules[a.index()].total_cmp(&self.joules[b.index()]))
            .unwrap_or_default();
        (mode, self.confidence.0 / self.confidence.1)
    }
}

mod fractions;
mod infer;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
