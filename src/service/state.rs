//! Durable pending state: the engine's changes are mirrored to a compacted changelog
//! topic in step with the input offsets, and a start restores them instead of re-reading
//! input windows (a one-day window would mean a day of input at every deploy, and stages
//! re-read without their start would end as false `never_arrived`s).
//!
//! The write rule — what lets a restart neither lose nor invent an alert:
//!
//! 1. At each commit tick a *cut* takes the entries that changed since the last cut
//!    ([`Engine::drain_dirty`]), the finished image of every key whose end was released
//!    (so a stage read again is a duplicate or a late arrival, not a new correlation), and
//!    the input offsets processed so far.
//! 2. A cut is written only once every output submitted before it is acknowledged: an
//!    image never claims a tier raised, or a correlation ended, before its event is on
//!    Kafka. Tiers whose breach is still held back are left out of the image.
//! 3. The cut's input offsets go to the commit gate only after its records are submitted,
//!    so they are committed only once the changelog holds the state they built.
//!
//! A crash between the write and the commit re-reads input whose state is already
//! restored: its stages are duplicates (counted), never new correlations. A crash before
//! the write re-reads everything the cut would have held. Either way at most the outputs
//! of the last second or so are written again (same `breach_id`).
//!
//! The correlations that ended since the last cut are written together, one record per
//! workflow and changelog partition (a finished batch), followed by a deletion of the
//! pending image of those that had one; a batch is deleted (tombstone) once no stage of
//! its correlations can be expected any more — start + 2 × window — so the changelog holds
//! the pending state plus recent ends, and a restore reads about that much.

use crate::config::duration::millis;
use crate::config::Topology;
use crate::correlate::durable::{self, Image, PendingImage};
use crate::correlate::{CorrelationId, Engine};
use crate::emit::emitter::{Emitter, Output, StateBatch};
use crate::ingest::commit::CommitGate;
use crate::ingest::health::{HealthContext, InputHealth, QuietContext};
use crate::ingest::Tp;
use crate::telemetry::names;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outcomes::{HeldMarks, KeyRef, Outcomes};

/// Why durable state could not be prepared or restored. synclag does not start without
/// its state: running on a partial one would raise false alerts.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("durable state: changelog topic `{topic}`: {why}")]
    Topic { topic: String, why: String },
    #[error("durable state: restoring from `{topic}`: {why}")]
    Restore { topic: String, why: String },
}

/// How long the stages topic keeps records (`retention.ms` when synclag creates it): an
/// engine partition stopped for longer than this would miss the stages routed to it.
const STAGES_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest finished batch record: a cut's ends on one partition beyond it go in
/// several (a broker takes about 1 MiB per record by default, and a changelog record it
/// refused would be retried forever, holding every later cut).
const FINISHED_BATCH_MAX_BYTES: usize = 256 * 1024;
/// How long a start may take to read the changelog before giving up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long metadata of a just-created changelog topic may take to show up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// What a restore found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub pending: u64,
    pub finished: u64,
    /// Images that could not be read or no longer fit the topology (logged, counted).
    pub rejected: u64,
    /// Finished images old enough to be deleted at once.
    pub expired: u64,
    pub records: u64,
}

/// Changelog records waiting for the outputs submitted before them.
struct Cut {
    after_seq: u64,
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pinned: Vec<(i32, Vec<u8>, Option<Vec<u8>>)>,
    offsets: HashMap<Tp, i64>,
}

/// A finished record (or batch) written, to be deleted at `at`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Marker {
    at: i64,
    key: Vec<u8>,
    /// The partition a batch was written to (`None`: a key placed by `partition_of`).
    partition: Option<i32>,
    /// Ends it remembers.
    ends: usize,
}

/// A correlation: (workflow index, correlation id bytes).
type Key = (usize, Box<[u8]>);

/// The ends of one workflow on one changelog partition in a cut.
struct FinishedBatch {
    images: Vec<durable::FinishedImage>,
    /// Changelog keys of those with a pending image standing: deleted after the batch.
    imaged: Vec<Vec<u8>>,
    delete_at: i64,
}

impl Default for FinishedBatch {
    fn default() -> FinishedBatch {
        FinishedBatch {
            images: Vec::new(),
            imaged: Vec::new(),
            delete_at: i64::MIN,
        }
    }
}

/// The durable side of the pipeline (see the module docs).
pub struct DurableState {
    topic: Arc<str>,
    /// Workflow names by index (shared: a cut borrows them while it changes the rest).
    workflows: Arc<[String]>,
    windows_ms: Vec<i64>,
    cuts: VecDeque<Cut>,
    /// Finished records and batches written, oldest first.
    markers: VecDeque<Marker>,
    /// Ends the markers remember, and how many the engine keeps (`store.recent_finished`).
    marker_ends: usize,
    marker_cap: usize,
    /// Keys whose pending image stands in the changelog: deleted when they end.
    imaged: hashbrown::HashSet<Key>,
    /// This process's part of finished batch keys, and the next batch's sequence.
    writer: u64,
    batch_seq: u64,
    ended: Vec<(usize, CorrelationId)>,
    images: Vec<PendingImage>,
    /// Keys whose last image left out a tier whose breach was still held back: written
    /// again once it is out, or a restart would raise it a second time.
    stripped: hashbrown::HashSet<Key>,
    /// Breached correlations whose closing stage the engine counted, as they stood before
    /// it (marked as counted), with the tiers last written for them: kept while their
    /// `resolved` announcement waits for the clock (see `Engine::take_closed_images`).
    closed: hashbrown::HashMap<Key, (PendingImage, Option<u8>)>,
    /// Ends written while their outcome was still held back for the clock: their release
    /// lists them again, and the image they would write is the one already written (a
    /// late arrival after the end is released on its own, and written then).
    ends_written: hashbrown::HashSet<Key>,
    /// The changelog's partition count, once read (records are placed by
    /// `route::partition_of`, see [`StateBatch::partitions`]).
    partition_count: i32,
}

impl DurableState {
    pub fn new(topology: &Topology) -> DurableState {
        DurableState {
            topic: Arc::from(topology.changelog_topic().as_str()),
            workflows: topology.workflows.iter().map(|w| w.name.clone()).collect(),
            windows_ms: topology
                .workflows
                .iter()
                .map(|w| millis(w.window))
                .collect(),
            cuts: VecDeque::new(),
            markers: VecDeque::new(),
            marker_ends: 0,
            marker_cap: topology.store.recent_finished.max(1),
            imaged: hashbrown::HashSet::new(),
            writer: rand::random(),
            batch_seq: 0,
            ended: Vec::new(),
            images: Vec::new(),
            stripped: hashbrown::HashSet::new(),
            closed: hashbrown::HashMap::new(),
            ends_written: hashbrown::HashSet::new(),
            partition_count: 0,
        }
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the changelog topic (compacted) unless it exists. The cluster's errors
    /// (refused credentials, brokers down) are reported to `health`.
    pub async fn create_topic(
        &self,
        topology: &Topology,
        health: &InputHealth,
    ) -> Result<(), StateError> {
        ensure_topic(
            topology,
            health,
            &self.topic,
            topology.store.changelog_partitions,
            &[("cleanup.policy", "compact")],
            "the changelog topic of the durable state",
        )
        .await
        .map(|_| ())
    }

    /// Creates the stages topic (`store.repartition`, see `route`) with the changelog's
    /// partition count unless it exists; one that exists must have that count, or a key's
    /// stages and its state would be on different partition numbers. Returns the count.
    pub async fn create_stages_topic(
        &self,
        topology: &Topology,
        health: &InputHealth,
    ) -> Result<i32, StateError> {
        let topic = topology.stages_topic();
        let changelog = if self.partition_count > 0 {
            self.partition_count
        } else {
            topology.store.changelog_partitions
        };
        let retention = STAGES_RETENTION.as_millis().to_string();
        let found = ensure_topic(
            topology,
            health,
            &topic,
            changelog,
            &[("cleanup.policy", "delete"), ("retention.ms", &retention)],
            "the stages topic (stage events by correlation id)",
        )
        .await?;
        if found != changelog {
            return Err(StateError::Topic {
                topic,
                why: format!(
                    "has {found} partitions and the changelog `{}` {changelog}: both must have the same count, so that a key's stages and its state share a partition number",
                    self.topic
                ),
            });
        }
        Ok(found)
    }

    /// The changelog's partition count, once read (0 before).
    pub fn partition_count(&self) -> i32 {
        self.partition_count
    }

    /// Reads the whole changelog into `engine` (before it processes anything), calls
    /// `breached(workflow, id)` for each restored correlation with a tier raised, and
    /// starts tracking changes. Blocking.
    pub fn restore(
        &mut self,
        topology: &Topology,
        engine: &mut Engine,
        breached: &mut dyn FnMut(usize, &[u8]),
        wall_ms: i64,
    ) -> Result<Restored, StateError> {
        self.restore_partitions(topology, engine, breached, wall_ms, None)
    }

    /// [`restore`](Self::restore) limited to the changelog partitions in `only` (`None`:
    /// all of them): the keys an owner of those partition numbers is responsible for (a
    /// key's changelog records are all on `route::partition_of(key)`). A partition number
    /// the topic does not have is an error: restoring less than was asked for would run
    /// on part of the state.
    pub fn restore_partitions(
        &mut self,
        topology: &Topology,
        engine: &mut Engine,
        breached: &mut dyn FnMut(usize, &[u8]),
        wall_ms: i64,
        only: Option<&[i32]>,
    ) -> Result<Restored, StateError> {
        self.restore_into(topology, &mut [(None, engine)], breached, wall_ms, only)
    }

    /// [`restore_partitions`](Self::restore_partitions) into one engine per changelog
    /// partition (`(Some(k), engine)`; a single `(None, engine)` takes every partition):
    /// with `store.repartition`, the partitions assigned at once are read in one pass.
    pub fn restore_into(
        &mut self,
        topology: &Topology,
        engines: &mut [(Option<i32>, &mut Engine)],
        breached: &mut dyn FnMut(usize, &[u8]),
        wall_ms: i64,
        only: Option<&[i32]>,
    ) -> Result<Restored, StateError> {
        let started = Instant::now();
        let err = |why: String| StateError::Restore {
            topic: self.topic.to_string(),
            why,
        };
        let mut cfg = crate::config::kafka::admin_config(topology);
        cfg.set("group.id", format!("{}.restore", topology.service.group_id))
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            // Read the changelog in large steps: a restore is all prefetch.
            .set("max.partition.fetch.bytes", "8388608")
            .set("fetch.max.bytes", "33554432")
            .set("queued.max.messages.kbytes", "16384");
        let consumer: BaseConsumer<QuietContext> = cfg
            .create_with_context(QuietContext)
            .map_err(|e| err(e.to_string()))?;
        let all = self.partitions(&consumer).map_err(err)?;
        self.partition_count = i32::try_from(all.len()).unwrap_or(i32::MAX);
        let partitions = match only {
            None => all,
            Some(wanted) => {
                if let Some(p) = wanted.iter().find(|p| !all.contains(p)) {
                    return Err(err(format!(
                        "partition {p} asked for, the topic has {}",
                        all.len()
                    )));
                }
                wanted.to_vec()
            }
        };
        let mut tpl = TopicPartitionList::new();
        let mut left: HashSet<i32> = HashSet::new();
        for p in partitions {
            let (lo, hi) = self.watermarks(&consumer, p).map_err(err)?;
            if hi > lo {
                tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                    .map_err(|e| err(e.to_string()))?;
                left.insert(p);
            }
        }
        let names: Vec<&str> = self.workflows.iter().map(String::as_str).collect();
        let mut report = Restored::default();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        let mut expired_batches: Vec<(i32, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut live_markers: Vec<Marker> = Vec::new();
        // Ended keys whose pending image was read before their finished batch and whose
        // deletion was not read after it (a write cut short): deleted after the restore.
        let mut undeleted: HashSet<Key> = HashSet::new();
        let mut lags: std::collections::BTreeMap<(i32, usize), durable::LagImage> =
            Default::default();
        if !left.is_empty() {
            consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
        }
        let deadline = started + RESTORE_TIMEOUT;
        while !left.is_empty() {
            if Instant::now() > deadline {
                return Err(err(format!(
                    "not at the end of partitions {left:?} after {RESTORE_TIMEOUT:?}"
                )));
            }
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let msg = match polled {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    left.remove(&p);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "changelog read error; retrying");
                    continue;
                }
            };
            report.records += 1;
            let Some(key) = msg.key() else {
                report.rejected += 1;
                continue;
            };
            let Some(value) = msg.payload() else {
                // A deletion (of a finished record or batch, or of an ended correlation's
                // pending image): nothing to restore.
                if let Some(k) = self.key_of(key, &names) {
                    self.imaged.remove(&k);
                    undeleted.remove(&k);
                }
                continue;
            };
            let Some(engine) = engine_of(engines, msg.partition()) else {
                continue; // not asked for
            };
            if let Some(batch) = durable::decode_finished_batch(key, value, &names) {
                let images = match batch {
                    Ok(images) => images,
                    Err(e) => {
                        report.rejected += 1;
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "changelog finished batch not restored");
                        continue;
                    }
                };
                let delete_at = images
                    .iter()
                    .map(|f| self.delete_at(f.workflow, f.start_ms))
                    .max()
                    .unwrap_or(i64::MIN);
                if delete_at <= wall_ms {
                    report.expired += 1;
                    expired_batches.push((msg.partition(), key.to_vec(), None));
                } else {
                    live_markers.push(Marker {
                        at: delete_at,
                        key: key.to_vec(),
                        partition: Some(msg.partition()),
                        ends: images.len(),
                    });
                }
                for f in images {
                    let k: Key = (f.workflow, f.correlation_id.clone());
                    if self.imaged.remove(&k) {
                        undeleted.insert(k);
                    }
                    // Restored even when old enough to delete: it replaces the key's
                    // pending image read before it.
                    if let Err(e) = engine.restore(Image::Finished(f)) {
                        report.rejected += 1;
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "changelog finished image not restored");
                    }
                }
                continue;
            }
            // A workflow's open lag interval: its latest image stands.
            match durable::decode_lag(key, value, &names) {
                Some(Ok(image)) => {
                    lags.insert((msg.partition(), image.workflow), image);
                    continue;
                }
                Some(Err(e)) => {
                    report.rejected += 1;
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "changelog lag record not restored");
                    continue;
                }
                None => {}
            }
            let image = match durable::decode(key, value, &names) {
                Ok(i) => i,
                Err(e) => {
                    report.rejected += 1;
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "changelog record not restored");
                    continue;
                }
            };
            if let Image::Finished(f) = &image {
                // Restored even when old enough to delete: it replaces the key's pending
                // image read before it.
                let delete_at = self.delete_at(f.workflow, f.start_ms);
                if delete_at <= wall_ms {
                    report.expired += 1;
                    expired.push(key.to_vec());
                } else {
                    live_markers.push(Marker {
                        at: delete_at,
                        key: key.to_vec(),
                        partition: None,
                        ends: 1,
                    });
                }
            }
            // The key's latest record: a pending image stands, a finished one replaced it.
            let k: Key = (image.workflow(), image.correlation_id().into());
            undeleted.remove(&k);
            match &image {
                Image::Pending(_) => {
                    self.imaged.insert(k);
                }
                Image::Finished(_) => {
                    self.imaged.remove(&k);
                }
            }
            let (workflow, fired, finished) = match &image {
                Image::Pending(p) => (p.workflow, p.fired, false),
                Image::Finished(f) => (f.workflow, 0, true),
            };
            let id: Box<[u8]> = image.correlation_id().into();
            match engine.restore(image) {
                Ok(()) if finished => {}
                Ok(()) => {
                    if fired != 0 {
                        breached(workflow, &id);
                    }
                }
                Err(e) => {
                    report.rejected += 1;
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "changelog record not restored");
                }
            }
        }
        for ((partition, _), image) in lags {
            let Some(engine) = engine_of(engines, partition) else {
                continue;
            };
            if let Err(e) = engine.restore_lag(image) {
                report.rejected += 1;
                tracing::warn!(error = %e, "changelog lag record not restored");
            }
        }
        // A key's later images replace its earlier ones: count what stands.
        for (_, engine) in engines.iter_mut() {
            report.pending += engine.pending() as u64;
            report.finished += engine.recent_len() as u64;
            engine.track_changes(true);
        }
        // Merged with those of partitions restored earlier (a restore of some partitions).
        live_markers.extend(self.markers.drain(..));
        live_markers.sort_unstable();
        self.marker_ends = live_markers.iter().map(|m| m.ends).sum();
        self.markers = live_markers.into();
        for (workflow, id) in undeleted {
            expired.push(durable::encode_key(self.name(workflow), &id));
        }
        if !expired.is_empty() || !expired_batches.is_empty() {
            self.cuts.push_back(Cut {
                after_seq: 0,
                records: expired.into_iter().map(|k| (k, None)).collect(),
                pinned: expired_batches,
                offsets: HashMap::new(),
            });
        }
        let took = started.elapsed();
        metrics::gauge!(names::STATE_RESTORE_SECONDS).set(took.as_secs_f64());
        metrics::gauge!(names::STATE_RESTORED, "kind" => "pending").set(report.pending as f64);
        metrics::gauge!(names::STATE_RESTORED, "kind" => "finished").set(report.finished as f64);
        metrics::counter!(names::STATE_REJECTED_TOTAL).increment(report.rejected);
        tracing::info!(
            topic = %self.topic,
            pending = report.pending,
            finished = report.finished,
            rejected = report.rejected,
            expired = report.expired,
            records = report.records,
            seconds = took.as_secs_f64(),
            "restored the durable state"
        );
        Ok(report)
    }

    fn partitions(&self, consumer: &BaseConsumer<QuietContext>) -> Result<Vec<i32>, String> {
        let deadline = Instant::now() + METADATA_TIMEOUT;
        loop {
            let md = consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let found = md
                .topics()
                .iter()
                .find(|t| t.name() == &*self.topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>());
            match found {
                Some(parts) => return Ok(parts),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                None => return Err("the topic has no readable partitions".into()),
            }
        }
    }

    /// A partition's watermarks; a topic just created may not have a leader yet.
    fn watermarks(
        &self,
        consumer: &BaseConsumer<QuietContext>,
        partition: i32,
    ) -> Result<(i64, i64), String> {
        let deadline = Instant::now() + METADATA_TIMEOUT;
        loop {
            match consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10)) {
                Ok(w) => return Ok(w),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(partition, error = %e, "changelog watermarks not available yet");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("partition {partition}: {e}")),
            }
        }
    }

    /// When the finished image of a correlation that started at `start_ms` is deleted.
    fn delete_at(&self, workflow: usize, start_ms: i64) -> i64 {
        let window = self.windows_ms.get(workflow).copied().unwrap_or(0);
        start_ms.saturating_add(window.saturating_mul(2))
    }

    /// Step 1 of the write rule: cuts what changed since the last cut, with the input
    /// offsets processed so far, behind output `submitted`.
    pub fn cut(
        &mut self,
        engine: &mut Engine,
        outcomes: &mut Outcomes,
        offsets: HashMap<Tp, i64>,
        submitted: u64,
        clock_ms: i64,
    ) {
        self.cut_engines(
            &mut [(None, engine)],
            outcomes,
            offsets,
            submitted,
            clock_ms,
        );
    }

    /// [`cut`](Self::cut) over one engine per owned changelog partition (`Some(k)`: the
    /// engine of partition `k`, with `store.repartition`; `None`: the only engine).
    pub fn cut_engines(
        &mut self,
        engines: &mut [(Option<i32>, &mut Engine)],
        outcomes: &mut Outcomes,
        offsets: HashMap<Tp, i64>,
        submitted: u64,
        clock_ms: i64,
    ) {
        let mut records = Vec::new();
        let mut pinned = Vec::new();
        outcomes.take_ended(&mut self.ended);
        let held = outcomes.held_marks();
        let held_tiers = |key: &Key| held.get(key).map_or(0, HeldMarks::tiers);
        // Written without a tier that was held back, and that breach is out now: written
        // again, with it.
        let released: Vec<Key> = self
            .stripped
            .iter()
            .filter(|k| held_tiers(k) == 0)
            .cloned()
            .collect();
        for key in released {
            self.stripped.remove(&key);
            let name = self.name(key.0).to_string();
            if let Some(engine) = engine_for_key(engines, &name, &key.1, self.partition_count) {
                engine.touch_key(key.0, &key.1);
            }
        }
        let mut closed = Vec::new();
        for (_, engine) in engines.iter_mut() {
            engine.drain_dirty(&mut self.images);
            engine.take_closed_images(&mut closed);
        }
        for image in closed {
            self.closed.insert(
                (image.workflow, image.correlation_id.clone()),
                (image, None),
            );
        }
        if !self.images.is_empty() {
            for mut p in std::mem::take(&mut self.images) {
                if !held.is_empty() {
                    let key = (p.workflow, p.correlation_id.clone());
                    let bits = held_tiers(&key);
                    if p.fired & bits != 0 {
                        p.fired &= !bits;
                        self.stripped.insert(key);
                    }
                }
                self.imaged.insert((p.workflow, p.correlation_id.clone()));
                let (key, value) = self.image_record(Image::Pending(p));
                records.push((key, Some(value)));
            }
            metrics::counter!(names::STATE_RECORDS_TOTAL, "kind" => "pending")
                .increment(records.len() as u64);
        }
        // Released ends whose image went out while they were held: written already (the
        // first listing of a key only; a late arrival released after it writes again).
        if !self.ends_written.is_empty() {
            let written = &mut self.ends_written;
            self.ended
                .retain(|(workflow, id)| !written.remove(&KeyRef(*workflow, id.as_bytes())));
        }
        // Ends the engine has counted (lags included) while their outcome waits for the
        // clock: the image says so, or a restart on offsets held back behind them would
        // count them a second time. Without a breach, the image says they ended (their
        // release lists them again: the same image). With one, their `resolved` event is
        // still owed: they stay pending, marked as counted, with the tiers already out.
        let mut owed = HashSet::new();
        for (key, breached) in outcomes.held_ends() {
            if !breached {
                if !self.ends_written.contains(key) {
                    self.ended.push((key.0, CorrelationId::from(key.1.clone())));
                    self.ends_written.insert(key.clone());
                }
                continue;
            }
            let due = self.closed.get_mut(key).and_then(|(image, written)| {
                let fired = image.fired & !held_tiers(key);
                (*written != Some(fired)).then(|| {
                    *written = Some(fired);
                    PendingImage {
                        fired,
                        ..image.clone()
                    }
                })
            });
            if let Some(image) = due {
                self.imaged.insert(key.clone());
                let (record_key, value) = self.image_record(Image::Pending(image));
                records.push((record_key, Some(value)));
                metrics::counter!(names::STATE_RECORDS_TOTAL, "kind" => "pending").increment(1);
            }
            owed.insert(key);
        }
        self.closed.retain(|key, _| owed.contains(key));
        let mut finished = 0u64;
        let mut deleted = 0u64;
        // (workflow, partition) → (finished images, ended keys with a pending image, the
        // latest deletion time among them).
        let mut batches: std::collections::BTreeMap<(usize, i32), FinishedBatch> =
            Default::default();
        let workflows = Arc::clone(&self.workflows);
        for (workflow, id) in std::mem::take(&mut self.ended) {
            let name = workflows.get(workflow).map_or("", String::as_str);
            let engine = engine_for_key(engines, name, id.as_bytes(), self.partition_count);
            // None: its partition was revoked; its new owner has its state.
            let Some(f) = engine.and_then(|e| e.finished_image(workflow, id.as_bytes())) else {
                continue;
            };
            let delete_at = self.delete_at(workflow, f.start_ms);
            if self.partition_count <= 0 {
                // The partitions are not known (no restore ran): a record per key.
                let (key, value) = self.image_record(Image::Finished(f));
                self.imaged.remove(&KeyRef(workflow, id.as_bytes()));
                self.markers.push_back(Marker {
                    at: delete_at,
                    key: key.clone(),
                    partition: None,
                    ends: 1,
                });
                self.marker_ends += 1;
                records.push((key, Some(value)));
                finished += 1;
                continue;
            }
            let key = durable::encode_key(name, id.as_bytes());
            let partition = crate::route::partition_of(&key, self.partition_count);
            let batch = batches.entry((workflow, partition)).or_default();
            batch.delete_at = batch.delete_at.max(delete_at);
            batch.images.push(f);
            if self.imaged.remove(&KeyRef(workflow, id.as_bytes())) {
                batch.imaged.push(key);
            }
        }
        // Each batch, then the deletions of its keys' pending images, on its partition: a
        // key is never deleted before the batch that remembers its end is written.
        for ((workflow, partition), batch) in batches {
            for (value, ends) in
                durable::encode_finished_batch_values(&batch.images, FINISHED_BATCH_MAX_BYTES)
            {
                let key = durable::encode_finished_batch_key(
                    self.name(workflow),
                    partition,
                    self.writer,
                    self.batch_seq,
                );
                self.batch_seq += 1;
                self.markers.push_back(Marker {
                    at: batch.delete_at,
                    key: key.clone(),
                    partition: Some(partition),
                    ends,
                });
                self.marker_ends += ends;
                pinned.push((partition, key, Some(value)));
                finished += 1;
            }
            deleted += batch.imaged.len() as u64;
            pinned.extend(batch.imaged.into_iter().map(|k| (partition, k, None)));
        }
        metrics::counter!(names::STATE_RECORDS_TOTAL, "kind" => "finished").increment(finished);
        // Oldest first is close enough to delete-time order: a workflow's window is fixed.
        while let Some(m) = self.markers.front() {
            if m.at > clock_ms && self.marker_ends <= self.marker_cap {
                break;
            }
            if let Some(m) = self.markers.pop_front() {
                self.marker_ends = self.marker_ends.saturating_sub(m.ends);
                match m.partition {
                    None => records.push((m.key, None)),
                    Some(p) => pinned.push((p, m.key, None)),
                }
                deleted += 1;
            }
        }
        metrics::counter!(names::STATE_RECORDS_TOTAL, "kind" => "deleted").increment(deleted);
        let mut lag_records = 0u64;
        for (partition, engine) in engines.iter_mut() {
            for image in engine.lag_images() {
                lag_records += 1;
                let mut value = Vec::new();
                durable::encode_lag_value(&image, &mut value);
                match partition {
                    None => records.push((
                        durable::encode_lag_key(self.name(image.workflow)),
                        Some(value),
                    )),
                    Some(k) => pinned.push((
                        *k,
                        durable::encode_partition_lag_key(self.name(image.workflow), *k),
                        Some(value),
                    )),
                }
            }
        }
        metrics::counter!(names::STATE_RECORDS_TOTAL, "kind" => "lag").increment(lag_records);
        self.cuts.push_back(Cut {
            after_seq: submitted,
            records,
            pinned,
            offsets,
        });
        metrics::gauge!(names::STATE_CUTS_WAITING).set(self.cuts.len() as f64);
    }

    /// Changelog partition `k` moved to another owner: its keys' deletions are its.
    pub fn revoke_partition(&mut self, k: i32) {
        let n = self.partition_count;
        self.markers.retain(|m| {
            m.partition
                .unwrap_or_else(|| crate::route::partition_of(&m.key, n))
                != k
        });
        self.marker_ends = self.markers.iter().map(|m| m.ends).sum();
        let names = &self.workflows;
        let kept = |(w, id): &Key| {
            let name = names.get(*w).map_or("", String::as_str);
            crate::route::partition_of(&durable::encode_key(name, id), n) != k
        };
        self.stripped.retain(kept);
        self.ends_written.retain(kept);
        self.imaged.retain(kept);
        self.closed.retain(|key, _| kept(key));
    }

    fn name(&self, workflow: usize) -> &str {
        self.workflows.get(workflow).map_or("", String::as_str)
    }

    /// The correlation a changelog key names (`None`: another kind of key, or a workflow
    /// no longer configured).
    fn key_of(&self, key: &[u8], names: &[&str]) -> Option<Key> {
        let (name, id) = durable::decode_key(key).ok()?;
        let workflow = names.iter().position(|w| *w == name)?;
        Some((workflow, id.into()))
    }

    /// The changelog record of `image`: (key, value).
    fn image_record(&self, image: Image) -> (Vec<u8>, Vec<u8>) {
        let key = durable::encode_key(self.name(image.workflow()), image.correlation_id());
        let mut value = Vec::new();
        durable::encode_value(&image, &mut value);
        (key, value)
    }

    /// Steps 2 and 3: writes every cut whose earlier outputs are acknowledged, then offers
    /// its offsets to the gate.
    pub fn flush(&mut self, acked_through: u64, emitter: &mut Emitter, gate: &mut CommitGate) {
        while self
            .cuts
            .front()
            .is_some_and(|c| c.after_seq <= acked_through)
        {
            let Some(cut) = self.cuts.pop_front() else {
                break;
            };
            if !cut.records.is_empty() || !cut.pinned.is_empty() {
                emitter.submit(Output::State(StateBatch {
                    topic: self.topic.clone(),
                    partitions: self.partition_count,
                    records: cut.records,
                    pinned: cut.pinned,
                }));
            }
            if !cut.offsets.is_empty() {
                gate.offer(cut.offsets);
            }
        }
        metrics::gauge!(names::STATE_CUTS_WAITING).set(self.cuts.len() as f64);
    }

    /// A revoked partition's offsets are no longer ours to commit.
    pub fn revoke(&mut self, tp: &Tp) {
        for c in &mut self.cuts {
            c.offsets.remove(tp);
        }
    }

    /// Cuts still waiting for earlier outputs.
    pub fn waiting(&self) -> usize {
        self.cuts.len()
    }
}

/// Creates `topic` with `partitions` and `configs` unless it exists, and returns its
/// partition count. An existing topic is used as it is (creating it may need rights the
/// service does not have). Asked with a consumer that may not create topics: a
/// producer-side metadata request would have a broker with `auto.create.topics.enable`
/// create it with the broker's defaults.
async fn ensure_topic(
    topology: &Topology,
    health: &InputHealth,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
    what: &str,
) -> Result<i32, StateError> {
    let err = |why: String| StateError::Topic {
        topic: topic.to_string(),
        why,
    };
    let admin: AdminClient<HealthContext> = crate::config::kafka::admin_config(topology)
        .create_with_context(HealthContext(health.clone()))
        .map_err(|e| err(e.to_string()))?;
    let mut probe_cfg = crate::config::kafka::admin_config(topology);
    probe_cfg.set("allow.auto.create.topics", "false");
    let probe: BaseConsumer<QuietContext> = probe_cfg
        .create_with_context(QuietContext)
        .map_err(|e| err(e.to_string()))?;
    let existing = |probe: &BaseConsumer<QuietContext>| {
        probe
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
            })
            .filter(|n| *n > 0)
    };
    if let Some(n) = tokio::task::block_in_place(|| existing(&probe)) {
        return Ok(n);
    }
    let replication = topology.store.changelog_replication.unwrap_or(-1);
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| err(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created {what}"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err(code.to_string())),
        }
    }
    // Metadata of a topic just created may take a moment to show its partitions.
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        if let Some(n) = tokio::task::block_in_place(|| existing(&probe)) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(err(
                "created, but its partitions do not show in the metadata".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The engine restoring changelog partition `partition`: the only one, or that
/// partition's.
fn engine_of<'a>(
    engines: &'a mut [(Option<i32>, &mut Engine)],
    partition: i32,
) -> Option<&'a mut Engine> {
    match engines {
        [(None, engine)] => Some(&mut **engine),
        _ => engines
            .iter_mut()
            .find(|(p, _)| *p == Some(partition))
            .map(|(_, e)| &mut **e),
    }
}

/// The engine holding key `(workflow, id)`: the only one, or that of its partition
/// (`None`: the partition is not owned).
fn engine_for_key<'a>(
    engines: &'a mut [(Option<i32>, &mut Engine)],
    workflow: &str,
    id: &[u8],
    partitions: i32,
) -> Option<&'a mut Engine> {
    if let [(None, engine)] = engines {
        return Some(&mut **engine);
    }
    let key = durable::encode_key(workflow, id);
    engine_of(engines, crate::route::partition_of(&key, partitions))
}
