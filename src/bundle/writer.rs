//! Writes bundle files into a staging directory, hashing (SHA-256) and counting each file as it
//! is written, so the manifest can list them without reading them back.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One file of the bundle, as listed in the manifest.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A bundle file being written: hashed and counted as it goes, synced when finished.
pub struct FileWriter {
    rel: String,
    w: Hashing<BufWriter<File>>,
}

impl FileWriter {
    /// Creates `dir/rel` (never over an existing file), and the directories above it.
    pub fn create(dir: &Path, rel: &str) -> io::Result<Self> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok(Self {
            rel: rel.to_owned(),
            w: Hashing {
                inner: BufWriter::with_capacity(256 * 1024, file),
                hasher: Sha256::new(),
                bytes: 0,
            },
        })
    }

    /// Flushes and syncs the file, and returns its entry.
    pub fn finish(mut self) -> io::Result<FileEntry> {
        self.w.flush()?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = self.w;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(FileEntry {
            path: self.rel,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.w.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Writes `dir/rel` with `fill` (never over an existing file), syncs it, and returns its entry.
pub fn write_file(
    dir: &Path,
    rel: &str,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<FileEntry> {
    let mut file = FileWriter::create(dir, rel)?;
    fill(&mut file)?;
    file.finish()
}

/// Makes a directory's entries durable (after its files were written and synced).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes files under a directory and remembers their size and hash.
pub struct BundleWriter {
    dir: PathBuf,
    files: Vec<FileEntry>,
}

impl BundleWriter {
    /// Writes into `dir`, which must exist and be empty.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            files: Vec::new(),
        }
    }

    /// Writes `rel` (a `/`-separated path) with `fill`, then syncs it to disk.
    pub fn write(
        &mut self,
        rel: &str,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<&FileEntry> {
        let entry = write_file(&self.dir, rel, fill)?;
        self.files.push(entry);
        Ok(self.files.last().expect("just pushed"))
    }

    /// Lists a file written with [`write_file`] (for files written in parallel).
    pub fn record(&mut self, entry: FileEntry) {
        self.files.push(entry);
    }

    /// Writes `rel` as pretty JSON followed by a newline.
    pub fn write_json<T: Serialize>(&mut self, rel: &str, value: &T) -> io::Result<&FileEntry> {
        self.write(rel, |w| {
            serde_json::to_writer_pretty(&mut *w, value)?;
            w.write_all(b"\n")
        })
    }

    /// The files written so far, sorted by path.
    pub fn entries(&self) -> Vec<FileEntry> {
        let mut v = self.files.clone();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}
