//! `synclag run`: the service path, as a pipeline.
//!
//! ```text
//! consumer ─> records (decode, classify; a record that must wait pauses its partition
//!             alone) ─> engine ─> outcomes (events + evidence) ─> emitter (Kafka, acks)
//!     ^                   ^                                             │
//!     │                   └── clock (correlate::clock: confirmed ends, event time, stalls)
//!     └── commit gate (ingest::commit): offsets follow acknowledged outputs <──┘
//! ```
//!
//! One task owns the engine (no locks on the hot path). Nothing on it waits for the
//! network: a record that needs the registry is held with its partition paused and retried
//! off the loop; outputs are handed to the emitter without waiting, and while they pile up
//! input is paused — the clock and the timers keep running in every case.

mod batches;
mod busy;
mod held;
mod late;
pub mod outcomes;
mod records;
mod routed;
pub mod state;
mod status;
mod trend;

pub use outcomes::INPUT_STALLED;

use crate::config::duration::millis;
use crate::config::Topology;
use crate::correlate::clock::{InputClock, Reading};
use crate::correlate::{Engine, Outcome};
use crate::decode::Decoder;
use crate::emit::emitter::{Commit, Emitter, Output};
use crate::emit::events::LagSummary;
use crate::emit::http::ApiState;
use crate::emit::producer::Outputs;
use crate::ingest::commit::CommitGate;
use crate::ingest::ends::{self, Ends};
use crate::ingest::{cached_watermarks, IngestContext, OffsetTracker, Shared, Tp};
use crate::rules::{Backlogged, Masker, Rules, SignalBook};
use crate::telemetry::names;
use crate::telemetry::series::{self, SignalKinds};
use outcomes::{Context, Outcomes};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use records::{Held, Hot, Retry};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid engine configuration: {0}")]
    Engine(String),
    #[error("Kafka client: {0}")]
    Kafka(String),
    #[error("cannot serve HTTP on {addr}: {why}")]
    Http { addr: String, why: String },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("masking: environment variable `{0}` (masking.key_env) is not set")]
    MaskKey(String),
}

const TICK: Duration = Duration::from_millis(100);
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// While records flow, how often the clock is advanced between ticks (see the loop in
/// `run_pipeline`).
const CLOCK_EVERY: Duration = Duration::from_millis(5);
const LOG_SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How long outputs may hold input back before its partitions are paused in the consumer.
/// Until then the pipeline just stops taking records: a pause in librdkafka drops every
/// record it has fetched ahead for the partition (up to `queued.min.messages` in all) and
/// fetches them again once resumed, and reading stood still for up to a second and a half
/// after each short wait for outputs. Beyond it the consumer is polled again, paused, so
/// that it stays in its group, serves rebalances and reports errors.
const OUTPUT_WAIT_IN_CLIENT: Duration = Duration::from_secs(1);
/// With transactions: outputs after which a transaction is committed before its second
/// is up, bounding the outputs kept in memory to write an aborted transaction again.
const TRANSACTION_MAX_OUTPUTS: u64 = 10_000;
/// Event time an input partition may run ahead of the clock while a backlog is read
/// before it is paused (see `Pipeline::pace_inputs`). Small enough that outcomes waiting
/// for the slowest partition stay a few seconds' worth, large enough that a partition is
/// not paused for the normal spread of one fetch.
const READ_AHEAD_MS: i64 = 3_000;
/// Records a partition running ahead may have waiting in the pipeline before it is paused
/// in the consumer as well. Until then its records are taken from the consumer and kept:
/// a pause in librdkafka drops what was fetched ahead for the partition and fetches it
/// again after the resume, behind everything other partitions have queued meanwhile, so
/// that those ran ahead in turn, and the load run fetched each input record more than six
/// times.
const PACED_RECORDS_MAX: usize = 4_000;
/// With `store.repartition`: how often a transaction commits while stages are routed.
/// Routed stages and input progress reach the engine only once committed, so this adds
/// to the detection time.
const ROUTED_COMMIT_EVERY: Duration = Duration::from_millis(200);

pub(crate) use crate::decode::time::wall_ms;

/// Everything the pipeline task owns.
struct Pipeline {
    topology: Arc<Topology>,
    rules: Rules,
    decoder: Arc<Decoder>,
    engine: Engine,
    clock: InputClock,
    offsets: OffsetTracker,
    gate: CommitGate,
    signals: SignalBook,
    outcomes: Outcomes,
    /// Durable state (`store.durable`): the changelog the engine is mirrored to.
    state: Option<state::DurableState>,
    emitter: Emitter,
    shared: Arc<Shared>,
    api: ApiState,
    backlogged: Arc<dyn Fn() -> Vec<Backlogged> + Send + Sync>,
    /// Every (workflow, cause) of the open-incident gauge.
    incident_series: Vec<(String, String)>,
    out: Vec<Outcome>,
    last_committed: HashMap<Tp, i64>,
    /// The longest workflow window: records younger than this are never committed past.
    max_window_ms: i64,
    /// Partitions the end-offset prober asks about.
    assigned: ends::Assigned,
    /// Records waiting (for the registry), per paused partition, in offset order.
    held: HashMap<u32, Held>,
    /// Records taken from the consumer for partitions running ahead of the clock, not yet
    /// processed, in offset order (see `pace_inputs`).
    paced: HashMap<u32, VecDeque<rdkafka::message::OwnedMessage>>,
    /// Paced partitions with [`PACED_RECORDS_MAX`] records waiting: paused in the consumer.
    paced_in_client: HashSet<u32>,
    /// Partitions within the read-ahead again whose waiting records are to be processed.
    replay: BTreeSet<u32>,
    retry_tx: mpsc::Sender<Retry>,
    /// Input is paused because outputs wait beyond the emitter's channel: the pipeline
    /// takes no records from the consumer (see [`OUTPUT_WAIT_IN_CLIENT`]).
    paused_for_output: bool,
    /// The output wait lasted beyond [`OUTPUT_WAIT_IN_CLIENT`]: the input partitions are
    /// paused in the consumer too, which is polled again.
    paused_in_client: bool,
    signal_kinds: SignalKinds,
    /// Kafka reachability and missing input topics (breach evidence).
    health: crate::ingest::health::InputHealth,
    /// Since when input is paused for outputs.
    paused_since: Option<Instant>,
    /// Stalled partitions by topic, as the last clock reading said (`topic[p]: reason`).
    stalled: HashMap<String, Vec<String>>,
    stalled_ids: BTreeSet<u32>,
    live: bool,
    /// Records not read yet, per assigned input partition (for the API).
    input_lag: HashMap<u32, u64>,
    /// Batch workflows (see `batch`).
    batches: crate::batch::glue::BatchRuntime,
    /// Per-record path state reused across records.
    hot: Hot,
    /// With transactions: the output sequence number the open transaction began after.
    txn_started_at: u64,
    /// With transactions: alerts submitted before the open transaction began.
    txn_alerts: u64,
    /// `store.repartition`: stage events go through the stages topic (see `routed`).
    route: Option<routed::Route>,
    /// When the last transaction was asked to commit.
    last_checkpoint: Instant,
    /// When the clock was last advanced between ticks (see [`CLOCK_EVERY`]).
    last_clock: Instant,
    /// With `store.repartition`: partitions were revoked (see `Ended::Rebalanced`).
    revoked: bool,
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(topology: Topology, shutdown: CancellationToken) -> Result<(), RunError> {
    run_on(topology, None, shutdown).await
}

/// [`run`], serving the API on `bound` — a socket already listening on
/// `service.http_listen` — when given (so a caller can ask for port 0 and print the port
/// chosen, with no window for another process to take it).
pub async fn run_on(
    topology: Topology,
    bound: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = crate::telemetry::install().map_err(RunError::Metrics)?;
    let topology = Arc::new(topology);
    let masker = match &topology.masking.key_env {
        Some(var)
            if topology.masking.correlation_ids || !topology.masking.dimensions.is_empty() =>
        {
            let key = std::env::var(var).map_err(|_| RunError::MaskKey(var.clone()))?;
            Masker::new(Some(key.into_bytes()))
        }
        _ => Masker::off(),
    };
    // Checked before anything is served: a topology the engine refuses stops the start.
    Engine::new(&Rules::engine_config(&topology)).map_err(|e| RunError::Engine(e.to_string()))?;

    let mut api = ApiState::new(Some(metrics), topology.registry.is_some());
    let mut backlogged: Arc<dyn Fn() -> Vec<Backlogged> + Send + Sync> = Arc::new(Vec::new);
    let mut backlog_task = None;
    if !topology.backlog.groups.is_empty() {
        let monitor = crate::backlog::BacklogMonitor::new(
            crate::backlog::MonitorConfig::from_topology(&topology),
        )
        .map_err(|e| RunError::Kafka(format!("backlog monitor: {e}")))?;
        let handle = monitor.handle();
        handle.attach(&mut api);
        backlogged = Arc::new(move || handle.backlogged());
        let token = shutdown.clone();
        backlog_task = Some(tokio::spawn(async move {
            if let Err(e) = monitor.run(token).await {
                tracing::error!(error = %e, "backlog monitor stopped");
            }
        }));
    }
    let addr = topology.service.http_listen;
    let bound = crate::auth::serve_api(&topology, bound, api.clone(), shutdown.clone())
        .await
        .map_err(|e| RunError::Http {
            addr: addr.to_string(),
            why: e.to_string(),
        })?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz and /api/v1");
    spawn_registry_probe(&topology, api.clone(), shutdown.clone());

    series::preregister(&topology, &SignalKinds::new(&topology));
    // Kafka's reachability (and refused credentials) shows in /readyz from here on.
    crate::ingest::health::spawn_probe(&topology, api.ready.inputs.clone(), shutdown.clone());
    crate::ingest::membership::spawn_member_watch(&topology, shutdown.clone());

    let ended = loop {
        match run_pipeline(
            topology.clone(),
            masker.clone(),
            api.clone(),
            backlogged.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(Ended::Stopped) => break Ok(()),
            // Partitions moved to another instance while outputs of this one were not
            // committed: what was not committed is dropped (its producer is fenced by the
            // next one) and the pipeline starts again from the committed state, as a
            // restarted process would, without leaving the group (static membership).
            Ok(Ended::Rebalanced) => {
                tracing::info!("partitions moved to another instance: the pipeline goes on from the committed state of those it keeps");
                metrics::counter!(names::PIPELINE_RESTARTS_TOTAL).increment(1);
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(task) = backlog_task {
        let _ = tokio::time::timeout(topology.service.shutdown_timeout, task).await;
    }
    tracing::info!("stopped");
    ended
}

/// How one run of the pipeline ended.
enum Ended {
    /// Stopped on request, after the last commit.
    Stopped,
    /// Partitions were revoked (see `routed`), or the outputs since the last commit were
    /// dropped because the group moved on before they committed (see
    /// `emit::emitter::Transactional`): nothing more was committed; start again.
    Rebalanced,
}

/// One run of the pipeline: restore, read, process, emit, until it is stopped or (with
/// `store.repartition`) partitions are revoked.
async fn run_pipeline(
    topology: Arc<Topology>,
    masker: Masker,
    api: ApiState,
    backlogged: Arc<dyn Fn() -> Vec<Backlogged> + Send + Sync>,
    shutdown: CancellationToken,
) -> Result<Ended, RunError> {
    let mut engine = Engine::new(&Rules::engine_config(&topology))
        .map_err(|e| RunError::Engine(e.to_string()))?;
    engine.open_lag_interval(wall_ms());
    let outputs = Arc::new(Outputs::new(&topology).map_err(|e| RunError::Kafka(e.to_string()))?);
    outputs.learn_record_limits(&topology).await;
    let signal_kinds = SignalKinds::new(&topology);
    let mut outcomes = Outcomes::new(topology.clone(), masker);
    // State first, input after: nothing may be processed on a partial state. A cluster
    // that cannot be reached (or refuses the credentials) is retried, never given up:
    // /readyz says why meanwhile.
    let mut stages_partitions = 0;
    let durable = if topology.store.durable {
        let mut state = state::DurableState::new(&topology);
        let _errors = crate::ingest::health::ErrorWatch::start(&topology, api.ready.inputs.clone());
        let mut backoff = Duration::from_secs(1);
        // With transactions, the output producer registers first: that fences an earlier
        // process of this instance (a zombie can no longer commit behind the restore) and
        // aborts what it left open.
        let mut registered = !topology.store.exactly_once;
        loop {
            if !registered {
                match tokio::task::block_in_place(|| {
                    outputs.txn_init(crate::emit::emitter::TXN_CALL_TIMEOUT)
                }) {
                    Ok(()) => registered = true,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "the output producer's transactional id is not registered; input is not read until it is");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(Ended::Stopped),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            let attempt = match state.create_topic(&topology, &api.ready.inputs).await {
                Ok(()) => tokio::task::block_in_place(|| {
                    // With `store.repartition` each stages partition's owner restores its
                    // own changelog partition when it is assigned (see `routed`).
                    let only: Option<&[i32]> = topology.store.repartition.then_some(&[]);
                    state.restore_partitions(
                        &topology,
                        &mut engine,
                        &mut |w, id| outcomes.restore_open_breach(w, id),
                        wall_ms(),
                        only,
                    )
                }),
                Err(e) => Err(e),
            };
            let attempt = match attempt {
                Ok(_) if topology.store.repartition => state
                    .create_stages_topic(&topology, &api.ready.inputs)
                    .await
                    .map(|n| stages_partitions = n),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => break,
                Err(e) => {
                    // The next attempt starts from nothing: what this one restored in
                    // part would otherwise be restored twice.
                    engine = Engine::new(&Rules::engine_config(&topology))
                        .map_err(|e| RunError::Engine(e.to_string()))?;
                    engine.open_lag_interval(wall_ms());
                    state = state::DurableState::new(&topology);
                    tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "durable state not restored; input is not read until it is");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Ended::Stopped),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        outcomes.track_ended();
        Some(state)
    } else {
        None
    };

    let shared = Arc::new(Shared {
        health: api.ready.inputs.clone(),
        offsets_in_transactions: topology.store.exactly_once,
        ..Shared::default()
    });
    // synclag's defaults, then the user's kafka.properties, then what correctness needs
    // (config::kafka has the table).
    let mut cfg = crate::config::kafka::consumer_config(&topology);
    for (key, value) in crate::ingest::membership::consumer_settings(&topology) {
        cfg.set(key, value);
    }
    let consumer: StreamConsumer<IngestContext> = cfg
        .create_with_context(IngestContext {
            shared: shared.clone(),
        })
        .map_err(|e| RunError::Kafka(e.to_string()))?;
    let stages_topic = topology.stages_topic();
    let mut topics: Vec<&str> = topology.streams.iter().map(|s| s.topic.as_str()).collect();
    if topology.store.repartition {
        topics.push(&stages_topic);
    }
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Kafka(e.to_string()))?;

    // The end-offset prober stops with the pipeline, not with the first signal: it is
    // needed until the last commit.
    let stop_prober = CancellationToken::new();
    let assigned: ends::Assigned = Arc::new(Mutex::new(Vec::new()));
    let mut ends_rx = {
        let mut probe_cfg = crate::config::kafka::admin_config(&topology);
        probe_cfg.set("isolation.level", "read_committed");
        ends::spawn(probe_cfg, assigned.clone(), stop_prober.clone())
            .map_err(|e| RunError::Kafka(format!("end-offset reader: {e}")))?
    };
    let (retry_tx, mut retry_rx) = mpsc::channel(1_024);

    let mut batches = crate::batch::glue::BatchRuntime::new(&topology, api.batches.clone());
    match batches.restore(&topology).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            workflows = n,
            topic = batches.state_topic(),
            "batch runs restored"
        ),
        Err(e) => {
            metrics::counter!(names::BATCH_STATE_ERRORS_TOTAL, "stage" => "restore").increment(1);
            tracing::error!(error = %e, topic = batches.state_topic(), "batch runs not restored; runs before this start are not followed");
        }
    }
    // With transactions, how the emitter replaces a fenced producer.
    let transactions = topology.store.exactly_once.then(|| {
        let t = topology.clone();
        crate::emit::emitter::Transactional {
            factory: Arc::new(move || Outputs::new(&t)),
            bound_to_offsets: topology.store.repartition,
        }
    });
    let mut p = Pipeline {
        signal_kinds,
        health: api.ready.inputs.clone(),
        paused_since: None,
        rules: Rules::new(&topology),
        decoder: Arc::new(Decoder::new(&topology)),
        engine,
        clock: InputClock::new(millis(topology.service.idle_partition)),
        offsets: OffsetTracker::default(),
        gate: CommitGate::default(),
        signals: SignalBook::new(topology.store.max_pending.clamp(1_000, 1_000_000)),
        outcomes,
        state: durable,
        emitter: Emitter::start(outputs.clone(), &topology.outputs, transactions),
        shared: shared.clone(),
        api,
        backlogged,
        incident_series: series::incident_series(&topology),
        out: Vec::new(),
        last_committed: HashMap::new(),
        max_window_ms: topology
            .workflows
            .iter()
            .map(|w| millis(w.window))
            .max()
            .unwrap_or(0),
        assigned,
        held: HashMap::new(),
        paced: HashMap::new(),
        paced_in_client: HashSet::new(),
        replay: BTreeSet::new(),
        retry_tx,
        paused_for_output: false,
        paused_in_client: false,
        stalled: HashMap::new(),
        stalled_ids: BTreeSet::new(),
        live: false,
        input_lag: HashMap::new(),
        batches,
        hot: Hot::default(),
        txn_started_at: 0,
        txn_alerts: 0,
        route: topology.store.repartition.then(|| {
            routed::Route::new(
                &topology,
                stages_partitions,
                millis(topology.service.idle_partition),
            )
        }),
        last_checkpoint: Instant::now(),
        last_clock: Instant::now(),
        revoked: false,
        topology: topology.clone(),
    };
    p.route_inputs(&consumer);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_publish = Instant::now();
    let mut last_lag = Instant::now();
    let mut last_summary = Instant::now();
    let mut failed: Option<String> = None;
    let mut busy = busy::Busy::new(Instant::now());
    loop {
        if p.replay_due() {
            let t = Instant::now();
            p.replay_paced(&consumer).await;
            busy.spent(busy::Activity::Records, t);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(ends) = ends_rx.recv() => {
                let t = Instant::now();
                p.on_ends(&ends);
                p.advance_clock(&consumer);
                busy.spent(busy::Activity::Ends, t);
            }
            Some(retry) = retry_rx.recv() => {
                let t = Instant::now();
                p.on_retry(retry, &consumer).await;
                busy.spent(busy::Activity::Retries, t);
            }
            _ = tick.tick() => {
                let t = Instant::now();
                p.tick(&consumer);
                if let Some(why) = p.emitter.rolled_back() {
                    tracing::warn!(error = %why, "outputs since the last commit were dropped; the pipeline starts again from the committed state");
                    p.revoked = true;
                }
                if p.revoked {
                    // Nothing more is committed, not even a commit asked for before: the
                    // emitter stops first, then the next run fences this producer, which
                    // aborts the open transaction (see `Ended::Rebalanced`).
                    stop_prober.cancel();
                    p.emitter.retire().await;
                    return Ok(Ended::Rebalanced);
                }
                if last_publish.elapsed() >= PUBLISH_EVERY {
                    last_publish = Instant::now();
                    busy.publish(last_publish);
                    p.publish();
                    p.batch_publish();
                    p.checkpoint(&consumer);
                    p.commit(&consumer, CommitMode::Async);
                } else if p.transaction_due() {
                    p.checkpoint(&consumer);
                }
                if let Some(why) = p.emitter.fatal() {
                    failed = Some(why.to_string());
                    break;
                }
                if last_lag.elapsed() >= p.topology.service.lag_interval {
                    last_lag = Instant::now();
                    p.emit_lag();
                }
                if last_summary.elapsed() >= LOG_SUMMARY_EVERY {
                    last_summary = Instant::now();
                    p.outcomes.log_summary();
                }
                busy.spent(busy::Activity::Tick, t);
            }
            // While outputs hold input back (and not yet for long), the clock, the
            // timers and the check for outputs moving again run at the records' pace.
            _ = tokio::time::sleep(CLOCK_EVERY), if p.holding_input() => {
                if let Some(t) = p.advance_clock_when_due(Instant::now(), &consumer) {
                    busy.spent(busy::Activity::Tick, t);
                }
            }
            msg = consumer.recv(), if !p.holding_input() => match msg {
                Ok(m) => {
                    let t = Instant::now();
                    p.on_message(&m, &consumer).await;
                    let now = busy.spent(busy::Activity::Records, t);
                    // While a backlog is read the clock follows the records: advanced
                    // only at the tick, every partition that ran ahead would wait there
                    // for the slowest one to be read, and reading would go at the pace
                    // of the tick rather than of the records.
                    if let Some(t) = p.advance_clock_when_due(now, &consumer) {
                        busy.spent(busy::Activity::Tick, t);
                    }
                }
                // Missing topics and broker outages are reported once per change by
                // ingest::health; librdkafka repeats them on every retry.
                Err(e) if crate::ingest::health::is_reported_by_health(&e) => {
                    tracing::debug!(error = %e, "consumer error");
                }
                // The consumer cannot go on (e.g. fenced: another process joined with
                // this instance's group.instance.id). Reading nothing while looking alive
                // would be silence: stop with an error instead.
                Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                    failed = Some(format!("input consumer: {e} (another process may run with this service.instance_id)"));
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            },
        }
    }

    busy.log_run();
    if let Some(why) = failed {
        // Outputs can no longer be written: nothing is committed; the open transaction
        // is aborted by the broker and the next start goes on from the last commit.
        stop_prober.cancel();
        tracing::error!(error = %why, "stopping: outputs cannot be written");
        return Err(RunError::Kafka(why));
    }
    if p.emitter.rolled_back().is_some() {
        // Outputs since the last commit were dropped: nothing more may be committed; the
        // next start goes on from the committed state.
        stop_prober.cancel();
        p.emitter.retire().await;
        tracing::info!(
            "stopped without a last commit: the outputs since the previous one were dropped"
        );
        return Ok(Ended::Stopped);
    }
    // Stop fetching, emit what is still held, wait for every output, then commit.
    tracing::info!("shutting down: draining outputs, then committing offsets");
    let deadline = Instant::now() + p.topology.service.shutdown_timeout;
    p.pause_all(&consumer);
    p.tick(&consumer);
    p.release(true);
    // The open lag interval ends here: summarised now, not lost with the process.
    p.emit_lag();
    p.publish();
    if p.state.is_some() {
        // The last cut goes out once everything before it is acknowledged (with
        // transactions: in the last transaction, with the offsets).
        p.checkpoint(&consumer);
        p.emitter.wait_acked(p.emitter.submitted(), deadline).await;
        p.flush_state();
    }
    let drained = p.emitter.drain(deadline).await;
    if !drained {
        tracing::warn!(
            unacknowledged = p.emitter.submitted() - p.emitter.acked_through(),
            "outputs not all acknowledged before the shutdown timeout; offsets stay behind them and the records are re-read after the restart"
        );
    }
    p.commit(&consumer, CommitMode::Sync);
    stop_prober.cancel();
    consumer.unsubscribe();
    Ok(Ended::Stopped)
}

/// Keeps `/readyz` honest about the registry: probes it every few seconds.
fn spawn_registry_probe(topology: &Topology, api: ApiState, shutdown: CancellationToken) {
    let Some(reg) = topology.registry.clone() else {
        return;
    };
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(reg.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the registry probe client");
                return;
            }
        };
        loop {
            let mut req = client.get(format!("{}/subjects", reg.url));
            if let Some(user) = &reg.username {
                let pw = reg
                    .password_env
                    .as_ref()
                    .and_then(|v| std::env::var(v).ok());
                req = req.basic_auth(user, pw);
            }
            let ok = matches!(req.send().await, Ok(r) if r.status().is_success());
            api.ready.registry_ok.store(ok, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(if ok { 10 } else { 2 })) => {}
            }
        }
    });
}

impl Pipeline {
    /// Outputs hold input back, and not yet for long: no records are taken from the
    /// consumer, whose partitions are not paused (see [`OUTPUT_WAIT_IN_CLIENT`]).
    fn holding_input(&self) -> bool {
        self.paused_for_output && !self.paused_in_client
    }

    /// The engine clock (with `store.repartition`, the earliest of the tasks').
    fn engine_now(&self) -> i64 {
        match &self.route {
            Some(route) => route.now(),
            None => self.engine.now(),
        }
    }

    /// Context for turning outcomes into events, as of now.
    fn release(&mut self, all: bool) {
        let backlogged = (self.backlogged)();
        // A configured topic that does not exist is evidence like a stalled partition.
        let missing = self.health.missing_topics();
        let with_missing;
        let stalled = if missing.is_empty() {
            &self.stalled
        } else {
            let mut all = self.stalled.clone();
            for topic in missing {
                let why = format!("{topic}: topic_missing");
                all.entry(topic).or_default().push(why);
            }
            with_missing = all;
            &with_missing
        };
        let wall = wall_ms();
        let ctx = Context {
            signals: &self.signals,
            backlogged: &backlogged,
            stalled,
            wall_ms: wall,
        };
        let mut events = Vec::new();
        let clocks: Vec<(i32, i64)> = match &self.route {
            Some(route) => route
                .tasks
                .iter()
                .map(|(k, t)| (*k, t.engine.now()))
                .collect(),
            None => vec![(outcomes::DIRECT, self.engine.now())],
        };
        self.outcomes.release_lanes(&clocks, all, &ctx, &mut events);
        let events: Vec<Arc<crate::emit::events::BreachEvent>> =
            events.into_iter().map(Arc::new).collect();
        if !events.is_empty() {
            let mut recent = self.api.breaches.lock().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                recent.observe(ev);
            }
        }
        for ev in events {
            tracing::debug!(kind = %ev.kind, severity = %ev.severity, workflow = %ev.workflow, breach_id = %ev.breach_id, lag_ms = ev.lag_ms, cause = ?ev.probable_cause, "breach event");
            self.emitter.submit(Output::Breach(ev));
        }
        let mut incidents = Vec::new();
        self.outcomes
            .tick_incidents(self.engine_now(), wall, &mut incidents);
        for ev in incidents {
            tracing::info!(kind = %ev.kind, incident_id = %ev.incident_id, workflow = %ev.workflow, cause = %ev.probable_cause, slice = ?ev.slice, severity = %ev.severity, breached = ev.breached, route = ?ev.route, "incident");
            self.emitter.submit(Output::Incident(Box::new(ev)));
        }
        self.after_submit();
    }

    /// Outputs were submitted: move them on, and pause or resume input as they pile up.
    fn after_submit(&mut self) {
        self.emitter.pump();
        metrics::gauge!(names::OUTPUT_UNACKED)
            .set((self.emitter.submitted() - self.emitter.acked_through()) as f64);
    }

    fn take_outcomes(&mut self) {
        self.outcomes.take(&mut self.out, self.gate.generation());
    }

    /// End offsets arrived from the prober.
    fn on_ends(&mut self, ends: &Ends) {
        for (tp, end) in &ends.offsets {
            if let Some(task) = self
                .route
                .as_mut()
                .filter(|r| r.is_stages(&tp.0))
                .and_then(|r| r.tasks.get_mut(&tp.1))
            {
                task.stages_end = Some(*end);
                continue;
            }
            if let Some(id) = self.offsets.lookup(tp) {
                self.clock.end_offset(id, *end, ends.asked_at_ms);
            }
        }
    }

    /// Rebalance changes, consumer positions, the clock, held outcomes and back-pressure.
    fn tick(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let wall = wall_ms();
        let changes: Vec<(Tp, bool)> = std::mem::take(
            &mut *self
                .shared
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !changes.is_empty() {
            let mut new_tasks = Vec::new();
            for ((topic, partition), assigned) in changes {
                let id = self.offsets.id(&topic, partition);
                let tp = (topic, partition);
                if !assigned && self.route.is_some() {
                    // What this instance processed of a revoked partition since the last
                    // commit must not be committed (its new owner processes it again):
                    // the run ends without committing (see `Ended::Rebalanced`).
                    tracing::info!(partition = %format!("{}[{}]", tp.0, tp.1), "partition revoked");
                    self.revoked = true;
                }
                if self.route.as_ref().is_some_and(|r| r.is_stages(&tp.0)) {
                    // A stages partition: a task of its own, restored before its first
                    // stage is processed (see `routed`).
                    if assigned {
                        // Restored together below.
                        new_tasks.push(tp.1);
                    } else {
                        if let Some(route) = &mut self.route {
                            route.revoke(tp.1);
                        }
                        self.outcomes.drop_lane(tp.1);
                        if let Some(state) = &mut self.state {
                            state.revoke_partition(tp.1);
                        }
                        self.offsets.revoke(id);
                        self.gate.revoke(&tp);
                        if let Some(state) = &mut self.state {
                            state.revoke(&tp);
                        }
                        self.last_committed.remove(&tp);
                    }
                    continue;
                }
                if assigned {
                    self.clock.assign(id, wall);
                    for reason in ["record_waiting", "no_progress"] {
                        metrics::gauge!(names::INPUT_STALLED, "topic" => tp.0.clone(), "partition" => tp.1.to_string(), "reason" => reason).set(0.0);
                    }
                    if self.paused_in_client {
                        pause(consumer, std::slice::from_ref(&tp));
                    } else {
                        // A pause from an earlier assignment (for running ahead, say)
                        // must not outlive it.
                        resume(consumer, std::slice::from_ref(&tp));
                    }
                } else {
                    self.clock.revoke(id);
                    self.input_lag.remove(&id);
                    self.offsets.revoke(id);
                    self.gate.revoke(&tp);
                    if let Some(state) = &mut self.state {
                        state.revoke(&tp);
                    }
                    self.last_committed.remove(&tp);
                    self.paced.remove(&id);
                    self.paced_in_client.remove(&id);
                    self.replay.remove(&id);
                    if self.held.remove(&id).is_some() {
                        tracing::info!(partition = %format!("{}[{}]", tp.0, tp.1), "revoked while a record waited; the next owner reads it");
                    }
                }
            }
            if !new_tasks.is_empty() {
                self.ensure_tasks(&new_tasks, consumer);
                if self.paused_in_client {
                    let tps: Vec<Tp> = new_tasks
                        .iter()
                        .filter_map(|k| self.route.as_ref().map(|r| (r.topic.to_string(), *k)))
                        .collect();
                    pause(consumer, &tps);
                }
            }
            let list: Vec<Tp> = consumer
                .assignment()
                .map(|tpl| {
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect()
                })
                .unwrap_or_default();
            *self.assigned.lock().unwrap_or_else(|p| p.into_inner()) = list;
        }
        self.api.ready.assigned.store(
            self.shared.assigned.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let unrestored: Vec<i32> = self
            .route
            .as_ref()
            .map(|r| r.unrestored.iter().copied().collect())
            .unwrap_or_default();
        if !unrestored.is_empty() {
            self.ensure_tasks(&unrestored, consumer);
        }
        self.observe_positions(consumer, wall);
        self.advance_clock(consumer);
        self.route_progress(wall);
        self.flush_state();
        metrics::gauge!(names::OUTPUT_UNACKED)
            .set((self.emitter.submitted() - self.emitter.acked_through()) as f64);
        let held: usize = self.held.values().map(Held::len).sum();
        metrics::gauge!(names::INPUT_HELD_RECORDS).set(held as f64);
        let paced: usize = self.paced.values().map(VecDeque::len).sum();
        metrics::gauge!(names::INPUT_PACED_RECORDS).set(paced as f64);
    }

    /// Where the consumer stands on each partition beyond the records handed to us: past
    /// transaction markers and aborted records (its position), or at the committed offset
    /// or the log start when it has not delivered anything yet.
    fn observe_positions(&mut self, consumer: &StreamConsumer<IngestContext>, wall: i64) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        let stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        for e in positions.elements() {
            let tp = (e.topic().to_string(), e.partition());
            let Some(id) = self.offsets.lookup(&tp) else {
                continue;
            };
            // Records handed over but not processed yet (waiting for the registry or for
            // the clock) are not read as far as the clock is concerned.
            if self.held.contains_key(&id)
                || self.waits_for_clock(id)
                || !self.clock.is_assigned(id)
            {
                continue;
            }
            if let Offset::Offset(o) = e.offset() {
                self.clock.position(id, o, wall);
            }
            if let Some(s) = stats.get(&tp) {
                if s.committed_offset >= 0 {
                    self.clock.position(id, s.committed_offset, wall);
                }
                if s.fetch_offset >= 0 {
                    self.clock.fetched(id, s.fetch_offset, s.queued > 0, wall);
                }
            }
            if let Some((lo, hi)) = cached_watermarks(consumer.client(), &tp.0, tp.1) {
                if lo >= 0 {
                    self.clock.position(id, lo, wall);
                }
                if self.offsets.next_offset(id).is_none() && !self.last_committed.contains_key(&tp)
                {
                    // Nothing read yet: what may be committed is where reading starts.
                    let start = stats.get(&tp).map_or(-1, |s| s.committed_offset).max(lo);
                    metrics::gauge!(names::INPUT_OFFSET, "topic" => tp.0.clone(), "partition" => tp.1.to_string())
                        .set(start as f64);
                }
                let pos = self.offsets.next_offset(id).unwrap_or(lo).max(lo);
                let lag = (hi - pos).max(0);
                metrics::gauge!(names::INPUT_LAG_RECORDS, "topic" => tp.0.clone(), "partition" => tp.1.to_string())
                    .set(lag as f64);
                self.input_lag.insert(id, u64::try_from(lag).unwrap_or(0));
            }
        }
    }

    /// Between ticks: advances the clock once [`CLOCK_EVERY`] has passed, at `now`, since
    /// it last was here; returns `now` if it did (when the work started).
    fn advance_clock_when_due(
        &mut self,
        now: Instant,
        consumer: &StreamConsumer<IngestContext>,
    ) -> Option<Instant> {
        if now.saturating_duration_since(self.last_clock) < CLOCK_EVERY {
            return None;
        }
        self.last_clock = now;
        self.advance_clock(consumer);
        Some(self.last_clock)
    }

    /// Reads the clock, advances the engine and emits what is due.
    fn advance_clock(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let wall = wall_ms();
        if self.paused_for_output {
            // Our own pause is no stall (see `InputClock::paused_by_reader`).
            self.clock.paused_by_reader(wall);
            if let Some(route) = &mut self.route {
                route.paused_by_reader(wall);
            }
        }
        let mut reading = self.clock.read(wall);
        let routed = self.advance_tasks(wall);
        let tasks_advanced = routed.is_some();
        if let Some(engine_side) = routed {
            // The reader's clock paces and watches the inputs; the tasks follow what they
            // have read back from the stages topic. Both kinds of stall are evidence.
            for s in engine_side.stalled {
                if !reading.stalled.iter().any(|x| x.partition == s.partition) {
                    reading.stalled.push(s);
                }
            }
            reading.live &= engine_side.live;
            reading.now_ms = engine_side.now_ms;
        }
        self.note_stalls(&reading, wall);
        self.pace_inputs(consumer, wall);
        if reading.live != self.live {
            self.live = reading.live;
            if self.live {
                tracing::info!("caught up: the clock follows confirmed wall time");
            } else {
                tracing::info!("reading a backlog: the clock follows the event-time watermark");
            }
            metrics::gauge!(names::CLOCK_LIVE).set(if self.live { 1.0 } else { 0.0 });
        }
        if let Some(now) = reading.now_ms {
            if !tasks_advanced {
                self.engine.advance(now, &mut self.out);
            }
            self.batch_advance(now);
            metrics::gauge!(names::ENGINE_CLOCK_SECONDS).set(now as f64 / 1000.0);
        }
        self.take_outcomes();
        self.release(false);
        self.apply_backpressure(consumer);
    }

    /// Keeps the stalled-partition evidence and metrics current; logs changes.
    fn note_stalls(&mut self, reading: &Reading, wall: i64) {
        let ids: BTreeSet<u32> = reading.stalled.iter().map(|s| s.partition).collect();
        if ids == self.stalled_ids {
            return;
        }
        for gone in self.stalled_ids.difference(&ids) {
            if let Some(tp) = self.offsets.tp(*gone) {
                tracing::info!(partition = %format!("{}[{}]", tp.0, tp.1), "input partition moves again");
                for reason in ["record_waiting", "no_progress"] {
                    metrics::gauge!(names::INPUT_STALLED, "topic" => tp.0.clone(), "partition" => tp.1.to_string(), "reason" => reason).set(0.0);
                }
            }
        }
        self.stalled.clear();
        for s in &reading.stalled {
            let Some(tp) = self.offsets.tp(s.partition) else {
                continue;
            };
            let seconds = wall.saturating_sub(s.since_ms) / 1000;
            if !self.stalled_ids.contains(&s.partition) {
                tracing::warn!(partition = %format!("{}[{}]", tp.0, tp.1), reason = s.reason.as_str(), seconds, "input partition stalled: it no longer holds the clock back; breaches that may wait behind it say so");
            }
            metrics::gauge!(names::INPUT_STALLED, "topic" => tp.0.clone(), "partition" => tp.1.to_string(), "reason" => s.reason.as_str()).set(1.0);
            self.stalled.entry(tp.0.clone()).or_default().push(format!(
                "{}[{}]: {}",
                tp.0,
                tp.1,
                s.reason.as_str()
            ));
        }
        self.stalled_ids = ids;
    }

    /// While a backlog is read, holds back partitions whose record time runs more than
    /// [`READ_AHEAD_MS`] ahead of the clock, and processes them again once they are within
    /// half of it (see `InputClock::running_ahead`). Without it the reader follows
    /// librdkafka's fetch queue, where a partition could run tens of seconds of event
    /// time ahead of the slowest one, and every outcome it led to waited in memory for
    /// the clock. A held-back partition's records wait in the pipeline as they arrive
    /// (see `wait_for_clock`), up to [`PACED_RECORDS_MAX`].
    fn pace_inputs(&mut self, consumer: &StreamConsumer<IngestContext>, wall: i64) {
        for id in self.clock.running_ahead(READ_AHEAD_MS, wall) {
            let Some(tp) = self.offsets.tp(id) else {
                continue;
            };
            tracing::debug!(partition = %format!("{}[{}]", tp.0, tp.1), "input partition runs ahead of the clock: its records wait until the others catch up");
            self.clock.pace(id, true, wall);
            metrics::counter!(names::INPUT_PACED_TOTAL).increment(1);
        }
        for id in self.clock.caught_up(READ_AHEAD_MS / 2, wall) {
            self.clock.pace(id, false, wall);
            if self.paced.contains_key(&id) {
                self.replay.insert(id);
            }
            if !self.paced_in_client.remove(&id) {
                continue;
            }
            let Some(tp) = self.offsets.tp(id).cloned() else {
                continue;
            };
            // Paused for outputs or behind a waiting record, it stays paused for that.
            if !self.paused_in_client && !self.held.contains_key(&id) {
                resume(consumer, &[tp]);
            }
        }
        metrics::gauge!(names::INPUT_PACED).set(self.clock.paced() as f64);
    }

    /// Whether records of input partition `id` wait for the clock: it runs ahead, or
    /// records it ran ahead with are not processed yet.
    fn waits_for_clock(&self, id: u32) -> bool {
        self.clock.is_paced(id) || self.paced.contains_key(&id)
    }

    /// A record of a partition whose records wait for the clock: kept behind the others.
    /// At [`PACED_RECORDS_MAX`] the partition is paused in the consumer too.
    fn wait_for_clock(
        &mut self,
        id: u32,
        record: rdkafka::message::OwnedMessage,
        consumer: &StreamConsumer<IngestContext>,
    ) {
        let waiting = self.paced.entry(id).or_default();
        waiting.push_back(record);
        if waiting.len() >= PACED_RECORDS_MAX && self.paced_in_client.insert(id) {
            if let Some(tp) = self.offsets.tp(id).cloned() {
                tracing::debug!(partition = %format!("{}[{}]", tp.0, tp.1), waiting = PACED_RECORDS_MAX, "input partition far ahead of the clock: paused in the consumer");
                pause(consumer, &[tp]);
                metrics::counter!(names::INPUT_PACED_PAUSES_TOTAL).increment(1);
            }
        }
    }

    /// Whether partitions back within the read-ahead have records to process now.
    fn replay_due(&self) -> bool {
        !self.replay.is_empty() && !self.paused_for_output
    }

    /// Outputs pile up beyond the emitter's channel: stop reading input (the clock and
    /// the timers go on); resume once they have moved on.
    fn apply_backpressure(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let saturated = self.emitter.saturated();
        if saturated == self.paused_for_output {
            if saturated
                && !self.paused_in_client
                && self
                    .paused_since
                    .is_some_and(|since| since.elapsed() >= OUTPUT_WAIT_IN_CLIENT)
            {
                self.paused_in_client = true;
                tracing::warn!(
                    waited_s = OUTPUT_WAIT_IN_CLIENT.as_secs_f64(),
                    "outputs still wait for Kafka: input partitions paused in the consumer"
                );
                self.pause_all(consumer);
            }
            return;
        }
        self.paused_for_output = saturated;
        metrics::gauge!(names::INPUTS_PAUSED_FOR_OUTPUT).set(if saturated { 1.0 } else { 0.0 });
        let tps: Vec<Tp> = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if saturated {
            tracing::warn!("outputs wait for Kafka: input paused, timers keep running");
            self.paused_since = Some(Instant::now());
        } else {
            if let Some(since) = self.paused_since.take() {
                metrics::histogram!(names::OUTPUT_BACKPRESSURE_WAIT_SECONDS)
                    .record(since.elapsed().as_secs_f64());
            }
            tracing::info!("outputs moving again: input resumed");
            if !std::mem::take(&mut self.paused_in_client) {
                // Nothing was paused in the consumer for this wait.
                return;
            }
            // Partitions with a waiting record stay paused behind it, and those running
            // ahead of the clock until it catches up.
            let resumable: Vec<Tp> = tps
                .into_iter()
                .filter(|tp| {
                    self.offsets.lookup(tp).is_none_or(|id| {
                        !self.held.contains_key(&id) && !self.paced_in_client.contains(&id)
                    })
                })
                .collect();
            resume(consumer, &resumable);
        }
    }

    fn pause_all(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let tps: Vec<Tp> = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        pause(consumer, &tps);
    }

    /// With durable state, cuts the engine's changes with the offsets processed so far
    /// (see `state`): they reach the commit gate once written. With transactions the cut,
    /// every output before it and the offsets the gate lets through go in one transaction.
    fn checkpoint(&mut self, consumer: &StreamConsumer<IngestContext>) {
        if self.state.is_none() {
            return;
        }
        if self.topology.store.exactly_once {
            self.batch_persist();
        }
        let processed = self.offsets.committable(|_| None, i64::MAX);
        let clock = self.engine_now();
        let submitted = self.emitter.submitted();
        let Some(state) = &mut self.state else {
            return;
        };
        let mut engines: Vec<(Option<i32>, &mut Engine)> = match &mut self.route {
            Some(route) => route
                .tasks
                .iter_mut()
                .map(|(k, t)| (Some(*k), &mut t.engine))
                .collect(),
            None => vec![(None, &mut self.engine)],
        };
        state.cut_engines(
            &mut engines,
            &mut self.outcomes,
            processed,
            submitted,
            clock,
        );
        if !self.topology.store.exactly_once {
            self.flush_state();
            return;
        }
        // Everything submitted so far is in this transaction: the gate's barrier is met
        // once it commits.
        state.flush(u64::MAX, &mut self.emitter, &mut self.gate);
        let submitted = self.emitter.submitted();
        let offsets = self
            .gate
            .ready(self.outcomes.oldest_held_generation(), submitted, submitted)
            .unwrap_or_default();
        // All of them, not only those that moved: an aborted transaction drops its offsets.
        let offsets: Vec<(Tp, i64)> = offsets.into_iter().collect();
        self.note_committable(offsets.iter().cloned().collect());
        self.emitter.submit(Output::Commit(Box::new(Commit {
            offsets,
            group: consumer.group_metadata().map(Arc::new),
        })));
        self.txn_started_at = self.emitter.submitted();
        self.txn_alerts = self.emitter.alerts_submitted();
        self.last_checkpoint = Instant::now();
        self.after_submit();
    }

    /// With transactions, whether to commit before the second is up: a breach or incident
    /// event waits in the open transaction while the clock is live (alerts are visible to
    /// `read_committed` readers only once it commits: within a tick, not a second), or the
    /// outputs since the last commit request are many (they are kept in memory until it
    /// commits). While a backlog is read, alerts are about deadlines the clock reaches
    /// faster than wall time and wait for the second: a state cut and a commit per tick
    /// there cost more CPU than they save anyone time.
    fn transaction_due(&self) -> bool {
        self.topology.store.exactly_once
            && (self.live && self.emitter.alerts_submitted() > self.txn_alerts
                || self.emitter.submitted() - self.txn_started_at >= TRANSACTION_MAX_OUTPUTS
                || self.route.is_some()
                    && self.emitter.submitted() > self.txn_started_at
                    && self.last_checkpoint.elapsed() >= ROUTED_COMMIT_EVERY)
    }

    /// Offsets committed (or, with transactions, about to be): shown in the API and the
    /// offset gauge.
    fn note_committable(&mut self, committable: HashMap<Tp, i64>) {
        for (tp, off) in &committable {
            metrics::gauge!(names::INPUT_OFFSET, "topic" => tp.0.clone(), "partition" => tp.1.to_string()).set(*off as f64);
        }
        self.shared
            .committable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&committable);
        self.last_committed.extend(committable);
    }

    /// Writes the cuts whose earlier outputs are acknowledged.
    fn flush_state(&mut self) {
        let Some(state) = &mut self.state else {
            return;
        };
        let before = self.emitter.submitted();
        state.flush(
            self.emitter.acked_through(),
            &mut self.emitter,
            &mut self.gate,
        );
        if self.emitter.submitted() != before {
            self.after_submit();
        }
    }

    fn commit(&mut self, consumer: &StreamConsumer<IngestContext>, mode: CommitMode) {
        if self.topology.store.exactly_once {
            // Offsets travel in the output transactions (see `checkpoint`).
            return;
        }
        self.batch_persist();
        if self.state.is_none() {
            // Without durable state, a restart rebuilds pending correlations from input:
            // offsets stay behind every record a pending correlation was built from and
            // every record younger than the longest window.
            let engine = &self.engine;
            let cut = engine.now().saturating_sub(self.max_window_ms);
            let processed = self
                .offsets
                .committable(|id| engine.min_pinned_offset(id), cut);
            self.gate.offer(processed);
        }
        let Some(committable) = self.gate.ready(
            self.outcomes.oldest_held_generation(),
            self.emitter.submitted(),
            self.emitter.acked_through(),
        ) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (tp, off) in &committable {
            if self.last_committed.get(tp) != Some(off) || matches!(mode, CommitMode::Sync) {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*off));
            }
        }
        if tpl.count() == 0 {
            self.note_committable(committable);
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.note_committable(committable);
            }
            Err(e) => {
                // Shown as committable all the same; committed on the next attempt.
                self.shared
                    .committable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone_from(&committable);
                tracing::warn!(error = %e, "offset commit failed; will retry");
            }
        }
    }

    fn emit_lag(&mut self) {
        let now = wall_ms();
        let snapshots = match &mut self.route {
            // One summary per owned stages partition and series: each counts the
            // completions of its own keys (consumers add them up, see the README).
            Some(route) => route
                .tasks
                .values_mut()
                .flat_map(|t| t.engine.lag_snapshot(now))
                .collect(),
            None => self.engine.lag_snapshot(now),
        };
        let summaries: Vec<LagSummary> = snapshots
            .into_iter()
            .map(|s| self.outcomes.shown_lag(LagSummary::from_snapshot(s, now)))
            .collect();
        if summaries.is_empty() {
            return;
        }
        self.emitter.submit(Output::Lag(summaries));
        self.after_submit();
    }

    fn publish(&self) {
        let c = match &self.route {
            Some(route) => {
                let mut c = route.retired;
                for t in route.tasks.values() {
                    c += t.engine.counters();
                }
                c
            }
            None => self.engine.counters(),
        };
        metrics::counter!(names::DUPLICATES_TOTAL).absolute(c.duplicates);
        metrics::counter!(names::STAGES_AFTER_COMPLETION_TOTAL).absolute(c.after_completion);
        metrics::counter!(names::DIMENSION_OVERFLOW_TOTAL).absolute(c.dimension_overflow);
        metrics::counter!(names::HELD_STAGES_TOTAL).absolute(c.held_early);
        metrics::counter!(names::HELD_EXPIRED_TOTAL).absolute(c.held_expired);
        metrics::counter!(names::STAGES_BEYOND_WINDOW_TOTAL).absolute(c.beyond_window);
        metrics::counter!(names::NEGATIVE_LAGS_TOTAL).absolute(c.negative_lags);
        metrics::counter!(names::RECENT_FORGOTTEN_TOTAL).absolute(c.recent_forgotten);
        metrics::counter!(names::TIERS_AFTER_WINDOW_TOTAL).absolute(c.tiers_after_window);
        let recent = match &self.route {
            Some(route) => route.tasks.values().map(|t| t.engine.recent_len()).sum(),
            None => self.engine.recent_len(),
        };
        metrics::gauge!(names::RECENT_CORRELATIONS).set(recent as f64);
        if let Some(route) = &self.route {
            metrics::gauge!(names::OWNED_STAGES_PARTITIONS).set(route.tasks.len() as f64);
        }
        metrics::counter!(names::SIGNALS_FORGOTTEN_TOTAL).absolute(self.signals.forgotten());
        metrics::counter!(names::EVIDENCE_FORGOTTEN_TOTAL)
            .absolute(self.outcomes.evidence_forgotten());
        metrics::gauge!(names::EVIDENCE_ENTRIES).set(self.outcomes.evidence_entries() as f64);
        self.outcomes.publish_incidents(&self.incident_series);
        let clock = match self.engine_now() {
            i64::MIN => wall_ms(),
            t => t,
        };
        let mut stalled: Vec<String> = self.stalled.values().flatten().cloned().collect();
        stalled.sort();
        let pending = match &self.route {
            Some(route) => route.pending_status(self.topology.store.oldest_n),
            None => self.engine.pending_status(),
        };
        let mut snapshot = status::snapshot(
            &self.topology,
            pending,
            &self.outcomes,
            clock,
            self.live,
            stalled,
        );
        snapshot.observed_at_ms = wall_ms();
        snapshot.input_lag_records = self.input_lag.values().sum();
        let mut inputs: Vec<String> = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|tp| !self.route.as_ref().is_some_and(|r| r.is_stages(&tp.0)))
            .map(|(t, p)| format!("{t}[{p}]"))
            .collect();
        inputs.sort();
        snapshot.owned_partitions = crate::emit::http::OwnedPartitions {
            inputs,
            stages: self
                .route
                .as_ref()
                .map(|r| r.tasks.keys().copied().collect())
                .unwrap_or_default(),
        };
        match self.api.status.write() {
            Ok(mut g) => *g = snapshot,
            Err(p) => *p.into_inner() = snapshot,
        }
    }
}

fn partition_list(tps: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    tpl
}

fn pause(consumer: &StreamConsumer<IngestContext>, tps: &[Tp]) {
    if tps.is_empty() {
        return;
    }
    if let Err(e) = consumer.pause(&partition_list(tps)) {
        tracing::warn!(error = %e, "cannot pause input partitions");
    }
}

fn resume(consumer: &StreamConsumer<IngestContext>, tps: &[Tp]) {
    if tps.is_empty() {
        return;
    }
    if let Err(e) = consumer.resume(&partition_list(tps)) {
        tracing::warn!(error = %e, "cannot resume input partitions");
    }
}
