//! The real binary's `intake`, started on a free loopback port against a nats-server and
//! waited for until `/readyz` answers 200; killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::free_port;

pub struct Intake {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    child: Child,
}

impl Drop for Intake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the intake against `nats_url` with `env` over the defaults (the developer's own
/// `EVIDENCE_LOCKER__` variables are left out).
pub async fn start(nats_url: &str, env: &[(&str, &str)]) -> Intake {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evidence-locker"));
    cmd.arg("intake")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, _) in std::env::vars() {
        if k.starts_with("EVIDENCE_LOCKER__") {
            cmd.env_remove(k);
        }
    }
    cmd.env("EVIDENCE_LOCKER__NATS__URL", nats_url).env(
        "EVIDENCE_LOCKER__INTAKE__LISTEN",
        format!("127.0.0.1:{port}"),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let intake = Intake {
        base: format!("http://127.0.0.1:{port}"),
        child: cmd.spawn().expect("intake starts"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/readyz", intake.base)).await
            && r.status() == 200
        {
            return intake;
        }
        assert!(Instant::now() < deadline, "intake not ready within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
