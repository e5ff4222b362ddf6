//! `evidence-locker replay` into the real Jaeger 2.13: after the replay every trace of the
//! bundle is found there by id, with the same spans. A tampered trace file is refused before
//! anything is sent.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use support::real::Jaeger;
use support::*;

/// Every trace of a bundle's trace files: id → its span ids.
fn bundle_spans(bundle: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(bundle.join("traces")).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".jsonl.zst") {
            continue;
        }
        let text = zstd::decode_all(&std::fs::read(&p).unwrap()[..]).unwrap();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let doc: Value = serde_json::from_slice(line).unwrap();
            for rs in doc["resourceSpans"].as_array().unwrap() {
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        out.entry(s["traceId"].as_str().unwrap().to_owned())
                            .or_default()
                            .insert(s["spanId"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
    }
    out
}

/// The span ids Jaeger holds for a trace (v3 API), empty when it has none.
fn jaeger_spans(jaeger: &Jaeger, trace_id: &str) -> BTreeSet<String> {
    let r = reqwest::blocking::get(format!("{}/api/v3/traces/{trace_id}", jaeger.url())).unwrap();
    if !r.status().is_success() {
        return BTreeSet::new();
    }
    let v: Value = r.json().unwrap();
    v["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|ss| ss["spans"].as_array().into_iter().flatten())
        .map(|s| s["spanId"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_replayed_bundle_is_found_in_jaeger_trace_by_trace_with_the_same_spans() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        &[
            "collect",
            "--incident",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/incident.json"),
            "--traces-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/traces.jsonl.zst"),
            "--out",
            dir.path().join("evidence").to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = bundle_dir(&out);
    let want = bundle_spans(&bundle);
    assert!(want.len() > 1000, "{} traces", want.len());

    let jaeger = Jaeger::start(100_000, None);
    let otlp = format!("http://127.0.0.1:{}", jaeger.otlp_port);
    let out = run_cli(&["replay", bundle.to_str().unwrap(), "--otlp", &otlp], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.starts_with(&format!("sent {} traces (", want.len())),
        "{said}"
    );
    eprintln!("{said}");
    // Jaeger writes asynchronously: wait until the last trace is there.
    let last = want.keys().last().unwrap().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while jaeger_spans(&jaeger, &last).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "Jaeger never got {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut missing = Vec::new();
    for (id, spans) in &want {
        let got = jaeger_spans(&jaeger, id);
        if &got != spans {
            missing.push((id.clone(), spans.len(), got.len()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} traces differ in Jaeger, first: {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );

    // Only some files; and a file that no longer matches the manifest is never sent.
    let out = run_cli(
        &[
            "replay",
            bundle.to_str().unwrap(),
            "--otlp",
            &otlp,
            "--only",
            "errors,slow",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let f = bundle.join("traces/baseline.jsonl.zst");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let out = run_cli(&["replay", bundle.to_str().unwrap(), "--otlp", &otlp], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("traces/baseline.jsonl.zst does not match the manifest"),
        "{}",
        stderr(&out)
    );
}
