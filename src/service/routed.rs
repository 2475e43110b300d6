//! `store.repartition`: the reader hands stage events to the engine through the stages
//! topic, keyed by correlation id (see `route`), instead of straight.
//!
//! Reader side: a classified stage event becomes a stage record on the partition of its
//! key; a signal is copied to every partition; every tick, each input partition's
//! progress (what the reader's clock knows of it) is copied to every partition.
//!
//! Engine side: the consumer reads the stages partitions it is assigned with the inputs,
//! in the same transactions. The engine's clock has a part per (stages partition, input
//! partition), fed by the stage records and the progress records read from that stages
//! partition: the clock moves only as far as every input has been read *into every owned
//! stages partition*, so no deadline is judged before the stages that could settle it
//! have been read back. An input partition whose progress stops (its reader died) stalls
//! after the stall budget, like a stalled input: it stops holding the clock back and the
//! breaches that may wait behind it say so.

use super::{wall_ms, Pipeline};
use crate::correlate::clock::{InputClock, Reading, Stall};
use crate::correlate::{Origin, StageEvent};
use crate::decode::RecordView;
use crate::emit::emitter::{Output, RoutedBatch};
use crate::ingest::{IngestContext, Tp};
use crate::route::codec::{self, InputRef, Names, Progress, Routed, RoutedSignal};
use crate::telemetry::names;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A stage record larger than this is not routed: the input record is dead-lettered
/// (`too_large`) instead of holding every output behind it (the stages topic takes
/// records up to the broker's default `message.max.bytes`, about 1 MiB).
const MAX_ROUTED_BYTES: usize = 900 * 1024;
/// An input partition's progress is sent again at least this often, changed or not: the
/// engine side judges a silent input as stalled.
const PROGRESS_EVERY_MS: i64 = 1_000;

/// Both sides of the routed path.
pub struct Route {
    pub topic: Arc<str>,
    pub partitions: i32,
    names: Names,
    /// The engine side's clock (see the module docs).
    pub clock: InputClock,
    /// Engine clock part ids by (stages partition, input partition).
    parts: HashMap<(i32, Tp), u32>,
    /// Input partition of each engine clock part.
    part_input: HashMap<u32, Tp>,
    /// Stages partitions owned.
    owned: BTreeSet<i32>,
    /// Every input partition, from metadata.
    inputs: Vec<Tp>,
    /// Engine clock parts whose input waits at its reader.
    waiting: HashSet<u32>,
    /// Progress last sent per input partition, with when.
    sent: HashMap<Tp, (Progress, i64)>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Route {
    pub fn new(topology: &crate::config::Topology, partitions: i32, stall_budget_ms: i64) -> Route {
        Route {
            topic: Arc::from(topology.stages_topic().as_str()),
            partitions,
            names: Names::new(topology),
            clock: InputClock::new(stall_budget_ms),
            parts: HashMap::new(),
            part_input: HashMap::new(),
            owned: BTreeSet::new(),
            inputs: Vec::new(),
            waiting: HashSet::new(),
            sent: HashMap::new(),
            key: Vec::new(),
            value: Vec::new(),
        }
    }

    pub fn is_stages(&self, topic: &str) -> bool {
        *self.topic == *topic
    }

    /// The engine clock part of `input` in stages partition `k`, assigned at first sight
    /// (an input partition added after the metadata was read).
    fn part(&mut self, k: i32, input: Tp, wall: i64) -> u32 {
        if let Some(id) = self.parts.get(&(k, input.clone())) {
            return *id;
        }
        let id = u32::try_from(self.part_input.len()).unwrap_or(u32::MAX);
        self.clock.assign(id, wall);
        self.part_input.insert(id, input.clone());
        self.parts.insert((k, input), id);
        id
    }

    /// Stages partition `k` was assigned: every input partition holds its clock back
    /// until its progress has been read from `k`.
    pub fn assign(&mut self, k: i32, wall: i64) {
        self.owned.insert(k);
        for tp in self.inputs.clone() {
            self.part(k, tp, wall);
        }
    }

    pub fn revoke(&mut self, k: i32) {
        self.owned.remove(&k);
        let gone: Vec<((i32, Tp), u32)> = self
            .parts
            .iter()
            .filter(|((p, _), _)| *p == k)
            .map(|(key, id)| (key.clone(), *id))
            .collect();
        for (key, id) in gone {
            self.parts.remove(&key);
            self.clock.revoke(id);
            self.waiting.remove(&id);
        }
    }

    /// The input partitions (from metadata); parts of owned stages partitions are added
    /// for new ones.
    pub fn set_inputs(&mut self, inputs: Vec<Tp>, wall: i64) {
        self.inputs = inputs;
        for k in self.owned.clone() {
            self.assign(k, wall);
        }
    }

    /// Applies a progress record read from stages partition `k`.
    fn progress(&mut self, k: i32, p: Progress, wall: i64) {
        let id = self.part(k, (p.topic.clone(), p.partition), wall);
        let at = p.progress_ms;
        if p.position >= 0 {
            let record_ms = (p.record_ms != i64::MIN).then_some(p.record_ms);
            if let Some(r) = record_ms {
                self.clock.record(id, p.position - 1, Some(r), at);
            }
            self.clock.position(id, p.position, at);
            if p.confirmed_ms != i64::MIN {
                // Read to its end as asked for then: every record before `position`.
                self.clock.end_offset(id, p.position, p.confirmed_ms);
            }
        }
        if p.waiting_since_ms != i64::MIN {
            self.clock.wait(id, p.waiting_since_ms);
            self.waiting.insert(id);
        } else if self.waiting.remove(&id) {
            self.clock.resume(id, at);
        }
        self.clock.progressed(id, at);
    }
}

impl Pipeline {
    /// Routes the stage events of one input record to the stages topic, in one output.
    pub(super) fn route_stages(&mut self, record: &RecordView<'_>, events: &mut Vec<StageEvent>) {
        let Some(route) = &mut self.route else {
            return;
        };
        let from = InputRef {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms.unwrap_or(i64::MIN),
        };
        let mut records = Vec::with_capacity(events.len());
        let mut too_large = None;
        for ev in events.drain(..) {
            codec::encode_stage(&route.names, &ev, &from, &mut route.key, &mut route.value);
            let size = route.key.len() + route.value.len();
            if size > MAX_ROUTED_BYTES {
                too_large = Some(size);
                continue;
            }
            let partition = crate::route::partition_of(&route.key, route.partitions);
            records.push((partition, route.key.clone(), route.value.clone()));
        }
        let topic = route.topic.clone();
        if let Some(size) = too_large {
            metrics::counter!(names::REJECTED_EVENTS_TOTAL).increment(1);
            self.dead_letter(
                record,
                "rejected",
                format!("its stage event is {size} bytes for the stages topic, more than {MAX_ROUTED_BYTES}: not routed"),
            );
        }
        if !records.is_empty() {
            self.emitter
                .submit(Output::Routed(RoutedBatch { topic, records }));
            self.after_submit();
        }
    }

    /// Copies a signal to every stages partition (any correlation may cite it).
    pub(super) fn route_signal(
        &mut self,
        record: &RecordView<'_>,
        stream: usize,
        id: &str,
        kind: &str,
    ) {
        let Some(route) = &mut self.route else {
            return;
        };
        let signal = RoutedSignal {
            stream,
            id: id.into(),
            kind: kind.to_string(),
            input: InputRef {
                topic: record.topic.to_string(),
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms.unwrap_or(i64::MIN),
            },
        };
        codec::encode_signal(&route.names, &signal, &mut route.key, &mut route.value);
        let records = (0..route.partitions)
            .map(|p| (p, route.key.clone(), route.value.clone()))
            .collect();
        let topic = route.topic.clone();
        self.emitter
            .submit(Output::Routed(RoutedBatch { topic, records }));
        self.after_submit();
    }

    /// Sends each assigned input partition's progress to every stages partition when it
    /// changed, or once a second.
    pub(super) fn route_progress(&mut self, wall: i64) {
        let Some(route) = &mut self.route else {
            return;
        };
        let assigned: Vec<Tp> = self
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|tp| !route.is_stages(&tp.0))
            .cloned()
            .collect();
        let mut records = Vec::new();
        for tp in assigned {
            let Some(view) = self.offsets.lookup(&tp).and_then(|id| self.clock.view(id)) else {
                continue;
            };
            let p = Progress {
                topic: tp.0.clone(),
                partition: tp.1,
                position: view.position.unwrap_or(-1),
                record_ms: view.max_record_ms.unwrap_or(i64::MIN),
                confirmed_ms: view.confirmed_ms.unwrap_or(i64::MIN),
                progress_ms: view.progress_ms,
                waiting_since_ms: view.waiting_since.unwrap_or(i64::MIN),
            };
            let due = route
                .sent
                .get(&tp)
                .is_none_or(|(last, at)| *last != p || wall - at >= PROGRESS_EVERY_MS);
            if !due {
                continue;
            }
            codec::encode_progress(&p, &mut route.key, &mut route.value);
            for k in 0..route.partitions {
                records.push((k, route.key.clone(), route.value.clone()));
            }
            route.sent.insert(tp, (p, wall));
        }
        if !records.is_empty() {
            let topic = route.topic.clone();
            self.emitter
                .submit(Output::Routed(RoutedBatch { topic, records }));
            self.after_submit();
        }
    }

    /// A record of the stages topic: a stage for the engine, a signal, or an input's
    /// progress for the engine's clock. One this topology cannot read is dead-lettered
    /// with the reason.
    pub(super) fn on_routed(&mut self, m: &BorrowedMessage<'_>) {
        let pid = self.offsets.id(m.topic(), m.partition());
        let wall = wall_ms();
        let k = m.partition();
        let decoded = match &self.route {
            Some(route) => codec::decode(
                &route.names,
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
            ),
            None => return,
        };
        let headers = Vec::new();
        let record = RecordView {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            headers: &headers,
            timestamp_ms: m.timestamp().to_millis(),
        };
        match decoded {
            Err(e) => {
                metrics::counter!(names::REJECTED_EVENTS_TOTAL).increment(1);
                self.dead_letter(&record, "rejected", e.to_string());
            }
            Ok(Routed::Stage(mut ev, from)) => {
                ev.origin = Origin {
                    partition_id: pid,
                    offset: m.offset(),
                };
                if let Some(route) = &mut self.route {
                    let id = route.part(k, (from.topic, from.partition), wall);
                    let at = (from.timestamp_ms != i64::MIN).then_some(from.timestamp_ms);
                    route.clock.record(id, from.offset, at, wall);
                }
                self.feed(ev, &record);
                self.take_outcomes();
            }
            Ok(Routed::Signal(s)) => {
                self.signals
                    .record(s.stream, &String::from_utf8_lossy(s.id.as_bytes()), &s.kind);
            }
            Ok(Routed::Progress(p)) => {
                if let Some(route) = &mut self.route {
                    route.progress(k, p, wall);
                }
            }
        }
        self.offsets
            .processed(pid, m.offset(), m.timestamp().to_millis());
    }

    /// Reads the partitions of every input topic (the engine clock waits for each).
    pub(super) fn route_inputs(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let Some(route) = &mut self.route else {
            return;
        };
        let mut inputs = Vec::new();
        for stream in &self.topology.streams {
            let md = tokio::task::block_in_place(|| {
                consumer
                    .client()
                    .fetch_metadata(Some(&stream.topic), Duration::from_secs(5))
            });
            match md {
                Ok(md) => {
                    for t in md.topics().iter().filter(|t| t.error().is_none()) {
                        for p in t.partitions() {
                            inputs.push((t.name().to_string(), p.id()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %stream.topic, error = %e, "input partitions not known; the engine clock counts them as their progress arrives");
                }
            }
        }
        inputs.sort();
        inputs.dedup();
        route.set_inputs(inputs, wall_ms());
    }

    /// The engine clock's reading, with its stalls named by input partition (the reader's
    /// partition ids) so that breach evidence reads the same as without routing.
    pub(super) fn read_route_clock(&mut self, wall: i64) -> Option<Reading> {
        let route = self.route.as_mut()?;
        let mut reading = route.clock.read(wall);
        let mut stalled: Vec<Stall> = Vec::new();
        for s in reading.stalled.drain(..) {
            let Some(tp) = route.part_input.get(&s.partition) else {
                continue;
            };
            let id = self.offsets.id(&tp.0, tp.1);
            if !stalled.iter().any(|x| x.partition == id) {
                stalled.push(Stall { partition: id, ..s });
            }
        }
        reading.stalled = stalled;
        Some(reading)
    }
}
