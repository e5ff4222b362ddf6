//! The command line as a user meets it: bad incidents refused with a reason and nothing written,
//! trace files collected with and without an incident, the demo, and deterministic analysis.

mod support;

use std::path::{Path, PathBuf};

use evidence_locker::formats::{TraceCollector, open_trace_file};
use support::*;

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

fn example(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(rel)
        .display()
        .to_string()
}

/// `collect --traces-file FILE --out DIR`, without an incident.
fn collect_file(file: &Path, out: &Path) -> std::process::Output {
    run_cli(
        &[
            "collect",
            "--traces-file",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    )
}

fn files_under(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    walkdir(dir)
}

fn walkdir(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { 1 + walkdir(&p) } else { 1 }
        })
        .sum()
}

#[test]
fn bad_incident_files_are_refused_with_a_reason_and_nothing_is_written() {
    let cases: [(&str, &str); 5] = [
        ("this is not json", "not valid JSON"),
        (
            r#"{"title":"no id","declared_at":"2026-02-05T14:40:00Z"}"#,
            "no `id`",
        ),
        (
            r#"{"id":"INC-1","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-05T15:00:00Z","end":"2026-02-05T14:00:00Z"}}"#,
            "ends",
        ),
        (
            r#"{"id":"INC-1","declared_at":"yesterday"}"#,
            "wrong type or shape",
        ),
        (
            r#"{"id":"../../etc","declared_at":"2026-02-05T14:40:00Z"}"#,
            "not usable",
        ),
    ];
    for (body, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let incident = dir.path().join("incident.json");
        std::fs::write(&incident, body).unwrap();
        let out_dir = dir.path().join("evidence");
        let out = run_cli(
            &[
                "collect",
                "--incident",
                incident.to_str().unwrap(),
                "--traces-file",
                &fixture("jaeger/v1-ui_trace_ui_01.json"),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!out.status.success(), "{body}: accepted");
        let err = stderr(&out);
        assert!(err.contains(reason), "{body}: {err}");
        assert!(
            err.contains("incident.json"),
            "the message names the file: {err}"
        );
        assert_eq!(files_under(&out_dir), 0, "{body}: something was written");
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn an_unreadable_traces_file_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("traces.json");
    std::fs::write(&bad, "{\"data\": [").unwrap();
    let out_dir = dir.path().join("evidence");
    let out = collect_file(&bad, &out_dir);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("traces.json"), "{}", stderr(&out));
    assert_eq!(files_under(&out_dir), 0);
}

#[test]
fn a_traces_file_without_incident_spans_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("evidence");
    let out = run_cli(
        &[
            "collect",
            "--traces-file",
            &fixture("zipkin/v2-trace_messaging-kafka.json"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    assert_eq!(manifest["incident"]["id"], "file-v2-trace_messaging-kafka");
    assert_eq!(manifest["counts"]["error_traces"], 1);
    assert_eq!(manifest["counts"]["spans"], 28);
    // The window is the span range: it starts at the first span (µs 1541405397200002 in the file).
    assert_eq!(manifest["window"]["start"], "2018-11-05T08:09:57.200002Z");
}

#[test]
fn the_spec_example_with_empty_ids_is_a_partial_capture_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("evidence");
    // Every span of the spec's example has an empty id: none can be captured, and that is said.
    let out = run_cli(
        &[
            "collect",
            "--traces-file",
            &fixture("otlp/spec_file-exporter_traces.jsonl"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no usable spans"), "{}", stderr(&out));
}

#[test]
fn the_demo_writes_a_complete_bundle_and_prints_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("evidence");
    let out = run_cli(&["demo", "--out", out_dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = PathBuf::from(stdout(&out).lines().next().unwrap());
    assert!(
        report.ends_with("report.html") && report.exists(),
        "{}",
        report.display()
    );
    let bundle = report.parent().unwrap();
    let manifest = verify_manifest(bundle);
    assert_eq!(manifest["completeness"]["status"], "complete");
    assert_eq!(manifest["incident"]["id"], "INC-2026-0142");
    let analysis = read_json(&bundle.join("analysis.json"));
    // The generator's story: payment's database calls fail first; checkout and frontend follow.
    assert_eq!(analysis["origin"]["service"], "payment-service");
    let edges: Vec<(String, String)> = analysis["propagation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["from"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        edges.contains(&("checkout-service".into(), "payment-service".into())),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("frontend".into(), "checkout-service".into())),
        "{edges:?}"
    );
    // Catalog's steady 1% of errors began long before the incident: ranked, but pre-existing.
    let catalog = analysis["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "catalog-service")
        .expect("catalog-service is a candidate");
    assert_eq!(catalog["pre_existing"], true, "{catalog:#}");
    assert_eq!(analysis["ranking"][0]["service"], "payment-service");
    // The bad rollout is the top suspect.
    assert_eq!(analysis["suspects"][0]["key"], "deployment.version");
    assert_eq!(analysis["suspects"][0]["value"], "v2.3.1");
    // Recovery after the rollback at 14:47.
    let recovery = analysis["recovery"]["time"].as_str().unwrap();
    assert!(recovery.starts_with("2026-02-05T14:47"), "{recovery}");
    // The report, read on a phone at 3 a.m.: what changed and when, on top.
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<meta name=\"viewport\" content=\"width=device-width"));
    let top = &html[..html.find("<h2>Timeline</h2>").unwrap()];
    for fact in [
        "payment-service",
        "deployment.version = v2.3.1",
        "<dt>started</dt>",
        "<dt>declared</dt>",
        "<dt>recovered</dt><dd>2026-02-05 14:47",
        "after it started",
    ] {
        assert!(top.contains(fact), "{fact} is not in the summary");
    }
    // Catalog's first error is marked as pre-existing; trace ids are whole.
    assert!(html.contains("pre-existing</span>"));
    let origin_trace = analysis["origin"]["trace_id"].as_str().unwrap();
    assert!(html.contains(&format!("<code>{origin_trace}</code>")));
    assert!(html.contains("traces/jaeger-ui.json</code> opens in Jaeger UI"));
    let draft = std::fs::read_to_string(bundle.join("postmortem.md")).unwrap();
    assert!(
        draft.contains("deployment.version = v2.3.1 was on 100%"),
        "{draft}"
    );
    assert!(
        draft.contains("the failure reached checkout-service, frontend;"),
        "catalog's errors were there before: {draft}"
    );
    let yaml = std::fs::read_to_string(bundle.join("postmortem.yaml")).unwrap();
    for key in [
        "incident:",
        "timeline:",
        "root_cause:",
        "action_items:",
        "origin_service: \"payment-service\"",
    ] {
        assert!(yaml.contains(key), "postmortem.yaml lacks {key}");
    }
    // The bundle's trace files read back to what the manifest counts: OTLP lines and the Jaeger UI
    // file alike.
    let read = |path: PathBuf| {
        let mut c = TraceCollector::default();
        c.read(open_trace_file(&path).unwrap()).unwrap();
        c.finish().traces
    };
    let errors = read(bundle.join("traces/errors.jsonl.zst"));
    let slow = read(bundle.join("traces/slow.jsonl.zst"));
    let ui = read(bundle.join("traces/jaeger-ui.json"));
    assert_eq!(
        errors.len() as u64,
        manifest["counts"]["error_traces"].as_u64().unwrap()
    );
    assert!(errors.iter().all(|t| t.has_error()));
    assert_eq!(ui.len(), errors.len() + slow.len());
    let spans =
        |ts: &[evidence_locker::model::Trace]| ts.iter().map(|t| t.spans.len()).sum::<usize>();
    assert_eq!(spans(&ui), spans(&errors) + spans(&slow));
    let ui_errors = ui
        .iter()
        .flat_map(|t| &t.spans)
        .filter(|s| s.is_error())
        .count();
    let otlp_errors = errors
        .iter()
        .chain(&slow)
        .flat_map(|t| &t.spans)
        .filter(|s| s.is_error())
        .count();
    assert_eq!(ui_errors, otlp_errors);
    // Every trace the timeline and the analysis cite is in the bundle (the recovery, for one, is
    // normal traffic: every trace of the file's window that is neither failing nor slow is kept
    // in traces/sample.jsonl.zst).
    let in_bundle = all_bundle_trace_ids(bundle);
    let timeline = read_json(&bundle.join("timeline.json"));
    let mut cited: Vec<String> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["trace_id"].as_str().unwrap().to_owned())
        .collect();
    cited.push(
        analysis["recovery"]["trace_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    cited.push(analysis["origin"]["trace_id"].as_str().unwrap().to_owned());
    for id in &cited {
        assert!(
            in_bundle.contains(id),
            "cited trace {id} is not in the bundle"
        );
    }
    let sample = bundle_trace_ids(bundle, "sample");
    assert!(
        sample.contains(&cited[cited.len() - 2]),
        "the recovery is in the sample"
    );
    let manifest = read_json(&bundle.join("manifest.json"));
    assert_eq!(manifest["counts"]["sample_traces"], sample.len());
    let html = std::fs::read_to_string(report).unwrap();
    // Self-contained: inline SVG, no scripts, nothing fetched from the network.
    assert!(html.contains("<svg"));
    assert!(!html.contains("<script") && !html.contains("src=\"http") && !html.contains("<link"));
    // Moments within a second share a row: fewer rows than entries, yet every entry's trace is
    // there to open.
    let entries = timeline["entries"].as_array().unwrap();
    let timeline_html = &html[html.find("<h2>Timeline</h2>").unwrap()..];
    let timeline_html = &timeline_html[..timeline_html.find("</table>").unwrap()];
    let rows = timeline_html.matches("<tr").count() - 1; // the header row
    assert!(
        rows < entries.len(),
        "{rows} rows for {} entries",
        entries.len()
    );
    assert!(timeline_html.contains("moments within"));
    for e in entries {
        let id = e["trace_id"].as_str().unwrap();
        assert!(
            timeline_html.contains(id),
            "timeline entry {id} is not shown"
        );
    }
    // The charts show load as well as errors; the propagation graph names every failing service.
    assert!(html.contains("requests per minute"));
    let graph = &html[html.find("<h2>Propagation</h2>").unwrap()..];
    let graph = &graph[..graph.find("</svg>").unwrap()];
    for service in [
        "payment-service",
        "checkout-service",
        "frontend",
        "catalog-service",
    ] {
        assert!(
            graph.contains(service),
            "{service} is missing from the graph"
        );
    }
    // Every claim of the draft cites the span it rests on, and that trace is in the bundle.
    let mut section = "";
    for line in draft.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h;
        } else if !line.trim().is_empty()
            && [
                "Summary",
                "Impact",
                "Contributing factors",
                "Mitigation and recovery",
            ]
            .contains(&section)
        {
            assert!(line.contains("(evidence: "), "{section}: {line}");
        }
    }
    let example = analysis["suspects"][0]["example"]["trace_id"]
        .as_str()
        .expect("the top suspect names an example failing call");
    assert!(in_bundle.contains(example));
    assert!(yaml.contains("evidence:"), "{yaml}");
}

#[test]
fn the_same_input_gives_a_byte_identical_analysis_and_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for run in 0..2 {
        let out_dir = dir.path().join(format!("evidence-{run}"));
        let out = run_cli(
            &[
                "collect",
                "--incident",
                &example("incident.json"),
                "--traces-file",
                &example("traces.jsonl.zst"),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
        );
        let bundle = bundle_dir(&out);
        outputs.push((
            std::fs::read(bundle.join("analysis.json")).unwrap(),
            std::fs::read(bundle.join("timeline.json")).unwrap(),
            bundle_trace_ids(&bundle, "errors"),
        ));
    }
    assert!(
        outputs[0] == outputs[1],
        "two runs on the same input differ"
    );
}

#[test]
fn a_config_file_and_environment_override_and_a_bad_key_stops_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[store]\npath = \"PLACEHOLDER\"\n").unwrap();
    let out_dir = dir.path().join("from-env");
    let out = run_cli(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "collect",
            "--traces-file",
            &fixture("jaeger/v1-ui_trace_ui_01.json"),
        ],
        &[(
            "EVIDENCE_LOCKER__STORE__PATH",
            out_dir.display().to_string(),
        )],
    );
    let bundle = bundle_dir(&out);
    assert!(bundle.starts_with(&out_dir), "{}", bundle.display());

    std::fs::write(&cfg, "[capture]\nslow_treshold = \"1s\"\n").unwrap();
    let out = run_cli(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "demo",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("slow_treshold"), "{}", stderr(&out));
}

#[test]
fn an_incident_window_without_data_in_the_file_is_a_partial_bundle_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        r#"{"id":"INC-EMPTY","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-05T14:00:00Z","end":"2026-02-05T15:00:00Z"}}"#,
    )
    .unwrap();
    let out_dir = dir.path().join("evidence");
    // The fixture was recorded in 2017, years before this window.
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--traces-file",
            &fixture("jaeger/v1-ui_trace_ui_01.json"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let bundle = bundle_dir(&out);
    assert!(stdout(&out).contains("status: partial"), "{}", stdout(&out));
    let manifest = verify_manifest(&bundle);
    assert_eq!(manifest["completeness"]["gaps"][0]["kind"], "no_data");
    assert_eq!(manifest["counts"]["traces"], 0);
    // The summary names what of the file was left out, as the manifest counts it.
    let notes = &manifest["sources"][0]["notes"];
    let left = notes["spans outside the incident window and the baseline period, not captured"]
        .as_u64()
        .unwrap();
    assert!(left > 0 && notes["spans read"] == left, "{notes:#}");
    let line = stdout(&out).lines().nth(2).unwrap_or_default().to_owned();
    assert!(
        line.starts_with(&format!("left out: {left} span(s) in 1 trace(s) of ")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_backend_source_needs_an_incident() {
    let out = run_cli(
        &[
            "collect",
            "--jaeger",
            "http://127.0.0.1:9",
            "--out",
            "/nonexistent/never",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--incident"), "{}", stderr(&out));
}

/// The first `n` lines of the demo's traces (Jaeger JSON Lines), uncompressed.
fn demo_lines(n: usize) -> Vec<String> {
    let bytes = std::fs::read(example("traces.jsonl.zst")).unwrap();
    let plain = zstd::decode_all(&bytes[..]).unwrap();
    String::from_utf8(plain)
        .unwrap()
        .lines()
        .take(n)
        .map(str::to_owned)
        .collect()
}

/// The format name `collect` gives a JSON Lines line like this one.
fn first_format(line: &str) -> String {
    let mut c = TraceCollector::default();
    c.add_input(line.as_bytes()).unwrap();
    c.finish().formats.into_keys().next().unwrap()
}

#[test]
fn a_json_lines_file_whose_first_line_is_damaged_loses_that_line_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = demo_lines(200);
    let good = lines.len() - 1;
    let half = lines[0].len() / 2;
    lines[0].truncate(half);
    let file = dir.path().join("traces.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.path().join("evidence");
    let o = collect_file(&file, &out);
    let bundle = bundle_dir(&o);
    let manifest = read_json(&bundle.join("manifest.json"));
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert!(
        gaps.iter().any(|g| g["kind"] == "unreadable_spans"
            && g["message"].as_str().unwrap().contains("line 1:")),
        "{gaps:#?}"
    );
    assert_eq!(
        manifest["sources"][0]["api"].as_str().unwrap(),
        format!("{} ×{good}", first_format(&lines[1])),
    );
}

#[test]
fn a_span_without_a_time_does_not_stretch_the_window_back_to_1970() {
    let dir = tempfile::tempdir().unwrap();
    let mut trace: serde_json::Value = serde_json::from_str(&demo_lines(1)[0]).unwrap();
    let spans = trace["spans"].as_array_mut().unwrap();
    let mut untimed = spans[0].clone();
    untimed["spanID"] = serde_json::json!("00000000deadbeef");
    untimed["startTime"] = serde_json::json!(0);
    untimed["duration"] = serde_json::json!(0);
    spans.push(untimed);
    let file = dir.path().join("one.json");
    std::fs::write(&file, trace.to_string()).unwrap();
    let out = dir.path().join("evidence");
    let o = collect_file(&file, &out);
    let manifest = read_json(&bundle_dir(&o).join("manifest.json"));
    let start = manifest["window"]["start"].as_str().unwrap();
    assert!(start.starts_with("2026-02-05"), "window start {start}");
}

#[test]
fn a_window_longer_than_the_maximum_is_cut_to_its_latest_part_with_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut incident = read_json(Path::new(&example("incident.json")));
    incident["window"]["start"] = serde_json::json!("2026-02-02T14:00:00Z");
    let path = dir.path().join("incident.json");
    std::fs::write(&path, incident.to_string()).unwrap();
    let out = dir.path().join("evidence");
    let o = run_cli(
        &[
            "collect",
            "--incident",
            path.to_str().unwrap(),
            "--traces-file",
            &example("traces.jsonl.zst"),
            "--out",
            out.to_str().unwrap(),
        ],
        &[("EVIDENCE_LOCKER__CAPTURE__MAX_WINDOW", "1h".into())],
    );
    let manifest = read_json(&bundle_dir(&o).join("manifest.json"));
    assert_eq!(manifest["window"]["start"], "2026-02-05T13:55:00Z");
    assert_eq!(manifest["window"]["end"], "2026-02-05T14:55:00Z");
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert!(
        gaps.iter().any(|g| g["kind"] == "truncated"
            && g["start"] == "2026-02-02T14:00:00Z"
            && g["message"]
                .as_str()
                .unwrap()
                .contains("capture.max_window")),
        "{gaps:#?}"
    );
}

#[test]
fn a_stdout_that_cannot_be_written_is_an_error_naming_the_bundle_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evidence");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_evidence-locker"))
        .args([
            "collect",
            "--traces-file",
            &example("traces.jsonl.zst"),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("standard output cannot be written") && err.contains(out.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn huge_configuration_values_stop_at_start_up_naming_the_key() {
    for (key, value) in [
        ("EVIDENCE_LOCKER__CAPTURE__LOOKBACK", "1000000d"),
        ("EVIDENCE_LOCKER__STORE__OBJECT_LOCK_DAYS", "4000000000"),
    ] {
        let o = run_cli(
            &["collect", "--traces-file", &example("traces.jsonl.zst")],
            &[(key, value.into())],
        );
        let err = stderr(&o);
        let name = key
            .trim_start_matches("EVIDENCE_LOCKER__")
            .replace("__", ".")
            .to_lowercase();
        assert!(!o.status.success() && err.contains(&name), "{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_file_of_one_normal_trace_without_an_incident_keeps_it_in_the_sample() {
    // Reported: this wrote a bundle with counts.traces 0 and status complete.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.json");
    let t0: i64 = 1_764_590_000_000_000_000;
    let trace = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "GET /cart", "kind": 2,
            "startTimeUnixNano": t0.to_string(), "endTimeUnixNano": (t0 + 20_000_000).to_string(),
            "status": {"code": 1},
        }]}],
    }]});
    std::fs::write(&file, trace.to_string()).unwrap();
    let out = collect_file(&file, &dir.path().join("evidence"));
    let bundle = bundle_dir(&out);
    let manifest = verify_manifest(&bundle);
    assert_eq!(manifest["counts"]["traces"], 1, "{:#}", manifest["counts"]);
    assert_eq!(manifest["counts"]["sample_traces"], 1);
    assert_eq!(
        bundle_trace_ids(&bundle, "sample"),
        vec!["5b8efff798038103d269b633813fc60c".to_owned()]
    );
    let notes = &manifest["sources"][0]["notes"];
    assert_eq!(notes["spans read"], 1);
    assert_eq!(notes["spans kept"], 1);
}

#[test]
fn hostile_text_never_becomes_markdown_html_or_yaml_structure() {
    let hostile = "Checkout\n## Injected heading\n- [x] approved <img src=x onerror=alert(1)> [click](http://evil.example) `code` | cell \u{80}\u{85}\u{2028}\u{2029}\u{feff}end";
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        serde_json::json!({
            "id": "INC-HOSTILE", "title": hostile, "declared_at": "2025-12-01T11:55:00Z",
            "started_at": "2025-12-01T11:50:00Z",
            "window": {"start": "2025-12-01T11:40:00Z", "end": "2025-12-01T12:00:00Z"},
        })
        .to_string(),
    )
    .unwrap();
    let t0: i64 = 1_764_590_000_000_000_000; // 2025-12-01T11:53:20Z
    let lines: String = (0..20)
        .map(|i| {
            serde_json::json!({"resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "pay\nment"}}]},
                "scopeSpans": [{"spans": [{
                    "traceId": format!("{:032x}", 0x77 + i), "spanId": format!("{:016x}", 0x88 + i),
                    "name": hostile, "kind": 2,
                    "startTimeUnixNano": (t0 + i * 1_000_000_000).to_string(),
                    "endTimeUnixNano": (t0 + i * 1_000_000_000 + 5_000_000).to_string(),
                    "status": {"code": 2, "message": hostile},
                }]}],
            }]})
            .to_string()
                + "\n"
        })
        .collect();
    let file = dir.path().join("t.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--traces-file",
            file.to_str().unwrap(),
            "--out",
            dir.path().join("evidence").to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = bundle_dir(&out);
    let md = std::fs::read_to_string(bundle.join("postmortem.md")).unwrap();
    for line in md.lines() {
        assert!(!line.starts_with("## Injected"), "{line}");
        assert!(!line.trim_start().starts_with("- [x]"), "{line}");
    }
    // Every `<` of the text is escaped (`\<`), so none opens an element; no link either.
    assert!(
        md.match_indices("<img")
            .all(|(i, _)| md[..i].ends_with('\\')),
        "{md}"
    );
    assert!(
        md.match_indices("](").all(|(i, _)| md[..i].ends_with('\\')),
        "a link was made: {md}"
    );
    for section in [
        "## Summary",
        "## Impact",
        "## Detection",
        "## Timeline",
        "## Root cause",
        "## Contributing factors",
        "## Mitigation and recovery",
        "## Lessons learned",
        "## Action items",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    let html = std::fs::read_to_string(bundle.join("report.html")).unwrap();
    assert!(
        !html.contains("<img src=x"),
        "the report holds a live element"
    );
    // PyYAML (in .venv, with moto) reads the draft back, every character as it was.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let read = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; d = yaml.safe_load(open(sys.argv[1], encoding='utf-8')); print(json.dumps(d['incident']['title']))",
            bundle.join("postmortem.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test once)", python.display()));
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let title: String = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(title, hostile);
}

#[test]
fn trace_ids_link_to_the_team_s_trace_ui_when_a_template_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let template = "https://jaeger.example/trace/{trace_id}?uiFind={span_id}";
    let out = run_cli(
        &["demo", "--out", dir.path().join("e").to_str().unwrap()],
        &[("EVIDENCE_LOCKER__REPORT__TRACE_URL", template.into())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = PathBuf::from(stdout(&out).lines().next().unwrap());
    let html = std::fs::read_to_string(&report).unwrap();
    let analysis = read_json(&report.parent().unwrap().join("analysis.json"));
    let link = format!(
        "href=\"https://jaeger.example/trace/{}?uiFind={}\"",
        analysis["origin"]["trace_id"].as_str().unwrap(),
        analysis["origin"]["span_id"].as_str().unwrap()
    );
    assert!(html.contains(&link), "{link} not in the report");
    let out = run_cli(
        &["demo", "--out", dir.path().join("f").to_str().unwrap()],
        &[(
            "EVIDENCE_LOCKER__REPORT__TRACE_URL",
            "https://jaeger.example/".into(),
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("report.trace_url"),
        "{}",
        stderr(&out)
    );
}
