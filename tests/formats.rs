//! Every upstream trace fixture parses, with span, trace and error-span counts counted by hand
//! from the JSON (not by the code under test), and the mapping details that matter downstream.

use std::path::{Path, PathBuf};

use evidence_locker::formats::{TraceCollector, open_trace_file};
use evidence_locker::model::{SpanKind, StatusCode, Trace};

struct Parsed {
    traces: Vec<Trace>,
    skipped: usize,
}

fn parse(path: &Path) -> Parsed {
    let mut c = TraceCollector::default();
    c.read(open_trace_file(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let collected = c.finish();
    Parsed {
        traces: collected.traces,
        skipped: collected.skipped.values().sum(),
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn restricted(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/restricted")
        .join(rel)
}

/// (file, spans, traces, error spans, skipped spans); spans are distinct spans: a span repeated
/// with the same id, service, operation and start is kept once.
const COUNTS: &[(&str, usize, usize, usize, usize)] = &[
    ("jaeger-ui/otlp2jaeger-in-error.json", 1, 1, 0, 0),
    ("jaeger-ui/otlp2jaeger-multi-in-combined.json", 4, 1, 0, 0),
    ("jaeger-ui/ui-trace_TraceGraph_testTrace.json", 11, 1, 1, 0),
    ("jaeger-ui/ui-trace_genaiTestTrace.json", 57, 1, 1, 0),
    ("jaeger-ui/ui-trace_spansAmongEachOther.json", 12, 1, 0, 0),
    (
        "jaeger-ui/v1-api-response_oltp2jaeger-multi-out.json",
        4,
        1,
        0,
        0,
    ),
    ("jaeger/otlp-integration_default.json", 1, 1, 0, 0),
    ("jaeger/otlp-integration_dur_trace.json", 1, 1, 0, 0),
    ("jaeger/otlp-integration_example_trace.json", 5, 1, 0, 0),
    (
        "jaeger/otlp-integration_link_attributes_trace.json",
        1,
        1,
        0,
        0,
    ),
    ("jaeger/otlp-integration_log_tags_trace.json", 1, 1, 0, 0),
    ("jaeger/otlp-integration_multiple1_trace.json", 1, 1, 0, 0),
    (
        "jaeger/otlp-integration_process_tags_trace.json",
        1,
        1,
        0,
        0,
    ),
    (
        "jaeger/otlp-integration_scope_attributes_trace.json",
        1,
        1,
        0,
        0,
    ),
    ("jaeger/otlp-integration_span_tags_trace.json", 1, 1, 0, 0),
    // The same span twice, byte for byte: kept once (and noted).
    ("jaeger/otlp2jaeger-in.json", 1, 1, 0, 0),
    ("jaeger/otlp_otel_traces_01.json", 1, 1, 1, 0),
    ("jaeger/v1-api-response_otlp2jaeger-out.json", 1, 1, 0, 0),
    ("jaeger/v1-domain_01.json", 5, 1, 1, 0),
    (
        "jaeger/v1-spans-with-inline-process_trace_success.json",
        2,
        1,
        1,
        0,
    ),
    ("jaeger/v1-ui_trace_ui_01.json", 5, 1, 1, 0),
    ("jaeger/v3-snapshot_FindTraces.json", 1, 1, 1, 0),
    ("jaeger/v3-snapshot_GetTrace.json", 1, 1, 1, 0),
    ("otlp/examples_trace.json", 1, 1, 0, 0),
    // The spec's file-exporter example has empty ids: every span is unusable, and counted.
    ("otlp/spec_file-exporter_traces.jsonl", 0, 0, 0, 8),
    (
        "tempo/v1-trace-by-id_batches_pkg-tempopb-trace.json",
        1,
        1,
        0,
        0,
    ),
    ("zipkin/v2-single-span_zipkin2-chinese.json", 1, 1, 1, 0),
    ("zipkin/v2-single-span_zipkin2-client.json", 1, 1, 0, 0),
    ("zipkin/v2-trace_ascend.json", 8, 1, 0, 0),
    ("zipkin/v2-trace_envoy.json", 1, 1, 0, 0),
    ("zipkin/v2-trace_messaging-kafka.json", 28, 1, 3, 0),
    ("zipkin/v2-trace_messaging.json", 4, 1, 0, 0),
    ("zipkin/v2-trace_simple-db-p6.json", 5, 1, 0, 0),
    ("zipkin/v2-trace_skew.json", 4, 1, 0, 0),
    (
        "zipkin/v2-trace_smartthings-oauth-authorization.json",
        175,
        1,
        2,
        0,
    ),
    ("zipkin/v2-trace_yelp.json", 16, 1, 0, 0),
];

/// Tempo's gogo-jsonpb traces (AGPL: read from ../shared, never copied).
const RESTRICTED_COUNTS: &[(&str, usize, usize, usize, usize)] = &[
    (
        "tempo/otlp-gogojsonpb_trace-with-failed-requests.json",
        15,
        1,
        3,
        0,
    ),
    (
        "tempo/otlp-gogojsonpb_trace-with-queue-database.json",
        19,
        1,
        0,
        0,
    ),
    (
        "tempo/otlp-gogojsonpb_trace-with-virtual-nodes.json",
        3,
        2,
        0,
        0,
    ),
    ("tempo/otlp-gogojsonpb_vulture-trace.json", 6, 1, 0, 0),
];

fn check(path: &Path, spans: usize, traces: usize, errors: usize, skipped: usize) {
    let p = parse(path);
    let got_spans: usize = p.traces.iter().map(|t| t.spans.len()).sum();
    let got_errors: usize = p
        .traces
        .iter()
        .flat_map(|t| &t.spans)
        .filter(|s| s.is_error())
        .count();
    assert_eq!(
        (got_spans, p.traces.len(), got_errors, p.skipped),
        (spans, traces, errors, skipped),
        "{}: (spans, traces, error spans, skipped)",
        path.display()
    );
}

#[test]
fn every_copied_trace_fixture_parses_with_hand_counted_figures() {
    for &(rel, spans, traces, errors, skipped) in COUNTS {
        check(&fixture(rel), spans, traces, errors, skipped);
    }
}

#[test]
fn tempo_gogo_jsonpb_traces_parse_with_hand_counted_figures() {
    for &(rel, spans, traces, errors, skipped) in RESTRICTED_COUNTS {
        let path = restricted(rel);
        assert!(
            path.exists(),
            "{} is missing: ../shared must sit beside the project",
            path.display()
        );
        check(&path, spans, traces, errors, skipped);
    }
}

#[test]
fn non_trace_json_is_refused_with_a_reason() {
    for rel in [
        "otlp/examples_logs.json",
        "jaeger/v3-snapshot_GetServices.json",
    ] {
        let mut c = TraceCollector::default();
        let err = c.read(open_trace_file(&fixture(rel)).unwrap()).unwrap_err();
        assert!(!err.to_string().is_empty(), "{rel}");
    }
}

#[test]
fn jaeger_tags_map_to_kind_status_and_links() {
    let p = parse(&fixture("jaeger/v1-domain_01.json"));
    let spans = &p.traces[0].spans;
    // Base64 ids of the domain model decode to hex.
    assert_eq!(p.traces[0].id.to_hex(), "00000000000000000000000000000001");
    let erroring: Vec<_> = spans.iter().filter(|s| s.is_error()).collect();
    assert_eq!(erroring.len(), 1);
    assert_eq!(&*erroring[0].operation, "some-operation");
    // `error` became the status: it is not kept as an attribute as well.
    assert!(erroring[0].attribute("error").is_none());
    // The span with a reference into another trace keeps its same-trace parent and links the other.
    let multi = spans
        .iter()
        .find(|s| !s.links.is_empty())
        .expect("a span with a link");
    assert_eq!(
        multi.parent.map(|p| p.to_hex()).as_deref(),
        Some("0000000000000002")
    );
    assert_eq!(
        multi.links[0].trace_id.to_hex(),
        "000000000000000000000000000000ff"
    );
}

#[test]
fn tempo_batches_with_base64_ids_and_enum_names_parse() {
    let p = parse(&restricted(
        "tempo/otlp-gogojsonpb_trace-with-failed-requests.json",
    ));
    let t = &p.traces[0];
    assert!(t.spans.iter().any(|s| s.kind == SpanKind::Server));
    assert!(t.spans.iter().any(|s| s.kind == SpanKind::Client));
    assert_eq!(
        t.spans
            .iter()
            .filter(|s| s.status.code == StatusCode::Error)
            .count(),
        3
    );
    let p = parse(&fixture(
        "tempo/v1-trace-by-id_batches_pkg-tempopb-trace.json",
    ));
    let s = &p.traces[0].spans[0];
    assert_eq!(s.trace_id.to_hex(), "5b8efff798038103d269b633813fc60c");
    assert_eq!(&**s.service(), "my.service");
    assert_eq!(s.duration_ns(), 1_000_000_000);
    assert_eq!(s.scope.as_ref().map(|s| &*s.name), Some("my.library"));
}

#[test]
fn zipkin_error_tag_counts_whatever_its_value_and_becomes_the_message() {
    let p = parse(&fixture("zipkin/v2-trace_messaging-kafka.json"));
    let errors: Vec<_> = p.traces[0].spans.iter().filter(|s| s.is_error()).collect();
    assert_eq!(errors.len(), 3);
    // Zipkin µs became ns.
    let s = &p.traces[0].spans[0];
    assert_eq!(s.start_ns % 1000, 0);
    assert!(s.start_ns > 1_000_000_000_000_000_000);
}

#[test]
fn zstd_json_lines_are_read_directly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl.zst");
    let mut lines = Vec::new();
    for rel in [
        "jaeger/v1-ui_trace_ui_01.json",
        "jaeger-ui/ui-trace_TraceGraph_testTrace.json",
    ] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap();
        lines.extend(serde_json::to_vec(&v).unwrap());
        lines.push(b'\n');
    }
    let otlp: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("jaeger/otlp-integration_example_trace.json")).unwrap(),
    )
    .unwrap();
    lines.extend(serde_json::to_vec(&otlp).unwrap());
    lines.push(b'\n');
    std::fs::write(&path, zstd::encode_all(&lines[..], 3).unwrap()).unwrap();
    let p = parse(&path);
    assert_eq!(p.traces.len(), 3);
    assert_eq!(
        p.traces.iter().map(|t| t.spans.len()).sum::<usize>(),
        5 + 11 + 5
    );
}

#[test]
fn a_broken_line_costs_that_line_only_and_is_named() {
    let mut c = TraceCollector::default();
    let good = std::fs::read(fixture("jaeger/v1-ui_trace_ui_01.json")).unwrap();
    let good: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let line = serde_json::to_string(&good).unwrap();
    // A truncated last write, as a killed exporter leaves.
    let input = format!("{line}\n{line}\n{}\n", &line[..line.len() / 2]);
    c.add_input(input.as_bytes()).unwrap();
    let collected = c.finish();
    assert_eq!(collected.traces.len(), 1);
    let (reason, count) = collected.skipped.iter().next().unwrap();
    assert_eq!(*count, 1);
    assert!(reason.contains("line 3"), "{reason}");
}

#[test]
fn zipkin_shared_client_and_server_halves_get_distinct_ids_and_a_proper_tree() {
    // smartthings: 175 spans, of which 45 server halves share their client's id.
    let p = parse(&fixture(
        "zipkin/v2-trace_smartthings-oauth-authorization.json",
    ));
    let spans = &p.traces[0].spans;
    assert_eq!(spans.len(), 175);
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    assert_eq!(
        ids.len(),
        175,
        "every span id is unique once shared halves are split"
    );
    // Every parent exists in the trace (the root has none).
    let roots = spans
        .iter()
        .filter(|s| s.parent.is_none_or(|p| !ids.contains(&p)))
        .count();
    assert_eq!(roots, 1);
    // A server half's parent is its client half, in another service or the same call.
    let shared: Vec<_> = spans
        .iter()
        .filter(|s| s.attribute("zipkin.shared").is_some())
        .collect();
    assert_eq!(shared.len(), 45);
    for s in shared {
        let parent = spans.iter().find(|c| Some(c.span_id) == s.parent).unwrap();
        assert_eq!(parent.kind, SpanKind::Client, "{}", s.operation);
    }
}

#[test]
fn a_span_read_twice_is_kept_once_and_noted() {
    let mut c = TraceCollector::default();
    c.read(open_trace_file(&fixture("jaeger/otlp2jaeger-in.json")).unwrap())
        .unwrap();
    let collected = c.finish();
    assert_eq!(collected.traces[0].spans.len(), 1);
    assert_eq!(
        collected.notes.values().sum::<usize>(),
        1,
        "{:?}",
        collected.notes
    );
}

#[test]
fn a_timestamp_in_the_wrong_unit_is_skipped_with_a_reason_not_trusted() {
    // startTime written in ns where Jaeger means µs: the year 58,000.
    let doc = br#"{"traceID":"1","spans":[{"traceID":"1","spanID":"2","operationName":"op","references":[],
        "startTime":1738766520000000000,"duration":5,"tags":[],"logs":[],"processID":"p1"}],
        "processes":{"p1":{"serviceName":"svc","tags":[]}}}"#;
    let mut c = TraceCollector::default();
    c.add_input(doc).unwrap();
    let collected = c.finish();
    assert!(collected.traces.is_empty());
    let reasons: Vec<&String> = collected.skipped.keys().collect();
    assert!(reasons[0].contains("wrong unit"), "{reasons:?}");
}

#[test]
fn an_otlp_trace_state_is_read_kept_in_the_bundle_and_gives_the_sampling_probability() {
    let line = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"payment"}}]},"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","traceState":"vendor=a,ot=th:c;rv:0123456789abcd","name":"Charge","kind":2,"startTimeUnixNano":"1770300000000000000","endTimeUnixNano":"1770300000020000000"}]}]}]}"#;
    let mut c = TraceCollector::default();
    c.add_input(line).unwrap();
    let traces = c.finish().traces;
    let span = &traces[0].spans[0];
    assert_eq!(
        span.trace_state.as_deref(),
        Some("vendor=a,ot=th:c;rv:0123456789abcd")
    );
    assert_eq!(span.sampling_probability(), Some(0.25));
    let mut out = Vec::new();
    evidence_locker::formats::otlp::write_trace_line(&traces[0], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(r#""traceState":"vendor=a,ot=th:c;rv:0123456789abcd""#),
        "{text}"
    );
}

/// A line of the previous line's format is read by a faster path that does not detect its
/// format; it must give the very trace the detecting reader gives, and refuse (or read) the
/// same lines the same way. A 100,000-deep tag value in particular must be refused, not crash
/// the process: with sonic-rs 0.5.10 on the fast path (11% faster at 1M spans), it overflowed
/// the stack and aborted.
#[test]
fn the_fast_line_parser_reads_every_awkward_line_as_the_detecting_reader_does() {
    let span = |trace: &str, extra_tag: &str, op: &str| {
        format!(
            r#"{{"traceID":"{trace}","spans":[{{"traceID":"{trace}","spanID":"00000000000000a1","operationName":{op},"references":[],"startTime":1700000000000000,"duration":1500,"tags":[{{"key":"error","type":"bool","value":true}}{extra_tag}],"logs":[],"processID":"p1"}}],"processes":{{"p1":{{"serviceName":"checkout","tags":[]}}}}}}"#
        )
    };
    let plain = span("00000000000000000000000000000001", "", r#""GET /""#);
    let tag = |v: &str| format!(r#",{{"key":"k","value":{v}}}"#);
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let awkward: Vec<(&str, Vec<u8>)> = vec![
        (
            "escapes",
            span(
                "0000000000000000000000000000000a",
                "",
                r#""a\"b\\c\u00e9\ud83d\ude00\n""#,
            )
            .into_bytes(),
        ),
        (
            "big integers",
            span(
                "0000000000000000000000000000000b",
                &(tag("9007199254740993")
                    + &tag("18446744073709551615")
                    + &tag("-9223372036854775808")),
                r#""x""#,
            )
            .into_bytes(),
        ),
        (
            "floats",
            span(
                "0000000000000000000000000000000c",
                &(tag("1e308")
                    + &tag("5e-324")
                    + &tag("0.1")
                    + &tag("-0.0")
                    + &tag("1.7976931348623157e308")),
                r#""x""#,
            )
            .into_bytes(),
        ),
        (
            "float out of range",
            span("0000000000000000000000000000000d", &tag("1e400"), r#""x""#).into_bytes(),
        ),
        (
            "nested tag value",
            span(
                "0000000000000000000000000000000e",
                &tag(r#"{"a":[1,{"b":null}],"c":"d"}"#),
                r#""x""#,
            )
            .into_bytes(),
        ),
        (
            "deeply nested tag value",
            span("0000000000000000000000000000000f", &tag(&deep), r#""x""#).into_bytes(),
        ),
        (
            "lone surrogate",
            span("00000000000000000000000000000010", "", r#""\ud800x""#).into_bytes(),
        ),
        (
            "raw control character",
            span("00000000000000000000000000000011", "", "\"a\tb\"").into_bytes(),
        ),
        (
            "trailing garbage",
            (span("00000000000000000000000000000012", "", r#""x""#) + " x").into_bytes(),
        ),
        (
            "duplicate field",
            span(
                "00000000000000000000000000000013",
                "",
                r#""x","operationName":"y""#,
            )
            .into_bytes(),
        ),
        ("invalid UTF-8", {
            let mut b = span("00000000000000000000000000000014", "", r#""x__""#).into_bytes();
            let at = b.windows(3).position(|w| w == b"x__").unwrap();
            b[at + 1] = 0xff;
            b
        }),
    ];
    // After a Zipkin line, a Jaeger line is detected afresh (serde_json); after a Jaeger line,
    // it is read by the fast parser.
    let zipkin = r#"[{"traceId":"00000000000000000000000000000002","id":"00000000000000b1","name":"z","timestamp":1700000000000000,"duration":10,"localEndpoint":{"serviceName":"z"}}]"#;
    let read = |first: &str, line: &[u8]| {
        let mut c = TraceCollector::default();
        c.add_input(&[first.as_bytes(), b"\n", line, b"\n"].concat())
            .unwrap();
        let collected = c.finish();
        let traces: Vec<Trace> = collected
            .traces
            .into_iter()
            .filter(|t| {
                let id = t.id.to_string();
                !id.ends_with("00000001") && !id.ends_with("00000002")
            })
            .collect();
        (traces, collected.skipped)
    };
    for (name, line) in awkward {
        let detected = read(zipkin, &line);
        let fast = read(&plain, &line);
        assert_eq!(detected, fast, "{name}");
    }
}

/// A process seen again is given the resource made of it before, without making it again; one of
/// the same service whose tags differ, if only in type (`"5"` as text, as an int64, as a bool
/// `"true"` against a string `"true"`), gets a resource of its own with its own values.
#[test]
fn processes_of_one_service_share_a_resource_only_when_their_tags_are_the_same() {
    let process = |tags: &str| format!(r#"{{"serviceName":"checkout","tags":[{tags}]}}"#);
    let line = |trace: u32, tags: &str| {
        format!(
            r#"{{"traceID":"{trace:032x}","spans":[{{"traceID":"{trace:032x}","spanID":"00000000000000a1","operationName":"op","references":[],"startTime":1700000000000000,"duration":1500,"tags":[],"logs":[],"processID":"p1"}}],"processes":{{"p1":{}}}}}"#,
            process(tags)
        )
    };
    let processes = [
        r#"{"key":"n","type":"string","value":"5"}"#,
        r#"{"key":"n","type":"int64","value":"5"}"#,
        r#"{"key":"n","type":"string","value":"5"}"#,
        r#"{"key":"n","type":"bool","value":"true"}"#,
        r#"{"key":"n","type":"string","value":"true"}"#,
        r#"{"key":"n","vType":"INT64","vInt64":5}"#,
        r#"{"key":"m","type":"string","value":"5"}"#,
        "",
    ];
    // The first line is read alone (it tells the format); resources are shared within the
    // parts the rest is read in.
    let first = line(99, "").replace("checkout", "frontend") + "\n";
    let file: String = std::iter::once(first)
        .chain(
            processes
                .iter()
                .enumerate()
                .map(|(i, tags)| line(i as u32 + 1, tags) + "\n"),
        )
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    std::fs::write(&path, file).unwrap();
    let parsed = parse(&path);
    assert_eq!(parsed.traces.len(), processes.len() + 1);
    let resources: Vec<_> = parsed.traces[1..]
        .iter()
        .map(|t| t.spans[0].resource.clone())
        .collect();
    let values: Vec<String> = resources
        .iter()
        .map(|r| {
            r.attributes[1..]
                .iter()
                .map(|a| format!("{}={:?}", a.key, a.value))
                .collect()
        })
        .collect();
    assert_eq!(
        values,
        [
            r#"n=Str("5")"#,
            "n=Int(5)",
            r#"n=Str("5")"#,
            "n=Bool(true)",
            r#"n=Str("true")"#,
            "n=Int(5)",
            r#"m=Str("5")"#,
            "",
        ]
    );
    let shared = |a: usize, b: usize| std::sync::Arc::ptr_eq(&resources[a], &resources[b]);
    assert!(
        shared(0, 2) && shared(1, 5),
        "an equal process shares its resource"
    );
    for (a, b) in [(0, 1), (0, 4), (3, 4), (0, 6), (0, 7)] {
        assert!(
            !shared(a, b),
            "processes {a} and {b} differ but share a resource"
        );
    }
}

/// A Jaeger process is read only when its trace is added (one seen before with the same text is
/// not read again), but one that cannot be read still costs its line, named, in JSON Lines, and
/// refuses a whole document without adding any of its traces.
#[test]
fn a_process_that_cannot_be_read_costs_its_line_or_refuses_its_document() {
    let trace = |id: u32, process: &str| {
        format!(
            r#"{{"traceID":"{id:032x}","spans":[{{"traceID":"{id:032x}","spanID":"00000000000000a1","operationName":"op","references":[],"startTime":1700000000000000,"duration":1500,"tags":[],"logs":[],"processID":"p1"}}],"processes":{{"p1":{process}}}}}"#
        )
    };
    let good = r#"{"serviceName":"checkout","tags":[{"key":"host","type":"string","value":"a"}]}"#;
    for bad in [
        r#"{"serviceName":"checkout","tags":5}"#,
        r#"{"serviceName":"checkout","tags":[{"key":5,"type":"string","value":"x"}]}"#,
        "null",
    ] {
        let lines = [trace(1, good), trace(2, bad), trace(3, good)].join("\n") + "\n";
        let mut c = TraceCollector::default();
        c.add_input(lines.as_bytes()).unwrap();
        let collected = c.finish();
        let ids: Vec<String> = collected.traces.iter().map(|t| t.id.to_hex()).collect();
        assert_eq!(ids, [format!("{:032x}", 1), format!("{:032x}", 3)], "{bad}");
        let (reason, count) = collected.skipped.iter().next().unwrap();
        assert_eq!(*count, 1, "{bad}");
        assert!(reason.contains("line 2"), "{bad}: {reason}");
        assert_eq!(
            &*collected.traces[1].spans[0].resource.attributes[1].key,
            "host"
        );

        let document = format!(r#"{{"data":[{},{}]}}"#, trace(1, good), trace(2, bad));
        let mut c = TraceCollector::default();
        let e = c.add_input(document.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("jaeger"), "{bad}: {e}");
        assert!(
            c.finish().traces.is_empty(),
            "{bad}: a trace of it was added"
        );
    }
    // Of several that cannot be read, the error names the first in the document, every time.
    let bad = r#"{"serviceName":"checkout","tags":5}"#;
    let processes: Vec<String> = ["p9", "p1", "p5", "p3", "p7", "p2", "p8", "p4"]
        .iter()
        .map(|id| format!(r#""{id}":{bad}"#))
        .collect();
    let document = trace(1, good).replace(
        &format!(r#""processes":{{"p1":{good}}}"#),
        &format!(r#""processes":{{{}}}"#, processes.join(",")),
    );
    assert!(document.contains(r#""p9":"#), "{document}");
    for _ in 0..32 {
        let e = TraceCollector::default()
            .add_input(document.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"process "p9""#), "{e}");
    }
}
