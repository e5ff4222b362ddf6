//! The intake's side of the process's metrics (`crate::metrics`): label values folded into
//! fixed sets, so that no request can add a series.

use crate::metrics::{Metrics, get};

/// The routes a request is counted under; anything else is `other`.
const ROUTES: [&str; 7] = [
    "/v1/alertmanager",
    "/v1/pagerduty",
    "/v1/incidents",
    "/v1/bundles/{incident}/{capture}/report",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Counts an answer under its route template.
pub fn request(route: Option<&str>, status: u16, took: std::time::Duration) {
    let route = route
        .filter(|r| ROUTES.contains(r))
        .unwrap_or("other")
        .to_owned();
    let m = get();
    m.intake_requests
        .get_or_create(&vec![
            ("route", route.clone()),
            ("status", status.to_string()),
        ])
        .inc();
    m.intake_request_duration
        .get_or_create(&vec![("route", route)])
        .observe(took.as_secs_f64());
}

/// Counts an incident JetStream acknowledged.
pub fn published(source: Option<&str>, subject: &'static str, duplicate: bool) {
    // The generic route's `source` is the sender's text: folded, so it adds no series.
    let source = source
        .filter(|s| matches!(*s, "alertmanager" | "pagerduty"))
        .unwrap_or("generic");
    Metrics::inc(
        &get().intake_incidents,
        &[
            ("source", source),
            ("subject", subject),
            ("duplicate", if duplicate { "true" } else { "false" }),
        ],
    );
}

pub fn ignored() {
    get().intake_ignored.inc();
}

pub fn duplicate_delivery() {
    get().intake_duplicate_deliveries.inc();
}

/// The page behind `/metrics`.
pub fn render(nats_connected: bool) -> String {
    let m = get();
    m.intake_nats_connected.set(i64::from(nats_connected));
    m.render_intake()
}
