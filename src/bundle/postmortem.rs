//! The postmortem draft, in the structure of the seed template (`incident`, `timeline`,
//! `root_cause`, `action_items`): `postmortem.yaml` for tools, `postmortem.md` for people. Facts
//! come from the analysis; judgement (action items, the final root cause) is left to people, with
//! placeholders.

use serde_json::{Value, json};

use super::Counts;
use super::yaml::to_yaml;
use crate::analyze::{Analysis, Timeline};
use crate::model::{Incident, SpanId, TimeWindow, TraceId};

pub struct Draft<'a> {
    pub incident: &'a Incident,
    pub window: &'a TimeWindow,
    pub timeline: &'a Timeline,
    pub analysis: &'a Analysis,
    /// Trace UI link template with `{trace_id}`.
    pub trace_url: Option<&'a str>,
    pub status: &'a str,
    pub counts: &'a Counts,
}

const TODO: &str = "TODO: to be filled in by the postmortem author";

/// Text from the traces or the incident as Markdown inline text: one line (line breaks of any
/// kind become spaces), the characters that open emphasis, code, links, images, HTML, entities
/// and table cells backslash-escaped everywhere, and a leading `#`, `-`, `+`, `=`, `>` or
/// `1.` escaped, so that no value can open a heading, a list, a checkbox, a link, an element or
/// a cell.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{b}' | '\u{c}' => out.push(' '),
            c if c.is_control() => {}
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    let start = out.len() - out.trim_start().len();
    let rest = &out[start..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let opens_block = rest.starts_with(['#', '-', '+', '='])
        || (digits > 0 && rest[digits..].starts_with(['.', ')']));
    if opens_block {
        let at = if digits > 0 { start + digits } else { start };
        out.insert(at, '\\');
    }
    out
}

fn rfc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A duration as people say it (`14 min 30 s`).
fn span_of(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// One statement of the draft and the span that shows it.
pub(crate) struct Claim {
    pub text: String,
    pub evidence: Option<(TraceId, SpanId)>,
}

impl Claim {
    fn new(text: String, evidence: Option<(TraceId, SpanId)>) -> Self {
        Self { text, evidence }
    }
}

/// What the draft states, each fact worded about systems and conditions, not people, and each
/// linked to the trace that shows it where one does.
pub(crate) struct Facts {
    pub summary: Claim,
    pub impact: Vec<Claim>,
    pub detection: String,
    pub mitigation: Claim,
    pub contributing: Vec<Claim>,
    pub time_to_detect: Option<String>,
    pub time_to_recover: Option<String>,
}

impl Draft<'_> {
    /// Where a span is seen, as plain text: the trace UI's address, or the ids and the files
    /// that hold them.
    fn link(&self, trace_id: TraceId, span_id: SpanId) -> String {
        match self.trace_url {
            Some(t) => t
                .replace("{trace_id}", &trace_id.to_hex())
                .replace("{span_id}", &span_id.to_hex()),
            None => format!(
                "span {span_id} in trace {trace_id} (traces/*.jsonl.zst, traces/jaeger-ui.json)"
            ),
        }
    }

    /// The same as Markdown: a link to the trace UI, or the ids as code.
    fn md_link(&self, trace_id: TraceId, span_id: SpanId) -> String {
        let trace = trace_id.to_hex();
        match self.trace_url {
            Some(t) => format!(
                "[{trace}](<{}>)",
                t.replace("{trace_id}", &trace)
                    .replace("{span_id}", &span_id.to_hex())
                    .replace(['<', '>', ' ', '\n'], "")
            ),
            None => format!("`{trace}` span `{span_id}`"),
        }
    }

    /// A claim for the YAML: its text, then where it is seen.
    fn plain(&self, c: &Claim) -> String {
        match c.evidence {
            Some((t, s)) => format!("{} (evidence: {})", c.text, self.link(t, s)),
            None => c.text.clone(),
        }
    }

    /// A claim for the Markdown: its text escaped, then the link to its trace.
    fn markdown_claim(&self, c: &Claim) -> String {
        match c.evidence {
            Some((t, s)) => format!("{} (evidence: {})", md(&c.text), self.md_link(t, s)),
            None => md(&c.text),
        }
    }

    fn description(&self) -> String {
        match &self.analysis.origin {
            Some(o) => format!(
                "The earliest failure not explained by a failing dependency was in {} ({}). {} Confidence {:.0}%. To be confirmed by the postmortem author.",
                o.service,
                o.operation,
                o.reason,
                o.confidence * 100.0
            ),
            None if self.counts.error_traces == 0 => {
                "No error spans were captured; see the latency breakdown in report.html. To be determined by the postmortem author.".into()
            }
            None => "The captured errors were already present before the incident at a similar rate; no new origin stands out. To be determined by the postmortem author.".into(),
        }
    }

    pub(crate) fn facts(&self) -> Facts {
        let i = self.incident;
        let a = self.analysis;
        let began = i.started_at();
        let recovered = a.recovery.as_ref().map(|r| r.time);
        let top = a.suspects.first();
        let summary = match &a.origin {
            Some(o) => {
                let first = a
                    .services
                    .get(&o.service)
                    .and_then(|s| s.first_error.as_ref())
                    .map(|e| format!(" from {}", rfc(e.time)))
                    .unwrap_or_default();
                let spread: Vec<&str> = a
                    .failure_order
                    .iter()
                    .map(|f| f.service.as_str())
                    .filter(|s| *s != o.service)
                    .filter(|s| !a.ranking.iter().any(|c| c.pre_existing && c.service == *s))
                    .collect();
                let mut t = format!("{} {} failed{first}", o.service, o.operation);
                if !spread.is_empty() {
                    t.push_str(&format!("; the failure reached {}", spread.join(", ")));
                }
                if let Some(sp) = top {
                    t.push_str(&format!(
                        "; {} = {} was on {:.0}% of its failing calls{}",
                        sp.key,
                        sp.value,
                        sp.failing_share * 100.0,
                        sp.healthy_share
                            .map(|h| format!(
                                " and {:.0}% of its successful calls in the same minutes",
                                h * 100.0
                            ))
                            .unwrap_or_default()
                    ));
                }
                match recovered {
                    Some(r) => t.push_str(&format!("; it recovered at {}.", rfc(r))),
                    None => t.push_str("; it had not recovered when the evidence was captured."),
                }
                Claim::new(t, Some((o.trace_id, o.span_id)))
            }
            None => Claim::new(self.description(), None),
        };
        let first_error = |service: &str| {
            a.services
                .get(service)
                .and_then(|s| s.first_error.as_ref())
                .map(|e| (e.trace_id, e.span_id))
        };
        let mut impact: Vec<Claim> = a
            .services
            .iter()
            .filter(|(_, s)| s.error_spans > 0 && s.incident.requests_sampled > 0)
            .map(|(name, s)| {
                let ci = s
                    .incident
                    .error_rate_ci
                    .map(|c| format!(" (95% CI {:.0}–{:.0}%)", c[0] * 100.0, c[1] * 100.0))
                    .unwrap_or_default();
                Claim::new(
                    format!(
                        "{name}: error rate ≈ {:.1}%{ci} of {} sampled requests during the incident, against {:.1}% of {} before it",
                        s.incident.error_rate * 100.0,
                        s.incident.requests_sampled,
                        s.baseline.error_rate * 100.0,
                        s.baseline.requests_sampled
                    ),
                    first_error(name),
                )
            })
            .collect();
        if impact.is_empty() {
            impact.push(Claim::new(
                "No failing requests were captured; see the latency breakdown in report.html."
                    .into(),
                None,
            ));
        }
        let time_to_detect = began.map(|b| span_of(i.declared_at() - b));
        let time_to_recover = began.zip(recovered).map(|(b, r)| span_of(r - b));
        let detection = format!(
            "Declared at {}{}.",
            rfc(i.declared_at()),
            time_to_detect
                .as_ref()
                .map(|t| format!(", {t} after the incident began"))
                .unwrap_or_default()
        );
        let mitigation = match (&a.recovery, recovered) {
            (Some(r), Some(t)) => Claim::new(
                format!(
                    "The first successful call of the origin operation after its last failure ended at {}{}. {TODO}: what was done, and when.",
                    rfc(t),
                    time_to_recover
                        .as_ref()
                        .map(|d| format!(", {d} after the incident began"))
                        .unwrap_or_default(),
                ),
                Some((r.trace_id, r.span_id)),
            ),
            _ => Claim::new(
                format!(
                    "{}. {TODO}: what was done, and when.",
                    a.recovery_note
                        .as_deref()
                        .unwrap_or("Not recovered at capture time")
                ),
                None,
            ),
        };
        let contributing: Vec<Claim> = a
            .suspects
            .iter()
            .take(3)
            .map(|sp| {
                Claim::new(
                    format!(
                        "{} = {}{} on {:.0}% of the origin's failing calls, {} of its successful calls in the same minutes, {} of its calls before the incident",
                        sp.key,
                        sp.value,
                        if sp.also.is_empty() { String::new() } else { format!(" (with {})", sp.also.join(", ")) },
                        sp.failing_share * 100.0,
                        sp.healthy_share.map_or("—".into(), |h| format!("{:.0}%", h * 100.0)),
                        sp.baseline_share.map_or("—".into(), |b| format!("{:.0}%", b * 100.0)),
                    ),
                    sp.example.as_ref().map(|e| (e.trace_id, e.span_id)),
                )
            })
            .chain(a.propagation.iter().map(|p| {
                Claim::new(
                    format!(
                        "failure spread from {} to {} (first at {}, {} trace(s))",
                        p.to,
                        p.from,
                        p.first_seen
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        p.traces
                    ),
                    Some((p.trace_id, p.span_id)),
                )
            }))
            .chain(a.ranking.iter().filter(|c| c.pre_existing).map(|c| {
                Claim::new(format!("pre-existing: {}", c.reason), first_error(&c.service))
            }))
            .collect();
        Facts {
            summary,
            impact,
            detection,
            mitigation,
            contributing,
            time_to_detect,
            time_to_recover,
        }
    }

    fn value(&self) -> Value {
        let i = self.incident;
        let facts = self.facts();
        let timeline: Vec<Value> = self
            .timeline
            .entries
            .iter()
            .map(|e| {
                let trace = e.trace_id.to_hex();
                json!({
                    "time": e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "event": e.evidence,
                    "kind": e.kind,
                    "service": e.service,
                    "trace_id": trace,
                    "span_id": e.span_id.to_hex(),
                    "evidence": self.link(e.trace_id, e.span_id),
                })
            })
            .collect();
        let origin = &self.analysis.origin;
        json!({
            "incident": {
                "id": i.id().as_str(),
                "title": i.title().unwrap_or_default(),
                "severity": i.severity().unwrap_or_default(),
                "declared_at": i.declared_at().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "started_at": i.started_at().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                "window": {
                    "start": self.window.start().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "end": self.window.end().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                },
                "services": i.services(),
                "evidence_status": self.status,
                "time_to_detect": facts.time_to_detect,
                "time_to_recover": facts.time_to_recover,
            },
            "summary": self.plain(&facts.summary),
            "impact": facts.impact.iter().map(|c| self.plain(c)).collect::<Vec<_>>(),
            "detection": facts.detection,
            "timeline": timeline,
            "root_cause": {
                "description": self.description(),
                "origin_service": origin.as_ref().map(|o| o.service.clone()),
                "origin_span": origin.as_ref().map(|o| format!("{} (span {} in trace {})", o.operation, o.span_id, o.trace_id)),
                "contributing_factors": facts.contributing.iter().map(|c| self.plain(c)).collect::<Vec<_>>(),
            },
            "mitigation_and_recovery": self.plain(&facts.mitigation),
            "lessons_learned": TODO,
            "action_items": [
                {"description": TODO, "owner": "TODO", "due": "TODO", "priority": "TODO"},
            ],
        })
    }

    pub fn yaml(&self) -> String {
        format!(
            "# Postmortem draft generated by evidence-locker {} from captured traces.\n# Facts are pre-filled; review them, then write the root cause and action items.\n{}",
            env!("CARGO_PKG_VERSION"),
            to_yaml(&self.value())
        )
    }

    pub fn markdown(&self) -> String {
        let i = self.incident;
        let f = self.facts();
        let mut md_out = String::new();
        let w = &mut md_out;
        w.push_str(&format!(
            "# Postmortem draft: {} — {}\n\n",
            md(i.id().as_str()),
            md(i.title().unwrap_or("(untitled)"))
        ));
        w.push_str("Blameless: the facts below are about systems and conditions. Review them, then write what the draft leaves to people.\n\n");
        w.push_str(&format!(
            "- Severity: {}\n- Started: {}\n- Declared: {}\n- Recovered: {}\n- Time to detect: {}\n- Time to recover: {}\n- Window: {} → {}\n- Evidence: {} ({} error traces, {} slow traces, {} baseline traces, {} more sampled traces)\n",
            md(i.severity().unwrap_or("—")),
            i.started_at().map_or("—".into(), rfc),
            rfc(i.declared_at()),
            self.analysis.recovery.as_ref().map_or("not at capture time".into(), |r| rfc(r.time)),
            f.time_to_detect.as_deref().unwrap_or("—"),
            f.time_to_recover.as_deref().unwrap_or("—"),
            rfc(self.window.start()),
            rfc(self.window.end()),
            self.status,
            self.counts.error_traces,
            self.counts.slow_traces,
            self.counts.baseline_traces,
            self.counts.sample_traces,
        ));
        for (name, url) in i.links() {
            if url.starts_with("https://") || url.starts_with("http://") {
                w.push_str(&format!(
                    "- {}: <{}>\n",
                    md(name),
                    url.replace(['<', '>', ' ', '\n'], "")
                ));
            }
        }
        w.push_str(&format!(
            "\n## Summary\n\n{}\n\n",
            self.markdown_claim(&f.summary)
        ));
        w.push_str("## Impact\n\n");
        for c in &f.impact {
            w.push_str(&format!("- {}\n", self.markdown_claim(c)));
        }
        w.push_str(&format!("\n## Detection\n\n{}\n\n", md(&f.detection)));
        w.push_str("## Timeline\n\n| time (UTC) | event | trace |\n|---|---|---|\n");
        for e in &self.timeline.entries {
            let link = self.md_link(e.trace_id, e.span_id);
            w.push_str(&format!(
                "| {} | {} | {} |\n",
                e.time.format("%Y-%m-%d %H:%M:%S%.3f"),
                md(&e.evidence),
                link
            ));
        }
        w.push_str("\n## Root cause\n\n");
        w.push_str(&md(&self.description()));
        w.push_str("\n\n");
        if let Some(o) = &self.analysis.origin {
            w.push_str(&format!(
                "- Origin: **{}** {} (evidence: {})\n",
                md(&o.service),
                md(&o.operation),
                self.md_link(o.trace_id, o.span_id)
            ));
        }
        w.push_str("\n## Contributing factors\n\n");
        for c in &f.contributing {
            w.push_str(&format!("- {}\n", self.markdown_claim(c)));
        }
        if f.contributing.is_empty() {
            w.push_str("- None found in the traces.\n");
        }
        w.push_str(&format!(
            "\n## Mitigation and recovery\n\n{}\n\n## Lessons learned\n\n{TODO}\n\n## Action items\n\n- [ ] TODO (owner, due date)\n",
            self.markdown_claim(&f.mitigation)
        ));
        md_out
    }
}
