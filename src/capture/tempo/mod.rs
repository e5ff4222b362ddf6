//! Grafana Tempo over HTTP. Searches are TraceQL on `/api/search` (`{ status = error }`,
//! `{ duration > … }`, scoped by `resource.service.name` when the incident names services), with
//! `start`/`end` in seconds and never more than Tempo's 168 h per search; they return trace ids
//! only (leading zeros stripped), so every trace found is then fetched once by id from
//! `/api/v2/traces/{id}` (falling back to `/api/traces/{id}` and its `batches` on older Tempos),
//! with bounded concurrency. A `PARTIAL` answer is a recorded gap. `tenant` is sent as
//! `X-Scope-OrgID`.

mod api;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

use api::Search;

use super::http::{HttpBackend, HttpError, body_text, label};
use super::sweep::{
    Searches, SweepLimits, expired_gap, note_unknown_services, sweep, unavailable_gap,
    unknown_service_gaps,
};
use super::{CapturePlan, Gap, Purpose, Purposes, SourceCapture, SourceRecord, TraceSource};
use crate::config::BackendSettings;
use crate::formats::TraceCollector;
use crate::model::{Trace, TraceId};

/// Tempo's longest search range (168 h), less the two seconds that rounding each piece outwards
/// to whole seconds may add.
const MAX_RANGE_NS: i64 = (168 * 3600 - 2) * 1_000_000_000;

/// A Tempo query frontend.
pub struct TempoSource {
    name: String,
    http: HttpBackend,
    settings: BackendSettings,
    /// Set once `/api/v2/traces/{id}` is known to be missing (Tempo before 2.5).
    v1_fetch: AtomicBool,
}

/// How fetching one trace ended.
enum Fetched {
    Trace(Trace, bool),
    Missing,
    Failed(String),
}

impl TempoSource {
    pub fn new(name: &str, settings: &BackendSettings) -> Result<Self, HttpError> {
        Ok(Self {
            name: name.to_owned(),
            http: HttpBackend::new(settings)?,
            settings: settings.clone(),
            v1_fetch: AtomicBool::new(false),
        })
    }

    /// The services Tempo has seen (`resource.service.name` values), if it says; `None` when
    /// neither tag-values endpoint answers (then no name can be checked).
    async fn services(&self) -> Option<BTreeSet<String>> {
        #[derive(serde::Deserialize)]
        struct V2 {
            #[serde(rename = "tagValues", default)]
            tag_values: Vec<V2Value>,
        }
        #[derive(serde::Deserialize)]
        struct V2Value {
            #[serde(default)]
            value: String,
        }
        #[derive(serde::Deserialize)]
        struct V1 {
            #[serde(rename = "tagValues", default)]
            tag_values: Vec<String>,
        }
        for (path, v2) in [
            ("api/v2/search/tag/resource.service.name/values", true),
            ("api/search/tag/service.name/values", false),
        ] {
            let Ok(answer) = self
                .http
                .get(path, &[], label("services", None, "initial"))
                .await
            else {
                return None;
            };
            if answer.status != 200 {
                self.http.finish(answer, None, None);
                continue;
            }
            let names: Option<Vec<String>> = if v2 {
                serde_json::from_slice::<V2>(&answer.body)
                    .ok()
                    .map(|r| r.tag_values.into_iter().map(|v| v.value).collect())
            } else {
                serde_json::from_slice::<V1>(&answer.body)
                    .ok()
                    .map(|r| r.tag_values)
            };
            self.http.finish(answer, names.as_ref().map(Vec::len), None);
            if let Some(n) = names {
                return Some(n.into_iter().collect());
            }
        }
        None
    }

    /// Any answer from Tempo's build-info endpoint proves it is reachable.
    async fn probe(&self) -> Result<(), String> {
        let answer = self
            .http
            .get("api/status/buildinfo", &[], label("probe", None, "initial"))
            .await
            .map_err(|e| e.to_string())?;
        self.http.finish(answer, None, None);
        Ok(())
    }

    async fn fetch_once(
        &self,
        path: &str,
        params: &[(&str, String)],
        v2: bool,
    ) -> Result<Option<(Trace, bool)>, String> {
        let answer = self
            .http
            .get(path, params, label("fetch", None, "initial"))
            .await
            .map_err(|e| e.to_string())?;
        match answer.status {
            200 => {
                let mut c = TraceCollector::default();
                let parsed = if v2 {
                    crate::formats::otlp::parse_tempo_v2(&answer.body, &mut c)
                        .map_err(|e| e.to_string())
                } else {
                    c.add_document(&answer.body)
                        .map(|_| false)
                        .map_err(|e| e.to_string())
                };
                match parsed {
                    Ok(partial) => {
                        let collected = c.finish();
                        self.http.tally.absorb(&collected.skipped, &collected.notes);
                        let mut traces = collected.traces;
                        self.http.finish(
                            answer,
                            Some(traces.len()),
                            partial.then(|| "PARTIAL".to_owned()),
                        );
                        match traces.len() {
                            0 => Ok(None),
                            _ => {
                                let mut t = traces.swap_remove(0);
                                for other in traces {
                                    t.merge(other);
                                }
                                Ok(Some((t, partial)))
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("unreadable answer: {e}");
                        self.http.finish(answer, None, Some(msg.clone()));
                        Err(msg)
                    }
                }
            }
            404 => {
                self.http.finish(answer, Some(0), None);
                Ok(None)
            }
            status => {
                let msg = format!("HTTP {status}: {}", body_text(&answer.body));
                self.http.finish(answer, None, Some(msg.clone()));
                Err(msg)
            }
        }
    }

    /// Fetches one trace by id and hands it to the plan's store, if it has one (see
    /// `Spill::store`).
    async fn fetch_stored(&self, id: TraceId, plan: &CapturePlan) -> Fetched {
        match (self.fetch(id).await, plan.store.as_deref()) {
            (Fetched::Trace(mut t, partial), Some(store)) => {
                match store.store(std::slice::from_mut(&mut t)) {
                    Ok(()) => Fetched::Trace(t, partial),
                    Err(e) => Fetched::Failed(format!(
                        "the trace could not be written to the capture's temporary file: {e}"
                    )),
                }
            }
            (fetched, _) => fetched,
        }
    }

    /// Fetches one trace by id: v2 first, v1 when v2 is missing.
    async fn fetch(&self, id: TraceId) -> Fetched {
        let hex = id.to_hex();
        // No start/end: Tempo would skip the blocks outside them, and a long trace's later
        // spans (or one that began before the window) would be cut without a word.
        let params: [(&str, String); 0] = [];
        if !self.v1_fetch.load(Ordering::Relaxed) {
            match self
                .fetch_once(&format!("api/v2/traces/{hex}"), &params, true)
                .await
            {
                Ok(Some((t, partial))) => return Fetched::Trace(t, partial),
                Err(e) => return Fetched::Failed(e),
                Ok(None) => {}
            }
        }
        match self
            .fetch_once(&format!("api/traces/{hex}"), &params, false)
            .await
        {
            Ok(Some((t, partial))) => {
                self.v1_fetch.store(true, Ordering::Relaxed);
                Fetched::Trace(t, partial)
            }
            Ok(None) => Fetched::Missing,
            Err(e) => Fetched::Failed(e),
        }
    }

    async fn run(&self, plan: &CapturePlan) -> SourceCapture {
        let started = chrono::Utc::now();
        let mut gaps = Vec::new();
        let mut traces = Vec::new();
        let mut notes = BTreeMap::new();
        let mut known_services: Option<BTreeSet<String>> = None;
        self.http.limit_bytes(plan.max_bytes);
        match self.probe().await {
            Err(message) => gaps.push(unavailable_gap(
                &self.name,
                &format!("Tempo at {}", self.http.display_url()),
                plan,
                &message,
            )),
            Ok(()) => {
                known_services = if plan.services.is_empty() {
                    None
                } else {
                    self.services().await
                };
                if let Some(known) = &known_services {
                    note_unknown_services(&mut notes, &plan.services, known);
                }
                let scopes: Vec<Option<String>> = if plan.services.is_empty() {
                    vec![None]
                } else {
                    plan.services.iter().cloned().map(Some).collect()
                };
                let limits = SweepLimits {
                    source: self.name.clone(),
                    query_limit: self.settings.query_limit,
                    // Tempo's times are seconds.
                    min_slice_ns: (self.settings.min_slice.as_nanos().min(i64::MAX as u128) as i64)
                        .max(1_000_000_000),
                    max_range_ns: Some(MAX_RANGE_NS),
                    baseline_quota: plan.baseline_traces.div_ceil(scopes.len()),
                    // Tempo refuses a limit it will not honour (400) rather than capping
                    // silently, and matches traces that merely overlap a range, which would
                    // make every long trace look like a cap.
                    verify_hidden_caps: false,
                };
                // The searches find ids; each trace is then fetched once, whatever found it.
                let (found, sweep_gaps) = sweep(self, &scopes, plan, &limits, &mut notes).await;
                gaps.extend(sweep_gaps);
                let mut wanted: BTreeMap<TraceId, Purposes> = BTreeMap::new();
                for (stub, p) in found {
                    let e = wanted.entry(stub.id).or_default();
                    *e = e.union(p);
                }
                let fetched = futures::future::join_all(
                    wanted
                        .keys()
                        .map(|&id| async move { (id, self.fetch_stored(id, plan).await) }),
                )
                .await;
                for (id, outcome) in fetched {
                    let purposes = wanted[&id];
                    match outcome {
                        Fetched::Trace(t, partial) => {
                            if partial {
                                gaps.push(self.trace_gap(id, "partial_trace", "Tempo answered PARTIAL: some spans of this trace may be missing"));
                            }
                            traces.push((t, purposes));
                        }
                        Fetched::Missing => gaps.push(self.trace_gap(
                            id,
                            "trace_not_found",
                            "found by a search, then not found by id (deleted in between?)",
                        )),
                        Fetched::Failed(e) => gaps.push(self.trace_gap(
                            id,
                            crate::capture::failure_kind(&e, "query_failed"),
                            &format!("fetching the trace failed: {e}"),
                        )),
                    }
                }
                gaps.extend(expired_gap(
                    &self.name,
                    self.settings.retention,
                    plan,
                    started,
                ));
            }
        }
        if let Some(known) = &known_services {
            gaps.extend(unknown_service_gaps(&self.name, plan, known, &traces));
        }
        let url = self.http.display_url();
        gaps.extend(self.http.tally.take(&self.name, &mut notes));
        SourceCapture {
            record: SourceRecord {
                name: self.name.clone(),
                kind: "tempo".into(),
                trace_url: None,
                url,
                api: Some(
                    if self.v1_fetch.load(Ordering::Relaxed) {
                        "tempo-search+v1-traces"
                    } else {
                        "tempo-search+v2-traces"
                    }
                    .into(),
                ),
                queries: self.http.take_records(),
                notes,
            },
            traces,
            gaps,
        }
    }

    fn trace_gap(&self, id: TraceId, kind: &str, message: &str) -> Gap {
        Gap {
            source: self.name.clone(),
            kind: kind.into(),
            service: None,
            purpose: None,
            start: None,
            end: None,
            message: format!("trace {id}: {message}"),
        }
    }
}

impl Searches for TempoSource {
    type Search<'a> = Search<'a>;

    fn search<'a>(
        &'a self,
        plan: &'a CapturePlan,
        service: Option<&'a str>,
        purpose: Purpose,
        limit: usize,
        // Tempo's answers hold ids, not spans: they cannot be checked against the filter here,
        // so TraceQL is always asked (and the fetched traces are filtered again).
        _server_filter: bool,
    ) -> Search<'a> {
        Search {
            http: &self.http,
            plan,
            service,
            purpose,
            limit,
        }
    }

    fn answers_whole_traces(&self) -> bool {
        false
    }
}

impl TraceSource for TempoSource {
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture> {
        Box::pin(self.run(plan))
    }
}
