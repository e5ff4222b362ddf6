//! Where bundles end up. A bundle is first written whole into a local directory (a staging
//! directory for `collect`, the worker's spool); a store then makes it visible without ever
//! overwriting an existing capture. `fs` is the local directory store (`collect --out`, `demo`),
//! `s3` the object store. [`Store`] puts either behind the few operations the worker needs.

pub mod fs;
pub mod s3;

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::StoreSettings;
use crate::model::IncidentId;

pub use fs::{FsError, FsStore};
pub use s3::{Lock, LockMode, Put, S3Error, S3Store};

/// Why a bundle could not be found or stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a usable manifest: {message}")]
    Manifest { path: String, message: String },
}

impl StoreError {
    /// True when the stored bundle differs from ours: retrying cannot succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::S3(S3Error::Conflict { .. }))
    }
}

/// The parts of a written manifest that storing it needs.
#[derive(Debug, Deserialize)]
pub struct ManifestFiles {
    pub files: Vec<ManifestFile>,
    pub retention: ManifestRetention,
}

#[derive(Debug, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
pub struct ManifestRetention {
    pub mode: String,
    pub retain_until: Option<DateTime<Utc>>,
}

impl ManifestFiles {
    /// Reads `manifest.json` of the bundle in `dir`; also returns its raw bytes.
    pub fn read(dir: &Path) -> Result<(Self, Vec<u8>), StoreError> {
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let m: Self = serde_json::from_slice(&bytes).map_err(|e| StoreError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for f in &m.files {
            let safe = !f.path.is_empty()
                && !f.path.starts_with('/')
                && f.path
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != "..");
            if !safe || f.path == "manifest.json" {
                return Err(StoreError::Manifest {
                    path: path.display().to_string(),
                    message: format!("file path {:?} is not inside the bundle", f.path),
                });
            }
        }
        Ok((m, bytes))
    }

    /// The Object Lock the manifest promises, if any.
    pub fn lock(&self) -> Option<Lock> {
        LockMode::parse(&self.retention.mode)
            .zip(self.retention.retain_until)
            .map(|(mode, retain_until)| Lock { mode, retain_until })
    }
}

/// The manifest's `retention` for objects stored with `lock` (or none).
pub fn retention(lock: Option<Lock>) -> crate::bundle::Retention {
    match lock {
        Some(lock) => crate::bundle::Retention {
            mode: lock.mode.name().to_owned(),
            retain_until: Some(lock.retain_until),
        },
        None => crate::bundle::Retention::default(),
    }
}

/// A configured store.
#[derive(Clone, Debug)]
pub enum Store {
    Fs(FsStore),
    S3(S3Store),
}

impl Store {
    /// The store `[store]` describes.
    pub async fn from_settings(s: &StoreSettings) -> Result<Self, StoreError> {
        Ok(match s.kind.as_str() {
            "s3" => Self::S3(S3Store::connect(s).await?),
            _ => Self::Fs(FsStore::new(&s.path)),
        })
    }

    /// Checks that the store answers: the bucket (see [`S3Store::check`]), or that the
    /// directory exists or can be made.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Self::Fs(f) => std::fs::create_dir_all(f.root()).map_err(|source| StoreError::Io {
                path: f.root().display().to_string(),
                source,
            }),
            Self::S3(s) => Ok(s.check().await?),
        }
    }

    /// Where bundles go, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Fs(f) => f.root().display().to_string(),
            Self::S3(s) => s.bundle_url("", "").trim_end_matches('/').to_owned(),
        }
    }

    /// The retention a bundle captured at `at` is stored with.
    pub fn lock_for(&self, at: DateTime<Utc>) -> Option<Lock> {
        match self {
            Self::Fs(_) => None,
            Self::S3(s) => s.lock_for(at),
        }
    }

    /// The stored manifest of a capture, or `None` when the capture is not (completely) stored.
    pub async fn manifest(
        &self,
        incident: &IncidentId,
        capture: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Fs(f) => {
                let path = f.bundle_dir(incident, capture).join("manifest.json");
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io {
                        path: path.display().to_string(),
                        source,
                    }),
                }
            }
            Self::S3(s) => Ok(s
                .get(&s.key(incident.as_str(), capture, "manifest.json"))
                .await?),
        }
    }

    /// Stores the complete bundle in `dir` as `incident/capture`: every file its manifest lists,
    /// then the manifest, whose bytes it returns. Safe to repeat after a partial attempt; refuses
    /// to replace a different bundle. `attempts` bounds the retries of each file.
    pub async fn put_bundle(
        &self,
        dir: &Path,
        incident: &IncidentId,
        capture: &str,
        attempts: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let (manifest, manifest_bytes) = ManifestFiles::read(dir)?;
        match self {
            Self::Fs(f) => {
                let files: Vec<String> = manifest.files.into_iter().map(|f| f.path).collect();
                let dir = dir.to_owned();
                let store = f.clone();
                let incident = incident.clone();
                let capture = capture.to_owned();
                tokio::task::spawn_blocking(move || {
                    copy_bundle(&store, &dir, &files, &incident, &capture)
                })
                .await
                .map_err(|e| StoreError::Io {
                    path: "bundle copy".into(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            }
            Self::S3(s) => {
                let lock = manifest.lock();
                let manifest_sha =
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes));
                let all = manifest
                    .files
                    .iter()
                    .map(|f| (f.path.as_str(), f.bytes, f.sha256.as_str()))
                    .chain([(
                        "manifest.json",
                        manifest_bytes.len() as u64,
                        manifest_sha.as_str(),
                    )]);
                for (rel, bytes, sha) in all {
                    let key = s.key(incident.as_str(), capture, rel);
                    let path = dir.join(rel);
                    let put =
                        retrying(attempts, &key, || s.put_file(&key, &path, bytes, sha, lock))
                            .await?;
                    tracing::debug!(key, ?put, "stored");
                }
            }
        }
        Ok(manifest_bytes)
    }

    /// `s3://…` or the local directory of a stored bundle.
    pub fn bundle_url(&self, incident: &IncidentId, capture: &str) -> String {
        match self {
            Self::Fs(f) => f.bundle_dir(incident, capture).display().to_string(),
            Self::S3(s) => s.bundle_url(incident.as_str(), capture),
        }
    }

    /// A link to the bundle's `report.html`: presigned HTTPS on S3, `file://` locally.
    pub async fn report_link(
        &self,
        incident: &IncidentId,
        capture: &str,
    ) -> Result<String, StoreError> {
        match self {
            Self::Fs(f) => {
                let path = f.bundle_dir(incident, capture).join("report.html");
                let abs = std::path::absolute(&path).unwrap_or(path);
                Ok(format!("file://{}", abs.display()))
            }
            Self::S3(s) => Ok(s
                .presign(&s.key(incident.as_str(), capture, "report.html"))
                .await?),
        }
    }
}

/// Retries `op` with exponential backoff (0.5 s, 1 s, 2 s, … at most 30 s), except when the
/// stored object differs from ours.
async fn retrying<F, Fut>(attempts: usize, key: &str, op: F) -> Result<Put, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Put, S3Error>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let policy = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(30))
        .with_max_times(attempts.saturating_sub(1))
        .with_jitter();
    Ok(op
        .retry(policy)
        .when(|e: &S3Error| !matches!(e, S3Error::Conflict { .. } | S3Error::Settings(_)))
        .notify(|e: &S3Error, wait| {
            tracing::warn!(key, error = %e, retry_in = ?wait, "upload failed; retrying");
        })
        .await?)
}

/// Copies a spooled bundle's `files` and manifest into the local store (staged, then renamed
/// into place).
fn copy_bundle(
    store: &FsStore,
    dir: &Path,
    files: &[String],
    incident: &IncidentId,
    capture: &str,
) -> Result<(), StoreError> {
    // The worker holds the capture's claim: a staging directory left by a crash is ours.
    let staged = store.stage_taking_over(incident, capture)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    let copy = || -> Result<(), StoreError> {
        for rel in files.iter().map(String::as_str).chain(["manifest.json"]) {
            let to = staged.staging.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(dir.join(rel), &to).map_err(io(&to))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io(&to))?;
        }
        Ok(())
    };
    if let Err(e) = copy() {
        store.abandon(&staged);
        return Err(e);
    }
    store.publish(&staged)?;
    Ok(())
}
