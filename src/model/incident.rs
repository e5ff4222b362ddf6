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
    #[error("{what} {time} is outside the years 1990–2200 (a timestamp in the wrong unit?)")]
    OutOfRange { what: String, time: String },
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

/// The earliest time anything is accepted at: 1990-01-01 (an earlier one is a timestamp in the
/// wrong unit, or a zero).
pub const EARLIEST_NS: i64 = 631_152_000 * 1_000_000_000;
/// The latest: 2200-01-01.
pub const LATEST_NS: i64 = 7_258_118_400 * 1_000_000_000;

/// Refuses a time outside 1990–2200.
fn plausible(what: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, IncidentError> {
    match t.timestamp_nanos_opt() {
        Some(ns) if (EARLIEST_NS..LATEST_NS).contains(&ns) => Ok(t),
        _ => Err(IncidentError::OutOfRange {
            what: what.to_owned(),
            time: t.to_rfc3339(),
        }),
    }
}

/// A time range `[start, end)` with `start < end`, both within 1990–2200.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl TimeWindow {
    /// Builds a window, refusing one that ends before or when it starts, or lies outside
    /// 1990–2200.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, IncidentError> {
        if end <= start {
            return Err(IncidentError::WindowEndsBeforeStart { start, end });
        }
        plausible("window start", start)?;
        plausible("window end", end)?;
        Ok(Self { start, end })
    }

    /// From nanosecond timestamps; an empty range is widened to one microsecond.
    pub fn from_ns(start_ns: i64, end_ns: i64) -> Result<Self, IncidentError> {
        let start = DateTime::from_timestamp_nanos(start_ns);
        let end = DateTime::from_timestamp_nanos(end_ns.max(start_ns.saturating_add(1_000)));
        Self::new(start, end)
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

    /// The most recent `max` of the window, or the window itself when it is no longer.
    pub fn latest(&self, max: Duration) -> Self {
        match chrono::Duration::from_std(max)
            .ok()
            .and_then(|m| self.end.checked_sub_signed(m))
        {
            Some(start) if start > self.start => Self {
                start,
                end: self.end,
            },
            _ => *self,
        }
    }
}

/// The configured defaults an incident's window is resolved with.
#[derive(Clone, Copy, Debug)]
pub struct WindowDefaults {
    /// Window start before `started_at` (or `declared_at`) when the incident gives no window.
    pub lookback: Duration,
    /// The longest window captured: a longer one is cut to its most recent part.
    pub max_window: Duration,
}

/// The window a capture covers, and the one asked for when that was longer than
/// `capture.max_window` (then the capture covers its most recent part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedWindow {
    pub window: TimeWindow,
    pub requested: Option<TimeWindow>,
}

/// The fields of an incident, before [`Incident::new`] checks them.
#[derive(Clone, Debug)]
pub struct IncidentParts {
    pub id: IncidentId,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub declared_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub window: Option<TimeWindow>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub services: Vec<String>,
    pub source: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub links: BTreeMap<String, String>,
}

impl IncidentParts {
    /// An incident with only its id and declaration time.
    pub fn new(id: IncidentId, declared_at: DateTime<Utc>) -> Self {
        Self {
            id,
            title: None,
            severity: None,
            declared_at,
            started_at: None,
            window: None,
            resolved_at: None,
            services: Vec::new(),
            source: None,
            labels: BTreeMap::new(),
            links: BTreeMap::new(),
        }
    }
}

/// A declared incident (DESIGN.md). Only `id` and `declared_at` are required. Built only through
/// [`Incident::new`] or [`Incident::parse`]: every time it holds lies within 1990–2200 and its
/// services are non-empty names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    id: IncidentId,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<String>,
    declared_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<TimeWindow>,
    /// When the incident was resolved (on `incidents.resolved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    links: BTreeMap<String, String>,
}

/// Why bytes that must hold one JSON object were refused.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Not JSON at all, or cut short.
    #[error("{0}")]
    NotJson(String),
    /// JSON, but not an object with the fields expected.
    #[error("{0}")]
    Shape(String),
}

/// Reads bytes that must hold one JSON object (an incident, a webhook body) straight into `T`:
/// a list or a string is refused as such, not as a struct of the wrong length, and a field given
/// twice is refused, not overwritten.
pub fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ObjectError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| ObjectError::NotJson(e.to_string()))?;
        return Err(ObjectError::Shape(
            "expected a JSON object at the top level".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ObjectError::NotJson(e.to_string())
        } else {
            ObjectError::Shape(e.to_string())
        }
    })
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
    /// Checks the parts: every time within 1990–2200; services trimmed, empty ones dropped.
    pub fn new(parts: IncidentParts) -> Result<Self, IncidentError> {
        plausible("declared_at", parts.declared_at)?;
        if let Some(t) = parts.started_at {
            plausible("started_at", t)?;
        }
        if let Some(t) = parts.resolved_at {
            plausible("resolved_at", t)?;
        }
        let services = parts
            .services
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            id: parts.id,
            title: parts.title,
            severity: parts.severity,
            declared_at: parts.declared_at,
            started_at: parts.started_at,
            window: parts.window,
            resolved_at: parts.resolved_at,
            services,
            source: parts.source,
            labels: parts.labels,
            links: parts.links,
        })
    }

    /// Parses the incident JSON of DESIGN.md. Unknown fields are ignored, as a newer sender may
    /// add some; missing required fields, wrong types and an inverted window are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, IncidentError> {
        let raw: RawIncident = json_object(bytes).map_err(|e| match e {
            ObjectError::NotJson(m) => IncidentError::NotJson(m),
            ObjectError::Shape(m) => IncidentError::Shape(m),
        })?;
        let id = IncidentId::parse(raw.id.as_deref().ok_or(IncidentError::MissingId)?)?;
        let declared_at = raw.declared_at.ok_or(IncidentError::MissingDeclaredAt)?;
        let window = raw
            .window
            .map(|w| TimeWindow::new(w.start, w.end))
            .transpose()?;
        Self::new(IncidentParts {
            id,
            title: raw.title,
            severity: raw.severity,
            declared_at,
            started_at: raw.started_at,
            window,
            resolved_at: raw.resolved_at,
            services: raw.services,
            source: raw.source,
            labels: raw.labels,
            links: raw.links,
        })
    }

    pub fn id(&self) -> &IncidentId {
        &self.id
    }
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }
    pub fn severity(&self) -> Option<&str> {
        self.severity.as_deref()
    }
    pub fn declared_at(&self) -> DateTime<Utc> {
        self.declared_at
    }
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.started_at
    }
    /// The window the incident gives, if any.
    pub fn window(&self) -> Option<TimeWindow> {
        self.window
    }
    pub fn resolved_at(&self) -> Option<DateTime<Utc>> {
        self.resolved_at
    }
    /// Services in scope; empty means every service the backend knows.
    pub fn services(&self) -> &[String] {
        &self.services
    }
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    pub fn links(&self) -> &BTreeMap<String, String> {
        &self.links
    }

    /// The same incident with another window (already checked by [`TimeWindow`]).
    pub fn with_window(&self, window: TimeWindow) -> Self {
        Self {
            window: Some(window),
            ..self.clone()
        }
    }

    /// Which occurrence of the incident this is: `declared_at` as `YYYYMMDDTHHMMSSZ`. A recurring
    /// alert keeps its incident id; each firing episode is declared at its own time, so each gets
    /// its own captures (and a resolved message, which repeats `declared_at`, finds its
    /// occurrence's).
    pub fn occurrence(&self) -> String {
        self.declared_at.format("%Y%m%dT%H%M%SZ").to_string()
    }

    /// Where a window the incident does not give starts: `lookback` before it began. Refused
    /// when that lies before any representable time (a huge lookback).
    pub fn lookback_start(&self, lookback: Duration) -> Result<DateTime<Utc>, IncidentError> {
        chrono::Duration::from_std(lookback)
            .ok()
            .and_then(|l| self.began_at().checked_sub_signed(l))
            .ok_or_else(|| IncidentError::OutOfRange {
                what: "window start (capture.lookback before the incident began)".into(),
                time: "before the year 1990".into(),
            })
    }

    /// When the trouble began: `started_at`, else `declared_at`.
    pub fn began_at(&self) -> DateTime<Utc> {
        self.started_at.unwrap_or(self.declared_at)
    }

    /// The times in the incident that lie after `latest` (when it was received, plus a clock
    /// skew allowance), named: such a message describes the future and is refused.
    pub fn future_times(&self, latest: DateTime<Utc>) -> Vec<String> {
        let mut named = vec![("declared_at", Some(self.declared_at))];
        named.push(("started_at", self.started_at));
        named.push(("resolved_at", self.resolved_at));
        named.push(("window.start", self.window.map(|w| w.start())));
        named.push(("window.end", self.window.map(|w| w.end())));
        named
            .into_iter()
            .filter_map(|(name, t)| {
                t.filter(|t| *t > latest)
                    .map(|t| format!("{name} {}", t.to_rfc3339()))
            })
            .collect()
    }

    /// The window to capture: the incident's own, or from `began_at - lookback` to `now`. A
    /// window longer than the configured maximum is cut to its most recent part (the traces
    /// nearest the declaration matter most), and the one asked for is returned beside it.
    pub fn resolve_window(
        &self,
        defaults: &WindowDefaults,
        now: DateTime<Utc>,
    ) -> Result<ResolvedWindow, IncidentError> {
        let window = match self.window {
            Some(w) => w,
            None => {
                let start = self.lookback_start(defaults.lookback)?;
                TimeWindow::new(start, now.max(start + chrono::Duration::seconds(1)))?
            }
        };
        if window.duration() > defaults.max_window {
            return Ok(ResolvedWindow {
                window: window.latest(defaults.max_window),
                requested: Some(window),
            });
        }
        Ok(ResolvedWindow {
            window,
            requested: None,
        })
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
        assert_eq!(inc.id().as_str(), "INC-2026-0142");
        assert_eq!(inc.services(), ["payment-service", "checkout-service"]);
        let w = inc.resolve_window(&defaults(), Utc::now()).unwrap().window;
        assert_eq!(w.start().to_rfc3339(), "2026-02-05T14:02:00+00:00");
    }

    #[test]
    fn a_missing_window_is_lookback_before_start_until_now() {
        let inc = Incident::parse(
            br#"{"id":"x","declared_at":"2026-02-05T14:40:00Z","started_at":"2026-02-05T14:32:00Z"}"#,
        )
        .unwrap();
        let now = "2026-02-05T14:50:00Z".parse().unwrap();
        let w = inc.resolve_window(&defaults(), now).unwrap().window;
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
    fn a_window_longer_than_the_maximum_is_cut_to_its_most_recent_part() {
        let inc = Incident::parse(
            br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-01T00:00:00Z","end":"2026-02-05T14:00:00Z"}}"#,
        )
        .unwrap();
        let r = inc.resolve_window(&defaults(), Utc::now()).unwrap();
        assert_eq!(r.window.start().to_rfc3339(), "2026-02-04T14:00:00+00:00");
        assert_eq!(r.window.end().to_rfc3339(), "2026-02-05T14:00:00+00:00");
        assert_eq!(r.requested, inc.window());
    }

    #[test]
    fn times_outside_1990_to_2200_are_refused_and_a_huge_lookback_does_not_panic() {
        let err = Incident::parse(br#"{"id":"a","declared_at":"1970-01-01T00:00:00Z"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1990"), "{err}");
        assert!(TimeWindow::from_ns(0, 1_000_000_000_000_000_000).is_err());
        let inc = Incident::parse(br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z"}"#).unwrap();
        let huge = WindowDefaults {
            lookback: Duration::from_secs(u64::MAX / 4),
            max_window: Duration::from_secs(86400),
        };
        assert!(inc.resolve_window(&huge, Utc::now()).is_err());
    }

    #[test]
    fn future_times_are_named() {
        let inc = Incident::parse(
            br#"{"id":"a","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2099-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let late = inc.future_times("2026-02-05T15:00:00Z".parse().unwrap());
        assert_eq!(late, ["resolved_at 2099-01-01T00:00:00+00:00"]);
        assert_eq!(inc.occurrence(), "20260205T144000Z");
    }
}
