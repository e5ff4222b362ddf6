//! From an incident message to the first backend query: a real nats-server (the one the tests
//! use), a running `evidence-locker worker` with a local store, and the loopback Jaeger v3 of
//! `tests/support/jaeger.rs`. Each incident is published on `incidents.declared` once the
//! previous capture has ended; the time until the backend sees its first request is recorded.
//!
//! Usage: `cargo bench --bench first_query [-- INCIDENTS]` (default 20). Prints each delay's
//! median, 90th percentile and maximum.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::jaeger::{Api, Server, start, synthetic_traces};
use support::nats::NatsServer;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2 } else { 20 });
    let nats = NatsServer::start();
    let now_us = chrono::Utc::now().timestamp_micros();
    let traces = synthetic_traces(200, now_us - 600_000_000, now_us, true, 5_000, 0);
    let (addr, server) = start(Server::new(Api::V3, usize::MAX, traces));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_evidence-locker"))
        .arg("worker")
        .env("RUST_LOG", "warn")
        .env("EVIDENCE_LOCKER__NATS__URL", nats.url())
        .env(
            "EVIDENCE_LOCKER__BACKENDS__DEFAULT__URL",
            format!("http://{addr}"),
        )
        .env("EVIDENCE_LOCKER__STORE__KIND", "fs")
        .env("EVIDENCE_LOCKER__STORE__PATH", dir.path().join("evidence"))
        .env("EVIDENCE_LOCKER__WORKER__SPOOL", dir.path().join("spool"))
        .env(
            "EVIDENCE_LOCKER__METRICS__LISTEN",
            format!("127.0.0.1:{}", support::nats::free_port()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the worker starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let delays = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("NATS");
        let js = async_nats::jetstream::new(client);
        let mut delays = Vec::new();
        for i in 0..n {
            let declared = chrono::Utc::now();
            let incident = json!({
                "id": format!("INC-FIRST-{i}"),
                "declared_at": declared.to_rfc3339(),
                "started_at": (declared - chrono::Duration::minutes(5)).to_rfc3339(),
            })
            .to_string();
            let before = server.request_count();
            let sent = Instant::now();
            // The stream exists once the worker has made it.
            loop {
                if let Ok(ack) = js
                    .publish("incidents.declared", incident.clone().into())
                    .await
                    && ack.await.is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if sent.elapsed() > Duration::from_secs(30) {
                    panic!("the stream never appeared");
                }
            }
            let published = Instant::now();
            while server.request_count() == before {
                std::thread::sleep(Duration::from_micros(200));
                if published.elapsed() > Duration::from_secs(30) {
                    panic!("no backend query within 30 s");
                }
            }
            // The first incident also waits for the worker's start-up: not counted.
            if i > 0 || n == 1 {
                delays.push(published.elapsed());
            }
            // Let the capture finish before the next incident.
            let mut last = server.request_count();
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let now = server.request_count();
                if now == last {
                    break;
                }
                last = now;
            }
        }
        delays
    });
    let _ = worker.kill();
    let _ = worker.wait();
    let mut ms: Vec<f64> = delays.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    if ms.is_empty() {
        println!("no delay measured");
        return;
    }
    println!(
        "incident published → first backend query, {} incidents (a running worker, loopback NATS and Jaeger):\n| median | p90 | max |\n|---|---|---|\n| {:.1} ms | {:.1} ms | {:.1} ms |",
        ms.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}
