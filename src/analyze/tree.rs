//! The parent/child structure of each trace, and what follows from it: which errors are the
//! source of others, and which caller→callee edges a failure travelled along.

use std::collections::{BTreeMap, BTreeSet};

use super::{Propagation, time};
use crate::capture::Purposes;
use crate::model::{Span, SpanId, Trace, TraceId};

/// A trace with its spans linked to their parents and children (by index). The links are
/// kept in three flat arrays (4 bytes a span each), not a list per span: a capture analyses
/// a million spans at once.
pub struct TraceTree<'a> {
    pub trace: &'a Trace,
    pub purposes: Purposes,
    /// Each span's parent, or `NO_PARENT`.
    parents: Vec<u32>,
    /// Span `i`'s children are `children[child_start[i]..child_start[i + 1]]`.
    child_start: Vec<u32>,
    children: Vec<u32>,
    critical: std::sync::OnceLock<Vec<i64>>,
}

const NO_PARENT: u32 = u32::MAX;

impl<'a> TraceTree<'a> {
    pub fn new(trace: &'a Trace, purposes: Purposes) -> Self {
        let n = trace.spans.len();
        let mut by_id: foldhash::HashMap<SpanId, usize> =
            foldhash::HashMap::with_capacity_and_hasher(n, Default::default());
        // A repeated id (a malformed trace) keeps its first span; Zipkin's shared client and
        // server halves got ids of their own when read.
        for (i, s) in trace.spans.iter().enumerate() {
            by_id.entry(s.span_id).or_insert(i);
        }
        // Span indexes fit in 32 bits: a trace of four billion spans is not read whole.
        let mut parents = vec![NO_PARENT; n];
        let mut child_start = vec![0u32; n + 1];
        for (i, s) in trace.spans.iter().enumerate() {
            if let Some(p) = s.parent.and_then(|p| by_id.get(&p).copied())
                && p != i
            {
                parents[i] = p as u32;
                child_start[p + 1] += 1;
            }
        }
        for i in 0..n {
            child_start[i + 1] += child_start[i];
        }
        // Children in span order, as they were pushed one by one before.
        let mut next = child_start.clone();
        let mut children = vec![0u32; child_start[n] as usize];
        for (i, &p) in parents.iter().enumerate() {
            if p != NO_PARENT {
                let p = p as usize;
                children[next[p] as usize] = i as u32;
                next[p] += 1;
            }
        }
        Self {
            trace,
            purposes,
            parents,
            child_start,
            children,
            critical: std::sync::OnceLock::new(),
        }
    }

    /// The span's parent within the trace, if it has one there.
    pub fn parent(&self, i: usize) -> Option<usize> {
        Some(self.parents[i])
            .filter(|&p| p != NO_PARENT)
            .map(|p| p as usize)
    }

    /// The span's children, in span order.
    pub fn children(&self, i: usize) -> impl ExactSizeIterator<Item = usize> + Clone + '_ {
        self.children[self.child_start[i] as usize..self.child_start[i + 1] as usize]
            .iter()
            .map(|&c| c as usize)
    }

    /// The span's only child, when it has exactly one.
    pub fn only_child(&self, i: usize) -> Option<usize> {
        let mut c = self.children(i);
        (c.len() == 1).then(|| c.next()).flatten()
    }

    pub fn span(&self, i: usize) -> &'a Span {
        &self.trace.spans[i]
    }

    /// True when the span is the entry into its service: no parent, or a parent in another
    /// service.
    pub fn is_entry(&self, i: usize) -> bool {
        match self.parent(i) {
            None => true,
            Some(p) => self.span(p).service() != self.span(i).service(),
        }
    }

    /// The span's own time: its duration minus the time its children cover (each child cut at
    /// the parent's end; overlapping children counted once).
    pub fn self_time_ns(&self, i: usize) -> i64 {
        let s = self.span(i);
        let mut intervals: Vec<(i64, i64)> = self
            .children(i)
            .map(|c| {
                let c = self.span(c);
                (c.start_ns.max(s.start_ns), c.end_ns.min(s.end_ns))
            })
            .filter(|(a, b)| b > a)
            .collect();
        intervals.sort_unstable();
        let mut covered = 0;
        let mut cur: Option<(i64, i64)> = None;
        for (a, b) in intervals {
            match cur {
                Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    covered += cb - ca;
                    cur = Some((a, b));
                }
                None => cur = Some((a, b)),
            }
        }
        if let Some((ca, cb)) = cur {
            covered += cb - ca;
        }
        (s.duration_ns() - covered).max(0)
    }
}

impl TraceTree<'_> {
    /// Each span's time on the trace's critical path (CRISP): from the end of a span back to its
    /// start, the child that finished last is on the path, then the one that finished before that
    /// child started, and so on; the gaps between them are the span's own. A child that
    /// outlives its parent is cut at the parent's end; one that starts before its parent (clock
    /// skew) at the parent's start; overlapping siblings off the path get nothing. Spans off the
    /// path get 0.
    pub fn critical_times(&self) -> &[i64] {
        self.critical.get_or_init(|| self.compute_critical_times())
    }

    fn compute_critical_times(&self) -> Vec<i64> {
        let n = self.trace.spans.len();
        let mut out = vec![0i64; n];
        // Every root: the trace's own, and those of orphaned subtrees (a missing span's
        // children), each to its own end.
        // (span, the time its path must start from at the earliest, the time it must end by)
        let mut stack: Vec<(usize, i64, i64)> = (0..n)
            .filter(|&i| self.parent(i).is_none())
            .map(|i| (i, self.span(i).start_ns, self.span(i).end_ns))
            .collect();
        let mut visited = 0usize;
        while let Some((i, floor, limit)) = stack.pop() {
            visited += 1;
            if visited > n {
                break; // a cycle in malformed parent links
            }
            let s = self.span(i);
            let start = s.start_ns.max(floor);
            let end = s.end_ns.min(limit);
            if end <= start {
                continue;
            }
            let mut last_start = end;
            let mut kids: Vec<usize> = self.children(i).collect();
            kids.sort_by_key(|&c| (std::cmp::Reverse(self.span(c).end_ns), c));
            let mut own = 0i64;
            for c in kids {
                let cs = self.span(c);
                // A child that outlives its parent is cut at the parent's end, one that starts
                // before it (clock skew) at the parent's start.
                let c_end = cs.end_ns.min(last_start);
                let c_start = cs.start_ns.max(start);
                if c_end <= c_start {
                    continue;
                }
                if cs.end_ns > last_start && last_start < end {
                    continue; // overlaps the child already on the path
                }
                own += last_start - c_end;
                stack.push((c, c_start, c_end));
                last_start = c_start;
            }
            own += (last_start - start).max(0);
            out[i] = own;
        }
        out
    }

    /// For each span, the nearest ancestor in another service (its caller), computed once for
    /// the whole trace.
    pub fn callers(&self) -> Vec<Option<usize>> {
        let n = self.trace.spans.len();
        let mut caller: Vec<Option<Option<usize>>> = vec![None; n];
        for i in 0..n {
            // Walk up to the first span whose caller is known (or to the caller), then fill the
            // path in.
            let mut path = Vec::new();
            let mut cur = i;
            let found = loop {
                if let Some(known) = caller[cur] {
                    break known;
                }
                match self.parent(cur) {
                    None => break None,
                    Some(p) if self.span(p).service() != self.span(cur).service() => break Some(p),
                    Some(p) => {
                        path.push(cur);
                        if path.len() > n {
                            break None; // a cycle
                        }
                        cur = p;
                    }
                }
            };
            caller[cur] = Some(found);
            for j in path {
                caller[j] = Some(found);
            }
        }
        caller.into_iter().map(Option::flatten).collect()
    }
}

/// An error span that no erroring child explains.
pub struct SourceError<'a> {
    pub span: &'a Span,
}

/// Every source error of every trace.
pub fn source_errors<'a>(forest: &[TraceTree<'a>]) -> Vec<SourceError<'a>> {
    let mut out = Vec::new();
    for t in forest {
        for (i, s) in t.trace.spans.iter().enumerate() {
            if s.is_error() && !t.children(i).any(|c| t.span(c).is_error()) {
                out.push(SourceError { span: s });
            }
        }
    }
    out
}

/// Caller → callee edges along which failures travelled: the callee's error sits in the
/// subtree of a caller span (of another service) that failed too.
pub fn propagation(forest: &[TraceTree<'_>]) -> Vec<Propagation> {
    struct Edge {
        first_ns: i64,
        trace_id: TraceId,
        span_id: SpanId,
        traces: BTreeSet<TraceId>,
    }
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for t in forest {
        if !t.trace.has_error() {
            continue;
        }
        let callers = t.callers();
        for (i, s) in t.trace.spans.iter().enumerate() {
            if !s.is_error() {
                continue;
            }
            // The nearest ancestor in another service is the caller.
            let Some(p) = callers[i] else { continue };
            let caller = t.span(p);
            if !caller.is_error() || caller.service() == s.service() {
                continue;
            }
            let key = (caller.service().to_string(), s.service().to_string());
            let e = edges.entry(key).or_insert(Edge {
                first_ns: i64::MAX,
                trace_id: caller.trace_id,
                span_id: caller.span_id,
                traces: BTreeSet::new(),
            });
            // The failure reached the caller when the callee's error ended.
            if (s.end_ns, caller.trace_id, caller.span_id) < (e.first_ns, e.trace_id, e.span_id) {
                e.first_ns = s.end_ns;
                e.trace_id = caller.trace_id;
                e.span_id = caller.span_id;
            }
            e.traces.insert(caller.trace_id);
        }
    }
    let mut out: Vec<Propagation> = edges
        .into_iter()
        .map(|((from, to), e)| Propagation {
            from,
            to,
            first_seen: time(e.first_ns),
            trace_id: e.trace_id,
            span_id: e.span_id,
            traces: e.traces.len(),
        })
        .collect();
    out.sort_by(|a, b| {
        a.first_seen
            .cmp(&b.first_seen)
            .then(a.from.cmp(&b.from))
            .then(a.to.cmp(&b.to))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::TraceTree;
    use crate::capture::Purposes;
    use crate::model::{Span, SpanId, Trace, TraceId};

    fn span(id: u8, parent: Option<u8>, service: &str, start: i64, end: i64) -> Span {
        Span {
            parent: parent.map(|p| SpanId([p; 8])),
            ..Span::plain(TraceId([1; 16]), SpanId([id; 8]), service, start, end)
        }
    }

    fn critical(spans: Vec<Span>) -> Vec<i64> {
        let t = Trace {
            id: TraceId([1; 16]),
            spans,
        };
        TraceTree::new(&t, Purposes::default())
            .critical_times()
            .to_vec()
    }

    #[test]
    fn the_critical_path_never_exceeds_the_trace() {
        // A child that starts before its parent (clock skew) is cut at the parent's start.
        let c = critical(vec![
            span(1, None, "a", 100, 200),
            span(2, Some(1), "b", 50, 150),
        ]);
        assert_eq!(c, [50, 50]);
        assert_eq!(c.iter().sum::<i64>(), 100);
        // Overlapping siblings: only the one that ends last is on the path.
        let c = critical(vec![
            span(1, None, "a", 0, 100),
            span(2, Some(1), "a", 10, 90),
            span(3, Some(1), "b", 20, 95),
        ]);
        assert_eq!(c, [25, 0, 75]);
    }

    #[test]
    fn an_orphaned_subtree_keeps_its_critical_time() {
        // Span 9 (the parent of 2) is missing from the trace.
        let c = critical(vec![
            span(1, None, "a", 0, 100),
            span(2, Some(9), "b", 10, 60),
        ]);
        assert_eq!(c, [100, 50]);
    }

    #[test]
    fn callers_are_the_nearest_ancestor_in_another_service() {
        let t = Trace {
            id: TraceId([1; 16]),
            spans: vec![
                span(1, None, "a", 0, 100),
                span(2, Some(1), "b", 0, 90),
                span(3, Some(2), "b", 0, 80),
                span(4, Some(3), "b", 0, 70),
            ],
        };
        let tree = TraceTree::new(&t, Purposes::default());
        assert_eq!(tree.callers(), [None, Some(0), Some(0), Some(0)]);
    }
}
