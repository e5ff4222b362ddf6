//! `evidence-locker audit`: checks stored bundles the way an auditor needs, years later. For
//! every bundle: the manifest is there and parses; every file it lists is there with its size
//! and SHA-256; nothing under the bundle is unlisted; the signature is valid and from a trusted
//! key; on S3, every object keeps the Object Lock the manifest promises. And every expected
//! incident has a bundle. Each finding names the object, what was expected and what was found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::Serialize;
use sha2::Digest as _;

use crate::sign::{SignatureCheck, TrustedKeys};
use crate::store::S3Store;

/// Bundles verified at once; objects within a bundle are read one after another.
const PARALLEL: usize = 8;

/// Where the bundles are.
pub enum AuditStore {
    Local(PathBuf),
    S3(S3Store),
}

impl AuditStore {
    fn describe(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::S3(s) => s.location(),
        }
    }
}

/// What to audit.
pub struct AuditRequest {
    pub store: AuditStore,
    pub incident: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Incidents that must have a bundle.
    pub expect: Vec<String>,
    /// Without trusted keys, signatures are reported but not verified.
    pub trusted: Option<TrustedKeys>,
}

/// One thing wrong.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    /// `manifest_missing`, `manifest_unreadable`, `file_missing`, `size_mismatch`,
    /// `checksum_mismatch`, `unlisted_object`, `signature_missing`, `signature_invalid`,
    /// `untrusted_key`, `retention_missing`, `retention_shortened`, `unreadable_object`,
    /// `misplaced_bundle`, `no_bundle`.
    pub kind: &'static str,
    /// The object, relative to the store (`INC-1/20260205T143000Z/traces/errors.jsonl.zst`).
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

/// One bundle's result.
#[derive(Clone, Debug, Serialize)]
pub struct BundleAudit {
    pub incident: String,
    pub capture: String,
    /// The manifest's completeness status (`complete`, `partial`), or `unknown`.
    pub status: String,
    /// When the capture finished, as the manifest says.
    pub stored_at: Option<DateTime<Utc>>,
    pub retention_mode: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
    /// The key id of the signature (verified when trusted keys were given).
    pub signature_key: Option<String>,
    pub objects: usize,
    pub bytes: u64,
    pub findings: Vec<Finding>,
}

/// The whole audit.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub store: String,
    pub signatures_verified: bool,
    pub bundles: Vec<BundleAudit>,
    /// Findings not of one bundle (`no_bundle`).
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub bundles: usize,
    pub findings: usize,
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub objects_per_second: f64,
    pub mb_per_second: f64,
}

impl AuditReport {
    pub fn clean(&self) -> bool {
        self.summary.findings == 0
    }
}

/// Why an audit could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot list {0}: {1}")]
    List(String, String),
}

fn finding(kind: &'static str, object: String) -> Finding {
    Finding {
        kind,
        object,
        expected: None,
        found: None,
    }
}

/// The objects of each bundle: (incident, capture) → relative path → size.
type Listing = BTreeMap<(String, String), BTreeMap<String, u64>>;

fn list_local(root: &Path) -> Result<Listing, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, u64>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let meta = e.metadata()?;
            if meta.is_dir() {
                walk(&p, base, out)?;
            } else {
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, meta.len());
            }
        }
        Ok(())
    }
    let mut listing = Listing::new();
    let entries = std::fs::read_dir(root).map_err(|e| e.to_string())?;
    for inc in entries {
        let inc = inc.map_err(|e| e.to_string())?;
        if !inc.path().is_dir() {
            continue;
        }
        let incident = inc.file_name().to_string_lossy().into_owned();
        for cap in std::fs::read_dir(inc.path()).map_err(|e| e.to_string())? {
            let cap = cap.map_err(|e| e.to_string())?;
            let capture = cap.file_name().to_string_lossy().into_owned();
            // Staging directories of captures being written are not bundles yet.
            if !cap.path().is_dir() || capture.starts_with('.') {
                continue;
            }
            let mut objects = BTreeMap::new();
            walk(&cap.path(), &cap.path(), &mut objects).map_err(|e| e.to_string())?;
            listing.insert((incident.clone(), capture), objects);
        }
    }
    Ok(listing)
}

fn list_s3(all: Vec<(String, u64)>) -> Listing {
    let mut listing = Listing::new();
    for (key, size) in all {
        let mut parts = key.splitn(3, '/');
        let (Some(i), Some(c), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // The store's own probe and any staging keys are not bundles.
        if i.starts_with('.') || c.starts_with('.') {
            continue;
        }
        listing
            .entry((i.to_owned(), c.to_owned()))
            .or_default()
            .insert(rel.to_owned(), size);
    }
    listing
}

/// Reads an object whole (the manifest) or hashes it as it streams.
async fn read_object(store: &AuditStore, key: &str) -> Result<Option<Vec<u8>>, String> {
    match store {
        AuditStore::Local(root) => match std::fs::read(root.join(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        AuditStore::S3(s) => s.get(&s.full_key(key)).await.map_err(|e| e.to_string()),
    }
}

async fn digest(store: &AuditStore, key: &str) -> Result<Option<(u64, String)>, String> {
    match store {
        AuditStore::Local(root) => {
            let path = root.join(key);
            tokio::task::spawn_blocking(move || -> Result<Option<(u64, String)>, String> {
                use std::io::Read as _;
                let mut f = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                };
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                loop {
                    let k = f.read(&mut buf).map_err(|e| e.to_string())?;
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                    h.update(&buf[..k]);
                }
                Ok(Some((n, hex::encode(h.finalize()))))
            })
            .await
            .map_err(|e| e.to_string())?
        }
        AuditStore::S3(s) => s.digest(&s.full_key(key)).await.map_err(|e| e.to_string()),
    }
}

async fn audit_bundle(
    req: &AuditRequest,
    (incident, capture): (String, String),
    objects: BTreeMap<String, u64>,
) -> BundleAudit {
    let at = |rel: &str| format!("{incident}/{capture}/{rel}");
    let mut out = BundleAudit {
        incident: incident.clone(),
        capture: capture.clone(),
        status: "unknown".into(),
        stored_at: None,
        retention_mode: None,
        retain_until: None,
        signature_key: None,
        objects: objects.len(),
        bytes: objects.values().sum(),
        findings: Vec::new(),
    };
    let manifest = match read_object(&req.store, &at("manifest.json")).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            out.findings
                .push(finding("manifest_missing", at("manifest.json")));
            return out;
        }
        Err(e) => {
            out.findings.push(Finding {
                found: Some(e),
                ..finding("unreadable_object", at("manifest.json"))
            });
            return out;
        }
    };
    let m: serde_json::Value = match serde_json::from_slice(&manifest) {
        Ok(v) => v,
        Err(e) => {
            out.findings.push(Finding {
                found: Some(e.to_string()),
                ..finding("manifest_unreadable", at("manifest.json"))
            });
            return out;
        }
    };
    out.status = m["completeness"]["status"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    out.stored_at = m["capture"]["finished"]
        .as_str()
        .and_then(|s| s.parse().ok());
    out.retention_mode = m["retention"]["mode"].as_str().map(str::to_owned);
    out.retain_until = m["retention"]["retain_until"]
        .as_str()
        .and_then(|s| s.parse().ok());
    out.signature_key = m["signature"]["key_id"].as_str().map(str::to_owned);
    // A manifest copied or moved under another incident or capture is not that bundle.
    let says = (
        m["incident"]["id"].as_str().unwrap_or(""),
        m["capture"]["id"].as_str().unwrap_or(""),
    );
    if says != (incident.as_str(), capture.as_str()) {
        out.findings.push(Finding {
            expected: Some(format!("incident {incident}, capture {capture}")),
            found: Some(format!("incident {}, capture {}", says.0, says.1)),
            ..finding("misplaced_bundle", at("manifest.json"))
        });
    }

    // Every listed file, with its size and checksum.
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for f in m["files"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let (Some(path), Some(bytes), Some(sha)) = (
            f["path"].as_str(),
            f["bytes"].as_u64(),
            f["sha256"].as_str(),
        ) else {
            out.findings.push(Finding {
                found: Some(f.to_string()),
                ..finding("manifest_unreadable", at("manifest.json"))
            });
            continue;
        };
        listed.insert(path.to_owned());
        if !objects.contains_key(path) {
            out.findings.push(Finding {
                expected: Some(format!("{bytes} bytes, sha256 {sha}")),
                ..finding("file_missing", at(path))
            });
            continue;
        }
        match digest(&req.store, &at(path)).await {
            Ok(Some((n, h))) => {
                if n != bytes {
                    out.findings.push(Finding {
                        expected: Some(format!("{bytes} bytes")),
                        found: Some(format!("{n} bytes")),
                        ..finding("size_mismatch", at(path))
                    });
                }
                if h != sha {
                    out.findings.push(Finding {
                        expected: Some(format!("sha256 {sha}")),
                        found: Some(format!("sha256 {h}")),
                        ..finding("checksum_mismatch", at(path))
                    });
                }
            }
            Ok(None) => out.findings.push(finding("file_missing", at(path))),
            Err(e) => out.findings.push(Finding {
                found: Some(e),
                ..finding("unreadable_object", at(path))
            }),
        }
    }
    for rel in objects.keys() {
        if rel != "manifest.json" && !listed.contains(rel) {
            out.findings.push(finding("unlisted_object", at(rel)));
        }
    }

    // The signature.
    if let Some(trusted) = &req.trusted {
        match crate::sign::check(&m, trusted) {
            SignatureCheck::Valid { .. } => {}
            SignatureCheck::Missing => out.findings.push(Finding {
                expected: Some("an ed25519 signature by a trusted key".into()),
                found: Some("none".into()),
                ..finding("signature_missing", at("manifest.json"))
            }),
            SignatureCheck::UntrustedKey { key_id } => out.findings.push(Finding {
                expected: Some(format!(
                    "one of the trusted keys {}",
                    trusted.0.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                found: Some(format!("key {key_id}")),
                ..finding("untrusted_key", at("manifest.json"))
            }),
            SignatureCheck::Invalid { key_id, why } => out.findings.push(Finding {
                expected: Some(format!("a valid signature by key {key_id}")),
                found: Some(why),
                ..finding("signature_invalid", at("manifest.json"))
            }),
        }
    }

    // Object Lock on S3: every object at least as long as the manifest promises.
    if let AuditStore::S3(s3) = &req.store
        && let (Some(mode), Some(until)) = (out.retention_mode.clone(), out.retain_until)
        && mode != "none"
    {
        for rel in objects.keys() {
            match s3.object_lock(&s3.full_key(&at(rel))).await {
                Ok((None, _)) | Ok((_, None)) => out.findings.push(Finding {
                    expected: Some(format!("{mode} until {}", until.to_rfc3339())),
                    found: Some("no Object Lock retention".into()),
                    ..finding("retention_missing", at(rel))
                }),
                // Stores keep retain-until to the second (or millisecond): compared in seconds.
                Ok((Some(m), Some(u)))
                    if u.timestamp() < until.timestamp() || !m.eq_ignore_ascii_case(&mode) =>
                {
                    out.findings.push(Finding {
                        expected: Some(format!("{mode} until {}", until.to_rfc3339())),
                        found: Some(format!("{m} until {}", u.to_rfc3339())),
                        ..finding("retention_shortened", at(rel))
                    })
                }
                Ok(_) => {}
                Err(e) => out.findings.push(Finding {
                    found: Some(e.to_string()),
                    ..finding("unreadable_object", at(rel))
                }),
            }
        }
    }
    out
}

/// Audits every bundle the request selects.
pub async fn audit(req: &AuditRequest) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let listing = match &req.store {
        AuditStore::Local(root) => {
            list_local(root).map_err(|e| AuditError::List(root.display().to_string(), e))?
        }
        AuditStore::S3(s) => list_s3(
            s.list()
                .await
                .map_err(|e| AuditError::List(s.location(), e.to_string()))?,
        ),
    };
    let selected: Vec<((String, String), BTreeMap<String, u64>)> = listing
        .into_iter()
        .filter(|((i, _), _)| req.incident.as_ref().is_none_or(|want| want == i))
        .filter(|((_, c), _)| {
            // Capture ids begin with the capture's UTC start, `YYYYMMDDTHHMMSSZ`.
            req.since.is_none_or(|since| {
                chrono::NaiveDateTime::parse_from_str(c.get(..16).unwrap_or(""), "%Y%m%dT%H%M%SZ")
                    .map(|t| t.and_utc() >= since)
                    .unwrap_or(true)
            })
        })
        .collect();
    let mut bundles: Vec<BundleAudit> = futures::stream::iter(
        selected
            .into_iter()
            .map(|(id, objects)| audit_bundle(req, id, objects)),
    )
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    bundles.sort_by(|a, b| (&a.incident, &a.capture).cmp(&(&b.incident, &b.capture)));
    let have: BTreeSet<&str> = bundles.iter().map(|b| b.incident.as_str()).collect();
    let findings: Vec<Finding> = req
        .expect
        .iter()
        .filter(|i| !have.contains(i.as_str()))
        .map(|i| Finding {
            expected: Some("at least one bundle".into()),
            found: Some("none".into()),
            ..finding("no_bundle", i.clone())
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let objects: usize = bundles.iter().map(|b| b.objects).sum();
    let bytes: u64 = bundles.iter().map(|b| b.bytes).sum();
    let summary = Summary {
        bundles: bundles.len(),
        findings: findings.len() + bundles.iter().map(|b| b.findings.len()).sum::<usize>(),
        objects,
        bytes,
        seconds: (seconds * 1000.0).round() / 1000.0,
        objects_per_second: (objects as f64 / seconds.max(1e-9)).round(),
        mb_per_second: ((bytes as f64 / 1e6 / seconds.max(1e-9)) * 10.0).round() / 10.0,
    };
    Ok(AuditReport {
        store: req.store.describe(),
        signatures_verified: req.trusted.is_some(),
        bundles,
        findings,
        summary,
    })
}

/// The report for people: one line per bundle, each finding under it, then the figures.
pub fn table(r: &AuditReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in &r.bundles {
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:<8} {:>3} finding(s)  key {}",
            b.incident,
            b.capture,
            b.status,
            b.findings.len(),
            b.signature_key.as_deref().unwrap_or("-")
        );
        for f in &b.findings {
            let _ = writeln!(out, "    {}", describe(f));
        }
    }
    for f in &r.findings {
        let _ = writeln!(out, "{}", describe(f));
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "{} bundle(s), {} finding(s); {} objects, {:.1} MB in {:.2} s ({} objects/s, {} MB/s){}",
        s.bundles,
        s.findings,
        s.objects,
        s.bytes as f64 / 1e6,
        s.seconds,
        s.objects_per_second,
        s.mb_per_second,
        if r.signatures_verified {
            ""
        } else {
            "; signatures not verified (give --trusted-keys)"
        }
    );
    out
}

fn describe(f: &Finding) -> String {
    let mut s = format!("{}: {}", f.kind, f.object);
    if let Some(e) = &f.expected {
        s.push_str(&format!(" (expected {e}"));
        s.push_str(&match &f.found {
            Some(x) => format!(", found {x})"),
            None => ")".into(),
        });
    } else if let Some(x) = &f.found {
        s.push_str(&format!(" (found {x})"));
    }
    s
}

/// The retention report for auditors: one row per capture.
pub fn csv(r: &AuditReport) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out =
        String::from("incident,capture,status,stored_at,retain_until,signature_key,findings\n");
    for b in &r.bundles {
        let findings: Vec<String> = b.findings.iter().map(describe).collect();
        let row = [
            b.incident.clone(),
            b.capture.clone(),
            b.status.clone(),
            b.stored_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            b.retain_until.map(|t| t.to_rfc3339()).unwrap_or_default(),
            b.signature_key.clone().unwrap_or_default(),
            findings.join("; "),
        ];
        let cells: Vec<String> = row.iter().map(|c| field(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    for f in &r.findings {
        out.push_str(&format!(
            "{},,missing,,,,{}\n",
            field(&f.object),
            field(&describe(f))
        ));
    }
    out
}
