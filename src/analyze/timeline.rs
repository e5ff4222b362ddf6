//! `timeline.json`: the moments a postmortem is built around, each with the span that shows it,
//! in time order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::tree::TraceTree;
use super::{Analysis, AnalysisInput, time};
use crate::model::{SpanId, TraceId};

/// One moment.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub time: DateTime<Utc>,
    /// `first_error`, `error_rate_threshold`, `propagation`, `first_slow`, `recovery`.
    pub kind: &'static str,
    pub service: String,
    pub operation: String,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// What the span shows, in words.
    pub evidence: String,
}

/// The timeline, chronological.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub entries: Vec<TimelineEntry>,
}

fn kind_order(kind: &str) -> u8 {
    match kind {
        "first_error" => 0,
        "propagation" => 1,
        "error_rate_threshold" => 2,
        "first_slow" => 3,
        _ => 4,
    }
}

fn ms(ns: i64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

pub fn build(forest: &[TraceTree<'_>], analysis: &Analysis, input: &AnalysisInput) -> Timeline {
    let mut entries = Vec::new();
    // Traces by id, built once: looked up for every failing service and every propagation edge
    // (a scan of the forest each time made the timeline quadratic in the failing services).
    let mut by_trace: foldhash::HashMap<TraceId, usize> =
        foldhash::HashMap::with_capacity_and_hasher(forest.len(), Default::default());
    for (i, t) in forest.iter().enumerate() {
        by_trace.entry(t.trace.id).or_insert(i);
    }
    let span_of = |trace_id: TraceId, span_id: SpanId| {
        by_trace
            .get(&trace_id)
            .and_then(|&i| forest[i].trace.spans.iter().find(|s| s.span_id == span_id))
    };

    // The first failing request into each service in each minute, found in one pass.
    let mut first_error_by_minute: BTreeMap<(&str, i64), &crate::model::Span> = BTreeMap::new();
    for t in forest {
        for (i, s) in t.trace.spans.iter().enumerate() {
            if s.is_error() && t.is_entry(i) {
                let key = (&**s.service(), s.start_ns.div_euclid(60_000_000_000));
                let e = first_error_by_minute.entry(key).or_insert(s);
                if (s.end_ns, s.trace_id, s.span_id) < (e.end_ns, e.trace_id, e.span_id) {
                    *e = s;
                }
            }
        }
    }
    for (service, stats) in &analysis.services {
        if let Some(e) = &stats.first_error {
            let operation = span_of(e.trace_id, e.span_id)
                .map(|s| s.operation.to_string())
                .unwrap_or_default();
            let message = stats.first_error_message.as_deref().unwrap_or("no message");
            entries.push(TimelineEntry {
                time: e.time,
                kind: "first_error",
                service: service.clone(),
                operation: operation.clone(),
                trace_id: e.trace_id,
                span_id: e.span_id,
                evidence: format!("first error in {service}: {operation} failed ({message})"),
            });
        }
        // The first minute whose error rate is at or above the threshold beyond sampling noise:
        // the lower end of its 95% interval reaches it, on enough sampled requests. The example
        // is the first error of that minute.
        if let Some(m) = stats.per_minute.iter().find(|m| {
            m.errors > 0
                && m.requests_sampled >= super::stats::MIN_SAMPLED
                && m.error_rate_ci
                    .is_some_and(|ci| ci[0] >= input.error_rate_threshold)
        }) {
            let minute = m
                .minute
                .timestamp_nanos_opt()
                .unwrap_or(0)
                .div_euclid(60_000_000_000);
            let example = first_error_by_minute
                .get(&(service.as_str(), minute))
                .copied();
            if let Some(s) = example {
                entries.push(TimelineEntry {
                    // When the first error of that minute was seen, not the minute's start, so
                    // the entry never precedes its own evidence.
                    time: time(s.end_ns),
                    kind: "error_rate_threshold",
                    service: service.clone(),
                    operation: s.operation.to_string(),
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    evidence: format!(
                        "{service} error rate ≈ {:.0}% (95% CI {:.0}–{:.0}%, {} sampled requests, {} failing) in the minute from {}, at or above {:.1}%",
                        m.error_rate * 100.0,
                        m.error_rate_ci.map_or(0.0, |c| c[0] * 100.0),
                        m.error_rate_ci.map_or(100.0, |c| c[1] * 100.0),
                        m.requests_sampled,
                        m.errors,
                        m.minute.format("%H:%M"),
                        input.error_rate_threshold * 100.0
                    ),
                });
            }
        }
    }

    for p in &analysis.propagation {
        let operation = span_of(p.trace_id, p.span_id)
            .map(|s| s.operation.to_string())
            .unwrap_or_default();
        entries.push(TimelineEntry {
            time: p.first_seen,
            kind: "propagation",
            service: p.from.clone(),
            operation,
            trace_id: p.trace_id,
            span_id: p.span_id,
            evidence: format!(
                "failure spread from {} to its caller {} (seen in {} trace(s))",
                p.to, p.from, p.traces
            ),
        });
    }

    let slow_ns = input.slow_threshold_ns();
    let mut first_slow: BTreeMap<&str, &crate::model::Span> = BTreeMap::new();
    for t in forest {
        for s in &t.trace.spans {
            if s.duration_ns() < slow_ns || s.start_ns < input.began_ns.min(input.window_start_ns) {
                continue;
            }
            let e = first_slow.entry(s.service()).or_insert(s);
            if (s.end_ns, s.trace_id, s.span_id) < (e.end_ns, e.trace_id, e.span_id) {
                *e = s;
            }
        }
    }
    for (service, s) in first_slow {
        entries.push(TimelineEntry {
            time: time(s.end_ns),
            kind: "first_slow",
            service: service.to_owned(),
            operation: s.operation.to_string(),
            trace_id: s.trace_id,
            span_id: s.span_id,
            evidence: format!(
                "first slow call in {service}: {} took {} (threshold {})",
                s.operation,
                ms(s.duration_ns()),
                ms(slow_ns)
            ),
        });
    }

    if let (Some(r), Some(o)) = (&analysis.recovery, &analysis.origin) {
        entries.push(TimelineEntry {
            time: r.time,
            kind: "recovery",
            service: o.service.clone(),
            operation: o.operation.clone(),
            trace_id: r.trace_id,
            span_id: r.span_id,
            evidence: format!(
                "{} {} succeeded again after its last error",
                o.service, o.operation
            ),
        });
    }

    entries.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then(kind_order(a.kind).cmp(&kind_order(b.kind)))
            .then(a.service.cmp(&b.service))
            .then(a.trace_id.cmp(&b.trace_id))
    });
    Timeline { entries }
}
