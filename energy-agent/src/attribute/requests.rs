//! Energy per request span (DESIGN.md, "Attribution, precisely"): a span of process P
//! over [start, end] gets P's energy in each interval it overlaps, times the overlap
//! fraction, split among P's concurrent spans — by gen_ai token counts when they carry
//! them, else equally. When the spans carry live kernel thread ids, each span instead
//! gets its thread's own part of P's energy in the interval (the thread's CPU time over
//! P's), shared among that thread's spans in the interval by overlap: the thread's CPU
//! is where the work happened, however short the span is within the interval. What no
//! span claims stays with the process (unattributed to requests).
//!
//! Pure: the caller keeps a [`History`] of recent intervals and asks [`enrich`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::{IntervalReport, Joules};
use crate::clock::WallClock;

/// One process in one interval, as the span split needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInterval {
    /// The process's model (for per-model request metrics).
    pub model: String,
    /// Energy attributed to the process.
    pub joules: Joules,
    /// Its embodied carbon share, grams.
    pub embodied_g: f64,
    /// On-CPU ns of the process.
    pub cpu_ns: u64,
    /// On-CPU ns per thread id.
    pub threads: BTreeMap<u32, u64>,
    /// When each thread ran: (start, end, ns) per sub-interval read, Unix ns; absent
    /// threads count as running evenly over the interval.
    pub timeline: BTreeMap<u32, Vec<(u64, u64, u64)>>,
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
    pub fn from_report(r: &IntervalReport, clock: &WallClock) -> Self {
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
                    (
                        p.pid,
                        ProcessInterval {
                            model: p.model.clone(),
                            joules: p.joules,
                            embodied_g: p.embodied_g,
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
}

impl History {
    /// Keeps at most `max` intervals.
    pub fn new(max: usize) -> Self {
        Self {
            records: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Adds the newest interval.
    pub fn push(&mut self, record: IntervalRecord) {
        self.records.push_back(record);
        while self.records.len() > self.max {
            self.records.pop_front();
        }
    }

    /// The end of the newest attributed interval (Unix ns); 0 before any.
    pub fn covered_until(&self) -> u64 {
        self.records.back().map_or(0, |r| r.end_ns)
    }

    /// The start of the oldest interval kept.
    pub fn covered_from(&self) -> u64 {
        self.records.front().map_or(0, |r| r.start_ns)
    }

    /// Whether `tid` ran as a thread of `pid` in any kept interval.
    pub fn is_thread_of(&self, pid: u32, tid: u32) -> bool {
        self.records.iter().any(|r| {
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
    pub joules: Joules,
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
    /// Adds `share` of a segment's energy `j`; returns the joules added.
    fn add(&mut self, j: &Joules, share: f64, record: &IntervalRecord, embodied_g: f64) -> f64 {
        let part = Joules {
            cpu_j: j.cpu_j * share,
            dram_j: j.dram_j * share,
            gpu_j: j.gpu_j * share,
            idle_j: j.idle_j * share,
        };
        let carbon = part.total() / crate::carbon::J_PER_KWH * record.g_per_kwh * record.pue;
        self.joules.merge(&part);
        self.carbon_g += carbon;
        self.embodied_g += embodied_g * share;
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
    given: HashMap<(u32, u64), f64>,
}

impl Claims {
    /// Forgets intervals that ended before `before` (Unix ns).
    pub fn prune(&mut self, before: u64) {
        self.given.retain(|&(_, start), _| start >= before);
    }
}

/// Each overlapping span's fraction of `proc`'s energy in `record` (indices into
/// `all`), before any cap.
fn fractions(
    record: &IntervalRecord,
    proc: &ProcessInterval,
    all: &[RequestSpan],
    indices: &[usize],
) -> Vec<(usize, f64)> {
    let len = record.end_ns.saturating_sub(record.start_ns);
    let overlap = |i: usize| {
        all[i]
            .end_ns
            .min(record.end_ns)
            .saturating_sub(all[i].start_ns.max(record.start_ns))
    };
    let here: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| overlap(i) > 0)
        .collect();
    if here.is_empty() || len == 0 {
        return Vec::new();
    }
    if here.iter().all(|&i| all[i].tid.is_some()) && proc.cpu_ns > 0 {
        // Each span takes its thread's CPU time within the span (from the thread's
        // timeline), over the process's CPU in the interval. Spans that overlap on one
        // thread (async runtimes) share the thread's time in the overlap.
        let overlap_with =
            |i: usize, a: u64, b: u64| all[i].end_ns.min(b).saturating_sub(all[i].start_ns.max(a));
        return here
            .iter()
            .map(|&i| {
                let tid = all[i].tid.unwrap_or(0);
                let even = [(
                    record.start_ns,
                    record.end_ns,
                    proc.threads.get(&tid).copied().unwrap_or(0),
                )];
                let buckets = proc.timeline.get(&tid).map_or(&even[..], |t| &t[..]);
                let mut ns = 0.0;
                for &(a, b, thread_ns) in buckets {
                    let mine = overlap_with(i, a, b) as f64;
                    if mine == 0.0 || b <= a {
                        continue;
                    }
                    let on_thread: f64 = here
                        .iter()
                        .filter(|&&j| all[j].tid == Some(tid))
                        .map(|&j| overlap_with(j, a, b) as f64)
                        .sum();
                    ns += thread_ns as f64 * mine / on_thread.max((b - a) as f64);
                }
                (i, ns / proc.cpu_ns as f64)
            })
            .collect();
    }
    // Segment the interval at every span boundary inside it; in each segment the
    // process's energy goes to the spans active then.
    let mut cuts: BTreeSet<u64> = [record.start_ns, record.end_ns].into();
    for &i in &here {
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
    out.into_iter().collect()
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
    for record in &history.records {
        for pid in &pids {
            let Some(proc) = record.processes.get(pid) else {
                continue;
            };
            let mine: Vec<(usize, f64)> = fractions(record, proc, all, &by_pid[pid])
                .into_iter()
                .filter(|(i, _)| slot.contains_key(i))
                .collect();
            let wanted: f64 = mine.iter().map(|(_, f)| f).sum();
            if wanted <= 0.0 {
                continue;
            }
            let given = claims.given.entry((*pid, record.start_ns)).or_default();
            let scale = ((1.0 - *given).max(0.0) / wanted).min(1.0);
            *given += wanted * scale;
            for (i, f) in mine {
                let k = slot[&i];
                weighted[k] +=
                    out[k].add(&proc.joules, f * scale, record, proc.embodied_g) * record.g_per_kwh;
            }
        }
    }
    for (s, w) in out.iter_mut().zip(weighted) {
        if s.joules.total() > 0.0 {
            s.g_per_kwh = w / s.joules.total();
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
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn record(start: u64, pid: u32, cpu_j: f64, threads: &[(u32, u64)]) -> IntervalRecord {
        let cpu_ns: u64 = threads.iter().map(|t| t.1).sum();
        IntervalRecord {
            start_ns: start,
            end_ns: start + S,
            processes: [(
                pid,
                ProcessInterval {
                    model: "m".into(),
                    joules: Joules {
                        cpu_j,
                        dram_j: cpu_j / 10.0,
                        gpu_j: 0.0,
                        idle_j: 0.0,
                    },
                    embodied_g: 1.0,
                    cpu_ns,
                    threads: threads.iter().copied().collect(),
                    timeline: BTreeMap::new(),
                },
            )]
            .into(),
            g_per_kwh: 360.0,
            intensity_source: "fixed".into(),
            pue: 1.5,
            estimated: false,
            source: "rapl-powercap".into(),
        }
    }

    fn span(start: u64, end: u64, tid: Option<u32>, tokens: Option<u64>) -> RequestSpan {
        RequestSpan {
            pid: 7,
            start_ns: start,
            end_ns: end,
            tid,
            tokens,
        }
    }

    /// Every span a target, nothing claimed before.
    fn enrich_all(spans: &[RequestSpan], h: &History) -> Vec<SpanEnergy> {
        enrich(
            &(0..spans.len()).collect::<Vec<_>>(),
            spans,
            h,
            &mut Claims::default(),
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_lone_span_gets_its_overlap_with_each_interval() {
        let mut h = History::new(8);
        h.push(record(0, 7, 10.0, &[(7, S)]));
        h.push(record(S, 7, 20.0, &[(7, S)]));
        // 0.5 s of the first interval and 0.25 s of the second: 5 + 5 J of CPU.
        let e = enrich_all(&[span(S / 2, S + S / 4, None, None)], &h);
        assert!(close(e[0].joules.cpu_j, 10.0));
        assert!(close(e[0].joules.dram_j, 1.0));
        // Carbon = 11 J / 3.6e6 × 360 × 1.5.
        assert!(close(e[0].carbon_g, 11.0 / 3.6e6 * 360.0 * 1.5));
        assert!(
            close(e[0].g_per_kwh, 360.0),
            "the grid's intensity, PUE apart"
        );
        assert!(close(e[0].embodied_g, 0.75));
        assert_eq!(e[0].source, "rapl-powercap");
    }

    #[test]
    fn concurrent_spans_on_threads_split_by_thread_cpu_and_leave_the_rest() {
        let mut h = History::new(8);
        // Threads 71 and 72 served requests; 73 did other work.
        h.push(record(
            0,
            7,
            30.0,
            &[(71, 2 * S / 3), (72, S / 3), (73, S / 3)],
        ));
        let e = enrich_all(
            &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
            &h,
        );
        let cpu = 30.0;
        assert!(close(e[0].joules.cpu_j, cpu * 0.5), "{:?}", e[0].joules);
        assert!(close(e[1].joules.cpu_j, cpu * 0.25));
        // A quarter stays with the process: the requests claim ≤ the process.
        assert!(e[0].joules.total() + e[1].joules.total() < 33.0);
    }

    #[test]
    fn tokens_then_equal_split() {
        let mut h = History::new(8);
        h.push(record(0, 7, 12.0, &[(7, S)]));
        let by_tokens = enrich_all(
            &[span(0, S, None, Some(300)), span(0, S, None, Some(100))],
            &h,
        );
        assert!(close(by_tokens[0].joules.cpu_j, 9.0) && close(by_tokens[1].joules.cpu_j, 3.0));
        let equal = enrich_all(&[span(0, S, None, Some(300)), span(0, S, None, None)], &h);
        assert!(close(equal[0].joules.cpu_j, 6.0) && close(equal[1].joules.cpu_j, 6.0));
    }

    #[test]
    fn overlapping_spans_share_only_while_they_overlap() {
        let mut h = History::new(8);
        h.push(record(0, 7, 10.0, &[(7, S)]));
        // A covers [0, 0.6), B [0.4, 1.0): alone 0.4 s each, together 0.2 s.
        let e = enrich_all(
            &[
                span(0, 6 * S / 10, None, None),
                span(4 * S / 10, S, None, None),
            ],
            &h,
        );
        assert!(close(e[0].joules.cpu_j, 4.0 + 1.0));
        assert!(close(e[1].joules.cpu_j, 4.0 + 1.0));
        assert!(
            close(e[0].joules.cpu_j + e[1].joules.cpu_j, 10.0),
            "nothing counted twice"
        );
    }

    #[test]
    fn the_threads_timeline_says_when_its_time_was_spent() {
        let mut h = History::new(8);
        // Worker 71 ran 0.1 s, all of it in [0.5, 0.6); the main thread 0.1 s elsewhere.
        let mut r = record(0, 7, 10.0, &[(71, S / 10), (70, S / 10)]);
        let p = r.processes.get_mut(&7).unwrap();
        let buckets = (0..10).map(|k| {
            (
                k * S / 10,
                (k + 1) * S / 10,
                if k == 5 { S / 10 } else { 0 },
            )
        });
        p.timeline.insert(71, buckets.collect());
        h.push(r);
        let e = enrich_all(&[span(S / 2, S / 2 + S / 10, Some(71), None)], &h);
        assert!(
            close(e[0].joules.cpu_j, 5.0),
            "its thread's whole part: {:?}",
            e[0].joules
        );
        // Without a timeline the thread's time is taken as even over the interval.
        let mut h2 = History::new(8);
        h2.push(record(0, 7, 10.0, &[(71, S / 10), (70, S / 10)]));
        let e = enrich_all(&[span(S / 2, S / 2 + S / 10, Some(71), None)], &h2);
        assert!(close(e[0].joules.cpu_j, 0.5), "{:?}", e[0].joules);
        // Two requests overlapping on one thread share its time where they overlap.
        let e = enrich_all(
            &[span(0, S, Some(71), None), span(0, S, Some(71), None)],
            &h,
        );
        assert!(close(e[0].joules.cpu_j, 2.5) && close(e[1].joules.cpu_j, 2.5));
    }

    #[test]
    fn twice_the_work_on_its_thread_is_twice_the_energy() {
        let mut h = History::new(8);
        h.push(record(0, 7, 9.0, &[(71, 2 * S / 3), (72, S / 3)]));
        let e = enrich_all(
            &[span(0, S, Some(71), None), span(0, S, Some(72), None)],
            &h,
        );
        assert!(close(e[0].joules.total() / e[1].joules.total(), 2.0));
    }

    #[test]
    fn batches_see_each_others_spans_and_never_claim_more_than_the_process() {
        let mut h = History::new(8);
        h.push(record(0, 7, 12.0, &[(7, S)]));
        let all = [
            span(0, S, None, None),
            span(0, S, None, None),
            span(0, S, None, None),
        ];
        let mut claims = Claims::default();
        // First batch: span 0, while spans 0 and 1 are known: half each.
        let first = enrich(&[0], &all[..2], &h, &mut claims);
        assert!(close(first[0].joules.cpu_j, 6.0));
        // A later batch knows all three: a third each, but only 6 J are left for 1 and 2.
        let later = enrich(&[1, 2], &all, &h, &mut claims);
        assert!(close(later[0].joules.cpu_j, 3.0) && close(later[1].joules.cpu_j, 3.0));
        let total = first[0].joules.cpu_j + later[0].joules.cpu_j + later[1].joules.cpu_j;
        assert!(close(total, 12.0), "{total}");
        claims.prune(S);
        assert!(claims.given.is_empty());
    }

    #[test]
    fn history_is_bounded_and_knows_threads() {
        let mut h = History::new(2);
        for i in 0..5 {
            h.push(record(i * S, 7, 1.0, &[(70 + i as u32, S)]));
        }
        assert_eq!(h.covered_from(), 3 * S);
        assert_eq!(h.covered_until(), 5 * S);
        assert!(h.is_thread_of(7, 74) && !h.is_thread_of(7, 70));
        assert!(h.knows(7) && !h.knows(8));
        assert!(
            enrich_all(&[span(0, S, None, None)], &h)[0].joules.total() == 0.0,
            "outside the history"
        );
    }
}
