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
    pub attributes: Vec<Attribute>,
    pub resource: Arc<Resource>,
    pub scope: Option<Arc<Scope>>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
}

impl Span {
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

    /// The first attribute with this key.
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| &*a.key == key)
            .map(|a| &a.value)
    }
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
