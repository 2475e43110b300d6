//! Kafka output: breach and lag events (Avro through the registry, or JSON), dead letters.
//!
//! Every output goes the same way: `enqueue_*` hands the record to librdkafka without
//! waiting for the broker and returns an [`Acknowledgement`], a future that resolves once
//! the broker has the record (or librdkafka gave up on it). So the pipeline can keep many
//! records in flight and still learn, per output, when it is safe. A batch output (state
//! records, routed stages, lag summaries) shares one acknowledgement among its records
//! (`*_into`): librdkafka's delivery report settles it directly, with no future, channel
//! or label look-up per record. Enqueueing waits
//! only while librdkafka's local queue is full (back-pressure, counted); synclag sets no
//! delivery deadline of its own. Order of enqueue calls is the order on each partition.
//!
//! Every output fits the topic whatever the input held: breach events are bounded field by
//! field ([`BreachEvent::bounded`]), dead letters as a whole ([`DEAD_LETTER_MAX_BYTES`]), and
//! what was cut is marked in the output and counted.

use super::events::{
    bound_text, BreachEvent, IncidentEvent, LagSummary, BREACH_SCHEMA, INCIDENT_SCHEMA, LAG_SCHEMA,
};
use crate::config::Topology;
use crate::decode::RecordView;
use crate::telemetry::names;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Largest dead letter synclag writes (key, value and headers together), unless
/// `kafka.properties` sets a smaller `message.max.bytes`. Kafka's default limit is 1 MB for
/// a whole record batch (`max.message.bytes`, 1,048,588) and librdkafka refuses messages over
/// its own `message.max.bytes` (1,000,000); this leaves room for the batch and record framing.
pub const DEAD_LETTER_MAX_BYTES: usize = 900 * 1024;

/// Longest key a dead letter keeps; a longer one keeps its first bytes.
pub const DEAD_LETTER_KEY_MAX_BYTES: usize = 16 * 1024;

/// Longest value of one copied input header; a longer one keeps its first bytes.
pub const DEAD_LETTER_HEADER_VALUE_MAX_BYTES: usize = 16 * 1024;

/// Room for all copied input headers together; headers past it are left out.
pub const DEAD_LETTER_HEADERS_MAX_BYTES: usize = 128 * 1024;

/// Longest `synclag.error` text (decoder messages can quote the input).
pub const DEAD_LETTER_ERROR_MAX_BYTES: usize = 4 * 1024;

/// Longest header name copied from the input.
const HEADER_NAME_MAX_BYTES: usize = 256;

/// Bytes counted per header beyond its name and value: the record format's length varints
/// and attributes, rounded up so the estimate never falls short.
const HEADER_FRAMING_BYTES: usize = 16;

/// Kept free for the marker headers added after the value is cut.
const MARKERS_RESERVE_BYTES: usize = 512;

/// First and longest pause while librdkafka's queue is full. Short at first because the
/// queue drains at broker speed; longer later so a broker outage does not spin.
const QUEUE_FULL_FIRST_PAUSE: Duration = Duration::from_millis(1);
const QUEUE_FULL_MAX_PAUSE: Duration = Duration::from_millis(50);

/// Header naming what was cut from a dead letter: `key`, `value`, `headers`, `error`,
/// comma-separated.
pub const TRUNCATED_HEADER: &str = "synclag.truncated";
/// Header with the size in bytes of the input value, on dead letters whose value was cut.
pub const ORIGINAL_VALUE_BYTES_HEADER: &str = "synclag.original.value.bytes";
/// Header with the SHA-256 (hex) of the whole input value, on dead letters whose value was cut.
pub const ORIGINAL_VALUE_SHA256_HEADER: &str = "synclag.original.value.sha256";
/// Header with the size in bytes of the input key, on dead letters whose key was cut.
pub const ORIGINAL_KEY_BYTES_HEADER: &str = "synclag.original.key.bytes";
/// Header with how many headers the input record had, on dead letters that left some out.
pub const ORIGINAL_HEADER_COUNT_HEADER: &str = "synclag.original.headers";

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("cannot create the Kafka producer: {0}")]
    Client(String),
    #[error("cannot encode for `{topic}`: {why}")]
    Encode { topic: String, why: String },
    /// The schema registry could not be reached or answered with a transient error while
    /// the output's schema was being registered or looked up.
    #[error("schema registry unavailable for `{topic}`: {why}")]
    Registry { topic: String, why: String },
    #[error("delivery to `{topic}` failed: {why}")]
    Delivery { topic: String, why: String },
    /// The record is larger than the topic (`max.message.bytes`) or the producer
    /// (`message.max.bytes`) accepts: it fails the same way however often it is sent.
    #[error("`{topic}` refuses the record for its size: {why}")]
    TooLarge { topic: String, why: String },
}

impl EmitError {
    /// Delivery and registry problems may pass; encoding bugs do not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EmitError::Delivery { .. } | EmitError::Registry { .. }
        )
    }
}

/// Resolves once the broker has acknowledged every record queued with it, or with the
/// first error that made librdkafka give up on one of them. Dropping it does not cancel
/// the deliveries, only the news of them. Each record's delivery is counted on
/// `synclag_output_records_total` as librdkafka reports it.
#[must_use = "an acknowledgement says when the output is safe; await it or drop it knowingly"]
pub struct Acknowledgement {
    state: Arc<AckState>,
}

/// What the records of one acknowledgement share with librdkafka's delivery reports.
pub struct AckState {
    /// Records not yet reported, plus one until the acknowledgement is sealed (no record
    /// can be added after that).
    remaining: AtomicUsize,
    failed: Mutex<Option<EmitError>>,
    waker: futures::task::AtomicWaker,
}

impl AckState {
    /// One record is reported: `Err` keeps the first error.
    fn settle(&self, outcome: Result<(), EmitError>) {
        if let Err(e) = outcome {
            if let Ok(mut failed) = self.failed.lock() {
                failed.get_or_insert(e);
            }
        }
        self.release();
    }

    fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }
}

impl Acknowledgement {
    /// An acknowledgement records can be queued with (`Outputs::*_into`); it resolves
    /// only after [`seal`](Self::seal).
    pub fn open() -> Acknowledgement {
        Acknowledgement {
            state: Arc::new(AckState {
                remaining: AtomicUsize::new(1),
                failed: Mutex::new(None),
                waker: futures::task::AtomicWaker::new(),
            }),
        }
    }

    /// No more records come: resolves once those queued are reported.
    pub fn seal(self) -> Acknowledgement {
        self.state.release();
        self
    }

    fn outcome(&self) -> Option<Result<(), EmitError>> {
        if self.state.remaining.load(Ordering::Acquire) != 0 {
            return None;
        }
        let failed = self.state.failed.lock().ok().and_then(|mut f| f.take());
        Some(failed.map_or(Ok(()), Err))
    }
}

impl Future for Acknowledgement {
    type Output = Result<(), EmitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        self.state.waker.register(cx.waker());
        match self.outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

/// The output producer's context: librdkafka's delivery report settles the record's
/// acknowledgement and counts the delivery with a counter handle kept per topic.
pub struct AckContext {
    counters: Mutex<HashMap<String, [metrics::Counter; 2]>>,
}

impl AckContext {
    fn new() -> AckContext {
        AckContext {
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one delivery outcome on `synclag_output_records_total`.
    fn count(&self, topic: &str, ok: bool) {
        let Ok(mut counters) = self.counters.lock() else {
            return count_delivery(topic, ok);
        };
        let pair = match counters.get(topic) {
            Some(pair) => pair,
            None => counters.entry(topic.to_string()).or_insert_with(|| {
                [true, false].map(|ok| {
                    let result = if ok { "ok" } else { "error" };
                    metrics::counter!(names::OUTPUT_RECORDS_TOTAL, "topic" => topic.to_string(), "result" => result)
                })
            }),
        };
        pair[usize::from(!ok)].increment(1);
    }
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<AckState>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<AckState>) {
        let (topic, outcome) = match result {
            Ok(m) => (m.topic(), Ok(())),
            Err((e, m)) => (m.topic(), Err(delivery_error(m.topic(), e))),
        };
        self.count(topic, outcome.is_ok());
        ack.settle(outcome);
    }
}

type OutputRecord<'a> = BaseRecord<'a, [u8], [u8]>;

/// The producer of every synclag output topic.
pub struct Outputs {
    producer: Arc<ThreadedProducer<AckContext>>,
    encoder: Option<AvroEncoder>,
    breaches_topic: String,
    lag_topic: String,
    dead_letter_topic: String,
    incidents_topic: String,
    batches_topic: String,
    dead_letter_max_bytes: usize,
    /// The largest record each output topic takes (its `max.message.bytes`), once read
    /// (see [`Outputs::learn_record_limits`]); records over it are never sent.
    record_limits: std::sync::OnceLock<HashMap<String, usize>>,
    /// The input offsets were added to the open transaction: a commit retried after its
    /// call timed out must resume the commit, not add them again (librdkafka refuses
    /// another transaction call while a timed-out commit is pending, as retriable, for
    /// ever).
    offsets_in_txn: AtomicBool,
}

/// Bytes a record batch adds around one record (batch header 61 bytes, record framing):
/// a record whose key, value and headers come within this of the topic's limit is refused.
const RECORD_BATCH_OVERHEAD_BYTES: usize = 128;

/// librdkafka's default `batch.size`.
const LIBRDKAFKA_BATCH_SIZE: usize = 1_000_000;

impl Outputs {
    pub fn new(topology: &Topology) -> Result<Outputs, EmitError> {
        // Defaults (never give an output up: message.timeout.ms=0), then the user's
        // properties, then idempotence (config::kafka has the table).
        let cfg = crate::config::kafka::output_producer_config(topology);
        let producer: Arc<ThreadedProducer<AckContext>> = Arc::new(
            cfg.create_with_context(AckContext::new())
                .map_err(|e| EmitError::Client(e.to_string()))?,
        );
        // librdkafka looks up a topic it has never produced to only at its next periodic
        // topic scan (every second), which would hold the first breach (or incident) after
        // start-up back by up to a second. Fetching the metadata now puts the topic in the
        // client's cache; in the background, so start-up never waits on the cluster.
        let warm = producer.clone();
        let alerts = [
            topology.outputs.breaches_topic.clone(),
            topology.outputs.incidents_topic.clone(),
        ];
        std::thread::spawn(move || {
            for topic in &alerts {
                let _ = warm
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(10));
            }
        });
        let encoder = topology
            .registry
            .as_ref()
            .map(|r| AvroEncoder::new(crate::decode::avro::sr_settings(r)));
        Ok(Outputs {
            producer,
            encoder,
            breaches_topic: topology.outputs.breaches_topic.clone(),
            lag_topic: topology.outputs.lag_topic.clone(),
            dead_letter_topic: topology.outputs.dead_letter_topic.clone(),
            incidents_topic: topology.outputs.incidents_topic.clone(),
            batches_topic: topology.outputs.batches_topic.clone(),
            dead_letter_max_bytes: dead_letter_max_bytes(topology),
            record_limits: std::sync::OnceLock::new(),
            offsets_in_txn: AtomicBool::new(false),
        })
    }

    /// Reads the `max.message.bytes` of the output topics that exist, so records they
    /// would refuse are made smaller (breach and incident events) or dropped and counted
    /// before they are sent: a record the broker refuses breaks the idempotent producer's
    /// sequence, and inside a transaction it dooms everything written with it. When the
    /// configs cannot be read (no `DescribeConfigs` permission), refusals are handled as
    /// they come back from the broker instead.
    pub async fn learn_record_limits(&self, topology: &Topology) {
        let o = &topology.outputs;
        let topics = [
            &o.breaches_topic,
            &o.incidents_topic,
            &o.lag_topic,
            &o.dead_letter_topic,
            &o.batches_topic,
        ];
        let limits = match read_record_limits(topology, &topics).await {
            Ok(limits) => limits,
            Err(why) => {
                tracing::warn!(error = %why, "cannot read the output topics' max.message.bytes; a record they refuse is handled when the broker refuses it");
                HashMap::new()
            }
        };
        let batch = crate::config::kafka::output_producer_config(topology)
            .get("batch.size")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(LIBRDKAFKA_BATCH_SIZE);
        for (topic, limit) in &limits {
            tracing::debug!(
                topic,
                max_message_bytes = limit,
                "output topic record limit"
            );
            if *limit < batch {
                tracing::warn!(topic, max_message_bytes = limit, batch_size = batch, "output topic takes smaller record batches than the producer builds: set kafka.properties batch.size to at most its max.message.bytes, or the broker refuses whole batches of small records");
            }
        }
        let _ = self.record_limits.set(limits);
    }

    /// Takes the topic limits `other` has read (a producer replacing a fenced one).
    pub fn adopt_record_limits(&self, other: &Outputs) {
        if let Some(limits) = other.record_limits.get() {
            let _ = self.record_limits.set(limits.clone());
        }
    }

    fn record_limit(&self, topic: &str) -> Option<usize> {
        self.record_limits.get()?.get(topic).copied()
    }

    /// The size a dead letter is cut to (key, value and headers together): below the
    /// producer's `message.max.bytes` and the dead-letter topic's own limit.
    pub fn dead_letter_max_bytes(&self) -> usize {
        match self.record_limit(&self.dead_letter_topic) {
            Some(limit) => self
                .dead_letter_max_bytes
                .min(limit.saturating_sub(RECORD_BATCH_OVERHEAD_BYTES + MARKERS_RESERVE_BYTES)),
            None => self.dead_letter_max_bytes,
        }
    }

    async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: &str,
        item: &T,
    ) -> Result<Vec<u8>, EmitError> {
        match &self.encoder {
            None => serde_json::to_vec(item).map_err(|e| EmitError::Encode {
                topic: topic.into(),
                why: e.to_string(),
            }),
            Some(enc) => {
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    topic.to_string(),
                    false,
                    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string()),
                );
                let out = enc.encode_struct(item, &strategy).await;
                if out.is_err() {
                    enc.remove_errors_from_cache();
                }
                out.map_err(|e| {
                    let (topic, why) = (topic.to_string(), e.to_string());
                    if e.retriable {
                        EmitError::Registry { topic, why }
                    } else {
                        EmitError::Encode { topic, why }
                    }
                })
            }
        }
    }

    /// Hands `record` over with an acknowledgement of its own.
    async fn enqueue(&self, record: OutputRecord<'_>) -> Result<Acknowledgement, EmitError> {
        let ack = Acknowledgement::open();
        self.enqueue_into(&ack, record).await?;
        Ok(ack.seal())
    }

    /// The one way records reach librdkafka: hands `record` over, to be reported to `ack`,
    /// waiting (and counting the wait) only while the local queue is full. Any other
    /// refusal (e.g. a record over `message.max.bytes`) is an error at once, and the record
    /// is not part of `ack`.
    async fn enqueue_into(
        &self,
        ack: &Acknowledgement,
        record: OutputRecord<'_>,
    ) -> Result<(), EmitError> {
        let topic = record.topic;
        if let Some(limit) = self.record_limit(topic) {
            let headers = record.headers.as_ref().map_or(0, |h| {
                h.iter()
                    .map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len) + 8)
                    .sum::<usize>()
            });
            let size = record.key.map_or(0, <[u8]>::len)
                + record.payload.map_or(0, <[u8]>::len)
                + headers
                + RECORD_BATCH_OVERHEAD_BYTES;
            if size > limit {
                return Err(EmitError::TooLarge {
                    topic: topic.to_string(),
                    why: format!("{size} bytes with framing; the topic takes at most {limit} (max.message.bytes)"),
                });
            }
        }
        ack.state.remaining.fetch_add(1, Ordering::AcqRel);
        let mut record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: ack.state.clone(),
        };
        let mut waiting: Option<QueueWait> = None;
        let mut pause = QUEUE_FULL_FIRST_PAUSE;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = back;
                    if waiting.is_none() {
                        waiting = Some(QueueWait::start(topic));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(QUEUE_FULL_MAX_PAUSE);
                }
                Err((e, _)) => {
                    // Never queued: no report comes for it.
                    ack.state.release();
                    self.producer.context().count(topic, false);
                    return Err(delivery_error(topic, &e));
                }
            }
        }
    }

    /// Bounds a breach event ([`BreachEvent::bounded`], so no path can skip it), encodes it
    /// and hands it to the producer keyed `workflow/correlation_id`.
    pub async fn enqueue_breach(&self, event: &BreachEvent) -> Result<Acknowledgement, EmitError> {
        let what = || format!("breach event {}", event.breach_id);
        let first = self.enqueue_breach_as_is(event);
        or_smallest(&self.breaches_topic, what, first, || async {
            self.enqueue_breach_as_is(&event.smallest()).await
        })
        .await
    }

    async fn enqueue_breach_as_is(
        &self,
        event: &BreachEvent,
    ) -> Result<Acknowledgement, EmitError> {
        let event = event.bounded_cow();
        for field in &event.truncated {
            // `dimensions.<key>` counts as `dimensions`: labels stay a fixed set.
            let field = field.split('.').next().unwrap_or(field);
            count_truncation(&self.breaches_topic, field);
        }
        let bytes = self
            .encode(&self.breaches_topic, BREACH_SCHEMA, &*event)
            .await?;
        let key = event.key();
        self.enqueue(
            OutputRecord::to(&self.breaches_topic)
                .key(key.as_bytes())
                .payload(bytes.as_slice()),
        )
        .await
    }

    /// Encodes one incident event (its texts are bounded where it is built) and hands it
    /// to the producer keyed by `incident_id`.
    pub async fn enqueue_incident(
        &self,
        event: &IncidentEvent,
    ) -> Result<Acknowledgement, EmitError> {
        let what = || format!("incident event {} #{}", event.incident_id, event.sequence);
        let first = self.enqueue_incident_as_is(event);
        or_smallest(&self.incidents_topic, what, first, || async {
            self.enqueue_incident_as_is(&event.smallest()).await
        })
        .await
    }

    async fn enqueue_incident_as_is(
        &self,
        event: &IncidentEvent,
    ) -> Result<Acknowledgement, EmitError> {
        let bytes = self
            .encode(&self.incidents_topic, INCIDENT_SCHEMA, event)
            .await?;
        self.enqueue(
            OutputRecord::to(&self.incidents_topic)
                .key(event.key().as_bytes())
                .payload(bytes.as_slice()),
        )
        .await
    }

    /// Hands one already encoded record to the producer (`None`: a tombstone).
    pub async fn enqueue_raw(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Acknowledgement, EmitError> {
        let ack = Acknowledgement::open();
        self.enqueue_raw_into(&ack, topic, partition, key, value)
            .await?;
        Ok(ack.seal())
    }

    /// [`enqueue_raw`](Self::enqueue_raw), reported to `ack` (one of a batch).
    pub async fn enqueue_raw_into(
        &self,
        ack: &Acknowledgement,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), EmitError> {
        let mut record = OutputRecord::to(topic).key(key);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.enqueue_into(ack, record).await
    }

    /// A batch run event (Avro `schemas/batch.avsc`, or JSON without a registry), keyed
    /// `workflow/scheduled/check`; or a batch state record (always JSON: internal), keyed by
    /// workflow.
    pub async fn enqueue_batch(
        &self,
        out: &crate::batch::glue::BatchOutput,
    ) -> Result<Acknowledgement, EmitError> {
        use crate::batch::glue::BatchOutput;
        match out {
            BatchOutput::Event(ev) => {
                let bytes = self
                    .encode(&self.batches_topic, crate::batch::BATCH_SCHEMA, ev.as_ref())
                    .await?;
                self.enqueue(
                    OutputRecord::to(&self.batches_topic)
                        .key(ev.key().as_bytes())
                        .payload(bytes.as_slice()),
                )
                .await
            }
            BatchOutput::State { topic, record } => {
                let bytes = serde_json::to_vec(record.as_ref()).map_err(|e| EmitError::Encode {
                    topic: topic.clone(),
                    why: e.to_string(),
                })?;
                self.enqueue(
                    OutputRecord::to(topic)
                        .key(record.state.workflow.as_bytes())
                        .payload(bytes.as_slice()),
                )
                .await
            }
        }
    }

    /// Encodes one lag summary and hands it to the producer, keyed by workflow, reported
    /// to `ack` (summaries go as a batch).
    pub async fn enqueue_lag_into(
        &self,
        ack: &Acknowledgement,
        summary: &LagSummary,
    ) -> Result<(), EmitError> {
        let bytes = self.encode(&self.lag_topic, LAG_SCHEMA, summary).await?;
        self.enqueue_into(
            ack,
            OutputRecord::to(&self.lag_topic)
                .key(summary.workflow.as_bytes())
                .payload(bytes.as_slice()),
        )
        .await
    }

    /// Hands a copy of a record that could not be processed to the dead-letter topic: its
    /// key, value, timestamp and headers, plus `synclag.reason`, `synclag.error` and
    /// `synclag.source.topic|partition|offset`. Cut to [`Outputs::dead_letter_max_bytes`] when
    /// larger, with marker headers ([`TRUNCATED_HEADER`] and the original sizes).
    pub async fn enqueue_dead_letter(
        &self,
        record: &RecordView<'_>,
        reason: &str,
        error: &str,
    ) -> Result<Acknowledgement, EmitError> {
        let letter = DeadLetter::new(record, reason, error, self.dead_letter_max_bytes);
        for field in &letter.cut {
            count_truncation(&self.dead_letter_topic, field);
        }
        let mut rec: OutputRecord<'_> =
            OutputRecord::to(&self.dead_letter_topic).headers(letter.headers);
        if let Some(k) = letter.key {
            rec = rec.key(k);
        }
        if let Some(v) = letter.value {
            rec = rec.payload(v);
        }
        if let Some(ts) = record.timestamp_ms {
            rec = rec.timestamp(ts);
        }
        self.enqueue(rec).await
    }
}

/// What a failed transaction call asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnFailure {
    /// Transient (a timeout, the coordinator moving): the same call may be made again.
    Retry(String),
    /// The transaction cannot commit: abort it and write its records again.
    Abort(String),
    /// The producer cannot go on (another process took over this `transactional.id`).
    Fatal(String),
    /// The input offsets were refused: the consumer group moved on from the generation
    /// they were sent with (partitions may have moved to another member). The
    /// transaction must be aborted.
    GroupMoved(String),
}

impl std::fmt::Display for TxnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnFailure::Retry(why) => write!(f, "transient: {why}"),
            TxnFailure::Abort(why) => write!(f, "transaction must be aborted: {why}"),
            TxnFailure::Fatal(why) => write!(f, "fatal: {why}"),
            TxnFailure::GroupMoved(why) => write!(f, "the consumer group moved on: {why}"),
        }
    }
}

fn txn_failure(e: KafkaError) -> TxnFailure {
    match &e {
        KafkaError::Transaction(rd)
            if matches!(
                rd.code(),
                RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::FencedInstanceId
                    | RDKafkaErrorCode::RebalanceInProgress
            ) =>
        {
            TxnFailure::GroupMoved(e.to_string())
        }
        KafkaError::Transaction(rd) if rd.is_fatal() => TxnFailure::Fatal(e.to_string()),
        KafkaError::Transaction(rd) if rd.txn_requires_abort() => TxnFailure::Abort(e.to_string()),
        KafkaError::Transaction(rd) if rd.is_retriable() => TxnFailure::Retry(e.to_string()),
        // A commit first waits for what is in flight; not done within its timeout, the
        // commit is called again.
        KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => TxnFailure::Retry(e.to_string()),
        _ => TxnFailure::Abort(e.to_string()),
    }
}

/// Transactions of the output producer (`store.exactly_once`). Each call blocks until
/// the transaction coordinator answers or `timeout` passes: call them off the async
/// worker threads (`tokio::task::block_in_place`).
impl Outputs {
    /// What a failed transaction call means. A producer with a fatal error (its
    /// transaction coordinator fenced it, say, after the transaction timed out in an
    /// outage) can only be replaced, whatever the call reports (a call may still answer
    /// with a retriable error).
    fn txn_failure(&self, e: KafkaError) -> TxnFailure {
        match self.producer.client().fatal_error() {
            Some((code, why)) => TxnFailure::Fatal(format!(
                "{e} (the producer has a fatal error: {code:?}: {why})"
            )),
            None => txn_failure(e),
        }
    }

    /// Registers the `transactional.id`, fencing and aborting what an earlier process
    /// with the same id left open.
    pub fn txn_init(&self, timeout: Duration) -> Result<(), TxnFailure> {
        self.producer
            .init_transactions(timeout)
            .map_err(|e| self.txn_failure(e))
    }

    pub fn txn_begin(&self) -> Result<(), TxnFailure> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_failure(e))?;
        self.offsets_in_txn.store(false, Ordering::Release);
        Ok(())
    }

    /// Adds the input offsets (if any) to the open transaction and commits it: every
    /// record produced since [`Outputs::txn_begin`] becomes visible together with them.
    /// Safe to call again with the same arguments after a `Retry`: offsets already added
    /// are not added again, so a commit that timed out is resumed.
    pub fn txn_commit(
        &self,
        offsets: &[((String, i32), i64)],
        group: Option<&ConsumerGroupMetadata>,
        timeout: Duration,
    ) -> Result<(), TxnFailure> {
        let pending = !self.offsets_in_txn.load(Ordering::Acquire);
        if let (true, false, Some(group)) = (pending, offsets.is_empty(), group) {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| TxnFailure::Abort(e.to_string()))?;
            }
            self.producer
                .send_offsets_to_transaction(&tpl, group, timeout)
                .map_err(|e| self.txn_failure(e))?;
            self.offsets_in_txn.store(true, Ordering::Release);
        }
        self.producer
            .commit_transaction(timeout)
            .map_err(|e| self.txn_failure(e))
    }

    /// Aborts the open transaction: nothing produced in it is seen by `read_committed`
    /// readers.
    pub fn txn_abort(&self, timeout: Duration) -> Result<(), TxnFailure> {
        self.producer
            .abort_transaction(timeout)
            .map_err(|e| self.txn_failure(e))
    }
}

/// One record waiting for room in librdkafka's queue: shown while it waits (a gauge, so a
/// long broker outage is visible as it happens) and its duration recorded when it ends,
/// also when the waiting future is dropped.
struct QueueWait {
    topic: String,
    since: Instant,
}

impl QueueWait {
    fn start(topic: &str) -> QueueWait {
        metrics::gauge!(names::OUTPUT_QUEUE_FULL_WAITING, "topic" => topic.to_string())
            .increment(1.0);
        QueueWait {
            topic: topic.to_string(),
            since: Instant::now(),
        }
    }
}

impl Drop for QueueWait {
    fn drop(&mut self) {
        metrics::gauge!(names::OUTPUT_QUEUE_FULL_WAITING, "topic" => self.topic.clone())
            .decrement(1.0);
        metrics::histogram!(names::OUTPUT_QUEUE_FULL_WAIT_SECONDS, "topic" => self.topic.clone())
            .record(self.since.elapsed().as_secs_f64());
    }
}

/// [`DEAD_LETTER_MAX_BYTES`], or less when `kafka.properties` lowers librdkafka's
/// `message.max.bytes` (keeping a tenth of it for framing).
fn dead_letter_max_bytes(topology: &Topology) -> usize {
    topology
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|m| (m - m / 10).min(DEAD_LETTER_MAX_BYTES))
        .unwrap_or(DEAD_LETTER_MAX_BYTES)
}

/// A dead letter cut to fit: what it borrows from the input record, its headers, and the
/// names of what was cut (for the metric).
struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: OwnedHeaders,
    cut: Vec<&'static str>,
}

impl<'a> DeadLetter<'a> {
    fn new(record: &RecordView<'a>, reason: &str, error: &str, max_bytes: usize) -> DeadLetter<'a> {
        let mut cut: Vec<&'static str> = Vec::new();
        let mut markers: Vec<(&'static str, String)> = Vec::new();
        let mut headers = OwnedHeaders::new();
        let mut used = 0usize;

        let key = record.key.map(|k| {
            if k.len() > DEAD_LETTER_KEY_MAX_BYTES {
                note(&mut cut, "key");
                markers.push((ORIGINAL_KEY_BYTES_HEADER, k.len().to_string()));
                &k[..DEAD_LETTER_KEY_MAX_BYTES]
            } else {
                k
            }
        });
        used += key.map_or(0, <[u8]>::len);

        // The input's own headers first, in their order, as far as their budget goes.
        let mut copied = 0usize;
        for (name, value) in record.headers {
            let bounded_name = bound_text(name, HEADER_NAME_MAX_BYTES);
            let bounded_value =
                value.map(|v| &v[..v.len().min(DEAD_LETTER_HEADER_VALUE_MAX_BYTES)]);
            let size =
                bounded_name.len() + bounded_value.map_or(0, <[u8]>::len) + HEADER_FRAMING_BYTES;
            if copied + size > DEAD_LETTER_HEADERS_MAX_BYTES {
                markers.push((
                    ORIGINAL_HEADER_COUNT_HEADER,
                    record.headers.len().to_string(),
                ));
                note(&mut cut, "headers");
                break;
            }
            if bounded_name.len() < name.len()
                || bounded_value.map_or(0, <[u8]>::len) < value.map_or(0, <[u8]>::len)
            {
                note(&mut cut, "headers");
            }
            copied += size;
            headers = headers.insert(Header {
                key: bounded_name.as_ref(),
                value: bounded_value,
            });
        }
        used += copied;

        let error = bound_text(error, DEAD_LETTER_ERROR_MAX_BYTES);
        if matches!(error, std::borrow::Cow::Owned(_)) {
            note(&mut cut, "error");
        }
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        for (k, v) in [
            (
                "synclag.reason",
                bound_text(reason, HEADER_NAME_MAX_BYTES).as_ref(),
            ),
            ("synclag.error", error.as_ref()),
            ("synclag.source.topic", record.topic),
            ("synclag.source.partition", partition.as_str()),
            ("synclag.source.offset", offset.as_str()),
        ] {
            used += k.len() + v.len() + HEADER_FRAMING_BYTES;
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }

        let room = max_bytes.saturating_sub(used + MARKERS_RESERVE_BYTES);
        let value = record.payload.map(|v| {
            if v.len() > room {
                note(&mut cut, "value");
                markers.push((ORIGINAL_VALUE_BYTES_HEADER, v.len().to_string()));
                markers.push((ORIGINAL_VALUE_SHA256_HEADER, sha256_hex(v)));
                &v[..room]
            } else {
                v
            }
        });

        if !cut.is_empty() {
            markers.push((TRUNCATED_HEADER, cut.join(",")));
        }
        for (k, v) in &markers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        DeadLetter {
            key,
            value,
            headers,
            cut,
        }
    }
}

fn note(cut: &mut Vec<&'static str>, part: &'static str) {
    if !cut.contains(&part) {
        cut.push(part);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Counts one delivery outcome on `synclag_output_records_total`.
fn count_delivery(topic: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(names::OUTPUT_RECORDS_TOTAL, "topic" => topic.to_string(), "result" => result)
        .increment(1);
}

/// Counts one field cut to fit on `synclag_output_truncations_total`.
/// `first`, or — when `topic` refuses it for its size — what `smallest` queues instead
/// (the event's smallest form), counted and logged.
async fn or_smallest<First, Smallest, Fut>(
    topic: &str,
    what: impl FnOnce() -> String,
    first: First,
    smallest: Smallest,
) -> Result<Acknowledgement, EmitError>
where
    First: Future<Output = Result<Acknowledgement, EmitError>>,
    Smallest: FnOnce() -> Fut,
    Fut: Future<Output = Result<Acknowledgement, EmitError>>,
{
    match first.await {
        Err(EmitError::TooLarge { why, .. }) => {
            count_truncation(topic, "smallest_form");
            tracing::warn!(topic, error = %why, "{} too large for its topic; sending its smallest form (evidence left out, texts cut)", what());
            smallest().await
        }
        other => other,
    }
}

/// `max.message.bytes` of each of `topics` that exists.
async fn read_record_limits(
    topology: &Topology,
    topics: &[&String],
) -> Result<HashMap<String, usize>, String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        crate::config::kafka::admin_config(topology)
            .create()
            .map_err(|e| e.to_string())?;
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs(&specs, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (result, topic) in results.into_iter().zip(topics) {
        let Ok(resource) = result else { continue };
        if let Some(limit) = resource
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            out.insert(topic.to_string(), limit);
        }
    }
    Ok(out)
}

/// A record librdkafka or the broker did not take: refused for its size, or failed.
fn delivery_error(topic: &str, e: &KafkaError) -> EmitError {
    let (topic, why) = (topic.to_string(), e.to_string());
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
        EmitError::TooLarge { topic, why }
    } else {
        EmitError::Delivery { topic, why }
    }
}

fn count_truncation(topic: &str, field: &str) {
    metrics::counter!(names::OUTPUT_TRUNCATIONS_TOTAL, "topic" => topic.to_string(), "field" => field.to_string())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn view<'a>(
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: &'a [(String, Option<&'a [u8]>)],
    ) -> RecordView<'a> {
        RecordView {
            topic: "wms.events",
            partition: 3,
            offset: 42,
            key,
            payload,
            headers,
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    fn header_map(h: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        h.iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect()
    }

    fn header<'h>(h: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
        h.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    /// What the dead letter occupies, counted the way the budget counts it.
    fn size(letter: &DeadLetter<'_>, headers: &[(String, Vec<u8>)]) -> usize {
        letter.key.map_or(0, <[u8]>::len)
            + letter.value.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + HEADER_FRAMING_BYTES)
                .sum::<usize>()
    }

    #[test]
    fn a_small_record_is_copied_whole_with_reason_and_source() {
        let original = [("trace".to_string(), Some(&b"abc"[..]))];
        let record = view(Some(b"k1"), Some(b"{not json"), &original);
        let letter = DeadLetter::new(&record, "not_json", "expected value", DEAD_LETTER_MAX_BYTES);
        assert_eq!(letter.key, Some(&b"k1"[..]));
        assert_eq!(letter.value, Some(&b"{not json"[..]));
        assert!(letter.cut.is_empty());
        let h = header_map(&letter.headers);
        assert_eq!(h[0], ("trace".to_string(), b"abc".to_vec()));
        assert_eq!(header(&h, "synclag.reason"), Some("not_json"));
        assert_eq!(header(&h, "synclag.error"), Some("expected value"));
        assert_eq!(header(&h, "synclag.source.topic"), Some("wms.events"));
        assert_eq!(header(&h, "synclag.source.partition"), Some("3"));
        assert_eq!(header(&h, "synclag.source.offset"), Some("42"));
        assert_eq!(header(&h, TRUNCATED_HEADER), None);
    }

    #[test]
    fn a_five_megabyte_value_is_cut_to_fit_and_marked() {
        let value = vec![b'x'; 5 << 20];
        let original = [("id".to_string(), Some(&b"7"[..]))];
        let record = view(Some(b"k"), Some(&value), &original);
        let letter = DeadLetter::new(&record, "not_json", "too big", DEAD_LETTER_MAX_BYTES);
        let h = header_map(&letter.headers);
        assert!(
            size(&letter, &h) <= DEAD_LETTER_MAX_BYTES,
            "{}",
            size(&letter, &h)
        );
        let kept = letter.value.unwrap().len();
        assert!(
            kept > DEAD_LETTER_MAX_BYTES - 8 * 1024,
            "keeps as much as fits: {kept}"
        );
        assert_eq!(letter.cut, vec!["value"]);
        assert_eq!(header(&h, TRUNCATED_HEADER), Some("value"));
        assert_eq!(
            header(&h, ORIGINAL_VALUE_BYTES_HEADER),
            Some((5usize << 20).to_string().as_str())
        );
        assert_eq!(
            header(&h, ORIGINAL_VALUE_SHA256_HEADER),
            Some(sha256_hex(&value).as_str())
        );
        assert_eq!(header(&h, "id"), Some("7"));
        assert_eq!(header(&h, "synclag.reason"), Some("not_json"));
    }

    #[test]
    fn oversized_keys_headers_and_errors_are_bounded_too() {
        let key = vec![b'k'; 1 << 20];
        let big = vec![b'h'; 1 << 20];
        let mut original: Vec<(String, Option<&[u8]>)> = vec![("n".repeat(1000), Some(&big[..]))];
        for i in 0..200 {
            original.push((format!("h{i}"), Some(&big[..2000])));
        }
        let record = view(Some(&key), Some(&big), &original);
        let error = "e".repeat(1 << 20);
        let letter = DeadLetter::new(&record, "bad_correlation_id", &error, DEAD_LETTER_MAX_BYTES);
        let h = header_map(&letter.headers);
        assert!(
            size(&letter, &h) <= DEAD_LETTER_MAX_BYTES,
            "{}",
            size(&letter, &h)
        );
        assert_eq!(letter.key.unwrap().len(), DEAD_LETTER_KEY_MAX_BYTES);
        assert_eq!(letter.cut, vec!["key", "headers", "error", "value"]);
        assert_eq!(
            header(&h, TRUNCATED_HEADER),
            Some("key,headers,error,value")
        );
        assert_eq!(header(&h, ORIGINAL_KEY_BYTES_HEADER), Some("1048576"));
        assert_eq!(header(&h, ORIGINAL_HEADER_COUNT_HEADER), Some("201"));
        assert!(header(&h, "synclag.error").unwrap().len() <= DEAD_LETTER_ERROR_MAX_BYTES);
        assert!(h[0].0.len() <= HEADER_NAME_MAX_BYTES);
        assert_eq!(h[0].1.len(), DEAD_LETTER_HEADER_VALUE_MAX_BYTES);
        assert_eq!(header(&h, "h0").map(str::len), Some(2000));
        assert_eq!(header(&h, "synclag.reason"), Some("bad_correlation_id"));
    }

    /// The pipeline enqueues from spawned tasks and keeps acknowledgements past the
    /// record they came from: a type error here, not a runtime failure, if that breaks.
    #[test]
    fn enqueueing_and_acknowledgements_can_move_between_tasks() {
        fn is_send<T: Send>(_: T) {}
        fn is_send_and_static<T: Send + 'static>() {}
        is_send_and_static::<Acknowledgement>();
        let _type_check_only = |o: &Outputs,
                                r: &RecordView<'_>,
                                b: &BreachEvent,
                                l: &LagSummary,
                                a: &Acknowledgement| {
            is_send(o.enqueue_dead_letter(r, "not_json", "e"));
            is_send(o.enqueue_breach(b));
            is_send(o.enqueue_lag_into(a, l));
        };
    }

    /// A shared acknowledgement resolves only once it is sealed and every record queued
    /// with it is reported, with the first error any of them had.
    #[test]
    fn a_shared_acknowledgement_waits_for_its_seal_and_every_record() {
        use futures::FutureExt;
        let ack = Acknowledgement::open();
        let records: Vec<Arc<AckState>> = (0..3)
            .map(|_| {
                ack.state.remaining.fetch_add(1, Ordering::AcqRel);
                ack.state.clone()
            })
            .collect();
        records[1].settle(Err(EmitError::Delivery {
            topic: "t".into(),
            why: "first".into(),
        }));
        records[0].settle(Ok(()));
        records[2].settle(Err(EmitError::Delivery {
            topic: "t".into(),
            why: "second".into(),
        }));
        let mut ack = ack;
        assert!((&mut ack).now_or_never().is_none(), "not sealed yet");
        let outcome = ack.seal().now_or_never().expect("sealed, all reported");
        assert!(matches!(outcome, Err(EmitError::Delivery { why, .. }) if why == "first"));

        let ack = Acknowledgement::open();
        ack.state.remaining.fetch_add(1, Ordering::AcqRel);
        let record = ack.state.clone();
        let mut ack = ack.seal();
        assert!((&mut ack).now_or_never().is_none(), "one record unreported");
        record.settle(Ok(()));
        assert!(matches!(ack.now_or_never(), Some(Ok(()))));
    }

    #[test]
    fn a_smaller_message_max_bytes_lowers_the_dead_letter_limit() {
        let yaml = include_str!("../../topology.yaml");
        let mut t = Topology::from_yaml_str("t.yaml", yaml, Vec::new()).unwrap();
        assert_eq!(dead_letter_max_bytes(&t), DEAD_LETTER_MAX_BYTES);
        t.kafka
            .properties
            .insert("message.max.bytes".into(), "500000".into());
        assert_eq!(dead_letter_max_bytes(&t), 450_000);
    }
}
