//! OTLP JSON traces. Reads every way it is written (spec: hex ids and enum numbers; Tempo: base64
//! ids, enum names, `batches`; Jaeger v3: wrapped in `result`; Tempo v2: wrapped in `trace`;
//! 64-bit numbers as strings) and writes the spec's form: hex ids, enum numbers, 64-bit numbers as
//! strings, one `TracesData` per line.

mod read;
mod write;

pub use read::{parse, parse_if_plain, parse_tempo_v2};
pub use write::write_trace_line;
