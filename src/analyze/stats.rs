//! Per-service figures (requests, errors, latency percentiles; baseline against incident; per
//! minute) and per-operation self time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::tree::TraceTree;
use super::{AnalysisInput, Evidence, LatencyEntry, is_incident_trace, round4, time};
use crate::capture::Purpose;

/// Requests into a service over a period, as sampled, and the estimates they support.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencyStats {
    /// Requests sampled (the basis of every figure below).
    pub requests: usize,
    pub requests_sampled: usize,
    /// Failing requests among them.
    pub errors: usize,
    /// The estimated error rate of all traffic: sampled requests weighted by the share of
    /// normal traces the backend keeps (`kept_normal_share`).
    pub error_rate: f64,
    /// Its 95% interval (Wilson, on the effective sample size of the weights); `None` without
    /// requests.
    pub error_rate_ci: Option<[f64; 2]>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One minute of one service.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MinuteStats {
    pub minute: DateTime<Utc>,
    pub requests: usize,
    pub requests_sampled: usize,
    /// The sampled requests weighted as the error rate weighs them (a normal trace behind
    /// sampling stands for 1 ÷ `kept_normal_share`, or 1 ÷ its `th` probability): the request
    /// rate the captured traces show. The capture takes at most `capture.sample_per_minute`
    /// traces of normal traffic per scope and minute, so it is a floor on the real rate.
    pub requests_weighted: f64,
    pub errors: usize,
    pub error_rate: f64,
    pub error_rate_ci: Option<[f64; 2]>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Fewer sampled requests than this give no rate worth a timeline entry.
pub const MIN_SAMPLED: usize = 10;

/// The 95% Wilson interval of a proportion `p` over an (effective) sample of `n`.
pub fn wilson(p: f64, n: f64) -> [f64; 2] {
    if n <= 0.0 {
        return [0.0, 1.0];
    }
    let z = 1.959_964_f64;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let d = 1.0 + z2 / n;
    [
        round4(((centre - half) / d).max(0.0)),
        round4(((centre + half) / d).min(1.0)),
    ]
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
    /// Its first successful request after its last failing one.
    pub recovery: Option<Evidence>,
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
    baseline: Vec<Call>,
    incident: Vec<Call>,
    minutes: BTreeMap<i64, Vec<Call>>,
}

/// One sampled request: its duration, whether it failed, and how many requests of all traffic
/// it stands for (1, or 1 ÷ `kept_normal_share` for a normal trace behind sampling).
type Call = (i64, bool, f64);

fn summarize(mut v: Vec<Call>) -> LatencyStats {
    let requests = v.len();
    let errors = v.iter().filter(|c| c.1).count();
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let total: f64 = v.iter().map(|c| c.2).sum();
    let squares: f64 = v.iter().map(|c| c.2 * c.2).sum();
    let failing: f64 = v.iter().filter(|c| c.1).map(|c| c.2).sum();
    // Weighted percentiles: the first duration whose cumulative weight reaches p of the total.
    let pct = |p: f64| -> Option<f64> {
        let mut seen = 0.0;
        for c in &v {
            seen += c.2;
            if seen >= p * total - 1e-9 {
                return Some(round4(c.0 as f64 / 1e6));
            }
        }
        v.last().map(|c| round4(c.0 as f64 / 1e6))
    };
    let rate = if total > 0.0 { failing / total } else { 0.0 };
    LatencyStats {
        requests,
        requests_sampled: requests,
        errors,
        error_rate: round4(rate),
        // Kish's effective sample size: unequal weights carry less information.
        error_rate_ci: (requests > 0).then(|| wilson(rate, total * total / squares)),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
    }
}

/// How many requests of all traffic a sampled trace stands for, and whether that came from the
/// trace itself: the inverse of the sampling probability its spans' `th` thresholds say (the
/// smallest, the stage that kept fewest), else 1 for a failing or slow trace (tail sampling
/// keeps them all) and 1 ÷ `kept_normal_share` for the rest.
pub(crate) fn trace_weight(trace: &crate::model::Trace, input: &AnalysisInput) -> (f64, bool) {
    let recorded = trace
        .spans
        .iter()
        .filter_map(|s| s.sampling_probability())
        .min_by(f64::total_cmp);
    if let Some(p) = recorded {
        return (1.0 / p, true);
    }
    let kept_whole = trace.has_error() || trace.max_span_duration_ns() >= input.slow_threshold_ns();
    if kept_whole {
        (1.0, false)
    } else {
        (1.0 / input.kept_normal_share, false)
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
    // Per service: one the sample never reached (its sample searches failed, say) keeps the
    // figures of the traces that were captured.
    let sampled: std::collections::HashSet<&str> = forest
        .iter()
        .filter(|t| t.purposes.has(Purpose::Sample))
        .flat_map(|t| t.trace.spans.iter().map(|s| &**s.service()))
        .collect();
    for t in forest {
        let in_sample = t.purposes.has(Purpose::Sample);
        let captured = is_incident_trace(t.purposes);
        let weight = trace_weight(t.trace, input).0;
        for (i, s) in t.trace.spans.iter().enumerate() {
            let incident_trace = if sampled.contains(&**s.service()) {
                in_sample
            } else {
                captured
            };
            let a = acc.entry(s.service()).or_default();
            a.spans += 1;
            if s.is_error() {
                a.error_spans += 1;
                if s.start_ns >= input.window_start_ns {
                    let candidate = (s.end_ns, s.trace_id, s.span_id);
                    if a.first_error
                        .as_ref()
                        .is_none_or(|f| candidate < (f.0, f.1, f.2))
                    {
                        let message = s.status.message.as_deref().map(str::to_owned);
                        a.first_error = Some((candidate.0, candidate.1, candidate.2, message));
                    }
                }
            }
            if !t.is_entry(i) {
                continue;
            }
            let item = (s.duration_ns(), s.is_error(), weight);
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
                            let weighted = round4(calls.iter().map(|c| c.2).sum());
                            let l = summarize(calls);
                            MinuteStats {
                                minute: time(m * 60_000_000_000),
                                requests: l.requests,
                                requests_sampled: l.requests_sampled,
                                requests_weighted: weighted,
                                errors: l.errors,
                                error_rate: l.error_rate,
                                error_rate_ci: l.error_rate_ci,
                                p50_ms: l.p50_ms,
                                p95_ms: l.p95_ms,
                                p99_ms: l.p99_ms,
                            }
                        })
                        .collect(),
                    recovery: None,
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
        /// Traces counted, and the last one (its place in the forest, plus one): a trace's
        /// spans are seen one after the other.
        inc_traces: (usize, usize),
        base_critical_ns: i128,
        base_traces: (usize, usize),
    }
    fn count_trace((n, last): &mut (usize, usize), t: usize) {
        if *last != t {
            *n += 1;
            *last = t;
        }
    }
    let mut sums: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for (ti, t) in (1..).zip(forest) {
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
                count_trace(&mut e.base_traces, ti);
            } else {
                e.inc_ns += self_ns;
                e.inc_n += 1;
                e.inc_critical_ns += i128::from(critical[i]);
                count_trace(&mut e.inc_traces, ti);
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
                        s.inc_critical_ns as f64 / s.inc_traces.0.max(1) as f64 / 1e6,
                    ),
                    baseline_critical_ms_per_trace: (s.base_traces.0 > 0)
                        .then(|| round4(s.base_critical_ns as f64 / s.base_traces.0 as f64 / 1e6)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wilson_interval_matches_the_textbook_values() {
        assert_eq!(wilson(0.5, 100.0), [0.4038, 0.5962]);
        assert_eq!(wilson(0.0, 10.0), [0.0, 0.2775]);
        assert_eq!(wilson(1.0, 10.0), [0.7225, 1.0]);
    }

    #[test]
    fn sampled_normal_requests_stand_for_the_normal_traffic_the_backend_dropped() {
        // 10 failures (all kept) and 10 normal requests behind 10% sampling (each standing for
        // 10): 10 failing of about 110.
        let mut calls: Vec<Call> = (0..10).map(|i| (1_000_000 * (i + 1), true, 1.0)).collect();
        calls.extend((0..10).map(|i| (500_000 * (i + 1), false, 10.0)));
        let s = summarize(calls);
        assert_eq!((s.requests_sampled, s.errors), (20, 10));
        assert_eq!(s.error_rate, 0.0909);
        let ci = s.error_rate_ci.unwrap();
        assert!(ci[0] < 0.0909 && 0.0909 < ci[1] && ci[1] < 0.5, "{ci:?}");
        // The weighted median is a normal request's duration.
        assert!(s.p50_ms.unwrap() <= 5.0, "{:?}", s.p50_ms);
        // Unweighted, the same sample says half the requests fail.
        let s = summarize((0..20).map(|i| (i, i < 10, 1.0)).collect());
        assert_eq!(s.error_rate, 0.5);
    }
}
