//! Zipkin v2 over HTTP. Zipkin can search without a service, so an incident that names none is
//! one scope (every service); errors are `annotationQuery=error` (a span carrying the `error`
//! tag, whatever its value), slow traces `minDuration` in µs, time ranges `endTs` and `lookback`
//! in ms. Answers are whole traces: no second fetch is needed.

mod api;

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;

use api::Search;

use super::http::{HttpBackend, HttpError, label};
use super::sweep::{
    Searches, SweepLimits, expired_gap, note_unknown_services, sweep, unavailable_gap,
    unknown_service_gaps,
};
use super::{CapturePlan, Purpose, SourceCapture, SourceRecord, TraceSource};
use crate::config::BackendSettings;

/// A Zipkin server.
pub struct ZipkinSource {
    name: String,
    http: HttpBackend,
    settings: BackendSettings,
}

impl ZipkinSource {
    pub fn new(name: &str, settings: &BackendSettings) -> Result<Self, HttpError> {
        Ok(Self {
            name: name.to_owned(),
            http: HttpBackend::new(settings)?,
            settings: settings.clone(),
        })
    }

    /// The services Zipkin knows (also proves it answers).
    async fn services(&self) -> Result<Vec<String>, String> {
        let answer = self
            .http
            .get("api/v2/services", &[], label("services", None, "initial"))
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(self.http.reject_status(answer));
        }
        match serde_json::from_slice::<Vec<String>>(&answer.body) {
            Ok(list) => {
                self.http.finish(answer, Some(list.len()), None);
                Ok(list)
            }
            Err(e) => {
                let msg = format!("unreadable answer: {e}");
                self.http.finish(answer, None, Some(msg.clone()));
                Err(msg)
            }
        }
    }

    async fn run(&self, plan: &CapturePlan) -> SourceCapture {
        let started = chrono::Utc::now();
        let mut gaps = Vec::new();
        let mut traces = Vec::new();
        let mut notes = BTreeMap::new();
        self.http.limit_bytes(plan.max_bytes);
        match self.services().await {
            Err(message) => gaps.push(unavailable_gap(
                &self.name,
                &format!("Zipkin at {}", self.http.display_url()),
                plan,
                &message,
            )),
            Ok(known) => {
                let known: BTreeSet<String> = known.into_iter().collect();
                note_unknown_services(&mut notes, &plan.services, &known);
                let scopes: Vec<Option<String>> = if plan.services.is_empty() {
                    vec![None]
                } else {
                    plan.services.iter().cloned().map(Some).collect()
                };
                let limits = SweepLimits {
                    source: self.name.clone(),
                    query_limit: self.settings.query_limit,
                    // Zipkin's times are milliseconds.
                    min_slice_ns: (self.settings.min_slice.as_nanos().min(i64::MAX as u128) as i64)
                        .max(1_000_000),
                    max_range_ns: None,
                    baseline_quota: plan.baseline_traces.div_ceil(scopes.len()),
                    verify_hidden_caps: true,
                };
                let (found, sweep_gaps) = sweep(self, &scopes, plan, &limits, &mut notes).await;
                gaps.extend(sweep_gaps);
                gaps.extend(expired_gap(
                    &self.name,
                    self.settings.retention,
                    plan,
                    started,
                ));
                gaps.extend(unknown_service_gaps(&self.name, plan, &known, &found));
                traces = found;
            }
        }
        let url = self.http.display_url();
        gaps.extend(self.http.tally.take(&self.name, &mut notes));
        SourceCapture {
            record: SourceRecord {
                name: self.name.clone(),
                kind: "zipkin".into(),
                trace_url: Some(format!(
                    "{}/zipkin/traces/{{trace_id}}",
                    url.trim_end_matches('/')
                )),
                url,
                api: Some("zipkin-v2".into()),
                queries: self.http.take_records(),
                notes,
            },
            traces,
            gaps,
        }
    }
}

impl Searches for ZipkinSource {
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
            http: &self.http,
            plan,
            service,
            purpose,
            limit,
            server_filter,
        }
    }
}

impl TraceSource for ZipkinSource {
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture> {
        Box::pin(self.run(plan))
    }
}
