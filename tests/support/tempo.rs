//! A loopback Grafana Tempo with the real API's semantics (BACKEND-APIS.md §3): `/api/search`
//! with TraceQL (the subset evidence-locker writes: `resource.service.name = "…"`,
//! `status = error`, `duration >= …`), `start`/`end` in seconds (end after start, at most 168 h),
//! `limit` (default 20); trace ids with leading zeros stripped; errors as plain text; trace by
//! id from `/api/v2/traces/{id}` (OTLP with base64 ids and enum names, as Tempo's gogo jsonpb
//! writes it) or only from `/api/traces/{id}` (`batches`) like an older Tempo; `PARTIAL` and
//! slow answers on demand.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};

pub struct Server {
    pub cap: usize,
    /// Jaeger-style synthetic traces (see `jaeger::synthetic_traces`), kept by id.
    pub traces: Vec<Value>,
    /// Serve only the pre-2.5 `/api/traces/{id}`.
    pub v1_only: bool,
    /// Trace ids (32 hex) answered with `"status": "PARTIAL"`.
    pub partial: BTreeSet<String>,
    /// Delay before every answer.
    pub delay: Duration,
    pub requests: Mutex<Vec<String>>,
}

impl Server {
    pub fn new(cap: usize, traces: Vec<Value>) -> Self {
        Self {
            cap,
            traces,
            v1_only: false,
            partial: BTreeSet::new(),
            delay: Duration::ZERO,
            requests: Mutex::new(Vec::new()),
        }
    }
}

pub fn start(server: Server) -> (SocketAddr, Arc<Server>) {
    let state = Arc::new(server);
    let app = axum::Router::new()
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/api/search", get(search))
        .route(
            "/api/v2/search/tag/resource.service.name/values",
            get(service_names),
        )
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/traces/{id}", get(trace_v1))
        .with_state(state.clone());
    (super::serve(app), state)
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

async fn pause(s: &Server, what: String) {
    s.requests.lock().unwrap().push(what);
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
}

async fn buildinfo(State(s): State<Arc<Server>>) -> Response {
    pause(&s, "/api/status/buildinfo".into()).await;
    axum::Json(json!({"version": "2.8.1", "revision": "test", "branch": "main"})).into_response()
}

async fn service_names(State(s): State<Arc<Server>>) -> Response {
    pause(&s, "/api/v2/search/tag/resource.service.name/values".into()).await;
    let names: BTreeSet<&str> = s
        .traces
        .iter()
        .flat_map(|t| {
            t["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |sp| service_of(t, sp))
        })
        .collect();
    let values: Vec<Value> = names
        .into_iter()
        .map(|n| json!({"type": "string", "value": n}))
        .collect();
    axum::Json(json!({"tagValues": values, "metrics": {}})).into_response()
}

struct Condition {
    service: Option<String>,
    error: bool,
    min_duration_us: Option<i64>,
}

fn parse_traceql(q: &str) -> Result<Condition, String> {
    let inner = q
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| format!("parse error: unexpected input {q:?}"))?;
    let mut c = Condition {
        service: None,
        error: false,
        min_duration_us: None,
    };
    for part in inner.split("&&").map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(v) = part.strip_prefix("resource.service.name = ") {
            c.service = Some(serde_json::from_str(v).map_err(|e| format!("parse error: {e}"))?);
        } else if part == "status = error" {
            c.error = true;
        } else if let Some(v) = part.strip_prefix("duration >= ") {
            let us: i64 = v
                .strip_suffix("us")
                .and_then(|n| n.parse().ok())
                .ok_or("parse error: duration")?;
            c.min_duration_us = Some(us);
        } else {
            return Err(format!("parse error: unsupported condition {part:?}"));
        }
    }
    Ok(c)
}

fn service_of<'a>(trace: &'a Value, span: &Value) -> &'a str {
    trace["processes"][span["processID"].as_str().unwrap()]["serviceName"]
        .as_str()
        .unwrap()
}

fn is_error(span: &Value) -> bool {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "error")
}

async fn search(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    pause(&s, format!("/api/search?{}", keys.join("&"))).await;
    let secs = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(start), Some(end)) = (secs("start"), secs("end")) else {
        return text(StatusCode::BAD_REQUEST, "invalid start or end");
    };
    if end <= start {
        return text(
            StatusCode::BAD_REQUEST,
            "http search request: end must be after start",
        );
    }
    if end - start > 168 * 3600 {
        return text(
            StatusCode::BAD_REQUEST,
            "range specified by start and end exceeds 168h0m0s. received start=… end=…",
        );
    }
    let limit: usize = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if l > 0 => l,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "invalid limit: must be a positive number",
            );
        }
    };
    let cond = match parse_traceql(q.get("q").map(String::as_str).unwrap_or("{ }")) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let mut found: Vec<&Value> = s
        .traces
        .iter()
        .filter(|t| {
            let start_us = t["spans"][0]["startTime"].as_i64().unwrap();
            let in_range = start_us >= start * 1_000_000 && start_us <= end * 1_000_000;
            in_range
                && t["spans"].as_array().unwrap().iter().any(|sp| {
                    cond.service
                        .as_deref()
                        .is_none_or(|svc| service_of(t, sp) == svc)
                        && (!cond.error || is_error(sp))
                        && cond
                            .min_duration_us
                            .is_none_or(|m| sp["duration"].as_i64().unwrap() >= m)
                })
        })
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t["spans"][0]["startTime"].as_i64().unwrap()));
    found.truncate(limit.min(s.cap));
    let traces: Vec<Value> = found
        .iter()
        .map(|t| {
            // Tempo strips leading zeros unless `left_pad_trace_ids` is on.
            let id = u128::from_str_radix(t["traceID"].as_str().unwrap(), 16).unwrap();
            json!({
                "traceID": format!("{id:x}"),
                "rootServiceName": service_of(t, &t["spans"][0]),
                "startTimeUnixNano": (t["spans"][0]["startTime"].as_i64().unwrap() * 1000).to_string(),
                "durationMs": t["spans"][0]["duration"].as_i64().unwrap() / 1000,
            })
        })
        .collect();
    axum::Json(json!({"traces": traces, "metrics": {"inspectedBytes": "1024", "completedJobs": 1, "totalJobs": 1}})).into_response()
}

fn b64(hex: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex).unwrap())
}

/// OTLP as Tempo's gogo jsonpb writes it: base64 ids, enum names.
fn resource_spans(t: &Value) -> Vec<Value> {
    t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sp| {
            let start_ns = sp["startTime"].as_i64().unwrap() * 1000;
            let mut span = json!({
                "traceId": b64(sp["traceID"].as_str().unwrap()),
                "spanId": b64(sp["spanID"].as_str().unwrap()),
                "name": sp["operationName"],
                "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": start_ns.to_string(),
                "endTimeUnixNano": (start_ns + sp["duration"].as_i64().unwrap() * 1000).to_string(),
                "status": if is_error(sp) { json!({"code": "STATUS_CODE_ERROR", "message": "card declined"}) } else { json!({}) },
            });
            if let Some(p) = sp["references"].as_array().unwrap().first() {
                span["parentSpanId"] = json!(b64(p["spanID"].as_str().unwrap()));
            }
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_of(t, sp)}}]},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": [span]}],
            })
        })
        .collect()
}

fn find<'a>(s: &'a Server, id: &str) -> Option<&'a Value> {
    if id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{:0>32}", id.to_ascii_lowercase());
    s.traces.iter().find(|t| t["traceID"] == padded.as_str())
}

async fn trace_v2(State(s): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    pause(&s, format!("/api/v2/traces/{id}")).await;
    if s.v1_only {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    match find(&s, &id) {
        None => text(StatusCode::NOT_FOUND, "trace not found"),
        Some(t) => {
            let mut body = json!({"trace": {"resourceSpans": resource_spans(t)}});
            if s.partial.contains(t["traceID"].as_str().unwrap()) {
                body["status"] = json!("PARTIAL");
                body["message"] = json!("response exceeds the size limit: partial trace");
            }
            axum::Json(body).into_response()
        }
    }
}

async fn trace_v1(State(s): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    pause(&s, format!("/api/traces/{id}")).await;
    match find(&s, &id) {
        None => text(StatusCode::NOT_FOUND, "trace not found"),
        Some(t) => axum::Json(json!({"batches": resource_spans(t)})).into_response(),
    }
}
