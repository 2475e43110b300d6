//! Batch runs for batch workflows (`batches:`): each scheduled run produced clean or with
//! one fault — late, missing, partial, a volume spike, unreconciled — as records of the
//! workflow's stream (data records, trailer with the announced count) and, when the
//! workflow reconciles, the ERP records that match them.
//!
//! Times inside a run follow the workflow's own tolerances, so the same scenario fits a
//! schedule every 15 seconds (tests, demo) and a nightly one: a clean run starts at 20 %
//! of `start.warn`, sends its records over 30 % of `completion.warn` and its trailer at
//! half of it; a late run starts after `start.critical` and completes between
//! `completion.warn` and `completion.critical`; ERP records follow their batch record
//! after 30 % of `reconciliation.within`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::encode::{OriginKind, RecordInput, SimRecord, StreamEncoder};
use super::engine::SimError;
use crate::batch::Schedule;
use crate::config::batch::BatchWorkflow;
use crate::config::Topology;

/// What happens to one scheduled run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum RunFault {
    /// On time, complete, reconciled.
    Clean,
    /// Starts after the critical start tolerance, completes after the warn completion one.
    Late,
    /// Never comes.
    Missing,
    /// Only `share` of the announced records arrive.
    Partial { share: f64 },
    /// `factor` times the usual number of records (announced as such).
    Spike { factor: f64 },
    /// Only `1 - share` of the records get their ERP record.
    Unreconciled { share: f64 },
}

impl RunFault {
    pub fn name(&self) -> &'static str {
        match self {
            RunFault::Clean => "clean",
            RunFault::Late => "late_run",
            RunFault::Missing => "missing_run",
            RunFault::Partial { .. } => "partial_run",
            RunFault::Spike { .. } => "volume_spike",
            RunFault::Unreconciled { .. } => "unreconciled_run",
        }
    }

    /// The check and status synclag must report for this fault (none for a clean run).
    pub fn expected_finding(&self) -> Option<(&'static str, &'static str)> {
        match self {
            RunFault::Clean => None,
            RunFault::Late => Some(("schedule", "not_started")),
            RunFault::Missing => Some(("schedule", "missed")),
            RunFault::Partial { .. } => Some(("completeness", "missing_records")),
            RunFault::Spike { .. } => Some(("volume", "above_baseline")),
            RunFault::Unreconciled { .. } => Some(("reconciliation", "unmatched_records")),
        }
    }
}

/// Consecutive runs of one batch workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchScenario {
    pub name: String,
    /// Records of a usual run.
    pub records: u32,
    /// One entry per scheduled run, in order.
    pub runs: Vec<RunFault>,
}

impl BatchScenario {
    /// Built-in batch scenarios: `batch_clean` (four clean runs), `batch_late_run`,
    /// `batch_missing_run`, `batch_partial_run`, `batch_volume_spike`,
    /// `batch_unreconciled` (two clean runs for a baseline, then the fault, then a clean
    /// run that resolves it), and `batch_faults` (all of them in turn).
    pub fn builtin(name: &str) -> Option<BatchScenario> {
        use RunFault::*;
        let around = |f: RunFault| vec![Clean, Clean, f, Clean];
        let runs = match name {
            "batch_clean" => vec![Clean; 4],
            "batch_late_run" => around(Late),
            "batch_missing_run" => around(Missing),
            "batch_partial_run" => around(Partial { share: 0.6 }),
            "batch_volume_spike" => around(Spike { factor: 2.5 }),
            "batch_unreconciled" => around(Unreconciled { share: 0.5 }),
            "batch_faults" => vec![
                Clean,
                Clean,
                Late,
                Missing,
                Partial { share: 0.6 },
                Spike { factor: 2.5 },
                Unreconciled { share: 0.5 },
                Clean,
            ],
            _ => return None,
        };
        Some(BatchScenario {
            name: name.to_string(),
            records: 10,
            runs,
        })
    }

    pub const BUILTIN: &'static [&'static str] = &[
        "batch_clean",
        "batch_late_run",
        "batch_missing_run",
        "batch_partial_run",
        "batch_volume_spike",
        "batch_unreconciled",
        "batch_faults",
    ];
}

/// One planned run: its scheduled time, fault, and records (sorted by Kafka time).
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub workflow: String,
    pub scheduled_ms: i64,
    pub fault: RunFault,
    pub batch_id: String,
    pub records: Vec<SimRecord>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn share(d: Duration, f: f64) -> i64 {
    (ms(d) as f64 * f) as i64
}

/// Plans the runs of `workflow` (a `batches:` name) scheduled after `after_ms`, one per
/// entry of the scenario.
pub fn plan_runs(
    topology: &Topology,
    workflow: &str,
    scenario: &BatchScenario,
    after_ms: i64,
) -> Result<Vec<PlannedRun>, SimError> {
    let mismatch = |why: String| SimError::Mismatch {
        scenario: scenario.name.clone(),
        problems: vec![why],
    };
    let (index, b) = topology
        .batches
        .iter()
        .enumerate()
        .find(|(_, b)| b.name == workflow)
        .ok_or_else(|| mismatch(format!("no batch workflow `{workflow}` in the topology")))?;
    let data = StreamEncoder::new(b.stream, &topology.streams[b.stream])?;
    let erp = match &b.reconciliation {
        Some(r) => Some(StreamEncoder::new(r.stream, &topology.streams[r.stream])?),
        None => None,
    };
    let schedule = Schedule::new(&b.schedule);
    let mut out = Vec::new();
    let mut t = after_ms;
    for (n, fault) in scenario.runs.iter().enumerate() {
        let Some(at) = schedule.next_after(t) else {
            return Err(mismatch(format!(
                "schedule `{}` has no run after {t}",
                b.schedule.cron_text
            )));
        };
        t = at;
        let batch_id = format!("{workflow}-{at}");
        let records = run_records(
            index,
            b,
            &data,
            erp.as_ref(),
            scenario.records,
            at,
            n,
            *fault,
            &batch_id,
        )?;
        out.push(PlannedRun {
            workflow: workflow.to_string(),
            scheduled_ms: at,
            fault: *fault,
            batch_id,
            records,
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn run_records(
    index: usize,
    b: &BatchWorkflow,
    data: &StreamEncoder,
    erp: Option<&StreamEncoder>,
    usual: u32,
    at: i64,
    n: usize,
    fault: RunFault,
    batch_id: &str,
) -> Result<Vec<SimRecord>, SimError> {
    let (first, trailer_at) = match fault {
        RunFault::Missing => return Ok(Vec::new()),
        RunFault::Late => (
            at + share(b.start.critical, 1.15),
            at + (ms(b.completion.warn) + ms(b.completion.critical)) / 2,
        ),
        _ => (
            at + share(b.start.warn, 0.2),
            at + share(b.completion.warn, 0.5),
        ),
    };
    let last = first.max(trailer_at - share(b.completion.warn, 0.1));
    let (announced, sent) = match fault {
        RunFault::Partial { share } => (
            usual,
            ((f64::from(usual) * share).round() as u32).min(usual),
        ),
        RunFault::Spike { factor } => {
            let n = (f64::from(usual) * factor).round() as u32;
            (n, n)
        }
        _ => (usual, usual),
    };
    let unposted = match fault {
        RunFault::Unreconciled { share } => (f64::from(sent) * share).round() as u32,
        _ => 0,
    };
    let origin = OriginKind::Batch { workflow: index };
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    if let Some(f) = &b.batch_id {
        fields.insert(f.clone(), batch_id.to_string());
    }
    let mut records = Vec::new();
    let step = if sent > 1 {
        (last - first) / i64::from(sent - 1)
    } else {
        0
    };
    for i in 0..sent {
        let id = format!("{batch_id}-{i:05}");
        let t = first + step * i64::from(i);
        records.push(data.encode(&RecordInput {
            correlation_id: &id,
            event_type: b.record_type.as_deref().or(Some("record")),
            event_ms: t,
            kafka_ms: t,
            dimensions: &fields,
            entropy: (n as u64) << 32 | u64::from(i),
            origin: origin.clone(),
        })?);
        if let (Some(erp), Some(r)) = (erp, &b.reconciliation) {
            // The last `unposted` records never reach the ERP.
            if i < sent - unposted {
                let posted = t + share(r.within, 0.3);
                records.push(erp.encode(&RecordInput {
                    correlation_id: &id,
                    event_type: r.event_type.as_deref(),
                    event_ms: posted,
                    kafka_ms: posted,
                    dimensions: &BTreeMap::new(),
                    entropy: (n as u64) << 32 | u64::from(i) | 1 << 31,
                    origin: origin.clone(),
                })?);
            }
        }
    }
    if let Some(kind) = &b.trailer_type {
        let mut trailer_fields = fields.clone();
        if let Some(f) = &b.expected_count {
            trailer_fields.insert(f.clone(), announced.to_string());
        }
        records.push(data.encode(&RecordInput {
            correlation_id: &format!("{batch_id}-trailer"),
            event_type: Some(kind),
            event_ms: trailer_at,
            kafka_ms: trailer_at,
            dimensions: &trailer_fields,
            entropy: (n as u64) << 32 | 0xffff_ffff,
            origin: origin.clone(),
        })?);
    }
    records.sort_by_key(|r| r.timestamp_ms);
    Ok(records)
}

/// Sends the records of `runs` to `sink` when their time comes (wall clock), all runs
/// merged in time order; returns the number of records sent.
pub async fn produce_runs<S: super::RecordSink>(
    runs: &[PlannedRun],
    sink: &mut S,
) -> Result<u64, super::sink::SinkError> {
    let mut all: Vec<&SimRecord> = runs.iter().flat_map(|r| r.records.iter()).collect();
    all.sort_by_key(|r| r.timestamp_ms);
    let mut sent = 0;
    for r in all {
        let wait = r.timestamp_ms - chrono::Utc::now().timestamp_millis();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        sink.send(r.clone()).await?;
        sent += 1;
    }
    sink.flush().await?;
    Ok(sent)
}
