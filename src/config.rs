//! Typed, layered configuration: `config/default.toml` (built in) ← `--config FILE` ←
//! `EVIDENCE_LOCKER__SECTION__KEY` environment variables. A bad key or value fails at start-up
//! with the key's name, never later.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::duration::serde_config as dur;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Every problem found, each naming its key.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<String>),
}

impl ConfigError {
    /// The problems, one per bad key.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::MissingFile(_) => vec![self.to_string()],
            Self::Invalid(m) => vec![m.clone()],
            Self::Problems(p) => p.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub nats: NatsSettings,
    pub backends: BTreeMap<String, BackendSettings>,
    pub capture: CaptureSettings,
    pub analysis: AnalysisSettings,
    pub store: StoreSettings,
    pub intake: IntakeSettings,
    pub notify: NotifySettings,
    pub metrics: MetricsSettings,
    pub worker: WorkerSettings,
    pub redaction: crate::redact::RedactionSettings,
    pub signing: crate::sign::SigningSettings,
    pub report: ReportSettings,
}

/// How reports link to the team's trace UI.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// A link template with `{trace_id}` (and optionally `{span_id}`); empty: the backend's
    /// own UI where it has one, else ids shown whole.
    pub trace_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub consumer: String,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials: String,
    #[serde(deserialize_with = "any_scalar")]
    pub token: String,
    /// A file holding the token.
    pub token_file: String,
    /// An nkey seed.
    #[serde(deserialize_with = "any_scalar")]
    pub nkey: String,
    /// A file holding the nkey seed.
    pub nkey_file: String,
    /// How long JetStream remembers message ids to drop duplicates.
    #[serde(with = "dur")]
    pub duplicate_window: Duration,
    /// The stream the worker or intake creates keeps messages at most this long...
    #[serde(with = "dur")]
    pub stream_max_age: Duration,
    /// ...and at most this many bytes (the oldest go first).
    pub stream_max_bytes: String,
    /// Replicas of the stream and the key-value buckets the worker or intake creates (3 on a
    /// three-node cluster; at most 5, JetStream's limit).
    pub replicas: usize,
}

impl NatsSettings {
    /// The servers of `url`: one URL, or a cluster's as a comma-separated list (as the `nats`
    /// tool takes them). async-nats reads a single string as one address, so the list is split
    /// here; the configuration check refuses an empty or unreadable part.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }
}

/// Which API a backend speaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Jaeger,
    Tempo,
    Zipkin,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Jaeger => "jaeger",
            Self::Tempo => "tempo",
            Self::Zipkin => "zipkin",
        }
    }
}

/// One tracing backend. Keys left out take the defaults of `[backends.default]` in
/// `config/default.toml`, so a second backend needs only `kind` and `url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSettings {
    pub kind: BackendKind,
    pub url: String,
    #[serde(with = "dur")]
    pub retention: Duration,
    #[serde(with = "dur")]
    pub timeout: Duration,
    pub concurrency: usize,
    pub query_limit: usize,
    #[serde(with = "dur")]
    pub min_slice: Duration,
    pub retries: usize,
    /// The share of normal traces the backend keeps (1.0 without sampling, 0.1 behind 10% tail
    /// sampling that keeps every failing and slow trace).
    pub kept_normal_share: f64,
    #[serde(deserialize_with = "any_scalar")]
    pub username: String,
    #[serde(deserialize_with = "any_scalar")]
    pub password: String,
    /// A file holding the password.
    pub password_file: String,
    #[serde(deserialize_with = "any_scalar")]
    pub bearer_token: String,
    /// A file holding the bearer token.
    pub bearer_token_file: String,
    /// Tempo's `X-Scope-OrgID` (multi-tenant deployments).
    pub tenant: String,
}

impl std::fmt::Debug for BackendSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("BackendSettings")
            .field("kind", &self.kind)
            .field("url", &crate::capture::redact_url(&self.url))
            .field("retention", &self.retention)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("query_limit", &self.query_limit)
            .field("min_slice", &self.min_slice)
            .field("retries", &self.retries)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field(
                "bearer_token",
                &if self.bearer_token.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("password_file", &self.password_file)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            kind: BackendKind::Jaeger,
            url: String::new(),
            retention: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            query_limit: 500,
            min_slice: Duration::from_secs(1),
            retries: 4,
            kept_normal_share: 1.0,
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            bearer_token: String::new(),
            bearer_token_file: String::new(),
            tenant: String::new(),
        }
    }
}

impl BackendSettings {
    /// The settings of `[backends.default]` with another kind and URL (for `collect --jaeger`).
    /// Its credentials and tenant go along only to the same host: a URL given on the command
    /// line must not receive another server's secrets.
    pub fn with_url(&self, kind: BackendKind, url: &str) -> Self {
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()
                .map(|u| (u.host_str().map(str::to_owned), u.port_or_known_default()))
        };
        let same_host = host(url).is_some() && host(url) == host(&self.url);
        let mut s = Self {
            kind,
            url: url.to_owned(),
            ..self.clone()
        };
        if !same_host {
            s.username.clear();
            s.password.clear();
            s.bearer_token.clear();
            s.tenant.clear();
        }
        s
    }

    /// A backend whose `url` is empty is switched off.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// A list of secrets, or one secret as a plain string; never echoed in an error.
fn secret_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected a list of texts (value not shown: it holds secrets)",
        )),
    }
}

/// A string that may have been written as a number or boolean (environment variables are read
/// as typed values: a numeric password must not fail, and its value must never reach an error
/// message).
fn any_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i128),
        Float(f64),
        Bool(bool),
    }
    match Scalar::deserialize(d) {
        Ok(Scalar::Text(s)) => Ok(s),
        Ok(Scalar::Int(i)) => Ok(i.to_string()),
        Ok(Scalar::Float(f)) => Ok(f.to_string()),
        Ok(Scalar::Bool(b)) => Ok(b.to_string()),
        Err(_) => Err(serde::de::Error::custom(
            "expected text (value not shown: it may be a secret)",
        )),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    #[serde(with = "dur")]
    pub lookback: Duration,
    #[serde(with = "dur")]
    pub slow_threshold: Duration,
    #[serde(with = "dur")]
    pub baseline: Duration,
    pub baseline_traces: usize,
    /// Traces of all traffic asked per scope and minute of the window (the sample).
    pub sample_per_minute: usize,
    #[serde(with = "dur")]
    pub max_window: Duration,
    pub concurrency: usize,
    /// How far an incident's times may lie ahead of our clock.
    #[serde(with = "dur")]
    pub clock_skew: Duration,
    /// Services captured per incident at most (each one costs several searches).
    pub max_services: usize,
    /// Traces kept per capture at most.
    pub max_traces: usize,
    /// Bytes read from backends per capture at most.
    pub max_bytes: String,
    /// A capture that starts with less time than this before its window's oldest part leaves a
    /// backend's retention is warned about (log and metric).
    #[serde(with = "dur")]
    pub retention_margin_warn: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSettings {
    pub error_rate_threshold: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: String,
    pub path: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub endpoint: String,
    pub path_style: bool,
    pub object_lock_mode: String,
    pub object_lock_days: u32,
    #[serde(with = "dur")]
    pub link_ttl: Duration,
    pub sse: String,
    pub sse_kms_key_id: String,
    pub multipart_part_size: String,
}

/// The worker: how messages are retried, where bundles wait until stored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub spool: String,
    pub spool_max: String,
    #[serde(with = "dur")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    #[serde(with = "dur")]
    pub retry_delay: Duration,
    #[serde(with = "dur")]
    pub retry_delay_max: Duration,
    #[serde(with = "dur")]
    pub resolved_tail: Duration,
    #[serde(with = "dur")]
    pub shutdown_grace: Duration,
    pub max_message: String,
    pub upload_attempts: usize,
    #[serde(with = "dur")]
    pub claim_ttl: Duration,
    /// How long a stored capture's announcement is remembered, so that a repeat of the same
    /// occurrence is not announced (or paged) again.
    #[serde(with = "dur")]
    pub announced_ttl: Duration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeSettings {
    pub listen: String,
    #[serde(deserialize_with = "any_scalar")]
    pub bearer_token: String,
    pub bearer_token_file: String,
    #[serde(deserialize_with = "any_scalar")]
    pub basic_username: String,
    #[serde(deserialize_with = "any_scalar")]
    pub basic_password: String,
    pub basic_password_file: String,
    #[serde(deserialize_with = "secret_list")]
    pub pagerduty_secrets: Vec<String>,
    /// One secret per line, added to `pagerduty_secrets`.
    pub pagerduty_secrets_file: String,
    /// The intake's address as people reach it (`https://evidence.example.com`); with
    /// `link_secret`, notifications carry a stable report link through it.
    pub public_url: String,
    /// The HMAC key of stable report links.
    #[serde(deserialize_with = "any_scalar")]
    pub link_secret: String,
    pub link_secret_file: String,
    /// How long a stable report link is honoured.
    #[serde(with = "dur")]
    pub link_ttl: Duration,
    pub body_limit: String,
    #[serde(with = "dur")]
    pub publish_timeout: Duration,
    pub alertmanager_service_labels: Vec<String>,
    pub alertmanager_severity_label: String,
    pub alertmanager_matchers: Vec<String>,
    pub pagerduty_services: BTreeMap<String, Vec<String>>,
    /// Listen on a non-loopback address without credentials (refused otherwise).
    pub allow_unauthenticated: bool,
}

impl IntakeSettings {
    /// Whether webhooks must authenticate: a bearer token or basic credentials are set.
    pub fn has_credentials(&self) -> bool {
        !self.bearer_token.is_empty() || !self.basic_username.is_empty()
    }
}

impl std::fmt::Debug for IntakeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeSettings")
            .field("listen", &self.listen)
            .field(
                "bearer_token",
                &if self.bearer_token.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("basic_username", &self.basic_username)
            .field("pagerduty_secrets", &self.pagerduty_secrets.len())
            .field("body_limit", &self.body_limit)
            .field("publish_timeout", &self.publish_timeout)
            .field(
                "alertmanager_service_labels",
                &self.alertmanager_service_labels,
            )
            .field(
                "alertmanager_severity_label",
                &self.alertmanager_severity_label,
            )
            .field("alertmanager_matchers", &self.alertmanager_matchers)
            .field("pagerduty_services", &self.pagerduty_services)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("public_url", &self.public_url)
            .field(
                "link_secret",
                &if self.link_secret.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("link_ttl", &self.link_ttl)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub webhook_url: String,
    /// A file holding the webhook URL (its path is the secret).
    pub webhook_url_file: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: String,
}

impl Settings {
    /// Loads the defaults, then `file` when given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, Env::prefixed("EVIDENCE_LOCKER__").split("__"))
    }

    fn figment(file: Option<&Path>, env: Env) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(env))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let figment = Self::figment(file, env)?;
        let mut settings: Self = figment
            .extract()
            .map_err(|e| ConfigError::Problems(section_errors(&figment, e)))?;
        let mut errs = Vec::new();
        settings.read_secret_files(&mut errs);
        settings.check(&mut errs);
        if errs.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Problems(errs))
        }
    }

    /// The configuration as the program sees it (defaults, the file, the environment), as TOML
    /// with every secret masked: `<set>` where one is given inline, the `*_file` paths as they
    /// are.
    pub fn effective(file: Option<&Path>) -> Result<String, ConfigError> {
        let env = Env::prefixed("EVIDENCE_LOCKER__").split("__");
        let value: toml::Value = Self::figment(file, env)?
            .extract()
            .map_err(|e| ConfigError::Problems(describe_each(e)))?;
        let mut value = value;
        mask(&mut value, "");
        toml::to_string_pretty(&value).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Fills each secret from its `*_file` key: the file's text without its final newline.
    /// Both set is a mistake (which one would win?), and so is a file that cannot be read.
    fn read_secret_files(&mut self, errs: &mut Vec<String>) {
        let mut pairs: Vec<(String, &mut String, &mut String)> = vec![
            (
                "nats.token".into(),
                &mut self.nats.token,
                &mut self.nats.token_file,
            ),
            (
                "nats.nkey".into(),
                &mut self.nats.nkey,
                &mut self.nats.nkey_file,
            ),
            (
                "intake.bearer_token".into(),
                &mut self.intake.bearer_token,
                &mut self.intake.bearer_token_file,
            ),
            (
                "intake.basic_password".into(),
                &mut self.intake.basic_password,
                &mut self.intake.basic_password_file,
            ),
            (
                "intake.link_secret".into(),
                &mut self.intake.link_secret,
                &mut self.intake.link_secret_file,
            ),
            (
                "notify.webhook_url".into(),
                &mut self.notify.webhook_url,
                &mut self.notify.webhook_url_file,
            ),
        ];
        for (name, b) in self.backends.iter_mut() {
            pairs.push((
                format!("backends.{name}.password"),
                &mut b.password,
                &mut b.password_file,
            ));
            pairs.push((
                format!("backends.{name}.bearer_token"),
                &mut b.bearer_token,
                &mut b.bearer_token_file,
            ));
        }
        for (key, value, file) in pairs {
            if file.is_empty() {
                continue;
            }
            if !value.is_empty() {
                errs.push(format!(
                    "{key} and {key}_file are both set: give the secret one way"
                ));
                continue;
            }
            match std::fs::read_to_string(&*file) {
                Ok(text) => *value = text.trim_end_matches(['\r', '\n']).to_owned(),
                Err(e) => errs.push(format!("{key}_file: cannot read {file}: {e}")),
            }
        }
        let file = &self.intake.pagerduty_secrets_file;
        if !file.is_empty() {
            match std::fs::read_to_string(file) {
                // One secret per line, added to those given inline (a rotation has two).
                Ok(text) => self.intake.pagerduty_secrets.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                ),
                Err(e) => errs.push(format!(
                    "intake.pagerduty_secrets_file: cannot read {file}: {e}"
                )),
            }
        }
        // (signing.key_file is read, and named when it cannot be, by the signer's check.)
        if !self.signing.key.trim().is_empty() && !self.signing.key_file.trim().is_empty() {
            errs.push("signing.key and signing.key_file are both set: give the key one way".into());
        }
        let creds = &self.nats.credentials;
        if !creds.is_empty()
            && let Err(e) = std::fs::File::open(creds)
        {
            errs.push(format!("nats.credentials: cannot read {creds}: {e}"));
        }
    }

    /// Every problem of the loaded values, each naming its key.
    fn check(&self, errs: &mut Vec<String>) {
        for (name, b) in self.backends.iter().filter(|(_, b)| b.enabled()) {
            match url::Url::parse(&b.url) {
                Err(_) => {
                    errs.push(format!(
                        "backends.{name}.url {:?} is not a URL",
                        crate::capture::redact_url(&b.url)
                    ));
                }
                // Searches build their own query string: one in the base URL would be dropped
                // without a word, and may hold a credential that would then be logged.
                Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                    errs.push(format!(
                        "backends.{name}.url {:?} has a query string or fragment, which searches cannot keep: give credentials as backends.{name}.bearer_token or username and password, and the tenant as backends.{name}.tenant",
                        crate::capture::redact_url(&b.url)
                    ));
                }
                Ok(_) => {}
            }
            if b.concurrency == 0 || b.query_limit == 0 {
                errs.push(format!(
                    "backends.{name}: concurrency and query_limit must be at least 1"
                ));
            }
            if !(b.kept_normal_share > 0.0 && b.kept_normal_share <= 1.0) {
                errs.push(format!(
                    "backends.{name}.kept_normal_share must be above 0 and at most 1, not {}",
                    b.kept_normal_share
                ));
            }
        }
        if let Err(e) = crate::redact::Redactor::new(&self.redaction) {
            errs.push(e);
        }
        if let Err(e) = crate::sign::ManifestSigner::from_settings(&self.signing) {
            errs.push(e);
        }
        let t = &self.report.trace_url;
        if !t.is_empty()
            && (!t.contains("{trace_id}")
                || url::Url::parse(&t.replace("{trace_id}", "0").replace("{span_id}", "0"))
                    .is_err())
        {
            errs.push(format!(
                "report.trace_url {t:?} must be a URL holding {{trace_id}} (for example https://jaeger.example/trace/{{trace_id}}?uiFind={{span_id}})"
            ));
        }
        if self.capture.concurrency == 0 {
            errs.push("capture.concurrency must be at least 1".into());
        }
        self.check_bounds(errs);
        if !(0.0..=1.0).contains(&self.analysis.error_rate_threshold) {
            errs.push("analysis.error_rate_threshold must be between 0 and 1".into());
        }
        if parse_size(&self.intake.body_limit).is_none() {
            errs.push(format!(
                "intake.body_limit {:?} is not a size (examples: 256KiB, 1MiB, 65536)",
                self.intake.body_limit
            ));
        }
        if self
            .intake
            .pagerduty_secrets
            .iter()
            .any(|s| s.trim().is_empty())
        {
            errs.push("intake.pagerduty_secrets holds an empty secret, which would accept anyone's signature".into());
        }
        if self.intake.publish_timeout.is_zero()
            || self.intake.publish_timeout >= Duration::from_secs(5)
        {
            errs.push("intake.publish_timeout must be more than 0 and less than 5s (every answer is due within 5 s)".into());
        }
        for m in &self.intake.alertmanager_matchers {
            if let Err(e) = crate::intake::alertmanager::Matcher::parse(m) {
                errs.push(format!("intake.alertmanager_matchers: {e}"));
            }
        }
        if !matches!(self.store.kind.as_str(), "fs" | "s3") {
            errs.push(format!(
                "store.kind {:?} must be \"fs\" or \"s3\"",
                self.store.kind
            ));
        }
        self.check_store(errs);
        self.check_worker(errs);
        self.check_addresses(errs);
    }

    /// Bounds every value that date arithmetic or a multiplication could overflow with, so that a
    /// huge value fails here, naming its key, rather than panicking mid-capture.
    fn check_bounds(&self, errs: &mut Vec<String>) {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86400);
        let c = &self.capture;
        let w = &self.worker;
        let mut durations = vec![
            ("capture.lookback".to_owned(), c.lookback),
            ("capture.slow_threshold".to_owned(), c.slow_threshold),
            ("capture.baseline".to_owned(), c.baseline),
            ("capture.max_window".to_owned(), c.max_window),
            ("capture.clock_skew".to_owned(), c.clock_skew),
            (
                "nats.duplicate_window".to_owned(),
                self.nats.duplicate_window,
            ),
            ("nats.stream_max_age".to_owned(), self.nats.stream_max_age),
            ("worker.ack_wait".to_owned(), w.ack_wait),
            ("worker.retry_delay".to_owned(), w.retry_delay),
            ("worker.retry_delay_max".to_owned(), w.retry_delay_max),
            ("worker.resolved_tail".to_owned(), w.resolved_tail),
            ("worker.shutdown_grace".to_owned(), w.shutdown_grace),
            ("worker.claim_ttl".to_owned(), w.claim_ttl),
            ("worker.announced_ttl".to_owned(), w.announced_ttl),
            (
                "intake.publish_timeout".to_owned(),
                self.intake.publish_timeout,
            ),
        ];
        for (name, b) in &self.backends {
            durations.push((format!("backends.{name}.retention"), b.retention));
            durations.push((format!("backends.{name}.timeout"), b.timeout));
            durations.push((format!("backends.{name}.min_slice"), b.min_slice));
        }
        for (key, d) in durations {
            if d > CENTURY {
                errs.push(format!(
                    "{key} is {}, more than 100 years",
                    humantime::format_duration(d)
                ));
            }
        }
        if self.store.object_lock_days > 36_500 {
            errs.push("store.object_lock_days must be at most 36500 (100 years)".into());
        }
        if c.max_window.is_zero() {
            errs.push("capture.max_window must be more than 0".into());
        }
        if c.sample_per_minute > 10_000 {
            errs.push("capture.sample_per_minute must be at most 10000".into());
        }
        if c.max_services == 0 || c.max_traces == 0 {
            errs.push("capture.max_services and capture.max_traces must be at least 1".into());
        }
        if parse_size(&c.max_bytes).is_none_or(|n| n == 0) {
            errs.push(format!(
                "capture.max_bytes {:?} is not a size (examples: 2GiB, 500MiB)",
                c.max_bytes
            ));
        }
        if parse_size(&self.nats.stream_max_bytes).is_none_or(|n| n == 0) {
            errs.push(format!(
                "nats.stream_max_bytes {:?} is not a size (examples: 1GiB, 500MiB)",
                self.nats.stream_max_bytes
            ));
        }
        if !(1..=5).contains(&self.nats.replicas) {
            errs.push(format!(
                "nats.replicas must be between 1 and 5 (JetStream keeps at most 5 copies), not {}",
                self.nats.replicas
            ));
        }
        if self.nats.stream_max_age.is_zero() {
            errs.push("nats.stream_max_age must be more than 0".into());
        }
        if w.max_deliver > 1000 {
            errs.push("worker.max_deliver must be at most 1000".into());
        }
        for (name, b) in &self.backends {
            if b.retries > 100 {
                errs.push(format!("backends.{name}.retries must be at most 100"));
            }
        }
    }

    fn check_store(&self, errs: &mut Vec<String>) {
        let s = &self.store;
        if !matches!(
            s.object_lock_mode.as_str(),
            "" | "GOVERNANCE" | "COMPLIANCE"
        ) {
            errs.push(format!(
                "store.object_lock_mode {:?} must be \"\", \"GOVERNANCE\" or \"COMPLIANCE\"",
                s.object_lock_mode
            ));
        }
        if !s.object_lock_mode.is_empty() && s.object_lock_days == 0 {
            errs.push(
                "store.object_lock_days must be at least 1 when store.object_lock_mode is set"
                    .into(),
            );
        }
        if !matches!(s.sse.as_str(), "" | "AES256" | "aws:kms") {
            errs.push(format!(
                "store.sse {:?} must be \"\", \"AES256\" or \"aws:kms\"",
                s.sse
            ));
        }
        if !s.sse_kms_key_id.is_empty() && s.sse != "aws:kms" {
            errs.push("store.sse_kms_key_id is set but store.sse is not \"aws:kms\"".into());
        }
        match parse_size(&s.multipart_part_size) {
            Some(n) if n >= 5 << 20 => {}
            _ => {
                errs.push(format!(
                    "store.multipart_part_size {:?} must be a size of at least 5MiB (S3's smallest part)",
                    s.multipart_part_size
                ));
            }
        }
        if s.link_ttl.is_zero() || s.link_ttl > Duration::from_secs(7 * 86400) {
            errs.push("store.link_ttl must be more than 0 and at most 7d (the longest a presigned S3 link lives)".into());
        }
        if s.kind == "s3" && s.bucket.trim().is_empty() {
            errs.push("store.bucket is empty but store.kind is \"s3\"".into());
        }
        if !s.endpoint.is_empty() && url::Url::parse(&s.endpoint).is_err() {
            errs.push(format!(
                "store.endpoint {:?} is not a URL",
                crate::capture::redact_url(&s.endpoint)
            ));
        }
    }

    /// URLs and listen addresses, and what the stable links need.
    fn check_addresses(&self, errs: &mut Vec<String>) {
        for server in self.nats.servers() {
            let ok = url::Url::parse(server).is_ok_and(|u| {
                matches!(u.scheme(), "nats" | "tls" | "ws" | "wss") && u.host_str().is_some()
            });
            if !ok {
                errs.push(format!(
                    "nats.url {:?} is not a NATS URL (nats://host:4222, tls://…, ws://…)",
                    crate::capture::redact_url(server)
                ));
            }
        }
        for (key, value) in [
            ("notify.webhook_url", &self.notify.webhook_url),
            ("intake.public_url", &self.intake.public_url),
        ] {
            if !value.is_empty()
                && !url::Url::parse(value)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            {
                // The webhook's path is its secret: only the scheme is worth showing.
                errs.push(format!("{key} is not an http:// or https:// URL"));
            }
        }
        for (key, value) in [
            ("intake.listen", &self.intake.listen),
            ("metrics.listen", &self.metrics.listen),
        ] {
            let ok = value
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                errs.push(format!(
                    "{key} {value:?} is not an address to listen on (host:port, e.g. 0.0.0.0:8080)"
                ));
            }
        }
        let i = &self.intake;
        if !i.public_url.is_empty() && i.link_secret.is_empty() && i.link_secret_file.is_empty() {
            errs.push("intake.public_url is set but intake.link_secret is empty: stable report links need both (the same on the worker and the intake)".into());
        }
        if !i.link_secret.is_empty() && i.link_secret.len() < 16 {
            errs.push(
                "intake.link_secret must be at least 16 characters (openssl rand -hex 32)".into(),
            );
        }
        if i.link_ttl.is_zero() || i.link_ttl > Duration::from_secs(10 * 365 * 86400) {
            errs.push("intake.link_ttl must be more than 0 and at most 10 years".into());
        }
    }

    fn check_worker(&self, errs: &mut Vec<String>) {
        let w = &self.worker;
        if parse_size(&w.spool_max).is_none_or(|n| n == 0) {
            errs.push(format!(
                "worker.spool_max {:?} is not a size (examples: 10GiB, 500MiB)",
                w.spool_max
            ));
        }
        if parse_size(&w.max_message).is_none_or(|n| n == 0) {
            errs.push(format!(
                "worker.max_message {:?} is not a size (examples: 1MiB, 65536)",
                w.max_message
            ));
        }
        if w.ack_wait < Duration::from_secs(1) {
            errs.push("worker.ack_wait must be at least 1s".into());
        }
        if w.max_deliver < 1 {
            errs.push("worker.max_deliver must be at least 1".into());
        }
        if w.upload_attempts == 0 {
            errs.push("worker.upload_attempts must be at least 1".into());
        }
        if w.claim_ttl < Duration::from_secs(3) {
            errs.push("worker.claim_ttl must be at least 3s".into());
        }
        if w.retry_delay > w.retry_delay_max {
            errs.push("worker.retry_delay must not exceed worker.retry_delay_max".into());
        }
    }
}

/// Parses a size: `256KiB`, `1MiB`, `10GiB`, `64KB`, `65536`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Deserialisation stops at the first bad value: each section is read again on its own, so that
/// one bad value per section is named, not only the first of the file.
fn section_errors(figment: &Figment, first: figment::Error) -> Vec<String> {
    fn try_section<T: serde::de::DeserializeOwned>(f: &Figment, key: &str, out: &mut Vec<String>) {
        if let Err(e) = f.extract_inner::<T>(key) {
            for e in e {
                let mut path: Vec<&str> = vec![key];
                path.extend(e.path.iter().map(String::as_str).filter(|p| *p != key));
                out.push(describe_one(&path.join("."), &e));
            }
        }
    }
    let mut out = Vec::new();
    try_section::<NatsSettings>(figment, "nats", &mut out);
    try_section::<BTreeMap<String, BackendSettings>>(figment, "backends", &mut out);
    try_section::<CaptureSettings>(figment, "capture", &mut out);
    try_section::<AnalysisSettings>(figment, "analysis", &mut out);
    try_section::<StoreSettings>(figment, "store", &mut out);
    try_section::<IntakeSettings>(figment, "intake", &mut out);
    try_section::<NotifySettings>(figment, "notify", &mut out);
    try_section::<MetricsSettings>(figment, "metrics", &mut out);
    try_section::<WorkerSettings>(figment, "worker", &mut out);
    try_section::<crate::redact::RedactionSettings>(figment, "redaction", &mut out);
    try_section::<crate::sign::SigningSettings>(figment, "signing", &mut out);
    try_section::<ReportSettings>(figment, "report", &mut out);
    // An unknown section, or a key figment reports only on the whole.
    let first = describe_each(first);
    for f in first {
        if !out.iter().any(|o| o == &f) {
            out.push(f);
        }
    }
    out
}

/// Each of figment's errors on its own, with its key.
fn describe_each(e: figment::Error) -> Vec<String> {
    e.into_iter()
        .map(|e| describe_one(&e.path.join("."), &e))
        .collect()
}

/// One of figment's errors: `key: what (from where)`.
fn describe_one(key: &str, e: &figment::Error) -> String {
    let from = e
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{from}", e.kind)
    } else {
        format!("{key}: {}{from}", e.kind)
    }
}

/// Keys whose values are secrets, wherever they are.
const SECRET_KEYS: [&str; 9] = [
    "token",
    "nkey",
    "password",
    "bearer_token",
    "basic_password",
    "pagerduty_secrets",
    "link_secret",
    "key",
    "webhook_url",
];

/// Masks the secrets of a configuration value in place: a set secret becomes `<set>`, and
/// URLs lose their credentials.
fn mask(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                mask(v, k);
            }
        }
        toml::Value::Array(a) if SECRET_KEYS.contains(&key) && !a.is_empty() => {
            let n = a.len();
            *v = toml::Value::String(format!("<{n} set>"));
        }
        // Nothing to mask in an empty value.
        toml::Value::String(s) if s.is_empty() => {}
        toml::Value::String(s) if SECRET_KEYS.contains(&key) => *s = "<set>".into(),
        // URLs lose their credentials (nats.url may list several servers, comma-separated).
        toml::Value::String(s) if key == "url" || key == "endpoint" || key == "public_url" => {
            *s = s
                .split(',')
                .map(|part| {
                    let part = part.trim();
                    match url::Url::parse(part) {
                        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                            crate::capture::redact_url(part)
                        }
                        Ok(_) => part.to_owned(),
                        // Unreadable: shown only when it cannot hold a credential.
                        Err(_) if part.contains('@') => "<not a URL; not shown>".to_owned(),
                        Err(_) => part.to_owned(),
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        // Numbers and booleans under a secret key (an environment variable read as a number).
        other if SECRET_KEYS.contains(&key) && !matches!(other, toml::Value::Table(_)) => {
            *other = toml::Value::String("<set>".into());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_configuration_masks_every_secret_and_credentials_in_urls() {
        let mut v: toml::Value = toml::from_str(
            r#"
            [nats]
            url = "nats://u:pw1@a:4222,nats://u:pw2@b:4222"
            token = "tk-secret-9"
            [intake]
            pagerduty_secrets = ["s1", "s2"]
            bearer_token = ""
            bearer_token_file = "/secrets/t"
            [backends.x]
            password = 1234
            "#,
        )
        .unwrap();
        mask(&mut v, "");
        let text = toml::to_string(&v).unwrap();
        for secret in ["pw1", "pw2", "tk-secret-9", "\"s1\"", "\"s2\"", "1234"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        assert!(
            text.contains("/secrets/t") && text.contains("nats://a:4222,nats://b:4222"),
            "{text}"
        );
        assert!(
            text.contains("bearer_token = \"\""),
            "an empty secret stays empty: {text}"
        );
    }

    #[test]
    fn defaults_load_and_match_the_design() {
        let s = Settings::load_with_env(None, Env::prefixed("EL_TEST_NONE__").split("__")).unwrap();
        assert_eq!(s.capture.lookback, Duration::from_secs(1800));
        assert_eq!(s.capture.baseline_traces, 500);
        assert_eq!(s.backends["default"].kind, BackendKind::Jaeger);
        assert_eq!(s.store.link_ttl, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn file_then_environment_override_and_bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[store]\npath = \"/from-file\"\n[capture]\nslow_threshold = \"2s\"\n",
        )
        .unwrap();
        // SAFETY: the variables are unique to this test.
        unsafe {
            std::env::set_var("EL_TEST_A__STORE__PATH", "/from-env");
        }
        let s =
            Settings::load_with_env(Some(&file), Env::prefixed("EL_TEST_A__").split("__")).unwrap();
        assert_eq!(s.store.path, "/from-env");
        assert_eq!(s.capture.slow_threshold, Duration::from_secs(2));

        unsafe {
            std::env::set_var("EL_TEST_B__CAPTURE__LOOKBACK", "soon");
        }
        let e =
            Settings::load_with_env(None, Env::prefixed("EL_TEST_B__").split("__")).unwrap_err();
        assert!(e.to_string().contains("capture.lookback"), "{e}");

        // A numeric password from the environment is text, and never appears in an error.
        unsafe {
            std::env::set_var("EL_TEST_D__BACKENDS__DEFAULT__PASSWORD", "123456");
            std::env::set_var("EL_TEST_E__BACKENDS__DEFAULT__PASSWORD", "[98765]");
        }
        let s = Settings::load_with_env(None, Env::prefixed("EL_TEST_D__").split("__")).unwrap();
        assert_eq!(s.backends["default"].password, "123456");
        let e =
            Settings::load_with_env(None, Env::prefixed("EL_TEST_E__").split("__")).unwrap_err();
        assert!(!e.to_string().contains("98765"), "{e}");

        // A PagerDuty secret given as a plain string is a list of one; an empty one is refused.
        unsafe {
            std::env::set_var("EL_TEST_F__INTAKE__PAGERDUTY_SECRETS", "whsec-plain");
            std::env::set_var("EL_TEST_G__INTAKE__PAGERDUTY_SECRETS", "[\"\"]");
        }
        let s = Settings::load_with_env(None, Env::prefixed("EL_TEST_F__").split("__")).unwrap();
        assert_eq!(s.intake.pagerduty_secrets, ["whsec-plain"]);
        let e =
            Settings::load_with_env(None, Env::prefixed("EL_TEST_G__").split("__")).unwrap_err();
        assert!(e.to_string().contains("empty secret"), "{e}");

        // Store and worker values are checked at start-up, naming the key.
        for (var, value, key) in [
            (
                "EL_TEST_H__STORE__OBJECT_LOCK_MODE",
                "compliance",
                "store.object_lock_mode",
            ),
            ("EL_TEST_I__STORE__SSE", "aes", "store.sse"),
            (
                "EL_TEST_J__STORE__MULTIPART_PART_SIZE",
                "1MiB",
                "store.multipart_part_size",
            ),
            ("EL_TEST_K__STORE__LINK_TTL", "30d", "store.link_ttl"),
            ("EL_TEST_L__WORKER__SPOOL_MAX", "lots", "worker.spool_max"),
            ("EL_TEST_M__WORKER__MAX_DELIVER", "0", "worker.max_deliver"),
            ("EL_TEST_N__NATS__REPLICAS", "0", "nats.replicas"),
            ("EL_TEST_O__NATS__REPLICAS", "7", "nats.replicas"),
        ] {
            unsafe {
                std::env::set_var(var, value);
            }
            let prefix = &var[..var.find("__").unwrap() + 2];
            let e = Settings::load_with_env(None, Env::prefixed(prefix).split("__")).unwrap_err();
            assert!(e.to_string().contains(key), "{var}: {e}");
        }

        std::fs::write(&file, "[capture]\nlookbak = \"1m\"\n").unwrap();
        let e = Settings::load_with_env(Some(&file), Env::prefixed("EL_TEST_C__").split("__"))
            .unwrap_err();
        assert!(e.to_string().contains("lookbak"), "{e}");
    }
}
