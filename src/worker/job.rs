//! What one incident message asks the worker to do. Parsing decides everything that can be
//! decided from the message alone: a message that cannot be used is refused here with a reason
//! (and dead-lettered), so the rest of the worker only sees jobs it can carry out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Incident, ResolvedWindow, TimeWindow, WindowDefaults};
use crate::queue::{DECLARED, RESOLVED};

/// Which capture of an incident a message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureKind {
    Declared,
    Resolved,
}

impl CaptureKind {
    pub fn from_subject(subject: &str) -> Option<Self> {
        match subject {
            DECLARED => Some(Self::Declared),
            RESOLVED => Some(Self::Resolved),
            _ => None,
        }
    }

    /// `declared` or `resolved`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Resolved => "resolved",
        }
    }
}

/// The first capture id of an incident's occurrence and kind: `<occurrence>-<kind>`, e.g.
/// `20260205T144000Z-declared`.
pub fn capture_base(incident: &Incident, kind: CaptureKind) -> String {
    format!("{}-{}", incident.occurrence(), kind.name())
}

/// The `n`th capture of an occurrence and kind: `base`, then `base-2`, `base-3`, … (a capture
/// that supersedes a partial one).
pub fn numbered(base: &str, n: usize) -> String {
    if n <= 1 {
        base.to_owned()
    } else {
        format!("{base}-{n}")
    }
}

/// Where `capture` stands among the captures [`numbered`] from `base` (1 for `base` itself), or
/// `None` when it is not one of them.
pub fn position_in(base: &str, capture: &str) -> Option<usize> {
    let rest = capture.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(1);
    }
    rest.strip_prefix('-')?
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 2)
}

/// The settings a job is parsed with.
#[derive(Clone, Copy, Debug)]
pub struct JobRules {
    pub window: WindowDefaults,
    pub max_message: usize,
    pub resolved_tail: Duration,
    /// How far an incident's times may lie ahead of our clock.
    pub clock_skew: Duration,
}

/// A usable incident message.
#[derive(Clone, Debug)]
pub struct Job {
    pub incident: Incident,
    pub kind: CaptureKind,
    /// When the incident was resolved (resolved captures): `resolved_at`, else when the
    /// message was published.
    pub resolved_at: Option<DateTime<Utc>>,
    rules: JobRules,
}

impl Job {
    /// Parses a message: its subject, size and incident JSON, and checks that its window can be
    /// captured at `now` and that nothing in it lies in the future (beyond the clock skew
    /// allowed). `published` is when JetStream received it.
    pub fn parse(
        subject: &str,
        payload: &[u8],
        published: DateTime<Utc>,
        now: DateTime<Utc>,
        rules: JobRules,
    ) -> Result<Self, String> {
        let kind = CaptureKind::from_subject(subject).ok_or_else(|| {
            format!("subject {subject:?} is neither {DECLARED:?} nor {RESOLVED:?}")
        })?;
        if payload.len() > rules.max_message {
            return Err(format!(
                "message is {} bytes, more than worker.max_message ({} bytes)",
                payload.len(),
                rules.max_message
            ));
        }
        let incident = Incident::parse(payload).map_err(|e| e.to_string())?;
        let skew = chrono::Duration::from_std(rules.clock_skew).unwrap_or_default();
        let late = incident.future_times(now.max(published) + skew);
        if !late.is_empty() {
            return Err(format!(
                "the incident lies in the future (more than capture.clock_skew = {} ahead of the worker's clock): {}",
                humantime::format_duration(rules.clock_skew),
                late.join(", ")
            ));
        }
        let resolved_at = match kind {
            CaptureKind::Declared => None,
            CaptureKind::Resolved => Some(incident.resolved_at().unwrap_or(published)),
        };
        let job = Self {
            incident,
            kind,
            resolved_at,
            rules,
        };
        job.window(now).map_err(|e| e.to_string())?;
        Ok(job)
    }

    /// The first capture id of this job's occurrence and kind: `<occurrence>-<kind>`, e.g.
    /// `20260205T144000Z-declared`. A redelivery or a duplicate finds the capture it would make;
    /// the same alert firing again later is another occurrence. A capture that supersedes a
    /// partial one adds `-2`, `-3`, ….
    pub fn base_capture_id(&self) -> String {
        capture_base(&self.incident, self.kind)
    }

    /// The window to capture at `now`. Declared: the incident's window, else from `lookback`
    /// before it began until now. Resolved: from the same start until resolution plus
    /// `worker.resolved_tail`. Cut to `capture.max_window` when longer.
    pub fn window(
        &self,
        now: DateTime<Utc>,
    ) -> Result<ResolvedWindow, crate::model::IncidentError> {
        match self.resolved_at {
            None => self.incident.resolve_window(&self.rules.window, now),
            Some(resolved) => {
                let start = match self.incident.window() {
                    Some(w) => w.start(),
                    None => self.incident.lookback_start(self.rules.window.lookback)?,
                };
                let tail = chrono::Duration::from_std(self.rules.resolved_tail)
                    .unwrap_or(chrono::Duration::zero());
                let window = TimeWindow::new(start, resolved + tail)?;
                self.incident
                    .with_window(window)
                    .resolve_window(&self.rules.window, now)
            }
        }
    }

    /// How long until the window's traces can all exist: a resolved capture covers a tail after
    /// resolution that may still be in the future. Zero when it can be captured now.
    pub fn due_in(&self, now: DateTime<Utc>) -> Duration {
        match self.window(now) {
            Ok(w) if self.resolved_at.is_some() && w.window.end() > now => {
                (w.window.end() - now).to_std().unwrap_or_default()
            }
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> JobRules {
        JobRules {
            window: WindowDefaults {
                lookback: Duration::from_secs(1800),
                max_window: Duration::from_secs(86400),
            },
            max_message: 1 << 20,
            resolved_tail: Duration::from_secs(300),
            clock_skew: Duration::from_secs(300),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_resolved_capture_runs_from_the_start_to_resolution_plus_the_tail() {
        let job = Job::parse(
            RESOLVED,
            br#"{"id":"INC-1","declared_at":"2026-02-05T14:40:00Z","started_at":"2026-02-05T14:32:00Z","resolved_at":"2026-02-05T15:10:00Z"}"#,
            t("2026-02-05T15:10:01Z"),
            t("2026-02-05T15:10:02Z"),
            rules(),
        )
        .unwrap();
        assert_eq!(job.base_capture_id(), "20260205T144000Z-resolved");
        let now = t("2026-02-05T15:11:00Z");
        let w = job.window(now).unwrap().window;
        assert_eq!(w.start(), t("2026-02-05T14:02:00Z"));
        assert_eq!(w.end(), t("2026-02-05T15:15:00Z"));
        assert_eq!(job.due_in(now), Duration::from_secs(240));
    }

    #[test]
    fn a_resolved_message_without_resolved_at_uses_its_publication_time() {
        let job = Job::parse(
            RESOLVED,
            br#"{"id":"INC-1","declared_at":"2026-02-05T14:40:00Z"}"#,
            t("2026-02-05T15:00:00Z"),
            t("2026-02-05T15:00:01Z"),
            rules(),
        )
        .unwrap();
        assert_eq!(
            job.window(t("2026-02-05T16:00:00Z")).unwrap().window.end(),
            t("2026-02-05T15:05:00Z")
        );
    }

    #[test]
    fn unusable_messages_are_refused_with_a_reason() {
        let now = t("2026-02-05T15:00:00Z");
        let cases: [(&str, &[u8], &str); 5] = [
            ("incidents.other", br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z"}"#, "neither"),
            (RESOLVED, br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2099-01-01T00:00:00Z"}"#, "resolved_at 2099"),
            (DECLARED, br#"{"id":"a","declared_at":"2026-02-05T15:06:00Z"}"#, "in the future"),
            (RESOLVED, br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2026-02-05T13:00:00Z"}"#, "ends"),
            (DECLARED, &[b' '; 2 << 20], "worker.max_message"),
        ];
        for (subject, payload, want) in cases {
            let err = Job::parse(subject, payload, now, now, rules()).unwrap_err();
            assert!(err.contains(want), "{subject}: {err}");
        }
    }

    #[test]
    fn each_occurrence_of_an_incident_has_its_own_captures_and_long_windows_are_cut() {
        let now = t("2026-02-05T15:00:00Z");
        let job = |declared: &str| {
            let body = format!(r#"{{"id":"am-1","declared_at":"{declared}"}}"#);
            Job::parse(DECLARED, body.as_bytes(), now, now, rules()).unwrap()
        };
        assert_ne!(
            job("2026-02-01T10:00:00Z").base_capture_id(),
            job("2026-02-05T14:00:00Z").base_capture_id()
        );
        let long = Job::parse(
            DECLARED,
            br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-01T00:00:00Z","end":"2026-02-05T14:00:00Z"}}"#,
            now,
            now,
            rules(),
        )
        .unwrap();
        let w = long.window(now).unwrap();
        assert_eq!(w.window.duration(), Duration::from_secs(86400));
        assert!(w.requested.is_some());
    }
}
