//! Completeness: backends cap how many traces one search returns, so a search that comes back
//! full is cut into parts and asked again, recursively, down to a minimum slice; traces are
//! deduplicated by id. How many parts: as many as the density of the full answer's traces
//! suggests (servers answer newest first), at least two.
//!
//! A server may also cap answers *below* the limit we asked for, silently. So an answer smaller
//! than the limit but as large as any answer seen so far is ambiguous: it is verified by asking
//! for its two halves. If the halves hold more distinct traces than the whole did, the server
//! caps at that count, which becomes the limit from then on; if not, the range (and so every
//! part of it) was complete.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::model::{Trace, TraceId};

/// Answers smaller than this are not suspected of being capped: no server caps a search at a
/// handful of traces, and verifying them would cost a chain of queries per single trace.
pub const MIN_PLAUSIBLE_CAP: usize = 10;

/// One answer of a search over a time range.
pub struct Page {
    /// The traces kept (after filtering on our side).
    pub traces: Vec<Trace>,
    /// Ids of the distinct traces the server returned, before our filtering: what the cap
    /// applies to.
    pub returned: Vec<TraceId>,
    /// Traces in the answer as the server counted them (at least `returned.len()`; more when
    /// some could not be read): what is compared with the limit.
    pub count: usize,
    /// Traces the server returned for a filtered search that do not match the filter: the server
    /// ignored it or reads it differently, so its answers to that filter cannot be trusted.
    pub mismatched: usize,
}

impl Page {
    /// An answer whose count is its distinct trace ids.
    pub fn new(traces: Vec<Trace>, returned: Vec<TraceId>) -> Self {
        let count = returned.len();
        Self {
            traces,
            returned,
            count,
            mismatched: 0,
        }
    }
}

/// Why a range is being asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Initial,
    Split,
    Verify,
    /// A bounded sample (the baseline): never split.
    Sample,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Split => "split",
            Self::Verify => "verify",
            Self::Sample => "sample",
        }
    }
}

/// A search that can be asked for any time range `[start_ns, end_ns)`; `Err` carries a message
/// for the gap.
pub trait RangeQuery: Sync {
    fn query(
        &self,
        start_ns: i64,
        end_ns: i64,
        reason: Reason,
    ) -> BoxFuture<'_, Result<Page, String>>;
}

/// What the server has shown about its cap, shared by all searches on one backend.
#[derive(Default)]
pub struct CapKnowledge {
    inner: Mutex<CapState>,
}

#[derive(Default)]
struct CapState {
    /// The largest number of traces any answer held: the cap is at least this.
    max_seen: usize,
    /// A cap proven by a verification.
    proven: Option<usize>,
}

impl CapKnowledge {
    fn observe(&self, n: usize) -> (usize, Option<usize>) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.max_seen = s.max_seen.max(n);
        (s.max_seen, s.proven)
    }

    fn prove(&self, cap: usize) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.proven = Some(s.proven.map_or(cap, |c| c.min(cap)));
    }
}

/// Why a range could not be captured completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortfallKind {
    /// A full (or unverifiable) answer for a range that cannot be split further.
    Truncated,
    /// The query failed.
    Failed,
    /// The backend dropped traces of the range while the capture ran: traces it had returned
    /// were missing when the range was asked again.
    Evicted,
}

impl ShortfallKind {
    /// The gap kind in the manifest.
    pub fn gap_kind(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Failed => "query_failed",
            Self::Evicted => "evicted",
        }
    }
}

/// A range that could not be captured completely.
#[derive(Debug, Clone, PartialEq)]
pub struct Shortfall {
    pub kind: ShortfallKind,
    pub start_ns: i64,
    pub end_ns: i64,
    pub message: String,
}

/// The result of an exhaustive search.
#[derive(Default)]
pub struct Found {
    pub traces: Vec<Trace>,
    pub shortfalls: Vec<Shortfall>,
}

struct Ctx<'a, Q: RangeQuery> {
    query: &'a Q,
    limit: usize,
    min_slice_ns: i64,
    caps: &'a CapKnowledge,
    verify_hidden_caps: bool,
    found: Mutex<(HashMap<TraceId, usize>, Vec<Trace>)>,
    shortfalls: Mutex<Vec<Shortfall>>,
}

impl<Q: RangeQuery> Ctx<'_, Q> {
    /// The limit an answer is full at: ours, or the server's cap when one was proven lower.
    fn limit_given(&self, proven: Option<usize>) -> usize {
        proven.map_or(self.limit, |c| c.min(self.limit))
    }

    fn keep(&self, traces: Vec<Trace>) {
        let mut guard = self.found.lock().unwrap_or_else(|p| p.into_inner());
        let (index, all) = &mut *guard;
        for t in traces {
            match index.get(&t.id) {
                Some(&i) => all[i].merge(t),
                None => {
                    index.insert(t.id, all.len());
                    all.push(t);
                }
            }
        }
    }

    fn short(&self, kind: ShortfallKind, start_ns: i64, end_ns: i64, message: String) {
        self.shortfalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Shortfall {
                kind,
                start_ns,
                end_ns,
                message,
            });
    }
}

/// How an exhaustive search is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub limit: usize,
    pub min_slice_ns: i64,
    /// Verify answers below the limit (servers that cap silently); off for servers that refuse
    /// a limit they will not honour.
    pub verify_hidden_caps: bool,
}

/// Finds every trace of `[start_ns, end_ns)` that `query` can see, splitting full answers.
pub async fn exhaustive<Q: RangeQuery>(
    query: &Q,
    start_ns: i64,
    end_ns: i64,
    bounds: Bounds,
    caps: &CapKnowledge,
) -> Found {
    let ctx = Ctx {
        query,
        limit: bounds.limit.max(1),
        min_slice_ns: bounds.min_slice_ns.max(1),
        caps,
        verify_hidden_caps: bounds.verify_hidden_caps,
        found: Mutex::new((HashMap::new(), Vec::new())),
        shortfalls: Mutex::new(Vec::new()),
    };
    match query.query(start_ns, end_ns, Reason::Initial).await {
        Ok(page) => judge(&ctx, start_ns, end_ns, page).await,
        Err(e) => ctx.short(ShortfallKind::Failed, start_ns, end_ns, e),
    }
    let (_, traces) = ctx.found.into_inner().unwrap_or_else(|p| p.into_inner());
    Found {
        traces,
        shortfalls: ctx
            .shortfalls
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
    }
}

/// Decides whether an answer for a range is complete, and splits it when it may not be.
fn judge<'a, Q: RangeQuery>(
    ctx: &'a Ctx<'a, Q>,
    start_ns: i64,
    end_ns: i64,
    page: Page,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let n = page.count;
        // The span of starts (inside the range) of the traces returned: servers answer newest
        // first, so a full answer shows how densely the end of the range is populated.
        let covered = page
            .traces
            .iter()
            .map(Trace::start_ns)
            .filter(|t| *t >= start_ns && *t < end_ns)
            .fold(None, |acc: Option<(i64, i64)>, t| match acc {
                None => Some((t, t)),
                Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
            });
        ctx.keep(page.traces);
        let (max_seen, proven) = ctx.caps.observe(n);
        let limit = ctx.limit_given(proven);
        if n >= limit {
            let parts = parts_for(start_ns, end_ns, n, covered, limit, ctx.min_slice_ns);
            split_full(ctx, start_ns, end_ns, (n, &page.returned), parts).await;
        } else if ctx.verify_hidden_caps
            && n >= MIN_PLAUSIBLE_CAP
            && proven.is_none()
            && n >= max_seen
        {
            verify(ctx, start_ns, end_ns, (n, &page.returned)).await;
        }
    })
}

/// Into how many parts a full answer's range is cut: as many as the whole range would need at
/// the density of the traces returned (`covered`: their oldest and newest start; newest first,
/// they cover the end of the range), aiming at 80% of the limit per part, between 2 and 16 and
/// none shorter than the minimum slice. An answer spread over the whole range gives 2, a plain
/// bisection. The estimate only saves queries: every part is judged on its own answer.
fn parts_for(
    start_ns: i64,
    end_ns: i64,
    returned: usize,
    covered: Option<(i64, i64)>,
    limit: usize,
    min_slice_ns: i64,
) -> usize {
    let span = end_ns.saturating_sub(start_ns).max(1);
    let estimate = match covered {
        Some((oldest, newest)) if newest > oldest && returned > 1 => {
            (returned - 1) as f64 * span as f64 / (newest - oldest) as f64
        }
        _ => returned as f64,
    };
    let wanted = (estimate / (0.8 * limit.max(1) as f64)).ceil().min(16.0) as i64;
    let most = (span / min_slice_ns.max(1)).max(2);
    wanted.clamp(2, 16).min(most) as usize
}

/// `[start_ns, end_ns)` cut into `parts` ranges of (nearly) equal length.
fn cut(start_ns: i64, end_ns: i64, parts: usize) -> Vec<(i64, i64)> {
    let span = i128::from(end_ns) - i128::from(start_ns);
    let at = |i: usize| (i128::from(start_ns) + span * i as i128 / parts as i128) as i64;
    (0..parts).map(|i| (at(i), at(i + 1))).collect()
}

/// Asks again for the parts of a range whose answer was full, and judges each.
fn split_full<'a, Q: RangeQuery>(
    ctx: &'a Ctx<'a, Q>,
    start_ns: i64,
    end_ns: i64,
    (whole, whole_ids): (usize, &'a [TraceId]),
    parts: usize,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if end_ns.saturating_sub(start_ns) <= ctx.min_slice_ns {
            ctx.short(
                ShortfallKind::Truncated,
                start_ns,
                end_ns,
                format!(
                    "the backend returned its maximum of {whole} traces for a range that cannot be split further; more may exist"
                ),
            );
            return;
        }
        let ranges = cut(start_ns, end_ns, parts);
        let pages = futures::future::join_all(
            ranges
                .iter()
                .map(|(s, e)| ctx.query.query(*s, *e, Reason::Split)),
        )
        .await;
        let limit = ctx.limit_given(ctx.caps.observe(0).1);
        let complete: Vec<&Page> = pages
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|p| p.count < limit)
            .collect();
        if complete.len() == parts {
            // Every part is a complete answer: together they hold everything the whole did.
            check_kept(ctx, start_ns, end_ns, whole_ids, &complete);
        }
        futures::future::join_all(
            ranges
                .into_iter()
                .zip(pages)
                .map(|((s, e), page)| async move {
                    match page {
                        Ok(p) => judge(ctx, s, e, p).await,
                        Err(err) => ctx.short(ShortfallKind::Failed, s, e, err),
                    }
                }),
        )
        .await;
    })
}

/// Checks that complete answers for the parts of a range hold every trace the answer for the
/// whole range held: one that vanished was dropped by the backend meanwhile (a memory store
/// over its `max_traces` evicts the oldest arrivals), and more of the range may be gone.
fn check_kept<Q: RangeQuery>(
    ctx: &Ctx<'_, Q>,
    start_ns: i64,
    end_ns: i64,
    whole: &[TraceId],
    parts: &[&Page],
) {
    let union: HashSet<&TraceId> = parts.iter().flat_map(|p| &p.returned).collect();
    let vanished = whole.iter().filter(|id| !union.contains(id)).count();
    if vanished > 0 {
        ctx.short(
            ShortfallKind::Evicted,
            start_ns,
            end_ns,
            format!(
                "the backend dropped traces of this range while the capture ran: {vanished} of the {} it had returned were missing when the range was asked again (a memory store over its max_traces evicts the oldest traces; retention may also delete them); those are in the bundle, others of this range may be gone",
                whole.len()
            ),
        );
    }
}

/// Verifies an answer below the limit that may be a hidden cap, by asking for its halves.
fn verify<'a, Q: RangeQuery>(
    ctx: &'a Ctx<'a, Q>,
    start_ns: i64,
    end_ns: i64,
    (whole, whole_ids): (usize, &'a [TraceId]),
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if end_ns.saturating_sub(start_ns) <= ctx.min_slice_ns {
            ctx.short(
                ShortfallKind::Truncated,
                start_ns,
                end_ns,
                format!(
                    "{whole} traces in a range that cannot be split further could not be verified complete: the backend may cap answers at {whole}"
                ),
            );
            return;
        }
        let mid = start_ns + end_ns.saturating_sub(start_ns) / 2;
        let (a, b) = futures::join!(
            ctx.query.query(start_ns, mid, Reason::Verify),
            ctx.query.query(mid, end_ns, Reason::Verify)
        );
        if let (Ok(pa), Ok(pb)) = (&a, &b) {
            let union: HashSet<&TraceId> = pa.returned.iter().chain(&pb.returned).collect();
            let union = union.len();
            if union > whole {
                // More traces than the whole held: a cap, unless traces arrived meanwhile
                // (the window may end now). Asking the whole again tells them apart.
                match ctx.query.query(start_ns, end_ns, Reason::Verify).await {
                    Ok(again) if again.count > whole => {
                        // The data grew: judge the fresh answer instead.
                        return judge(ctx, start_ns, end_ns, again).await;
                    }
                    Ok(_) => {
                        tracing::info!(
                            cap = whole,
                            "the backend caps search answers below the limit asked for"
                        );
                        ctx.caps.prove(whole);
                    }
                    Err(e) => ctx.short(ShortfallKind::Failed, start_ns, end_ns, e),
                }
            } else if pa.count < whole && pb.count < whole {
                // Neither half can be capped (the cap is at least `whole`) and together
                // they hold no more than the whole: the whole was complete, and so is
                // every part of it (unless the backend dropped some meanwhile).
                check_kept(ctx, start_ns, end_ns, whole_ids, &[pa, pb]);
                if let (Ok(pa), Ok(pb)) = (a, b) {
                    ctx.keep(pa.traces);
                    ctx.keep(pb.traces);
                }
                return;
            }
            // Otherwise one half holds everything and may itself be capped: judging it
            // verifies it in turn.
        }
        let left = async {
            match a {
                Ok(p) => judge(ctx, start_ns, mid, p).await,
                Err(e) => ctx.short(ShortfallKind::Failed, start_ns, mid, e),
            }
        };
        let right = async {
            match b {
                Ok(p) => judge(ctx, mid, end_ns, p).await,
                Err(e) => ctx.short(ShortfallKind::Failed, mid, end_ns, e),
            }
        };
        futures::join!(left, right);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trace;

    /// Traces at the given start times (ns); answers the most recent `min(limit, cap)`.
    struct Fake {
        starts: Vec<i64>,
        cap: usize,
        limit: usize,
        asked: std::sync::atomic::AtomicUsize,
        /// After the first answer, the traces of these indexes are gone (evicted).
        evicted_after_first: std::ops::Range<usize>,
    }

    impl RangeQuery for Fake {
        fn query(&self, s: i64, e: i64, _: Reason) -> BoxFuture<'_, Result<Page, String>> {
            let earlier = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut hits: Vec<(i64, usize)> = self
                .starts
                .iter()
                .enumerate()
                .filter(|(i, _)| earlier == 0 || !self.evicted_after_first.contains(i))
                .filter(|(_, t)| **t >= s && **t < e)
                .map(|(i, t)| (*t, i))
                .collect();
            hits.sort_by_key(|h| std::cmp::Reverse(*h));
            hits.truncate(self.cap.min(self.limit));
            let traces: Vec<Trace> = hits
                .iter()
                .map(|(_, i)| {
                    let mut id = [0u8; 16];
                    id[8..].copy_from_slice(&(*i as u64 + 1).to_be_bytes());
                    Trace {
                        id: TraceId(id),
                        spans: vec![crate::model::Span {
                            trace_id: TraceId(id),
                            span_id: crate::model::SpanId([1; 8]),
                            parent: None,
                            operation: "op".into(),
                            start_ns: self.starts[*i],
                            end_ns: self.starts[*i] + 1,
                            kind: Default::default(),
                            status: Default::default(),
                            attributes: Default::default(),
                            resource: Default::default(),
                            scope: None,
                            events: Default::default(),
                            links: Default::default(),
                            trace_state: None,
                        }],
                    }
                })
                .collect();
            let returned = traces.iter().map(|t| t.id).collect();
            Box::pin(async move { Ok(Page::new(traces, returned)) })
        }
    }

    fn bounds(limit: usize, min_slice_ns: i64) -> Bounds {
        Bounds {
            limit,
            min_slice_ns,
            verify_hidden_caps: true,
        }
    }

    fn run(starts: Vec<i64>, cap: usize, limit: usize, min_slice: i64) -> (Found, usize) {
        let fake = Fake {
            starts,
            cap,
            limit,
            asked: Default::default(),
            evicted_after_first: 0..0,
        };
        let caps = CapKnowledge::default();
        let found = futures::executor::block_on(exhaustive(
            &fake,
            0,
            1_000_000,
            bounds(limit, min_slice),
            &caps,
        ));
        (found, fake.asked.into_inner())
    }

    #[test]
    fn traces_the_backend_drops_between_two_answers_are_an_evicted_shortfall_not_silence() {
        // 1,000 traces; the first answer returns the newest 500; then the oldest 600 are gone.
        let fake = Fake {
            starts: (0..1000).map(|i| i * 1000).collect(),
            cap: usize::MAX,
            limit: 500,
            asked: Default::default(),
            evicted_after_first: 0..600,
        };
        let found = futures::executor::block_on(exhaustive(
            &fake,
            0,
            1_000_000,
            bounds(500, 1),
            &CapKnowledge::default(),
        ));
        // The 500 of the first answer are kept; the 100 the halves missed are reported.
        assert_eq!(found.traces.len(), 500);
        let evicted: Vec<_> = found
            .shortfalls
            .iter()
            .filter(|s| s.kind == ShortfallKind::Evicted)
            .collect();
        assert_eq!(evicted.len(), 1, "{:?}", found.shortfalls);
        assert!(
            evicted[0].message.contains("100 of the 500"),
            "{}",
            evicted[0].message
        );
    }

    #[test]
    fn a_full_answer_is_cut_into_as_many_parts_as_its_density_suggests() {
        // The newest 500 cover the last quarter: about 2,000 in all, 5 parts of ~400.
        assert_eq!(parts_for(0, 1000, 500, Some((750, 1000)), 500, 1), 5);
        // Spread over the whole range (not newest first), or no times known: a bisection.
        assert_eq!(parts_for(0, 1000, 500, Some((0, 999)), 500, 1), 2);
        assert_eq!(parts_for(0, 1000, 500, None, 500, 1), 2);
        assert_eq!(parts_for(0, 1000, 500, Some((900, 900)), 500, 1), 2);
        // Never more than 16, nor parts shorter than the minimum slice.
        assert_eq!(parts_for(0, 1000, 500, Some((998, 999)), 500, 1), 16);
        assert_eq!(parts_for(0, 1000, 500, Some((998, 999)), 500, 250), 4);
        assert_eq!(cut(0, 10, 3), vec![(0, 3), (3, 6), (6, 10)]);
    }

    #[test]
    fn six_thousand_traces_under_a_limit_of_500_take_close_to_the_minimum_of_queries() {
        // 6,400 traces evenly spread, newest first: ⌈6,400 ÷ 500⌉ = 13 queries at the least;
        // bisection took 31.
        let starts: Vec<i64> = (0..6400).map(|i| i * 150).collect();
        let (found, asked) = run(starts, usize::MAX, 500, 1);
        assert_eq!(found.traces.len(), 6400);
        assert!(found.shortfalls.is_empty());
        assert!(asked <= 18, "{asked} queries");
    }

    #[test]
    fn a_cap_below_the_limit_is_found_and_everything_is_captured() {
        let starts: Vec<i64> = (0..3000).map(|i| i * 300).collect();
        let (found, _) = run(starts, 100, 1000, 1);
        assert_eq!(found.traces.len(), 3000);
        assert!(found.shortfalls.is_empty());
    }

    #[test]
    fn a_small_answer_is_not_suspected_and_a_larger_one_is_verified_once() {
        let (found, asked) = run(vec![10, 500_000, 900_000], 100, 100, 1);
        assert_eq!(found.traces.len(), 3);
        assert_eq!(asked, 1, "three traces cannot be a cap");
        let spread: Vec<i64> = (0..40).map(|i| i * 25_000).collect();
        let (found, asked) = run(spread, 100, 100, 1);
        assert_eq!(found.traces.len(), 40);
        assert_eq!(asked, 3, "the answer and its two halves");
    }

    #[test]
    fn a_burst_under_a_hidden_cap_in_one_unsplittable_slice_is_a_shortfall_not_silence() {
        // 300 traces in one instant, a server capping at 100, our limit 1,000.
        let (found, _) = run(vec![500_000; 300], 100, 1000, 1_000);
        assert_eq!(found.traces.len(), 100);
        assert_eq!(found.shortfalls.len(), 1, "{:?}", found.shortfalls);
        assert!(found.shortfalls[0].message.contains("may cap"));
    }

    #[test]
    fn a_full_slice_that_cannot_be_split_is_a_shortfall() {
        // 50 traces at one instant under a cap of 10.
        let (found, _) = run(vec![42; 50], 10, 10, 1_000);
        assert_eq!(found.traces.len(), 10);
        assert_eq!(found.shortfalls.len(), 1);
        assert!(found.shortfalls[0].message.contains("maximum of 10"));
    }
}
