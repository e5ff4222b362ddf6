//! Reading OTLP JSON in all its dialects into the model.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use crate::formats::lenient::{NumberOrName, f64_any, i64_any};
use crate::formats::{FormatError, Json, TraceCollector};
use crate::model::{
    AttrValue, Attribute, Event, Link, Resource, Scope, Span, SpanId, SpanKind, Status, StatusCode,
    TraceId,
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
    #[serde(default, borrow)]
    trace_state: Cow<'a, str>,
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
pub fn parse_if_plain(json: Json<'_>, c: &mut TraceCollector) -> bool {
    match json.parse::<Document<'_>>() {
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
    let trace_state = (!s.trace_state.is_empty()).then(|| s.trace_state.into());
    let span = Span {
        trace_id,
        span_id,
        parent,
        operation,
        start_ns: s.start_time_unix_nano,
        end_ns: s.end_time_unix_nano.max(s.start_time_unix_nano),
        kind,
        status,
        attributes: attributes.into(),
        resource: resource.clone(),
        scope: scope.clone(),
        events,
        links: links.into(),
        trace_state,
    };
    c.push(span);
}
