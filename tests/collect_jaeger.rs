//! `collect --jaeger` against a loopback Jaeger with the real API's semantics: completeness under
//! a result cap (v1 and v3, a cap at our limit and one hidden below it), retries through 503s,
//! and a partial bundle when the backend is down.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use chrono::Duration;
use serde_json::json;
use support::jaeger::{self, Api, Server, synthetic_traces};
use support::*;

fn queries<'a>(manifest: &'a serde_json::Value, reason: &str) -> Vec<&'a serde_json::Value> {
    manifest["sources"][0]["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["reason"] == reason)
        .collect()
}

#[test]
fn v1_cap_of_500_still_yields_all_5000_error_traces_with_the_splits_recorded() {
    let s = scenario();
    let (addr, server) = jaeger::start(Server::new(Api::V1, 500, many_errors()));
    let out = collect_from(&s, "--jaeger", &format!("http://{addr}"), &[]);
    let bundle = bundle_dir(&out);
    assert!(
        stdout(&out).contains("status: complete"),
        "{}",
        stdout(&out)
    );
    let manifest = assert_all_errors_captured(&bundle);
    assert_eq!(manifest["sources"][0]["api"], "jaeger-v1");
    let splits = queries(&manifest, "split");
    assert!(
        splits.len() >= 10,
        "5,000 traces under a cap of 500 need at least 10 split queries, got {}",
        splits.len()
    );
    // Every recorded query is a real request the server saw, with its parameters and count.
    let recorded = manifest["sources"][0]["queries"].as_array().unwrap().len();
    assert_eq!(recorded, server.request_count());
    let q = splits[0];
    assert!(q["url"].as_str().unwrap().contains("/api/traces?"));
    assert_eq!(q["params"]["tags"], r#"{"error":"true"}"#);
    assert!(q["count"].as_u64().unwrap() <= 500);
    assert_eq!(q["status"], 200);
}

#[test]
fn v3_with_a_cap_hidden_below_our_limit_still_yields_every_error_trace() {
    let s = scenario();
    let (addr, _server) = jaeger::start(Server::new(Api::V3, 500, many_errors()));
    // We ask for 1,000 per query; the server silently returns at most 500.
    let out = collect_from(
        &s,
        "--jaeger",
        &format!("http://{addr}"),
        &[(
            "EVIDENCE_LOCKER__BACKENDS__DEFAULT__QUERY_LIMIT",
            "1000".into(),
        )],
    );
    let bundle = bundle_dir(&out);
    let manifest = assert_all_errors_captured(&bundle);
    assert_eq!(manifest["sources"][0]["api"], "jaeger-v3");
    assert!(
        !queries(&manifest, "verify").is_empty(),
        "the hidden cap was detected by a verification"
    );
    // An empty range answers 404 "No traces found" in v3; that is no gap.
    assert!(
        manifest["completeness"]["gaps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_backend_answering_503_for_a_while_is_retried_into_a_complete_bundle() {
    let s = scenario();
    let traces = synthetic_traces(
        40,
        us(Duration::minutes(20)),
        us(Duration::minutes(10)),
        true,
        1_500_000,
        0,
    );
    let server = Server::new(Api::V1, 500, traces);
    server.fail_first.store(3, Ordering::SeqCst);
    let (addr, server) = jaeger::start(server);
    let out = collect_from(&s, "--jaeger", &format!("http://{addr}"), &[]);
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    assert_eq!(
        manifest["completeness"]["status"], "complete",
        "{:#}",
        manifest["completeness"]
    );
    assert_eq!(manifest["counts"]["error_traces"], 40);
    let first = &manifest["sources"][0]["queries"][0];
    assert_eq!(
        first["attempts"], 4,
        "three 503s, then an answer: {first:#}"
    );
    assert_eq!(server.fail_first.load(Ordering::SeqCst), 0);
    // 1.5 s payment spans make the traces slow too; they are in errors.jsonl.zst, once.
    assert_eq!(manifest["counts"]["slow_traces"], 0);
    let timeline = read_json(&bundle.join("timeline.json"));
    let kinds: BTreeSet<&str> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains("first_error") && kinds.contains("first_slow"),
        "{kinds:?}"
    );
}

#[test]
fn a_backend_that_is_down_gives_a_partial_bundle_with_a_gap_and_exit_0() {
    let s = scenario();
    let addr = jaeger::dead_address();
    let out = collect_from(
        &s,
        "--jaeger",
        &format!("http://admin:s3cret@{addr}"),
        &[("EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETRIES", "1".into())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("status: partial"), "{}", stdout(&out));
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert_eq!(manifest["completeness"]["status"], "partial");
    assert_eq!(gaps[0]["kind"], "backend_unavailable");
    for name in [
        "report.html",
        "postmortem.yaml",
        "postmortem.md",
        "timeline.json",
        "analysis.json",
        "traces/jaeger-ui.json",
    ] {
        assert!(bundle.join(name).exists(), "{name}");
    }
    // Credentials never reach the bundle nor the output.
    let all = std::fs::read_to_string(bundle.join("manifest.json")).unwrap()
        + &stdout(&out)
        + &stderr(&out);
    assert!(!all.contains("s3cret"), "a password leaked");
}

#[test]
fn upstream_fixture_traces_served_by_the_backend_land_in_the_bundle() {
    // jaeger-ui's TraceGraph test trace: 11 spans, one erroring, recorded in November 2018.
    let fixture = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jaeger-ui/ui-trace_TraceGraph_testTrace.json"),
    );
    let start_us = fixture["spans"][0]["startTime"].as_i64().unwrap();
    let erroring_service = {
        let span = fixture["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["key"] == "error")
            })
            .unwrap();
        fixture["processes"][span["processID"].as_str().unwrap()]["serviceName"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let t = chrono::DateTime::from_timestamp_micros(start_us).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    std::fs::write(&incident, json!({
        "id": "INC-2018", "declared_at": t.to_rfc3339(), "started_at": (t - Duration::minutes(1)).to_rfc3339(),
        "window": {"start": (t - Duration::minutes(30)).to_rfc3339(), "end": (t + Duration::minutes(30)).to_rfc3339()},
        "services": [erroring_service],
    }).to_string()).unwrap();
    let (addr, _server) = jaeger::start(Server::new(Api::V1, 100, vec![fixture]));
    let out_dir = dir.path().join("evidence");
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--jaeger",
            &format!("http://{addr}"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[(
            "EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETENTION",
            "10000d".into(),
        )],
    );
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    assert_eq!(manifest["counts"]["error_traces"], 1);
    assert_eq!(manifest["counts"]["spans"], 11);
    let ui = read_json(&bundle.join("traces/jaeger-ui.json"));
    assert_eq!(ui["data"][0]["spans"].as_array().unwrap().len(), 11);
}

#[test]
fn a_misspelt_service_is_a_gap_not_a_complete_empty_bundle() {
    let s = scenario().with_services(&["paymnet"]);
    let traces = synthetic_traces(
        10,
        us(Duration::minutes(20)),
        us(Duration::minutes(10)),
        true,
        20_000,
        0,
    );
    let (addr, _server) = jaeger::start(Server::new(Api::V3, 500, traces));
    let out = collect_from(&s, "--jaeger", &format!("http://{addr}"), &[]);
    let manifest = verify_manifest(&bundle_dir(&out));
    assert_eq!(manifest["completeness"]["status"], "partial");
    let gap = &manifest["completeness"]["gaps"][0];
    assert_eq!(gap["kind"], "unknown_service");
    assert_eq!(gap["service"], "paymnet");
}

#[test]
fn spans_a_backend_returns_that_cannot_be_read_are_a_gap_not_a_silent_loss() {
    let s = scenario();
    let mut traces = synthetic_traces(
        20,
        us(Duration::minutes(25)),
        us(Duration::minutes(5)),
        true,
        20_000,
        0,
    );
    // One frontend span dated in nanoseconds instead of microseconds (far beyond 2200 to a
    // reader); the trace's payment span still matches the search.
    let ns = traces[0]["spans"][0]["startTime"].as_i64().unwrap() * 1000;
    traces[0]["spans"][0]["startTime"] = json!(ns);
    let (addr, _server) = jaeger::start(Server::new(Api::V1, 500, traces));
    let out = collect_from(&s, "--jaeger", &format!("http://{addr}"), &[]);
    let bundle = bundle_dir(&out);
    assert!(stdout(&out).contains("status: partial"), "{}", stdout(&out));
    let manifest = read_json(&bundle.join("manifest.json"));
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    let unreadable: Vec<_> = gaps
        .iter()
        .filter(|g| g["kind"] == "unreadable_spans")
        .collect();
    assert_eq!(unreadable.len(), 1, "{gaps:#?}");
    assert_eq!(unreadable[0]["source"], "jaeger");
    assert!(
        unreadable[0]["message"]
            .as_str()
            .unwrap()
            .contains("wrong unit"),
        "{}",
        unreadable[0]
    );
}

/// The traces of `started` (id, start in µs) missing from `got` that no gap accepted by `kind`
/// covers: silent holes.
fn uncovered(
    gaps: &[serde_json::Value],
    got: &BTreeSet<String>,
    started: &[(String, i64)],
    kind: impl Fn(&str) -> bool,
) -> Vec<String> {
    started
        .iter()
        .filter(|(id, _)| !got.contains(id))
        .filter(|(_, start_us)| {
            let at = chrono::DateTime::from_timestamp_micros(*start_us).unwrap();
            !gaps.iter().any(|g| {
                let time = |k: &str| {
                    g[k].as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                };
                kind(g["kind"].as_str().unwrap_or(""))
                    && matches!((time("start"), time("end")), (Some(a), Some(b)) if a <= at && at <= b)
            })
        })
        .map(|(id, start_us)| format!("{id} at {start_us} µs"))
        .collect()
}

/// Starts (id, µs) of the first span of each trace.
fn trace_starts(traces: &[serde_json::Value]) -> Vec<(String, i64)> {
    traces
        .iter()
        .map(|t| {
            (
                t["traceID"].as_str().unwrap().to_owned(),
                t["spans"][0]["startTime"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A backend whose retention (one hour, as configured) deletes the window's oldest traces while
/// the capture runs: 40 error traces in the first 4 s of a window that begins exactly one hour
/// before the capture, each search taking 1 s. The traces deleted before a search reached them
/// are missing, and every one lies inside the `expired` gap, which reaches to the retention's
/// edge when the capture ended (it used to stop at the edge when it began: a silent hole).
#[test]
fn traces_the_backend_s_retention_deletes_during_the_capture_lie_inside_the_expired_gap() {
    let s = scenario();
    let incident = read_json(&s.incident);
    let window_start =
        chrono::DateTime::parse_from_rfc3339(incident["window"]["start"].as_str().unwrap())
            .unwrap()
            .timestamp_micros();
    let traces = synthetic_traces(
        40,
        window_start + 300_000,
        window_start + 4_000_000,
        true,
        20_000,
        0,
    );
    let started = trace_starts(&traces);
    let server = Server::new(Api::V1, 500, traces);
    server.retention_s.store(3600, Ordering::SeqCst);
    server.delay_ms.store(1_000, Ordering::SeqCst);
    let (addr, server) = jaeger::start(server);
    let out = collect_from(
        &s,
        "--jaeger",
        &format!("http://{addr}"),
        &[("EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETENTION", "1h".into())],
    );
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    let got: BTreeSet<String> = bundle_trace_ids(&bundle, "errors").into_iter().collect();
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert!(
        got.len() < 40,
        "the retention deleted none of the traces before they were read: {} requests",
        server.request_count()
    );
    assert_eq!(manifest["completeness"]["status"], "partial");
    let silent = uncovered(gaps, &got, &started, |k| k == "expired");
    assert!(
        silent.is_empty(),
        "{} of 40 error traces captured; deleted with no expired gap covering them: {silent:?}\n{gaps:#?}",
        got.len()
    );
    let expired: Vec<&serde_json::Value> = gaps.iter().filter(|g| g["kind"] == "expired").collect();
    assert_eq!(expired.len(), 1, "{gaps:#?}");
    eprintln!(
        "retention: {} of 40 error traces read before deletion; expired gap {} to {}: {}",
        got.len(),
        expired[0]["start"],
        expired[0]["end"],
        expired[0]["message"]
    );
}

/// A backend that answers 30% of requests with 503 after 2 s, one that drops every third
/// connection mid-answer, and one that fails 90% of requests: each capture is complete through
/// retries, or partial with every missing error trace inside a gap that names it: never a
/// silent hole.
#[test]
fn a_flaky_slow_backend_and_one_that_drops_connections_leave_no_silent_hole() {
    let s = scenario();
    let start = us(Duration::minutes(20));
    let traces = synthetic_traces(40, start, us(Duration::minutes(10)), true, 1_500_000, 0);
    let started = trace_starts(&traces);
    for (name, flaky, reset_every, delay_ms, retries) in [
        ("30% 503s, 2 s each", 30, 0, 2_000, "4"),
        ("every third connection dropped", 0, 3, 0, "4"),
        // More failures than retries can carry: holes, each of which must be named.
        ("90% 503s, one retry", 90, 0, 0, "1"),
    ] {
        let server = Server::new(Api::V1, 500, traces.clone());
        server.flaky_percent.store(flaky, Ordering::SeqCst);
        server.reset_every.store(reset_every, Ordering::SeqCst);
        server.delay_ms.store(delay_ms, Ordering::SeqCst);
        let (addr, server) = jaeger::start(server);
        let out = collect_from(
            &s,
            "--jaeger",
            &format!("http://{addr}"),
            &[(
                "EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETRIES",
                retries.into(),
            )],
        );
        let bundle = bundle_dir(&out);
        let manifest = verify_manifest(&bundle);
        let got: BTreeSet<String> = bundle_trace_ids(&bundle, "errors").into_iter().collect();
        let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
        let retried = manifest["sources"][0]["queries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["attempts"].as_u64().unwrap_or(1) > 1)
            .count();
        assert!(retried > 0, "{name}: no query needed a retry");
        eprintln!(
            "{name}: {} requests, {retried} queries retried, {} of 40 error traces, status {}, {} gap(s)",
            server.request_count(),
            got.len(),
            manifest["completeness"]["status"],
            gaps.len()
        );
        let silent = uncovered(gaps, &got, &started, |_| true);
        assert!(
            silent.is_empty(),
            "{name}: error traces missing with no gap covering them: {silent:?}\n{gaps:#?}"
        );
        if got.len() == 40 {
            assert_eq!(manifest["counts"]["error_traces"], 40);
        } else {
            assert_eq!(manifest["completeness"]["status"], "partial", "{name}");
        }
    }
}
