//! The request discipline every HTTP backend follows: a timeout per request, at most
//! `concurrency` requests in flight, retries with exponential backoff (`backon`) after connection
//! errors, timeouts, 5xx and 429 (honouring `Retry-After`), and a [`QueryRecord`] for every request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Semaphore;

use super::{QueryRecord, redact_url};
use crate::config::BackendSettings;

/// A request that got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot build the request URL: {0}")]
    Url(String),
    #[error("no answer after {attempts} attempt(s): {message}")]
    Unreachable { attempts: usize, message: String },
    #[error("HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        status: u16,
        attempts: usize,
        body: String,
    },
    #[error("{BUDGET_REACHED} ({limit} bytes read from this backend): no more searches")]
    Budget { limit: u64 },
}

/// How an error of a search that was not sent because `capture.max_bytes` was reached begins.
pub const BUDGET_REACHED: &str = "capture.max_bytes reached";

/// An answer with a status the caller handles (2xx, or 4xx other than 429).
pub struct Answer {
    pub status: u16,
    pub body: bytes::Bytes,
    pub attempts: usize,
    started: Instant,
    record: QueryRecord,
}

/// An HTTP backend: base URL, credentials, limits, and the log of requests made.
pub struct HttpBackend {
    client: reqwest::Client,
    base: url::Url,
    settings: BackendSettings,
    permits: Arc<Semaphore>,
    records: Mutex<Vec<QueryRecord>>,
    first_delay: Duration,
    /// Bytes of answers read so far, and the most that may be (`capture.max_bytes`).
    bytes_read: std::sync::atomic::AtomicU64,
    byte_limit: std::sync::atomic::AtomicU64,
    /// What reading the answers skipped or changed.
    pub tally: super::ReadTally,
}

/// What a request is for, for its record.
pub struct RequestLabel<'a> {
    pub purpose: &'a str,
    pub service: Option<&'a str>,
    pub reason: &'a str,
}

/// The label of a request.
pub fn label<'a>(purpose: &'a str, service: Option<&'a str>, reason: &'a str) -> RequestLabel<'a> {
    RequestLabel {
        purpose,
        service,
        reason,
    }
}

/// The start of an answer's body as text, for an error message.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_owned()
}

impl HttpBackend {
    pub fn new(settings: &BackendSettings) -> Result<Self, HttpError> {
        let mut base = url::Url::parse(&settings.url).map_err(|e| HttpError::Url(e.to_string()))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("evidence-locker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Url(e.to_string()))?;
        Ok(Self {
            client,
            base,
            settings: settings.clone(),
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            records: Mutex::new(Vec::new()),
            first_delay: Duration::from_millis(200),
            bytes_read: Default::default(),
            byte_limit: std::sync::atomic::AtomicU64::new(u64::MAX),
            tally: Default::default(),
        })
    }

    /// Bounds the bytes this backend's answers may add up to (`capture.max_bytes`): once read,
    /// no further request is sent.
    pub fn limit_bytes(&self, limit: u64) {
        self.byte_limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// The base URL without credentials.
    pub fn display_url(&self) -> String {
        redact_url(self.base.as_str())
    }

    /// The requests made so far, in the order they finished.
    pub fn take_records(&self) -> Vec<QueryRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds the trace count of an answer to its record and files the record.
    pub fn finish(&self, answer: Answer, count: Option<usize>, error: Option<String>) {
        let mut record = answer.record;
        record.count = count;
        record.error = error;
        record.duration_ms = answer.started.elapsed().as_millis() as u64;
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    /// Files the record of an answer that could not be used and returns why, for the gap.
    pub fn reject(&self, answer: Answer, why: String) -> String {
        self.finish(answer, None, Some(why.clone()));
        why
    }

    /// Files the record of an answer with an unexpected status and returns why.
    pub fn reject_status(&self, answer: Answer) -> String {
        let why = format!("HTTP {}: {}", answer.status, body_text(&answer.body));
        self.reject(answer, why)
    }

    /// GETs `path` (relative to the base URL) with `params`, retrying what is worth retrying.
    /// Statuses other than 5xx and 429 come back as an [`Answer`] for the caller to judge; the
    /// caller must pass it to [`finish`](Self::finish) so the request is recorded.
    pub async fn get(
        &self,
        path: &str,
        params: &[(&str, String)],
        label: RequestLabel<'_>,
    ) -> Result<Answer, HttpError> {
        let mut url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| HttpError::Url(e.to_string()))?;
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut record = QueryRecord {
            url: redact_url(url.as_str()),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            purpose: label.purpose.to_owned(),
            service: label.service.map(str::to_owned),
            reason: label.reason.to_owned(),
            status: None,
            count: None,
            attempts: 0,
            duration_ms: 0,
            error: None,
        };
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.settings.retries)
            .build();
        let _permit = self.permits.acquire().await;
        let limit = self.byte_limit.load(std::sync::atomic::Ordering::Relaxed);
        if self.bytes_read.load(std::sync::atomic::Ordering::Relaxed) >= limit {
            return Err(HttpError::Budget { limit });
        }
        loop {
            record.attempts += 1;
            let sent = Instant::now();
            let outcome = self.send(url.clone()).await;
            crate::metrics::get().backend_request(
                self.settings.kind.name(),
                label.purpose,
                outcome.as_ref().ok().map(|(status, _, _)| *status),
                sent.elapsed(),
            );
            let (retry_after, failure) = match outcome {
                Ok((status, headers, body)) if status == 429 || status >= 500 => {
                    record.status = Some(status);
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    (
                        retry_after(&headers),
                        HttpError::Status {
                            status,
                            attempts: record.attempts,
                            body: text,
                        },
                    )
                }
                Ok((status, _, body)) => {
                    record.status = Some(status);
                    return Ok(Answer {
                        status,
                        body,
                        attempts: record.attempts,
                        started,
                        record,
                    });
                }
                Err(e) => {
                    record.status = None;
                    (
                        None,
                        HttpError::Unreachable {
                            attempts: record.attempts,
                            message: e,
                        },
                    )
                }
            };
            match delays.next() {
                Some(delay) => {
                    let wait = retry_after
                        .map_or(delay, |r| r.max(delay))
                        .min(Duration::from_secs(60));
                    tracing::debug!(url = %record.url, attempt = record.attempts, ?wait, error = %failure, "retrying");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    record.error = Some(failure.to_string());
                    record.duration_ms = started.elapsed().as_millis() as u64;
                    self.records
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(record);
                    return Err(failure);
                }
            }
        }
    }

    async fn send(
        &self,
        url: url::Url,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), String> {
        let mut req = self.client.get(url).header("Accept", "application/json");
        if !self.settings.tenant.is_empty() {
            req = req.header("X-Scope-OrgID", &self.settings.tenant);
        }
        if !self.settings.bearer_token.is_empty() {
            req = req.bearer_auth(&self.settings.bearer_token);
        } else if !self.settings.username.is_empty() {
            req = req.basic_auth(&self.settings.username, Some(&self.settings.password));
        }
        let resp = req.send().await.map_err(describe_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(describe_reqwest)?;
        self.bytes_read
            .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok((status, headers, body))
    }
}

/// reqwest's error without the URL (which may carry credentials).
fn describe_reqwest(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer cut short"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(&e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from these servers and is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
