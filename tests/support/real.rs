//! The real servers users run (Jaeger v2, Zipkin 3, Alertmanager), as `scripts/servers/install`
//! builds or fetches them into the per-user cache. Each starts on free ports bound to 127.0.0.1,
//! is polled until it answers, and is killed when its handle drops, whatever the test did.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::nats::free_port;

/// The path of one installed server: from `var` when `scripts/test` exported it, otherwise from
/// `scripts/servers/install <name>` (cached after the first time; one install at a time).
pub fn installed(name: &str, var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    static FOUND: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = found.iter().find(|(v, _)| v == var) {
        return p.clone();
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/servers/install");
    let out = Command::new(&script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/servers/install runs");
    assert!(
        out.status.success(),
        "scripts/servers/install {name} failed"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("scripts/servers/install {name} printed no {var}"));
    found.push((var.to_owned(), PathBuf::from(path)));
    PathBuf::from(path)
}

/// A running server process, killed on drop; its output goes to `log` in its directory.
pub struct Process {
    name: &'static str,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Process {
    fn spawn(name: &'static str, mut cmd: Command, dir: tempfile::TempDir) -> Self {
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Self {
            name,
            child: Some(child),
            dir,
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Polls `ready` until it holds; fails with the server's output when the server exits or
    /// `within` passes.
    fn wait_until(&mut self, within: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if ready() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("{} exited at start ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that every TCP port the process listens on is bound to 127.0.0.1.
    fn assert_loopback_only(&self) {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return;
        };
        let Ok(out) = Command::new("ss").args(["-Hltnp"]).output() else {
            return; // no ss here: nothing to check with
        };
        let needle = format!("pid={pid},");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&needle) {
                let local = line.split_whitespace().nth(3).unwrap_or_default();
                assert!(
                    local.starts_with("127.0.0.1:") || local.starts_with("[::ffff:127.0.0.1]:"),
                    "{} listens on {local}, not only on loopback",
                    self.name
                );
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn answers_200(url: &str) -> bool {
    http()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// Jaeger's tail sampling, as the seed's deployment configures it.
pub struct TailSampling {
    pub decision_wait: Duration,
    pub latency_threshold_ms: u64,
    pub sampling_percentage: f64,
}

/// Jaeger v2 (`cmd/jaeger`) with memory storage.
pub struct Jaeger {
    pub query_port: u16,
    pub otlp_port: u16,
    pub process: Process,
}

impl Jaeger {
    /// Jaeger with a memory store of `max_traces` and, optionally, tail sampling in front of it.
    pub fn start(max_traces: usize, sampling: Option<TailSampling>) -> Self {
        let bin = installed("jaeger", "JAEGER_BIN");
        let dir = tempfile::tempdir().unwrap();
        let (query_port, grpc_port, otlp_port, metrics_port) =
            (free_port(), free_port(), free_port(), free_port());
        let (processors, processor_config) = match &sampling {
            None => ("[]".to_owned(), String::new()),
            Some(s) => (
                "[tail_sampling]".to_owned(),
                format!(
                    "processors:
  tail_sampling:
    decision_wait: {}ms
    num_traces: 100000
    policies:
      - name: errors
        type: status_code
        status_code: {{status_codes: [ERROR]}}
      - name: slow
        type: latency
        latency: {{threshold_ms: {}}}
      - name: some-normal
        type: probabilistic
        probabilistic: {{sampling_percentage: {}}}
",
                    s.decision_wait.as_millis(),
                    s.latency_threshold_ms,
                    s.sampling_percentage
                ),
            ),
        };
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: {processors}
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {metrics_port}
    logs:
      level: warn
extensions:
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{grpc_port}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_port}
{processor_config}exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
        );
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&path);
        let mut process = Process::spawn("jaeger", cmd, dir);
        let services = format!("http://127.0.0.1:{query_port}/api/v3/services");
        let otlp = format!("127.0.0.1:{otlp_port}");
        process.wait_until(Duration::from_secs(60), || {
            answers_200(&services) && std::net::TcpStream::connect(&otlp).is_ok()
        });
        process.assert_loopback_only();
        Self {
            query_port,
            otlp_port,
            process,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query_port)
    }

    /// Sends OTLP/HTTP JSON `resourceSpans` to `/v1/traces`, in requests of `batch` each.
    pub fn send(&self, resource_spans: &[Value], batch: usize) {
        let client = http();
        for chunk in resource_spans.chunks(batch.max(1)) {
            let body = serde_json::json!({ "resourceSpans": chunk });
            let r = client
                .post(format!("http://127.0.0.1:{}/v1/traces", self.otlp_port))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .expect("Jaeger's OTLP receiver answers");
            assert!(
                r.status().is_success(),
                "OTLP ingest: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
    }

    /// Ids of the traces of `service` stored with a span starting in `[start_us, end_us)`, asked
    /// independently of the code under test (v1, one query, `limit` above everything stored).
    pub fn stored_ids(&self, service: &str, start_us: i64, end_us: i64) -> Vec<String> {
        let r = http()
            .get(format!("{}/api/traces", self.url()))
            .query(&[
                ("service", service.to_owned()),
                ("start", start_us.to_string()),
                ("end", end_us.to_string()),
                ("limit", "50000".to_owned()),
                ("raw", "true".to_owned()),
            ])
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    // v1 writes 64-bit-high-zero ids as 16 hex digits.
                    .filter_map(|t| t["traceID"].as_str().map(|id| format!("{id:0>32}")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One payment call of 20 ms as an OTLP JSON `resourceSpans` entry (a one-span trace), with
/// `status` as given (`None`: Unset).
pub fn otlp_payment_call(
    trace_id: &str,
    span_id: &str,
    start_ns: i64,
    status: Option<Value>,
) -> Value {
    let mut span = serde_json::json!({
        "traceId": trace_id, "spanId": span_id, "name": "POST /charge", "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": (start_ns + 20_000_000).to_string(),
    });
    if let Some(s) = status {
        span["status"] = s;
    }
    serde_json::json!({
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payment"}}]},
        "scopeSpans": [{"spans": [span]}],
    })
}

/// Zipkin server 3 with in-memory storage.
pub struct Zipkin {
    pub port: u16,
    pub process: Process,
}

impl Zipkin {
    pub fn start(max_spans: usize) -> Self {
        let jar = installed("zipkin", "ZIPKIN_JAR");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(java());
        cmd.args([
            "-Xms64m",
            "-Xmx768m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-jar",
        ])
        .arg(jar)
        .arg(format!("--armeria.ports[0].port={port}"))
        .arg("--armeria.ports[0].address=127.0.0.1")
        .arg("--armeria.ports[0].protocols[0]=http")
        .env("STORAGE_TYPE", "mem")
        .env("MEM_MAX_SPANS", max_spans.to_string())
        .env("QUERY_PORT", port.to_string())
        .env("COLLECTOR_ACTIVEMQ_ENABLED", "false")
        .env("COLLECTOR_KAFKA_ENABLED", "false")
        .env("COLLECTOR_RABBITMQ_ENABLED", "false")
        .env("SELF_TRACING_ENABLED", "false");
        let mut process = Process::spawn("zipkin", cmd, dir);
        let health = format!("http://127.0.0.1:{port}/health");
        process.wait_until(Duration::from_secs(120), || answers_200(&health));
        process.assert_loopback_only();
        Self { port, process }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Posts v2 spans to `/api/v2/spans`, in requests of `batch` traces each.
    pub fn send(&self, traces: &[Vec<Value>], batch: usize) {
        let client = http();
        for chunk in traces.chunks(batch.max(1)) {
            let spans: Vec<&Value> = chunk.iter().flatten().collect();
            let r = client
                .post(format!("{}/api/v2/spans", self.url()))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&spans).unwrap())
                .send()
                .expect("Zipkin's collector answers");
            assert!(r.status().is_success(), "Zipkin ingest: {}", r.status());
        }
    }
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Alertmanager with one route to a webhook receiver.
pub struct Alertmanager {
    pub port: u16,
    pub process: Process,
}

/// The route's timing: how long Alertmanager waits before the first notification of a group,
/// between notifications of a changed group, and before repeating an unchanged one.
pub struct Route {
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
}

impl Alertmanager {
    /// Alertmanager notifying `webhook_url` with `bearer_token`.
    pub fn start(webhook_url: &str, bearer_token: &str, route: &Route) -> Self {
        let bin = installed("alertmanager", "ALERTMANAGER_BIN");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let config = format!(
            "route:
  receiver: evidence-locker
  group_by: [alertname, service]
  group_wait: {}
  group_interval: {}
  repeat_interval: {}
receivers:
  - name: evidence-locker
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
        http_config:
          authorization:
            credentials: {bearer_token}
",
            ms(route.group_wait),
            ms(route.group_interval),
            ms(route.repeat_interval)
        );
        let path = dir.path().join("alertmanager.yml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No cluster: otherwise it listens for gossip on all interfaces.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        let mut process = Process::spawn("alertmanager", cmd, dir);
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        process.wait_until(Duration::from_secs(30), || answers_200(&ready));
        process.assert_loopback_only();
        Self { port, process }
    }

    /// Posts alerts to `/api/v2/alerts`, as Prometheus does.
    pub fn post(&self, alerts: &Value) {
        let r = http()
            .post(format!("http://127.0.0.1:{}/api/v2/alerts", self.port))
            .json(alerts)
            .send()
            .expect("Alertmanager answers");
        assert!(
            r.status().is_success(),
            "POST /api/v2/alerts: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        );
    }
}
