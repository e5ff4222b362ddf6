//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no network) that an
//! on-call engineer can open from the bundle: summary, timeline, error rate per service over
//! time, propagation graph, latency breakdown, suspects.

use std::fmt::Write as _;

use super::Counts;
use crate::analyze::{Analysis, Timeline};
use crate::capture::Gap;
use crate::model::{Incident, TimeWindow};

pub struct ReportInput<'a> {
    pub incident: &'a Incident,
    pub window: &'a TimeWindow,
    pub capture_id: &'a str,
    pub status: &'a str,
    pub counts: &'a Counts,
    pub gaps: &'a [Gap],
    pub analysis: &'a Analysis,
    pub timeline: &'a Timeline,
    pub trace_url: Option<&'a str>,
    pub redaction: &'a crate::redact::RedactionReport,
}

/// HTML-escapes text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;color:#1d2330;padding:0 .8rem;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}svg{max-width:100%;height:auto}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem}.facts dt{color:#667}.facts dd{margin:0}
.pre{background:#eef;color:#335;border-radius:1rem;padding:0 .5rem;font-size:11px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:13px;display:block;overflow-x:auto}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eef;vertical-align:top}
th{background:#f5f6fa}code{font-size:12px;background:#f2f3f7;padding:0 .2rem;border-radius:3px}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-weight:600;font-size:12px}
.complete{background:#d7f5de;color:#11602a}.partial{background:#ffe6bf;color:#7a4a00}
.origin{background:#fff3f3;border-left:4px solid #d33;padding:.6rem 1rem;margin:1rem 0}
.muted{color:#667}.kind{font-family:monospace;font-size:12px}
.moments{margin:0;padding-left:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
@media (max-width:640px){table.stack,table.stack tbody,table.stack tr,table.stack td{display:block}table.stack tr:first-child{display:none}table.stack tr{border-bottom:1px solid #dde;padding:.4rem 0}table.stack td{border:0;padding:.1rem 0}table.stack td:nth-child(-n+3){display:inline-block;margin-right:.6rem;font-weight:600}}";

/// What happened, in one place at the top: the sentence, origin and top suspect, the times,
/// completeness.
fn summary(h: &mut String, r: &ReportInput<'_>) {
    let draft = super::postmortem::Draft {
        incident: r.incident,
        window: r.window,
        timeline: r.timeline,
        analysis: r.analysis,
        trace_url: r.trace_url,
        status: r.status,
        counts: r.counts,
    };
    let f = draft.facts();
    let i = r.incident;
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("—".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        })
    };
    let _ = write!(
        h,
        "<p class=\"origin\">{}{}</p><dl class=\"facts\">",
        esc(&f.summary.text),
        f.summary
            .evidence
            .map(|(t, s)| format!(
                " <span class=\"muted\">Evidence: {}</span>",
                trace_link(r.trace_url, &t.to_hex(), &s.to_hex())
            ))
            .unwrap_or_default()
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    if let Some(o) = &r.analysis.origin {
        row(
            "origin",
            format!(
                "{} {} ({:.0}% of the evidence)",
                esc(&o.service),
                esc(&o.operation),
                o.confidence * 100.0
            ),
        );
    }
    if let Some(s) = r.analysis.suspects.first() {
        row(
            "top suspect",
            format!(
                "<code>{} = {}</code>: {:.0}% of failing calls, {} of healthy calls in the same minutes, {} before",
                esc(&s.key),
                esc(&s.value),
                s.failing_share * 100.0,
                s.healthy_share
                    .map_or("—".into(), |x| format!("{:.0}%", x * 100.0)),
                s.baseline_share
                    .map_or("—".into(), |x| format!("{:.0}%", x * 100.0)),
            ),
        );
    }
    row("started", when(i.started_at()));
    row(
        "declared",
        format!(
            "{}{}",
            when(Some(i.declared_at())),
            f.time_to_detect
                .as_ref()
                .map(|t| format!(" ({t} after it started)"))
                .unwrap_or_default()
        ),
    );
    row(
        "recovered",
        match &r.analysis.recovery {
            Some(rec) => format!(
                "{}{}",
                when(Some(rec.time)),
                f.time_to_recover
                    .as_ref()
                    .map(|t| format!(" ({t} after it started)"))
                    .unwrap_or_default()
            ),
            None => esc(r
                .analysis
                .recovery_note
                .as_deref()
                .unwrap_or("not at capture time")),
        },
    );
    row(
        "evidence",
        format!(
            "<span class=\"badge {}\">{}</span>{}",
            r.status,
            r.status,
            if r.gaps.is_empty() {
                String::new()
            } else {
                format!(" {} gap(s), listed below", r.gaps.len())
            }
        ),
    );
    for (name, url) in i.links() {
        if url.starts_with("https://") || url.starts_with("http://") {
            row(
                &esc(name),
                format!("<a href=\"{}\">{}</a>", esc(url), esc(url)),
            );
        }
    }
    h.push_str("</dl>");
}

pub fn render(r: &ReportInput<'_>) -> String {
    let i = r.incident;
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{id} evidence</title><style>{STYLE}</style></head><body>",
        id = esc(i.id().as_str())
    );
    let _ = write!(
        h,
        "<h1>{} — {}</h1><p class=\"muted\">Severity {} · window {} → {} UTC · capture <code>{}</code> · <span class=\"badge {}\">{}</span></p>",
        esc(i.id().as_str()),
        esc(i.title().unwrap_or("(untitled)")),
        esc(i.severity().unwrap_or("—")),
        r.window.start().format("%Y-%m-%d %H:%M:%S"),
        r.window.end().format("%Y-%m-%d %H:%M:%S"),
        esc(r.capture_id),
        r.status,
        r.status
    );
    let c = r.counts;
    let _ = write!(
        h,
        "<p>{} traces ({} spans): <b>{}</b> with errors, <b>{}</b> slow, <b>{}</b> baseline, <b>{}</b> more sampled from all traffic during the window.</p>",
        c.traces, c.spans, c.error_traces, c.slow_traces, c.baseline_traces, c.sample_traces
    );
    summary(&mut h, r);
    if r.redaction.enabled {
        let n: usize = r.redaction.rules.values().sum();
        let rules: Vec<String> = r
            .redaction
            .rules
            .iter()
            .map(|(k, v)| format!("{} {v}", esc(k)))
            .collect();
        let _ = write!(
            h,
            "<p class=\"muted\">Redaction: {n} value(s) replaced before anything was written{}.</p>",
            if rules.is_empty() {
                String::new()
            } else {
                format!(" ({})", rules.join(", "))
            }
        );
    } else {
        h.push_str("<p class=\"badge partial\">Redaction was disabled (<code>[redaction] enabled = false</code>): attribute values, messages and names are as the services wrote them.</p>");
    }
    if !r.gaps.is_empty() {
        h.push_str("<h2>Gaps: what could not be captured</h2><ul>");
        for g in r.gaps {
            let _ = write!(
                h,
                "<li><span class=\"kind\">{}</span> {}{}</li>",
                esc(&g.kind),
                g.service
                    .as_deref()
                    .map(|s| format!("<b>{}</b>: ", esc(s)))
                    .unwrap_or_default(),
                esc(&g.message)
            );
        }
        h.push_str("</ul>");
    }

    h.push_str("<h2>Likely origin</h2>");
    match &r.analysis.origin {
        Some(o) => {
            let _ = write!(
                h,
                "<div class=\"origin\"><b>Likely origin: {} — {}</b> (confidence {:.0}%)<br>{}<br><span class=\"muted\">example: {}</span></div>",
                esc(&o.service),
                esc(&o.operation),
                o.confidence * 100.0,
                esc(&o.reason),
                trace_link(r.trace_url, &o.trace_id.to_hex(), &o.span_id.to_hex())
            );
        }
        None => {
            h.push_str("<p class=\"muted\">No origin stands out among the captured errors.</p>")
        }
    }
    if let Some(rec) = &r.analysis.recovery {
        let _ = write!(
            h,
            "<p>Recovered at <b>{}</b> UTC ({}).</p>",
            rec.time.format("%H:%M:%S%.3f"),
            trace_link(r.trace_url, &rec.trace_id.to_hex(), &rec.span_id.to_hex())
        );
    }

    h.push_str("<h2>Timeline</h2><div class=\"scroll\"><table class=\"stack\"><tr><th>time (UTC)</th><th>kind</th><th>service</th><th>what</th><th>trace</th></tr>");
    let pre_existing: std::collections::BTreeSet<&str> = r
        .analysis
        .ranking
        .iter()
        .filter(|c| c.pre_existing)
        .map(|c| c.service.as_str())
        .collect();
    // Moments within a second of each other (a failure crossing four services in 2 ms) share
    // one row: its first time, then each moment with how long after it came.
    let entries = &r.timeline.entries;
    let mut k = 0;
    while k < entries.len() {
        let first = &entries[k];
        let end = k + entries[k..]
            .iter()
            .take_while(|e| e.time - first.time <= chrono::Duration::seconds(1))
            .count();
        let group = &entries[k..end];
        k = end;
        let marker = |e: &crate::analyze::TimelineEntry| {
            if e.kind == "first_error" && pre_existing.contains(e.service.as_str()) {
                " <span class=\"pre\" title=\"failed at a similar rate before the incident\">pre-existing</span>"
            } else {
                ""
            }
        };
        if let [e] = group {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"kind\">{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.time.format("%H:%M:%S%.3f"),
                e.kind,
                marker(e),
                esc(&e.service),
                esc(&e.evidence),
                trace_link(r.trace_url, &e.trace_id.to_hex(), &e.span_id.to_hex())
            );
            continue;
        }
        let mut services: Vec<&str> = Vec::new();
        for e in group {
            if !services.contains(&e.service.as_str()) {
                services.push(&e.service);
            }
        }
        let spread_ms = (group[group.len() - 1].time - first.time)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e3;
        let items: String = group
            .iter()
            .map(|e| {
                let after = (e.time - first.time).num_microseconds().unwrap_or(0) as f64 / 1e3;
                format!(
                    "<li><span class=\"kind\">+{after:.1} ms {}</span>{} {}{}</li>",
                    e.kind,
                    marker(e),
                    esc(&e.evidence),
                    if e.trace_id == first.trace_id {
                        format!(
                            " <span class=\"muted\">span <code>{}</code></span>",
                            e.span_id
                        )
                    } else {
                        format!(
                            " <span class=\"muted\">{}</span>",
                            trace_link(r.trace_url, &e.trace_id.to_hex(), &e.span_id.to_hex())
                        )
                    }
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"kind\">{} moments within {spread_ms:.1} ms</td><td>{}</td><td><ul class=\"moments\">{items}</ul></td><td>{}</td></tr>",
            first.time.format("%H:%M:%S%.3f"),
            group.len(),
            esc(&services.join(", ")),
            trace_link(
                r.trace_url,
                &first.trace_id.to_hex(),
                &first.span_id.to_hex()
            )
        );
    }
    h.push_str("</table></div>");

    h.push_str("<h2>Error rate, p95 latency and request rate per service over time</h2><div class=\"grid\">");
    error_rate_charts(&mut h, r);
    h.push_str("</div>");

    h.push_str("<h2>Propagation</h2>");
    if r.counts.traces == 0 {
        h.push_str("<p class=\"muted\">No traces were captured, so nothing can be said about how a failure spread.</p>");
    } else {
        h.push_str("<div class=\"scroll\">");
        propagation_graph(&mut h, r);
        h.push_str("</div>");
    }

    h.push_str("<h2>Root-cause ranking</h2><table><tr><th>#</th><th>service</th><th>operation</th><th>score</th><th>why</th></tr>");
    for (n, c) in r.analysis.ranking.iter().take(15).enumerate() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            n + 1,
            esc(&c.service),
            esc(&c.operation),
            c.score,
            esc(&c.reason)
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Where time went (failing and slow traces against the baseline)</h2><table><tr><th>service</th><th>operation</th><th>critical path ms per trace</th><th>baseline</th><th>self ms per call</th><th>baseline</th><th>calls</th></tr>");
    for l in r.analysis.latency.iter().take(20) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.service),
            esc(&l.operation),
            l.incident_critical_ms_per_trace,
            l.baseline_critical_ms_per_trace
                .map_or("—".into(), |b| format!("{b:.1}")),
            l.incident_self_ms,
            l.baseline_self_ms.map_or("—".into(), |b| format!("{b:.1}")),
            l.incident_spans
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Suspects</h2>");
    if r.analysis.suspects.is_empty() {
        h.push_str("<p class=\"muted\">No attribute value sets the failing requests apart.</p>");
    } else {
        let share = |x: Option<f64>| x.map_or("—".to_owned(), |x| format!("{:.0}%", x * 100.0));
        if let Some(first) = r.analysis.suspects.first() {
            let _ = write!(
                h,
                "<p class=\"muted\">Among {} failing calls of the origin, {} successful calls in the same minutes and {} before the incident.</p>",
                first.failing_calls, first.healthy_calls, first.baseline_calls
            );
        }
        h.push_str("<table><tr><th>attribute = value</th><th>share of calls: <span style=\"color:#d33\">failing</span> · <span style=\"color:#2a7\">healthy, same minutes</span> · <span style=\"color:#889\">before</span></th><th>lift</th><th>always with</th><th>example failing call</th></tr>");
        for s in r.analysis.suspects.iter().take(10) {
            // BubbleUp-style: the selection (failing) against the healthy and the baseline.
            let bars: String = [
                (Some(s.failing_share), "#d33", "failing"),
                (s.healthy_share, "#2a7", "healthy in the same minutes"),
                (s.baseline_share, "#889", "before the incident"),
            ]
            .iter()
            .enumerate()
            .map(|(k, (v, colour, what))| {
                let v = v.unwrap_or(0.0);
                format!(
                    "<rect x=\"0\" y=\"{}\" width=\"{:.1}\" height=\"6\" fill=\"{colour}\"><title>{what}: {:.0}%</title></rect>",
                    k * 8,
                    (v * 160.0).max(0.5),
                    v * 100.0
                )
            })
            .collect();
            let _ = write!(
                h,
                "<tr><td><code>{} = {}</code></td><td><svg width=\"200\" height=\"24\" viewBox=\"0 0 200 24\" role=\"img\" aria-label=\"failing {:.0}%, healthy {}, before {}\">{bars}<text x=\"166\" y=\"15\" font-size=\"10\" fill=\"#445\">{:.0}%</text></svg><br><span class=\"muted\">{:.0}% · {} · {}</span></td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.key),
                esc(&s.value),
                s.failing_share * 100.0,
                share(s.healthy_share),
                share(s.baseline_share),
                s.failing_share * 100.0,
                s.failing_share * 100.0,
                share(s.healthy_share),
                share(s.baseline_share),
                s.lift,
                esc(&s.also.join(", ")),
                s.example.as_ref().map_or("—".to_owned(), |e| trace_link(
                    r.trace_url,
                    &e.trace_id.to_hex(),
                    &e.span_id.to_hex()
                ))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>How to verify and open this evidence</h2><ul>\
<li><code>manifest.json</code> lists every file of the bundle with its size and SHA-256 (and, where a signing key is configured, an ed25519 signature): <code>evidence-locker audit --store DIR --trusted-keys keys.pem</code> checks them all, or by hand <code>jq -r '.files[] | \"\\(.sha256)  \\(.path)\"' manifest.json | sha256sum -c</code>.</li>\
<li><code>traces/jaeger-ui.json</code> opens in Jaeger UI without any server data: Search → <i>JSON File</i> → choose the file.</li>\
<li><code>evidence-locker replay &lt;bundle&gt; --otlp http://collector:4318</code> sends every trace, with its original ids and times, to the team's Jaeger, Tempo or collector.</li></ul>");
    h.push_str("<p class=\"muted\">Generated by evidence-locker from the captured traces.</p></body></html>\n");
    h
}

/// A trace id in full (copyable), linked to the trace UI when a template is known
/// (`{trace_id}`, `{span_id}`).
fn trace_link(template: Option<&str>, trace_id: &str, span_id: &str) -> String {
    match template {
        Some(t) => format!(
            "<a href=\"{}\"><code>{}</code></a> span <code>{}</code>",
            esc(&t
                .replace("{trace_id}", trace_id)
                .replace("{span_id}", span_id)),
            esc(trace_id),
            esc(span_id)
        ),
        None => format!(
            "<code>{}</code> span <code>{}</code>",
            esc(trace_id),
            esc(span_id)
        ),
    }
}

/// Per service, by impact: the error rate per minute with its 95% interval as a band, p95
/// latency as a line (its own scale, labelled), gridlines and an axis, and marks for when the
/// incident started, was declared and recovered.
fn error_rate_charts(h: &mut String, r: &ReportInput<'_>) {
    let t0 = r.window.start().timestamp() as f64;
    let t1 = (r.window.end().timestamp() as f64).max(t0 + 60.0);
    // Two panels over one time axis: the error rate (with its interval and p95 latency), then
    // the request rate.
    let (w, ht) = (340.0, 196.0);
    let (left, right, top, bottom) = (34.0, 8.0, 10.0, 22.0);
    let (rh, rgap) = (44.0, 12.0);
    let pw = w - left - right;
    let ph = ht - top - bottom - rh - rgap;
    let rtop = top + ph + rgap;
    let x_of = |t: f64| left + (t - t0) / (t1 - t0) * pw;
    let y_of = |rate: f64| top + (1.0 - rate.clamp(0.0, 1.0)) * ph;
    let mut services: Vec<(&String, &crate::analyze::ServiceStats)> =
        r.analysis.services.iter().collect();
    // By impact: most failing requests first.
    services.sort_by(|a, b| {
        b.1.incident
            .error_rate
            .total_cmp(&a.1.incident.error_rate)
            .then(b.1.error_spans.cmp(&a.1.error_spans))
            .then(a.0.cmp(b.0))
    });
    let marks: Vec<(f64, &str, &str)> = [
        (r.incident.started_at(), "started", "#c60"),
        (Some(r.incident.declared_at()), "declared", "#36c"),
        (
            r.analysis.recovery.as_ref().map(|e| e.time),
            "recovered",
            "#2a2",
        ),
    ]
    .into_iter()
    .filter_map(|(t, name, colour)| t.map(|t| (t.timestamp() as f64, name, colour)))
    .filter(|(t, _, _)| (t0..=t1).contains(t))
    .collect();
    for (service, stats) in services {
        if stats.per_minute.is_empty() {
            continue;
        }
        let _ = write!(
            h,
            "<div><b>{}</b> <span class=\"muted\">≈{:.1}% errors during the incident, {} error spans</span><svg width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"error rate, p95 latency and request rate of {}\"><rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"#fafbfd\" stroke=\"#e3e6ee\"/><rect x=\"{left}\" y=\"{rtop}\" width=\"{pw}\" height=\"{rh}\" fill=\"#fafbfd\" stroke=\"#e3e6ee\"/>",
            esc(service),
            (stats.incident.error_rate * 100.0).max(0.0) + 0.0, // never "-0.0"
            stats.error_spans,
            esc(service)
        );
        for g in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let y = y_of(g);
            let _ = write!(
                h,
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e6ee\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"end\" fill=\"#667\">{:.0}%</text>",
                left + pw,
                left - 3.0,
                y + 3.0,
                g * 100.0
            );
        }
        let bar = (pw / ((t1 - t0) / 60.0)).max(1.0);
        for m in &stats.per_minute {
            let x = x_of(m.minute.timestamp() as f64);
            if !(left..left + pw).contains(&x) {
                continue;
            }
            let bw = (bar - 0.5).max(0.5).min(left + pw - x);
            if let Some([lo, hi]) = m.error_rate_ci {
                let _ = write!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#f4b4b4\" opacity=\".6\"/>",
                    y_of(hi),
                    (y_of(lo) - y_of(hi)).max(0.5)
                );
            }
            let y = y_of(m.error_rate);
            let _ = write!(
                h,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#d33\"><title>{} ≈{:.0}% errors{} ({} of {} sampled requests); p95 {}</title></rect>",
                (top + ph - y).max(0.0),
                m.minute.format("%H:%M"),
                m.error_rate * 100.0,
                m.error_rate_ci
                    .map(|c| format!(", 95% CI {:.0}–{:.0}%", c[0] * 100.0, c[1] * 100.0))
                    .unwrap_or_default(),
                m.errors,
                m.requests,
                m.p95_ms.map_or("—".into(), |p| format!("{p:.0} ms"))
            );
        }
        // Requests per minute, on their own scale, under the error rate.
        let max_requests = stats
            .per_minute
            .iter()
            .map(|m| m.requests_weighted)
            .fold(0.0, f64::max);
        if max_requests > 0.0 {
            for m in &stats.per_minute {
                let x = x_of(m.minute.timestamp() as f64);
                if !(left..left + pw).contains(&x) {
                    continue;
                }
                let bw = (bar - 0.5).max(0.5).min(left + pw - x);
                let bh = m.requests_weighted / max_requests * rh;
                let _ = write!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"#7a9cc6\"><title>{} ≈{:.0} requests ({} sampled)</title></rect>",
                    rtop + rh - bh,
                    m.minute.format("%H:%M"),
                    m.requests_weighted,
                    m.requests_sampled
                );
            }
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"end\" fill=\"#667\">{max_requests:.0}/min</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"end\" fill=\"#667\">0</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#445\">requests per minute</text>",
                left - 3.0,
                rtop + 8.0,
                left - 3.0,
                rtop + rh,
                left + 3.0,
                rtop + 9.0
            );
        }
        // p95 latency, on its own scale.
        let p95: Vec<(f64, f64)> = stats
            .per_minute
            .iter()
            .filter_map(|m| {
                m.p95_ms
                    .map(|p| (x_of(m.minute.timestamp() as f64 + 30.0), p))
            })
            .filter(|(x, _)| (left..=left + pw).contains(x))
            .collect();
        let max_p95 = p95.iter().map(|(_, p)| *p).fold(0.0, f64::max);
        if max_p95 > 0.0 && p95.len() > 1 {
            let points: Vec<String> = p95
                .iter()
                .map(|(x, p)| format!("{x:.1},{:.1}", top + (1.0 - p / max_p95) * ph))
                .collect();
            let _ = write!(
                h,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"#345\" stroke-width=\"1.2\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"end\" fill=\"#345\">p95 (line) up to {max_p95:.0} ms</text>",
                points.join(" "),
                left + pw - 2.0,
                top + 9.0
            );
        }
        for (t, name, colour) in &marks {
            let x = x_of(*t);
            let _ = write!(
                h,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-dasharray=\"3,2\"><title>{name}</title></line><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\" fill=\"{colour}\">{name}</text>",
                rtop + rh,
                x + 2.0,
                top + ph - 3.0
            );
        }
        for k in 0..=3 {
            let t = t0 + (t1 - t0) * f64::from(k) / 3.0;
            let label = chrono::DateTime::from_timestamp(t as i64, 0)
                .map(|d| d.format("%H:%M").to_string())
                .unwrap_or_default();
            let anchor = match k {
                0 => "start",
                3 => "end",
                _ => "middle",
            };
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"{anchor}\" fill=\"#667\">{label}</text>",
                x_of(t),
                ht - 8.0
            );
        }
        h.push_str("</svg></div>");
    }
    {
        h.push_str("<p class=\"muted\" style=\"grid-column:1/-1\">Top: error rate per minute (UTC) from the sampled requests, the pale band its 95% interval; line: p95 latency. Bottom: requests per minute in the captured traces, weighted as the error rate is (normal traffic is sampled, at most <code>capture.sample_per_minute</code> traces per minute, so this is a floor on the real rate). Dashed: when the incident started, was declared and recovered.</p>");
    }
}

/// Services laid out in layers: the first row holds the services whose failure came from no
/// failing callee, each next row the callers they failed, at most three to a line so that any
/// number of services fits a phone; below it, every edge in words.
fn propagation_graph(h: &mut String, r: &ReportInput<'_>) {
    let a = r.analysis;
    if a.propagation.is_empty() {
        h.push_str("<p class=\"muted\">No failure crossed from one service to another.</p>");
        return;
    }
    let mut first: std::collections::BTreeMap<&str, Option<chrono::DateTime<chrono::Utc>>> = a
        .propagation
        .iter()
        .flat_map(|p| [p.from.as_str(), p.to.as_str()])
        .map(|s| (s, None))
        .collect();
    for (s, t) in first.iter_mut() {
        *t = a
            .services
            .get(*s)
            .and_then(|st| st.first_error.as_ref())
            .map(|e| e.time);
    }
    // Layer: one more than the deepest failing callee; a cycle stops growing after as many
    // rounds as there are services.
    let mut layer: std::collections::BTreeMap<&str, usize> =
        first.keys().map(|s| (*s, 0)).collect();
    for _ in 0..first.len() {
        let mut changed = false;
        for p in &a.propagation {
            let want = layer[p.to.as_str()] + 1;
            if p.from != p.to && layer[p.from.as_str()] < want && want < first.len() {
                layer.insert(p.from.as_str(), want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: Vec<Vec<&str>> = Vec::new();
    let deepest = layer.values().copied().max().unwrap_or(0);
    for l in 0..=deepest {
        let mut in_layer: Vec<&str> = layer
            .iter()
            .filter(|(_, v)| **v == l)
            .map(|(s, _)| *s)
            .collect();
        in_layer.sort_by_key(|s| (first[s], *s));
        for chunk in in_layer.chunks(3) {
            rows.push(chunk.to_vec());
        }
    }
    let (bw, bh, gap, row_h) = (104.0, 36.0, 12.0, 70.0);
    let width = 3.0 * bw + 4.0 * gap;
    let height = rows.len() as f64 * row_h + 10.0;
    let mut at: std::collections::HashMap<&str, (f64, f64)> = std::collections::HashMap::new();
    for (ri, row) in rows.iter().enumerate() {
        let used = row.len() as f64 * bw + (row.len() as f64 - 1.0) * gap;
        let x0 = (width - used) / 2.0;
        for (ci, s) in row.iter().enumerate() {
            at.insert(s, (x0 + ci as f64 * (bw + gap), 10.0 + ri as f64 * row_h));
        }
    }
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"propagation graph of {} services\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#b33\"/></marker></defs>",
        first.len()
    );
    for p in &a.propagation {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (at.get(p.to.as_str()), at.get(p.from.as_str()))
        else {
            continue;
        };
        // From the failing callee to the caller it failed.
        let (x1, x2) = (fx + bw / 2.0, tx + bw / 2.0);
        let (y1, y2) = if ty > fy {
            (fy + bh, ty)
        } else {
            (fy, ty + bh)
        };
        let bend = if (ty - fy).abs() < 1.0 { -30.0 } else { 0.0 };
        let _ = write!(
            h,
            "<path d=\"M{x1:.0},{y1:.0} C{x1:.0},{:.0} {x2:.0},{:.0} {x2:.0},{y2:.0}\" fill=\"none\" stroke=\"#b33\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"><title>{} → {}: {} trace(s)</title></path>",
            (y1 + y2) / 2.0 + bend,
            (y1 + y2) / 2.0 + bend,
            esc(&p.to),
            esc(&p.from),
            p.traces
        );
    }
    // Row by row, left to right: the same evidence draws the same page.
    for (s, (x, y)) in rows.iter().flatten().filter_map(|s| Some((*s, at.get(s)?))) {
        let label: String = if s.chars().count() > 15 {
            s.chars().take(14).chain(['…']).collect()
        } else {
            (*s).to_owned()
        };
        let _ = write!(
            h,
            "<g><title>{}</title><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\" fill=\"#fff0f0\" stroke=\"#d33\"/><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"11\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"9\" fill=\"#667\">{}</text></g>",
            esc(s),
            x + bw / 2.0,
            y + 15.0,
            esc(&label),
            x + bw / 2.0,
            y + 28.0,
            first[s].map_or("—".to_owned(), |t| t.format("%H:%M:%S%.3f").to_string())
        );
    }
    h.push_str("</svg><p class=\"muted\">Top row: services whose failure came from no failing callee; each arrow runs from a service that failed to the caller it failed, with the time each first failed.</p><table><tr><th>failed</th><th>failed its caller</th><th>first seen (UTC)</th><th>traces</th><th>example</th></tr>");
    for p in &a.propagation {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.to),
            esc(&p.from),
            p.first_seen.format("%H:%M:%S%.3f"),
            p.traces,
            trace_link(r.trace_url, &p.trace_id.to_hex(), &p.span_id.to_hex())
        );
    }
    h.push_str("</table>");
}
