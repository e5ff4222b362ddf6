//! `intake`: the HTTP front door alerting already knows how to call. Alertmanager and PagerDuty
//! V3 webhooks and plain incident JSON become incident messages on JetStream, published with a
//! `Nats-Msg-Id` (`<subject>:<incident id>`) so JetStream drops duplicates, and answered 202 only
//! once JetStream acknowledged them. NATS down or slow → 503 (both senders retry 5xx); malformed →
//! 400; bad credentials or signature → 401; too large → 413; every answer within 5 s.

pub mod alertmanager;
pub mod links;
mod metrics;
pub mod pagerduty;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::json;
use sha2::Digest as _;

use crate::config::{IntakeSettings, Settings};
use crate::model::Incident;
use crate::queue::{DECLARED, Queue, QueueError, RESOLVED};
use alertmanager::Outcome;

/// The longest any request may take before it is answered 503.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub use crate::config::parse_size;

/// Webhook delivery ids seen recently (PagerDuty's `X-Webhook-Id`), bounded.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    const MAX: usize = 10_000;

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > Self::MAX
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// What the handlers share.
pub struct Intake {
    settings: IntakeSettings,
    /// Where the bundles are, for the stable report links; `None` when it cannot be set up.
    store: Option<crate::store::Store>,
    /// How far ahead of our clock an incident's times may be.
    clock_skew: chrono::Duration,
    queue: Arc<Queue>,
    deliveries: Mutex<RecentIds>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    answer(status, json!({"error": reason.to_string()}))
}

/// SHA-256 of both, compared without an early exit.
fn same_secret(given: &str, expected: &str) -> bool {
    let a = sha2::Sha256::digest(given.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl Intake {
    /// Checks `Authorization` against the bearer token or basic credentials, when configured.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let s = &self.settings;
        if !s.has_credentials() {
            return true;
        }
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return !s.bearer_token.is_empty() && same_secret(token.trim(), &s.bearer_token);
        }
        if let Some(encoded) = auth.strip_prefix("Basic ") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
            else {
                return false;
            };
            let decoded = String::from_utf8_lossy(&decoded);
            let Some((user, password)) = decoded.split_once(':') else {
                return false;
            };
            return !s.basic_username.is_empty()
                && same_secret(user, &s.basic_username)
                && same_secret(password, &s.basic_password);
        }
        false
    }

    /// Publishes an incident and answers for it.
    async fn publish(&self, subject: &'static str, incident: &Incident) -> Response {
        let payload = match serde_json::to_vec(incident) {
            Ok(p) => p,
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        // The occurrence is part of the id: a recurring alert's next episode is a new message.
        let msg_id = format!("{subject}:{}:{}", incident.id(), incident.occurrence());
        match self
            .queue
            .publish(subject, &msg_id, payload, self.settings.publish_timeout)
            .await
        {
            Ok(p) => {
                metrics::published(incident.source(), subject, p.duplicate);
                tracing::info!(incident = %incident.id(), occurrence = incident.occurrence(), subject, duplicate = p.duplicate, sequence = p.sequence, "incident published");
                answer(
                    StatusCode::ACCEPTED,
                    json!({"incident_id": incident.id(), "occurrence": incident.occurrence(), "subject": subject, "duplicate": p.duplicate}),
                )
            }
            Err(e) => {
                tracing::warn!(incident = %incident.id(), error = %e, "cannot publish the incident");
                let reason = match e {
                    QueueError::Disconnected | QueueError::Timeout(_) => e.to_string(),
                    other => format!("the queue refused the incident: {other}"),
                };
                refuse(StatusCode::SERVICE_UNAVAILABLE, reason)
            }
        }
    }

    async fn outcome(&self, outcome: Outcome) -> Response {
        match outcome {
            Outcome::Ignored(reason) => {
                metrics::ignored();
                answer(StatusCode::OK, json!({"ignored": reason}))
            }
            Outcome::Publish(subject, incident) => self.publish(subject, &incident).await,
        }
    }
}

async fn post_alertmanager(
    State(i): State<Arc<Intake>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !i.authorized(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
    }
    match alertmanager::to_incident(&body, &i.settings, chrono::Utc::now()) {
        Ok(o) => i.outcome(o).await,
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

async fn post_incident(State(i): State<Arc<Intake>>, headers: HeaderMap, body: Bytes) -> Response {
    if !i.authorized(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
    }
    match Incident::parse(&body) {
        Ok(incident) => {
            let late = incident.future_times(chrono::Utc::now() + i.clock_skew);
            if !late.is_empty() {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the incident lies in the future (more than capture.clock_skew ahead): {}",
                        late.join(", ")
                    ),
                );
            }
            let subject = if incident.resolved_at().is_some() {
                RESOLVED
            } else {
                DECLARED
            };
            i.publish(subject, &incident).await
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

async fn post_pagerduty(State(i): State<Arc<Intake>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("x-pagerduty-signature")
        .and_then(|v| v.to_str().ok());
    let allowed = if i.settings.pagerduty_secrets.is_empty() {
        i.authorized(&headers)
    } else {
        pagerduty::signature_ok(signature, &body, &i.settings.pagerduty_secrets)
    };
    if !allowed {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-PagerDuty-Signature",
        );
    }
    let delivery = headers
        .get("x-webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &delivery
        && i.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    {
        metrics::duplicate_delivery();
        return answer(
            StatusCode::ACCEPTED,
            json!({"duplicate": true, "webhook_id": id}),
        );
    }
    let response = match pagerduty::to_incident(&body, &i.settings, chrono::Utc::now()) {
        Ok(o) => i.outcome(o).await,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    // Remembered only once handled: a delivery that failed (503) must be processed on retry.
    if response.status().is_success()
        && let Some(id) = delivery
    {
        i.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(i): State<Arc<Intake>>) -> Response {
    if i.queue.is_connected() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected\n").into_response()
    }
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    expires: Option<i64>,
    signature: Option<String>,
}

/// `GET /v1/bundles/<incident>/<capture>/report`: a signed link (from the worker's
/// notification) or the intake's credentials; then a redirect to a freshly presigned report
/// (S3), or the report itself (a local store). Never cached: the presigned URL is short-lived.
async fn get_report(
    State(i): State<Arc<Intake>>,
    axum::extract::Path((incident, capture)): axum::extract::Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let counted = |result: &'static str, r: Response| {
        crate::metrics::Metrics::inc(&crate::metrics::get().report_links, &[("result", result)]);
        r
    };
    let Ok(id) = crate::model::IncidentId::parse(&incident) else {
        return counted("refused", refuse(StatusCode::NOT_FOUND, "no such incident"));
    };
    if !links::valid_capture(&capture) {
        return counted("refused", refuse(StatusCode::NOT_FOUND, "no such capture"));
    }
    let s = &i.settings;
    let allowed = match (q.expires, q.signature.as_deref()) {
        (Some(expires), Some(sig)) => links::check_signature(
            &s.link_secret,
            id.as_str(),
            &capture,
            expires,
            sig,
            chrono::Utc::now(),
        ),
        _ if headers.contains_key(header::AUTHORIZATION) && s.has_credentials() => {
            if i.authorized(&headers) {
                Ok(())
            } else {
                Err("bad credentials")
            }
        }
        _ => Err("a signed link (expires, signature) or the intake's credentials are required"),
    };
    if let Err(why) = allowed {
        return counted("refused", refuse(StatusCode::UNAUTHORIZED, why));
    }
    let Some(store) = &i.store else {
        return counted(
            "failed",
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is not set up; see the intake's log",
            ),
        );
    };
    match store.manifest(&id, &capture).await {
        Ok(Some(_)) => {}
        Ok(None) => return counted("missing", refuse(StatusCode::NOT_FOUND, "no such bundle")),
        Err(e) => {
            tracing::warn!(incident = %id, capture, error = %e, "cannot reach the store for a report link");
            return counted(
                "failed",
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store does not answer; retry later",
                ),
            );
        }
    }
    let no_store = (header::CACHE_CONTROL, "no-store");
    match store {
        crate::store::Store::S3(s3) => {
            match s3
                .presign(&s3.key(id.as_str(), &capture, "report.html"))
                .await
            {
                Ok(url) => counted(
                    "redirected",
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, url.as_str()), no_store],
                    )
                        .into_response(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot presign a report link");
                    counted(
                        "failed",
                        refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "cannot presign the report; retry later",
                        ),
                    )
                }
            }
        }
        crate::store::Store::Fs(fs) => {
            let path = fs.bundle_dir(&id, &capture).join("report.html");
            match tokio::fs::read(&path).await {
                Ok(html) => counted(
                    "served",
                    (
                        [
                            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                            no_store,
                            // The report is self-contained: nothing else may load.
                            (
                                header::CONTENT_SECURITY_POLICY,
                                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                            ),
                        ],
                        html,
                    )
                        .into_response(),
                ),
                Err(_) => counted(
                    "missing",
                    refuse(StatusCode::NOT_FOUND, "the bundle has no report"),
                ),
            }
        }
    }
}

async fn metrics_page(State(i): State<Arc<Intake>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics::render(i.queue.is_connected()),
    )
        .into_response()
}

/// Bounds every answer to 5 s and counts it.
async fn bounded(req: Request, next: Next) -> Response {
    // The route's template, never the path sent: a scanner cannot add series.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = match tokio::time::timeout(ANSWER_WITHIN, next.run(req)).await {
        Ok(r) => r,
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer within 5 s; retry later",
        ),
    };
    metrics::request(
        route.as_deref(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The intake's routes.
pub fn router(intake: Arc<Intake>) -> Router {
    let limit = parse_size(&intake.settings.body_limit).unwrap_or(256 << 10);
    Router::new()
        .route("/v1/alertmanager", post(post_alertmanager))
        .route("/v1/pagerduty", post(post_pagerduty))
        .route("/v1/incidents", post(post_incident))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/v1/bundles/{incident}/{capture}/report", get(get_report))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(bounded))
        .with_state(intake)
}

/// Runs the intake until `shutdown` completes.
pub async fn serve(
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    check_exposure(&settings.intake)?;
    let queue = Arc::new(Queue::connect(&settings.nats, settings.intake.publish_timeout).await?);
    match queue.ensure_stream().await {
        Err(e) if e.is_permanent() => return Err(e.into()),
        // Not fatal: retried before the first publish.
        Err(e) => tracing::warn!(error = %e, "the stream is not ready yet"),
        Ok(()) => {}
    }
    let store = match crate::store::Store::from_settings(&settings.store).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "the store cannot be set up: report links answer 503");
            None
        }
    };
    let intake = Arc::new(Intake {
        settings: settings.intake.clone(),
        store,
        clock_skew: chrono::Duration::from_std(settings.capture.clock_skew)
            .unwrap_or(chrono::Duration::zero()),
        queue,
        deliveries: Mutex::new(RecentIds::default()),
    });
    let listener = tokio::net::TcpListener::bind(&settings.intake.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.intake.listen))?;
    tracing::info!(listen = %settings.intake.listen, nats = %crate::capture::redact_url(&settings.nats.url), "intake listening");
    axum::serve(listener, router(intake))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the intake server stopped")
}

/// Refuses to accept unauthenticated incidents from the network: without a token, basic
/// credentials or PagerDuty secrets, anyone who can reach the port can declare incidents (and
/// fill the store). Listening on loopback only, or with `intake.allow_unauthenticated`, is
/// allowed, with a warning in the latter case.
fn check_exposure(s: &IntakeSettings) -> anyhow::Result<()> {
    if let Some(problem) = exposure_problem(s) {
        anyhow::bail!(problem);
    }
    if s.has_credentials() {
        return Ok(());
    }
    let loopback = listen_is_loopback(&s.listen);
    if !loopback {
        tracing::warn!(
            listen = %s.listen,
            "the intake accepts incidents without credentials from the network (intake.allow_unauthenticated = true)"
        );
    } else if s.pagerduty_secrets.is_empty() {
        tracing::info!("the intake accepts incidents without credentials (loopback only)");
    }
    Ok(())
}

/// Why the intake would refuse to start with these settings: reachable from the network
/// without credentials (and without `allow_unauthenticated`).
pub fn exposure_problem(s: &IntakeSettings) -> Option<String> {
    (!s.has_credentials() && !s.allow_unauthenticated && !listen_is_loopback(&s.listen)).then(|| format!(
        "intake.listen {} is reachable from the network but no credentials are configured: set intake.bearer_token (or basic_username/basic_password), or intake.allow_unauthenticated = true to accept anyone's incidents",
        s.listen
    ))
}

/// True when `listen` names only loopback addresses (`127.0.0.1:8080`, `[::1]:8080`,
/// `localhost:8080`).
fn listen_is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn only_loopback_listeners_count_as_private() {
        assert!(super::listen_is_loopback("127.0.0.1:8080"));
        assert!(super::listen_is_loopback("[::1]:8080"));
        assert!(super::listen_is_loopback("localhost:8080"));
        assert!(!super::listen_is_loopback("0.0.0.0:8080"));
        assert!(!super::listen_is_loopback("[::]:8080"));
        assert!(!super::listen_is_loopback("10.1.2.3:8080"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Some(262_144));
        assert_eq!(parse_size("1MiB"), Some(1_048_576));
        assert_eq!(parse_size("64KB"), Some(64_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
    }
}
