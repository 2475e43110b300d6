//! The correlation engine: pure, no I/O. It takes classified stage events and a clock
//! (epoch milliseconds passed in) and returns outcomes and statistics; Kafka, HTTP and wall
//! time stay with the caller.
//!
//! - [`spec`]      — input model: workflows, SLA tiers, business-hours overrides, bounds.
//! - [`event`]     — [`StageEvent`] and its timestamps/origin, [`CorrelateError`].
//! - [`outcome`]   — [`Outcome`]s: stage reached, completed, breach, never arrived, late, evicted.
//! - [`engine`]    — the windowed store, SLA timers, bounds, offset pins ([`Engine`]).
//! - [`lag`]       — HDR lag histograms and their snapshots.
//! - [`clock`]     — the input clock: confirmed end offsets live, event time while catching up, stalls.
//! - [`durable`]   — images of pending and finished correlations for a changelog, and their encoding.
//! - `dims`, `pins`, `recent` — dimension interning, offset pinning, memory of finished keys.
//!
//! # Driving it
//!
//! ```text
//! for each decoded record:   clock.record(partition, offset, record_time, wall)
//!                            engine.process(event, &mut out)?   (errors: count + dead-letter)
//! on end offsets / ticks:    clock.end_offset(partition, end, asked_at); clock.position(..)
//!                            if let Some(now) = clock.read(wall).now_ms { engine.advance(now, &mut out) }
//!                            commit offset ≤ engine.min_pinned_offset(partition) (or the next
//!                            offset to read when nothing is pinned)
//! at start-up:               engine.open_lag_interval(wall)
//! every lag interval:        engine.lag_snapshot(wall)   (per-interval histograms + cumulative stats)
//! on each status refresh:    engine.counters(), engine.recent_len(), engine.pending_status(),
//!                            engine.lag_totals(workflow, Segment::EndToEnd)
//! ```
//!
//! Outcomes depend on event times, not on the order partitions are read (see [`engine`]):
//! stages read ahead of their time wait for the clock, so a replay ends every correlation
//! the way live processing does.
//!
//! # Concurrency choice
//!
//! The engine is a single-owner `&mut self` value (it is `Send`), meant to live in one task
//! fed by a bounded channel; if one core is not enough, shard by key hash into N engines,
//! one task each (see [`shard_of`]). Measured with `benches/correlate.rs` on a 2-core
//! machine that was busy compiling at the same time, so read the figures as lower bounds:
//!
//! - `correlate/store_choice`, the same keyed insert/remove/record work, 200k operations:
//!   single-owner map 5.4 M ops/s; `DashMap` 5.2 M ops/s on one thread and 5.3 M ops/s on
//!   two. The shared map buys no throughput here (its shard locks and the shared histogram
//!   lock cost what the second core gains), and the engine also owns ordered timer lanes,
//!   offset pins and histograms that would each need their own lock. Sharding single-owner
//!   engines scales without any of that, so that is the choice.
//! - `correlate/match_path` (start + close of a 2-stage workflow, 1k in flight): about
//!   2.5 M stage events/s on one core.
//! - `correlate/timer_firing_1m_pending`: about 10.7 M breaches fired/s (≈ 93 ns each)
//!   with 1M correlations pending.
//! - `correlate/lag_snapshot`: 4.2 ms for 120 series that all recorded lags in the interval
//!   (two summaries and one V2 serialization each; measured on a busy machine);
//!   `correlate/pending_status_1m`: 3.2 µs with 1M pending.
//! - Memory (printed by the bench binary, `-- --memory-only`): 138 bytes per pending
//!   correlation beyond the id's own bytes at 1M pending — 64-byte entry, one B-tree slot in
//!   its lane, one offset pin, one hash-table slot, and growth headroom of the slab.

pub mod clock;
pub mod durable;
pub mod engine;
pub mod event;
pub mod lag;
pub mod outcome;
pub mod spec;

mod dims;
mod pins;
mod recent;

#[cfg(test)]
mod engine_tests;

pub use engine::{
    Counters, Engine, PendingInfo, PendingStatus, AGE_BUCKET_BOUNDS_MS, AGE_BUCKET_LABELS,
};
pub use event::{CorrelateError, CorrelationId, Origin, StageEvent, Timestamps, MAX_PARTITIONS};
pub use lag::{LagStats, Segment, SeriesKey, SeriesSnapshot};
pub use outcome::{
    CorrelationInfo, Decomposition, Dimensions, Outcome, OutcomeKind, StageSet, Terminal, Tier,
    TierDeadlines,
};
pub use spec::{
    BusinessHoursOverride, EngineConfig, SlaPolicy, SpecError, SpecProblem, WorkflowSpec,
    DEFAULT_RECENT_TERMINAL_CAP,
};

/// Which of `shards` engines owns `(workflow, correlation_id)`: all stages of a correlation
/// must reach the same engine. Stable across runs (no random seed), so a restart routes
/// the same way.
pub fn shard_of(workflow: usize, correlation_id: &[u8], shards: usize) -> usize {
    // FNV-1a: tiny, seedless and good enough to spread ids across a handful of shards.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in (workflow as u64).to_le_bytes().iter().chain(correlation_id) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}
