//! The analysis on generated scenarios with known answers, each with a trap real incidents have:
//! steady background errors that began before the incident, retries that hide a failure for a
//! while, clock skew, traces with missing spans, a slow database behind a healthy-looking
//! service, and a bad rollout on some pods only.

use std::sync::Arc;

use evidence_locker::analyze::{Analysis, AnalysisInput, Timeline, analyze};
use evidence_locker::capture::{Purpose, Purposes};
use evidence_locker::model::{
    AttrValue, Attribute, Resource, Span, SpanId, SpanKind, Status, StatusCode, Trace, TraceId,
};

const MS: i64 = 1_000_000;
const MIN: i64 = 60_000 * MS;
/// 2026-02-05T14:00:00Z
const T0: i64 = 1_770_300_000 * 1_000_000_000;
/// The incident begins 30 minutes in.
const BEGAN: i64 = T0 + 30 * MIN;

struct Builder {
    traces: Vec<Trace>,
    next: u64,
}

#[derive(Clone)]
struct S {
    service: &'static str,
    op: &'static str,
    start: i64,
    dur: i64,
    error: bool,
    parent: Option<usize>,
    attrs: Vec<(&'static str, AttrValue)>,
}

fn s(service: &'static str, op: &'static str, start: i64, dur: i64) -> S {
    S {
        service,
        op,
        start,
        dur,
        error: false,
        parent: None,
        attrs: Vec::new(),
    }
}

impl S {
    fn under(mut self, parent: usize) -> Self {
        self.parent = Some(parent);
        self
    }
    fn with(mut self, key: &'static str, value: &str) -> Self {
        self.attrs.push((key, AttrValue::Str(value.into())));
        self
    }
    fn num(mut self, key: &'static str, value: i64) -> Self {
        self.attrs.push((key, AttrValue::Int(value)));
        self
    }
}

impl Builder {
    fn new() -> Self {
        Self {
            traces: Vec::new(),
            next: 1,
        }
    }

    /// One trace; spans refer to their parents by index. `drop` removes spans afterwards
    /// (orphans: their children keep pointing at them).
    fn trace(&mut self, spans: &[S], drop: &[usize]) {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next.to_be_bytes());
        let trace_id = TraceId(id);
        let ids: Vec<SpanId> = (0..spans.len())
            .map(|i| SpanId((self.next * 1000 + i as u64 + 1).to_be_bytes()))
            .collect();
        self.next += 1;
        let out = spans
            .iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(i, sp)| Span {
                trace_id,
                span_id: ids[i],
                parent: sp.parent.map(|p| ids[p]),
                operation: Arc::from(sp.op),
                start_ns: sp.start,
                end_ns: sp.start + sp.dur,
                kind: SpanKind::Server,
                status: Status {
                    code: if sp.error {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    message: sp.error.then(|| "failed".into()),
                },
                attributes: sp
                    .attrs
                    .iter()
                    .map(|(k, v)| Attribute {
                        key: Arc::from(*k),
                        value: v.clone(),
                    })
                    .collect(),
                resource: Arc::new(Resource {
                    service: Arc::from(sp.service),
                    attributes: Vec::new(),
                }),
                scope: None,
                events: Default::default(),
                links: Default::default(),
                trace_state: None,
            })
            .collect();
        self.traces.push(Trace {
            id: trace_id,
            spans: out,
        });
    }

    fn analyze(&self) -> (Analysis, Timeline) {
        let traces: Vec<(Trace, Purposes)> = self
            .traces
            .iter()
            .map(|t| {
                let p = if t.start_ns() < BEGAN {
                    Purpose::Baseline
                } else {
                    Purpose::Sample
                };
                (t.clone(), Purposes::default().with(p))
            })
            .collect();
        analyze(
            &traces,
            &AnalysisInput {
                began_ns: BEGAN,
                window_start_ns: T0,
                window_end_ns: T0 + 60 * MIN,
                slow_threshold: std::time::Duration::from_secs(1),
                error_rate_threshold: 0.05,
                kept_normal_share: 1.0,
            },
        )
    }
}

/// Every `every` ms over minutes [from, to), a request frontend → checkout → payment.
fn checkout_traffic(
    b: &mut Builder,
    from: i64,
    to: i64,
    every: i64,
    mut shape: impl FnMut(i64, &mut Vec<S>, &mut Vec<usize>),
) {
    let mut t = T0 + from * MIN;
    while t < T0 + to * MIN {
        let mut spans = vec![
            s("frontend", "POST /checkout", t, 40 * MS),
            s("checkout", "PlaceOrder", t + MS, 35 * MS).under(0),
            s("payment", "Charge", t + 5 * MS, 20 * MS).under(1),
        ];
        let mut drop = Vec::new();
        shape(t, &mut spans, &mut drop);
        b.trace(&spans, &drop);
        t += every * MS;
    }
}

fn fail_chain(spans: &mut [S]) {
    for sp in spans.iter_mut() {
        sp.error = true;
    }
}

#[test]
fn steady_background_errors_are_pre_existing_and_the_new_failure_is_the_origin() {
    let mut b = Builder::new();
    let mut n = 0;
    checkout_traffic(&mut b, 0, 60, 500, |t, spans, _| {
        n += 1;
        // Catalog fails 2% of the time, all along.
        spans.push(s("catalog", "GetProduct", t + 30 * MS, 2 * MS).under(1));
        if n % 50 == 0 {
            spans[3].error = true;
        }
        // Payment fails from 14:31 on.
        if t >= BEGAN + MIN {
            fail_chain(&mut spans[..3]);
        }
    });
    let (a, timeline) = b.analyze();
    let origin = a.origin.as_ref().expect("an origin");
    assert_eq!(origin.service, "payment");
    let catalog = a
        .ranking
        .iter()
        .find(|c| c.service == "catalog")
        .expect("catalog is ranked");
    assert!(catalog.pre_existing, "{catalog:?}");
    // Recovery never happens in this scenario: none is claimed.
    assert!(a.recovery.is_none());
    assert!(
        timeline
            .entries
            .iter()
            .any(|e| e.kind == "first_error" && e.service == "payment")
    );
}

#[test]
fn retries_that_hide_a_failure_for_a_while_still_point_at_the_callee_first() {
    let mut b = Builder::new();
    checkout_traffic(&mut b, 0, 60, 1000, |t, spans, _| {
        let retry_phase = (BEGAN..BEGAN + 5 * MIN).contains(&t);
        let broken = (BEGAN + 5 * MIN..BEGAN + 15 * MIN).contains(&t);
        if retry_phase {
            // Payment fails, checkout retries and succeeds: nobody above payment sees it.
            spans[2].error = true;
            spans.push(s("payment", "Charge", t + 26 * MS, 5 * MS).under(1));
        }
        if broken {
            fail_chain(&mut spans[..3]);
        }
    });
    let (a, timeline) = b.analyze();
    assert_eq!(a.origin.as_ref().unwrap().service, "payment");
    let first = |svc: &str| {
        timeline
            .entries
            .iter()
            .find(|e| e.kind == "first_error" && e.service == svc)
            .map(|e| e.time)
            .unwrap()
    };
    // Payment failed five minutes before checkout and frontend did.
    assert!(first("payment") + chrono::Duration::minutes(4) < first("checkout"));
    // The callers' failure is seen spreading only when retries stopped hiding it.
    let edge = a
        .propagation
        .iter()
        .find(|p| p.from == "checkout" && p.to == "payment")
        .unwrap();
    assert!(edge.first_seen >= chrono::DateTime::from_timestamp_nanos(BEGAN + 5 * MIN));
    // Recovery: the first success of payment Charge after its last error, at 14:45.
    let recovery = a.recovery.as_ref().expect("a recovery");
    let expected = chrono::DateTime::from_timestamp_nanos(BEGAN + 15 * MIN);
    assert!(
        (recovery.time - expected).num_milliseconds().abs() < 5_000,
        "{} vs {expected}",
        recovery.time
    );
}

#[test]
fn clock_skew_and_orphans_do_not_confuse_the_origin() {
    let mut b = Builder::new();
    let mut n = 0;
    checkout_traffic(&mut b, 0, 60, 700, |t, spans, drop| {
        n += 1;
        // The payment host's clock is off: its span starts before its parent and ends after
        // both its callers, so by timestamps payment would fail last.
        spans[2].start = t - 10 * MS;
        spans[2].dur = 60 * MS;
        if t >= BEGAN {
            fail_chain(&mut spans[..3]);
        }
        // A third of the traces lost checkout's span: payment's span is an orphan.
        if n % 3 == 0 {
            drop.push(1);
        }
    });
    let (a, _) = b.analyze();
    let origin = a.origin.as_ref().unwrap();
    assert_eq!(origin.service, "payment");
    assert!(
        a.propagation
            .iter()
            .any(|p| p.from == "checkout" && p.to == "payment")
    );
    assert!(
        a.propagation
            .iter()
            .any(|p| p.from == "frontend" && p.to == "checkout")
    );
}

#[test]
fn a_slow_database_behind_a_healthy_looking_service_is_ranked_first_without_any_error() {
    let mut b = Builder::new();
    checkout_traffic(&mut b, 0, 60, 500, |t, spans, _| {
        // Inventory's database calls (client spans of inventory) go from 3 ms to 400 ms.
        let db = if t >= BEGAN { 400 * MS } else { 3 * MS };
        spans.push(s("inventory", "Reserve", t + 26 * MS, db + 2 * MS).under(1));
        spans.push(s("inventory", "SELECT stock", t + 27 * MS, db).under(3));
        spans[1].dur = 35 * MS + db;
        spans[0].dur = 40 * MS + db;
    });
    let (a, _) = b.analyze();
    assert!(a.services.values().all(|s| s.error_spans == 0));
    let first = &a.ranking[0];
    assert_eq!(
        (first.service.as_str(), first.operation.as_str()),
        ("inventory", "SELECT stock"),
        "{:#?}",
        a.ranking
    );
    assert_eq!(a.origin.as_ref().unwrap().service, "inventory");
}

#[test]
fn a_bad_rollout_on_some_pods_is_the_top_suspect() {
    let mut b = Builder::new();
    let mut n = 0u64;
    checkout_traffic(&mut b, 0, 60, 400, |t, spans, _| {
        n += 1;
        let pod = [
            "payment-a",
            "payment-b",
            "payment-c",
            "payment-d",
            "payment-e",
        ][(n % 5) as usize];
        // From 14:28 two of five pods run v2.3.1; from 14:30 its calls fail.
        let bad = t >= T0 + 28 * MIN && n % 5 < 2;
        let version = if bad { "v2.3.1" } else { "v2.2.0" };
        spans[2] = spans[2]
            .clone()
            .with("k8s.pod.name", pod)
            .with("deployment.version", version);
        if bad && t >= BEGAN {
            fail_chain(&mut spans[..3]);
        }
    });
    let (a, _) = b.analyze();
    assert_eq!(a.origin.as_ref().unwrap().service, "payment");
    let top = &a.suspects[0];
    assert_eq!(
        (top.key.as_str(), top.value.as_str()),
        ("deployment.version", "v2.3.1"),
        "{:#?}",
        a.suspects
    );
    assert_eq!(top.failing_share, 1.0);
    assert!(top.baseline_share.unwrap() < 0.2);
}

#[test]
fn the_same_input_gives_the_same_analysis_bytes() {
    let mut b = Builder::new();
    checkout_traffic(&mut b, 0, 60, 900, |t, spans, _| {
        if t >= BEGAN {
            fail_chain(&mut spans[..3]);
        }
    });
    let one = serde_json::to_vec(&b.analyze().0).unwrap();
    b.traces.reverse();
    let two = serde_json::to_vec(&b.analyze().0).unwrap();
    assert_eq!(one, two, "input order must not matter");
}

#[test]
fn a_failing_version_that_served_healthy_calls_before_ranks_above_its_pods_which_are_grouped_with_their_hosts()
 {
    let mut b = Builder::new();
    let mut n = 0u64;
    checkout_traffic(&mut b, 0, 60, 400, |t, spans, _| {
        n += 1;
        // Four pods on four hosts; two of them run v2.3.1 all along, healthy until 14:30.
        let pod = (n % 4) as usize;
        let version = if pod < 2 { "v2.3.1" } else { "v2.2.0" };
        spans[2] = spans[2]
            .clone()
            .with(
                "k8s.pod.name",
                ["payment-a", "payment-b", "payment-c", "payment-d"][pod],
            )
            .with("host.name", ["node-1", "node-2", "node-3", "node-4"][pod])
            .with("deployment.version", version)
            .with("cloud.region", "eu-west-1");
        if pod < 2 && t >= BEGAN {
            fail_chain(&mut spans[..3]);
        }
    });
    let (a, _) = b.analyze();
    assert_eq!(a.origin.as_ref().unwrap().service, "payment");
    let shown: Vec<(&str, &str)> = a
        .suspects
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .collect();
    assert_eq!(
        shown[..3],
        [
            ("deployment.version", "v2.3.1"),
            ("k8s.pod.name", "payment-a"),
            ("k8s.pod.name", "payment-b"),
        ],
        "{:#?}",
        a.suspects
    );
    let top = &a.suspects[0];
    assert_eq!(top.failing_share, 1.0);
    assert_eq!(top.healthy_share, Some(0.0));
    // Before the incident the version served half of the calls, healthily.
    assert!((top.baseline_share.unwrap() - 0.5).abs() < 0.05, "{top:?}");
    assert_eq!(a.suspects[1].also, ["host.name=node-1"]);
    assert_eq!(a.suspects[2].also, ["host.name=node-2"]);
    assert!(a.suspects[1].failing_share < 0.6);
    // A value on every call, failing or not, is no suspect.
    assert!(a.suspects.iter().all(|s| s.key != "cloud.region"));
    assert!(top.failing_calls > 100 && top.healthy_calls > 100 && top.baseline_calls > 100);
}

#[test]
fn a_numeric_attribute_at_its_maximum_on_failures_is_a_suspect_as_a_threshold() {
    let mut b = Builder::new();
    let mut n = 0i64;
    checkout_traffic(&mut b, 0, 60, 500, |t, spans, _| {
        n += 1;
        // The pool's active connections wander between 0 and 39; when it reaches its maximum
        // of 50, the charge fails.
        let exhausted = t >= BEGAN && n % 3 == 0;
        let active = if exhausted { 50 } else { (n * 7) % 40 };
        spans[2] = spans[2].clone().num("payment.gateway.pool.active", active);
        if exhausted {
            fail_chain(&mut spans[..3]);
        }
    });
    let (a, _) = b.analyze();
    let top = &a.suspects[0];
    assert_eq!(
        (top.key.as_str(), top.value.as_str()),
        ("payment.gateway.pool.active", "≥ 50"),
        "{:#?}",
        a.suspects
    );
    assert_eq!(top.failing_share, 1.0);
    assert_eq!(top.healthy_share, Some(0.0));
    // No single value other than the maximum is listed on its own.
    assert_eq!(
        a.suspects
            .iter()
            .filter(|s| s.key == "payment.gateway.pool.active")
            .count(),
        1
    );
}

#[test]
fn a_sampling_threshold_in_the_trace_state_weights_the_sampled_normal_traffic() {
    let mut b = Builder::new();
    let (mut n, mut normal) = (0u64, 0u64);
    // Every 100 ms a checkout; from 14:30, 3 in 10 fail. Failing traces are all kept; of the
    // normal ones one in ten is, each recording `th` for its 10% probability (as OpenTelemetry's
    // probabilistic sampler writes it; Jaeger keeps it as the `w3c.tracestate` tag). The
    // configured kept_normal_share stays 1.0: the traces say it.
    checkout_traffic(&mut b, 0, 60, 100, |t, spans, drop| {
        n += 1;
        if t >= BEGAN && n % 10 < 3 {
            fail_chain(&mut spans[..3]);
            return;
        }
        normal += 1;
        if normal % 10 == 0 {
            for sp in spans.iter_mut() {
                sp.attrs.push((
                    "w3c.tracestate",
                    AttrValue::Str("ot=th:e6666666666666".into()),
                ));
            }
        } else {
            drop.extend(0..spans.len());
        }
    });
    b.traces.retain(|t| !t.spans.is_empty());
    let (a, _) = b.analyze();
    let payment = &a.services["payment"].incident;
    let (rate, ci) = (payment.error_rate, payment.error_rate_ci.unwrap());
    assert!(
        a.sampling.traces_weighted_by_threshold > 1000,
        "{:?}",
        a.sampling
    );
    // The truth is 30%; unweighted, the same traces say 3 ÷ 3.7 ≈ 81%.
    assert!(ci[0] <= 0.30 && 0.30 <= ci[1], "{rate} {ci:?}");
    assert!((rate - 0.30).abs() < 0.02, "{rate}");
    assert!(payment.errors * 100 / payment.requests_sampled > 75);
}

#[test]
fn a_service_after_whose_answer_the_handler_stops_is_ranked_above_the_handler() {
    // No error status anywhere (as in the Nezha traces): from 14:30 three in four requests
    // end right after frontend's call to catalog, which answers early, and frontend's later
    // calls (currency, checkout) never happen. Frontend does less per request, but because of
    // what catalog answered.
    let mut b = Builder::new();
    let mut n = 0u64;
    let mut t = T0;
    while t < T0 + 60 * MIN {
        n += 1;
        let cut = t >= BEGAN && !n.is_multiple_of(4);
        let mut spans = vec![
            s("frontend", "Recv", t, 60 * MS),
            s("frontend", "catalog/GetProduct", t + MS, 10 * MS).under(0),
            s("catalog", "GetProduct", t + 2 * MS, 8 * MS).under(1),
        ];
        if cut {
            spans[0].dur = 12 * MS;
            spans[1].dur = 2 * MS;
            spans[2].dur = MS;
        } else {
            spans.extend([
                s("frontend", "currency/Convert", t + 12 * MS, 10 * MS).under(0),
                s("currency", "Convert", t + 13 * MS, 8 * MS).under(3),
                s("frontend", "checkout/PlaceOrder", t + 25 * MS, 30 * MS).under(0),
                s("checkout", "PlaceOrder", t + 26 * MS, 28 * MS).under(5),
            ]);
        }
        b.trace(&spans, &[]);
        t += 300 * MS;
    }
    let (a, _) = b.analyze();
    let first = &a.ranking[0];
    assert_eq!(first.service, "catalog", "{:#?}", a.ranking);
    assert!(
        first.reason.contains("its callers stop after calling it"),
        "{}",
        first.reason
    );
    let frontend = a.ranking.iter().position(|c| c.service == "frontend");
    assert!(frontend.is_none_or(|p| p > 0), "{:#?}", a.ranking);
}
