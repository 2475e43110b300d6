//! The correlation store: windowed state per `(workflow, correlation id)`, SLA timers,
//! outcomes, lag recording, bounds and offset pins.
//!
//! Layout, chosen for a small footprint per pending correlation:
//!
//! - `slab`: one 64-byte `Entry` per pending correlation, addressed by a `u32` slot.
//!   The start stage's record is stored inline; other stages (rarely pending) go in a
//!   boxed side vector.
//! - `index`: a `HashTable<u32>` of slots; the id bytes live only in the entry.
//! - `lanes`: per workflow and SLA variant, a `BTreeSet<(start, slot)>`. Inside one lane
//!   every entry has the same warn, critical and window durations, so all three deadlines
//!   are monotone in the start time and the set is the timer queue for all of them: a
//!   cursor per tier marks how far it has fired, expiry pops from the front. One B-tree
//!   entry per correlation covers timers, eviction order and the oldest-N listing.
//!   Correlations whose start has not arrived yet ("held") sit in a last lane keyed by
//!   their earliest occurrence, with only the window timer.
//! - `age`: per workflow, pending counts per start second, for the age buckets.
//!
//! Clock rule: outcomes depend on event times only, never on the order in which
//! partitions are read. A tier fires once the engine clock reaches `start + SLA` while the
//! correlation is pending, and the window ends when the clock reaches `start + window`.
//! While a backlog is read the clock is the event-time watermark (see [`super::watermark`]),
//! so every record not read yet happened at or after the clock. A stage's own time settles
//! nothing, with one exception: a closing stage proves its correlation was pending until
//! then, so tiers due before it fire before it completes. Everything else waits for the
//! clock, because a stage of the same correlation that happened earlier may still be
//! unread on another partition.
//!
//! Stages read ahead of their time follow the same rule. A replay can read a closing
//! stage before its start (different partitions; live, the start comes first): it is held,
//! and when the start arrives the held stages are applied in the order they happened. A
//! stage that happened after its correlation's window end but is read before the clock got
//! there is kept unseen: at the window end the correlation is `NeverArrived` and the stage
//! a `LateArrival`, exactly as live.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::dims::DimTable;
use super::event::{CorrelateError, CorrelationId, Origin, StageEvent, Timestamps, MAX_PARTITIONS};
use super::lag::{LagStats, LagStore, Segment, SeriesKey, SeriesSnapshot};
use super::outcome::{
    CorrelationInfo, Decomposition, Dimensions, Outcome, OutcomeKind, StageSet, Terminal, Tier,
    TierDeadlines,
};
use super::pins::Pins;
use super::recent::{Recent, RecentRec};
use super::spec::{EngineConfig, SlaPolicy, SpecError, SpecProblem};

/// Sentinel for a missing timestamp inside packed records.
const NONE: i64 = i64::MIN;
const FIRED_WARN: u8 = 1;
const FIRED_CRITICAL: u8 = 2;
/// Stage 0 carried a source event time, so t0 equals its occurrence time.
const FLAG_T0: u8 = 1;
/// The entry changed since its last durable image (see [`Engine::track_changes`]).
const FLAG_DIRTY: u8 = 2;
/// Restored from an image written after its closing stage was counted (lags included)
/// while the completion waited to be announced: read again, the closing stage completes
/// the correlation without counting its lags a second time (see
/// [`Engine::take_closed_images`]).
const FLAG_END_COUNTED: u8 = 4;
/// Most business-hours overrides per workflow (lane indexes are stored in a `u8`).
const MAX_OVERRIDES: usize = 200;

/// Upper bounds (exclusive, ms) of the pending-age buckets; the last bucket is open.
pub const AGE_BUCKET_BOUNDS_MS: [i64; 4] = [60_000, 300_000, 900_000, 3_600_000];
/// Labels of the pending-age buckets, matching [`AGE_BUCKET_BOUNDS_MS`].
pub const AGE_BUCKET_LABELS: [&str; 5] = ["lt_1m", "1m_5m", "5m_15m", "15m_1h", "ge_1h"];

/// Event counters; every bound that can be hit has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events accepted.
    pub processed: u64,
    /// Events rejected with a [`CorrelateError`].
    pub rejected: u64,
    /// Repeated stages suppressed (pending, or after the correlation finished).
    pub duplicates: u64,
    /// Stages that arrived before their start stage and were held.
    pub held_early: u64,
    /// `StageReached` outcomes.
    pub stage_reached: u64,
    /// `Completed` outcomes.
    pub completed: u64,
    /// `NeverArrived` outcomes.
    pub never_arrived: u64,
    /// `Evicted` outcomes (store full).
    pub evicted: u64,
    /// `LateArrival` outcomes.
    pub late_arrivals: u64,
    /// Warn breaches.
    pub breaches_warn: u64,
    /// Critical breaches.
    pub breaches_critical: u64,
    /// Dimension values that overflowed the cap into `other`.
    pub dimension_overflow: u64,
    /// Lags below zero (clock skew between sources), recorded as 0.
    pub negative_lags: u64,
    /// Finished keys dropped from the bounded recent-terminal memory.
    pub recent_forgotten: u64,
    /// Intermediate stages read after their correlation completed (consumption order
    /// across partitions, usual while replaying a backlog): counted, no outcome.
    pub after_completion: u64,
    /// Correlations whose start never came: held stages that reached the end of their
    /// window (a subset of `never_arrived`).
    pub held_expired: u64,
    /// Stages read before the engine clock reached their correlation's window end but
    /// that happened after it (read ahead of other partitions, or held before their
    /// start: usual in a replay). Kept until the window ended, then reported as a
    /// `LateArrival` after the `NeverArrived` (a subset of `late_arrivals`), as live.
    pub beyond_window: u64,
    /// SLA tiers not raised because the window ended before their deadline (a workflow
    /// whose window is shorter than a tier).
    pub tiers_after_window: u64,
}

impl std::ops::AddAssign for Counters {
    /// Sums the counters of several engines (one per owned partition).
    fn add_assign(&mut self, o: Counters) {
        let Counters {
            processed,
            rejected,
            duplicates,
            held_early,
            stage_reached,
            completed,
            never_arrived,
            evicted,
            late_arrivals,
            breaches_warn,
            breaches_critical,
            dimension_overflow,
            negative_lags,
            recent_forgotten,
            after_completion,
            held_expired,
            beyond_window,
            tiers_after_window,
        } = o;
        self.processed += processed;
        self.rejected += rejected;
        self.duplicates += duplicates;
        self.held_early += held_early;
        self.stage_reached += stage_reached;
        self.completed += completed;
        self.never_arrived += never_arrived;
        self.evicted += evicted;
        self.late_arrivals += late_arrivals;
        self.breaches_warn += breaches_warn;
        self.breaches_critical += breaches_critical;
        self.dimension_overflow += dimension_overflow;
        self.negative_lags += negative_lags;
        self.recent_forgotten += recent_forgotten;
        self.after_completion += after_completion;
        self.held_expired += held_expired;
        self.beyond_window += beyond_window;
        self.tiers_after_window += tiers_after_window;
    }
}

/// One pending correlation in the status listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInfo {
    /// The correlation id.
    pub correlation_id: CorrelationId,
    /// Start time (provisional when `started` is false).
    pub start_ms: i64,
    /// Whether the start stage was seen.
    pub started: bool,
    /// Stages seen so far.
    pub stages_seen: StageSet,
    /// Dimension names and values.
    pub dimensions: Dimensions,
}

/// Pending state of one workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStatus {
    /// Workflow index.
    pub workflow: usize,
    /// Workflow name.
    pub name: String,
    /// Pending correlations.
    pub pending: usize,
    /// Of those, correlations whose start has not been seen (their stages are held).
    pub held: usize,
    /// Pending counts per age bucket ([`AGE_BUCKET_LABELS`]), age = engine clock − start,
    /// at one-second resolution.
    pub by_age: [u64; 5],
    /// The oldest pending correlations, oldest first (at most `oldest_n`).
    pub oldest: Vec<PendingInfo>,
}

/// A non-start stage's record (also the closing stage while held).
struct Rec {
    at: i64,
    /// ERP write time, else source time (t2 if this is the closing stage).
    t2: i64,
    /// Outbox Kafka time, else Kafka time (t3 if this is the closing stage).
    t3: i64,
    offset: i64,
    partition: u32,
    stage: u8,
}

/// One pending correlation. Kept at 64 bytes (see the size test).
struct Entry {
    id: Box<[u8]>,
    s0_at: i64,
    s0_kafka: i64,
    s0_offset: i64,
    // A thin pointer (8 bytes) instead of an inline `Vec` (24): most pending correlations
    // have only their start stage, and this keeps the entry at 64 bytes.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Rec>>>,
    s0_partition: u32,
    combo: u32,
    workflow: u16,
    seen: u16,
    fired: u8,
    lane: u8,
    flags: u8,
}

impl Entry {
    fn started(&self) -> bool {
        self.seen & 1 != 0
    }

    fn recs(&self) -> &[Rec] {
        self.more.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// Start time, or the earliest occurrence while the start is missing: the key of the
    /// entry in its lane, and what the window is measured from.
    fn anchor(&self) -> i64 {
        if self.started() {
            self.s0_at
        } else {
            self.recs().iter().map(|r| r.at).min().unwrap_or(self.s0_at)
        }
    }

    fn at_of(&self, stage: usize) -> Option<i64> {
        if stage == 0 {
            self.started().then_some(self.s0_at)
        } else {
            self.recs()
                .iter()
                .find(|r| usize::from(r.stage) == stage)
                .map(|r| r.at)
        }
    }

    /// Nearest seen stage before `stage` in the chain.
    fn previous_seen(&self, stage: usize) -> Option<usize> {
        (0..stage).rev().find(|&s| self.seen & (1 << s) != 0)
    }
}

/// A lane's key, `(anchor, slot)`, in 12 bytes instead of the 16 of an `(i64, u32)` tuple
/// (whose alignment pads it): the lanes hold one key per pending correlation, and a B-tree
/// leaf holds 11 of them whatever their size. Ordered as the tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
struct LaneKey {
    at_hi: i32,
    at_lo: u32,
    slot: u32,
}

impl LaneKey {
    fn new(at: i64, slot: u32) -> Self {
        Self {
            at_hi: (at >> 32) as i32,
            at_lo: at as u32,
            slot,
        }
    }

    fn at(self) -> i64 {
        (i64::from(self.at_hi) << 32) | i64::from(self.at_lo)
    }

    fn pair(self) -> (i64, u32) {
        (self.at(), self.slot)
    }
}

impl Ord for LaneKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.pair().cmp(&other.pair())
    }
}

impl PartialOrd for LaneKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Lane {
    set: BTreeSet<LaneKey>,
    /// `(warn_ms, critical_ms)`; `None` for the held lane.
    tiers: Option<(i64, i64)>,
    warn_cursor: Option<LaneKey>,
    critical_cursor: Option<LaneKey>,
}

struct Wf {
    name: Arc<str>,
    stage_names: Vec<String>,
    n_stages: usize,
    window_ms: i64,
    policy: SlaPolicy,
    /// Variants `0..=overrides.len()`, then the held lane.
    lanes: Vec<Lane>,
    /// Pending count per start second.
    age: BTreeMap<i64, u32>,
    pending: usize,
}

impl Wf {
    fn held_lane(&self) -> usize {
        self.lanes.len() - 1
    }
}

/// Closing-stage timestamps.
#[derive(Clone, Copy)]
struct Close {
    at: i64,
    t2: i64,
    t3: i64,
}

/// The single-owner correlation engine. `&mut self` everywhere; `Send`, so it can live in
/// one task (or one per shard, see [`shard_of`](super::shard_of)).
pub struct Engine {
    wfs: Vec<Wf>,
    slab: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    pins: Pins,
    lag: LagStore,
    dims: DimTable,
    recent: Recent,
    counters: Counters,
    now: i64,
    len: usize,
    max_pending: usize,
    oldest_n: usize,
    scratch: Vec<(i64, u32)>,
    /// `(slot, hash)` of the key `process` is working on, so finishing it needs no rehash.
    hot: Option<(u32, u64)>,
    /// Start of the current lag interval (0: since creation, time unknown).
    lag_interval_start: i64,
    /// Whether changed entries are listed in `dirty` (durable state, see `images`).
    tracking: bool,
    /// Slots whose entry changed since the last [`drain_dirty`](Self::drain_dirty).
    dirty: Vec<u32>,
    /// Images of breached correlations as they stood when their closing stage was
    /// counted, while tracking (see [`take_closed_images`](Self::take_closed_images)).
    closed: Vec<super::durable::PendingImage>,
}

fn bit(stage: usize) -> u16 {
    1u16 << (stage & 15)
}

fn diff(a: i64, b: i64) -> Option<i64> {
    (a != NONE && b != NONE).then(|| a.saturating_sub(b))
}

impl Engine {
    /// A new engine; fails with every config problem listed.
    pub fn new(cfg: &EngineConfig) -> Result<Self, SpecError> {
        let mut problems = cfg.problems();
        for (i, wf) in cfg.workflows.iter().enumerate() {
            if wf.sla.overrides.len() > MAX_OVERRIDES {
                problems.push(SpecProblem {
                    path: format!("workflows[{i}].sla.overrides"),
                    message: format!("at most {MAX_OVERRIDES} overrides are supported"),
                });
            }
        }
        if !problems.is_empty() {
            return Err(SpecError { problems });
        }
        let wfs = cfg
            .workflows
            .iter()
            .map(|wf| {
                let mut lanes: Vec<Lane> = (0..=wf.sla.overrides.len())
                    .map(|v| Lane {
                        set: BTreeSet::new(),
                        tiers: Some(wf.sla.tiers(v)),
                        warn_cursor: None,
                        critical_cursor: None,
                    })
                    .collect();
                lanes.push(Lane {
                    set: BTreeSet::new(),
                    tiers: None,
                    warn_cursor: None,
                    critical_cursor: None,
                });
                Wf {
                    name: Arc::from(wf.name.as_str()),
                    stage_names: wf.stages.clone(),
                    n_stages: wf.stages.len(),
                    window_ms: wf.window_ms,
                    policy: wf.sla.clone(),
                    lanes,
                    age: BTreeMap::new(),
                    pending: 0,
                }
            })
            .collect();
        Ok(Self {
            wfs,
            slab: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            pins: Pins::default(),
            lag: LagStore::new(),
            dims: DimTable::new(&cfg.workflows, cfg.dimension_value_cap),
            recent: Recent::new(cfg.recent_terminal_cap),
            counters: Counters::default(),
            now: i64::MIN,
            len: 0,
            max_pending: cfg.max_pending,
            oldest_n: cfg.oldest_n,
            scratch: Vec::new(),
            hot: None,
            lag_interval_start: 0,
            tracking: false,
            dirty: Vec::new(),
            closed: Vec::new(),
        })
    }

    /// Engine clock: the latest `now_ms` given to [`advance`](Self::advance).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Pending correlations.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Counters since creation.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.recent_forgotten = self.recent.forgotten;
        c
    }

    /// Finished correlations currently remembered (bounded by
    /// [`EngineConfig::recent_terminal_cap`]).
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Lowest offset on `partition_id` that a pending correlation was built from; the
    /// consumer must not commit past it. `None` when nothing on that partition is pinned.
    /// Only the first record of each stage pins; a repeated stage is counted and dropped,
    /// so committing past it loses nothing.
    pub fn min_pinned_offset(&self, partition_id: u32) -> Option<i64> {
        self.pins.min(partition_id)
    }

    /// Number of lags recorded in one histogram series.
    pub fn series_count(&self, key: SeriesKey) -> u64 {
        self.lag.count(key)
    }

    fn hash_key(&self, workflow: u16, id: &[u8]) -> u64 {
        self.hasher.hash_one((workflow, id))
    }

    fn check(&self, ev: &StageEvent) -> Result<i64, CorrelateError> {
        let wf = self
            .wfs
            .get(ev.workflow)
            .ok_or(CorrelateError::UnknownWorkflow(ev.workflow))?;
        if ev.stage >= wf.n_stages {
            return Err(CorrelateError::UnknownStage {
                workflow: ev.workflow,
                stage: ev.stage,
            });
        }
        if ev.correlation_id.is_empty() {
            return Err(CorrelateError::EmptyCorrelationId);
        }
        if ev.origin.partition_id >= MAX_PARTITIONS {
            return Err(CorrelateError::PartitionOutOfRange(ev.origin.partition_id));
        }
        if let Some(&(d, _)) = ev
            .dimensions
            .iter()
            .find(|(d, _)| *d >= self.dims_len(ev.workflow))
        {
            return Err(CorrelateError::UnknownDimension {
                workflow: ev.workflow,
                dimension: d,
            });
        }
        ev.ts.occurrence_ms().ok_or(CorrelateError::NoTimestamp)
    }

    fn dims_len(&self, workflow: usize) -> usize {
        self.dims.dimension_count(workflow)
    }

    /// Applies one stage event. Outcomes are appended to `out` (a buffer the caller reuses).
    /// A rejected event changes nothing but the `rejected` counter.
    pub fn process(
        &mut self,
        ev: StageEvent,
        out: &mut Vec<Outcome>,
    ) -> Result<(), CorrelateError> {
        let at = match self.check(&ev) {
            Ok(at) => at,
            Err(e) => {
                self.counters.rejected += 1;
                return Err(e);
            }
        };
        self.counters.processed += 1;
        let w = ev.workflow as u16;
        let hash = self.hash_key(w, ev.correlation_id.as_bytes());
        if let Some(slot) = self.find_slot(hash, w, ev.correlation_id.as_bytes()) {
            self.hot = Some((slot, hash));
            self.on_existing(slot, ev, at, out);
            self.hot = None;
            self.touch(slot);
        } else if self.recent.get_mut(hash, w).is_some() {
            self.on_finished(hash, ev, at, out);
        } else {
            self.create(hash, ev, at, out);
        }
        Ok(())
    }

    fn create(&mut self, hash: u64, ev: StageEvent, at: i64, out: &mut Vec<Outcome>) {
        if self.len >= self.max_pending {
            self.evict_oldest(out);
        }
        let w = ev.workflow;
        let (combo, overflow) = if ev.dimensions.is_empty() {
            (0, 0)
        } else {
            self.dims.merge(w, 0, &ev.dimensions)
        };
        self.counters.dimension_overflow += overflow;
        let mut e = Entry {
            id: ev.correlation_id.into_boxed_bytes(),
            s0_at: NONE,
            s0_kafka: NONE,
            s0_offset: 0,
            more: None,
            s0_partition: 0,
            combo,
            workflow: w as u16,
            seen: 0,
            fired: 0,
            lane: 0,
            flags: 0,
        };
        let wf = &self.wfs[w];
        if ev.stage == 0 {
            set_start(&mut e, &ev.ts, at, ev.origin);
            e.lane = wf.policy.variant_for(at) as u8;
        } else {
            e.more = Some(Box::new(vec![make_rec(ev.stage, &ev.ts, at, ev.origin)]));
            e.seen = bit(ev.stage);
            e.lane = wf.held_lane() as u8;
            self.counters.held_early += 1;
        }
        self.pins.pin(ev.origin.partition_id, ev.origin.offset);
        let started = e.started();
        let slot = self.insert(hash, e);
        self.touch(slot);
        let t = self.now.max(at);
        if started {
            self.fire_tiers(slot, t, out);
        }
        self.expire_if_due(slot, t, out);
    }

    /// Slot of the pending entry `(w, id)` hashed to `hash`.
    fn find_slot(&self, hash: u64, w: u16, id: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.index
            .find(hash, |&s| {
                slab.get(s as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| e.workflow == w && &*e.id == id)
            })
            .copied()
    }

    /// Stores a new entry under `hash`: slab, index, lane and age bucket.
    fn insert(&mut self, hash: u64, e: Entry) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(e);
                s
            }
            None => {
                self.slab.push(Some(e));
                (self.slab.len() - 1) as u32
            }
        };
        {
            let (slab, hasher) = (&self.slab, &self.hasher);
            self.index.insert_unique(hash, slot, |&s| {
                slab.get(s as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |e| hasher.hash_one((e.workflow, &*e.id)))
            });
        }
        self.len += 1;
        self.enlist(slot);
        slot
    }

    /// Puts an entry into its lane and age bucket.
    fn enlist(&mut self, slot: u32) {
        let Some(e) = self.slab.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let anchor = e.anchor();
        let wf = &mut self.wfs[usize::from(e.workflow)];
        if let Some(lane) = wf.lanes.get_mut(usize::from(e.lane)) {
            lane.set.insert(LaneKey::new(anchor, slot));
        }
        *wf.age.entry(anchor.div_euclid(1000)).or_insert(0) += 1;
        wf.pending += 1;
    }

    /// Takes an entry out of its lane and age bucket (it stays in the slab).
    fn delist(&mut self, slot: u32) {
        let Some(e) = self.slab.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let anchor = e.anchor();
        let wf = &mut self.wfs[usize::from(e.workflow)];
        if let Some(lane) = wf.lanes.get_mut(usize::from(e.lane)) {
            lane.set.remove(&LaneKey::new(anchor, slot));
        }
        let sec = anchor.div_euclid(1000);
        if let Some(n) = wf.age.get_mut(&sec) {
            *n -= 1;
            if *n == 0 {
                wf.age.remove(&sec);
            }
        }
        wf.pending -= 1;
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slab.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slab.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn on_existing(&mut self, slot: u32, ev: StageEvent, at: i64, out: &mut Vec<Outcome>) {
        let Some(e) = self.entry(slot) else {
            return;
        };
        let stage = ev.stage;
        // A stage waiting past the window end is not seen yet, but is known.
        if e.seen & bit(stage) != 0 || e.recs().iter().any(|r| usize::from(r.stage) == stage) {
            self.counters.duplicates += 1;
            return;
        }
        let started = e.started();
        let w = usize::from(e.workflow);
        // Only the clock settles timers here, never this stage's own time: a stage of the
        // same correlation that happened earlier may still be unread on another partition
        // (a closing stage before a breach deadline, a middle stage before the window end).
        let now = self.now;
        if started {
            self.fire_tiers(slot, now, out);
        }
        if self.expire_if_due(slot, now, out) {
            let hash = self.hash_key(w as u16, ev.correlation_id.as_bytes());
            self.on_finished(hash, ev, at, out);
            return;
        }
        if !ev.dimensions.is_empty() {
            let base = self.entry(slot).map_or(0, |e| e.combo);
            let (combo, overflow) = self.dims.merge(w, base, &ev.dimensions);
            self.counters.dimension_overflow += overflow;
            if let Some(e) = self.entry_mut(slot) {
                e.combo = combo;
            }
        }
        let last = self.wfs[w].n_stages - 1;
        let window_end = self
            .entry(slot)
            .map_or(i64::MAX, |e| e.s0_at.saturating_add(self.wfs[w].window_ms));
        let held_end = self.entry(slot).map_or(i64::MAX, |e| {
            e.anchor().saturating_add(self.wfs[w].window_ms)
        });
        if stage == 0 && at >= held_end {
            // The held stages' window ends before this start: live, they would have been
            // declared never arrived and the start read late. Kept unseen for the expiry.
            if let Some(e) = self.entry_mut(slot) {
                e.more
                    .get_or_insert_with(Default::default)
                    .push(make_rec(0, &ev.ts, at, ev.origin));
            }
            self.pins.pin(ev.origin.partition_id, ev.origin.offset);
        } else if stage == 0 {
            self.start_held(slot, &ev, at, out);
        } else if !started {
            self.delist(slot);
            if let Some(e) = self.entry_mut(slot) {
                e.more
                    .get_or_insert_with(Default::default)
                    .push(make_rec(stage, &ev.ts, at, ev.origin));
                e.seen |= bit(stage);
            }
            self.pins.pin(ev.origin.partition_id, ev.origin.offset);
            self.counters.held_early += 1;
            self.enlist(slot);
        } else if at >= window_end {
            // Happened after the window end, read before the clock got there (a replay
            // reading this partition ahead of others). Live, the window would end first:
            // kept unseen, so the expiry reports it late (or, if the correlation completes
            // first, it is a stage after completion).
            if let Some(e) = self.entry_mut(slot) {
                e.more
                    .get_or_insert_with(Default::default)
                    .push(make_rec(stage, &ev.ts, at, ev.origin));
            }
            self.pins.pin(ev.origin.partition_id, ev.origin.offset);
        } else if stage == last {
            let (t2, t3) = close_ts(&ev.ts);
            self.complete(slot, Close { at, t2, t3 }, None, out);
        } else {
            if let Some(e) = self.entry_mut(slot) {
                e.more
                    .get_or_insert_with(Default::default)
                    .push(make_rec(stage, &ev.ts, at, ev.origin));
                e.seen |= bit(stage);
            }
            self.pins.pin(ev.origin.partition_id, ev.origin.offset);
            self.stage_reached(slot, stage, at, out);
        }
    }

    /// The start stage arrives for a correlation whose later stages were held.
    ///
    /// Live, each held stage would have been read after the start. So they are applied
    /// here in the order they happened: intermediate stages reached, the closing stage
    /// completes (stages that happened after it are then stages after completion), and
    /// stages past the window end stay unseen for the expiry to report late. A stage
    /// counts as seen once applied, so lags from the previous stage and the stages a
    /// completion lists are what live processing would have had. Timers are left to the
    /// clock, as for any stage (see `on_existing`).
    fn start_held(&mut self, slot: u32, ev: &StageEvent, at: i64, out: &mut Vec<Outcome>) {
        // The start is the record that completes it, if a held stage closes it: a durable
        // image of the moment before is the held entry (see `keep_closed_image`). Taken
        // only then: most held entries wait for a later stage, not the closing one.
        let closes = self
            .entry(slot)
            .is_some_and(|e| e.seen & bit(self.wfs[usize::from(e.workflow)].n_stages - 1) != 0);
        let mut before_start = if self.tracking && closes {
            self.image_of(slot)
        } else {
            None
        };
        self.delist(slot);
        let w = {
            let Some(e) = self.slab.get_mut(slot as usize).and_then(Option::as_mut) else {
                return;
            };
            let w = usize::from(e.workflow);
            set_start(e, &ev.ts, at, ev.origin);
            e.seen = 1;
            e.lane = self.wfs[w].policy.variant_for(at) as u8;
            w
        };
        self.pins.pin(ev.origin.partition_id, ev.origin.offset);
        self.enlist(slot);
        let last = self.wfs[w].n_stages - 1;
        let window_end = at.saturating_add(self.wfs[w].window_ms);
        let mut held: Vec<(i64, usize, i64, i64)> = self.entry(slot).map_or_else(Vec::new, |e| {
            e.recs()
                .iter()
                .filter(|r| r.at < window_end)
                .map(|r| (r.at, usize::from(r.stage), r.t2, r.t3))
                .collect()
        });
        held.sort_unstable();
        for (stage_at, stage, t2, t3) in held {
            if stage == last {
                self.complete(
                    slot,
                    Close {
                        at: stage_at,
                        t2,
                        t3,
                    },
                    before_start.take(),
                    out,
                );
                return;
            }
            if let Some(e) = self.entry_mut(slot) {
                e.seen |= bit(stage);
            }
            self.stage_reached(slot, stage, stage_at, out);
        }
        let now = self.now;
        self.fire_tiers(slot, now, out);
        self.expire_if_due(slot, now, out);
    }

    fn stage_reached(&mut self, slot: u32, stage: usize, at: i64, out: &mut Vec<Outcome>) {
        let Some(e) = self.entry(slot) else {
            return;
        };
        let previous_stage = e.previous_seen(stage).unwrap_or(0);
        let prev_at = e.at_of(previous_stage).unwrap_or(e.s0_at);
        let lag_from_previous_ms = at.saturating_sub(prev_at);
        let lag_from_first_ms = at.saturating_sub(e.s0_at);
        let (w, combo) = (usize::from(e.workflow), e.combo);
        let info = self.info(e, CorrelationId::from(&*e.id));
        self.record(
            w,
            previous_stage,
            stage,
            Segment::StageToStage,
            combo,
            lag_from_previous_ms,
        );
        self.record(w, 0, stage, Segment::FromFirst, combo, lag_from_first_ms);
        self.counters.stage_reached += 1;
        out.push(Outcome {
            info,
            kind: OutcomeKind::StageReached {
                stage,
                at_ms: at,
                previous_stage,
                lag_from_previous_ms,
                lag_from_first_ms,
            },
        });
    }

    /// Completes the entry in `slot`. `before`: its image before the record that
    /// completes it, when that record was not the closing stage itself (the start of an
    /// entry whose closing stage was held); `None`: the entry as it stands is that image.
    fn complete(
        &mut self,
        slot: u32,
        close: Close,
        before: Option<super::durable::PendingImage>,
        out: &mut Vec<Outcome>,
    ) {
        // A tier whose deadline is before the closing time was passed while pending.
        self.fire_tiers(slot, close.at, out);
        let Some(e) = self.entry(slot) else {
            return;
        };
        let w = usize::from(e.workflow);
        let last = self.wfs[w].n_stages - 1;
        let previous_stage = e.previous_seen(last).unwrap_or(0);
        let prev_at = e.at_of(previous_stage).unwrap_or(e.s0_at);
        let lag_from_previous_ms = close.at.saturating_sub(prev_at);
        let lag_from_first_ms = close.at.saturating_sub(e.s0_at);
        let t0 = if e.flags & FLAG_T0 != 0 {
            e.s0_at
        } else {
            NONE
        };
        let t1 = e.s0_kafka;
        let decomposition = Decomposition {
            partner_ingestion_ms: diff(t1, t0),
            middleware_erp_ms: diff(close.t2, t1),
            outbox_cdc_ms: diff(close.t3, close.t2),
            business_ms: diff(close.t2, t0),
        };
        let end_to_end_ms = decomposition.business_ms.unwrap_or(lag_from_first_ms);
        let combo = e.combo;
        let stages_seen = StageSet(e.seen | bit(last));
        let counted_before = e.flags & FLAG_END_COUNTED != 0;
        if self.tracking && e.fired != 0 {
            let fired = e.fired;
            self.keep_closed_image(slot, before, fired);
        }
        // Counted before a restart (see `FLAG_END_COUNTED`): announced now, counted once.
        if !counted_before {
            self.record(
                w,
                previous_stage,
                last,
                Segment::StageToStage,
                combo,
                lag_from_previous_ms,
            );
            self.record(w, 0, last, Segment::FromFirst, combo, lag_from_first_ms);
            self.record(w, 0, last, Segment::EndToEnd, combo, end_to_end_ms);
            let segments = [
                (
                    Segment::PartnerIngestion,
                    decomposition.partner_ingestion_ms,
                ),
                (Segment::MiddlewareErp, decomposition.middleware_erp_ms),
                (Segment::OutboxCdc, decomposition.outbox_cdc_ms),
            ];
            for (segment, v) in segments {
                if let Some(v) = v {
                    self.record(w, 0, last, segment, combo, v);
                }
            }
        }
        self.counters.completed += 1;
        if let Some(e) = self.entry_mut(slot) {
            // Remembered as seen, so a redelivered closing record counts as a duplicate.
            e.seen |= bit(last);
        }
        self.finish(
            slot,
            Terminal::Completed,
            OutcomeKind::Completed {
                at_ms: close.at,
                previous_stage,
                lag_from_previous_ms,
                lag_from_first_ms,
                end_to_end_ms,
                decomposition,
                stages_seen,
            },
            out,
        );
    }

    fn record(
        &mut self,
        workflow: usize,
        from_stage: usize,
        to_stage: usize,
        segment: Segment,
        combo: u32,
        v: i64,
    ) {
        let key = SeriesKey {
            workflow,
            from_stage,
            to_stage,
            segment,
            combo,
        };
        if self.lag.record(key, v) {
            self.counters.negative_lags += 1;
        }
    }

    fn deadlines(&self, e: &Entry) -> Option<TierDeadlines> {
        if !e.started() {
            return None;
        }
        let variant = usize::from(e.lane);
        let (warn, critical) = self.wfs[usize::from(e.workflow)].policy.tiers(variant);
        Some(TierDeadlines {
            warn_ms: e.s0_at.saturating_add(warn),
            critical_ms: e.s0_at.saturating_add(critical),
            variant,
        })
    }

    fn info(&self, e: &Entry, correlation_id: CorrelationId) -> CorrelationInfo {
        let w = usize::from(e.workflow);
        CorrelationInfo {
            workflow: w,
            workflow_name: self.wfs[w].name.clone(),
            correlation_id,
            start_ms: e.anchor(),
            started: e.started(),
            dimensions: self.dims.dims(e.combo),
            deadlines: self.deadlines(e),
        }
    }

    /// Fires every unfired tier of a started entry whose deadline is at or before `t`.
    fn fire_tiers(&mut self, slot: u32, t: i64, out: &mut Vec<Outcome>) {
        for tier in [Tier::Warn, Tier::Critical] {
            self.fire_tier(slot, tier, t, out);
        }
    }

    fn fire_tier(&mut self, slot: u32, tier: Tier, t: i64, out: &mut Vec<Outcome>) {
        let Some(e) = self.entry(slot) else {
            return;
        };
        let Some(d) = self.deadlines(e) else {
            return;
        };
        let (flag, deadline) = match tier {
            Tier::Warn => (FIRED_WARN, d.warn_ms),
            Tier::Critical => (FIRED_CRITICAL, d.critical_ms),
        };
        if e.fired & flag != 0 || deadline > t {
            return;
        }
        let window_end = e
            .anchor()
            .saturating_add(self.wfs[usize::from(e.workflow)].window_ms);
        if deadline > window_end {
            // The correlation is gone at its window end, before this deadline; live, the
            // tier could never fire. Marked so it is counted once.
            if let Some(e) = self.entry_mut(slot) {
                e.fired |= flag;
            }
            self.touch(slot);
            self.counters.tiers_after_window += 1;
            return;
        }
        // What was known when the deadline passed: stages that occurred before it.
        let n = self.wfs[usize::from(e.workflow)].n_stages;
        let before: Vec<usize> = (0..n)
            .filter(|&s| e.at_of(s).is_some_and(|a| a < deadline))
            .collect();
        let last_stage_seen = before.last().copied();
        if last_stage_seen == Some(n - 1) {
            // The closing stage is known before the deadline, yet the correlation is
            // pending: how the entry stands.
            tracing::debug!(target: "synclag::engine_trace", id = %String::from_utf8_lossy(&e.id), seen = e.seen, fired = e.fired, flags = e.flags, lane = e.lane, start = e.s0_at, deadline, t, recs = ?e.recs().iter().map(|r| (r.stage, r.at - e.s0_at)).collect::<Vec<_>>(), "a tier fires for a correlation whose closing stage is known");
        }
        let missing_stage = (0..n).find(|s| !before.contains(s)).unwrap_or(n - 1);
        let start = e.s0_at;
        let info = self.info(e, CorrelationId::from(&*e.id));
        match tier {
            Tier::Warn => self.counters.breaches_warn += 1,
            Tier::Critical => self.counters.breaches_critical += 1,
        }
        if let Some(e) = self.entry_mut(slot) {
            e.fired |= flag;
        }
        self.touch(slot);
        out.push(Outcome {
            info,
            kind: OutcomeKind::Breach {
                tier,
                deadline_ms: deadline,
                lag_so_far_ms: deadline.saturating_sub(start),
                last_stage_seen,
                missing_stage,
            },
        });
    }

    /// Ends the correlation with `NeverArrived` if its window ended at or before `t`.
    ///
    /// Held stages that happened at or after the window end are not part of it: live, the
    /// window would have ended before they were read. They follow as `LateArrival`s.
    fn expire_if_due(&mut self, slot: u32, t: i64, out: &mut Vec<Outcome>) -> bool {
        let Some(e) = self.entry(slot) else {
            return false;
        };
        let w = e.workflow;
        let wf = &self.wfs[usize::from(w)];
        let window_end_ms = e.anchor().saturating_add(wf.window_ms);
        if window_end_ms > t {
            return false;
        }
        // Empty (no allocation) unless stages were held past the window.
        let late: Vec<usize> = e
            .recs()
            .iter()
            .filter(|r| r.at >= window_end_ms)
            .map(|r| usize::from(r.stage))
            .collect();
        let late_bits = late.iter().fold(0u16, |m, &s| m | bit(s));
        let stages_seen = StageSet(e.seen & !late_bits);
        let missing = stages_seen.missing(wf.n_stages);
        let started = e.started();
        self.counters.never_arrived += 1;
        if !started {
            self.counters.held_expired += 1;
        }
        if let Some(e) = self.entry_mut(slot) {
            // Not seen before the end: `finish` reports them late.
            e.seen &= !late_bits;
        }
        self.counters.beyond_window += late.len() as u64;
        self.finish(
            slot,
            Terminal::NeverArrived,
            OutcomeKind::NeverArrived {
                window_end_ms,
                stages_seen,
                missing,
            },
            out,
        );
        true
    }

    fn evict_oldest(&mut self, out: &mut Vec<Outcome>) {
        let oldest = self
            .wfs
            .iter()
            .flat_map(|wf| {
                wf.lanes
                    .iter()
                    .filter_map(|l| l.set.first().map(|k| k.pair()))
            })
            .min();
        let Some((_, slot)) = oldest else {
            return;
        };
        let Some(e) = self.entry(slot) else {
            return;
        };
        let stages_seen = StageSet(e.seen);
        let missing = stages_seen.missing(self.wfs[usize::from(e.workflow)].n_stages);
        self.counters.evicted += 1;
        let at_ms = self.now;
        self.finish(
            slot,
            Terminal::Evicted,
            OutcomeKind::Evicted {
                at_ms,
                stages_seen,
                missing,
            },
            out,
        );
    }

    /// Removes an entry everywhere, emits its terminal outcome, remembers the key.
    fn finish(&mut self, slot: u32, terminal: Terminal, kind: OutcomeKind, out: &mut Vec<Outcome>) {
        self.delist(slot);
        let Some(mut e) = self.slab.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        // The key being processed was hashed already; timers and eviction hash again.
        let hash = match self.hot {
            Some((s, h)) if s == slot => h,
            _ => self.hash_key(e.workflow, &e.id),
        };
        if let Ok(found) = self.index.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        if e.started() {
            self.pins.unpin(e.s0_partition, e.s0_offset);
        }
        for r in e.recs() {
            self.pins.unpin(r.partition, r.offset);
        }
        // Stages known but not seen (read ahead of their time): live they would be read
        // after this end, so they are applied to the finished correlation, in time order.
        // Empty, without allocating, for nearly every correlation.
        let mut unseen: Vec<(i64, usize)> = e
            .recs()
            .iter()
            .filter(|r| e.seen & bit(usize::from(r.stage)) == 0)
            .map(|r| (r.at, usize::from(r.stage)))
            .collect();
        unseen.sort_unstable();
        self.free.push(slot);
        self.len -= 1;
        let started = e.started();
        let (workflow, variant, combo, seen) = (e.workflow, e.lane, e.combo, e.seen);
        // The id moves into the outcome: no copy on the way out.
        let id = std::mem::take(&mut e.id);
        let info = self.info(&e, CorrelationId::from(id));
        self.recent.remember(RecentRec {
            hash,
            workflow,
            start_ms: info.start_ms,
            started,
            variant,
            combo,
            seen,
            terminal,
        });
        let unseen_id = (!unseen.is_empty()).then(|| info.correlation_id.clone());
        out.push(Outcome { info, kind });
        if let Some(id) = unseen_id {
            for (at, stage) in unseen {
                self.finished_stage(hash, workflow, stage, at, &id, out);
            }
        }
    }

    /// A stage for a correlation that already finished: a duplicate or a late arrival.
    fn on_finished(&mut self, hash: u64, ev: StageEvent, at: i64, out: &mut Vec<Outcome>) {
        let w = ev.workflow as u16;
        self.finished_stage(hash, w, ev.stage, at, &ev.correlation_id, out);
    }

    /// `stage` of finished correlation `(w, hash)` occurred at `at` and is applied now.
    fn finished_stage(
        &mut self,
        hash: u64,
        w: u16,
        stage: usize,
        at: i64,
        correlation_id: &CorrelationId,
        out: &mut Vec<Outcome>,
    ) {
        let Some(r) = self.recent.get_mut(hash, w) else {
            return;
        };
        if r.seen & bit(stage) != 0 {
            self.counters.duplicates += 1;
            return;
        }
        r.seen |= bit(stage);
        let (start_ms, started, variant, combo, after) =
            (r.start_ms, r.started, r.variant, r.combo, r.terminal);
        // Only a correlation declared missing (never arrived, evicted) can have a late
        // arrival; after completion, a stage read late is a matter of read order.
        if after == Terminal::Completed {
            self.counters.after_completion += 1;
            return;
        }
        let wf = &self.wfs[usize::from(w)];
        let deadlines = started.then(|| {
            let (warn, critical) = wf.policy.tiers(usize::from(variant));
            TierDeadlines {
                warn_ms: start_ms.saturating_add(warn),
                critical_ms: start_ms.saturating_add(critical),
                variant: usize::from(variant),
            }
        });
        self.counters.late_arrivals += 1;
        out.push(Outcome {
            info: CorrelationInfo {
                workflow: usize::from(w),
                workflow_name: wf.name.clone(),
                correlation_id: correlation_id.clone(),
                start_ms,
                started,
                dimensions: self.dims.dims(combo),
                deadlines,
            },
            kind: OutcomeKind::LateArrival {
                stage,
                at_ms: at,
                lag_from_first_ms: started.then(|| at.saturating_sub(start_ms)),
                after,
            },
        });
    }

    /// Moves the engine clock to `now_ms` (never backwards) and fires everything due:
    /// tier breaches of pending correlations, then window ends. Cost is proportional to
    /// what fires, plus one B-tree seek per lane.
    pub fn advance(&mut self, now_ms: i64, out: &mut Vec<Outcome>) {
        self.now = self.now.max(now_ms);
        let now = self.now;
        let mut due = std::mem::take(&mut self.scratch);
        for w in 0..self.wfs.len() {
            for l in 0..self.wfs[w].lanes.len() {
                for tier in [Tier::Warn, Tier::Critical] {
                    due.clear();
                    {
                        let lane = &mut self.wfs[w].lanes[l];
                        let Some((warn, critical)) = lane.tiers else {
                            continue;
                        };
                        let (sla, cursor) = match tier {
                            Tier::Warn => (warn, &mut lane.warn_cursor),
                            Tier::Critical => (critical, &mut lane.critical_cursor),
                        };
                        let lower = cursor.map_or(Bound::Unbounded, Bound::Excluded);
                        let mut last = None;
                        for &key in lane.set.range((lower, Bound::Unbounded)) {
                            if key.at().saturating_add(sla) > now {
                                break;
                            }
                            due.push(key.pair());
                            last = Some(key);
                        }
                        if last.is_some() {
                            *cursor = last;
                        }
                    }
                    for &(_, slot) in &due {
                        self.fire_tier(slot, tier, now, out);
                    }
                }
                let window = self.wfs[w].window_ms;
                while let Some(&key) = self.wfs[w].lanes[l].set.first() {
                    if key.at().saturating_add(window) > now {
                        break;
                    }
                    if !self.expire_if_due(key.slot, now, out) {
                        // Defensive: an entry the set points at but cannot expire would
                        // otherwise stall this loop.
                        self.wfs[w].lanes[l].set.remove(&key);
                    }
                }
            }
        }
        self.scratch = due;
    }

    /// Opens the first lag interval at `now_ms` (the caller's clock, e.g. wall time at
    /// start-up). Without it the first interval reports a start of 0 ("since creation").
    pub fn open_lag_interval(&mut self, now_ms: i64) {
        self.lag_interval_start = now_ms;
    }

    /// Ends the current lag interval at `now_ms` and returns, per series that recorded any
    /// lag in it and sorted by series key, the interval's summary and histogram (mergeable
    /// over time) with the cumulative summary since creation. The next interval starts at
    /// `now_ms`. Allocates only the returned summaries; histograms are reused.
    pub fn lag_snapshot(&mut self, now_ms: i64) -> Vec<SeriesSnapshot> {
        let interval_start_ms = std::mem::replace(&mut self.lag_interval_start, now_ms);
        let mut keys: Vec<SeriesKey> = self.lag.keys().collect();
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(wf) = self.wfs.get(key.workflow) else {
                continue;
            };
            let Some(closed) = self.lag.close_interval(key) else {
                continue;
            };
            let name = |s: usize| wf.stage_names.get(s).cloned().unwrap_or_default();
            out.push(SeriesSnapshot {
                key,
                workflow: wf.name.to_string(),
                from_stage: name(key.from_stage),
                to_stage: name(key.to_stage),
                dimensions: self.dims.dims(key.combo),
                interval_start_ms,
                interval_end_ms: now_ms,
                interval: closed.interval,
                histogram_b64: closed.histogram_b64,
                cumulative: closed.cumulative,
            });
        }
        out
    }

    /// Every lag of `segment` into the closing stage of `workflow` recorded since creation,
    /// over all dimension values (e.g. the end-to-end quantiles a status page shows).
    /// `None` when nothing was recorded. Merges histograms: call it per status refresh,
    /// not per event.
    pub fn lag_totals(&self, workflow: usize, segment: Segment) -> Option<LagStats> {
        let last = self.wfs.get(workflow)?.n_stages - 1;
        self.lag
            .merged(|k| k.workflow == workflow && k.segment == segment && k.to_stage == last)
    }

    /// Pending counts by age (engine clock − start) and the oldest pending correlations,
    /// per workflow.
    pub fn pending_status(&self) -> Vec<PendingStatus> {
        self.wfs
            .iter()
            .enumerate()
            .map(|(w, wf)| {
                let mut by_age = [0u64; 5];
                for (&sec, &n) in &wf.age {
                    let age = self.now.saturating_sub(sec.saturating_mul(1000));
                    let b = AGE_BUCKET_BOUNDS_MS
                        .iter()
                        .position(|&hi| age < hi)
                        .unwrap_or(4);
                    by_age[b] += u64::from(n);
                }
                let mut firsts: Vec<(i64, u32)> = wf
                    .lanes
                    .iter()
                    .flat_map(|l| l.set.iter().take(self.oldest_n).map(|k| k.pair()))
                    .collect();
                firsts.sort_unstable();
                firsts.truncate(self.oldest_n);
                let oldest = firsts
                    .into_iter()
                    .filter_map(|(_, slot)| self.entry(slot))
                    .map(|e| PendingInfo {
                        correlation_id: CorrelationId::from(&*e.id),
                        start_ms: e.anchor(),
                        started: e.started(),
                        stages_seen: StageSet(e.seen),
                        dimensions: self.dims.dims(e.combo),
                    })
                    .collect();
                PendingStatus {
                    workflow: w,
                    name: wf.name.to_string(),
                    pending: wf.pending,
                    held: wf.lanes.last().map_or(0, |l| l.set.len()),
                    by_age,
                    oldest,
                }
            })
            .collect()
    }
}

fn set_start(e: &mut Entry, ts: &Timestamps, at: i64, origin: Origin) {
    e.s0_at = at;
    e.s0_kafka = ts.kafka_ms.unwrap_or(NONE);
    e.s0_offset = origin.offset;
    e.s0_partition = origin.partition_id;
    if ts.source_event_ms.is_some() {
        e.flags |= FLAG_T0;
    }
    e.seen |= 1;
}

fn close_ts(ts: &Timestamps) -> (i64, i64) {
    (
        ts.erp_write_ms.or(ts.source_event_ms).unwrap_or(NONE),
        ts.outbox_kafka_ms.or(ts.kafka_ms).unwrap_or(NONE),
    )
}

fn make_rec(stage: usize, ts: &Timestamps, at: i64, origin: Origin) -> Rec {
    let (t2, t3) = close_ts(ts);
    Rec {
        at,
        t2,
        t3,
        offset: origin.offset,
        partition: origin.partition_id,
        stage: stage as u8,
    }
}

#[path = "engine_images.rs"]
mod images;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_entry_stays_at_64_bytes() {
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 64);
    }

    #[test]
    fn lane_keys_take_12_bytes_and_order_as_their_pairs() {
        assert_eq!(std::mem::size_of::<LaneKey>(), 12);
        let ats = [
            i64::MIN,
            i64::MIN + 1,
            -(1 << 32) - 1,
            -(1 << 32),
            -1,
            0,
            1,
            (1 << 31) - 1,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
            (1 << 32) + 1,
            1_764_000_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        let slots = [0, 1, u32::MAX >> 1, u32::MAX];
        let pairs: Vec<(i64, u32)> = ats
            .iter()
            .flat_map(|&at| slots.iter().map(move |&slot| (at, slot)))
            .collect();
        for &a in &pairs {
            assert_eq!(LaneKey::new(a.0, a.1).pair(), a);
            for &b in &pairs {
                assert_eq!(
                    LaneKey::new(a.0, a.1).cmp(&LaneKey::new(b.0, b.1)),
                    a.cmp(&b),
                    "{a:?} against {b:?}"
                );
            }
        }
    }

    #[test]
    fn engine_is_send() {
        fn send<T: Send>() {}
        send::<Engine>();
    }
}
