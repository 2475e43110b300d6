//! Batch workflows: scheduled synchronizations watched for schedule adherence, record
//! completeness, volume variance and reconciliation.
//!
//! The [`BatchBook`] is pure like `correlate`: records and the clock are passed in,
//! findings come out; no I/O. [`glue`] connects it to the service (state topic, metrics,
//! API).
//!
//! - A **run** is one scheduled occurrence, identified by its scheduled time: a record
//!   belongs to the run of the batch id it carries (when the workflow names a `batch_id`
//!   field and a run already has it), else to the latest scheduled time at or before the
//!   record's time plus `schedule.early`.
//! - A run **starts** with its first record (or start record) and **completes** with its
//!   trailer record, or after `quiet` without a record; a run that started but neither
//!   completes by its critical completion deadline nor before the next scheduled time is
//!   **abandoned** (evaluated as it stands).
//! - **Schedule** findings are raised by the clock, while the run is missing: not started by
//!   the scheduled time + `start.warn` / `start.critical`, not completed by + `completion.warn`
//!   / `completion.critical`, and **missed** once a run that never started reaches its
//!   critical completion deadline — the same never-silent rule as streaming workflows.
//! - **Completeness**, **volume** and the run summary are evaluated when the run completes;
//!   **reconciliation** once its records had `reconciliation.within` to be matched by an
//!   ERP record with the same id (or at once when all are matched).
//! - Findings of one check group into one incident per workflow × check, resolved by the
//!   next run that passes that check.
//!
//! Bounds: [`MAX_IDS_PER_RUN`] record ids per open run (beyond, records are counted as
//! distinct and `untracked`, so duplicates among them go unseen — counted in a metric),
//! [`RECENT_RUNS`] finished runs per workflow, [`MAX_ERP_RECENT`] ERP ids seen before their
//! batch record.

pub mod event;
pub mod glue;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use event::{BatchEvent, Check, Severity, BATCH_SCHEMA};
pub use schedule::Schedule;

use crate::config::batch::{BatchWorkflow, RatioTiers, Tiers};
use crate::config::Topology;
use crate::emit::events::IncidentEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// Record ids kept per open run (for duplicates and reconciliation).
pub const MAX_IDS_PER_RUN: usize = 10_000;
/// Finished runs kept per workflow (API, baselines, restarts).
pub const RECENT_RUNS: usize = 64;
/// ERP ids remembered per workflow that arrived before their batch record.
pub const MAX_ERP_RECENT: usize = 50_000;
/// Runs kept at most per workflow, open ones included.
const MAX_RUNS: usize = RECENT_RUNS + 16;

/// A decoded record as the batch book reads it.
#[derive(Debug, Clone, Copy)]
pub struct BatchRecord<'a> {
    /// Index into `Topology::streams`.
    pub stream: usize,
    /// The stream's correlation id: the record's id within its batch.
    pub id: &'a str,
    pub event_type: Option<&'a str>,
    /// Event time, or the Kafka time when the record has none.
    pub time_ms: i64,
    /// The stream's extracted fields (`fields.dimensions`).
    pub fields: &'a [(String, String)],
    /// Topic, partition and offset: a record read again after a restart is not counted twice.
    pub source: Option<(&'a str, i32, i64)>,
}

/// What the book found in one call.
#[derive(Debug, Default)]
pub struct Found {
    pub events: Vec<BatchEvent>,
    pub incidents: Vec<IncidentEvent>,
}

/// One run of a batch workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub scheduled_ms: i64,
    pub batch_id: Option<String>,
    pub started_ms: Option<i64>,
    pub last_record_ms: Option<i64>,
    pub completed_ms: Option<i64>,
    /// `trailer`, `quiet` or `abandoned`.
    pub completion: Option<String>,
    /// Never started by its critical completion deadline.
    pub missed: bool,
    pub records: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Records counted as distinct without their id kept ([`MAX_IDS_PER_RUN`]).
    pub untracked: u64,
    pub expected: Option<u64>,
    /// A trailer came whose count could not be read.
    pub bad_trailer: bool,
    /// Ids received (open runs only; cleared when the run is final).
    pub ids: BTreeSet<String>,
    /// Ids not yet matched in the ERP stream (while reconciliation is pending).
    pub unmatched: BTreeSet<String>,
    pub matched: u64,
    /// Findings raised (`check:status:severity`), each once.
    pub raised: BTreeSet<String>,
    pub worst: Option<Severity>,
    pub completeness_ratio: Option<f64>,
    pub variance_ratio: Option<f64>,
    pub reconciliation_ratio: Option<f64>,
    /// Nothing more to evaluate.
    pub closed: bool,
}

impl Run {
    fn new(scheduled_ms: i64) -> Run {
        Run {
            scheduled_ms,
            ..Run::default()
        }
    }

    fn raise(&mut self, key: String, sev: Severity) -> bool {
        if self.raised.insert(key) {
            self.worst = Some(self.worst.map_or(sev, |w| w.max(sev)));
            true
        } else {
            false
        }
    }

    fn raised_check(&self, check: Check) -> bool {
        let prefix = format!("{}:", check.name());
        self.raised.iter().any(|k| k.starts_with(&prefix))
    }
}

/// An open incident of one workflow × check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentState {
    pub incident_id: String,
    pub sequence: i64,
    pub severity: Severity,
    pub opened_at_ms: i64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Scheduled times of the runs that failed the check (the first ones).
    pub runs: Vec<i64>,
    pub faulty_runs: i64,
    pub evidence: Vec<String>,
}

/// Everything the book keeps about one batch workflow; what survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub workflow: String,
    /// Scheduled times up to this one have their run.
    pub cursor_ms: Option<i64>,
    /// Oldest scheduled first.
    pub runs: Vec<Run>,
    /// Per `topic[partition]`, the last offset counted.
    pub applied: BTreeMap<String, i64>,
    /// Open incidents by check name.
    pub incidents: BTreeMap<String, IncidentState>,
}

/// The persisted form of a [`WorkflowState`] (value of the batch state topic).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRecord {
    pub version: u32,
    pub state: WorkflowState,
}

impl StateRecord {
    pub const VERSION: u32 = 1;
}

struct Spec {
    cfg: BatchWorkflow,
    schedule: Schedule,
    team: Option<String>,
}

/// ERP ids seen before their batch record, oldest first, bounded.
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        let mut forgotten = false;
        if self.order.len() >= MAX_ERP_RECENT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
                forgotten = true;
            }
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        forgotten
    }
}

/// Counters of what the book could not keep or read (bounds hit, bad input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub untracked_ids: u64,
    pub erp_forgotten: u64,
    pub bad_trailers: u64,
    pub replayed_records: u64,
    pub runs_pruned: u64,
}

/// What the API and the metrics show of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunView {
    pub scheduled_at_ms: i64,
    pub scheduled_local: String,
    pub batch_id: Option<String>,
    /// `scheduled`, `running`, `completed`, `reconciling`, `missed`, `abandoned`.
    pub state: String,
    pub started_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub completion: Option<String>,
    pub records: u64,
    pub distinct_records: u64,
    pub duplicate_records: u64,
    pub expected_records: Option<u64>,
    pub completeness_ratio: Option<f64>,
    pub variance_ratio: Option<f64>,
    pub reconciled_records: u64,
    pub reconciliation_ratio: Option<f64>,
    pub worst: Option<Severity>,
    pub findings: Vec<String>,
}

/// One batch workflow for `/api/v1/batches`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkflowView {
    pub name: String,
    pub description: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub next_run_ms: Option<i64>,
    pub next_run_local: Option<String>,
    /// Newest first.
    pub runs: Vec<RunView>,
    /// Open incidents by check.
    pub open_incidents: BTreeMap<String, Severity>,
}

/// Every batch workflow's runs, their checks and findings.
pub struct BatchBook {
    specs: Vec<Spec>,
    states: Vec<WorkflowState>,
    erp_recent: Vec<Recent>,
    by_stream: HashMap<usize, Vec<usize>>,
    by_erp: HashMap<usize, Vec<usize>>,
    dirty: BTreeSet<usize>,
    counters: Counters,
}

fn tier(late_ms: i64, t: &Tiers) -> Severity {
    if late_ms >= millis(t.critical) {
        Severity::Critical
    } else if late_ms >= millis(t.warn) {
        Severity::Warn
    } else {
        Severity::Ok
    }
}

fn ratio_tier(r: f64, t: &RatioTiers) -> Severity {
    if r < t.critical {
        Severity::Critical
    } else if r < t.warn {
        Severity::Warn
    } else {
        Severity::Ok
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn hex_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn median(mut v: Vec<u64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    })
}

impl BatchBook {
    pub fn new(topology: &Topology) -> BatchBook {
        let mut by_stream: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut by_erp: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut specs = Vec::new();
        let mut states = Vec::new();
        for (i, b) in topology.batches.iter().enumerate() {
            by_stream.entry(b.stream).or_default().push(i);
            if let Some(r) = &b.reconciliation {
                by_erp.entry(r.stream).or_default().push(i);
            }
            let team = b
                .route
                .as_ref()
                .and_then(|r| topology.routes.get(r))
                .map(|r| r.team.clone());
            specs.push(Spec {
                cfg: b.clone(),
                schedule: Schedule::new(&b.schedule),
                team,
            });
            states.push(WorkflowState {
                workflow: b.name.clone(),
                ..WorkflowState::default()
            });
        }
        let erp_recent = specs.iter().map(|_| Recent::default()).collect();
        BatchBook {
            specs,
            states,
            erp_recent,
            by_stream,
            by_erp,
            dirty: BTreeSet::new(),
            counters: Counters::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn workflow_names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.cfg.name.clone()).collect()
    }

    /// Whether records of `stream` concern a batch workflow.
    pub fn reads(&self, stream: usize) -> bool {
        self.by_stream.contains_key(&stream) || self.by_erp.contains_key(&stream)
    }

    /// Takes one record; returns whether a batch workflow used it.
    pub fn observe(&mut self, rec: &BatchRecord<'_>, now_ms: i64, found: &mut Found) -> bool {
        let mut used = false;
        let batch_ws = self.by_stream.get(&rec.stream).cloned().unwrap_or_default();
        for w in batch_ws {
            used |= self.observe_batch(w, rec, now_ms, found);
        }
        let erp_ws = self.by_erp.get(&rec.stream).cloned().unwrap_or_default();
        for w in erp_ws {
            used |= self.observe_erp(w, rec, now_ms, found);
        }
        used
    }

    fn observe_batch(
        &mut self,
        w: usize,
        rec: &BatchRecord<'_>,
        now_ms: i64,
        found: &mut Found,
    ) -> bool {
        let spec = &self.specs[w];
        enum Kind {
            Start,
            Data,
            Trailer,
        }
        let et = rec.event_type;
        let kind = if spec.cfg.trailer_type.is_some() && spec.cfg.trailer_type.as_deref() == et {
            Kind::Trailer
        } else if spec.cfg.start_type.is_some() && spec.cfg.start_type.as_deref() == et {
            Kind::Start
        } else if spec.cfg.record_type.is_none() || spec.cfg.record_type.as_deref() == et {
            Kind::Data
        } else {
            return false;
        };
        if let Some((topic, partition, offset)) = rec.source {
            let key = format!("{topic}[{partition}]");
            let state = &mut self.states[w];
            if state.applied.get(&key).is_some_and(|o| *o >= offset) {
                // Read again after a restart: already in the runs.
                self.counters.replayed_records += 1;
                return true;
            }
            state.applied.insert(key, offset);
        }
        let field = |name: &Option<String>| {
            name.as_ref().and_then(|n| {
                rec.fields
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            })
        };
        let batch_id = field(&spec.cfg.batch_id);
        let expected_text = field(&spec.cfg.expected_count);
        let reconcile = spec.cfg.reconciliation.is_some();
        let r = self.run_for(w, batch_id.as_deref(), rec.time_ms);
        self.dirty.insert(w);
        let t = rec.time_ms;
        {
            let run = &mut self.states[w].runs[r];
            if run.closed && run.missed && run.completed_ms.is_none() {
                // A run given up as missed comes after all: follow it again.
                run.closed = false;
            }
            if run.batch_id.is_none() {
                run.batch_id = batch_id;
            }
            run.started_ms = Some(run.started_ms.map_or(t, |s| s.min(t)));
        }
        match kind {
            Kind::Start => {}
            Kind::Data => {
                let erp_seen = self.erp_recent[w].set.contains(rec.id);
                let run = &mut self.states[w].runs[r];
                run.records += 1;
                run.last_record_ms = Some(run.last_record_ms.map_or(t, |l| l.max(t)));
                if run.ids.contains(rec.id) {
                    run.duplicates += 1;
                } else if run.closed {
                    // A record after its run was evaluated: counted in the run, ids no
                    // longer kept.
                    run.distinct += 1;
                    run.untracked += 1;
                } else if run.ids.len() >= MAX_IDS_PER_RUN {
                    run.distinct += 1;
                    run.untracked += 1;
                    self.counters.untracked_ids += 1;
                } else {
                    run.ids.insert(rec.id.to_string());
                    run.distinct += 1;
                    if reconcile {
                        if erp_seen {
                            run.matched += 1;
                        } else {
                            run.unmatched.insert(rec.id.to_string());
                        }
                    }
                }
            }
            Kind::Trailer => {
                let expected = match expected_text {
                    Some(text) => match text.trim().parse::<u64>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            self.counters.bad_trailers += 1;
                            self.states[w].runs[r].bad_trailer = true;
                            None
                        }
                    },
                    None if self.specs[w].cfg.expected_count.is_some() => {
                        self.counters.bad_trailers += 1;
                        self.states[w].runs[r].bad_trailer = true;
                        None
                    }
                    None => None,
                };
                let run = &mut self.states[w].runs[r];
                if run.completed_ms.is_none() {
                    run.expected = expected;
                    self.complete(w, r, "trailer", t, now_ms, found);
                }
            }
        }
        true
    }

    fn observe_erp(
        &mut self,
        w: usize,
        rec: &BatchRecord<'_>,
        now_ms: i64,
        found: &mut Found,
    ) -> bool {
        let Some(recon) = &self.specs[w].cfg.reconciliation else {
            return false;
        };
        if recon.event_type.is_some() && recon.event_type.as_deref() != rec.event_type {
            return false;
        }
        let mut hit = None;
        for (i, run) in self.states[w].runs.iter_mut().enumerate() {
            if run.unmatched.remove(rec.id) {
                run.matched += 1;
                hit = Some(i);
                break;
            }
        }
        match hit {
            Some(i) => {
                self.dirty.insert(w);
                let run = &self.states[w].runs[i];
                if run.completed_ms.is_some() && run.unmatched.is_empty() && !run.closed {
                    self.reconcile(w, i, now_ms, found);
                }
            }
            None => {
                if self.erp_recent[w].insert(rec.id) {
                    self.counters.erp_forgotten += 1;
                }
            }
        }
        true
    }

    /// The run a record belongs to, created when needed.
    fn run_for(&mut self, w: usize, batch_id: Option<&str>, t: i64) -> usize {
        let state = &self.states[w];
        if let Some(bid) = batch_id {
            // Open runs only: a batch id reused later (a daily `B1`) starts a new run.
            if let Some(i) = state
                .runs
                .iter()
                .rposition(|r| !r.closed && r.batch_id.as_deref() == Some(bid))
            {
                return i;
            }
        }
        let spec = &self.specs[w];
        let probe = t.saturating_add(millis(spec.cfg.schedule.early));
        let slot = spec
            .schedule
            .last_at_or_before(probe)
            .or_else(|| spec.schedule.next_after(probe))
            .unwrap_or(t);
        self.ensure_run(w, slot)
    }

    fn ensure_run(&mut self, w: usize, slot: i64) -> usize {
        let runs = &mut self.states[w].runs;
        match runs.binary_search_by_key(&slot, |r| r.scheduled_ms) {
            Ok(i) => i,
            Err(i) => {
                runs.insert(i, Run::new(slot));
                self.dirty.insert(w);
                self.prune(w);
                self.states[w]
                    .runs
                    .binary_search_by_key(&slot, |r| r.scheduled_ms)
                    .unwrap_or(0)
            }
        }
    }

    /// Drops the oldest closed runs beyond the bounds.
    fn prune(&mut self, w: usize) {
        let runs = &mut self.states[w].runs;
        loop {
            let closed = runs.iter().filter(|r| r.closed).count();
            if closed <= RECENT_RUNS && runs.len() <= MAX_RUNS {
                break;
            }
            match runs.iter().position(|r| r.closed) {
                Some(i) => {
                    runs.remove(i);
                    self.counters.runs_pruned += 1;
                }
                None => {
                    // Only open runs: the oldest goes (a schedule firing faster than
                    // runs complete).
                    runs.remove(0);
                    self.counters.runs_pruned += 1;
                }
            }
        }
    }

    /// Moves the clock: creates the runs that came due and raises what is late.
    pub fn advance(&mut self, now_ms: i64, found: &mut Found) {
        for w in 0..self.specs.len() {
            let cursor = match self.states[w].cursor_ms {
                Some(c) => c,
                None => {
                    // First start without state: runs due before it are not ours to judge.
                    let c = self.specs[w]
                        .schedule
                        .last_at_or_before(now_ms)
                        .unwrap_or(now_ms);
                    self.states[w].cursor_ms = Some(c);
                    self.dirty.insert(w);
                    c
                }
            };
            let fires = self.specs[w].schedule.fires_between(cursor, now_ms);
            if let Some(last) = fires.last() {
                self.states[w].cursor_ms = Some(*last);
                self.dirty.insert(w);
            }
            for f in fires {
                self.ensure_run(w, f);
            }
            let mut i = 0;
            while i < self.states[w].runs.len() {
                if !self.states[w].runs[i].closed {
                    self.check_run(w, i, now_ms, found);
                }
                i += 1;
            }
        }
    }

    fn check_run(&mut self, w: usize, i: usize, now: i64, found: &mut Found) {
        let (start, completion, quiet, within) = {
            let c = &self.specs[w].cfg;
            (
                c.start,
                c.completion,
                c.quiet.map(millis),
                c.reconciliation.as_ref().map(|r| millis(r.within)),
            )
        };
        let run = &self.states[w].runs[i];
        let f = run.scheduled_ms;
        let late = now - f;
        match (run.started_ms, run.completed_ms) {
            (None, _) => {
                if late >= millis(completion.critical) {
                    self.schedule_finding(w, i, "missed", Severity::Critical, now, found);
                    let run = &mut self.states[w].runs[i];
                    run.missed = true;
                    run.closed = true;
                    self.dirty.insert(w);
                } else {
                    let sev = tier(late, &start);
                    if sev > Severity::Ok {
                        self.schedule_finding(w, i, "not_started", sev, now, found);
                    }
                }
            }
            (Some(_), None) => {
                if let (Some(q), Some(last)) = (quiet, run.last_record_ms) {
                    if now - last >= q {
                        self.complete(w, i, "quiet", last, now, found);
                        return;
                    }
                }
                let sev = tier(late, &completion);
                if sev > Severity::Ok {
                    self.schedule_finding(w, i, "not_completed", sev, now, found);
                }
                let next = self.specs[w].schedule.next_after(f).unwrap_or(i64::MAX);
                if sev == Severity::Critical && now >= next {
                    self.complete(w, i, "abandoned", now, now, found);
                }
            }
            (Some(_), Some(done)) => {
                let due = within.is_none_or(|d| now - done >= d);
                if due || run.unmatched.is_empty() {
                    self.reconcile(w, i, now, found);
                }
            }
        }
    }

    fn event(
        &self,
        w: usize,
        i: usize,
        check: Check,
        status: &str,
        sev: Severity,
        now: i64,
    ) -> BatchEvent {
        let spec = &self.specs[w];
        let run = &self.states[w].runs[i];
        let sched = run.scheduled_ms.to_string();
        BatchEvent {
            event_id: hex_id(&[&spec.cfg.name, &sched, check.name(), status, sev.name()]),
            check: check.name().into(),
            status: status.into(),
            severity: sev.name().into(),
            workflow: spec.cfg.name.clone(),
            scheduled_at_ms: run.scheduled_ms,
            scheduled_local: spec.schedule.local_text(run.scheduled_ms),
            batch_id: run.batch_id.clone(),
            started_at_ms: run.started_ms,
            completed_at_ms: run.completed_ms,
            completion: run.completion.clone(),
            deadline_ms: None,
            observed_at_ms: now,
            records: run.records as i64,
            distinct_records: run.distinct as i64,
            duplicate_records: run.duplicates as i64,
            expected_records: run.expected.map(|e| e as i64),
            missing_records: run
                .expected
                .filter(|e| *e > run.distinct)
                .map(|e| (e - run.distinct) as i64),
            completeness_ratio: run.completeness_ratio,
            baseline_records: None,
            baseline_source: None,
            variance_ratio: run.variance_ratio,
            reconciled_records: spec.cfg.reconciliation.as_ref().map(|_| run.matched as i64),
            reconciliation_ratio: run.reconciliation_ratio,
            route: spec.cfg.route.clone(),
            team: spec.team.clone(),
            detail: String::new(),
        }
    }

    fn schedule_finding(
        &mut self,
        w: usize,
        i: usize,
        status: &str,
        sev: Severity,
        now: i64,
        found: &mut Found,
    ) {
        let key = format!("schedule:{status}:{}", sev.name());
        if !self.states[w].runs[i].raise(key, sev) {
            return;
        }
        self.dirty.insert(w);
        let c = &self.specs[w].cfg;
        let f = self.states[w].runs[i].scheduled_ms;
        let (tiers, what) = match status {
            "not_started" => (c.start, "has not started"),
            "not_completed" => (c.completion, "has not completed"),
            _ => (c.completion, "never started: missed"),
        };
        let deadline = f + millis(match sev {
            Severity::Critical => tiers.critical,
            _ => tiers.warn,
        });
        let mut ev = self.event(w, i, Check::Schedule, status, sev, now);
        ev.deadline_ms = Some(deadline);
        ev.detail = format!(
            "run scheduled {} {what} ({}s after its scheduled time)",
            ev.scheduled_local,
            (now - f) / 1000
        );
        self.fault(w, Check::Schedule, sev, i, &ev.detail.clone(), now, found);
        found.events.push(ev);
    }

    /// A run completed (trailer, quiet) or was abandoned: completeness, volume, summary.
    fn complete(&mut self, w: usize, i: usize, how: &str, at: i64, now: i64, found: &mut Found) {
        {
            let run = &mut self.states[w].runs[i];
            if run.completed_ms.is_some() {
                return;
            }
            run.completed_ms = Some(at);
            run.completion = Some(how.to_string());
        }
        self.dirty.insert(w);
        // A completion the clock had not yet seen as late (a jump) is still judged.
        let f = self.states[w].runs[i].scheduled_ms;
        let completion = self.specs[w].cfg.completion;
        let sev = tier(at - f, &completion);
        if sev > Severity::Ok && how != "abandoned" {
            self.schedule_finding(w, i, "not_completed", sev, now, found);
        }
        if !self.states[w].runs[i].raised_check(Check::Schedule) {
            self.clean(w, Check::Schedule, i, now, found);
        }
        self.completeness(w, i, now, found);
        let baseline = self.volume(w, i, now, found);
        let run = &self.states[w].runs[i];
        let worst = run.worst.unwrap_or(Severity::Ok);
        let status = if how == "abandoned" {
            "abandoned"
        } else {
            "completed"
        };
        let mut ev = self.event(w, i, Check::Run, status, worst, now);
        if let Some((b, source)) = baseline {
            ev.baseline_records = Some(b);
            ev.baseline_source = Some(source.into());
        }
        ev.detail = format!(
            "run scheduled {} {status} ({how}): {} records ({} distinct, {} duplicates){}",
            ev.scheduled_local,
            run.records,
            run.distinct,
            run.duplicates,
            run.expected
                .map(|e| format!(", {e} announced"))
                .unwrap_or_default()
        );
        found.events.push(ev);
        if self.specs[w].cfg.reconciliation.is_none() {
            self.close(w, i);
        } else if self.states[w].runs[i].unmatched.is_empty() {
            self.reconcile(w, i, now, found);
        }
    }

    fn completeness(&mut self, w: usize, i: usize, now: i64, found: &mut Found) {
        let tiers = self.specs[w].cfg.completeness;
        let run = &self.states[w].runs[i];
        let Some(expected) = run.expected else {
            if tiers.is_some() && run.bad_trailer {
                let mut ev = self.event(
                    w,
                    i,
                    Check::Completeness,
                    "unreadable_count",
                    Severity::Warn,
                    now,
                );
                ev.detail = "the trailer's announced count could not be read".into();
                self.states[w].runs[i]
                    .raise("completeness:unreadable_count:warn".into(), Severity::Warn);
                found.events.push(ev);
            }
            return;
        };
        let ratio = if expected == 0 {
            if run.distinct == 0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            run.distinct as f64 / expected as f64
        };
        let short = tiers.map_or(Severity::Ok, |t| ratio_tier(ratio, &t));
        let (status, sev) = match tiers {
            None => ("", Severity::Ok),
            Some(_) if run.distinct < expected && short > Severity::Ok => {
                ("missing_records", short)
            }
            Some(_) if run.distinct > expected => ("unexpected_records", Severity::Warn),
            Some(_) if run.duplicates > 0 => ("duplicate_records", Severity::Warn),
            Some(_) => ("", Severity::Ok),
        };
        let run = &mut self.states[w].runs[i];
        run.completeness_ratio = ratio.is_finite().then_some(ratio);
        if tiers.is_none() {
            return;
        }
        if sev == Severity::Ok {
            self.clean(w, Check::Completeness, i, now, found);
            return;
        }
        run.raise(format!("completeness:{status}:{}", sev.name()), sev);
        let mut ev = self.event(w, i, Check::Completeness, status, sev, now);
        ev.detail = format!(
            "{} of {expected} announced records received, {} duplicates",
            ev.distinct_records, ev.duplicate_records
        );
        self.fault(
            w,
            Check::Completeness,
            sev,
            i,
            &ev.detail.clone(),
            now,
            found,
        );
        found.events.push(ev);
    }

    /// The volume check; returns the baseline used.
    fn volume(
        &mut self,
        w: usize,
        i: usize,
        now: i64,
        found: &mut Found,
    ) -> Option<(f64, &'static str)> {
        let spec = &self.specs[w];
        let v = spec.cfg.volume.clone()?;
        let run = &self.states[w].runs[i];
        let slot = spec.schedule.weekday_hour(run.scheduled_ms);
        let history: Vec<u64> = self.states[w].runs[..i]
            .iter()
            .rev()
            .filter(|r| r.completion.as_deref().is_some_and(|c| c != "abandoned"))
            .filter(|r| spec.schedule.weekday_hour(r.scheduled_ms) == slot)
            .take(v.baseline_runs)
            .map(volume_of)
            .collect();
        let baseline = if history.len() >= v.min_history {
            median(history).map(|b| (b, "history"))
        } else {
            v.expected.map(|e| (e as f64, "configured"))
        };
        let Some((b, source)) = baseline.filter(|(b, _)| *b > 0.0) else {
            // No history yet and nothing configured: the run becomes history.
            return None;
        };
        let count = volume_of(run);
        let variance = (count as f64 - b) / b;
        let sev = if variance.abs() >= v.critical {
            Severity::Critical
        } else if variance.abs() >= v.warn {
            Severity::Warn
        } else {
            Severity::Ok
        };
        self.states[w].runs[i].variance_ratio = Some(variance);
        if sev == Severity::Ok {
            self.clean(w, Check::Volume, i, now, found);
            return Some((b, source));
        }
        let status = if variance > 0.0 {
            "above_baseline"
        } else {
            "below_baseline"
        };
        self.states[w].runs[i].raise(format!("volume:{status}:{}", sev.name()), sev);
        let mut ev = self.event(w, i, Check::Volume, status, sev, now);
        ev.baseline_records = Some(b);
        ev.baseline_source = Some(source.into());
        ev.detail = format!(
            "{count} records against a baseline of {b:.0} ({source}): {:+.0} %",
            variance * 100.0
        );
        self.fault(w, Check::Volume, sev, i, &ev.detail.clone(), now, found);
        found.events.push(ev);
        Some((b, source))
    }

    fn reconcile(&mut self, w: usize, i: usize, now: i64, found: &mut Found) {
        let Some(recon) = self.specs[w].cfg.reconciliation.clone() else {
            self.close(w, i);
            return;
        };
        let run = &mut self.states[w].runs[i];
        let tracked = run.distinct.saturating_sub(run.untracked);
        let ratio = if tracked == 0 {
            1.0
        } else {
            run.matched as f64 / tracked as f64
        };
        run.reconciliation_ratio = Some(ratio);
        let sev = ratio_tier(ratio, &recon.ratio);
        if sev == Severity::Ok {
            self.clean(w, Check::Reconciliation, i, now, found);
        } else {
            run.raise(
                format!("reconciliation:unmatched_records:{}", sev.name()),
                sev,
            );
            let mut ev = self.event(w, i, Check::Reconciliation, "unmatched_records", sev, now);
            ev.deadline_ms = ev.completed_at_ms.map(|c| c + millis(recon.within));
            ev.detail = format!(
                "{} of {tracked} records matched in the ERP stream within {}s of completion",
                run_matched(&self.states[w].runs[i]),
                recon.within.as_secs()
            );
            self.fault(
                w,
                Check::Reconciliation,
                sev,
                i,
                &ev.detail.clone(),
                now,
                found,
            );
            found.events.push(ev);
        }
        self.close(w, i);
    }

    fn close(&mut self, w: usize, i: usize) {
        let run = &mut self.states[w].runs[i];
        run.closed = true;
        run.ids.clear();
        run.unmatched.clear();
        self.dirty.insert(w);
        self.prune(w);
    }

    fn incident_event(
        &self,
        w: usize,
        check: Check,
        s: &IncidentState,
        kind: &str,
        now: i64,
    ) -> IncidentEvent {
        let spec = &self.specs[w];
        IncidentEvent {
            incident_id: s.incident_id.clone(),
            kind: kind.into(),
            sequence: s.sequence,
            severity: s.severity.name().into(),
            workflow: spec.cfg.name.clone(),
            slice: BTreeMap::new(),
            probable_cause: format!("batch_{}", check.name()),
            route: spec.cfg.route.clone(),
            team: spec.team.clone(),
            evidence: s.evidence.clone(),
            trigger: "batch_check".into(),
            opened_at_ms: s.opened_at_ms,
            first_breach_ms: s.first_ms,
            last_breach_ms: s.last_ms,
            resolved_at_ms: (kind == "resolved").then_some(now),
            emitted_at_ms: now,
            breached: s.faulty_runs,
            pending: 0,
            completed: 0,
            never_arrived: 0,
            worst_lag_ms: 0,
            sample: s
                .runs
                .iter()
                .map(|r| spec.schedule.local_text(*r))
                .collect(),
            slice_breach_rate: None,
            peer_breach_rate: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fault(
        &mut self,
        w: usize,
        check: Check,
        sev: Severity,
        i: usize,
        detail: &str,
        now: i64,
        found: &mut Found,
    ) {
        let sched = self.states[w].runs[i].scheduled_ms;
        let name = self.specs[w].cfg.name.clone();
        let key = check.name().to_string();
        let kind;
        {
            let incidents = &mut self.states[w].incidents;
            match incidents.get_mut(&key) {
                None => {
                    incidents.insert(
                        key.clone(),
                        IncidentState {
                            incident_id: hex_id(&[
                                &name,
                                "batch",
                                check.name(),
                                &sched.to_string(),
                            ]),
                            sequence: 1,
                            severity: sev,
                            opened_at_ms: now,
                            first_ms: now,
                            last_ms: now,
                            runs: vec![sched],
                            faulty_runs: 1,
                            evidence: vec![detail.to_string()],
                        },
                    );
                    kind = "opened";
                }
                Some(s) => {
                    let new_run =
                        !s.runs.contains(&sched) && s.runs.last().is_none_or(|l| *l < sched);
                    if !new_run && sev <= s.severity {
                        return;
                    }
                    s.sequence += 1;
                    s.severity = s.severity.max(sev);
                    s.last_ms = now;
                    if new_run {
                        s.faulty_runs += 1;
                        if s.runs.len() < 10 {
                            s.runs.push(sched);
                        }
                    }
                    if s.evidence.len() < 16 && !s.evidence.iter().any(|e| e == detail) {
                        s.evidence.push(detail.to_string());
                    }
                    kind = "updated";
                }
            }
        }
        self.dirty.insert(w);
        let s = &self.states[w].incidents[&key];
        found
            .incidents
            .push(self.incident_event(w, check, s, kind, now));
    }

    /// Run `i` passed `check`: resolves the check's incident when the run is newer than
    /// every run that failed it.
    fn clean(&mut self, w: usize, check: Check, i: usize, now: i64, found: &mut Found) {
        let sched = self.states[w].runs[i].scheduled_ms;
        let key = check.name();
        let resolve = self.states[w]
            .incidents
            .get(key)
            .is_some_and(|s| s.runs.iter().all(|r| *r < sched));
        if !resolve {
            return;
        }
        if let Some(mut s) = self.states[w].incidents.remove(key) {
            s.sequence += 1;
            self.dirty.insert(w);
            found
                .incidents
                .push(self.incident_event(w, check, &s, "resolved", now));
        }
    }

    /// Workflows whose state changed since the last call, as state records.
    pub fn take_dirty(&mut self) -> Vec<StateRecord> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|w| StateRecord {
                version: StateRecord::VERSION,
                state: self.states[w].clone(),
            })
            .collect()
    }

    pub fn state(&self, workflow: &str) -> Option<&WorkflowState> {
        self.states.iter().find(|s| s.workflow == workflow)
    }

    /// Restores a workflow's state read back from the state topic. Returns false when no
    /// batch workflow of that name is configured (any more).
    pub fn restore(&mut self, record: StateRecord) -> bool {
        let Some(w) = self
            .specs
            .iter()
            .position(|s| s.cfg.name == record.state.workflow)
        else {
            return false;
        };
        self.states[w] = record.state;
        // Runs of a schedule that changed meanwhile stay as history; new fires follow the
        // new schedule from the restored cursor on.
        self.prune(w);
        true
    }

    /// What `/api/v1/batches` shows.
    pub fn views(&self, now_ms: i64, runs: usize) -> Vec<WorkflowView> {
        self.specs
            .iter()
            .zip(&self.states)
            .map(|(spec, state)| {
                let next = spec.schedule.next_after(now_ms);
                WorkflowView {
                    name: spec.cfg.name.clone(),
                    description: spec.cfg.description.clone(),
                    cron: spec.cfg.schedule.cron_text.clone(),
                    timezone: spec.schedule.timezone().name().to_string(),
                    next_run_ms: next,
                    next_run_local: next.map(|n| spec.schedule.local_text(n)),
                    runs: state
                        .runs
                        .iter()
                        .rev()
                        .take(runs)
                        .map(|r| run_view(spec, r))
                        .collect(),
                    open_incidents: state
                        .incidents
                        .iter()
                        .map(|(k, s)| (k.clone(), s.severity))
                        .collect(),
                }
            })
            .collect()
    }

    /// The last completed run of each workflow (for the metrics).
    pub fn last_completed(&self) -> Vec<(String, Option<RunView>)> {
        self.specs
            .iter()
            .zip(&self.states)
            .map(|(spec, state)| {
                let last = state
                    .runs
                    .iter()
                    .rev()
                    .find(|r| r.completed_ms.is_some())
                    .map(|r| run_view(spec, r));
                (spec.cfg.name.clone(), last)
            })
            .collect()
    }
}

/// A run's volume: what its source announced (the trailer's count) when it did, else the
/// distinct records received. A partial delivery of a normal batch is a completeness
/// finding, not a volume one.
fn volume_of(run: &Run) -> u64 {
    run.expected.unwrap_or(run.distinct)
}

fn run_matched(run: &Run) -> u64 {
    run.matched
}

fn run_view(spec: &Spec, r: &Run) -> RunView {
    let state = match (r.started_ms, r.completed_ms, r.closed) {
        (None, _, true) => "missed",
        (None, _, false) => "scheduled",
        (Some(_), None, _) => "running",
        (Some(_), Some(_), _) if r.completion.as_deref() == Some("abandoned") => "abandoned",
        (Some(_), Some(_), false) => "reconciling",
        (Some(_), Some(_), true) => "completed",
    };
    RunView {
        scheduled_at_ms: r.scheduled_ms,
        scheduled_local: spec.schedule.local_text(r.scheduled_ms),
        batch_id: r.batch_id.clone(),
        state: state.into(),
        started_at_ms: r.started_ms,
        completed_at_ms: r.completed_ms,
        completion: r.completion.clone(),
        records: r.records,
        distinct_records: r.distinct,
        duplicate_records: r.duplicates,
        expected_records: r.expected,
        completeness_ratio: r.completeness_ratio,
        variance_ratio: r.variance_ratio,
        reconciled_records: r.matched,
        reconciliation_ratio: r.reconciliation_ratio,
        worst: r.worst,
        findings: r.raised.iter().cloned().collect(),
    }
}
