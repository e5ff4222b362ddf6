//! `evidence-locker worker` as it runs in production: the real binary against a real
//! nats-server with JetStream, a real S3-compatible server (moto or s3s-fs) and a loopback
//! Jaeger. An incident published on `incidents.declared` becomes one bundle in the bucket and an
//! `incidents.evidence.ready` message whose link opens the report; duplicates, crashes, bad
//! messages and a stopped S3 lose nothing and make nothing twice.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::Digest;
use support::jaeger::{self, Api, synthetic_traces};
use support::nats::{NatsCluster, NatsServer, free_port};
use support::s3::{Kind, S3Server};

const BUCKET: &str = "evidence";

/// A Jaeger v3 loopback with 40 error traces in the incident and 60 normal ones before it.
fn backend() -> (SocketAddr, Arc<jaeger::Server>) {
    let us = |m: i64| (Utc::now() - chrono::Duration::minutes(m)).timestamp_micros();
    let mut traces = synthetic_traces(40, us(25), us(5), true, 20_000, 0);
    traces.extend(synthetic_traces(
        60,
        us(58),
        us(32),
        false,
        20_000,
        1_000_000,
    ));
    jaeger::start(jaeger::Server::new(Api::V3, 500, traces))
}

fn incident(id: &str) -> Value {
    let now = Utc::now();
    let ago = |m: i64| (now - chrono::Duration::minutes(m)).to_rfc3339();
    json!({
        "id": id,
        "title": "Payment failures",
        "severity": "SEV-1",
        "declared_at": ago(20),
        "started_at": ago(30),
        "window": {"start": ago(60), "end": ago(1)},
        "services": ["payment"],
    })
}

/// The capture id the worker gives an incident's capture of `kind`: its occurrence (declared_at)
/// and the kind.
fn capture_id(incident: &Value, kind: &str) -> String {
    let t: chrono::DateTime<Utc> = incident["declared_at"].as_str().unwrap().parse().unwrap();
    format!("{}-{kind}", t.format("%Y%m%dT%H%M%SZ"))
}

struct Worker {
    child: Child,
    log: PathBuf,
    /// Where its /metrics, /healthz and /readyz answer.
    metrics: String,
}

impl Worker {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What its /metrics page says.
    async fn metrics_text(&self) -> String {
        support::get_text(format!("http://{}/metrics", self.metrics)).await
    }

    /// Its /readyz answer: status and reason.
    async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(format!("http://{}/readyz", self.metrics))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took.
    fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "worker exit: {status}\n{}", self.log());
                return start.elapsed();
            }
            assert!(Instant::now() < deadline, "worker did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's world: NATS, S3, Jaeger, and a directory for spools and logs.
struct World {
    nats: NatsCluster,
    s3: S3Server,
    jaeger: SocketAddr,
    backend: Arc<jaeger::Server>,
    dir: tempfile::TempDir,
    js: jetstream::Context,
}

async fn world(nats: NatsServer, kind: Kind, object_lock: bool) -> World {
    world_on(NatsCluster::one(nats), kind, object_lock).await
}

async fn world_on(nats: NatsCluster, kind: Kind, object_lock: bool) -> World {
    let s3 = S3Server::start(kind);
    s3.create_bucket(BUCKET, object_lock).await;
    let (jaeger, backend) = backend();
    let urls: Vec<String> = nats.nodes.iter().map(NatsServer::url).collect();
    let client = async_nats::connect(urls).await.unwrap();
    World {
        nats,
        s3,
        jaeger,
        backend,
        dir: tempfile::tempdir().unwrap(),
        js: jetstream::new(client),
    }
}

impl World {
    fn spool(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What worker `name`'s spool holds besides its hidden staging and lock entries.
    fn spooled(&self, name: &str) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.spool(name))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect()
    }

    fn start_worker(&self, name: &str, extra: &[(&str, String)]) -> Worker {
        let log = self.dir.path().join(format!("{name}.log"));
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_evidence-locker"));
        cmd.arg("worker")
            .env("RUST_LOG", "info,evidence_locker=debug")
            // Plain text, so that the log can be searched for `delivery=2`.
            .env("NO_COLOR", "1")
            .env("EVIDENCE_LOCKER__NATS__URL", self.nats.url())
            .env(
                "EVIDENCE_LOCKER__BACKENDS__DEFAULT__URL",
                format!("http://{}", self.jaeger),
            )
            .env("EVIDENCE_LOCKER__WORKER__SPOOL", self.spool(name))
            .env("EVIDENCE_LOCKER__WORKER__ACK_WAIT", "3s")
            .env("EVIDENCE_LOCKER__WORKER__RETRY_DELAY", "300ms")
            .env("EVIDENCE_LOCKER__WORKER__RETRY_DELAY_MAX", "1s")
            .env("EVIDENCE_LOCKER__WORKER__CLAIM_TTL", "3s")
            .env("EVIDENCE_LOCKER__WORKER__RESOLVED_TAIL", "1s")
            .env("EVIDENCE_LOCKER__WORKER__UPLOAD_ATTEMPTS", "2")
            .env("EVIDENCE_LOCKER__WORKER__SHUTDOWN_GRACE", "2s")
            .env("EVIDENCE_LOCKER__METRICS__LISTEN", &metrics)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        for (k, _) in std::env::vars() {
            if k.starts_with("EVIDENCE_LOCKER__") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in self.s3.env(BUCKET).into_iter().chain(extra.iter().cloned()) {
            cmd.env(k, v);
        }
        Worker {
            child: cmd.spawn().expect("the worker starts"),
            log,
            metrics,
        }
    }

    /// Publishes on a subject, with no message id (so JetStream keeps every copy).
    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        headers: Option<async_nats::HeaderMap>,
    ) {
        // The stream may not exist before the first worker made it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let sent = match &headers {
                Some(h) => {
                    self.js
                        .publish_with_headers(subject.to_owned(), h.clone(), payload.clone().into())
                        .await
                }
                None => {
                    self.js
                        .publish(subject.to_owned(), payload.clone().into())
                        .await
                }
            };
            if let Ok(ack) = sent
                && ack.await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "cannot publish on {subject}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Makes the stream and the consumer with a first worker (one warm-up incident, captured),
    /// then stops it: incidents published next queue up until another worker starts.
    async fn no_worker_running(&self) {
        let mut first = self.start_worker("first", &[]);
        self.declare("INC-WARMUP").await;
        self.ready(1, &first).await;
        first.terminate();
    }

    /// Publishes the test incident `id` on `incidents.declared`; returns it.
    async fn declare(&self, id: &str) -> Value {
        let inc = incident(id);
        self.publish("incidents.declared", inc.to_string().into_bytes(), None)
            .await;
        inc
    }

    /// Waits for `n` announcements on `incidents.evidence.ready`.
    async fn ready(&self, n: usize, worker: &Worker) -> Vec<jetstream::Message> {
        self.wait_on(
            "incidents.evidence.ready",
            n,
            Duration::from_secs(60),
            worker,
        )
        .await
    }

    /// Waits until the backend has answered `n` requests: a capture is under way.
    async fn capture_started(&self, n: usize, worker: &Worker) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.backend.request_count() < n {
            assert!(
                Instant::now() < deadline,
                "no capture started:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The shared consumer's state.
    async fn consumer(&self) -> consumer::Info {
        self.js
            .get_stream("INCIDENTS")
            .await
            .unwrap()
            .consumer_info("evidence-worker")
            .await
            .unwrap()
            .clone()
    }

    /// Every message stored on `subject` so far (asked again for up to 30 s while JetStream does
    /// not answer, as a cluster that lost a node may not for a few seconds).
    async fn on(&self, subject: &str) -> Vec<jetstream::Message> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_on(subject).await {
                Ok(got) => return got,
                Err(e) => assert!(Instant::now() < deadline, "cannot read {subject}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn try_on(&self, subject: &str) -> Result<Vec<jetstream::Message>, async_nats::Error> {
        let stream = match self.js.get_stream("INCIDENTS").await {
            Ok(s) => s,
            // Not made yet: nothing on any subject.
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending as usize;
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut batch = consumer
            .fetch()
            .max_messages(pending)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            out.push(m?);
        }
        Ok(out)
    }

    /// Waits until `subject` holds at least `n` messages; returns them.
    async fn wait_on(
        &self,
        subject: &str,
        n: usize,
        within: Duration,
        worker: &Worker,
    ) -> Vec<jetstream::Message> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.on(subject).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages on {subject} within {within:?}; worker log:\n{}",
                got.len(),
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A loopback Slack-style webhook: its address and the bodies it received.
fn webhook_sink() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Value>>>) {
    let hooks = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = hooks.clone();
    let hook = support::serve(axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(v);
                "ok"
            }
        }),
    ));
    (hook, hooks)
}

fn body(m: &jetstream::Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

/// Every capture of `captures` (incident, capture id) is stored whole (each file against its
/// manifest) and complete, alone under its incident, and announced in `ready`, every
/// announcement naming the same manifest.
async fn each_stored_once_and_announced_alike(
    s3: &S3Server,
    captures: &[(String, String)],
    ready: &[jetstream::Message],
) {
    for (id, capture) in captures {
        let manifest = verify_stored(s3, id, capture).await;
        assert_eq!(manifest["completeness"]["status"], "complete", "{id}");
        let keys = s3.keys(BUCKET, &format!("incidents/{id}/")).await;
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("incidents/{id}/{capture}/"))),
            "{id}: one capture only: {keys:?}"
        );
        let named: std::collections::BTreeSet<String> = ready
            .iter()
            .map(body)
            .filter(|b| b["incident_id"] == id.as_str())
            .map(|b| b["manifest_sha256"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(named.len(), 1, "{id}: announcements name {named:?}");
    }
}

/// Checks every object of a stored bundle against its manifest; returns the manifest.
async fn verify_stored(s3: &S3Server, incident: &str, capture: &str) -> Value {
    let prefix = format!("incidents/{incident}/{capture}/");
    let manifest_bytes = s3.get(BUCKET, &format!("{prefix}manifest.json")).await;
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut listed = vec![format!("{prefix}manifest.json")];
    for f in manifest["files"].as_array().unwrap() {
        let key = format!("{prefix}{}", f["path"].as_str().unwrap());
        let bytes = s3.get(BUCKET, &key).await;
        assert_eq!(bytes.len() as u64, f["bytes"].as_u64().unwrap(), "{key}");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap(),
            "{key}"
        );
        listed.push(key);
    }
    listed.sort();
    assert_eq!(
        s3.keys(BUCKET, &prefix).await,
        listed,
        "the bucket holds exactly the bundle"
    );
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_becomes_a_locked_bundle_a_link_and_a_webhook_then_a_resolved_capture() {
    let w = world(NatsServer::start(), Kind::Moto, true).await;
    let (hook, hooks) = webhook_sink();
    // The intake serves the stable report links the worker signs.
    const LINK_SECRET: &str = "a-link-secret-of-32-characters!!";
    let mut intake_env: Vec<(&str, String)> = w.s3.env(BUCKET);
    intake_env.push(("EVIDENCE_LOCKER__INTAKE__LINK_SECRET", LINK_SECRET.into()));
    intake_env.push((
        "EVIDENCE_LOCKER__INTAKE__BEARER_TOKEN",
        "intake-token".into(),
    ));
    let intake_env: Vec<(&str, &str)> = intake_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let intake = support::intake::start(&w.nats.url(), &intake_env).await;
    let worker = w.start_worker(
        "a",
        &[
            ("EVIDENCE_LOCKER__INTAKE__PUBLIC_URL", intake.base.clone()),
            ("EVIDENCE_LOCKER__INTAKE__LINK_SECRET", LINK_SECRET.into()),
            (
                "EVIDENCE_LOCKER__STORE__OBJECT_LOCK_MODE",
                "COMPLIANCE".into(),
            ),
            ("EVIDENCE_LOCKER__STORE__OBJECT_LOCK_DAYS", "1".into()),
            ("EVIDENCE_LOCKER__STORE__SSE", "AES256".into()),
            ("EVIDENCE_LOCKER__STORE__LINK_TTL", "1h".into()),
            (
                "EVIDENCE_LOCKER__NOTIFY__WEBHOOK_URL",
                format!("http://{hook}/hook"),
            ),
        ],
    );
    let inc = w.declare("INC-E2E-1").await;
    let declared = capture_id(&inc, "declared");
    let ready = w.ready(1, &worker).await;
    let r = body(&ready[0]);
    assert_eq!(r["incident_id"], "INC-E2E-1");
    assert_eq!(r["capture_id"], declared.as_str());
    assert_eq!(r["status"], "complete", "{r:#}");
    assert_eq!(
        r["bundle"],
        format!("s3://evidence/incidents/INC-E2E-1/{declared}/")
    );
    assert_eq!(r["counts"]["error_traces"], 40);
    assert_eq!(r["counts"]["baseline_traces"], 60);

    // The presigned link opens the report, with no credentials of our own.
    let link = r["report_url"].as_str().unwrap();
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let page = reqwest::get(link).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers()
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("INC-E2E-1") && html.contains("<svg"),
        "{}",
        &html[..html.len().min(300)]
    );

    // The stable link: through the intake, which presigns afresh at each visit; a tampered or
    // missing signature is refused, the intake's own credentials open it too.
    let stable = r["stable_report_url"]
        .as_str()
        .expect("a stable link")
        .to_owned();
    assert!(
        stable.starts_with(&format!(
            "{}/v1/bundles/INC-E2E-1/{declared}/report?expires=",
            intake.base
        )),
        "{stable}"
    );
    let expires: chrono::DateTime<Utc> = r["stable_report_url_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expires > Utc::now() + chrono::Duration::days(89),
        "intake.link_ttl is 90d: {expires}"
    );
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let hop = no_redirect.get(&stable).send().await.unwrap();
    assert_eq!(hop.status(), 302);
    assert_eq!(hop.headers()["cache-control"], "no-store");
    let fresh = hop.headers()["location"].to_str().unwrap().to_owned();
    assert!(fresh.contains("X-Amz-Signature="), "{fresh}");
    let page = reqwest::get(&stable).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("INC-E2E-1"));
    let tampered = stable.replace("signature=", "signature=00");
    assert_eq!(
        no_redirect.get(&tampered).send().await.unwrap().status(),
        401
    );
    let other = stable.replace("INC-E2E-1", "INC-E2E-2");
    assert_eq!(no_redirect.get(&other).send().await.unwrap().status(), 401);
    let bare = stable.split('?').next().unwrap().to_owned();
    assert_eq!(no_redirect.get(&bare).send().await.unwrap().status(), 401);
    let with_token = no_redirect
        .get(&bare)
        .bearer_auth("intake-token")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 302);
    let missing = no_redirect
        .get(format!(
            "{}/v1/bundles/INC-E2E-1/no-such-capture/report",
            intake.base
        ))
        .bearer_auth("intake-token")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // What is stored is what the manifest says, and its hash is the one announced.
    let manifest = verify_stored(&w.s3, "INC-E2E-1", &declared).await;
    let manifest_bytes =
        w.s3.get(
            BUCKET,
            &format!("incidents/INC-E2E-1/{declared}/manifest.json"),
        )
        .await;
    assert_eq!(
        r["manifest_sha256"],
        hex::encode(sha2::Sha256::digest(&manifest_bytes))
    );
    assert_eq!(manifest["capture"]["kind"], "declared");
    assert_eq!(manifest["retention"]["mode"], "COMPLIANCE");

    // Object Lock: every object carries the retention; deleting the locked version is refused.
    let client = w.s3.client().await;
    let key = &format!("incidents/INC-E2E-1/{declared}/traces/errors.jsonl.zst");
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("COMPLIANCE")
    );
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let promised: chrono::DateTime<Utc> = manifest["retention"]["retain_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(until, promised.timestamp());
    assert!(until > Utc::now().timestamp() + 23 * 3600);
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    let version = head.version_id().expect("a versioned object").to_owned();
    let deleted = client
        .delete_object()
        .bucket(BUCKET)
        .key(key)
        .version_id(&version)
        .send()
        .await;
    assert!(deleted.is_err(), "a locked object version was deleted");
    assert_eq!(
        w.s3.get(BUCKET, key).await.len() as u64,
        head.content_length().unwrap() as u64
    );

    // The webhook got one Slack-style message with the link.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooks.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = hooks.lock().unwrap()[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    // On-call gets the link that lasts.
    assert!(
        text.contains("INC-E2E-1") && text.contains(&stable),
        "{text}"
    );

    // Resolution: a second capture up to resolution plus the tail, referencing the first.
    let mut resolved = inc.clone();
    resolved["resolved_at"] = json!(Utc::now().to_rfc3339());
    resolved.as_object_mut().unwrap().remove("window");
    w.publish(
        "incidents.resolved",
        resolved.to_string().into_bytes(),
        None,
    )
    .await;
    let ready = w.ready(2, &worker).await;
    let second = body(&ready[1]);
    let resolved_id = capture_id(&inc, "resolved");
    assert_eq!(second["capture_id"], resolved_id.as_str());
    let m2 = verify_stored(&w.s3, "INC-E2E-1", &resolved_id).await;
    assert_eq!(m2["previous_capture"]["capture_id"], declared.as_str());
    assert_eq!(
        m2["previous_capture"]["manifest_sha256"],
        r["manifest_sha256"]
    );
    let end: chrono::DateTime<Utc> = m2["window"]["end"].as_str().unwrap().parse().unwrap();
    let resolved_at: chrono::DateTime<Utc> =
        resolved["resolved_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        end,
        resolved_at + chrono::Duration::seconds(1),
        "resolution + tail"
    );

    // The same occurrence declared again: already captured, not announced again, and on-call
    // is not told twice.
    w.publish("incidents.declared", inc.to_string().into_bytes(), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker.log().contains("AlreadyCaptured") {
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.on("incidents.evidence.ready").await.len(), 2);
    assert_eq!(hooks.lock().unwrap().len(), 2, "one webhook per capture");
    let stored = w.s3.keys(BUCKET, "incidents/INC-E2E-1/").await;
    assert!(
        stored.iter().all(
            |k| k.contains(&format!("/{declared}/")) || k.contains(&format!("/{resolved_id}/"))
        ),
        "{stored:?}"
    );
    assert!(
        w.on("incidents.deadletter").await.is_empty(),
        "{}",
        worker.log()
    );
    // What Prometheus sees: two captures stored, their traces counted, the webhook delivered
    // twice, the backend asked; and every worker metric the alerting rules and the dashboard use.
    let metrics = worker.metrics_text().await;
    for sample in [
        "evidence_locker_worker_captures_total{status=\"complete\"} 2",
        "evidence_locker_worker_webhook_deliveries_total{result=\"delivered\"} 2",
        "evidence_locker_worker_messages_total{outcome=\"already_captured\"} 1",
        "evidence_locker_worker_capture_duration_seconds_count 2",
        "evidence_locker_worker_store_reachable 1",
        "evidence_locker_worker_nats_connected 1",
    ] {
        assert!(metrics.contains(sample), "{sample} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("evidence_locker_backend_requests_total{backend=\"jaeger\",purpose=\"errors\",status=\"200\"}"),
        "{metrics}"
    );
    let errors_captured: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evidence_locker_traces_captured_total{kind=\"errors\"} "))
        .and_then(|v| v.parse().ok())
        .expect("error traces are counted");
    assert!(errors_captured >= 40, "{errors_captured}");
    support::deploy::assert_deploy_metrics_exported(
        &metrics,
        |n| !n.starts_with("evidence_locker_intake_"),
        // Only while a capture is in flight.
        &["evidence_locker_worker_retention_margin_seconds"],
    );
    assert_eq!(worker.readyz().await.0, 200);
    // Every line of a capture names its incident and capture.
    let log = worker.log();
    let captured: Vec<&str> = log.lines().filter(|l| l.contains(" captured ")).collect();
    assert!(!captured.is_empty(), "{log}");
    for line in captured {
        assert!(
            line.contains("incident_id=INC-E2E-1") && line.contains("capture_id="),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_copies_and_a_killed_worker_make_one_bundle() {
    let w = world(NatsServer::start(), Kind::Moto, false).await;
    // A slow backend, so that the kill lands in the middle of a capture.
    w.backend
        .delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    // Worker a takes the first copy and starts capturing (so it holds the capture's claim)...
    let mut a = w.start_worker("a", &[]);
    let inc = incident("INC-DUP-1");
    let declared = capture_id(&inc, "declared");
    let payload = inc.to_string().into_bytes();
    w.publish("incidents.declared", payload.clone(), None).await;
    w.capture_started(3, &a).await;
    // ...then worker b starts, four more copies arrive, and a is killed without warning in the
    // middle of its capture and restarted.
    let b = w.start_worker("b", &[]);
    for _ in 0..4 {
        w.publish("incidents.declared", payload.clone(), None).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !a.log().contains("captured"),
        "the kill must land mid-capture:\n{}",
        a.log()
    );
    a.kill();
    let a2 = w.start_worker("a", &[]);
    w.wait_on("incidents.evidence.ready", 1, Duration::from_secs(90), &b)
        .await;
    // Every copy is dealt with: acknowledged, none dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = w.consumer().await;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages left: {info:?}\n{}\n{}",
            a2.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    verify_stored(&w.s3, "INC-DUP-1", &declared).await;
    let all = w.s3.keys(BUCKET, "incidents/INC-DUP-1/").await;
    assert!(
        all.iter()
            .all(|k| k.starts_with(&format!("incidents/INC-DUP-1/{declared}/"))),
        "one capture only: {all:?}"
    );
    let ready = w.on("incidents.evidence.ready").await;
    let shas: std::collections::BTreeSet<String> = ready
        .iter()
        .map(|m| body(m)["manifest_sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shas.len(), 1, "every announcement names the same bundle");
    assert!(w.on("incidents.deadletter").await.is_empty());
    for s in ["a", "b"] {
        let left = w.spooled(s);
        assert!(left.is_empty(), "spool {s} not empty: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_a_reason_and_the_worker_carries_on() {
    let w = world(
        NatsServer::start_with_max_payload(16 << 20),
        Kind::Moto,
        false,
    )
    .await;
    let worker = w.start_worker("a", &[]);
    let mut huge = incident("INC-HUGE");
    huge["title"] = json!("x".repeat(10 << 20));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), "not valid JSON"),
        ("empty", Vec::new(), "not valid JSON"),
        ("an array", b"[1,2,3]".to_vec(), "JSON object"),
        ("no id", br#"{"declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(), "no `id`"),
        ("no declared_at", br#"{"id":"INC-X"}"#.to_vec(), "no `declared_at`"),
        ("unknown fields only", br#"{"foo":"bar","baz":1}"#.to_vec(), "no `id`"),
        ("wrong type of id", br#"{"id":7,"declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(), "wrong type"),
        ("services not a list", br#"{"id":"INC-X","declared_at":"2026-02-05T14:40:00Z","services":"payment"}"#.to_vec(), "wrong type"),
        ("a date that is not one", br#"{"id":"INC-X","declared_at":"yesterday"}"#.to_vec(), "wrong type"),
        ("an id that escapes the prefix", br#"{"id":"../../etc","declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(), "not usable"),
        ("end before start", br#"{"id":"INC-X","declared_at":"2026-02-05T14:40:00Z","window":{"start":"2026-02-05T15:00:00Z","end":"2026-02-05T14:00:00Z"}}"#.to_vec(), "ends"),
        ("a resolution in 2099", br#"{"id":"INC-X","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2099-01-01T00:00:00Z"}"#.to_vec(), "in the future"),
        ("a time in 1970", br#"{"id":"INC-X","declared_at":"1970-01-01T00:00:00Z"}"#.to_vec(), "1990"),
        ("a 10 MB payload", huge.to_string().into_bytes(), "worker.max_message"),
    ];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Sender", "test-suite");
    headers.insert("Nats-Msg-Id", "original-id-1");
    for (i, (_, payload, _)) in cases.iter().enumerate() {
        let h = (i == 0).then(|| headers.clone());
        w.publish("incidents.declared", payload.clone(), h).await;
    }
    // Then a good one: the worker must still be consuming.
    w.declare("INC-AFTER-1").await;
    let dead = w
        .wait_on(
            "incidents.deadletter",
            cases.len(),
            Duration::from_secs(60),
            &worker,
        )
        .await;
    assert_eq!(dead.len(), cases.len());
    // Handled concurrently: put them back in publication order.
    let sequence = |m: &jetstream::Message| -> u64 {
        m.headers
            .as_ref()
            .unwrap()
            .get("Evidence-Locker-Stream-Sequence")
            .unwrap()
            .as_str()
            .parse()
            .unwrap()
    };
    let mut dead = dead;
    dead.sort_by_key(sequence);
    for (m, (what, payload, reason)) in dead.iter().zip(&cases) {
        let h = m.headers.as_ref().expect("dead letters carry headers");
        let got = h
            .get("Evidence-Locker-Reason")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(
            got.contains(reason),
            "{what}: reason {got:?}, wanted {reason:?}"
        );
        assert_eq!(
            h.get("Evidence-Locker-Subject").unwrap().as_str(),
            "incidents.declared"
        );
        assert_eq!(
            &m.payload[..],
            &payload[..],
            "{what}: the original payload is kept"
        );
    }
    let first = dead[0].headers.as_ref().unwrap();
    assert_eq!(first.get("X-Sender").unwrap().as_str(), "test-suite");
    assert_eq!(
        first
            .get("Evidence-Locker-Original-Nats-Msg-Id")
            .unwrap()
            .as_str(),
        "original-id-1"
    );
    let ready = w.ready(1, &worker).await;
    assert_eq!(body(&ready[0])["incident_id"], "INC-AFTER-1");
    // Prometheus counts each dead letter under a reason (the alert's label).
    let metrics = worker.metrics_text().await;
    let count = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        count("evidence_locker_worker_dead_letters_total{reason=\"refused\"}")
            + count("evidence_locker_worker_dead_letters_total{reason=\"permanent\"}"),
        cases.len() as u64,
        "{metrics}"
    );
    assert!(count("evidence_locker_worker_dead_letters_total{reason=\"refused\"}") >= 10);
}

/// `--log-format json` (here through EVIDENCE_LOCKER_LOG_FORMAT): every line is one JSON object,
/// and every line logged during a capture names its incident and capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_name_the_capture() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let worker = w.start_worker("a", &[("EVIDENCE_LOCKER_LOG_FORMAT", "json".into())]);
    let inc = w.declare("INC-JSON-LOG").await;
    w.ready(1, &worker).await;
    let log = worker.log();
    let mut in_capture = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["span"]["name"] == "capture" {
            in_capture += 1;
            assert_eq!(v["span"]["incident_id"], "INC-JSON-LOG", "{line}");
            assert_eq!(
                v["span"]["capture_id"],
                capture_id(&inc, "declared").as_str(),
                "{line}"
            );
        }
    }
    assert!(
        in_capture >= 3,
        "{in_capture} lines in the capture's span:\n{log}"
    );
    let captured = log
        .lines()
        .find(|l| l.contains("\"message\":\"captured\""))
        .expect("a captured line");
    assert!(
        captured.contains("\"incident_id\":\"INC-JSON-LOG\""),
        "{captured}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_down_the_bundle_waits_in_the_spool_and_is_stored_when_s3_returns() {
    let mut w = world(NatsServer::start(), Kind::S3sFs, false).await;
    w.s3.stop();
    let worker = w.start_worker("a", &[]);
    let inc = w.declare("INC-S3-DOWN").await;
    let declared = capture_id(&inc, "declared");
    let spooled = w
        .spool("a")
        .join(format!("INC-S3-DOWN/{declared}/manifest.json"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spooled.exists() {
        assert!(
            Instant::now() < deadline,
            "nothing spooled:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queries = w.backend.request_count();
    assert!(queries > 0);
    // Several failed deliveries later, still nothing announced and nothing queried again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(w.on("incidents.evidence.ready").await.is_empty());
    assert_eq!(
        w.backend.request_count(),
        queries,
        "the backend is not queried again"
    );
    assert!(spooled.exists());
    // Not ready while the store does not answer; the spool counts the waiting bundle.
    let (status, why) = worker.readyz().await;
    assert_eq!((status, why.trim()), (503, "the store does not answer"));
    let metrics = worker.metrics_text().await;
    assert!(
        metrics.contains("evidence_locker_worker_spool_bundles 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("evidence_locker_worker_store_reachable 0"),
        "{metrics}"
    );

    w.s3.restart();
    let ready = w.ready(1, &worker).await;
    assert_eq!(body(&ready[0])["status"], "complete");
    assert_eq!(
        worker.readyz().await.0,
        200,
        "ready again once the bundle is stored"
    );
    verify_stored(&w.s3, "INC-S3-DOWN", &declared).await;
    assert_eq!(
        w.backend.request_count(),
        queries,
        "the backend was queried once"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled.exists() {
        assert!(
            Instant::now() < deadline,
            "the spool still holds the stored bundle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w.on("incidents.deadletter").await.is_empty());
}

/// S3 stopped for 60 s (`EVIDENCE_LOCKER_CHAOS_S3_DOWN_S`) in the middle of a bundle's upload,
/// some of its files stored and its manifest not; two more incidents declared while it is down.
/// Once it is back every bundle is stored whole and announced, none is dead-lettered, and the
/// backend was asked once per incident (as many requests as one capture makes, times the
/// incidents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stopped_for_a_minute_mid_upload_loses_nothing_and_asks_the_backend_once_per_incident() {
    let down = Duration::from_secs(
        std::env::var("EVIDENCE_LOCKER_CHAOS_S3_DOWN_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let mut w = world(NatsServer::start(), Kind::S3sFs, false).await;
    // Redelivery as in production, only faster: 1 s doubling to 5 s, so that a minute without
    // S3 is well within the deliveries.
    let worker = w.start_worker(
        "a",
        &[
            ("EVIDENCE_LOCKER__WORKER__RETRY_DELAY", "1s".into()),
            ("EVIDENCE_LOCKER__WORKER__RETRY_DELAY_MAX", "5s".into()),
            ("EVIDENCE_LOCKER__WORKER__MAX_DELIVER", "60".into()),
        ],
    );
    let mut captures = vec![];
    let warmup = w.declare("INC-S3-WARMUP").await;
    captures.push(("INC-S3-WARMUP".to_owned(), capture_id(&warmup, "declared")));
    w.ready(1, &worker).await;
    let per_capture = w.backend.request_count();
    // Incidents until one's upload is caught with some files stored and not its manifest (the
    // manifest goes last); S3 is killed the moment the first file is on its disk.
    let mut caught = None;
    for attempt in 0..5 {
        let id = format!("INC-S3-MID-{attempt}");
        let inc = w.declare(&id).await;
        captures.push((id.clone(), capture_id(&inc, "declared")));
        let prefix = format!("incidents/{id}/");
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.s3.files_on_disk(BUCKET, &prefix).is_empty() {
            assert!(Instant::now() < deadline, "not uploaded:\n{}", worker.log());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        w.s3.stop();
        let files = w.s3.files_on_disk(BUCKET, &prefix);
        if files.iter().any(|f| f.ends_with("/manifest.json")) {
            eprintln!("s3: {id} was stored whole before S3 stopped; again");
            w.s3.restart();
            continue;
        }
        caught = Some((id, files.len()));
        break;
    }
    let (mid, before) = caught.expect("no upload caught in the middle in 5 tries");
    let stopped = Instant::now();
    for i in 0..2 {
        let id = format!("INC-S3-DURING-{i}");
        let inc = w.declare(&id).await;
        captures.push((id, capture_id(&inc, "declared")));
    }
    let announced_before = w.on("incidents.evidence.ready").await.len();
    tokio::time::sleep(down.saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        w.on("incidents.evidence.ready").await.len(),
        announced_before,
        "nothing announced while S3 is down"
    );
    w.s3.restart();
    let back = Instant::now();
    let ready = w
        .wait_on(
            "incidents.evidence.ready",
            captures.len(),
            Duration::from_secs(120),
            &worker,
        )
        .await;
    let stored_in = back.elapsed();
    each_stored_once_and_announced_alike(&w.s3, &captures, &ready).await;
    assert_eq!(
        w.backend.request_count(),
        per_capture * captures.len(),
        "the backend is asked once per incident ({per_capture} requests a capture)"
    );
    assert!(w.on("incidents.deadletter").await.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.spooled("a").is_empty() {
        assert!(Instant::now() < deadline, "the spool still holds bundles");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "s3: stopped {:.0} s with {before} files of {mid} stored and not its manifest; {} incidents, \
         all stored whole {:.1} s after S3 returned; the backend asked {} times ({per_capture} a capture)",
        down.as_secs_f64(),
        captures.len(),
        stored_in.as_secs_f64(),
        w.backend.request_count(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_stores_what_its_spool_holds_without_asking_the_backend() {
    let mut w = world(NatsServer::start(), Kind::S3sFs, false).await;
    w.s3.stop();
    let mut worker = w.start_worker("a", &[("EVIDENCE_LOCKER__WORKER__MAX_DELIVER", "2".into())]);
    let inc = w.declare("INC-RESTART").await;
    let declared = capture_id(&inc, "declared");
    // With S3 down and only two deliveries, the message ends dead-lettered...
    let dead = w
        .wait_on("incidents.deadletter", 1, Duration::from_secs(60), &worker)
        .await;
    let reason = dead[0]
        .headers
        .as_ref()
        .unwrap()
        .get("Evidence-Locker-Reason")
        .unwrap()
        .to_string();
    assert!(reason.contains("kept in the spool"), "{reason}");
    // ...and SIGTERM stops the worker promptly, with the bundle still spooled.
    let took = worker.terminate();
    assert!(took < Duration::from_secs(10), "{took:?}");
    let queries = w.backend.request_count();
    assert!(
        w.spool("a")
            .join(format!("INC-RESTART/{declared}/manifest.json"))
            .exists()
    );

    w.s3.restart();
    let again = w.start_worker("a", &[]);
    let ready = w.ready(1, &again).await;
    assert_eq!(body(&ready[0])["incident_id"], "INC-RESTART");
    verify_stored(&w.s3, "INC-RESTART", &declared).await;
    assert_eq!(w.backend.request_count(), queries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_capture_hands_the_message_back_and_another_worker_finishes_it() {
    let w = world(NatsServer::start(), Kind::Moto, false).await;
    // Each search takes 1.5 s: the capture outlasts the 1 s shutdown grace.
    w.backend
        .delay_ms
        .store(1500, std::sync::atomic::Ordering::SeqCst);
    let mut a = w.start_worker(
        "a",
        &[("EVIDENCE_LOCKER__WORKER__SHUTDOWN_GRACE", "1s".into())],
    );
    let inc = w.declare("INC-TERM-1").await;
    let declared = capture_id(&inc, "declared");
    w.capture_started(2, &a).await;
    let took = a.terminate();
    assert!(took < Duration::from_secs(8), "stopped in {took:?}");
    assert!(a.log().contains("handed back"), "{}", a.log());
    // The spool holds nothing half-written that looks whole.
    let spool = w.spool("a");
    assert!(
        !spool
            .join(format!("INC-TERM-1/{declared}/manifest.json"))
            .exists()
    );

    w.backend
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let b = w.start_worker("b", &[]);
    let ready = w.ready(1, &b).await;
    assert_eq!(body(&ready[0])["incident_id"], "INC-TERM-1");
    verify_stored(&w.s3, "INC-TERM-1", &declared).await;
    assert!(w.on("incidents.deadletter").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_longer_than_the_ack_wait_keeps_its_message() {
    let w = world(NatsServer::start(), Kind::Moto, false).await;
    // Every search takes 1.2 s against an ack wait of 1 s: without in-progress acks JetStream
    // would deliver the message again while it is being captured.
    w.backend
        .delay_ms
        .store(1200, std::sync::atomic::Ordering::SeqCst);
    let worker = w.start_worker("a", &[("EVIDENCE_LOCKER__WORKER__ACK_WAIT", "1s".into())]);
    w.declare("INC-LONG-1").await;
    w.ready(1, &worker).await;
    let info = w.consumer().await;
    assert_eq!(info.config.ack_wait, Duration::from_secs(1));
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "delivered once: {info:?}"
    );
    assert!(!worker.log().contains("delivery=2"), "{}", worker.log());
}

/// An Alertmanager group notification of one alert that started at `starts` (and ended at
/// `ends` when resolved).
fn alert_group(
    status: &str,
    starts: chrono::DateTime<Utc>,
    ends: Option<chrono::DateTime<Utc>>,
) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"PaymentErrors\"}",
        "status": status,
        "receiver": "evidence-locker",
        "groupLabels": {"alertname": "PaymentErrors"},
        "commonLabels": {"alertname": "PaymentErrors", "service": "payment", "severity": "critical"},
        "commonAnnotations": {"summary": "Payment errors"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "PaymentErrors", "service": "payment"},
            "annotations": {},
            "startsAt": starts.to_rfc3339(),
            "endsAt": ends.map_or("0001-01-01T00:00:00Z".to_owned(), |e| e.to_rfc3339()),
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "4c1a2b3d"
        }]
    })
}

async fn post_alert(intake: &support::intake::Intake, body: &Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/alertmanager", intake.base))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_alert_gets_evidence_per_firing_episode_and_old_links_are_not_resent() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let (hook, hooks) = webhook_sink();
    let worker = w.start_worker(
        "a",
        &[
            ("EVIDENCE_LOCKER__CAPTURE__LOOKBACK", "1m".into()),
            (
                "EVIDENCE_LOCKER__NOTIFY__WEBHOOK_URL",
                format!("http://{hook}/hook"),
            ),
        ],
    );
    // No credentials: the intake listens on loopback only.
    let intake = support::intake::start(&w.nats.url(), &[]).await;
    let now = Utc::now();
    let ago = |m: i64| now - chrono::Duration::minutes(m);
    // The first episode fires 30 minutes ago (the backend's 40 error traces lie 25–5 minutes
    // ago) and resolves; the same group fires again 8 minutes ago, for another outage.
    let first = post_alert(&intake, &alert_group("firing", ago(30), None)).await;
    w.ready(1, &worker).await;
    post_alert(&intake, &alert_group("resolved", ago(30), Some(ago(20)))).await;
    w.ready(2, &worker).await;
    let second = post_alert(&intake, &alert_group("firing", ago(8), None)).await;
    assert_eq!(
        first["incident_id"], second["incident_id"],
        "one alert group"
    );
    assert_ne!(first["occurrence"], second["occurrence"]);
    let ready = w.ready(3, &worker).await;
    let declared: Vec<Value> = ready
        .iter()
        .map(body)
        .filter(|r| r["capture_id"].as_str().unwrap().ends_with("-declared"))
        .collect();
    assert_eq!(
        declared.len(),
        2,
        "two declared captures: {ready:?}",
        ready = ready.iter().map(body).collect::<Vec<_>>()
    );
    assert_ne!(declared[0]["capture_id"], declared[1]["capture_id"]);
    assert_ne!(
        declared[0]["manifest_sha256"],
        declared[1]["manifest_sha256"]
    );
    let errors = |r: &Value| r["counts"]["error_traces"].as_u64().unwrap();
    assert_eq!(
        errors(&declared[0]),
        40,
        "the first episode's window holds every error"
    );
    assert!(
        errors(&declared[1]) < 40 && errors(&declared[1]) > 0,
        "the second episode's window holds only the later errors: {}",
        declared[1]
    );
    let id = first["incident_id"].as_str().unwrap();
    for r in &declared {
        verify_stored(&w.s3, id, r["capture_id"].as_str().unwrap()).await;
    }

    // A repeat of the first episode long after JetStream's duplicate window (published here
    // without a message id): already captured, and nobody is sent the old link as news.
    let stream = w.js.get_stream("INCIDENTS").await.unwrap();
    let original = stream.get_raw_message(1).await.unwrap();
    w.publish("incidents.declared", original.payload.to_vec(), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.log().matches("AlreadyCaptured").count() < 1 {
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.on("incidents.evidence.ready").await.len(), 3);
    assert_eq!(hooks.lock().unwrap().len(), 3, "one webhook per capture");
    assert!(w.on("incidents.deadletter").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_two_deliveries_gives_a_complete_bundle_on_the_third() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    // Each delivery asks the backend once (no retries inside a delivery): the first two are
    // refused with 503.
    w.backend
        .fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let worker = w.start_worker(
        "a",
        &[("EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETRIES", "0".into())],
    );
    let inc = w.declare("INC-BACKEND-DOWN").await;
    let ready = w.ready(1, &worker).await;
    let r = body(&ready[0]);
    assert_eq!(r["status"], "complete", "{r:#}\n{}", worker.log());
    assert_eq!(r["capture_id"], capture_id(&inc, "declared").as_str());
    assert_eq!(r["counts"]["error_traces"], 40);
    let manifest = verify_stored(&w.s3, "INC-BACKEND-DOWN", &capture_id(&inc, "declared")).await;
    assert_eq!(manifest["completeness"]["gaps"], json!([]));
    assert_eq!(w.consumer().await.delivered.stream_sequence, 1);
    assert!(worker.log().contains("delivery=3"), "{}", worker.log());
    assert!(
        w.s3.keys(BUCKET, "incidents/INC-BACKEND-DOWN/")
            .await
            .iter()
            .all(|k| k.contains(&format!("/{}/", capture_id(&inc, "declared")))),
        "one capture"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_capture_is_superseded_by_a_later_delivery_and_left_untouched() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    // Down for both deliveries the message gets: stored as partial on the last one.
    w.backend
        .fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let worker = w.start_worker(
        "a",
        &[
            ("EVIDENCE_LOCKER__BACKENDS__DEFAULT__RETRIES", "0".into()),
            ("EVIDENCE_LOCKER__WORKER__MAX_DELIVER", "2".into()),
        ],
    );
    let inc = w.declare("INC-PARTIAL").await;
    let base = capture_id(&inc, "declared");
    let ready = w.ready(1, &worker).await;
    let partial = body(&ready[0]);
    assert_eq!(partial["status"], "partial");
    assert_eq!(partial["capture_id"], base.as_str());
    let before =
        w.s3.get(
            BUCKET,
            &format!("incidents/INC-PARTIAL/{base}/manifest.json"),
        )
        .await;

    // The same occurrence again (a repeat notification), the backend back: a new capture.
    w.publish("incidents.declared", inc.to_string().into_bytes(), None)
        .await;
    let ready = w.ready(2, &worker).await;
    let again = body(&ready[1]);
    assert_eq!(again["status"], "complete", "{again:#}");
    assert_eq!(again["capture_id"], format!("{base}-2"));
    let m = verify_stored(&w.s3, "INC-PARTIAL", &format!("{base}-2")).await;
    assert_eq!(m["previous_capture"]["capture_id"], base.as_str());
    assert_eq!(
        m["previous_capture"]["manifest_sha256"],
        hex::encode(sha2::Sha256::digest(&before))
    );
    assert_eq!(
        w.s3.get(
            BUCKET,
            &format!("incidents/INC-PARTIAL/{base}/manifest.json")
        )
        .await,
        before,
        "the partial capture is left as it was"
    );
    let metrics = worker.metrics_text().await;
    assert!(
        metrics.contains(
            "evidence_locker_worker_partial_captures_total{gap=\"backend_unavailable\"} 1"
        ),
        "{metrics}"
    );
}

/// The address a worker serves its metrics on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_the_future_and_messages_not_due_yet_never_delay_a_real_incident() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    // One capture slot: a message that held it while waiting would hold up everything.
    let worker = w.start_worker(
        "a",
        &[("EVIDENCE_LOCKER__CAPTURE__CONCURRENCY", "1".into())],
    );
    let now = Utc::now();
    for i in 0..4 {
        let mut far = incident(&format!("INC-FAR-{i}"));
        far["resolved_at"] = json!("2099-01-01T00:00:00Z");
        w.publish("incidents.resolved", far.to_string().into_bytes(), None)
            .await;
        // Valid, but its resolution tail ends four minutes from now.
        let mut soon = incident(&format!("INC-SOON-{i}"));
        soon["resolved_at"] = json!((now + chrono::Duration::minutes(4)).to_rfc3339());
        soon.as_object_mut().unwrap().remove("window");
        w.publish("incidents.resolved", soon.to_string().into_bytes(), None)
            .await;
    }
    let started = Instant::now();
    w.declare("INC-REAL").await;
    let ready = w.ready(1, &worker).await;
    assert_eq!(body(&ready[0])["incident_id"], "INC-REAL");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the real incident waited {:?}",
        started.elapsed()
    );
    let dead = w
        .wait_on("incidents.deadletter", 4, Duration::from_secs(30), &worker)
        .await;
    for d in &dead {
        let reason = d
            .headers
            .as_ref()
            .unwrap()
            .get("Evidence-Locker-Reason")
            .unwrap()
            .to_string();
        assert!(
            reason.contains("in the future") && reason.contains("2099"),
            "{reason}"
        );
    }
    assert!(
        worker.log().contains("not due yet"),
        "the waiting messages were handed back: {}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_deleted_under_a_running_worker_is_made_again_and_the_next_incident_captured() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let worker = w.start_worker("a", &[]);
    w.declare("INC-BEFORE").await;
    w.ready(1, &worker).await;
    w.js.delete_stream("INCIDENTS").await.unwrap();
    // The test publishes as soon as the stream exists again (the worker makes it).
    let inc = w.declare("INC-AFTER-DELETE").await;
    let ready = w.ready(1, &worker).await;
    let r = body(&ready[0]);
    assert_eq!(r["incident_id"], "INC-AFTER-DELETE", "{}", worker.log());
    verify_stored(&w.s3, "INC-AFTER-DELETE", &capture_id(&inc, "declared")).await;
    assert!(
        worker
            .log()
            .contains("making sure the stream and consumer exist"),
        "{}",
        worker.log()
    );
    assert_eq!(worker.readyz().await.0, 200);
}

/// A worker whose JetStream parts cannot all be made at start-up (here the claims bucket, whose
/// subjects another stream holds; on a cluster, leaders not elected yet) keeps asking, is not
/// ready meanwhile, and captures once they can be made. It used to exit at the first refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_jetstream_parts_it_cannot_make_yet_then_captures() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    w.js.create_stream(jetstream::stream::Config {
        name: "BLOCKER".into(),
        subjects: vec!["$KV.evidence-worker-claims.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut worker = w.start_worker("a", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker.log().contains("JetStream is not ready yet") {
        if let Ok(Some(status)) = worker.child.try_wait() {
            panic!("the worker exited ({status}):\n{}", worker.log());
        }
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker keeps waiting:\n{}",
        worker.log()
    );
    assert_eq!(worker.readyz().await.0, 503);
    w.js.delete_stream("BLOCKER").await.unwrap();
    let inc = w.declare("INC-AFTER-WAIT").await;
    let ready = w.ready(1, &worker).await;
    assert_eq!(body(&ready[0])["incident_id"], "INC-AFTER-WAIT");
    verify_stored(&w.s3, "INC-AFTER-WAIT", &capture_id(&inc, "declared")).await;
}

/// `nats.replicas = 3` against a single nats-server is a configuration error, not a wait: the
/// worker and the intake stop at start-up saying what to change (they used to retry forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_single_server_cannot_keep_stop_the_worker_and_the_intake_with_the_fix() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let replicas = ("EVIDENCE_LOCKER__NATS__REPLICAS", "3".to_owned());
    let mut worker = w.start_worker("a", std::slice::from_ref(&replicas));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = worker.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker still runs:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let fix = "nats.replicas is 3, but the nats-server is not part of a JetStream cluster: set nats.replicas = 1";
    assert!(worker.log().contains(fix), "{}", worker.log());

    let intake = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_evidence-locker"))
        .arg("intake")
        .env("EVIDENCE_LOCKER__NATS__URL", w.nats.url())
        .env(replicas.0, &replicas.1)
        .env(
            "EVIDENCE_LOCKER__INTAKE__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&intake.stderr);
    assert_eq!(intake.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(fix), "{stderr}");
}

/// `n` one-span traces of payment as OTLP JSON, spread over `[from, to)`: failing (status
/// ERROR) or healthy (OK); ids start after `first`.
fn otlp_payment(
    n: u64,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
    error: bool,
    first: u64,
) -> Vec<Value> {
    let step = (to - from).num_milliseconds() / n as i64;
    (0..n)
        .map(|i| {
            let start = (from + chrono::Duration::milliseconds(step * i as i64))
                .timestamp_nanos_opt()
                .unwrap();
            let status = if error {
                json!({"code": 2, "message": "card declined"})
            } else {
                json!({"code": 1})
            };
            let n = first + i + 1;
            support::real::otlp_payment_call(
                &format!("{:016x}{n:016x}", 0x5eed_u64 * n),
                &format!("{n:016x}"),
                start,
                Some(status),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_captures_every_error_trace_from_a_real_jaeger_2_13() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let real = tokio::task::block_in_place(|| {
        let real = support::real::Jaeger::start(100_000, None);
        let now = Utc::now();
        let ago = |m: i64| now - chrono::Duration::minutes(m);
        let mut spans = otlp_payment(1200, ago(29), ago(2), true, 0);
        spans.extend(otlp_payment(400, ago(29), ago(2), false, 10_000));
        spans.extend(otlp_payment(300, ago(59), ago(31), false, 20_000));
        real.send(&spans, 500);
        real
    });
    let worker = w.start_worker(
        "a",
        &[("EVIDENCE_LOCKER__BACKENDS__DEFAULT__URL", real.url())],
    );
    let inc = w.declare("INC-REAL-JAEGER").await;
    let ready = w.ready(1, &worker).await;
    let r = body(&ready[0]);
    assert_eq!(r["status"], "complete", "{r:#}");
    assert_eq!(r["counts"]["error_traces"], 1200);
    let manifest = verify_stored(&w.s3, "INC-REAL-JAEGER", &capture_id(&inc, "declared")).await;
    assert_eq!(manifest["sources"][0]["api"], "jaeger-v3");
    assert!(
        manifest["sources"][0]["notes"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("error filter returned traces that do not match it")),
        "{:#}",
        manifest["sources"][0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_incidents_are_captured_earliest_retention_deadline_first_and_an_expired_part_is_a_gap()
 {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    w.no_worker_running().await;
    let now = Utc::now();
    let hours = |h: i64, m: i64| {
        (now - chrono::Duration::hours(h) + chrono::Duration::minutes(m)).to_rfc3339()
    };
    // Published in this order; backends keep 72 h, so the deadlines are: EXPIRED an hour ago
    // (its oldest part is gone), NEAR in an hour, MID in 69 h, RECENT in 71 h.
    for (id, start_h) in [
        ("INC-RECENT", 1),
        ("INC-NEAR", 71),
        ("INC-MID", 3),
        ("INC-EXPIRED", 73),
    ] {
        let inc = json!({
            "id": id,
            "declared_at": hours(start_h, 10),
            "started_at": hours(start_h, 0),
            "window": {"start": hours(start_h, 0), "end": hours(start_h, 10)},
            "services": ["payment"],
        });
        w.publish("incidents.declared", inc.to_string().into_bytes(), None)
            .await;
    }
    let worker = w.start_worker(
        "edf",
        &[
            ("EVIDENCE_LOCKER__CAPTURE__CONCURRENCY", "1".into()),
            (
                "EVIDENCE_LOCKER__CAPTURE__RETENTION_MARGIN_WARN",
                "6h".into(),
            ),
        ],
    );
    let ready = w.ready(5, &worker).await;
    let log = worker.log();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" capturing"))
        .filter_map(|l| l.split("id=").nth(1))
        .filter_map(|rest| rest.split([' ', '}']).next())
        .collect();
    assert_eq!(
        order,
        ["INC-EXPIRED", "INC-NEAR", "INC-MID", "INC-RECENT"],
        "{log}"
    );
    // The expired part is a gap of a stored bundle, not a failure.
    let expired = ready
        .iter()
        .map(body)
        .find(|b| b["incident_id"] == "INC-EXPIRED")
        .unwrap();
    let manifest = verify_stored(
        &w.s3,
        "INC-EXPIRED",
        expired["capture_id"].as_str().unwrap(),
    )
    .await;
    let gaps = manifest["completeness"]["gaps"].as_array().unwrap();
    assert!(gaps.iter().any(|g| g["kind"] == "expired"), "{gaps:#?}");
    // Both short margins were warned about, in the log and the metrics.
    assert!(
        log.contains("already left the backend's retention"),
        "{log}"
    );
    assert!(
        log.contains("little time left before the window's oldest part"),
        "{log}"
    );
    let metrics = worker.metrics_text().await;
    assert!(
        metrics.contains("evidence_locker_worker_retention_margin_warnings_total 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_a_busy_slot_stay_the_worker_s_past_the_ack_wait() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    w.no_worker_running().await;
    for id in ["INC-SLOW-1", "INC-SLOW-2", "INC-SLOW-3"] {
        w.declare(id).await;
    }
    // Every search takes 400 ms: one capture outlasts the 3 s ack wait, while the other two
    // wait for the only slot.
    w.backend
        .delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let worker = w.start_worker(
        "busy",
        &[("EVIDENCE_LOCKER__CAPTURE__CONCURRENCY", "1".into())],
    );
    w.ready(4, &worker).await;
    let log = worker.log();
    let captures = log.lines().filter(|l| l.contains(" capturing")).count();
    assert_eq!(captures, 3, "{log}");
    assert!(
        !log.contains("delivery=2"),
        "a waiting message was delivered again: {log}"
    );
}

/// Limits the size of any file process `pid` writes (as a full disk or a quota would, the write
/// fails); `None` lifts the limit.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads the limit given and writes nothing back (the old limit is not asked).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Every path under `dir`, relative to it.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = support::tree(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_captures_stores_no_half_bundle_and_the_worker_carries_on() {
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    let mut worker = w.start_worker(
        "a",
        &[
            ("EVIDENCE_LOCKER__WORKER__MAX_DELIVER", "30".into()),
            ("EVIDENCE_LOCKER__WORKER__RETRY_DELAY_MAX", "500ms".into()),
        ],
    );
    let pid = worker.child.id();
    // The spool's disk is full: no file of the worker may grow past 16 KiB (the bundle's
    // report and trace files are larger; the lock file is not).
    limit_file_size(pid, Some(16 << 10));
    let inc = w.declare("INC-DISK-FULL").await;
    let declared = capture_id(&inc, "declared");
    // Captures are refused and retried: the backend is asked again for each delivery.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = 0;
    while failures < 3 {
        failures = worker.log().matches("File too large").count();
        assert!(
            Instant::now() < deadline,
            "no failed capture seen:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Meanwhile nothing is stored or announced, and the spool holds no bundle, whole or half.
    assert!(w.on("incidents.evidence.ready").await.is_empty());
    assert!(w.on("incidents.deadletter").await.is_empty());
    let spool = w.spool("a");
    let spooled: Vec<String> = tree(&spool)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json") || p.contains(&declared))
        .collect();
    assert!(spooled.is_empty(), "the spool holds {spooled:?}");
    let stored = w.s3.keys(BUCKET, "").await;
    assert!(stored.is_empty(), "the store holds {stored:?}");
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still running:\n{}",
        worker.log()
    );

    // Space again: the next delivery captures and stores one complete bundle.
    limit_file_size(pid, None);
    let ready = w.ready(1, &worker).await;
    assert_eq!(body(&ready[0])["status"], "complete");
    verify_stored(&w.s3, "INC-DISK-FULL", &declared).await;
    assert!(w.on("incidents.deadletter").await.is_empty());
    // No staging directory of the failed attempts is left behind.
    let left: Vec<String> = tree(&spool)
        .into_iter()
        .filter(|p| {
            p.split('/')
                .any(|part| part.starts_with('.') && part != ".lock")
        })
        .collect();
    assert!(left.is_empty(), "left in the spool: {left:?}");
}

/// The worker SIGKILLed at a random moment after each of several incidents (before the pull,
/// mid-capture, while writing, storing or announcing) and restarted on the same spool: every
/// incident ends with exactly one complete bundle, announced, and nothing is dead-lettered.
/// 5 trials here; `scripts/chaos` runs 20 (`EVIDENCE_LOCKER_CHAOS_TRIALS`), with the seed in
/// `EVIDENCE_LOCKER_CHAOS_SEED` to repeat a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_at_random_points_leaves_one_complete_bundle_per_incident() {
    let trials: usize = std::env::var("EVIDENCE_LOCKER_CHAOS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut seed: u64 = std::env::var("EVIDENCE_LOCKER_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64 | 1);
    eprintln!("chaos: {trials} trials, EVIDENCE_LOCKER_CHAOS_SEED={seed}");
    let mut next = move || {
        // xorshift64: enough to spread the kills, and repeatable from the seed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let w = world(NatsServer::start(), Kind::S3sFs, false).await;
    // 100 ms per search: a capture takes a second or two, so the kills land all along it.
    w.backend
        .delay_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let mut worker = w.start_worker("a", &[]);
    let mut captures = Vec::new();
    let started = Instant::now();
    for t in 0..trials {
        let id = format!("INC-KILL-{t}");
        let inc = w.declare(&id).await;
        captures.push((id, capture_id(&inc, "declared")));
        let after = Duration::from_millis(next() % 3_000);
        tokio::time::sleep(after).await;
        worker.kill();
        eprintln!(
            "trial {t}: killed {} ms after the incident",
            after.as_millis()
        );
        worker = w.start_worker("a", &[]);
    }
    let ready = w
        .wait_on(
            "incidents.evidence.ready",
            trials,
            Duration::from_secs(60 + 10 * trials as u64),
            &worker,
        )
        .await;
    // At least once, and every announcement of an incident names the same bundle.
    each_stored_once_and_announced_alike(&w.s3, &captures, &ready).await;
    assert!(w.on("incidents.deadletter").await.is_empty());
    eprintln!(
        "chaos: {trials} incidents, {} announcements, all stored once and complete in {:.1} s",
        ready.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The capture counts a worker's /metrics reports, summed over statuses.
async fn captures_total(worker: &Worker) -> u64 {
    let text = worker.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("evidence_locker_worker_captures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Asks JetStream to move the leader of `stream` to another node; returns the old and new leader.
async fn move_leader(js: &jetstream::Context, stream: &str) -> (String, String) {
    let leader = |info: &jetstream::stream::Info| {
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_default()
    };
    let before = leader(
        &js.get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone(),
    );
    let reply = js_api_request(js, &format!("STREAM.LEADER.STEPDOWN.{stream}")).await;
    assert!(reply.contains("\"success\":true"), "{stream}: {reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
        {
            let now = leader(info);
            if !now.is_empty() && now != before {
                return (before, now);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{stream}: no new leader within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JetStream API request (`subject` after `$JS.API.`) with an empty body, sent again while it
/// times out (a cluster that lost a node answers once it has elected new leaders); the reply as
/// text.
async fn js_api_request(js: &jetstream::Context, subject: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match js
            .request::<_, _, Value>(subject.to_owned(), &json!({}))
            .await
        {
            Ok(reply) => return reply.to_string(),
            Err(e) => assert!(Instant::now() < deadline, "{subject}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The share of `sorted` at or below which `q` of the values lie.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Scale-out on a real cluster: three nats-servers routed into one JetStream cluster, the stream
/// and the claims buckets made by the workers with 3 replicas, three workers each connected to
/// its own node (they learn the others from the cluster), and the intake given all three. 200
/// incidents declared through the intake within a minute (`EVIDENCE_LOCKER_CLUSTER_INCIDENTS`
/// changes the count, `EVIDENCE_LOCKER_CLUSTER_SPACING_MS` the pause between two), while one node is SIGKILLed and restarted and the stream's leader is
/// moved: every incident ends with one complete bundle, captured once (the workers' capture
/// counters add up to the incidents), announced with one manifest, nothing dead-lettered.
/// Prints the throughput and p50/p99 from declaration to `incidents.evidence.ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_captures_every_incident_once_through_a_node_loss_and_a_leader_move() {
    let n: usize = std::env::var("EVIDENCE_LOCKER_CLUSTER_INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut w = world_on(NatsCluster::start(3), Kind::S3sFs, false).await;
    w.nats.wait_for_jetstream(&w.js).await;
    let replicas = ("EVIDENCE_LOCKER__NATS__REPLICAS", "3".to_owned());
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| {
            w.start_worker(
                &format!("w{i}"),
                &[
                    ("EVIDENCE_LOCKER__NATS__URL", w.nats.nodes[i].url()),
                    replicas.clone(),
                ],
            )
        })
        .collect();
    let logs = |workers: &[Worker]| {
        workers
            .iter()
            .map(|x| x.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let intake = support::intake::start(&w.nats.url(), &[(replicas.0, "3")]).await;
    let http = reqwest::Client::new();
    // Spread over 40 s, or as given (`EVIDENCE_LOCKER_CLUSTER_SPACING_MS=0`: all at once, to
    // see what the workers can take).
    let spacing = Duration::from_millis(
        std::env::var("EVIDENCE_LOCKER_CLUSTER_SPACING_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40_000 / n.max(1) as u64),
    );
    let mut declared: std::collections::BTreeMap<String, (i128, Value)> = Default::default();
    let mut refused = 0;
    let mut moved = None;
    let mut orphan_before = 0;
    let mut longest_refusal = Duration::ZERO;
    let started = Instant::now();
    for i in 0..n {
        if i == n / 4 {
            w.nats.nodes[1].stop();
            orphan_before = captures_total(&workers[1]).await;
            eprintln!("cluster: node n2 killed after {i} incidents");
        }
        if i == n / 2 {
            // The worker that was connected to n2 finds the others on its own (it was given
            // n2's URL only): connected to one of them and ready while n2 is down.
            let others = [w.nats.nodes[0].port, w.nats.nodes[2].port];
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let log = workers[1].log();
                let moved = others
                    .iter()
                    .any(|p| log.contains(&format!("connected successfully server={p}")));
                let ready = workers[1].readyz().await.0 == 200;
                if moved && ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "w1 did not reconnect to another node within 30 s (moved {moved}, ready {ready})\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let orphan_after = captures_total(&workers[1]).await;
            eprintln!(
                "cluster: w1 reconnected to another node; it captured {} incidents while n2 was down",
                orphan_after - orphan_before
            );
            w.nats.nodes[1].restart();
            eprintln!("cluster: node n2 restarted after {i} incidents");
        }
        if i == 3 * n / 4 {
            moved = Some(move_leader(&w.js, "INCIDENTS").await);
            let claims = move_leader(&w.js, "KV_evidence-worker-claims").await;
            eprintln!(
                "cluster: after {i} incidents, the stream leader moved {moved:?}, the claims' {claims:?}"
            );
        }
        let id = format!("INC-CLUSTER-{i:03}");
        let inc = incident(&id);
        let at = Utc::now().timestamp_nanos_opt().unwrap() as i128;
        // As Alertmanager does: a refused or failed POST is sent again.
        let first_try = Instant::now();
        loop {
            let sent = http
                .post(format!("{}/v1/incidents", intake.base))
                .json(&inc)
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status() == 202 => break,
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            refused += 1;
            eprintln!(
                "cluster: {id} refused after {:.1} s: {why}",
                first_try.elapsed().as_secs_f64()
            );
            assert!(
                first_try.elapsed() < Duration::from_secs(90),
                "the intake refused {id} for 90 s: {why}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        longest_refusal = longest_refusal.max(first_try.elapsed());
        declared.insert(id, (at, inc));
        tokio::time::sleep(spacing).await;
    }
    let declaring = started.elapsed();
    let (old, new) = moved.unwrap_or_default();
    assert_ne!(old, new, "the stream leader moved");

    let ready = w
        .wait_on(
            "incidents.evidence.ready",
            n,
            Duration::from_secs(180),
            &workers[0],
        )
        .await;
    // First announcement of each incident, by JetStream's clock (the same machine's).
    let mut first: std::collections::BTreeMap<String, i128> = Default::default();
    for m in &ready {
        let id = body(m)["incident_id"].as_str().unwrap().to_owned();
        let at = m.info().unwrap().published.timestamp_nanos_opt().unwrap() as i128;
        first
            .entry(id)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let missing: Vec<&String> = declared
        .keys()
        .filter(|id| !first.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "not announced: {missing:?}\n{}",
        logs(&workers)
    );
    // No worker gave up on the way.
    for (i, x) in workers.iter_mut().enumerate() {
        if let Ok(Some(status)) = x.child.try_wait() {
            let log = x.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "worker w{i} exited ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    // Captured once: the workers' counters add up to the incidents, and each worker took part.
    let per_worker = futures::future::join_all(workers.iter().map(captures_total)).await;
    assert_eq!(
        per_worker.iter().sum::<u64>(),
        n as u64,
        "captures per worker {per_worker:?} for {n} incidents\n{}",
        logs(&workers)
    );
    assert!(per_worker.iter().all(|&c| c > 0), "{per_worker:?}");
    let captures: Vec<(String, String)> = declared
        .iter()
        .map(|(id, (_, inc))| (id.clone(), capture_id(inc, "declared")))
        .collect();
    each_stored_once_and_announced_alike(&w.s3, &captures, &ready).await;
    assert!(w.on("incidents.deadletter").await.is_empty());
    // What the workers made is replicated on all three nodes.
    for stream in [
        "INCIDENTS",
        "KV_evidence-worker-claims",
        "KV_evidence-worker-announced",
    ] {
        let info =
            w.js.get_stream(stream)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let cluster = info.cluster.unwrap();
        assert_eq!(cluster.replicas.len(), 2, "{stream}: {cluster:?}");
    }

    let mut slowest: Vec<(f64, &String)> = declared
        .iter()
        .map(|(id, (at, _))| ((first[id] - at) as f64 / 1e6, id))
        .collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("cluster: slowest {:?}", &slowest[..slowest.len().min(8)]);
    let mut latencies: Vec<f64> = slowest.iter().map(|s| s.0).collect();
    latencies.sort_by(f64::total_cmp);
    let span = (first.values().max().unwrap() - declared.values().map(|d| d.0).min().unwrap())
        as f64
        / 1e9;
    eprintln!(
        "cluster: {n} incidents declared in {:.1} s ({refused} POSTs refused and sent again, \
         the longest declaration {:.1} s), \
         captured by 3 workers {per_worker:?} in {span:.1} s ({:.2} incidents/s); \
         declaration to evidence.ready p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         {} announcements",
        declaring.as_secs_f64(),
        longest_refusal.as_secs_f64(),
        n as f64 / span,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().unwrap(),
        ready.len(),
    );
    drop(intake);
}
