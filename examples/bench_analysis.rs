//! Benchmark of the analysis alone: builds about a million spans in memory (100,000 traces of 10
//! spans: a shop whose payment database fails for part of the hour) and times `analyze` on them.
//!
//! ```text
//! cargo run --release --example bench_analysis [-- TRACES]
//! ```
//! Prints spans per second and the process's peak resident memory (VmHWM) before and after.

use std::sync::Arc;
use std::time::Instant;

use evidence_locker::analyze::{AnalysisInput, analyze};
use evidence_locker::capture::{Purpose, Purposes};
use evidence_locker::model::{
    Resource, Span, SpanId, SpanKind, Status, StatusCode, Trace, TraceId,
};

const MS: i64 = 1_000_000;
const T0: i64 = 1_770_300_000 * 1_000_000_000;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let services: Vec<Arc<Resource>> = ["frontend", "checkout", "cart", "catalog", "payment"]
        .iter()
        .map(|s| {
            Arc::new(Resource {
                service: Arc::from(*s),
                attributes: Vec::new(),
            })
        })
        .collect();
    let ops: Vec<Arc<str>> = [
        "GET /",
        "PlaceOrder",
        "GetCart",
        "GetProduct",
        "Charge",
        "SELECT",
        "cache",
        "render",
        "auth",
        "log",
    ]
    .iter()
    .map(|s| Arc::from(*s))
    .collect();
    let shape: [(usize, Option<usize>, usize); 10] = [
        (0, None, 0),
        (0, Some(0), 8),
        (1, Some(1), 1),
        (2, Some(2), 2),
        (1, Some(1), 3),
        (3, Some(4), 3),
        (1, Some(1), 4),
        (4, Some(6), 4),
        (4, Some(7), 5),
        (0, Some(0), 7),
    ];
    let began = T0 + 30 * 60_000 * MS;
    let build = Instant::now();
    let traces: Vec<(Trace, Purposes)> = (0..n)
        .map(|i| {
            let start = T0 + (i as i64 * 3_600_000 * MS) / n as i64;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let failing = start >= began && i % 4 == 0 && start < began + 15 * 60_000 * MS;
            let spans = shape
                .iter()
                .enumerate()
                .map(|(k, &(svc, parent, op))| Span {
                    trace_id: TraceId(id),
                    span_id: SpanId((((i as u64) << 4) | (k as u64 + 1)).to_be_bytes()),
                    parent: parent
                        .map(|p| SpanId((((i as u64) << 4) | (p as u64 + 1)).to_be_bytes())),
                    operation: ops[op].clone(),
                    start_ns: start + k as i64 * MS,
                    end_ns: start + k as i64 * MS + (20 - 2 * k as i64) * MS,
                    kind: SpanKind::Server,
                    status: Status {
                        code: if failing && (k == 8 || k == 7 || k == 6 || k == 1 || k == 0) {
                            StatusCode::Error
                        } else {
                            StatusCode::Unset
                        },
                        message: None,
                    },
                    attributes: Default::default(),
                    resource: services[svc].clone(),
                    scope: None,
                    events: Default::default(),
                    links: Default::default(),
                    trace_state: None,
                })
                .collect();
            let p = if start < began {
                Purpose::Baseline
            } else if failing {
                Purpose::Errors
            } else {
                Purpose::Sample
            };
            (
                Trace {
                    id: TraceId(id),
                    spans,
                },
                Purposes::default().with(p),
            )
        })
        .collect();
    let spans: usize = traces.iter().map(|(t, _)| t.spans.len()).sum();
    let rss_before = peak_rss_mb();
    eprintln!(
        "built {n} traces, {spans} spans in {:.2} s",
        build.elapsed().as_secs_f64()
    );
    let input = AnalysisInput {
        began_ns: began,
        window_start_ns: T0,
        window_end_ns: T0 + 3_600_000 * MS,
        slow_threshold: std::time::Duration::from_secs(1),
        error_rate_threshold: 0.05,
        kept_normal_share: 1.0,
    };
    let mut best = f64::MAX;
    let mut origin = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (a, _) = analyze(&traces, &input);
        best = best.min(t.elapsed().as_secs_f64());
        origin = a
            .origin
            .map(|o| format!("{} {}", o.service, o.operation))
            .unwrap_or_default();
    }
    println!(
        "analysis of {spans} spans: {best:.3} s (best of 3) = {:.0} spans/s; peak RSS {:.0} MB with the spans alone, {:.0} MB after analysing; origin: {origin}",
        spans as f64 / best,
        rss_before,
        peak_rss_mb()
    );
}
