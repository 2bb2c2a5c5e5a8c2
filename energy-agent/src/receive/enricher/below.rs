//! What the gen_ai spans below each request say: their token counts (a server span
//! whose model call is a child span carries none itself, as with vLLM's `llm_request`
//! under an instrumented HTTP server) and their ends (a streamed answer can go on after
//! the server span ends). Whichever arrives first, a child is recorded under every
//! ancestor known, and what is recorded under a span is lifted to its ancestors when it
//! arrives. Bounded: generations of spans, and at most [`MAX_CHILDREN`] children each.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    generations::Generations,
    traces::{SpanId, TraceId, TraceIndex},
};

/// Most gen_ai children remembered under one span.
const MAX_CHILDREN: usize = 64;
/// Deepest ancestry walked.
const MAX_DEPTH: usize = 64;

/// One gen_ai span's counts and end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Below {
    /// Input tokens.
    pub input: Option<u64>,
    /// Output tokens.
    pub output: Option<u64>,
    /// End, Unix ns.
    pub end_ns: u64,
}

/// gen_ai children by ancestor, bounded.
pub(super) struct SpansBelow {
    by_ancestor: Generations<BTreeMap<SpanId, Below>>,
}

impl SpansBelow {
    /// Remembers at least `capacity` ancestors or `max_age`, whichever is fewer.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            by_ancestor: Generations::new(capacity, max_age),
        }
    }

    /// Records gen_ai span `span` (child of `parent`) under each ancestor known.
    pub fn add(
        &mut self,
        traces: &TraceIndex,
        (trace, span, parent): (TraceId, SpanId, SpanId),
        below: Below,
        now: Instant,
    ) {
        self.by_ancestor.rotate(now);
        self.record_under(traces, trace, parent, &[(span, below)]);
    }

    /// When `span` (child of `parent`) arrives: what is recorded under it is recorded
    /// under its ancestors too.
    pub fn lift(&mut self, traces: &TraceIndex, (trace, span, parent): (TraceId, SpanId, SpanId)) {
        let Some(children) = self.by_ancestor.get((trace, span)) else {
            return;
        };
        let children: Vec<(SpanId, Below)> = children.iter().map(|(k, v)| (*k, *v)).collect();
        self.record_under(traces, trace, parent, &children);
    }

    fn record_under(
        &mut self,
        traces: &TraceIndex,
        trace: TraceId,
        mut at: SpanId,
        children: &[(SpanId, Below)],
    ) {
        for _ in 0..MAX_DEPTH {
            if at == 0 {
                return;
            }
            let entry = self.by_ancestor.entry((trace, at));
            for (child, below) in children {
                if entry.len() < MAX_CHILDREN || entry.contains_key(child) {
                    entry.insert(*child, *below);
                }
            }
            match traces.parent(trace, at) {
                Some(p) => at = p,
                None => return,
            }
        }
    }

    /// The gen_ai spans below `span`: their summed counts (each None when none gives
    /// it) and their latest end; None when there are none.
    pub fn of(&self, trace: TraceId, span: SpanId) -> Option<Below> {
        let children = self.by_ancestor.get((trace, span))?;
        let mut sum = Below::default();
        for b in children.values() {
            for (total, count) in [(&mut sum.input, b.input), (&mut sum.output, b.output)] {
                if let Some(c) = count {
                    *total = Some(total.unwrap_or(0).saturating_add(c));
                }
            }
            sum.end_ns = sum.end_ns.max(b.end_ns);
        }
        (!children.is_empty()).then_some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_count_under_every_ancestor_whichever_arrives_first() {
        let mut traces = TraceIndex::new(1000, Duration::from_secs(60));
        let mut below = SpansBelow::new(1000, Duration::from_secs(60));
        let now = Instant::now();
        let call = |input, output, end_ns| Below {
            input: Some(input),
            output: Some(output),
            end_ns,
        };
        // 3 (gen_ai) ← 2 ← 1 (the request): the child first, then its parent, then the root.
        traces.insert(7, 3, 2, true, now);
        below.add(&traces, (7, 3, 2), call(10, 40, 900), now);
        traces.insert(7, 2, 1, false, now);
        below.lift(&traces, (7, 2, 1));
        traces.insert(7, 1, 0, true, now);
        below.lift(&traces, (7, 1, 0));
        assert_eq!(below.of(7, 1), Some(call(10, 40, 900)));
        // A second call under the root, arriving after it; and a copy of the first.
        traces.insert(7, 4, 1, true, now);
        below.add(&traces, (7, 4, 1), call(5, 2, 1200), now);
        below.add(&traces, (7, 3, 2), call(10, 40, 900), now);
        assert_eq!(below.of(7, 1), Some(call(15, 42, 1200)), "each child once");
        assert_eq!(below.of(8, 1), None, "another trace");
    }
}
