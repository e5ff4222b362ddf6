//! Test helpers: a loopback Jaeger query service with the real API's semantics, synthetic traces,
//! and a runner for the real binary.

#![allow(dead_code)]

pub mod jaeger;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `evidence-locker` binary with `args` and extra environment variables.
pub fn run_cli(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evidence-locker"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Keep the developer's own overrides out of the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("EVIDENCE_LOCKER__") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("the binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The bundle directory a successful `collect` printed on its first line.
pub fn bundle_dir(o: &Output) -> PathBuf {
    assert!(o.status.success(), "collect failed: {}", stderr(o));
    PathBuf::from(stdout(o).lines().next().expect("a bundle path").trim())
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Trace ids (hex) of a bundle's `traces/<name>.jsonl.zst`, one per line, read independently of
/// the code under test.
pub fn bundle_trace_ids(bundle: &Path, name: &str) -> Vec<String> {
    let bytes = std::fs::read(bundle.join("traces").join(format!("{name}.jsonl.zst"))).unwrap();
    let text = zstd::decode_all(&bytes[..]).unwrap();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Checks every file the manifest lists: size and SHA-256 match, and nothing is unlisted.
pub fn verify_manifest(bundle: &Path) -> serde_json::Value {
    use sha2::Digest;
    let manifest = read_json(&bundle.join("manifest.json"));
    let mut listed = Vec::new();
    for f in manifest["files"].as_array().unwrap() {
        let rel = f["path"].as_str().unwrap();
        let bytes = std::fs::read(bundle.join(rel)).unwrap();
        assert_eq!(
            bytes.len() as u64,
            f["bytes"].as_u64().unwrap(),
            "{rel} size"
        );
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap(),
            "{rel} sha256"
        );
        listed.push(rel.to_owned());
    }
    let mut on_disk = Vec::new();
    for entry in walk(bundle) {
        let rel = entry
            .strip_prefix(bundle)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel != "manifest.json" {
            on_disk.push(rel);
        }
    }
    listed.sort();
    on_disk.sort();
    assert_eq!(
        listed, on_disk,
        "the manifest lists exactly the other files"
    );
    manifest
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
