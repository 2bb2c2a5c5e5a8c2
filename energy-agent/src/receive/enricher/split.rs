//! The split of a released batch: which request spans take part, and the energy each
//! target is given (a copy of a span already given energy gets the same figures).

use std::{collections::HashMap, time::Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::{
    Enricher, Target,
    known::Known,
    span_at, span_at_mut,
    traces::{SpanId, TraceId, span_id, trace_id},
};
use crate::{
    receive::spans,
    requests::{INFERENCE_CONTEXT_NS, RequestSample, RequestSpan, SpanEnergy, enrich},
};

/// Per (pid, interval start): a known span without a live thread id in that interval,
/// or none (see `Enricher::threadless_span`).
pub(super) type ThreadlessSpans = HashMap<(u32, u64), Option<Known>>;

/// Where each participating span is in the split's list.
type SpanIndex = foldhash::HashMap<(TraceId, SpanId), usize>;

impl Enricher {
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

    /// The request spans that take part in the targets' split, and where each span is
    /// among them.
    ///
    /// The known request spans of those processes that overlap a target take part in
    /// the split, with, for each interval the targets touch, one span without a live
    /// thread id where the interval has one (it makes the whole interval split by
    /// concurrency instead of by thread activity). No other span can change a
    /// target's share. Thread ids count only when they are live kernel threads of the
    /// process.
    pub(super) fn participants(
        &self,
        request: &ExportTraceServiceRequest,
        targets: &[Target],
        threadless: &mut ThreadlessSpans,
    ) -> (Vec<RequestSpan>, SpanIndex) {
        let mut all: Vec<RequestSpan> = Vec::new();
        let mut index = SpanIndex::default();
        for (pid, (from, to)) in windows(request, targets) {
            let intervals = self.history.intervals_overlapping(from, to);
            // Every span of the intervals the inference reads takes part: matching a
            // thread to a span sees the spans it might serve instead, before and after.
            let (from, to) = self
                .history
                .intervals_overlapping(
                    from.saturating_sub(INFERENCE_CONTEXT_NS),
                    to.saturating_add(INFERENCE_CONTEXT_NS),
                )
                .iter()
                .fold((from, to), |(a, b), i| (a.min(i.0), b.max(i.1)));
            let deciders: Vec<Known> = intervals
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
                if let Some(below) = self.below.of(k.trace, k.span) {
                    // A streamed answer can go on after the server span ends.
                    r.end_ns = r.end_ns.max(below.end_ns);
                    if r.tokens.is_none() {
                        r.tokens = below_tokens(&below);
                    }
                }
                index.insert((k.trace, k.span), all.len());
                all.push(r);
            }
        }
        (all, index)
    }

    /// Splits the energy among `all` and writes each target's share onto its span. A
    /// copy of a span already given energy (in this batch or an earlier one) gets the
    /// same figures, or is marked once they are forgotten, and claims nothing.
    pub(super) fn add_energies(
        &mut self,
        request: &mut ExportTraceServiceRequest,
        targets: &[Target],
        all: &[RequestSpan],
        index: &SpanIndex,
    ) {
        let mut chosen = Vec::new();
        // (span, its place in `chosen`, whether it is the first copy in this batch)
        let mut slots = Vec::new();
        let mut places: HashMap<usize, usize> = HashMap::new();
        let mut resent = Vec::new();
        for (at, pid) in targets {
            let s = span_at(request, *at);
            let id = (trace_id(&s.trace_id), span_id(&s.span_id));
            if let Some(earlier) = self.earlier_copy(*pid, s.start_time_unix_nano, id) {
                resent.push((*at, earlier));
                continue;
            }
            let Some(&i) = index.get(&id) else {
                continue;
            };
            let next = chosen.len();
            let place = *places.entry(i).or_insert(next);
            if place == next {
                chosen.push(i);
            }
            slots.push((*at, place, place == next));
        }
        let mut energies = enrich(&chosen, all, &self.history, &mut self.claims);
        let now = Instant::now();
        for &(at, place, first) in &slots {
            if first {
                let (input, output) = self.request_tokens(span_at(request, at));
                energies[place].input_tokens = input;
                energies[place].output_tokens = output;
            }
        }
        for (at, place, first) in slots {
            let energy = &energies[place];
            let span = span_at_mut(request, at);
            spans::add_energy(span, energy);
            if first {
                let id = (trace_id(&span.trace_id), span_id(&span.span_id));
                self.record_enriched(&all[chosen[place]], id, energy, now);
            } else {
                self.stats.duplicates += 1;
            }
        }
        for (at, earlier) in resent {
            let span = span_at_mut(request, at);
            match earlier {
                Some(energy) => spans::add_energy(span, &energy),
                None => spans::mark_unattributed(
                    span,
                    "a copy of this span sent earlier carried its energy",
                ),
            }
            self.stats.duplicates += 1;
        }
    }

    /// A request's gen_ai (input, output) tokens: its own, else its gen_ai spans'.
    fn request_tokens(
        &self,
        s: &opentelemetry_proto::tonic::trace::v1::Span,
    ) -> (Option<u64>, Option<u64>) {
        match spans::token_counts(s) {
            Some((None, None)) => self
                .below
                .of(trace_id(&s.trace_id), span_id(&s.span_id))
                .map_or((None, None), |b| (b.input, b.output)),
            Some(counts) => counts,
            None => (None, None),
        }
    }

    /// For a span whose copy was already given energy: that energy, or None when it is
    /// no longer remembered. None for a span not given energy yet.
    fn earlier_copy(
        &self,
        pid: u32,
        start_ns: u64,
        (trace, span): (TraceId, SpanId),
    ) -> Option<Option<SpanEnergy>> {
        if let Some(energy) = self.given.get((trace, span)) {
            return Some(Some(energy.clone()));
        }
        self.known
            .find(pid, start_ns, trace, span)
            .is_some_and(|k| k.enriched)
            .then_some(None)
    }

    /// Remembers that `request` (ids `id`) was given `energy`.
    fn record_enriched(
        &mut self,
        request: &RequestSpan,
        (trace, span): (TraceId, SpanId),
        energy: &SpanEnergy,
        now: Instant,
    ) {
        let model = self.history.model_of(request.pid).unwrap_or("unknown");
        self.requests.push(RequestSample {
            model: model.to_string(),
            end_unix_ns: request.end_ns,
            joules: energy.joules.total(),
            carbon_g: energy.carbon_g,
            tokens: match (energy.input_tokens, energy.output_tokens) {
                (None, None) => request.tokens,
                (input, output) => Some(input.unwrap_or(0).saturating_add(output.unwrap_or(0))),
            },
            input_tokens: energy.input_tokens,
            output_tokens: energy.output_tokens,
            estimated: energy.estimated,
        });
        self.traces.mark_enriched(trace, span);
        self.known
            .mark_enriched(request.pid, request.start_ns, trace, span);
        self.given.rotate(now);
        *self.given.entry((trace, span)) = energy.clone();
        self.stats.enriched += 1;
    }
}

/// The tokens of the gen_ai spans below a request, for the split (input + output).
fn below_tokens(below: &super::Below) -> Option<u64> {
    match (below.input, below.output) {
        (None, None) => None,
        (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
    }
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
