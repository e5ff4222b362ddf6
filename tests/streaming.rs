//! The streaming capture of a large trace file: every trace and span counted and stored once,
//! traces whose spans are spread over the file put back together, repeated spans dropped and
//! noted, secrets redacted and counted; and streaming writes exactly what reading the file whole
//! writes.
//!
//! `EVIDENCE_LOCKER_TEST_SPANS` sets the size of the large file (default 100,000 spans, what CI
//! runs; `EVIDENCE_LOCKER_TEST_SPANS=1000000 cargo test --release --test streaming` is the
//! 1M-span check).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use support::*;

/// 2026-02-05T14:00:00Z in µs: the window's start.
const WINDOW_START_US: i64 = 1_770_300_000_000_000;
const WINDOW_US: i64 = 30 * 60 * 1_000_000;

fn trace_id(i: usize) -> String {
    format!("{:032x}", i + 1)
}

fn span(
    i: usize,
    n: usize,
    parent: Option<usize>,
    op: &str,
    start: i64,
    dur: i64,
    tags: Vec<serde_json::Value>,
) -> serde_json::Value {
    let refs: Vec<serde_json::Value> = parent
        .map(|p| json!({"refType": "CHILD_OF", "traceID": trace_id(i), "spanID": format!("{:016x}", p)}))
        .into_iter()
        .collect();
    json!({
        "traceID": trace_id(i),
        "spanID": format!("{:016x}", n),
        "operationName": op,
        "references": refs,
        "startTime": start,
        "duration": dur,
        "tags": tags,
        "logs": [],
        "processID": format!("p{n}"),
    })
}

fn processes() -> serde_json::Value {
    json!({
        "p1": {"serviceName": "gateway", "tags": []},
        "p2": {"serviceName": "checkout", "tags": []},
        "p3": {"serviceName": "payment", "tags": [{"key": "service.version", "type": "string", "value": "v2"}]},
        "p4": {"serviceName": "payment-db", "tags": []},
    })
}

/// What a generated file must turn into.
struct Expected {
    traces: usize,
    errors: usize,
    slow: usize,
    emails: usize,
    split: Vec<String>,
}

/// Writes `traces` four-span traces (gateway → checkout → payment → payment-db) spread over
/// the window, one Jaeger trace per line: every 10th fails, every 25th other one is slow, every
/// 7th carries an e-mail address; every 1000th has its last span (emitted by payment there) on
/// a line of its own at the end of the file; the fourth trace's line is written twice.
fn write_traces(path: &Path, traces: usize) -> Expected {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut tails = Vec::new();
    let mut expected = Expected {
        traces,
        errors: 0,
        slow: 0,
        emails: 0,
        split: Vec::new(),
    };
    let mut repeated = String::new();
    for i in 0..traces {
        let start = WINDOW_START_US + (i as i64) * (WINDOW_US / traces as i64);
        let error = i % 10 == 0;
        let slow = !error && i % 25 == 1;
        let root_us = if slow { 2_000_000 } else { 50_000 };
        expected.errors += usize::from(error);
        expected.slow += usize::from(slow);
        let mut payment_tags =
            vec![json!({"key": "span.kind", "type": "string", "value": "server"})];
        if error {
            payment_tags.push(json!({"key": "error", "type": "bool", "value": true}));
        }
        if i % 7 == 0 {
            payment_tags.push(json!({"key": "customer", "type": "string", "value": format!("user{i}@example.com")}));
            expected.emails += 1;
        }
        let spans = vec![
            span(i, 1, None, "GET /checkout", start, root_us, vec![]),
            span(i, 2, Some(1), "place-order", start + 1_000, 40_000, vec![]),
            span(i, 3, Some(2), "charge", start + 2_000, 30_000, payment_tags),
            span(i, 4, Some(3), "SELECT", start + 3_000, 10_000, vec![]),
        ];
        let (head, tail) = if i % 1000 == 500 {
            expected.split.push(trace_id(i));
            // The part split off shares a process (resource) with the rest of its trace, so
            // that how the parts' resources are grouped when written shows.
            let mut tail = spans[3..].to_vec();
            tail[0]["processID"] = json!("p3");
            (spans[..3].to_vec(), tail)
        } else {
            (spans, Vec::new())
        };
        let line =
            json!({"traceID": trace_id(i), "spans": head, "processes": processes()}).to_string();
        if i == 3 {
            repeated = line.clone();
        }
        writeln!(out, "{line}").unwrap();
        if !tail.is_empty() {
            tails.push(
                json!({"traceID": trace_id(i), "spans": tail, "processes": processes()})
                    .to_string(),
            );
        }
    }
    for line in tails.iter().chain([&repeated]) {
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    expected
}

fn incident(dir: &Path) -> PathBuf {
    let path = dir.join("incident.json");
    let start = chrono::DateTime::from_timestamp_micros(WINDOW_START_US).unwrap();
    let end = chrono::DateTime::from_timestamp_micros(WINDOW_START_US + WINDOW_US).unwrap();
    std::fs::write(
        &path,
        json!({
            "id": "INC-STREAM",
            "declared_at": end.to_rfc3339(),
            "started_at": start.to_rfc3339(),
            "window": {"start": start.to_rfc3339(), "end": end.to_rfc3339()},
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// Spans in one OTLP JSON line, counted without the code under test.
fn otlp_spans(line: &serde_json::Value) -> usize {
    line["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().unwrap())
        .map(|s| s["spans"].as_array().unwrap().len())
        .sum()
}

#[test]
fn a_large_file_is_captured_whole_every_trace_once() {
    let spans: usize = std::env::var("EVIDENCE_LOCKER_TEST_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.jsonl");
    let want = write_traces(&file, spans / 4);
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident(dir.path()).to_str().unwrap(),
            "--traces-file",
            file.to_str().unwrap(),
            "--out",
            dir.path().join("evidence").to_str().unwrap(),
        ],
        &[(
            "EVIDENCE_LOCKER__CAPTURE__MAX_TRACES",
            (want.traces + 1).to_string(),
        )],
    );
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    assert_eq!(
        manifest["completeness"]["status"], "complete",
        "{}",
        manifest["completeness"]
    );
    let counts = &manifest["counts"];
    assert_eq!(counts["traces"], want.traces);
    assert_eq!(counts["spans"], want.traces * 4);
    assert_eq!(counts["error_traces"], want.errors);
    assert_eq!(counts["slow_traces"], want.slow);
    assert_eq!(
        counts["sample_traces"],
        want.traces - want.errors - want.slow
    );
    assert_eq!(counts["baseline_traces"], 0);
    let notes = &manifest["sources"][0]["notes"];
    assert_eq!(notes["spans read"], want.traces * 4, "{notes}");
    assert_eq!(
        notes["spans read twice (same id, service, operation and start), kept once"], 4,
        "{notes}"
    );
    assert_eq!(manifest["redaction"]["rules"]["email"], want.emails);

    // Every trace in exactly one file, each line a whole trace (the split ones put together).
    let mut seen = BTreeSet::new();
    let mut lines = 0;
    for name in ["errors", "slow", "baseline", "sample", "context"] {
        let bytes = std::fs::read(bundle.join("traces").join(format!("{name}.jsonl.zst"))).unwrap();
        let text = zstd::decode_all(&bytes[..]).unwrap();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            let id = v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(otlp_spans(&v), 4, "trace {id} in {name}");
            assert!(
                !String::from_utf8_lossy(line).contains("@example.com"),
                "an e-mail in {name}"
            );
            assert!(seen.insert(id), "a trace twice");
            lines += 1;
        }
    }
    assert_eq!(lines, want.traces);
    let all: BTreeSet<String> = (0..want.traces).map(trace_id).collect();
    assert_eq!(seen, all);
    assert!(want.split.iter().all(|id| seen.contains(id)));
}

/// A bundle's file, decompressed.
fn read_bundle_file(bundle: &Path, file: &str) -> Vec<u8> {
    let raw = std::fs::read(bundle.join(file)).unwrap();
    if file.ends_with(".zst") {
        zstd::decode_all(&raw[..]).unwrap()
    } else {
        raw
    }
}

/// Every trace file, the analysis and the timeline of two bundles are the same bytes.
fn assert_same_evidence(a: &Path, b: &Path) {
    for f in [
        "traces/errors.jsonl.zst",
        "traces/slow.jsonl.zst",
        "traces/baseline.jsonl.zst",
        "traces/sample.jsonl.zst",
        "traces/context.jsonl.zst",
        "traces/jaeger-ui.json",
        "analysis.json",
        "timeline.json",
    ] {
        assert!(
            read_bundle_file(a, f) == read_bundle_file(b, f),
            "{f} differs"
        );
    }
}

/// Collects `file` through the library, streaming or reading it whole.
fn collect_with(file: &Path, incident_file: &Path, out: &Path, streaming: bool) -> PathBuf {
    use evidence_locker::capture::file::FileSource;
    use evidence_locker::collect::{self, CollectRequest, TraceInput};
    let settings = evidence_locker::config::Settings::load(None).unwrap();
    let spill = streaming.then(|| collect::file_spill(&settings).unwrap());
    let files = FileSource::read(&[file.to_path_buf()], spill).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(collect::collect(
            &settings,
            CollectRequest {
                incident: Some(collect::read_incident(incident_file).unwrap()),
                input: TraceInput::Files(files),
                out: out.to_path_buf(),
                now: chrono::Utc::now(),
                retention: Default::default(),
            },
        ))
        .unwrap();
    outcome.bundle_dir
}

#[test]
fn streaming_writes_what_reading_the_file_whole_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.jsonl");
    // 3,000 traces: several 1 MiB parts, three traces split across them, one line repeated.
    let want = write_traces(&file, 3_000);
    assert_eq!(want.split.len(), 3);
    let incident_file = incident(dir.path());
    let whole = collect_with(&file, &incident_file, &dir.path().join("whole"), false);
    let streamed = collect_with(&file, &incident_file, &dir.path().join("streamed"), true);
    assert_same_evidence(&whole, &streamed);
    let manifest = |b: &Path| read_json(&b.join("manifest.json"));
    let (m1, m2) = (manifest(&whole), manifest(&streamed));
    for key in ["counts", "redaction", "completeness"] {
        assert_eq!(m1[key], m2[key], "{key}");
    }
    assert_eq!(m1["sources"][0]["notes"], m2["sources"][0]["notes"]);
    assert!(m2["redaction"]["rules"]["email"].as_u64().unwrap() > 0);
}

/// A backend capture that writes each answer to its temporary file as it comes (what `collect`
/// and the worker do) writes the same bundle as one that keeps the backend's traces whole in
/// memory: every trace file byte for byte, the analysis, the timeline, the counts, the gaps and
/// what redaction replaced (a secret in a trace that three searches return is counted once).
#[test]
fn a_backend_capture_written_as_it_comes_writes_what_holding_it_whole_writes() {
    use evidence_locker::capture::{self, jaeger::JaegerSource};
    use evidence_locker::collect;
    use evidence_locker::config::BackendSettings;
    use support::jaeger::{Api, Server, synthetic_traces};

    let us = |min: i64| WINDOW_START_US + min * 60_000_000;
    // Failing and slow (found by the error, slow and sample searches), failing and fast,
    // normal; every failing call carries a customer's e-mail address.
    let mut traces = synthetic_traces(40, us(5), us(20), true, 3_000_000, 0);
    traces.extend(synthetic_traces(25, us(6), us(21), true, 20_000, 1_000));
    traces.extend(synthetic_traces(60, us(1), us(28), false, 20_000, 2_000));
    let mut secrets = 0;
    for t in &mut traces {
        let child = &mut t["spans"][1];
        if child["tags"].as_array().unwrap().len() > 1 {
            child["tags"].as_array_mut().unwrap().push(
                json!({"key": "customer", "type": "string", "value": "jane.doe@example.com"}),
            );
            secrets += 1;
        }
    }
    assert_eq!(secrets, 65);
    let (addr, _server) = support::jaeger::start(Server::new(Api::V3, 500, traces));

    let dir = tempfile::tempdir().unwrap();
    let mut settings = evidence_locker::config::Settings::load(None).unwrap();
    settings.capture.slow_threshold = std::time::Duration::from_secs(1);
    let backend = BackendSettings {
        url: format!("http://{addr}"),
        retention: std::time::Duration::from_secs(20 * 365 * 86_400),
        ..Default::default()
    };
    let sources: Vec<Box<dyn capture::TraceSource>> =
        vec![Box::new(JaegerSource::new("jaeger", &backend).unwrap())];
    let incident = collect::read_incident(&incident(dir.path())).unwrap();
    let defaults = evidence_locker::model::WindowDefaults {
        lookback: settings.capture.lookback,
        max_window: settings.capture.max_window,
    };
    let now = chrono::DateTime::from_timestamp_micros(us(31)).unwrap();
    let window = incident.resolve_window(&defaults, now).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bundle = |written_as_it_comes: bool| {
        let mut plan = collect::plan(&settings, incident.clone(), window);
        if written_as_it_comes {
            plan.store = Some(collect::backend_spill(&settings).unwrap());
        }
        let out = dir.path().join(if written_as_it_comes {
            "streamed"
        } else {
            "whole"
        });
        std::fs::create_dir_all(&out).unwrap();
        runtime.block_on(async {
            let mut c = capture::run(&sources, &plan).await;
            evidence_locker::redact::redact_capture(&settings.redaction, &mut c).unwrap();
            assert_eq!(c.spill.is_some(), written_as_it_comes);
            let opts = evidence_locker::bundle::BundleOptions {
                capture_id: "CAPTURE".into(),
                error_rate_threshold: settings.analysis.error_rate_threshold,
                zstd_level: 3,
                retention: Default::default(),
                kind: None,
                previous: None,
                signer: None,
                trace_url: None,
            };
            collect::write_into(out.clone(), plan, c, opts)
                .await
                .unwrap();
        });
        out
    };
    let whole = bundle(false);
    let streamed = bundle(true);
    assert_same_evidence(&whole, &streamed);
    let (m1, m2) = (
        read_json(&whole.join("manifest.json")),
        read_json(&streamed.join("manifest.json")),
    );
    for key in ["counts", "redaction", "completeness", "gaps"] {
        assert_eq!(m1[key], m2[key], "{key}");
    }
    // The 40 slow failing traces were returned by three searches each: their secret is
    // counted once, with the 25 others.
    assert_eq!(m2["counts"]["error_traces"], 65, "{}", m2["counts"]);
    assert_eq!(
        m2["redaction"]["rules"]["email"], secrets,
        "{}",
        m2["redaction"]
    );
    // The attributes were written whole, and redacted.
    let errors = String::from_utf8(read_bundle_file(&streamed, "traces/errors.jsonl.zst")).unwrap();
    assert!(errors.contains("card declined") && !errors.contains("jane.doe@example.com"));
    assert_eq!(errors.matches("\"customer\"").count(), 65);
}
