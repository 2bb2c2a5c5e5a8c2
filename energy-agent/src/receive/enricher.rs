//! Holds received span batches until the interval covering their request spans' ends
//! has been attributed (or a bounded delay passes), then adds energy and carbon to the
//! request spans and hands the batch on — resource, scope, links, events and every
//! other attribute untouched. Batches beyond the buffer bound are passed on at once,
//! unenriched and counted; nothing is dropped here. What senders say is checked: which
//! process they are (`resolve`), their spans' times, copies of spans sent again. Each
//! batch keeps its share of the receiver's budget ([`Admitted`]) while held and hands
//! it on with the batch.

use std::{
    collections::VecDeque,
    path::PathBuf,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{ResourceSpans, Span},
};

pub use super::peer::{Origin, PidNamespace};
use super::{
    admission::{Admitted, Ticket, trace_items},
    spans::{self, Selection},
};
use crate::requests::{Claims, History, IntervalRecord, RequestSample, RequestSpan, SpanEnergy};
use below::{Below, SpansBelow};
use generations::Generations;
use known::{Known, KnownSpans};
pub use resolve::ServiceRule;
use resolve::Services;
use split::ThreadlessSpans;
use traces::{TraceIndex, span_id, trace_id};

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
    /// Request spans with impossible times (start 0, end before start, longer than
    /// [`spans::MAX_REQUEST_NS`]): marked unattributed with the reason, and not counted
    /// as `unattributed`.
    pub invalid: u64,
    /// Request spans received again (same trace and span id) after a copy was given
    /// energy: they carry the first copy's figures (or, forgotten, are marked) and
    /// claim nothing; not counted as `enriched`.
    pub duplicates: u64,
    /// Spans held now.
    pub held: u64,
}

struct Held {
    request: ExportTraceServiceRequest,
    ticket: Ticket,
    /// Per resource: the process that produced its spans, or why it is not known.
    pids: Vec<Result<u32, String>>,
    arrived: Instant,
    last_end_ns: u64,
    spans: usize,
}

/// How far past the end of a batch's last request span the intervals must reach before
/// a batch whose threads are inferred is released, while the intervals are read finely
/// enough to infer them (within `max_delay`): a thread still busy after a span ended is
/// not that span's, which only a timeline past the end can show. Spans that name a
/// thread wait too unless that thread did the work (a named event-loop thread that
/// mostly waited has its work inferred on a pool).
const LOOKAHEAD_NS: u64 = crate::requests::INFERENCE_CONTEXT_NS;

/// Most request spans remembered for splits.
const MAX_KNOWN: usize = 200_000;

/// The enrichment stage.
pub struct Enricher {
    config: EnrichConfig,
    history: History,
    held: VecDeque<Held>,
    held_spans: usize,
    traces: TraceIndex,
    /// `--service` rules and what they found.
    services: Services,
    requests: Vec<RequestSample>,
    /// Token counts and ends of the gen_ai spans below each request.
    below: SpansBelow,
    /// Request spans seen, so concurrent spans from other batches take part in each
    /// split.
    known: KnownSpans,
    claims: Claims,
    /// The energy recently given to each request span, for copies sent again (an SDK's
    /// retries).
    given: Generations<SpanEnergy>,
    /// Counters.
    pub stats: EnrichStats,
}

/// Enriched spans per generation of the energies remembered for copies sent again, and
/// how long a generation lasts: long enough for an SDK's retries.
const RESENT: (usize, Duration) = (4096, Duration::from_secs(120));

/// Spans per generation of the trace index, and how long a generation lasts: enough
/// to cover every held span and the history behind them.
const TRACE_GENERATION: (usize, Duration) = (100_000, Duration::from_secs(60));

impl Enricher {
    /// An enricher keeping `history_intervals` intervals of history.
    pub fn new(config: EnrichConfig, history_intervals: usize) -> Self {
        Self {
            services: Services::new(config.services.clone(), config.proc_root.clone()),
            config,
            history: History::new(history_intervals),
            held: VecDeque::new(),
            held_spans: 0,
            traces: TraceIndex::new(TRACE_GENERATION.0, TRACE_GENERATION.1),
            requests: Vec::new(),
            below: SpansBelow::new(TRACE_GENERATION.0, TRACE_GENERATION.1),
            known: KnownSpans::default(),
            claims: Claims::default(),
            given: Generations::new(RESENT.0, RESENT.1),
            stats: EnrichStats::default(),
        }
    }

    /// Takes a received batch; returns batches to pass on now (the buffer was full).
    pub fn accept(
        &mut self,
        batch: impl Into<Admitted<ExportTraceServiceRequest>>,
        origin: Origin,
    ) -> Vec<Admitted<ExportTraceServiceRequest>> {
        let Admitted {
            message: request,
            ticket,
        } = batch.into();
        let n = trace_items(&request);
        self.stats.received += n as u64;
        let now = Instant::now();
        let (pids, last_end_ns) = self.remember(&request, &origin, now);
        if self.held_spans + n > self.config.max_held_spans {
            return vec![Admitted {
                message: self.overflow(request, n),
                ticket,
            }];
        }
        self.held_spans += n;
        self.stats.held = self.held_spans as u64;
        self.held.push_back(Held {
            request,
            ticket,
            pids,
            arrived: now,
            last_end_ns,
            spans: n,
        });
        Vec::new()
    }

    /// Resolves each resource's process and remembers the batch's request spans (for
    /// splits) and every span's place in its trace (for nesting); returns the
    /// resources' processes and the latest end of a request span. A request span with
    /// impossible times is neither remembered nor a request in its trace (so its
    /// requests below are still enriched).
    fn remember(
        &mut self,
        request: &ExportTraceServiceRequest,
        origin: &Origin,
        now: Instant,
    ) -> (Vec<Result<u32, String>>, u64) {
        let mut last_end_ns = 0;
        let mut pids = Vec::with_capacity(request.resource_spans.len());
        for rs in &request.resource_spans {
            let attrs = resource_attributes(rs);
            let pid = resolve::trusted_pid(resolve::claimed_pid(attrs), origin)
                .or_else(|| self.services.pid_of(attrs))
                .ok_or_else(|| resolve::unresolved(attrs));
            if let Ok(pid) = pid {
                self.remember_requests(rs, pid, resolve::threads_namespace(origin));
            }
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let request = self.is_valid_request(s);
                if request {
                    last_end_ns = last_end_ns.max(s.end_time_unix_nano);
                }
                let (trace, span) = (trace_id(&s.trace_id), span_id(&s.span_id));
                let parent = span_id(&s.parent_span_id);
                self.traces.insert(trace, span, parent, request, now);
                self.below.lift(&self.traces, (trace, span, parent));
                if let Some((input, output)) = spans::token_counts(s)
                    .filter(|c| spans::is_gen_ai(s) && (c.0.is_some() || c.1.is_some()))
                {
                    let end_ns = s.end_time_unix_nano;
                    let below = Below {
                        input,
                        output,
                        end_ns,
                    };
                    self.below
                        .add(&self.traces, (trace, span, parent), below, now);
                }
            }
            pids.push(pid);
        }
        (pids, last_end_ns)
    }

    /// Whether `s` is a request span whose times can be a request's.
    fn is_valid_request(&self, s: &Span) -> bool {
        self.config.selection.matches(s) && spans::request_times(s).is_ok()
    }

    /// Remembers a resource's request spans as spans of `pid` (thread ids read through
    /// `threads`, the sender's pid namespace, when it is not the agent's).
    fn remember_requests(&mut self, rs: &ResourceSpans, pid: u32, threads: Option<&PidNamespace>) {
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            if !self.config.selection.matches(s) {
                continue;
            }
            let Ok((start_ns, end_ns)) = spans::request_times(s) else {
                continue;
            };
            let tid =
                spans::claimed_tid(s).and_then(|t| threads.map_or(Some(t), |ns| ns.to_agents(t)));
            self.known.insert(Known {
                trace: trace_id(&s.trace_id),
                span: span_id(&s.span_id),
                request: RequestSpan {
                    pid,
                    start_ns,
                    end_ns,
                    tid,
                    tokens: spans::tokens(s),
                },
                enriched: false,
            });
        }
    }

    /// For the resources whose process was not known when their batch arrived, a
    /// `--service` rule's latest answer (the lookup asked for a fresh read then).
    fn retry_unresolved(&mut self, held: &mut Held) {
        for (rs, pid) in held.request.resource_spans.iter().zip(&mut held.pids) {
            if pid.is_ok() {
                continue;
            }
            if let Some(found) = self.services.pid_of(resource_attributes(rs)) {
                self.remember_requests(rs, found, None);
                *pid = Ok(found);
            }
        }
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
    pub fn on_interval(
        &mut self,
        record: IntervalRecord,
    ) -> Vec<Admitted<ExportTraceServiceRequest>> {
        let mut out = Vec::new();
        self.on_interval_each(record, |b| out.push(b));
        out
    }

    /// [`Enricher::on_interval`], handing each batch on as soon as it is enriched.
    pub fn on_interval_each(
        &mut self,
        record: IntervalRecord,
        hand_on: impl FnMut(Admitted<ExportTraceServiceRequest>),
    ) {
        self.history.push(record);
        let known = &self.known;
        self.history.compact(|pid| known.has_process(pid));
        self.release_each(false, hand_on);
    }

    /// Releases batches that are covered or have waited their longest (`flush`: all).
    pub fn release(&mut self, flush: bool) -> Vec<Admitted<ExportTraceServiceRequest>> {
        let mut out = Vec::new();
        self.release_each(flush, |b| out.push(b));
        out
    }

    /// [`Enricher::release`], handing each batch on as soon as it is enriched (so only
    /// one enriched batch at a time is held decoded, outside the receiver's budget).
    pub fn release_each(
        &mut self,
        flush: bool,
        mut hand_on: impl FnMut(Admitted<ExportTraceServiceRequest>),
    ) {
        let covered = self.history.covered_until();
        let sub_sampled = self.history.sub_sampled();
        let mut ready = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(h) = self.held.pop_front() {
            let covers = h.last_end_ns <= covered
                && (!sub_sampled
                    || h.last_end_ns.saturating_add(LOOKAHEAD_NS) <= covered
                    || !self.infers_threads(&h));
            if flush || covers || h.arrived.elapsed() >= self.config.max_delay {
                ready.push(h);
            } else {
                waiting.push_back(h);
            }
        }
        self.held = waiting;
        self.claims.prune(self.history.covered_from());
        self.known.prune(self.history.covered_from(), MAX_KNOWN);
        let mut threadless = ThreadlessSpans::default();
        for mut h in ready {
            self.held_spans -= h.spans;
            self.stats.held = self.held_spans as u64;
            let ticket = std::mem::replace(&mut h.ticket, Ticket::untracked());
            hand_on(Admitted {
                message: self.process(h, &mut threadless),
                ticket,
            });
        }
        self.stats.held = self.held_spans as u64;
    }

    /// Whether some request span of a covered batch may have its threads inferred, so
    /// that the batch waits for the timelines past its end: it names no live thread of
    /// its process, or one that was not doing the work.
    fn infers_threads(&self, h: &Held) -> bool {
        h.request
            .resource_spans
            .iter()
            .zip(&h.pids)
            .filter_map(|(rs, pid)| Some((rs, *pid.as_ref().ok()?)))
            .any(|(rs, pid)| {
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .filter(|s| self.is_valid_request(s))
                    .any(|s| {
                        let (trace, span) = (trace_id(&s.trace_id), span_id(&s.span_id));
                        self.known
                            .find(pid, s.start_time_unix_nano, trace, span)
                            .is_none_or(|k| !self.history.served_by_its_thread(&k.request))
                    })
            })
    }

    /// Enriches one released batch.
    fn process(
        &mut self,
        held: Held,
        threadless: &mut ThreadlessSpans,
    ) -> ExportTraceServiceRequest {
        let mut held = held;
        self.retry_unresolved(&mut held);
        let mut request = held.request;
        let (targets, unenriched) = self.classify(&request, &held.pids);
        let (all, index) = self.participants(&request, &targets, threadless);
        self.add_energies(&mut request, &targets, &all, &index);
        for (at, why) in unenriched {
            let reason = match &why {
                Unenriched::Unattributed(reason) => {
                    self.stats.unattributed += 1;
                    reason.as_str()
                }
                Unenriched::Invalid(reason) => {
                    self.stats.invalid += 1;
                    reason
                }
            };
            spans::mark_unattributed(span_at_mut(&mut request, at), reason);
        }
        request
    }

    /// Which spans of a batch are requests to enrich (with their process), which
    /// cannot be tied to a process (with why) and which have impossible times (with
    /// why). Nested requests are none of these, and counted.
    fn classify(
        &mut self,
        request: &ExportTraceServiceRequest,
        pids: &[Result<u32, String>],
    ) -> (Vec<Target>, Vec<(SpanAt, Unenriched)>) {
        let mut targets: Vec<Target> = Vec::new();
        let mut unenriched: Vec<(SpanAt, Unenriched)> = Vec::new();
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
                    if let Err(why) = spans::request_times(s) {
                        unenriched.push((at, Unenriched::Invalid(why)));
                        continue;
                    }
                    match pid {
                        Err(reason) => {
                            unenriched.push((at, Unenriched::Unattributed(reason.clone())))
                        }
                        Ok(pid) if !self.history.knows(*pid) => unenriched.push((
                            at,
                            Unenriched::Unattributed(format!("process {pid} has no attributed CPU time in the agent's recent intervals")),
                        )),
                        Ok(pid) => targets.push((at, *pid)),
                    }
                }
            }
        }
        (targets, unenriched)
    }
}

fn resource_attributes(rs: &ResourceSpans) -> &[opentelemetry_proto::tonic::common::v1::KeyValue] {
    rs.resource
        .as_ref()
        .map(|r| r.attributes.as_slice())
        .unwrap_or(&[])
}

/// A span's place in a batch: resource, scope and span indices.
type SpanAt = (usize, usize, usize);

/// A request span to enrich, and its process.
type Target = (SpanAt, u32);

/// Why a request span is not enriched (it is marked, with the reason).
enum Unenriched {
    /// No process could be tied to it.
    Unattributed(String),
    /// Its times cannot be a request's.
    Invalid(&'static str),
}

fn span_at(request: &ExportTraceServiceRequest, (ri, si, pi): SpanAt) -> &Span {
    &request.resource_spans[ri].scope_spans[si].spans[pi]
}

fn span_at_mut(request: &mut ExportTraceServiceRequest, (ri, si, pi): SpanAt) -> &mut Span {
    &mut request.resource_spans[ri].scope_spans[si].spans[pi]
}

mod below;
mod generations;
mod known;
mod resolve;
mod split;
#[cfg(test)]
mod tests;
mod traces;
