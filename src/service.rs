//! `synclag run`: wires ingest → decode → rules → correlate → emit, plus the HTTP API.
//!
//! One pipeline task owns the engine (no locks on the hot path). It reads records,
//! feeds the engine, ticks the clock every 200 ms, publishes snapshots for the API
//! once a second, and commits offsets that never pass a pending correlation.
//! Breach events go through a bounded channel to an emitter task (back-pressure, not
//! loss, when Kafka is slow); dead letters are delivered before their offset counts
//! as processed.

use crate::config::duration::millis;
use crate::config::{LagSegment, Topology};
use crate::correlate::{
    Engine, Origin, Outcome, OutcomeKind, StageSet, Tier, Watermarks, AGE_BUCKET_LABELS,
};
use crate::decode::{Decoder, RecordView};
use crate::emit::events::{BreachEvent, LagSummary};
use crate::emit::http::{self, ApiState, PendingItem, Quantiles, StatusSnapshot, WorkflowStatus};
use crate::emit::producer::{client_config, Outputs};
use crate::ingest::{
    cached_watermarks, caught_up, IngestContext, OffsetTracker, PartitionStats, Shared, Tp,
};
use crate::rules::{self, Evidence, Masker, Rules, SignalBook};
use crate::telemetry::names;
use hdrhistogram::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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

/// A partner delay worth remembering for cause attribution (below this, it is noise).
const PARTNER_DELAY_NOTABLE_MS: i64 = 1_000;
const TICK: Duration = Duration::from_millis(200);
/// A partition that was caught up less than this long ago still counts as caught up.
const LIVE_TOLERANCE_MS: i64 = 1_000;
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Per-workflow counts and end-to-end lag for the API.
struct WorkflowStats {
    completed: u64,
    warn: u64,
    critical: u64,
    never_arrived: u64,
    late: u64,
    end_to_end: Option<Histogram<u64>>,
}

/// Everything the pipeline task owns.
struct Pipeline {
    topology: Arc<Topology>,
    rules: Rules,
    decoder: Decoder,
    engine: Engine,
    watermarks: Watermarks,
    offsets: OffsetTracker,
    signals: SignalBook,
    masker: Masker,
    outputs: Arc<Outputs>,
    breach_tx: mpsc::Sender<BreachEvent>,
    shared: Arc<Shared>,
    api: ApiState,
    stats: Vec<WorkflowStats>,
    /// Correlations with an open breach, so their completion is announced as `resolved`.
    open_breaches: HashSet<(usize, Box<[u8]>)>,
    /// Notable partner delays (t1 − t0) of pending correlations' start records.
    partner_delay: HashMap<(usize, Box<[u8]>), i64>,
    backlogged: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    out: Vec<Outcome>,
    last_committed: HashMap<Tp, i64>,
    /// The longest workflow window: records younger than this are never committed past.
    max_window_ms: i64,
    /// Delivery of the last lag summaries.
    lag_task: Option<tokio::task::JoinHandle<()>>,
    /// Largest record time seen per input partition.
    max_record_ts: HashMap<u32, i64>,
    /// Wall time each input partition was last seen at its end.
    last_caught_up: HashMap<u32, i64>,
    /// Whether the engine clock follows the wall clock (all partitions caught up).
    live: bool,
    /// Events raised since the last flush to the emitter.
    to_emit: Vec<BreachEvent>,
    /// Outcomes waiting for the engine clock to pass their time (see `drain_outcomes`).
    deferred: std::collections::VecDeque<(i64, Outcome)>,
}

/// Runs the service until `shutdown` is cancelled; returns the address the HTTP server bound.
pub async fn run(topology: Topology, shutdown: CancellationToken) -> Result<(), RunError> {
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
    let engine = Engine::new(&Rules::engine_config(&topology))
        .map_err(|e| RunError::Engine(e.to_string()))?;
    let outputs = Arc::new(Outputs::new(&topology).map_err(|e| RunError::Kafka(e.to_string()))?);

    let mut api = ApiState::new(Some(metrics), topology.registry.is_some());
    let mut backlogged: Arc<dyn Fn() -> Vec<String> + Send + Sync> = Arc::new(Vec::new);
    let mut backlog_task = None;
    if !topology.backlog.groups.is_empty() {
        let monitor = crate::backlog::BacklogMonitor::new(
            crate::backlog::MonitorConfig::from_topology(&topology),
        )
        .map_err(|e| RunError::Kafka(format!("backlog monitor: {e}")))?;
        let handle = monitor.handle();
        handle.attach(&mut api);
        backlogged = Arc::new(move || handle.backlogged_groups());
        let token = shutdown.clone();
        backlog_task = Some(tokio::spawn(async move {
            if let Err(e) = monitor.run(token).await {
                tracing::error!(error = %e, "backlog monitor stopped");
            }
        }));
    }
    let addr = topology.service.http_listen;
    let bound = http::serve(addr, api.clone(), shutdown.clone())
        .await
        .map_err(|e| RunError::Http {
            addr: addr.to_string(),
            why: e.to_string(),
        })?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz and /api/v1");
    spawn_registry_probe(&topology, api.clone(), shutdown.clone());

    let shared = Arc::new(Shared::default());
    let mut cfg = client_config(&topology);
    cfg.set("group.id", &topology.service.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000")
        // Breaches are judged on the wall clock: records must not idle in a fetch request.
        .set("fetch.wait.max.ms", "100")
        .set("partition.assignment.strategy", "cooperative-sticky");
    let consumer: StreamConsumer<IngestContext> = cfg
        .create_with_context(IngestContext {
            shared: shared.clone(),
        })
        .map_err(|e| RunError::Kafka(e.to_string()))?;
    let topics: Vec<&str> = topology.streams.iter().map(|s| s.topic.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Kafka(e.to_string()))?;
    spawn_member_watch(&topology, shutdown.clone());

    let (breach_tx, breach_rx) = mpsc::channel(10_000);
    let emitter = tokio::spawn(emit_breaches(outputs.clone(), breach_rx));

    let stats = topology
        .workflows
        .iter()
        .map(|_| WorkflowStats {
            completed: 0,
            warn: 0,
            critical: 0,
            never_arrived: 0,
            late: 0,
            end_to_end: Histogram::new(3).ok(),
        })
        .collect();
    metrics::gauge!(names::STORE_CAPACITY).set(topology.store.max_pending as f64);
    let mut p = Pipeline {
        rules: Rules::new(&topology),
        decoder: Decoder::new(&topology),
        engine,
        watermarks: Watermarks::new(millis(topology.service.idle_partition)),
        offsets: OffsetTracker::default(),
        signals: SignalBook::new(topology.store.max_pending.clamp(1_000, 1_000_000)),
        masker,
        outputs: outputs.clone(),
        breach_tx,
        shared: shared.clone(),
        api,
        stats,
        open_breaches: HashSet::new(),
        partner_delay: HashMap::new(),
        backlogged,
        out: Vec::new(),
        last_committed: HashMap::new(),
        lag_task: None,
        max_record_ts: HashMap::new(),
        last_caught_up: HashMap::new(),
        live: false,
        deferred: std::collections::VecDeque::new(),
        to_emit: Vec::new(),
        max_window_ms: topology
            .workflows
            .iter()
            .map(|w| millis(w.window))
            .max()
            .unwrap_or(0),
        topology: topology.clone(),
    };

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_publish = Instant::now();
    let mut last_lag = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                p.tick(&consumer);
                p.flush_events().await;
                if last_publish.elapsed() >= PUBLISH_EVERY {
                    last_publish = Instant::now();
                    p.publish();
                    p.commit(&consumer, CommitMode::Async);
                }
                if last_lag.elapsed() >= p.topology.service.lag_interval {
                    last_lag = Instant::now();
                    p.emit_lag();
                }
            }
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    p.handle(&m, &shutdown).await;
                    p.flush_events().await;
                }
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            },
        }
    }

    tracing::info!("shutting down: flushing outputs and committing offsets");
    let budget = p.topology.service.shutdown_timeout;
    // Evidence will not get more complete: emit what is still waiting.
    p.release_deferred(true);
    p.flush_events().await;
    p.publish();
    let deadline = Instant::now() + budget;
    p.commit(&consumer, CommitMode::Sync);
    // Closing the channel lets the emitter drain and stop.
    let Pipeline { breach_tx, .. } = p;
    drop(breach_tx);
    let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), emitter).await;
    if let Err(e) = outputs.flush(deadline.saturating_duration_since(Instant::now())) {
        tracing::warn!(error = %e, "outputs not fully flushed before the shutdown timeout");
    }
    consumer.unsubscribe();
    if let Some(task) = backlog_task {
        let _ =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Delivers breach events: many in flight at once (librdkafka keeps them in order per
/// partition), bounded so a stalled cluster applies back-pressure instead of memory growth.
async fn emit_breaches(outputs: Arc<Outputs>, mut rx: mpsc::Receiver<BreachEvent>) {
    use futures::stream::{FuturesUnordered, StreamExt};
    const MAX_IN_FLIGHT: usize = 10_000;
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            ev = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match ev {
                Some(ev) => match outputs.enqueue_breach(&ev).await {
                    Ok(delivery) => in_flight.push(delivery),
                    Err(e) => {
                        metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "breaches").increment(1);
                        tracing::error!(error = %e, breach_id = %ev.breach_id, "breach event could not be written");
                    }
                },
                None => open = false,
            },
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = result {
                    metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "breaches").increment(1);
                    tracing::error!(error = %e, "breach event not delivered within the producer's timeout");
                }
            }
        }
    }
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

/// Until scale-out exists, one instance owns the group: warn loudly when another joins.
fn spawn_member_watch(topology: &Topology, shutdown: CancellationToken) {
    let cfg = client_config(topology);
    let group = topology.service.group_id.clone();
    tokio::spawn(async move {
        let client: rdkafka::consumer::BaseConsumer = match cfg.create() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch group membership");
                return;
            }
        };
        let client = Arc::new(client);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
            let c = client.clone();
            let g = group.clone();
            let members = tokio::task::spawn_blocking(move || {
                c.fetch_group_list(Some(&g), Duration::from_secs(5))
                    .ok()
                    .and_then(|l| l.groups().first().map(|x| x.members().len()))
            })
            .await
            .ok()
            .flatten();
            if let Some(n) = members {
                metrics::gauge!(names::GROUP_MEMBERS).set(n as f64);
                if n > 1 {
                    tracing::error!(
                        members = n,
                        group = %group,
                        "another instance joined synclag's consumer group; correlation state is per instance, so stages split across instances will be reported as never arrived — run one instance per group"
                    );
                }
            }
        }
    });
}

impl Pipeline {
    async fn handle(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) {
        let headers: Vec<(String, Option<&[u8]>)> = m
            .headers()
            .map(|h| h.iter().map(|x| (x.key.to_string(), x.value)).collect())
            .unwrap_or_default();
        let record = RecordView {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            headers: &headers,
            timestamp_ms: m.timestamp().to_millis(),
        };
        metrics::counter!(names::RECORDS_CONSUMED_TOTAL, "topic" => record.topic.to_string())
            .increment(1);
        let pid = self.offsets.id(record.topic, record.partition);
        let wall = wall_ms();

        // Registry outages are retried with backoff: the partition waits, nothing is dropped.
        let mut backoff = Duration::from_millis(100);
        let decoded = loop {
            match self.decoder.decode(&record).await {
                Err(e) if e.is_retryable() => {
                    metrics::counter!(names::REGISTRY_RETRIES_TOTAL).increment(1);
                    tracing::warn!(error = %e, topic = record.topic, partition = record.partition, offset = record.offset, "registry unavailable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return, // not processed: re-read after restart
                        _ = tokio::time::sleep(backoff + jitter(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                other => break other,
            }
        };
        if let Some(t) = record.timestamp_ms {
            self.watermarks.observe(pid, t, wall);
            let seen = self.max_record_ts.entry(pid).or_insert(t);
            *seen = (*seen).max(t);
        }
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                metrics::counter!(names::DECODE_ERRORS_TOTAL, "topic" => record.topic.to_string(), "reason" => e.reason()).increment(1);
                self.dead_letter(&record, e.reason(), &e.to_string()).await;
                self.offsets
                    .processed(pid, record.offset, record.timestamp_ms);
                return;
            }
        };
        let stream = &self.topology.streams[decoded.stream];
        if stream.role == crate::config::Role::Signals {
            let kind = decoded
                .event_type
                .clone()
                .unwrap_or_else(|| "signal".into());
            metrics::counter!(names::SIGNALS_TOTAL, "stream" => stream.name.clone(), "kind" => kind.clone()).increment(1);
            self.signals
                .record(decoded.stream, &decoded.correlation_id, &kind);
            self.offsets
                .processed(pid, record.offset, record.timestamp_ms);
            return;
        }
        let events = self.rules.stage_events(
            &decoded,
            Origin {
                partition_id: pid,
                offset: record.offset,
            },
        );
        if events.is_empty() {
            metrics::counter!(names::UNMATCHED_RECORDS_TOTAL, "topic" => record.topic.to_string())
                .increment(1);
        }
        for ev in events {
            if ev.stage == 0 {
                if let (Some(t0), Some(t1)) = (ev.ts.source_event_ms, ev.ts.kafka_ms) {
                    if t1.saturating_sub(t0) >= PARTNER_DELAY_NOTABLE_MS {
                        self.partner_delay.insert(
                            (ev.workflow, ev.correlation_id.as_bytes().into()),
                            t1.saturating_sub(t0),
                        );
                    }
                }
            }
            if let Err(e) = self.engine.process(ev, &mut self.out) {
                metrics::counter!(names::REJECTED_EVENTS_TOTAL).increment(1);
                self.dead_letter(&record, "rejected", &e.to_string()).await;
            }
        }
        self.offsets
            .processed(pid, record.offset, record.timestamp_ms);
        self.drain_outcomes();
    }

    async fn dead_letter(&self, record: &RecordView<'_>, reason: &'static str, error: &str) {
        tracing::warn!(
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            reason,
            error,
            "record sent to the dead-letter topic"
        );
        let mut attempt = 0u32;
        loop {
            match self.outputs.dead_letter(record, reason, error).await {
                Ok(()) => {
                    metrics::counter!(names::DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
                    return;
                }
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "dead letter not delivered; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "dead_letter")
                        .increment(1);
                    tracing::error!(error = %e, "dead letter lost after retries");
                    return;
                }
            }
        }
    }

    fn tick(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let changes: Vec<(Tp, bool)> = std::mem::take(
            &mut *self
                .shared
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for ((topic, partition), assigned) in changes {
            let id = self.offsets.id(&topic, partition);
            if assigned {
                self.watermarks.assign(id);
            } else {
                self.watermarks.revoke(id);
                self.offsets.revoke(id);
            }
        }
        self.api.ready.assigned.store(
            self.shared.assigned.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let assignment = consumer.assignment().ok();
        {
            let stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tpl) = &assignment {
                for e in tpl.elements() {
                    let tp = (e.topic().to_string(), e.partition());
                    let id = self.offsets.id(&tp.0, tp.1);
                    // Fresh watermarks from fetch responses when the client has them,
                    // the statistics (at most a second old) otherwise.
                    let fresh =
                        cached_watermarks(consumer.client(), &tp.0, tp.1).map(|(lo, hi)| {
                            PartitionStats {
                                lo_offset: lo,
                                hi_offset: hi,
                                committed_offset: stats.get(&tp).map_or(-1, |s| s.committed_offset),
                            }
                        });
                    let s = fresh.as_ref().or(stats.get(&tp));
                    let now_wall = wall_ms();
                    let mut up = caught_up(s, self.offsets.next_offset(id));
                    if up {
                        self.last_caught_up.insert(id, now_wall);
                    } else if self
                        .last_caught_up
                        .get(&id)
                        .is_some_and(|t| now_wall.saturating_sub(*t) < LIVE_TOLERANCE_MS)
                    {
                        // Live traffic: the partition was at its end a moment ago and the
                        // records just fetched are new. Holding the clock at its last
                        // record (seconds old on a quiet partition) would delay breaches.
                        up = true;
                    }
                    self.watermarks.set_caught_up(id, up);
                    tracing::debug!(partition = %format!("{}[{}]", tp.0, tp.1), up, stats = ?s, next = ?self.offsets.next_offset(id), "partition position");
                    // A partition known to be behind is never idle, however long the
                    // consumer spends on other partitions; the idle timeout only covers
                    // partitions without statistics.
                    if s.is_some() && !up {
                        if let Some(t) = self.max_record_ts.get(&id) {
                            self.watermarks.observe(id, *t, wall_ms());
                        }
                    }
                    if let Some(s) = s {
                        let pos = self
                            .offsets
                            .next_offset(id)
                            .unwrap_or(s.committed_offset)
                            .max(s.committed_offset);
                        if s.hi_offset >= 0 && pos >= 0 {
                            metrics::gauge!(names::INPUT_LAG_RECORDS, "topic" => tp.0.clone(), "partition" => tp.1.to_string())
                                .set((s.hi_offset - pos).max(0) as f64);
                        }
                    }
                }
            }
        }
        // Without an assignment there is nothing to judge time by: the clock must not jump
        // to wall time before the backlog has even been seen.
        let has_assignment = assignment.as_ref().is_some_and(|tpl| tpl.count() > 0);
        let grace = millis(self.topology.service.breach_grace);
        if let Some(now) = has_assignment
            .then(|| self.watermarks.effective_now(wall_ms()))
            .flatten()
            .map(|t| t.saturating_sub(grace))
        {
            tracing::debug!(engine_now = now, wall = wall_ms(), "engine clock");
            let live = self.watermarks.watermark(wall_ms()).is_none();
            if live != self.live {
                self.live = live;
                let behind: Vec<String> = assignment
                    .iter()
                    .flat_map(|tpl| tpl.elements())
                    .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                    .collect();
                if live {
                    tracing::info!(
                        partitions = behind.len(),
                        "caught up: the engine clock follows the wall clock"
                    );
                } else {
                    tracing::info!(partitions = ?behind, "reading a backlog: the engine clock follows the event-time watermark");
                }
            }
            self.engine.advance(now, &mut self.out);
            metrics::gauge!(names::ENGINE_CLOCK_SECONDS).set(now as f64 / 1000.0);
        }
        self.drain_outcomes();
        self.release_deferred(false);
    }

    fn commit(&mut self, consumer: &StreamConsumer<IngestContext>, mode: CommitMode) {
        let engine = &self.engine;
        let cut = engine.now().saturating_sub(self.max_window_ms);
        let committable = self
            .offsets
            .committable(|id| engine.min_pinned_offset(id), cut);
        let mut tpl = TopicPartitionList::new();
        for (tp, off) in &committable {
            metrics::gauge!(names::INPUT_OFFSET, "topic" => tp.0.clone(), "partition" => tp.1.to_string()).set(*off as f64);
            if self.last_committed.get(tp) != Some(off) || matches!(mode, CommitMode::Sync) {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*off));
            }
        }
        *self
            .shared
            .committable
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = committable.clone();
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => self.last_committed.extend(committable),
            Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
        }
    }

    /// A correlation id as events and the API show it: masked when configured.
    fn shown_id(&self, cid: String) -> String {
        if self.topology.masking.correlation_ids {
            self.masker.mask(&cid)
        } else {
            cid
        }
    }

    /// The engine clock, or wall time before the engine has been advanced at all.
    fn clock_ms(&self) -> i64 {
        match self.engine.now() {
            i64::MIN => wall_ms(),
            t => t,
        }
    }

    fn stage_name(&self, workflow: usize, stage: usize) -> String {
        self.topology.workflows[workflow]
            .stages
            .get(stage)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn dims(&self, o: &Outcome) -> BTreeMap<String, String> {
        o.info
            .dimensions
            .iter()
            .map(|(k, v)| {
                let value = if self
                    .topology
                    .masking
                    .dimensions
                    .iter()
                    .any(|d| d.as_str() == &**k)
                {
                    self.masker.mask(v)
                } else {
                    v.to_string()
                };
                (k.to_string(), value)
            })
            .collect()
    }

    fn lag_labels(
        &self,
        o: &Outcome,
        from: usize,
        to: usize,
        segment: &'static str,
    ) -> Vec<(String, String)> {
        let wf = o.info.workflow;
        let mut labels = vec![
            ("workflow".to_string(), o.info.workflow_name.to_string()),
            ("from_stage".to_string(), self.stage_name(wf, from)),
            ("to_stage".to_string(), self.stage_name(wf, to)),
            ("segment".to_string(), segment.to_string()),
        ];
        for (k, v) in self.dims(o) {
            labels.push((k, v));
        }
        labels
    }

    fn record_lag(&self, o: &Outcome, from: usize, to: usize, segment: &'static str, ms: i64) {
        let labels: Vec<metrics::Label> = self
            .lag_labels(o, from, to, segment)
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::histogram!(names::LAG_SECONDS, labels).record(ms.max(0) as f64 / 1000.0);
    }

    /// Stage lags are recorded at once. Everything that becomes an event (breach,
    /// completion, never arrived, late, evicted) waits, in engine order, until the engine
    /// clock has passed the time it is about: while a backlog is read, a completion can
    /// fire a breach before the signal records (errors, throttling) of the same moment
    /// have been read from another partition; waiting for the clock makes the evidence
    /// complete, and costs nothing live, where that time has already passed.
    fn drain_outcomes(&mut self) {
        let outcomes = std::mem::take(&mut self.out);
        for o in outcomes.iter() {
            let release_at = match &o.kind {
                OutcomeKind::StageReached { .. } => {
                    self.on_outcome(o);
                    continue;
                }
                OutcomeKind::Breach { deadline_ms, .. } => *deadline_ms,
                OutcomeKind::Completed { at_ms, .. } => *at_ms,
                OutcomeKind::NeverArrived { window_end_ms, .. } => *window_end_ms,
                OutcomeKind::LateArrival { at_ms, .. } => *at_ms,
                OutcomeKind::Evicted { at_ms, .. } => *at_ms,
            };
            self.deferred.push_back((release_at, o.clone()));
        }
        self.out = outcomes;
        self.out.clear();
    }

    /// Handles deferred outcomes whose time the engine clock has passed (all of them
    /// when `all`, at shutdown). Order is kept per correlation only: one correlation
    /// waiting for its time does not hold back the others.
    fn release_deferred(&mut self, all: bool) {
        use std::hash::BuildHasher;
        let now = self.engine.now();
        let hasher = std::collections::hash_map::RandomState::new();
        let mut blocked: HashSet<u64> = HashSet::new();
        let mut keep = std::collections::VecDeque::new();
        for (at, o) in std::mem::take(&mut self.deferred) {
            let key = hasher.hash_one((o.info.workflow, o.info.correlation_id.as_bytes()));
            let due = all || (now != i64::MIN && at <= now);
            if due && !blocked.contains(&key) {
                self.on_outcome(&o);
            } else {
                blocked.insert(key);
                keep.push_back((at, o));
            }
        }
        self.deferred = keep;
        metrics::gauge!(names::DEFERRED_OUTCOMES).set(self.deferred.len() as f64);
    }

    fn on_outcome(&mut self, o: &Outcome) {
        let wf = o.info.workflow;
        let wname = o.info.workflow_name.to_string();
        let key: (usize, Box<[u8]>) = (wf, o.info.correlation_id.as_bytes().into());
        match &o.kind {
            OutcomeKind::StageReached {
                stage,
                previous_stage,
                lag_from_previous_ms,
                lag_from_first_ms,
                ..
            } => {
                metrics::counter!(names::STAGE_EVENTS_TOTAL, "workflow" => wname.clone(), "stage" => self.stage_name(wf, *stage)).increment(1);
                self.record_lag(
                    o,
                    *previous_stage,
                    *stage,
                    "stage_to_stage",
                    *lag_from_previous_ms,
                );
                if *previous_stage != 0 {
                    self.record_lag(o, 0, *stage, "from_first", *lag_from_first_ms);
                }
            }
            OutcomeKind::Completed {
                previous_stage,
                lag_from_previous_ms,
                end_to_end_ms,
                decomposition,
                ..
            } => {
                let last = self.topology.workflows[wf].stages.len() - 1;
                metrics::counter!(names::STAGE_EVENTS_TOTAL, "workflow" => wname.clone(), "stage" => self.stage_name(wf, last)).increment(1);
                metrics::counter!(names::COMPLETED_TOTAL, "workflow" => wname.clone()).increment(1);
                self.record_lag(
                    o,
                    *previous_stage,
                    last,
                    "stage_to_stage",
                    *lag_from_previous_ms,
                );
                self.record_lag(o, 0, last, "end_to_end", *end_to_end_ms);
                for (seg, v) in [
                    ("partner_ingestion", decomposition.partner_ingestion_ms),
                    ("middleware_erp", decomposition.middleware_erp_ms),
                    ("outbox_cdc", decomposition.outbox_cdc_ms),
                ] {
                    if let Some(v) = v {
                        self.record_lag(o, 0, last, seg, v);
                    }
                }
                let st = &mut self.stats[wf];
                st.completed += 1;
                if let Some(h) = &mut st.end_to_end {
                    let _ = h.record(u64::try_from((*end_to_end_ms).max(0)).unwrap_or(0));
                }
                self.partner_delay.remove(&key);
                if self.open_breaches.remove(&key) {
                    let mut ev = self.event(
                        o,
                        "resolved",
                        "info",
                        Some(last),
                        None,
                        None,
                        *end_to_end_ms,
                    );
                    ev.segments_ms = segments(
                        decomposition.partner_ingestion_ms,
                        decomposition.middleware_erp_ms,
                        decomposition.outbox_cdc_ms,
                    );
                    ev.dominant_segment = rules::dominant_segment(
                        decomposition.partner_ingestion_ms,
                        decomposition.middleware_erp_ms,
                        decomposition.outbox_cdc_ms,
                    )
                    .map(|s| s.name().to_string());
                    self.send(ev);
                }
            }
            OutcomeKind::Breach {
                tier,
                deadline_ms,
                lag_so_far_ms,
                last_stage_seen,
                missing_stage,
            } => {
                let severity = match tier {
                    Tier::Warn => "warn",
                    Tier::Critical => "critical",
                };
                let st = &mut self.stats[wf];
                match tier {
                    Tier::Warn => st.warn += 1,
                    Tier::Critical => st.critical += 1,
                }
                self.open_breaches.insert(key.clone());
                let ev = self.event(
                    o,
                    "breach",
                    severity,
                    Some(*missing_stage),
                    *last_stage_seen,
                    Some(*deadline_ms),
                    *lag_so_far_ms,
                );
                metrics::counter!(names::BREACHES_TOTAL, "workflow" => wname, "severity" => severity, "cause" => ev.probable_cause.clone().unwrap_or_else(|| "unknown".into())).increment(1);
                self.send(ev);
            }
            OutcomeKind::NeverArrived {
                window_end_ms,
                stages_seen,
                missing,
            } => {
                self.stats[wf].never_arrived += 1;
                metrics::counter!(names::NEVER_ARRIVED_TOTAL, "workflow" => wname).increment(1);
                let lag = window_end_ms.saturating_sub(o.info.start_ms);
                let ev = self.event(
                    o,
                    "never_arrived",
                    "never_arrived",
                    missing.first().copied(),
                    last_seen(*stages_seen),
                    None,
                    lag,
                );
                self.open_breaches.remove(&key);
                self.partner_delay.remove(&key);
                self.send(ev);
            }
            OutcomeKind::LateArrival {
                stage,
                lag_from_first_ms,
                ..
            } => {
                self.stats[wf].late += 1;
                metrics::counter!(names::LATE_ARRIVALS_TOTAL, "workflow" => wname).increment(1);
                let ev = self.event(
                    o,
                    "late_arrival",
                    "info",
                    Some(*stage),
                    None,
                    None,
                    lag_from_first_ms.unwrap_or(0),
                );
                self.send(ev);
            }
            OutcomeKind::Evicted {
                at_ms,
                stages_seen,
                missing,
            } => {
                metrics::counter!(names::EVICTED_TOTAL).increment(1);
                self.open_breaches.remove(&key);
                self.partner_delay.remove(&key);
                let ev = self.event(
                    o,
                    "evicted",
                    "info",
                    missing.first().copied(),
                    last_seen(*stages_seen),
                    None,
                    at_ms.saturating_sub(o.info.start_ms),
                );
                self.send(ev);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        o: &Outcome,
        kind: &str,
        severity: &str,
        stage: Option<usize>,
        last_stage_seen: Option<usize>,
        deadline_ms: Option<i64>,
        lag_ms: i64,
    ) -> BreachEvent {
        let wf = o.info.workflow;
        let cid = o.info.correlation_id.to_string();
        let key: (usize, Box<[u8]>) = (wf, o.info.correlation_id.as_bytes().into());
        let partner = self.partner_delay.get(&key).copied();
        let middleware = Some(lag_ms.saturating_sub(partner.unwrap_or(0))).filter(|v| *v > 0);
        let dominant: Option<LagSegment> = rules::dominant_segment(partner, middleware, None);
        let signals = self.signals.signals(&cid);
        let backlogged = (self.backlogged)();
        let cause = rules::attribute(
            &self.topology.causes,
            &Evidence {
                signals,
                dominant_segment: dominant,
                backlogged_groups: &backlogged,
            },
        );
        let workflow = &self.topology.workflows[wf];
        let route = cause
            .map(|c| c.route.clone())
            .or_else(|| workflow.route.clone());
        let team = route
            .as_ref()
            .and_then(|r| self.topology.routes.get(r))
            .map(|r| r.team.clone());
        let id_kind = if kind == "breach" { severity } else { kind };
        BreachEvent {
            breach_id: rules::breach_id(
                &workflow.name,
                o.info.correlation_id.as_bytes(),
                id_kind,
                o.info.start_ms,
            ),
            kind: kind.to_string(),
            severity: severity.to_string(),
            workflow: workflow.name.clone(),
            correlation_id: self.shown_id(cid),
            stage: stage.map(|s| self.stage_name(wf, s)),
            last_stage_seen: last_stage_seen.map(|s| self.stage_name(wf, s)),
            started_at_ms: o.info.start_ms,
            deadline_ms,
            observed_at_ms: self.clock_ms(),
            lag_ms,
            dimensions: self.dims(o),
            segments_ms: segments(partner, middleware, None),
            dominant_segment: dominant.map(|s| s.name().to_string()),
            probable_cause: cause.map(|c| c.name.clone()),
            route,
            team,
            signals: signals.iter().map(|(_, k)| k.clone()).collect(),
            backlogged_groups: backlogged,
        }
    }

    fn send(&mut self, ev: BreachEvent) {
        tracing::info!(kind = %ev.kind, severity = %ev.severity, workflow = %ev.workflow, breach_id = %ev.breach_id, lag_ms = ev.lag_ms, cause = ?ev.probable_cause, "breach event");
        self.to_emit.push(ev);
    }

    /// Hands the events raised by the last record or tick to the emitter. The channel is
    /// bounded: when Kafka is slower than breaches are raised, ingestion waits here
    /// (back-pressure) instead of buffering without limit or dropping.
    async fn flush_events(&mut self) {
        if self.to_emit.is_empty() {
            return;
        }
        let started = Instant::now();
        for ev in std::mem::take(&mut self.to_emit) {
            if self.breach_tx.send(ev).await.is_err() {
                metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "breaches").increment(1);
                tracing::error!("breach emitter stopped; event not written");
            }
        }
        let waited = started.elapsed();
        if waited > Duration::from_millis(100) {
            metrics::histogram!(names::OUTPUT_BACKPRESSURE_WAIT_SECONDS)
                .record(waited.as_secs_f64());
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "ingestion waited for the breach topic"
            );
        }
    }

    fn emit_lag(&mut self) {
        let now = wall_ms();
        let summaries: Vec<LagSummary> = self
            .engine
            .lag_snapshot(now)
            .into_iter()
            .map(|s| LagSummary::from_snapshot(s, now))
            .collect();
        if self.lag_task.as_ref().is_some_and(|t| !t.is_finished()) {
            tracing::warn!("previous lag summaries still in flight; skipping this interval");
            metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "lag").increment(1);
            return;
        }
        // Delivered off the pipeline task: ingestion never waits for the lag topic.
        let outputs = self.outputs.clone();
        self.lag_task = Some(tokio::spawn(async move {
            if let Err(e) = outputs.lag(&summaries).await {
                metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => "lag").increment(1);
                tracing::warn!(error = %e, "lag summaries not delivered");
            }
        }));
    }

    fn publish(&self) {
        let c = self.engine.counters();
        metrics::counter!(names::DUPLICATES_TOTAL).absolute(c.duplicates);
        metrics::counter!(names::STAGES_AFTER_COMPLETION_TOTAL).absolute(c.after_completion);
        metrics::counter!(names::DIMENSION_OVERFLOW_TOTAL).absolute(c.dimension_overflow);
        metrics::counter!(names::SIGNALS_FORGOTTEN_TOTAL).absolute(self.signals.forgotten());
        let now = self.clock_ms();
        let mut snapshot = StatusSnapshot {
            engine_clock_ms: now,
            caught_up: self.watermarks.watermark(wall_ms()).is_none(),
            ..Default::default()
        };
        for ps in self.engine.pending_status() {
            let wf = &self.topology.workflows[ps.workflow];
            let st = &self.stats[ps.workflow];
            let mut by_age = BTreeMap::new();
            for (label, n) in AGE_BUCKET_LABELS.iter().zip(ps.by_age.iter()) {
                metrics::gauge!(names::PENDING_CORRELATIONS, "workflow" => wf.name.clone(), "age" => *label).set(*n as f64);
                by_age.insert((*label).to_string(), *n);
            }
            snapshot.workflows.push(WorkflowStatus {
                name: wf.name.clone(),
                description: wf.description.clone(),
                stages: wf.stages.iter().map(|s| s.name.clone()).collect(),
                sla_warn_seconds: wf.sla.warn.as_secs_f64(),
                sla_critical_seconds: wf.sla.critical.as_secs_f64(),
                business_hours_overrides: wf.sla.business_hours.len(),
                window_seconds: wf.window.as_secs_f64(),
                completed: st.completed,
                breaches_warn: st.warn,
                breaches_critical: st.critical,
                never_arrived: st.never_arrived,
                late_arrivals: st.late,
                pending: ps.pending,
                pending_by_age: by_age,
                end_to_end: st
                    .end_to_end
                    .as_ref()
                    .filter(|h| !h.is_empty())
                    .map(|h| Quantiles {
                        count: h.len(),
                        p50_ms: h.value_at_quantile(0.5),
                        p90_ms: h.value_at_quantile(0.9),
                        p99_ms: h.value_at_quantile(0.99),
                        max_ms: h.max(),
                    }),
            });
            let items = ps
                .oldest
                .iter()
                .map(|p| {
                    let cid = p.correlation_id.to_string();
                    let missing = p.stages_seen.missing(wf.stages.len());
                    PendingItem {
                        workflow: wf.name.clone(),
                        correlation_id: self.shown_id(cid),
                        started_at_ms: p.start_ms,
                        age_seconds: now.saturating_sub(p.start_ms).max(0) as f64 / 1000.0,
                        stages_seen: p
                            .stages_seen
                            .iter()
                            .map(|s| self.stage_name(ps.workflow, s))
                            .collect(),
                        waiting_for: missing.first().map(|s| self.stage_name(ps.workflow, *s)),
                        dimensions: p
                            .dimensions
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    }
                })
                .collect();
            snapshot.pending.insert(wf.name.clone(), items);
        }
        match self.api.status.write() {
            Ok(mut g) => *g = snapshot,
            Err(p) => *p.into_inner() = snapshot,
        }
    }
}

fn last_seen(s: StageSet) -> Option<usize> {
    s.iter().last()
}

fn segments(
    partner: Option<i64>,
    middleware: Option<i64>,
    outbox: Option<i64>,
) -> BTreeMap<String, i64> {
    [
        ("partner_ingestion", partner),
        ("middleware_erp", middleware),
        ("outbox_cdc", outbox),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect()
}

/// Up to 25 % random jitter, so many instances do not retry in lockstep.
fn jitter(base: Duration) -> Duration {
    let nanos = u64::from(chrono::Utc::now().timestamp_subsec_nanos());
    base.mul_f64((nanos % 250) as f64 / 1000.0)
}
