//! Benchmark of the S3 store the worker uploads with: the demo bundle (every file, SHA-256
//! checksums, manifest last), then one large file in parts, against an S3-compatible endpoint.
//! `benches/store.sh` starts s3s-fs and moto and runs this against each.
//!
//! ```text
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… cargo run --release --example bench_store -- ENDPOINT BUCKET [LARGE_MIB]
//! ```
//! Prints seconds, MiB/s and the process's peak resident memory (VmHWM) after each step.

use std::time::{Duration, Instant};

use evidence_locker::capture::file::FileSource;
use evidence_locker::collect::{self, CollectRequest, TraceInput};
use evidence_locker::config::{Settings, StoreSettings};
use evidence_locker::model::Incident;
use evidence_locker::store::{S3Store, Store};
use sha2::Digest;

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

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(bucket)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: bench_store ENDPOINT BUCKET [LARGE_MIB]");
    };
    let large_mib: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(256);
    let settings = Settings::load(None)?;
    let store_settings = StoreSettings {
        kind: "s3".into(),
        bucket: bucket.clone(),
        endpoint: endpoint.clone(),
        path_style: true,
        link_ttl: Duration::from_secs(3600),
        ..settings.store.clone()
    };
    let s3 = S3Store::connect(&store_settings).await?;
    let store = Store::S3(s3.clone());
    let work = tempfile::tempdir()?;
    let run = chrono::Utc::now().format("%H%M%S%f").to_string();

    // 1. The demo bundle, as the worker stores it.
    let incident = Incident::parse(include_bytes!("incident.json"))?;
    let files = FileSource::from_bytes(
        "examples/traces.jsonl.zst",
        include_bytes!("traces.jsonl.zst"),
        Some(collect::file_spill(&settings)?),
    )?;
    let outcome = collect::collect(
        &settings,
        CollectRequest {
            incident: Some(incident.clone()),
            input: TraceInput::Files(files),
            out: work.path().join("bundles"),
            now: chrono::Utc::now(),
            retention: Default::default(),
        },
    )
    .await?;
    let bytes = dir_bytes(&outcome.bundle_dir);
    let files = std::fs::read_dir(outcome.bundle_dir.join("traces"))?.count() + 6;
    let before = peak_rss_mb();
    let clock = Instant::now();
    store
        .put_bundle(
            &outcome.bundle_dir,
            incident.id(),
            &format!("bench-{run}"),
            4,
        )
        .await?;
    let t = clock.elapsed().as_secs_f64();
    println!(
        "bundle: {files} files, {:.1} MiB in {:.3} s = {:.1} MiB/s; peak RSS {:.0} MB (before upload {:.0} MB)",
        bytes as f64 / 1048576.0,
        t,
        bytes as f64 / 1048576.0 / t,
        peak_rss_mb(),
        before
    );
    // A repeat finds every object in place (a redelivered message after a crash mid-upload).
    let clock = Instant::now();
    store
        .put_bundle(
            &outcome.bundle_dir,
            incident.id(),
            &format!("bench-{run}"),
            4,
        )
        .await?;
    println!(
        "bundle again (all objects present): {:.3} s",
        clock.elapsed().as_secs_f64()
    );

    // 2. One large file, uploaded in parts.
    let path = work.path().join("large.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut block = sha2::Sha256::digest(b"seed");
        let mut hasher = sha2::Sha256::new();
        let mut chunk = Vec::with_capacity(1 << 20);
        for _ in 0..large_mib {
            chunk.clear();
            while chunk.len() < 1 << 20 {
                chunk.extend_from_slice(&block);
                block = sha2::Sha256::digest(block);
            }
            hasher.update(&chunk);
            f.write_all(&chunk)?;
        }
        f.flush()?;
        let sha = hex::encode(hasher.finalize());
        let before = peak_rss_mb();
        let clock = Instant::now();
        let key = s3.key("bench", &run, "large.bin");
        s3.put_file(&key, &path, (large_mib << 20) as u64, &sha, None)
            .await?;
        let t = clock.elapsed().as_secs_f64();
        println!(
            "large file: {large_mib} MiB in parts of {} in {:.2} s = {:.1} MiB/s; peak RSS {:.0} MB (before upload {:.0} MB)",
            store_settings.multipart_part_size,
            t,
            large_mib as f64 / t,
            peak_rss_mb(),
            before
        );
    }
    Ok(())
}
