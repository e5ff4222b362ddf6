//! The evidence bundle (DESIGN.md "The bundle"): traces, timeline, analysis, postmortem draft,
//! report, and `manifest.json` written last with the size and SHA-256 of every other file.
//! Written into a staging directory; a store then makes it visible in one step.

mod manifest;
mod postmortem;
mod report;
mod trace_files;
mod writer;
mod yaml;

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::analyze::{Analysis, AnalysisInput, Timeline, analyze_with};
use crate::capture::spill::Spill;
use crate::capture::{Capture, CapturePlan, Gap, Purpose};
use crate::formats::otlp;
use crate::model::Trace;

pub use manifest::{Completeness, Counts, Manifest, PreviousCapture, Retention};
pub use writer::{BundleWriter, FileEntry};

/// Settings that shape a bundle.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    pub capture_id: String,
    pub error_rate_threshold: f64,
    /// zstd level for the trace files.
    pub zstd_level: i32,
    /// The retention the store will give the bundle's objects.
    pub retention: Retention,
    /// `declared` or `resolved` (the worker's captures).
    pub kind: Option<String>,
    /// The capture this one follows.
    pub previous: Option<PreviousCapture>,
    /// Signs the manifest, where a key is configured.
    pub signer: Option<std::sync::Arc<crate::sign::ManifestSigner>>,
    /// `[report] trace_url`: the trace UI link template, over the backend's own.
    pub trace_url: Option<String>,
}

/// What was written, for the caller to report.
#[derive(Clone, Debug, Serialize)]
pub struct BundleSummary {
    pub capture_id: String,
    pub status: &'static str,
    pub counts: Counts,
    pub gaps: Vec<Gap>,
    pub manifest_sha256: String,
    /// What a person should know besides the status, a sentence each: what of the input was left
    /// out, for one.
    pub notices: Vec<String>,
}

/// The traces of each bundle file, as indexes into the capture.
struct Selection {
    errors: Vec<usize>,
    slow: Vec<usize>,
    baseline: Vec<usize>,
    sample: Vec<usize>,
}

/// Each trace goes to one file: errors first, then slow, then baseline, then the sample; the
/// baseline is thinned evenly over time to at most `limit` traces.
fn select(traces: &[(Trace, crate::capture::Purposes)], limit: usize) -> Selection {
    let mut s = Selection {
        errors: Vec::new(),
        slow: Vec::new(),
        baseline: Vec::new(),
        sample: Vec::new(),
    };
    for (i, (_, p)) in traces.iter().enumerate() {
        if p.has(Purpose::Errors) {
            s.errors.push(i);
        } else if p.has(Purpose::Slow) {
            s.slow.push(i);
        } else if p.has(Purpose::Baseline) {
            s.baseline.push(i);
        } else if p.has(Purpose::Sample) || p.has(Purpose::Recovery) {
            s.sample.push(i);
        }
    }
    // A trace's start is the least of its spans': worked out once per trace, not per comparison.
    let key = |&i: &usize| (traces[i].0.start_ns(), traces[i].0.id);
    s.errors.sort_by_cached_key(key);
    s.slow.sort_by_cached_key(key);
    s.baseline.sort_by_cached_key(key);
    s.sample.sort_by_cached_key(key);
    if s.baseline.len() > limit {
        let n = s.baseline.len();
        s.baseline = (0..limit).map(|k| s.baseline[k * n / limit]).collect();
    }
    s
}

/// Writes the traces `picks` as OTLP JSON Lines, zstd-compressed: read back from the spill where
/// the capture streamed them out, else written from memory.
fn write_traces(
    dir: &Path,
    rel: &str,
    traces: &[(Trace, crate::capture::Purposes)],
    picks: &[usize],
    level: i32,
    spill: Option<&Spill>,
) -> std::io::Result<FileEntry> {
    writer::write_file(dir, rel, |out| {
        let mut enc = zstd::stream::write::Encoder::new(out, level)?;
        // Each line made whole, then handed on in one piece: the serialiser writes a token at a
        // time, and `enc` is a compressor.
        let mut json = Vec::new();
        for &i in picks {
            json.clear();
            let whole = trace_files::whole(spill, &traces[i].0)?;
            otlp::write_trace_line(&whole, &mut json)?;
            enc.write_all(&json)?;
        }
        enc.finish()?;
        Ok(())
    })
}

/// Traces the timeline or the analysis point at that are in none of the other trace files (the
/// first success after recovery is normal traffic, for example), so that every id the bundle
/// cites can be opened from the bundle itself.
fn referenced_elsewhere(
    traces: &[(Trace, crate::capture::Purposes)],
    picks: &Selection,
    analysis: &Analysis,
    timeline: &Timeline,
) -> Vec<usize> {
    use std::collections::{BTreeSet, HashSet};
    let mut cited: BTreeSet<crate::model::TraceId> =
        timeline.entries.iter().map(|e| e.trace_id).collect();
    cited.extend(analysis.origin.iter().map(|o| o.trace_id));
    cited.extend(analysis.recovery.iter().map(|r| r.trace_id));
    cited.extend(
        analysis
            .services
            .values()
            .filter_map(|s| s.recovery.as_ref().map(|r| r.trace_id)),
    );
    cited.extend(analysis.propagation.iter().map(|p| p.trace_id));
    cited.extend(
        analysis
            .services
            .values()
            .filter_map(|s| s.first_error.as_ref().map(|e| e.trace_id)),
    );
    let written: HashSet<crate::model::TraceId> = picks
        .errors
        .iter()
        .chain(&picks.slow)
        .chain(&picks.baseline)
        .chain(&picks.sample)
        .map(|&i| traces[i].0.id)
        .collect();
    let mut out: Vec<usize> = traces
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| cited.contains(&t.id) && !written.contains(&t.id))
        .map(|(i, _)| i)
        .collect();
    out.sort_by_key(|&i| (traces[i].0.start_ns(), traces[i].0.id));
    out
}

/// This process's resident memory in MiB (Linux), for the debug log of where time and memory go.
fn resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096 / (1 << 20))
}

/// Everything the bundle is made from.
pub struct BundleInput<'a> {
    pub plan: &'a CapturePlan,
    pub capture: &'a Capture,
    pub began_at: DateTime<Utc>,
}

/// Analyses the capture and writes the whole bundle into `dir` (an empty staging directory).
pub fn write_bundle(
    dir: &Path,
    input: &BundleInput<'_>,
    opts: &BundleOptions,
) -> std::io::Result<(BundleSummary, Analysis, Timeline)> {
    let traces = &input.capture.traces;
    let plan = input.plan;
    let clock = std::time::Instant::now();
    let lap = |what: &str| {
        tracing::debug!(
            ms = clock.elapsed().as_millis() as u64,
            rss_mib = resident_mib(),
            "{what}"
        )
    };
    let picks = select(traces, plan.baseline_traces);
    let began_ns = input.began_at.timestamp_nanos_opt().unwrap_or(i64::MIN);
    let analysis_input = AnalysisInput {
        began_ns,
        window_start_ns: plan.window.start_ns(),
        window_end_ns: plan.window.end_ns(),
        slow_threshold: plan.slow_threshold,
        error_rate_threshold: opts.error_rate_threshold,
        kept_normal_share: plan.kept_normal_share,
    };
    let mut w = BundleWriter::new(dir);
    // The analysis and the trace files only read the traces: the analysis on one thread, the
    // files on as many more as there are cores.
    let level = opts.zstd_level;
    let spill = input.capture.spill.as_deref();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (analysed, written) = std::thread::scope(|scope| {
        let files = scope.spawn(|| {
            let files = trace_files::Files {
                errors: &picks.errors,
                slow: &picks.slow,
                baseline: &picks.baseline,
                sample: &picks.sample,
            };
            trace_files::write(dir, traces, &files, level, spill, workers)
        });
        let analysed = analyze_with(traces, &analysis_input, spill);
        lap("analysed");
        let written = files
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a bundle writer thread panicked")));
        (analysed, written)
    });
    let (analysis, timeline) = analysed?;
    for entry in written? {
        w.record(entry);
    }
    lap("trace files written");
    let context = referenced_elsewhere(traces, &picks, &analysis, &timeline);
    w.record(write_traces(
        dir,
        "traces/context.jsonl.zst",
        traces,
        &context,
        level,
        spill,
    )?);
    #[derive(Serialize)]
    struct TimelineFile<'a> {
        incident: &'a crate::model::Incident,
        entries: &'a [crate::analyze::TimelineEntry],
    }
    w.write_json(
        "timeline.json",
        &TimelineFile {
            incident: &plan.incident,
            entries: &timeline.entries,
        },
    )?;
    w.write_json("analysis.json", &analysis)?;
    lap("context, timeline and analysis written");

    let notices: Vec<String> = input
        .capture
        .sources
        .iter()
        .filter_map(|src| {
            let spans = *src.notes.get(crate::capture::file::SPANS_LEFT_OUT)?;
            let traces = src
                .notes
                .get(crate::capture::file::TRACES_LEFT_OUT)
                .copied()
                .unwrap_or(0);
            Some(format!(
                "left out: {spans} span(s) in {traces} trace(s) of {} lie outside the incident window and the baseline period (kept: {} span(s); see sources in manifest.json)",
                src.url,
                src.notes.get("spans kept").copied().unwrap_or(0)
            ))
        })
        .collect();
    let trace_url = opts.trace_url.clone().or_else(|| {
        input
            .capture
            .sources
            .iter()
            .find_map(|s| s.trace_url.clone())
    });
    let counts = Counts {
        traces: picks.errors.len()
            + picks.slow.len()
            + picks.baseline.len()
            + picks.sample.len()
            + context.len(),
        spans: picks
            .errors
            .iter()
            .chain(&picks.slow)
            .chain(&picks.baseline)
            .chain(&picks.sample)
            .chain(&context)
            .map(|&i| traces[i].0.spans.len())
            .sum(),
        error_traces: picks.errors.len(),
        slow_traces: picks.slow.len(),
        baseline_traces: picks.baseline.len(),
        sample_traces: picks.sample.len(),
        context_traces: context.len(),
    };
    let gaps = input.capture.gaps.clone();
    let status = if gaps.is_empty() {
        "complete"
    } else {
        "partial"
    };
    let doc = postmortem::Draft {
        incident: &plan.incident,
        window: &plan.window,
        timeline: &timeline,
        analysis: &analysis,
        trace_url: trace_url.as_deref(),
        status,
        counts: &counts,
    };
    w.write("postmortem.yaml", |out| {
        out.write_all(doc.yaml().as_bytes())
    })?;
    w.write("postmortem.md", |out| {
        out.write_all(doc.markdown().as_bytes())
    })?;
    let html = report::render(&report::ReportInput {
        incident: &plan.incident,
        window: &plan.window,
        capture_id: &opts.capture_id,
        status,
        counts: &counts,
        gaps: &gaps,
        analysis: &analysis,
        timeline: &timeline,
        trace_url: trace_url.as_deref(),
        redaction: &input.capture.redaction,
    });
    w.write("report.html", |out| out.write_all(html.as_bytes()))?;

    lap("reports written");
    let mut manifest = Manifest::new(plan, input.capture, opts, counts.clone(), w.entries());
    if let Some(signer) = &opts.signer {
        let value = serde_json::to_value(&manifest)?;
        manifest.signature = Some(signer.sign(&value).map_err(std::io::Error::other)?);
    }
    let entry = w.write_json("manifest.json", &manifest)?.clone();
    // The directory entries too, so that a bundle renamed into place survives a power loss
    // whole.
    writer::sync_dir(&dir.join("traces"))?;
    writer::sync_dir(dir)?;
    Ok((
        BundleSummary {
            capture_id: opts.capture_id.clone(),
            status,
            counts,
            gaps,
            manifest_sha256: entry.sha256,
            notices,
        },
        analysis,
        timeline,
    ))
}

#[cfg(test)]
mod tests {
    use super::select;
    use crate::capture::{Purpose, Purposes};
    use crate::model::{Span, SpanId, Trace, TraceId};

    /// A trace `id` whose spans start at `starts` (its start is the least of them).
    fn trace(id: u8, starts: &[i64]) -> Trace {
        let spans = starts
            .iter()
            .zip(1..)
            .map(|(&start, n)| {
                Span::plain(
                    TraceId([id; 16]),
                    SpanId([n; 8]),
                    "checkout",
                    start,
                    start + 10,
                )
            })
            .collect();
        Trace {
            id: TraceId([id; 16]),
            spans,
        }
    }

    /// Each trace file lists its traces by start (a trace starts with its earliest span, which
    /// need not come first), then by id, whatever order the capture holds them in; a trace
    /// goes to one file only, errors first.
    #[test]
    fn each_trace_file_lists_its_traces_by_start_then_id() {
        let error = Purposes::default()
            .with(Purpose::Errors)
            .with(Purpose::Sample);
        let sample = Purposes::default().with(Purpose::Sample);
        let traces = vec![
            (trace(1, &[500, 40]), error),
            (trace(2, &[300]), sample),
            (trace(3, &[100, 90]), error),
            (trace(4, &[40]), error),
            (trace(5, &[200]), sample),
            (trace(6, &[100]), sample),
        ];
        let s = select(&traces, 10);
        // Traces 1 and 4 both start at 40: the id decides.
        assert_eq!(s.errors, [0, 3, 2]);
        assert_eq!(s.sample, [5, 4, 1]);
        assert!(s.slow.is_empty() && s.baseline.is_empty());
    }
}
