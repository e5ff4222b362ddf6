//! Real S3-compatible servers for the tests, installed by `scripts/test` into `.venv`: moto's
//! server (Object Lock, versioning, conditional writes; no signature or checksum checks; in
//! memory) and s3s-fs (strict SigV4 signatures and checksums; files on disk, so it can be
//! stopped and started again with its data). Each is started on a free loopback port.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::free_port;

pub const ACCESS_KEY: &str = "AKIAEVIDENCETEST";
pub const SECRET_KEY: &str = "evidence-locker-test-secret-key-0123456789";
pub const REGION: &str = "us-east-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Moto,
    S3sFs,
}

pub struct S3Server {
    pub kind: Kind,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn venv_bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "no {name}: run scripts/test once (it installs moto and s3s-fs into .venv)"
    );
    p
}

impl S3Server {
    pub fn start(kind: Kind) -> Self {
        let mut s = Self {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port; s3s-fs keeps its objects across restarts.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Moto => {
                let mut c = Command::new(venv_bin("moto_server"));
                c.args(["-H", "127.0.0.1", "-p", &port]);
                c
            }
            Kind::S3sFs => {
                let mut c = Command::new(venv_bin("s3s-fs"));
                c.args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--access-key",
                    ACCESS_KEY,
                    "--secret-key",
                    SECRET_KEY,
                ])
                .arg(self.dir.path());
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the S3 server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("{:?} exited at start ({status})", self.kind);
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen within 30 s",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An SDK client for the test's own checks.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .credentials_provider(creds)
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates a bucket, with Object Lock when asked (moto only).
    pub async fn create_bucket(&self, name: &str, object_lock: bool) {
        let client = self.client().await;
        let mut req = client.create_bucket().bucket(name);
        if object_lock {
            req = req.object_lock_enabled_for_bucket(true);
        }
        req.send().await.expect("bucket created");
    }

    /// The environment a worker or collect process needs to reach this server.
    pub fn env(&self, bucket: &str) -> Vec<(&'static str, String)> {
        vec![
            ("EVIDENCE_LOCKER__STORE__KIND", "s3".into()),
            ("EVIDENCE_LOCKER__STORE__BUCKET", bucket.into()),
            ("EVIDENCE_LOCKER__STORE__ENDPOINT", self.endpoint()),
            ("EVIDENCE_LOCKER__STORE__PATH_STYLE", "true".into()),
            ("EVIDENCE_LOCKER__STORE__REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Every key in the bucket under `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let client = self.client().await;
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    /// The keys under `prefix` that s3s-fs holds on disk, read from its directory (answers while
    /// the server is stopped, and within a millisecond of a write).
    pub fn files_on_disk(&self, bucket: &str, prefix: &str) -> Vec<String> {
        assert_eq!(self.kind, Kind::S3sFs, "moto keeps its objects in memory");
        let root = self.dir.path().join(bucket);
        super::tree(&root.join(prefix))
            .into_iter()
            .filter(|p| p.is_file())
            .filter_map(|p| Some(p.strip_prefix(&root).ok()?.to_string_lossy().into_owned()))
            .collect()
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let client = self.client().await;
        let out = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
        out.body.collect().await.unwrap().to_vec()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
