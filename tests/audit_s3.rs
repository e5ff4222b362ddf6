//! `evidence-locker audit` of bundles stored on both S3 test servers: clean on each, and on moto
//! (Object Lock) a shortened retention is a finding naming the object.

mod support;

use aws_sdk_s3::primitives::DateTime as AwsDateTime;
use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
use serde_json::Value;
use support::s3::{Kind, S3Server};

fn collect(server: &S3Server, lock: bool) -> String {
    let mut env = server.env("evidence");
    if lock {
        env.push((
            "EVIDENCE_LOCKER__STORE__OBJECT_LOCK_MODE",
            "GOVERNANCE".into(),
        ));
        env.push(("EVIDENCE_LOCKER__STORE__OBJECT_LOCK_DAYS", "2".into()));
    }
    let out = support::run_cli(
        &[
            "collect",
            "--incident",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/incident.json"),
            "--traces-file",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/traces.jsonl.zst"),
            "--store",
            "s3://evidence/audit",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", support::stderr(&out));
    support::stdout(&out).lines().next().unwrap().to_owned()
}

fn audit(server: &S3Server) -> (i32, Value) {
    let out = support::run_cli(
        &[
            "audit",
            "--store",
            "s3://evidence/audit",
            "--format",
            "json",
        ],
        &server.env("evidence"),
    );
    let report = serde_json::from_str(&support::stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", support::stderr(&out)));
    (out.status.code().unwrap(), report)
}

#[tokio::test]
async fn a_bundle_on_s3s_fs_is_audited_clean() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket("evidence", false).await;
    collect(&server, false);
    let (code, report) = audit(&server);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["summary"]["bundles"], 1);
    assert!(report["summary"]["objects"].as_u64().unwrap() >= 9);
    eprintln!("s3s-fs audit: {}", report["summary"]);
}

#[tokio::test]
async fn on_moto_a_locked_bundle_is_clean_and_a_shortened_retention_is_a_finding() {
    let server = S3Server::start(Kind::Moto);
    server.create_bucket("evidence", true).await;
    let url = collect(&server, true);
    let (code, report) = audit(&server);
    assert_eq!(code, 0, "{report:#}");
    let b = &report["bundles"][0];
    assert_eq!(b["retention_mode"], "GOVERNANCE");
    assert!(b["retain_until"].is_string());

    // Governance mode lets a privileged caller shorten the lock: the audit must notice.
    let prefix = url.trim_start_matches("s3://evidence/");
    let key = format!("{prefix}report.html");
    let client = server.client().await;
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    client
        .put_object_retention()
        .bucket("evidence")
        .key(&key)
        .bypass_governance_retention(true)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Governance)
                .retain_until_date(AwsDateTime::from(soon))
                .build(),
        )
        .send()
        .await
        .expect("retention shortened");
    let (code, report) = audit(&server);
    assert_eq!(code, 1, "{report:#}");
    let findings = report["bundles"][0]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["kind"], "retention_shortened");
    assert_eq!(
        findings[0]["object"].as_str().unwrap(),
        key.trim_start_matches("audit/")
    );
    eprintln!("moto audit: {}", report["summary"]);
}
