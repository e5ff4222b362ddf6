//! Zipkin v2 JSON: a list of spans, a list of traces (lists of spans) or a single span. An error is
//! the presence of the `error` tag, whatever its value; a span without a `timestamp` takes its
//! earliest annotation's, and one with neither is counted as skipped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::lenient::i64_any;
use super::{Format, FormatError, TraceCollector};
use crate::model::{
    AttrValue, Attribute, Event, Resource, Span, SpanId, SpanKind, Status, StatusCode, TraceId,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZSpan<'a> {
    #[serde(default, borrow)]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    parent_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "opt_i64")]
    timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    duration: Option<i64>,
    #[serde(default, borrow)]
    local_endpoint: Option<Endpoint<'a>>,
    #[serde(default, borrow)]
    remote_endpoint: Option<Endpoint<'a>>,
    #[serde(default, borrow)]
    annotations: Vec<Annotation<'a>>,
    #[serde(default, borrow)]
    tags: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default)]
    shared: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint<'a> {
    #[serde(default, borrow)]
    service_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ipv4: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ipv6: Option<Cow<'a, str>>,
    #[serde(default)]
    port: Option<i64>,
}

#[derive(Deserialize)]
struct Annotation<'a> {
    #[serde(default, deserialize_with = "i64_any")]
    timestamp: i64,
    #[serde(default, borrow)]
    value: Cow<'a, str>,
}

fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64_any(d).map(Some)
}

/// Parses one Zipkin v2 document into the collector.
pub fn parse(bytes: &[u8], format: Format, c: &mut TraceCollector) -> Result<(), FormatError> {
    let invalid = |e: serde_json::Error| FormatError::Invalid {
        format: format.name(),
        message: e.to_string(),
    };
    let text = bytes.trim_ascii_start();
    let spans: Vec<ZSpan<'_>> = if format == Format::ZipkinTraces {
        serde_json::from_slice::<Vec<Vec<ZSpan<'_>>>>(bytes)
            .map_err(invalid)?
            .into_iter()
            .flatten()
            .collect()
    } else if text.starts_with(b"{") {
        vec![serde_json::from_slice(bytes).map_err(invalid)?]
    } else {
        serde_json::from_slice(bytes).map_err(invalid)?
    };
    let mut converted: Vec<Span> = spans.into_iter().filter_map(|s| convert(s, c)).collect();
    split_shared_spans(&mut converted);
    for span in converted {
        c.push(span);
    }
    Ok(())
}

/// Zipkin lets the client and server halves of one call share a span id (`shared: true` on the
/// server half). As Jaeger's span-id deduper does, the server half gets an id of its own (a hash
/// of the shared id) with the client half as its parent, and the children of the shared id in
/// the server's service are moved under it, so every span id in a trace is unique.
fn split_shared_spans(spans: &mut [Span]) {
    use std::collections::HashMap;
    let is_shared = |s: &Span| matches!(s.attribute("zipkin.shared"), Some(AttrValue::Bool(true)));
    let mut renamed: HashMap<(TraceId, SpanId, Arc<str>), SpanId> = HashMap::new();
    let client_ids: std::collections::HashSet<(TraceId, SpanId)> = spans
        .iter()
        .filter(|s| !is_shared(s))
        .map(|s| (s.trace_id, s.span_id))
        .collect();
    for s in spans.iter_mut() {
        if is_shared(s) && client_ids.contains(&(s.trace_id, s.span_id)) {
            // From the span's content, so the same span gets the same id in every answer;
            // several server halves of one client id (redeliveries) differ by start time.
            let new_id = derived_id(s);
            renamed
                .entry((s.trace_id, s.span_id, s.service().clone()))
                .or_insert(new_id);
            s.parent = Some(s.span_id);
            s.span_id = new_id;
        }
    }
    if renamed.is_empty() {
        return;
    }
    for s in spans.iter_mut().filter(|s| !is_shared(s)) {
        if let Some(p) = s.parent
            && let Some(&new_parent) = renamed.get(&(s.trace_id, p, s.service().clone()))
            && new_parent != s.span_id
        {
            s.parent = Some(new_parent);
        }
    }
}

fn derived_id(server: &Span) -> SpanId {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(
        [
            &server.trace_id.0[..],
            &server.span_id.0[..],
            b"zipkin-shared-server",
            server.service().as_bytes(),
            &server.start_ns.to_be_bytes(),
        ]
        .concat(),
    );
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    SpanId(out)
}

fn convert(s: ZSpan<'_>, c: &mut TraceCollector) -> Option<Span> {
    let (trace_id, span_id) = match (TraceId::parse(&s.trace_id), SpanId::parse(&s.id)) {
        (Ok(t), Ok(sp)) if !t.is_zero() => (t, sp),
        (Err(e), _) | (_, Err(e)) => {
            c.skip(format!("zipkin span with {e}"));
            return None;
        }
        _ => {
            c.skip("zipkin span with an all-zero trace id");
            return None;
        }
    };
    let Some(start_us) = s.timestamp.filter(|t| *t > 0).or_else(|| {
        s.annotations
            .iter()
            .map(|a| a.timestamp)
            .filter(|t| *t > 0)
            .min()
    }) else {
        c.skip(match s.timestamp {
            Some(_) => "zipkin span whose timestamp is zero or negative",
            None => "zipkin span without a timestamp or annotations",
        });
        return None;
    };
    let parent = s
        .parent_id
        .as_deref()
        .filter(|p| !p.is_empty())
        .and_then(|p| SpanId::parse(p).ok())
        .filter(|p| !p.is_zero());
    let service = s
        .local_endpoint
        .as_ref()
        .and_then(|e| e.service_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("unknown_service");
    let service = c.interner.get(service);
    let mut resource_attrs = vec![Attribute {
        key: c.interner.get("service.name"),
        value: AttrValue::Str(service.as_ref().into()),
    }];
    if let Some(e) = &s.local_endpoint
        && let Some(ip) = e.ipv4.as_deref().or(e.ipv6.as_deref())
    {
        resource_attrs.push(Attribute {
            key: c.interner.get("host.ip"),
            value: AttrValue::Str(ip.into()),
        });
    }
    let resource = c.resource(Resource {
        service,
        attributes: resource_attrs,
    });

    let mut status = Status::default();
    // `annotationQuery=error` also matches an annotation whose value is "error".
    if s.annotations.iter().any(|a| a.value == "error") {
        status.code = StatusCode::Error;
    }
    let mut attributes = Vec::with_capacity(s.tags.len() + 3);
    for (k, v) in &s.tags {
        if k == "error" {
            status.code = StatusCode::Error;
            if !v.is_empty() {
                status.message = Some(v.as_ref().into());
            }
        } else {
            attributes.push(Attribute {
                key: c.interner.get(k),
                value: AttrValue::Str(v.as_ref().into()),
            });
        }
    }
    if let Some(e) = &s.remote_endpoint {
        if let Some(n) = e.service_name.as_deref().filter(|n| !n.is_empty()) {
            attributes.push(Attribute {
                key: c.interner.get("peer.service"),
                value: AttrValue::Str(n.into()),
            });
        }
        if let Some(ip) = e.ipv4.as_deref().or(e.ipv6.as_deref()) {
            attributes.push(Attribute {
                key: c.interner.get("net.peer.ip"),
                value: AttrValue::Str(ip.into()),
            });
        }
        if let Some(port) = e.port {
            attributes.push(Attribute {
                key: c.interner.get("net.peer.port"),
                value: AttrValue::Int(port),
            });
        }
    }
    if s.shared {
        attributes.push(Attribute {
            key: c.interner.get("zipkin.shared"),
            value: AttrValue::Bool(true),
        });
    }
    let events = s
        .annotations
        .iter()
        .map(|a| Event {
            time_ns: a.timestamp.saturating_mul(1000),
            name: a.value.as_ref().into(),
            attributes: Vec::new(),
        })
        .collect();
    let start_ns = start_us.saturating_mul(1000);
    let operation = c.interner.get(s.name.as_deref().unwrap_or(""));
    Some(Span {
        trace_id,
        span_id,
        parent,
        operation,
        start_ns,
        end_ns: start_ns.saturating_add(s.duration.unwrap_or(0).max(0).saturating_mul(1000)),
        kind: s
            .kind
            .as_deref()
            .map_or(SpanKind::Unspecified, SpanKind::from_name),
        status,
        attributes: attributes.into(),
        resource,
        scope: None,
        events,
        links: Default::default(),
        trace_state: None,
    })
}
