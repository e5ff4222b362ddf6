//! Writing traces as the Jaeger v1 API response that Jaeger UI's "JSON File" upload loads.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;

use crate::model::{AttrValue, HexId, Resource, StatusCode, Trace};

#[derive(Serialize)]
struct TagOut<'a> {
    key: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: ValueOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ValueOut<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Owned(String),
}

fn tag_out<'a>(key: &'a str, v: &'a AttrValue) -> TagOut<'a> {
    let (kind, value) = match v {
        AttrValue::Str(s) => ("string", ValueOut::Str(s)),
        AttrValue::Bool(b) => ("bool", ValueOut::Bool(*b)),
        AttrValue::Int(i) => ("int64", ValueOut::Int(*i)),
        AttrValue::Double(d) if d.is_finite() => ("float64", ValueOut::Double(*d)),
        AttrValue::Double(d) => ("string", ValueOut::Owned(d.to_string())),
        AttrValue::Bytes(b) => (
            "binary",
            ValueOut::Owned(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
        other => ("string", ValueOut::Owned(other.to_text())),
    };
    TagOut { key, kind, value }
}

fn str_tag<'a>(key: &'a str, value: &'a str) -> TagOut<'a> {
    TagOut {
        key,
        kind: "string",
        value: ValueOut::Str(value),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceOut {
    ref_type: &'static str,
    #[serde(rename = "traceID")]
    trace_id: HexId,
    #[serde(rename = "spanID")]
    span_id: HexId,
}

#[derive(Serialize)]
struct LogOut<'a> {
    timestamp: i64,
    fields: Vec<TagOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanOut<'a> {
    #[serde(rename = "traceID")]
    trace_id: HexId,
    #[serde(rename = "spanID")]
    span_id: HexId,
    flags: u8,
    operation_name: &'a str,
    references: Vec<ReferenceOut>,
    start_time: i64,
    duration: i64,
    tags: Vec<TagOut<'a>>,
    logs: Vec<LogOut<'a>>,
    #[serde(rename = "processID")]
    process_id: String,
    warnings: Option<()>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessOut<'a> {
    service_name: &'a str,
    tags: Vec<TagOut<'a>>,
}

#[derive(Serialize)]
struct TraceOut<'a> {
    #[serde(rename = "traceID")]
    trace_id: HexId,
    spans: Vec<SpanOut<'a>>,
    processes: BTreeMap<String, ProcessOut<'a>>,
    warnings: Option<()>,
}

fn trace_out(trace: &Trace) -> TraceOut<'_> {
    let mut process_ids: Vec<*const Resource> = Vec::new();
    let mut processes = BTreeMap::new();
    let mut spans = Vec::with_capacity(trace.spans.len());
    for s in &trace.spans {
        let ptr = Arc::as_ptr(&s.resource);
        let n = match process_ids.iter().position(|p| *p == ptr) {
            Some(i) => i + 1,
            None => {
                process_ids.push(ptr);
                let n = process_ids.len();
                processes.insert(
                    format!("p{n}"),
                    ProcessOut {
                        service_name: &s.resource.service,
                        tags: s
                            .resource
                            .attributes
                            .iter()
                            .filter(|a| &*a.key != "service.name")
                            .map(|a| tag_out(&a.key, &a.value))
                            .collect(),
                    },
                );
                n
            }
        };
        let mut references = Vec::new();
        if let Some(p) = s.parent {
            references.push(ReferenceOut {
                ref_type: "CHILD_OF",
                trace_id: s.trace_id.hex(),
                span_id: p.hex(),
            });
        }
        for l in &s.links {
            references.push(ReferenceOut {
                ref_type: "FOLLOWS_FROM",
                trace_id: l.trace_id.hex(),
                span_id: l.span_id.hex(),
            });
        }
        let mut tags: Vec<TagOut<'_>> = s
            .attributes
            .iter()
            .map(|a| tag_out(&a.key, &a.value))
            .collect();
        if let Some(k) = s.kind.jaeger_name() {
            tags.push(str_tag("span.kind", k));
        }
        match s.status.code {
            StatusCode::Error => {
                tags.push(TagOut {
                    key: "error",
                    kind: "bool",
                    value: ValueOut::Bool(true),
                });
                tags.push(str_tag("otel.status_code", "ERROR"));
            }
            StatusCode::Ok => tags.push(str_tag("otel.status_code", "OK")),
            StatusCode::Unset => {}
        }
        if let Some(m) = &s.status.message {
            tags.push(str_tag("otel.status_description", m));
        }
        let logs = s
            .events
            .iter()
            .map(|e| {
                let mut fields = Vec::with_capacity(e.attributes.len() + 1);
                if !e.name.is_empty() {
                    fields.push(str_tag("event", &e.name));
                }
                fields.extend(e.attributes.iter().map(|a| tag_out(&a.key, &a.value)));
                LogOut {
                    timestamp: e.time_ns / 1000,
                    fields,
                }
            })
            .collect();
        spans.push(SpanOut {
            trace_id: s.trace_id.hex(),
            span_id: s.span_id.hex(),
            flags: 1,
            operation_name: &s.operation,
            references,
            start_time: s.start_ns / 1000,
            duration: s.duration_ns() / 1000,
            tags,
            logs,
            process_id: format!("p{n}"),
            warnings: None,
        });
    }
    TraceOut {
        trace_id: trace.id.hex(),
        spans,
        processes,
        warnings: None,
    }
}

/// How a Jaeger v1 API response (`{"data": […], "total": …}`) begins: its traces follow, each
/// written by [`write_api_trace`], [`API_SEPARATOR`] between two, and [`write_api_end`] closes it.
pub const API_START: &[u8] = b"{\"data\":[";

/// What stands between two traces of a Jaeger v1 API response.
pub const API_SEPARATOR: &[u8] = b",\n";

/// Closes a Jaeger v1 API response of `n` traces.
pub fn write_api_end<W: Write + ?Sized>(n: usize, out: &mut W) -> std::io::Result<()> {
    write!(
        out,
        "],\"total\":{n},\"limit\":0,\"offset\":0,\"errors\":null}}"
    )
}

/// Writes traces as a Jaeger v1 API response, one trace at a time.
pub fn write_api_response<'a, W: Write + ?Sized>(
    traces: impl IntoIterator<Item = &'a Trace>,
    out: &mut W,
) -> std::io::Result<()> {
    out.write_all(API_START)?;
    let mut n = 0usize;
    for t in traces {
        if n > 0 {
            out.write_all(API_SEPARATOR)?;
        }
        write_api_trace(t, out)?;
        n += 1;
    }
    write_api_end(n, out)
}

/// One trace as an element of a Jaeger v1 API response's `data`.
pub fn write_api_trace<W: Write + ?Sized>(trace: &Trace, out: &mut W) -> std::io::Result<()> {
    serde_json::to_writer(out, &trace_out(trace))?;
    Ok(())
}
