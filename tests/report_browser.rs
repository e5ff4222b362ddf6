//! The report in a real browser: headless Chromium (Debian's, installed by `scripts/test`) renders
//! the demo's report.html in a 390 px frame (a phone; headless windows are at least 500 px wide,
//! so the page is framed) and at 1280 px. Nothing may be wider than the viewport, every section
//! must be there, and a hostile incident's text must never become an element.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(c).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("no Chromium: scripts/test installs Debian's chromium when it is missing");
}

/// Renders `report` in a frame `width` px wide and returns what the page measured
/// (`scrollWidth,clientWidth|h2 texts|img count|script count`) and every network request the
/// page made, read from Chromium's own net log.
fn measure(report: &Path, width: u32) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let harness = dir.path().join("harness.html");
    let net_log = dir.path().join("net-log.json");
    std::fs::write(
        &harness,
        format!(
            r#"<!doctype html><html><body style="margin:0"><iframe id="f" src="file://{}" style="width:{width}px;height:4000px;border:0"></iframe><script>
document.getElementById('f').onload = function () {{
  var d = this.contentDocument;
  var h2 = Array.prototype.map.call(d.querySelectorAll('h2'), function (h) {{ return h.textContent; }});
  document.body.setAttribute('data-m', [d.documentElement.scrollWidth + ',' + d.documentElement.clientWidth, h2.join(';'), d.querySelectorAll('img').length, d.querySelectorAll('script').length].join('|'));
}};
</script></body></html>"#,
            report.display()
        ),
    )
    .unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=5000",
            "--window-size=1400,1000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", harness.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let measured = dom
        .split("data-m=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the frame was not measured: {dom}"))
        .to_owned();
    (measured, page_requests(&net_log))
}

/// The URLs of the requests a page started, from a Chromium net log: the browser's own
/// background requests (component updates and the like) have no origin and are left out.
fn page_requests(net_log: &Path) -> Vec<String> {
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(net_log).expect("Chromium wrote its net log"),
    )
    .expect("the net log is JSON");
    let start = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(start.is_u64(), "the net log names its event types");
    log["events"]
        .as_array()
        .expect("the net log lists events")
        .iter()
        .filter(|e| &e["type"] == start)
        .filter(|e| e["params"]["initiator"] != "not an origin")
        .filter_map(|e| e["params"]["url"].as_str())
        .filter(|url| !url.starts_with("file:") && !url.starts_with("data:"))
        .map(str::to_owned)
        .collect()
}

fn demo_report(dir: &Path) -> PathBuf {
    let out = run_cli(&["demo", "--out", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    PathBuf::from(stdout(&out).lines().next().unwrap())
}

#[test]
fn the_demo_report_fits_a_phone_and_a_desktop_with_every_section_and_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo_report(dir.path());
    let html = std::fs::read_to_string(&report).unwrap();
    // Nothing to fetch: no external resource of any kind.
    for pattern in ["<link", "<script", "<img", "src=", "@import"] {
        assert!(!html.contains(pattern), "the report holds {pattern}");
    }
    // SVG markers refer to the page itself (`url(#arrow)`), never to anything outside it.
    assert!(
        html.match_indices("url(")
            .all(|(i, _)| html[i..].starts_with("url(#")),
        "the report refers to an outside resource"
    );
    for width in [390, 1280] {
        let (m, requests) = measure(&report, width);
        assert!(
            requests.is_empty(),
            "at {width} px the report fetched {requests:?}"
        );
        let parts: Vec<&str> = m.split('|').collect();
        let (scroll, client) = parts[0].split_once(',').unwrap();
        let (scroll, client): (u32, u32) = (scroll.parse().unwrap(), client.parse().unwrap());
        assert!(
            scroll <= client,
            "at {width} px the page is {scroll} px wide for a {client} px viewport"
        );
        for section in [
            "Likely origin",
            "Timeline",
            "Error rate, p95 latency and request rate per service over time",
            "Propagation",
            "Root-cause ranking",
            "Suspects",
            "How to verify and open this evidence",
        ] {
            assert!(
                parts[1].contains(section),
                "{section} missing at {width} px: {m}"
            );
        }
        eprintln!("{width} px: {scroll} px wide in a {client} px viewport");
    }
}

#[test]
fn a_hostile_incident_never_becomes_an_element_of_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    let hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'><b>bold";
    std::fs::write(
        &incident,
        serde_json::json!({
            "id": "INC-XSS", "title": hostile, "severity": hostile,
            "declared_at": "2026-02-05T14:40:00Z", "started_at": "2026-02-05T14:32:00Z",
            "links": {"alert": format!("javascript:alert(3)//{hostile}")},
        })
        .to_string(),
    )
    .unwrap();
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--traces-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/traces.jsonl.zst"),
            "--out",
            dir.path().join("evidence").to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = bundle_dir(&out).join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(!html.contains("javascript:"), "a javascript: link was made");
    let (m, requests) = measure(&report, 1280);
    let parts: Vec<&str> = m.split('|').collect();
    assert_eq!(parts[2], "0", "an <img> element was made: {m}");
    assert_eq!(parts[3], "0", "a <script> element was made: {m}");
    assert!(requests.is_empty(), "the report fetched {requests:?}");
}

#[test]
fn the_net_log_catches_a_page_that_fetches_something() {
    // The control for the checks above: a page that loads one image from outside is seen doing
    // so (the name never resolves; the request is logged before that).
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("fetches.html");
    std::fs::write(
        &page,
        "<!doctype html><h2>Timeline</h2><img src=\"http://example.invalid/x.png\">",
    )
    .unwrap();
    let (m, requests) = measure(&page, 1280);
    assert!(m.contains("Timeline"), "{m}");
    assert_eq!(requests, ["http://example.invalid/x.png"], "{m}");
}
