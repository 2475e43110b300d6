//! The output path: every event synclag writes (breaches, dead letters, lag summaries)
//! goes through one task, numbered in the order the pipeline raised it.
//!
//! - **The pipeline never waits here.** [`Emitter::submit`] hands an output over without
//!   awaiting; when the channel is full the output waits in an overflow queue and
//!   [`Emitter::saturated`] tells the pipeline to pause its input partitions — timers keep
//!   firing, only reading stops (back-pressure without stopping the clock).
//! - **Nothing is given up.** An output that cannot be encoded (registry down) or
//!   delivered is retried with backoff until it is acknowledged; failures are counted and
//!   logged, never dropped.
//! - **Acknowledgements.** Each output has a sequence number; [`Emitter::acked_through`]
//!   is the highest number up to which every output has been acknowledged by Kafka.
//!   Input offsets are committed only behind it (see `ingest::commit`).

use super::events::{BreachEvent, IncidentEvent, LagSummary};
use super::producer::{Acknowledgement, EmitError, Outputs, TxnFailure};
use crate::decode::RecordView;
use crate::telemetry::names;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An input record copied for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
    pub reason: &'static str,
    pub error: String,
}

impl DeadLetter {
    /// Copies `record` with the reason it could not be processed.
    pub fn new(record: &RecordView<'_>, reason: &'static str, error: String) -> DeadLetter {
        DeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            payload: record.payload.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp_ms: record.timestamp_ms,
            reason,
            error,
        }
    }
}

/// One output.
#[derive(Debug, Clone)]
pub enum Output {
    /// Shared with the API's memory of recent breaches.
    Breach(std::sync::Arc<BreachEvent>),
    DeadLetter(Box<DeadLetter>),
    Lag(Vec<LagSummary>),
    Incident(Box<IncidentEvent>),
    /// Changelog records of the durable state: `(key, value)`, `None` deletes the key.
    State(StateBatch),
    /// Records of the stages topic (see `route`), each on its own partition.
    Routed(RoutedBatch),
    /// A batch run event or batch state record (see `batch::glue`).
    Batch(crate::batch::glue::BatchOutput),
    /// With transactions (`store.exactly_once`): commit every output submitted before
    /// this one, with these input offsets, in one transaction.
    Commit(Box<Commit>),
}

/// The end of a transaction: the input offsets it commits and the consumer group they
/// belong to (none: the transaction commits outputs only).
#[derive(Clone)]
pub struct Commit {
    pub offsets: Vec<(crate::ingest::Tp, i64)>,
    pub group: Option<Arc<rdkafka::consumer::ConsumerGroupMetadata>>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("offsets", &self.offsets)
            .field("group", &self.group.is_some())
            .finish()
    }
}

/// Records for the changelog topic, written in order.
#[derive(Debug, Clone)]
pub struct StateBatch {
    pub topic: Arc<str>,
    /// The topic's partition count: each record goes to `route::partition_of(key)`, so a
    /// key stays on one partition whatever partitioner the producer is configured with
    /// (0: not known, the producer places it).
    pub partitions: i32,
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Records written to a given partition, after `records`: `(partition, key, value)`;
    /// `None` deletes the key.
    pub pinned: Vec<(i32, Vec<u8>, Option<Vec<u8>>)>,
}

/// Records for the stages topic, written in order: `(partition, key, value)`.
#[derive(Debug, Clone)]
pub struct RoutedBatch {
    pub topic: Arc<str>,
    pub records: Vec<(i32, Vec<u8>, Vec<u8>)>,
}

impl Output {
    /// Records synclag's own state is built from (changelog, batch runs, stages): never
    /// dropped or shortened.
    fn is_changelog(&self) -> bool {
        matches!(
            self,
            Output::State(_)
                | Output::Routed(_)
                | Output::Batch(crate::batch::glue::BatchOutput::State { .. })
        )
    }

    fn topic<'a>(&'a self, topics: &'a crate::config::Outputs) -> &'a str {
        match self {
            Output::Batch(crate::batch::glue::BatchOutput::Event(_)) => &topics.batches_topic,
            Output::Batch(crate::batch::glue::BatchOutput::State { topic, .. }) => topic,
            Output::Breach(_) => &topics.breaches_topic,
            Output::DeadLetter(_) => &topics.dead_letter_topic,
            Output::Lag(_) => &topics.lag_topic,
            Output::Incident(_) => &topics.incidents_topic,
            Output::State(b) => &b.topic,
            Output::Routed(b) => &b.topic,
            Output::Commit(_) => "",
        }
    }
}

/// Outputs handed to the emitter task at once (beyond it, the pipeline's overflow queue).
const CHANNEL: usize = 4_096;
/// Outputs in librdkafka's hands awaiting acknowledgement.
const MAX_IN_FLIGHT: usize = 20_000;
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Delivery failures are logged at most this often (each one is counted).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The pipeline's side of the output path.
pub struct Emitter {
    tx: Option<mpsc::Sender<(u64, Output)>>,
    overflow: VecDeque<(u64, Output)>,
    next_seq: u64,
    acked: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
    fatal: Arc<std::sync::OnceLock<String>>,
    /// Why the outputs since the last commit were dropped (see [`Transactional`]).
    rolled_back: Arc<std::sync::OnceLock<String>>,
    /// Set once the pipeline has given this emitter up (see [`Emitter::retire`]).
    retired: Arc<AtomicBool>,
    /// Breach and incident events submitted so far.
    alerts: u64,
}

/// How the emitter writes in Kafka transactions (`store.exactly_once`).
#[derive(Clone)]
pub struct Transactional {
    /// Makes a new producer when one is fenced.
    pub factory: ProducerFactory,
    /// Outputs may be committed only together with the input offsets they came from
    /// (`store.repartition`: partitions move between instances). A transaction that
    /// fails is then written again with its offsets and the group generation it was asked
    /// for; when the group has moved on (the commit is refused for its generation), its
    /// outputs are dropped instead — committed without their offsets they would be
    /// written a second time by the partitions' new owner, from a state that already
    /// holds them — and the pipeline starts again from the committed state
    /// ([`Emitter::rolled_back`]). Without it (one instance owns every partition) an
    /// aborted transaction's outputs are written again without offsets, which the next
    /// commit carries.
    pub bound_to_offsets: bool,
}

impl Emitter {
    /// Starts the emitter task writing through `outputs`; `transactional`: in Kafka
    /// transactions ended by [`Output::Commit`] (the producer has a `transactional.id`
    /// and [`Outputs::txn_init`] has succeeded), with what makes a new producer when one
    /// is fenced.
    pub fn start(
        outputs: Arc<Outputs>,
        topics: &crate::config::Outputs,
        transactional: Option<Transactional>,
    ) -> Emitter {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let acked = Arc::new(AtomicU64::new(0));
        let fatal = Arc::new(std::sync::OnceLock::new());
        let rolled_back = Arc::new(std::sync::OnceLock::new());
        let retired = Arc::new(AtomicBool::new(false));
        let txn = transactional.map(|t| Txn {
            open: false,
            log: Vec::new(),
            doomed: None,
            commit: None,
            fenced: false,
            renewals: VecDeque::new(),
            factory: t.factory,
            fatal: fatal.clone(),
            bound_to_offsets: t.bound_to_offsets,
            rolled_back: rolled_back.clone(),
            retired: retired.clone(),
        });
        let task = tokio::spawn(run(outputs, topics.clone(), rx, acked.clone(), txn));
        Emitter {
            tx: Some(tx),
            overflow: VecDeque::new(),
            next_seq: 0,
            acked,
            task: Some(task),
            fatal,
            rolled_back,
            retired,
            alerts: 0,
        }
    }

    /// Why the outputs since the last commit were dropped, once they were: the group
    /// moved on before they could be committed with their offsets (see
    /// [`Transactional::bound_to_offsets`]). The pipeline must start again from the
    /// committed state; this emitter writes nothing more.
    pub fn rolled_back(&self) -> Option<&str> {
        self.rolled_back.get().map(String::as_str)
    }

    /// Gives the emitter up without committing anything more: the pipeline starts again
    /// from the committed state (partitions moved). Its task stops at once — a commit
    /// asked for earlier is not retried, a failed one is not written again, a fenced
    /// producer is not replaced (a replacement would fence the next pipeline's producer)
    /// — and is awaited, up to one transaction call, so that nothing of it runs beside
    /// the next pipeline. What it left open is aborted when the next producer registers.
    pub async fn retire(&mut self) {
        self.retired.store(true, Ordering::Release);
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = tokio::time::timeout(TXN_CALL_TIMEOUT + Duration::from_secs(5), task).await;
        }
    }

    /// Why outputs can no longer be written, once that is so (the transactional producer
    /// was fenced again and again: another process runs with this instance's id).
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Hands `output` over without waiting; returns its sequence number (from 1).
    pub fn submit(&mut self, output: Output) -> u64 {
        if matches!(output, Output::Breach(_) | Output::Incident(_)) {
            self.alerts += 1;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        if self.overflow.is_empty() {
            if let Some(tx) = &self.tx {
                match tx.try_send((seq, output)) {
                    Ok(()) => return seq,
                    Err(mpsc::error::TrySendError::Full(item))
                    | Err(mpsc::error::TrySendError::Closed(item)) => {
                        self.overflow.push_back(item);
                    }
                }
                self.gauge();
                return seq;
            }
        }
        self.overflow.push_back((seq, output));
        self.gauge();
        seq
    }

    /// Moves waiting outputs into the channel as far as it has room.
    pub fn pump(&mut self) {
        let Some(tx) = &self.tx else { return };
        while let Some(item) = self.overflow.pop_front() {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item))
                | Err(mpsc::error::TrySendError::Closed(item)) => {
                    self.overflow.push_front(item);
                    break;
                }
            }
        }
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!(names::OUTPUT_QUEUED).set(self.overflow.len() as f64);
    }

    /// Whether outputs wait beyond the channel: the pipeline should stop reading input.
    pub fn saturated(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Breach and incident events submitted so far.
    pub fn alerts_submitted(&self) -> u64 {
        self.alerts
    }

    /// Sequence number of the last output submitted (0 before any).
    pub fn submitted(&self) -> u64 {
        self.next_seq
    }

    /// Every output with a sequence number up to this one has been acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Waits until every output up to `target` is acknowledged, or `deadline`; keeps the
    /// channel open. Returns whether they were.
    pub async fn wait_acked(&mut self, target: u64, deadline: Instant) -> bool {
        while self.acked_through() < target && Instant::now() < deadline {
            self.pump();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.acked_through() >= target
    }

    /// Waits until every submitted output is acknowledged, or `deadline`; then closes
    /// the channel. Returns whether everything was acknowledged.
    pub async fn drain(&mut self, deadline: Instant) -> bool {
        let target = self.next_seq;
        while self.acked_through() < target && Instant::now() < deadline {
            if let Some(tx) = &self.tx {
                while let Some(item) = self.overflow.pop_front() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, tx.send(item)).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.tx = None;
        if let Some(task) = self.task.take() {
            if self.acked_through() >= target {
                let _ =
                    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), task)
                        .await;
            } else {
                task.abort();
            }
        }
        self.acked_through() >= target
    }
}

type Delivery = Pin<Box<dyn Future<Output = (u64, Result<(), EmitError>, Output)> + Send>>;

/// Tracks which sequence numbers are outstanding; the acknowledged prefix is published.
struct Acks {
    outstanding: BTreeSet<u64>,
    highest_seen: u64,
    published: Arc<AtomicU64>,
}

impl Acks {
    fn started(&mut self, seq: u64) {
        self.outstanding.insert(seq);
        self.highest_seen = self.highest_seen.max(seq);
    }

    fn done(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
        let through = match self.outstanding.first() {
            Some(first) => first - 1,
            None => self.highest_seen,
        };
        self.published.fetch_max(through, Ordering::AcqRel);
    }
}

/// Makes a new output producer (a fenced one cannot be used again).
pub type ProducerFactory = Arc<dyn Fn() -> Result<Outputs, EmitError> + Send + Sync>;

/// The transaction in progress (`store.exactly_once`).
struct Txn {
    /// A transaction is begun.
    open: bool,
    /// Outputs delivered in the open transaction, kept until it commits: an aborted
    /// transaction is written again from them.
    log: Vec<(u64, Output)>,
    /// Why the open transaction cannot commit.
    doomed: Option<String>,
    /// The commit asked for, waiting for the deliveries before it.
    commit: Option<(u64, Commit)>,
    /// The producer was fenced and must be replaced before anything else.
    fenced: bool,
    /// When producers were replaced lately (bounded: see [`RENEWALS_MAX`]).
    renewals: VecDeque<Instant>,
    factory: ProducerFactory,
    fatal: Arc<std::sync::OnceLock<String>>,
    /// See [`Transactional::bound_to_offsets`].
    bound_to_offsets: bool,
    /// Set when the outputs since the last commit were dropped (see [`Emitter::rolled_back`]).
    rolled_back: Arc<std::sync::OnceLock<String>>,
    /// The pipeline gave this emitter up (see [`Emitter::retire`]).
    retired: Arc<AtomicBool>,
}

/// How long one call to the transaction coordinator may take before it is retried.
pub const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A fenced producer is replaced after this pause: a process fenced because another one
/// runs with its `service.instance_id` has its consumer fenced too by then and stops.
const RENEW_AFTER: Duration = Duration::from_secs(5);
/// Producers replaced within [`RENEWALS_WINDOW`] beyond which the service stops: two
/// processes fencing each other.
const RENEWALS_MAX: usize = 5;
const RENEWALS_WINDOW: Duration = Duration::from_secs(600);

impl Txn {
    /// Aborts the open transaction, if one is open. A producer that cannot abort is
    /// treated as fenced: a new one aborts the transaction when it registers.
    async fn abort(&mut self, outputs: &Arc<Outputs>) -> Result<(), TxnFailure> {
        if !self.open {
            return Ok(());
        }
        let o = outputs.clone();
        match self
            .call("aborting", move || o.txn_abort(TXN_CALL_TIMEOUT))
            .await
        {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(e) => {
                self.fenced = true;
                Err(e)
            }
        }
    }

    /// A failure doomed the transaction while outputs of it are still in flight: abort
    /// now. librdkafka may hold those outputs until the transaction times out (after a
    /// record refused for its size, the partition's sequence is broken and nothing more
    /// is sent); aborting fails them at once, and they are written again with the rest.
    async fn abort_early(&mut self, outputs: &Arc<Outputs>, still_in_flight: bool) {
        if self.doomed.is_some() && self.open && still_in_flight {
            if let Err(e) = self.abort(outputs).await {
                tracing::warn!(error = %e, "output transaction: aborting early failed; the producer is replaced");
            }
        }
    }

    /// An output of the open transaction was delivered or failed: kept to be written
    /// again if the transaction is aborted (a failure dooms it), in its smallest form or
    /// not at all when its topic refused it for its size.
    fn delivered(
        &mut self,
        seq: u64,
        result: Result<(), EmitError>,
        output: Output,
        topics: &crate::config::Outputs,
        failures: &mut u64,
        last_report: &mut Option<Instant>,
    ) {
        let mut output = Some(output);
        if let (Err(e), Some(o)) = (result, &output) {
            count_failure(topics, o, &e, failures, last_report);
            self.doomed.get_or_insert_with(|| e.to_string());
            if matches!(e, EmitError::TooLarge { .. }) {
                output = output.and_then(|o| refused_for_size(topics, o, &e));
            }
        }
        if let Some(o) = output {
            self.log.push((seq, o));
        }
    }

    /// Calls `op` until it succeeds, retrying transient failures with backoff. `Err`:
    /// the transaction must be aborted (`Abort`) or the producer is fenced (`Fatal`; it
    /// is marked for replacement).
    async fn call<F>(&mut self, what: &str, op: F) -> Result<(), TxnFailure>
    where
        F: Fn() -> Result<(), TxnFailure>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match tokio::task::block_in_place(&op) {
                Ok(()) => return Ok(()),
                Err(TxnFailure::Retry(why)) => {
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "output transaction: {what} not done yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(TxnFailure::Fatal(why)) => {
                    self.fenced = true;
                    return Err(TxnFailure::Fatal(why));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The pipeline gave this emitter up: nothing more is committed, retried or replaced.
    fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Drops the outputs since the last commit: the group moved on before they could be
    /// committed with their offsets (see [`Transactional::bound_to_offsets`]). The
    /// transaction is aborted (or, if that fails, left to the next producer to abort) and
    /// the pipeline is told to start again from the committed state.
    async fn roll_back(&mut self, outputs: &Arc<Outputs>, why: String) {
        if let Err(e) = self.abort(outputs).await {
            tracing::warn!(error = %e, "output transaction: aborting failed; the next producer aborts it when it registers");
        }
        metrics::counter!(names::OUTPUT_TRANSACTIONS_TOTAL, "result" => "rolled_back").increment(1);
        tracing::warn!(error = %why, outputs = self.log.len(), "output transaction dropped: the consumer group moved on before it committed with its input offsets; the pipeline starts again from the committed state");
        self.log.clear();
        let _ = self.rolled_back.set(why);
    }

    /// Makes sure a transaction is open before anything is produced.
    async fn ensure_open(&mut self, outputs: &Outputs) -> Result<(), TxnFailure> {
        if !self.open {
            self.call("beginning a transaction", || outputs.txn_begin())
                .await?;
            self.open = true;
        }
        Ok(())
    }

    /// Replaces a fenced producer: a new one registers the same transactional id (which
    /// aborts what the old one left open). `false`: the service must stop, or the emitter
    /// was retired.
    async fn renew(&mut self, outputs: &mut Arc<Outputs>) -> bool {
        let now = Instant::now();
        while self
            .renewals
            .front()
            .is_some_and(|t| now.duration_since(*t) > RENEWALS_WINDOW)
        {
            self.renewals.pop_front();
        }
        if self.renewals.len() >= RENEWALS_MAX {
            let why = format!(
                "the output producer was fenced {} times within {} s: another process runs with this service.instance_id",
                self.renewals.len() + 1,
                RENEWALS_WINDOW.as_secs()
            );
            tracing::error!("{why}; the service stops");
            let _ = self.fatal.set(why);
            return false;
        }
        self.renewals.push_back(now);
        tracing::error!(
            renew_in_s = RENEW_AFTER.as_secs(),
            "the output producer was fenced: its transaction coordinator ended the transaction (a broker outage longer than transaction.timeout.ms) or another process registered this service.instance_id; a new producer takes over and writes the open transaction again"
        );
        metrics::counter!(names::OUTPUT_TRANSACTIONS_TOTAL, "result" => "fenced").increment(1);
        tokio::time::sleep(RENEW_AFTER).await;
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.retired() {
                // A new producer now would fence the next pipeline's.
                return false;
            }
            let fresh = match (self.factory)() {
                Ok(o) => {
                    o.adopt_record_limits(outputs);
                    Arc::new(o)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create a new output producer; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            };
            self.fenced = false;
            match self
                .call("registering the transactional id", || {
                    fresh.txn_init(TXN_CALL_TIMEOUT)
                })
                .await
            {
                Ok(()) => {
                    *outputs = fresh;
                    self.open = false;
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the new output producer could not register; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

type InFlight = FuturesUnordered<Delivery>;

async fn run(
    mut outputs: Arc<Outputs>,
    topics: crate::config::Outputs,
    mut rx: mpsc::Receiver<(u64, Output)>,
    acked: Arc<AtomicU64>,
    mut txn: Option<Txn>,
) {
    let mut acks = Acks {
        outstanding: BTreeSet::new(),
        highest_seen: 0,
        published: acked,
    };
    let mut in_flight: InFlight = FuturesUnordered::new();
    let mut open = true;
    enum Step {
        New(u64, Output),
        Closed,
        Done(u64, Result<(), EmitError>, Output),
    }
    let mut failures = 0u64;
    let mut last_report: Option<Instant> = None;
    loop {
        if let Some(t) = &mut txn {
            if t.fatal.get().is_some() || t.rolled_back.get().is_some() || t.retired() {
                return;
            }
            if t.commit.is_some() && in_flight.is_empty() {
                finish_transaction(t, &mut outputs, &topics, &mut acks).await;
                continue;
            }
            if !open && in_flight.is_empty() {
                // Outputs after the last commit request have no state or offsets with
                // them: aborted, they are raised again after the restart.
                if t.open && !t.fenced {
                    let o = outputs.clone();
                    let _ = t
                        .call("aborting the last transaction", move || {
                            o.txn_abort(TXN_CALL_TIMEOUT)
                        })
                        .await;
                }
                return;
            }
        } else if !open && in_flight.is_empty() {
            return;
        }
        let waiting_commit = txn.as_ref().is_some_and(|t| t.commit.is_some());
        let step = tokio::select! {
            item = rx.recv(), if open && !waiting_commit && in_flight.len() < MAX_IN_FLIGHT => match item {
                Some((seq, output)) => Step::New(seq, output),
                None => Step::Closed,
            },
            Some((seq, result, output)) = in_flight.next(), if !in_flight.is_empty() => {
                Step::Done(seq, result, output)
            }
        };
        match (step, &mut txn) {
            (Step::Closed, _) => open = false,
            (Step::New(seq, Output::Commit(c)), Some(t)) => t.commit = Some((seq, *c)),
            // Without transactions offsets are committed by the consumer.
            (Step::New(seq, Output::Commit(_)), None) => {
                acks.started(seq);
                acks.done(seq);
            }
            (Step::New(seq, output), Some(t)) => {
                if t.doomed.is_none() {
                    let o = outputs.clone();
                    if let Err(e) = t.ensure_open(&o).await {
                        t.doomed = Some(e.to_string());
                    }
                }
                if t.doomed.is_some() {
                    // Written again once the transaction is aborted.
                    t.log.push((seq, output));
                } else {
                    {
                        let delivery = start(&outputs, &topics, seq, output).await;
                        in_flight.push(delivery);
                    }
                }
            }
            (Step::New(seq, output), None) => {
                acks.started(seq);
                {
                    let delivery = start(&outputs, &topics, seq, output).await;
                    in_flight.push(delivery);
                }
            }
            (Step::Done(seq, result, output), Some(t)) => {
                t.delivered(
                    seq,
                    result,
                    output,
                    &topics,
                    &mut failures,
                    &mut last_report,
                );
                t.abort_early(&outputs, !in_flight.is_empty()).await;
            }
            (Step::Done(seq, Ok(()), _), None) => acks.done(seq),
            (Step::Done(seq, Err(e @ EmitError::TooLarge { .. }), output), None)
                if !output.is_changelog() =>
            {
                count_failure(&topics, &output, &e, &mut failures, &mut last_report);
                match refused_for_size(&topics, output, &e) {
                    Some(smaller) => {
                        let delivery = start(&outputs, &topics, seq, smaller).await;
                        in_flight.push(delivery);
                    }
                    None => acks.done(seq),
                }
            }
            (Step::Done(seq, Err(e), output), None) => {
                count_failure(&topics, &output, &e, &mut failures, &mut last_report);
                tokio::time::sleep(Duration::from_millis(500)).await;
                {
                    let delivery = start(&outputs, &topics, seq, output).await;
                    in_flight.push(delivery);
                }
            }
        }
    }
}

/// What becomes of an output its topic refused for its size (it would be refused again
/// however often it was sent, and hold every output behind it): a breach or incident
/// event is sent again in its smallest form; one without a smaller form, or refused in
/// it, is dropped — counted on `synclag_output_dropped_total` and logged with its key — so
/// the outputs behind it go on. Changelog records are not dropped (synclag creates their
/// topics, whose limit its records stay far below): they are retried as before.
fn refused_for_size(
    topics: &crate::config::Outputs,
    output: Output,
    e: &EmitError,
) -> Option<Output> {
    let topic = output.topic(topics).to_string();
    let (smaller, what) = match &output {
        Output::Breach(ev) => {
            let s = ev.smallest();
            let what = format!("breach event {}", ev.breach_id);
            (
                (s != **ev).then(|| Output::Breach(std::sync::Arc::new(s))),
                what,
            )
        }
        Output::Incident(ev) => {
            let s = ev.smallest();
            let what = format!("incident event {} #{}", ev.incident_id, ev.sequence);
            ((s != **ev).then(|| Output::Incident(Box::new(s))), what)
        }
        Output::State(_)
        | Output::Routed(_)
        | Output::Batch(crate::batch::glue::BatchOutput::State { .. }) => return Some(output),
        Output::DeadLetter(dl) => (
            None,
            format!(
                "dead letter of {}[{}]@{}",
                dl.topic, dl.partition, dl.offset
            ),
        ),
        Output::Lag(summaries) => (None, format!("{} lag summaries", summaries.len())),
        Output::Batch(_) => (None, "batch event".to_string()),
        Output::Commit(_) => (None, "offsets".to_string()),
    };
    match smaller {
        Some(smaller) => {
            metrics::counter!(names::OUTPUT_TRUNCATIONS_TOTAL, "topic" => topic.clone(), "field" => "smallest_form").increment(1);
            tracing::warn!(error = %e, topic, "{what} refused for its size; sending its smallest form (evidence left out, texts cut)");
            Some(smaller)
        }
        None => {
            metrics::counter!(names::OUTPUT_DROPPED_TOTAL, "topic" => topic.clone(), "reason" => "too_large").increment(1);
            tracing::error!(error = %e, topic, "{what} refused for its size even in its smallest form; dropped so the outputs behind it go on (raise the topic's max.message.bytes)");
            None
        }
    }
}

/// Counts a failed output; logs one line per period, not one per record (an outage
/// fails every output).
fn count_failure(
    topics: &crate::config::Outputs,
    output: &Output,
    e: &EmitError,
    failures: &mut u64,
    last_report: &mut Option<Instant>,
) {
    let topic = output.topic(topics).to_string();
    metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => topic.clone()).increment(1);
    *failures += 1;
    if last_report.is_none_or(|t: Instant| t.elapsed() >= REPORT_EVERY) {
        tracing::error!(error = %e, topic, failures = *failures, "outputs not delivered; retrying (input offsets stay behind them)");
        *last_report = Some(Instant::now());
        *failures = 0;
    }
}

/// Commits the open transaction with the requested offsets once every output before the
/// request is delivered. A transaction that cannot commit is aborted and its outputs are
/// written again in a new one (in their order), until one commits: a `read_committed`
/// reader sees each output once. A fenced producer is replaced first. Offsets of an
/// aborted transaction are left to the next commit (the consumer group may have moved on
/// meanwhile); they only ever move forward.
async fn finish_transaction(
    t: &mut Txn,
    outputs: &mut Arc<Outputs>,
    topics: &crate::config::Outputs,
    acks: &mut Acks,
) {
    let Some((seq, mut commit)) = t.commit.take() else {
        return;
    };
    let mut failures = 0u64;
    let mut last_report = None;
    loop {
        if t.retired() {
            return;
        }
        if t.fenced {
            if !t.renew(outputs).await {
                return;
            }
            t.doomed
                .get_or_insert_with(|| "the producer was replaced".into());
        }
        if t.doomed.is_none() {
            let began = Instant::now();
            let result = match t.ensure_open(outputs).await {
                Ok(()) => {
                    let group = commit.group.as_deref();
                    let offsets = &commit.offsets;
                    let o = outputs.clone();
                    t.call("committing", move || {
                        o.txn_commit(offsets, group, TXN_CALL_TIMEOUT)
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    metrics::histogram!(names::OUTPUT_TRANSACTION_COMMIT_SECONDS)
                        .record(began.elapsed().as_secs_f64());
                    metrics::counter!(names::OUTPUT_TRANSACTIONS_TOTAL, "result" => "committed")
                        .increment(1);
                    t.open = false;
                    t.log.clear();
                    acks.published.fetch_max(seq, Ordering::AcqRel);
                    return;
                }
                Err(e @ TxnFailure::GroupMoved(_)) if t.bound_to_offsets => {
                    t.roll_back(outputs, e.to_string()).await;
                    return;
                }
                Err(e) => {
                    t.doomed = Some(e.to_string());
                    if t.fenced {
                        continue;
                    }
                }
            }
        }
        if t.retired() {
            return;
        }
        // Abort, then write the same outputs again in a new transaction.
        let why = t.doomed.take().unwrap_or_default();
        if let Err(e) = t.abort(outputs).await {
            t.doomed = Some(format!("{why}; aborting: {e}"));
            continue;
        }
        metrics::counter!(names::OUTPUT_TRANSACTIONS_TOTAL, "result" => "aborted").increment(1);
        tracing::warn!(error = %why, outputs = t.log.len(), "output transaction aborted; writing its outputs again");
        if !t.bound_to_offsets {
            commit.offsets.clear();
        }
        if let Err(e) = t.ensure_open(outputs).await {
            t.doomed = Some(e.to_string());
            if !t.fenced {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            continue;
        }
        let mut again = std::mem::take(&mut t.log);
        again.sort_by_key(|(seq, _)| *seq);
        let mut in_flight: InFlight = FuturesUnordered::new();
        for (seq, output) in again {
            let delivery = start(outputs, topics, seq, output).await;
            in_flight.push(delivery);
        }
        while let Some((seq, result, output)) = in_flight.next().await {
            t.delivered(seq, result, output, topics, &mut failures, &mut last_report);
            t.abort_early(outputs, !in_flight.is_empty()).await;
        }
        if t.doomed.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Queues one event with `queue`, retrying with backoff while it cannot be encoded (an
/// encoder waiting for the registry), so later outputs wait behind it in order. A record
/// the producer refuses is a failed delivery (retried by the caller; in a transaction,
/// the producer refuses everything until the transaction is aborted).
async fn queue_retrying<F, Fut>(
    topic: &str,
    what: &str,
    queue: F,
) -> Result<Acknowledgement, EmitError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Acknowledgement, EmitError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match queue().await {
            Ok(delivery) => return Ok(delivery),
            Err(e @ (EmitError::Delivery { .. } | EmitError::TooLarge { .. })) => return Err(e),
            Err(e) => {
                metrics::counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => topic.to_string())
                    .increment(1);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} not queued; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Awaits a queued record's acknowledgement, or passes on why it was not queued. A record
/// too large for its topic even in its smallest form was never sent (see
/// `Outputs::learn_record_limits`): it is dropped — counted and logged — so the outputs
/// behind it go on, and nothing of it is in a transaction.
async fn acknowledged(queued: Result<Acknowledgement, EmitError>) -> Result<(), EmitError> {
    match queued {
        Ok(ack) => ack.await,
        Err(EmitError::TooLarge { topic, why }) => {
            metrics::counter!(names::OUTPUT_DROPPED_TOTAL, "topic" => topic.clone(), "reason" => "too_large").increment(1);
            tracing::error!(topic, error = %why, "output too large for its topic even in its smallest form; dropped so the outputs behind it go on (raise the topic's max.message.bytes)");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Puts one output on its way. Breach events are encoded and queued here, in sequence
/// order, so librdkafka keeps their order per partition; waiting for an encoder
/// (registry) retries with backoff and holds the later outputs behind it.
async fn start(
    outputs: &Arc<Outputs>,
    topics: &crate::config::Outputs,
    seq: u64,
    output: Output,
) -> Delivery {
    let (breaches_topic, incidents_topic) = (&topics.breaches_topic, &topics.incidents_topic);
    match output {
        Output::Breach(ev) => {
            let delivery = queue_retrying(breaches_topic, "breach event", || {
                outputs.enqueue_breach(&ev)
            })
            .await;
            let out = Output::Breach(ev);
            Box::pin(async move { (seq, acknowledged(delivery).await, out) })
        }
        Output::Incident(ev) => {
            let delivery = queue_retrying(incidents_topic, "incident event", || {
                outputs.enqueue_incident(&ev)
            })
            .await;
            let out = Output::Incident(ev);
            Box::pin(async move { (seq, acknowledged(delivery).await, out) })
        }
        Output::Batch(out) => {
            let topic = out_topic(&out, topics);
            let delivery =
                queue_retrying(&topic, "batch output", || outputs.enqueue_batch(&out)).await;
            let out = Output::Batch(out);
            Box::pin(async move { (seq, acknowledged(delivery).await, out) })
        }
        Output::DeadLetter(dl) => {
            // Queued here, in sequence order, like breach events: librdkafka keeps the order
            // per partition and the acknowledgement no longer borrows the record.
            let headers: Vec<(String, Option<&[u8]>)> = dl
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_deref()))
                .collect();
            let view = RecordView {
                topic: &dl.topic,
                partition: dl.partition,
                offset: dl.offset,
                key: dl.key.as_deref(),
                payload: dl.payload.as_deref(),
                headers: &headers,
                timestamp_ms: dl.timestamp_ms,
            };
            let queued = outputs
                .enqueue_dead_letter(&view, dl.reason, &dl.error)
                .await;
            drop(headers);
            Box::pin(async move {
                let result = acknowledged(queued).await;
                if result.is_ok() {
                    metrics::counter!(names::DEAD_LETTERS_TOTAL, "reason" => dl.reason)
                        .increment(1);
                }
                (seq, result, Output::DeadLetter(dl))
            })
        }
        Output::State(batch) => {
            let ack = Acknowledgement::open();
            let mut queued = Ok(());
            let placed = batch.records.iter().map(|(key, value)| {
                let partition = (batch.partitions > 0)
                    .then(|| crate::route::partition_of(key, batch.partitions));
                (partition, key, value.as_deref())
            });
            let pinned = batch
                .pinned
                .iter()
                .map(|(p, key, value)| (Some(*p), key, value.as_deref()));
            for (partition, key, value) in placed.chain(pinned) {
                queued = outputs
                    .enqueue_raw_into(&ack, &batch.topic, partition, key, value)
                    .await;
                if queued.is_err() {
                    break;
                }
            }
            batch_delivery(seq, queued, ack, Output::State(batch))
        }
        Output::Routed(batch) => {
            let ack = Acknowledgement::open();
            let mut queued = Ok(());
            for (partition, key, value) in &batch.records {
                queued = outputs
                    .enqueue_raw_into(&ack, &batch.topic, Some(*partition), key, Some(value))
                    .await;
                if queued.is_err() {
                    break;
                }
            }
            batch_delivery(seq, queued, ack, Output::Routed(batch))
        }
        // Handled by the run loop; nothing to write.
        out @ Output::Commit(_) => Box::pin(async move { (seq, Ok(()), out) }),
        Output::Lag(summaries) => {
            let ack = Acknowledgement::open();
            let mut queued = Ok(());
            for s in &summaries {
                queued = outputs.enqueue_lag_into(&ack, s).await;
                if queued.is_err() {
                    break;
                }
            }
            batch_delivery(seq, queued, ack, Output::Lag(summaries))
        }
    }
}

/// A batch output is delivered once every record it queued is acknowledged (one
/// acknowledgement for them all); a batch cut short by a queueing error is retried whole
/// (its records are idempotent: summaries and the latest state of keys).
fn batch_delivery(
    seq: u64,
    queued: Result<(), EmitError>,
    ack: Acknowledgement,
    out: Output,
) -> Delivery {
    let ack = ack.seal();
    Box::pin(async move {
        let delivered = ack.await;
        (seq, queued.and(delivered), out)
    })
}

fn out_topic(out: &crate::batch::glue::BatchOutput, topics: &crate::config::Outputs) -> String {
    match out {
        crate::batch::glue::BatchOutput::Event(_) => topics.batches_topic.clone(),
        crate::batch::glue::BatchOutput::State { topic, .. } => topic.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_prefix_waits_for_the_oldest_outstanding() {
        let published = Arc::new(AtomicU64::new(0));
        let mut a = Acks {
            outstanding: BTreeSet::new(),
            highest_seen: 0,
            published: published.clone(),
        };
        for s in 1..=4 {
            a.started(s);
        }
        a.done(2);
        a.done(3);
        assert_eq!(published.load(Ordering::Acquire), 0);
        a.done(1);
        assert_eq!(published.load(Ordering::Acquire), 3);
        a.done(4);
        assert_eq!(published.load(Ordering::Acquire), 4);
    }
}
