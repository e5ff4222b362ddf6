//! The demo bundle, byte for byte: the SHA-256 of each trace file's content (decompressed: the
//! compressed bytes depend on the zstd version), of analysis.json and of timeline.json, as this
//! version writes them for `examples/traces.jsonl.zst`. A faster path (issue 16's streaming
//! capture) must leave them unchanged; a change that means to alter them updates the figures
//! here and says why in its commit.

mod support;

use std::io::Read;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use support::*;

const GOLDEN: [(&str, &str); 8] = [
    (
        "traces/errors.jsonl.zst",
        "e3244916a2ad28b14ceade92a8bdd1a270b68193ebe8dae4272a9c217d758c0b",
    ),
    (
        "traces/slow.jsonl.zst",
        "94f895364e5f3e67a5104b4d8765d203101d954046c38984f8dabf2034435ce6",
    ),
    (
        "traces/baseline.jsonl.zst",
        "53a50c2ebd0c32fbd530f7dbf6579ea23313899535a789aef51458db200c7e52",
    ),
    (
        "traces/sample.jsonl.zst",
        "a754956c38d8bf68a3d2ba45b6dc728e2c76432bb598a9aa5d1ee49e2328ae14",
    ),
    (
        "traces/context.jsonl.zst",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    (
        "traces/jaeger-ui.json",
        "1b05eb33c913db1e2404a84233907636812bafdfe9773f6878cbd86d6f8047c0",
    ),
    (
        "analysis.json",
        "bd3bac41a5c97251cacb30974535755f7001a0ba9c24b50259d0134488b8d8fd",
    ),
    (
        "timeline.json",
        "bbf989e1c9e3edcb8f56c8ae6e5e87aac9c18e637813fa06f0bd1b1a5563f2a7",
    ),
];

#[test]
fn the_demo_bundle_s_traces_and_analysis_are_the_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["demo", "--out", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = PathBuf::from(stdout(&out).lines().next().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let mut changed = Vec::new();
    for (file, want) in GOLDEN {
        let raw = std::fs::read(bundle.join(file)).unwrap();
        let content = if file.ends_with(".zst") {
            let mut text = Vec::new();
            zstd::Decoder::new(&raw[..])
                .unwrap()
                .read_to_end(&mut text)
                .unwrap();
            text
        } else {
            raw
        };
        let got = hex::encode(Sha256::digest(&content));
        if got != want {
            changed.push(format!("{file}: {got}"));
        }
    }
    assert!(
        changed.is_empty(),
        "the demo bundle changed (update GOLDEN only for a change meant to alter it):\n{}",
        changed.join("\n")
    );
}

/// The report of the same evidence is the same page: two captures of the demo differ only in
/// their capture id. (The propagation graph's boxes were drawn in a hash map's order, so the
/// report's bytes, and the manifest's checksum of it, changed from one capture to the next.)
#[test]
fn two_captures_of_the_same_evidence_write_the_same_report() {
    let report = |dir: &std::path::Path| {
        let out = run_cli(&["demo", "--out", dir.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let bundle = PathBuf::from(stdout(&out).lines().next().unwrap())
            .parent()
            .unwrap()
            .to_owned();
        let capture = bundle.file_name().unwrap().to_str().unwrap().to_owned();
        let html = std::fs::read_to_string(bundle.join("report.html")).unwrap();
        assert!(html.contains("propagation graph of 4 services"));
        html.replace(&capture, "CAPTURE")
    };
    let first = report(tempfile::tempdir().unwrap().path());
    // Enough captures that boxes in a random order would show it (4 boxes: 1 in 24 alike).
    for _ in 0..3 {
        let again = report(tempfile::tempdir().unwrap().path());
        assert!(first == again, "the report changed between two captures");
    }
}
