//! The S3 store against both real S3-compatible servers: moto (Object Lock, lax) and s3s-fs
//! (strict SigV4 signatures and SHA-256 checksums). Small and multipart uploads arrive intact
//! with their checksums checked; an existing key is never replaced; a wrong checksum or a wrong
//! secret is refused; presigned links open without credentials.

mod support;

use std::time::Duration;

use evidence_locker::config::StoreSettings;
use evidence_locker::store::{Put, S3Error, S3Store};
use sha2::Digest;
use support::s3::{ACCESS_KEY, Kind, S3Server, SECRET_KEY};

fn settings(server: &S3Server, part_size: &str) -> StoreSettings {
    StoreSettings {
        kind: "s3".into(),
        path: String::new(),
        bucket: "evidence".into(),
        prefix: "incidents".into(),
        region: support::s3::REGION.into(),
        endpoint: server.endpoint(),
        path_style: true,
        object_lock_mode: String::new(),
        object_lock_days: 0,
        link_ttl: Duration::from_secs(600),
        sse: String::new(),
        sse_kms_key_id: String::new(),
        multipart_part_size: part_size.into(),
    }
}

fn credentials(secret: &str) {
    // SAFETY: every test of this file sets the same values before building a client (nextest
    // runs each test in its own process).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
}

/// Deterministic bytes that do not compress or repeat per part.
fn data(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = sha2::Sha256::digest([seed]);
    while out.len() < n {
        out.extend_from_slice(&block);
        block = sha2::Sha256::digest(block);
    }
    out.truncate(n);
    out
}

async fn uploads_are_intact_and_never_replace(kind: Kind) {
    let server = S3Server::start(kind);
    server.create_bucket("evidence", false).await;
    credentials(SECRET_KEY);
    let store = S3Store::connect(&settings(&server, "5MiB")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    for (name, size) in [("small.json", 1_000usize), ("large.jsonl.zst", 12 << 20)] {
        let bytes = data(size, size as u8);
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let key = store.key("INC-1", "declared", name);
        let put = store
            .put_file(&key, &path, bytes.len() as u64, &sha, None)
            .await
            .unwrap_or_else(|e| panic!("{kind:?} {name}: {e}"));
        assert_eq!(put, Put::Written);
        assert_eq!(server.get("evidence", &key).await, bytes, "{kind:?} {name}");
        // Again, as after an interrupted upload: recognised, not rewritten.
        let again = store
            .put_file(&key, &path, bytes.len() as u64, &sha, None)
            .await
            .unwrap();
        assert_eq!(again, Put::AlreadyThere, "{kind:?} {name}");
        // Other content under the same key is refused, and the object stays as it was.
        let other = data(size, size as u8 ^ 0xff);
        let other_path = dir.path().join(format!("other-{name}"));
        std::fs::write(&other_path, &other).unwrap();
        let other_sha = hex::encode(sha2::Sha256::digest(&other));
        let err = store
            .put_file(&key, &other_path, other.len() as u64, &other_sha, None)
            .await
            .unwrap_err();
        assert!(matches!(err, S3Error::Conflict { .. }), "{kind:?}: {err}");
        assert_eq!(server.get("evidence", &key).await, bytes);
    }

    // A presigned link opens without credentials.
    let key = store.key("INC-1", "declared", "small.json");
    let link = store.presign(&key).await.unwrap();
    let got = reqwest::get(&link).await.unwrap();
    assert_eq!(got.status(), 200, "{kind:?} {link}");
    assert_eq!(got.bytes().await.unwrap().len(), 1_000);
}

#[tokio::test]
async fn moto_uploads_are_intact_and_never_replace() {
    uploads_are_intact_and_never_replace(Kind::Moto).await;
}

#[tokio::test]
async fn s3s_fs_uploads_are_intact_and_never_replace() {
    uploads_are_intact_and_never_replace(Kind::S3sFs).await;
}

#[tokio::test]
async fn s3s_fs_refuses_a_wrong_checksum_and_a_wrong_secret() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket("evidence", false).await;
    credentials(SECRET_KEY);
    let store = S3Store::connect(&settings(&server, "16MiB")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.html");
    std::fs::write(&path, b"<html>evidence</html>").unwrap();
    // The checksum sent is the one given: a wrong one must be caught by the server.
    let wrong = hex::encode(sha2::Sha256::digest(b"something else"));
    let key = store.key("INC-2", "declared", "report.html");
    let err = store
        .put_file(&key, &path, 21, &wrong, None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(400), "{err}");
    assert!(err.to_string().contains("BadDigest"), "{err}");
    // (s3s-fs 0.14.1 keeps the refused body on disk; AWS does not.)

    credentials("not-the-secret");
    let store = S3Store::connect(&settings(&server, "16MiB")).await.unwrap();
    let right = hex::encode(sha2::Sha256::digest(b"<html>evidence</html>"));
    let err = store
        .put_file(&key, &path, 21, &right, None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err}");
}

#[tokio::test]
async fn collect_stores_a_bundle_at_an_s3_location_and_keeps_it_locally_when_s3_refuses() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket("evidence", false).await;
    let traces = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/traces.jsonl.zst");
    let incident = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/incident.json");
    let env = |secret: &str| -> Vec<(&str, String)> {
        vec![
            ("EVIDENCE_LOCKER__STORE__ENDPOINT", server.endpoint()),
            ("EVIDENCE_LOCKER__STORE__PATH_STYLE", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", secret.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    };
    let args = [
        "collect",
        "--incident",
        incident,
        "--traces-file",
        traces,
        "--store",
        "s3://evidence/cli",
    ];
    let out = support::run_cli(&args, &env(SECRET_KEY));
    assert!(out.status.success(), "{}", support::stderr(&out));
    let url = support::stdout(&out).lines().next().unwrap().to_owned();
    assert!(url.starts_with("s3://evidence/cli/INC-2026-0142/"), "{url}");
    let prefix = url.trim_start_matches("s3://evidence/");
    let manifest: serde_json::Value = serde_json::from_slice(
        &server
            .get("evidence", &format!("{prefix}manifest.json"))
            .await,
    )
    .unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = server
            .get(
                "evidence",
                &format!("{prefix}{}", f["path"].as_str().unwrap()),
            )
            .await;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }

    // A refused upload is an error that says where the complete bundle was kept.
    let out = support::run_cli(&args, &env("wrong-secret"));
    assert!(!out.status.success());
    let err = support::stderr(&out);
    let kept = err
        .split("the complete bundle is kept in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        std::path::Path::new(kept).join("manifest.json").is_file(),
        "{err}"
    );
    // The bundle was staged in a fresh private directory, and a later run, stored or not,
    // leaves the kept one alone.
    let staging = std::path::Path::new(kept)
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(staging).unwrap().permissions().mode() & 0o777,
        0o700,
        "{}",
        staging.display()
    );
    let out = support::run_cli(&args, &env(SECRET_KEY));
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(std::path::Path::new(kept).join("manifest.json").is_file());
    let _ = std::fs::remove_dir_all(
        std::path::Path::new(kept)
            .parent()
            .unwrap()
            .parent()
            .unwrap(),
    );
}
