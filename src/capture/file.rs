//! Trace files as a source (`collect --traces-file`): any format `formats` reads, plain or zstd.
//! Files are read once, before the plan exists, because without an incident the window is the
//! span range of the data. Given a [`Spill`], the traces stream through it as they are read
//! (redacted and written out on every core) and only light spans are kept in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::spill::Spill;
use super::{CapturePlan, Gap, Purpose, Purposes, SourceCapture, SourceRecord, TraceSource};
use crate::formats::{Collected, ReadError, TraceCollector, open_trace_file};

/// The source notes that count what of a file lies outside the incident window and the baseline
/// period (the collect summary names them).
pub const TRACES_LEFT_OUT: &str =
    "traces outside the incident window and the baseline period, not captured";
pub const SPANS_LEFT_OUT: &str =
    "spans outside the incident window and the baseline period, not captured";

/// A trace file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read trace file {path}: {source}")]
pub struct FileError {
    pub path: String,
    #[source]
    pub source: ReadError,
}

/// Traces read from files, waiting for a plan.
pub struct FileSource {
    paths: Vec<PathBuf>,
    collected: Mutex<Option<Collected>>,
    spill: Option<Arc<Spill>>,
}

fn collector(spill: Option<&Arc<Spill>>) -> TraceCollector {
    match spill {
        Some(s) => TraceCollector::streaming(s.clone()),
        None => TraceCollector::default(),
    }
}

impl FileSource {
    /// Reads every file; the first that cannot be read is an error (nothing is captured then).
    /// With a spill, the traces stream through it.
    pub fn read(paths: &[PathBuf], spill: Option<Arc<Spill>>) -> Result<Self, FileError> {
        let mut collector = collector(spill.as_ref());
        for path in paths {
            let err = |source: ReadError| FileError {
                path: path.display().to_string(),
                source,
            };
            let input = open_trace_file(path).map_err(|e| err(e.into()))?;
            collector.read(input).map_err(err)?;
        }
        Ok(Self {
            paths: paths.to_vec(),
            collected: Mutex::new(Some(collector.finish())),
            spill,
        })
    }

    /// Reads traces from bytes in memory (plain or zstd), as from a file called `name`.
    pub fn from_bytes(
        name: &str,
        bytes: &[u8],
        spill: Option<Arc<Spill>>,
    ) -> Result<Self, FileError> {
        let err = |source: ReadError| FileError {
            path: name.to_owned(),
            source,
        };
        let mut collector = collector(spill.as_ref());
        if bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            let decoder = zstd::stream::read::Decoder::new(bytes).map_err(|e| err(e.into()))?;
            collector
                .read(std::io::BufReader::new(decoder))
                .map_err(err)?;
        } else {
            collector.read(bytes).map_err(err)?;
        }
        Ok(Self {
            paths: vec![PathBuf::from(name)],
            collected: Mutex::new(Some(collector.finish())),
            spill,
        })
    }

    /// Earliest span start and latest span end over all traces, in ns. Spans with no time at
    /// all (kept as read) do not count: they would stretch the window back to 1970.
    pub fn span_range(&self) -> Option<(i64, i64)> {
        let guard = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        let timed = || {
            guard
                .as_ref()
                .into_iter()
                .flat_map(|c| c.traces.iter())
                .flat_map(|t| t.spans.iter())
                .filter(|s| s.start_ns != 0 || s.end_ns != 0)
        };
        let start = timed().map(|s| s.start_ns).min()?;
        let end = timed().map(|s| s.end_ns.max(s.start_ns)).max()?;
        Some((start, end))
    }

    /// The first file's name, for naming an incident that was not given.
    pub fn first_path(&self) -> Option<String> {
        self.paths.first().map(|p| p.display().to_string())
    }

    fn classify(&self, plan: &CapturePlan) -> SourceCapture {
        let collected = self
            .collected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let slow_ns = plan.slow_threshold_ns();
        let mut notes = collected.notes;
        let mut traces = Vec::with_capacity(collected.traces.len());
        let mut outside = 0usize;
        let mut spans_read = 0usize;
        let mut spans_left_out = 0usize;
        for trace in collected.traces {
            spans_read += trace.spans.len();
            let start = trace.start_ns();
            let mut p = Purposes::default();
            if plan.window.contains_ns(start) {
                // A file is all the traffic the user had: every trace of the window is in the
                // sample the rates rest on (and is stored once, errors first).
                p = p.with(Purpose::Sample);
                if trace.has_error() {
                    p = p.with(Purpose::Errors);
                }
                if trace.max_span_duration_ns() >= slow_ns {
                    p = p.with(Purpose::Slow);
                }
            }
            if plan.baseline.is_some_and(|b| b.contains_ns(start)) {
                p = p.with(Purpose::Baseline);
            }
            if p == Purposes::default() {
                outside += 1;
                spans_left_out += trace.spans.len();
                continue;
            }
            traces.push((trace, p));
        }
        // What was handed over and what of it is kept: nothing is dropped without a word.
        notes.insert("spans read".into(), spans_read);
        notes.insert("spans kept".into(), spans_read - spans_left_out);
        if outside > 0 {
            notes.insert(TRACES_LEFT_OUT.into(), outside);
            notes.insert(SPANS_LEFT_OUT.into(), spans_left_out);
        }
        let in_window = traces
            .iter()
            .filter(|(t, _)| plan.window.contains_ns(t.start_ns()))
            .count();
        let mut gaps: Vec<Gap> = collected
            .skipped
            .iter()
            .map(|(reason, n)| Gap {
                source: "file".into(),
                kind: "unreadable_spans".into(),
                service: None,
                purpose: None,
                start: None,
                end: None,
                message: format!("{n} × {reason}"),
            })
            .collect();
        if in_window == 0 {
            gaps.push(Gap {
                source: "file".into(),
                kind: "no_data".into(),
                service: None,
                purpose: None,
                start: Some(plan.window.start()),
                end: Some(plan.window.end()),
                message: "the trace files hold no trace that starts inside the incident window"
                    .into(),
            });
        }
        let mut formats: BTreeMap<String, usize> = collected.formats;
        let api = (!formats.is_empty()).then(|| {
            std::mem::take(&mut formats)
                .into_iter()
                .map(|(f, n)| format!("{f} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        SourceCapture {
            record: SourceRecord {
                name: "file".into(),
                kind: "file".into(),
                url: self
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                api,
                queries: Vec::new(),
                trace_url: None,
                notes,
            },
            traces,
            gaps,
        }
    }
}

impl TraceSource for FileSource {
    fn capture<'a>(&'a self, plan: &'a CapturePlan) -> BoxFuture<'a, SourceCapture> {
        Box::pin(async move { self.classify(plan) })
    }

    fn spill(&self) -> Option<Arc<Spill>> {
        self.spill.clone()
    }
}
