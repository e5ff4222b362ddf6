//! Analysis: turns the captured traces into what a postmortem needs: per-service statistics
//! (baseline against incident), the timeline, where the errors came from and how they spread,
//! and when the first-failing operation recovered. Deterministic: the same traces give the same
//! output, byte for byte (everything is sorted; no hash-map order leaks out).

mod rank;
mod stats;
mod suspects;
mod timeline;
mod tree;

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::capture::spill::Spill;
use crate::capture::{Purpose, Purposes};
use crate::model::{Span, SpanId, Trace, TraceId};

pub use stats::{LatencyStats, ServiceStats};
pub use timeline::{Timeline, TimelineEntry};

/// What the analysis needs to know besides the traces.
#[derive(Clone, Debug)]
pub struct AnalysisInput {
    /// When the incident began (`started_at`, else `declared_at`), in ns: spans before it are
    /// the baseline.
    pub began_ns: i64,
    pub window_start_ns: i64,
    pub window_end_ns: i64,
    pub slow_threshold: Duration,
    pub error_rate_threshold: f64,
    /// The share of normal traces the backend keeps (1.0 without sampling): a sampled normal
    /// request stands for 1 ÷ this many.
    pub kept_normal_share: f64,
}

impl AnalysisInput {
    pub(crate) fn slow_threshold_ns(&self) -> i64 {
        self.slow_threshold.as_nanos().min(i64::MAX as u128) as i64
    }
}

/// A pointer at the span that shows something.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Evidence {
    pub time: DateTime<Utc>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// The root-cause candidate ranked first.
#[derive(Clone, Debug, Serialize)]
pub struct Origin {
    pub service: String,
    pub operation: String,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub confidence: f64,
    pub reason: String,
}

/// A root-cause candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub service: String,
    pub operation: String,
    pub score: f64,
    pub reason: String,
    /// Errors of this operation that began before the incident at the same rate.
    pub pre_existing: bool,
}

/// A failure that spread from a caller's call into a callee that failed.
#[derive(Clone, Debug, Serialize)]
pub struct Propagation {
    pub from: String,
    pub to: String,
    pub first_seen: DateTime<Utc>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub traces: usize,
}

/// An attribute value over-represented on the origin's failing calls.
#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    pub key: String,
    /// The value, or for a numeric attribute the threshold that separates (`≥ 50`).
    pub value: String,
    pub failing_share: f64,
    /// Among the same operation's successful calls in the minutes with failures (`null`
    /// without any).
    pub healthy_share: Option<f64>,
    /// Among its successful calls before the incident (`null` without any).
    pub baseline_share: Option<f64>,
    /// The failing share over the share it is judged against: the healthy calls' when there
    /// are enough of them, else the baseline's.
    pub lift: f64,
    /// Values that occur on exactly the same calls (`host.name=node-3` with its pod).
    pub also: Vec<String>,
    /// What the shares rest on.
    pub failing_calls: usize,
    pub healthy_calls: usize,
    pub baseline_calls: usize,
    /// The first failing call that carries it: the trace a person opens to see it.
    pub example: Option<Evidence>,
}

/// Time per service and operation in slow and failing traces against the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyEntry {
    pub service: String,
    pub operation: String,
    /// Time on the critical path (CRISP) per trace it appears in, in ms: what it added to the
    /// end-to-end latency.
    pub incident_critical_ms_per_trace: f64,
    pub baseline_critical_ms_per_trace: Option<f64>,
    /// Mean self time (the span's own time, children excluded) per span, in ms.
    pub incident_self_ms: f64,
    pub baseline_self_ms: Option<f64>,
    pub incident_spans: usize,
    pub baseline_spans: usize,
}

/// A service in the order services started failing.
#[derive(Clone, Debug, Serialize)]
pub struct FailureStep {
    pub service: String,
    pub first_error: DateTime<Utc>,
}

/// The contents of `analysis.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub services: BTreeMap<String, ServiceStats>,
    pub origin: Option<Origin>,
    pub ranking: Vec<Candidate>,
    pub propagation: Vec<Propagation>,
    /// The order in which services started failing: causal first (a callee whose failure spread
    /// to a caller comes before it, even when their clocks disagree), then by time.
    pub failure_order: Vec<FailureStep>,
    pub suspects: Vec<Suspect>,
    pub latency: Vec<LatencyEntry>,
    /// What the rates' weights rest on.
    pub sampling: SamplingBasis,
    /// The first successful call of the origin operation after its last failure.
    pub recovery: Option<Evidence>,
    /// Why there is no recovery, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_note: Option<String>,
}

/// What the weights of the rates and percentiles rest on.
#[derive(Clone, Debug, Serialize)]
pub struct SamplingBasis {
    /// `backends.<name>.kept_normal_share`: a sampled normal trace stands for its inverse.
    pub kept_normal_share: f64,
    /// Sampled traces weighted by the OpenTelemetry `th` threshold in their trace state instead.
    pub traces_weighted_by_threshold: usize,
    pub sample_traces: usize,
}

/// Rounds to 4 decimals so floats print the same everywhere.
pub(crate) fn round4(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

pub(crate) fn time(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// Traces whose spans belong to the incident (not only to the baseline sample).
fn is_incident_trace(p: Purposes) -> bool {
    p.has(Purpose::Errors) || p.has(Purpose::Slow) || p.has(Purpose::Sample)
}

/// Analyses the captured traces (whole ones: see [`analyze_with`] for light spans).
pub fn analyze(traces: &[(Trace, Purposes)], input: &AnalysisInput) -> (Analysis, Timeline) {
    match analyze_with(traces, input, None) {
        Ok(done) => done,
        Err(e) => unreachable!("nothing is read back without details: {e}"),
    }
}

/// Analyses the captured traces; where they hold light spans (a file streamed through
/// `spill`), the attributes the suspects compare are read back from it, which fails only when
/// that reading fails.
pub fn analyze_with(
    traces: &[(Trace, Purposes)],
    input: &AnalysisInput,
    spill: Option<&Spill>,
) -> std::io::Result<(Analysis, Timeline)> {
    let forest: Vec<tree::TraceTree<'_>> = traces
        .iter()
        .map(|(t, p)| tree::TraceTree::new(t, *p))
        .collect();
    // The figures that do not depend on the origin are worked out on a second core while this
    // one ranks the candidates and reads the suspects back.
    std::thread::scope(|scope| {
        let apart = scope.spawn(|| Apart {
            services: stats::service_stats(&forest, input),
            recovered: recoveries(&forest, |t, i, s| t.is_entry(i).then_some(&**s.service())),
            propagation: tree::propagation(&forest),
            latency: stats::latency(&forest, input),
        });
        let by_origin = by_origin(&forest, input, spill);
        let apart = apart
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok(assemble(traces, &forest, input, apart, by_origin?))
    })
}

/// The parts of the analysis that do not depend on the origin.
struct Apart<'a> {
    services: BTreeMap<String, ServiceStats>,
    recovered: HashMap<&'a str, Evidence>,
    propagation: Vec<Propagation>,
    latency: Vec<LatencyEntry>,
}

/// The origin, the ranking it came first in, the origin's recovery and its suspects.
struct ByOrigin {
    origin: Option<Origin>,
    ranking: Vec<Candidate>,
    recovery: Option<Evidence>,
    suspects: Vec<Suspect>,
}

fn by_origin(
    forest: &[tree::TraceTree<'_>],
    input: &AnalysisInput,
    spill: Option<&Spill>,
) -> std::io::Result<ByOrigin> {
    let sources = tree::source_errors(forest);
    let ranked = rank::rank(forest, &sources, input);
    let total: f64 = ranked.iter().map(|(c, _)| c.score).sum();
    let origin = ranked
        .first()
        .filter(|(c, _)| !c.pre_existing)
        .and_then(|(c, example)| {
            // A candidate without a span of its own to show (its spans went missing, or only
            // its callers' waits grew): its slowest call during the incident shows it.
            let fallback = || {
                forest
                    .iter()
                    .flat_map(|t| t.trace.spans.iter())
                    .filter(|s| {
                        s.start_ns >= input.began_ns
                            && **s.service() == *c.service
                            && (c.operation.is_empty() || *s.operation == *c.operation)
                    })
                    .max_by_key(|s| (s.duration_ns(), std::cmp::Reverse((s.trace_id, s.span_id))))
                    .map(|s| (s.trace_id, s.span_id, s.operation.to_string()))
            };
            let (trace_id, span_id, operation) = match example {
                Some((t, sp)) => (*t, *sp, c.operation.clone()),
                None => fallback()?,
            };
            let operation = if c.operation.is_empty() {
                operation
            } else {
                c.operation.clone()
            };
            Some(Origin {
                service: c.service.clone(),
                operation,
                trace_id,
                span_id,
                // The origin's share of all the evidence against any candidate.
                confidence: round4(if total > 0.0 { c.score / total } else { 0.0 }),
                reason: c.reason.clone(),
            })
        });
    let ranking: Vec<Candidate> = ranked.into_iter().map(|(c, _)| c).collect();
    // The origin's recovery: its first successful call after its last failing one.
    let recovery = origin.as_ref().and_then(|o| {
        recoveries(forest, |_, _, s| {
            (**s.service() == *o.service && *s.operation == *o.operation).then_some(())
        })
        .remove(&())
    });
    let suspects = match &origin {
        None => Vec::new(),
        Some(o) => {
            let read_back = match spill {
                None => None,
                Some(d) => {
                    let ids: Vec<TraceId> = forest
                        .iter()
                        .filter(|t| t.trace.spans.iter().any(|s| suspects::is_compared(s, o)))
                        .map(|t| t.trace.id)
                        .collect();
                    let clock = std::time::Instant::now();
                    let read = d.attributes(&ids, &|service, operation| {
                        service == o.service && operation == o.operation
                    })?;
                    tracing::debug!(
                        traces = ids.len(),
                        spans = read.len(),
                        ms = clock.elapsed().as_millis() as u64,
                        "attributes read back for the suspects"
                    );
                    Some(suspects::SpanAttributes::new(read))
                }
            };
            suspects::suspects(forest, o, input, read_back.as_ref())
        }
    };
    Ok(ByOrigin {
        origin,
        ranking,
        recovery,
        suspects,
    })
}

fn assemble(
    traces: &[(Trace, Purposes)],
    forest: &[tree::TraceTree<'_>],
    input: &AnalysisInput,
    apart: Apart<'_>,
    by_origin: ByOrigin,
) -> (Analysis, Timeline) {
    let Apart {
        mut services,
        mut recovered,
        propagation,
        latency,
    } = apart;
    let ByOrigin {
        origin,
        ranking,
        recovery,
        suspects,
    } = by_origin;
    let recovery_note = match (&origin, &recovery) {
        (_, Some(_)) => None,
        (None, None) => Some("no origin of a failure was found, so no recovery either".to_owned()),
        (Some(o), None) => Some(format!(
            "not recovered at capture time: no successful {} of {} after its last failure among the captured traces",
            o.operation, o.service
        )),
    };
    for (name, stats) in services.iter_mut() {
        // Per service: its first successful request after its last failing one.
        stats.recovery = recovered.remove(name.as_str());
    }
    let failure_order = failure_order(&services, &propagation);
    let sampled: Vec<&Trace> = traces
        .iter()
        .filter(|(_, p)| p.has(Purpose::Sample))
        .map(|(t, _)| t)
        .collect();
    let sampling = SamplingBasis {
        kept_normal_share: input.kept_normal_share,
        traces_weighted_by_threshold: sampled
            .iter()
            .filter(|t| stats::trace_weight(t, input).1)
            .count(),
        sample_traces: sampled.len(),
    };
    let analysis = Analysis {
        services,
        origin,
        ranking,
        propagation,
        failure_order,
        suspects,
        latency,
        sampling,
        recovery,
        recovery_note,
    };
    let timeline = timeline::build(forest, &analysis, input);
    (analysis, timeline)
}

/// Services in the order they started failing: a topological order of the propagation edges
/// (callee before caller), the earliest first error first among those free to go next.
fn failure_order(
    services: &BTreeMap<String, ServiceStats>,
    propagation: &[Propagation],
) -> Vec<FailureStep> {
    let failed: BTreeMap<&str, DateTime<Utc>> = services
        .iter()
        .filter_map(|(s, st)| st.first_error.as_ref().map(|e| (s.as_str(), e.time)))
        .collect();
    // Each caller waits for its failing callees.
    let mut waits_for: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for p in propagation {
        if failed.contains_key(p.from.as_str())
            && failed.contains_key(p.to.as_str())
            && p.from != p.to
        {
            waits_for
                .entry(p.from.as_str())
                .or_default()
                .insert(p.to.as_str());
        }
    }
    // Kahn's algorithm: a service is ready once every callee it waits for is done; the ready
    // one with the earliest first error (then name) goes next. O((services + edges) log
    // services). Only when nothing is ready (cycles) is the slower tie-break below used.
    use std::cmp::Reverse;
    let mut waited_by: HashMap<&str, Vec<&str>> = Default::default();
    let mut unmet_count: HashMap<&str, usize> = Default::default();
    for (&from, tos) in &waits_for {
        unmet_count.insert(from, tos.len());
        for &to in tos {
            waited_by.entry(to).or_default().push(from);
        }
    }
    let mut ready: std::collections::BinaryHeap<Reverse<(DateTime<Utc>, &str)>> = failed
        .iter()
        .filter(|(s, _)| !unmet_count.contains_key(*s))
        .map(|(&s, &t)| Reverse((t, s)))
        .collect();
    let mut done: foldhash::HashSet<&str> = Default::default();
    let mut out = Vec::with_capacity(failed.len());
    while out.len() < failed.len() {
        let next = match ready.pop() {
            Some(Reverse((t, s))) => Some((s, t)),
            None => break_cycle(&failed, &waits_for, &done),
        };
        let Some((s, t)) = next else { break };
        if !done.insert(s) {
            continue;
        }
        out.push(FailureStep {
            service: s.to_owned(),
            first_error: t,
        });
        for &caller in waited_by.get(s).into_iter().flatten() {
            if let Some(n) = unmet_count.get_mut(caller) {
                *n = n.saturating_sub(1);
                if *n == 0 && !done.contains(caller) {
                    ready.push(Reverse((failed[caller], caller)));
                }
            }
        }
    }
    out
}

/// The next service when only cycles are left (services failing each other): by time, among
/// the pending services whose every unmet dependency leads back to them (members of a cycle
/// nothing else holds up), else the earliest pending one.
fn break_cycle<'a>(
    failed: &BTreeMap<&'a str, DateTime<Utc>>,
    waits_for: &BTreeMap<&'a str, std::collections::BTreeSet<&'a str>>,
    done: &foldhash::HashSet<&'a str>,
) -> Option<(&'a str, DateTime<Utc>)> {
    let unmet = |s: &str| -> Vec<&'a str> {
        waits_for
            .get(s)
            .map(|w| w.iter().copied().filter(|c| !done.contains(c)).collect())
            .unwrap_or_default()
    };
    // Whether `to` can be reached from `from` through unmet dependencies.
    let reaches = |from: &'a str, to: &str| {
        let mut seen = foldhash::HashSet::default();
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            if x == to {
                return true;
            }
            if seen.insert(x) {
                stack.extend(unmet(x));
            }
        }
        false
    };
    let pending = failed.iter().filter(|(s, _)| !done.contains(*s));
    pending
        .clone()
        .filter(|(s, _)| unmet(s).iter().all(|d| reaches(d, s)))
        .min_by_key(|(s, t)| (**t, **s))
        .or_else(|| pending.min_by_key(|(s, t)| (**t, **s)))
        .map(|(s, t)| (*s, *t))
}

/// For each group `group` puts spans in (`None`: in none), the first success that starts after
/// the last failure of the group ended: nothing for a group without a failure, or without a
/// success after it. One pass for the failures and one for the successes, however many groups
/// (100k services, one pass each, took hours).
fn recoveries<'t, K: std::hash::Hash + Eq>(
    forest: &[tree::TraceTree<'t>],
    group: impl Fn(&tree::TraceTree<'t>, usize, &'t Span) -> Option<K>,
) -> HashMap<K, Evidence> {
    let grouped = || {
        forest.iter().flat_map(|t| {
            let spans: &'t [Span] = &t.trace.spans;
            let group = &group;
            spans
                .iter()
                .enumerate()
                .filter_map(move |(i, s)| Some((group(t, i, s)?, s)))
        })
    };
    let mut last_error: HashMap<K, i64> = HashMap::default();
    for (k, s) in grouped().filter(|(_, s)| s.is_error()) {
        let end = last_error.entry(k).or_insert(s.end_ns);
        *end = (*end).max(s.end_ns);
    }
    let mut first_success: HashMap<K, &Span> = HashMap::default();
    for (k, s) in grouped().filter(|(_, s)| !s.is_error()) {
        if last_error.get(&k).is_some_and(|&last| s.start_ns > last) {
            let order = |s: &Span| (s.end_ns, s.trace_id, s.span_id);
            let best = first_success.entry(k).or_insert(s);
            if order(s) < order(best) {
                *best = s;
            }
        }
    }
    first_success
        .into_iter()
        .map(|(k, s)| {
            let evidence = Evidence {
                time: time(s.end_ns),
                trace_id: s.trace_id,
                span_id: s.span_id,
            };
            (k, evidence)
        })
        .collect()
}
