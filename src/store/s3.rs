//! The S3 store: a bundle lives under `<prefix>/<incident id>/<capture id>/` in a bucket of S3 or
//! of any S3-compatible server. Every object is written with `If-None-Match: *` (an existing
//! object is never replaced) and a SHA-256 checksum the server verifies; with Object Lock each
//! object carries the bundle's retention; `manifest.json` goes last, so a bundle whose manifest
//! exists is complete. Files larger than one part are uploaded in parts, never read whole.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ServerSideEncryption,
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::config::StoreSettings;

/// Why an S3 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {op} of s3://{bucket}/{key} failed: {message}")]
    Request {
        op: &'static str,
        bucket: String,
        key: String,
        status: Option<u16>,
        message: String,
    },
    #[error("cannot read {path} to upload it: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "s3://{bucket}/{key} already exists with other content (sha256 {existing}, this bundle's {ours}); it is never overwritten"
    )]
    Conflict {
        bucket: String,
        key: String,
        existing: String,
        ours: String,
    },
    #[error("invalid S3 store: {0}")]
    Settings(String),
}

impl S3Error {
    /// The HTTP status S3 answered with, when it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Request { status, .. } => *status,
            _ => None,
        }
    }
}

/// Object Lock retention given to every object of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub mode: LockMode,
    pub retain_until: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "GOVERNANCE" => Some(Self::Governance),
            "COMPLIANCE" => Some(Self::Compliance),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }

    fn sdk(self) -> ObjectLockMode {
        match self {
            Self::Governance => ObjectLockMode::Governance,
            Self::Compliance => ObjectLockMode::Compliance,
        }
    }
}

/// What became of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    /// The object was already there with the same content (a retried upload).
    AlreadyThere,
}

/// A bucket and key prefix with a configured client.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    lock_mode: Option<LockMode>,
    lock_days: u32,
    sse: Option<ServerSideEncryption>,
    kms_key: Option<String>,
    part_size: usize,
    link_ttl: Duration,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// `s3://bucket/prefix` → (bucket, prefix).
pub fn parse_location(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl S3Store {
    /// A client from the standard AWS chain (environment, profile, web identity, instance
    /// role) with the store's region, endpoint and addressing.
    pub async fn connect(s: &StoreSettings) -> Result<Self, S3Error> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(s.region.clone()))
            .load()
            .await;
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(60))
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s.path_style)
            .timeout_config(timeouts)
            // Our own retries (with backoff, spanning minutes) wrap every upload.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
        if !s.endpoint.is_empty() {
            config = config.endpoint_url(s.endpoint.clone());
        }
        let sse = match s.sse.as_str() {
            "" => None,
            "AES256" => Some(ServerSideEncryption::Aes256),
            "aws:kms" => Some(ServerSideEncryption::AwsKms),
            other => return Err(S3Error::Settings(format!("store.sse {other:?}"))),
        };
        let lock_mode = match s.object_lock_mode.as_str() {
            "" => None,
            m => Some(
                LockMode::parse(m)
                    .ok_or_else(|| S3Error::Settings(format!("store.object_lock_mode {m:?}")))?,
            ),
        };
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: s.bucket.clone(),
            prefix: s.prefix.trim_matches('/').to_owned(),
            lock_mode,
            lock_days: s.object_lock_days,
            sse,
            kms_key: (!s.sse_kms_key_id.is_empty()).then(|| s.sse_kms_key_id.clone()),
            part_size: crate::config::parse_size(&s.multipart_part_size).unwrap_or(16 << 20),
            link_ttl: s.link_ttl,
        })
    }

    /// The retention a bundle captured at `at` gets, when Object Lock is configured.
    pub fn lock_for(&self, at: DateTime<Utc>) -> Option<Lock> {
        self.lock_mode.map(|mode| Lock {
            mode,
            retain_until: at + chrono::Duration::days(i64::from(self.lock_days)),
        })
    }

    /// The key of `rel` in a bundle.
    pub fn key(&self, incident: &str, capture: &str, rel: &str) -> String {
        if self.prefix.is_empty() {
            format!("{incident}/{capture}/{rel}")
        } else {
            format!("{}/{incident}/{capture}/{rel}", self.prefix)
        }
    }

    /// `s3://bucket/prefix/incident/capture/`.
    pub fn bundle_url(&self, incident: &str, capture: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(incident, capture, ""))
    }

    fn failed<E: std::error::Error + 'static>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> S3Error {
        S3Error::Request {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            status: status(&e),
            message: error_chain(&e),
        }
    }

    /// An object's body that broke off while it was read.
    fn body_failed(&self, key: &str, e: impl std::fmt::Display) -> S3Error {
        S3Error::Request {
            op: "GetObject",
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            status: None,
            message: e.to_string(),
        }
    }

    /// Checks that the bucket answers and that a missing key reads as missing (S3 answers 403
    /// instead of 404 without `s3:ListBucket`, and then no bundle could ever be found).
    pub async fn check(&self) -> Result<(), S3Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.failed("HeadBucket", "", e))?;
        let probe = self.key(".evidence-locker", "probe", "absent");
        match self.get(&probe).await {
            Ok(_) => Ok(()),
            Err(S3Error::Request {
                status: Some(403), ..
            }) => Err(S3Error::Settings(format!(
                "reading the missing key {probe} is refused (403), not answered 404: grant s3:ListBucket on the bucket, or stored bundles cannot be recognised"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The object's body, or `None` when it does not exist.
    async fn open(&self, key: &str) -> Result<Option<ByteStream>, S3Error> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.body)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failed("GetObject", key, e)),
        }
    }

    /// The object's bytes, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        let Some(body) = self.open(key).await? else {
            return Ok(None);
        };
        let body = body.collect().await.map_err(|e| self.body_failed(key, e))?;
        Ok(Some(body.to_vec()))
    }

    /// Every object whose key starts with the store's prefix, as (key without the prefix and
    /// its slash, size).
    pub async fn list(&self) -> Result<Vec<(String, u64)>, S3Error> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| self.failed("ListObjectsV2", &prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let rel = k.strip_prefix(&prefix).unwrap_or(k).to_owned();
                    out.push((rel, o.size().unwrap_or(0).max(0) as u64));
                }
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Reads an object to its end, hashing as it streams: (bytes read, SHA-256 hex), or `None`
    /// when it does not exist.
    pub async fn digest(&self, key: &str) -> Result<Option<(u64, String)>, S3Error> {
        let Some(mut body) = self.open(key).await? else {
            return Ok(None);
        };
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| self.body_failed(key, e))?
        {
            n += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((n, hex::encode(hasher.finalize()))))
    }

    /// An object's Object Lock: its mode and retain-until, each `None` when not set.
    pub async fn object_lock(
        &self,
        key: &str,
    ) -> Result<(Option<String>, Option<DateTime<Utc>>), S3Error> {
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failed("HeadObject", key, e))?;
        let mode = h.object_lock_mode().map(|m| m.as_str().to_owned());
        let until = h
            .object_lock_retain_until_date()
            .and_then(|d| DateTime::from_timestamp(d.secs(), d.subsec_nanos()));
        Ok((mode, until))
    }

    /// The full key of a key relative to the store's prefix.
    pub fn full_key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// SHA-256 (hex) of an existing object, or `None` when it does not exist. Uses the
    /// checksum S3 stored when it has a whole-object one; otherwise reads the object.
    async fn existing_sha256(&self, key: &str) -> Result<Option<String>, S3Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match head {
            Ok(h) => {
                // A multipart object's checksum is of its parts' checksums, not of its bytes.
                let single_part = h
                    .content_length()
                    .is_some_and(|n| n >= 0 && n as u64 <= self.part_size as u64);
                if let Some(b64) = h.checksum_sha256()
                    && single_part
                    && !b64.contains('-')
                    && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64)
                    && raw.len() == 32
                {
                    return Ok(Some(hex::encode(raw)));
                }
            }
            Err(e) if status(&e) == Some(404) => {
                return Ok(None);
            }
            Err(e) => return Err(self.failed("HeadObject", key, e)),
        }
        Ok(self.digest(key).await?.map(|(_, sha)| sha))
    }

    /// Uploads the file at `path` (`bytes` long, SHA-256 `sha256_hex`) to `key`, unless the key
    /// exists: with the same content that is [`Put::AlreadyThere`], with other content a
    /// [`S3Error::Conflict`].
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        bytes: u64,
        sha256_hex: &str,
        lock: Option<Lock>,
    ) -> Result<Put, S3Error> {
        if let Some(existing) = self.existing_sha256(key).await? {
            return self.same(key, &existing, sha256_hex);
        }
        let written = if bytes as usize > self.part_size {
            self.put_multipart(key, path, lock).await
        } else {
            self.put_single(key, path, sha256_hex, lock).await
        };
        match written {
            // Someone wrote it between our check and our write: it must be the same.
            Err(S3Error::Request {
                status: Some(412), ..
            }) => match self.existing_sha256(key).await? {
                Some(existing) => self.same(key, &existing, sha256_hex),
                None => Err(S3Error::Request {
                    op: "PutObject",
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    status: Some(412),
                    message: "refused as existing, yet not found".into(),
                }),
            },
            other => other.map(|()| Put::Written),
        }
    }

    fn same(&self, key: &str, existing: &str, ours: &str) -> Result<Put, S3Error> {
        if existing.eq_ignore_ascii_case(ours) {
            Ok(Put::AlreadyThere)
        } else {
            Err(S3Error::Conflict {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                existing: existing.to_owned(),
                ours: ours.to_owned(),
            })
        }
    }

    async fn put_single(
        &self,
        key: &str,
        path: &Path,
        sha256_hex: &str,
        lock: Option<Lock>,
    ) -> Result<(), S3Error> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| S3Error::Read {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })?;
        let raw = hex::decode(sha256_hex)
            .map_err(|_| S3Error::Settings(format!("bad sha256 for {key}")))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .if_none_match("*")
            .content_type(content_type(key))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(raw))
            .set_object_lock_mode(lock.map(|l| l.mode.sdk()))
            .set_object_lock_retain_until_date(lock.map(|l| smithy_time(l.retain_until)))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key.clone());
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed("PutObject", key, e))
    }

    /// A multipart upload: one part in memory at a time, each with its own SHA-256.
    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        lock: Option<Lock>,
    ) -> Result<(), S3Error> {
        let read_err = |source| S3Error::Read {
            path: path.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type(key))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_object_lock_mode(lock.map(|l| l.mode.sdk()))
            .set_object_lock_retain_until_date(lock.map(|l| smithy_time(l.retain_until)))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key.clone());
        let upload = create
            .send()
            .await
            .map_err(|e| self.failed("CreateMultipartUpload", key, e))?;
        let Some(upload_id) = upload.upload_id().map(str::to_owned) else {
            return Err(S3Error::Request {
                op: "CreateMultipartUpload",
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                status: None,
                message: "no upload id in the answer".into(),
            });
        };
        // Parts of an abandoned upload cost storage until aborted: on an error, and also when
        // this future is dropped (a shutdown), the upload is aborted.
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = async {
            let mut parts = Vec::new();
            for number in 1.. {
                // A fresh buffer per part, handed to the request without a copy.
                let mut buf = vec![0u8; self.part_size];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await.map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 && number > 1 {
                    break;
                }
                let last = filled < buf.len();
                buf.truncate(filled);
                let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&buf));
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(&digest)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| self.failed("UploadPart", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .checksum_sha256(digest)
                        .build(),
                );
                if last {
                    break;
                }
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.failed("CompleteMultipartUpload", key, e))
        }
        .await;
        if result.is_ok() {
            guard.upload_id = None;
        }
        drop(guard);
        result
    }

    /// A presigned GET link to `key`, valid for the configured `link_ttl`.
    pub async fn presign(&self, key: &str) -> Result<String, S3Error> {
        let config = PresigningConfig::expires_in(self.link_ttl)
            .map_err(|e| S3Error::Settings(format!("store.link_ttl: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.failed("presign GetObject", key, e))?;
        Ok(req.uri().to_owned())
    }
}

/// The HTTP status of a failed request, when an answer came.
fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The error and its causes, `: `-separated (the SDK's own Display says only "service error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Aborts a multipart upload unless disarmed (its `upload_id` taken).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = req.send().await {
                    tracing::warn!(error = %error_chain(&e), "cannot abort an unfinished multipart upload (a lifecycle rule for incomplete uploads cleans it)");
                }
            });
        }
    }
}

fn smithy_time(t: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(t.timestamp())
}

/// The content type a browser needs to open a bundle file from a link.
fn content_type(key: &str) -> &'static str {
    if key.ends_with(".html") {
        "text/html; charset=utf-8"
    } else if key.ends_with(".json") {
        "application/json"
    } else if key.ends_with(".md") {
        "text/markdown; charset=utf-8"
    } else if key.ends_with(".yaml") {
        "application/yaml"
    } else if key.ends_with(".zst") {
        "application/zstd"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("s3://evidence/incidents/"),
            Some(("evidence".into(), "incidents".into()))
        );
        assert_eq!(
            parse_location("s3://evidence"),
            Some(("evidence".into(), String::new()))
        );
        assert_eq!(parse_location("s3:///x"), None);
        assert_eq!(parse_location("/tmp/x"), None);
    }
}
