//! The capture plan every search backend follows, whatever its API: for each scope (a service,
//! or every service when the backend can search without one), every error trace and every slow
//! trace of the incident window (exhaustive searches, see `search`), and a bounded sample of the
//! baseline period spread over six slices. Backends only say how one search over one time range
//! is asked (the [`Searches`] trait).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::DateTime;
use futures::future::BoxFuture;

use super::search::{self, CapKnowledge, RangeQuery, Reason};
use super::{CapturePlan, Gap, Purpose, Purposes};
use crate::model::Trace;

/// A backend's searches.
pub trait Searches: Sync {
    type Search<'a>: RangeQuery
    where
        Self: 'a;

    /// The search for `purpose` in `service` (`None`: every service), asking `limit` traces;
    /// with `server_filter` false, the server is not asked to filter (errors, duration) and
    /// the answers are filtered on our side only.
    fn search<'a>(
        &'a self,
        plan: &'a CapturePlan,
        service: Option<&'a str>,
        purpose: Purpose,
        limit: usize,
        server_filter: bool,
    ) -> Self::Search<'a>;

    /// Whether a search's answer holds whole traces, which the plan's store takes as they come
    /// (Tempo's searches find ids; it stores the traces it then fetches).
    fn answers_whole_traces(&self) -> bool {
        true
    }
}

/// A search whose answers go to the plan's store as they come (see `Spill::store`), leaving
/// light traces in the answer; an answer that cannot be written fails as a whole (a gap).
struct Storing<'s, Q> {
    inner: Q,
    store: Option<&'s super::spill::Spill>,
}

impl<Q: RangeQuery> RangeQuery for Storing<'_, Q> {
    fn query(
        &self,
        start_ns: i64,
        end_ns: i64,
        reason: Reason,
    ) -> BoxFuture<'_, Result<search::Page, String>> {
        Box::pin(async move {
            let mut page = self.inner.query(start_ns, end_ns, reason).await?;
            if let Some(store) = self.store {
                store.store(&mut page.traces).map_err(|e| {
                    format!("the answer could not be written to the capture's temporary file: {e}")
                })?;
            }
            Ok(page)
        })
    }
}

/// `backend`'s search (see [`Searches::search`]), its answers stored as they come.
fn ask<'a, B: Searches>(
    backend: &'a B,
    plan: &'a CapturePlan,
    service: Option<&'a str>,
    purpose: Purpose,
    limit: usize,
    server_filter: bool,
) -> Storing<'a, B::Search<'a>> {
    Storing {
        inner: backend.search(plan, service, purpose, limit, server_filter),
        store: plan
            .store
            .as_deref()
            .filter(|_| backend.answers_whole_traces()),
    }
}

/// The server-side filters a backend has shown it cannot be trusted with: a filtered search came
/// back with traces that do not match the filter, so the server ignores it (harmless: the answer
/// is a superset and fullness is judged on it) or reads it differently (Jaeger 2.13's memory
/// store reads `error=true` as "status OK", so the traces that do match are never returned).
/// The two cannot be told apart, so from then on that purpose is searched without the server's
/// filter, and what was asked with it is asked again.
#[derive(Default)]
struct Distrust {
    /// Non-matching traces seen, per purpose (errors, slow).
    mismatched: [AtomicUsize; 2],
    /// Sample traces that match the purpose in the scope but that its filtered search did not
    /// return, per purpose: a filter that matches the wrong traces may return none at all.
    missed: [AtomicUsize; 2],
    /// Scope searches asked again without the filter, per purpose.
    redone: [AtomicUsize; 2],
}

impl Distrust {
    fn slot(purpose: Purpose) -> usize {
        usize::from(purpose != Purpose::Errors)
    }
    fn distrusted(&self, purpose: Purpose) -> bool {
        let i = Self::slot(purpose);
        self.mismatched[i].load(Ordering::Relaxed) > 0 || self.missed[i].load(Ordering::Relaxed) > 0
    }

    /// What the manifest says about it.
    fn notes(&self, notes: &mut BTreeMap<String, usize>) {
        for purpose in [Purpose::Errors, Purpose::Slow] {
            let i = Self::slot(purpose);
            let n = self.mismatched[i].load(Ordering::Relaxed);
            let missed = self.missed[i].load(Ordering::Relaxed);
            let filter = if purpose == Purpose::Errors {
                "error"
            } else {
                "duration"
            };
            if missed > 0 {
                notes.insert(
                    format!(
                        "the server's {filter} filter did not return sample traces that match it (counted): {} searches were asked again without it",
                        purpose.name()
                    ),
                    missed,
                );
            }
            if n > 0 {
                notes.insert(
                    format!(
                        "the server's {filter} filter returned traces that do not match it (counted): {} searches were asked without it and filtered here, {} scope(s) asked again",
                        purpose.name(),
                        self.redone[i].load(Ordering::Relaxed)
                    ),
                    n,
                );
            }
        }
    }
}

/// A filtered search that reports non-matching answers to `distrust`; once the filter is
/// distrusted it asks nothing more (its results are discarded and asked again unfiltered).
struct Watched<'d, Q> {
    inner: Q,
    purpose: Purpose,
    distrust: Option<&'d Distrust>,
}

impl<Q: RangeQuery> RangeQuery for Watched<'_, Q> {
    fn query(
        &self,
        start_ns: i64,
        end_ns: i64,
        reason: Reason,
    ) -> BoxFuture<'_, Result<search::Page, String>> {
        Box::pin(async move {
            let Some(distrust) = self.distrust else {
                return self.inner.query(start_ns, end_ns, reason).await;
            };
            if distrust.distrusted(self.purpose) {
                return Ok(search::Page::new(Vec::new(), Vec::new()));
            }
            let page = self.inner.query(start_ns, end_ns, reason).await?;
            if page.mismatched > 0 {
                distrust.mismatched[Distrust::slot(self.purpose)]
                    .fetch_add(page.mismatched, Ordering::Relaxed);
            }
            Ok(page)
        })
    }
}

/// How many sample traces were asked for and how many came back, over every scope and slice.
#[derive(Default)]
struct SampleTally {
    asked: AtomicUsize,
    got: AtomicUsize,
    slices: AtomicUsize,
    /// Recovery probe searches, and the traces they returned.
    probes: AtomicUsize,
    probed: AtomicUsize,
}

impl SampleTally {
    fn notes(&self, notes: &mut BTreeMap<String, usize>) {
        let slices = self.slices.load(Ordering::Relaxed);
        if slices > 0 {
            notes.insert(
                format!(
                    "sample of all traffic: traces asked for, over {slices} searches (scope × slice of the window)"
                ),
                self.asked.load(Ordering::Relaxed),
            );
            notes.insert(
                "sample of all traffic: traces the backend returned".into(),
                self.got.load(Ordering::Relaxed),
            );
        }
        let probes = self.probes.load(Ordering::Relaxed);
        if probes > 0 {
            notes.insert(
                format!(
                    "recovery probe: traces returned by {probes} searches of 5 s after a scope's last error (stored with the sample, not counted in its rates)"
                ),
                self.probed.load(Ordering::Relaxed),
            );
        }
    }
}

/// The slices of the window the sample is asked for: one per minute, or, for windows of more
/// than an hour, 60 equal slices (each asking for the minutes it spans, up to `query_limit`).
fn sample_slices(
    (start, end): (i64, i64),
    per_minute: usize,
    query_limit: usize,
) -> (Vec<(i64, i64)>, usize) {
    const MINUTE_NS: i64 = 60_000_000_000;
    let span = end.saturating_sub(start);
    let minutes = (span + MINUTE_NS - 1) / MINUTE_NS;
    if minutes <= 60 {
        return (chunks(start, end, Some(MINUTE_NS)), per_minute);
    }
    let per_slice = per_minute
        .saturating_mul(((minutes + 59) / 60) as usize)
        .min(query_limit.max(per_minute));
    (chunks(start, end, Some((span + 59) / 60)), per_slice)
}

/// How a sweep is bounded.
#[derive(Clone, Debug)]
pub struct SweepLimits {
    /// The source's name, for gaps.
    pub source: String,
    pub query_limit: usize,
    pub min_slice_ns: i64,
    /// The longest range one search may cover (Tempo: 168 h); longer windows are cut first.
    pub max_range_ns: Option<i64>,
    /// Baseline traces asked per scope.
    pub baseline_quota: usize,
    /// Whether answers below the limit are checked for a hidden cap (see `search`).
    pub verify_hidden_caps: bool,
}

/// What a sweep found: traces with the purpose they were found for, and gaps.
pub type Swept = (Vec<(Trace, Purposes)>, Vec<Gap>);

fn gap(
    limits: &SweepLimits,
    service: Option<&str>,
    purpose: Purpose,
    start_ns: i64,
    end_ns: i64,
    message: String,
    kind: &str,
) -> Gap {
    Gap {
        source: limits.source.clone(),
        kind: kind.into(),
        service: service.map(str::to_owned),
        purpose: Some(purpose),
        start: Some(DateTime::from_timestamp_nanos(start_ns)),
        end: Some(DateTime::from_timestamp_nanos(end_ns)),
        message,
    }
}

/// The part of the window the backend's retention may have deleted, as an `expired` gap, for a
/// capture that began at `started` and has just asked its last question: what was older than
/// the retention at `started`, and what became older while the capture ran (a trace there may
/// have been deleted before the search that would have found it; when each search ran is not
/// kept per trace, so the whole stretch is named).
pub fn expired_gap(
    source: &str,
    retention: std::time::Duration,
    plan: &CapturePlan,
    started: chrono::DateTime<chrono::Utc>,
) -> Option<Gap> {
    let keep = chrono::Duration::from_std(retention).ok()?;
    let ended = chrono::Utc::now();
    let (at_start, at_end) = (
        started.checked_sub_signed(keep)?,
        ended.checked_sub_signed(keep)?,
    );
    let (from, to) = (plan.window.start(), plan.window.end());
    if from >= at_end {
        return None;
    }
    let kept = humantime::format_duration(retention);
    let message = if from < at_start {
        let during = if at_start < to {
            format!(
                " (the part after {} passed it while the capture ran)",
                at_start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        } else {
            String::new()
        };
        format!(
            "this part of the window is older than the backend's retention ({kept}); its traces may already be deleted{during}"
        )
    } else {
        format!(
            "this part of the window passed the backend's retention ({kept}) while the capture ran ({} to {}); its traces may have been deleted before they were read",
            started.format("%H:%M:%S%.3f"),
            ended.format("%H:%M:%S%.3f")
        )
    };
    Some(Gap {
        source: source.to_owned(),
        kind: "expired".into(),
        service: None,
        purpose: None,
        start: Some(from),
        end: Some(at_end.min(to)),
        message,
    })
}

/// The whole window as a gap: the backend could not be reached at all.
pub fn unavailable_gap(source: &str, what: &str, plan: &CapturePlan, message: &str) -> Gap {
    Gap {
        source: source.to_owned(),
        kind: "backend_unavailable".into(),
        service: None,
        purpose: None,
        start: Some(plan.window.start()),
        end: Some(plan.window.end()),
        message: format!("{what} could not be queried: {message}"),
    }
}

/// Whether the backend lists `service` (ignoring case: Zipkin lower-cases service names).
fn knows(known: &std::collections::BTreeSet<String>, service: &str) -> bool {
    known.contains(service) || known.iter().any(|k| k.eq_ignore_ascii_case(service))
}

/// Notes the services in scope that the backend does not list (asked for anyway: the list may
/// lag behind the data).
pub fn note_unknown_services(
    notes: &mut std::collections::BTreeMap<String, usize>,
    services: &[String],
    known: &std::collections::BTreeSet<String>,
) {
    let unknown: Vec<&str> = services
        .iter()
        .filter(|s| !knows(known, s))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        notes.insert(
            format!("services the backend does not list: {}", unknown.join(", ")),
            unknown.len(),
        );
    }
}

/// A gap for each service in scope that the backend does not list and of which nothing was
/// found: most likely a misspelt name, and the capture must not look complete.
pub fn unknown_service_gaps(
    source: &str,
    plan: &CapturePlan,
    known: &std::collections::BTreeSet<String>,
    found: &[(Trace, Purposes)],
) -> Vec<Gap> {
    plan.services
        .iter()
        .filter(|s| !knows(known, s))
        .filter(|s| {
            !found.iter().any(|(t, _)| {
                t.spans
                    .iter()
                    .any(|sp| sp.service().eq_ignore_ascii_case(s))
            })
        })
        .map(|s| Gap {
            source: source.to_owned(),
            kind: "unknown_service".into(),
            service: Some(s.clone()),
            purpose: None,
            start: Some(plan.window.start()),
            end: Some(plan.window.end()),
            message: format!(
                "the backend does not know the service {s:?} and nothing was found for it (is the name right?)"
            ),
        })
        .collect()
}

/// Runs every search of the plan for each scope, concurrently across scopes; what it learnt
/// about the server's filters goes to `notes`.
pub async fn sweep<B: Searches>(
    backend: &B,
    scopes: &[Option<String>],
    plan: &CapturePlan,
    limits: &SweepLimits,
    notes: &mut BTreeMap<String, usize>,
) -> Swept {
    let caps = CapKnowledge::default();
    let distrust = Distrust::default();
    let sampled = SampleTally::default();
    let mut per_scope = futures::future::join_all(scopes.iter().map(|scope| {
        sweep_scope(
            backend,
            scope.as_deref(),
            plan,
            limits,
            &caps,
            &distrust,
            &sampled,
        )
    }))
    .await;
    // Filters are judged on what every scope saw. Sample traces that match a purpose in their
    // scope but that its filtered search did not return distrust the filter; and a scope whose
    // filtered search finished before the filter was distrusted is asked again without it.
    for (scope, ((traces, _), filtered)) in scopes.iter().zip(&per_scope) {
        for purpose in [Purpose::Errors, Purpose::Slow] {
            let slot = Distrust::slot(purpose);
            if filtered[slot] {
                let missed = missed_by_filter(traces, scope.as_deref(), purpose, plan);
                distrust.missed[slot].fetch_add(missed, Ordering::Relaxed);
            }
        }
    }
    for (scope, ((traces, gaps), filtered)) in scopes.iter().zip(per_scope.iter_mut()) {
        for purpose in [Purpose::Errors, Purpose::Slow] {
            let slot = Distrust::slot(purpose);
            if !(filtered[slot] && distrust.distrusted(purpose)) {
                continue;
            }
            distrust.redone[slot].fetch_add(1, Ordering::Relaxed);
            let service = scope.as_deref();
            let (found, shortfalls) = exhaustive_window(
                backend, service, purpose, plan, limits, &caps, &distrust, false,
            )
            .await;
            gaps.retain(|g| !(g.purpose == Some(purpose) && g.service.as_deref() == service));
            file_found(
                (traces, gaps),
                (found, shortfalls),
                limits,
                service,
                purpose,
            );
        }
    }
    distrust.notes(notes);
    sampled.notes(notes);
    let mut traces = Vec::new();
    let mut gaps = Vec::new();
    for ((t, g), _) in per_scope {
        traces.extend(t);
        gaps.extend(g);
    }
    (traces, gaps)
}

/// Adds what an exhaustive search for `purpose` in `service` found: its traces, tagged with the
/// purpose, and its shortfalls as gaps.
fn file_found(
    (traces, gaps): (&mut Vec<(Trace, Purposes)>, &mut Vec<Gap>),
    (found, shortfalls): (Vec<Trace>, Vec<search::Shortfall>),
    limits: &SweepLimits,
    service: Option<&str>,
    purpose: Purpose,
) {
    traces.extend(
        found
            .into_iter()
            .map(|t| (t, Purposes::default().with(purpose))),
    );
    gaps.extend(shortfalls.into_iter().map(|s| {
        let kind = super::failure_kind(&s.message, s.kind.gap_kind());
        gap(
            limits, service, purpose, s.start_ns, s.end_ns, s.message, kind,
        )
    }));
}

/// Sample traces of `scope` that match `purpose` there (a span of the scope's service, starting
/// inside the window, failing or as slow as the threshold, as the servers' filters match) but
/// that the purpose's search did not return.
fn missed_by_filter(
    traces: &[(Trace, Purposes)],
    scope: Option<&str>,
    purpose: Purpose,
    plan: &CapturePlan,
) -> usize {
    let found: std::collections::HashSet<crate::model::TraceId> = traces
        .iter()
        .filter(|(_, p)| p.has(purpose))
        .map(|(t, _)| t.id)
        .collect();
    let slow_ns = plan.slow_threshold_ns();
    traces
        .iter()
        .filter(|(t, p)| p.has(Purpose::Sample) && !found.contains(&t.id))
        .filter(|(t, _)| {
            t.spans.iter().any(|s| {
                scope.is_none_or(|sc| s.service().eq_ignore_ascii_case(sc))
                    && plan.window.contains_ns(s.start_ns)
                    && match purpose {
                        Purpose::Errors => s.is_error(),
                        _ => s.duration_ns() >= slow_ns,
                    }
            })
        })
        .count()
}

/// `[start, end)` cut into pieces of at most `max`.
fn chunks(start: i64, end: i64, max: Option<i64>) -> Vec<(i64, i64)> {
    let Some(max) = max.filter(|m| *m > 0) else {
        return vec![(start, end)];
    };
    let mut out = Vec::new();
    let mut s = start;
    while s < end {
        let e = s.saturating_add(max).min(end);
        out.push((s, e));
        s = e;
    }
    out
}

/// Every trace of the window for one scope and purpose, with the server's filter or without.
#[allow(clippy::too_many_arguments)]
async fn exhaustive_window<B: Searches>(
    backend: &B,
    service: Option<&str>,
    purpose: Purpose,
    plan: &CapturePlan,
    limits: &SweepLimits,
    caps: &CapKnowledge,
    distrust: &Distrust,
    server_filter: bool,
) -> (Vec<Trace>, Vec<search::Shortfall>) {
    let inner = ask(
        backend,
        plan,
        service,
        purpose,
        limits.query_limit,
        server_filter,
    );
    let q = Watched {
        inner,
        purpose,
        // Only a filtered search is watched: an unfiltered one matches everything.
        distrust: server_filter.then_some(distrust),
    };
    let mut traces = Vec::new();
    let mut shortfalls = Vec::new();
    for (start, end) in chunks(
        plan.window.start_ns(),
        plan.window.end_ns(),
        limits.max_range_ns,
    ) {
        let bounds = search::Bounds {
            limit: limits.query_limit,
            min_slice_ns: limits.min_slice_ns,
            verify_hidden_caps: limits.verify_hidden_caps,
        };
        let found = search::exhaustive(&q, start, end, bounds, caps).await;
        traces.extend(found.traces);
        shortfalls.extend(found.shortfalls);
    }
    (traces, shortfalls)
}

async fn sweep_scope<B: Searches>(
    backend: &B,
    service: Option<&str>,
    plan: &CapturePlan,
    limits: &SweepLimits,
    caps: &CapKnowledge,
    distrust: &Distrust,
    sampled: &SampleTally,
) -> (Swept, [bool; 2]) {
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    // Whether what was kept for each purpose (errors, slow) came from a filtered search.
    let mut kept_filtered = [false; 2];
    for purpose in [Purpose::Errors, Purpose::Slow] {
        let filtered = !distrust.distrusted(purpose);
        let (mut traces, mut shortfalls) = exhaustive_window(
            backend, service, purpose, plan, limits, caps, distrust, filtered,
        )
        .await;
        if filtered && distrust.distrusted(purpose) {
            distrust.redone[Distrust::slot(purpose)].fetch_add(1, Ordering::Relaxed);
            (traces, shortfalls) = exhaustive_window(
                backend, service, purpose, plan, limits, caps, distrust, false,
            )
            .await;
        } else {
            kept_filtered[Distrust::slot(purpose)] = filtered;
        }
        file_found(
            (&mut out, &mut gaps),
            (traces, shortfalls),
            limits,
            service,
            purpose,
        );
    }
    if plan.sample_per_minute > 0 {
        // A bounded sample of all traffic in each slice: never split (a sample may be partial;
        // how many were asked for and got is noted).
        let (slices, per_slice) = sample_slices(
            (plan.window.start_ns(), plan.window.end_ns()),
            plan.sample_per_minute,
            limits.query_limit,
        );
        let q = ask(backend, plan, service, Purpose::Sample, per_slice, false);
        let pages = futures::future::join_all(slices.iter().map(|&(s, e)| {
            let q = &q;
            async move { (s, e, q.query(s, e, Reason::Sample).await) }
        }))
        .await;
        for (s, e, page) in pages {
            sampled.slices.fetch_add(1, Ordering::Relaxed);
            sampled.asked.fetch_add(per_slice, Ordering::Relaxed);
            match page {
                Ok(p) => {
                    sampled.got.fetch_add(p.traces.len(), Ordering::Relaxed);
                    out.extend(
                        p.traces
                            .into_iter()
                            .map(|t| (t, Purposes::default().with(Purpose::Sample))),
                    );
                }
                Err(message) => {
                    let kind = super::failure_kind(&message, "query_failed");
                    gaps.push(gap(limits, service, Purpose::Sample, s, e, message, kind))
                }
            }
        }
    }
    if plan.sample_per_minute > 0 {
        recovery_probe(
            backend,
            service,
            plan,
            limits,
            sampled,
            (&mut out, &mut gaps),
        )
        .await;
    }
    if let Some(baseline) = plan.baseline {
        let quota = limits.baseline_quota.max(1);
        let slices = quota.min(6) as i64;
        let per_slice = quota.div_ceil(slices as usize);
        let (start, end) = (baseline.start_ns(), baseline.end_ns());
        let step = (end - start) / slices;
        let q = ask(backend, plan, service, Purpose::Baseline, per_slice, true);
        let pages = futures::future::join_all((0..slices).map(|i| {
            let s = start + i * step;
            let e = if i == slices - 1 { end } else { s + step };
            let q = &q;
            async move { (s, e, q.query(s, e, Reason::Sample).await) }
        }))
        .await;
        for (s, e, page) in pages {
            match page {
                Ok(p) => out.extend(
                    p.traces
                        .into_iter()
                        .map(|t| (t, Purposes::default().with(Purpose::Baseline))),
                ),
                Err(message) => {
                    let kind = super::failure_kind(&message, "query_failed");
                    gaps.push(gap(limits, service, Purpose::Baseline, s, e, message, kind))
                }
            }
        }
    }
    ((out, gaps), kept_filtered)
}

/// The recovery probe's slices: recovery is known to within this much.
const PROBE_SLICE_NS: i64 = 5_000_000_000;
/// Slices asked at most: after a minute without a success the sample's minutes tell.
const PROBE_SLICES: i64 = 12;
/// Traces asked per slice.
const PROBE_LIMIT: usize = 10;

/// Asks for the traffic right after the scope's last error, in 5-second slices, until a slice
/// holds a successful span of the scope's service: the sample alone places recovery only within
/// its minute (and leans to the traces a backend returns first).
async fn recovery_probe<B: Searches>(
    backend: &B,
    service: Option<&str>,
    plan: &CapturePlan,
    limits: &SweepLimits,
    sampled: &SampleTally,
    (out, gaps): (&mut Vec<(Trace, Purposes)>, &mut Vec<Gap>),
) {
    let ours =
        |s: &crate::model::Span| service.is_none_or(|sc| s.service().eq_ignore_ascii_case(sc));
    let Some(last) = out
        .iter()
        .filter(|(_, p)| p.has(Purpose::Errors))
        .flat_map(|(t, _)| t.spans.iter())
        .filter(|s| s.is_error() && ours(s) && plan.window.contains_ns(s.start_ns))
        .map(|s| s.end_ns)
        .max()
    else {
        return;
    };
    let q = ask(
        backend,
        plan,
        service,
        Purpose::Recovery,
        PROBE_LIMIT,
        false,
    );
    let end = plan.window.end_ns();
    for k in 0..PROBE_SLICES {
        let s = last + k * PROBE_SLICE_NS;
        if s >= end {
            break;
        }
        let e = (s + PROBE_SLICE_NS).min(end);
        sampled.probes.fetch_add(1, Ordering::Relaxed);
        match q.query(s, e, Reason::Sample).await {
            Ok(p) => {
                let recovered = p.traces.iter().any(|t| {
                    t.spans
                        .iter()
                        .any(|sp| ours(sp) && !sp.is_error() && sp.start_ns > last)
                });
                sampled.probed.fetch_add(p.traces.len(), Ordering::Relaxed);
                out.extend(
                    p.traces
                        .into_iter()
                        .map(|t| (t, Purposes::default().with(Purpose::Recovery))),
                );
                if recovered {
                    break;
                }
            }
            Err(message) => {
                let kind = super::failure_kind(&message, "query_failed");
                gaps.push(gap(limits, service, Purpose::Recovery, s, e, message, kind));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{chunks, sample_slices};

    #[test]
    fn the_sample_is_asked_per_minute_and_long_windows_in_60_slices() {
        const MIN: i64 = 60_000_000_000;
        let (slices, per) = sample_slices((0, 30 * MIN), 20, 500);
        assert_eq!((slices.len(), per), (30, 20));
        assert_eq!(slices[29], (29 * MIN, 30 * MIN));
        // 24 h: 60 slices of 24 minutes, each asking for 24 × 20 = 480.
        let (slices, per) = sample_slices((0, 1440 * MIN), 20, 500);
        assert_eq!((slices.len(), per), (60, 480));
        // Never more than the query limit per search.
        let (_, per) = sample_slices((0, 1440 * MIN), 100, 500);
        assert_eq!(per, 500);
    }

    #[test]
    fn long_windows_are_cut_into_pieces_no_longer_than_the_maximum() {
        assert_eq!(chunks(0, 10, Some(4)), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(chunks(0, 10, None), vec![(0, 10)]);
    }
}
