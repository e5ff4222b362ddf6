//! Jaeger over HTTP. The v3 API (`/api/v3/services`, `/api/v3/traces`) first; the v1 API
//! (`/api/services`, `/api/traces`) when v3 answers 404; decided once per backend per capture.
//! Error traces are asked for with `tags={"error":"true"}` (v1) or `query.attributes` (v3, honoured
//! from Jaeger 2.19) and always filtered again on our side, so an older server that ignores the
//! filter costs queries, not correctness. Jaeger cannot search without a service, so every
//! service is a scope of its own.

mod api;

use std::collections::BTreeSet;

use futures::future::BoxFuture;

pub use api::Api;
use api::{Search, V1Services, V3Services};

use super::http::{HttpBackend, HttpError, body_text, label};
use super::sweep::{
    Searches, SweepLimits, expired_gap, note_unknown_services, sweep, unavailable_gap,
    unknown_service_gaps,
};
use super::{CapturePlan, Gap, Purpose, Purposes, SourceCapture, SourceRecord, TraceSource};
use crate::config::BackendSettings;
use crate::model::Trace;

/// A Jaeger query service.
pub struct JaegerSource {
    name: String,
    http: HttpBackend,
    settings: BackendSettings,
    api: std::sync::OnceLock<Api>,
}

impl JaegerSource {
    pub fn new(name: &str, settings: &BackendSettings) -> Result<Self, HttpError> {
        Ok(Self {
            name: name.to_owned(),
            http: HttpBackend::new(settings)?,
            settings: settings.clone(),
            api: std::sync::OnceLock::new(),
        })
    }

    /// Finds the API and the services the server knows.
    async fn discover(&self) -> Result<(Api, Vec<String>), String> {
        let v3 = self
            .http
            .get("api/v3/services", &[], label("services", None, "initial"))
            .await
            .map_err(|e| e.to_string())?;
        // Jaeger's UI answers unknown paths with its index.html and 200: an answer that is not
        // the v3 JSON means there is no v3 API, as a 404 does.
        let v3_services = (v3.status == 200)
            .then(|| serde_json::from_slice::<V3Services>(&v3.body).ok())
            .flatten();
        match (v3.status, v3_services) {
            (200, Some(parsed)) => {
                let services = parsed.services;
                self.http.finish(v3, Some(services.len()), None);
                Ok((Api::V3, services))
            }
            (200 | 404, None) => {
                self.http
                    .finish(v3, None, Some("no v3 API; using v1".into()));
                let v1 = self
                    .http
                    .get("api/services", &[], label("services", None, "initial"))
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
            (status, _) => {
                let msg = format!("HTTP {status}: {}", body_text(&v3.body));
                self.http.finish(v3, None, Some(msg.clone()));
                Err(msg)
            }
        }
    }

    async fn run(&self, plan: &CapturePlan) -> SourceCapture {
        let started = chrono::Utc::now();
        let mut gaps = Vec::new();
        let mut found: Vec<(Trace, Purposes)> = Vec::new();
        let mut api_name = None;
        let mut notes = std::collections::BTreeMap::new();
        self.http.limit_bytes(plan.max_bytes);
        match self.discover().await {
            Err(message) => gaps.push(unavailable_gap(
                &self.name,
                &format!("Jaeger at {}", self.http.display_url()),
                plan,
                &message,
            )),
            Ok((api, known)) => {
                api_name = Some(api.name().to_owned());
                let known: BTreeSet<String> = known.into_iter().collect();
                let services: Vec<String> = if plan.services.is_empty() {
                    // Jaeger searches one service at a time: every service it lists is a scope,
                    // bounded by capture.max_services.
                    let (kept, over) =
                        plan.bounded_services(&self.name, known.iter().cloned().collect());
                    gaps.extend(over);
                    kept
                } else {
                    plan.services.clone()
                };
                note_unknown_services(&mut notes, &services, &known);
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
                let _ = self.api.set(api);
                let limits = SweepLimits {
                    source: self.name.clone(),
                    query_limit: self.settings.query_limit,
                    min_slice_ns: self.settings.min_slice.as_nanos().min(i64::MAX as u128) as i64,
                    max_range_ns: None,
                    // The baseline budget is shared by the services in scope.
                    baseline_quota: plan.baseline_traces.div_ceil(services.len().max(1)),
                    verify_hidden_caps: true,
                };
                let scopes: Vec<Option<String>> = services.into_iter().map(Some).collect();
                let (traces, sweep_gaps) = sweep(self, &scopes, plan, &limits, &mut notes).await;
                gaps.extend(sweep_gaps);
                gaps.extend(expired_gap(
                    &self.name,
                    self.settings.retention,
                    plan,
                    started,
                ));
                gaps.extend(unknown_service_gaps(&self.name, plan, &known, &traces));
                found.extend(traces);
            }
        }
        gaps.extend(self.http.tally.take(&self.name, &mut notes));
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
}

impl Searches for JaegerSource {
    type Search<'a> = Search<'a>;

    fn search<'a>(
        &'a self,
        plan: &'a CapturePlan,
        service: Option<&'a str>,
        purpose: Purpose,
        limit: usize,
        server_filter: bool,
    ) -> Search<'a> {
        Search {
            source: self,
            plan,
            api: self.api.get().copied().unwrap_or(Api::V3),
            service: service.unwrap_or_default(),
            purpose,
            limit,
            server_filter,
        }
    }
}

impl TraceSource for JaegerSource {
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture> {
        Box::pin(self.run(plan))
    }
}
