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
    let ranked = rank::rank(&forest, &sources, input);
    let total: f64 = ranked.iter().map(|(c, _)| c.score).sum();
    let origin = ranked
        .first()
        .filter(|(c, _)| !c.pre_existing)
        .and_then(|(c, example)| {
            let (trace_id, span_id) = (*example)?;
            Some(Origin {
                service: c.service.clone(),
                operation: c.operation.clone(),
                trace_id,
                span_id,
                // The origin's share of all the evidence against any candidate.
                confidence: round4(if total > 0.0 { c.score / total } else { 0.0 }),
                reason: c.reason.clone(),
            })
        });
    let ranking: Vec<Candidate> = ranked.into_iter().map(|(c, _)| c).collect();
    let propagation = tree::propagation(&forest);
    let latency = stats::latency(&forest, input);
    let recovery = origin
        .as_ref()
        .and_then(|o| recovery(&forest, &o.service, &o.operation));
    let suspects = origin
        .as_ref()
        .map(|o| suspects::suspects(&forest, o, input))
        .unwrap_or_default();
    let analysis = Analysis {
        services,
        origin,
        ranking,
        propagation,
        suspects,
        latency,
        recovery,
    };
    let timeline = timeline::build(&forest, &analysis, input);
    (analysis, timeline)
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
