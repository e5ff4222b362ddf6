//! Claims: one worker at a time captures and stores a given capture (incident id + kind), even
//! when the same incident arrives several times at once or at two worker processes. A claim is
//! a key in a JetStream key-value bucket, created only if absent; its holder renews it while it
//! works and deletes it when done. A worker that dies stops renewing, and the bucket's age limit
//! frees the claim after `worker.claim_ttl`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cannot open the claims bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("cannot claim {key}: {message}")]
    Claim { key: String, message: String },
}

/// The claims bucket.
#[derive(Clone)]
pub struct Claims {
    kv: kv::Store,
    ttl: Duration,
    owner: String,
}

/// A claim this worker holds; released when dropped.
pub struct Claim {
    kv: kv::Store,
    key: String,
    /// The revision of our latest write: a release deletes only that, never a successor's claim.
    revision: Arc<AtomicU64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renewer.abort();
        let kv = self.kv.clone();
        let key = std::mem::take(&mut self.key);
        let revision = self.revision.load(Ordering::Acquire);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = kv.delete_expect_revision(&key, Some(revision)).await {
                    tracing::debug!(key, error = %e, "claim not released; it expires by itself");
                }
            });
        }
    }
}

/// The key-value bucket `name`, created when missing with one value per key kept `ttl` (an
/// existing bucket is used as it is).
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClaimError> {
    match js.get_key_value(name).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                description: description.to_owned(),
                history: 1,
                max_age: ttl,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ClaimError::Bucket {
                bucket: name.to_owned(),
                message: e.to_string(),
            }),
    }
}

impl Claims {
    /// Opens the bucket `name`, creating it when missing (its age limit is the claim TTL).
    pub async fn open(
        js: &jetstream::Context,
        name: &str,
        ttl: Duration,
        replicas: usize,
        owner: String,
    ) -> Result<Self, ClaimError> {
        let kv = open_bucket(
            js,
            name,
            "evidence-locker: which worker is capturing which incident",
            ttl,
            replicas,
        )
        .await?;
        Ok(Self { kv, ttl, owner })
    }

    /// The bucket key of a capture: a hash, as incident ids may hold characters keys may not.
    fn key(incident: &str, capture: &str) -> String {
        let digest = sha2::Sha256::digest(format!("{incident}\n{capture}").as_bytes());
        format!("{capture}.{}", hex::encode(&digest[..16]))
    }

    /// Takes the claim of a capture, or returns `None` while another worker holds it.
    pub async fn try_claim(
        &self,
        incident: &str,
        capture: &str,
    ) -> Result<Option<Claim>, ClaimError> {
        let key = Self::key(incident, capture);
        let value = serde_json::json!({
            "incident": incident, "capture": capture, "owner": self.owner,
            "since": chrono::Utc::now(),
        })
        .to_string();
        let revision = match self.kv.create(&key, value.clone().into()).await {
            Ok(rev) => rev,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(e) => {
                return Err(ClaimError::Claim {
                    key,
                    message: e.to_string(),
                });
            }
        };
        let kv = self.kv.clone();
        let every = self.ttl / 3;
        let renew_key = key.clone();
        let shared = Arc::new(AtomicU64::new(revision));
        let latest = shared.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let revision = latest.load(Ordering::Acquire);
                match kv.update(&renew_key, value.clone().into(), revision).await {
                    Ok(r) => latest.store(r, Ordering::Release),
                    Err(e) => {
                        // An update applied whose answer was lost leaves a newer revision that
                        // is still ours: adopt it; anything else means the claim is lost.
                        let ours = kv.entry(&renew_key).await.ok().flatten().filter(|en| {
                            en.value.as_ref() == value.as_bytes()
                                && en.operation == kv::Operation::Put
                        });
                        match ours {
                            Some(en) => latest.store(en.revision, Ordering::Release),
                            None => tracing::error!(
                                key = renew_key,
                                error = %e,
                                "lost a capture claim (NATS unreachable longer than worker.claim_ttl?); another worker may capture the same incident"
                            ),
                        }
                    }
                }
            }
        });
        Ok(Some(Claim {
            kv: self.kv.clone(),
            key,
            revision: shared,
            renewer,
        }))
    }
}

/// Which captures have been announced (`incidents.evidence.ready` and the webhook), kept in the
/// key-value bucket `<consumer>-announced` for `worker.announced_ttl`: a repeat of an occurrence
/// long after JetStream's duplicate window (Alertmanager repeats a firing group every
/// `repeat_interval`) finds its capture stored and announced, and tells nobody again.
#[derive(Clone)]
pub struct Announced {
    kv: kv::Store,
}

impl Announced {
    /// Opens the bucket `name`, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        name: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ClaimError> {
        let kv = open_bucket(
            js,
            name,
            "evidence-locker: captures already announced",
            ttl,
            replicas,
        )
        .await?;
        Ok(Self { kv })
    }

    /// True when the capture's announcement is on record. A bucket that cannot be asked counts
    /// as not announced: on-call may be told twice, never not at all.
    pub async fn seen(&self, incident: &str, capture: &str) -> bool {
        match self.kv.get(Claims::key(incident, capture)).await {
            Ok(v) => v.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask whether this capture was announced; announcing");
                false
            }
        }
    }

    /// Records that the capture was announced.
    pub async fn record(&self, incident: &str, capture: &str) {
        let value =
            serde_json::json!({"incident": incident, "capture": capture, "at": chrono::Utc::now()})
                .to_string();
        if let Err(e) = self
            .kv
            .put(Claims::key(incident, capture), value.into())
            .await
        {
            tracing::warn!(error = %e, "cannot record the announcement; a repeat may announce it again");
        }
    }
}
