//! Generates the demo incident and its traces (and, with larger numbers, benchmark inputs).
//!
//! The story: a shop (frontend → checkout → cart, catalog, payment → its database). At 14:32 a
//! bad rollout (`deployment.version = v2.3.1`, two of three payment pods) exhausts payment's
//! database connection pool: payment's charges fail and the database calls of those pods turn
//! slow; checkout and frontend fail because payment fails. Catalog has had a steady 1% of errors
//! all along. At 14:47 the rollout is reverted and payment recovers.
//!
//! ```text
//! cargo run --release --example generate -- [--rate TRACES_PER_MIN] [--plain] [--out PATH] [--incident PATH]
//! ```
//! Defaults write `examples/traces.jsonl.zst` (40 traces/min) and `examples/incident.json`.
//! Output is Jaeger v1 traces, one per line; deterministic (fixed seed).

use std::io::Write;

use serde_json::{Value, json};

const T0_US: i64 = 1_770_300_120_000_000; // 2026-02-05T14:02:00Z
const INCIDENT_START_MIN: i64 = 30; // 14:32
const RECOVERY_MIN: i64 = 45; // 14:47
const MINUTES: i64 = 53; // until 14:55

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.unit() * (hi - lo) as f64) as i64
    }
    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(bytes * 2);
        s
    }
}

struct Span {
    id: String,
    parent: Option<String>,
    service: &'static str,
    pod: String,
    version: &'static str,
    op: &'static str,
    kind: &'static str,
    start: i64,
    dur: i64,
    error: Option<String>,
    tags: Vec<(&'static str, Value)>,
}

struct Builder<'a> {
    rng: &'a mut Rng,
    spans: Vec<Span>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        parent: Option<&str>,
        service: &'static str,
        pod: String,
        version: &'static str,
        op: &'static str,
        kind: &'static str,
        start: i64,
        dur: i64,
    ) -> usize {
        let id = self.rng.hex(8);
        self.spans.push(Span {
            id,
            parent: parent.map(str::to_owned),
            service,
            pod,
            version,
            op,
            kind,
            start,
            dur,
            error: None,
            tags: Vec::new(),
        });
        self.spans.len() - 1
    }
}

fn checkout(b: &mut Builder<'_>, start: i64, minute: i64) {
    let incident = (INCIDENT_START_MIN..RECOVERY_MIN).contains(&minute);
    let pod_n = b.rng.range(1, 4);
    let bad_pod = incident && pod_n >= 2;
    let front_pod = format!("frontend-6d8f7-{}", b.rng.range(1, 3));
    let front = b.span(
        None,
        "frontend",
        front_pod,
        "v1.8.0",
        "POST /checkout",
        "server",
        start,
        0,
    );
    let front_id = b.spans[front].id.clone();
    let co_start = start + b.rng.range(300, 900);
    let co = b.span(
        Some(&front_id),
        "checkout-service",
        "checkout-5c7d9-1".into(),
        "v3.1.0",
        "PlaceOrder",
        "server",
        co_start,
        0,
    );
    let co_id = b.spans[co].id.clone();
    let mut t = co_start + b.rng.range(200, 500);
    // cart
    let cart_d = b.rng.range(2_000, 9_000);
    let cart = b.span(
        Some(&co_id),
        "cart-service",
        "cart-77b4c-1".into(),
        "v2.0.4",
        "GetCart",
        "server",
        t,
        cart_d,
    );
    b.spans[cart].tags.push(("rpc.system", json!("grpc")));
    t += cart_d + b.rng.range(100, 400);
    // catalog: steady 1% errors, before and during the incident
    let cat_d = b.rng.range(3_000, 15_000);
    let cat = b.span(
        Some(&co_id),
        "catalog-service",
        "catalog-9f2e1-1".into(),
        "v5.2.2",
        "GetProduct",
        "server",
        t,
        cat_d,
    );
    if b.rng.unit() < 0.01 {
        b.spans[cat].error = Some("product cache miss: upstream timeout".into());
    }
    t += cat_d + b.rng.range(100, 400);
    // payment and its database
    let version = if pod_n >= 2 && (INCIDENT_START_MIN - 2..RECOVERY_MIN).contains(&minute) {
        "v2.3.1"
    } else {
        "v2.2.0"
    };
    let pay_start = t;
    let pay = b.span(
        Some(&co_id),
        "payment-service",
        format!("payment-7f9c4-{pod_n}"),
        version,
        "POST /charge",
        "server",
        pay_start,
        0,
    );
    let pay_id = b.spans[pay].id.clone();
    let db_start = pay_start + b.rng.range(500, 1_500);
    let fails = bad_pod && b.rng.unit() < 0.7;
    let db_d = if bad_pod {
        b.rng.range(900_000, 2_400_000)
    } else {
        b.rng.range(4_000, 20_000)
    };
    let db = b.span(
        Some(&pay_id),
        "payment-service",
        format!("payment-7f9c4-{pod_n}"),
        version,
        "SELECT accounts",
        "client",
        db_start,
        db_d,
    );
    b.spans[db].tags.push(("db.system", json!("postgresql")));
    b.spans[db].tags.push(("peer.service", json!("payment-db")));
    if fails {
        b.spans[db].error =
            Some("connection pool exhausted: timeout after 900ms waiting for a connection".into());
    }
    let pay_d = (db_start - pay_start) + db_d + b.rng.range(1_000, 4_000);
    b.spans[pay].dur = pay_d;
    b.spans[pay]
        .tags
        .push(("http.status_code", json!(if fails { 503 } else { 200 })));
    if fails {
        b.spans[pay].error = Some("charge failed: connection pool exhausted".into());
    }
    t = pay_start + pay_d + b.rng.range(200, 600);
    let co_d = t - co_start;
    b.spans[co].dur = co_d;
    if fails {
        b.spans[co].error = Some("payment failed: HTTP 503 from payment-service".into());
    }
    let front_d = (co_start - start) + co_d + b.rng.range(300, 900);
    b.spans[front].dur = front_d;
    b.spans[front]
        .tags
        .push(("http.status_code", json!(if fails { 502 } else { 200 })));
    if fails {
        b.spans[front].error = Some("502 Bad Gateway: checkout failed".into());
    }
}

fn browse(b: &mut Builder<'_>, start: i64) {
    let front_pod = format!("frontend-6d8f7-{}", b.rng.range(1, 3));
    let front = b.span(
        None,
        "frontend",
        front_pod,
        "v1.8.0",
        "GET /products",
        "server",
        start,
        0,
    );
    let front_id = b.spans[front].id.clone();
    let cat_start = start + b.rng.range(200, 700);
    let cat_d = b.rng.range(3_000, 25_000);
    let cat = b.span(
        Some(&front_id),
        "catalog-service",
        "catalog-9f2e1-1".into(),
        "v5.2.2",
        "ListProducts",
        "server",
        cat_start,
        cat_d,
    );
    if b.rng.unit() < 0.01 {
        b.spans[cat].error = Some("product cache miss: upstream timeout".into());
    }
    let front_d = (cat_start - start) + cat_d + b.rng.range(300, 900);
    b.spans[front].dur = front_d;
    b.spans[front].tags.push(("http.status_code", json!(200)));
    let _ = cat;
}

fn to_jaeger(trace_id: &str, spans: &[Span]) -> Value {
    let mut processes = serde_json::Map::new();
    let mut pids: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for s in spans {
        let key = format!("{}|{}", s.service, s.pod);
        let pid = match pids.iter().find(|(k, _)| *k == key) {
            Some((_, p)) => p.clone(),
            None => {
                let p = format!("p{}", pids.len() + 1);
                pids.push((key, p.clone()));
                processes.insert(
                    p.clone(),
                    json!({"serviceName": s.service, "tags": [
                        {"key": "k8s.pod.name", "type": "string", "value": s.pod},
                        {"key": "deployment.version", "type": "string", "value": s.version},
                    ]}),
                );
                p
            }
        };
        let mut tags = vec![json!({"key": "span.kind", "type": "string", "value": s.kind})];
        for (k, v) in &s.tags {
            let ty = if v.is_number() { "int64" } else { "string" };
            tags.push(json!({"key": k, "type": ty, "value": v}));
        }
        let mut logs = Vec::new();
        if let Some(msg) = &s.error {
            tags.push(json!({"key": "error", "type": "bool", "value": true}));
            tags.push(json!({"key": "otel.status_description", "type": "string", "value": msg}));
            logs.push(json!({"timestamp": s.start + s.dur, "fields": [
                {"key": "event", "type": "string", "value": "error"},
                {"key": "message", "type": "string", "value": msg},
            ]}));
        }
        let references = match &s.parent {
            Some(p) => json!([{"refType": "CHILD_OF", "traceID": trace_id, "spanID": p}]),
            None => json!([]),
        };
        out.push(json!({
            "traceID": trace_id, "spanID": s.id, "flags": 1, "operationName": s.op,
            "references": references, "startTime": s.start, "duration": s.dur,
            "tags": tags, "logs": logs, "processID": pid, "warnings": null,
        }));
    }
    json!({"traceID": trace_id, "spans": out, "processes": processes, "warnings": null})
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rate: i64 = arg("--rate").and_then(|r| r.parse().ok()).unwrap_or(40);
    let plain = args.iter().any(|a| a == "--plain");
    let out = arg("--out").unwrap_or_else(|| "examples/traces.jsonl.zst".into());
    let incident = arg("--incident").unwrap_or_else(|| "examples/incident.json".into());

    let mut rng = Rng(0x5EED_2026_0205_1432);
    let mut lines = Vec::new();
    let mut spans_total = 0usize;
    for minute in 0..MINUTES {
        let mut starts: Vec<i64> = (0..rate)
            .map(|_| T0_US + minute * 60_000_000 + rng.range(0, 60_000_000))
            .collect();
        starts.sort_unstable();
        for start in starts {
            let mut b = Builder {
                rng: &mut rng,
                spans: Vec::new(),
            };
            if b.rng.unit() < 0.6 {
                checkout(&mut b, start, minute);
            } else {
                browse(&mut b, start);
            }
            let spans = b.spans;
            let trace_id = rng.hex(16);
            spans_total += spans.len();
            lines.extend(serde_json::to_vec(&to_jaeger(&trace_id, &spans))?);
            lines.push(b'\n');
        }
    }
    let bytes = if plain {
        lines
    } else {
        zstd::encode_all(&lines[..], 19)?
    };
    std::fs::File::create(&out)?.write_all(&bytes)?;
    eprintln!(
        "{out}: {} traces/min × {MINUTES} min, {spans_total} spans, {} bytes",
        rate,
        bytes.len()
    );
    let inc = json!({
        "id": "INC-2026-0142",
        "title": "Checkout failing: payment charges rejected",
        "severity": "SEV-1",
        "declared_at": "2026-02-05T14:40:00Z",
        "started_at": "2026-02-05T14:32:00Z",
        "window": {"start": "2026-02-05T14:02:00Z", "end": "2026-02-05T14:55:00Z"},
        "services": ["frontend", "checkout-service", "payment-service"],
        "source": "alertmanager",
        "labels": {"team": "payments"},
        "links": {"alert": "https://alertmanager.example/#/alerts?receiver=payments"}
    });
    std::fs::write(&incident, serde_json::to_string_pretty(&inc)? + "\n")?;
    Ok(())
}
