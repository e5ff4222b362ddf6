//! The incident queue: NATS JetStream. Connects (credentials, token or nkey from config;
//! reconnecting forever), makes sure the `INCIDENTS` stream exists (created when missing, left
//! unchanged when present), and publishes incident messages with a `Nats-Msg-Id`, waiting for
//! JetStream's acknowledgement, so a duplicate inside the stream's window is dropped by the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};

use crate::config::NatsSettings;

/// The subjects incidents travel on.
pub const DECLARED: &str = "incidents.declared";
pub const RESOLVED: &str = "incidents.resolved";
/// Messages the worker could not use, with the reason in a header.
pub const DEADLETTER: &str = "incidents.deadletter";
/// Published after a bundle is stored.
pub const EVIDENCE_READY: &str = "incidents.evidence.ready";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("NATS is not connected")]
    Disconnected,
    #[error("cannot create or find the JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("JetStream did not acknowledge the message: {0}")]
    Publish(String),
    #[error("JetStream did not acknowledge the message within {0:?}")]
    Timeout(Duration),
    #[error("nats-server {0} is too old: evidence-locker needs nats-server 2.10 or later")]
    TooOld(String),
    #[error(
        "nats.replicas is {0}, but the nats-server is not part of a JetStream cluster: set nats.replicas = 1, or run a cluster of at least {0} nodes"
    )]
    ReplicasNotSupported(usize),
}

impl QueueError {
    /// An error that asking again will not cure: the configuration or the server must change.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::TooOld(_) | Self::ReplicasNotSupported(_))
    }
}

/// True when `version` (`2.10.3`, `v2.12.8-RC.1`) is at least `major.minor`.
fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// What JetStream said about a published message.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub sequence: u64,
    /// JetStream had already seen this message id inside its duplicate window.
    pub duplicate: bool,
}

/// A connection to JetStream.
pub struct Queue {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
    stream_ready: AtomicBool,
}

impl Queue {
    /// Connects in the background: returns at once, and keeps (re)connecting forever.
    pub async fn connect(
        settings: &NatsSettings,
        ack_timeout: Duration,
    ) -> Result<Self, QueueError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(concat!("evidence-locker/", env!("CARGO_PKG_VERSION")))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2));
        if !settings.credentials.is_empty() {
            options = options
                .credentials_file(&settings.credentials)
                .await
                .map_err(|source| QueueError::Credentials {
                    path: settings.credentials.clone(),
                    source,
                })?;
        } else if !settings.token.is_empty() {
            options = options.token(settings.token.clone());
        } else if !settings.nkey.is_empty() {
            options = options.nkey(settings.nkey.clone());
        }
        let client = options
            .connect(settings.servers())
            .await
            .map_err(|e| QueueError::Connect(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            settings: settings.clone(),
            stream_ready: AtomicBool::new(false),
        })
    }

    /// The largest payload the server accepts.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// True while the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the stream when it is missing; an existing stream is left as it is.
    pub async fn ensure_stream(&self) -> Result<(), QueueError> {
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec!["incidents.>".to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: self.settings.duplicate_window,
            max_age: self.settings.stream_max_age,
            max_bytes: crate::config::parse_size(&self.settings.stream_max_bytes)
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            num_replicas: self.settings.replicas,
            ..Default::default()
        };
        let stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED =>
                {
                    QueueError::ReplicasNotSupported(self.settings.replicas)
                }
                _ => QueueError::Stream {
                    stream: self.settings.stream.clone(),
                    message: e.to_string(),
                },
            })?;
        let kept = stream.cached_info().config.num_replicas;
        if kept != self.settings.replicas {
            tracing::warn!(
                stream = %self.settings.stream,
                replicas = kept,
                configured = self.settings.replicas,
                "the stream exists with another number of replicas, which is kept (change it with `nats stream edit`)"
            );
        }
        self.stream_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Forgets that the stream exists: the next [`Queue::ensure_stream`] asks the server again
    /// (after a pull failed because the stream or consumer went away).
    pub fn forget_stream(&self) {
        self.stream_ready.store(false, Ordering::Release);
    }

    /// Refuses a nats-server older than 2.10: 2.9 silently ignores a consumer's
    /// `filter_subjects`, and its key-value API differs (the worker's claims fail with a
    /// serialization error otherwise). Only known once connected.
    pub fn check_server_version(&self) -> Result<(), QueueError> {
        let version = self.client.server_info().version;
        if version.is_empty() {
            return Ok(());
        }
        if version_at_least(&version, 2, 10) {
            Ok(())
        } else {
            Err(QueueError::TooOld(version))
        }
    }

    /// The JetStream context (consumers, key-value buckets).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes `payload` on `subject` with `msg_id` and waits for JetStream's ack.
    pub async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Published, QueueError> {
        self.publish_with_headers(subject, msg_id, None, payload, timeout)
            .await
    }

    /// [`Queue::publish`] with headers besides the message id.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        msg_id: &str,
        headers: Option<async_nats::HeaderMap>,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Published, QueueError> {
        if !self.is_connected() {
            return Err(QueueError::Disconnected);
        }
        let work = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                self.ensure_stream().await?;
                let sent = self
                    .js
                    .send_publish(subject.to_owned(), {
                        let mut m = PublishMessage::build();
                        if let Some(h) = &headers {
                            m = m.headers(h.clone());
                        }
                        m.payload(payload.clone().into()).message_id(msg_id)
                    })
                    .await;
                let acked = match sent {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(ack) => {
                        return Ok(Published {
                            sequence: ack.sequence,
                            duplicate: ack.duplicate,
                        });
                    }
                    // The stream went away (deleted, or a server with fresh storage): make it
                    // again, once.
                    Err(e)
                        if attempt == 1
                            && matches!(
                                e.kind(),
                                async_nats::jetstream::context::PublishErrorKind::StreamNotFound
                                    | async_nats::jetstream::context::PublishErrorKind::BrokenPipe
                            ) =>
                    {
                        self.stream_ready.store(false, Ordering::Release);
                    }
                    Err(e) => return Err(QueueError::Publish(e.to_string())),
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| QueueError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_versions_compare() {
        assert!(super::version_at_least("2.10.0", 2, 10));
        assert!(super::version_at_least("v2.12.8", 2, 10));
        assert!(super::version_at_least("3.0.0", 2, 10));
        assert!(!super::version_at_least("2.9.25", 2, 10));
        assert!(!super::version_at_least("1.4.1", 2, 10));
    }
}
