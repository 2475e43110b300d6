//! The batch run event: the contract of `outputs.batches_topic` (`schemas/batch.avsc`).

use serde::{Deserialize, Serialize};

/// Avro schema of [`BatchEvent`].
pub const BATCH_SCHEMA: &str = include_str!("../../schemas/batch.avsc");

/// Which check an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The run's own summary, when it completes (or is given up).
    Run,
    /// Started / completed by the scheduled time plus tolerance; a run that never comes.
    Schedule,
    /// Records received against the count the trailer announced; duplicates.
    Completeness,
    /// Record count against the baseline.
    Volume,
    /// The run's records matched in the ERP stream.
    Reconciliation,
}

impl Check {
    pub const ALL: [Check; 5] = [
        Check::Run,
        Check::Schedule,
        Check::Completeness,
        Check::Volume,
        Check::Reconciliation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Run => "run",
            Check::Schedule => "schedule",
            Check::Completeness => "completeness",
            Check::Volume => "volume",
            Check::Reconciliation => "reconciliation",
        }
    }
}

/// `ok` < `warn` < `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Warn,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Ok, Severity::Warn, Severity::Critical];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Critical => "critical",
        }
    }
}

/// One batch event (see `schemas/batch.avsc` for every field's meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEvent {
    /// Stable: the same finding about the same run has the same id after a restart.
    pub event_id: String,
    /// `run`, `schedule`, `completeness`, `volume` or `reconciliation`.
    pub check: String,
    /// What was found (`completed`, `not_started`, `missing_records`, ...).
    pub status: String,
    pub severity: String,
    pub workflow: String,
    /// The run's scheduled time (its identity with the workflow).
    pub scheduled_at_ms: i64,
    /// The scheduled time on the schedule's local clock (RFC 3339).
    pub scheduled_local: String,
    pub batch_id: Option<String>,
    pub started_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    /// `trailer`, `quiet`, `abandoned`, or none while the run is open / missing.
    pub completion: Option<String>,
    /// The deadline the check measured against, when it has one.
    pub deadline_ms: Option<i64>,
    /// Engine time of the finding.
    pub observed_at_ms: i64,
    pub records: i64,
    pub distinct_records: i64,
    pub duplicate_records: i64,
    pub expected_records: Option<i64>,
    pub missing_records: Option<i64>,
    pub completeness_ratio: Option<f64>,
    pub baseline_records: Option<f64>,
    /// `history`, `configured`, or none (no history yet and no configured expectation).
    pub baseline_source: Option<String>,
    pub variance_ratio: Option<f64>,
    pub reconciled_records: Option<i64>,
    pub reconciliation_ratio: Option<f64>,
    pub route: Option<String>,
    pub team: Option<String>,
    /// One sentence for a human.
    pub detail: String,
}

impl BatchEvent {
    /// Record key: workflow and scheduled time, so a compacted topic keeps each run's last word
    /// per check.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.workflow, self.scheduled_at_ms, self.check)
    }
}
