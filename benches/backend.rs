//! A capture from a loopback Jaeger (the v3 API of `tests/support/jaeger.rs`, which the tests
//! use too): `collect --jaeger` against N traces over a 30-minute window, one in ten failing,
//! and how its wall time compares with the time its queries took.
//!
//! Usage: `cargo bench --bench backend [-- TRACES]` (default 100,000). Prints the wall time, the
//! queries issued, the sum of their durations as the capture saw them, that sum spread over the
//! backend's `concurrency` (the least the queries could take), and the wall time's ratio to it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::jaeger::{Api, Server, start, synthetic_traces};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        // `cargo test --all-targets` runs this too, unoptimised: a small run then.
        .unwrap_or(if cfg!(debug_assertions) {
            2_000
        } else {
            100_000
        });
    // 2026-02-05T14:00:00Z .. 14:30:00Z, in µs.
    let start_us = 1_770_300_000_000_000i64;
    let end_us = start_us + 30 * 60 * 1_000_000;
    let failing = n / 10;
    let mut traces = synthetic_traces(failing, start_us, end_us, true, 5_000, 0);
    traces.extend(synthetic_traces(
        n - failing,
        start_us,
        end_us,
        false,
        5_000,
        n as u64,
    ));
    let (addr, server) = start(Server::new(Api::V3, usize::MAX, traces));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        json!({
            "id": "INC-BENCH",
            "declared_at": "2026-02-05T14:30:00Z",
            "started_at": "2026-02-05T14:00:00Z",
            "window": {"start": "2026-02-05T14:00:00Z", "end": "2026-02-05T14:30:00Z"},
        })
        .to_string(),
    )
    .expect("the incident file");
    let clock = Instant::now();
    let out = support::run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap_or_default(),
            "--jaeger",
            &format!("http://{addr}"),
            "--out",
            dir.path().join("evidence").to_str().unwrap_or_default(),
        ],
        &[],
    );
    let wall = clock.elapsed().as_secs_f64();
    let bundle = support::bundle_dir(&out);
    let manifest = support::read_json(&bundle.join("manifest.json"));
    let queries = manifest["sources"][0]["queries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The same queries again, four at a time as the capture sends them, each answer read whole
    // and thrown away: what the queries themselves take.
    let urls: Vec<String> = queries
        .iter()
        .filter_map(|q| q["url"].as_str().map(str::to_owned))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let clock = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let client = reqwest::blocking::Client::new();
                while let Some(url) =
                    urls.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                {
                    let body = client.get(url).send().and_then(|r| r.bytes());
                    std::hint::black_box(body.map(|b| b.len()).unwrap_or(0));
                }
            });
        }
    });
    let queries_alone = clock.elapsed().as_secs_f64();
    println!(
        "loopback Jaeger v3, {n} traces ({failing} failing) over 30 minutes: status {}, {} traces and {} spans stored; gaps: {}",
        manifest["completeness"]["status"],
        manifest["counts"]["traces"],
        manifest["counts"]["spans"],
        manifest["completeness"]["gaps"]
    );
    println!(
        "| capture wall time | queries | the same queries alone (4 at a time) | ratio |\n|---|---|---|---|\n| {wall:.2} s | {} ({} answered) | {queries_alone:.2} s | {:.2}× |",
        urls.len(),
        server.request_count(),
        wall / queries_alone.max(0.001)
    );
}
