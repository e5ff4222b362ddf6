//! The incident as declared (DESIGN.md "The incident message") and the time window a capture
//! covers. Both parse: once built, an [`Incident`] has an id that is safe in a storage path and a
//! window that ends after it starts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why an incident was refused. The message is what the user (or the dead-letter reason) reads.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("incident is not valid JSON: {0}")]
    NotJson(String),
    #[error("incident has a field of the wrong type or shape: {0}")]
    Shape(String),
    #[error("incident has no `id`")]
    MissingId,
    #[error("incident has no `declared_at`")]
    MissingDeclaredAt,
    #[error(
        "incident id {0:?} is not usable: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadId(String),
    #[error("incident window ends ({end}) before or when it starts ({start})")]
    WindowEndsBeforeStart {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("incident window is {actual} long, more than the configured maximum of {max}")]
    WindowTooLong { actual: String, max: String },
}

/// An incident id: non-empty, at most 128 characters, safe as one storage path segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IncidentId(String);

impl IncidentId {
    /// Parses an id, refusing anything that could escape a storage prefix.
    pub fn parse(s: &str) -> Result<Self, IncidentError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IncidentError::BadId(s.chars().take(200).collect()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IncidentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A time range `[start, end)` with `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl TimeWindow {
    /// Builds a window, refusing one that ends before or when it starts.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, IncidentError> {
        if end <= start {
            return Err(IncidentError::WindowEndsBeforeStart { start, end });
        }
        Ok(Self { start, end })
    }

    /// From nanosecond timestamps; an empty range is widened to one microsecond.
    pub fn from_ns(start_ns: i64, end_ns: i64) -> Self {
        let start_ns = start_ns.min(i64::MAX - 1_000);
        let start = DateTime::from_timestamp_nanos(start_ns);
        let end = DateTime::from_timestamp_nanos(end_ns.max(start_ns + 1_000));
        Self { start, end }
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    /// Start in ns since the epoch.
    pub fn start_ns(&self) -> i64 {
        self.start.timestamp_nanos_opt().unwrap_or(i64::MIN)
    }

    /// End in ns since the epoch.
    pub fn end_ns(&self) -> i64 {
        self.end.timestamp_nanos_opt().unwrap_or(i64::MAX)
    }

    /// The window's length.
    pub fn duration(&self) -> Duration {
        (self.end - self.start).to_std().unwrap_or_default()
    }

    /// True when `t_ns` lies inside `[start, end)`.
    pub fn contains_ns(&self, t_ns: i64) -> bool {
        t_ns >= self.start_ns() && t_ns < self.end_ns()
    }
}

/// The configured defaults an incident's window is resolved with.
#[derive(Clone, Copy, Debug)]
pub struct WindowDefaults {
    /// Window start before `started_at` (or `declared_at`) when the incident gives no window.
    pub lookback: Duration,
    /// The longest window accepted.
    pub max_window: Duration,
}

/// A declared incident (DESIGN.md). Only `id` and `declared_at` are required.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: IncidentId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    pub declared_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindow>,
    /// When the incident was resolved (on `incidents.resolved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

#[derive(Deserialize)]
struct RawIncident {
    id: Option<String>,
    title: Option<String>,
    severity: Option<String>,
    declared_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    window: Option<RawWindow>,
    resolved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    services: Vec<String>,
    source: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    links: BTreeMap<String, String>,
}

impl Incident {
    /// Parses the incident JSON of DESIGN.md. Unknown fields are ignored, as a newer sender may
    /// add some; missing required fields, wrong types and an inverted window are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, IncidentError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| IncidentError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(IncidentError::Shape(
                "expected a JSON object at the top level".into(),
            ));
        }
        let raw: RawIncident =
            serde_json::from_value(value).map_err(|e| IncidentError::Shape(e.to_string()))?;
        let id = IncidentId::parse(raw.id.as_deref().ok_or(IncidentError::MissingId)?)?;
        let declared_at = raw.declared_at.ok_or(IncidentError::MissingDeclaredAt)?;
        let dates = [Some(declared_at), raw.started_at, raw.resolved_at]
            .into_iter()
            .chain(raw.window.iter().flat_map(|w| [Some(w.start), Some(w.end)]))
            .flatten();
        for d in dates {
            if d.timestamp_nanos_opt().is_none() || d.timestamp() < 0 {
                return Err(IncidentError::Shape(format!(
                    "{} is outside the years 1970–2262",
                    d.to_rfc3339()
                )));
            }
        }
        let window = raw
            .window
            .map(|w| TimeWindow::new(w.start, w.end))
            .transpose()?;
        let services = raw
            .services
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            id,
            title: raw.title,
            severity: raw.severity,
            declared_at,
            started_at: raw.started_at,
            window,
            resolved_at: raw.resolved_at,
            services,
            source: raw.source,
            labels: raw.labels,
            links: raw.links,
        })
    }

    /// When the trouble began: `started_at`, else `declared_at`.
    pub fn began_at(&self) -> DateTime<Utc> {
        self.started_at.unwrap_or(self.declared_at)
    }

    /// The window to capture: the incident's own, or from `began_at - lookback` to `now`;
    /// refused when longer than the configured maximum.
    pub fn resolve_window(
        &self,
        defaults: &WindowDefaults,
        now: DateTime<Utc>,
    ) -> Result<TimeWindow, IncidentError> {
        let window = match self.window {
            Some(w) => w,
            None => {
                let lookback =
                    chrono::Duration::from_std(defaults.lookback).unwrap_or(chrono::Duration::MAX);
                let start = self.began_at() - lookback;
                TimeWindow::new(start, now.max(start + chrono::Duration::seconds(1)))?
            }
        };
        if window.duration() > defaults.max_window {
            return Err(IncidentError::WindowTooLong {
                actual: humantime::format_duration(window.duration()).to_string(),
                max: humantime::format_duration(defaults.max_window).to_string(),
            });
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "id": "INC-2026-0142", "title": "Payment processing failures", "severity": "SEV-1",
      "declared_at": "2026-02-05T14:40:00Z", "started_at": "2026-02-05T14:32:00Z",
      "window": {"start": "2026-02-05T14:02:00Z", "end": "2026-02-05T14:55:00Z"},
      "services": ["payment-service", "checkout-service"], "source": "alertmanager",
      "labels": {"team": "payments"}, "links": {"alert": "https://example.com"},
      "extra": "ignored"
    }"#;

    fn defaults() -> WindowDefaults {
        WindowDefaults {
            lookback: Duration::from_secs(1800),
            max_window: Duration::from_secs(86400),
        }
    }

    #[test]
    fn the_design_example_parses() {
        let inc = Incident::parse(FULL.as_bytes()).unwrap();
        assert_eq!(inc.id.as_str(), "INC-2026-0142");
        assert_eq!(inc.services, ["payment-service", "checkout-service"]);
        let w = inc.resolve_window(&defaults(), Utc::now()).unwrap();
        assert_eq!(w.start().to_rfc3339(), "2026-02-05T14:02:00+00:00");
    }

    #[test]
    fn a_missing_window_is_lookback_before_start_until_now() {
        let inc = Incident::parse(
            br#"{"id":"x","declared_at":"2026-02-05T14:40:00Z","started_at":"2026-02-05T14:32:00Z"}"#,
        )
        .unwrap();
        let now = "2026-02-05T14:50:00Z".parse().unwrap();
        let w = inc.resolve_window(&defaults(), now).unwrap();
        assert_eq!(w.start().to_rfc3339(), "2026-02-05T14:02:00+00:00");
        assert_eq!(w.end(), now);
    }

    #[test]
    fn bad_incidents_say_why() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"declared_at":"2026-02-05T14:40:00Z"}"#, "no `id`"),
            (br#"{"id":"a"}"#, "no `declared_at`"),
            (br#"{"id":"../etc","declared_at":"2026-02-05T14:40:00Z"}"#, "not usable"),
            (br#"{"id":7,"declared_at":"2026-02-05T14:40:00Z"}"#, "wrong type"),
            (
                br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-05T15:00:00Z","end":"2026-02-05T14:00:00Z"}}"#,
                "ends",
            ),
        ];
        for (input, want) in cases {
            let err = Incident::parse(input).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_window_longer_than_the_maximum_is_refused() {
        let inc = Incident::parse(
            br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-01T00:00:00Z","end":"2026-02-05T14:00:00Z"}}"#,
        )
        .unwrap();
        let err = inc.resolve_window(&defaults(), Utc::now()).unwrap_err();
        assert!(err.to_string().contains("maximum"), "{err}");
    }
}
