//! The normalized span model. Jaeger, OTLP (Jaeger v3, Tempo) and Zipkin spans all become a
//! [`Span`]; every later stage (analysis, bundle writers) reads only this.

use std::sync::Arc;

use super::{SpanId, TraceId};

/// OTLP's span kinds; Jaeger's `span.kind` tag and Zipkin's `kind` map onto them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The OTLP enum number.
    pub fn otlp_number(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::Internal => 1,
            Self::Server => 2,
            Self::Client => 3,
            Self::Producer => 4,
            Self::Consumer => 5,
        }
    }

    /// From an OTLP enum number; unknown numbers are unspecified.
    pub fn from_otlp_number(n: i64) -> Self {
        match n {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    /// From OTLP's enum name (`SPAN_KIND_SERVER`), Jaeger's tag (`server`) or Zipkin's (`SERVER`).
    pub fn from_name(name: &str) -> Self {
        let name = name.strip_prefix("SPAN_KIND_").unwrap_or(name);
        match name.to_ascii_lowercase().as_str() {
            "internal" => Self::Internal,
            "server" => Self::Server,
            "client" => Self::Client,
            "producer" => Self::Producer,
            "consumer" => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    /// The lower-case name Jaeger uses in its `span.kind` tag.
    pub fn jaeger_name(self) -> Option<&'static str> {
        match self {
            Self::Unspecified => None,
            Self::Internal => Some("internal"),
            Self::Server => Some("server"),
            Self::Client => Some("client"),
            Self::Producer => Some("producer"),
            Self::Consumer => Some("consumer"),
        }
    }
}

/// OTLP status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    /// The OTLP enum number.
    pub fn otlp_number(self) -> u8 {
        match self {
            Self::Unset => 0,
            Self::Ok => 1,
            Self::Error => 2,
        }
    }
}

/// A span's status: code and message.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Status {
    pub code: StatusCode,
    pub message: Option<Box<str>>,
}

/// An attribute value, as OTLP's `AnyValue`.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Box<str>),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Box<[u8]>),
    Array(Vec<AttrValue>),
    Map(Vec<Attribute>),
}

impl AttrValue {
    /// The value as text, the way a person would write it (`true`, `42`, `v2.3.1`).
    pub fn to_text(&self) -> String {
        match self {
            Self::Str(s) => s.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Double(d) => d.to_string(),
            Self::Bytes(b) => hex::encode(b),
            Self::Array(items) => {
                let parts: Vec<String> = items.iter().map(Self::to_text).collect();
                format!("[{}]", parts.join(","))
            }
            Self::Map(attrs) => {
                let parts: Vec<String> = attrs
                    .iter()
                    .map(|a| format!("{}={}", a.key, a.value.to_text()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        }
    }
}

/// A key and its value. Keys repeat across millions of spans, so they are shared.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: Arc<str>,
    pub value: AttrValue,
}

/// The process or resource that emitted spans; shared by all spans it emitted.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Resource {
    pub service: Arc<str>,
    /// All resource attributes, `service.name` included.
    pub attributes: Vec<Attribute>,
}

/// The instrumentation scope (library) that recorded a span.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Scope {
    pub name: Box<str>,
    pub version: Box<str>,
    pub attributes: Vec<Attribute>,
}

/// A timestamped event (Jaeger log, Zipkin annotation).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub time_ns: i64,
    pub name: Box<str>,
    pub attributes: Vec<Attribute>,
}

/// A link to another span (Jaeger `FOLLOWS_FROM` or extra references).
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub attributes: Vec<Attribute>,
}

/// A list that costs one pointer while empty, as most spans' events and links are (and every
/// span's attributes once it is light, `Span::slim`): a capture holds a million spans at once.
#[derive(Clone, PartialEq)]
// A thin pointer on purpose: `Box<Vec<T>>` is 8 bytes where `Vec<T>` is 24.
#[allow(clippy::box_collection)]
pub struct List<T>(Option<Box<Vec<T>>>);

impl<T> List<T> {
    pub const fn new() -> Self {
        Self(None)
    }

    pub fn push(&mut self, value: T) {
        self.0.get_or_insert_with(Default::default).push(value);
    }

    /// The list as a `Vec`, to change it in ways a slice cannot.
    fn as_vec_mut(&mut self) -> &mut Vec<T> {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for List<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> std::ops::Deref for List<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl<T> std::ops::DerefMut for List<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.0 {
            Some(v) => v.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl<T> From<Vec<T>> for List<T> {
    fn from(v: Vec<T>) -> Self {
        Self((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

impl<T> Extend<T> for List<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_some() {
            self.as_vec_mut().extend(iter);
        }
    }
}

impl<T> IntoIterator for List<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|b| *b).unwrap_or_default().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a List<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut List<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

/// One span, normalized. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub operation: Arc<str>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub kind: SpanKind,
    pub status: Status,
    pub attributes: List<Attribute>,
    pub resource: Arc<Resource>,
    pub scope: Option<Arc<Scope>>,
    pub events: List<Event>,
    pub links: List<Link>,
    /// The W3C `tracestate` the span was recorded with (OTLP `traceState`; Jaeger keeps it as
    /// the `w3c.tracestate` tag).
    pub trace_state: Option<Box<str>>,
}

impl Span {
    /// A span of `service` with nothing but its ids and times (operation "op", kind server),
    /// for tests to change what they look at.
    #[cfg(test)]
    pub(crate) fn plain(trace: TraceId, span: SpanId, service: &str, start: i64, end: i64) -> Self {
        Span {
            trace_id: trace,
            span_id: span,
            parent: None,
            operation: Arc::from("op"),
            start_ns: start,
            end_ns: end,
            kind: SpanKind::Server,
            status: Status::default(),
            attributes: Default::default(),
            resource: Arc::new(Resource {
                service: Arc::from(service),
                attributes: Vec::new(),
            }),
            scope: None,
            events: Default::default(),
            links: Default::default(),
            trace_state: None,
        }
    }

    /// The service that emitted the span.
    pub fn service(&self) -> &Arc<str> {
        &self.resource.service
    }

    /// End minus start, never negative.
    pub fn duration_ns(&self) -> i64 {
        (self.end_ns - self.start_ns).max(0)
    }

    /// True when the span's status is ERROR.
    pub fn is_error(&self) -> bool {
        self.status.code == StatusCode::Error
    }

    /// The probability with which the span was sampled, from OpenTelemetry's `th` threshold in
    /// its trace state (`ot=th:e` is 1/8: thresholds are 56-bit rejection levels).
    pub fn sampling_probability(&self) -> Option<f64> {
        threshold_probability(self.recorded_trace_state()?)
    }

    /// The W3C trace state the span was recorded with: OTLP's `traceState`, or Jaeger's
    /// `w3c.tracestate` tag.
    pub fn recorded_trace_state(&self) -> Option<&str> {
        match &self.trace_state {
            Some(s) => Some(s),
            None => match self.attribute("w3c.tracestate") {
                Some(AttrValue::Str(s)) => Some(s),
                _ => None,
            },
        }
    }

    /// Drops what only the bundle's trace files need (attributes, events, links) once they are
    /// written, keeping what the analysis reads: ids, names, times, kind, status, resource, and
    /// the trace state (Jaeger's `w3c.tracestate` tag moved into it), so that
    /// [`Span::sampling_probability`] answers as before.
    pub fn slim(&mut self) {
        self.trace_state = self.recorded_trace_state().map(Box::from);
        self.attributes = List::new();
        self.events = List::new();
        self.links = List::new();
    }

    /// The first attribute with this key.
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| &*a.key == key)
            .map(|a| &a.value)
    }
}

/// The sampling probability an OpenTelemetry `th` threshold in a W3C trace state says: `th` is
/// up to 14 hex digits of a 56-bit rejection threshold (trailing zeros omitted), the span kept
/// when its randomness is at least the threshold, so the probability is 1 − T ÷ 2⁵⁶.
pub fn threshold_probability(trace_state: &str) -> Option<f64> {
    let ot = trace_state
        .split(',')
        .map(str::trim)
        .find_map(|member| member.strip_prefix("ot="))?;
    let th = ot.split(';').find_map(|kv| kv.strip_prefix("th:"))?;
    if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{th:0<14}");
    let t = u64::from_str_radix(&padded, 16).ok()?;
    let p = 1.0 - t as f64 / (1u64 << 56) as f64;
    (p > 0.0).then_some(p)
}

/// All spans of one trace that a source returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub id: TraceId,
    pub spans: Vec<Span>,
}

impl Trace {
    /// True when any span has an ERROR status.
    pub fn has_error(&self) -> bool {
        self.spans.iter().any(Span::is_error)
    }

    /// The longest span duration, in ns.
    pub fn max_span_duration_ns(&self) -> i64 {
        self.spans.iter().map(Span::duration_ns).max().unwrap_or(0)
    }

    /// Earliest span start, in ns.
    pub fn start_ns(&self) -> i64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    /// Latest span end, in ns.
    pub fn end_ns(&self) -> i64 {
        self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0)
    }

    /// Adds the spans of `other` (the same trace returned again) that this one lacks.
    pub fn merge(&mut self, other: Trace) {
        // Zipkin's shared client and server halves have one span id, so the service is part of
        // what makes a span distinct.
        let mut seen: std::collections::HashSet<(SpanId, Arc<str>)> = self
            .spans
            .iter()
            .map(|s| (s.span_id, s.service().clone()))
            .collect();
        for span in other.spans {
            if seen.insert((span.span_id, span.service().clone())) {
                self.spans.push(span);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threshold_probability;

    #[test]
    fn thresholds_read_as_the_specification_s_examples() {
        // From the OpenTelemetry specification's tracestate probability sampling examples.
        assert_eq!(threshold_probability("ot=th:0"), Some(1.0));
        assert_eq!(threshold_probability("ot=th:8"), Some(0.5));
        assert_eq!(threshold_probability("ot=th:c"), Some(0.25));
        assert_eq!(threshold_probability("ot=th:e"), Some(0.125));
        let tenth =
            threshold_probability("vendor=x,ot=rv:0123456789abcd;th:e6666666666666").unwrap();
        assert!((tenth - 0.1).abs() < 1e-12, "{tenth}");
        assert_eq!(threshold_probability("ot=rv:ab"), None);
        assert_eq!(threshold_probability("ot=th:zz"), None);
        assert_eq!(threshold_probability("ot=th:123456789abcdef"), None);
        assert_eq!(threshold_probability("other=th:8"), None);
    }
}
