//! The intake's counters, in Prometheus' text format (no dependency needed for a handful of
//! counters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Default)]
struct Counts {
    requests: BTreeMap<(String, u16), u64>,
    published: BTreeMap<(&'static str, bool), u64>,
    ignored: u64,
    duplicate_deliveries: u64,
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn request(&self, route: &str, status: u16) {
        // Unknown paths are folded together so a scanner cannot grow the map.
        let known = [
            "/v1/alertmanager",
            "/v1/pagerduty",
            "/v1/incidents",
            "/healthz",
            "/readyz",
            "/metrics",
        ];
        let route = if known.contains(&route) {
            route
        } else {
            "other"
        };
        self.with(|c| *c.requests.entry((route.to_owned(), status)).or_default() += 1);
    }

    pub fn published(&self, subject: &'static str, duplicate: bool) {
        self.with(|c| *c.published.entry((subject, duplicate)).or_default() += 1);
    }

    pub fn ignored(&self) {
        self.with(|c| c.ignored += 1);
    }

    pub fn duplicate_delivery(&self) {
        self.with(|c| c.duplicate_deliveries += 1);
    }

    pub fn render(&self, nats_connected: bool) -> String {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP evidence_locker_intake_requests_total HTTP requests answered, by route and status.\n# TYPE evidence_locker_intake_requests_total counter\n");
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "evidence_locker_intake_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP evidence_locker_intake_published_total Incident messages acknowledged by JetStream (duplicate=\"true\": dropped as a duplicate).\n# TYPE evidence_locker_intake_published_total counter\n");
        for ((subject, dup), n) in &c.published {
            let _ = writeln!(
                out,
                "evidence_locker_intake_published_total{{subject=\"{subject}\",duplicate=\"{dup}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP evidence_locker_intake_ignored_total Webhooks answered 2xx without an incident (other event types, unmatched groups).\n# TYPE evidence_locker_intake_ignored_total counter\nevidence_locker_intake_ignored_total {}",
            c.ignored
        );
        let _ = writeln!(
            out,
            "# HELP evidence_locker_intake_duplicate_deliveries_total PagerDuty deliveries seen before (X-Webhook-Id).\n# TYPE evidence_locker_intake_duplicate_deliveries_total counter\nevidence_locker_intake_duplicate_deliveries_total {}",
            c.duplicate_deliveries
        );
        let _ = writeln!(
            out,
            "# HELP evidence_locker_intake_nats_connected 1 while NATS is connected.\n# TYPE evidence_locker_intake_nats_connected gauge\nevidence_locker_intake_nats_connected {}",
            u8::from(nats_connected)
        );
        out
    }
}
