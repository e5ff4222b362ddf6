//! Analysis: turns the captured traces into what a postmortem needs: per-service statistics
//! (baseline against incident), the timeline, where the errors came from and how they spread,
//! and when the first-failing operation recovered. Deterministic: the same traces give the same
//! output, byte for byte (everything is sorted; no hash-map order leaks out).

mod stats;
mod timeline;
mod tree;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

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

/// An attribute value over-represented on failing spans.
#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    pub key: String,
    pub value: String,
    pub failing_share: f64,
    pub baseline_share: f64,
    pub lift: f64,
}

/// Time per service and operation in slow and failing traces against the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyEntry {
    pub service: String,
    pub operation: String,
    /// Mean self time (the span's own time, children excluded) per span, in ms.
    pub incident_self_ms: f64,
    pub baseline_self_ms: Option<f64>,
    pub incident_spans: usize,
    pub baseline_spans: usize,
}

/// The contents of `analysis.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub services: BTreeMap<String, ServiceStats>,
    pub origin: Option<Origin>,
    pub ranking: Vec<Candidate>,
    pub propagation: Vec<Propagation>,
    pub suspects: Vec<Suspect>,
    pub latency: Vec<LatencyEntry>,
    pub recovery: Option<Evidence>,
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
    p.has(Purpose::Errors) || p.has(Purpose::Slow) || p.has(Purpose::Other)
}

/// Analyses the captured traces.
pub fn analyze(traces: &[(Trace, Purposes)], input: &AnalysisInput) -> (Analysis, Timeline) {
    let forest: Vec<tree::TraceTree<'_>> = traces
        .iter()
        .map(|(t, p)| tree::TraceTree::new(t, *p))
        .collect();
    let services = stats::service_stats(&forest, input);
    let sources = tree::source_errors(&forest);
    let ranking = rank(&sources, &services, input);
    let origin = ranking.first().filter(|c| !c.pre_existing).and_then(|c| {
        let example = sources
            .iter()
            .filter(|s| s.span.service().as_ref() == c.service && *s.span.operation == c.operation)
            .min_by_key(|s| (s.span.end_ns, s.span.trace_id, s.span.span_id))?;
        Some(Origin {
            service: c.service.clone(),
            operation: c.operation.clone(),
            trace_id: example.span.trace_id,
            span_id: example.span.span_id,
            confidence: c.score,
            reason: c.reason.clone(),
        })
    });
    let propagation = tree::propagation(&forest);
    let latency = stats::latency(&forest, input);
    let recovery = origin
        .as_ref()
        .and_then(|o| recovery(&forest, &o.service, &o.operation));
    let analysis = Analysis {
        services,
        origin,
        ranking,
        propagation,
        suspects: Vec::new(),
        latency,
        recovery,
    };
    let timeline = timeline::build(&forest, &analysis, input);
    (analysis, timeline)
}

/// Ranks (service, operation) pairs whose errors are not explained by an erroring child.
fn rank(
    sources: &[tree::SourceError<'_>],
    services: &BTreeMap<String, ServiceStats>,
    input: &AnalysisInput,
) -> Vec<Candidate> {
    struct Group {
        first_ns: i64,
        incident: usize,
        baseline: usize,
        traces: std::collections::BTreeSet<TraceId>,
    }
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for s in sources {
        let key = (s.span.service().to_string(), s.span.operation.to_string());
        let g = groups.entry(key).or_insert(Group {
            first_ns: i64::MAX,
            incident: 0,
            baseline: 0,
            traces: Default::default(),
        });
        if s.span.end_ns < input.began_ns {
            g.baseline += 1;
        } else {
            g.incident += 1;
            g.first_ns = g.first_ns.min(s.span.end_ns);
            g.traces.insert(s.span.trace_id);
        }
    }
    let error_traces: std::collections::BTreeSet<TraceId> = groups
        .values()
        .flat_map(|g| g.traces.iter().copied())
        .collect();
    let total = error_traces.len().max(1) as f64;
    let mut out: Vec<(Candidate, i64)> = groups
        .into_iter()
        .filter(|(_, g)| g.incident > 0)
        .map(|((service, operation), g)| {
            let stats = services.get(&service);
            let base_rate = stats.map_or(0.0, |s| s.baseline.error_rate);
            let inc_rate = stats.map_or(0.0, |s| s.incident.error_rate);
            let pre_existing = g.baseline > 0 && base_rate > 0.0 && inc_rate <= base_rate * 1.5;
            let share = g.traces.len() as f64 / total;
            let score = if pre_existing { share * 0.1 } else { share };
            let reason = if pre_existing {
                format!(
                    "{service} {operation} already failed before the incident (baseline error rate {:.1}%, incident {:.1}%): pre-existing, not the origin",
                    base_rate * 100.0,
                    inc_rate * 100.0
                )
            } else {
                format!(
                    "{service} {operation} fails on its own (no failing child explains it) in {} of {} error traces, first at {}",
                    g.traces.len(),
                    error_traces.len(),
                    time(g.first_ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )
            };
            (
                Candidate {
                    service,
                    operation,
                    score: round4(score),
                    reason,
                    pre_existing,
                },
                g.first_ns,
            )
        })
        .collect();
    out.sort_by(|(a, at), (b, bt)| {
        a.pre_existing
            .cmp(&b.pre_existing)
            .then(at.cmp(bt))
            .then(b.score.total_cmp(&a.score))
            .then(a.service.cmp(&b.service))
            .then(a.operation.cmp(&b.operation))
    });
    out.into_iter().map(|(c, _)| c).collect()
}

/// The first successful call of `service operation` that started after its last error ended.
fn recovery(forest: &[tree::TraceTree<'_>], service: &str, operation: &str) -> Option<Evidence> {
    let matching = || {
        forest
            .iter()
            .flat_map(|t| t.trace.spans.iter())
            .filter(|s| &**s.service() == service && &*s.operation == operation)
    };
    let last_error = matching()
        .filter(|s| s.is_error())
        .map(|s| s.end_ns)
        .max()?;
    matching()
        .filter(|s| !s.is_error() && s.start_ns > last_error)
        .min_by_key(|s: &&Span| (s.end_ns, s.trace_id, s.span_id))
        .map(|s| Evidence {
            time: time(s.end_ns),
            trace_id: s.trace_id,
            span_id: s.span_id,
        })
}
