//! OTLP JSON traces. Reads every way it is written (spec: hex ids and enum numbers; Tempo: base64
//! ids, enum names, `batches`; Jaeger v3: wrapped in `result`; Tempo v2: wrapped in `trace`;
//! 64-bit numbers as strings) and writes the spec's form: hex ids, enum numbers, 64-bit numbers as
//! strings, one `TracesData` per line.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use super::lenient::{NumberOrName, f64_any, i64_any};
use super::{FormatError, TraceCollector};
use crate::model::{
    AttrValue, Attribute, Event, Link, Resource, Scope, Span, SpanId, SpanKind, Status, StatusCode,
    Trace, TraceId,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    #[serde(default, borrow, alias = "batches")]
    resource_spans: Vec<ResourceSpans<'a>>,
    #[serde(default, borrow)]
    result: Option<Box<Document<'a>>>,
    #[serde(default, borrow)]
    trace: Option<Box<Document<'a>>>,
    /// Tempo v2 trace-by-id: `PARTIAL` when the answer is incomplete.
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    #[serde(default, borrow)]
    resource: Option<OResource<'a>>,
    #[serde(default, borrow, alias = "instrumentationLibrarySpans")]
    scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize)]
struct OResource<'a> {
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans<'a> {
    #[serde(default, borrow, alias = "instrumentationLibrary")]
    scope: Option<OScope<'a>>,
    #[serde(default, borrow)]
    spans: Vec<OSpan<'a>>,
}

#[derive(Deserialize)]
struct OScope<'a> {
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    version: Cow<'a, str>,
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OSpan<'a> {
    #[serde(default, borrow)]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow)]
    span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    parent_span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    kind: NumberOrName,
    #[serde(default, deserialize_with = "i64_any")]
    start_time_unix_nano: i64,
    #[serde(default, deserialize_with = "i64_any")]
    end_time_unix_nano: i64,
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(default, borrow)]
    events: Vec<OEvent<'a>>,
    #[serde(default, borrow)]
    links: Vec<OLink<'a>>,
    #[serde(default, borrow)]
    status: Option<OStatus<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OEvent<'a> {
    #[serde(default, deserialize_with = "i64_any")]
    time_unix_nano: i64,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OLink<'a> {
    #[serde(default, borrow)]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow)]
    span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
struct OStatus<'a> {
    #[serde(default)]
    code: NumberOrName,
    #[serde(default, borrow)]
    message: Cow<'a, str>,
}

#[derive(Deserialize)]
struct KeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<AnyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyValue<'a> {
    #[serde(default, borrow)]
    string_value: Option<Cow<'a, str>>,
    #[serde(default)]
    bool_value: Option<bool>,
    #[serde(default, deserialize_with = "opt_i64")]
    int_value: Option<i64>,
    #[serde(default, deserialize_with = "opt_f64")]
    double_value: Option<f64>,
    #[serde(default, borrow)]
    bytes_value: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    array_value: Option<Values<'a>>,
    #[serde(default, borrow)]
    kvlist_value: Option<KvList<'a>>,
}

#[derive(Deserialize)]
struct Values<'a> {
    #[serde(default, borrow)]
    values: Vec<AnyValue<'a>>,
}

#[derive(Deserialize)]
struct KvList<'a> {
    #[serde(default, borrow)]
    values: Vec<KeyValue<'a>>,
}

fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64_any(d).map(Some)
}
fn opt_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    f64_any(d).map(Some)
}

fn convert_value(v: AnyValue<'_>, c: &mut TraceCollector) -> AttrValue {
    if let Some(s) = v.string_value {
        AttrValue::Str(s.into())
    } else if let Some(b) = v.bool_value {
        AttrValue::Bool(b)
    } else if let Some(i) = v.int_value {
        AttrValue::Int(i)
    } else if let Some(d) = v.double_value {
        AttrValue::Double(d)
    } else if let Some(b) = v.bytes_value {
        match base64::engine::general_purpose::STANDARD.decode(b.as_bytes()) {
            Ok(bytes) => AttrValue::Bytes(bytes.into()),
            Err(_) => AttrValue::Str(b.into()),
        }
    } else if let Some(a) = v.array_value {
        AttrValue::Array(a.values.into_iter().map(|v| convert_value(v, c)).collect())
    } else if let Some(m) = v.kvlist_value {
        AttrValue::Map(convert_attrs(m.values, c))
    } else {
        AttrValue::Str("".into())
    }
}

fn convert_attrs(kvs: Vec<KeyValue<'_>>, c: &mut TraceCollector) -> Vec<Attribute> {
    kvs.into_iter()
        .map(|kv| Attribute {
            key: c.interner.get(&kv.key),
            value: kv
                .value
                .map(|v| convert_value(v, c))
                .unwrap_or(AttrValue::Str("".into())),
        })
        .collect()
}

fn status_code(code: &NumberOrName) -> StatusCode {
    match code {
        NumberOrName::Number(2) => StatusCode::Error,
        NumberOrName::Number(1) => StatusCode::Ok,
        NumberOrName::Name(n)
            if n.eq_ignore_ascii_case("STATUS_CODE_ERROR") || n.eq_ignore_ascii_case("ERROR") =>
        {
            StatusCode::Error
        }
        NumberOrName::Name(n)
            if n.eq_ignore_ascii_case("STATUS_CODE_OK") || n.eq_ignore_ascii_case("OK") =>
        {
            StatusCode::Ok
        }
        _ => StatusCode::Unset,
    }
}

/// Parses one OTLP JSON document into the collector.
pub fn parse(bytes: &[u8], c: &mut TraceCollector) -> Result<(), FormatError> {
    let mut doc: Document<'_> =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid {
            format: "otlp-json",
            message: e.to_string(),
        })?;
    // Jaeger v3 wraps in `result`, Tempo v2 in `trace`.
    while doc.resource_spans.is_empty() {
        match doc.result.take().or_else(|| doc.trace.take()) {
            Some(inner) => doc = *inner,
            None => break,
        }
    }
    add_resource_spans(doc.resource_spans, c);
    Ok(())
}

/// Parses `bytes` as a plain OTLP `TracesData` (`resourceSpans` or `batches`) if it is one;
/// `false`, with nothing added, if it is not.
pub fn parse_if_plain(bytes: &[u8], c: &mut TraceCollector) -> bool {
    match serde_json::from_slice::<Document<'_>>(bytes) {
        Ok(doc) if !doc.resource_spans.is_empty() => {
            add_resource_spans(doc.resource_spans, c);
            true
        }
        _ => false,
    }
}

/// Whether a Tempo v2 trace-by-id answer says it is partial, and the traces it holds.
pub fn parse_tempo_v2(bytes: &[u8], c: &mut TraceCollector) -> Result<bool, FormatError> {
    let doc: Document<'_> = serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid {
        format: "otlp-json",
        message: e.to_string(),
    })?;
    let partial = doc.status.as_deref() == Some("PARTIAL");
    let inner = doc.trace.map(|t| *t).unwrap_or_default();
    add_resource_spans(inner.resource_spans, c);
    Ok(partial)
}

fn add_resource_spans(resource_spans: Vec<ResourceSpans<'_>>, c: &mut TraceCollector) {
    for rs in resource_spans {
        let attributes = convert_attrs(rs.resource.map(|r| r.attributes).unwrap_or_default(), c);
        let service = attributes
            .iter()
            .find(|a| &*a.key == "service.name")
            .map(|a| a.value.to_text())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown_service".to_owned());
        let service = c.interner.get(&service);
        let resource = c.resource(Resource {
            service,
            attributes,
        });
        for ss in rs.scope_spans {
            let scope = ss.scope.and_then(|s| {
                if s.name.is_empty() && s.version.is_empty() && s.attributes.is_empty() {
                    return None;
                }
                let attributes = convert_attrs(s.attributes, c);
                Some(c.scope(Scope {
                    name: s.name.into(),
                    version: s.version.into(),
                    attributes,
                }))
            });
            for span in ss.spans {
                add_span(span, &resource, &scope, c);
            }
        }
    }
}

fn add_span(
    s: OSpan<'_>,
    resource: &Arc<Resource>,
    scope: &Option<Arc<Scope>>,
    c: &mut TraceCollector,
) {
    let (trace_id, span_id) = match (TraceId::parse(&s.trace_id), SpanId::parse(&s.span_id)) {
        (Ok(t), Ok(sp)) if !t.is_zero() => (t, sp),
        (Err(e), _) | (_, Err(e)) => return c.skip(format!("otlp span with {e}")),
        _ => return c.skip("otlp span with an all-zero trace id"),
    };
    let parent = if s.parent_span_id.is_empty() {
        None
    } else {
        match SpanId::parse(&s.parent_span_id) {
            Ok(p) if !p.is_zero() => Some(p),
            Ok(_) => None,
            Err(e) => return c.skip(format!("otlp span with a bad parent: {e}")),
        }
    };
    let kind = match &s.kind {
        NumberOrName::Number(n) => SpanKind::from_otlp_number(*n),
        NumberOrName::Name(n) => SpanKind::from_name(n),
        NumberOrName::Absent => SpanKind::Unspecified,
    };
    let status = match s.status {
        Some(st) => Status {
            code: status_code(&st.code),
            message: (!st.message.is_empty()).then(|| st.message.into()),
        },
        None => Status::default(),
    };
    let events = s
        .events
        .into_iter()
        .map(|e| Event {
            time_ns: e.time_unix_nano,
            name: e.name.into(),
            attributes: convert_attrs(e.attributes, c),
        })
        .collect();
    let mut links = Vec::new();
    for l in s.links {
        match (TraceId::parse(&l.trace_id), SpanId::parse(&l.span_id)) {
            (Ok(t), Ok(sp)) => links.push(Link {
                trace_id: t,
                span_id: sp,
                attributes: convert_attrs(l.attributes, c),
            }),
            _ => c.skip("otlp link without a usable trace or span id (link dropped)"),
        }
    }
    let operation = c.interner.get(&s.name);
    let attributes = convert_attrs(s.attributes, c);
    let span = Span {
        trace_id,
        span_id,
        parent,
        operation,
        start_ns: s.start_time_unix_nano,
        end_ns: s.end_time_unix_nano.max(s.start_time_unix_nano),
        kind,
        status,
        attributes,
        resource: resource.clone(),
        scope: scope.clone(),
        events,
        links,
    };
    c.push(span);
}

// ---- writing ----

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
            AttrValue::Int(v) => m.serialize_entry("intValue", &v.to_string())?,
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
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    parent_span_id: String,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
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
    time_unix_nano: String,
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty_attrs")]
    attributes: Attrs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkOut<'a> {
    trace_id: String,
    span_id: String,
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
        trace_id: s.trace_id.to_hex(),
        span_id: s.span_id.to_hex(),
        parent_span_id: s.parent.map(|p| p.to_hex()).unwrap_or_default(),
        name: &s.operation,
        kind: s.kind.otlp_number(),
        start_time_unix_nano: s.start_ns.to_string(),
        end_time_unix_nano: s.end_ns.to_string(),
        attributes: Attrs(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| EventOut {
                time_unix_nano: e.time_ns.to_string(),
                name: &e.name,
                attributes: Attrs(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| LinkOut {
                trace_id: l.trace_id.to_hex(),
                span_id: l.span_id.to_hex(),
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
