//! Capture: pulls the error traces, slow traces and a baseline sample of an incident out of its
//! trace sources, records every query and every gap, and merges what the sources found.
//!
//! Each source (`jaeger`, `file`) is a module behind [`TraceSource`]; `search` holds the
//! completeness machinery (splitting full answers) that the backends share, `http` the request
//! discipline (timeouts, retries, bounded concurrency, recording).

pub mod file;
pub mod http;
pub mod jaeger;
pub mod light;
pub mod search;
pub mod spill;
pub mod spill_record;
pub mod sweep;
pub mod tempo;
pub mod zipkin;

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::model::{Incident, TimeWindow, Trace, TraceId};

/// What a capture is asked to fetch.
#[derive(Clone, Debug)]
pub struct CapturePlan {
    pub incident: Incident,
    /// The incident window: error and slow traces are captured from it.
    pub window: TimeWindow,
    /// The normal period before the incident began: the baseline sample comes from it.
    pub baseline: Option<TimeWindow>,
    /// Services in scope; empty means every service the backend knows.
    pub services: Vec<String>,
    pub slow_threshold: Duration,
    pub baseline_traces: usize,
    /// Traces of all traffic asked per scope and minute of the window (0: no sample).
    pub sample_per_minute: usize,
    /// The share of normal traces the backends keep (the smallest configured): rates and
    /// percentiles weight each sampled normal request by its inverse.
    pub kept_normal_share: f64,
    /// What is already known to be missing before any query (a window cut to
    /// `capture.max_window`, services over `capture.max_services`).
    pub gaps: Vec<Gap>,
    /// Services searched per backend at most (`capture.max_services`).
    pub max_services: usize,
    /// Traces kept at most (`capture.max_traces`).
    pub max_traces: usize,
    /// Bytes of answers read per backend at most (`capture.max_bytes`).
    pub max_bytes: u64,
    /// Where backends write the traces they find as each answer comes (whole, redacted),
    /// going on with light copies ([`spill::Spill::store`]); `None`: they are kept whole in
    /// memory.
    pub store: Option<std::sync::Arc<spill::Spill>>,
}

/// The gap kind of a limit of ours that was reached (`capture.max_*`): not worth retrying.
pub const LIMIT_REACHED: &str = "limit_reached";

/// The gap kind of a query that failed with `message`: [`LIMIT_REACHED`] when it was not sent
/// because `capture.max_bytes` was reached (not worth retrying), else `otherwise`.
pub fn failure_kind(message: &str, otherwise: &'static str) -> &'static str {
    if message.contains(http::BUDGET_REACHED) {
        LIMIT_REACHED
    } else {
        otherwise
    }
}

/// Gap kinds that another attempt may fill: the backend did not answer, or failed a query.
pub fn is_retryable(kind: &str) -> bool {
    matches!(kind, "backend_unavailable" | "query_failed")
}

impl CapturePlan {
    /// `slow_threshold` in ns, as span durations are.
    pub fn slow_threshold_ns(&self) -> i64 {
        self.slow_threshold.as_nanos().min(i64::MAX as u128) as i64
    }

    /// At most `max_services` of `services` (the first ones), with a gap naming how many were
    /// left out.
    pub fn bounded_services(
        &self,
        source: &str,
        services: Vec<String>,
    ) -> (Vec<String>, Option<Gap>) {
        if services.len() <= self.max_services {
            return (services, None);
        }
        let left_out = services.len() - self.max_services;
        let kept: Vec<String> = services.into_iter().take(self.max_services).collect();
        let gap = Gap {
            source: source.to_owned(),
            kind: LIMIT_REACHED.into(),
            service: None,
            purpose: None,
            start: Some(self.window.start()),
            end: Some(self.window.end()),
            message: format!(
                "{left_out} more service(s) were not searched: capture.max_services is {} (the first {} in order were)",
                self.max_services, self.max_services
            ),
        };
        (kept, Some(gap))
    }
}

/// Why a trace was captured. A trace may be found for several reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Errors,
    Slow,
    Baseline,
    /// All traffic during the window, whatever its outcome: from a backend, up to
    /// `capture.sample_per_minute` traces per scope and minute from unfiltered searches; from a
    /// file, every trace of the window that is neither erroring nor slow.
    Sample,
    /// Traffic right after a scope's last error, asked in 5-second slices until a success shows,
    /// so that recovery is known to within 5 s and not only to the minute. Stored with the
    /// sample, but not counted in its rates (it is not a sample of the minute it falls in).
    Recovery,
}

impl Purpose {
    /// The name recorded with a query.
    pub fn name(self) -> &'static str {
        match self {
            Self::Errors => "errors",
            Self::Slow => "slow",
            Self::Baseline => "baseline",
            Self::Sample => "sample",
            Self::Recovery => "recovery",
        }
    }

    /// Whether a trace a backend returned for this purpose is one (backends' filters are
    /// checked again on our side: an older server may ignore them).
    pub fn matches(self, t: &Trace, plan: &CapturePlan) -> bool {
        match self {
            Self::Errors => t.has_error(),
            Self::Slow => t.max_span_duration_ns() >= plan.slow_threshold_ns(),
            _ => true,
        }
    }
}

/// A set of [`Purpose`]s, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purposes(u8);

impl Purposes {
    pub fn with(mut self, p: Purpose) -> Self {
        self.0 |= 1 << p as u8;
        self
    }
    pub fn has(self, p: Purpose) -> bool {
        self.0 & (1 << p as u8) != 0
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One request made to a backend, as recorded in the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct QueryRecord {
    /// The URL without credentials, query string included.
    pub url: String,
    pub params: BTreeMap<String, String>,
    pub purpose: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why it was issued: `initial`, `split` (its parent range came back full) or `verify`
    /// (checking whether the server caps answers below our limit).
    pub reason: String,
    /// HTTP status, or `null` when no answer came.
    pub status: Option<u16>,
    /// Traces in the answer.
    pub count: Option<usize>,
    pub attempts: usize,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Something that could not be captured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Gap {
    pub source: String,
    /// `backend_unavailable`, `query_failed`, `truncated`, `expired`, `unreadable_spans`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    pub message: String,
}

/// What reading a source's answers could not use or had to change, gathered over all its
/// queries: spans skipped (unreadable, wrongly dated), values changed (ids that were not hex, spans
/// read twice), and errors the server reported beside its data. Turned into gaps and notes, as
/// the file source does, so no backend answer loses spans without the bundle saying so.
#[derive(Default)]
pub struct ReadTally {
    inner: std::sync::Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    skipped: BTreeMap<String, usize>,
    notes: BTreeMap<String, usize>,
    server_errors: BTreeMap<String, usize>,
}

impl ReadTally {
    /// Adds what one answer's reading skipped and changed.
    pub fn absorb(&self, skipped: &BTreeMap<String, usize>, notes: &BTreeMap<String, usize>) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (k, n) in skipped {
            *t.skipped.entry(k.clone()).or_default() += n;
        }
        for (k, n) in notes {
            *t.notes.entry(k.clone()).or_default() += n;
        }
    }

    /// Records an error the server reported beside the data of an answer.
    pub fn server_error(&self, message: String) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *t.server_errors.entry(message).or_default() += 1;
    }

    /// The gaps (`unreadable_spans`, `server_error`) for `source`, and the notes added to
    /// `notes`. Counts are summed over answers: a range asked twice (a split, a verification)
    /// counts its skipped spans twice.
    pub fn take(&self, source: &str, notes: &mut BTreeMap<String, usize>) -> Vec<Gap> {
        let t = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()));
        for (k, n) in t.notes {
            *notes.entry(k).or_default() += n;
        }
        let gap = |kind: &str, message: String| Gap {
            source: source.to_owned(),
            kind: kind.into(),
            service: None,
            purpose: None,
            start: None,
            end: None,
            message,
        };
        let mut gaps: Vec<Gap> = t
            .skipped
            .into_iter()
            .map(|(reason, n)| {
                gap(
                    "unreadable_spans",
                    format!("{n} × {reason} (summed over the answers that held them)"),
                )
            })
            .collect();
        gaps.extend(t.server_errors.into_iter().map(|(e, n)| {
            gap(
                "server_error",
                format!("{n} answer(s) reported an error beside their traces (some traces or spans may be missing): {e}"),
            )
        }));
        gaps
    }
}

/// A source as recorded in the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct SourceRecord {
    pub name: String,
    /// `jaeger`, `file`, …
    pub kind: String,
    /// URL without credentials, or file path.
    pub url: String,
    /// What the source turned out to be: `jaeger-v3`, `jaeger-v1`, a file format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    pub queries: Vec<QueryRecord>,
    /// Where a person can open a trace: `{trace_id}` is replaced by the id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
    /// Values changed on the way in (for example ids that were not hex), counted.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, usize>,
}

/// What one source returned.
pub struct SourceCapture {
    pub record: SourceRecord,
    pub traces: Vec<(Trace, Purposes)>,
    pub gaps: Vec<Gap>,
}

/// A place traces come from.
pub trait TraceSource: Send + Sync {
    /// Captures what the plan asks for. Failures become gaps; this never fails as a whole.
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture>;

    /// Where the source wrote its traces out as it read them (a large file), leaving only light
    /// spans in what it returns.
    fn spill(&self) -> Option<std::sync::Arc<spill::Spill>> {
        None
    }

    /// Traces found that the source itself left out for `capture.max_traces` (a large file,
    /// sorted out before its traces were made whole); `run` records them with its own.
    fn traces_not_kept(&self) -> usize {
        0
    }
}

/// How much a trace matters when not all can be kept: errors, then slow, then baseline, then
/// the rest.
fn importance(p: &Purposes) -> usize {
    [
        Purpose::Errors,
        Purpose::Slow,
        Purpose::Baseline,
        Purpose::Sample,
        Purpose::Recovery,
    ]
    .iter()
    .position(|x| p.has(*x))
    .unwrap_or(5)
}

/// Keeps at most `max` of `traces`, the most important first (in their order otherwise);
/// returns how many were left out.
pub fn keep_most_important<T>(traces: &mut Vec<(T, Purposes)>, max: usize) -> usize {
    if traces.len() <= max {
        return 0;
    }
    traces.sort_by_key(|(_, p)| importance(p));
    let dropped = traces.len() - max;
    traces.truncate(max);
    dropped
}

/// All sources' results merged: traces deduplicated by id, each with its purposes.
pub struct Capture {
    pub traces: Vec<(Trace, Purposes)>,
    pub sources: Vec<SourceRecord>,
    pub gaps: Vec<Gap>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// What redaction did to the traces (see `redact`); not run until the caller runs it.
    pub redaction: crate::redact::RedactionReport,
    /// The full, redacted traces, where a source streamed them out (`traces` then holds light
    /// spans: the bundle copies the trace files' lines from here).
    pub spill: Option<std::sync::Arc<spill::Spill>>,
}

/// Runs every source concurrently and merges their answers.
pub async fn run(sources: &[Box<dyn TraceSource>], plan: &CapturePlan) -> Capture {
    let started = Utc::now();
    let results = futures::future::join_all(sources.iter().map(|s| s.capture(plan))).await;
    let mut index: HashMap<TraceId, usize> = HashMap::default();
    let mut traces: Vec<(Trace, Purposes)> = Vec::new();
    let mut records = Vec::new();
    let mut gaps = Vec::new();
    for r in results {
        records.push(r.record);
        gaps.extend(r.gaps);
        index.reserve(r.traces.len());
        traces.reserve(r.traces.len());
        for (trace, purposes) in r.traces {
            match index.get(&trace.id) {
                Some(&i) => {
                    let entry = &mut traces[i];
                    entry.0.merge(trace);
                    entry.1 = entry.1.union(purposes);
                }
                None => {
                    index.insert(trace.id, traces.len());
                    traces.push((trace, purposes));
                }
            }
        }
    }
    gaps.extend(plan.gaps.iter().cloned());
    let dropped = keep_most_important(&mut traces, plan.max_traces)
        + sources.iter().map(|s| s.traces_not_kept()).sum::<usize>();
    if let Some(store) = &plan.store {
        store.settle(traces.iter().map(|(t, _)| t.id));
    }
    if dropped > 0 {
        gaps.push(Gap {
            source: "capture".into(),
            kind: LIMIT_REACHED.into(),
            service: None,
            purpose: None,
            start: Some(plan.window.start()),
            end: Some(plan.window.end()),
            message: format!(
                "{dropped} trace(s) found were not kept: capture.max_traces is {} (errors kept first, then slow, then baseline, then the sample)",
                plan.max_traces
            ),
        });
    }
    Capture {
        traces,
        sources: records,
        gaps,
        started,
        finished: Utc::now(),
        redaction: Default::default(),
        spill: sources
            .iter()
            .find_map(|s| s.spill())
            .or_else(|| plan.store.clone()),
    }
}

/// Query parameters whose values a recorded URL keeps: the searches this tool sends itself
/// (Jaeger v1 and v3, Tempo, Zipkin). Any other value (a signature, a credential a user put in
/// a URL) is replaced.
const QUERY_KEYS_KEPT: &[&str] = &[
    "service",
    "operation",
    "start",
    "end",
    "limit",
    "lookback",
    "tags",
    "minDuration",
    "maxDuration",
    "query.service_name",
    "query.operation_name",
    "query.start_time_min",
    "query.start_time_max",
    "query.num_traces",
    "query.attributes",
    "query.duration_min",
    "query.duration_max",
    "q",
    "spss",
    "serviceName",
    "spanName",
    "annotationQuery",
    "endTs",
];

/// A URL as logs, the manifest and reports show it: no user name or password, no fragment, and
/// no query value but those of the searches this tool sends (`QUERY_KEYS_KEPT`).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_fragment(None);
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let keep = QUERY_KEYS_KEPT.contains(&k.as_ref());
                    (
                        k.into_owned(),
                        if keep {
                            v.into_owned()
                        } else {
                            "REDACTED".into()
                        },
                    )
                })
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_recorded_url() {
        let u = redact_url("http://admin:hunter2@jaeger:16686/api/traces?service=a&token=abc");
        assert!(
            !u.contains("hunter2") && !u.contains("admin") && !u.contains("abc"),
            "{u}"
        );
        assert!(u.contains("service=a"), "{u}");
    }

    #[test]
    fn a_recorded_url_keeps_no_query_value_or_fragment_it_did_not_send_itself() {
        let u = redact_url(
            "https://tempo.example/api/search?sig=s3cr3t&X-Amz-Credential=AKIAX%2F2026&jwt=eyJhbGciOi&pwd=hunter2&limit=20#access_token=abc",
        );
        for secret in [
            "s3cr3t",
            "AKIAX",
            "eyJhbGciOi",
            "hunter2",
            "access_token",
            "abc",
        ] {
            assert!(!u.contains(secret), "{secret} in {u}");
        }
        assert!(u.contains("limit=20") && u.contains("sig=REDACTED"), "{u}");
    }
}
