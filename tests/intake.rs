//! `evidence-locker intake` against a real nats-server with JetStream: every Alertmanager and
//! PagerDuty fixture becomes the right message on the right subject; duplicates are dropped;
//! NATS down means 503 until it is back; bad credentials, signatures, sizes and bodies are refused
//! with nothing published.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::intake::Intake;
use support::nats::{NatsServer, free_port};

const SECRET: &str = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
const TOKEN: &str = "intake-test-token";

fn fixture(rel: &str) -> Vec<u8> {
    let copied = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(&copied).unwrap_or_else(|e| panic!("{}: {e}", copied.display()))
}

/// Starts the real binary's intake against `nats` with the test's token and PagerDuty secrets.
async fn start_intake(nats: &NatsServer, extra: &[(&str, &str)]) -> Intake {
    let secrets = format!("[\"old-secret\", \"{SECRET}\"]");
    let mut env = vec![
        ("EVIDENCE_LOCKER__INTAKE__BEARER_TOKEN", TOKEN),
        (
            "EVIDENCE_LOCKER__INTAKE__PAGERDUTY_SECRETS",
            secrets.as_str(),
        ),
        ("EVIDENCE_LOCKER__INTAKE__PUBLISH_TIMEOUT", "1s"),
    ];
    env.extend_from_slice(extra);
    support::intake::start(&nats.url(), &env).await
}

async fn post(url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .body(body)
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = tokio::time::timeout(Duration::from_millis(5_500), req.send())
        .await
        .expect("answered within 5 s")
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The messages in the stream: (subject, Nats-Msg-Id, payload).
async fn messages(nats: &NatsServer) -> Vec<(String, String, Value)> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = match js.get_stream("INCIDENTS").await {
        Ok(s) => s,
        Err(_) => return Vec::new(),
    };
    let count = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=count {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((
            m.subject.to_string(),
            id,
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    out
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

#[tokio::test]
async fn every_alertmanager_fixture_becomes_an_incident_on_the_right_subject() {
    let nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let url = format!("{}/v1/alertmanager", intake.base);
    let (auth_k, auth_v) = bearer();
    let mut ids = Vec::new();
    for rel in [
        "alertmanager/msteams_prom_post_request.json",
        "alertmanager/msteams_prom_post_request_2_alerts.json",
        "alertmanager/msteams_prom_post_request_12_alerts.json",
        "alertmanager/msteams_prom_post_request_too_many_sections.json",
        "alertmanager/zulip_alert.json",
        "alertmanager/zulip_single_alert_no_url.json",
    ] {
        let (status, body) = post(&url, fixture(rel), &[(auth_k, &auth_v)]).await;
        assert_eq!(status, 202, "{rel}: {body}");
        assert_eq!(body["subject"], "incidents.declared", "{rel}");
        ids.push(body["incident_id"].as_str().unwrap().to_owned());
    }
    // The three msteams payloads are one group (same receiver and groupKey), as are the two
    // Zulip ones: one incident each, the later notifications dropped as duplicates.
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[4], ids[5]);
    let msgs = messages(&nats).await;
    assert_eq!(msgs.len(), 3, "{msgs:#?}");

    let (subject, msg_id, first) = &msgs[0];
    assert_eq!(subject, "incidents.declared");
    // The occurrence (the group's firing episode: its earliest alert's start) is part of the id.
    assert_eq!(
        msg_id,
        &format!("incidents.declared:{}:20180307T113321Z", ids[0])
    );
    assert_eq!(first["declared_at"], "2018-03-07T11:33:21.873077559Z");
    assert!(first["id"].as_str().unwrap().starts_with("am-"));
    assert_eq!(first["title"], "Prometheus Test");
    assert_eq!(first["severity"], "warning");
    assert_eq!(first["services"], json!(["docker_nodes"]));
    assert_eq!(first["started_at"], "2018-03-07T11:33:21.873077559Z");
    assert_eq!(first["source"], "alertmanager");
    assert_eq!(
        first["links"]["alertmanager"],
        "http://docker.for.mac.host.internal:9093"
    );

    let many = &msgs[1].2;
    assert_eq!(many["severity"], "page");
    assert_eq!(
        many["services"].as_array().unwrap().len(),
        7,
        "one per distinct job label"
    );
    let zulip = &msgs[2].2;
    assert_eq!(zulip["title"], "High CPU core temperature");
    assert_eq!(zulip["severity"], "critical");
    // Every message parses back as an incident the worker will accept.
    for (_, _, m) in &msgs {
        evidence_locker::model::Incident::parse(m.to_string().as_bytes()).unwrap();
    }

    // The group resolves: the same incident on incidents.resolved.
    let mut resolved: Value =
        serde_json::from_slice(&fixture("alertmanager/zulip_alert.json")).unwrap();
    resolved["status"] = json!("resolved");
    for a in resolved["alerts"].as_array_mut().unwrap() {
        a["status"] = json!("resolved");
        a["endsAt"] = json!("2020-02-06T01:00:00Z");
    }
    let (status, body) = post(
        &url,
        resolved.to_string().into_bytes(),
        &[(auth_k, &auth_v)],
    )
    .await;
    assert_eq!(
        (status, body["subject"].as_str()),
        (202, Some("incidents.resolved")),
        "{body}"
    );
    let msgs = messages(&nats).await;
    assert_eq!(msgs[3].2["id"], ids[4].as_str());
    assert_eq!(msgs[3].2["resolved_at"], "2020-02-06T01:00:00Z");
}

#[tokio::test]
async fn pagerduty_webhooks_are_verified_mapped_and_deduplicated() {
    let nats = NatsServer::start();
    let intake = start_intake(
        &nats,
        &[(
            "EVIDENCE_LOCKER__INTAKE__PAGERDUTY_SERVICES",
            "{pig208 = [\"payment-service\", \"checkout-service\"]}",
        )],
    )
    .await;
    let url = format!("{}/v1/pagerduty", intake.base);
    let sign = |body: &[u8]| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    };

    // go-pagerduty's known answer: the body, the secret and the signature they publish.
    let vector: Value = serde_json::from_slice(&fixture(
        "pagerduty/go-pagerduty_webhookv3_signature_vector.json",
    ))
    .unwrap();
    let body = fixture("pagerduty/go-pagerduty_webhookv3_incident.priority_updated.body.json");
    assert_eq!(
        sign(&body),
        vector["valid_signature"].as_str().unwrap(),
        "the known-answer vector"
    );
    let (status, answer) = post(
        &url,
        body.clone(),
        &[(
            "X-PagerDuty-Signature",
            vector["valid_signature"].as_str().unwrap(),
        )],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("incident.priority_updated")
    );
    let (status, _) = post(
        &url,
        body,
        &[(
            "X-PagerDuty-Signature",
            vector["mismatch_signature"].as_str().unwrap(),
        )],
    )
    .await;
    assert_eq!(status, 401);

    let triggered = fixture("pagerduty/zulip_triggered_v3.json");
    let headers = [
        ("X-PagerDuty-Signature", sign(&triggered)),
        ("X-Webhook-Id", "delivery-1".to_owned()),
    ];
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, answer) = post(&url, triggered.clone(), &h).await;
    assert_eq!(
        (status, answer["incident_id"].as_str()),
        (202, Some("PFQZPSY")),
        "{answer}"
    );
    // PagerDuty delivers at least once: the same delivery again is answered, not published.
    let (status, answer) = post(&url, triggered, &h).await;
    assert_eq!(
        (status, &answer["duplicate"]),
        (202, &json!(true)),
        "{answer}"
    );

    let resolved = fixture("pagerduty/zulip_resolved_v3.json");
    let sig = sign(&resolved);
    let (status, answer) = post(&url, resolved, &[("X-PagerDuty-Signature", sig.as_str())]).await;
    assert_eq!(
        (status, answer["subject"].as_str()),
        (202, Some("incidents.resolved")),
        "{answer}"
    );

    let msgs = messages(&nats).await;
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    let declared = &msgs[0].2;
    assert_eq!(msgs[0].0, "incidents.declared");
    assert_eq!(declared["id"], "PFQZPSY");
    assert_eq!(declared["title"], "Test Incident 3");
    assert_eq!(declared["severity"], "high");
    assert_eq!(
        declared["services"],
        json!(["payment-service", "checkout-service"])
    );
    assert_eq!(declared["declared_at"], "2021-06-04T13:35:29.781Z");
    assert_eq!(
        declared["links"]["pagerduty"],
        "https://pig208.pagerduty.com/incidents/PFQZPSY"
    );
    assert_eq!(msgs[1].0, "incidents.resolved");
    assert!(msgs[1].2["resolved_at"].is_string());
}

#[tokio::test]
async fn the_same_incident_posted_twice_is_one_message() {
    let nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let body =
        br#"{"id":"INC-7","declared_at":"2026-02-05T14:40:00Z","services":["payment-service"]}"#
            .to_vec();
    let (auth_k, auth_v) = bearer();
    let url = format!("{}/v1/incidents", intake.base);
    let (s1, a1) = post(&url, body.clone(), &[(auth_k, &auth_v)]).await;
    let (s2, a2) = post(&url, body, &[(auth_k, &auth_v)]).await;
    assert_eq!((s1, &a1["duplicate"]), (202, &json!(false)), "{a1}");
    assert_eq!((s2, &a2["duplicate"]), (202, &json!(true)), "{a2}");
    assert_eq!(messages(&nats).await.len(), 1);
}

#[tokio::test]
async fn nats_down_is_503_until_it_is_back() {
    let mut nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let (auth_k, auth_v) = bearer();
    let url = format!("{}/v1/incidents", intake.base);
    let body =
        |id: &str| format!(r#"{{"id":"{id}","declared_at":"2026-02-05T14:40:00Z"}}"#).into_bytes();
    nats.stop();
    // The client notices the dropped connection quickly; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, answer) = post(&url, body("INC-DOWN"), &[(auth_k, &auth_v)]).await;
    assert_eq!(status, 503, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let ready = reqwest::get(format!("{}/readyz", intake.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = post(&url, body("INC-DOWN"), &[(auth_k, &auth_v)]).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            Instant::now() < deadline,
            "not accepted within 20 s of NATS coming back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let msgs = messages(&nats).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].2["id"], "INC-DOWN");
}

/// (what, url, body, headers, expected status)
type Case<'a> = (&'a str, String, Vec<u8>, Vec<(&'a str, String)>, u16);

#[tokio::test]
async fn bad_requests_are_refused_and_nothing_is_published() {
    let nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let (auth_k, auth_v) = bearer();
    let am = format!("{}/v1/alertmanager", intake.base);
    let good = fixture("alertmanager/zulip_alert.json");
    let cases: Vec<Case> = vec![
        ("missing token", am.clone(), good.clone(), vec![], 401),
        (
            "wrong token",
            am.clone(),
            good.clone(),
            vec![("Authorization", "Bearer nope".into())],
            401,
        ),
        (
            "wrong basic auth",
            am.clone(),
            good.clone(),
            vec![("Authorization", "Basic dXNlcjpwYXNz".into())],
            401,
        ),
        (
            "not JSON",
            am.clone(),
            b"{not json".to_vec(),
            vec![(auth_k, auth_v.clone())],
            400,
        ),
        (
            "no groupKey",
            am.clone(),
            br#"{"status":"firing","alerts":[{}]}"#.to_vec(),
            vec![(auth_k, auth_v.clone())],
            400,
        ),
        (
            "too large",
            am.clone(),
            vec![b' '; 300 * 1024],
            vec![(auth_k, auth_v.clone())],
            413,
        ),
        (
            "incident without id",
            format!("{}/v1/incidents", intake.base),
            br#"{"declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(),
            vec![(auth_k, auth_v.clone())],
            400,
        ),
        (
            "unsigned PagerDuty",
            format!("{}/v1/pagerduty", intake.base),
            fixture("pagerduty/zulip_triggered_v3.json"),
            vec![],
            401,
        ),
        (
            "forged PagerDuty",
            format!("{}/v1/pagerduty", intake.base),
            fixture("pagerduty/zulip_triggered_v3.json"),
            vec![("X-PagerDuty-Signature", format!("v1={}", "ab".repeat(32)))],
            401,
        ),
    ];
    for (what, url, body, headers, want) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, answer) = post(&url, body, &h).await;
        assert_eq!(status, want, "{what}: {answer}");
        if want == 400 {
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: a reason is given"
            );
        }
    }
    assert!(messages(&nats).await.is_empty(), "nothing was published");
    let metrics = support::get_text(format!("{}/metrics", intake.base)).await;
    assert!(
        metrics.contains("route=\"/v1/alertmanager\",status=\"401\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("evidence_locker_intake_nats_connected 1"));
    // Paths that are no route are counted together: a scanner adds no series.
    reqwest::get(format!("{}/wp-login.php?x=1", intake.base))
        .await
        .unwrap();
    let metrics = support::get_text(format!("{}/metrics", intake.base)).await;
    assert!(!metrics.contains("wp-login"), "{metrics}");
    assert!(
        metrics.contains("route=\"other\",status=\"404\"} 1"),
        "{metrics}"
    );
    // Every intake metric the alerting rules and the dashboard use is there.
    support::deploy::assert_deploy_metrics_exported(
        &metrics,
        |n| n.starts_with("evidence_locker_intake_") || n == "evidence_locker_build_info",
        &[],
    );
}

#[tokio::test]
async fn a_nats_that_accepts_but_never_acknowledges_is_503_within_5_s() {
    let nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let (auth_k, auth_v) = bearer();
    let url = format!("{}/v1/incidents", intake.base);
    let body = br#"{"id":"INC-FROZEN","declared_at":"2026-02-05T14:40:00Z"}"#.to_vec();
    // The connection stays up (the client thinks it is connected); the server answers nothing.
    nats.freeze(true);
    let started = Instant::now();
    let (status, answer) = post(&url, body.clone(), &[(auth_k, &auth_v)]).await;
    let took = started.elapsed();
    nats.freeze(false);
    assert_eq!(status, 503, "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

#[tokio::test]
async fn a_stream_deleted_under_the_intake_is_made_again() {
    let nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let (auth_k, auth_v) = bearer();
    let url = format!("{}/v1/incidents", intake.base);
    let (status, _) = post(
        &url,
        br#"{"id":"INC-A","declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(),
        &[(auth_k, &auth_v)],
    )
    .await;
    assert_eq!(status, 202);
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream("INCIDENTS")
        .await
        .unwrap();
    let (status, answer) = post(
        &url,
        br#"{"id":"INC-B","declared_at":"2026-02-05T14:40:00Z"}"#.to_vec(),
        &[(auth_k, &auth_v)],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let msgs = messages(&nats).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].2["id"], "INC-B");
}

#[tokio::test]
async fn a_pagerduty_delivery_that_failed_is_processed_when_retried() {
    let mut nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let url = format!("{}/v1/pagerduty", intake.base);
    let body = fixture("pagerduty/zulip_triggered_v3.json");
    let sig = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    let headers = [
        ("X-PagerDuty-Signature", sig.as_str()),
        ("X-Webhook-Id", "delivery-9"),
    ];
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = post(&url, body.clone(), &headers).await;
    assert_eq!(status, 503);
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = post(&url, body.clone(), &headers).await;
        if status == 202 {
            // Published now, not waved through as a duplicate delivery.
            assert_eq!(answer["incident_id"], "PFQZPSY", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "not accepted within 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(messages(&nats).await.len(), 1);
}

#[tokio::test]
async fn a_network_listener_without_credentials_is_refused_and_future_incidents_are_400() {
    let nats = NatsServer::start();
    // No credentials at all, on every address: refused at start-up, naming the way out.
    let out = Command::new(env!("CARGO_BIN_EXE_evidence-locker"))
        .arg("intake")
        .env("EVIDENCE_LOCKER__NATS__URL", nats.url())
        .env(
            "EVIDENCE_LOCKER__INTAKE__LISTEN",
            format!("0.0.0.0:{}", free_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no credentials") && err.contains("intake.allow_unauthenticated"),
        "{err}"
    );

    let intake = start_intake(&nats, &[]).await;
    let (auth_k, auth_v) = bearer();
    let url = format!("{}/v1/incidents", intake.base);
    let (status, body) = post(
        &url,
        br#"{"id":"INC-FUTURE","declared_at":"2026-02-05T14:40:00Z","resolved_at":"2099-01-01T00:00:00Z"}"#.to_vec(),
        &[(auth_k, &auth_v)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("resolved_at 2099"),
        "{body}"
    );
    assert!(messages(&nats).await.is_empty());
}

/// Alerts as Prometheus posts them to Alertmanager: firing (no end) or resolved (ended now).
fn prometheus_alert(starts_at: chrono::DateTime<chrono::Utc>, resolved: bool) -> Value {
    let mut alert = json!({
        "labels": {"alertname": "CheckoutErrors", "service": "checkout", "severity": "page"},
        "annotations": {"summary": "checkout error rate above 5%"},
        "startsAt": starts_at.to_rfc3339(),
        "generatorURL": "http://prometheus.example:9090/graph",
    });
    if resolved {
        alert["endsAt"] = json!(chrono::Utc::now().to_rfc3339());
    }
    json!([alert])
}

/// Waits until the stream holds `n` messages (or `within` passes), and returns them.
async fn wait_for_messages(
    nats: &NatsServer,
    n: usize,
    within: Duration,
) -> Vec<(String, String, Value)> {
    let deadline = Instant::now() + within;
    loop {
        let msgs = messages(nats).await;
        if msgs.len() >= n || Instant::now() > deadline {
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_alertmanager_declares_and_resolves_each_firing_episode_once() {
    use support::real::{Alertmanager, Route};
    let mut nats = NatsServer::start();
    let intake = start_intake(&nats, &[]).await;
    let am = tokio::task::block_in_place(|| {
        Alertmanager::start(
            &format!("{}/v1/alertmanager", intake.base),
            TOKEN,
            &Route {
                group_wait: Duration::from_millis(200),
                group_interval: Duration::from_secs(1),
                repeat_interval: Duration::from_secs(2),
            },
        )
    });
    let post_alerts = |alerts: Value| tokio::task::block_in_place(|| am.post(&alerts));

    // Episode 1 fires, and keeps firing past several repeat intervals.
    let first_start = chrono::Utc::now() - chrono::Duration::minutes(3);
    post_alerts(prometheus_alert(first_start, false));
    let msgs = wait_for_messages(&nats, 1, Duration::from_secs(15)).await;
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].0, "incidents.declared");
    let id = msgs[0].2["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(5)).await;
    post_alerts(prometheus_alert(first_start, false));
    let msgs = messages(&nats).await;
    assert_eq!(msgs.len(), 1, "repeat notifications add nothing: {msgs:#?}");

    // It resolves: one resolved incident, the same id.
    post_alerts(prometheus_alert(first_start, true));
    let msgs = wait_for_messages(&nats, 2, Duration::from_secs(15)).await;
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    assert_eq!(msgs[1].0, "incidents.resolved");
    assert_eq!(msgs[1].2["id"], id.as_str());
    assert_eq!(msgs[0].1.rsplit(':').next(), msgs[1].1.rsplit(':').next());

    // Episode 2 of the same group, while NATS is down: the intake answers 503 and Alertmanager
    // retries until NATS is back. It is a new occurrence of the same incident.
    nats.stop();
    let second_start = chrono::Utc::now();
    post_alerts(prometheus_alert(second_start, false));
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.restart();
    let msgs = wait_for_messages(&nats, 3, Duration::from_secs(60)).await;
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert_eq!(msgs[2].0, "incidents.declared");
    assert_eq!(msgs[2].2["id"], id.as_str());
    assert_ne!(msgs[2].1, msgs[0].1, "a new occurrence: {}", msgs[2].1);
    assert_eq!(
        msgs[2].2["declared_at"].as_str().map(|t| &t[..19]),
        Some(&second_start.to_rfc3339()[..19])
    );
    post_alerts(prometheus_alert(second_start, true));
    let msgs = wait_for_messages(&nats, 4, Duration::from_secs(15)).await;
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert_eq!(msgs[3].0, "incidents.resolved");
    assert_eq!(msgs[3].1.rsplit(':').next(), msgs[2].1.rsplit(':').next());
    // Nothing more arrives over further repeat intervals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(messages(&nats).await.len(), 4);
}

/// A stable report link on a local store: the intake serves the page itself, with a policy that
/// lets nothing else load; a link signed for another capture, an expired one and a path that
/// tries to leave the store are refused.
#[tokio::test]
async fn a_signed_report_link_serves_the_page_from_a_local_store() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let out = support::run_cli(&["demo", "--out", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let report = std::path::PathBuf::from(support::stdout(&out).lines().next().unwrap());
    let capture = report
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    const LINK_SECRET: &str = "local-link-secret-0123456789";
    let store = dir.path().to_str().unwrap().to_owned();
    let intake = start_intake(
        &nats,
        &[
            ("EVIDENCE_LOCKER__STORE__KIND", "fs"),
            ("EVIDENCE_LOCKER__STORE__PATH", store.as_str()),
            ("EVIDENCE_LOCKER__INTAKE__LINK_SECRET", LINK_SECRET),
        ],
    )
    .await;
    let mut settings = evidence_locker::config::Settings::load(None)
        .unwrap()
        .intake;
    settings.public_url = intake.base.clone();
    settings.link_secret = LINK_SECRET.into();
    let now = chrono::Utc::now();
    let link_with = |settings: &evidence_locker::config::IntakeSettings, capture: &str, at| {
        evidence_locker::intake::links::stable_link(settings, "INC-2026-0142", capture, at)
            .unwrap()
            .0
    };
    let link = |capture: &str, at| link_with(&settings, capture, at);
    let page = reqwest::get(link(&capture, now)).await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert_eq!(html, std::fs::read_to_string(&report).unwrap());
    // Signed for a capture that does not exist: no such bundle.
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    assert_eq!(status(link("20990101T000000Z", now)).await, 404);
    // Expired: signed 91 days ago, honoured for 90.
    let old = now - chrono::Duration::days(91);
    assert_eq!(status(link(&capture, old)).await, 401);
    // Another secret's signature.
    let mut other = settings.clone();
    other.link_secret = "someone-else-s-secret-0123".into();
    assert_eq!(status(link_with(&other, &capture, now)).await, 401);
    // Out of the store: refused before any file is read.
    let escape = format!(
        "{}/v1/bundles/INC-2026-0142/..%2F..%2Fetc/report",
        intake.base
    );
    let r = reqwest::Client::new()
        .get(&escape)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
