//! What the fuzz targets (`fuzz/`, run by `scripts/fuzz`) feed their inputs to, here so that the
//! tests replay the crashes they found (`fuzz/regressions/`) through the very same calls. Each
//! takes any bytes and must return, whatever they are; the outcome is thrown away.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use crate::config::{IntakeSettings, Settings};
use crate::formats::{Format, TraceCollector, jaeger, otlp, zipkin};

static INTAKE: LazyLock<Option<IntakeSettings>> =
    LazyLock::new(|| Settings::load(None).ok().map(|s| s.intake));

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_772_366_400, 0).unwrap_or_default()
}

/// What a fuzz target calls with its input.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: [(&str, Target); 5] = [
    ("incident", incident),
    ("alertmanager", alertmanager),
    ("pagerduty", pagerduty),
    ("trace_input", trace_input),
    ("trace_formats", trace_formats),
];

/// An incident message (`incidents.declared`, `collect --incident FILE`).
pub fn incident(data: &[u8]) {
    let _ = crate::model::Incident::parse(data);
}

/// An Alertmanager webhook body, with the default intake settings.
pub fn alertmanager(data: &[u8]) {
    if let Some(s) = INTAKE.as_ref() {
        let _ = crate::intake::alertmanager::to_incident(data, s, now());
    }
}

/// A PagerDuty v3 webhook body (past its signature check).
pub fn pagerduty(data: &[u8]) {
    if let Some(s) = INTAKE.as_ref() {
        let _ = crate::intake::pagerduty::to_incident(data, s, now());
    }
}

/// A whole trace input as `collect --traces-file` reads it: plain or zstd, one document or JSON
/// Lines, any format, detected.
pub fn trace_input(data: &[u8]) {
    let _ = crate::capture::file::FileSource::from_bytes("fuzz", data, None);
}

/// Each trace format reader on its own, as the backends' answers are read: the first byte picks
/// the reader, so that every one of them sees every shape of input.
pub fn trace_formats(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let mut c = TraceCollector::default();
    let _ = match pick % 9 {
        0 => jaeger::parse(bytes, Format::JaegerApiResponse, &mut c),
        1 => jaeger::parse(bytes, Format::JaegerTrace, &mut c),
        2 => jaeger::parse(bytes, Format::JaegerSpans, &mut c),
        3 => jaeger::parse(bytes, Format::JaegerDomain, &mut c),
        4 => otlp::parse(bytes, &mut c),
        5 => otlp::parse_tempo_v2(bytes, &mut c).map(|_| ()),
        6 => zipkin::parse(bytes, Format::ZipkinSpans, &mut c),
        7 => zipkin::parse(bytes, Format::ZipkinTraces, &mut c),
        _ => c.add_document(bytes).map(|_| ()),
    };
    let _ = c.finish();
}
