//! `batches:` — batch workflows: scheduled synchronizations (a nightly stock
//! reconciliation, an EDI invoice batch, a carrier manifest, a billing run) watched for
//! schedule adherence, completeness, volume variance and reconciliation (see `batch`).
//!
//! A batch workflow reads one stream of the topology (the same ingest and decode path as
//! every workflow). Its records are the batch's data records, optionally a start record
//! and a trailer (manifest) record, told apart by the stream's `event_type`. The batch id
//! and the trailer's announced count are read from fields the stream already extracts:
//! names in its `fields.dimensions` map (a stream field becomes a metric label only when a
//! streaming workflow lists it in its own `dimensions`).

use serde::Deserialize;
use std::time::Duration;

/// A validated batch workflow.
#[derive(Debug, Clone)]
pub struct BatchWorkflow {
    pub name: String,
    pub description: Option<String>,
    /// Index into `Topology::streams`: where the batch's records arrive.
    pub stream: usize,
    /// `event_type` of the data records; `None`: every record that is not a start or
    /// trailer record.
    pub record_type: Option<String>,
    /// `event_type` of a record that opens a run (optional: the first record does).
    pub start_type: Option<String>,
    /// `event_type` of the trailer / "done" record that completes a run.
    pub trailer_type: Option<String>,
    /// Stream field (a `fields.dimensions` name) holding the batch id.
    pub batch_id: Option<String>,
    /// Stream field (a `fields.dimensions` name) of the trailer holding the announced count.
    pub expected_count: Option<String>,
    /// A started run without a trailer is complete after this long without a record.
    pub quiet: Option<Duration>,
    pub schedule: BatchSchedule,
    /// Lateness of the run's first record after its scheduled time.
    pub start: Tiers,
    /// Lateness of the run's completion after its scheduled time.
    pub completion: Tiers,
    pub completeness: Option<RatioTiers>,
    pub volume: Option<Volume>,
    pub reconciliation: Option<Reconciliation>,
    /// Route of every batch event and incident of this workflow.
    pub route: Option<String>,
}

/// When runs are due: a cron expression evaluated in a time zone (DST-aware).
#[derive(Debug, Clone)]
pub struct BatchSchedule {
    /// The expression as written (5 fields, or 6 with seconds first).
    pub cron_text: String,
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
    /// Records this long before a scheduled time already belong to its run (a job that
    /// starts a little early).
    pub early: Duration,
}

/// Warn and critical delays (warn < critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub warn: Duration,
    pub critical: Duration,
}

/// Lowest acceptable ratios (critical < warn ≤ 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioTiers {
    pub warn: f64,
    pub critical: f64,
}

/// Record count against a baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Records expected when the history has no baseline yet.
    pub expected: Option<u64>,
    /// Earlier runs at the same local weekday and hour the baseline is the median of.
    pub baseline_runs: usize,
    /// Such runs needed before the history is trusted over `expected`.
    pub min_history: usize,
    /// Relative deviation |records − baseline| / baseline that warns / is critical.
    pub warn: f64,
    pub critical: f64,
}

/// Every record of a run matched by its ERP record within a time.
#[derive(Debug, Clone)]
pub struct Reconciliation {
    /// Index into `Topology::streams`: the ERP stream (same correlation id as the batch records).
    pub stream: usize,
    /// Only ERP records of this `event_type` count.
    pub event_type: Option<String>,
    /// After the run completes, how long its records have to be matched.
    pub within: Duration,
    pub ratio: RatioTiers,
}

/// One entry of `batches:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub name: String,
    pub description: Option<String>,
    pub stream: String,
    pub record_type: Option<String>,
    pub start_type: Option<String>,
    pub trailer_type: Option<String>,
    pub batch_id: Option<String>,
    pub expected_count: Option<String>,
    pub quiet: Option<String>,
    pub schedule: RawSchedule,
    pub start: RawTiers,
    pub completion: RawTiers,
    pub completeness: Option<RawRatio>,
    pub volume: Option<RawVolume>,
    pub reconciliation: Option<RawReconciliation>,
    pub route: Option<String>,
}
pub const BATCH_KEYS: &[&str] = &[
    "name",
    "description",
    "stream",
    "record_type",
    "start_type",
    "trailer_type",
    "batch_id",
    "expected_count",
    "quiet",
    "schedule",
    "start",
    "completion",
    "completeness",
    "volume",
    "reconciliation",
    "route",
];

/// `schedule:` of a batch workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub cron: String,
    pub timezone: String,
    pub early: Option<String>,
}
pub const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "early"];

/// `start:` / `completion:` — delays after the scheduled time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiers {
    pub warn: String,
    pub critical: String,
}
pub const TIERS_KEYS: &[&str] = &["warn", "critical"];

/// `completeness:` — lowest acceptable received / announced ratio.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRatio {
    pub warn: f64,
    pub critical: f64,
}
pub const RATIO_KEYS: &[&str] = &["warn", "critical"];

/// `volume:` — record count against a baseline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub expected: Option<u64>,
    pub baseline_runs: Option<u64>,
    pub min_history: Option<u64>,
    pub warn: f64,
    pub critical: f64,
}
pub const VOLUME_KEYS: &[&str] = &[
    "expected",
    "baseline_runs",
    "min_history",
    "warn",
    "critical",
];

/// `reconciliation:` — the run's records matched in the ERP stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconciliation {
    pub stream: String,
    pub event_type: Option<String>,
    pub within: String,
    pub warn: f64,
    pub critical: f64,
}
pub const RECONCILIATION_KEYS: &[&str] = &["stream", "event_type", "within", "warn", "critical"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn accepted_keys<T: DeserializeOwned>() -> Vec<String> {
        let err = serde_norway::from_str::<T>("__not_a_key: 1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let list = err
            .split("expected ")
            .nth(1)
            .unwrap_or("")
            .trim_start_matches("one of ")
            .replace(" or ", ",");
        let mut keys: Vec<String> = list
            .split(',')
            .map(|k| k.trim().trim_matches('`').to_string())
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn key_lists_match_structs() {
        assert_eq!(accepted_keys::<RawBatch>(), sorted(BATCH_KEYS));
        assert_eq!(accepted_keys::<RawSchedule>(), sorted(SCHEDULE_KEYS));
        assert_eq!(accepted_keys::<RawTiers>(), sorted(TIERS_KEYS));
        assert_eq!(accepted_keys::<RawRatio>(), sorted(RATIO_KEYS));
        assert_eq!(accepted_keys::<RawVolume>(), sorted(VOLUME_KEYS));
        assert_eq!(
            accepted_keys::<RawReconciliation>(),
            sorted(RECONCILIATION_KEYS)
        );
    }
}
