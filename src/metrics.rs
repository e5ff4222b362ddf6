//! The process's Prometheus metrics, through `prometheus-client`: one set of families, updated
//! wherever the work happens (captures, backend requests, the spool, the intake's routes), and two
//! registries that expose them: the worker's on `metrics.listen` and the intake's on its own
//! listener. Every name starts with `evidence_locker_`; counters end in `_total`, durations in
//! `_seconds`, sizes in `_bytes`. Label values come from fixed sets (outcomes, gap kinds,
//! backend kinds, purposes, HTTP statuses, route templates), never from request data.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A metric's labels: fixed names, values from fixed sets.
pub type Labels = Vec<(&'static str, String)>;

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The OpenMetrics text format `prometheus-client` writes (Prometheus reads it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn capture_buckets() -> Histogram {
    // 1 s … 4.5 h
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

fn request_buckets() -> Histogram {
    // 5 ms … 82 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn answer_buckets() -> Histogram {
    // 1 ms … 8 s (the intake answers within 5 s)
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Every family this program updates.
pub struct Metrics {
    pub build_info: Family<Labels, Gauge>,
    // worker
    pub incidents_received: Counter,
    pub messages: Family<Labels, Counter>,
    pub captures: Family<Labels, Counter>,
    pub captures_failed: Family<Labels, Counter>,
    pub dead_letters: Family<Labels, Counter>,
    pub partial_captures: Family<Labels, Counter>,
    pub capture_duration: Histogram,
    pub captures_in_flight: Gauge,
    pub stored_bytes: Counter,
    pub upload_failures: Counter,
    pub webhook_deliveries: Family<Labels, Counter>,
    pub spool_bytes: Gauge,
    pub spool_bundles: Gauge,
    pub spool_max_bytes: Gauge,
    pub retention_margin: Gauge<f64, AtomicU64>,
    pub retention_margin_warnings: Counter,
    pub worker_nats_connected: Gauge,
    pub pull_failing: Gauge,
    pub store_reachable: Gauge,
    pub upload_failing: Gauge,
    // captures (worker and collect)
    pub backend_requests: Family<Labels, Counter>,
    pub backend_request_duration: Histograms,
    pub traces_captured: Family<Labels, Counter>,
    pub spans_captured: Counter,
    // intake
    pub intake_requests: Family<Labels, Counter>,
    pub intake_request_duration: Histograms,
    pub intake_incidents: Family<Labels, Counter>,
    pub intake_ignored: Counter,
    pub intake_duplicate_deliveries: Counter,
    pub intake_nats_connected: Gauge,
    pub report_links: Family<Labels, Counter>,
    /// When the window of each capture in flight starts to leave a backend's retention.
    margins: Mutex<BTreeMap<u64, DateTime<Utc>>>,
    next_margin: AtomicU64,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            build_info: Family::default(),
            incidents_received: Counter::default(),
            messages: Family::default(),
            captures: Family::default(),
            captures_failed: Family::default(),
            dead_letters: Family::default(),
            partial_captures: Family::default(),
            capture_duration: capture_buckets(),
            captures_in_flight: Gauge::default(),
            stored_bytes: Counter::default(),
            upload_failures: Counter::default(),
            webhook_deliveries: Family::default(),
            spool_bytes: Gauge::default(),
            spool_bundles: Gauge::default(),
            spool_max_bytes: Gauge::default(),
            retention_margin: Gauge::default(),
            retention_margin_warnings: Counter::default(),
            worker_nats_connected: Gauge::default(),
            pull_failing: Gauge::default(),
            store_reachable: Gauge::default(),
            upload_failing: Gauge::default(),
            backend_requests: Family::default(),
            backend_request_duration: Family::new_with_constructor(request_buckets),
            traces_captured: Family::default(),
            spans_captured: Counter::default(),
            intake_requests: Family::default(),
            intake_request_duration: Family::new_with_constructor(answer_buckets),
            intake_incidents: Family::default(),
            intake_ignored: Counter::default(),
            intake_duplicate_deliveries: Counter::default(),
            intake_nats_connected: Gauge::default(),
            report_links: Family::default(),
            margins: Mutex::new(BTreeMap::new()),
            next_margin: AtomicU64::new(0),
        };
        m.build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("rust_version", env!("CARGO_PKG_RUST_VERSION").to_owned()),
            ])
            .set(1);
        // Every known label value starts at 0, so that rate() and alerts see the first event.
        let known: [(&Family<Labels, Counter>, &str, &[&str]); 7] = [
            (
                &m.messages,
                "outcome",
                &[
                    "stored",
                    "already_captured",
                    "dead_lettered",
                    "retried",
                    "handed_back",
                    "waiting",
                ],
            ),
            (&m.captures, "status", &["complete", "partial"]),
            (&m.captures_failed, "kind", &["transient", "permanent"]),
            (
                &m.dead_letters,
                "reason",
                &["refused", "permanent", "max_deliver", "shutdown"],
            ),
            (&m.webhook_deliveries, "result", &["delivered", "failed"]),
            (
                &m.partial_captures,
                "gap",
                &[
                    "backend_unavailable",
                    "query_failed",
                    "truncated",
                    "expired",
                    "limit_reached",
                    "unreadable_spans",
                    "server_error",
                ],
            ),
            (
                &m.report_links,
                "result",
                &["redirected", "served", "refused", "missing", "failed"],
            ),
        ];
        for (family, key, values) in known {
            for v in values {
                let _ = family.get_or_create(&vec![(key, (*v).to_owned())]);
            }
        }
        for source in ["alertmanager", "pagerduty", "generic"] {
            for subject in ["incidents.declared", "incidents.resolved"] {
                for duplicate in ["false", "true"] {
                    let _ = m.intake_incidents.get_or_create(&vec![
                        ("source", source.to_owned()),
                        ("subject", subject.to_owned()),
                        ("duplicate", duplicate.to_owned()),
                    ]);
                }
            }
        }
        m
    }

    /// The worker's registry, rendered.
    pub fn render_worker(&self) -> String {
        let mut r = Registry::with_prefix("evidence_locker");
        self.register_common(&mut r);
        r.register(
            "worker_incidents_received",
            "Incident messages delivered to this worker (each delivery counts)",
            self.incidents_received.clone(),
        );
        r.register("worker_messages", "Incident messages handled, by outcome (stored, already_captured, dead_lettered, retried, handed_back, waiting)", self.messages.clone());
        r.register(
            "worker_captures",
            "Bundles captured, by status (complete, partial)",
            self.captures.clone(),
        );
        r.register(
            "worker_captures_failed",
            "Capture attempts that failed, by kind (transient: retried; permanent: dead-lettered)",
            self.captures_failed.clone(),
        );
        r.register("worker_dead_letters", "Incident messages dead-lettered on incidents.deadletter, by reason (refused, permanent, max_deliver, shutdown)", self.dead_letters.clone());
        r.register("worker_partial_captures", "Partial captures, by the kind of gap they have (a capture counts once under each of its kinds)", self.partial_captures.clone());
        r.register(
            "worker_capture_duration_seconds",
            "Time from a message's delivery to its bundle being stored",
            self.capture_duration.clone(),
        );
        r.register(
            "worker_captures_in_flight",
            "Messages being worked on",
            self.captures_in_flight.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes of bundle files written to the store",
            self.stored_bytes.clone(),
        );
        r.register(
            "worker_upload_failures",
            "Bundle uploads that failed after their retries (the bundle stays spooled)",
            self.upload_failures.clone(),
        );
        r.register(
            "worker_webhook_deliveries",
            "Notification webhook posts, by result (delivered, failed)",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "worker_spool_bytes",
            "Bytes in the spool (bundles waiting to be stored)",
            self.spool_bytes.clone(),
        );
        r.register(
            "worker_spool_bundles",
            "Bundles waiting in the spool",
            self.spool_bundles.clone(),
        );
        r.register(
            "worker_spool_max_bytes",
            "The spool's bound (worker.spool_max)",
            self.spool_max_bytes.clone(),
        );
        // Only while a capture is in flight: no series otherwise, so that no alert fires on a
        // margin nothing is waiting for.
        if self.refresh_margin() {
            r.register(
                "worker_retention_margin_seconds",
                "Time left before the oldest part of the most urgent capture in flight leaves a backend's retention (negative once expired; absent with none in flight)",
                self.retention_margin.clone(),
            );
        }
        r.register("worker_retention_margin_warnings", "Captures that started with less than capture.retention_margin_warn before their window's oldest part leaves a backend's retention", self.retention_margin_warnings.clone());
        r.register(
            "worker_nats_connected",
            "1 while NATS is connected",
            self.worker_nats_connected.clone(),
        );
        r.register(
            "worker_pull_failing",
            "1 while pulling incident messages from the consumer fails",
            self.pull_failing.clone(),
        );
        r.register(
            "worker_store_reachable",
            "1 while the store answered the last check (every 30 s)",
            self.store_reachable.clone(),
        );
        r.register(
            "worker_upload_failing",
            "1 from a failed bundle upload until one succeeds",
            self.upload_failing.clone(),
        );
        r.register("backend_requests", "Requests to the tracing backends (each attempt), by backend kind, purpose and HTTP status (\"error\" without an answer)", self.backend_requests.clone());
        r.register(
            "backend_request_duration_seconds",
            "Time of each request to a tracing backend, by backend kind and purpose",
            self.backend_request_duration.clone(),
        );
        r.register(
            "traces_captured",
            "Traces written to bundles, by file (errors, slow, baseline, sample, context)",
            self.traces_captured.clone(),
        );
        r.register(
            "spans_captured",
            "Spans written to bundles",
            self.spans_captured.clone(),
        );
        text(&r)
    }

    /// The intake's registry, rendered.
    pub fn render_intake(&self) -> String {
        let mut r = Registry::with_prefix("evidence_locker");
        self.register_common(&mut r);
        r.register(
            "intake_requests",
            "HTTP requests answered, by route (its template) and status",
            self.intake_requests.clone(),
        );
        r.register(
            "intake_request_duration_seconds",
            "Time to answer, by route",
            self.intake_request_duration.clone(),
        );
        r.register("intake_incidents", "Incident messages acknowledged by JetStream, by source (alertmanager, pagerduty, generic), subject and duplicate (\"true\": dropped as a duplicate)", self.intake_incidents.clone());
        r.register(
            "intake_ignored",
            "Webhooks answered 2xx without an incident (other event types, unmatched groups)",
            self.intake_ignored.clone(),
        );
        r.register(
            "intake_duplicate_deliveries",
            "PagerDuty deliveries seen before (X-Webhook-Id)",
            self.intake_duplicate_deliveries.clone(),
        );
        r.register(
            "intake_nats_connected",
            "1 while NATS is connected",
            self.intake_nats_connected.clone(),
        );
        r.register("intake_report_links", "Stable report links followed, by result (redirected, served, refused, missing, failed)", self.report_links.clone());
        text(&r)
    }

    fn register_common(&self, r: &mut Registry) {
        r.register(
            "build_info",
            "1, labelled with the version that runs",
            self.build_info.clone(),
        );
    }

    /// Counts one labelled event.
    pub fn inc(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) {
        family.get_or_create(&owned(labels)).inc();
    }

    /// Records a request to a tracing backend: `status` is the HTTP status, `None` without an
    /// answer.
    pub fn backend_request(&self, kind: &str, purpose: &str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.backend_requests
            .get_or_create(&vec![
                ("backend", kind.to_owned()),
                ("purpose", purpose.to_owned()),
                ("status", status),
            ])
            .inc();
        self.backend_request_duration
            .get_or_create(&vec![
                ("backend", kind.to_owned()),
                ("purpose", purpose.to_owned()),
            ])
            .observe(took.as_secs_f64());
    }

    /// Counts what a bundle holds.
    pub fn captured(&self, counts: &crate::bundle::Counts) {
        for (kind, n) in [
            ("errors", counts.error_traces),
            ("slow", counts.slow_traces),
            ("baseline", counts.baseline_traces),
            ("sample", counts.sample_traces),
            ("context", counts.context_traces),
        ] {
            self.traces_captured
                .get_or_create(&vec![("kind", kind.to_owned())])
                .inc_by(n as u64);
        }
        self.spans_captured.inc_by(counts.spans as u64);
    }

    /// Watches a capture's retention margin until the returned guard is dropped.
    pub fn watch_margin(&'static self, expires: DateTime<Utc>) -> MarginWatch {
        let id = self
            .next_margin
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.margins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, expires);
        self.refresh_margin();
        MarginWatch { id, metrics: self }
    }

    /// Sets the margin gauge from the captures in flight; false when there is none.
    fn refresh_margin(&self) -> bool {
        let soonest = self
            .margins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied();
        if let Some(t) = soonest {
            self.retention_margin
                .set((t - Utc::now()).num_milliseconds() as f64 / 1000.0);
        }
        soonest.is_some()
    }
}

/// Stops watching a capture's retention margin when dropped.
pub struct MarginWatch {
    id: u64,
    metrics: &'static Metrics,
}

impl Drop for MarginWatch {
    fn drop(&mut self) {
        self.metrics
            .margins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.metrics.refresh_margin();
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn text(r: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_the_usual_suffixes() {
        let m = Metrics::new();
        m.backend_request("jaeger", "search", Some(200), Duration::from_millis(12));
        Metrics::inc(&m.captures, &[("status", "complete")]);
        m.stored_bytes.inc_by(10);
        let text = m.render_worker();
        let families = |t: &str| t.lines().filter(|l| l.starts_with("# TYPE ")).count();
        // A family is written once it has a sample; the README's table lists these (the margin
        // only while a capture is in flight).
        assert_eq!(families(&text), 23, "before a capture is counted");
        m.captured(&crate::bundle::Counts::default());
        assert_eq!(families(&m.render_worker()), 24, "worker families");
        Metrics::inc(&m.report_links, &[("result", "served")]);
        let _ = m
            .intake_request_duration
            .get_or_create(&vec![("route", "/healthz".to_owned())]);
        Metrics::inc(
            &m.intake_requests,
            &[("route", "/healthz"), ("status", "200")],
        );
        assert_eq!(families(&m.render_intake()), 8, "intake families");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("evidence_locker_"), "{line}");
        }
        for name in [
            "evidence_locker_backend_requests_total{backend=\"jaeger\",purpose=\"search\",status=\"200\"} 1",
            "evidence_locker_backend_request_duration_seconds_bucket{",
            "evidence_locker_worker_captures_total{status=\"complete\"} 1",
            "evidence_locker_stored_bytes_total 10",
            "evidence_locker_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn the_margin_is_the_soonest_of_the_captures_in_flight() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let hour = m.watch_margin(Utc::now() + chrono::Duration::hours(1));
        {
            let _ten = m.watch_margin(Utc::now() + chrono::Duration::minutes(10));
            let v = m.retention_margin.get();
            assert!((590.0..=600.0).contains(&v), "{v}");
        }
        let v = m.retention_margin.get();
        assert!((3590.0..=3600.0).contains(&v), "{v}");
        assert!(
            m.render_worker()
                .contains("evidence_locker_worker_retention_margin_seconds 3")
        );
        drop(hour);
        assert!(!m.render_worker().contains("retention_margin_seconds"));
    }
}
