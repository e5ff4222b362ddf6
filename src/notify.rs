//! Telling on-call where the evidence is: `incidents.evidence.ready` on JetStream (DESIGN.md
//! "Notifications", published with a message id so a repeat is dropped) and, when
//! `notify.webhook_url` is set, a Slack-compatible webhook message with the report link.

use std::time::Duration;

use serde::Serialize;
use sha2::Digest;

use crate::queue::{EVIDENCE_READY, Queue, QueueError};

/// The `incidents.evidence.ready` message.
#[derive(Clone, Debug, Serialize)]
pub struct EvidenceReady {
    pub incident_id: String,
    pub capture_id: String,
    /// `complete` or `partial`.
    pub status: String,
    /// Where the bundle is: `s3://bucket/prefix/incident/capture/` (or a local directory).
    pub bundle: String,
    /// A presigned link to `report.html`, valid for `store.link_ttl` at most (less with
    /// temporary credentials: it dies with them).
    pub report_url: String,
    /// The stable link through the intake (`intake.public_url`, signed with
    /// `intake.link_secret`), honoured until `stable_report_url_expires_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_report_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_report_url_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub manifest_sha256: String,
    pub counts: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the manifest is not readable JSON: {0}")]
    Manifest(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl EvidenceReady {
    /// The message for a stored bundle, from its manifest's bytes.
    pub fn new(manifest: &[u8], bundle: String, report_url: String) -> Result<Self, NotifyError> {
        let m: serde_json::Value =
            serde_json::from_slice(manifest).map_err(|e| NotifyError::Manifest(e.to_string()))?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        Ok(Self {
            incident_id: text(&m["incident"]["id"]),
            capture_id: text(&m["capture"]["id"]),
            status: text(&m["completeness"]["status"]),
            bundle,
            report_url,
            stable_report_url: None,
            stable_report_url_expires_at: None,
            manifest_sha256: hex::encode(sha2::Sha256::digest(manifest)),
            counts: m["counts"].clone(),
        })
    }

    /// Publishes the message; JetStream drops a repeat of the same capture's announcement
    /// within its duplicate window. Returns true when this was the first announcement.
    pub async fn publish(&self, queue: &Queue, timeout: Duration) -> Result<bool, NotifyError> {
        let payload = serde_json::to_vec(self).map_err(|e| NotifyError::Manifest(e.to_string()))?;
        let id = format!("{EVIDENCE_READY}:{}:{}", self.incident_id, self.capture_id);
        let published = queue.publish(EVIDENCE_READY, &id, payload, timeout).await?;
        Ok(!published.duplicate)
    }

    /// The Slack-compatible webhook body: `text` with a link, for any incoming webhook that
    /// takes Slack's format (Slack, Mattermost, Rocket.Chat, Discord's `/slack` endpoint).
    pub fn webhook_body(&self) -> serde_json::Value {
        let counts = &self.counts;
        let n = |k: &str| counts[k].as_u64().unwrap_or(0);
        let text = format!(
            "Evidence for incident *{}* ({} capture) is stored: {}, {} traces ({} error, {} slow, {} baseline).\n<{}|Open the report> · bundle `{}` · manifest sha256 `{}`",
            self.incident_id,
            self.capture_id,
            self.status,
            n("traces"),
            n("error_traces"),
            n("slow_traces"),
            n("baseline_traces"),
            self.stable_report_url
                .as_deref()
                .unwrap_or(&self.report_url),
            self.bundle,
            &self.manifest_sha256,
        );
        serde_json::json!({ "text": text })
    }
}

/// Posts `body` to a webhook, retrying connection errors, 429 and 5xx a few times.
pub async fn post_webhook(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    use backon::{ExponentialBuilder, Retryable};
    let send = || async {
        let r = http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| (true, e.without_url().to_string()))?;
        let status = r.status();
        if status.is_success() {
            Ok(())
        } else {
            let retry = status.as_u16() == 429 || status.is_server_error();
            Err((retry, format!("answered {status}")))
        }
    };
    send.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_times(3),
    )
    .when(|(retry, _)| *retry)
    .await
    .map_err(|(_, e)| e)
}
