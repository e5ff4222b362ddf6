//! The worker's one step, [`Worker::process_one`]: a message goes through parse → claim →
//! (already stored? already spooled?) → capture into the spool → store → notify → ack, and ends
//! in exactly one of: acked, nak'ed with a growing delay, or dead-lettered and terminated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::{DateTime, Utc};
use sha2::Digest;

use super::Worker;
use super::job::{CaptureKind, Job, capture_base, numbered, position_in};
use super::metrics::{self, Outcome};
use crate::bundle::{BundleOptions, PreviousCapture};
use crate::model::IncidentId;
use crate::notify::{EvidenceReady, post_webhook};
use crate::queue::DEADLETTER;

/// How a job ended well.
enum Done {
    Stored,
    AlreadyCaptured,
}

/// How a job ended badly (or not yet).
enum Failure {
    /// Worth another delivery (backend, store or NATS trouble).
    Transient(String),
    /// Will not get better by retrying.
    Permanent(String),
    /// Not due yet (a resolved capture's tail is still in the future): handed back to be
    /// redelivered after this long, so that no capture slot is held while waiting.
    NotDue(Duration),
}

/// How many captures of one occurrence and kind may supersede a partial one.
const MAX_SUPERSEDING: usize = 5;

fn transient(e: impl std::fmt::Display) -> Failure {
    Failure::Transient(e.to_string())
}

/// A webhook URL's scheme and host: its path is the secret (Slack's `/services/T…/B…/…`).
fn webhook_host(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")))
        .unwrap_or_else(|_| "<not a URL>".into())
}

/// How often a waiting worker looks again at a capture another worker holds.
const CLAIM_POLL: Duration = Duration::from_secs(2);

impl Worker {
    /// Handles one message to the end.
    pub(crate) async fn process_one(&self, msg: Message, slot: tokio::sync::OwnedSemaphorePermit) {
        let mut slot = Some(slot);
        let started = std::time::Instant::now();
        crate::metrics::get().incidents_received.inc();
        let (deliveries, published, sequence) = match msg.info() {
            Ok(i) => (i.delivered, i.published, i.stream_sequence),
            Err(e) => {
                tracing::warn!(error = %e, "a message without JetStream metadata; ignored");
                return;
            }
        };
        let job = match Job::parse(
            msg.subject.as_str(),
            &msg.payload,
            published,
            Utc::now(),
            self.rules,
        ) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(sequence, reason, "refusing an incident message");
                self.dead_letter(&msg, "refused", &reason, deliveries).await;
                return;
            }
        };
        // Every line logged while this message is worked on carries the incident and capture.
        let span = tracing::info_span!(
            "capture",
            incident_id = %job.incident.id(),
            capture_id = job.base_capture_id(),
            delivery = deliveries
        );
        let work = tracing::Instrument::instrument(
            self.heartbeat(&msg, self.handle(&job, deliveries, &mut slot)),
            span.clone(),
        );
        let mut handing_back = self.handing_back.clone();
        let outcome = tokio::select! {
            r = work => r,
            _ = async { let _ = handing_back.wait_for(|h| *h).await; } => {
                if deliveries >= self.max_deliver {
                    // JetStream would not deliver it again: record it rather than lose it.
                    let reason = "the worker shut down during the message's last delivery; a spooled bundle, if any, is stored by the next worker start";
                    tracing::Instrument::instrument(
                        self.dead_letter(&msg, "shutdown", reason, deliveries),
                        span.clone(),
                    )
                    .await;
                    return;
                }
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                tracing::warn!(parent: &span, "handed back unfinished (shutdown)");
                metrics::outcome(Outcome::HandedBack);
                return;
            }
        };
        match outcome {
            Ok(done) => {
                if let Err(e) = msg.double_ack().await {
                    // Redelivered later, it will find the bundle stored.
                    tracing::warn!(parent: &span, error = %e, "cannot acknowledge");
                }
                let outcome = match done {
                    Done::Stored => {
                        crate::metrics::get()
                            .capture_duration
                            .observe(started.elapsed().as_secs_f64());
                        Outcome::Stored
                    }
                    Done::AlreadyCaptured => Outcome::AlreadyCaptured,
                };
                tracing::info!(parent: &span, outcome = ?outcome, "done");
                metrics::outcome(outcome);
            }
            Err(Failure::Permanent(reason)) => {
                tracing::error!(parent: &span, reason, "cannot be captured");
                metrics::failed("permanent");
                tracing::Instrument::instrument(
                    self.dead_letter(&msg, "permanent", &reason, deliveries),
                    span.clone(),
                )
                .await;
            }
            Err(Failure::Transient(error)) if deliveries >= self.max_deliver => {
                tracing::error!(parent: &span, error, "failed on its last delivery");
                metrics::failed("transient");
                let reason = format!("failed {deliveries} times; last error: {error}");
                tracing::Instrument::instrument(
                    self.dead_letter(&msg, "max_deliver", &reason, deliveries),
                    span.clone(),
                )
                .await;
            }
            Err(Failure::Transient(error)) => {
                metrics::failed("transient");
                let delay = self.retry_delay(deliveries);
                tracing::warn!(parent: &span, error, retry_in = ?delay, "failed; will be retried");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                metrics::outcome(Outcome::Retried);
            }
            Err(Failure::NotDue(delay)) => {
                tracing::info!(parent: &span, due_in = ?delay, "not due yet: handed back until the window has passed");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                metrics::outcome(Outcome::Waiting);
            }
        }
    }

    /// `retry_delay` doubled per delivery so far, at most `retry_delay_max`.
    fn retry_delay(&self, deliveries: i64) -> Duration {
        let w = &self.settings.worker;
        let doublings = deliveries.clamp(1, 20) as u32 - 1;
        w.retry_delay
            .saturating_mul(1 << doublings)
            .min(w.retry_delay_max)
    }

    /// Runs `work` while telling JetStream the message is still being worked on.
    async fn heartbeat<T>(&self, msg: &Message, work: impl std::future::Future<Output = T>) -> T {
        let every = (self.ack_wait / 3).max(Duration::from_millis(300));
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tick.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "in-progress ack not sent");
                    }
                }
            }
        }
    }

    async fn handle(
        &self,
        job: &Job,
        deliveries: i64,
        slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Done, Failure> {
        let id = job.incident.id();
        let base = job.base_capture_id();
        // Another worker may be on the same occurrence (a duplicate message): wait for it to
        // finish or to die, while our message stays ours.
        let _claim = loop {
            if let Some(c) = self
                .claims
                .try_claim(id.as_str(), &base)
                .await
                .map_err(transient)?
            {
                break c;
            }
            if let Some((capture, stored)) = self.latest_stored(id, &base).await
                && !supersedable(&base, &stored)
            {
                self.announce(id, &capture, &stored).await?;
                return Ok(Done::AlreadyCaptured);
            }
            tracing::debug!("another worker holds this capture; waiting");
            tokio::time::sleep(CLAIM_POLL).await;
        };
        // A spooled bundle goes to `store_spooled`, which also finds it already stored.
        let (capture, dir) = match self.spool.find_occurrence(id, &base) {
            Some(found) => {
                tracing::info!(
                    capture = found.0,
                    "found in the spool; storing it without querying the backend again"
                );
                found
            }
            None => {
                let latest = self.latest_stored(id, &base).await;
                let (capture, previous) = match &latest {
                    None => (base.clone(), None),
                    Some((capture, stored)) if !supersedable(&base, stored) => {
                        self.announce(id, capture, stored).await?;
                        return Ok(Done::AlreadyCaptured);
                    }
                    Some((capture, stored)) => {
                        let next = next_capture_id(&base, capture);
                        tracing::info!(
                            partial = capture,
                            capture = next,
                            "the stored capture is partial (its backend could not be asked); capturing again"
                        );
                        (next, Some(self.previous(id, capture, stored)))
                    }
                };
                let dir = self
                    .capture_into_spool(job, &capture, previous, deliveries)
                    .await?;
                (capture, dir)
            }
        };
        // The evidence is safe on disk: free the capture slot, and keep the message (and the
        // claim) while the store is retried here, so that no other worker captures it again.
        drop(slot.take());
        let mut attempt: i64 = 1;
        loop {
            match self.store_spooled(id, &capture, &dir).await {
                Err(Failure::Transient(e)) if attempt < self.max_deliver.min(1000) => {
                    let delay = self.retry_delay(attempt);
                    tracing::warn!(error = e, retry_in = ?delay, attempt, "not stored yet; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                // Redelivered, the message could reach a worker without this spool, which would
                // query the backend again: recorded instead, while the spool keeps trying.
                Err(Failure::Transient(e)) => {
                    return Err(Failure::Permanent(format!(
                        "not stored after {attempt} attempts; the spool keeps retrying: {e}"
                    )));
                }
                other => return other,
            }
        }
    }

    /// The newest stored capture of an occurrence (`base`, `base-2`, …) with its manifest. A
    /// store that cannot be asked must not delay the capture (the traces expire; the bundle can
    /// wait in the spool): that counts as not stored, and a duplicate is found when storing.
    async fn latest_stored(&self, id: &IncidentId, base: &str) -> Option<(String, Vec<u8>)> {
        let mut latest = None;
        for n in 1..=MAX_SUPERSEDING + 1 {
            let capture = numbered(base, n);
            match self.store.manifest(id, &capture).await {
                Ok(Some(m)) => latest = Some((capture, m)),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the store whether this capture exists; capturing anyway");
                    break;
                }
            }
        }
        latest
    }

    /// A stored capture as the `previous_capture` of the next one.
    fn previous(&self, id: &IncidentId, capture: &str, manifest: &[u8]) -> PreviousCapture {
        PreviousCapture {
            capture_id: capture.to_owned(),
            bundle: self.store.bundle_url(id, capture),
            manifest_sha256: hex::encode(sha2::Sha256::digest(manifest)),
        }
    }

    /// Uploads a spooled bundle, announces it, and removes it from the spool. A capture the
    /// store already has (stored by another worker meanwhile) is announced as it is stored, and
    /// the spooled copy goes.
    async fn store_spooled(
        &self,
        id: &IncidentId,
        capture: &str,
        dir: &Path,
    ) -> Result<Done, Failure> {
        let stored = self.store.manifest(id, capture).await.map_err(|e| {
            Failure::Transient(format!(
                "cannot reach the store (the bundle is kept in the spool at {}): {e}",
                dir.display()
            ))
        })?;
        if let Some(stored) = stored {
            self.announce(id, capture, &stored).await?;
            self.discard_spooled(id, capture, dir, &stored);
            return Ok(Done::AlreadyCaptured);
        }
        let attempts = self.settings.worker.upload_attempts;
        let bytes = super::spool::dir_bytes(dir);
        let manifest = match self.store.put_bundle(dir, id, capture, attempts).await {
            Ok(manifest) => {
                let m = crate::metrics::get();
                m.stored_bytes.inc_by(bytes);
                m.store_reachable.set(1);
                m.upload_failing.set(0);
                manifest
            }
            Err(e) => {
                let m = crate::metrics::get();
                m.upload_failures.inc();
                if !e.is_conflict() {
                    // /readyz says so until an upload succeeds: the periodic check (a HEAD and
                    // a GET) passes even when uploads are refused (no s3:PutObject, KMS denied).
                    m.upload_failing.set(1);
                }
                if e.is_conflict() {
                    self.conflicts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((id.to_string(), capture.to_owned()));
                    return Err(Failure::Permanent(format!(
                        "the store holds a different partial copy of this capture; the spooled bundle is kept in {}: {e}",
                        dir.display()
                    )));
                }
                return Err(Failure::Transient(format!(
                    "cannot store the bundle (kept in the spool at {}): {e}",
                    dir.display()
                )));
            }
        };
        self.announce(id, capture, &manifest).await?;
        if let Err(e) = self.spool.remove(id, capture) {
            tracing::error!(error = %e, "stored, but cannot remove the bundle from the spool");
        }
        self.report_spool();
        Ok(Done::Stored)
    }

    /// Publishes `incidents.evidence.ready` and posts the webhook, once per capture: a capture
    /// whose announcement is on record (`worker.announced_ttl`) is not announced again, so a
    /// repeat of the same occurrence (Alertmanager's `repeat_interval`) never re-sends an old
    /// link as news. The record is written after both, so a crash between storing and
    /// announcing still tells on-call on the redelivery.
    async fn announce(
        &self,
        id: &IncidentId,
        capture: &str,
        manifest: &[u8],
    ) -> Result<(), Failure> {
        if self.announced.seen(id.as_str(), capture).await {
            tracing::info!(capture, "already announced");
            return Ok(());
        }
        let link = self
            .store
            .report_link(id, capture)
            .await
            .map_err(transient)?;
        let mut ready = EvidenceReady::new(manifest, self.store.bundle_url(id, capture), link)
            .map_err(transient)?;
        if let Some((url, expires)) = crate::intake::links::stable_link(
            &self.settings.intake,
            id.as_str(),
            capture,
            Utc::now(),
        ) {
            ready.stable_report_url = Some(url);
            ready.stable_report_url_expires_at = Some(expires);
        }
        ready
            .publish(&self.queue, super::PUBLISH_TIMEOUT)
            .await
            .map_err(transient)?;
        tracing::info!(
            bundle = ready.bundle,
            status = ready.status,
            manifest_sha256 = ready.manifest_sha256,
            "evidence ready"
        );
        let url = &self.settings.notify.webhook_url;
        if !url.is_empty()
            && let Err(e) = post_webhook(&self.http, url, &ready.webhook_body())
                .await
                .inspect(|_| metrics::webhook(true))
        {
            metrics::webhook(false);
            tracing::error!(
                webhook = %webhook_host(url),
                error = e,
                "the webhook notification failed (the bundle is stored and announced on NATS)"
            );
        }
        self.announced.record(id.as_str(), capture).await;
        Ok(())
    }

    /// A spooled copy of a capture the store already has (exactly one bundle per capture): removed;
    /// a copy that differs (another worker's capture won) is reported before it goes.
    fn discard_spooled(&self, id: &IncidentId, capture: &str, dir: &Path, stored: &[u8]) {
        let ours = std::fs::read(dir.join("manifest.json")).unwrap_or_default();
        if ours != stored {
            tracing::warn!(
                spooled = %dir.display(),
                stored_sha256 = hex::encode(sha2::Sha256::digest(stored)),
                spooled_sha256 = hex::encode(sha2::Sha256::digest(&ours)),
                "another worker stored this capture first; the spooled copy is discarded"
            );
        }
        if let Err(e) = self.spool.remove(id, capture) {
            tracing::error!(error = %e, "cannot remove a redundant spooled bundle");
        }
        self.report_spool();
    }

    /// Captures from the backends and writes the bundle into the spool as `capture`. A capture
    /// in which a backend could not be asked is not kept while retries remain and the window's
    /// traces are still within the backend's retention: the message is retried instead (the
    /// backend is often overloaded by the very incident). Only then is it stored as partial.
    async fn capture_into_spool(
        &self,
        job: &Job,
        capture_id: &str,
        previous: Option<PreviousCapture>,
        deliveries: i64,
    ) -> Result<PathBuf, Failure> {
        self.spool.check_room().map_err(transient)?;
        let last_delivery = deliveries >= self.max_deliver;
        let due_in = job.due_in(Utc::now());
        if !due_in.is_zero() && !last_delivery {
            return Err(Failure::NotDue(due_in + Duration::from_millis(200)));
        }
        let window = job
            .window(Utc::now())
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let previous = match (previous, job.kind) {
            (Some(p), _) => Some(p),
            (None, CaptureKind::Declared) => None,
            (None, CaptureKind::Resolved) => self.declared_capture(job).await,
        };
        let sources = crate::collect::configured_sources(&self.settings)
            .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
        let mut plan = crate::collect::plan(&self.settings, job.incident.clone(), window);
        plan.store = Some(
            crate::collect::backend_spill(&self.settings)
                .map_err(|e| transient(format!("{e:#}")))?,
        );
        let _margin = self.check_margin(&plan.window);
        tracing::info!(
            window.start = %plan.window.start(),
            window.end = %plan.window.end(),
            services = plan.services.len(),
            capture = capture_id,
            "capturing"
        );
        let mut capture = crate::capture::run(&sources, &plan).await;
        crate::redact::redact_capture(&self.settings.redaction, &mut capture)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let unreachable: Vec<&crate::capture::Gap> = capture
            .gaps
            .iter()
            .filter(|g| crate::capture::is_retryable(&g.kind))
            .collect();
        if !unreachable.is_empty() && !last_delivery {
            let next = self.retry_delay(deliveries);
            if self.within_retention(&plan.window, next) {
                let first = unreachable[0];
                return Err(Failure::Transient(format!(
                    "{} gap(s) a later attempt may fill ({}: {}); capturing again in {}",
                    unreachable.len(),
                    first.kind,
                    first.message,
                    humantime::format_duration(next)
                )));
            }
            tracing::warn!(
                "the window's oldest traces leave the backend's retention before another attempt: keeping this partial capture"
            );
        }
        let retention = crate::store::retention(self.store.lock_for(capture.started));
        let staged = self
            .spool
            .stage(job.incident.id(), capture_id)
            .map_err(transient)?;
        let opts = BundleOptions {
            capture_id: capture_id.to_owned(),
            error_rate_threshold: self.settings.analysis.error_rate_threshold,
            zstd_level: 3,
            retention,
            kind: Some(job.kind.name().to_owned()),
            previous,
            trace_url: (!self.settings.report.trace_url.is_empty())
                .then(|| self.settings.report.trace_url.clone()),
            signer: crate::sign::ManifestSigner::from_settings(&self.settings.signing)
                .map_err(Failure::Permanent)?
                .map(std::sync::Arc::new),
        };
        let summary =
            match crate::collect::write_into(staged.staging.clone(), plan, capture, opts).await {
                Ok(s) => s,
                Err(e) => {
                    self.spool.abandon(&staged);
                    return Err(Failure::Transient(format!("{e:#}")));
                }
            };
        let dir = self.spool.publish(&staged).map_err(transient)?;
        metrics::captured(summary.status, &summary.counts, &summary.gaps);
        tracing::info!(
            status = summary.status,
            traces = summary.counts.traces,
            gaps = summary.gaps.len(),
            spooled = %dir.display(),
            "captured"
        );
        self.report_spool();
        Ok(dir)
    }

    /// The shortest retention of the enabled backends.
    fn shortest_retention(&self) -> Option<chrono::Duration> {
        let shortest = self
            .settings
            .backends
            .values()
            .filter(|b| b.enabled())
            .map(|b| b.retention)
            .min()?;
        chrono::Duration::from_std(shortest).ok()
    }

    /// When the oldest part of a message's window leaves the shortest backend retention: the
    /// worker captures queued incidents earliest deadline first. A message that cannot be read
    /// comes first (it is dead-lettered at once).
    pub(crate) fn deadline(&self, msg: &Message) -> DateTime<Utc> {
        let Ok(info) = msg.info() else {
            return DateTime::<Utc>::MIN_UTC;
        };
        let now = Utc::now();
        let Ok(job) = Job::parse(
            msg.subject.as_str(),
            &msg.payload,
            info.published,
            now,
            self.rules,
        ) else {
            return DateTime::<Utc>::MIN_UTC;
        };
        let Ok(window) = job.window(now) else {
            return DateTime::<Utc>::MIN_UTC;
        };
        match self.shortest_retention() {
            Some(keep) => window
                .window
                .start()
                .checked_add_signed(keep)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            None => DateTime::<Utc>::MAX_UTC,
        }
    }

    /// Warns (log and metric) when the window's oldest part is about to leave a backend's
    /// retention, or already has (that part is then an `expired` gap); the margin is watched
    /// (`evidence_locker_worker_retention_margin_seconds`) while the returned guard lives.
    fn check_margin(
        &self,
        window: &crate::model::TimeWindow,
    ) -> Option<crate::metrics::MarginWatch> {
        let keep = self.shortest_retention()?;
        let expires = window.start().checked_add_signed(keep)?;
        let watch = crate::metrics::get().watch_margin(expires);
        let margin = expires - Utc::now();
        let warn = chrono::Duration::from_std(self.settings.capture.retention_margin_warn)
            .unwrap_or_default();
        if margin < warn {
            crate::metrics::get().retention_margin_warnings.inc();
            if margin <= chrono::Duration::zero() {
                tracing::warn!(
                    expired_at = %expires,
                    "the window's oldest part has already left the backend's retention: it is recorded as an expired gap"
                );
            } else {
                tracing::warn!(
                    margin = %humantime::format_duration(margin.to_std().unwrap_or_default()),
                    expires_at = %expires,
                    warn_below = %humantime::format_duration(self.settings.capture.retention_margin_warn),
                    "little time left before the window's oldest part leaves the backend's retention"
                );
            }
        }
        Some(watch)
    }

    /// True when the whole window is still inside every configured backend's retention `after`
    /// from now (with as much again to spare for the capture itself).
    fn within_retention(&self, window: &crate::model::TimeWindow, after: Duration) -> bool {
        let Some(keep) = self.shortest_retention() else {
            return true;
        };
        let spare = chrono::Duration::from_std(after.saturating_mul(2)).unwrap_or_default();
        window
            .start()
            .checked_add_signed(keep)
            .is_some_and(|expires| expires > Utc::now() + spare)
    }

    /// The declared capture a resolved one follows (the newest of its occurrence): stored, or
    /// still in the spool.
    async fn declared_capture(&self, job: &Job) -> Option<PreviousCapture> {
        let id = job.incident.id();
        let base = capture_base(&job.incident, CaptureKind::Declared);
        if let Some((capture, m)) = self.latest_stored(id, &base).await {
            return Some(self.previous(id, &capture, &m));
        }
        let (capture, dir) = self.spool.find_occurrence(id, &base)?;
        let m = std::fs::read(dir.join("manifest.json")).ok()?;
        Some(self.previous(id, &capture, &m))
    }

    /// Publishes the message's payload and headers with the reason to `incidents.deadletter`,
    /// then terminates it. If the dead letter cannot be published, the message is retried
    /// instead: it is never dropped unrecorded.
    /// Publishes the message on incidents.deadletter with `reason`, counted under `kind`
    /// (refused, permanent, max_deliver, shutdown).
    async fn dead_letter(&self, msg: &Message, kind: &'static str, reason: &str, deliveries: i64) {
        let info = msg.info().ok();
        let sequence = info.as_ref().map(|i| i.stream_sequence).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(original) = &msg.headers {
            let mut kept_bytes = 0usize;
            for (name, values) in original.iter() {
                // The original's Nats-Msg-Id and other Nats-* headers would steer the new
                // publication (deduplication, expectations): kept under another name.
                let name = name.to_string();
                let kept = if name.to_ascii_lowercase().starts_with("nats-") {
                    format!("Evidence-Locker-Original-{name}")
                } else {
                    name
                };
                for v in values {
                    // Headers count against the server's payload limit too.
                    kept_bytes += kept.len() + v.as_str().len();
                    if kept_bytes > 16 << 10 {
                        break;
                    }
                    headers.append(kept.as_str(), v.as_str());
                }
            }
        }
        let one_line: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(2000)
            .collect();
        headers.insert("Evidence-Locker-Reason", one_line.as_str());
        headers.insert("Evidence-Locker-Subject", msg.subject.as_str());
        headers.insert(
            "Evidence-Locker-Stream-Sequence",
            sequence.to_string().as_str(),
        );
        headers.insert(
            "Evidence-Locker-Deliveries",
            deliveries.to_string().as_str(),
        );
        // The server refuses a payload over its limit: keep what fits, and say so.
        let limit = self.queue.max_payload().saturating_sub(64 << 10).max(1024);
        let payload = if msg.payload.len() > limit {
            headers.insert(
                "Evidence-Locker-Truncated",
                format!("{} of {} bytes kept", limit, msg.payload.len()).as_str(),
            );
            msg.payload[..limit].to_vec()
        } else {
            msg.payload.to_vec()
        };
        let id = format!("deadletter:{}:{sequence}", msg.subject);
        match self
            .queue
            .publish_with_headers(
                DEADLETTER,
                &id,
                Some(headers),
                payload,
                super::PUBLISH_TIMEOUT,
            )
            .await
        {
            Ok(_) => {
                let _ = msg.ack_with(AckKind::Term).await;
                metrics::outcome(Outcome::DeadLettered);
                metrics::dead_lettered(kind);
                tracing::warn!(sequence, reason = one_line, "dead-lettered");
            }
            Err(e) if deliveries >= self.max_deliver => {
                // Not redelivered any more; it stays in the stream under its sequence.
                tracing::error!(
                    sequence,
                    error = %e,
                    reason = one_line,
                    "cannot dead-letter a message on its last delivery: find it in the stream by its sequence"
                );
                metrics::outcome(Outcome::DeadLettered);
                metrics::dead_lettered(kind);
            }
            Err(e) => {
                tracing::error!(sequence, error = %e, "cannot dead-letter; the message will be retried");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(self.retry_delay(deliveries))))
                    .await;
                metrics::outcome(Outcome::Retried);
            }
        }
    }

    /// Stores spooled bundles no message is working on (left by a crash or a restart, or whose
    /// messages were dead-lettered while the store was down).
    pub(crate) async fn drain_spool(&self) {
        let bundles = match self.spool.bundles() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                return;
            }
        };
        for b in bundles {
            let key = (b.incident.to_string(), b.capture.clone());
            if self
                .conflicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
            {
                continue;
            }
            // A message at work on it holds the claim; it stores the bundle itself.
            let claim = match self.claims.try_claim(b.incident.as_str(), &b.capture).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a spooled bundle; later");
                    return;
                }
            };
            tracing::info!(incident_id = %b.incident, capture_id = b.capture, "storing a spooled bundle");
            let result = self.store_spooled(&b.incident, &b.capture, &b.dir).await;
            drop(claim);
            match result {
                Ok(_) | Err(Failure::NotDue(_)) => {}
                Err(Failure::Transient(e)) | Err(Failure::Permanent(e)) => {
                    tracing::warn!(incident_id = %b.incident, capture_id = b.capture, error = e, "a spooled bundle is not stored yet");
                }
            }
        }
    }

    /// Updates the spool gauges and logs the spool's size.
    pub(crate) fn report_spool(&self) {
        let (bytes, bundles) = self.spool.usage();
        let m = crate::metrics::get();
        m.spool_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.spool_bundles
            .set(i64::try_from(bundles).unwrap_or(i64::MAX));
        tracing::info!(bundles, bytes, max_bytes = m.spool_max_bytes.get(), "spool");
    }
}

/// The capture id after `latest` in its occurrence's sequence.
fn next_capture_id(base: &str, latest: &str) -> String {
    numbered(base, position_in(base, latest).unwrap_or(1) + 1)
}

/// Whether the stored capture `manifest` of the occurrence `base` may be superseded by a new
/// one: it is partial because a backend could not be asked (a later attempt may get the
/// traces), and the occurrence has not been captured again too often already.
fn supersedable(base: &str, manifest: &[u8]) -> bool {
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return false;
    };
    let id = m["capture"]["id"].as_str().unwrap_or_default();
    position_in(base, id).unwrap_or(1) <= MAX_SUPERSEDING
        && m["completeness"]["gaps"].as_array().is_some_and(|gaps| {
            gaps.iter()
                .any(|g| crate::capture::is_retryable(g["kind"].as_str().unwrap_or_default()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superseding_captures_are_numbered_and_bounded() {
        let base = "20260205T144000Z-declared";
        assert_eq!(next_capture_id(base, base), format!("{base}-2"));
        assert_eq!(
            next_capture_id(base, &format!("{base}-2")),
            format!("{base}-3")
        );
        let manifest = |id: &str, kind: &str| {
            serde_json::json!({"capture": {"id": id}, "completeness": {"status": "partial", "gaps": [{"kind": kind}]}})
                .to_string()
                .into_bytes()
        };
        assert!(supersedable(base, &manifest(base, "backend_unavailable")));
        assert!(!supersedable(base, &manifest(base, "expired")));
        assert!(!supersedable(
            base,
            &manifest(&format!("{base}-6"), "query_failed")
        ));
        assert!(!supersedable(base, b"not json"));
    }
}
