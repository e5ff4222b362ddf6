//! `evidence-locker replay`: sends a stored bundle's traces to an OTLP/HTTP endpoint (a Jaeger,
//! Tempo or collector the team runs) with their original ids and times, so the evidence can be
//! browsed in the team's own trace UI after the backend deleted it. Every trace file is checked
//! against the manifest's SHA-256 before anything is sent.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use sha2::Digest as _;

use crate::store::S3Store;

/// The trace files of a bundle, by the name `--only` uses.
pub const FILES: &[(&str, &str)] = &[
    ("errors", "traces/errors.jsonl.zst"),
    ("slow", "traces/slow.jsonl.zst"),
    ("baseline", "traces/baseline.jsonl.zst"),
    ("sample", "traces/sample.jsonl.zst"),
    ("context", "traces/context.jsonl.zst"),
];

/// Traces per request at most, and bytes (OTLP receivers limit request bodies).
const BATCH_TRACES: usize = 200;
const BATCH_BYTES: usize = 4 << 20;

/// Where the bundle is.
pub enum BundleAt {
    Local(PathBuf),
    /// A store whose prefix is the bundle's own directory.
    S3(S3Store),
}

/// What was sent.
#[derive(Debug)]
pub struct Replayed {
    pub files: usize,
    pub traces: usize,
    pub spans: usize,
    pub requests: usize,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Bundle(String),
    #[error(
        "{file} does not match the manifest (expected sha256 {expected}, found {found}): not sent"
    )]
    Tampered {
        file: String,
        expected: String,
        found: String,
    },
    #[error("the OTLP endpoint {url} refused traces: {message}")]
    Send { url: String, message: String },
}

async fn read(at: &BundleAt, rel: &str) -> Result<Option<Vec<u8>>, ReplayError> {
    match at {
        BundleAt::Local(dir) => match std::fs::read(dir.join(rel)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReplayError::Bundle(format!(
                "{}: {e}",
                dir.join(rel).display()
            ))),
        },
        BundleAt::S3(s3) => s3
            .get(&s3.full_key(rel))
            .await
            .map_err(|e| ReplayError::Bundle(e.to_string())),
    }
}

/// The endpoint's traces URL: `/v1/traces` appended unless given.
pub fn traces_url(otlp: &str) -> String {
    let base = otlp.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

fn count_spans(doc: &serde_json::Value) -> usize {
    doc["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
        .map(|ss| ss["spans"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Sends the bundle's trace files named in `only` (all when empty) to `otlp`.
pub async fn replay(at: &BundleAt, otlp: &str, only: &[String]) -> Result<Replayed, ReplayError> {
    let started = Instant::now();
    for o in only {
        if !FILES.iter().any(|(name, _)| name == o) {
            return Err(ReplayError::Bundle(format!(
                "--only {o:?}: expected some of {}",
                FILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(",")
            )));
        }
    }
    let manifest = read(at, "manifest.json")
        .await?
        .ok_or_else(|| ReplayError::Bundle("no manifest.json: not a bundle".into()))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| ReplayError::Bundle(format!("manifest.json does not parse: {e}")))?;
    let listed = |rel: &str| {
        manifest["files"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["path"] == rel)
            .and_then(|f| f["sha256"].as_str())
            .map(str::to_owned)
    };
    let url = traces_url(otlp);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ReplayError::Send {
            url: crate::capture::redact_url(&url),
            message: e.to_string(),
        })?;
    let mut out = Replayed {
        files: 0,
        traces: 0,
        spans: 0,
        requests: 0,
        seconds: 0.0,
    };
    for (name, rel) in FILES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let Some(expected) = listed(rel) else {
            continue;
        };
        let bytes = read(at, rel)
            .await?
            .ok_or_else(|| ReplayError::Bundle(format!("{rel} is listed but missing")))?;
        let found = hex::encode(sha2::Sha256::digest(&bytes));
        if found != expected {
            return Err(ReplayError::Tampered {
                file: (*rel).to_owned(),
                expected,
                found,
            });
        }
        let plain =
            zstd::decode_all(&bytes[..]).map_err(|e| ReplayError::Bundle(format!("{rel}: {e}")))?;
        out.files += 1;
        let mut batch: Vec<serde_json::Value> = Vec::new();
        let mut batch_bytes = 0;
        let mut traces_in_batch = 0;
        let mut lines = plain.lines().peekable();
        while let Some(line) = lines.next() {
            let line = line.map_err(|e| ReplayError::Bundle(format!("{rel}: {e}")))?;
            if !line.trim().is_empty() {
                let doc: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| ReplayError::Bundle(format!("{rel}: {e}")))?;
                out.traces += 1;
                out.spans += count_spans(&doc);
                batch_bytes += line.len();
                traces_in_batch += 1;
                if let Some(rs) = doc["resourceSpans"].as_array() {
                    batch.extend(rs.iter().cloned());
                }
            }
            let last = lines.peek().is_none();
            if !batch.is_empty()
                && (last || traces_in_batch >= BATCH_TRACES || batch_bytes >= BATCH_BYTES)
            {
                let body =
                    serde_json::json!({ "resourceSpans": std::mem::take(&mut batch) }).to_string();
                send(&client, &url, body).await?;
                out.requests += 1;
                batch_bytes = 0;
                traces_in_batch = 0;
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<(), ReplayError> {
    let attempt = || async {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| (true, e.to_string()))?;
        let status = r.status();
        if status.is_success() {
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        let retry = status.is_server_error() || status.as_u16() == 429;
        Err((
            retry,
            format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ),
        ))
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(4),
        )
        .when(|(retry, _)| *retry)
        .await
        .map_err(|(_, message)| ReplayError::Send {
            url: crate::capture::redact_url(url),
            message,
        })
}
