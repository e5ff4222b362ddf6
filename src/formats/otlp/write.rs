//! Writing traces as OTLP JSON lines (the spec's form).

use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::model::{AttrValue, Attribute, HexId, Resource, Scope, Span, Trace};

struct Attrs<'a>(&'a [Attribute]);
struct Value<'a>(&'a AttrValue);

impl Serialize for Attrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for a in self.0 {
            seq.serialize_element(&KeyValueOut {
                key: &a.key,
                value: Value(&a.value),
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct KeyValueOut<'a> {
    key: &'a str,
    value: Value<'a>,
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            AttrValue::Str(v) => m.serialize_entry("stringValue", v)?,
            AttrValue::Bool(v) => m.serialize_entry("boolValue", v)?,
            AttrValue::Int(v) => m.serialize_entry("intValue", &Decimal(*v))?,
            // Protobuf's JSON mapping writes non-finite doubles as strings.
            AttrValue::Double(v) if v.is_nan() => m.serialize_entry("doubleValue", "NaN")?,
            AttrValue::Double(v) if v.is_infinite() => m.serialize_entry(
                "doubleValue",
                if *v > 0.0 { "Infinity" } else { "-Infinity" },
            )?,
            AttrValue::Double(v) => m.serialize_entry("doubleValue", v)?,
            AttrValue::Bytes(v) => m.serialize_entry(
                "bytesValue",
                &base64::engine::general_purpose::STANDARD.encode(v),
            )?,
            AttrValue::Array(items) => m.serialize_entry(
                "arrayValue",
                &ArrayOut {
                    values: items.iter().map(Value).collect(),
                },
            )?,
            AttrValue::Map(attrs) => m.serialize_entry(
                "kvlistValue",
                &KvListOut {
                    values: Attrs(attrs),
                },
            )?,
        }
        m.end()
    }
}

/// An integer as a JSON string of its decimal digits (protobuf's JSON mapping of int64).
struct Decimal(i64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

#[derive(Serialize)]
struct ArrayOut<'a> {
    values: Vec<Value<'a>>,
}

#[derive(Serialize)]
struct KvListOut<'a> {
    values: Attrs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanOut<'a> {
    trace_id: HexId,
    span_id: HexId,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<HexId>,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: Decimal,
    end_time_unix_nano: Decimal,
    #[serde(skip_serializing_if = "is_empty_attrs")]
    attributes: Attrs<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<LinkOut<'a>>,
    status: StatusOut<'a>,
}

fn is_empty_attrs(a: &Attrs<'_>) -> bool {
    a.0.is_empty()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventOut<'a> {
    time_unix_nano: Decimal,
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty_attrs")]
    attributes: Attrs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkOut<'a> {
    trace_id: HexId,
    span_id: HexId,
    #[serde(skip_serializing_if = "is_empty_attrs")]
    attributes: Attrs<'a>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    code: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    #[serde(skip_serializing_if = "is_empty_attrs")]
    attributes: Attrs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpansOut<'a> {
    scope: ScopeOut<'a>,
    spans: Vec<SpanOut<'a>>,
}

#[derive(Serialize)]
struct ResourceOut<'a> {
    attributes: Attrs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpansOut<'a> {
    resource: ResourceOut<'a>,
    scope_spans: Vec<ScopeSpansOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TracesDataOut<'a> {
    resource_spans: Vec<ResourceSpansOut<'a>>,
}

fn span_out(s: &Span) -> SpanOut<'_> {
    SpanOut {
        trace_id: s.trace_id.hex(),
        span_id: s.span_id.hex(),
        trace_state: s.trace_state.as_deref(),
        parent_span_id: s.parent.map(|p| p.hex()),
        name: &s.operation,
        kind: s.kind.otlp_number(),
        start_time_unix_nano: Decimal(s.start_ns),
        end_time_unix_nano: Decimal(s.end_ns),
        attributes: Attrs(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| EventOut {
                time_unix_nano: Decimal(e.time_ns),
                name: &e.name,
                attributes: Attrs(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| LinkOut {
                trace_id: l.trace_id.hex(),
                span_id: l.span_id.hex(),
                attributes: Attrs(&l.attributes),
            })
            .collect(),
        status: StatusOut {
            message: s.status.message.as_deref(),
            code: s.status.code.otlp_number(),
        },
    }
}

/// Writes one trace as one line of OTLP JSON (`{"resourceSpans":[…]}\n`), spans grouped by
/// resource and scope in the order they first appear.
pub fn write_trace_line<W: Write + ?Sized>(trace: &Trace, out: &mut W) -> std::io::Result<()> {
    let mut groups: Vec<ResourceSpansOut<'_>> = Vec::new();
    let mut keys: Vec<(*const Resource, Vec<*const Scope>)> = Vec::new();
    for span in &trace.spans {
        let rkey = Arc::as_ptr(&span.resource);
        let skey = span.scope.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
        let ri = match keys.iter().position(|(r, _)| *r == rkey) {
            Some(i) => i,
            None => {
                keys.push((rkey, Vec::new()));
                groups.push(ResourceSpansOut {
                    resource: ResourceOut {
                        attributes: Attrs(&span.resource.attributes),
                    },
                    scope_spans: Vec::new(),
                });
                keys.len() - 1
            }
        };
        let si = match keys[ri].1.iter().position(|s| *s == skey) {
            Some(i) => i,
            None => {
                keys[ri].1.push(skey);
                let scope = span.scope.as_deref();
                groups[ri].scope_spans.push(ScopeSpansOut {
                    scope: ScopeOut {
                        name: scope.map_or("", |s| &s.name),
                        version: scope.map_or("", |s| &s.version),
                        attributes: Attrs(scope.map_or(&[][..], |s| &s.attributes)),
                    },
                    spans: Vec::new(),
                });
                keys[ri].1.len() - 1
            }
        };
        groups[ri].scope_spans[si].spans.push(span_out(span));
    }
    serde_json::to_writer(
        &mut *out,
        &TracesDataOut {
            resource_spans: groups,
        },
    )?;
    out.write_all(b"\n")
}
