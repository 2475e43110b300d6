//! Outcomes become events: the engine's outcomes are turned into breach events (with the
//! evidence for their cause), metrics and the per-workflow counts the API shows.
//!
//! Stage lags are recorded at once. Everything that becomes an event (breach, completion,
//! never arrived, late, evicted) is held back, in engine order, until the engine clock has
//! passed the time it is about: while a backlog is read, a completion can fire before the
//! signal records (errors, throttling) of the same moment have been read from another
//! partition; waiting for the clock makes the evidence complete, and costs nothing live.
//! Order is kept per correlation only, so one correlation waiting does not hold back others.
//!
//! Pure apart from metrics: no Kafka, no wall clock (times are passed in).

use super::held::{Held, HeldQueue};
use super::late::{LateSegments, Split};
use super::trend::Trend;
use crate::config::{LagSegment, Topology};
use crate::correlate::{
    CorrelationId, Decomposition, Outcome, OutcomeKind, StageEvent, StageSet, Tier,
};
use crate::emit::events::{BreachEvent, IncidentEvent};
use crate::incidents::IncidentBook;
use crate::rules::{self, Evidence, Masker, SignalBook, SliceSignals};
use crate::telemetry::handles::{LagHistograms, WorkflowCounters};
use crate::telemetry::names;
use crate::telemetry::series::{LabelCap, OTHER};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

/// A partner delay worth remembering for cause attribution (below this, it is noise).
const PARTNER_DELAY_NOTABLE_MS: i64 = 1_000;

/// Per-workflow counts and end-to-end lag for the API.
#[derive(Debug)]
pub struct WorkflowStats {
    pub completed: u64,
    pub warn: u64,
    pub critical: u64,
    pub never_arrived: u64,
    pub late: u64,
    pub end_to_end: Option<Histogram<u64>>,
    /// Starts, completions and lag over the last minutes, for the sparkline.
    pub trend: Trend,
}

/// What, besides the outcome itself, an event's cause is judged by.
pub struct Context<'a> {
    pub signals: &'a SignalBook,
    pub backlogged: &'a [rules::Backlogged],
    /// Stalled input partitions by topic: `topic[partition]: reason`.
    pub stalled: &'a HashMap<String, Vec<String>>,
    /// Wall time the event is raised at (`observed_at_ms`).
    pub wall_ms: i64,
}

type Key = (usize, Box<[u8]>);

/// A [`Key`] by reference: hashes and compares like the owned pair, so a map of keys is
/// looked up per outcome without copying the correlation id.
#[derive(Hash)]
pub(super) struct KeyRef<'a>(pub usize, pub &'a [u8]);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && *self.1 == *key.1
    }
}

impl<'a> KeyRef<'a> {
    fn of(o: &'a Outcome) -> Self {
        KeyRef(o.info.workflow, o.info.correlation_id.as_bytes())
    }

    fn owned(&self) -> Key {
        (self.0, self.1.into())
    }
}

/// Outcomes of one correlation held back for the clock, by what durable state must know:
/// how many warn breaches, critical breaches and ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeldMarks([u32; 3]);

const WARN: usize = 0;
const CRITICAL: usize = 1;
const ENDS: usize = 2;

/// Where a held `o` counts in [`HeldMarks`] (`None`: durable state need not know it).
fn held_slot(o: &Outcome) -> Option<usize> {
    match o.kind {
        OutcomeKind::Breach {
            tier: Tier::Warn, ..
        } => Some(WARN),
        OutcomeKind::Breach {
            tier: Tier::Critical,
            ..
        } => Some(CRITICAL),
        _ if o.is_terminal() => Some(ENDS),
        _ => None,
    }
}

impl HeldMarks {
    /// The breach tiers held: bit 1 warn, bit 2 critical (as `PendingImage::fired`).
    pub fn tiers(&self) -> u8 {
        u8::from(self.0[WARN] > 0) | (u8::from(self.0[CRITICAL] > 0) << 1)
    }

    /// Whether an end is held.
    pub fn end(&self) -> bool {
        self.0[ENDS] > 0
    }
}

/// The lane of outcomes of the only engine (without `store.repartition`).
pub const DIRECT: i32 = -1;

/// A map that forgets its oldest entries beyond a capacity, counting what it forgets.
#[derive(Debug)]
struct Bounded<V> {
    /// Each entry with the number its key was (last) inserted under.
    map: hashbrown::HashMap<Key, (V, u64)>,
    /// Keys in insertion order with that number: an entry removed and inserted again
    /// leaves a stale one behind, which must not take the new entry with it.
    order: VecDeque<(Key, u64)>,
    next: u64,
    capacity: usize,
    forgotten: u64,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: hashbrown::HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            capacity: capacity.max(1),
            forgotten: 0,
        }
    }

    fn insert(&mut self, key: Key, value: V) {
        if let Some((v, _)) = self.map.get_mut(&key) {
            *v = value;
        } else {
            let n = self.next;
            self.next += 1;
            self.map.insert(key.clone(), (value, n));
            self.order.push_back((key, n));
        }
        // The order queue may hold keys already removed (or removed and inserted again
        // since); skip those when trimming.
        while self.map.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some((old, n)) = self.order.pop_front() else {
                break;
            };
            let current = self.map.get(&old).is_some_and(|(_, m)| *m == n);
            if current && self.map.len() > self.capacity {
                self.map.remove(&old);
                self.forgotten += 1;
            }
        }
    }

    fn get<Q: std::hash::Hash + hashbrown::Equivalent<Key> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    fn remove<Q: std::hash::Hash + hashbrown::Equivalent<Key> + ?Sized>(
        &mut self,
        key: &Q,
    ) -> Option<V> {
        self.map.remove(key).map(|(v, _)| v)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Turns outcomes into events and statistics.
pub struct Outcomes {
    topology: Arc<Topology>,
    masker: Masker,
    stats: Vec<WorkflowStats>,
    /// Correlations with an open breach, so their completion is announced as `resolved`.
    open_breaches: Bounded<()>,
    /// Notable partner delays (t1 − t0) of pending correlations' start records.
    partner_delay: Bounded<i64>,
    /// Held outcomes per lane: one per engine, each released by its own clock
    /// ([`DIRECT`], or with `store.repartition` one per owned stages partition).
    /// Boxed: a release moves each item several times (queue, due run, engine order).
    held: BTreeMap<i32, HeldQueue<Box<Outcome>>>,
    /// What `held` holds per correlation that durable state must know of, kept as outcomes
    /// are held and released: a state cut asks every tick, and a scan of everything held
    /// cost more than the rest of the cut.
    held_marks: hashbrown::HashMap<Key, HeldMarks>,
    /// Topics each workflow stage is read from (for stalled-input evidence).
    stage_topics: Vec<Vec<String>>,
    /// Events raised since the last log summary, by kind.
    since_summary: BTreeMap<&'static str, u64>,
    /// Bound on the lag histogram's label combinations.
    lag_labels: std::cell::RefCell<LabelCap>,
    /// Lag histogram handles of admitted label combinations.
    lag_histograms: std::cell::RefCell<LagHistograms>,
    /// Counter handles of the outcome path.
    counters: WorkflowCounters,
    label_hasher: hashbrown::DefaultHashBuilder,
    /// Breaches grouped into incidents.
    incidents: IncidentBook,
    /// Signals of breached correlations per dimension value (cause evidence).
    slice_signals: SliceSignals,
    /// Dominant segments of recent late completions (resolved breaches), by workflow and
    /// time: evidence for pending breaches whose own measured segments explain little.
    late_segments: LateSegments,
    /// Keys whose terminal outcome (or a late arrival) was released since the last
    /// [`take_ended`](Self::take_ended), when durable state asks for them.
    ended: Option<Vec<(usize, CorrelationId)>>,
}

/// Late completions whose dominant segment is remembered (cause evidence).
const LATE_SEGMENTS_KEPT: usize = 1_000;
/// Late completions a segment must have dominated, and its share of them, to be evidence
/// for a pending breach of the same workflow.
const LATE_SEGMENT_MIN: usize = 3;
const LATE_SEGMENT_SHARE: f64 = 0.6;

/// Dimension values whose breached correlations' signals are remembered (cause evidence).
const SLICE_SIGNAL_VALUES: usize = 10_000;

/// Distinct label combinations of `synclag_lag_seconds` before new ones become `other`.
const LAG_LABEL_COMBINATIONS: usize = 5_000;

impl Outcomes {
    pub fn new(topology: Arc<Topology>, masker: Masker) -> Outcomes {
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
                trend: Trend::new(),
            })
            .collect();
        let stage_topics = topology
            .workflows
            .iter()
            .map(|w| {
                w.stages
                    .iter()
                    .map(|s| {
                        topology
                            .streams
                            .get(s.stream)
                            .map(|st| st.topic.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        let capacity = topology.store.max_pending.max(1_000);
        Outcomes {
            masker,
            stats,
            open_breaches: Bounded::new(capacity),
            partner_delay: Bounded::new(capacity),
            held: BTreeMap::new(),
            held_marks: hashbrown::HashMap::new(),
            stage_topics,
            since_summary: BTreeMap::new(),
            lag_labels: std::cell::RefCell::new(LabelCap::new(LAG_LABEL_COMBINATIONS)),
            lag_histograms: std::cell::RefCell::new(LagHistograms::default()),
            counters: WorkflowCounters::new(&topology),
            label_hasher: hashbrown::DefaultHashBuilder::default(),
            incidents: IncidentBook::new(&topology.incidents),
            slice_signals: SliceSignals::new(SLICE_SIGNAL_VALUES),
            late_segments: LateSegments::new(LATE_SEGMENTS_KEPT),
            ended: None,
            topology,
        }
    }

    /// Starts listing the keys whose end was released (for durable state).
    pub fn track_ended(&mut self) {
        self.ended.get_or_insert_with(Vec::new);
    }

    /// Keys whose terminal outcome or late arrival was released since the last call.
    pub fn take_ended(&mut self, into: &mut Vec<(usize, CorrelationId)>) {
        if let Some(ended) = &mut self.ended {
            into.append(ended);
        }
    }

    /// What is held back per key (keys with nothing of interest held are absent): the
    /// breach tiers still held (a durable image must not claim them raised before their
    /// events are out) and whether an end is held (see [`held_ends`](Self::held_ends)).
    pub fn held_marks(&self) -> &hashbrown::HashMap<Key, HeldMarks> {
        &self.held_marks
    }

    /// Keys whose end (completion, never arrived, eviction) is still held back for the
    /// clock, each with whether the correlation breached (a breach held back or raised):
    /// the engine has counted their end (its lag included), so a durable image of that
    /// moment must say so. A breached correlation's end is announced (`resolved`), so
    /// its image must also keep that announcement owed.
    pub fn held_ends(&self) -> impl Iterator<Item = (&Key, bool)> + '_ {
        self.held_marks
            .iter()
            .filter(|(_, m)| m.end())
            .map(|(key, m)| {
                let breached =
                    m.tiers() != 0 || self.open_breaches.get(&KeyRef(key.0, &key.1)).is_some();
                (key, breached)
            })
    }

    /// Counts `o` in [`held_marks`](Self::held_marks) as held (`+1`) or no longer (`-1`).
    fn mark_held(&mut self, o: &Outcome, held: bool) {
        let Some(slot) = held_slot(o) else {
            return;
        };
        let key = KeyRef::of(o);
        if held {
            match self.held_marks.get_mut(&key) {
                Some(m) => m.0[slot] += 1,
                None => {
                    let mut m = HeldMarks::default();
                    m.0[slot] = 1;
                    self.held_marks.insert(key.owned(), m);
                }
            }
        } else if let Some(m) = self.held_marks.get_mut(&key) {
            m.0[slot] = m.0[slot].saturating_sub(1);
            if m.0 == [0; 3] {
                self.held_marks.remove(&key);
            }
        }
    }

    /// A restored correlation had a breach raised before the restart: its completion is
    /// announced as `resolved`.
    pub fn restore_open_breach(&mut self, workflow: usize, id: &[u8]) {
        self.open_breaches.insert((workflow, id.into()), ());
    }

    pub fn stats(&self) -> &[WorkflowStats] {
        &self.stats
    }

    /// Generation of the oldest held-back outcome (see `ingest::commit`).
    pub fn oldest_held_generation(&self) -> Option<u64> {
        self.held
            .values()
            .filter_map(HeldQueue::oldest_generation)
            .min()
    }

    /// Entries the evidence maps forgot because they were full.
    pub fn evidence_forgotten(&self) -> u64 {
        self.open_breaches.forgotten + self.partner_delay.forgotten
    }

    /// Entries in the evidence maps.
    pub fn evidence_entries(&self) -> usize {
        self.open_breaches.len() + self.partner_delay.len()
    }

    /// Remembers a notable partner delay of a start stage (cause evidence while pending).
    pub fn note_stage(&mut self, ev: &StageEvent) {
        if ev.stage != 0 {
            return;
        }
        if let (Some(t0), Some(t1)) = (ev.ts.source_event_ms, ev.ts.kafka_ms) {
            let delay = t1.saturating_sub(t0);
            if delay >= PARTNER_DELAY_NOTABLE_MS {
                self.partner_delay
                    .insert((ev.workflow, ev.correlation_id.as_bytes().into()), delay);
            }
        }
    }

    /// Counts a stage event the engine took (`synclag_stage_events_total`).
    pub fn count_stage(&self, workflow: usize, stage: usize) {
        self.counters.stage_event(workflow, stage);
    }

    /// A correlation's start stage was taken by the engine (`at_ms`: when it happened).
    pub fn note_started(&mut self, workflow: usize, at_ms: i64) {
        if let Some(st) = self.stats.get_mut(workflow) {
            st.trend.started(at_ms);
        }
    }

    /// Takes the engine's outcomes: stage lags are recorded now, the rest is held back
    /// (stamped with `generation`) until [`release`](Self::release).
    pub fn take(&mut self, outcomes: &mut Vec<Outcome>, generation: u64) {
        self.take_lane(DIRECT, outcomes, generation);
    }

    /// [`take`](Self::take) for the engine of `lane`, released by that engine's clock
    /// (see [`release_lanes`](Self::release_lanes)).
    pub fn take_lane(&mut self, lane: i32, outcomes: &mut Vec<Outcome>, generation: u64) {
        for o in outcomes.drain(..) {
            let release_at = match &o.kind {
                OutcomeKind::StageReached { .. } => {
                    self.stage_reached(&o);
                    continue;
                }
                OutcomeKind::Breach { deadline_ms, .. } => *deadline_ms,
                OutcomeKind::Completed { at_ms, .. } => *at_ms,
                OutcomeKind::NeverArrived { window_end_ms, .. } => *window_end_ms,
                OutcomeKind::LateArrival { at_ms, .. } => *at_ms,
                OutcomeKind::Evicted { at_ms, .. } => *at_ms,
            };
            let key = self
                .label_hasher
                .hash_one((o.info.workflow, o.info.correlation_id.as_bytes()));
            self.mark_held(&o, true);
            self.held.entry(lane).or_default().push(
                key,
                Held {
                    release_at,
                    generation,
                    item: Box::new(o),
                },
            );
        }
        self.counters.deferred_outcomes.set(self.held_len() as f64);
    }

    fn held_len(&self) -> usize {
        self.held.values().map(HeldQueue::len).sum()
    }

    /// Drops what `lane` holds: its engine moved to another owner, which raises its
    /// outcomes from the state committed with them.
    pub fn drop_lane(&mut self, lane: i32) {
        if let Some(mut queue) = self.held.remove(&lane) {
            for h in queue.take_due(None) {
                self.mark_held(&h.item, false);
            }
        }
        self.counters.deferred_outcomes.set(self.held_len() as f64);
    }

    /// Turns held outcomes whose time the engine clock `now` has passed (all of them when
    /// `all`, at shutdown) into events appended to `sink`.
    pub fn release(&mut self, now: i64, all: bool, ctx: &Context<'_>, sink: &mut Vec<BreachEvent>) {
        self.release_lanes(&[(DIRECT, now)], all, ctx, sink);
    }

    /// [`release`](Self::release) of each lane by its own engine clock.
    pub fn release_lanes(
        &mut self,
        clocks: &[(i32, i64)],
        all: bool,
        ctx: &Context<'_>,
        sink: &mut Vec<BreachEvent>,
    ) {
        let mut due_items = Vec::new();
        for (lane, queue) in self.held.iter_mut() {
            if queue.is_empty() {
                continue;
            }
            let now = clocks
                .iter()
                .find(|(l, _)| l == lane)
                .map_or(i64::MIN, |(_, n)| *n);
            let due = match (all, now) {
                (true, _) => None,
                (false, i64::MIN) => continue,
                (false, now) => Some(now),
            };
            due_items.extend(queue.take_due(due));
        }
        for h in due_items {
            self.mark_held(&h.item, false);
            let o: &Outcome = &h.item;
            if let Some(ended) = &mut self.ended {
                if o.is_terminal() || matches!(o.kind, OutcomeKind::LateArrival { .. }) {
                    ended.push((o.info.workflow, o.info.correlation_id.clone()));
                }
            }
            if let Some(ev) = self.on_outcome(o, ctx) {
                *self.since_summary.entry(kind_name(&ev.kind)).or_default() += 1;
                // Once per breached correlation, at its first tier.
                if ev.kind == "breach" && ev.severity == "warn" {
                    let signals = ctx.signals.signals(&o.info.correlation_id.to_string());
                    self.slice_signals.record(
                        o.info.workflow,
                        &ev.dimensions,
                        signals,
                        h.release_at,
                    );
                }
                self.incidents.observe(&ev, h.release_at);
                sink.push(ev);
            }
        }
        self.counters.deferred_outcomes.set(self.held_len() as f64);
    }

    /// Incident events due at engine clock `now` and wall time `wall_ms`.
    pub fn tick_incidents(&mut self, now: i64, wall_ms: i64, sink: &mut Vec<IncidentEvent>) {
        self.incidents.tick(now, wall_ms, sink);
    }

    /// Open incidents (worst first) and the recently resolved ones, for the API.
    pub fn incidents(&self, wall_ms: i64) -> (Vec<IncidentEvent>, Vec<IncidentEvent>) {
        self.incidents.snapshot(wall_ms)
    }

    /// Publishes the incident series (`known`: every workflow × cause pair).
    pub fn publish_incidents(&self, known: &[(String, String)]) {
        self.incidents.publish(known);
        metrics::counter!(names::SLICE_SIGNALS_FORGOTTEN_TOTAL)
            .absolute(self.slice_signals.forgotten());
    }

    /// Logs what was raised since the last call (one INFO line instead of one per event).
    pub fn log_summary(&mut self) {
        if self.since_summary.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut self.since_summary);
        tracing::info!(events = ?counts, held = self.held_len(), "breach events raised since the last summary");
    }

    fn stage_reached(&mut self, o: &Outcome) {
        let OutcomeKind::StageReached {
            stage,
            previous_stage,
            lag_from_previous_ms,
            lag_from_first_ms,
            ..
        } = &o.kind
        else {
            return;
        };
        self.counters.stage_event(o.info.workflow, *stage);
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

    fn on_outcome(&mut self, o: &Outcome, ctx: &Context<'_>) -> Option<BreachEvent> {
        let wf = o.info.workflow;
        let key = KeyRef::of(o);
        match &o.kind {
            OutcomeKind::StageReached { .. } => {
                self.stage_reached(o);
                None
            }
            OutcomeKind::Completed {
                at_ms,
                previous_stage,
                lag_from_previous_ms,
                end_to_end_ms,
                decomposition,
                ..
            } => {
                let on_time = self.open_breaches.get(&key).is_none();
                // Shown (masked) values borrowed for the incident book; a map of them is
                // built only when the completion resolves a breach, for its event.
                let shown = self.shown_pairs(o);
                let pairs: Vec<(&str, &str)> = shown.iter().map(|(k, v)| (*k, &**v)).collect();
                self.incidents
                    .completed(&o.info.workflow_name, &pairs, *at_ms, on_time);
                let last = self.topology.workflows[wf].stages.len() - 1;
                self.counters.stage_event(wf, last);
                self.counters.completed(wf);
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
                st.trend.completed(*at_ms, *end_to_end_ms);
                self.partner_delay.remove(&key);
                self.open_breaches.remove(&key)?;
                if let Some(seg) = rules::dominant_segment(
                    decomposition.partner_ingestion_ms,
                    decomposition.middleware_erp_ms,
                    decomposition.outbox_cdc_ms,
                ) {
                    self.late_segments.push(wf, *at_ms, seg);
                }
                Some(
                    self.event(
                        o,
                        ctx,
                        "resolved",
                        "info",
                        Some(last),
                        None,
                        None,
                        *end_to_end_ms,
                        Some(decomposition),
                        pairs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                )
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
                self.open_breaches.insert(key.owned(), ());
                let ev = self.event(
                    o,
                    ctx,
                    "breach",
                    severity,
                    Some(*missing_stage),
                    *last_stage_seen,
                    Some(*deadline_ms),
                    *lag_so_far_ms,
                    None,
                    self.dims(o),
                );
                self.counters.breach(
                    wf,
                    &o.info.workflow_name,
                    severity,
                    ev.probable_cause.as_deref().unwrap_or("unknown"),
                );
                Some(ev)
            }
            OutcomeKind::NeverArrived {
                window_end_ms,
                stages_seen,
                missing,
            } => {
                self.stats[wf].never_arrived += 1;
                self.counters.never_arrived(wf);
                let lag = window_end_ms.saturating_sub(o.info.start_ms);
                let ev = self.event(
                    o,
                    ctx,
                    "never_arrived",
                    "never_arrived",
                    missing.first().copied(),
                    last_seen(*stages_seen),
                    None,
                    lag,
                    None,
                    self.dims(o),
                );
                self.open_breaches.remove(&key);
                self.partner_delay.remove(&key);
                Some(ev)
            }
            OutcomeKind::LateArrival {
                stage,
                lag_from_first_ms,
                ..
            } => {
                self.stats[wf].late += 1;
                self.counters.late_arrival(wf);
                Some(self.event(
                    o,
                    ctx,
                    "late_arrival",
                    "info",
                    Some(*stage),
                    None,
                    None,
                    lag_from_first_ms.unwrap_or(0),
                    None,
                    self.dims(o),
                ))
            }
            OutcomeKind::Evicted {
                at_ms,
                stages_seen,
                missing,
            } => {
                metrics::counter!(names::EVICTED_TOTAL).increment(1);
                self.open_breaches.remove(&key);
                self.partner_delay.remove(&key);
                Some(self.event(
                    o,
                    ctx,
                    "evicted",
                    "info",
                    missing.first().copied(),
                    last_seen(*stages_seen),
                    None,
                    at_ms.saturating_sub(o.info.start_ms),
                    None,
                    self.dims(o),
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        o: &Outcome,
        ctx: &Context<'_>,
        kind: &str,
        severity: &str,
        stage: Option<usize>,
        last_stage_seen: Option<usize>,
        deadline_ms: Option<i64>,
        lag_ms: i64,
        measured: Option<&Decomposition>,
        dimensions: BTreeMap<String, String>,
    ) -> BreachEvent {
        let wf = o.info.workflow;
        let cid = o.info.correlation_id.to_string();
        let key = KeyRef::of(o);
        let pending = kind == "breach" || kind == "never_arrived";
        // Measured segments: all of them once the correlation completed; while pending only
        // the partner/ingestion part (t1 − t0 of the start record), the rest being time
        // spent waiting for the missing stage.
        let known_partner = self.partner_delay.get(&key).copied();
        let (partner, middleware, outbox, waiting) = match measured {
            Some(d) => (
                d.partner_ingestion_ms,
                d.middleware_erp_ms,
                d.outbox_cdc_ms,
                None,
            ),
            None if pending => (
                known_partner,
                None,
                None,
                Some(lag_ms.saturating_sub(known_partner.unwrap_or(0)).max(0)),
            ),
            None => (
                known_partner,
                Some(lag_ms.saturating_sub(known_partner.unwrap_or(0))).filter(|v| *v > 0),
                None,
                None,
            ),
        };
        let at_ms = deadline_ms.unwrap_or(o.info.start_ms.saturating_add(lag_ms));
        // The dominant segment among measured parts, when they explain at least as much as
        // what is still unexplained; otherwise, while pending, the segment that dominated
        // this workflow's recent late completions.
        let own = rules::dominant_segment(partner, middleware, outbox)
            .filter(|_| partner.unwrap_or(0) >= waiting.unwrap_or(0));
        let dominant: Option<(LagSegment, String, bool)> = match own {
            Some(seg) => {
                let part = match seg {
                    LagSegment::PartnerIngestion => partner,
                    LagSegment::MiddlewareErp => middleware,
                    LagSegment::OutboxCdc => outbox,
                }
                .unwrap_or(0);
                Some((seg, format!("{part} ms of {lag_ms} ms"), false))
            }
            None if pending => self
                .recent_late_segment(wf, at_ms)
                .map(|(seg, why)| (seg, why, true)),
            None => None,
        };
        let signals = ctx.signals.signals(&cid);
        // Inputs that may hold the stage this event is about, but are stalled: the event
        // may be caused by synclag not having read them.
        let stalled_inputs: Vec<String> = if pending {
            stage
                .and_then(|s| self.stage_topics[wf].get(s))
                .and_then(|topic| ctx.stalled.get(topic))
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let workflow = &self.topology.workflows[wf];
        let upto = stage.map_or(self.stage_topics[wf].len(), |s| s + 1);
        let stage_topics = &self.stage_topics[wf][..upto.min(self.stage_topics[wf].len())];
        let attribution = rules::attribute(
            &self.topology.causes,
            &Evidence {
                signals,
                dominant_segment: dominant
                    .as_ref()
                    .map(|(s, why, inferred)| (*s, why.as_str(), *inferred)),
                backlogged: ctx.backlogged,
                stage_topics,
                slices: Some(rules::SliceQuery {
                    book: &self.slice_signals,
                    workflow: wf,
                    dimensions: &dimensions,
                    at_ms,
                    started_ms: o.info.start_ms,
                }),
            },
        );
        let (probable_cause, route, evidence) = if !stalled_inputs.is_empty() {
            (
                Some(INPUT_STALLED.to_string()),
                workflow.route.clone(),
                stalled_inputs
                    .iter()
                    .map(|s| format!("stalled:{s}"))
                    .collect(),
            )
        } else {
            match attribution {
                Some(a) => (
                    Some(a.cause.name.clone()),
                    Some(a.cause.route.clone()),
                    a.evidence,
                ),
                None => (None, workflow.route.clone(), Vec::new()),
            }
        };
        let team = route
            .as_ref()
            .and_then(|r| self.topology.routes.get(r))
            .map(|r| r.team.clone());
        let id_kind = if kind == "breach" { severity } else { kind };
        BreachEvent {
            breach_id: rules::keyed_breach_id(
                &self.masker,
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
            observed_at_ms: ctx.wall_ms,
            lag_ms,
            dimensions,
            segments_ms: segments(partner, middleware, outbox),
            dominant_segment: dominant.map(|(s, _, _)| s.name().to_string()),
            probable_cause,
            route,
            team,
            signals: signals.iter().map(|(_, k)| k.clone()).collect(),
            backlogged_groups: ctx.backlogged.iter().map(|b| b.group.clone()).collect(),
            stalled_inputs,
            evidence,
            waiting_for: if pending {
                stage.map(|s| self.stage_name(wf, s))
            } else {
                None
            },
            waiting_ms: waiting,
            truncated: Vec::new(),
        }
    }

    /// The segment that dominated most of `workflow`'s late completions within the slice
    /// window before `at_ms`, with a description, if it dominated enough of them.
    fn recent_late_segment(&self, workflow: usize, at_ms: i64) -> Option<(LagSegment, String)> {
        let since = at_ms.saturating_sub(
            i64::try_from(self.topology.incidents.slice_window.as_millis()).unwrap_or(i64::MAX),
        );
        let Split {
            segment: seg,
            dominated: n,
            total,
        } = self.late_segments.split(workflow, since, at_ms)?;
        (n >= LATE_SEGMENT_MIN && n as f64 >= LATE_SEGMENT_SHARE * total as f64).then(|| {
            (
                seg,
                format!(
                    "dominated {n} of {total} late completions of {}",
                    self.topology.workflows[workflow].name
                ),
            )
        })
    }

    /// A correlation id as events and the API show it: masked when configured.
    pub fn shown_id(&self, cid: String) -> String {
        if self.topology.masking.correlation_ids {
            self.masker.mask(&cid)
        } else {
            cid
        }
    }

    pub fn stage_name(&self, workflow: usize, stage: usize) -> String {
        self.topology.workflows[workflow]
            .stages
            .get(stage)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn dims(&self, o: &Outcome) -> BTreeMap<String, String> {
        self.shown_dims(o.info.dimensions.iter().map(|(k, v)| (&**k, &**v)))
    }

    /// [`dims`](Self::dims) without copying what is not masked.
    fn shown_pairs<'o>(&self, o: &'o Outcome) -> Vec<(&'o str, std::borrow::Cow<'o, str>)> {
        o.info
            .dimensions
            .iter()
            .map(|(k, v)| (&**k, self.shown_value(k, v)))
            .collect()
    }

    /// A dimension value as shown: masked when its dimension is configured so.
    fn shown_value<'v>(&self, dimension: &str, value: &'v str) -> std::borrow::Cow<'v, str> {
        if self
            .topology
            .masking
            .dimensions
            .iter()
            .any(|d| d == dimension)
        {
            std::borrow::Cow::Owned(self.masker.mask(value))
        } else {
            std::borrow::Cow::Borrowed(value)
        }
    }

    /// Dimension values as events, labels and the API show them: masked when configured.
    pub fn shown_dims<'a>(
        &self,
        dims: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeMap<String, String> {
        dims.into_iter()
            .map(|(k, v)| (k.to_string(), self.shown_value(k, v).into_owned()))
            .collect()
    }

    /// A lag summary as the lag topic shows it: masked dimension values.
    pub fn shown_lag(
        &self,
        mut summary: crate::emit::events::LagSummary,
    ) -> crate::emit::events::LagSummary {
        if !self.topology.masking.dimensions.is_empty() {
            summary.dimensions = self.shown_dims(
                summary
                    .dimensions
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
        summary
    }

    /// The masker (for dead letters, see `dlq::mask`).
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    fn record_lag(&self, o: &Outcome, from: usize, to: usize, segment: &'static str, ms: i64) {
        let seconds = ms.max(0) as f64 / 1000.0;
        let wf = o.info.workflow;
        let cached = self
            .lag_histograms
            .borrow()
            .key(wf, from, to, segment, &o.info.dimensions);
        if let Some(h) = self.lag_histograms.borrow().get(cached) {
            h.record(seconds);
            return;
        }
        let mut labels = vec![
            metrics::Label::new("workflow", o.info.workflow_name.to_string()),
            metrics::Label::new("from_stage", self.stage_name(wf, from)),
            metrics::Label::new("to_stage", self.stage_name(wf, to)),
            metrics::Label::new("segment", segment),
        ];
        let dims = self.dims(o);
        let key = self.label_hasher.hash_one((wf, from, to, segment, &dims));
        let admitted = self.lag_labels.borrow_mut().admit(key);
        for (k, v) in dims {
            let v = if admitted { v } else { OTHER.to_string() };
            labels.push(metrics::Label::new(k, v));
        }
        if admitted {
            self.lag_histograms
                .borrow_mut()
                .admit(cached, labels)
                .record(seconds);
        } else {
            // Not kept: each observation is counted as an overflow by the label cap.
            metrics::histogram!(names::LAG_SECONDS, labels).record(seconds);
        }
    }
}

pub use crate::config::INPUT_STALLED;

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "breach" => "breach",
        "resolved" => "resolved",
        "never_arrived" => "never_arrived",
        "late_arrival" => "late_arrival",
        "evicted" => "evicted",
        _ => "other",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Engine, Origin, StageEvent, Timestamps};

    const TOPOLOGY: &str = r#"
kafka:
  bootstrap_servers: "127.0.0.1:9"
outputs:
  breaches_topic: b
  lag_topic: l
streams:
  - name: orders
    topic: orders
    format: json
    fields: { correlation_id: $.id, event_time: $.at }
  - name: odoo
    topic: odoo
    format: json
    fields: { correlation_id: $.id, event_time: $.at }
workflows:
  - name: order_import
    stages:
      - { name: created, stream: orders }
      - { name: imported, stream: odoo }
    sla: { warn: 5m, critical: 15m }
    window: 1h
"#;

    fn stage(id: &str, stage: usize, at: i64) -> StageEvent {
        StageEvent {
            workflow: 0,
            stage,
            correlation_id: CorrelationId::from(id),
            ts: Timestamps {
                source_event_ms: Some(at),
                ..Timestamps::default()
            },
            dimensions: Vec::new(),
            origin: Origin {
                partition_id: 0,
                offset: 0,
            },
        }
    }

    /// What a scan of everything held says, as `held_marks` keeps it.
    fn scanned(o: &Outcomes) -> hashbrown::HashMap<Key, HeldMarks> {
        let mut out: hashbrown::HashMap<Key, HeldMarks> = hashbrown::HashMap::new();
        for h in o.held.values().flat_map(HeldQueue::iter) {
            let Some(slot) = held_slot(&h.item) else {
                continue;
            };
            let key = (
                h.item.info.workflow,
                h.item.info.correlation_id.as_bytes().into(),
            );
            out.entry(key).or_default().0[slot] += 1;
        }
        out
    }

    /// The marks durable state reads every cut are kept as outcomes are held, released
    /// and dropped with their lane, and always say what a scan of the held outcomes says.
    #[test]
    fn held_marks_always_match_a_scan_of_what_is_held() {
        let topology =
            Arc::new(Topology::from_yaml_str("t.yaml", TOPOLOGY, Vec::new()).expect("topology"));
        let mut engine =
            Engine::new(&crate::rules::Rules::engine_config(&topology)).expect("engine");
        let mut outcomes = Outcomes::new(topology, Masker::off());
        let signals = crate::rules::SignalBook::new(1_000);
        let stalled = HashMap::new();
        let ctx = Context {
            signals: &signals,
            backlogged: &[],
            stalled: &stalled,
            wall_ms: 0,
        };
        let minute = 60_000;
        let mut out = Vec::new();
        let mut sink = Vec::new();
        // Closed within the SLA, after warn, after critical, never: on two lanes.
        for i in 0..40i64 {
            let id = format!("SO-{i}");
            let t0 = i * minute;
            engine.process(stage(&id, 0, t0), &mut out).expect("start");
            let close = match i % 4 {
                0 => Some(t0 + minute),
                1 => Some(t0 + 8 * minute),
                2 => Some(t0 + 20 * minute),
                _ => None,
            };
            if let Some(at) = close {
                engine.process(stage(&id, 1, at), &mut out).expect("close");
            }
            engine.advance(t0, &mut out);
            let lane = if i % 2 == 0 { DIRECT } else { 7 };
            outcomes.take_lane(lane, &mut out, 1);
            assert_eq!(outcomes.held_marks, scanned(&outcomes), "held at {i}");
        }
        assert!(outcomes.held_ends().count() > 0);
        assert!(outcomes.held_marks.values().any(|m| m.tiers() == 3));
        engine.advance(100 * minute, &mut out);
        outcomes.take_lane(DIRECT, &mut out, 2);
        for now in (0..120).map(|m| m * minute).step_by(7) {
            outcomes.release_lanes(&[(DIRECT, now), (7, now)], false, &ctx, &mut sink);
            assert_eq!(outcomes.held_marks, scanned(&outcomes), "released at {now}");
            if now > 50 * minute {
                outcomes.drop_lane(7);
                assert_eq!(outcomes.held_marks, scanned(&outcomes), "lane 7 dropped");
            }
        }
        outcomes.release_lanes(&[], true, &ctx, &mut sink);
        assert!(outcomes.held_marks.is_empty());
        assert!(!sink.is_empty());
    }

    #[test]
    fn bounded_map_forgets_the_oldest_and_counts_it() {
        let mut b: Bounded<i64> = Bounded::new(2);
        for i in 0..5u8 {
            b.insert((0, Box::from([i].as_slice())), i64::from(i));
        }
        assert_eq!(b.len(), 2);
        assert_eq!(b.forgotten, 3);
        assert_eq!(b.get(&(0, Box::from([4u8].as_slice()))), Some(&4));
        // The first insert evicts the oldest (3); after that there is room, so entries
        // removed again are never counted as forgotten, and the order queue stays bounded.
        for i in 10..200u8 {
            let k: Key = (0, Box::from([i].as_slice()));
            b.insert(k.clone(), 1);
            b.remove(&k);
        }
        assert_eq!(b.forgotten, 4);
        assert_eq!(b.get(&(0, Box::from([4u8].as_slice()))), Some(&4));
        assert!(b.order.len() <= 4);
    }

    #[test]
    fn bounded_map_forgets_the_oldest_entry_not_one_inserted_again() {
        let key = |i: u8| -> Key { (0, Box::from([i].as_slice())) };
        let mut b: Bounded<i64> = Bounded::new(2);
        b.insert(key(1), 1);
        b.insert(key(2), 2);
        // 1 leaves and comes back: it is now the newest.
        b.remove(&key(1));
        b.insert(key(1), 10);
        // Over the capacity: the oldest entry is 2, not 1.
        b.insert(key(3), 3);
        assert_eq!(b.forgotten, 1);
        assert_eq!(b.get(&key(1)), Some(&10), "the entry inserted again stays");
        assert_eq!(b.get(&key(2)), None, "the oldest goes");
        assert_eq!(b.get(&key(3)), Some(&3));
    }
}
