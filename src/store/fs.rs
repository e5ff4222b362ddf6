//! The local filesystem store: `<root>/<incident id>/<capture id>/`. A capture is staged in a
//! hidden sibling directory (claimed with an atomic `mkdir`, so two writers never share a capture
//! id) and renamed into place when complete: readers see a whole bundle or none, and an existing
//! capture is never overwritten.

use std::io;
use std::path::{Path, PathBuf};

use crate::model::IncidentId;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: io::Error },
    #[error("capture {0} already exists")]
    Exists(String),
    #[error("no free capture id for {0} (tried 1000 suffixes)")]
    NoFreeId(String),
    #[error(
        "cannot move the bundle into place at {path}: {source} (the complete bundle is kept in {staging})"
    )]
    Publish {
        path: String,
        staging: String,
        source: io::Error,
    },
}

/// A claimed capture: its id and its staging directory.
#[derive(Debug)]
pub struct Staged {
    pub capture_id: String,
    pub staging: PathBuf,
    pub target: PathBuf,
}

/// Bundles under a root directory.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a published capture lives.
    pub fn bundle_dir(&self, incident: &IncidentId, capture: &str) -> PathBuf {
        self.root.join(incident.as_str()).join(capture)
    }

    /// Claims a capture id (`base`, else `base-2`, `base-3`, …) and creates its empty staging
    /// directory.
    pub fn stage(&self, incident: &IncidentId, base: &str) -> Result<Staged, FsError> {
        let dir = self.incident_dir(incident)?;
        for n in 1..=1000 {
            let capture_id = if n == 1 {
                base.to_owned()
            } else {
                format!("{base}-{n}")
            };
            if let Some(staged) = Self::claim(&dir, &capture_id)? {
                return Ok(staged);
            }
        }
        Err(FsError::NoFreeId(base.to_owned()))
    }

    /// Claims exactly `capture_id` (no suffix): fails with [`FsError::Exists`] when it is
    /// published or being staged.
    pub fn stage_exact(&self, incident: &IncidentId, capture_id: &str) -> Result<Staged, FsError> {
        let dir = self.incident_dir(incident)?;
        Self::claim(&dir, capture_id)?
            .ok_or_else(|| FsError::Exists(dir.join(capture_id).display().to_string()))
    }

    /// Claims exactly `capture_id` for a writer that holds the capture's claim (the worker): a
    /// staging directory left by a crash is removed and claimed anew rather than blocking the
    /// capture for ever. Fails with [`FsError::Exists`] when the capture is published.
    pub fn stage_taking_over(
        &self,
        incident: &IncidentId,
        capture_id: &str,
    ) -> Result<Staged, FsError> {
        let dir = self.incident_dir(incident)?;
        let stale = dir.join(format!(".{capture_id}.staging"));
        if stale.exists() && !dir.join(capture_id).exists() {
            tracing::warn!(path = %stale.display(), "taking over a staging directory left by an interrupted write");
            std::fs::remove_dir_all(&stale).map_err(|source| FsError::Create {
                path: stale.display().to_string(),
                source,
            })?;
        }
        self.stage_exact(incident, capture_id)
    }

    /// The incident's directory, created when missing.
    fn incident_dir(&self, incident: &IncidentId) -> Result<PathBuf, FsError> {
        let dir = self.root.join(incident.as_str());
        std::fs::create_dir_all(&dir).map_err(|source| FsError::Create {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(dir)
    }

    /// Creates the staging directory of `capture_id` under `dir` with an atomic `mkdir`, or
    /// returns `None` when that capture is published or being staged by another writer.
    fn claim(dir: &Path, capture_id: &str) -> Result<Option<Staged>, FsError> {
        let target = dir.join(capture_id);
        if target.exists() {
            return Ok(None);
        }
        let staging = dir.join(format!(".{capture_id}.staging"));
        match std::fs::create_dir(&staging) {
            Ok(()) if target.exists() => {
                // Published by another writer between our two checks.
                let _ = std::fs::remove_dir(&staging);
                Ok(None)
            }
            Ok(()) => Ok(Some(Staged {
                capture_id: capture_id.to_owned(),
                staging,
                target,
            })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(source) => Err(FsError::Create {
                path: staging.display().to_string(),
                source,
            }),
        }
    }

    /// Renames the staged bundle into place. Refuses (and keeps the staging directory) if the
    /// target exists.
    pub fn publish(&self, staged: &Staged) -> Result<PathBuf, FsError> {
        let fail = |source| FsError::Publish {
            path: staged.target.display().to_string(),
            staging: staged.staging.display().to_string(),
            source,
        };
        if staged.target.exists() {
            return Err(fail(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a capture with this id already exists; it is never overwritten",
            )));
        }
        // rename(2) onto a non-empty directory fails, so a bundle can never be replaced.
        std::fs::rename(&staged.staging, &staged.target).map_err(fail)?;
        if let Some(parent) = staged.target.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(staged.target.clone())
    }

    /// Removes a staging directory after a failed write.
    pub fn abandon(&self, staged: &Staged) {
        let _ = std::fs::remove_dir_all(&staged.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_capture_in_the_same_second_gets_a_suffix_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let id = IncidentId::parse("INC-1").unwrap();
        let a = store.stage(&id, "20260205T144000Z").unwrap();
        std::fs::write(a.staging.join("manifest.json"), "a").unwrap();
        let b = store.stage(&id, "20260205T144000Z").unwrap();
        assert_eq!(b.capture_id, "20260205T144000Z-2");
        std::fs::write(b.staging.join("manifest.json"), "b").unwrap();
        store.publish(&a).unwrap();
        store.publish(&b).unwrap();
        let c = store.stage(&id, "20260205T144000Z").unwrap();
        assert_eq!(c.capture_id, "20260205T144000Z-3");
        assert_eq!(
            std::fs::read_to_string(a.target.join("manifest.json")).unwrap(),
            "a"
        );
        // Publishing onto an existing capture is refused.
        let forged = Staged {
            capture_id: a.capture_id.clone(),
            staging: c.staging.clone(),
            target: a.target.clone(),
        };
        assert!(store.publish(&forged).is_err());
        assert_eq!(
            std::fs::read_to_string(a.target.join("manifest.json")).unwrap(),
            "a"
        );
    }

    #[test]
    fn a_staging_directory_left_by_a_crash_is_taken_over_by_the_claim_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let id = IncidentId::parse("INC-1").unwrap();
        let crashed = store.stage_exact(&id, "c").unwrap();
        std::fs::write(crashed.staging.join("half.json"), "x").unwrap();
        drop(crashed);
        assert!(matches!(
            store.stage_exact(&id, "c"),
            Err(FsError::Exists(_))
        ));
        let again = store.stage_taking_over(&id, "c").unwrap();
        assert!(!again.staging.join("half.json").exists());
        std::fs::write(again.staging.join("manifest.json"), "m").unwrap();
        store.publish(&again).unwrap();
        assert!(matches!(
            store.stage_taking_over(&id, "c"),
            Err(FsError::Exists(_))
        ));
    }
}
