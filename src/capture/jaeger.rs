//! Jaeger over HTTP. The v3 API (`/api/v3/services`, `/api/v3/traces`) first; the v1 API
//! (`/api/services`, `/api/traces`) when v3 answers 404; decided once per backend per capture.
//! Error traces are asked for with `tags={"error":"true"}` (v1) or `query.attributes` (v3, honoured
//! from Jaeger 2.19) and always filtered again on our side, so an older server that ignores the
//! filter costs queries, not correctness.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::http::{HttpBackend, HttpError, RequestLabel};
use super::search::{self, CapKnowledge, Page, RangeQuery, Reason};
use super::{CapturePlan, Gap, Purpose, Purposes, SourceCapture, SourceRecord, TraceSource};
use crate::config::BackendSettings;
use crate::formats::TraceCollector;
use crate::model::Trace;

/// Which Jaeger query API the server has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    V3,
    V1,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Self::V3 => "jaeger-v3",
            Self::V1 => "jaeger-v1",
        }
    }
}

/// A Jaeger query service.
pub struct JaegerSource {
    name: String,
    http: HttpBackend,
    settings: BackendSettings,
}

#[derive(Deserialize)]
struct V3Services {
    #[serde(default)]
    services: Vec<String>,
}

#[derive(Deserialize)]
struct V1Services {
    #[serde(default)]
    data: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct V1Errors {
    #[serde(default)]
    errors: Option<Vec<V1Error>>,
}

#[derive(Deserialize)]
struct V1Error {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
}

impl JaegerSource {
    pub fn new(name: &str, settings: &BackendSettings) -> Result<Self, HttpError> {
        Ok(Self {
            name: name.to_owned(),
            http: HttpBackend::new(settings)?,
            settings: settings.clone(),
        })
    }

    /// Shortens retry delays (tests).
    pub fn with_fast_retries(mut self) -> Self {
        self.http = self
            .http
            .with_first_retry_delay(std::time::Duration::from_millis(10));
        self
    }

    fn label<'a>(purpose: &'a str, service: Option<&'a str>, reason: &'a str) -> RequestLabel<'a> {
        RequestLabel {
            purpose,
            service,
            reason,
        }
    }

    /// Finds the API and the services the server knows.
    async fn discover(&self) -> Result<(Api, Vec<String>), String> {
        let v3 = self
            .http
            .get(
                "api/v3/services",
                &[],
                Self::label("services", None, "initial"),
            )
            .await
            .map_err(|e| e.to_string())?;
        match v3.status {
            200 => {
                let parsed = serde_json::from_slice::<V3Services>(&v3.body);
                let services = parsed
                    .as_ref()
                    .map(|s| s.services.clone())
                    .unwrap_or_default();
                let err = parsed
                    .as_ref()
                    .err()
                    .map(|e| format!("unreadable answer: {e}"));
                let count = services.len();
                self.http.finish(v3, Some(count), err.clone());
                match err {
                    Some(e) => Err(e),
                    None => Ok((Api::V3, services)),
                }
            }
            404 => {
                self.http
                    .finish(v3, None, Some("no v3 API; using v1".into()));
                let v1 = self
                    .http
                    .get(
                        "api/services",
                        &[],
                        Self::label("services", None, "initial"),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if v1.status != 200 {
                    let msg = format!("HTTP {}: {}", v1.status, body_text(&v1.body));
                    self.http.finish(v1, None, Some(msg.clone()));
                    return Err(msg);
                }
                let parsed = serde_json::from_slice::<V1Services>(&v1.body);
                match parsed {
                    Ok(s) => {
                        let services = s.data.unwrap_or_default();
                        self.http.finish(v1, Some(services.len()), None);
                        Ok((Api::V1, services))
                    }
                    Err(e) => {
                        let msg = format!("unreadable answer: {e}");
                        self.http.finish(v1, None, Some(msg.clone()));
                        Err(msg)
                    }
                }
            }
            status => {
                let msg = format!("HTTP {status}: {}", body_text(&v3.body));
                self.http.finish(v3, None, Some(msg.clone()));
                Err(msg)
            }
        }
    }

    async fn run(&self, plan: &CapturePlan) -> SourceCapture {
        let mut gaps = Vec::new();
        let mut found: Vec<(Trace, Purposes)> = Vec::new();
        let mut api_name = None;
        let mut notes = std::collections::BTreeMap::new();
        match self.discover().await {
            Err(message) => gaps.push(Gap {
                source: self.name.clone(),
                kind: "backend_unavailable".into(),
                service: None,
                purpose: None,
                start: Some(plan.window.start()),
                end: Some(plan.window.end()),
                message: format!(
                    "Jaeger at {} could not be queried: {message}",
                    self.http.display_url()
                ),
            }),
            Ok((api, known)) => {
                api_name = Some(api.name().to_owned());
                let known: BTreeSet<String> = known.into_iter().collect();
                let services: Vec<String> = if plan.services.is_empty() {
                    known.iter().cloned().collect()
                } else {
                    plan.services.clone()
                };
                let unknown: Vec<&str> = services
                    .iter()
                    .filter(|s| !known.contains(*s))
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    // Asked for anyway (the service list may lag), but said.
                    notes.insert(
                        format!("services the backend does not list: {}", unknown.join(", ")),
                        unknown.len(),
                    );
                }
                if services.is_empty() {
                    gaps.push(Gap {
                        source: self.name.clone(),
                        kind: "no_services".into(),
                        service: None,
                        purpose: None,
                        start: Some(plan.window.start()),
                        end: Some(plan.window.end()),
                        message: "the backend lists no services, and the incident names none: nothing could be asked for".into(),
                    });
                }
                if let Some(gap) = self.expired(plan) {
                    gaps.push(gap);
                }
                let caps = CapKnowledge::default();
                // The baseline budget is shared by the services in scope.
                let quota = plan.baseline_traces.div_ceil(services.len().max(1)).max(1);
                let per_service = futures::future::join_all(
                    services
                        .iter()
                        .map(|svc| self.capture_service(api, svc, plan, &caps, quota)),
                )
                .await;
                for (traces, service_gaps) in per_service {
                    found.extend(traces);
                    gaps.extend(service_gaps);
                }
            }
        }
        SourceCapture {
            record: SourceRecord {
                name: self.name.clone(),
                kind: "jaeger".into(),
                url: self.http.display_url(),
                api: api_name,
                queries: self.http.take_records(),
                trace_url: Some(format!(
                    "{}/trace/{{trace_id}}",
                    self.http.display_url().trim_end_matches('/')
                )),
                notes,
            },
            traces: found,
            gaps,
        }
    }

    /// The part of the window older than the backend's retention, as a gap.
    fn expired(&self, plan: &CapturePlan) -> Option<Gap> {
        let retention = chrono::Duration::from_std(self.settings.retention).ok()?;
        let oldest = Utc::now() - retention;
        (plan.window.start() < oldest).then(|| Gap {
            source: self.name.clone(),
            kind: "expired".into(),
            service: None,
            purpose: None,
            start: Some(plan.window.start()),
            end: Some(oldest.min(plan.window.end())),
            message: format!(
                "this part of the window is older than the backend's retention ({}); its traces may already be deleted",
                humantime::format_duration(self.settings.retention)
            ),
        })
    }

    async fn capture_service(
        &self,
        api: Api,
        service: &str,
        plan: &CapturePlan,
        caps: &CapKnowledge,
        baseline_quota: usize,
    ) -> (Vec<(Trace, Purposes)>, Vec<Gap>) {
        let mut out = Vec::new();
        let mut gaps = Vec::new();
        let min_slice = self.settings.min_slice.as_nanos().min(i64::MAX as u128) as i64;
        for purpose in [Purpose::Errors, Purpose::Slow] {
            let q = Search {
                source: self,
                api,
                service,
                purpose,
                plan,
                limit: self.settings.query_limit,
            };
            let result = search::exhaustive(
                &q,
                plan.window.start_ns(),
                plan.window.end_ns(),
                self.settings.query_limit,
                min_slice,
                caps,
            )
            .await;
            out.extend(
                result
                    .traces
                    .into_iter()
                    .map(|t| (t, Purposes::default().with(purpose))),
            );
            gaps.extend(result.shortfalls.into_iter().map(|s| {
                Gap {
                    source: self.name.clone(),
                    kind: if s.message.contains("maximum") {
                        "truncated"
                    } else {
                        "query_failed"
                    }
                    .into(),
                    service: Some(service.to_owned()),
                    purpose: Some(purpose),
                    start: Some(DateTime::from_timestamp_nanos(s.start_ns)),
                    end: Some(DateTime::from_timestamp_nanos(s.end_ns)),
                    message: s.message,
                }
            }));
        }
        if let Some(baseline) = plan.baseline {
            let (traces, baseline_gaps) = self
                .sample_baseline(api, service, plan, baseline, baseline_quota)
                .await;
            out.extend(traces);
            gaps.extend(baseline_gaps);
        }
        (out, gaps)
    }

    /// A bounded sample of the baseline period, spread over it in slices.
    async fn sample_baseline(
        &self,
        api: Api,
        service: &str,
        plan: &CapturePlan,
        baseline: crate::model::TimeWindow,
        quota: usize,
    ) -> (Vec<(Trace, Purposes)>, Vec<Gap>) {
        let slices = quota.min(6) as i64;
        let per_slice = quota.div_ceil(slices as usize);
        let (start, end) = (baseline.start_ns(), baseline.end_ns());
        let step = (end - start) / slices;
        let q = Search {
            source: self,
            api,
            service,
            purpose: Purpose::Baseline,
            plan,
            limit: per_slice,
        };
        let pages = futures::future::join_all((0..slices).map(|i| {
            let s = start + i * step;
            let e = if i == slices - 1 { end } else { s + step };
            let q = &q;
            async move { (s, e, q.query(s, e, Reason::Initial).await) }
        }))
        .await;
        let mut out = Vec::new();
        let mut gaps = Vec::new();
        for (s, e, page) in pages {
            match page {
                Ok(p) => out.extend(
                    p.traces
                        .into_iter()
                        .map(|t| (t, Purposes::default().with(Purpose::Baseline))),
                ),
                Err(message) => gaps.push(Gap {
                    source: self.name.clone(),
                    kind: "query_failed".into(),
                    service: Some(service.to_owned()),
                    purpose: Some(Purpose::Baseline),
                    start: Some(DateTime::from_timestamp_nanos(s)),
                    end: Some(DateTime::from_timestamp_nanos(e)),
                    message,
                }),
            }
        }
        (out, gaps)
    }
}

impl TraceSource for JaegerSource {
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture> {
        Box::pin(self.run(plan))
    }
}

/// One search (service × purpose) that can be asked for any sub-range.
struct Search<'a> {
    source: &'a JaegerSource,
    api: Api,
    service: &'a str,
    purpose: Purpose,
    plan: &'a CapturePlan,
    limit: usize,
}

fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_owned()
}

impl Search<'_> {
    fn params(&self, start_ns: i64, end_ns: i64) -> (&'static str, Vec<(&'static str, String)>) {
        let min_duration = crate::duration::format_go(self.plan.slow_threshold);
        match self.api {
            Api::V1 => {
                let mut p = vec![
                    ("service", self.service.to_owned()),
                    ("start", (start_ns / 1000).to_string()),
                    ("end", (end_ns / 1000).to_string()),
                    ("limit", self.limit.to_string()),
                ];
                match self.purpose {
                    Purpose::Errors => p.push(("tags", r#"{"error":"true"}"#.to_owned())),
                    Purpose::Slow => p.push(("minDuration", min_duration)),
                    _ => {}
                }
                ("api/traces", p)
            }
            Api::V3 => {
                let mut p = vec![
                    ("query.service_name", self.service.to_owned()),
                    ("query.start_time_min", rfc3339(start_ns)),
                    ("query.start_time_max", rfc3339(end_ns)),
                    ("query.num_traces", self.limit.to_string()),
                ];
                match self.purpose {
                    Purpose::Errors => {
                        p.push(("query.attributes", r#"{"error":"true"}"#.to_owned()))
                    }
                    Purpose::Slow => p.push(("query.duration_min", min_duration)),
                    _ => {}
                }
                ("api/v3/traces", p)
            }
        }
    }

    fn keep(&self, t: &Trace) -> bool {
        match self.purpose {
            Purpose::Errors => t.has_error(),
            Purpose::Slow => {
                t.max_span_duration_ns()
                    >= self.plan.slow_threshold.as_nanos().min(i64::MAX as u128) as i64
            }
            _ => true,
        }
    }

    async fn run(&self, start_ns: i64, end_ns: i64, reason: Reason) -> Result<Page, String> {
        let (path, params) = self.params(start_ns, end_ns);
        let purpose = match self.purpose {
            Purpose::Errors => "errors",
            Purpose::Slow => "slow",
            _ => "baseline",
        };
        let reason_name = if self.purpose == Purpose::Baseline {
            "sample"
        } else {
            reason.as_str()
        };
        let answer = self
            .source
            .http
            .get(
                path,
                &params,
                JaegerSource::label(purpose, Some(self.service), reason_name),
            )
            .await
            .map_err(|e| e.to_string())?;
        if self.api == Api::V3 && answer.status == 404 {
            // v3 answers "No traces found" with 404.
            self.source.http.finish(answer, Some(0), None);
            return Ok(Page {
                traces: Vec::new(),
                returned: Vec::new(),
            });
        }
        if answer.status != 200 {
            let msg = format!("HTTP {}: {}", answer.status, body_text(&answer.body));
            self.source.http.finish(answer, None, Some(msg.clone()));
            return Err(msg);
        }
        let mut collector = TraceCollector::default();
        let parsed = match self.api {
            Api::V1 => collector
                .add_document(&answer.body)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Api::V3 => collector.read(&answer.body[..]).map_err(|e| e.to_string()),
        };
        if let Err(e) = parsed {
            let msg = format!("unreadable answer: {e}");
            self.source.http.finish(answer, None, Some(msg.clone()));
            return Err(msg);
        }
        let server_errors = if self.api == Api::V1 {
            serde_json::from_slice::<V1Errors>(&answer.body)
                .ok()
                .and_then(|e| e.errors)
                .filter(|e| !e.is_empty())
                .map(|errs| {
                    errs.iter()
                        .map(|e| format!("{} {}", e.code, e.msg))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
        } else {
            None
        };
        let collected = collector.finish();
        let returned: Vec<_> = collected.traces.iter().map(|t| t.id).collect();
        let traces: Vec<Trace> = collected
            .traces
            .into_iter()
            .filter(|t| self.keep(t))
            .collect();
        self.source
            .http
            .finish(answer, Some(returned.len()), server_errors.clone());
        if let Some(e) = server_errors
            && returned.is_empty()
        {
            return Err(format!("the backend reported errors: {e}"));
        }
        Ok(Page { traces, returned })
    }
}

impl RangeQuery for Search<'_> {
    fn query(
        &self,
        start_ns: i64,
        end_ns: i64,
        reason: Reason,
    ) -> BoxFuture<'_, Result<Page, String>> {
        Box::pin(self.run(start_ns, end_ns, reason))
    }
}
