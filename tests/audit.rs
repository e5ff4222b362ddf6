//! `evidence-locker audit` on real bundles written by `collect`: a clean store passes, and each
//! kind of tampering is reported as its own finding naming the object, with exit code 1.

mod support;

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};
use support::*;

fn keypair(seed: u8) -> (String, String) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    (
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
}

const T0_NS: i64 = 1_770_300_000 * 1_000_000_000; // 2026-02-05T14:00:00Z

fn traces_file(dir: &Path) -> PathBuf {
    let span = |i: i64, error: bool| {
        json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payment"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": format!("{:032x}", 0x1000 + i), "spanId": format!("{:016x}", 0x10 + i),
                "name": "Charge", "kind": 2,
                "startTimeUnixNano": (T0_NS + i * 1_000_000_000).to_string(),
                "endTimeUnixNano": (T0_NS + i * 1_000_000_000 + 20_000_000).to_string(),
                "status": {"code": if error { 2 } else { 0 }},
            }]}],
        }]})
        .to_string()
            + "\n"
    };
    let path = dir.join("traces.jsonl");
    let text: String = (0..40).map(|i| span(i, i % 4 == 0)).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Collects incident `id` into `store`, signed with `key` (PKCS#8 PEM) when given.
fn collect(store: &Path, id: &str, key: Option<&str>) -> PathBuf {
    let dir = tempfile::tempdir().unwrap();
    let incident = dir.path().join("incident.json");
    std::fs::write(
        &incident,
        json!({"id": id, "declared_at": "2026-02-05T14:01:00Z",
               "window": {"start": "2026-02-05T13:59:00Z", "end": "2026-02-05T14:02:00Z"}})
        .to_string(),
    )
    .unwrap();
    let env: Vec<(&str, String)> = key
        .map(|k| vec![("EVIDENCE_LOCKER__SIGNING__KEY", k.to_owned())])
        .unwrap_or_default();
    let out = run_cli(
        &[
            "collect",
            "--incident",
            incident.to_str().unwrap(),
            "--traces-file",
            traces_file(dir.path()).to_str().unwrap(),
            "--out",
            store.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The private key is never shown.
    if let Some(k) = key {
        let body = k.lines().nth(1).unwrap();
        assert!(!stderr(&out).contains(body) && !stdout(&out).contains(body));
    }
    bundle_dir(&out)
}

fn audit(store: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "audit",
        "--store",
        store.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = run_cli(&args, &[]);
    let code = out.status.code().unwrap();
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&out), stderr(&out)));
    (code, report)
}

/// The findings of the bundle of `incident`, as (kind, object) pairs.
fn findings_of(report: &Value, incident: &str) -> Vec<(String, String)> {
    report["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["incident"] == incident)
        .flat_map(|b| b["findings"].as_array().unwrap().iter())
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["object"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_clean_signed_store_passes_and_each_tampering_is_its_own_finding() {
    let store = tempfile::tempdir().unwrap();
    let (private, public) = keypair(7);
    let (other_private, _) = keypair(9);
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("trusted.pem");
    std::fs::write(&keys, &public).unwrap();
    let trusted = ["--trusted-keys", keys.to_str().unwrap()];

    let ok = collect(store.path(), "INC-OK", Some(&private));
    let (code, report) = audit(store.path(), &trusted);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["summary"]["findings"], 0);
    assert_eq!(report["signatures_verified"], true);
    let b = &report["bundles"][0];
    assert_eq!(b["status"], "complete");
    assert_eq!(b["signature_key"].as_str().unwrap().len(), 16);
    assert!(report["summary"]["objects"].as_u64().unwrap() >= 9);

    let flipped = collect(store.path(), "INC-FLIP", Some(&private));
    let deleted = collect(store.path(), "INC-DEL", Some(&private));
    let added = collect(store.path(), "INC-ADD", Some(&private));
    let replaced = collect(store.path(), "INC-REPL", Some(&private));
    collect(store.path(), "INC-OTHERKEY", Some(&other_private));
    collect(store.path(), "INC-UNSIGNED", None);

    // A flipped byte in a trace file, same size.
    let f = flipped.join("traces/errors.jsonl.zst");
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    std::fs::remove_file(deleted.join("report.html")).unwrap();
    std::fs::write(added.join("traces/extra.jsonl"), "{}\n").unwrap();
    // A manifest rewritten to hide a gap, the old signature kept.
    let m = replaced.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest["completeness"]["status"] = json!("complete");
    manifest["counts"]["error_traces"] = json!(0);
    std::fs::write(&m, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let expect = keys_dir.path().join("expected.txt");
    std::fs::write(&expect, "INC-OK\nINC-NEVER-CAPTURED\n").unwrap();

    let (code, report) = audit(
        store.path(),
        &[trusted[0], trusted[1], "--expect", expect.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{report:#}");
    let capture = |dir: &Path| dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(findings_of(&report, "INC-OK"), []);
    assert_eq!(
        findings_of(&report, "INC-FLIP"),
        [(
            "checksum_mismatch".to_owned(),
            format!("INC-FLIP/{}/traces/errors.jsonl.zst", capture(&flipped))
        )]
    );
    assert_eq!(
        findings_of(&report, "INC-DEL"),
        [(
            "file_missing".to_owned(),
            format!("INC-DEL/{}/report.html", capture(&deleted))
        )]
    );
    assert_eq!(
        findings_of(&report, "INC-ADD"),
        [(
            "unlisted_object".to_owned(),
            format!("INC-ADD/{}/traces/extra.jsonl", capture(&added))
        )]
    );
    assert_eq!(
        findings_of(&report, "INC-REPL"),
        [(
            "signature_invalid".to_owned(),
            format!("INC-REPL/{}/manifest.json", capture(&replaced))
        )]
    );
    let kinds = |i: &str| -> Vec<String> {
        findings_of(&report, i)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(kinds("INC-OTHERKEY"), ["untrusted_key"]);
    assert_eq!(kinds("INC-UNSIGNED"), ["signature_missing"]);
    let top = report["findings"].as_array().unwrap();
    assert_eq!(top.len(), 1, "{top:#?}");
    assert_eq!(top[0]["kind"], "no_bundle");
    assert_eq!(top[0]["object"], "INC-NEVER-CAPTURED");
    // The flipped byte says what was expected and found.
    let flip = report["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["incident"] == "INC-FLIP")
        .unwrap();
    let f = &flip["findings"][0];
    assert!(f["expected"].as_str().unwrap().starts_with("sha256 "));
    assert_ne!(f["expected"], f["found"]);

    // The retention report for auditors, one row per capture.
    let out = run_cli(
        &[
            "audit",
            "--store",
            store.path().to_str().unwrap(),
            "--format",
            "csv",
            "--trusted-keys",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let csv = stdout(&out);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "incident,capture,status,stored_at,retain_until,signature_key,findings"
    );
    assert_eq!(lines.count(), 7);
    assert!(csv.contains(&format!("INC-OK,{},complete,", capture(&ok))));
}

#[test]
fn a_store_that_cannot_be_read_is_exit_code_2_not_a_clean_audit() {
    let out = run_cli(&["audit", "--store", "/nonexistent/evidence"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/evidence"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.pem");
    std::fs::write(&keys, "not a key\n").unwrap();
    let out = run_cli(
        &[
            "audit",
            "--store",
            dir.path().to_str().unwrap(),
            "--trusted-keys",
            keys.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_thousand_signed_bundles_on_the_local_store_are_audited_clean() {
    let store = tempfile::tempdir().unwrap();
    let (private, public) = keypair(11);
    let first = collect(store.path(), "INC-0000", Some(&private));
    let capture = first.file_name().unwrap().to_str().unwrap().to_owned();
    let signer =
        evidence_locker::sign::ManifestSigner::from_key(SigningKey::from_bytes(&[11; 32]), None);
    // 999 more: the same files under other incidents, each manifest rewritten and re-signed.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    for i in 1..1000 {
        let id = format!("INC-{i:04}");
        let dir = store.path().join(&id).join(&capture);
        copy_dir(&first, &dir);
        let mut m = manifest.clone();
        m["incident"]["id"] = json!(id);
        m.as_object_mut().unwrap().remove("signature");
        m["signature"] = serde_json::to_value(signer.sign(&m).unwrap()).unwrap();
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
    }
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("trusted.pem");
    std::fs::write(&path, public).unwrap();
    let (code, report) = audit(store.path(), &["--trusted-keys", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{:#}", report["summary"]);
    assert_eq!(report["summary"]["bundles"], 1000);
    assert_eq!(report["summary"]["findings"], 0);
    eprintln!("audit of 1,000 bundles: {}", report["summary"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}
