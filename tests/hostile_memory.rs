//! A 100 MB single-line trace file (371k spans of 100k services) is read in memory proportional
//! to it. In a binary of its own: the peak RSS the kernel reports is the whole process's, and the
//! other hostile inputs must not run beside it.

mod support;

use std::fmt::Write;

const HUNDRED_MB: usize = 100 << 20;
const TID: &str = "5b8aa5a2d2c872e8321cf37308d69df2";

/// The peak memory of this process so far, from the kernel.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A 100 MB body of 100k services in one trace file line is read in memory proportional to it:
/// the peak stays under ten times the input (it is a few times it), not the quadratic or
/// unbounded growth a hostile input aims at.
#[test]
fn a_100_mb_trace_file_is_read_in_memory_proportional_to_its_size() {
    let mut line = String::with_capacity(HUNDRED_MB + (1 << 20));
    line.push_str(&format!(r#"{{"traceID":"{TID}","spans":["#));
    let mut i = 0u64;
    while line.len() < HUNDRED_MB {
        if i > 0 {
            line.push(',');
        }
        let _ = write!(
            line,
            r#"{{"traceID":"{TID}","spanID":"{:016x}","operationName":"op-{}","references":[],"startTime":{},"duration":1000,"tags":[{{"key":"http.url","type":"string","value":"https://shop.example.com/cart/{i}"}}],"logs":[],"processID":"p{}"}}"#,
            i + 1,
            i % 1000,
            1772366400000000u64 + i,
            i % 100_000
        );
        i += 1;
    }
    line.push_str(r#"],"processes":{"#);
    for p in 0..100_000 {
        if p > 0 {
            line.push(',');
        }
        line.push_str(&format!(r#""p{p}":{{"serviceName":"svc-{p}","tags":[]}}"#));
    }
    line.push_str("}}\n");
    let before = peak_rss_bytes();
    let input = line.into_bytes();
    let size = input.len() as u64;
    let manifest = support::collect_bytes(&input, chrono::Utc::now())
        .expect("a large, well formed file is read");
    drop(input);
    assert!(
        manifest.contains(&format!("\"spans read\":{i}")),
        "{}",
        &manifest[..manifest.len().min(400)]
    );
    let peak = peak_rss_bytes();
    eprintln!(
        "100 MB file: {} spans, {} MB, peak RSS {} MB (before {} MB)",
        i,
        size / 1_000_000,
        peak / 1_000_000,
        before / 1_000_000
    );
    assert!(
        peak < before + 10 * size,
        "peak RSS {peak} for {size} bytes of input (before: {before})"
    );
}
