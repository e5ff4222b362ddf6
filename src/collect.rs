//! `collect`: one incident, once — capture → analyze → bundle → store, with no broker. The
//! embedded path that `demo` and (later) the worker share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use crate::bundle::{BundleInput, BundleOptions, BundleSummary, Retention, write_bundle};
use crate::capture::file::FileSource;
use crate::capture::jaeger::JaegerSource;
use crate::capture::spill::Spill;
use crate::capture::tempo::TempoSource;
use crate::capture::zipkin::ZipkinSource;
use crate::capture::{self, Capture, CapturePlan, Gap, TraceSource};
use crate::config::{BackendKind, BackendSettings, Settings};
use crate::model::{
    Incident, IncidentId, IncidentParts, ResolvedWindow, TimeWindow, WindowDefaults,
};
use crate::store::FsStore;

/// Where the traces come from.
pub enum TraceInput {
    /// `--traces-file`, already read.
    Files(FileSource),
    /// `--jaeger URL`, `--tempo URL`, `--zipkin URL` (each repeatable; used together).
    Backends(Vec<(BackendKind, String)>),
    /// The `[backends.*]` of the configuration.
    Configured,
}

/// One `collect` run.
pub struct CollectRequest {
    pub incident: Option<Incident>,
    pub input: TraceInput,
    pub out: PathBuf,
    pub now: DateTime<Utc>,
    /// The retention the bundle will be stored with (recorded in its manifest).
    pub retention: Retention,
}

/// What was written.
#[derive(Debug)]
pub struct CollectOutcome {
    pub incident: IncidentId,
    pub bundle_dir: PathBuf,
    pub summary: BundleSummary,
}

/// Where trace files stream through as they are read (redacted by `[redaction]`, written to a
/// temporary file, with only light spans kept in memory), so that a file of millions of spans
/// is captured in bounded memory.
pub fn file_spill(settings: &Settings) -> Result<std::sync::Arc<Spill>> {
    new_spill(
        settings,
        Spill::new,
        "cannot create the temporary file trace files stream through (TMPDIR)",
    )
}

/// Where a backend capture writes the traces it finds as each answer comes (redacted by
/// `[redaction]`, to a temporary file), going on with light copies: it holds no more than the
/// answers in flight whole, however many traces it keeps.
pub fn backend_spill(settings: &Settings) -> Result<std::sync::Arc<Spill>> {
    new_spill(
        settings,
        Spill::for_backends,
        "cannot create the temporary file a capture writes its traces to (TMPDIR)",
    )
}

/// A spill made by `make`, redacting by `[redaction]`; `failed` says what could not be made.
fn new_spill(
    settings: &Settings,
    make: fn(crate::redact::Redactor) -> std::io::Result<Spill>,
    failed: &'static str,
) -> Result<std::sync::Arc<Spill>> {
    let redactor = crate::redact::Redactor::new(&settings.redaction).map_err(anyhow::Error::msg)?;
    Ok(std::sync::Arc::new(make(redactor).context(failed)?))
}

/// Reads and parses an incident file.
pub fn read_incident(path: &Path) -> Result<Incident> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read incident file {}", path.display()))?;
    Incident::parse(&bytes).with_context(|| format!("incident file {}", path.display()))
}

/// An incident for a traces file given without one: named after the file, spanning the data.
fn incident_for_files(name: &str, window: TimeWindow) -> Result<Incident> {
    let stem: String = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let stem = stem
        .split('.')
        .next()
        .unwrap_or("traces")
        .trim_matches('-')
        .to_owned();
    let id = IncidentId::parse(&format!(
        "file-{}",
        if stem.is_empty() { "traces" } else { &stem }
    ))?;
    let mut parts = IncidentParts::new(id, window.end());
    parts.title = Some(format!("Traces from {name}"));
    parts.started_at = Some(window.start());
    parts.window = Some(window);
    parts.source = Some("file".into());
    Ok(Incident::new(parts)?)
}

/// The capture plan for an incident and its window: the baseline is the `capture.baseline`
/// period before the incident began, when the window shows when that was.
pub fn plan(settings: &Settings, incident: Incident, resolved: ResolvedWindow) -> CapturePlan {
    let window = resolved.window;
    let mut gaps = Vec::new();
    if let Some(asked) = resolved.requested {
        gaps.push(Gap {
            source: "capture".into(),
            kind: "truncated".into(),
            service: None,
            purpose: None,
            start: Some(asked.start()),
            end: Some(window.start()),
            message: format!(
                "the incident's window ({} to {}) is longer than capture.max_window ({}): only its most recent part was captured",
                asked.start().to_rfc3339(),
                asked.end().to_rfc3339(),
                humantime::format_duration(settings.capture.max_window)
            ),
        });
    }
    let began = incident.began_at().clamp(window.start(), window.end());
    let baseline = if began > window.start() || incident.started_at().is_some() {
        let base = chrono::Duration::from_std(settings.capture.baseline).unwrap_or_default();
        began
            .checked_sub_signed(base)
            .and_then(|start| TimeWindow::new(start, began).ok())
    } else {
        None
    };
    let mut plan = CapturePlan {
        store: None,
        services: Vec::new(),
        incident,
        window,
        baseline,
        slow_threshold: settings.capture.slow_threshold,
        baseline_traces: settings.capture.baseline_traces,
        sample_per_minute: settings.capture.sample_per_minute,
        kept_normal_share: settings
            .backends
            .values()
            .filter(|b| b.enabled())
            .map(|b| b.kept_normal_share)
            .fold(1.0, f64::min),
        gaps,
        max_services: settings.capture.max_services,
        max_traces: settings.capture.max_traces,
        max_bytes: crate::config::parse_size(&settings.capture.max_bytes)
            .map_or(u64::MAX, |n| n as u64),
    };
    let (services, over) = plan.bounded_services("capture", plan.incident.services().to_vec());
    plan.services = services;
    plan.gaps.extend(over);
    plan
}

/// Analyses `capture` and writes the whole bundle into the empty directory `dir`, off the async
/// runtime.
pub async fn write_into(
    dir: PathBuf,
    plan: CapturePlan,
    capture: Capture,
    opts: BundleOptions,
) -> Result<BundleSummary> {
    let began_at = plan.incident.began_at();
    let written = tokio::task::spawn_blocking(move || {
        let summary = write_bundle(
            &dir,
            &BundleInput {
                plan: &plan,
                capture: &capture,
                began_at,
            },
            &opts,
        )
        .map(|(summary, _, _)| summary);
        // Freeing millions of spans takes a while; nobody needs to wait for it.
        std::thread::spawn(move || drop(capture));
        summary
    })
    .await;
    match written {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e).context("cannot write the bundle"),
        Err(panic) => bail!("the bundle writer stopped unexpectedly: {panic}"),
    }
}

/// The sources of the configured `[backends.*]`.
pub fn configured_sources(settings: &Settings) -> Result<Vec<Box<dyn TraceSource>>> {
    backend_sources(settings, TraceInput::Configured)
}

/// Runs one capture and stores the bundle under `req.out`.
pub async fn collect(settings: &Settings, req: CollectRequest) -> Result<CollectOutcome> {
    let defaults = WindowDefaults {
        lookback: settings.capture.lookback,
        max_window: settings.capture.max_window,
    };
    let sources: Vec<Box<dyn TraceSource>>;
    let mut from_files = false;
    let (incident, window) = match req.input {
        TraceInput::Files(files) => {
            let Some((first_ns, last_ns)) = files.span_range() else {
                let unreadable = files.unreadable();
                if unreadable.is_empty() {
                    bail!("the traces file holds no usable spans");
                }
                bail!(
                    "the traces file holds no usable spans: {}",
                    unreadable.join("; ")
                );
            };
            let data = TimeWindow::from_ns(first_ns, last_ns.saturating_add(1_000))
                .context("the traces file's time range")?;
            let (incident, window) = match req.incident {
                None => (
                    incident_for_files(&files_name(&files), data)?,
                    ResolvedWindow {
                        window: data,
                        requested: None,
                    },
                ),
                Some(incident) => {
                    // A file is history: without a window, it ends where the data ends.
                    let now = data
                        .end()
                        .max(incident.began_at() + chrono::Duration::seconds(1));
                    let window = incident.resolve_window(&defaults, now)?;
                    (incident, window)
                }
            };
            sources = vec![Box::new(files)];
            from_files = true;
            (incident, window)
        }
        other => {
            let Some(incident) = req.incident else {
                bail!("--incident FILE is required unless the traces come from --traces-file");
            };
            let window = incident.resolve_window(&defaults, req.now)?;
            sources = backend_sources(settings, other)?;
            (incident, window)
        }
    };
    let mut plan = plan(settings, incident, window);
    if from_files {
        // A file is all the traffic the user had: no backend's sampling applies to it.
        plan.kept_normal_share = 1.0;
    } else {
        plan.store = Some(backend_spill(settings)?);
    }
    tracing::info!(
        incident = %plan.incident.id(),
        window.start = %plan.window.start(),
        window.end = %plan.window.end(),
        services = plan.services.len(),
        "capturing"
    );
    let mut capture = capture::run(&sources, &plan).await;
    crate::redact::redact_capture(&settings.redaction, &mut capture)?;
    let incident = plan.incident.id().clone();
    let store = FsStore::new(&req.out);
    let staged = store.stage(
        plan.incident.id(),
        &capture.started.format("%Y%m%dT%H%M%SZ").to_string(),
    )?;
    let opts = BundleOptions {
        capture_id: staged.capture_id.clone(),
        error_rate_threshold: settings.analysis.error_rate_threshold,
        zstd_level: 3,
        retention: req.retention,
        kind: None,
        previous: None,
        trace_url: (!settings.report.trace_url.is_empty())
            .then(|| settings.report.trace_url.clone()),
        signer: crate::sign::ManifestSigner::from_settings(&settings.signing)
            .map_err(anyhow::Error::msg)?
            .map(std::sync::Arc::new),
    };
    let summary = match write_into(staged.staging.clone(), plan, capture, opts).await {
        Ok(s) => s,
        Err(e) => {
            store.abandon(&staged);
            return Err(e);
        }
    };
    // On failure the complete bundle stays in its staging directory, which the error names.
    let bundle_dir = store.publish(&staged)?;
    Ok(CollectOutcome {
        incident,
        bundle_dir,
        summary,
    })
}

fn files_name(files: &FileSource) -> String {
    files.first_path().unwrap_or_else(|| "traces".into())
}

/// A source for a backend of the given kind.
fn backend_source(name: &str, settings: &BackendSettings) -> Result<Box<dyn TraceSource>> {
    Ok(match settings.kind {
        BackendKind::Jaeger => Box::new(JaegerSource::new(name, settings)?),
        BackendKind::Tempo => Box::new(TempoSource::new(name, settings)?),
        BackendKind::Zipkin => Box::new(ZipkinSource::new(name, settings)?),
    })
}

fn backend_sources(settings: &Settings, input: TraceInput) -> Result<Vec<Box<dyn TraceSource>>> {
    let base = settings
        .backends
        .get("default")
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Box<dyn TraceSource>> = Vec::new();
    match input {
        TraceInput::Backends(given) => {
            for (n, (kind, url)) in given.iter().enumerate() {
                match url::Url::parse(url) {
                    // Not echoed: a malformed URL may still hold a password.
                    Err(_) => bail!(
                        "--{} is not a URL (expected for example http://host:port)",
                        kind.name()
                    ),
                    // Searches build their own query string: one here would be dropped without
                    // a word, and may hold a credential.
                    Ok(u) if u.query().is_some() || u.fragment().is_some() => bail!(
                        "--{} {} has a query string or fragment, which searches cannot keep: configure credentials as backends.<name>.bearer_token or username and password",
                        kind.name(),
                        crate::capture::redact_url(url)
                    ),
                    Ok(_) => {}
                }
                let same_kind = given.iter().filter(|(k, _)| k == kind).count();
                let name = if same_kind == 1 {
                    kind.name().to_owned()
                } else {
                    format!("{}-{}", kind.name(), n + 1)
                };
                out.push(backend_source(&name, &base.with_url(*kind, url))?);
            }
        }
        _ => {
            for (name, b) in settings.backends.iter().filter(|(_, b)| b.enabled()) {
                out.push(backend_source(name, b)?);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no trace source: give --jaeger, --tempo or --zipkin URL, or --traces-file PATH, or configure [backends.<name>]"
        );
    }
    Ok(out)
}
