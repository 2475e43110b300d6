//! The batch book in the running service: its state topic, outputs, metrics and API.
//!
//! State of recent runs lives in a compacted topic of its own, `<service.group_id>.batch-runs`
//! (one partition, created at start when missing), one record per batch workflow keyed by
//! its name (JSON [`StateRecord`]). It is read back to its end before the first input
//! record, and written when a workflow's state changed, just before input offsets are
//! committed: the commit waits for the write's acknowledgement (see `ingest::commit`), so a
//! committed record is always in the persisted state. Records read again after a restart
//! (offsets at or below what the state counted) are recognised and not counted twice.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    BatchBook, BatchEvent, BatchRecord, Check, Found, Severity, StateRecord, WorkflowView,
};
use crate::config::Topology;
use crate::decode::Decoded;
use crate::emit::events::IncidentEvent;
use crate::telemetry::names;

/// A state record larger than this is written without its id sets (Kafka's default
/// record limit is 1 MB).
const MAX_STATE_BYTES: usize = 900_000;
/// How long start-up waits to read the state topic to its end.
const RESTORE_BUDGET: Duration = Duration::from_secs(30);
/// Runs per workflow in `/api/v1/batches`.
const API_RUNS: usize = 20;

/// What `/api/v1/batches` serves: the pipeline replaces it once a second.
pub type BatchesView = Arc<RwLock<Vec<WorkflowView>>>;

/// The book plus what connects it to the service.
pub struct BatchRuntime {
    pub book: BatchBook,
    topic: String,
    view: BatchesView,
    published: super::Counters,
}

/// One batch output for the emitter.
#[derive(Debug, Clone)]
pub enum BatchOutput {
    /// To `outputs.batches_topic`.
    Event(Box<BatchEvent>),
    /// To the batch state topic (named here: it derives from the group id).
    State {
        topic: String,
        record: Box<StateRecord>,
    },
}

impl BatchRuntime {
    pub fn new(topology: &Topology, view: BatchesView) -> BatchRuntime {
        let book = BatchBook::new(topology);
        for name in book.workflow_names() {
            preregister(&name);
        }
        for bound in [
            "untracked_ids",
            "erp_forgotten",
            "runs_pruned",
            "state_ids_dropped",
        ] {
            metrics::counter!(names::BATCH_BOUND_HITS_TOTAL, "bound" => bound).absolute(0);
        }
        metrics::counter!(names::BATCH_REPLAYED_RECORDS_TOTAL).absolute(0);
        for stage in ["restore", "encode"] {
            metrics::counter!(names::BATCH_STATE_ERRORS_TOTAL, "stage" => stage).absolute(0);
        }
        BatchRuntime {
            book,
            topic: topology.batch_state_topic(),
            view,
            published: super::Counters::default(),
        }
    }

    pub fn state_topic(&self) -> &str {
        &self.topic
    }

    /// Creates the state topic when missing and reads it to its end into the book.
    /// Returns the number of workflow states restored.
    pub async fn restore(&mut self, topology: &Topology) -> Result<usize, String> {
        if self.book.is_empty() {
            return Ok(0);
        }
        let (topic, t) = (self.topic.clone(), topology.clone());
        let exists = tokio::task::spawn_blocking(move || state_topic_exists(&t, &topic))
            .await
            .map_err(|e| e.to_string())?;
        if !exists {
            create_state_topic(topology, &self.topic).await?;
        }
        let topic = self.topic.clone();
        let topology = topology.clone();
        let records = tokio::task::spawn_blocking(move || read_state(&topology, &topic))
            .await
            .map_err(|e| e.to_string())??;
        let mut restored = 0;
        for (key, value) in records {
            match serde_json::from_slice::<StateRecord>(&value) {
                Ok(r) if r.version == StateRecord::VERSION => {
                    if self.book.restore(r) {
                        restored += 1;
                    }
                }
                Ok(r) => {
                    metrics::counter!(names::BATCH_STATE_ERRORS_TOTAL, "stage" => "restore")
                        .increment(1);
                    tracing::error!(workflow = %key, version = r.version, "batch state of an unknown version; its runs start afresh");
                }
                Err(e) => {
                    metrics::counter!(names::BATCH_STATE_ERRORS_TOTAL, "stage" => "restore")
                        .increment(1);
                    tracing::error!(workflow = %key, error = %e, "unreadable batch state; its runs start afresh");
                }
            }
        }
        Ok(restored)
    }

    /// A decoded record of any stream; returns whether a batch workflow used it.
    pub fn observe(
        &mut self,
        d: &Decoded,
        source: (&str, i32, i64),
        now_ms: i64,
        out: &mut Vec<BatchOutput>,
        incidents: &mut Vec<IncidentEvent>,
    ) -> bool {
        if !self.book.reads(d.stream) {
            return false;
        }
        let time_ms = d.event_time_ms.or(d.kafka_time_ms).unwrap_or(now_ms);
        let rec = BatchRecord {
            stream: d.stream,
            id: &d.correlation_id,
            event_type: d.event_type.as_deref(),
            time_ms,
            fields: &d.dimensions,
            source: Some(source),
        };
        let mut found = Found::default();
        let used = self.book.observe(&rec, now_ms, &mut found);
        self.found(found, out, incidents);
        used
    }

    /// The clock moved.
    pub fn advance(
        &mut self,
        now_ms: i64,
        out: &mut Vec<BatchOutput>,
        incidents: &mut Vec<IncidentEvent>,
    ) {
        if self.book.is_empty() {
            return;
        }
        let mut found = Found::default();
        self.book.advance(now_ms, &mut found);
        self.found(found, out, incidents);
    }

    fn found(
        &mut self,
        found: Found,
        out: &mut Vec<BatchOutput>,
        incidents: &mut Vec<IncidentEvent>,
    ) {
        for ev in found.events {
            metrics::counter!(names::BATCH_FINDINGS_TOTAL, "workflow" => ev.workflow.clone(), "check" => ev.check.clone(), "severity" => ev.severity.clone()).increment(1);
            if ev.severity == "ok" {
                tracing::info!(workflow = %ev.workflow, check = %ev.check, status = %ev.status, scheduled = %ev.scheduled_local, "{}", ev.detail);
            } else {
                tracing::warn!(workflow = %ev.workflow, check = %ev.check, status = %ev.status, severity = %ev.severity, scheduled = %ev.scheduled_local, "{}", ev.detail);
            }
            out.push(BatchOutput::Event(Box::new(ev)));
        }
        incidents.extend(found.incidents);
    }

    /// State records of the workflows that changed, to write before the next commit.
    pub fn persist(&mut self, out: &mut Vec<BatchOutput>) {
        for mut record in self.book.take_dirty() {
            let size = serde_json::to_vec(&record).map_or(usize::MAX, |v| v.len());
            if size > MAX_STATE_BYTES {
                // Counts survive; duplicates and reconciliation of the open runs restart
                // from the records read after a restart.
                for run in &mut record.state.runs {
                    run.ids.clear();
                    run.unmatched.clear();
                }
                metrics::counter!(names::BATCH_BOUND_HITS_TOTAL, "bound" => "state_ids_dropped")
                    .increment(1);
            }
            out.push(BatchOutput::State {
                topic: self.topic.clone(),
                record: Box::new(record),
            });
        }
    }

    /// Metrics and the API view, once a second.
    pub fn publish(&mut self, now_ms: i64) {
        if self.book.is_empty() {
            return;
        }
        for (name, last) in self.book.last_completed() {
            let Some(r) = last else { continue };
            let done = r.completed_at_ms.unwrap_or(0);
            metrics::gauge!(names::BATCH_LAST_RUN_TIMESTAMP, "workflow" => name.clone())
                .set(done as f64 / 1000.0);
            let duration = r
                .started_at_ms
                .map_or(f64::NAN, |s| (done - s).max(0) as f64 / 1000.0);
            metrics::gauge!(names::BATCH_RUN_DURATION, "workflow" => name.clone()).set(duration);
            metrics::gauge!(names::BATCH_RUN_RECORDS, "workflow" => name.clone())
                .set(r.distinct_records as f64);
            metrics::gauge!(names::BATCH_COMPLETENESS_RATIO, "workflow" => name.clone())
                .set(r.completeness_ratio.unwrap_or(f64::NAN));
            metrics::gauge!(names::BATCH_VOLUME_VARIANCE_RATIO, "workflow" => name.clone())
                .set(r.variance_ratio.unwrap_or(f64::NAN));
            if let Some(ratio) = r.reconciliation_ratio {
                metrics::gauge!(names::BATCH_RECONCILIATION_RATIO, "workflow" => name.clone())
                    .set(ratio);
            }
        }
        let c = self.book.counters();
        let p = self.published;
        for (bound, now, before) in [
            ("untracked_ids", c.untracked_ids, p.untracked_ids),
            ("erp_forgotten", c.erp_forgotten, p.erp_forgotten),
            ("runs_pruned", c.runs_pruned, p.runs_pruned),
        ] {
            if now > before {
                metrics::counter!(names::BATCH_BOUND_HITS_TOTAL, "bound" => bound)
                    .increment(now - before);
            }
        }
        if c.replayed_records > p.replayed_records {
            metrics::counter!(names::BATCH_REPLAYED_RECORDS_TOTAL)
                .increment(c.replayed_records - p.replayed_records);
        }
        if c.bad_trailers > p.bad_trailers {
            metrics::counter!(names::BATCH_BAD_TRAILERS_TOTAL)
                .increment(c.bad_trailers - p.bad_trailers);
        }
        self.published = c;
        let views = self.book.views(now_ms, API_RUNS);
        match self.view.write() {
            Ok(mut g) => *g = views,
            Err(p) => *p.into_inner() = views,
        }
    }
}

fn preregister(workflow: &str) {
    let w = workflow.to_string();
    metrics::gauge!(names::BATCH_LAST_RUN_TIMESTAMP, "workflow" => w.clone()).set(0.0);
    for g in [
        names::BATCH_RUN_DURATION,
        names::BATCH_RUN_RECORDS,
        names::BATCH_COMPLETENESS_RATIO,
        names::BATCH_VOLUME_VARIANCE_RATIO,
        names::BATCH_RECONCILIATION_RATIO,
    ] {
        metrics::gauge!(g, "workflow" => w.clone()).set(f64::NAN);
    }
    for check in Check::ALL {
        for sev in Severity::ALL {
            metrics::counter!(names::BATCH_FINDINGS_TOTAL, "workflow" => w.clone(), "check" => check.name(), "severity" => sev.name()).absolute(0);
        }
    }
    metrics::counter!(names::BATCH_BAD_TRAILERS_TOTAL).absolute(0);
}

fn state_reader(topology: &Topology) -> Result<BaseConsumer, String> {
    // A consumer's metadata requests never auto-create the topic (a producer's or an admin
    // client's may, without compaction).
    let mut cfg = crate::config::kafka::admin_config(topology);
    cfg.set("enable.auto.commit", "false");
    cfg.set("allow.auto.create.topics", "false");
    // Read to the end: written in transactions, the topic ends with a commit marker that
    // is never handed out, so the end is known from the end-of-partition event (which a
    // read_committed reader gets at the last stable offset).
    cfg.set("enable.partition.eof", "true");
    cfg.set("isolation.level", "read_committed");
    cfg.set(
        "group.id",
        format!("{}.batch-restore", topology.service.group_id),
    );
    cfg.create().map_err(|e| format!("state reader: {e}"))
}

/// Whether the state topic exists (checked first: creating an existing topic is refused
/// by some clusters only after a timeout).
fn state_topic_exists(topology: &Topology, topic: &str) -> bool {
    let Ok(consumer) = state_reader(topology) else {
        return false;
    };
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|md| {
            md.topics()
                .first()
                .map(|t| t.error().is_none() && !t.partitions().is_empty())
        })
        .unwrap_or(false)
}

async fn create_state_topic(topology: &Topology, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = crate::config::kafka::admin_config(topology)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    // −1: the cluster's default replication factor.
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| format!("creating {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the batch state topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating {t}: {code}")),
        }
    }
    Ok(())
}

/// Every record of the state topic, latest last, read to the end observed at start.
fn read_state(topology: &Topology, topic: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let consumer = state_reader(topology)?;
    let deadline = std::time::Instant::now() + RESTORE_BUDGET;
    // The topic was just created: wait until it has a leader and a high watermark.
    let (low, high) = loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) {
            Ok(w) => break w,
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(format!("reading the end of {topic}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if high <= low {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut next = low;
    while next < high {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{topic} not read to its end ({next} of {high}) within {RESTORE_BUDGET:?}"
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).to_string())
                    .unwrap_or_default();
                if let Some(v) = m.payload() {
                    out.push((key, v.to_vec()));
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => tracing::warn!(error = %e, "reading the batch state topic"),
            None => {}
        }
    }
    Ok(out)
}
