//! `manifest.json`: what the bundle is, how it was captured, how complete it is, and the size and
//! SHA-256 of every other file, so an auditor can verify it years later.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::FileEntry;
use crate::capture::{Capture, CapturePlan, Gap, SourceRecord};
use crate::model::{Incident, TimeWindow};

/// The manifest's schema version; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct Counts {
    /// All distinct traces in the bundle: the sum of the file counts below.
    pub traces: usize,
    pub spans: usize,
    pub error_traces: usize,
    pub slow_traces: usize,
    pub baseline_traces: usize,
    /// Traces of the sample of all traffic not in the files above.
    pub sample_traces: usize,
    pub context_traces: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Completeness {
    /// `complete` or `partial`.
    pub status: &'static str,
    pub gaps: Vec<Gap>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaptureInfo {
    pub id: String,
    /// `declared` or `resolved` for the worker's captures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub tool: &'static str,
    pub tool_version: &'static str,
    pub host: String,
    pub slow_threshold: String,
    pub baseline_traces_max: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Retention {
    /// `none` for the local store; the Object Lock mode on S3.
    pub mode: String,
    pub retain_until: Option<DateTime<Utc>>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            retain_until: None,
        }
    }
}

/// An earlier capture of the same incident (the `declared` one, from a `resolved` capture).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PreviousCapture {
    pub capture_id: String,
    pub bundle: String,
    pub manifest_sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub incident: Incident,
    pub window: TimeWindow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_window: Option<TimeWindow>,
    pub capture: CaptureInfo,
    pub sources: Vec<SourceRecord>,
    pub counts: Counts,
    pub completeness: Completeness,
    pub files: Vec<FileEntry>,
    pub redaction: crate::redact::RedactionReport,
    pub retention: Retention,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_capture: Option<PreviousCapture>,
    /// The ed25519 signature over the manifest without this field (RFC 8785 canonical JSON),
    /// where a signing key is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::sign::ManifestSignature>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl Manifest {
    pub fn new(
        plan: &CapturePlan,
        capture: &Capture,
        opts: &super::BundleOptions,
        counts: Counts,
        files: Vec<FileEntry>,
    ) -> Self {
        let capture_id = opts.capture_id.as_str();
        let status = if capture.gaps.is_empty() {
            "complete"
        } else {
            "partial"
        };
        Self {
            schema_version: SCHEMA_VERSION,
            incident: plan.incident.clone(),
            window: plan.window,
            baseline_window: plan.baseline,
            capture: CaptureInfo {
                id: capture_id.to_owned(),
                kind: opts.kind.clone(),
                started: capture.started,
                finished: capture.finished,
                tool: "evidence-locker",
                tool_version: env!("CARGO_PKG_VERSION"),
                host: host(),
                slow_threshold: humantime::format_duration(plan.slow_threshold).to_string(),
                baseline_traces_max: plan.baseline_traces,
            },
            sources: capture.sources.clone(),
            counts,
            completeness: Completeness {
                status,
                gaps: capture.gaps.clone(),
            },
            files,
            redaction: capture.redaction.clone(),
            retention: opts.retention.clone(),
            previous_capture: opts.previous.clone(),
            signature: None,
        }
    }
}
