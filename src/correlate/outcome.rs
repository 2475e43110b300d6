//! What the engine produces: outcomes per correlation, as data.

use std::sync::Arc;

use super::event::CorrelationId;

/// Dimension `(name, value)` pairs of a correlation; overflowed values read `other`.
///
/// Shared: every distinct combination is interned once, so attaching it to an outcome is
/// a reference-count increment.
pub type Dimensions = Arc<[(Arc<str>, Arc<str>)]>;

/// SLA tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// First tier.
    Warn,
    /// Second tier.
    Critical,
}

/// Absolute deadlines of a started correlation (start time + tier SLA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TierDeadlines {
    /// Start + warn SLA.
    pub warn_ms: i64,
    /// Start + critical SLA.
    pub critical_ms: i64,
    /// Which SLA variant applied: 0 = base policy, `i + 1` = business-hours override `i`.
    pub variant: usize,
}

/// Set of stage indexes, as a bit mask (at most 16 stages per workflow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StageSet(pub u16);

impl StageSet {
    /// Whether `stage` is in the set.
    pub fn contains(self, stage: usize) -> bool {
        stage < 16 && self.0 & (1 << stage) != 0
    }

    /// Stage indexes in chain order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..16).filter(move |i| self.0 & (1 << i) != 0)
    }

    /// Stages of a chain of `len` that are not in the set.
    pub fn missing(self, len: usize) -> Vec<usize> {
        (0..len.min(16)).filter(|&i| !self.contains(i)).collect()
    }

    /// Number of stages in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether no stage is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Identity and context every outcome carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationInfo {
    /// Workflow index.
    pub workflow: usize,
    /// Workflow name.
    pub workflow_name: Arc<str>,
    /// The correlation id.
    pub correlation_id: CorrelationId,
    /// Occurrence time of the start stage; while the start has not been seen, the
    /// earliest occurrence seen. Together with workflow and id it gives a stable breach id.
    pub start_ms: i64,
    /// Whether the start stage has been seen (otherwise `start_ms` is provisional).
    pub started: bool,
    /// Dimension names and values.
    pub dimensions: Dimensions,
    /// SLA deadlines; `None` until the start stage is seen.
    pub deadlines: Option<TierDeadlines>,
}

/// Lag segments of DESIGN §2 for a completed correlation; `None` where a timestamp is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decomposition {
    /// t1 − t0: partner / ingestion delay.
    pub partner_ingestion_ms: Option<i64>,
    /// t2 − t1: middleware and ERP processing.
    pub middleware_erp_ms: Option<i64>,
    /// t3 − t2: outbox / CDC delay.
    pub outbox_cdc_ms: Option<i64>,
    /// t2 − t0: the business lag the SLA is about.
    pub business_ms: Option<i64>,
}

/// How a correlation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminal {
    /// The closing stage arrived.
    Completed,
    /// The window ended first.
    NeverArrived,
    /// The store was full and this was the oldest entry.
    Evicted,
}

/// What happened to a correlation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// An intermediate stage (neither first nor last) was reached.
    StageReached {
        /// Stage index.
        stage: usize,
        /// Its occurrence time.
        at_ms: i64,
        /// Closest earlier stage in the chain that was seen.
        previous_stage: usize,
        /// Lag from `previous_stage`.
        lag_from_previous_ms: i64,
        /// Lag from the start stage.
        lag_from_first_ms: i64,
    },
    /// The closing stage was reached; terminal.
    Completed {
        /// Occurrence time of the closing stage.
        at_ms: i64,
        /// Closest earlier stage in the chain that was seen.
        previous_stage: usize,
        /// Lag from `previous_stage` to the closing stage.
        lag_from_previous_ms: i64,
        /// Closing occurrence − start occurrence.
        lag_from_first_ms: i64,
        /// t2 − t0 when both exist, else `lag_from_first_ms` (what the `end_to_end`
        /// histogram records).
        end_to_end_ms: i64,
        /// Segments per DESIGN §2.
        decomposition: Decomposition,
        /// Stages seen (intermediate ones may be missing).
        stages_seen: StageSet,
    },
    /// A tier's deadline passed while the correlation was still pending.
    Breach {
        /// Which tier.
        tier: Tier,
        /// Start + tier SLA.
        deadline_ms: i64,
        /// Lag when the deadline passed (the tier's SLA).
        lag_so_far_ms: i64,
        /// Highest stage seen before the deadline.
        last_stage_seen: Option<usize>,
        /// First stage of the chain not seen before the deadline.
        missing_stage: usize,
    },
    /// The window ended before the closing stage; state freed; terminal.
    NeverArrived {
        /// Start (or provisional start) + window.
        window_end_ms: i64,
        /// Stages seen.
        stages_seen: StageSet,
        /// Stages never seen.
        missing: Vec<usize>,
    },
    /// A stage arrived after the correlation ended in `after`.
    LateArrival {
        /// Stage index.
        stage: usize,
        /// Its occurrence time.
        at_ms: i64,
        /// Its lag from the start stage, when the start is known.
        lag_from_first_ms: Option<i64>,
        /// How the correlation had ended.
        after: Terminal,
    },
    /// Evicted because the store was full; terminal.
    Evicted {
        /// Engine clock at eviction.
        at_ms: i64,
        /// Stages seen.
        stages_seen: StageSet,
        /// Stages never seen.
        missing: Vec<usize>,
    },
}

/// One outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Which correlation.
    pub info: CorrelationInfo,
    /// What happened.
    pub kind: OutcomeKind,
}

impl Outcome {
    /// Whether this ends the correlation's life in the store.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.kind,
            OutcomeKind::Completed { .. }
                | OutcomeKind::NeverArrived { .. }
                | OutcomeKind::Evicted { .. }
        )
    }
}
