//! The request spans the enricher has seen (held or released), per process and ordered
//! by start, so that a split finds the spans overlapping a batch's window without
//! scanning every span remembered. A span sent again (an SDK retry) is remembered once:
//! its copies are one request in every split.

use std::collections::HashMap;

use super::traces::{SpanId, TraceId};
use crate::requests::RequestSpan;

/// A request span seen, with its ids (to match it in a batch and to walk its trace).
#[derive(Clone, Copy)]
pub(super) struct Known {
    pub trace: TraceId,
    pub span: SpanId,
    pub request: RequestSpan,
    /// Whether a copy of it has been given energy.
    pub enriched: bool,
}

/// One process's spans, sorted by start time.
#[derive(Default)]
struct ProcessSpans {
    spans: Vec<Known>,
    /// The longest span's duration: how far before a window a span may start and
    /// still overlap it.
    longest_ns: u64,
}

/// Remembered request spans, bounded.
#[derive(Default)]
pub(super) struct KnownSpans {
    by_pid: HashMap<u32, ProcessSpans>,
    count: usize,
    pruned_from: u64,
}

impl KnownSpans {
    /// Whether any span of `pid` is remembered.
    pub fn has_process(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Remembers a span (spans arrive roughly in start order, so inserting is cheap);
    /// false, and nothing changes, when a span with its process, start and ids is
    /// already remembered.
    pub fn insert(&mut self, known: Known) -> bool {
        let r = &known.request;
        if self
            .find(r.pid, r.start_ns, known.trace, known.span)
            .is_some()
        {
            return false;
        }
        let list = self.by_pid.entry(r.pid).or_default();
        list.longest_ns = list.longest_ns.max(r.end_ns.saturating_sub(r.start_ns));
        let at = list
            .spans
            .partition_point(|k| k.request.start_ns <= r.start_ns);
        list.spans.insert(at, known);
        self.count += 1;
        true
    }

    /// The remembered span of `pid` that starts at `start_ns` with these ids.
    pub fn find(&self, pid: u32, start_ns: u64, trace: TraceId, span: SpanId) -> Option<&Known> {
        let list = self.by_pid.get(&pid)?;
        let from = list
            .spans
            .partition_point(|k| k.request.start_ns < start_ns);
        list.spans[from..]
            .iter()
            .take_while(|k| k.request.start_ns == start_ns)
            .find(|k| k.trace == trace && k.span == span)
    }

    /// Records that the span was given energy.
    pub fn mark_enriched(&mut self, pid: u32, start_ns: u64, trace: TraceId, span: SpanId) {
        let Some(list) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let from = list
            .spans
            .partition_point(|k| k.request.start_ns < start_ns);
        if let Some(k) = list.spans[from..]
            .iter_mut()
            .take_while(|k| k.request.start_ns == start_ns)
            .find(|k| k.trace == trace && k.span == span)
        {
            k.enriched = true;
        }
    }

    /// The spans of `pid` that overlap `[from, to]` (nanoseconds since the epoch).
    pub fn overlapping(&self, pid: u32, from: u64, to: u64) -> impl Iterator<Item = &Known> {
        let spans = self
            .by_pid
            .get(&pid)
            .map(|list| {
                let earliest = from.saturating_sub(list.longest_ns);
                let lo = list
                    .spans
                    .partition_point(|k| k.request.start_ns < earliest);
                let hi = list.spans.partition_point(|k| k.request.start_ns <= to);
                &list.spans[lo..hi.max(lo)]
            })
            .unwrap_or(&[]);
        spans.iter().filter(move |k| k.request.end_ns >= from)
    }

    /// Forgets spans that ended before `from`; past `max`, forgets the earliest-ending
    /// spans down to three quarters of `max` (so that the sort is rare). Cheap when
    /// nothing can have changed since the last call.
    pub fn prune(&mut self, from: u64, max: usize) {
        if from <= self.pruned_from && self.count <= max {
            return;
        }
        self.pruned_from = self.pruned_from.max(from);
        self.retain_ending_from(from);
        if self.count > max {
            let mut ends: Vec<u64> = self
                .by_pid
                .values()
                .flat_map(|l| &l.spans)
                .map(|k| k.request.end_ns)
                .collect();
            ends.sort_unstable();
            self.retain_ending_from(ends[self.count - max * 3 / 4]);
        }
    }

    fn retain_ending_from(&mut self, from: u64) {
        self.count = 0;
        for list in self.by_pid.values_mut() {
            list.spans.retain(|k| k.request.end_ns >= from);
            list.longest_ns = list
                .spans
                .iter()
                .map(|k| k.request.end_ns.saturating_sub(k.request.start_ns))
                .max()
                .unwrap_or(0);
            self.count += list.spans.len();
        }
        self.by_pid.retain(|_, l| !l.spans.is_empty());
    }

    /// How many spans are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(pid: u32, start_ns: u64, end_ns: u64) -> Known {
        Known {
            trace: 1,
            span: start_ns,
            request: RequestSpan {
                pid,
                start_ns,
                end_ns,
                tid: None,
                tokens: None,
            },
            enriched: false,
        }
    }

    fn starts(k: &KnownSpans, pid: u32, from: u64, to: u64) -> Vec<u64> {
        k.overlapping(pid, from, to)
            .map(|k| k.request.start_ns)
            .collect()
    }

    #[test]
    fn finds_exactly_the_overlapping_spans() {
        let mut k = KnownSpans::default();
        // Out of order, one long span, another process.
        for (s, e) in [(10, 20), (30, 40), (0, 100), (25, 26), (50, 60)] {
            k.insert(span(7, s, e));
        }
        k.insert(span(8, 30, 40));
        assert_eq!(starts(&k, 7, 21, 29), vec![0, 25]);
        assert_eq!(starts(&k, 7, 35, 55), vec![0, 30, 50]);
        assert_eq!(starts(&k, 7, 101, 200), Vec::<u64>::new());
        assert_eq!(starts(&k, 8, 0, 1000), vec![30]);
        assert_eq!(starts(&k, 9, 0, 1000), Vec::<u64>::new());
        // Brute force agrees on every window.
        for from in 0..110 {
            for to in from..110 {
                let mut want: Vec<u64> = [(10, 20), (30, 40), (0, 100), (25, 26), (50, 60)]
                    .iter()
                    .filter(|(s, e)| *e >= from && *s <= to)
                    .map(|(s, _)| *s)
                    .collect();
                want.sort();
                assert_eq!(starts(&k, 7, from, to), want, "window {from}..{to}");
            }
        }
    }

    #[test]
    fn a_span_sent_again_is_remembered_once() {
        let mut k = KnownSpans::default();
        assert!(k.insert(span(7, 10, 20)));
        assert!(!k.insert(span(7, 10, 20)), "the same span again");
        let mut sibling = span(7, 10, 30);
        sibling.span = 99;
        assert!(k.insert(sibling), "another span starting at the same time");
        assert!(k.insert(span(8, 10, 20)), "another process");
        assert_eq!(k.len(), 3);
        assert_eq!(starts(&k, 7, 0, 100), vec![10, 10]);
        assert!(k.find(7, 10, 1, 10).is_some_and(|s| !s.enriched));
        k.mark_enriched(7, 10, 1, 10);
        assert!(k.find(7, 10, 1, 10).is_some_and(|s| s.enriched));
        assert!(k.find(7, 10, 1, 99).is_some_and(|s| !s.enriched));
        assert!(k.find(7, 11, 1, 10).is_none());
    }

    #[test]
    fn prunes_by_end_and_bound() {
        let mut k = KnownSpans::default();
        for i in 0..10u64 {
            k.insert(span(1, i * 10, i * 10 + 5));
        }
        k.insert(span(2, 0, 1000));
        k.prune(50, 100);
        assert_eq!(k.len(), 6); // 50..55 onwards, and the long one
        assert_eq!(starts(&k, 2, 900, 950), vec![0]);
        k.prune(50, 4);
        assert_eq!(k.len(), 3); // the three latest ends (¾ of 4)
        assert_eq!(starts(&k, 1, 0, 1000), vec![80, 90]);
        // Everything ended before 2000.
        k.prune(2000, 3);
        assert_eq!(k.len(), 0);
    }
}
