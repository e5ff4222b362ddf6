//! The worker's counters and gauges in Prometheus' text format, served with `/healthz` and
//! `/readyz` on `metrics.listen`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Stored,
    AlreadyCaptured,
    DeadLettered,
    Retried,
    HandedBack,
    /// Not due yet: handed back until its window has passed.
    Waiting,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyCaptured => "already_captured",
            Self::DeadLettered => "dead_lettered",
            Self::Retried => "retried",
            Self::HandedBack => "handed_back",
            Self::Waiting => "waiting",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    outcomes: Mutex<BTreeMap<Outcome, u64>>,
    /// Partial captures stored, by gap kind (a capture counts once under each kind it has).
    partial: Mutex<BTreeMap<String, u64>>,
    /// 1 while pulling from the consumer fails.
    pub pull_failing: AtomicU64,
    pub webhook_failures: AtomicU64,
    pub upload_failures: AtomicU64,
    pub in_flight: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_bundles: AtomicU64,
    pub spool_max: AtomicU64,
    /// Captures that started with less than `capture.retention_margin_warn` to spare.
    pub retention_margin_warnings: AtomicU64,
    /// The margin the last capture started with, in seconds (0 when already expired).
    pub retention_margin_seconds: AtomicU64,
}

impl Metrics {
    pub fn outcome(&self, o: Outcome) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(o)
            .or_default() += 1;
    }

    /// Counts a partial capture under each of its gaps' kinds.
    pub fn partial(&self, gaps: &[crate::capture::Gap]) {
        let kinds: std::collections::BTreeSet<&str> =
            gaps.iter().map(|g| g.kind.as_str()).collect();
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        for k in kinds {
            *partial.entry(k.to_owned()).or_default() += 1;
        }
    }

    pub fn render(&self, nats_connected: bool) -> String {
        let mut out = String::from(
            "# HELP evidence_locker_worker_messages_total Incident messages handled, by outcome.\n# TYPE evidence_locker_worker_messages_total counter\n",
        );
        for (o, n) in self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "evidence_locker_worker_messages_total{{outcome=\"{}\"}} {n}",
                o.name()
            );
        }
        out.push_str("# HELP evidence_locker_worker_partial_captures_total Partial captures stored, by the kind of gap they have.\n# TYPE evidence_locker_worker_partial_captures_total counter\n");
        for (kind, n) in self
            .partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "evidence_locker_worker_partial_captures_total{{gap=\"{kind}\"}} {n}"
            );
        }
        let gauges: [(&str, &str, &str, u64); 10] = [
            (
                "retention_margin_warnings_total",
                "counter",
                "Captures that started with less than capture.retention_margin_warn before their window's oldest part leaves a backend's retention.",
                self.retention_margin_warnings.load(Ordering::Relaxed),
            ),
            (
                "retention_margin_seconds",
                "gauge",
                "Time the last capture had left before its window's oldest part leaves a backend's retention.",
                self.retention_margin_seconds.load(Ordering::Relaxed),
            ),
            (
                "upload_failures_total",
                "counter",
                "Bundle uploads that failed after their retries (the bundle stays spooled).",
                self.upload_failures.load(Ordering::Relaxed),
            ),
            (
                "webhook_failures_total",
                "counter",
                "Webhook notifications that could not be delivered.",
                self.webhook_failures.load(Ordering::Relaxed),
            ),
            (
                "in_flight",
                "gauge",
                "Messages being worked on.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "spool_bytes",
                "gauge",
                "Bytes in the spool (bundles waiting to be stored).",
                self.spool_bytes.load(Ordering::Relaxed),
            ),
            (
                "spool_bundles",
                "gauge",
                "Bundles waiting in the spool.",
                self.spool_bundles.load(Ordering::Relaxed),
            ),
            (
                "spool_max_bytes",
                "gauge",
                "The spool's bound (worker.spool_max).",
                self.spool_max.load(Ordering::Relaxed),
            ),
            (
                "pull_failing",
                "gauge",
                "1 while pulling incident messages from the consumer fails.",
                self.pull_failing.load(Ordering::Relaxed),
            ),
            (
                "nats_connected",
                "gauge",
                "1 while NATS is connected.",
                u64::from(nats_connected),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP evidence_locker_worker_{name} {help}\n# TYPE evidence_locker_worker_{name} {kind}\nevidence_locker_worker_{name} {v}"
            );
        }
        out
    }
}
