//! `collect --tempo` and `collect --zipkin` against loopback servers with the real APIs'
//! semantics: every error trace under a result cap, Tempo's stripped ids, its v1 fallback and
//! PARTIAL answers, a backend that times out, and several backends merged by trace id.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::Duration;
use support::jaeger::synthetic_traces;
use support::*;
use support::{tempo, zipkin};

fn queries<'a>(
    manifest: &'a serde_json::Value,
    source: usize,
    path: &str,
) -> Vec<&'a serde_json::Value> {
    manifest["sources"][source]["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["url"].as_str().unwrap().contains(path))
        .collect()
}

#[test]
fn zipkin_cap_of_500_still_yields_all_5000_error_traces() {
    let s = scenario();
    let traces = many_errors().iter().map(zipkin::from_jaeger).collect();
    let (addr, _server) = zipkin::start(zipkin::Server::new(500, traces));
    let out = collect_from(&s, "--zipkin", &format!("http://{addr}"), &[]);
    let bundle = bundle_dir(&out);
    let manifest = assert_all_errors_captured(&bundle);
    let searches = queries(&manifest, 0, "/api/v2/traces");
    assert!(searches.iter().filter(|q| q["reason"] == "split").count() >= 10);
    // Zipkin's units: endTs and lookback in ms, minDuration in µs.
    let slow = searches.iter().find(|q| q["purpose"] == "slow").unwrap();
    assert_eq!(slow["params"]["minDuration"], "1000000");
    let end_ts: i64 = slow["params"]["endTs"].as_str().unwrap().parse().unwrap();
    assert!(
        (end_ts - chrono::Utc::now().timestamp_millis()).abs() < 3_600_000,
        "endTs in ms: {end_ts}"
    );
    assert_eq!(searches[0]["params"]["serviceName"], "payment");
}

#[test]
fn zipkin_fixture_traces_served_by_the_backend_land_in_the_bundle() {
    // openzipkin's messaging-kafka trace: 28 spans, three with an `error` tag.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zipkin/v2-trace_messaging-kafka.json");
    let spans: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let first_ms = spans
        .iter()
        .map(|s| s["timestamp"].as_i64().unwrap())
        .min()
        .unwrap()
        / 1000;
    let t = chrono::DateTime::from_timestamp_millis(first_ms).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        serde_json::json!({
            "id": "INC-KAFKA", "declared_at": t.to_rfc3339(), "started_at": t.to_rfc3339(),
            "window": {"start": (t - Duration::minutes(10)).to_rfc3339(), "end": (t + Duration::minutes(10)).to_rfc3339()},
        })
        .to_string(),
    )
    .unwrap();
    let (addr, _server) = zipkin::start(zipkin::Server::new(10, vec![spans]));
    let out_dir = dir.path().join("evidence");
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--zipkin",
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
    assert_eq!(
        manifest["completeness"]["status"], "complete",
        "{:#}",
        manifest["completeness"]
    );
    assert_eq!(manifest["counts"]["error_traces"], 1);
    assert_eq!(manifest["counts"]["spans"], 28);
    // Without services in the incident, Zipkin is searched across all of them at once.
    assert!(
        queries(&manifest, 0, "/api/v2/traces")
            .iter()
            .all(|q| q["params"].get("serviceName").is_none())
    );
}

#[test]
fn tempo_cap_of_500_still_yields_all_5000_error_traces_despite_stripped_ids() {
    let s = scenario();
    let (addr, server) = tempo::start(tempo::Server::new(500, many_errors()));
    let out = collect_from(
        &s,
        "--tempo",
        &format!("http://{addr}"),
        &[(
            "EVIDENCE_LOCKER__BACKENDS__DEFAULT__CONCURRENCY",
            "8".into(),
        )],
    );
    let bundle = bundle_dir(&out);
    // The ids come back from search as e.g. "1388": re-padded, they match the traces.
    let manifest = assert_all_errors_captured(&bundle);
    let searches = queries(&manifest, 0, "/api/search");
    assert!(searches.iter().filter(|q| q["reason"] == "split").count() >= 10);
    let errors = searches.iter().find(|q| q["purpose"] == "errors").unwrap();
    assert_eq!(
        errors["params"]["q"],
        "{ resource.service.name = \"payment\" && status = error }"
    );
    let (start, end): (i64, i64) = (
        errors["params"]["start"].as_str().unwrap().parse().unwrap(),
        errors["params"]["end"].as_str().unwrap().parse().unwrap(),
    );
    assert!(
        end > start && (end - start) < 7200,
        "seconds, not ms: {start}..{end}"
    );
    // Every trace was fetched once, by its full id.
    let fetches = queries(&manifest, 0, "/api/v2/traces/");
    let ids: BTreeSet<&str> = fetches
        .iter()
        .map(|q| {
            q["url"]
                .as_str()
                .unwrap()
                .split('?')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), fetches.len(), "a trace fetched twice");
    assert_eq!(fetches.len(), 5300);
    assert!(ids.iter().all(|id| id.len() == 32));
    assert_eq!(
        server.requests.lock().unwrap().len(),
        manifest["sources"][0]["queries"].as_array().unwrap().len()
    );
}

#[test]
fn an_older_tempo_is_read_through_api_traces_and_a_partial_trace_is_a_gap() {
    let s = scenario();
    let traces = synthetic_traces(
        20,
        us(Duration::minutes(20)),
        us(Duration::minutes(10)),
        true,
        20_000,
        0,
    );
    let mut server = tempo::Server::new(500, traces.clone());
    server.v1_only = true;
    let (addr, _server) = tempo::start(server);
    let bundle = bundle_dir(&collect_from(&s, "--tempo", &format!("http://{addr}"), &[]));
    let manifest = verify_manifest(&bundle);
    assert_eq!(manifest["counts"]["error_traces"], 20);
    assert_eq!(manifest["sources"][0]["api"], "tempo-search+v1-traces");
    assert_eq!(manifest["completeness"]["status"], "complete");

    let s = scenario();
    let mut server = tempo::Server::new(500, traces);
    server.partial.insert(format!("{:032x}", 3));
    let (addr, _server) = tempo::start(server);
    let out = collect_from(&s, "--tempo", &format!("http://{addr}"), &[]);
    let manifest = verify_manifest(&bundle_dir(&out));
    assert_eq!(
        manifest["counts"]["error_traces"], 20,
        "a partial trace is kept"
    );
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    assert_eq!(gaps[0]["kind"], "partial_trace");
    assert!(
        gaps[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{:032x}", 3))
    );
    assert!(stdout(&out).contains("status: partial"));
}

#[test]
fn a_backend_that_times_out_is_a_gap_not_a_crash() {
    let s = scenario();
    let mut server = tempo::Server::new(500, many_errors());
    server.delay = std::time::Duration::from_secs(3);
    let (addr, _server) = tempo::start(server);
    let out = collect_from(
        &s,
        "--tempo",
        &format!("http://{addr}"),
        &[
            (
                "EVIDENCE_LOCKER__BACKENDS__DEFAULT__TIMEOUT",
                "300ms".into(),
            ),
            ("EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETRIES", "1".into()),
        ],
    );
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    let gap = &manifest["completeness"]["gaps"][0];
    assert_eq!(gap["kind"], "backend_unavailable");
    assert!(
        gap["message"].as_str().unwrap().contains("timed out"),
        "{gap:#}"
    );
    assert!(stdout(&out).contains("status: partial"));
}

#[test]
fn several_backends_at_once_are_merged_and_deduplicated_by_trace_id() {
    let s = scenario();
    let all = many_errors();
    // Jaeger holds the first 3,000 error traces, Zipkin the last 3,000: 1,000 in both.
    let (jaeger_addr, _j) = support::jaeger::start(support::jaeger::Server::new(
        support::jaeger::Api::V1,
        500,
        all[..3000].iter().chain(&all[5000..]).cloned().collect(),
    ));
    let (zipkin_addr, _z) = zipkin::start(zipkin::Server::new(
        500,
        all[2000..].iter().map(zipkin::from_jaeger).collect(),
    ));
    let out_dir = s.dir.path().join("evidence");
    let out = run_cli(
        &[
            "collect",
            "--incident",
            s.incident.to_str().unwrap(),
            "--jaeger",
            &format!("http://{jaeger_addr}"),
            "--zipkin",
            &format!("http://{zipkin_addr}"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let bundle = bundle_dir(&out);
    let manifest = assert_all_errors_captured(&bundle);
    let kinds: Vec<&str> = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["jaeger", "zipkin"]);
    // Traces found by both sources are stored once, with their spans not doubled.
    assert_eq!(manifest["counts"]["spans"], (5000 + 300) * 2);
}

#[test]
fn a_misspelt_service_is_a_gap_through_tempo_and_zipkin_ignores_case() {
    let s = scenario().with_services(&["paymnet"]);
    let traces = synthetic_traces(
        10,
        us(Duration::minutes(20)),
        us(Duration::minutes(10)),
        true,
        20_000,
        0,
    );
    let (addr, _server) = tempo::start(tempo::Server::new(500, traces.clone()));
    let manifest = verify_manifest(&bundle_dir(&collect_from(
        &s,
        "--tempo",
        &format!("http://{addr}"),
        &[],
    )));
    assert_eq!(
        manifest["completeness"]["gaps"][0]["kind"],
        "unknown_service"
    );

    // Zipkin lower-cases service names: "Payment" is payment.
    let s = scenario().with_services(&["Payment"]);
    let (addr, _server) = zipkin::start(zipkin::Server::new(
        500,
        traces.iter().map(zipkin::from_jaeger).collect(),
    ));
    let manifest = verify_manifest(&bundle_dir(&collect_from(
        &s,
        "--zipkin",
        &format!("http://{addr}"),
        &[],
    )));
    assert_eq!(
        manifest["completeness"]["status"], "complete",
        "{:#}",
        manifest["completeness"]
    );
    assert_eq!(manifest["counts"]["error_traces"], 10);
}
