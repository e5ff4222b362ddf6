//! A capture from a loopback Jaeger (the v3 API of `tests/support/jaeger.rs`, which the tests
//! use too): `collect --jaeger` against N traces over a 30-minute window, one in ten failing,
//! and how its wall time compares with the time its queries took.
//!
//! Usage: `cargo bench --bench backend [-- [real] TRACES]` (default 100,000). With `real`, the
//! backend is the real Jaeger v2.13 of the tests (memory store, `scripts/servers/install`), fed
//! one-span payment calls through its OTLP receiver, over the ten minutes before now. Prints the
//! capture's wall time, its queries, and the time the same queries take sent again alone, four
//! at a time as the capture sends them. `BENCH_BINARY=path` measures another build of the binary
//! (an earlier commit's) against the same backend; `BENCH_TAGS=N` adds N tags to every span of
//! the loopback Jaeger's traces.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::jaeger::{Api, Server, start, synthetic_traces};

/// The real Jaeger, fed `n` one-span payment calls (one in ten failing) over the ten minutes
/// before now; its query URL and the incident for that window.
fn real_jaeger(n: usize) -> (support::real::Jaeger, String, serde_json::Value) {
    let jaeger = support::real::Jaeger::start(n + 1_000, None);
    let end_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() - 60_000_000_000;
    let start_ns = end_ns - 600_000_000_000;
    let calls: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let at = start_ns + (600_000_000_000i64 / n as i64) * i as i64;
            let status = (i % 10 == 0).then(|| json!({"code": 2, "message": "card declined"}));
            support::real::otlp_payment_call(
                &format!("{:032x}", i + 1),
                &format!("{:016x}", i + 1),
                at,
                status,
            )
        })
        .collect();
    jaeger.send(&calls, 1_000);
    let time = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339();
    let incident = json!({
        "id": "INC-BENCH-REAL",
        "declared_at": time(end_ns),
        "started_at": time(start_ns),
        "window": {"start": time(start_ns), "end": time(end_ns + 1_000_000_000)},
    });
    let url = jaeger.url();
    (jaeger, url, incident)
}

fn main() {
    let real = std::env::args().any(|a| a == "real");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        // `cargo test --all-targets` runs this too, unoptimised: a small run then.
        .unwrap_or(if cfg!(debug_assertions) {
            2_000
        } else {
            100_000
        });
    if real {
        let (_jaeger, url, incident) = real_jaeger(n);
        capture(
            n,
            n / 10,
            &url,
            &incident,
            "real Jaeger v2.13, memory store",
            None,
        );
        return;
    }
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
    // `BENCH_TAGS=N`: N more tags on every span (40-byte values), for traces the size real
    // instrumentation writes rather than the two-tag spans above.
    let tags: usize = std::env::var("BENCH_TAGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if tags > 0 {
        for t in &mut traces {
            for span in t["spans"].as_array_mut().into_iter().flatten() {
                let id = span["spanID"].clone();
                if let Some(list) = span["tags"].as_array_mut() {
                    list.extend((0..tags).map(|k| {
                        json!({"key": format!("app.attribute.{k}"), "type": "string", "value": format!("{id}-value-of-attribute-{k:04}")})
                    }));
                }
            }
        }
    }
    let (addr, server) = start(Server::new(Api::V3, usize::MAX, traces));
    let incident = json!({
        "id": "INC-BENCH",
        "declared_at": "2026-02-05T14:30:00Z",
        "started_at": "2026-02-05T14:00:00Z",
        "window": {"start": "2026-02-05T14:00:00Z", "end": "2026-02-05T14:30:00Z"},
    });
    capture(
        n,
        failing,
        &format!("http://{addr}"),
        &incident,
        "loopback Jaeger v3",
        Some(&server),
    );
}

/// Runs `collect` against `url` for `incident`, then the same queries alone; prints both.
fn capture(
    n: usize,
    failing: usize,
    url: &str,
    incident: &serde_json::Value,
    what: &str,
    server: Option<&Server>,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let incident_file = dir.path().join("incident.json");
    std::fs::write(&incident_file, incident.to_string()).expect("the incident file");
    let clock = Instant::now();
    let (out, peak_mb) = collect_measured(&[
        "collect",
        "--incident",
        incident_file.to_str().unwrap_or_default(),
        "--jaeger",
        url,
        "--out",
        dir.path().join("evidence").to_str().unwrap_or_default(),
    ]);
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
        "{what}, {n} traces ({failing} failing): status {}, {} traces and {} spans stored; gaps: {}",
        manifest["completeness"]["status"],
        manifest["counts"]["traces"],
        manifest["counts"]["spans"],
        manifest["completeness"]["gaps"]
    );
    println!(
        "| capture wall time | queries | the same queries alone (4 at a time) | ratio | peak RSS of `collect` |\n|---|---|---|---|---|\n| {wall:.2} s | {}{} | {queries_alone:.2} s | {:.2}× | {} |",
        urls.len(),
        server
            .map(|s| format!(" ({} answered)", s.request_count()))
            .unwrap_or_default(),
        wall / queries_alone.max(0.001),
        peak_mb.map_or("not measured (no /usr/bin/time)".to_owned(), |m| format!(
            "{m:.1} MB"
        ))
    );
}

/// The binary measured: this build's, or another one named by `BENCH_BINARY` (a build of an
/// earlier commit, for an A/B comparison against the same loopback backend).
fn binary() -> std::ffi::OsString {
    std::env::var_os("BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_evidence-locker").into())
}

/// Runs the binary with `args` under GNU time, when there is one: its output and its own peak
/// resident memory in MB. (`getrusage` of the children would count this process's memory too:
/// the child is started as a copy of it, holding the payloads or the loopback backend.) Without
/// GNU time, or if it gives no figure, the run is not measured.
fn collect_measured(args: &[&str]) -> (std::process::Output, Option<f64>) {
    let time = std::path::Path::new("/usr/bin/time");
    let gnu = std::process::Command::new(time)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            [o.stdout, o.stderr]
                .concat()
                .windows(3)
                .any(|w| w == b"GNU")
        });
    if !gnu {
        eprintln!("peak RSS not measured: /usr/bin/time is not GNU time");
        if std::env::var_os("BENCH_BINARY").is_some() {
            eprintln!("BENCH_BINARY needs GNU time: this build's binary is measured");
        }
        return (support::run_cli(args, &[]), None);
    }
    let report = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut cmd = std::process::Command::new(time);
    cmd.args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(binary())
        .args(args)
        .env("RUST_LOG", "warn");
    // As the tests do: the developer's own overrides stay out of it.
    for (k, _) in std::env::vars() {
        if k.starts_with("EVIDENCE_LOCKER__") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("the binary runs");
    let kib: Option<f64> = std::fs::read_to_string(report.path())
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()));
    if kib.is_none() {
        eprintln!("peak RSS not measured: GNU time gave no figure");
    }
    (out, kib.map(|k| k * 1024.0 / 1e6))
}
