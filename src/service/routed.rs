//! `store.repartition`: the reader hands stage events to the engine through the stages
//! topic, keyed by correlation id (see `route`), instead of straight.
//!
//! Reader side: a classified stage event becomes a stage record on the partition of its
//! key; a signal is copied to every partition; every tick, each input partition's
//! progress (what the reader's clock knows of it) is copied to every partition.
//!
//! Engine side: the consumer reads the stages partitions it is assigned with the inputs,
//! in the same transactions. Each owned stages partition `k` is a *task*: an engine of
//! its own, restored from changelog partition `k` when the partition is assigned (before
//! any of its stages is processed), and a clock of its own with a part per input
//! partition, fed by the stage and progress records read from `k`. A task's clock moves
//! only as far as every input has been read *into `k`*, so no deadline is judged before
//! the stages that could settle it have been read back, and a task restored while others
//! run catches up on its own time: its timers fire as its stages are read, not by the
//! clock of a partition read further. An input partition whose progress stops (its
//! reader died) stalls after the stall budget, like a stalled input: it stops holding the
//! clock back and the breaches that may wait behind it say so.

use super::{wall_ms, Pipeline};
use crate::correlate::clock::{InputClock, Reading, Stall};
use crate::correlate::engine::{Counters, PendingStatus};
use crate::correlate::{Engine, EngineConfig, Origin, StageEvent};
use crate::decode::RecordView;
use crate::emit::emitter::{Output, RoutedBatch};
use crate::ingest::{IngestContext, Tp};
use crate::route::codec::{self, InputRef, Names, Progress, Routed, RoutedSignal};
use crate::telemetry::names;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::Offset;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A stage record larger than this is not routed: the input record is dead-lettered
/// (`too_large`) instead of holding every output behind it (the stages topic takes
/// records up to the broker's default `message.max.bytes`, about 1 MiB).
const MAX_ROUTED_BYTES: usize = 900 * 1024;
/// An input partition's progress is sent again at least this often, changed or not: the
/// engine side judges a silent input as stalled.
const PROGRESS_EVERY_MS: i64 = 1_000;
/// How long a task keeps waiting for an input whose reader has gone silent after
/// reporting it healthy: the reader's instance restarts, or its partitions move to
/// another instance (a dead member's partitions move after the group's session timeout,
/// 45 s by default). An input whose reader reports it not moving is stalled after the
/// ordinary stall budget instead; a silent one after this.
const READER_HANDOVER_MS: i64 = 90_000;
/// A task's clock moving further than this in one reading is logged at debug level with
/// what each of its inputs said (`synclag::clock_trace`).
const CLOCK_JUMP_TRACE_MS: i64 = 5_000;

/// What a task last heard of one input from its reader.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// When (wall time) the last progress record was read.
    at: i64,
    /// The reader saw the input moving then.
    moving: bool,
    /// The reader had read nothing of it yet (it is taking the partition over: waiting
    /// for the previous owner's transaction to end, say).
    fresh: bool,
    /// Since when the input is in a handover (silent, or fresh), if it is.
    since: Option<i64>,
}

/// One owned stages partition: its engine and its clock.
pub struct Task {
    pub engine: Engine,
    clock: InputClock,
    /// Clock part ids by input partition.
    parts: HashMap<Tp, u32>,
    /// Input partition of each part id.
    inputs: Vec<Tp>,
    /// Parts whose input waits at its reader.
    waiting: HashSet<u32>,
    /// Per part: what its reader last said (see [`READER_HANDOVER_MS`]).
    heard: HashMap<u32, Heard>,
    /// The stages partition's end offset as last asked for.
    pub stages_end: Option<i64>,
    stall_budget_ms: i64,
}

impl Task {
    fn new(engine: Engine, stall_budget_ms: i64, inputs: &[Tp], wall: i64) -> Task {
        let mut t = Task {
            engine,
            clock: InputClock::new(stall_budget_ms),
            parts: HashMap::new(),
            inputs: Vec::new(),
            waiting: HashSet::new(),
            heard: HashMap::new(),
            stages_end: None,
            stall_budget_ms,
        };
        for tp in inputs {
            t.part(tp.clone(), wall);
        }
        t
    }

    /// The clock part of `input`, assigned at first sight (an input partition added
    /// after the metadata was read).
    fn part(&mut self, input: Tp, wall: i64) -> u32 {
        if let Some(id) = self.parts.get(&input) {
            return *id;
        }
        let id = u32::try_from(self.inputs.len()).unwrap_or(u32::MAX);
        self.clock.assign(id, wall);
        // Its reader may be starting or taking the partition over.
        self.heard.insert(
            id,
            Heard {
                at: wall,
                moving: true,
                fresh: true,
                since: None,
            },
        );
        self.inputs.push(input.clone());
        self.parts.insert(input, id);
        id
    }

    /// Inputs whose reader went silent after reporting them moving, or that a reader is
    /// taking over and has read nothing of yet, are not stalled until
    /// [`READER_HANDOVER_MS`] into that handover: their reader restarts or their partition
    /// moves to another instance. Raising on them at the ordinary stall budget would end
    /// correlations whose stages the next reader is about to route.
    fn hold_for_handover(&mut self, wall: i64) {
        for (id, h) in &mut self.heard {
            let silent = wall.saturating_sub(h.at) > PROGRESS_EVERY_MS;
            if h.fresh || (h.moving && silent) {
                let since = *h.since.get_or_insert(wall);
                if wall.saturating_sub(since) < READER_HANDOVER_MS {
                    self.clock.progressed(*id, wall);
                }
            } else {
                h.since = None;
            }
        }
    }

    /// Logs (at debug level) what each part of the clock said when it moved far at once.
    fn trace_jump(&self, k: i32, before: i64, now: i64, wall: i64) {
        // Times are shown relative to the clock before (or, at its first reading, after).
        let base = if before == i64::MIN { now } else { before };
        let parts: Vec<String> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(id, tp)| {
                let id = id as u32;
                let view = self.clock.view(id);
                let heard = self.heard.get(&id);
                format!(
                    "{}[{}]: position {:?} record {:?} confirmed {:?} progress {:?} heard {:?}",
                    tp.0,
                    tp.1,
                    view.and_then(|v| v.position),
                    view.and_then(|v| v.max_record_ms).map(|t| t - base),
                    view.and_then(|v| v.confirmed_ms).map(|t| t - base),
                    view.map(|v| wall - v.progress_ms),
                    heard.map(|h| (wall - h.at, h.moving, h.fresh, h.since.map(|s| wall - s))),
                )
            })
            .collect();
        tracing::debug!(target: "synclag::clock_trace", partition = k, jump_ms = now.saturating_sub(before), parts = ?parts, "a task's clock moved far at once");
    }

    /// Applies a progress record.
    fn progress(&mut self, p: Progress, wall: i64) {
        let id = self.part((p.topic.clone(), p.partition), wall);
        let at = p.progress_ms;
        if p.position >= 0 {
            if p.record_ms != i64::MIN {
                self.clock.record(id, p.position - 1, Some(p.record_ms), at);
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
        // Moving as the reader saw it: its last movement within the stall budget.
        let moving = p.waiting_since_ms == i64::MIN
            && p.confirmed_ms.max(at) >= wall.saturating_sub(self.stall_budget_ms);
        let fresh =
            p.waiting_since_ms == i64::MIN && p.record_ms == i64::MIN && p.confirmed_ms == i64::MIN;
        let since = self.heard.get(&id).and_then(|h| h.since);
        self.heard.insert(
            id,
            Heard {
                at: wall,
                moving,
                fresh,
                since,
            },
        );
    }
}

/// Both sides of the routed path.
pub struct Route {
    pub topic: Arc<str>,
    pub partitions: i32,
    names: Names,
    config: EngineConfig,
    stall_budget_ms: i64,
    /// Owned stages partitions, restored.
    pub tasks: BTreeMap<i32, Task>,
    /// Owned stages partitions whose changelog partition is not restored yet (paused).
    pub unrestored: BTreeSet<i32>,
    /// Every input partition, from metadata.
    inputs: Vec<Tp>,
    /// Progress last sent per input partition, with when.
    sent: HashMap<Tp, (Progress, i64)>,
    /// Counters of tasks handed to other owners (the metrics count on).
    pub retired: Counters,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Route {
    pub fn new(topology: &crate::config::Topology, partitions: i32, stall_budget_ms: i64) -> Route {
        Route {
            topic: Arc::from(topology.stages_topic().as_str()),
            partitions,
            names: Names::new(topology),
            config: crate::rules::Rules::engine_config(topology),
            stall_budget_ms,
            tasks: BTreeMap::new(),
            unrestored: BTreeSet::new(),
            inputs: Vec::new(),
            sent: HashMap::new(),
            retired: Counters::default(),
            key: Vec::new(),
            value: Vec::new(),
        }
    }

    pub fn is_stages(&self, topic: &str) -> bool {
        *self.topic == *topic
    }

    /// Input is paused by this instance (for its outputs): no task's input is stalled.
    pub fn paused_by_reader(&mut self, wall: i64) {
        for t in self.tasks.values_mut() {
            t.clock.paused_by_reader(wall);
        }
    }

    /// Stages partition `k` was revoked: its task goes (its state is in the changelog).
    pub fn revoke(&mut self, k: i32) {
        self.unrestored.remove(&k);
        if let Some(t) = self.tasks.remove(&k) {
            self.retired += t.engine.counters();
        }
    }

    /// The input partitions (from metadata); every task gets a part for new ones.
    pub fn set_inputs(&mut self, inputs: Vec<Tp>, wall: i64) {
        for t in self.tasks.values_mut() {
            for tp in &inputs {
                t.part(tp.clone(), wall);
            }
        }
        self.inputs = inputs;
    }

    /// The engine clock: the earliest of the tasks' (`i64::MIN` while one has not moved
    /// or none is owned). Held outcomes and batch checks follow it.
    pub fn now(&self) -> i64 {
        self.tasks
            .values()
            .map(|t| t.engine.now())
            .min()
            .unwrap_or(i64::MIN)
    }

    /// Pending correlations of every task, per workflow (oldest first, merged).
    pub fn pending_status(&self, oldest_n: usize) -> Vec<PendingStatus> {
        let mut merged: Vec<PendingStatus> = Vec::new();
        for t in self.tasks.values() {
            for ps in t.engine.pending_status() {
                match merged.iter_mut().find(|m| m.workflow == ps.workflow) {
                    None => merged.push(ps),
                    Some(m) => {
                        m.pending += ps.pending;
                        m.held += ps.held;
                        for (a, b) in m.by_age.iter_mut().zip(ps.by_age) {
                            *a += b;
                        }
                        m.oldest.extend(ps.oldest);
                        m.oldest.sort_by_key(|p| p.start_ms);
                        m.oldest.truncate(oldest_n);
                    }
                }
            }
        }
        merged.sort_by_key(|m| m.workflow);
        merged
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

    /// A record of the stages topic: a stage for its task's engine, a signal, or an
    /// input's progress for its task's clock. One this topology cannot read is
    /// dead-lettered with the reason. A record of a partition whose state is not restored
    /// yet is fetched again once it is (returns `false`: not processed).
    pub(super) fn on_routed(
        &mut self,
        m: &BorrowedMessage<'_>,
        consumer: &StreamConsumer<IngestContext>,
    ) {
        let pid = self.offsets.id(m.topic(), m.partition());
        let wall = wall_ms();
        let k = m.partition();
        if !self.ensure_task(k, consumer) {
            // Read again from here once its state is restored.
            if let Err(e) = consumer.seek(
                m.topic(),
                k,
                Offset::Offset(m.offset()),
                Duration::from_secs(1),
            ) {
                tracing::warn!(partition = k, error = %e, "cannot rewind a stages partition whose state is not restored");
            }
            return;
        }
        let decoded = match &self.route {
            Some(route) => codec::decode(
                &route.names,
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
            ),
            None => return,
        };
        let record = super::records::view(m, &[]);
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
                if let Some(task) = self.route.as_mut().and_then(|r| r.tasks.get_mut(&k)) {
                    let id = task.part((from.topic, from.partition), wall);
                    let at = (from.timestamp_ms != i64::MIN).then_some(from.timestamp_ms);
                    task.clock.record(id, from.offset, at, wall);
                }
                self.feed(ev, &record, Some(k));
                let generation = self.gate.generation();
                self.outcomes.take_lane(k, &mut self.out, generation);
            }
            Ok(Routed::Signal(s)) => {
                self.signals
                    .record(s.stream, &String::from_utf8_lossy(s.id.as_bytes()), &s.kind);
            }
            Ok(Routed::Progress(p)) => {
                if let Some(task) = self.route.as_mut().and_then(|r| r.tasks.get_mut(&k)) {
                    task.progress(p, wall);
                }
            }
        }
        self.offsets
            .processed(pid, m.offset(), m.timestamp().to_millis());
    }

    /// Makes sure stages partition `k` has its task (see [`ensure_tasks`]).
    pub(super) fn ensure_task(&mut self, k: i32, consumer: &StreamConsumer<IngestContext>) -> bool {
        self.ensure_tasks(&[k], consumer);
        self.route
            .as_ref()
            .is_some_and(|r| r.tasks.contains_key(&k))
    }

    /// Makes sure each stages partition in `ks` has its task, restoring the changelog
    /// partitions of those without one first, in one pass (blocking). When the restore
    /// fails they stay paused and are tried again on the next tick.
    pub(super) fn ensure_tasks(&mut self, ks: &[i32], consumer: &StreamConsumer<IngestContext>) {
        let Some(route) = &mut self.route else {
            return;
        };
        let missing: Vec<i32> = ks
            .iter()
            .copied()
            .filter(|k| !route.tasks.contains_key(k))
            .collect();
        if missing.is_empty() {
            return;
        }
        let topic = route.topic.to_string();
        let tps: Vec<Tp> = missing.iter().map(|k| (topic.clone(), *k)).collect();
        let wall = wall_ms();
        let mut engines = Vec::with_capacity(missing.len());
        for k in &missing {
            match Engine::new(&route.config) {
                Ok(mut e) => {
                    e.open_lag_interval(wall);
                    engines.push((*k, e));
                }
                Err(e) => {
                    tracing::error!(error = %e, "engine of a stages partition not created");
                    return;
                }
            }
        }
        let Some(state) = &mut self.state else {
            return;
        };
        let outcomes = &mut self.outcomes;
        let restored = {
            let mut into: Vec<(Option<i32>, &mut Engine)> =
                engines.iter_mut().map(|(k, e)| (Some(*k), e)).collect();
            tokio::task::block_in_place(|| {
                state.restore_into(
                    &self.topology,
                    &mut into,
                    &mut |w, id| outcomes.restore_open_breach(w, id),
                    wall,
                    Some(&missing),
                )
            })
        };
        match restored {
            Ok(r) => {
                tracing::info!(partitions = ?missing, pending = r.pending, finished = r.finished, "stages partitions taken over: their state is restored");
                for (k, engine) in engines {
                    let task = Task::new(engine, route.stall_budget_ms, &route.inputs, wall);
                    route.tasks.insert(k, task);
                    route.unrestored.remove(&k);
                }
                if !self.paused_in_client {
                    super::resume(consumer, &tps);
                }
            }
            Err(e) => {
                tracing::error!(partitions = ?missing, error = %e, "the state of stages partitions is not restored; they stay paused and are tried again");
                route.unrestored.extend(missing);
                super::pause(consumer, &tps);
            }
        }
    }

    /// Reads the partitions of every input topic (the engine clock waits for each), in
    /// one metadata request.
    pub(super) fn route_inputs(&mut self, consumer: &StreamConsumer<IngestContext>) {
        let Some(route) = &mut self.route else {
            return;
        };
        let wanted: HashSet<&str> = self
            .topology
            .streams
            .iter()
            .map(|s| s.topic.as_str())
            .collect();
        let md = tokio::task::block_in_place(|| {
            consumer
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
        });
        let mut inputs = Vec::new();
        match md {
            Ok(md) => {
                for t in md
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && wanted.contains(t.name()))
                {
                    for p in t.partitions() {
                        inputs.push((t.name().to_string(), p.id()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "input partitions not known; the engine clock counts them as their progress arrives");
            }
        }
        inputs.sort();
        inputs.dedup();
        route.set_inputs(inputs, wall_ms());
    }

    /// Reads every task's clock and advances its engine; returns the combined reading
    /// (live when all are, stalls named by input partition with the reader's ids so that
    /// breach evidence reads as without routing), or `None` without routing.
    pub(super) fn advance_tasks(&mut self, wall: i64) -> Option<Reading> {
        let route = self.route.as_mut()?;
        let mut combined = Reading {
            now_ms: None,
            live: !route.tasks.is_empty(),
            stalled: Vec::new(),
        };
        let generation = self.gate.generation();
        for (k, task) in route.tasks.iter_mut() {
            // Reading a backlog of its stages partition, a task has not read what its
            // inputs' readers said lately: it cannot judge them stalled until it has.
            let read_to = self
                .offsets
                .lookup(&(route.topic.to_string(), *k))
                .and_then(|id| self.offsets.next_offset(id));
            let behind = match (task.stages_end, read_to) {
                (Some(end), Some(next)) => end > next,
                (Some(end), None) => end > 0,
                (None, _) => false,
            };
            if behind {
                for id in 0..task.inputs.len() {
                    task.clock.progressed(id as u32, wall);
                }
            }
            task.hold_for_handover(wall);
            let before = task.engine.now();
            let reading = task.clock.read(wall);
            if let Some(now) = reading.now_ms {
                if (before == i64::MIN || now.saturating_sub(before) > CLOCK_JUMP_TRACE_MS)
                    && tracing::enabled!(target: "synclag::clock_trace", tracing::Level::DEBUG)
                {
                    task.trace_jump(*k, before, now, wall);
                }
                task.engine.advance(now, &mut self.out);
                self.outcomes.take_lane(*k, &mut self.out, generation);
            }
            combined.live &= reading.live;
            for s in reading.stalled {
                let Some(tp) = task.inputs.get(s.partition as usize) else {
                    continue;
                };
                let id = self.offsets.id(&tp.0, tp.1);
                if !combined.stalled.iter().any(|x| x.partition == id) {
                    combined.stalled.push(Stall { partition: id, ..s });
                }
            }
        }
        combined.now_ms = match route.now() {
            i64::MIN => None,
            t => Some(t),
        };
        Some(combined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: i64 = 5_000;

    fn task(inputs: &[Tp], wall: i64) -> Task {
        let topology =
            crate::config::Topology::from_yaml_str("demo", crate::demo::DEMO_TOPOLOGY, Vec::new())
                .expect("the demo topology is valid");
        let engine = Engine::new(&crate::rules::Rules::engine_config(&topology)).expect("engine");
        Task::new(engine, BUDGET, inputs, wall)
    }

    fn inputs() -> Vec<Tp> {
        vec![("orders".into(), 0), ("outbox".into(), 0)]
    }

    /// What a healthy live reader says of an input at `wall`: read to its end then.
    fn live(tp: &Tp, position: i64, wall: i64) -> Progress {
        Progress {
            topic: tp.0.clone(),
            partition: tp.1,
            position,
            record_ms: wall - 50,
            confirmed_ms: wall,
            progress_ms: wall,
            waiting_since_ms: i64::MIN,
        }
    }

    fn read(t: &mut Task, wall: i64) -> Reading {
        t.hold_for_handover(wall);
        t.clock.read(wall)
    }

    #[test]
    fn the_clock_waits_for_every_input_to_be_read_into_the_partition() {
        let ins = inputs();
        let mut t = task(&ins, 1_000);
        // One input reported: the other holds the clock.
        t.progress(live(&ins[0], 10, 2_000), 2_000);
        assert_eq!(read(&mut t, 2_010).now_ms, None);
        t.progress(live(&ins[1], 4, 1_900), 2_020);
        let r = read(&mut t, 2_030);
        assert_eq!(r.now_ms, Some(1_900));
        assert!(r.live);
        // An input this task had not heard of is counted from its first report.
        t.progress(live(&("returns".into(), 2), 1, 1_500), 2_040);
        assert_eq!(read(&mut t, 2_050).now_ms, Some(1_900), "never back");
        assert_eq!(t.inputs.len(), 3);
    }

    #[test]
    fn a_silent_reader_is_waited_for_up_to_the_handover_not_the_stall_budget() {
        let ins = inputs();
        let mut t = task(&ins, 0);
        for tp in &ins {
            t.progress(live(tp, 10, 1_000), 1_000);
        }
        // The reader of `orders` goes silent (its instance restarts, or the partition
        // moves); `outbox` keeps reporting.
        let mut wall = 1_000;
        while wall < 1_000 + 4 * BUDGET {
            wall += 1_000;
            t.progress(live(&ins[1], 10, wall), wall);
            let r = read(&mut t, wall);
            assert!(r.stalled.is_empty(), "at {wall}: {:?}", r.stalled);
            assert_eq!(r.now_ms, Some(1_000), "held by the silent input");
        }
        // Past the handover it is stalled: the clock goes on and breaches say why.
        wall = 1_000 + READER_HANDOVER_MS + 2_000;
        t.progress(live(&ins[1], 10, wall), wall);
        let r = read(&mut t, wall);
        assert_eq!(r.stalled.len(), 1);
        assert_eq!(r.stalled[0].partition, 0);
    }

    #[test]
    fn a_reader_that_reports_an_input_not_moving_stalls_it_at_the_budget() {
        let ins = inputs();
        let mut t = task(&ins, 0);
        t.progress(live(&ins[0], 10, 1_000), 1_000);
        t.progress(live(&ins[1], 10, 1_000), 1_000);
        // Its reader keeps reporting `orders`, but it has not moved since 1_000.
        let stuck = Progress {
            confirmed_ms: 1_000,
            progress_ms: 1_000,
            ..live(&ins[0], 10, 1_000)
        };
        let mut stalled = Vec::new();
        for wall in (2_000..=1_000 + 2 * BUDGET).step_by(1_000) {
            t.progress(stuck.clone(), wall);
            t.progress(live(&ins[1], 10, wall), wall);
            stalled = read(&mut t, wall).stalled;
        }
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(
            stalled[0].reason,
            crate::correlate::clock::StallReason::NoProgress
        );
    }

    #[test]
    fn a_reader_taking_an_input_over_is_not_a_stall() {
        let ins = inputs();
        let mut t = task(&ins, 0);
        t.progress(live(&ins[1], 10, 500), 500);
        // The new reader of `orders` has read nothing yet (the old owner's transaction
        // is still open): it reports the partition without record or confirmation.
        let fresh = Progress {
            topic: ins[0].0.clone(),
            partition: 0,
            position: 7,
            record_ms: i64::MIN,
            confirmed_ms: i64::MIN,
            progress_ms: 0,
            waiting_since_ms: i64::MIN,
        };
        for wall in (1_000..=30_000).step_by(1_000) {
            t.progress(fresh.clone(), wall);
            t.progress(live(&ins[1], 10, wall), wall);
            assert!(read(&mut t, wall).stalled.is_empty(), "at {wall}");
        }
    }
}
