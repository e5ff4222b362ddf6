//! A real nats-server with JetStream for the tests: the release `scripts/servers/install` builds
//! from the Go module proxy into the per-user cache, started on a free loopback port with its own
//! storage, stoppable and restartable on the same port; or several of them routed into one
//! JetStream cluster.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    config: Option<PathBuf>,
    /// A cluster member's name, cluster port and routes to the others.
    cluster: Vec<String>,
}

fn binary() -> PathBuf {
    super::real::installed("nats", "NATS_SERVER_BIN")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    pub fn start() -> Self {
        Self::launch(tempfile::tempdir().unwrap(), None, Vec::new())
    }

    /// Starts a server on a free port with its storage in `dir`, a config file, and cluster
    /// arguments.
    fn launch(dir: tempfile::TempDir, config: Option<PathBuf>, cluster: Vec<String>) -> Self {
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
            config,
            cluster,
        };
        s.restart();
        s
    }

    /// A server that accepts payloads up to `max_payload` bytes (the default is 1 MiB).
    pub fn start_with_max_payload(max_payload: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "max_payload: {max_payload}\nmax_pending: {}\n",
                max_payload * 4
            ),
        )
        .unwrap();
        Self::launch(dir, Some(config), Vec::new())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port, with its storage.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(binary());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .args(&self.cluster)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            // A server that exited (its port taken meanwhile, say) must not let the test talk to
            // someone else's.
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "nats-server exited at start ({status}) on port {}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP) or thaws it: connections stay open, nothing is answered.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .arg(signal)
                .arg(c.id().to_string())
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A JetStream cluster of nats-servers on loopback, each routed to every other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// One server, seen as a cluster of one.
    pub fn one(server: NatsServer) -> Self {
        Self {
            nodes: vec![server],
        }
    }

    /// `n` nodes named n1…, cluster `evidence`, started and listening (JetStream may not have
    /// elected its leader yet: see [`NatsCluster::wait_for_jetstream`]).
    pub fn start(n: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (0..n)
            .map(|i| {
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                NatsServer::launch(
                    tempfile::tempdir().unwrap(),
                    None,
                    vec![
                        "--server_name".into(),
                        format!("n{}", i + 1),
                        "--cluster_name".into(),
                        "evidence".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{}", cluster_ports[i]),
                        "--routes".into(),
                        routes.join(","),
                    ],
                )
            })
            .collect();
        Self { nodes }
    }

    /// Every node's URL, comma-separated (as `nats.url` takes a cluster).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers through `js` (a cluster elects its meta leader first).
    pub async fn wait_for_jetstream(&self, js: &async_nats::jetstream::Context) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.query_account().await.is_err() {
            assert!(Instant::now() < deadline, "JetStream not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.freeze(false);
        self.stop();
    }
}
