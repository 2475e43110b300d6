//! Consumer backlog monitor: for the integration's own consumer groups (the Odoo
//! connector, the middleware, synclag itself), per partition the offset lag, the time lag
//! and a threshold-free status, also for groups with no active member and partitions
//! with no commit. Full definitions: `docs/backlog.md`.
//!
//! - [`status`]   — the status rules over a sliding window of observations (pure).
//! - [`leader`]   — which of several instances runs the monitor (a Kafka consumer group).
//! - [`timeline`] — time lag from the record at the committed offset, or interpolated (pure).
//! - [`probe`]    — the batched Kafka requests of one cycle (blocking, librdkafka).
//! - [`monitor`]  — [`BacklogMonitor`]: one cycle = probe → windows → [`BacklogReport`].
//! - [`report`]   — the JSON report (`/api/v1/groups`) and its Prometheus rendering.
//! - [`event`]    — the periodic `synclag.backlog` event (Avro with a registry, else JSON).
//!
//! Inside `synclag run`:
//!
//! ```no_run
//! # async fn demo(topology: synclag::config::Topology) -> Result<(), synclag::backlog::BacklogError> {
//! use synclag::backlog::{BacklogMonitor, MonitorConfig};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let monitor = BacklogMonitor::new(MonitorConfig::from_topology(&topology))?;
//! let backlog = monitor.handle(); // clone freely into the HTTP layer
//! let task = tokio::spawn(monitor.run(shutdown.clone()));
//! // GET /api/v1/groups  -> serde_json::to_vec(&*backlog.snapshot())
//! // GET /metrics        -> prometheus_handle.render() + &backlog.render_prometheus()
//! # shutdown.cancel(); let _ = task.await; Ok(()) }
//! ```

pub mod event;
pub mod leader;
pub mod monitor;
pub mod probe;
pub mod report;
pub mod status;
pub mod timeline;

pub use event::{BacklogEvent, EventSink};
pub use leader::{Election, Leadership, ELECTION_TOPIC};
pub use monitor::{BacklogMonitor, MonitorConfig};
pub use report::{BacklogReport, GroupReport, GroupSummary, PartitionReport, ResetPolicy};
pub use status::Status;
pub use timeline::Method;

use crate::config::{GroupSelector, Topology};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use tokio_util::sync::CancellationToken;

/// Why the monitor, one of its cycles, or its output failed.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    /// A Kafka client could not be created: the configuration is wrong. Not retryable.
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// Cluster metadata could not be read this cycle. Retryable.
    #[error("cannot read cluster metadata: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    /// The consumer group list could not be read this cycle. Retryable.
    #[error("cannot list consumer groups: {0}")]
    GroupList(#[source] rdkafka::error::KafkaError),
    /// The schema registry refused or could not be reached. Retryable.
    #[error("schema registry: {0}")]
    Registry(String),
    /// An event could not be encoded. Not retryable (a bug or a schema mismatch).
    #[error("cannot encode a backlog event: {0}")]
    Encode(String),
    /// An event was not delivered to Kafka. Retryable.
    #[error("cannot publish a backlog event: {0}")]
    Publish(String),
    /// Another instance is elected to run the monitor; this one skipped the cycle.
    #[error("another instance runs the backlog monitor")]
    NotLeader,
    /// A blocking worker died. Not retryable.
    #[error("backlog worker failed: {0}")]
    Worker(String),
    /// The standalone HTTP endpoint could not listen. Not retryable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl BacklogError {
    /// Whether trying again later can succeed without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BacklogError::Metadata(_)
                | BacklogError::GroupList(_)
                | BacklogError::Registry(_)
                | BacklogError::Publish(_)
        )
    }
}

/// Where "now" comes from; time lags are `now − record time`.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Shared, cheap access to the latest report. Cloning shares the same report.
#[derive(Debug, Clone, Default)]
pub struct BacklogHandle {
    latest: Arc<RwLock<Arc<BacklogReport>>>,
    leader: Arc<std::sync::atomic::AtomicBool>,
}

impl BacklogHandle {
    /// The latest report (an empty one with `cycle == 0` before the first cycle). An
    /// instance that is not (or no longer) the elected monitor reports nothing, at once:
    /// the rows of its last cycle are not served while its leadership is being handed on.
    pub fn snapshot(&self) -> Arc<BacklogReport> {
        static EMPTY: std::sync::OnceLock<Arc<BacklogReport>> = std::sync::OnceLock::new();
        if !self.is_leader() {
            return EMPTY
                .get_or_init(|| Arc::new(BacklogReport::default()))
                .clone();
        }
        self.latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether this instance runs the monitor now (always, without an election).
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::SeqCst);
    }

    /// The backlog series of the latest report, Prometheus text format; append it to
    /// the recorder's output on `/metrics`.
    pub fn render_prometheus(&self) -> String {
        self.snapshot().render_prometheus()
    }

    /// The `/api/v1/groups` body.
    pub fn groups_json(&self) -> String {
        serde_json::to_string(&*self.snapshot()).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Watched groups that are not OK, with the topics of their partitions that are not
    /// (cause evidence: a group explains a breach only on the topics it is behind on).
    pub fn backlogged(&self) -> Vec<crate::rules::Backlogged> {
        let report = self.snapshot();
        report
            .summaries()
            .filter(|g| g.status != Status::Ok)
            .map(|g| {
                // Only groups that are not OK are materialized with their partitions.
                let mut topics: Vec<String> = report
                    .group(&g.group)
                    .map(|full| {
                        full.partitions
                            .into_iter()
                            .filter(|p| p.status != Status::Ok)
                            .map(|p| p.topic)
                            .collect()
                    })
                    .unwrap_or_default();
                topics.sort();
                topics.dedup();
                crate::rules::Backlogged {
                    group: g.group.clone(),
                    topics,
                }
            })
            .collect()
    }

    /// Serves this monitor's report on `/api/v1/groups` and its series on `/metrics`.
    pub fn attach(&self, api: &mut crate::emit::http::ApiState) {
        let h = self.clone();
        api.groups = Some(Arc::new(move || {
            serde_json::to_value(&*h.snapshot()).unwrap_or_default()
        }));
        let h = self.clone();
        api.extra_metrics = Some(Arc::new(move || h.render_prometheus()));
    }

    fn publish(&self, report: Arc<BacklogReport>) {
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = report;
    }
}

/// Flags of `synclag backlog`.
#[derive(Debug, clap::Args)]
pub struct BacklogArgs {
    /// Path to topology.yaml.
    #[arg(long, short, default_value = "topology.yaml")]
    pub config: std::path::PathBuf,
    /// Groups that start from the earliest offset on partitions without a commit (exact
    /// name, or /regex/). Others use `latest`. Repeatable.
    #[arg(long = "reset-earliest", value_name = "GROUP")]
    pub reset_earliest: Vec<String>,
    /// Run one cycle, print the report as JSON and exit.
    #[arg(long)]
    pub once: bool,
}

/// Runs the backlog monitor alone: serves `/metrics` and `/api/v1/groups` on the
/// topology's `service.http_listen`, publishes events, stops on Ctrl-C.
pub async fn run_standalone(args: BacklogArgs) -> anyhow::Result<()> {
    let topology = Topology::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = MonitorConfig::from_topology(&topology);
    for g in &args.reset_earliest {
        let selector = match g.strip_prefix('/').and_then(|s| s.strip_suffix('/')) {
            Some(pattern) => GroupSelector::Pattern(regex::Regex::new(pattern)?),
            None => GroupSelector::Name(g.clone()),
        };
        config
            .reset_policies
            .push((selector, ResetPolicy::Earliest));
    }
    if args.once {
        // One report, now: no election (and no effect on the running monitor).
        config.election = None;
    }
    let mut monitor = BacklogMonitor::new(config)?;
    if args.once {
        let report = monitor.poll_once().await?;
        println!("{}", serde_json::to_string_pretty(&*report)?);
        return Ok(());
    }
    let metrics = crate::telemetry::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let shutdown = CancellationToken::new();
    let mut api = crate::emit::http::ApiState::new(Some(metrics), false);
    // Nothing to be assigned in standalone mode: ready as soon as it serves.
    api.ready
        .assigned
        .store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.handle().attach(&mut api);
    let addr = topology.service.http_listen;
    // The same authentication, roles and audit trail as `synclag run`; the output topics
    // are `synclag run`'s to create.
    let mut served = topology.clone();
    served.retention.create_topics = false;
    let bound = crate::auth::serve_api(&std::sync::Arc::new(served), None, api, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve HTTP on {addr}: {e}"))?;
    tracing::info!(%bound, "backlog monitor serving /metrics and /api/v1/groups");
    let signal = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.cancel();
            }
        })
    };
    let result = monitor.run(shutdown.clone()).await;
    shutdown.cancel();
    signal.abort();
    result.map_err(Into::into)
}
