//! Zipkin's `/api/v2/traces`: parameters (`serviceName`, `annotationQuery`, `minDuration` in µs,
//! `endTs` and `lookback` in ms, `limit`) and its answer, a list of traces.

use futures::future::BoxFuture;

use crate::capture::http::{HttpBackend, label};
use crate::capture::search::{Page, RangeQuery, Reason};
use crate::capture::{CapturePlan, Purpose};
use crate::formats::{Format, TraceCollector};

/// One search (scope × purpose) that can be asked for any time range.
pub struct Search<'a> {
    pub(super) http: &'a HttpBackend,
    pub(super) plan: &'a CapturePlan,
    pub(super) service: Option<&'a str>,
    pub(super) purpose: Purpose,
    pub(super) limit: usize,
    /// Whether the server is asked to filter (`annotationQuery`, `minDuration`); we always do.
    pub(super) server_filter: bool,
}

impl Search<'_> {
    /// `[start_ns, end_ns)` as Zipkin's `endTs` and `lookback` (ms, rounded outwards).
    fn params(&self, start_ns: i64, end_ns: i64) -> Vec<(&'static str, String)> {
        let end_ms = end_ns.div_euclid(1_000_000) + i64::from(end_ns.rem_euclid(1_000_000) != 0);
        let start_ms = start_ns.div_euclid(1_000_000);
        let mut p = vec![
            ("endTs", end_ms.to_string()),
            ("lookback", (end_ms - start_ms).max(1).to_string()),
            ("limit", self.limit.to_string()),
        ];
        if let Some(s) = self.service {
            p.push(("serviceName", s.to_owned()));
        }
        match self.purpose {
            _ if !self.server_filter => {}
            Purpose::Errors => p.push(("annotationQuery", "error".to_owned())),
            Purpose::Slow => p.push((
                "minDuration",
                (self.plan.slow_threshold.as_micros().max(1)).to_string(),
            )),
            _ => {}
        }
        p
    }

    async fn run(&self, start_ns: i64, end_ns: i64, reason: Reason) -> Result<Page, String> {
        let purpose = self.purpose.name();
        let answer = self
            .http
            .get(
                "api/v2/traces",
                &self.params(start_ns, end_ns),
                label(purpose, self.service, reason.as_str()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(self.http.reject_status(answer));
        }
        let mut c = TraceCollector::default();
        let body = answer.body.trim_ascii();
        let parsed = if body == b"[]" {
            Ok(())
        } else {
            crate::formats::zipkin::parse(body, Format::ZipkinTraces, &mut c)
        };
        if let Err(e) = parsed {
            return Err(self.http.reject(answer, format!("unreadable answer: {e}")));
        }
        let collected = c.finish();
        self.http.tally.absorb(&collected.skipped, &collected.notes);
        let returned: Vec<_> = collected.traces.iter().map(|t| t.id).collect();
        // The server's own count is its number of lists, whatever could be read of them.
        let lists =
            serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body).map_or(0, |l| l.len());
        self.http.finish(answer, Some(returned.len()), None);
        let traces: Vec<_> = collected
            .traces
            .into_iter()
            .filter(|t| self.purpose.matches(t, self.plan))
            .collect();
        let count = lists.max(returned.len());
        let mismatched = if self.server_filter {
            returned.len() - traces.len()
        } else {
            0
        };
        Ok(Page {
            traces,
            returned,
            count,
            mismatched,
        })
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
