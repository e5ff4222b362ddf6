//! PagerDuty V3 webhooks: the `X-PagerDuty-Signature` check (HMAC-SHA256 of the raw body, hex,
//! `v1=`; several comma-separated values during a secret rotation; constant-time comparison)
//! and the mapping of `incident.triggered` / `incident.resolved` to incident messages. Other
//! event types are answered 2xx and ignored.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::alertmanager::{Outcome, PayloadError};
use crate::config::IntakeSettings;
use crate::model::{Incident, IncidentId, IncidentParts, json_object};
use crate::queue::{DECLARED, RESOLVED};

/// Signature values looked at, at most: a rotation needs two or three; more is an attack on the
/// CPU.
const MAX_SIGNATURES: usize = 8;

/// True when one of the header's `v1=` signatures is the HMAC-SHA256 of `body` under one of the
/// `secrets`. One MAC per secret, compared in constant time with each value.
pub fn signature_ok(header: Option<&str>, body: &[u8], secrets: &[String]) -> bool {
    let Some(header) = header else {
        return false;
    };
    let signatures: Vec<[u8; 32]> = header
        .split(',')
        .filter_map(|v| v.trim().strip_prefix("v1="))
        .take(MAX_SIGNATURES)
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect();
    if signatures.is_empty() {
        return false;
    }
    secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        signatures.iter().any(|sig| {
            // No early exit: the time taken says nothing about how much of it matched.
            expected
                .iter()
                .zip(sig)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
    })
}

#[derive(Deserialize)]
struct Body {
    event: Event,
}

#[derive(Deserialize)]
struct Event {
    event_type: String,
    #[serde(default)]
    occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    id: String,
    #[serde(default)]
    number: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    urgency: Option<String>,
    #[serde(default)]
    priority: Option<Reference>,
    #[serde(default)]
    service: Option<Reference>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    incident_key: Option<String>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(default)]
    summary: Option<String>,
}

fn shape(message: String) -> PayloadError {
    PayloadError::Shape {
        sender: "PagerDuty v3",
        message,
    }
}

/// Turns a (verified) webhook body into an incident message.
pub fn to_incident(
    body: &[u8],
    settings: &IntakeSettings,
    now: DateTime<Utc>,
) -> Result<Outcome, PayloadError> {
    let b: Body = json_object(body).map_err(|e| shape(e.to_string()))?;
    let subject = match b.event.event_type.as_str() {
        "incident.triggered" => DECLARED,
        "incident.resolved" => RESOLVED,
        other => {
            return Ok(Outcome::Ignored(format!(
                "event type {other} is not captured"
            )));
        }
    };
    let d = b
        .event
        .data
        .ok_or_else(|| shape("the event has no `data`".into()))?;
    let id = IncidentId::parse(&d.id).map_err(|e| shape(e.to_string()))?;
    let service = d.service.and_then(|s| s.summary);
    let services = match &service {
        Some(name) => settings
            .pagerduty_services
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![name.clone()]),
        None => Vec::new(),
    };
    let severity = d
        .priority
        .and_then(|p| p.summary)
        .or_else(|| d.urgency.clone());
    let occurred = b.event.occurred_at.unwrap_or(now);
    let mut labels = std::collections::BTreeMap::new();
    if let Some(u) = d.urgency {
        labels.insert("urgency".to_owned(), u);
    }
    if let Some(n) = d.number {
        labels.insert(
            "pagerduty_number".to_owned(),
            n.to_string().trim_matches('"').to_owned(),
        );
    }
    if let Some(k) = d.incident_key {
        labels.insert("incident_key".to_owned(), k);
    }
    if let Some(s) = service {
        labels.insert("pagerduty_service".to_owned(), s);
    }
    let mut links = std::collections::BTreeMap::new();
    if let Some(u) = d.html_url {
        links.insert("pagerduty".to_owned(), u);
    }
    // Declared at the PagerDuty incident's creation, on both events, so that the resolution
    // names the same occurrence as the trigger.
    let mut parts = IncidentParts::new(id, d.created_at.unwrap_or(occurred));
    parts.title = d.title;
    parts.severity = severity;
    parts.started_at = d.created_at;
    parts.resolved_at = (subject == RESOLVED).then_some(occurred);
    parts.services = services;
    parts.source = Some("pagerduty".into());
    parts.labels = labels;
    parts.links = links;
    let incident = Incident::new(parts).map_err(|e| shape(e.to_string()))?;
    Ok(Outcome::Publish(subject, Box::new(incident)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_headers_and_other_versions() {
        let secret = "s3cret".to_owned();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"{}");
        let good = hex::encode(mac.finalize().into_bytes());
        let header = format!("v0=abc, v1=00ff, v1={good}");
        assert!(signature_ok(
            Some(&header),
            b"{}",
            &["old".into(), secret.clone()]
        ));
        assert!(!signature_ok(
            Some(&header),
            b"{} ",
            std::slice::from_ref(&secret)
        ));
        assert!(!signature_ok(
            Some("v1=zz"),
            b"{}",
            std::slice::from_ref(&secret)
        ));
        assert!(!signature_ok(None, b"{}", std::slice::from_ref(&secret)));
        // An empty secret never signs anything.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"").unwrap();
        mac.update(b"{}");
        let forged = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert!(!signature_ok(Some(&forged), b"{}", &[String::new()]));
        // A header of thousands of values is looked at only so far.
        let flood = format!("{}, v1={good}", vec!["v1=00"; 10_000].join(","));
        assert!(!signature_ok(Some(&flood), b"{}", &[secret]));
    }
}
