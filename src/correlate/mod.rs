//! The correlation engine: pure, no I/O. It takes classified stage events and a clock
//! (epoch milliseconds passed in) and returns outcomes and statistics; Kafka, HTTP and wall
//! time stay with the caller.
//!
//! - [`spec`]      — input model: workflows, SLA tiers, business-hours overrides, bounds.
//! - [`event`]     — [`StageEvent`] and its timestamps/origin, [`CorrelateError`].
//! - [`outcome`]   — [`Outcome`]s: stage reached, completed, breach, never arrived, late, evicted.
//! - [`engine`]    — the windowed store, SLA timers, bounds, offset pins ([`Engine`]).
//! - [`lag`]       — HDR lag histograms and their snapshots.
//! - [`watermark`] — the engine clock: watermarks while reading a backlog, wall time when caught up.
//! - `dims`, `pins`, `recent` — dimension interning, offset pinning, memory of finished keys.
//!
//! # Driving it
//!
//! ```text
//! for each decoded record:   watermarks.observe(partition, event_time, wall)
//!                            engine.process(event, &mut out)?   (errors: count + dead-letter)
//! periodically and after a batch:
//!                            if let Some(now) = watermarks.effective_now(wall) { engine.advance(now, &mut out) }
//!                            commit offset ≤ engine.min_pinned_offset(partition) (or the next
//!                            offset to read when nothing is pinned)
//! ```
//!
//! # Concurrency choice
//!
//! The engine is a single-owner `&mut self` value (it is `Send`), meant to live in one task
//! fed by a bounded channel; if one core is not enough, shard by key hash into N engines,
//! one task each (see [`shard_of`]). A shared `DashMap` store was measured against it on
//! the match path (`benches/correlate.rs`, group `correlate/store_choice`): FIGURES_PENDING.

pub mod engine;
pub mod event;
pub mod lag;
pub mod outcome;
pub mod spec;
pub mod watermark;

mod dims;
mod pins;
mod recent;

#[cfg(test)]
mod engine_tests;

pub use engine::{
    Counters, Engine, PendingInfo, PendingStatus, AGE_BUCKET_BOUNDS_MS, AGE_BUCKET_LABELS,
};
pub use event::{CorrelateError, CorrelationId, Origin, StageEvent, Timestamps, MAX_PARTITIONS};
pub use lag::{Segment, SeriesKey, SeriesSnapshot};
pub use outcome::{
    CorrelationInfo, Decomposition, Dimensions, Outcome, OutcomeKind, StageSet, Terminal, Tier,
    TierDeadlines,
};
pub use spec::{
    BusinessHoursOverride, EngineConfig, SlaPolicy, SpecError, SpecProblem, WorkflowSpec,
};
pub use watermark::Watermarks;

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
