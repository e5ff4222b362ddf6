//! The `evidence-locker` binary: parses the command line, loads the configuration, sets up
//! logging on stderr, and runs one command. Errors end here, with context, and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use evidence_locker::capture::file::FileSource;
use evidence_locker::collect::{self, CollectOutcome, CollectRequest, TraceInput};
use evidence_locker::config::{BackendKind, Settings};
use evidence_locker::model::Incident;

use evidence_locker::store::{S3Store, Store, s3::parse_location};

/// Preserves the trace evidence of an incident before the tracing backend deletes it.
#[derive(Parser)]
#[command(name = "evidence-locker", version, about)]
struct Cli {
    /// Configuration file (TOML) over the built-in defaults; EVIDENCE_LOCKER__SECTION__KEY
    /// variables override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr (json: one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "EVIDENCE_LOCKER_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Capture one incident once and write its evidence bundle.
    Collect(CollectArgs),
    /// Receive Alertmanager, PagerDuty and plain incident webhooks and queue them on JetStream.
    Intake,
    /// Consume incidents from JetStream: capture, store the bundle, announce it.
    Worker,
    /// Verify stored bundles: manifests, sizes, checksums, unlisted objects, signatures, Object
    /// Lock retention, expected incidents. Exit 0 clean, 1 findings, 2 could not audit.
    Audit(AuditArgs),
    /// Send a stored bundle's traces to an OTLP/HTTP endpoint (Jaeger, Tempo, a collector) with
    /// their original ids and times, to browse them after the backend deleted them.
    Replay(ReplayArgs),
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run `collect` on the example incident and traces shipped with the tool.
    Demo {
        /// Directory to write the bundle under.
        #[arg(long, value_name = "DIR", default_value = "./evidence")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration (defaults, --config FILE, EVIDENCE_LOCKER__* variables) as
    /// the worker and the intake would, then print it with secrets masked. Exit 0 valid, 1 not
    /// (each bad key named on stderr).
    Check {
        /// Print nothing when the configuration is valid.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(clap::Args)]
struct CollectArgs {
    /// The incident (JSON); optional with --traces-file, where the window is then the data's.
    #[arg(long, value_name = "FILE")]
    incident: Option<PathBuf>,
    /// A Jaeger query service (repeatable).
    #[arg(long, value_name = "URL")]
    jaeger: Vec<String>,
    /// A Grafana Tempo query frontend (repeatable).
    #[arg(long, value_name = "URL")]
    tempo: Vec<String>,
    /// A Zipkin server (repeatable).
    #[arg(long, value_name = "URL")]
    zipkin: Vec<String>,
    /// A trace file (repeatable): Jaeger, OTLP JSON or Zipkin, JSON or JSON Lines, plain or zstd.
    #[arg(long = "traces-file", value_name = "PATH")]
    traces_file: Vec<PathBuf>,
    /// Local directory to store the bundle under (default: store.path of the configuration).
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    out: Option<PathBuf>,
    /// Store location: a local path, or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// The store: a local path, or s3://bucket/prefix (credentials and endpoint from [store]
    /// and the AWS chain).
    #[arg(long, value_name = "URL")]
    store: String,
    /// Only this incident's bundles.
    #[arg(long, value_name = "ID")]
    incident: Option<String>,
    /// Only captures started at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Output: a table for people, JSON for tools, CSV for the retention report.
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    format: AuditFormat,
    /// A file of incident ids (one per line) that must each have a bundle.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// PEM public keys (`openssl pkey -pubout`) whose signatures are trusted; without it,
    /// signatures are not verified.
    #[arg(long = "trusted-keys", value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The bundle: its local directory, or s3://bucket/prefix/INCIDENT/CAPTURE.
    bundle: String,
    /// The OTLP/HTTP endpoint (`http://collector:4318`; `/v1/traces` is appended).
    #[arg(long, value_name = "URL")]
    otlp: String,
    /// Only these trace files (comma-separated: errors,slow,baseline,sample,context).
    #[arg(long, value_delimiter = ',', value_name = "FILES")]
    only: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditFormat {
    Table,
    Json,
    Csv,
}

const DEMO_INCIDENT: &[u8] = include_bytes!("../examples/incident.json");
const DEMO_TRACES: &[u8] = include_bytes!("../examples/traces.jsonl.zst");

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    survive_file_size_limits();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Config {
        action: ConfigAction::Check { quiet },
    } = cli.command
    {
        return config_check(cli.config.as_deref(), quiet);
    }
    if let Command::Audit(args) = cli.command {
        // Its own exit codes: 0 clean, 1 findings, 2 could not audit.
        return match runtime.block_on(run_audit(cli.config.as_deref(), args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A write past the file-size limit (`ulimit -f`, a quota-like bound on the spool) fails with an
/// error, as a full disk does, instead of the signal that would kill the process: the capture is
/// refused and retried, and the worker keeps running.
fn survive_file_size_limits() {
    #[cfg(unix)]
    // SAFETY: setting a signal to be ignored touches no memory of this program.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Collect(args) => {
            let outcome = run_collect(&settings, args).await?;
            report(&outcome, false)
        }
        Command::Intake => evidence_locker::intake::serve(&settings, shutdown_signal()).await,
        Command::Worker => evidence_locker::worker::serve(&settings, shutdown_signal()).await,
        Command::Audit(_) | Command::Config { .. } => unreachable!("run on their own"),
        Command::Replay(args) => run_replay(&settings, args).await,
        Command::Demo { out } => {
            let incident = Incident::parse(DEMO_INCIDENT).context("the built-in demo incident")?;
            let files = FileSource::from_bytes(
                "examples/traces.jsonl.zst",
                DEMO_TRACES,
                Some(collect::file_spill(&settings)?),
            )?;
            let outcome = collect::collect(
                &settings,
                CollectRequest {
                    incident: Some(incident),
                    input: TraceInput::Files(files),
                    out,
                    now: chrono::Utc::now(),
                    retention: Default::default(),
                },
            )
            .await?;
            report(&outcome, true)
        }
    }
}

/// `config check`: every problem on stderr, one per line, or the effective configuration.
fn config_check(file: Option<&std::path::Path>, quiet: bool) -> ExitCode {
    let source = match file {
        Some(f) => format!("the defaults, {} and the environment", f.display()),
        None => "the defaults and the environment".to_owned(),
    };
    let mut problems = match Settings::load(file) {
        Ok(s) => evidence_locker::intake::exposure_problem(&s.intake)
            .into_iter()
            .collect(),
        Err(e) => e.problems(),
    };
    problems.sort();
    problems.dedup();
    if !problems.is_empty() {
        eprintln!(
            "error: the configuration from {source} has {} problem(s):",
            problems.len()
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        return ExitCode::FAILURE;
    }
    if quiet {
        return ExitCode::SUCCESS;
    }
    match Settings::effective(file) {
        Ok(text) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let header = format!("# the effective configuration, from {source}; secrets masked\n");
            if out
                .write_all(header.as_bytes())
                .and_then(|()| out.write_all(text.as_bytes()))
                .and_then(|()| out.flush())
                .is_err()
            {
                eprintln!("error: standard output cannot be written");
                return ExitCode::FAILURE;
            }
            eprintln!("the configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_audit(config: Option<&std::path::Path>, args: AuditArgs) -> Result<ExitCode> {
    use evidence_locker::audit::{self, AuditRequest, AuditStore};
    let settings = Settings::load(config)?;
    let store = if args.store.starts_with("s3://") {
        let Some((bucket, prefix)) = parse_location(&args.store) else {
            bail!("--store {:?} is not s3://bucket/prefix", args.store);
        };
        let mut st = settings.store.clone();
        st.kind = "s3".into();
        st.bucket = bucket;
        st.prefix = prefix;
        AuditStore::S3(S3Store::connect(&st).await?)
    } else {
        let p = PathBuf::from(&args.store);
        if !p.is_dir() {
            bail!("--store {} is not a directory", p.display());
        }
        AuditStore::Local(p)
    };
    let expect = match &args.expect {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--expect {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let trusted = match &args.trusted_keys {
        Some(f) => Some(evidence_locker::sign::TrustedKeys::read(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let report = audit::audit(&AuditRequest {
        store,
        incident: args.incident,
        since: args.since,
        expect,
        trusted,
    })
    .await?;
    let text = match args.format {
        AuditFormat::Table => audit::table(&report),
        AuditFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        AuditFormat::Csv => audit::csv(&report),
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("standard output cannot be written")?;
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_replay(settings: &Settings, args: ReplayArgs) -> Result<()> {
    use evidence_locker::replay::{self, BundleAt};
    if url::Url::parse(&args.otlp).is_err() {
        bail!("--otlp is not a URL (expected for example http://collector:4318)");
    }
    let at = if args.bundle.starts_with("s3://") {
        let Some((bucket, prefix)) = parse_location(&args.bundle) else {
            bail!(
                "{:?} is not s3://bucket/prefix/incident/capture",
                args.bundle
            );
        };
        let mut st = settings.store.clone();
        st.kind = "s3".into();
        st.bucket = bucket;
        st.prefix = prefix;
        BundleAt::S3(S3Store::connect(&st).await?)
    } else {
        BundleAt::Local(PathBuf::from(&args.bundle))
    };
    let r = replay::replay(&at, &args.otlp, &args.only).await?;
    tracing::info!(
        files = r.files,
        traces = r.traces,
        spans = r.spans,
        requests = r.requests,
        seconds = r.seconds,
        "replayed"
    );
    use std::io::Write as _;
    writeln!(
        std::io::stdout().lock(),
        "sent {} traces ({} spans) from {} file(s) to {} in {} request(s), {:.2} s",
        r.traces,
        r.spans,
        r.files,
        evidence_locker::capture::redact_url(&replay::traces_url(&args.otlp)),
        r.requests,
        r.seconds
    )
    .context("standard output cannot be written")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

async fn run_collect(settings: &Settings, args: CollectArgs) -> Result<CollectOutcome> {
    let backends: Vec<(BackendKind, String)> = args
        .jaeger
        .iter()
        .map(|u| (BackendKind::Jaeger, u.clone()))
        .chain(args.tempo.iter().map(|u| (BackendKind::Tempo, u.clone())))
        .chain(args.zipkin.iter().map(|u| (BackendKind::Zipkin, u.clone())))
        .collect();
    if !backends.is_empty() && !args.traces_file.is_empty() {
        bail!("give backends (--jaeger, --tempo, --zipkin) or --traces-file, not both");
    }
    // `--store s3://…`: the bundle is written locally first (a fresh private temporary
    // directory), then stored; a failed upload leaves it on disk and says where.
    let mut s3 = None;
    let mut staging: Option<tempfile::TempDir> = None;
    let out = match (args.out, args.store) {
        (Some(dir), _) => dir,
        (None, Some(store)) if store.starts_with("s3://") => {
            let Some((bucket, prefix)) = parse_location(&store) else {
                bail!("--store {store:?} is not s3://bucket/prefix");
            };
            let mut st = settings.store.clone();
            st.kind = "s3".into();
            st.bucket = bucket;
            st.prefix = prefix;
            s3 = Some(S3Store::connect(&st).await?);
            let mut builder = tempfile::Builder::new();
            builder.prefix("evidence-locker-collect-");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                // Evidence may hold what the traces hold: readable by us only.
                builder.permissions(std::fs::Permissions::from_mode(0o700));
            }
            let dir = builder
                .tempdir()
                .context("cannot create a temporary directory for the bundle")?;
            let path = dir.path().to_owned();
            staging = Some(dir);
            path
        }
        (None, Some(store)) => PathBuf::from(store.strip_prefix("file://").unwrap_or(&store)),
        (None, None) => PathBuf::from(&settings.store.path),
    };
    let retention =
        evidence_locker::store::retention(s3.as_ref().and_then(|s| s.lock_for(chrono::Utc::now())));
    // The incident is checked before anything is fetched or written.
    let incident = args
        .incident
        .as_deref()
        .map(collect::read_incident)
        .transpose()?;
    let input = if !args.traces_file.is_empty() {
        let paths = args.traces_file.clone();
        let clock = std::time::Instant::now();
        let spill = collect::file_spill(settings)?;
        let files = TraceInput::Files(
            tokio::task::spawn_blocking(move || FileSource::read(&paths, Some(spill)))
                .await
                .context("the file reader stopped unexpectedly")??,
        );
        tracing::debug!(ms = clock.elapsed().as_millis() as u64, "trace files read");
        files
    } else if !backends.is_empty() {
        TraceInput::Backends(backends)
    } else {
        TraceInput::Configured
    };
    let mut outcome = collect::collect(
        settings,
        CollectRequest {
            incident,
            input,
            out,
            now: chrono::Utc::now(),
            retention,
        },
    )
    .await?;
    if let Some(s3) = s3 {
        let local = outcome.bundle_dir.clone();
        let incident = &outcome.incident;
        let capture = &outcome.summary.capture_id;
        let store = Store::S3(s3);
        let stored = store
            .put_bundle(&local, incident, capture, settings.worker.upload_attempts)
            .await;
        if let Err(e) = stored {
            // Kept: the temporary directory is not removed when the upload failed.
            if let Some(dir) = staging.take() {
                let _ = dir.keep();
            }
            return Err(anyhow::Error::new(e).context(format!(
                "cannot store the bundle in {} (the complete bundle is kept in {})",
                store.bundle_url(incident, capture),
                local.display()
            )));
        }
        // Stored: only our own temporary directory goes.
        drop(staging.take());
        outcome.bundle_dir = PathBuf::from(store.bundle_url(incident, capture));
    }
    Ok(outcome)
}

/// Prints the bundle location (stdout, first line), its status (second line) and any notices
/// (one per line: what of the input was left out). A stdout that
/// cannot be written (a closed pipe, a full disk) is an error that still names the bundle.
fn report(outcome: &CollectOutcome, demo: bool) -> Result<()> {
    use std::io::Write as _;
    let s = &outcome.summary;
    tracing::info!(
        capture = %s.capture_id,
        status = s.status,
        traces = s.counts.traces,
        spans = s.counts.spans,
        error_traces = s.counts.error_traces,
        slow_traces = s.counts.slow_traces,
        baseline_traces = s.counts.baseline_traces,
        sample_traces = s.counts.sample_traces,
        gaps = s.gaps.len(),
        "bundle written"
    );
    let location = if demo {
        outcome.bundle_dir.join("report.html")
    } else {
        outcome.bundle_dir.clone()
    };
    let status = if s.gaps.is_empty() {
        "status: complete".to_owned()
    } else {
        let kinds: std::collections::BTreeSet<&str> =
            s.gaps.iter().map(|g| g.kind.as_str()).collect();
        format!(
            "status: partial ({} gap(s): {}; see completeness in manifest.json)",
            s.gaps.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    let mut out = std::io::stdout().lock();
    let notices: String = s.notices.iter().map(|n| format!("{n}\n")).collect();
    write!(out, "{}\n{status}\n{notices}", location.display())
        .and_then(|()| out.flush())
        .with_context(|| {
            format!(
                "the bundle was written to {}, but standard output cannot be written",
                location.display()
            )
        })
}
