//! The spool: a local directory where a captured bundle waits, whole, until the store has it.
//! Evidence is never lost because storage is down: a bundle is written here first (staged and
//! renamed into place, like the local store), uploaded from here, and removed only once stored
//! and announced. A restarted worker uploads what it finds here without asking the tracing
//! backend again (the traces may be gone by then). One worker owns a spool (a lock file says
//! so); its size is bounded by `worker.spool_max`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::job::position_in;
use crate::model::IncidentId;
use crate::store::fs::{FsError, FsStore, Staged};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot use the spool directory {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "the spool directory {0} is in use by another worker process (each worker needs its own worker.spool)"
    )]
    Locked(String),
    #[error(
        "the spool is full: {used} of {max} bytes used by {bundles} bundle(s) waiting to be stored"
    )]
    Full { used: u64, max: u64, bundles: usize },
    #[error(transparent)]
    Stage(#[from] FsError),
}

/// A bundle waiting in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub incident: IncidentId,
    pub capture: String,
    pub dir: PathBuf,
}

/// The spool directory, locked for this process.
pub struct Spool {
    store: FsStore,
    max_bytes: u64,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool at `root`, takes its lock, and removes what an interrupted
    /// write left behind (hidden staging directories; never a complete bundle).
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let lock_path = root.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(root.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let spool = Self {
            store: FsStore::new(root),
            max_bytes,
            _lock: lock,
        };
        for dir in spool.incident_dirs()? {
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with('.') && path.is_dir() {
                    tracing::warn!(path = %path.display(), "removing an interrupted spool write");
                    std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    fn incident_dirs(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let root = self.root();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io_err(root))? {
            let path = entry.map_err(io_err(root))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if path.is_dir() && !hidden {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The spooled bundle of an occurrence: the capture `base` or one that supersedes it
    /// (`base-2`, …), the latest if there were several, with its capture id.
    pub fn find_occurrence(&self, incident: &IncidentId, base: &str) -> Option<(String, PathBuf)> {
        let dir = self.root().join(incident.as_str());
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let n = position_in(base, &name)?;
                e.path()
                    .join("manifest.json")
                    .is_file()
                    .then(|| (n, name, e.path()))
            })
            .max_by_key(|(n, _, _)| *n)
            .map(|(_, name, path)| (name, path))
    }

    /// Every complete bundle in the spool, oldest incident id first.
    pub fn bundles(&self) -> Result<Vec<Spooled>, SpoolError> {
        let mut out = Vec::new();
        for dir in self.incident_dirs()? {
            let Some(incident) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| IncidentId::parse(n).ok())
            else {
                continue;
            };
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                let Some(capture) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !capture.starts_with('.') && path.join("manifest.json").is_file() {
                    out.push(Spooled {
                        incident: incident.clone(),
                        capture: capture.to_owned(),
                        dir: path.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.incident, &a.capture).cmp(&(&b.incident, &b.capture)));
        Ok(out)
    }

    /// Bytes and bundles in the spool.
    pub fn usage(&self) -> (u64, usize) {
        let bytes = dir_bytes(self.root());
        let bundles = self.bundles().map(|b| b.len()).unwrap_or(0);
        (bytes, bundles)
    }

    /// Refuses a new capture while the spool is at or over its bound.
    pub fn check_room(&self) -> Result<(), SpoolError> {
        let (used, bundles) = self.usage();
        if used >= self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
                bundles,
            });
        }
        Ok(())
    }

    /// Claims the staging directory of a capture. The caller holds the capture's claim, so a
    /// staging directory left by a crashed attempt is its own to take over.
    pub fn stage(&self, incident: &IncidentId, capture: &str) -> Result<Staged, SpoolError> {
        Ok(self.store.stage_taking_over(incident, capture)?)
    }

    /// Makes a staged bundle part of the spool.
    pub fn publish(&self, staged: &Staged) -> Result<PathBuf, SpoolError> {
        Ok(self.store.publish(staged)?)
    }

    /// Drops a staging directory after a failed write.
    pub fn abandon(&self, staged: &Staged) {
        self.store.abandon(staged);
    }

    /// Removes a stored bundle from the spool: renamed out of sight first, so a crash midway
    /// never leaves a half bundle that looks whole.
    pub fn remove(&self, incident: &IncidentId, capture: &str) -> Result<(), SpoolError> {
        let parent = self.root().join(incident.as_str());
        let dir = parent.join(capture);
        if !dir.exists() {
            return Ok(());
        }
        let doomed = parent.join(format!(".{capture}.removing"));
        std::fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
        // The incident directory goes when its last capture does.
        let _ = std::fs::remove_dir(&parent);
        Ok(())
    }
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(spool: &Spool, incident: &str, capture: &str, bytes: usize) {
        let staged = spool
            .stage(&IncidentId::parse(incident).unwrap(), capture)
            .unwrap();
        std::fs::write(staged.staging.join("report.html"), vec![b'x'; bytes]).unwrap();
        std::fs::write(staged.staging.join("manifest.json"), b"{}").unwrap();
        spool.publish(&staged).unwrap();
    }

    #[test]
    fn a_spool_has_one_owner_keeps_whole_bundles_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1000),
            Err(SpoolError::Locked(_))
        ));
        bundle(&spool, "INC-1", "declared", 400);
        spool.check_room().unwrap();
        // An interrupted write: a staging directory with no manifest.
        let half = spool
            .stage(&IncidentId::parse("INC-2").unwrap(), "declared")
            .unwrap();
        std::fs::write(half.staging.join("report.html"), vec![b'x'; 700]).unwrap();
        assert!(matches!(spool.check_room(), Err(SpoolError::Full { .. })));
        assert_eq!(spool.bundles().unwrap().len(), 1);
        drop(spool);

        let spool = Spool::open(dir.path(), 1000).unwrap();
        assert!(!half.staging.exists(), "the interrupted write is cleaned");
        let found = spool.bundles().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].capture, "declared");
        assert!(
            spool
                .find_occurrence(&found[0].incident, "declared")
                .is_some()
        );
        spool.check_room().unwrap();
        spool.remove(&found[0].incident, "declared").unwrap();
        assert!(spool.bundles().unwrap().is_empty());
        assert_eq!(spool.usage().0, 0);
    }
}
