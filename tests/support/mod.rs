//! Test helpers: a loopback Jaeger query service with the real API's semantics, synthetic traces,
//! and a runner for the real binary.

#![allow(dead_code)]
// Handlers of the loopback servers return ready responses as errors.
#![allow(clippy::result_large_err)]

pub mod deploy;
pub mod intake;
pub mod jaeger;
pub mod nats;
pub mod real;
pub mod s3;
pub mod tempo;
pub mod zipkin;

/// The body of a GET, as text (a /metrics page, a report).
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Serves `app` on a free loopback port, on its own thread, for the rest of the test.
pub fn serve(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

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

/// Trace ids of every trace file of a bundle.
pub fn all_bundle_trace_ids(bundle: &Path) -> std::collections::BTreeSet<String> {
    ["errors", "slow", "baseline", "sample", "context"]
        .iter()
        .flat_map(|name| bundle_trace_ids(bundle, name))
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

/// The files under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    tree(dir).into_iter().filter(|p| !p.is_dir()).collect()
}

/// Every path under `dir`, directories too (an empty staging directory counts); none when
/// `dir` does not exist.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        }
        out.push(p);
    }
    out
}

// ---- the incident scenario the backend tests share ----

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use jaeger::synthetic_traces;
use serde_json::json;

/// An incident over the last hour that began 30 minutes ago, with payment in scope.
pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub incident: std::path::PathBuf,
}

pub fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let incident = json!({
        "id": "INC-TEST-1",
        "title": "Payment failures",
        "declared_at": (now - Duration::minutes(20)).to_rfc3339(),
        "started_at": (now - Duration::minutes(30)).to_rfc3339(),
        "window": {"start": (now - Duration::minutes(60)).to_rfc3339(), "end": (now - Duration::minutes(1)).to_rfc3339()},
        "services": ["payment"],
    });
    let path = dir.path().join("incident.json");
    std::fs::write(&path, incident.to_string()).unwrap();
    Scenario {
        dir,
        incident: path,
    }
}

impl Scenario {
    /// Rewrites the incident's `services`.
    pub fn with_services(self, services: &[&str]) -> Self {
        let mut incident = read_json(&self.incident);
        incident["services"] = json!(services);
        std::fs::write(&self.incident, incident.to_string()).unwrap();
        self
    }
}

pub fn us(d: Duration) -> i64 {
    (Utc::now() - d).timestamp_micros()
}

/// 5,000 error traces in the incident and 300 normal ones in the baseline period.
pub fn many_errors() -> Vec<serde_json::Value> {
    let mut traces = synthetic_traces(
        5000,
        us(Duration::minutes(25)),
        us(Duration::minutes(5)),
        true,
        20_000,
        0,
    );
    traces.extend(synthetic_traces(
        300,
        us(Duration::minutes(58)),
        us(Duration::minutes(32)),
        false,
        20_000,
        1_000_000,
    ));
    traces
}

/// `collect --incident … <flag> <url> --out …` (flag: `--jaeger`, `--tempo`, `--zipkin`).
pub fn collect_from(
    s: &Scenario,
    flag: &str,
    url: &str,
    env: &[(&str, String)],
) -> std::process::Output {
    let out = s.dir.path().join("evidence");
    run_cli(
        &[
            "collect",
            "--incident",
            s.incident.to_str().unwrap(),
            flag,
            url,
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    )
}

pub fn expected_error_ids() -> BTreeSet<String> {
    (1..=5000u64).map(|i| format!("{i:032x}")).collect()
}

pub fn assert_all_errors_captured(bundle: &Path) -> serde_json::Value {
    let manifest = verify_manifest(bundle);
    let ids: BTreeSet<String> = bundle_trace_ids(bundle, "errors").into_iter().collect();
    assert_eq!(ids.len(), 5000, "distinct error traces in errors.jsonl.zst");
    assert_eq!(ids, expected_error_ids());
    assert_eq!(manifest["counts"]["error_traces"], 5000);
    assert_eq!(manifest["counts"]["baseline_traces"], 300);
    assert_eq!(
        manifest["completeness"]["status"], "complete",
        "{:#}",
        manifest["completeness"]
    );
    manifest
}

/// A whole `collect` of `bytes` as a trace file (streaming, as the command does), at `now`: the
/// source's counts and notes and the bundle's gaps, or the error.
pub fn collect_bytes(bytes: &[u8], now: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    use evidence_locker::capture::file::FileSource;
    use evidence_locker::collect::{self, CollectRequest, TraceInput};
    let settings = evidence_locker::config::Settings::load(None).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let spill = collect::file_spill(&settings).map_err(|e| e.to_string())?;
    let files =
        FileSource::from_bytes("hostile.jsonl", bytes, Some(spill)).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = runtime
        .block_on(collect::collect(
            &settings,
            CollectRequest {
                incident: None,
                input: TraceInput::Files(files),
                out: dir.path().to_path_buf(),
                now,
                retention: Default::default(),
            },
        ))
        .map_err(|e| format!("{e:#}"))?;
    let manifest =
        std::fs::read(outcome.bundle_dir.join("manifest.json")).map_err(|e| e.to_string())?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| e.to_string())?;
    // What the bundle says of its input: the source's counts and notes, and the gaps.
    Ok(format!(
        "notes {} gaps {}",
        manifest["sources"][0]["notes"], manifest["completeness"]["gaps"]
    ))
}
