//! Benchmark of the analysis against the number of failing services: `N` services, each with
//! five erroring traces of a gateway → service → its database during the incident (and one
//! normal trace before it), analysed whole. Time must grow linearly with `N` (it grew with its
//! square before the failure order became Kahn's algorithm and the timeline's span lookups an
//! index).
//!
//! ```text
//! cargo run --release --example bench_services [-- N ...]   # default: 5000 10000 20000
//! ```

use std::sync::Arc;
use std::time::Instant;

use evidence_locker::analyze::{AnalysisInput, analyze};
use evidence_locker::capture::{Purpose, Purposes};
use evidence_locker::model::{
    Resource, Span, SpanId, SpanKind, Status, StatusCode, Trace, TraceId,
};

const MS: i64 = 1_000_000;
const T0: i64 = 1_770_300_000 * 1_000_000_000;

fn resource(name: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service: Arc::from(name),
        attributes: Vec::new(),
    })
}

fn span(
    trace: u64,
    k: u64,
    parent: Option<u64>,
    op: &Arc<str>,
    start: i64,
    error: bool,
    resource: &Arc<Resource>,
) -> Span {
    let id = |k: u64| SpanId(((trace << 3) | k).to_be_bytes());
    let mut tid = [0u8; 16];
    tid[8..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id: TraceId(tid),
        span_id: id(k),
        parent: parent.map(id),
        operation: op.clone(),
        start_ns: start + k as i64 * MS,
        end_ns: start + (30 - 5 * k as i64) * MS,
        kind: if k == 0 {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        status: Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            message: None,
        },
        attributes: Default::default(),
        resource: resource.clone(),
        scope: None,
        events: Default::default(),
        links: Default::default(),
        trace_state: None,
    }
}

fn run(n: usize) -> (f64, usize) {
    let gateway = resource("gateway");
    let op: Arc<str> = Arc::from("call");
    let began = T0 + 30 * 60_000 * MS;
    let mut traces = Vec::new();
    let mut trace_no = 1u64;
    for s in 0..n {
        let svc = resource(&format!("service-{s:05}"));
        let db = resource(&format!("db-{s:05}"));
        for j in 0..6 {
            let failing = j > 0;
            let start = if failing {
                began + ((s * 5 + j) as i64 * 10 * MS)
            } else {
                T0 + s as i64 * MS
            };
            let spans = vec![
                span(trace_no, 0, None, &op, start, failing, &gateway),
                span(trace_no, 1, Some(0), &op, start, failing, &svc),
                span(trace_no, 2, Some(1), &op, start, failing, &db),
            ];
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&trace_no.to_be_bytes());
            let purpose = if failing {
                Purpose::Errors
            } else {
                Purpose::Baseline
            };
            traces.push((
                Trace {
                    id: TraceId(id),
                    spans,
                },
                Purposes::default().with(purpose),
            ));
            trace_no += 1;
        }
    }
    let spans = traces.iter().map(|(t, _)| t.spans.len()).sum();
    let input = AnalysisInput {
        began_ns: began,
        window_start_ns: T0,
        window_end_ns: T0 + 3_600_000 * MS,
        slow_threshold: std::time::Duration::from_secs(1),
        error_rate_threshold: 0.05,
        kept_normal_share: 1.0,
    };
    let t = Instant::now();
    let (a, _) = analyze(&traces, &input);
    let took = t.elapsed().as_secs_f64();
    assert!(
        a.failure_order.len() >= n,
        "every failing service is ordered"
    );
    (took, spans)
}

fn main() {
    let sizes: Vec<usize> = {
        let given: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if given.is_empty() {
            vec![5_000, 10_000, 20_000]
        } else {
            given
        }
    };
    let mut first: Option<(usize, f64)> = None;
    for n in sizes {
        let (took, spans) = run(n);
        let ratio = first.map_or(String::new(), |(n0, t0)| {
            format!(
                " ({:.2}× the time for {:.1}× the services)",
                took / t0,
                n as f64 / n0 as f64
            )
        });
        println!(
            "{n} failing services ({} services in all, {spans} spans): analysis {took:.3} s{ratio}",
            2 * n + 1
        );
        first.get_or_insert((n, took));
    }
}
