//! The shape of recent traces — each span's parent, which spans are requests, which
//! were enriched — so that a request nested in another request is not counted twice,
//! whichever of the two arrives first. Ids are fixed-size keys (no allocation per
//! span), and old spans are forgotten a generation at a time (no sorting).

use std::time::{Duration, Instant};

use super::generations::Generations;

/// An OTLP trace id (16 bytes; shorter or longer ids are padded or cut).
pub(super) type TraceId = u128;
/// An OTLP span id (8 bytes; likewise).
pub(super) type SpanId = u64;

/// A trace id as a key.
pub(super) fn trace_id(bytes: &[u8]) -> TraceId {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    TraceId::from_be_bytes(b)
}

/// A span id as a key (0 is "none", as an empty parent id is in OTLP).
pub(super) fn span_id(bytes: &[u8]) -> SpanId {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    SpanId::from_be_bytes(b)
}

/// What is known of one span. A span named only as a parent, not yet seen, has a node
/// too (so that an enriched child can say so before its parent arrives).
#[derive(Clone, Copy, Debug, Default)]
struct SpanNode {
    parent: SpanId,
    request: bool,
    enriched: bool,
    descendant_enriched: bool,
}

/// Deepest ancestry walked (a malformed trace may loop).
const MAX_DEPTH: usize = 64;

/// Recent spans by (trace, span), in two generations.
pub(super) struct TraceIndex {
    nodes: Generations<SpanNode>,
}

impl TraceIndex {
    /// Remembers at least the last `capacity` spans, or the last `max_age`, whichever is
    /// fewer (and at most twice that).
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            nodes: Generations::new(capacity, max_age),
        }
    }

    fn get(&self, key: (TraceId, SpanId)) -> Option<&SpanNode> {
        self.nodes.get(key)
    }

    /// The node, brought into the current generation.
    fn node(&mut self, key: (TraceId, SpanId)) -> &mut SpanNode {
        self.nodes.entry(key)
    }

    /// Records a span received at `now`.
    pub fn insert(
        &mut self,
        trace: TraceId,
        span: SpanId,
        parent: SpanId,
        request: bool,
        now: Instant,
    ) {
        self.nodes.rotate(now);
        let node = self.node((trace, span));
        node.parent = parent;
        node.request |= request;
        if node.enriched || node.descendant_enriched {
            self.mark_ancestors(trace, parent);
        }
    }

    /// Records that a span was given energy.
    pub fn mark_enriched(&mut self, trace: TraceId, span: SpanId) {
        let node = self.node((trace, span));
        node.enriched = true;
        let parent = node.parent;
        self.mark_ancestors(trace, parent);
    }

    /// Marks `from` and its ancestors as having an enriched descendant; stops at the
    /// first one already marked whose own parent is marked too, or at an unknown one
    /// (which keeps the mark for when it arrives).
    fn mark_ancestors(&mut self, trace: TraceId, mut from: SpanId) {
        for _ in 0..MAX_DEPTH {
            if from == 0 {
                return;
            }
            let node = self.node((trace, from));
            let was = node.descendant_enriched;
            node.descendant_enriched = true;
            let parent = node.parent;
            if was
                && (parent == 0
                    || self
                        .get((trace, parent))
                        .is_some_and(|p| p.descendant_enriched))
            {
                return;
            }
            from = parent;
        }
    }

    /// Whether the span has a request ancestor, or an already enriched descendant.
    pub fn is_nested(&self, trace: TraceId, span: SpanId) -> bool {
        let Some(node) = self.get((trace, span)) else {
            return false;
        };
        if node.descendant_enriched {
            return true;
        }
        let mut parent = node.parent;
        for _ in 0..MAX_DEPTH {
            if parent == 0 {
                return false;
            }
            match self.get((trace, parent)) {
                Some(p) if p.request => return true,
                Some(p) => parent = p.parent,
                None => return false,
            }
        }
        false
    }

    /// The parent of a span seen (0 for a root), None for a span not seen.
    pub fn parent(&self, trace: TraceId, span: SpanId) -> Option<SpanId> {
        self.get((trace, span)).map(|n| n.parent)
    }

    /// Spans remembered (both generations).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TraceId = 7;

    fn index() -> TraceIndex {
        TraceIndex::new(1000, Duration::from_secs(60))
    }

    #[test]
    fn ids_are_padded_or_cut() {
        assert_eq!(span_id(&[]), 0);
        assert_eq!(span_id(&[1, 2, 3, 4, 5, 6, 7, 8]), 0x0102030405060708);
        assert_eq!(span_id(&[1; 9]), span_id(&[1; 8]));
        assert_eq!(trace_id(&[0xff; 16]), u128::MAX);
        assert_eq!(trace_id(&[1]), 1u128 << 120);
    }

    #[test]
    fn a_request_under_a_request_is_nested() {
        let mut ix = index();
        // root 1 (request) ← 2 ← 3 (request), in arrival order child first.
        ix.insert(T, 3, 2, true, Instant::now());
        assert!(!ix.is_nested(T, 3), "its ancestors have not arrived");
        ix.insert(T, 2, 1, false, Instant::now());
        ix.insert(T, 1, 0, true, Instant::now());
        assert!(ix.is_nested(T, 3));
        assert!(!ix.is_nested(T, 1));
        assert!(!ix.is_nested(T + 1, 3), "another trace");
    }

    #[test]
    fn an_enriched_descendant_makes_ancestors_nested_whenever_they_arrive() {
        let mut ix = index();
        // 4 ← 3 ← 2 ← 1: 4 is enriched before anything above it arrives.
        ix.insert(T, 4, 3, true, Instant::now());
        ix.mark_enriched(T, 4);
        assert!(!ix.is_nested(T, 4), "being enriched does not nest a span");
        ix.insert(T, 2, 1, true, Instant::now());
        assert!(!ix.is_nested(T, 2), "the link 3 → 2 is not known yet");
        ix.insert(T, 3, 2, false, Instant::now());
        assert!(ix.is_nested(T, 2) && ix.is_nested(T, 3));
        ix.insert(T, 1, 0, true, Instant::now());
        assert!(ix.is_nested(T, 1));
        // A sibling branch is unaffected.
        ix.insert(T, 9, 8, true, Instant::now());
        assert!(!ix.is_nested(T, 9));
    }

    #[test]
    fn a_parent_loop_ends() {
        let mut ix = index();
        ix.insert(T, 1, 2, false, Instant::now());
        ix.insert(T, 2, 1, false, Instant::now());
        assert!(!ix.is_nested(T, 1));
        ix.mark_enriched(T, 1);
        assert!(ix.is_nested(T, 2));
    }

    #[test]
    fn old_generations_are_forgotten_but_touched_spans_stay() {
        let mut ix = TraceIndex::new(2, Duration::from_secs(60));
        ix.insert(T, 1, 0, true, Instant::now());
        ix.insert(T, 2, 1, true, Instant::now());
        ix.insert(T, 3, 0, false, Instant::now()); // rotates: 1 and 2 are the previous generation
        assert!(ix.is_nested(T, 2));
        ix.insert(T, 1, 0, true, Instant::now()); // brought forward
        ix.insert(T, 4, 0, false, Instant::now()); // rotates again: 2 is gone, 1 and 4 remain
        assert!(ix.len() <= 4);
        assert!(ix.get((T, 1)).is_some() && ix.get((T, 2)).is_none());
    }
}
