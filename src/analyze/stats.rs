//! Per-service figures (requests, errors, latency percentiles; baseline against incident; per
//! minute) and per-operation self time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::tree::TraceTree;
use super::{AnalysisInput, Evidence, LatencyEntry, is_incident_trace, round4, time};
use crate::capture::Purpose;

/// Requests into a service over a period.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencyStats {
    pub requests: usize,
    pub errors: usize,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One minute of one service.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MinuteStats {
    pub minute: DateTime<Utc>,
    pub requests: usize,
    pub errors: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What one service did, baseline against incident.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStats {
    pub spans: usize,
    pub error_spans: usize,
    pub first_error: Option<Evidence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error_message: Option<String>,
    pub baseline: LatencyStats,
    pub incident: LatencyStats,
    pub per_minute: Vec<MinuteStats>,
}

#[derive(Default)]
struct Acc {
    spans: usize,
    error_spans: usize,
    first_error: Option<(
        i64,
        crate::model::TraceId,
        crate::model::SpanId,
        Option<String>,
    )>,
    baseline: Vec<(i64, bool)>,
    incident: Vec<(i64, bool)>,
    minutes: BTreeMap<i64, Vec<(i64, bool)>>,
}

fn summarize(mut v: Vec<(i64, bool)>) -> LatencyStats {
    let requests = v.len();
    let errors = v.iter().filter(|(_, e)| *e).count();
    v.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(round4(v[rank].0 as f64 / 1e6))
    };
    LatencyStats {
        requests,
        errors,
        error_rate: if requests == 0 {
            0.0
        } else {
            round4(errors as f64 / requests as f64)
        },
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
    }
}

/// Figures per service. Requests are entry spans (no parent, or a parent in another service);
/// spans that start before the incident began are the baseline.
pub fn service_stats(
    forest: &[TraceTree<'_>],
    input: &AnalysisInput,
) -> BTreeMap<String, ServiceStats> {
    let mut acc: BTreeMap<&str, Acc> = BTreeMap::new();
    // The incident's rates and percentiles rest on the sample of all traffic when there is one:
    // every error and slow trace is captured, so counting them beside a bounded sample of the
    // rest would give rates among failures.
    let sampled = forest.iter().any(|t| t.purposes.has(Purpose::Sample));
    for t in forest {
        let incident_trace = if sampled {
            t.purposes.has(Purpose::Sample)
        } else {
            is_incident_trace(t.purposes)
        };
        for (i, s) in t.trace.spans.iter().enumerate() {
            let a = acc.entry(s.service()).or_default();
            a.spans += 1;
            if s.is_error() {
                a.error_spans += 1;
                if s.start_ns >= input.window_start_ns {
                    let candidate = (
                        s.end_ns,
                        s.trace_id,
                        s.span_id,
                        s.status.message.as_deref().map(str::to_owned),
                    );
                    if a.first_error
                        .as_ref()
                        .is_none_or(|f| (candidate.0, candidate.1, candidate.2) < (f.0, f.1, f.2))
                    {
                        a.first_error = Some(candidate);
                    }
                }
            }
            if !t.is_entry(i) {
                continue;
            }
            let item = (s.duration_ns(), s.is_error());
            if s.start_ns < input.began_ns {
                if t.purposes.has(Purpose::Baseline) || incident_trace {
                    a.baseline.push(item);
                }
            } else if incident_trace {
                a.incident.push(item);
            }
            if incident_trace || t.purposes.has(Purpose::Baseline) {
                let minute = s.start_ns.div_euclid(60_000_000_000);
                a.minutes.entry(minute).or_default().push(item);
            }
        }
    }
    acc.into_iter()
        .map(|(service, a)| {
            let (first_error, first_error_message) = match a.first_error {
                Some((ns, trace_id, span_id, msg)) => (
                    Some(Evidence {
                        time: time(ns),
                        trace_id,
                        span_id,
                    }),
                    msg,
                ),
                None => (None, None),
            };
            (
                service.to_owned(),
                ServiceStats {
                    spans: a.spans,
                    error_spans: a.error_spans,
                    first_error,
                    first_error_message,
                    baseline: summarize(a.baseline),
                    incident: summarize(a.incident),
                    per_minute: a
                        .minutes
                        .into_iter()
                        .map(|(m, calls)| {
                            let l = summarize(calls);
                            MinuteStats {
                                minute: time(m * 60_000_000_000),
                                requests: l.requests,
                                errors: l.errors,
                                p50_ms: l.p50_ms,
                                p95_ms: l.p95_ms,
                                p99_ms: l.p99_ms,
                            }
                        })
                        .collect(),
                },
            )
        })
        .collect()
}

/// Mean self time per service and operation: in failing or slow traces of the incident against
/// the baseline, largest total incident self time first.
pub fn latency(forest: &[TraceTree<'_>], input: &AnalysisInput) -> Vec<LatencyEntry> {
    #[derive(Default)]
    struct Sums {
        inc_ns: i128,
        inc_n: usize,
        base_ns: i128,
        base_n: usize,
        inc_critical_ns: i128,
        inc_traces: std::collections::BTreeSet<crate::model::TraceId>,
        base_critical_ns: i128,
        base_traces: std::collections::BTreeSet<crate::model::TraceId>,
    }
    let mut sums: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for t in forest {
        let interesting = t.purposes.has(Purpose::Errors) || t.purposes.has(Purpose::Slow);
        let critical = t.critical_times();
        for (i, s) in t.trace.spans.iter().enumerate() {
            let baseline = s.start_ns < input.began_ns;
            if !baseline && !interesting {
                continue;
            }
            let e = sums.entry((s.service(), &s.operation)).or_default();
            let self_ns = t.self_time_ns(i) as i128;
            if baseline {
                e.base_ns += self_ns;
                e.base_n += 1;
                e.base_critical_ns += i128::from(critical[i]);
                e.base_traces.insert(t.trace.id);
            } else {
                e.inc_ns += self_ns;
                e.inc_n += 1;
                e.inc_critical_ns += i128::from(critical[i]);
                e.inc_traces.insert(t.trace.id);
            }
        }
    }
    let mut out: Vec<(i128, LatencyEntry)> = sums
        .into_iter()
        .filter(|(_, s)| s.inc_n > 0)
        .map(|((service, operation), s)| {
            (
                s.inc_critical_ns,
                LatencyEntry {
                    incident_critical_ms_per_trace: round4(
                        s.inc_critical_ns as f64 / s.inc_traces.len().max(1) as f64 / 1e6,
                    ),
                    baseline_critical_ms_per_trace: (!s.base_traces.is_empty()).then(|| {
                        round4(s.base_critical_ns as f64 / s.base_traces.len() as f64 / 1e6)
                    }),
                    service: service.to_owned(),
                    operation: operation.to_owned(),
                    incident_self_ms: round4(s.inc_ns as f64 / s.inc_n as f64 / 1e6),
                    baseline_self_ms: (s.base_n > 0)
                        .then(|| round4(s.base_ns as f64 / s.base_n as f64 / 1e6)),
                    incident_spans: s.inc_n,
                    baseline_spans: s.base_n,
                },
            )
        })
        .collect();
    out.sort_by(|(a, ea), (b, eb)| {
        b.cmp(a)
            .then(ea.service.cmp(&eb.service))
            .then(ea.operation.cmp(&eb.operation))
    });
    out.into_iter().map(|(_, e)| e).take(50).collect()
}
