//! Traces written out as they are read, so that a large trace file never sits in memory whole.
//!
//! Each part of the input (a batch of JSON Lines, on whichever core parsed it) is redacted and
//! written to a temporary file as the OTLP JSON lines the bundle's trace files hold, and, for a
//! trace with an error or a slow span, also as the Jaeger trace `jaeger-ui.json` holds. Only
//! light spans (`Span::slim`: ids, names, times, status) stay in memory for the analysis. The
//! bundle then copies each trace's bytes into its files in its own order, and the suspects read
//! back the attributes they compare. A trace whose spans came in several parts is read back and
//! merged before it is written, as if it had been read whole.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use super::spill_attrs::{self, SpanRecord};
use crate::formats::{TraceCollector, TraceSink, jaeger, otlp};
use crate::model::{Trace, TraceId};
use crate::redact::{RedactionReport, Redactor};

/// Where one part's copy of a trace lies in the spill file: (offset, length).
type Extent = (u64, u64);

#[derive(Clone, Copy, Debug)]
struct Record {
    /// The part of the input it came from (its first line number): the merge order.
    part: usize,
    otlp: Extent,
    jaeger: Option<Extent>,
    /// The spans' own attributes (`spill_attrs`).
    attrs: Extent,
}

#[derive(Default)]
struct State {
    len: u64,
    index: HashMap<TraceId, Vec<Record>>,
    redaction: RedactionReport,
}

/// The temporary file of redacted traces and its index by trace id.
pub struct Spill {
    file: File,
    redactor: Redactor,
    /// Traces with a span at least this long also get their Jaeger copy written.
    slow_ns: i64,
    state: Mutex<State>,
}

impl Spill {
    /// A spill in the system's temporary directory (`TMPDIR`), removed when dropped; traces are
    /// redacted by `redactor` before they are written.
    pub fn new(redactor: Redactor, slow_ns: i64) -> io::Result<Self> {
        Ok(Self {
            file: tempfile::tempfile()?,
            redactor,
            slow_ns,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What redaction did to every trace written so far.
    pub fn redaction(&self) -> RedactionReport {
        let mut report = self.state().redaction.clone();
        report.enabled = self.redactor.enabled();
        report
    }

    /// Bytes written to the spill file.
    pub fn bytes(&self) -> u64 {
        self.state().len
    }

    fn records(&self, id: TraceId) -> Vec<Record> {
        self.state().index.get(&id).cloned().unwrap_or_default()
    }

    fn read(&self, (offset, len): Extent) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// The whole trace as it was read (its parts merged), or `None` when it was never written
    /// here.
    pub fn load(&self, id: TraceId) -> io::Result<Option<Trace>> {
        let mut records = self.records(id);
        if records.is_empty() {
            return Ok(None);
        }
        records.sort_by_key(|r| r.part);
        let mut c = TraceCollector::default();
        for r in records {
            let line = self.read(r.otlp)?;
            c.add_document(&line).map_err(|e| {
                io::Error::other(format!(
                    "the spilled copy of trace {id} cannot be read: {e}"
                ))
            })?;
        }
        Ok(c.finish().traces.into_iter().find(|t| t.id == id))
    }

    /// Writes `trace` as one OTLP JSON line, copied from the spill when it was written here in
    /// one part (`trace` itself is light and cannot be written as it is).
    pub fn write_otlp<W: Write + ?Sized>(&self, trace: &Trace, out: &mut W) -> io::Result<()> {
        match self.records(trace.id).as_slice() {
            [one] => out.write_all(&self.read(one.otlp)?),
            [] => otlp::write_trace_line(trace, out),
            _ => otlp::write_trace_line(&self.whole(trace)?, out),
        }
    }

    /// Writes `trace` as an element of a Jaeger API response's `data`, the same way.
    pub fn write_jaeger<W: Write + ?Sized>(&self, trace: &Trace, out: &mut W) -> io::Result<()> {
        match self.records(trace.id).as_slice() {
            [
                Record {
                    jaeger: Some(extent),
                    ..
                },
            ] => out.write_all(&self.read(*extent)?),
            [] => jaeger::write_api_trace(trace, out),
            _ => jaeger::write_api_trace(&self.whole(trace)?, out),
        }
    }

    /// The attributes of every span of the traces `ids`, read in the order they lie in the file.
    pub fn attributes(&self, ids: &[TraceId]) -> io::Result<Vec<(TraceId, SpanRecord)>> {
        let mut extents: Vec<(TraceId, Extent)> = {
            let state = self.state();
            ids.iter()
                .flat_map(|id| {
                    state
                        .index
                        .get(id)
                        .into_iter()
                        .flatten()
                        .map(|r| (*id, r.attrs))
                })
                .collect()
        };
        extents.sort_unstable_by_key(|(_, e)| e.0);
        let mut names = HashMap::new();
        let mut out = Vec::new();
        for (id, extent) in extents {
            let bytes = self.read(extent)?;
            let spans = spill_attrs::decode(&bytes, &mut names).map_err(io::Error::other)?;
            out.extend(spans.into_iter().map(|s| (id, s)));
        }
        Ok(out)
    }

    fn whole(&self, trace: &Trace) -> io::Result<Trace> {
        self.load(trace.id)?.ok_or_else(|| {
            io::Error::other(format!("trace {} is missing from the spill", trace.id))
        })
    }
}

impl TraceSink for Spill {
    fn take(&self, part: usize, traces: &mut [Trace]) -> io::Result<()> {
        let report = self.redactor.apply_each(traces.iter_mut());
        let mut buf = Vec::with_capacity(1 << 20);
        let mut records = Vec::with_capacity(traces.len());
        for t in traces.iter() {
            let start = buf.len() as u64;
            otlp::write_trace_line(t, &mut buf)?;
            let otlp = (start, buf.len() as u64 - start);
            let jaeger = if t.has_error() || t.max_span_duration_ns() >= self.slow_ns {
                let start = buf.len() as u64;
                jaeger::write_api_trace(t, &mut buf)?;
                Some((start, buf.len() as u64 - start))
            } else {
                None
            };
            let start = buf.len() as u64;
            spill_attrs::encode(t, &mut buf);
            let attrs = (start, buf.len() as u64 - start);
            records.push((t.id, otlp, jaeger, attrs));
        }
        for t in traces.iter_mut() {
            t.spans.iter_mut().for_each(crate::model::Span::slim);
            t.spans.shrink_to_fit();
        }
        // The range is taken under the lock and written outside it, so parts are written at
        // once from every core.
        let base = {
            let mut state = self.state();
            let base = state.len;
            state.len += buf.len() as u64;
            for (id, (o, ol), jaeger, (a, al)) in records {
                state.index.entry(id).or_default().push(Record {
                    part,
                    otlp: (base + o, ol),
                    jaeger: jaeger.map(|(j, jl)| (base + j, jl)),
                    attrs: (base + a, al),
                });
            }
            state.redaction.add(report);
            base
        };
        self.file.write_all_at(&buf, base)
    }
}
