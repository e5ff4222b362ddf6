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
table{border-collapse:collapse;width:100%;font-size:13px;display:block;overflow-x:auto}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eef}
th{background:#f5f6fa}code{font-size:12px;background:#f2f3f7;padding:0 .2rem;border-radius:3px}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-weight:600;font-size:12px}
.complete{background:#d7f5de;color:#11602a}.partial{background:#ffe6bf;color:#7a4a00}
.origin{background:#fff3f3;border-left:4px solid #d33;padding:.6rem 1rem;margin:1rem 0}
.muted{color:#667}.kind{font-family:monospace;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}";

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
        "<p class=\"origin\">{}</p><dl class=\"facts\">",
        esc(&f.summary)
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

    h.push_str("<h2>Summary</h2>");
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

    h.push_str("<h2>Timeline</h2><div class=\"scroll\"><table><tr><th>time (UTC)</th><th>kind</th><th>service</th><th>what</th><th>trace</th></tr>");
    let pre_existing: std::collections::BTreeSet<&str> = r
        .analysis
        .ranking
        .iter()
        .filter(|c| c.pre_existing)
        .map(|c| c.service.as_str())
        .collect();
    for e in &r.timeline.entries {
        let marker = if e.kind == "first_error" && pre_existing.contains(e.service.as_str()) {
            " <span class=\"pre\" title=\"failed at a similar rate before the incident\">pre-existing</span>"
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"kind\">{}{marker}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.time.format("%H:%M:%S%.3f"),
            e.kind,
            esc(&e.service),
            esc(&e.evidence),
            trace_link(r.trace_url, &e.trace_id.to_hex(), &e.span_id.to_hex())
        );
    }
    h.push_str("</table></div>");

    h.push_str("<h2>Error rate per service over time</h2><div class=\"grid\">");
    error_rate_charts(&mut h, r);
    h.push_str("</div>");

    h.push_str("<h2>Propagation</h2>");
    if r.counts.traces == 0 {
        h.push_str("<p class=\"muted\">No traces were captured, so nothing can be said about how a failure spread.</p>");
    } else {
        h.push_str("<div class=\"scroll\">");
        propagation_graph(&mut h, r.analysis);
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
        h.push_str("<table><tr><th>attribute</th><th>value</th><th>failing</th><th>healthy, same minutes</th><th>baseline</th><th>lift</th><th>always with</th></tr>");
        for s in &r.analysis.suspects {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.0}%</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                esc(&s.key),
                esc(&s.value),
                s.failing_share * 100.0,
                share(s.healthy_share),
                share(s.baseline_share),
                s.lift,
                esc(&s.also.join(", "))
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

fn error_rate_charts(h: &mut String, r: &ReportInput<'_>) {
    let start = r.window.start().timestamp() / 60;
    let end = (r.window.end().timestamp() + 59) / 60;
    let minutes = (end - start).clamp(1, 24 * 60) as f64;
    let (w, ht) = (320.0, 90.0);
    // Services by impact: most failing requests first.
    let mut services: Vec<(&String, &crate::analyze::ServiceStats)> =
        r.analysis.services.iter().collect();
    services.sort_by(|a, b| {
        b.1.incident
            .error_rate
            .total_cmp(&a.1.incident.error_rate)
            .then(b.1.error_spans.cmp(&a.1.error_spans))
            .then(a.0.cmp(b.0))
    });
    for (service, stats) in services {
        if stats.per_minute.is_empty() {
            continue;
        }
        let _ = write!(
            h,
            "<div><b>{}</b> <span class=\"muted\">{} error spans</span><svg width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"error rate of {}\"><rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{ht}\" fill=\"#fafbfd\" stroke=\"#e3e6ee\"/>",
            esc(service),
            stats.error_spans,
            esc(service)
        );
        let bar = (w / minutes).max(1.0);
        for m in &stats.per_minute {
            let x = ((m.minute.timestamp() / 60 - start) as f64 / minutes) * w;
            if !(0.0..w).contains(&x) {
                continue;
            }
            let rate = m.error_rate;
            let bh = rate * (ht - 10.0);
            let _ = write!(
                h,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#d33\"><title>{} ≈{:.0}% errors ({} of {} sampled requests)</title></rect>",
                ht - bh,
                (bar - 0.5).max(0.5),
                m.minute.format("%H:%M"),
                rate * 100.0,
                m.errors,
                m.requests
            );
        }
        let _ = write!(
            h,
            "</svg><div class=\"muted\" style=\"display:flex;justify-content:space-between;width:{w}px;font-size:11px\"><span>{}</span><span>error rate per minute (bar height = 100%)</span><span>{}</span></div></div>",
            r.window.start().format("%H:%M"),
            r.window.end().format("%H:%M")
        );
    }
}

fn propagation_graph(h: &mut String, a: &Analysis) {
    if a.propagation.is_empty() {
        h.push_str("<p class=\"muted\">No failure crossed from one service to another.</p>");
        return;
    }
    // Nodes in the order they started failing.
    let mut nodes: Vec<(&str, chrono::DateTime<chrono::Utc>)> = a
        .services
        .iter()
        .filter_map(|(s, st)| st.first_error.as_ref().map(|e| (s.as_str(), e.time)))
        .collect();
    nodes.sort_by(|x, y| x.1.cmp(&y.1).then(x.0.cmp(y.0)));
    let index: std::collections::HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let pos = |name: &str| index.get(name).copied();
    let (bw, gap, y) = (150.0, 40.0, 70.0);
    let width = nodes.len() as f64 * (bw + gap) + gap;
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"160\" viewBox=\"0 0 {width} 160\" role=\"img\" aria-label=\"propagation graph\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#b33\"/></marker></defs>"
    );
    for p in &a.propagation {
        let (Some(from), Some(to)) = (pos(&p.to), pos(&p.from)) else {
            continue;
        };
        let x1 = gap + from as f64 * (bw + gap) + bw / 2.0;
        let x2 = gap + to as f64 * (bw + gap) + bw / 2.0;
        let lift = 25.0 + 10.0 * (from as f64 - to as f64).abs();
        let _ = write!(
            h,
            "<path d=\"M{x1:.0},{:.0} C{x1:.0},{:.0} {x2:.0},{:.0} {x2:.0},{:.0}\" fill=\"none\" stroke=\"#b33\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"><title>{} → {}</title></path>",
            y - 18.0,
            y - 18.0 - lift,
            y - 18.0 - lift,
            y - 18.0,
            esc(&p.to),
            esc(&p.from)
        );
    }
    for (n, (name, t)) in nodes.iter().enumerate() {
        let x = gap + n as f64 * (bw + gap);
        let _ = write!(
            h,
            "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"{bw}\" height=\"36\" rx=\"6\" fill=\"#fff0f0\" stroke=\"#d33\"/><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"12\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#667\">{}</text>",
            y - 18.0,
            x + bw / 2.0,
            y,
            esc(name),
            x + bw / 2.0,
            y + 12.0,
            t.format("%H:%M:%S%.3f")
        );
    }
    h.push_str("</svg><p class=\"muted\">Services in the order they started failing; arrows run from the service that failed to the caller it failed.</p>");
}
