//! Jaeger's query APIs: the parameters of a search in v1 (`/api/traces`: µs times, `tags` JSON,
//! `minDuration`) and v3 (`/api/v3/traces`: RFC 3339 times, `query.attributes`,
//! `query.duration_min`, 404 when nothing matches), and reading their answers.

use chrono::{DateTime, SecondsFormat};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::JaegerSource;
use crate::capture::http::label;
use crate::capture::search::{Page, RangeQuery, Reason};
use crate::capture::{CapturePlan, Purpose};
use crate::formats::TraceCollector;
use crate::model::Trace;

/// Which Jaeger query API the server has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    V3,
    V1,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Self::V3 => "jaeger-v3",
            Self::V1 => "jaeger-v1",
        }
    }
}

#[derive(Deserialize)]
pub(super) struct V3Services {
    #[serde(default)]
    pub(super) services: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct V1Services {
    #[serde(default)]
    pub(super) data: Option<Vec<String>>,
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

/// One search (service × purpose) that can be asked for any sub-range.
pub struct Search<'a> {
    pub(super) source: &'a JaegerSource,
    pub(super) api: Api,
    pub(super) service: &'a str,
    pub(super) purpose: Purpose,
    pub(super) plan: &'a CapturePlan,
    pub(super) limit: usize,
    /// Whether the server is asked to filter (`tags`/`query.attributes`, `minDuration`/
    /// `query.duration_min`); we always do.
    pub(super) server_filter: bool,
}

fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
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
                    _ if !self.server_filter => {}
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
                    _ if !self.server_filter => {}
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

    async fn run(&self, start_ns: i64, end_ns: i64, reason: Reason) -> Result<Page, String> {
        let (path, params) = self.params(start_ns, end_ns);
        let purpose = self.purpose.name();
        let reason_name = reason.as_str();
        let answer = self
            .source
            .http
            .get(
                path,
                &params,
                label(purpose, Some(self.service), reason_name),
            )
            .await
            .map_err(|e| e.to_string())?;
        if self.api == Api::V3 && answer.status == 404 {
            // v3 answers "No traces found" with 404.
            self.source.http.finish(answer, Some(0), None);
            return Ok(Page::new(Vec::new(), Vec::new()));
        }
        if answer.status != 200 {
            return Err(self.source.http.reject_status(answer));
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
            return Err(self
                .source
                .http
                .reject(answer, format!("unreadable answer: {e}")));
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
        self.source
            .http
            .tally
            .absorb(&collected.skipped, &collected.notes);
        let returned: Vec<_> = collected.traces.iter().map(|t| t.id).collect();
        let traces: Vec<Trace> = collected
            .traces
            .into_iter()
            .filter(|t| self.purpose.matches(t, self.plan))
            .collect();
        self.source
            .http
            .finish(answer, Some(returned.len()), server_errors.clone());
        if let Some(e) = server_errors {
            if returned.is_empty() {
                return Err(format!("the backend reported errors: {e}"));
            }
            // Errors beside data: some traces of this answer could not be loaded.
            self.source.http.tally.server_error(e);
        }
        let mut page = Page::new(traces, returned);
        if self.server_filter {
            page.mismatched = page.returned.len() - page.traces.len();
        }
        Ok(page)
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
