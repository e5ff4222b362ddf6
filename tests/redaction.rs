//! Canary secrets planted in every place a value can hide, in OTLP, Jaeger and Zipkin input:
//! not one canary byte may reach any file of the bundle (decompressed), and the manifest counts
//! what each rule redacted.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::*;

/// Each canary and the rule expected to catch it.
const CANARIES: &[&str] = &[
    "cAnArY1bearerTOKENxyz",
    "canary.two@example.org",
    "4111111111111111",
    "AKIACANARY4EXAMPLE12",
    "canary5-pw-Zq9",
    "canary.six@example.net",
    "canary7scope",
    "canary.eight@example.com",
    "canary9link",
];

const T0_NS: i64 = 1_764_590_000_000_000_000;

fn otlp() -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "payment"}},
            {"key": "db.password", "value": {"stringValue": "canary5-pw-Zq9"}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "payment-lib", "attributes": [
                {"key": "auth.token", "value": {"stringValue": "canary7scope"}},
            ]},
            "spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "name": "GET /users/canary.six@example.net", "kind": 2,
                "startTimeUnixNano": T0_NS.to_string(),
                "endTimeUnixNano": (T0_NS + 20_000_000).to_string(),
                "attributes": [
                    {"key": "http.request.header.authorization", "value": {"stringValue": "Bearer cAnArY1bearerTOKENxyz"}},
                    {"key": "user.contact", "value": {"stringValue": "canary.two@example.org"}},
                    {"key": "payment.note", "value": {"stringValue": "card 4111111111111111 declined"}},
                ],
                "events": [{
                    "timeUnixNano": (T0_NS + 10_000_000).to_string(),
                    "name": "login canary.eight@example.com",
                    "attributes": [
                        {"key": "exception.message", "value": {"stringValue": "no account for canary.two@example.org"}},
                    ],
                }],
                "links": [{
                    "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                    "attributes": [{"key": "session.id", "value": {"stringValue": "canary9link"}}],
                }],
                "status": {"code": 2, "message": "s3 put failed with key AKIACANARY4EXAMPLE12"},
            }],
        }],
    }]})
}

fn jaeger() -> Value {
    let us = T0_NS / 1000;
    json!({"traceID": "5b8efff798038103d269b633813fc60c", "spans": [{
        "traceID": "5b8efff798038103d269b633813fc60c", "spanID": "eee19b7ec3c1b174",
        "operationName": "GET /users/canary.six@example.net", "references": [],
        "startTime": us, "duration": 20_000, "processID": "p1",
        "tags": [
            {"key": "span.kind", "type": "string", "value": "server"},
            {"key": "error", "type": "bool", "value": true},
            {"key": "http.request.header.authorization", "type": "string", "value": "Bearer cAnArY1bearerTOKENxyz"},
            {"key": "user.contact", "type": "string", "value": "canary.two@example.org"},
            {"key": "payment.note", "type": "string", "value": "card 4111111111111111 declined"},
            {"key": "otel.status_description", "type": "string", "value": "s3 put failed with key AKIACANARY4EXAMPLE12"},
            {"key": "otel.scope.name", "type": "string", "value": "payment-lib"},
            {"key": "auth.token", "type": "string", "value": "canary7scope"},
            {"key": "session.id", "type": "string", "value": "canary9link"},
        ],
        "logs": [{"timestamp": us + 10_000, "fields": [
            {"key": "event", "type": "string", "value": "login canary.eight@example.com"},
            {"key": "exception.message", "type": "string", "value": "no account for canary.two@example.org"},
        ]}],
    }], "processes": {"p1": {"serviceName": "payment", "tags": [
        {"key": "db.password", "type": "string", "value": "canary5-pw-Zq9"},
    ]}}})
}

fn zipkin() -> Value {
    let us = T0_NS / 1000;
    json!([{
        "traceId": "d269b633813fc60c", "id": "eee19b7ec3c1b174", "kind": "SERVER",
        "name": "get /users/canary.six@example.net", "timestamp": us, "duration": 20_000,
        "localEndpoint": {"serviceName": "payment"},
        "annotations": [{"timestamp": us + 10_000, "value": "login canary.eight@example.com"}],
        "tags": {
            "http.request.header.authorization": "Bearer cAnArY1bearerTOKENxyz",
            "user.contact": "canary.two@example.org",
            "payment.note": "card 4111111111111111 declined",
            "error": "s3 put failed with key AKIACANARY4EXAMPLE12",
            "db.password": "canary5-pw-Zq9",
            "auth.token": "canary7scope",
            "session.id": "canary9link",
            "exception.message": "no account for canary.two@example.org",
        },
    }])
}

/// Every file under `dir`, decompressed when it is zstd.
fn every_file(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            every_file(&p, out);
        } else {
            let raw = std::fs::read(&p).unwrap();
            let bytes = if p.extension().is_some_and(|x| x == "zst") {
                zstd::decode_all(&raw[..]).unwrap()
            } else {
                raw
            };
            out.push((p.display().to_string(), bytes));
        }
    }
}

fn collect(input: &str, name: &str) -> (Value, Vec<(String, Vec<u8>)>) {
    collect_with(input, name, &[])
}

fn collect_with(
    input: &str,
    name: &str,
    env: &[(&str, String)],
) -> (Value, Vec<(String, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, input).unwrap();
    let out = run_cli(
        &[
            "collect",
            "--traces-file",
            file.to_str().unwrap(),
            "--out",
            dir.path().join("evidence").to_str().unwrap(),
        ],
        env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    if env.is_empty() {
        // Nothing on the terminal either.
        for c in CANARIES {
            assert!(
                !stdout(&out).contains(c) && !stderr(&out).contains(c),
                "{c}"
            );
        }
    }
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    let mut files = Vec::new();
    every_file(&bundle, &mut files);
    (manifest, files)
}

fn assert_no_canary(files: &[(String, Vec<u8>)], format: &str) {
    let mut seen = 0;
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for c in CANARIES {
            assert!(!text.contains(c), "{format}: {c} in {path}");
        }
        seen += 1;
    }
    // The bundle's files, traces to reports.
    assert!(seen >= 8, "{format}: only {seen} files");
    let all: String = files
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    // The rest of the text is kept around what was redacted.
    assert!(
        all.contains("declined") && all.contains("s3 put failed with key"),
        "{format}"
    );
}

#[test]
fn canaries_in_otlp_reach_no_file_of_the_bundle_and_are_counted_per_rule() {
    let (manifest, files) = collect(&otlp().to_string(), "t.json");
    assert_no_canary(&files, "otlp");
    let r = &manifest["redaction"];
    assert_eq!(r["enabled"], true);
    // authorization (span), db.password (resource), auth.token (scope), session.id (link).
    assert_eq!(r["rules"]["key"], 4, "{r:#}");
    // user.contact, exception.message, the operation name, the event name.
    assert_eq!(r["rules"]["email"], 4, "{r:#}");
    assert_eq!(r["rules"]["card_number"], 1, "{r:#}");
    assert_eq!(r["rules"]["aws_access_key"], 1, "{r:#}");
    // The report says what was done.
    let report = files
        .iter()
        .find(|(p, _)| p.ends_with("report.html"))
        .unwrap();
    assert!(String::from_utf8_lossy(&report.1).contains("Redaction: 10 value(s) replaced"));
}

#[test]
fn canaries_in_jaeger_and_zipkin_input_reach_no_file_of_the_bundle() {
    let (manifest, files) = collect(&jaeger().to_string(), "t.json");
    assert_no_canary(&files, "jaeger");
    assert!(manifest["redaction"]["rules"]["key"].as_u64().unwrap() >= 4);
    let (manifest, files) = collect(&zipkin().to_string(), "z.json");
    assert_no_canary(&files, "zipkin");
    assert!(manifest["redaction"]["rules"]["email"].as_u64().unwrap() >= 3);
}

#[test]
fn redaction_disabled_is_said_in_the_manifest_and_the_report() {
    let (manifest, files) = collect_with(
        &otlp().to_string(),
        "t.json",
        &[("EVIDENCE_LOCKER__REDACTION__ENABLED", "false".into())],
    );
    assert_eq!(manifest["redaction"]["enabled"], false);
    let report = files
        .iter()
        .find(|(p, _)| p.ends_with("report.html"))
        .unwrap();
    let report = String::from_utf8_lossy(&report.1);
    assert!(report.contains("Redaction was disabled"), "{report}");
    // And the values are as written.
    assert!(report.contains("canary.six@example.net"));
}

#[test]
fn a_bad_redaction_pattern_or_a_backend_url_with_a_query_string_stops_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    std::fs::write(&file, otlp().to_string()).unwrap();
    let out = run_cli(
        &["collect", "--traces-file", file.to_str().unwrap()],
        &[("EVIDENCE_LOCKER__REDACTION__VALUES", "[\"(\"]".into())],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("redaction.values[0]"),
        "{}",
        stderr(&out)
    );

    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        r#"{"id":"INC-Q","declared_at":"2026-02-05T14:40:00Z"}"#,
    )
    .unwrap();
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--tempo",
            "https://tempo.example/?sig=s3cr3t&X-Amz-Credential=AKIAX&jwt=eyJabc&pwd=hunter2",
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("query string"), "{err}");
    for secret in ["s3cr3t", "AKIAX", "eyJabc", "hunter2"] {
        assert!(!err.contains(secret), "{secret} in {err}");
    }
}
