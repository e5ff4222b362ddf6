//! Reading and writing the trace formats of DESIGN.md: Jaeger v1 (API response, UI trace, span
//! list, domain model), OTLP JSON (`resourceSpans`, Jaeger v3's `result`, Tempo's `batches` and
//! `trace`), Zipkin v2, each either as one document or as JSON Lines. Everything parses into the
//! model's [`Trace`]; `otlp` and `jaeger` also write.

pub mod jaeger;
mod lenient;
mod lines;
pub mod otlp;
pub mod zipkin;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Resource, Scope, Span, Trace, TraceId};

/// Why a document could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("JSON of an unknown shape: {0}")]
    UnknownShape(String),
    #[error("{format}: {message}")]
    Invalid {
        format: &'static str,
        message: String,
    },
}

/// The formats that can be detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    JaegerApiResponse,
    JaegerTrace,
    JaegerSpans,
    JaegerDomain,
    Otlp,
    ZipkinSpans,
    ZipkinTraces,
}

impl Format {
    /// A short name for logs and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::JaegerApiResponse => "jaeger-v1-api-response",
            Self::JaegerTrace => "jaeger-v1-trace",
            Self::JaegerSpans => "jaeger-v1-spans",
            Self::JaegerDomain => "jaeger-domain-model",
            Self::Otlp => "otlp-json",
            Self::ZipkinSpans => "zipkin-v2-spans",
            Self::ZipkinTraces => "zipkin-v2-traces",
        }
    }
}

/// One document's JSON: text already known to be UTF-8 (a whole part of JSON Lines is checked at
/// once, so each string need not be), or bytes not checked yet.
#[derive(Clone, Copy)]
pub enum Json<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Json<'a> {
    pub fn parse<T: serde::Deserialize<'a>>(self) -> serde_json::Result<T> {
        match self {
            Self::Text(t) => serde_json::from_str(t),
            Self::Bytes(b) => serde_json::from_slice(b),
        }
    }
}

/// Shares the strings that repeat across spans (service, operation and attribute names).
#[derive(Default)]
pub struct Interner {
    strings: foldhash::HashMap<Box<str>, Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(Box::from(s), a.clone());
        a
    }
}

/// The note that counts spans read twice (the same export read again), kept once.
pub const SPANS_READ_TWICE: &str =
    "spans read twice (same id, service, operation and start), kept once";

/// Takes each part of an input as soon as it is read (a batch of JSON Lines, or a whole
/// document), so that a large input never sits in memory whole: the file source redacts the
/// part's traces, writes them out, and leaves only light spans (`Span::slim`) behind.
pub trait TraceSink: Send + Sync {
    /// `part` orders the parts as the input holds them (it is the part's first line number).
    fn take(&self, part: usize, traces: Vec<Trace>) -> std::io::Result<()>;
}

/// Collects parsed spans into traces, keeping the order in which traces first appear, and counts
/// what had to be skipped.
#[derive(Default)]
pub struct TraceCollector {
    /// Where each part goes once read, when the input is streamed rather than kept.
    sink: Option<Arc<dyn TraceSink>>,
    pub interner: Interner,
    resources: foldhash::HashMap<Arc<str>, Vec<Arc<Resource>>>,
    /// Resources by the text they were read from (a Jaeger process), while that text is seen
    /// again and again in one part.
    resource_texts: foldhash::HashMap<Box<str>, Arc<Resource>>,
    scopes: Vec<Arc<Scope>>,
    index: foldhash::HashMap<TraceId, usize>,
    traces: Vec<Trace>,
    skipped: BTreeMap<String, usize>,
    notes: BTreeMap<String, usize>,
    /// JSON Lines lines that could not be read: how many, and the first (line number, error).
    bad_lines: (usize, Option<(usize, String)>),
    /// Formats seen, with how many documents of each.
    pub formats: BTreeMap<Format, usize>,
}

impl TraceCollector {
    /// A collector that hands every part it reads to `sink` (see [`TraceSink`]).
    pub fn streaming(sink: Arc<dyn TraceSink>) -> Self {
        Self {
            sink: Some(sink),
            ..Self::default()
        }
    }

    /// An empty collector for one part of this one's input, handing over to the same sink.
    fn part(&self) -> Self {
        Self {
            sink: self.sink.clone(),
            ..Self::default()
        }
    }

    /// Gives this part's traces to the sink, if there is one, with repeated spans dropped first
    /// (and counted) so that what is written is what is analysed.
    fn hand_over(&mut self, part: usize) -> std::io::Result<()> {
        let Some(sink) = self.sink.clone() else {
            return Ok(());
        };
        let duplicates: usize = self.traces.iter_mut().map(dedupe_spans).sum();
        self.count_duplicates(duplicates);
        // What is left of a part is its counts: the tables that built its traces go with them
        // (thousands of parts are kept until the input ends).
        self.index = Default::default();
        self.interner = Interner::default();
        self.resources = Default::default();
        self.resource_texts = Default::default();
        self.scopes = Vec::new();
        sink.take(part, std::mem::take(&mut self.traces))
    }

    /// Counts spans read twice and kept once.
    fn count_duplicates(&mut self, duplicates: usize) {
        if duplicates > 0 {
            *self.notes.entry(SPANS_READ_TWICE.into()).or_default() += duplicates;
        }
    }

    /// The shared copy of a resource of `service` seen before that `is` accepts, if there is
    /// one: [`TraceCollector::resource`] would return it for an equal resource.
    pub fn known_resource(
        &self,
        service: &str,
        is: impl Fn(&Resource) -> bool,
    ) -> Option<Arc<Resource>> {
        self.resources.get(service)?.iter().find(|r| is(r)).cloned()
    }

    /// The resource read before from exactly this text, if it was remembered.
    pub fn resource_of_text(&self, text: &str) -> Option<Arc<Resource>> {
        self.resource_texts.get(text).cloned()
    }

    /// Remembers that `text` reads as `resource` (up to 4,096 texts).
    pub fn remember_resource_text(&mut self, text: &str, resource: &Arc<Resource>) {
        if self.resource_texts.len() < 4096 {
            self.resource_texts.insert(text.into(), resource.clone());
        }
    }

    /// The shared copy of an equal resource seen before, or this one.
    pub fn resource(&mut self, resource: Resource) -> Arc<Resource> {
        let same = self.resources.entry(resource.service.clone()).or_default();
        if let Some(r) = same.iter().find(|r| ***r == resource) {
            return r.clone();
        }
        let r = Arc::new(resource);
        if same.len() < 256 {
            same.push(r.clone());
        }
        r
    }

    /// The shared copy of an equal scope seen before, or this one.
    pub fn scope(&mut self, scope: Scope) -> Arc<Scope> {
        if let Some(s) = self.scopes.iter().find(|s| ***s == scope) {
            return s.clone();
        }
        let s = Arc::new(scope);
        if self.scopes.len() < 256 {
            self.scopes.push(s.clone());
        }
        s
    }

    /// Adds one span to its trace; a span dated outside 1990–2200 (a timestamp in the wrong
    /// unit, most likely) is counted as skipped instead. A span with no time at all (some
    /// upstream examples) is kept.
    pub fn push(&mut self, span: Span) {
        use crate::model::{EARLIEST_NS, LATEST_NS};
        let untimed = span.start_ns == 0 && span.end_ns == 0;
        if !untimed
            && (!(EARLIEST_NS..LATEST_NS).contains(&span.start_ns) || span.end_ns >= LATEST_NS)
        {
            return self
                .skip("span dated before 1990 or after 2200 (a timestamp in the wrong unit?)");
        }
        match self.index.get(&span.trace_id) {
            Some(&i) => self.traces[i].spans.push(span),
            None => {
                self.index.insert(span.trace_id, self.traces.len());
                self.traces.push(Trace {
                    id: span.trace_id,
                    spans: vec![span],
                });
            }
        }
    }

    /// Counts a span that could not be used, by reason.
    pub fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_default() += 1;
    }

    /// Counts a JSON Lines line that could not be read, remembering the first.
    fn bad_line(&mut self, line_no: usize, e: impl std::fmt::Display) {
        self.bad_lines.0 += 1;
        if self.bad_lines.1.as_ref().is_none_or(|(n, _)| line_no < *n) {
            self.bad_lines.1 = Some((line_no, e.to_string()));
        }
    }

    /// Counts something that was changed on the way in (not lost), by what.
    pub fn note(&mut self, what: impl Into<String>) {
        *self.notes.entry(what.into()).or_default() += 1;
    }

    /// Parses one JSON document (or one JSON Lines line) of any supported format.
    pub fn add_document(&mut self, bytes: &[u8]) -> Result<Format, FormatError> {
        let format = detect(bytes)?;
        match format {
            Format::Otlp => otlp::parse(bytes, self)?,
            Format::JaegerApiResponse
            | Format::JaegerTrace
            | Format::JaegerSpans
            | Format::JaegerDomain => jaeger::parse(bytes, format, self)?,
            Format::ZipkinSpans | Format::ZipkinTraces => zipkin::parse(bytes, format, self)?,
        }
        *self.formats.entry(format).or_default() += 1;
        Ok(format)
    }

    /// Parses a whole input in memory: one JSON document, or JSON Lines of documents.
    pub fn add_input(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.read(std::io::Cursor::new(bytes)).map_err(|e| match e {
            ReadError::Format(f) => f,
            ReadError::Io(io) => FormatError::NotJson(io.to_string()),
        })
    }

    /// Reads an input stream: when its first line is a whole JSON document, the input is JSON
    /// Lines and is parsed a line at a time (memory stays at one line); otherwise it is one
    /// document and is read whole.
    pub fn read<R: std::io::BufRead>(&mut self, mut input: R) -> Result<(), ReadError> {
        let mut line = Vec::new();
        let mut line_no = 0usize;
        // Skip leading blank lines.
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                return Err(FormatError::NotJson("empty input".into()).into());
            }
            line_no += 1;
            if !line.iter().all(u8::is_ascii_whitespace) {
                break;
            }
        }
        let mut first = self.part();
        let first_error = match first.add_document(&line) {
            Ok(format) => {
                first.hand_over(line_no)?;
                self.absorb(first);
                return lines::read_rest(self, input, line_no, format);
            }
            Err(e) => e,
        };
        let first_len = line.len();
        let first_message = first_error.to_string();
        input.read_to_end(&mut line)?;
        let error = if matches!(first_error, FormatError::NotJson(_)) {
            // Not a document on its own: perhaps the input is one (multi-line) document.
            let mut whole = self.part();
            match whole.add_document(&line) {
                Ok(_) => {
                    whole.hand_over(line_no)?;
                    self.absorb(whole);
                    return Ok(());
                }
                Err(e) => e,
            }
        } else {
            line_error(line_no, first_error)
        };
        // Or JSON Lines whose first line is damaged: that costs the line, not the file.
        let mut rest = self.part();
        lines::parse_lines(
            &mut rest,
            &line[first_len..],
            line_no + 1,
            Format::JaegerApiResponse,
        )?;
        if rest.formats.is_empty() {
            return Err(error.into());
        }
        rest.hand_over(line_no + 1)?;
        self.bad_line(line_no, first_message);
        self.absorb(rest);
        Ok(())
    }

    /// Adds everything another collector gathered (a later part of the same input).
    pub(crate) fn absorb(&mut self, other: TraceCollector) {
        for trace in other.traces {
            match self.index.get(&trace.id) {
                Some(&i) => self.traces[i].spans.extend(trace.spans),
                None => {
                    self.index.insert(trace.id, self.traces.len());
                    self.traces.push(trace);
                }
            }
        }
        for (k, v) in other.skipped {
            *self.skipped.entry(k).or_default() += v;
        }
        for (k, v) in other.notes {
            *self.notes.entry(k).or_default() += v;
        }
        for (k, v) in other.formats {
            *self.formats.entry(k).or_default() += v;
        }
        self.bad_lines.0 += other.bad_lines.0;
        if let Some((n, e)) = other.bad_lines.1
            && self.bad_lines.1.as_ref().is_none_or(|(m, _)| n < *m)
        {
            self.bad_lines.1 = Some((n, e));
        }
    }

    /// The traces in first-seen order, with what was skipped and what was changed.
    pub fn finish(mut self) -> Collected {
        let mut duplicates = 0usize;
        for t in &mut self.traces {
            duplicates += dedupe_spans(t);
        }
        if let (count, Some((line, error))) = &self.bad_lines {
            let error: String = error.chars().take(300).collect();
            self.skipped.insert(
                format!(
                    "JSON Lines lines that could not be read (the first: line {line}: {error})"
                ),
                *count,
            );
        }
        self.count_duplicates(duplicates);
        Collected {
            traces: self.traces,
            skipped: self.skipped,
            notes: self.notes,
            formats: self
                .formats
                .into_iter()
                .map(|(f, n)| (f.name().to_owned(), n))
                .collect(),
        }
    }
}

/// Drops repeated copies of a span (the same export read twice); returns how many.
pub(crate) fn dedupe_spans(t: &mut Trace) -> usize {
    let before = t.spans.len();
    let same = |a: &Span, b: &Span| {
        a.span_id == b.span_id
            && a.start_ns == b.start_ns
            && a.operation == b.operation
            && a.resource.service == b.resource.service
    };
    if before <= 32 {
        // Small traces (most of them): compare pairwise, no allocation.
        let has_duplicate = (1..before).any(|i| (0..i).any(|j| same(&t.spans[i], &t.spans[j])));
        if !has_duplicate {
            return 0;
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(before);
    t.spans.retain(|s| {
        seen.insert((
            s.span_id,
            s.resource.service.clone(),
            s.operation.clone(),
            s.start_ns,
        ))
    });
    before - t.spans.len()
}

/// What reading an input produced.
#[derive(Debug, Default)]
pub struct Collected {
    pub traces: Vec<Trace>,
    /// Spans (or parts of spans) that could not be used, counted by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Values that were changed to be usable (nothing lost), counted by what.
    pub notes: BTreeMap<String, usize>,
    /// Documents read, counted by format name.
    pub formats: BTreeMap<String, usize>,
}

fn line_error(line_no: usize, e: FormatError) -> FormatError {
    FormatError::Invalid {
        format: "json-lines",
        message: format!("line {line_no}: {e}"),
    }
}

/// Why an input stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Opens a trace file, plain or zstd-compressed (recognised by its magic number, whatever its
/// name), as a buffered reader.
pub fn open_trace_file(
    path: &std::path::Path,
) -> std::io::Result<Box<dyn std::io::BufRead + Send>> {
    use std::io::{BufRead, BufReader};
    let mut file = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let head = file.fill_buf()?;
    if head.len() >= 4 && head[..4] == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::with_buffer(file)?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, decoder)))
    } else {
        Ok(Box::new(file))
    }
}

/// The top-level keys that tell the formats apart.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    data: Option<serde::de::IgnoredAny>,
    resource_spans: Option<serde::de::IgnoredAny>,
    batches: Option<serde::de::IgnoredAny>,
    result: Option<serde::de::IgnoredAny>,
    trace: Option<serde::de::IgnoredAny>,
    #[serde(rename = "traceID")]
    trace_id_upper: Option<serde::de::IgnoredAny>,
    spans: Option<serde::de::IgnoredAny>,
    process_map: Option<serde::de::IgnoredAny>,
    trace_id: Option<serde::de::IgnoredAny>,
    id: Option<serde::de::IgnoredAny>,
    resource_logs: Option<serde::de::IgnoredAny>,
}

/// Works out the format of one document from its first keys (objects) or its first element
/// (arrays), without building a tree.
pub fn detect(bytes: &[u8]) -> Result<Format, FormatError> {
    let first = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied()
        .ok_or_else(|| FormatError::NotJson("empty input".into()))?;
    match first {
        b'{' => {
            let p: Probe =
                serde_json::from_slice(bytes).map_err(|e| FormatError::NotJson(e.to_string()))?;
            if p.resource_spans.is_some()
                || p.batches.is_some()
                || p.result.is_some()
                || p.trace.is_some()
            {
                Ok(Format::Otlp)
            } else if p.data.is_some() {
                Ok(Format::JaegerApiResponse)
            } else if p.trace_id_upper.is_some() && p.spans.is_some() {
                Ok(Format::JaegerTrace)
            } else if p.spans.is_some() || p.process_map.is_some() {
                Ok(Format::JaegerDomain)
            } else if p.trace_id.is_some() && p.id.is_some() {
                Ok(Format::ZipkinSpans)
            } else if p.resource_logs.is_some() {
                Err(FormatError::UnknownShape(
                    "OTLP logs (`resourceLogs`), not traces".into(),
                ))
            } else {
                Err(FormatError::UnknownShape(
                    "an object with none of `data`, `resourceSpans`, `batches`, `result`, `trace`, `traceID`+`spans`, `spans`".into(),
                ))
            }
        }
        b'[' => {
            let items: Vec<&serde_json::value::RawValue> =
                serde_json::from_slice(bytes).map_err(|e| FormatError::NotJson(e.to_string()))?;
            let Some(first) = items.first() else {
                return Ok(Format::ZipkinSpans);
            };
            let text = first.get().trim_start();
            if text.starts_with('[') {
                return Ok(Format::ZipkinTraces);
            }
            let p: Probe = serde_json::from_str(text)
                .map_err(|e| FormatError::UnknownShape(format!("array of {e}")))?;
            if p.trace_id_upper.is_some() && p.spans.is_some() {
                Ok(Format::JaegerApiResponse)
            } else if p.trace_id_upper.is_some() {
                Ok(Format::JaegerSpans)
            } else if p.trace_id.is_some() {
                Ok(Format::ZipkinSpans)
            } else {
                Err(FormatError::UnknownShape(
                    "an array whose elements are neither Jaeger nor Zipkin spans".into(),
                ))
            }
        }
        _ => Err(FormatError::NotJson(format!(
            "starts with {:?}, not '{{' or '['",
            first as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_shape() {
        let cases: [(&str, Format); 8] = [
            (r#"{"data":[]}"#, Format::JaegerApiResponse),
            (
                r#"{"traceID":"1","spans":[],"processes":{}}"#,
                Format::JaegerTrace,
            ),
            (r#"{"spans":[],"processMap":[]}"#, Format::JaegerDomain),
            (r#"{"resourceSpans":[]}"#, Format::Otlp),
            (r#"{"batches":[]}"#, Format::Otlp),
            (r#"[{"traceId":"1","id":"2"}]"#, Format::ZipkinSpans),
            (r#"[[{"traceId":"1","id":"2"}]]"#, Format::ZipkinTraces),
            (r#"[{"traceID":"1","spanID":"2"}]"#, Format::JaegerSpans),
        ];
        for (doc, want) in cases {
            assert_eq!(detect(doc.as_bytes()).unwrap(), want, "{doc}");
        }
    }

    #[test]
    fn unknown_shapes_are_named() {
        let e = detect(br#"{"resourceLogs":[]}"#).unwrap_err().to_string();
        assert!(e.contains("logs"), "{e}");
        let e = detect(b"hello").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }
}
