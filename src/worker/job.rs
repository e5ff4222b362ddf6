//! What one incident message asks the worker to do. Parsing decides everything that can be
//! decided from the message alone: a message that cannot be used is refused here with a reason
//! (and dead-lettered), so the rest of the worker only sees jobs it can carry out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Incident, TimeWindow, WindowDefaults};
use crate::queue::{DECLARED, RESOLVED};

/// Which capture of an incident a message asks for. The capture id is the kind's name, so a
/// redelivery or a duplicate finds the capture it would make.
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

    /// The capture id: `declared` or `resolved`.
    pub fn capture_id(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Resolved => "resolved",
        }
    }
}

/// The settings a job is parsed with.
#[derive(Clone, Copy, Debug)]
pub struct JobRules {
    pub window: WindowDefaults,
    pub max_message: usize,
    pub resolved_tail: Duration,
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
    /// captured at `now`. `published` is when JetStream received it.
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
        let resolved_at = match kind {
            CaptureKind::Declared => None,
            CaptureKind::Resolved => Some(incident.resolved_at.unwrap_or(published)),
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

    /// The capture id (`declared` or `resolved`).
    pub fn capture_id(&self) -> &'static str {
        self.kind.capture_id()
    }

    /// The window to capture at `now`. Declared: the incident's window, else from `lookback`
    /// before it began until now. Resolved: from the same start until resolution plus
    /// `worker.resolved_tail`.
    pub fn window(&self, now: DateTime<Utc>) -> Result<TimeWindow, crate::model::IncidentError> {
        match self.resolved_at {
            None => self.incident.resolve_window(&self.rules.window, now),
            Some(resolved) => {
                let start = match self.incident.window {
                    Some(w) => w.start(),
                    None => {
                        self.incident.began_at()
                            - chrono::Duration::from_std(self.rules.window.lookback)
                                .unwrap_or(chrono::Duration::MAX)
                    }
                };
                let tail = chrono::Duration::from_std(self.rules.resolved_tail)
                    .unwrap_or(chrono::Duration::zero());
                let window = TimeWindow::new(start, resolved + tail)?;
                let mut incident = self.incident.clone();
                incident.window = Some(window);
                incident.resolve_window(&self.rules.window, now)
            }
        }
    }

    /// How long to wait before the window's traces can all exist: a resolved capture covers a
    /// tail after resolution that may still be in the future.
    pub fn wait_before_capture(&self, now: DateTime<Utc>) -> Duration {
        match self.window(now) {
            Ok(w) if self.resolved_at.is_some() && w.end() > now => {
                (w.end() - now).to_std().unwrap_or_default()
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
        assert_eq!(job.capture_id(), "resolved");
        let now = t("2026-02-05T15:11:00Z");
        let w = job.window(now).unwrap();
        assert_eq!(w.start(), t("2026-02-05T14:02:00Z"));
        assert_eq!(w.end(), t("2026-02-05T15:15:00Z"));
        assert_eq!(job.wait_before_capture(now), Duration::from_secs(240));
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
            job.window(t("2026-02-05T16:00:00Z")).unwrap().end(),
            t("2026-02-05T15:05:00Z")
        );
    }

    #[test]
    fn unusable_messages_are_refused_with_a_reason() {
        let now = t("2026-02-05T15:00:00Z");
        let cases: [(&str, &[u8], &str); 4] = [
            ("incidents.other", br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z"}"#, "neither"),
            (DECLARED, br#"{"id":"a","declared_at":"2026-02-01T14:40:00Z"}"#, "maximum"),
            (RESOLVED, br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2026-02-05T13:00:00Z"}"#, "ends"),
            (DECLARED, &[b' '; 2 << 20], "worker.max_message"),
        ];
        for (subject, payload, want) in cases {
            let err = Job::parse(subject, payload, now, now, rules()).unwrap_err();
            assert!(err.contains(want), "{subject}: {err}");
        }
    }
}
