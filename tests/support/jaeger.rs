//! A loopback Jaeger query service that follows the real API (BACKEND-APIS.md): v1
//! `/api/services` and `/api/traces` (µs times, `limit` default 100, `tags` JSON, Go-duration
//! `minDuration`, 400 as a JSON envelope sent as text/plain), or v3 `/api/v3/services` and
//! `/api/v3/traces` (RFC 3339 times required, `query.num_traces`, `query.attributes`, 404 "No
//! traces found" when empty, OTLP with hex ids and integer enums). A configurable cap on the
//! traces of one answer, whatever `limit` asked for; failures on demand.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V3,
}

/// One trace as the server stores it: Jaeger v1 JSON, plus what searches need.
pub struct StoredTrace {
    pub json: Value,
}

pub struct Server {
    pub api: Api,
    /// Most traces one answer returns, whatever the limit.
    pub cap: usize,
    /// Answer this many requests with 503 (and `Retry-After: 0`) before answering normally.
    pub fail_first: AtomicUsize,
    /// Milliseconds every trace search takes (a slow backend).
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// The share of requests, in percent, answered 503 without `Retry-After` (an overloaded
    /// backend); which ones is fixed by the request's number, so a run can be repeated.
    pub flaky_percent: AtomicUsize,
    /// Every this many requests, the answer is cut off after its first bytes and the connection
    /// dropped (0: never).
    pub reset_every: AtomicUsize,
    /// Retention in seconds (0: keeps everything): a trace that started longer ago than this is
    /// deleted, as a storage's TTL does, and no search returns it any more.
    pub retention_s: std::sync::atomic::AtomicU64,
    pub traces: Vec<StoredTrace>,
    pub requests: Mutex<Vec<String>>,
}

impl Server {
    pub fn new(api: Api, cap: usize, traces: Vec<Value>) -> Self {
        Self {
            api,
            cap,
            fail_first: AtomicUsize::new(0),
            delay_ms: Default::default(),
            flaky_percent: AtomicUsize::new(0),
            reset_every: AtomicUsize::new(0),
            retention_s: Default::default(),
            traces: traces
                .into_iter()
                .map(|json| StoredTrace { json })
                .collect(),
            requests: Mutex::new(Vec::new()),
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Starts the server on a free loopback port, on its own thread; it lives as long as the test.
pub fn start(server: Server) -> (SocketAddr, Arc<Server>) {
    let state = Arc::new(server);
    let app = axum::Router::new()
        .route("/api/services", get(v1_services))
        .route("/api/traces", get(v1_traces))
        .route("/api/v3/services", get(v3_services))
        .route("/api/v3/traces", get(v3_traces))
        .with_state(state.clone());
    (super::serve(app), state)
}

/// A loopback address where nothing listens.
pub fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json_ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn v1_error(status: StatusCode, msg: &str) -> Response {
    text(
        status,
        json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status.as_u16(), "msg": msg}]}).to_string() + "\n",
    )
}

fn v3_error(status: StatusCode, msg: &str) -> Response {
    text(
        status,
        json!({"error": {"httpCode": status.as_u16(), "message": msg}}).to_string(),
    )
}

/// Records the request; answers 503 while failures are due.
fn gate(s: &Server, path: &str, q: &HashMap<String, String>) -> Option<Response> {
    let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    let number = {
        let mut requests = s.requests.lock().unwrap();
        requests.push(format!("{path}?{}", keys.join("&")));
        requests.len()
    };
    let flaky = s.flaky_percent.load(Ordering::SeqCst);
    if flaky > 0 && (number.wrapping_mul(2_654_435_761) >> 7) % 100 < flaky {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response());
    }
    let reset = s.reset_every.load(Ordering::SeqCst);
    if reset > 0 && number.is_multiple_of(reset) {
        // A 200 whose body stops after its first bytes: the client sees the connection drop.
        let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
            Ok(r#"{"data":[{"traceID":"#),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        ];
        return Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response(),
        );
    }
    let due = s.fail_first.load(Ordering::SeqCst);
    if due > 0 {
        s.fail_first.fetch_sub(1, Ordering::SeqCst);
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "0")],
                "upstream storage unavailable",
            )
                .into_response(),
        );
    }
    None
}

fn services(s: &Server) -> Vec<String> {
    let mut set = BTreeSet::new();
    for t in &s.traces {
        for p in t.json["processes"].as_object().unwrap().values() {
            set.insert(p["serviceName"].as_str().unwrap().to_owned());
        }
    }
    set.into_iter().collect()
}

async fn v1_services(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, "/api/services", &q) {
        return r;
    }
    if s.api == Api::V3 {
        // Jaeger after #9260: v1 search is gone.
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    }
    let list = services(&s);
    json_ok(json!({"data": list, "total": list.len(), "limit": 0, "offset": 0, "errors": null}))
}

async fn v3_services(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, "/api/v3/services", &q) {
        return r;
    }
    if s.api == Api::V1 {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    }
    json_ok(json!({"services": services(&s)}))
}

/// Parses a Go duration into µs.
fn go_duration_us(s: &str) -> Option<i64> {
    let (num, unit) = s.split_at(s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 0.001,
        "us" | "µs" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        "m" => 60_000_000.0,
        "h" => 3_600_000_000.0,
        _ => return None,
    };
    Some((v * scale) as i64)
}

struct Criteria {
    service: String,
    start_us: i64,
    end_us: i64,
    tags: HashMap<String, String>,
    min_duration_us: Option<i64>,
    limit: usize,
}

fn tag_text(tag: &Value) -> String {
    match &tag["value"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Jaeger's span-level match: one span of the service satisfies every condition.
fn matches(t: &Value, c: &Criteria) -> bool {
    let processes = t["processes"].as_object().unwrap();
    t["spans"].as_array().unwrap().iter().any(|span| {
        let pid = span["processID"].as_str().unwrap();
        if processes[pid]["serviceName"].as_str() != Some(c.service.as_str()) {
            return false;
        }
        let start = span["startTime"].as_i64().unwrap();
        if start < c.start_us || start > c.end_us {
            return false;
        }
        if let Some(min) = c.min_duration_us
            && span["duration"].as_i64().unwrap() < min
        {
            return false;
        }
        c.tags.iter().all(|(k, v)| {
            span["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|tag| tag["key"] == k.as_str() && tag_text(tag) == *v)
        })
    })
}

fn search<'a>(s: &'a Server, c: &Criteria) -> Vec<&'a Value> {
    let retention = s.retention_s.load(Ordering::SeqCst) as i64;
    let oldest_us = if retention > 0 {
        chrono::Utc::now().timestamp_micros() - retention * 1_000_000
    } else {
        i64::MIN
    };
    let mut found: Vec<&Value> = s
        .traces
        .iter()
        .map(|t| &t.json)
        .filter(|t| t["spans"][0]["startTime"].as_i64().unwrap() >= oldest_us)
        .filter(|t| matches(t, c))
        .collect();
    // Most recent first, as Jaeger's storages return them.
    found.sort_by_key(|t| std::cmp::Reverse(t["spans"][0]["startTime"].as_i64().unwrap()));
    found.truncate(c.limit.min(s.cap));
    found
}

async fn v1_traces(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, "/api/traces", &q) {
        return r;
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if s.api == Api::V3 {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    }
    let Some(service) = q.get("service").cloned() else {
        return v1_error(StatusCode::BAD_REQUEST, "parameter 'service' is required");
    };
    let int = |k: &str, default: i64| -> Result<i64, Response> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| {
                v1_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unable to parse param '{k}': {e}"),
                )
            }),
        }
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let (end_us, start_us, limit) = match (
        int("end", now_us),
        int("start", now_us - 48 * 3_600_000_000),
        int("limit", 100),
    ) {
        (Ok(e), Ok(s), Ok(l)) => (e, s, l),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let tags: HashMap<String, String> = match q.get("tags") {
        None => HashMap::new(),
        Some(t) => match serde_json::from_str(t) {
            Ok(m) => m,
            Err(e) => {
                return v1_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unable to parse param 'tags': {e}"),
                );
            }
        },
    };
    let min_duration_us = match q.get("minDuration") {
        None => None,
        Some(d) => match go_duration_us(d) {
            Some(us) => Some(us),
            None => {
                return v1_error(
                    StatusCode::BAD_REQUEST,
                    "unable to parse param 'minDuration'",
                );
            }
        },
    };
    let c = Criteria {
        service,
        start_us,
        end_us,
        tags,
        min_duration_us,
        limit: limit.max(0) as usize,
    };
    let data: Vec<Value> = search(&s, &c).into_iter().cloned().collect();
    json_ok(json!({"data": data, "total": data.len(), "limit": 0, "offset": 0, "errors": null}))
}

fn rfc3339_us(v: Option<&String>, name: &str) -> Result<i64, Response> {
    let Some(v) = v else {
        return Err(v3_error(
            StatusCode::BAD_REQUEST,
            &format!("{name} is required"),
        ));
    };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_micros())
        .map_err(|e| v3_error(StatusCode::BAD_REQUEST, &format!("malformed {name}: {e}")))
}

/// Jaeger v1 trace JSON → OTLP JSON as Jaeger v3 writes it (hex ids, integer enums, error tag
/// → status code 2).
fn to_otlp(traces: &[&Value]) -> Value {
    let mut resource_spans = Vec::new();
    for t in traces {
        let processes = t["processes"].as_object().unwrap();
        for span in t["spans"].as_array().unwrap() {
            let p = &processes[span["processID"].as_str().unwrap()];
            let tags = span["tags"].as_array().unwrap();
            let error = tags
                .iter()
                .any(|g| g["key"] == "error" && tag_text(g) == "true");
            let kind = match tags
                .iter()
                .find(|g| g["key"] == "span.kind")
                .map(tag_text)
                .as_deref()
            {
                Some("server") => 2,
                Some("client") => 3,
                _ => 1,
            };
            let attrs: Vec<Value> = tags
                .iter()
                .filter(|g| g["key"] != "error" && g["key"] != "span.kind")
                .map(|g| json!({"key": g["key"], "value": {"stringValue": tag_text(g)}}))
                .collect();
            let start_ns = span["startTime"].as_i64().unwrap() * 1000;
            let end_ns = start_ns + span["duration"].as_i64().unwrap() * 1000;
            let parent = span["references"]
                .as_array()
                .unwrap()
                .first()
                .map(|r| r["spanID"].as_str().unwrap().to_owned())
                .unwrap_or_default();
            // The process's tags are the resource's attributes, as Jaeger's v3 API returns them.
            let mut resource =
                vec![json!({"key": "service.name", "value": {"stringValue": p["serviceName"]}})];
            resource.extend(
                p["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| json!({"key": g["key"], "value": {"stringValue": tag_text(g)}})),
            );
            resource_spans.push(json!({
                "resource": {"attributes": resource},
                "scopeSpans": [{"scope": {}, "spans": [{
                    "traceId": span["traceID"], "spanId": span["spanID"], "parentSpanId": parent,
                    "name": span["operationName"], "kind": kind,
                    "startTimeUnixNano": start_ns.to_string(), "endTimeUnixNano": end_ns.to_string(),
                    "attributes": attrs, "status": if error { json!({"code": 2}) } else { json!({}) },
                }]}],
            }));
        }
    }
    json!({"result": {"resourceSpans": resource_spans}})
}

async fn v3_traces(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, "/api/v3/traces", &q) {
        return r;
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if s.api == Api::V1 {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    }
    let start_us = match rfc3339_us(q.get("query.start_time_min"), "query.start_time_min") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let end_us = match rfc3339_us(q.get("query.start_time_max"), "query.start_time_max") {
        Ok(v) => v,
        Err(r) => return r,
    };
    if end_us <= start_us {
        return v3_error(
            StatusCode::BAD_REQUEST,
            "query.start_time_min must be before query.start_time_max",
        );
    }
    let tags: HashMap<String, String> = q
        .get("query.attributes")
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let c = Criteria {
        service: q.get("query.service_name").cloned().unwrap_or_default(),
        start_us,
        end_us,
        tags,
        min_duration_us: q.get("query.duration_min").and_then(|d| go_duration_us(d)),
        limit: q
            .get("query.num_traces")
            .and_then(|n| n.parse().ok())
            .unwrap_or(100),
    };
    let found = search(&s, &c);
    if found.is_empty() {
        return v3_error(StatusCode::NOT_FOUND, "No traces found");
    }
    json_ok(to_otlp(&found))
}

/// `n` synthetic traces of frontend → payment between `start_us` and `end_us`, evenly spread;
/// payment's span errors when `error`, and lasts `payment_us`.
pub fn synthetic_traces(
    n: usize,
    start_us: i64,
    end_us: i64,
    error: bool,
    payment_us: i64,
    id_offset: u64,
) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let t = start_us + ((end_us - start_us) as i128 * i as i128 / n.max(1) as i128) as i64;
            let trace_id = format!("{:032x}", id_offset + i as u64 + 1);
            let root = format!("{:016x}", (id_offset + i as u64) * 2 + 1);
            let child = format!("{:016x}", (id_offset + i as u64) * 2 + 2);
            let mut child_tags = vec![json!({"key": "span.kind", "type": "string", "value": "server"})];
            let mut root_tags = vec![json!({"key": "span.kind", "type": "string", "value": "server"})];
            if error {
                child_tags.push(json!({"key": "error", "type": "bool", "value": true}));
                child_tags.push(json!({"key": "otel.status_description", "type": "string", "value": "card declined"}));
                root_tags.push(json!({"key": "error", "type": "bool", "value": true}));
            }
            json!({
                "traceID": trace_id,
                "spans": [
                    {"traceID": trace_id, "spanID": root, "operationName": "POST /checkout", "references": [],
                     "startTime": t, "duration": payment_us + 2000, "tags": root_tags, "logs": [], "processID": "p1", "warnings": null},
                    {"traceID": trace_id, "spanID": child, "operationName": "POST /charge",
                     "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": root}],
                     "startTime": t + 1000, "duration": payment_us, "tags": child_tags, "logs": [], "processID": "p2", "warnings": null},
                ],
                "processes": {"p1": {"serviceName": "frontend", "tags": []}, "p2": {"serviceName": "payment", "tags": []}},
                "warnings": null,
            })
        })
        .collect()
}
