//! `evidence-locker worker`: incidents in from NATS JetStream, bundles out to the store, a link
//! out to on-call. Pulls one message per free slot (`capture.concurrency`) from the durable
//! consumer that all worker processes share, and runs each through [`process`]'s one step:
//! parse → claim → capture into the spool → store → notify → ack. On SIGTERM it stops pulling,
//! gives running captures `worker.shutdown_grace`, and hands the rest back to JetStream.

mod claim;
mod job;
mod metrics;
mod process;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};

use crate::config::{Settings, parse_size};
use crate::model::WindowDefaults;
use crate::queue::{DECLARED, Queue, RESOLVED};
use crate::store::Store;

pub use job::{CaptureKind, Job, JobRules};

use claim::{Announced, Claims};
use spool::Spool;

/// Everything the steps share.
pub(crate) struct Worker {
    settings: Settings,
    queue: Arc<Queue>,
    store: Store,
    spool: Spool,
    claims: Claims,
    announced: Announced,
    http: reqwest::Client,
    rules: JobRules,
    /// The consumer's own `max_deliver` and `ack_wait` (an existing consumer keeps its
    /// configuration).
    max_deliver: i64,
    ack_wait: Duration,
    /// Becomes true when in-flight work must be handed back (the shutdown grace is over).
    handing_back: watch::Receiver<bool>,
    /// Spooled bundles whose store copy differs (reported once, kept, not retried).
    conflicts: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

/// How long JetStream waits for a publish acknowledgement from the worker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the spool is checked for bundles no message is working on.
const DRAIN_EVERY: Duration = Duration::from_secs(20);

/// Runs the worker until `shutdown` completes.
pub async fn serve(
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let w = &settings.worker;
    let spool_max = parse_size(&w.spool_max).unwrap_or(usize::MAX) as u64;
    let spool = Spool::open(std::path::Path::new(&w.spool), spool_max)?;
    // A worker without a trace source could only dead-letter: refuse to start instead.
    crate::collect::configured_sources(settings).context("worker")?;
    // Probes and metrics answer from the start: /healthz while NATS or the store is still
    // awaited, /readyz only once both answer.
    serve_metrics(settings.metrics.listen.clone()).await;
    let queue = Arc::new(Queue::connect(&settings.nats, PUBLISH_TIMEOUT).await?);
    let owner = format!(
        "{}/{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        std::process::id()
    );
    // A cluster electing its leaders, or a node gone, answers a little later: every part is
    // asked for again until it is there. Only a server too old to serve, or replicas a single
    // server cannot keep, are final.
    let JetStreamParts {
        mut consumer,
        actual,
        claims,
        announced,
    } = {
        use backon::{ExponentialBuilder, Retryable};
        (|| jetstream_parts(&queue, settings, &owner))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10))
                    .without_max_times(),
            )
            .when(|e| {
                !e.downcast_ref::<crate::queue::QueueError>()
                    .is_some_and(crate::queue::QueueError::is_permanent)
            })
            .notify(|e, wait| {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "JetStream is not ready yet");
            })
            .await?
    };
    if actual.max_deliver != w.max_deliver || actual.ack_wait != w.ack_wait {
        tracing::warn!(
            consumer = %settings.nats.consumer,
            max_deliver = actual.max_deliver,
            ack_wait = ?actual.ack_wait,
            "the existing consumer's max_deliver / ack_wait differ from worker.max_deliver / worker.ack_wait; the consumer's own values apply (delete the consumer to change them)"
        );
    }
    let max_deliver = if actual.max_deliver > 0 {
        actual.max_deliver
    } else {
        i64::MAX
    };
    let store = Store::from_settings(&settings.store).await?;
    match store.check().await {
        Ok(()) => {
            crate::metrics::get().store_reachable.set(1);
        }
        Err(e @ crate::store::StoreError::S3(crate::store::S3Error::Settings(_))) => {
            return Err(e.into());
        }
        // Not fatal: bundles wait in the spool until the store answers.
        Err(e) => tracing::warn!(error = %e, "the store does not answer yet"),
    }
    let (hand_back, handing_back) = watch::channel(false);
    let worker = Arc::new(Worker {
        settings: settings.clone(),
        queue: queue.clone(),
        store,
        spool,
        claims,
        announced,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?,
        rules: JobRules {
            window: WindowDefaults {
                lookback: settings.capture.lookback,
                max_window: settings.capture.max_window,
            },
            max_message: parse_size(&w.max_message).unwrap_or(1 << 20),
            resolved_tail: w.resolved_tail,
            clock_skew: settings.capture.clock_skew,
        },
        max_deliver,
        ack_wait: actual.ack_wait,
        handing_back,
        conflicts: Default::default(),
    });
    crate::metrics::get()
        .spool_max_bytes
        .set(i64::try_from(spool_max).unwrap_or(i64::MAX));
    worker.report_spool();
    tracing::info!(
        nats = %crate::capture::redact_url(&settings.nats.url),
        consumer = %settings.nats.consumer,
        store = %worker.store.describe(),
        spool = %worker.spool.root().display(),
        concurrency = settings.capture.concurrency,
        "worker started"
    );
    watch_health(queue.clone(), worker.store.clone());

    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut drain = {
        let worker = worker.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                worker.drain_spool().await;
                tokio::select! {
                    _ = tokio::time::sleep(DRAIN_EVERY) => {}
                    _ = stopped(&mut stop) => break,
                }
            }
        })
    };

    let slots = Arc::new(Semaphore::new(settings.capture.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    // Messages pulled but not started yet, each with its deadline: a free slot takes the one
    // whose window leaves the backends' retention first (earliest deadline first).
    let mut waiting: Vec<(
        chrono::DateTime<chrono::Utc>,
        async_nats::jetstream::Message,
    )> = Vec::new();
    let room = (settings.capture.concurrency * 2).clamp(4, 64);
    // While every slot is busy, the waiting messages are kept ours all the same.
    let keep_every = (actual.ack_wait / 3).max(Duration::from_millis(300));
    'pull: loop {
        let permit = loop {
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.context("worker slots closed")?,
                _ = tokio::time::sleep(keep_every), if !waiting.is_empty() => keep_ours(&waiting).await,
                _ = stopped(&mut stop) => break 'pull,
            }
        };
        // With messages waiting, only a quick look for more; else a long wait for any.
        let wait_for = if waiting.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(100)
        };
        let fetched = tokio::select! {
            f = fetch(&consumer, room - waiting.len(), wait_for) => f,
            _ = stopped(&mut stop) => break,
        };
        while tasks.try_join_next().is_some() {}
        if fetched.is_ok() && crate::metrics::get().pull_failing.set(0) == 1 {
            tracing::info!("pulling incident messages again");
        }
        let fetched = fetched.map(|msgs| {
            waiting.extend(msgs.into_iter().map(|m| (worker.deadline(&m), m)));
            let next = waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, (d, m))| (*d, m.info().map(|i| i.stream_sequence).unwrap_or(0)))
                .map(|(i, _)| i);
            next.map(|i| waiting.swap_remove(i).1)
        });
        if let Ok(Some(_)) = &fetched {
            // The others stay ours while they wait.
            keep_ours(&waiting).await;
        }
        match fetched {
            Ok(Some(msg)) => {
                let worker = worker.clone();
                tasks.spawn(async move {
                    crate::metrics::get().captures_in_flight.inc();
                    // The slot is freed as soon as the bundle is spooled: a message waiting for
                    // the store must not keep new incidents from being captured.
                    worker.process_one(msg, permit).await;
                    crate::metrics::get().captures_in_flight.dec();
                });
            }
            Ok(None) => {}
            Err(e) => {
                crate::metrics::get().pull_failing.set(1);
                tracing::warn!(error = %e, "cannot pull incident messages; making sure the stream and consumer exist, then retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped(&mut stop) => break,
                }
                // The stream or the consumer may have been deleted (or the server's storage
                // lost): made again when missing, as at start-up.
                queue.forget_stream();
                match queue.ensure_stream().await {
                    Ok(()) => match ensure_consumer(&queue, settings).await {
                        Ok(c) => consumer = c,
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "the consumer is not ready yet")
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "the stream is not ready yet"),
                }
            }
        }
    }

    // Pulled but never started: handed back at once for another worker.
    for (_, m) in waiting.drain(..) {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    tracing::info!(
        in_flight = tasks.len(),
        grace = ?w.shutdown_grace,
        "stopped pulling; finishing what is in flight"
    );
    // The spool drain stops after the upload it is in (within the same grace).
    let grace_over = tokio::time::Instant::now() + w.shutdown_grace;
    let finished = tokio::time::timeout_at(grace_over, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if tokio::time::timeout_at(grace_over, &mut drain)
        .await
        .is_err()
    {
        drain.abort();
    }
    if finished.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown grace over: handing the remaining messages back"
        );
        let _ = hand_back.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
    worker.report_spool();
    tracing::info!("worker stopped");
    Ok(())
}

/// Tells JetStream the pulled messages waiting for a slot are still ours.
async fn keep_ours(
    waiting: &[(
        chrono::DateTime<chrono::Utc>,
        async_nats::jetstream::Message,
    )],
) {
    for (_, m) in waiting {
        let _ = m.ack_with(AckKind::Progress).await;
    }
}

/// Completes once the stop signal is given.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the worker needs from JetStream before it pulls.
struct JetStreamParts {
    consumer: PullConsumer,
    /// The consumer's own configuration (an existing consumer keeps its own).
    actual: async_nats::jetstream::consumer::Config,
    claims: Claims,
    announced: Announced,
}

/// The stream, the consumer and both key-value buckets, each made when missing.
async fn jetstream_parts(
    queue: &Queue,
    settings: &Settings,
    owner: &str,
) -> Result<JetStreamParts> {
    let w = &settings.worker;
    queue.ensure_stream().await?;
    queue.check_server_version()?;
    let mut consumer = ensure_consumer(queue, settings).await?;
    let actual = consumer
        .info()
        .await
        .context("the JetStream consumer")?
        .config
        .clone();
    let claims = Claims::open(
        queue.jetstream(),
        &format!("{}-claims", settings.nats.consumer),
        w.claim_ttl,
        settings.nats.replicas,
        owner.to_owned(),
    )
    .await?;
    let announced = Announced::open(
        queue.jetstream(),
        &format!("{}-announced", settings.nats.consumer),
        w.announced_ttl,
        settings.nats.replicas,
    )
    .await?;
    Ok(JetStreamParts {
        consumer,
        actual,
        claims,
        announced,
    })
}

/// The durable pull consumer, created when missing (an existing one is left as it is).
async fn ensure_consumer(queue: &Queue, settings: &Settings) -> Result<PullConsumer> {
    let stream = queue
        .jetstream()
        .get_stream(&settings.nats.stream)
        .await
        .with_context(|| format!("the JetStream stream {}", settings.nats.stream))?;
    let name = &settings.nats.consumer;
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some("evidence-locker workers".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.worker.ack_wait,
                max_deliver: settings.worker.max_deliver,
                filter_subjects: vec![DECLARED.to_owned(), RESOLVED.to_owned()],
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("the JetStream consumer {name}"))
}

/// Up to `max` messages that arrive within `wait` (none is not an error).
async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    wait: Duration,
) -> Result<Vec<async_nats::jetstream::Message>, async_nats::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(wait)
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m?);
    }
    Ok(out)
}

/// Keeps the gauges /readyz reads current: NATS every 5 s, the store every 30 s (the first
/// store check is start-up's own).
fn watch_health(queue: Arc<Queue>, store: Store) {
    tokio::spawn(async move {
        let m = crate::metrics::get();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        for round in 0u64.. {
            tick.tick().await;
            m.worker_nats_connected.set(i64::from(queue.is_connected()));
            if round > 0 && round % 6 == 0 {
                let reachable = match store.check().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "the store does not answer");
                        false
                    }
                };
                m.store_reachable.set(i64::from(reachable));
            }
        }
    });
}

/// Why the worker is not ready, if it is not: NATS disconnected, the consumer failing, or the
/// store not answering.
fn not_ready() -> Option<&'static str> {
    let m = crate::metrics::get();
    if m.worker_nats_connected.get() != 1 {
        Some("NATS is not connected")
    } else if m.pull_failing.get() == 1 {
        Some("cannot pull incident messages from the consumer")
    } else if m.store_reachable.get() != 1 {
        Some("the store does not answer")
    } else if m.upload_failing.get() == 1 {
        Some("the last bundle upload failed (see the log); ready again after one succeeds")
    } else {
        None
    }
}

/// `/metrics`, `/healthz`, `/readyz` on `metrics.listen` (a bind failure is logged, not fatal:
/// the evidence matters more than the metrics).
async fn serve_metrics(listen: String) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen, error = %e, "cannot serve metrics");
            return;
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    crate::metrics::get().render_worker(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                match not_ready() {
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    None => (StatusCode::OK, "ready\n".to_owned()),
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
}
