//! The root-cause ranking: every candidate service (with its most telling operation), best
//! first, from three independent signals, each measured against the baseline:
//!
//! - **errors**: errors no failing child explains (source errors), by the share of error
//!   traces they appear in; errors already present before the incident at a similar rate are
//!   `pre_existing` and rank last;
//! - **latency**: the change in time attributed to a service per trace. A span's own time (its
//!   duration less what its children cover) is its service's — except a span whose only child
//!   runs in another service (a client call): its own time is waiting on that callee outside the
//!   callee's span (network, queueing) and is the callee's. The score is the added time per
//!   trace as a share of the baseline's end-to-end time;
//! - **structure**: a service that does less per request than before (fewer own spans and
//!   outgoing calls per entry span: it returns early or throws) by how much less; and a service
//!   whose calls stop showing its spans (caller spans that used to have a child in it now have
//!   none: it fails before its own instrumentation records anything) by the share of such
//!   calls.

use std::collections::{BTreeMap, BTreeSet};

use super::tree::{SourceError, TraceTree};
use super::{AnalysisInput, Candidate, round4, time};

use crate::model::{SpanId, TraceId};

/// Below this many traces (or entry spans) on either side, a latency or structure comparison
/// is noise and is not made.
const MIN_SAMPLES: usize = 5;

/// Calls of one operation needed on each side: low-traffic services see a handful of calls a
/// minute, and a fault there is only visible if a few calls suffice (medians of two calls still
/// show a hundred-fold slowdown; the per-trace weighting keeps small changes small).
const MIN_CALLS: usize = 2;

/// A span that shows a candidate: (trace, span).
type Example = (TraceId, SpanId);
/// The incident span with the most time, as (time, trace, span).
type Top = Option<(i64, TraceId, SpanId)>;
/// Waiting times, baseline and incident.
type Waits = (Vec<i64>, Vec<i64>);

#[derive(Default)]
struct Structure {
    base_entries: usize,
    base_work: usize,
    inc_entries: usize,
    inc_work: usize,
    entry_ops: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Score {
    error: f64,
    latency: f64,
    structure: f64,
    pre_existing: bool,
    first_error_ns: Option<i64>,
    operation: String,
    reasons: Vec<String>,
    example: Option<(TraceId, SpanId)>,
}

fn period_is_baseline(t: &TraceTree<'_>, input: &AnalysisInput) -> bool {
    t.trace.start_ns() < input.began_ns
}

/// Ranks every candidate; the first one not `pre_existing` is the origin.
pub fn rank(
    forest: &[TraceTree<'_>],
    sources: &[SourceError<'_>],
    input: &AnalysisInput,
) -> Vec<(Candidate, Option<(TraceId, SpanId)>)> {
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    errors(sources, input, &mut scores);
    latency(forest, input, &mut scores);
    structure(forest, input, &mut scores);
    missing_callees(forest, input, &mut scores);
    cut_after_call(forest, input, &mut scores);

    let mut out: Vec<(Candidate, Option<Example>, i64)> = scores
        .into_iter()
        .filter(|(_, s)| s.error + s.latency + s.structure > 0.0 || s.pre_existing)
        .map(|(service, s)| {
            let total = if s.pre_existing {
                (s.latency + s.structure) + s.error * 0.1
            } else {
                s.error + s.latency + s.structure
            };
            let reason = format!("{service} {}: {}", s.operation, s.reasons.join("; "));
            (
                Candidate {
                    service,
                    operation: s.operation,
                    score: round4(total),
                    reason,
                    pre_existing: s.pre_existing && s.latency + s.structure == 0.0,
                },
                s.example,
                s.first_error_ns.unwrap_or(i64::MAX),
            )
        })
        .collect();
    out.sort_by(|(a, _, at), (b, _, bt)| {
        a.pre_existing
            .cmp(&b.pre_existing)
            .then(b.score.total_cmp(&a.score))
            .then(at.cmp(bt))
            .then(a.service.cmp(&b.service))
    });
    out.into_iter().map(|(c, e, _)| (c, e)).collect()
}

fn errors(
    sources: &[SourceError<'_>],
    input: &AnalysisInput,
    scores: &mut BTreeMap<String, Score>,
) {
    #[derive(Default)]
    struct Group {
        first_ns: i64,
        example: Option<(TraceId, SpanId)>,
        baseline: usize,
        incident: usize,
        traces: BTreeSet<TraceId>,
    }
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for s in sources {
        let g = groups
            .entry((s.span.service().to_string(), s.span.operation.to_string()))
            .or_insert_with(|| Group {
                first_ns: i64::MAX,
                ..Default::default()
            });
        if s.span.end_ns < input.began_ns {
            g.baseline += 1;
        } else {
            g.incident += 1;
            g.traces.insert(s.span.trace_id);
            if (s.span.end_ns, s.span.trace_id, s.span.span_id)
                < (
                    g.first_ns,
                    g.example.map_or(TraceId::default(), |e| e.0),
                    g.example.map_or(SpanId::default(), |e| e.1),
                )
            {
                g.first_ns = s.span.end_ns;
                g.example = Some((s.span.trace_id, s.span.span_id));
            }
        }
    }
    let mut service_errors: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ((service, _), g) in &groups {
        let e = service_errors.entry(service.clone()).or_default();
        e.0 += g.baseline;
        e.1 += g.incident;
    }
    let error_traces: BTreeSet<TraceId> = groups
        .values()
        .flat_map(|g| g.traces.iter().copied())
        .collect();
    let total = error_traces.len().max(1) as f64;
    for ((service, operation), g) in groups.into_iter().filter(|(_, g)| !g.traces.is_empty()) {
        let (base_errors, inc_errors) = service_errors
            .get(service.as_str())
            .copied()
            .unwrap_or_default();
        // Source errors per unit of time before and after the incident began: error traces are
        // captured whole on both sides (normal traffic is not), so counts per minute compare.
        let base_span = (input.began_ns - input.window_start_ns).max(1) as f64;
        let inc_span = (input.window_end_ns - input.began_ns).max(1) as f64;
        let expected = base_errors as f64 * inc_span / base_span;
        let base_rate = base_errors as f64 / (base_span / 60e9);
        let inc_rate = inc_errors as f64 / (inc_span / 60e9);
        // Pre-existing: it failed before, and the incident's errors are within what that rate
        // predicts (three standard deviations of a Poisson count).
        let pre_existing =
            base_errors > 0 && (inc_errors as f64) <= expected + 3.0 * expected.sqrt() + 1.0;
        let share = g.traces.len() as f64 / total;
        let s = scores.entry(service.clone()).or_default();
        if share <= s.error {
            continue;
        }
        s.error = share;
        s.pre_existing = pre_existing;
        s.operation = operation.clone();
        s.first_error_ns = Some(g.first_ns);
        s.example = g.example;
        s.reasons
            .retain(|r| !r.starts_with("fails") && !r.starts_with("already"));
        s.reasons.insert(
            0,
            if pre_existing {
                format!(
                    "already failed before the incident ({base_rate:.2} errors a minute before it, {inc_rate:.2} during): pre-existing, not the origin"
                )
            } else {
                format!(
                    "fails on its own (no failing child explains it) in {} of {} error traces, first at {}",
                    g.traces.len(),
                    error_traces.len(),
                    time(g.first_ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )
            },
        );
    }
}

/// Median of a sample, in ns.
fn median(v: &mut [i64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable(mid);
    *m as f64
}

#[derive(Default)]
struct Samples {
    baseline: Vec<i64>,
    incident: Vec<i64>,
    top: Option<(i64, TraceId, SpanId)>,
}

fn latency(forest: &[TraceTree<'_>], input: &AnalysisInput, scores: &mut BTreeMap<String, Score>) {
    // Per (service, operation): the time each call took that is the service's own — its span's
    // own time, plus, for a call whose caller span has it as its only child in another service,
    // that caller span's own time (waiting on this callee outside its span).
    let mut samples: BTreeMap<(&str, &str), Samples> = BTreeMap::new();
    // Per (caller service, callee service): the waiting time the caller span added, to tell a
    // slow network towards one callee from a slow caller (whose every outgoing call waits).
    let mut waits: BTreeMap<(&str, &str), Waits> = BTreeMap::new();
    let (mut base_traces, mut inc_traces) = (0usize, 0usize);
    let mut base_root_ns: i128 = 0;
    for t in forest {
        if t.trace.spans.is_empty() {
            continue;
        }
        let baseline = period_is_baseline(t, input);
        if baseline {
            base_traces += 1;
            base_root_ns += i128::from(t.trace.end_ns() - t.trace.start_ns());
        } else {
            inc_traces += 1;
        }
        let critical = t.critical_times();
        for (i, s) in t.trace.spans.iter().enumerate() {
            let is_wait = |p: usize| t.children(p).len() == 1 && t.span(p).service() != s.service();
            if let Some(c) = t.only_child(i)
                && t.span(c).service() != s.service()
            {
                // A caller span that only waits on its callee: counted with the callee's call.
                let w = waits.entry((s.service(), t.span(c).service())).or_default();
                let own = t.self_time_ns(i);
                if baseline {
                    w.0.push(own)
                } else {
                    w.1.push(own)
                }
                continue;
            }
            // Time on the critical path only: work that overlapped the path did not make the
            // request slower.
            let mut own = critical[i];
            if let Some(p) = t.parent(i)
                && is_wait(p)
            {
                own += critical[p];
            }
            if own == 0 && critical[i] == 0 && !t.is_entry(i) {
                continue;
            }
            let e = samples.entry((s.service(), &s.operation)).or_default();
            if baseline {
                e.baseline.push(own);
            } else {
                e.incident.push(own);
                if e.top.is_none_or(|(best, tid, sid)| {
                    (own, std::cmp::Reverse((s.trace_id, s.span_id)))
                        > (best, std::cmp::Reverse((tid, sid)))
                }) {
                    e.top = Some((own, s.trace_id, s.span_id));
                }
            }
        }
    }
    if base_traces < MIN_SAMPLES || inc_traces < MIN_SAMPLES {
        return;
    }
    let root_ms = (base_root_ns as f64 / base_traces as f64 / 1e6).max(0.001);

    // A caller whose waits grew several-fold towards most of its callees (two at least) is
    // itself slow (CPU, GC, its own pool): that growth is the caller's. A slow network towards
    // one callee makes the waits towards that callee alone grow.
    const SEVERAL_FOLD: f64 = 3.0;
    let mut edges: BTreeMap<&str, Vec<(&str, f64, bool)>> = BTreeMap::new();
    for ((caller, callee), (b, i)) in waits.iter_mut() {
        if b.len() < MIN_CALLS || i.len() < MIN_CALLS {
            continue;
        }
        let (mb, mi) = (median(b), median(i));
        let gain_ms = (mi - mb) / 1e6 * i.len() as f64 / inc_traces as f64;
        let several_fold = mi >= SEVERAL_FOLD * mb.max(1_000.0);
        edges
            .entry(caller)
            .or_default()
            .push((callee, gain_ms, several_fold));
    }
    let mut slow_callers: BTreeMap<&str, f64> = BTreeMap::new();
    let mut moved: BTreeMap<&str, f64> = BTreeMap::new();
    for (caller, callees) in &edges {
        let grown: Vec<&(&str, f64, bool)> = callees.iter().filter(|(_, _, g)| *g).collect();
        if grown.len() >= 2 && grown.len() * 2 >= callees.len() {
            for (callee, gain, _) in grown {
                *slow_callers.entry(caller).or_default() += gain.max(0.0);
                *moved.entry(callee).or_default() += gain.max(0.0);
            }
        }
    }

    // Per service: the gain of each operation, per trace; the operation that gained most.
    let mut best: BTreeMap<&str, (f64, f64, &str, Top)> = BTreeMap::new();
    for ((service, op), sm) in samples.iter_mut() {
        if sm.baseline.len() < MIN_CALLS || sm.incident.len() < MIN_CALLS {
            continue;
        }
        let per_call_ms = (median(&mut sm.incident) - median(&mut sm.baseline)) / 1e6;
        let gained = per_call_ms * sm.incident.len() as f64 / inc_traces as f64;
        let e = best.entry(service).or_insert((f64::MIN, 0.0, op, None));
        e.1 += gained;
        if gained > e.0 || (gained == e.0 && *op < e.2) {
            (e.0, e.2, e.3) = (gained, op, sm.top);
        }
    }
    // What moved from callees to a slow caller.
    for (callee, g) in &moved {
        if let Some(e) = best.get_mut(callee) {
            e.1 -= g;
        }
    }
    for (caller, g) in &slow_callers {
        let e = best.entry(caller).or_insert((0.0, 0.0, "", None));
        e.1 += g;
    }
    for (service, (op_gain, service_gain, op, top)) in best {
        let score = service_gain / root_ms;
        // Less than 0.2% of the end-to-end time is noise, even for a weak candidate.
        if score < 0.002 {
            continue;
        }
        let s = scores.entry(service.to_owned()).or_default();
        s.latency = score;
        if s.operation.is_empty() {
            s.operation = op.to_owned();
            s.example = top.map(|(_, t, sp)| (t, sp));
        }
        let slow_caller = slow_callers.contains_key(service);
        s.reasons.push(format!(
            "takes {service_gain:.1} ms more per trace than in the baseline ({:.0}% of the baseline's {root_ms:.1} ms end to end{}{})",
            score * 100.0,
            if op.is_empty() { String::new() } else { format!("; most in {op}, +{op_gain:.1} ms") },
            if slow_caller { "; its calls to several services all wait longer: the caller is slow" } else { "" },
        ));
    }
}

fn structure(
    forest: &[TraceTree<'_>],
    input: &AnalysisInput,
    scores: &mut BTreeMap<String, Score>,
) {
    let mut by_service: BTreeMap<&str, Structure> = BTreeMap::new();
    for t in forest {
        let baseline = period_is_baseline(t, input);
        for (i, s) in t.trace.spans.iter().enumerate() {
            let e = by_service.entry(s.service()).or_default();
            // Work done for a request: the service's own spans, and the calls it makes.
            let calls_out = t
                .children(i)
                .filter(|&c| t.span(c).service() != s.service())
                .count();
            let entry = t.is_entry(i);
            if baseline {
                e.base_work += 1 + calls_out;
                e.base_entries += usize::from(entry);
            } else {
                e.inc_work += 1 + calls_out;
                e.inc_entries += usize::from(entry);
                if entry {
                    *e.entry_ops.entry(s.operation.to_string()).or_default() += 1;
                }
            }
        }
    }
    for (service, st) in by_service {
        if st.base_entries < MIN_SAMPLES * 2 || st.inc_entries < MIN_SAMPLES * 2 {
            continue;
        }
        let base = st.base_work as f64 / st.base_entries as f64;
        let inc = st.inc_work as f64 / st.inc_entries as f64;
        let drop = 1.0 - inc / base;
        // A twentieth less is within normal variation of request mixes.
        if drop < 0.05 {
            continue;
        }
        let s = scores.entry(service.to_owned()).or_default();
        s.structure = drop;
        if s.operation.is_empty() {
            s.operation = st
                .entry_ops
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(op, _)| op.clone())
                .unwrap_or_default();
        }
        s.reasons.push(format!(
            "does {:.0}% less per request than in the baseline ({inc:.1} spans and calls per entry span, was {base:.1}): it returns early or fails",
            drop * 100.0
        ));
    }
}

fn missing_callees(
    forest: &[TraceTree<'_>],
    input: &AnalysisInput,
    scores: &mut BTreeMap<String, Score>,
) {
    // Per caller (service, operation): calls, calls answered by a span of another service (and
    // which), calls with no child at all; baseline and incident.
    #[derive(Default)]
    struct Calls<'a> {
        base: usize,
        base_childless: usize,
        inc: usize,
        inc_childless: usize,
        callees: BTreeMap<&'a str, usize>,
    }
    let mut by_caller: BTreeMap<(&str, &str), Calls<'_>> = BTreeMap::new();
    for t in forest {
        let baseline = period_is_baseline(t, input);
        for (i, s) in t.trace.spans.iter().enumerate() {
            let childless = t.children(i).len() == 0;
            let callee = match t.only_child(i) {
                Some(c) if t.span(c).service() != s.service() => Some(t.span(c).service().as_ref()),
                _ => None,
            };
            if !childless && callee.is_none() {
                continue;
            }
            let e = by_caller.entry((s.service(), &s.operation)).or_default();
            if baseline {
                e.base += 1;
                e.base_childless += usize::from(childless);
                if let Some(c) = callee {
                    *e.callees.entry(c).or_default() += 1;
                }
            } else {
                e.inc += 1;
                e.inc_childless += usize::from(childless);
            }
        }
    }
    let mut best: BTreeMap<&str, (f64, &str, &str)> = BTreeMap::new();
    for ((caller, op), c) in &by_caller {
        if c.base < MIN_SAMPLES || c.inc < MIN_SAMPLES {
            continue;
        }
        // A client span: in the baseline it (almost) always had its callee's span under it.
        let Some((callee, answered)) = c
            .callees
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
        else {
            continue;
        };
        if (*answered as f64) < 0.8 * c.base as f64 {
            continue;
        }
        let lost = c.inc_childless as f64 / c.inc as f64 - c.base_childless as f64 / c.base as f64;
        // Ties go to the first caller in name order (the map is sorted).
        if lost >= 0.05 && lost > best.get(callee).map_or(0.0, |b| b.0) {
            best.insert(callee, (lost, caller, op));
        }
    }
    for (callee, (lost, caller, op)) in best {
        let s = scores.entry(callee.to_owned()).or_default();
        s.structure = s.structure.max(lost);
        if s.operation.is_empty() {
            // Its own operation cannot be seen (its spans are missing): the call's name says it.
            s.operation = op.to_owned();
        }
        s.reasons.push(format!(
            "{:.0}% more of the calls into it show no span of it ({caller} {op}): it fails before recording its work",
            lost * 100.0
        ));
    }
}

/// The service a span's call went to: its own service when it is another one, else (a client
/// span in the caller) the service of its only child.
fn callee_of<'a>(t: &TraceTree<'a>, caller: &str, i: usize) -> Option<&'a str> {
    let s = t.span(i);
    if **s.service() != *caller {
        return Some(s.service());
    }
    match t.only_child(i) {
        Some(c) if **t.span(c).service() != *caller => Some(t.span(c).service()),
        _ => None,
    }
}

fn cut_after_call(
    forest: &[TraceTree<'_>],
    input: &AnalysisInput,
    scores: &mut BTreeMap<String, Score>,
) {
    // Per span (service, operation) that calls others: its spans, its children, and how many
    // of its spans end with a call to each callee; baseline and incident.
    #[derive(Default)]
    struct Ends<'a> {
        spans: [usize; 2],
        children: [usize; 2],
        last: BTreeMap<&'a str, [usize; 2]>,
    }
    let mut by_span: BTreeMap<(&str, &str), Ends<'_>> = BTreeMap::new();
    for t in forest {
        let side = usize::from(!period_is_baseline(t, input));
        for (i, s) in t.trace.spans.iter().enumerate() {
            let e = by_span.entry((s.service(), &s.operation)).or_default();
            e.spans[side] += 1;
            e.children[side] += t.children(i).len();
            let last = t
                .children(i)
                .max_by_key(|&c| (t.span(c).start_ns, t.span(c).span_id));
            if let Some(callee) = last.and_then(|c| callee_of(t, s.service(), c)) {
                e.last.entry(callee).or_default()[side] += 1;
            }
        }
    }
    let traces = forest
        .iter()
        .filter(|t| !period_is_baseline(t, input))
        .count()
        .max(1) as f64;
    let mut best: BTreeMap<&str, (f64, f64, f64, &str, &str)> = BTreeMap::new();
    for ((caller, op), e) in &by_span {
        if e.spans[0] < MIN_SAMPLES * 2 || e.spans[1] < MIN_SAMPLES * 2 {
            continue;
        }
        // The handler must do less than before: it stopped early.
        let per = |side: usize| e.children[side] as f64 / e.spans[side] as f64;
        if per(1) > 0.95 * per(0) {
            continue;
        }
        for (callee, n) in &e.last {
            if callee == caller {
                continue;
            }
            let was = n[0] as f64 / e.spans[0] as f64;
            let now = n[1] as f64 / e.spans[1] as f64;
            // Weighted by how many of the incident's traces the handler's spans are in.
            let score = (now - was) * (e.spans[1] as f64 / traces).min(1.0);
            if score >= 0.05 && score > best.get(callee).map_or(0.0, |b| b.0) {
                best.insert(callee, (score, was, now, caller, op));
            }
        }
    }
    for (callee, (score, was, now, caller, op)) in best {
        let s = scores.entry(callee.to_owned()).or_default();
        s.structure = s.structure.max(score);
        if s.operation.is_empty() {
            s.operation = op.to_owned();
        }
        s.reasons.push(format!(
            "its callers stop after calling it: {:.0}% of {caller} {op} spans now end with a call to it (was {:.0}%), and do less: it answered with an exception or nothing",
            now * 100.0,
            was * 100.0
        ));
        // What the caller no longer does is explained by this callee.
        if let Some(c) = scores.get_mut(caller) {
            c.structure *= 1.0 - (now - was).clamp(0.0, 1.0);
        }
    }
}
