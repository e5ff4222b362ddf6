//! Jaeger's v1 JSON: the API response (`{"data": [trace…]}`), one UI trace (`{traceID, spans,
//! processes}`), a list of spans with inline `process`, and the protobuf-JSON domain model
//! (`traceId` in base64, `vType` tags). Read into the model with the OpenTelemetry collector's
//! mapping (`error` / `otel.status_code` tags → status, `span.kind` → kind, logs → events, the first
//! same-trace reference → parent, the others → links); written back as the API response Jaeger
//! UI's "JSON File" upload loads.

mod read;
mod write;

pub use read::{parse, parse_if_trace};
pub use write::{API_SEPARATOR, API_START, write_api_end, write_api_response, write_api_trace};
