//! Tempo's `/api/search`: a TraceQL query per purpose and scope, `start`/`end` in whole seconds
//! (rounded outwards), `limit`, `spss`; the answer lists trace ids, which may have lost their
//! leading zeros.

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::capture::http::{HttpBackend, label};
use crate::capture::search::{Page, RangeQuery, Reason};
use crate::capture::{CapturePlan, Purpose};
use crate::model::{Trace, TraceId};

#[derive(Deserialize)]
struct SearchResponse {
    #[serde(default)]
    traces: Vec<Found>,
}

#[derive(Deserialize)]
struct Found {
    #[serde(rename = "traceID")]
    trace_id: String,
}

/// A TraceQL string literal.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The TraceQL query for a purpose in a scope.
pub fn traceql(service: Option<&str>, purpose: Purpose, slow: std::time::Duration) -> String {
    let mut conditions = Vec::new();
    if let Some(s) = service {
        conditions.push(format!("resource.service.name = {}", quoted(s)));
    }
    match purpose {
        Purpose::Errors => conditions.push("status = error".to_owned()),
        Purpose::Slow => {
            conditions.push(format!("duration >= {}", crate::duration::format_go(slow)))
        }
        _ => {}
    }
    if conditions.is_empty() {
        "{ }".to_owned()
    } else {
        format!("{{ {} }}", conditions.join(" && "))
    }
}

/// One search (scope × purpose) that can be asked for any time range.
pub struct Search<'a> {
    pub(super) http: &'a HttpBackend,
    pub(super) plan: &'a CapturePlan,
    pub(super) service: Option<&'a str>,
    pub(super) purpose: Purpose,
    pub(super) limit: usize,
}

impl Search<'_> {
    async fn run(&self, start_ns: i64, end_ns: i64, reason: Reason) -> Result<Page, String> {
        let start_s = start_ns.div_euclid(1_000_000_000);
        let end_s =
            end_ns.div_euclid(1_000_000_000) + i64::from(end_ns.rem_euclid(1_000_000_000) != 0);
        let params = [
            (
                "q",
                traceql(self.service, self.purpose, self.plan.slow_threshold),
            ),
            ("start", start_s.to_string()),
            ("end", end_s.max(start_s + 1).to_string()),
            ("limit", self.limit.to_string()),
            ("spss", "1".to_owned()),
        ];
        let purpose = self.purpose.name();
        let answer = self
            .http
            .get(
                "api/search",
                &params,
                label(purpose, self.service, reason.as_str()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(self.http.reject_status(answer));
        }
        let parsed: Result<SearchResponse, _> = serde_json::from_slice(&answer.body);
        let found = match parsed {
            Ok(r) => r.traces,
            Err(e) => {
                return Err(self.http.reject(answer, format!("unreadable answer: {e}")));
            }
        };
        let mut returned = Vec::with_capacity(found.len());
        for f in &found {
            match TraceId::parse(&f.trace_id) {
                Ok(id) => returned.push(id),
                Err(e) => {
                    let msg = format!("unreadable trace id in the answer: {e}");
                    self.http.finish(answer, None, Some(msg.clone()));
                    return Err(msg);
                }
            }
        }
        returned.sort_unstable();
        returned.dedup();
        self.http.finish(answer, Some(returned.len()), None);
        // Ids only: the traces are fetched once the searches are done.
        let traces = returned
            .iter()
            .map(|&id| Trace {
                id,
                spans: Vec::new(),
            })
            .collect();
        Ok(Page::new(traces, returned))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceql_scopes_and_quotes() {
        let slow = std::time::Duration::from_secs(1);
        assert_eq!(traceql(None, Purpose::Errors, slow), "{ status = error }");
        assert_eq!(
            traceql(Some("pay\"ment"), Purpose::Slow, slow),
            "{ resource.service.name = \"pay\\\"ment\" && duration >= 1000000us }"
        );
        assert_eq!(traceql(None, Purpose::Baseline, slow), "{ }");
    }
}
