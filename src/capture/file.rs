//! Trace files as a source (`collect --traces-file`): any format `formats` reads, plain or zstd.
//! Files are read once, before the plan exists, because without an incident the window is the
//! span range of the data. Given a [`Spill`], the traces stream through it as they are read
//! (redacted and written out on every core) and only light spans are kept in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::light::LightView;
use super::spill::Spill;
use super::{CapturePlan, Gap, Purpose, Purposes, SourceCapture, SourceRecord, TraceSource};
use crate::formats::{Collected, ReadError, SPANS_READ_TWICE, TraceCollector, open_trace_file};
use crate::model::Trace;

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
    /// Traces the plan asked for that `capture.max_traces` left out (counted by `capture::run`).
    not_kept: AtomicUsize,
}

/// What classifying a trace asks of it, whole or compact.
trait Classify {
    fn span_count(&self) -> usize;
    fn start_ns(&self) -> i64;
    fn has_error(&self) -> bool;
    fn max_span_duration_ns(&self) -> i64;
}

impl Classify for Trace {
    fn span_count(&self) -> usize {
        self.spans.len()
    }
    fn start_ns(&self) -> i64 {
        Trace::start_ns(self)
    }
    fn has_error(&self) -> bool {
        Trace::has_error(self)
    }
    fn max_span_duration_ns(&self) -> i64 {
        Trace::max_span_duration_ns(self)
    }
}

impl Classify for LightView<'_> {
    fn span_count(&self) -> usize {
        LightView::span_count(self)
    }
    fn start_ns(&self) -> i64 {
        LightView::start_ns(self)
    }
    fn has_error(&self) -> bool {
        LightView::has_error(self)
    }
    fn max_span_duration_ns(&self) -> i64 {
        LightView::max_span_duration_ns(self)
    }
}

/// What sorting the traces out by purpose counted.
#[derive(Default)]
struct Tally {
    spans_read: usize,
    outside: usize,
    spans_left_out: usize,
}

impl Tally {
    /// Counts `trace`; its purposes, unless it has none (then it is left out).
    fn sort(&mut self, trace: &impl Classify, plan: &CapturePlan) -> Option<Purposes> {
        self.spans_read += trace.span_count();
        let p = purposes(trace, plan);
        if p == Purposes::default() {
            self.outside += 1;
            self.spans_left_out += trace.span_count();
            return None;
        }
        Some(p)
    }
}

fn collector(spill: Option<&Arc<Spill>>) -> TraceCollector {
    match spill {
        Some(s) => TraceCollector::streaming(s.clone()),
        None => TraceCollector::default(),
    }
}

fn purposes(trace: &impl Classify, plan: &CapturePlan) -> Purposes {
    let start = trace.start_ns();
    let mut p = Purposes::default();
    if plan.window.contains_ns(start) {
        // A file is all the traffic the user had: every trace of the window is in the sample
        // the rates rest on (and is stored once, errors first).
        p = p.with(Purpose::Sample);
        if trace.has_error() {
            p = p.with(Purpose::Errors);
        }
        if trace.max_span_duration_ns() >= plan.slow_threshold_ns() {
            p = p.with(Purpose::Slow);
        }
    }
    if plan.baseline.is_some_and(|b| b.contains_ns(start)) {
        p = p.with(Purpose::Baseline);
    }
    p
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
            if let Some(s) = &spill {
                s.next_input();
            }
            let input = open_trace_file(path).map_err(|e| err(e.into()))?;
            collector.read(input).map_err(err)?;
        }
        Ok(Self::new(paths.to_vec(), collector, spill))
    }

    fn new(paths: Vec<PathBuf>, collector: TraceCollector, spill: Option<Arc<Spill>>) -> Self {
        let mut collected = collector.finish();
        let duplicates = spill.as_ref().map_or(0, |s| s.merge_parts());
        if duplicates > 0 {
            *collected.notes.entry(SPANS_READ_TWICE.into()).or_default() += duplicates;
        }
        Self {
            paths,
            collected: Mutex::new(Some(collected)),
            spill,
            not_kept: AtomicUsize::new(0),
        }
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
        if let Some(s) = &spill {
            s.next_input();
        }
        if bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            let decoder = zstd::stream::read::Decoder::new(bytes).map_err(|e| err(e.into()))?;
            collector
                .read(std::io::BufReader::new(decoder))
                .map_err(err)?;
        } else {
            collector.read(bytes).map_err(err)?;
        }
        Ok(Self::new(vec![PathBuf::from(name)], collector, spill))
    }

    /// Earliest span start and latest span end over all traces, in ns. Spans with no time at
    /// all (kept as read) do not count: they would stretch the window back to 1970.
    pub fn span_range(&self) -> Option<(i64, i64)> {
        if let Some(spill) = &self.spill {
            return spill.span_range();
        }
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

    /// What of the files could not be used, as `N × reason` (empty when everything could).
    pub fn unreadable(&self) -> Vec<String> {
        let guard = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .flat_map(|c| c.skipped.iter())
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect()
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
        let mut notes = collected.notes;
        let mut tally = Tally::default();
        let traces = match &self.spill {
            Some(spill) => {
                let began = std::time::Instant::now();
                let mut ids = Vec::new();
                spill.visit(|number, _, light| {
                    if let Some(p) = tally.sort(&light, plan) {
                        ids.push((number, p));
                    }
                });
                // Only what the capture keeps is made whole again (its spans, not their
                // attributes); the spill forgets the rest.
                let not_kept = super::keep_most_important(&mut ids, plan.max_traces);
                self.not_kept.store(not_kept, Ordering::SeqCst);
                tracing::debug!(
                    ms = began.elapsed().as_millis() as u64,
                    kept = ids.len(),
                    "traces sorted out"
                );
                spill.keep(ids)
            }
            None => {
                let mut traces = Vec::new();
                for trace in collected.traces {
                    if let Some(p) = tally.sort(&trace, plan) {
                        traces.push((trace, p));
                    }
                }
                traces
            }
        };
        let Tally {
            spans_read,
            outside,
            spans_left_out,
        } = tally;
        // What was handed over and what of it is kept: nothing is dropped without a word.
        notes.insert("spans read".into(), spans_read);
        notes.insert("spans kept".into(), spans_read - spans_left_out);
        if outside > 0 {
            notes.insert(TRACES_LEFT_OUT.into(), outside);
            notes.insert(SPANS_LEFT_OUT.into(), spans_left_out);
        }
        let any_in_window = traces
            .iter()
            .any(|(t, _)| plan.window.contains_ns(t.start_ns()));
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
        if !any_in_window {
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

    fn traces_not_kept(&self) -> usize {
        self.not_kept.load(Ordering::SeqCst)
    }
}
