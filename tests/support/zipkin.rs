//! A loopback Zipkin server with the real v2 API's semantics (BACKEND-APIS.md §4):
//! `/api/v2/services`, `/api/v2/traces` with `serviceName`, `annotationQuery`, `minDuration` (µs),
//! `endTs` and `lookback` (ms), `limit` (default 10); validation failures as plain-text 400s; a
//! list of traces as the answer; a cap on traces per answer, and delays on demand.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

pub struct Server {
    pub cap: usize,
    /// Each trace: a list of Zipkin v2 spans.
    pub traces: Vec<Vec<Value>>,
    pub requests: Mutex<Vec<String>>,
}

impl Server {
    pub fn new(cap: usize, traces: Vec<Vec<Value>>) -> Self {
        Self {
            cap,
            traces,
            requests: Mutex::new(Vec::new()),
        }
    }
}

pub fn start(server: Server) -> (SocketAddr, Arc<Server>) {
    let state = Arc::new(server);
    let app = axum::Router::new()
        .route("/api/v2/services", get(services))
        .route("/api/v2/traces", get(traces))
        .with_state(state.clone());
    (super::serve(app), state)
}

fn bad(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain")],
        msg.to_owned(),
    )
        .into_response()
}

async fn services(State(s): State<Arc<Server>>) -> Response {
    s.requests.lock().unwrap().push("/api/v2/services".into());
    let set: BTreeSet<&str> = s
        .traces
        .iter()
        .flatten()
        .filter_map(|sp| sp["localEndpoint"]["serviceName"].as_str())
        .collect();
    axum::Json(json!(set)).into_response()
}

async fn traces(
    State(s): State<Arc<Server>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    s.requests
        .lock()
        .unwrap()
        .push(format!("/api/v2/traces?{}", keys.join("&")));
    let num = |k: &str, default: i64| -> Result<i64, Response> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| bad(&format!("{k} should be a number"))),
        }
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (end_ts, lookback, limit) = match (
        num("endTs", now_ms),
        num("lookback", 86_400_000),
        num("limit", 10),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    if end_ts <= 0 {
        return bad("endTs should be positive, in epoch microseconds: was 0");
    }
    if limit <= 0 {
        return bad("limit should be greater than 0");
    }
    if lookback <= 0 {
        return bad("lookback should be greater than 0");
    }
    let min_duration = match q.get("minDuration").map(|v| v.parse::<i64>()) {
        None => None,
        Some(Ok(d)) if d > 0 => Some(d),
        Some(_) => return bad("minDuration must be a positive number of microseconds"),
    };
    let (from_us, to_us) = ((end_ts - lookback) * 1000, end_ts * 1000);
    let service = q.get("serviceName");
    let want_error = q.get("annotationQuery").is_some_and(|a| a == "error");
    // As Zipkin's QueryRequest.test: the trace's time is its earliest span's; the other
    // conditions hold for some span; service names compare lower-cased; `error` matches the tag
    // key or an annotation value.
    let mut found: Vec<&Vec<Value>> = s
        .traces
        .iter()
        .filter(|t| {
            let ts = t
                .iter()
                .filter_map(|sp| sp["timestamp"].as_i64())
                .min()
                .unwrap_or(0);
            ts >= from_us
                && ts <= to_us
                && t.iter().any(|sp| {
                    let svc = sp["localEndpoint"]["serviceName"].as_str().unwrap_or("");
                    let error = sp["tags"].get("error").is_some()
                        || sp["annotations"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x["value"] == "error"));
                    service.is_none_or(|want| svc.eq_ignore_ascii_case(want))
                        && (!want_error || error)
                        && min_duration.is_none_or(|m| sp["duration"].as_i64().unwrap_or(0) >= m)
                })
        })
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t[0]["timestamp"].as_i64().unwrap_or(0)));
    found.truncate((limit as usize).min(s.cap));
    axum::Json(json!(found)).into_response()
}

/// Zipkin v2 spans of a Jaeger-style synthetic trace (see `jaeger::synthetic_traces`).
pub fn from_jaeger(trace: &Value) -> Vec<Value> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sp| {
            let service = &processes[sp["processID"].as_str().unwrap()]["serviceName"];
            let mut tags = serde_json::Map::new();
            for t in sp["tags"].as_array().unwrap() {
                if t["key"] == "error" {
                    tags.insert("error".into(), json!("card declined"));
                }
            }
            let mut span = json!({
                "traceId": sp["traceID"], "id": sp["spanID"], "name": sp["operationName"], "kind": "SERVER",
                "timestamp": sp["startTime"], "duration": sp["duration"],
                "localEndpoint": {"serviceName": service}, "tags": tags,
            });
            if let Some(p) = sp["references"].as_array().unwrap().first() {
                span["parentId"] = p["spanID"].clone();
            }
            span
        })
        .collect()
}
