//! Hostile input: a corpus of hand-made malformed inputs for every parser that takes data from
//! outside the process (incident messages, Alertmanager and PagerDuty webhooks, every trace
//! format through a whole `collect`). Each is refused with an error that says what is wrong, or
//! read with what it lacked named in the bundle; none panics, overflows the stack (each runs on
//! a 2 MiB thread, as tokio's workers have) or takes memory out of proportion to its size.

use std::path::Path;

mod support;

use chrono::{TimeZone, Utc};
use evidence_locker::config::{IntakeSettings, Settings};
use evidence_locker::intake::{alertmanager, pagerduty};
use evidence_locker::model::Incident;

/// What a case must come to: refused with an error containing the text, or accepted with the
/// text in what it produced (for traces, the bundle's manifest, where gaps and notes are).
#[derive(Clone, Copy, Debug)]
enum Want {
    Refused(&'static str),
    Accepted(&'static str),
}
use Want::{Accepted, Refused};

struct Case {
    name: String,
    input: Vec<u8>,
    want: Want,
}

fn case(name: impl Into<String>, input: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name: name.into(),
        input: input.into(),
        want,
    }
}

/// Runs `parse` on every case, each on its own 2 MiB thread; returns the failures, one line each.
fn run_corpus(
    cases: Vec<Case>,
    parse: fn(&[u8]) -> Result<String, String>,
) -> (usize, Vec<String>) {
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let size = c.input.len();
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let got = std::panic::catch_unwind(|| parse(&c.input));
                (c.name, c.want, got)
            })
            .unwrap()
            .join()
            .unwrap();
        let (name, want, got) = outcome;
        let ok = match (&got, want) {
            (Err(_), _) => {
                failures.push(format!("{name} ({size} bytes): panicked"));
                continue;
            }
            (Ok(Err(e)), Refused(text)) => !e.trim().is_empty() && e.contains(text),
            (Ok(Ok(out)), Accepted(text)) => out.contains(text),
            _ => false,
        };
        if !ok {
            let got = match got {
                Ok(Ok(out)) => format!("accepted: {}", clip(&out)),
                Ok(Err(e)) => format!("refused: {}", clip(&e)),
                Err(_) => unreachable!(),
            };
            failures.push(format!("{name}: wanted {want:?}, {got}"));
        }
    }
    (n, failures)
}

fn clip(s: &str) -> String {
    s.chars().take(400).collect()
}

fn check(what: &str, cases: Vec<Case>, parse: fn(&[u8]) -> Result<String, String>) -> usize {
    let (n, failures) = run_corpus(cases, parse);
    assert!(
        failures.is_empty(),
        "{what}: {} of {n} cases went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

/// Nesting `depth` deep: `[[[…1…]]]`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// The same bytes with the first `marker` replaced by a byte that is not UTF-8.
fn with_invalid_utf8(s: &str, marker: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    let at = s.find(marker).expect("marker");
    b[at] = 0xff;
    b
}

const HUNDRED_MB: usize = 100 << 20;

fn settings() -> Settings {
    Settings::load(None).unwrap()
}

fn intake_settings() -> IntakeSettings {
    settings().intake
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Incident messages (the queue's `incidents.declared`, `collect --incident FILE`).

fn incident(fields: &str) -> String {
    format!(r#"{{"id":"INC-1","declared_at":"2026-03-01T12:00:00Z"{fields}}}"#)
}

fn parse_incident(bytes: &[u8]) -> Result<String, String> {
    Incident::parse(bytes)
        .map(|i| format!("{} {:?}", i.id().as_str(), i.window()))
        .map_err(|e| e.to_string())
}

#[test]
fn malformed_incident_messages_are_refused_with_a_reason() {
    let huge_title = incident(&format!(r#","title":"{}""#, "x".repeat(HUNDRED_MB)));
    let many_services = incident(&format!(
        r#","services":[{}]"#,
        (0..100_000)
            .map(|i| format!(r#""svc-{i}""#))
            .collect::<Vec<_>>()
            .join(",")
    ));
    let cases = vec![
        case("empty", "", Refused("EOF")),
        case("whitespace", "  \n\t ", Refused("EOF")),
        case(
            "not JSON",
            "incident INC-1 declared",
            Refused("not valid JSON"),
        ),
        case("null", "null", Refused("object")),
        case("a list", "[1,2]", Refused("object")),
        case("a string", r#""INC-1""#, Refused("object")),
        case("truncated", &incident("")[..30], Refused("EOF")),
        case(
            "deeply nested",
            nested(100_000),
            Refused("expected a JSON object"),
        ),
        case(
            "deeply nested field",
            incident(&format!(r#","labels":{}"#, nested(100_000))),
            Refused("invalid type"),
        ),
        case(
            "no id",
            r#"{"declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("id"),
        ),
        case(
            "id not text",
            r#"{"id":42,"declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("invalid type"),
        ),
        case(
            "empty id",
            r#"{"id":"","declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("id"),
        ),
        case(
            "id with a slash",
            r#"{"id":"../../etc/passwd","declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("id"),
        ),
        case(
            "id of 1 MB",
            format!(
                r#"{{"id":"{}","declared_at":"2026-03-01T12:00:00Z"}}"#,
                "A".repeat(1 << 20)
            ),
            Refused("id"),
        ),
        case(
            "no declared_at",
            r#"{"id":"INC-1"}"#,
            Refused("declared_at"),
        ),
        case(
            "declared_at before 1970",
            r#"{"id":"INC-1","declared_at":"1969-12-31T23:59:59Z"}"#,
            Refused("declared_at"),
        ),
        case(
            "declared_at in year 0001",
            r#"{"id":"INC-1","declared_at":"0001-01-01T00:00:00Z"}"#,
            Refused("declared_at"),
        ),
        case(
            "declared_at in year 9999",
            r#"{"id":"INC-1","declared_at":"9999-12-31T23:59:59Z"}"#,
            Refused("declared_at"),
        ),
        case(
            "declared_at as a number",
            r#"{"id":"INC-1","declared_at":1772366400}"#,
            Refused("invalid type"),
        ),
        case(
            "declared_at NaN",
            r#"{"id":"INC-1","declared_at":NaN}"#,
            Refused("expected value"),
        ),
        case(
            "declared_at not a time",
            r#"{"id":"INC-1","declared_at":"yesterday"}"#,
            Refused("input contains invalid characters"),
        ),
        case(
            "huge number",
            incident(r#","severity":1e999"#),
            Refused("number out of range"),
        ),
        case(
            "inverted window",
            incident(r#","window":{"start":"2026-03-01T12:00:00Z","end":"2026-03-01T11:00:00Z"}"#),
            Refused("window"),
        ),
        case(
            "empty window",
            incident(r#","window":{"start":"2026-03-01T12:00:00Z","end":"2026-03-01T12:00:00Z"}"#),
            Refused("window"),
        ),
        case(
            "window from 1970",
            incident(r#","window":{"start":"1970-01-01T00:00:00Z","end":"2026-03-01T12:00:00Z"}"#),
            Refused("window"),
        ),
        case(
            "window without end",
            incident(r#","window":{"start":"2026-03-01T11:00:00Z"}"#),
            Refused("end"),
        ),
        case(
            "services not a list",
            incident(r#","services":"checkout""#),
            Refused("invalid type"),
        ),
        case(
            "labels not text",
            incident(r#","labels":{"team":7}"#),
            Refused("invalid type"),
        ),
        case(
            "invalid UTF-8",
            with_invalid_utf8(&incident(r#","title":"broken Xtitle""#), "X"),
            Refused("invalid unicode"),
        ),
        case(
            "lone surrogate",
            incident(r#","title":"\ud800""#),
            Refused("hex escape"),
        ),
        case(
            "a NUL in the id",
            r#"{"id":"INC\u00001","declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("id"),
        ),
        case(
            "duplicate id",
            r#"{"id":"INC-1","id":"INC-2","declared_at":"2026-03-01T12:00:00Z"}"#,
            Refused("duplicate"),
        ),
        case("trailing garbage", incident("") + "}", Refused("trailing")),
        // Large but well formed: read, in memory proportional to its size.
        case("100 MB title", huge_title, Accepted("INC-1")),
        case("100k services", many_services, Accepted("INC-1")),
    ];
    let n = check("incident", cases, parse_incident);
    assert!(n >= 30);
}

// ---------------------------------------------------------------------------------------------
// Alertmanager webhooks.

fn alertmanager_body(alerts: &str) -> String {
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"HighErrorRate\"}}","status":"firing","receiver":"evidence","groupLabels":{{}},"commonLabels":{{"alertname":"HighErrorRate","service":"checkout"}},"commonAnnotations":{{}},"externalURL":"http://am","alerts":[{alerts}]}}"#
    )
}

const ALERT: &str = r#"{"status":"firing","labels":{"alertname":"HighErrorRate"},"annotations":{},"startsAt":"2026-03-01T11:55:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom"}"#;

/// What a webhook came to: the subject, incident id, start and services it would publish, the
/// reason it was ignored, or the error.
fn webhook_outcome(
    r: Result<alertmanager::Outcome, alertmanager::PayloadError>,
) -> Result<String, String> {
    match r {
        Ok(alertmanager::Outcome::Publish(subject, incident)) => Ok(format!(
            "{subject} {} started {:?} {:?}",
            incident.id().as_str(),
            incident.started_at(),
            incident.services()
        )),
        Ok(alertmanager::Outcome::Ignored(why)) => Ok(format!("ignored: {why}")),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_alertmanager(bytes: &[u8]) -> Result<String, String> {
    webhook_outcome(alertmanager::to_incident(bytes, &intake_settings(), now()))
}

#[test]
fn malformed_alertmanager_webhooks_are_refused_with_a_reason() {
    let many = alertmanager_body(&vec![ALERT; 100_000].join(","));
    let cases = vec![
        case(
            "well formed",
            alertmanager_body(ALERT),
            Accepted("incidents.declared"),
        ),
        case("empty", "", Refused("EOF")),
        case(
            "not JSON",
            "<html>502 Bad Gateway</html>",
            Refused("expected value"),
        ),
        case(
            "a list",
            "[]",
            Refused("not a valid Alertmanager webhook payload: expected a JSON object"),
        ),
        case(
            "deeply nested",
            nested(100_000),
            Refused("expected a JSON object"),
        ),
        case(
            "deeply nested label",
            alertmanager_body(&ALERT.replace(
                r#""annotations":{}"#,
                &format!(r#""annotations":{}"#, nested(100_000)),
            )),
            Accepted("incidents.declared"),
        ),
        case(
            "no groupKey",
            alertmanager_body(ALERT).replace("groupKey", "groupKay"),
            Refused("groupKey"),
        ),
        case(
            "status unknown",
            alertmanager_body(ALERT).replace(
                r#""status":"firing","receiver""#,
                r#""status":"pending","receiver""#,
            ),
            Refused("status"),
        ),
        case(
            "no status",
            alertmanager_body(ALERT).replace(r#""status":"firing","receiver""#, r#""receiver""#),
            Refused("status"),
        ),
        case("no alerts", alertmanager_body(""), Refused("no alerts")),
        case(
            "alerts not a list",
            alertmanager_body(ALERT).replace(&format!("[{ALERT}]"), "{}"),
            Refused("invalid type"),
        ),
        case(
            "label not text",
            alertmanager_body(&ALERT.replace(r#""alertname":"HighErrorRate""#, r#""alertname":5"#)),
            Refused("invalid type"),
        ),
        case(
            "startsAt before 1970",
            alertmanager_body(&ALERT.replace("2026-03-01T11:55:00Z", "1960-01-01T00:00:00Z")),
            Accepted("started None"),
        ),
        case(
            "startsAt not a time",
            alertmanager_body(&ALERT.replace("2026-03-01T11:55:00Z", "soon")),
            Refused("invalid"),
        ),
        case(
            "startsAt NaN",
            alertmanager_body(&ALERT.replace(r#""2026-03-01T11:55:00Z""#, "NaN")),
            Refused("expected value"),
        ),
        case(
            "huge number in a field not read",
            alertmanager_body(&ALERT.replace(
                r#""annotations":{}"#,
                r#""annotations":{},"fingerprint":1e999"#,
            )),
            Accepted("incidents.declared"),
        ),
        case(
            "invalid UTF-8",
            with_invalid_utf8(&alertmanager_body(ALERT), "HighErrorRate"),
            Refused("invalid unicode"),
        ),
        case(
            "groupKey of 1 MB",
            alertmanager_body(ALERT).replace(
                r#""groupKey":"{}"#,
                &format!(r#""groupKey":"{}"#, "k".repeat(1 << 20)),
            ),
            Accepted("incidents.declared"),
        ),
        case("100k alerts", many, Accepted("incidents.declared")),
    ];
    check("alertmanager", cases, parse_alertmanager);
}

// ---------------------------------------------------------------------------------------------
// PagerDuty v3 webhooks.

fn pagerduty_body(event_type: &str, data: &str) -> String {
    format!(
        r#"{{"event":{{"id":"01DEN","event_type":"{event_type}","resource_type":"incident","occurred_at":"2026-03-01T11:58:00Z","agent":null,"client":null,"data":{data}}}}}"#
    )
}

const PD_DATA: &str = r#"{"id":"PGR0VU2","type":"incident","title":"Checkout errors","service":{"id":"PF9KMXH","summary":"checkout","type":"service_reference"},"urgency":"high","priority":null}"#;

fn parse_pagerduty(bytes: &[u8]) -> Result<String, String> {
    webhook_outcome(pagerduty::to_incident(bytes, &intake_settings(), now()))
}

#[test]
fn malformed_pagerduty_webhooks_are_refused_with_a_reason() {
    let cases = vec![
        case(
            "well formed",
            pagerduty_body("incident.triggered", PD_DATA),
            Accepted("PGR0VU2"),
        ),
        case("empty", "", Refused("EOF")),
        case("not JSON", "ok", Refused("expected")),
        case(
            "deeply nested",
            nested(100_000),
            Refused("expected a JSON object"),
        ),
        case(
            "deeply nested data",
            pagerduty_body(
                "incident.triggered",
                &PD_DATA.replace(
                    r#""priority":null"#,
                    &format!(r#""priority":null,"x":{}"#, nested(100_000)),
                ),
            ),
            Accepted("PGR0VU2"),
        ),
        case("no event", r#"{"events":[]}"#, Refused("event")),
        case(
            "another event type",
            pagerduty_body("incident.acknowledged", PD_DATA),
            Accepted("ignored: event type incident.acknowledged"),
        ),
        case(
            "no data",
            pagerduty_body("incident.triggered", "null"),
            Refused("not a valid PagerDuty v3 webhook payload: the event has no `data`"),
        ),
        case(
            "id with spaces",
            pagerduty_body("incident.triggered", &PD_DATA.replace("PGR0VU2", "P GR")),
            Refused("id"),
        ),
        case(
            "id of 1 MB",
            pagerduty_body(
                "incident.triggered",
                &PD_DATA.replace("PGR0VU2", &"P".repeat(1 << 20)),
            ),
            Refused("id"),
        ),
        case(
            "occurred_at before 1970",
            pagerduty_body("incident.triggered", PD_DATA)
                .replace("2026-03-01T11:58:00Z", "1969-07-20T20:17:00Z"),
            Refused("1990"),
        ),
        case(
            "occurred_at not a time",
            pagerduty_body("incident.triggered", PD_DATA).replace("2026-03-01T11:58:00Z", "now"),
            Refused("invalid"),
        ),
        case(
            "service summary not text",
            pagerduty_body(
                "incident.triggered",
                &PD_DATA.replace(r#""summary":"checkout""#, r#""summary":["checkout"]"#),
            ),
            Refused("invalid type"),
        ),
        case(
            "invalid UTF-8",
            with_invalid_utf8(&pagerduty_body("incident.triggered", PD_DATA), "Checkout"),
            Refused("invalid unicode"),
        ),
        case(
            "huge number in a field not read",
            pagerduty_body(
                "incident.triggered",
                &PD_DATA.replace(r#""priority":null"#, r#""priority":null,"n":-1e999"#),
            ),
            Accepted("PGR0VU2"),
        ),
    ];
    check("pagerduty", cases, parse_pagerduty);
}

// ---------------------------------------------------------------------------------------------
// Trace files, each through a whole `collect` (read, analysed, written as a bundle).

fn collect_bytes(bytes: &[u8]) -> Result<String, String> {
    support::collect_bytes(bytes, now())
}

/// A Jaeger UI trace with one span whose fields are `span` (JSON members after the ids).
fn jaeger(trace_id: &str, span_id: &str, span: &str) -> String {
    format!(
        r#"{{"traceID":"{trace_id}","spans":[{{"traceID":"{trace_id}","spanID":"{span_id}","operationName":"GET /cart","references":[],{span},"processID":"p1"}}],"processes":{{"p1":{{"serviceName":"checkout","tags":[]}}}}}}"#
    )
}

const TID: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const SID: &str = "051581bf3cb55c13";
const TIMES: &str = r#""startTime":1772366400000000,"duration":1500,"tags":[{"key":"error","type":"bool","value":true}],"logs":[]"#;

fn good() -> String {
    jaeger(TID, SID, TIMES)
}

/// A file of the good trace followed by `line`: the good one gives the window, the bad one
/// must be named as what was not read.
fn after_good(line: &str) -> String {
    format!("{}\n{line}\n", good())
}

fn otlp(span: &str) -> String {
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"checkout"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{TID}","spanId":"{SID}","name":"GET /cart",{span}}}]}}]}}]}}"#
    )
}

fn zipkin(span: &str) -> String {
    format!(
        r#"[{{"traceId":"{TID}","id":"{SID}","name":"get /cart","localEndpoint":{{"serviceName":"checkout"}},{span}}}]"#
    )
}

#[test]
fn malformed_trace_files_are_refused_or_their_bad_parts_named() {
    let hundred_k_services = {
        let processes: Vec<String> = (0..100_000)
            .map(|i| format!(r#""p{i}":{{"serviceName":"svc-{i}","tags":[]}}"#))
            .collect();
        let spans: Vec<String> = (0..100_000)
            .map(|i| {
                format!(
                    r#"{{"traceID":"{TID}","spanID":"{:016x}","operationName":"op","references":[],"startTime":{},"duration":1000,"tags":[],"logs":[],"processID":"p{i}"}}"#,
                    i + 1,
                    1772366400000000i64 + i as i64
                )
            })
            .collect();
        format!(
            r#"{{"traceID":"{TID}","spans":[{}],"processes":{{{}}}}}"#,
            spans.join(","),
            processes.join(",")
        )
    };
    let huge_tag = jaeger(
        TID,
        SID,
        &TIMES.replace(
            r#""tags":["#,
            &format!(
                r#""tags":[{{"key":"blob","type":"string","value":"{}"}},"#,
                "x".repeat(HUNDRED_MB)
            ),
        ),
    );
    let zstd_garbage = [&[0x28u8, 0xB5, 0x2F, 0xFD][..], b"not really zstd at all"].concat();
    let truncated_zstd = {
        let z = zstd::encode_all(good().as_bytes(), 3).unwrap();
        z[..z.len() / 2].to_vec()
    };
    let cycle = format!(
        r#"{{"traceID":"{TID}","spans":[{{"traceID":"{TID}","spanID":"00000000000000a1","operationName":"a","references":[{{"refType":"CHILD_OF","traceID":"{TID}","spanID":"00000000000000a2"}}],{TIMES},"processID":"p1"}},{{"traceID":"{TID}","spanID":"00000000000000a2","operationName":"b","references":[{{"refType":"CHILD_OF","traceID":"{TID}","spanID":"00000000000000a1"}}],{TIMES},"processID":"p1"}}],"processes":{{"p1":{{"serviceName":"checkout","tags":[]}}}}}}"#
    );
    let own_parent = jaeger(
        TID,
        SID,
        &format!(
            r#""references":[{{"refType":"CHILD_OF","traceID":"{TID}","spanID":"{SID}"}}],{TIMES}"#
        )
        .replacen(r#""references":[],"#, "", 1),
    )
    .replacen(r#""references":[],"#, "", 1);
    let cases = vec![
        case("well formed", good(), Accepted("\"spans read\":1")),
        case("empty", "", Refused("empty input")),
        case("blank lines", "\n\n  \n", Refused("empty input")),
        case("not JSON", "GET /api/traces HTTP/1.1", Refused("JSON")),
        case("binary garbage", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>(), Refused("hostile.jsonl")),
        case("null", "null", Refused("hostile.jsonl")),
        case("an empty object", "{}", Refused("hostile.jsonl")),
        case("an empty list", "[]", Refused("no usable spans")),
        case("deeply nested document", nested(100_000), Refused("hostile.jsonl")),
        case("deeply nested tag value", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace(r#""value":true"#, &format!(r#""value":{}"#, nested(100_000))))), Accepted("line 2")),
        case("deeply nested OTLP attribute", after_good(&otlp(&format!(r#""startTimeUnixNano":"1772366400000000000","endTimeUnixNano":"1772366400001000000","attributes":[{{"key":"k","value":{}}}]"#, nested(100_000)))), Accepted("line 2")),
        case("truncated line", after_good(&good()[..good().len() / 2]), Accepted("line 2")),
        case("zstd magic, then garbage", zstd_garbage, Refused("hostile.jsonl")),
        case("truncated zstd", truncated_zstd, Refused("hostile.jsonl")),
        case("invalid UTF-8 in a name", after_good(&String::from_utf8_lossy(&with_invalid_utf8(&jaeger(TID, "00000000000000a9", TIMES).replace("GET /cart", "GET /Xcart"), "X"))), Accepted("\"spans read\":2")),
        case("invalid UTF-8 bytes", [good().as_bytes(), b"\n", &with_invalid_utf8(&jaeger(TID, "00000000000000a9", TIMES).replace("GET /cart", "GET /Xcart"), "X")].concat(), Accepted("line 2")),
        case("start time 1e999", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", "1e999"))), Accepted("line 2")),
        case("start time beyond i64", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", "99999999999999999999999"))), Accepted("dated before 1990")),
        case("start time NaN", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", "NaN"))), Accepted("line 2")),
        case("start time \"NaN\"", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", r#""NaN""#))), Accepted("line 2")),
        case("start time before 1970", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", "-1000000"))), Accepted("\"spans kept\":1")),
        case("start time 0", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("1772366400000000", "0"))), Accepted("\"spans kept\":1")),
        case("negative duration", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("\"duration\":1500", "\"duration\":-1500"))), Accepted("\"spans read\":2")),
        case("duration 1e999", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("\"duration\":1500", "\"duration\":1e999"))), Accepted("line 2")),
        case("duration of a century", after_good(&jaeger(TID, "00000000000000a9", &TIMES.replace("\"duration\":1500", "\"duration\":3155760000000000"))), Accepted("\"spans read\":2")),
        case("trace id too short", after_good(&jaeger("abc", "00000000000000a9", TIMES)), Accepted("\"spans read\":2")),
        case("trace id too long", after_good(&jaeger(&"a".repeat(40), "00000000000000a9", TIMES)), Accepted("\"spans read\":2")),
        case("trace id of 1 MB", after_good(&jaeger(&"a".repeat(1 << 20), "00000000000000a9", TIMES)), Accepted("\"spans read\":2")),
        case("span id too long", after_good(&jaeger(TID, &"b".repeat(33), TIMES)), Accepted("\"spans read\":2")),
        case("empty ids", after_good(&jaeger("", "", TIMES)), Accepted("without a trace or span id")),
        case("a span its own parent", own_parent, Accepted("\"spans read\":1")),
        case("two spans each other's parent", cycle, Accepted("\"spans read\":2")),
        case("span of an unknown process", after_good(&jaeger(TID, "00000000000000a9", TIMES).replace(r#""processID":"p1""#, r#""processID":"p9""#)), Accepted("processID")),
        case("OTLP end before start", otlp(r#""startTimeUnixNano":"1772366400001000000","endTimeUnixNano":"1772366400000000000""#), Accepted("\"spans read\":1")),
        case("OTLP time not a number", after_good(&otlp(r#""startTimeUnixNano":"soon","endTimeUnixNano":"1772366400000000000""#)), Accepted("line 2")),
        case("OTLP negative time", after_good(&otlp(r#""startTimeUnixNano":"-5","endTimeUnixNano":"-1""#)), Accepted("dated before 1990")),
        // Short ids are right-aligned, as the 64-bit ids of Jaeger and Zipkin are; longer are not.
        case("OTLP base64 id shorter than 16 bytes", otlp(r#""startTimeUnixNano":"1772366400000000000","endTimeUnixNano":"1772366400001000000""#).replace(TID, "AAE+"), Accepted("\"spans read\":1")),
        case("OTLP base64 id longer than 16 bytes", after_good(&otlp(r#""startTimeUnixNano":"1772366400000000000","endTimeUnixNano":"1772366400001000000""#).replace(TID, "AAECAwQFBgcICQoLDA0ODxAREhM=")), Accepted("wrong length")),
        case("Zipkin negative timestamp", zipkin(r#""timestamp":-5,"duration":10"#), Refused("zero or negative")),
        case("Zipkin duration NaN", after_good(&zipkin(r#""timestamp":1772366400000000,"duration":"NaN""#)), Accepted("line 2")),
        case("Zipkin without a time", format!("{}\n{}", good(), zipkin(r#""duration":10"#)), Accepted("without a timestamp")),
        case("Zipkin tag value not text", after_good(&zipkin(r#""timestamp":1772366400000000,"duration":10,"tags":{"error":{"a":1}}"#)), Accepted("line 2")),
        case("100k services", hundred_k_services, Accepted("\"spans read\":100000")),
        case("100 MB tag value", huge_tag, Accepted("\"spans read\":1")),
    ];
    let n = check("trace files", cases, collect_bytes);
    assert!(n >= 40);
}

/// Every input the fuzzers crashed on (kept by `scripts/fuzz` under `fuzz/regressions/TARGET/`)
/// goes through the same call again, on a 2 MiB thread, and must return. The hand-made corpus
/// above is fed to the same calls too, so that the replay itself is known to run.
#[test]
fn inputs_the_fuzzers_crashed_on_are_read_or_refused_now() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (target, run) in evidence_locker::fuzzing::TARGETS {
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            nested(100_000).into_bytes(),
            good().into_bytes(),
        ];
        if let Ok(dir) = std::fs::read_dir(root.join(target)) {
            inputs.extend(dir.map(|e| std::fs::read(e.unwrap().path()).unwrap()));
        }
        for input in inputs {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || run(&input))
                .unwrap()
                .join()
                .unwrap_or_else(|_| panic!("{target}: an input made it panic"));
            replayed += 1;
        }
    }
    assert!(replayed >= 15);
}
