//! Reading Jaeger v1 JSON (API response, UI trace, span list, domain model) into the model.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use chrono::DateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::formats::lenient::i64_any;
use crate::formats::{Format, FormatError, Json, TraceCollector};
use crate::model::{
    AttrValue, Attribute, Event, Link, Resource, Span, SpanId, SpanKind, Status, StatusCode,
    TraceId,
};

#[derive(Deserialize)]
struct ApiResponse<'a> {
    #[serde(default, borrow)]
    data: Vec<JTrace<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JTrace<'a> {
    #[serde(default, borrow, rename = "traceID")]
    trace_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    spans: Vec<JSpan<'a>>,
    /// Left as text until the trace is added, in the document's order: every trace of a
    /// service carries the same process, and one seen before with the same text is not read
    /// again.
    #[serde(default, borrow, deserialize_with = "entries_in_order")]
    processes: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The domain model's list of `{processID, process}`.
    #[serde(default, borrow)]
    process_map: Vec<JProcessMapping<'a>>,
}

/// A JSON object's entries in the document's order, keys borrowed where they hold no escape.
fn entries_in_order<'de, D>(d: D) -> Result<Vec<(Cow<'de, str>, &'de RawValue)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Key<'de>(Cow<'de, str>);
    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Text;
            impl<'de> serde::de::Visitor<'de> for Text {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a process id")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(Text)
        }
    }
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of processes")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
            while let Some((Key(id), text)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                out.push((id, text));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries)
}

#[derive(Deserialize)]
struct JProcessMapping<'a> {
    #[serde(default, borrow, alias = "processId", rename = "processID")]
    process_id: Cow<'a, str>,
    #[serde(borrow)]
    process: JProcess<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JProcess<'a> {
    #[serde(default, borrow)]
    service_name: Cow<'a, str>,
    #[serde(default, borrow)]
    tags: Vec<JTag<'a>>,
}

#[derive(Deserialize)]
struct JSpan<'a> {
    #[serde(default, borrow, rename = "traceID", alias = "traceId")]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow, rename = "spanID", alias = "spanId")]
    span_id: Cow<'a, str>,
    #[serde(default, borrow, rename = "parentSpanID", alias = "parentSpanId")]
    parent_span_id: Cow<'a, str>,
    #[serde(default, borrow, rename = "operationName")]
    operation_name: Cow<'a, str>,
    #[serde(default, borrow)]
    references: Vec<JReference<'a>>,
    #[serde(default, rename = "startTime")]
    start_time: Timestamp,
    #[serde(default)]
    duration: Duration,
    #[serde(default, borrow)]
    tags: Vec<JTag<'a>>,
    #[serde(default, borrow)]
    logs: Vec<JLog<'a>>,
    #[serde(default, borrow, rename = "processID", alias = "processId")]
    process_id: Cow<'a, str>,
    #[serde(default, borrow)]
    process: Option<JProcess<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JReference<'a> {
    #[serde(default, borrow)]
    ref_type: Cow<'a, str>,
    #[serde(default, borrow, rename = "traceID", alias = "traceId")]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow, rename = "spanID", alias = "spanId")]
    span_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct JLog<'a> {
    #[serde(default)]
    timestamp: Timestamp,
    #[serde(default, borrow)]
    fields: Vec<JTag<'a>>,
}

/// A tag in either form: `{key, type, value}` (UI model) or `{key, vType, vStr…}` (domain model).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JTag<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow, rename = "type", alias = "vType")]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<TagValue<'a>>,
    #[serde(default, borrow)]
    v_str: Option<Cow<'a, str>>,
    #[serde(default)]
    v_bool: Option<bool>,
    #[serde(default, deserialize_with = "opt_i64")]
    v_int64: Option<i64>,
    #[serde(default)]
    v_float64: Option<f64>,
    #[serde(default, borrow)]
    v_binary: Option<Cow<'a, str>>,
}

fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64_any(d).map(Some)
}

/// A tag's `value` as written, borrowed from the input where it can be (no tree is built).
enum TagValue<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// Arrays, objects and null, as JSON text.
    Other(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for TagValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TagValue<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a tag value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(TagValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TagValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(TagValue::Float(v as f64), TagValue::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(TagValue::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TagValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TagValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(TagValue::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TagValue::Other("null".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element::<serde_json::Value>()? {
                    items.push(v);
                }
                Ok(TagValue::Other(serde_json::Value::Array(items).to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut m = serde_json::Map::new();
                while let Some((k, v)) = a.next_entry::<String, serde_json::Value>()? {
                    m.insert(k, v);
                }
                Ok(TagValue::Other(serde_json::Value::Object(m).to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A time or a duration as Jaeger writes it: µs as a number (UI model) or text (domain model).
#[derive(Deserialize)]
#[serde(untagged)]
enum MicrosOrText<'a> {
    Micros(i64),
    Float(f64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

/// µs since the epoch (UI model) or RFC 3339 (domain model), as ns.
#[derive(Default, Clone, Copy)]
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match MicrosOrText::deserialize(d)? {
            MicrosOrText::Micros(us) => Ok(Self(us.saturating_mul(1000))),
            MicrosOrText::Float(us) => Ok(Self((us * 1000.0) as i64)),
            MicrosOrText::Text(t) => {
                if let Ok(us) = t.parse::<i64>() {
                    return Ok(Self(us.saturating_mul(1000)));
                }
                DateTime::parse_from_rfc3339(&t)
                    .ok()
                    .and_then(|dt| dt.timestamp_nanos_opt())
                    .map(Self)
                    .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {t:?}")))
            }
        }
    }
}

/// µs (UI model) or a Go duration string such as `"5000ns"` (domain model), as ns.
#[derive(Default, Clone, Copy)]
struct Duration(i64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match MicrosOrText::deserialize(d)? {
            MicrosOrText::Micros(us) => Ok(Self(us.saturating_mul(1000))),
            MicrosOrText::Float(us) => Ok(Self((us * 1000.0) as i64)),
            MicrosOrText::Text(t) => crate::duration::parse_go(&t)
                .map(|d| Self(d.as_nanos().min(i64::MAX as u128) as i64))
                .ok_or_else(|| serde::de::Error::custom(format!("bad duration {t:?}"))),
        }
    }
}

/// A tag's value as [`tag_value`] makes it, with text left borrowed from the tag: a process's
/// tags are compared with a resource made before without making anything.
enum TagRef<'t> {
    Text(&'t str),
    Value(AttrValue),
}

fn tag_ref<'t>(tag: &'t JTag<'_>) -> TagRef<'t> {
    use TagRef::{Text, Value};
    if let Some(s) = &tag.v_str {
        return Text(s);
    }
    if let Some(b) = tag.v_bool {
        return Value(AttrValue::Bool(b));
    }
    if let Some(i) = tag.v_int64 {
        return Value(AttrValue::Int(i));
    }
    if let Some(f) = tag.v_float64 {
        return Value(AttrValue::Double(f));
    }
    if let Some(b) = &tag.v_binary
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b.as_bytes())
    {
        return Value(AttrValue::Bytes(bytes.into()));
    }
    let kind = tag.kind.as_ref();
    let is = |name: &str| kind.eq_ignore_ascii_case(name);
    match &tag.value {
        Some(TagValue::Bool(b)) => Value(AttrValue::Bool(*b)),
        Some(TagValue::Int(i)) if is("float64") => Value(AttrValue::Double(*i as f64)),
        Some(TagValue::Int(i)) => Value(AttrValue::Int(*i)),
        Some(TagValue::Float(f)) => Value(AttrValue::Double(*f)),
        Some(TagValue::Str(s)) if is("bool") => {
            Value(AttrValue::Bool(s.eq_ignore_ascii_case("true")))
        }
        Some(TagValue::Str(s)) if is("int64") => {
            s.parse().map_or(Text(s), |i| Value(AttrValue::Int(i)))
        }
        Some(TagValue::Str(s)) if is("float64") => {
            s.parse().map_or(Text(s), |f| Value(AttrValue::Double(f)))
        }
        Some(TagValue::Str(s)) if is("binary") => {
            match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                Ok(b) => Value(AttrValue::Bytes(b.into())),
                Err(_) => Text(s),
            }
        }
        Some(TagValue::Str(s)) => Text(s),
        Some(TagValue::Other(text)) => Text(text),
        None if is("bool") => Value(AttrValue::Bool(false)),
        None => Text(""),
    }
}

fn tag_value(tag: &JTag<'_>) -> AttrValue {
    match tag_ref(tag) {
        TagRef::Text(s) => AttrValue::Str(s.into()),
        TagRef::Value(v) => v,
    }
}

fn convert_tags(tags: &[JTag<'_>], c: &mut TraceCollector) -> Vec<Attribute> {
    tags.iter()
        .map(|t| Attribute {
            key: c.interner.get(&t.key),
            value: tag_value(t),
        })
        .collect()
}

fn process_resource(p: &JProcess<'_>, c: &mut TraceCollector) -> Arc<Resource> {
    let service = if p.service_name.is_empty() {
        "unknown_service"
    } else {
        &p.service_name
    };
    // The same process comes with every trace of a service: the resource made from it before
    // is found without making it again.
    if let Some(r) = c.known_resource(service, |r| is_resource_of(r, service, &p.tags)) {
        return r;
    }
    let service = c.interner.get(service);
    let mut attributes = vec![Attribute {
        key: c.interner.get("service.name"),
        value: AttrValue::Str(service.as_ref().into()),
    }];
    attributes.extend(convert_tags(&p.tags, c));
    c.resource(Resource {
        service,
        attributes,
    })
}

/// Whether `r` is the resource [`process_resource`] makes of a process with this service name
/// and these tags.
fn is_resource_of(r: &Resource, service: &str, tags: &[JTag<'_>]) -> bool {
    let [first, rest @ ..] = r.attributes.as_slice() else {
        return false;
    };
    *r.service == *service
        && &*first.key == "service.name"
        && matches!(&first.value, AttrValue::Str(s) if **s == *service)
        && rest.len() == tags.len()
        && rest.iter().zip(tags).all(|(a, t)| {
            *a.key == *t.key
                && match (&a.value, tag_ref(t)) {
                    (AttrValue::Str(have), TagRef::Text(text)) => **have == *text,
                    (have, TagRef::Value(v)) => *have == v,
                    (_, TagRef::Text(_)) => false,
                }
        })
}

/// Parses one Jaeger v1 document of the given (detected) format into the collector.
pub fn parse(bytes: &[u8], format: Format, c: &mut TraceCollector) -> Result<(), FormatError> {
    let invalid = |e: serde_json::Error| FormatError::Invalid {
        format: format.name(),
        message: e.to_string(),
    };
    let traces: Vec<JTrace<'_>> = match format {
        Format::JaegerApiResponse if bytes.trim_ascii_start().starts_with(b"[") => {
            serde_json::from_slice(bytes).map_err(invalid)?
        }
        Format::JaegerApiResponse => {
            serde_json::from_slice::<ApiResponse<'_>>(bytes)
                .map_err(invalid)?
                .data
        }
        Format::JaegerSpans => vec![JTrace {
            trace_id: None,
            spans: serde_json::from_slice(bytes).map_err(invalid)?,
            processes: Default::default(),
            process_map: Vec::new(),
        }],
        _ => vec![serde_json::from_slice(bytes).map_err(invalid)?],
    };
    // Every trace's processes are read before any trace is added: a document with one that
    // cannot be read adds nothing.
    let processes = traces
        .iter()
        .map(|t| process_resources(t, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| FormatError::Invalid {
            format: format.name(),
            message,
        })?;
    for (trace, processes) in traces.iter().zip(processes) {
        add_trace(trace, processes, c);
    }
    Ok(())
}

/// Parses `bytes` as one Jaeger UI trace (`{traceID, spans, processes}`) if it is one; `false`,
/// with nothing added, if it is not. JSON Lines of traces are read a line at a time this way,
/// without detecting each line's format again.
pub fn parse_if_trace(json: Json<'_>, c: &mut TraceCollector) -> bool {
    match json.parse::<JTrace<'_>>() {
        Ok(t) if t.trace_id.is_some() && !t.spans.is_empty() => match process_resources(&t, c) {
            Ok(processes) => {
                add_trace(&t, processes, c);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}

/// The resource of each of the trace's processes, by process id; the first process (in the
/// document's order) that cannot be read is the error.
fn process_resources<'t>(
    trace: &'t JTrace<'_>,
    c: &mut TraceCollector,
) -> Result<foldhash::HashMap<&'t str, Arc<Resource>>, String> {
    let mut processes: foldhash::HashMap<&str, Arc<Resource>> = Default::default();
    for (id, text) in &trace.processes {
        let resource = match c.resource_of_text(text.get()) {
            Some(r) => r,
            None => {
                let process = serde_json::from_str(text.get()).map_err(|e| {
                    let trace = trace.trace_id.as_deref().unwrap_or("without an id");
                    format!("process {id:?} of trace {trace}: {e}")
                })?;
                let r = process_resource(&process, c);
                c.remember_resource_text(text.get(), &r);
                r
            }
        };
        processes.insert(id.as_ref(), resource);
    }
    for m in &trace.process_map {
        processes.insert(m.process_id.as_ref(), process_resource(&m.process, c));
    }
    Ok(processes)
}

fn add_trace(
    trace: &JTrace<'_>,
    processes: foldhash::HashMap<&str, Arc<Resource>>,
    c: &mut TraceCollector,
) {
    for span in &trace.spans {
        let resource = match (&span.process, processes.get(span.process_id.as_ref())) {
            (Some(p), _) => process_resource(p, c),
            (None, Some(r)) => r.clone(),
            (None, None) => {
                c.skip("jaeger span whose processID is not in the trace's processes");
                continue;
            }
        };
        add_span(span, resource, c);
    }
}

/// Jaeger UI accepts any text as an id; ids that are neither hex nor base64 are replaced by a
/// stable hash of the text so the span is kept and its references still match.
fn lenient_trace_id(s: &str, c: &mut TraceCollector) -> Option<TraceId> {
    match TraceId::parse(s) {
        Ok(t) => Some(t),
        Err(_) if !s.is_empty() => {
            c.note("jaeger trace ids that are not hex, replaced by a hash of their text");
            Some(TraceId(hashed(s)))
        }
        Err(_) => None,
    }
}

fn lenient_span_id(s: &str, c: &mut TraceCollector) -> Option<SpanId> {
    match SpanId::parse(s) {
        Ok(t) => Some(t),
        Err(_) if !s.is_empty() => {
            c.note("jaeger span ids that are not hex, replaced by a hash of their text");
            Some(SpanId(hashed(s)))
        }
        Err(_) => None,
    }
}

fn hashed<const N: usize>(s: &str) -> [u8; N] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(s.as_bytes());
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

fn add_span(s: &JSpan<'_>, resource: Arc<Resource>, c: &mut TraceCollector) {
    let (trace_id, span_id) = match (
        lenient_trace_id(&s.trace_id, c),
        lenient_span_id(&s.span_id, c),
    ) {
        (Some(t), Some(sp)) if !t.is_zero() => (t, sp),
        (Some(t), Some(_)) if t.is_zero() => {
            return c.skip("jaeger span with an all-zero trace id");
        }
        _ => return c.skip("jaeger span without a trace or span id"),
    };
    // As Jaeger's ParentSpanID(): the first CHILD_OF into the same trace, else the first
    // FOLLOWS_FROM; every other reference is a link.
    let mut refs = Vec::with_capacity(s.references.len());
    for r in &s.references {
        let (Some(t), Some(sp)) = (
            lenient_trace_id(&r.trace_id, c),
            lenient_span_id(&r.span_id, c),
        ) else {
            c.skip("jaeger reference without a usable id (reference dropped)");
            continue;
        };
        refs.push((t, sp, r.ref_type.eq_ignore_ascii_case("CHILD_OF")));
    }
    let parent_at = refs
        .iter()
        .position(|(t, _, child_of)| *t == trace_id && *child_of)
        .or_else(|| refs.iter().position(|(t, _, _)| *t == trace_id));
    let mut parent = parent_at.map(|i| refs[i].1);
    let mut links = Vec::new();
    for (i, (t, sp, child_of)) in refs.into_iter().enumerate() {
        if Some(i) == parent_at {
            continue;
        }
        let mut attributes = Vec::new();
        if !child_of {
            attributes.push(Attribute {
                key: c.interner.get("opentracing.ref_type"),
                value: AttrValue::Str("follows_from".into()),
            });
        }
        links.push(Link {
            trace_id: t,
            span_id: sp,
            attributes,
        });
    }
    if parent.is_none() && !s.parent_span_id.is_empty() {
        parent = lenient_span_id(&s.parent_span_id, c).filter(|p| !p.is_zero());
    }

    let mut kind = SpanKind::Unspecified;
    let mut status = Status::default();
    let mut attributes = Vec::with_capacity(s.tags.len());
    for tag in &s.tags {
        match tag.key.as_ref() {
            "span.kind" => kind = SpanKind::from_name(&tag_value(tag).to_text()),
            "error" => {
                let is_error = match tag_value(tag) {
                    AttrValue::Bool(b) => b,
                    other => other.to_text().eq_ignore_ascii_case("true"),
                };
                if is_error {
                    status.code = StatusCode::Error;
                }
            }
            "otel.status_code" => match tag_value(tag).to_text().to_ascii_uppercase().as_str() {
                "ERROR" => status.code = StatusCode::Error,
                "OK" if status.code != StatusCode::Error => status.code = StatusCode::Ok,
                _ => {}
            },
            "otel.status_description" => {
                status.message = Some(tag_value(tag).to_text().into());
            }
            _ => attributes.push(Attribute {
                key: c.interner.get(&tag.key),
                value: tag_value(tag),
            }),
        }
    }

    let mut events = Vec::with_capacity(s.logs.len());
    for log in &s.logs {
        let mut name: Box<str> = "".into();
        let mut attrs = Vec::with_capacity(log.fields.len());
        for f in &log.fields {
            if f.key == "event" && name.is_empty() {
                name = tag_value(f).to_text().into();
            } else {
                attrs.push(Attribute {
                    key: c.interner.get(&f.key),
                    value: tag_value(f),
                });
            }
        }
        events.push(Event {
            time_ns: log.timestamp.0,
            name,
            attributes: attrs,
        });
    }
    if status.code == StatusCode::Error && status.message.is_none() {
        status.message = error_message_from_events(&events);
    }

    let start_ns = s.start_time.0;
    let operation = c.interner.get(&s.operation_name);
    c.push(Span {
        trace_id,
        span_id,
        parent,
        operation,
        start_ns,
        end_ns: start_ns.saturating_add(s.duration.0.max(0)),
        kind,
        status,
        attributes: attributes.into(),
        resource,
        scope: None,
        events: events.into(),
        links: links.into(),
        trace_state: None,
    });
}

/// The message of an error log (OpenTracing's `event=error` with `message` or `error.object`).
fn error_message_from_events(events: &[Event]) -> Option<Box<str>> {
    events
        .iter()
        .filter(|e| &*e.name == "error" || e.name.is_empty())
        .flat_map(|e| e.attributes.iter())
        .find(|a| matches!(&*a.key, "message" | "error.object" | "error.message"))
        .map(|a| a.value.to_text().into())
}
