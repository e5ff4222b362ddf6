//! Alertmanager's webhook (payload version 4, and the older shapes without per-alert `status`,
//! `fingerprint` or `truncatedAlerts`): one incident per alert group, its id derived from the
//! receiver and `groupKey` so every notification of the group maps to the same incident.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::Digest as _;

use crate::config::IntakeSettings;
use crate::model::{Incident, IncidentId, IncidentParts, json_object};
use crate::queue::{DECLARED, RESOLVED};

/// Why a webhook body was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a valid {sender} webhook payload: {message}")]
    Shape {
        sender: &'static str,
        message: String,
    },
    #[error("the payload has no `groupKey`")]
    NoGroupKey,
    #[error("`status` is {0:?}, expected \"firing\" or \"resolved\"")]
    Status(String),
    #[error("the payload holds no alerts")]
    NoAlerts,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(default)]
    group_key: Option<String>,
    status: String,
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    external_url: Option<String>,
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    /// `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
}

/// A label matcher: `name=value`, `name!=value`, `name=~a|b` (one of the alternatives).
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    name: String,
    op: MatchOp,
    values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MatchOp {
    Equal,
    NotEqual,
    OneOf,
    NoneOf,
}

impl Matcher {
    /// Parses `name=value`, `name!=value`, `name=~a|b|c` or `name!~a|b|c`.
    pub fn parse(s: &str) -> Result<Self, String> {
        // The first operator in the text wins (`summary=a!=b` is summary = "a!=b").
        let at = s.find(['=', '!']).ok_or_else(|| {
            format!("{s:?} is not a matcher (name=value, name!=value, name=~a|b, name!~a|b)")
        })?;
        let (name, rest) = s.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::OneOf, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NoneOf, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(format!(
                "{s:?} is not a matcher (name=value, name!=value, name=~a|b, name!~a|b)"
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{s:?} names no label"));
        }
        let value = value.trim().trim_matches('"');
        let values: Vec<String> = match op {
            MatchOp::OneOf | MatchOp::NoneOf => value.split('|').map(str::to_owned).collect(),
            _ => vec![value.to_owned()],
        };
        // `=~` here takes alternatives of exact values, not regular expressions: a pattern that
        // silently never matched would drop every incident.
        if matches!(op, MatchOp::OneOf | MatchOp::NoneOf)
            && values.iter().any(|v| {
                v.contains([
                    '.', '*', '+', '?', '(', ')', '[', ']', '{', '}', '^', '$', '\\',
                ])
            })
        {
            return Err(format!(
                "{s:?}: =~ and !~ take exact values separated by | (e.g. severity=~critical|page), not regular expressions"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            op,
            values,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        let hit = self.values.iter().any(|x| x == v);
        match self.op {
            MatchOp::Equal | MatchOp::OneOf => hit,
            MatchOp::NotEqual | MatchOp::NoneOf => !hit,
        }
    }
}

/// What a webhook turns into.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this incident on this subject.
    Publish(&'static str, Box<Incident>),
    /// Nothing to publish, with the reason (answered 2xx so the sender does not retry).
    Ignored(String),
}

/// The stable incident id of an alert group.
pub fn incident_id(receiver: &str, group_key: &str) -> IncidentId {
    let digest = sha2::Sha256::digest(format!("{receiver}\n{group_key}").as_bytes());
    IncidentId::parse(&format!("am-{}", &hex::encode(digest)[..20])).expect("hex is a valid id")
}

/// Turns a webhook body into an incident message.
pub fn to_incident(
    body: &[u8],
    settings: &IntakeSettings,
    now: DateTime<Utc>,
) -> Result<Outcome, PayloadError> {
    let p: Payload = json_object(body).map_err(|e| PayloadError::Shape {
        sender: "Alertmanager",
        message: e.to_string(),
    })?;
    let group_key = p
        .group_key
        .as_deref()
        .filter(|g| !g.is_empty())
        .ok_or(PayloadError::NoGroupKey)?;
    let subject = match p.status.as_str() {
        "firing" => DECLARED,
        "resolved" => RESOLVED,
        other => return Err(PayloadError::Status(other.to_owned())),
    };
    if p.alerts.is_empty() {
        return Err(PayloadError::NoAlerts);
    }
    let receiver = p.receiver.clone().unwrap_or_default();
    // Each alert's labels, with the group's common labels underneath.
    let labels: Vec<BTreeMap<String, String>> = p
        .alerts
        .iter()
        .map(|a| {
            let mut l = p.common_labels.clone();
            l.extend(a.labels.clone());
            l
        })
        .collect();
    let matchers: Vec<Matcher> = settings
        .alertmanager_matchers
        .iter()
        .filter_map(|m| Matcher::parse(m).ok())
        .collect();
    if !matchers.is_empty() && !labels.iter().any(|l| matchers.iter().all(|m| m.matches(l))) {
        return Ok(Outcome::Ignored(
            "no alert of the group matches intake.alertmanager_matchers".into(),
        ));
    }
    let services: BTreeSet<String> = labels
        .iter()
        .filter_map(|l| {
            settings
                .alertmanager_service_labels
                .iter()
                .find_map(|name| l.get(name).filter(|v| !v.is_empty()).cloned())
        })
        .collect();
    let real = |t: &Option<DateTime<Utc>>| t.filter(|t| t.timestamp() > 0);
    let started_at = p.alerts.iter().filter_map(|a| real(&a.starts_at)).min();
    let resolved_at = (subject == RESOLVED).then(|| {
        p.alerts
            .iter()
            .filter_map(|a| real(&a.ends_at))
            .max()
            .unwrap_or(now)
    });
    let first_label = |name: &str| labels.iter().find_map(|l| l.get(name).cloned());
    let title = p
        .common_annotations
        .get("summary")
        .cloned()
        .or_else(|| first_label("alertname"))
        .unwrap_or_else(|| "Alertmanager alert group".to_owned());
    let severity = p
        .common_labels
        .get(&settings.alertmanager_severity_label)
        .cloned()
        .or_else(|| first_label(&settings.alertmanager_severity_label));
    let mut links = BTreeMap::new();
    if let Some(u) = p.external_url.filter(|u| !u.is_empty()) {
        links.insert("alertmanager".to_owned(), u);
    }
    if let Some(u) = p
        .alerts
        .iter()
        .find_map(|a| a.generator_url.clone().filter(|u| !u.is_empty()))
    {
        links.insert("generator".to_owned(), u);
    }
    let mut incident_labels = p.common_labels;
    incident_labels.insert("alertmanager_receiver".into(), receiver.clone());
    incident_labels.insert("alerts".into(), p.alerts.len().to_string());
    // The group's firing episode is its occurrence: declared at its earliest alert's start, so
    // every notification of one episode (repeats, the resolution) names the same occurrence, and
    // the group firing again later is a new one.
    let mut parts =
        IncidentParts::new(incident_id(&receiver, group_key), started_at.unwrap_or(now));
    parts.title = Some(title);
    parts.severity = severity;
    parts.started_at = started_at;
    parts.resolved_at = resolved_at;
    parts.services = services.into_iter().collect();
    parts.source = Some("alertmanager".into());
    parts.labels = incident_labels;
    parts.links = links;
    let incident = Incident::new(parts).map_err(|e| PayloadError::Shape {
        sender: "Alertmanager",
        message: e.to_string(),
    })?;
    Ok(Outcome::Publish(subject, Box::new(incident)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_and_match() {
        let l: BTreeMap<String, String> = [("severity".to_owned(), "page".to_owned())].into();
        assert!(
            Matcher::parse("severity=~critical|page")
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Matcher::parse("severity!~critical|page")
                .unwrap()
                .matches(&l)
        );
        assert!(Matcher::parse("team!=test").unwrap().matches(&l));
        assert!(!Matcher::parse("severity=critical").unwrap().matches(&l));
        assert!(Matcher::parse("nonsense").is_err());
        assert!(
            Matcher::parse("severity=~crit.*").is_err(),
            "a regex is refused, not ignored"
        );
        let m = Matcher::parse("summary=a!=b").unwrap();
        assert_eq!(
            (m.op, m.values.as_slice()),
            (MatchOp::Equal, &["a!=b".to_owned()][..])
        );
    }

    #[test]
    fn the_id_is_stable_per_receiver_and_group() {
        assert_eq!(
            incident_id("r", "{}:{a=\"b\"}"),
            incident_id("r", "{}:{a=\"b\"}")
        );
        assert_ne!(
            incident_id("r", "{}:{a=\"b\"}"),
            incident_id("s", "{}:{a=\"b\"}")
        );
        assert!(incident_id("r", "g").as_str().starts_with("am-"));
    }
}
