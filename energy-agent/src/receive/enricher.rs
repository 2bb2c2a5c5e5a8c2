//! Holds received span batches until the interval covering their spans' ends has been
//! attributed (or a bounded delay passes), then adds energy and carbon to the request
//! spans and hands the batch on — resource, scope, links, events and every other
//! attribute untouched. Batches beyond the buffer bound are passed on at once,
//! unenriched and counted; nothing is dropped here.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::Span,
};
use regex::Regex;

use super::spans::{self, Selection, attr_int, attr_str, names};
use crate::requests::{Claims, History, IntervalRecord, RequestSample, RequestSpan, enrich};
use known::{Known, KnownSpans};
use traces::{SpanId, TraceId, TraceIndex, span_id, trace_id};

/// `--service NAME=REGEX`: spans of service NAME come from the process whose command
/// line matches REGEX.
#[derive(Clone, Debug)]
pub struct ServiceRule {
    /// `service.name` (or `service.instance.id`).
    pub service: String,
    /// Matched against `/proc/<pid>/cmdline`.
    pub regex: Regex,
}

impl std::str::FromStr for ServiceRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, re) = s
            .split_once('=')
            .ok_or_else(|| format!("--service {s:?} is not NAME=REGEX"))?;
        Ok(Self {
            service: service.to_string(),
            regex: Regex::new(re).map_err(|e| format!("--service {service}: {e}"))?,
        })
    }
}

/// How spans are chosen and held.
#[derive(Clone, Debug)]
pub struct EnrichConfig {
    /// Which spans are requests.
    pub selection: Selection,
    /// Service → process rules.
    pub services: Vec<ServiceRule>,
    /// Longest a batch waits for its interval.
    pub max_delay: Duration,
    /// Most spans held at once.
    pub max_held_spans: usize,
    /// procfs, for service rules.
    pub proc_root: PathBuf,
}

/// Where a batch came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The sending process, when the connection was local and resolvable.
    pub pid: Option<u32>,
}

/// Counters for the agent's own metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EnrichStats {
    /// Spans received.
    pub received: u64,
    /// Request spans enriched.
    pub enriched: u64,
    /// Request spans marked unattributed.
    pub unattributed: u64,
    /// Spans passed on unenriched because the buffer was full.
    pub overflowed: u64,
    /// Request spans left alone because an enclosing or enclosed request carries the energy.
    pub nested: u64,
    /// Spans held now.
    pub held: u64,
}

struct Held {
    request: ExportTraceServiceRequest,
    /// Per resource: the process that produced its spans, or why it is not known.
    pids: Vec<Result<u32, String>>,
    arrived: Instant,
    last_end_ns: u64,
    spans: usize,
}

/// Per (pid, interval start): a known span without a live thread id in that interval,
/// or none (see `Enricher::threadless_span`).
type ThreadlessSpans = HashMap<(u32, u64), Option<Known>>;

/// Most request spans remembered for splits.
const MAX_KNOWN: usize = 200_000;

/// The enrichment stage.
pub struct Enricher {
    config: EnrichConfig,
    history: History,
    held: VecDeque<Held>,
    held_spans: usize,
    traces: TraceIndex,
    cmdlines: (Option<Instant>, Vec<(u32, String)>),
    requests: Vec<RequestSample>,
    /// Request spans seen, so concurrent spans from other batches take part in each
    /// split.
    known: KnownSpans,
    claims: Claims,
    /// Counters.
    pub stats: EnrichStats,
}

/// Spans per generation of the trace index, and how long a generation lasts: enough
/// to cover every held span and the history behind them.
const TRACE_GENERATION: (usize, Duration) = (100_000, Duration::from_secs(60));

fn count_spans(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

impl Enricher {
    /// An enricher keeping `history_intervals` intervals of history.
    pub fn new(config: EnrichConfig, history_intervals: usize) -> Self {
        Self {
            config,
            history: History::new(history_intervals),
            held: VecDeque::new(),
            held_spans: 0,
            traces: TraceIndex::new(TRACE_GENERATION.0, TRACE_GENERATION.1),
            cmdlines: (None, Vec::new()),
            requests: Vec::new(),
            known: KnownSpans::default(),
            claims: Claims::default(),
            stats: EnrichStats::default(),
        }
    }

    /// Takes a received batch; returns batches to pass on now (the buffer was full).
    pub fn accept(
        &mut self,
        request: ExportTraceServiceRequest,
        origin: Origin,
    ) -> Vec<ExportTraceServiceRequest> {
        let n = count_spans(&request);
        self.stats.received += n as u64;
        let now = Instant::now();
        let (pids, last_end_ns) = self.remember(&request, origin, now);
        if self.held_spans + n > self.config.max_held_spans {
            return vec![self.overflow(request, n)];
        }
        self.held_spans += n;
        self.stats.held = self.held_spans as u64;
        self.held.push_back(Held {
            request,
            pids,
            arrived: now,
            last_end_ns,
            spans: n,
        });
        Vec::new()
    }

    /// Resolves each resource's process and remembers the batch's request spans (for
    /// splits) and every span's place in its trace (for nesting); returns the
    /// resources' processes and the latest span end.
    fn remember(
        &mut self,
        request: &ExportTraceServiceRequest,
        origin: Origin,
        now: Instant,
    ) -> (Vec<Result<u32, String>>, u64) {
        let mut last_end_ns = 0;
        let mut pids = Vec::with_capacity(request.resource_spans.len());
        for rs in &request.resource_spans {
            let attrs = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            let pid = self.resolve(attrs, origin);
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                if let Ok(pid) = &pid
                    && self.config.selection.matches(s)
                {
                    self.known.insert(Known {
                        trace: trace_id(&s.trace_id),
                        span: span_id(&s.span_id),
                        request: RequestSpan {
                            pid: *pid,
                            start_ns: s.start_time_unix_nano,
                            end_ns: s.end_time_unix_nano.max(s.start_time_unix_nano),
                            tid: spans::claimed_tid(s),
                            tokens: spans::tokens(s),
                        },
                    });
                }
            }
            pids.push(pid);
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                last_end_ns = last_end_ns.max(s.end_time_unix_nano);
                self.traces.insert(
                    trace_id(&s.trace_id),
                    span_id(&s.span_id),
                    span_id(&s.parent_span_id),
                    self.config.selection.matches(s),
                    now,
                );
            }
        }
        (pids, last_end_ns)
    }

    /// A batch of `n` spans the buffer has no room for: its request spans are marked
    /// unattributed, and it is passed on at once.
    fn overflow(
        &mut self,
        mut request: ExportTraceServiceRequest,
        n: usize,
    ) -> ExportTraceServiceRequest {
        let mut marked = 0;
        for s in request
            .resource_spans
            .iter_mut()
            .flat_map(|rs| rs.scope_spans.iter_mut())
            .flat_map(|ss| ss.spans.iter_mut())
            .filter(|s| self.config.selection.matches(s))
        {
            spans::mark_unattributed(s, "the agent's enrichment buffer was full");
            marked += 1;
        }
        self.stats.overflowed += n as u64;
        self.stats.unattributed += marked;
        request
    }

    /// Each request enriched since the last call (model, joules, grams, tokens).
    pub fn take_requests(&mut self) -> Vec<RequestSample> {
        std::mem::take(&mut self.requests)
    }

    /// Adds an attributed interval; returns the batches now ready, enriched.
    pub fn on_interval(&mut self, record: IntervalRecord) -> Vec<ExportTraceServiceRequest> {
        self.history.push(record);
        let known = &self.known;
        self.history.compact(|pid| known.has_process(pid));
        self.release(false)
    }

    /// Releases batches that are covered or have waited their longest (`flush`: all).
    pub fn release(&mut self, flush: bool) -> Vec<ExportTraceServiceRequest> {
        let covered = self.history.covered_until();
        let mut ready = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(h) = self.held.pop_front() {
            if flush || h.last_end_ns <= covered || h.arrived.elapsed() >= self.config.max_delay {
                ready.push(h);
            } else {
                waiting.push_back(h);
            }
        }
        self.held = waiting;
        self.claims.prune(self.history.covered_from());
        self.known.prune(self.history.covered_from(), MAX_KNOWN);
        let mut out = Vec::with_capacity(ready.len());
        let mut threadless = ThreadlessSpans::default();
        for h in ready {
            self.held_spans -= h.spans;
            out.push(self.process(h, &mut threadless));
        }
        self.stats.held = self.held_spans as u64;
        out
    }

    fn service_pid(&mut self, service: &str) -> Option<u32> {
        let rules: Vec<Regex> = self
            .config
            .services
            .iter()
            .filter(|r| r.service == service)
            .map(|r| r.regex.clone())
            .collect();
        if rules.is_empty() {
            return None;
        }
        let stale = self
            .cmdlines
            .0
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10));
        if stale {
            self.cmdlines = (Some(Instant::now()), command_lines(&self.config.proc_root));
        }
        let me = std::process::id();
        rules.iter().find_map(|re| {
            self.cmdlines
                .1
                .iter()
                .find(|(pid, line)| *pid != me && re.is_match(line))
                .map(|(pid, _)| *pid)
        })
    }

    /// The process that produced a resource's spans, or why it is not known.
    fn resolve(
        &mut self,
        attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
        origin: Origin,
    ) -> Result<u32, String> {
        if let Some(pid) = attr_int(attrs, names::PROCESS_PID)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
        {
            return Ok(pid);
        }
        if let Some(pid) = origin.pid {
            return Ok(pid);
        }
        let service = attr_str(attrs, names::SERVICE_NAME).map(str::to_string);
        let instance = attr_str(attrs, names::SERVICE_INSTANCE_ID).map(str::to_string);
        for name in [&service, &instance].into_iter().flatten() {
            if let Some(pid) = self.service_pid(name) {
                return Ok(pid);
            }
        }
        Err(format!(
            "no process.pid in the resource, the sender's connection is not local, and no --service rule found a process for service.name={}",
            service.as_deref().unwrap_or("(none)")
        ))
    }

    /// A known span of `pid` that shares some of interval `[start, end)` and has no live
    /// thread id, if there is one; looked for once per release (`memo`).
    fn threadless_span(
        &self,
        pid: u32,
        (start, end): (u64, u64),
        memo: &mut ThreadlessSpans,
    ) -> Option<Known> {
        // Spans only ever become nested during a release, never the reverse, and no span
        // is added: a remembered "none" stays true, a remembered span is checked again.
        if let Some(found) = memo.get(&(pid, start))
            && found.is_none_or(|k| !self.traces.is_nested(k.trace, k.span))
        {
            return *found;
        }
        let found = self
            .known
            .overlapping(pid, start, end)
            .find(|k| {
                let r = &k.request;
                r.end_ns.min(end) > r.start_ns.max(start)
                    && !r.tid.is_some_and(|t| self.history.is_thread_of(pid, t))
                    && !self.traces.is_nested(k.trace, k.span)
            })
            .copied();
        memo.insert((pid, start), found);
        found
    }

    /// Enriches one released batch.
    fn process(
        &mut self,
        held: Held,
        threadless: &mut ThreadlessSpans,
    ) -> ExportTraceServiceRequest {
        let mut request = held.request;
        let (targets, unattributed) = self.classify(&request, &held.pids);
        let (all, index) = self.participants(&request, &targets, threadless);
        self.add_energies(&mut request, &targets, &all, &index);
        for (at, reason) in &unattributed {
            spans::mark_unattributed(span_at_mut(&mut request, *at), reason);
            self.stats.unattributed += 1;
        }
        request
    }

    /// Which spans of a batch are requests to enrich (with their process), and which
    /// cannot be tied to a process (with why). Nested requests are neither, and counted.
    fn classify(
        &mut self,
        request: &ExportTraceServiceRequest,
        pids: &[Result<u32, String>],
    ) -> (Vec<Target>, Vec<(SpanAt, String)>) {
        let mut targets: Vec<Target> = Vec::new();
        let mut unattributed: Vec<(SpanAt, String)> = Vec::new();
        for (ri, rs) in request.resource_spans.iter().enumerate() {
            let pid = &pids[ri];
            for (si, ss) in rs.scope_spans.iter().enumerate() {
                for (pi, s) in ss.spans.iter().enumerate() {
                    if !self.config.selection.matches(s) {
                        continue;
                    }
                    if self
                        .traces
                        .is_nested(trace_id(&s.trace_id), span_id(&s.span_id))
                    {
                        self.stats.nested += 1;
                        continue;
                    }
                    let at = (ri, si, pi);
                    match pid {
                        Err(reason) => unattributed.push((at, reason.clone())),
                        Ok(pid) if !self.history.knows(*pid) => unattributed.push((
                            at,
                            format!("process {pid} has no attributed CPU time in the agent's recent intervals"),
                        )),
                        Ok(pid) => targets.push((at, *pid)),
                    }
                }
            }
        }
        (targets, unattributed)
    }

    /// The request spans that take part in the targets' split, and where each span is
    /// among them.
    ///
    /// The known request spans of those processes that overlap a target take part in
    /// the split, with, for each interval the targets touch, one span without a live
    /// thread id where the interval has one (it makes the whole interval split by
    /// concurrency instead of by thread activity). No other span can change a
    /// target's share. Thread ids count only when they are live kernel threads of the
    /// process.
    fn participants(
        &self,
        request: &ExportTraceServiceRequest,
        targets: &[Target],
        threadless: &mut ThreadlessSpans,
    ) -> (Vec<RequestSpan>, SpanIndex) {
        let mut all: Vec<RequestSpan> = Vec::new();
        let mut index = SpanIndex::default();
        for (pid, (from, to)) in windows(request, targets) {
            let deciders: Vec<Known> = self
                .history
                .intervals_overlapping(from, to)
                .into_iter()
                .filter_map(|interval| self.threadless_span(pid, interval, threadless))
                .collect();
            // (A decider already among the overlapping spans is not added twice.)
            let overlapping = self.known.overlapping(pid, from, to).map(|k| (k, false));
            for (k, decider) in overlapping.chain(deciders.iter().map(|k| (k, true))) {
                if (decider && index.contains_key(&(k.trace, k.span)))
                    || self.traces.is_nested(k.trace, k.span)
                {
                    continue;
                }
                let mut r = k.request;
                r.tid = r.tid.filter(|&t| self.history.is_thread_of(pid, t));
                index.insert((k.trace, k.span), all.len());
                all.push(r);
            }
        }
        (all, index)
    }

    /// Splits the energy among `all` and writes each target's share onto its span.
    fn add_energies(
        &mut self,
        request: &mut ExportTraceServiceRequest,
        targets: &[Target],
        all: &[RequestSpan],
        index: &SpanIndex,
    ) {
        let mut chosen = Vec::new();
        let mut slots = Vec::new();
        for (at, _) in targets {
            let s = span_at(request, *at);
            if let Some(&i) = index.get(&(trace_id(&s.trace_id), span_id(&s.span_id))) {
                chosen.push(i);
                slots.push(*at);
            }
        }
        let energies = enrich(&chosen, all, &self.history, &mut self.claims);
        for ((at, energy), i) in slots.iter().zip(&energies).zip(&chosen) {
            let model = self
                .history
                .model_of(all[*i].pid)
                .unwrap_or("unknown")
                .to_string();
            self.requests.push(RequestSample {
                model,
                end_unix_ns: all[*i].end_ns,
                joules: energy.joules.total(),
                carbon_g: energy.carbon_g,
                tokens: all[*i].tokens,
                estimated: energy.estimated,
            });
            let span = span_at_mut(request, *at);
            spans::add_energy(span, energy);
            self.traces
                .mark_enriched(trace_id(&span.trace_id), span_id(&span.span_id));
            self.stats.enriched += 1;
        }
    }
}

/// Every process's command line under `proc_root`, arguments joined by spaces (what
/// `--service` rules match); processes without one are left out.
fn command_lines(proc_root: &Path) -> Vec<(u32, String)> {
    let mut list = Vec::new();
    for e in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let args = crate::identity::read_cmdline(&e.path());
        if !args.is_empty() {
            list.push((pid, args.join(" ")));
        }
    }
    list
}

/// A span's place in a batch: resource, scope and span indices.
type SpanAt = (usize, usize, usize);

/// A request span to enrich, and its process.
type Target = (SpanAt, u32);

/// Where each participating span is in the split's list.
type SpanIndex = foldhash::HashMap<(TraceId, SpanId), usize>;

fn span_at(request: &ExportTraceServiceRequest, (ri, si, pi): SpanAt) -> &Span {
    &request.resource_spans[ri].scope_spans[si].spans[pi]
}

fn span_at_mut(request: &mut ExportTraceServiceRequest, (ri, si, pi): SpanAt) -> &mut Span {
    &mut request.resource_spans[ri].scope_spans[si].spans[pi]
}

/// Per process, the time from the earliest target start to the latest target end.
fn windows(request: &ExportTraceServiceRequest, targets: &[Target]) -> HashMap<u32, (u64, u64)> {
    let mut window: HashMap<u32, (u64, u64)> = HashMap::new();
    for (at, pid) in targets {
        let s = span_at(request, *at);
        let w = window.entry(*pid).or_insert((u64::MAX, 0));
        w.0 = w.0.min(s.start_time_unix_nano);
        w.1 = w.1.max(s.end_time_unix_nano);
    }
    window
}

mod known;
#[cfg(test)]
mod tests;
mod traces;
