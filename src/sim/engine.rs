//! [`Simulator`]: starts correlations over the scenario's timeline and hands out the
//! records that are due by a given time, in Kafka-timestamp order.
//!
//! It never looks at a clock itself: the caller says what time it is
//! ([`Simulator::advance_to`]), so the same simulator runs in real time or as fast as
//! the sink takes records. Output depends only on the topology, the scenario and the
//! seed — not on how often `advance_to` is called — because arrivals are processed in
//! global time order and everything random about a correlation is drawn when it starts.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Role, Topology};

use super::encode::{
    rfc3339, splitmix64, EncodeError, OriginKind, RecordInput, SimRecord, StreamEncoder,
};
use super::plan::{
    plan, AppliedFault, Effect, GroundTruth, PlannedSignal, ValueSet, WorkflowModel,
};
use super::scenario::{FaultKind, Scenario, StageSelector};

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// Time of the first phase's start.
    pub start: DateTime<Utc>,
    /// Overrides the scenario's length: cuts it short, or lets the last phase run on.
    pub duration: Option<Duration>,
    /// Overrides the scenario's base rate (correlations per second); phase rates scale
    /// with it.
    pub rate: Option<f64>,
    /// After the last phase, keep producing the stages of correlations already started
    /// until each is complete (no new correlations start).
    pub drain: bool,
}

/// The scenario cannot run on this topology; not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("scenario `{scenario}` does not fit the topology: {}", .problems.join("; "))]
    Mismatch {
        scenario: String,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

#[derive(Debug, Clone)]
struct PhaseWindow {
    name: String,
    start_ms: i64,
    end_ms: i64,
    /// Correlations per second per workflow.
    rates: Vec<f64>,
    /// Faults that pick correlations when they start (delays, drops), per workflow.
    start_faults: Vec<Vec<AppliedFault>>,
}

/// One source of arrivals: a workflow's normal traffic, or a surge's extra traffic.
#[derive(Debug, Clone)]
struct Arrivals {
    workflow: usize,
    /// Rate per phase.
    rates: Vec<f64>,
    /// Value the correlations of a surge carry.
    forced: Option<(String, String)>,
    next_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Stage(usize),
    Signal(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    at_ms: i64,
    seq: u64,
    correlation: u64,
    what: What,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (time, sequence).
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Live {
    workflow: usize,
    truth: GroundTruth,
    remaining: usize,
}

/// Counters for progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    pub correlations_started: u64,
    pub records: u64,
    pub signals: u64,
    /// Correlations started but not all of whose records were handed out yet.
    pub in_flight: u64,
}

/// The simulator: drive it with [`advance_to`](Simulator::advance_to).
#[derive(Debug)]
pub struct Simulator {
    scenario_name: String,
    seed: u64,
    encoders: Vec<StreamEncoder>,
    workflows: Vec<WorkflowModel>,
    signals_stream: Option<usize>,
    values: BTreeMap<String, ValueSet>,
    phases: Vec<PhaseWindow>,
    holds: Vec<Vec<AppliedFault>>,
    arrivals: Vec<Arrivals>,
    start_ms: i64,
    end_ms: i64,
    drain: bool,
    rng: ChaCha8Rng,
    heap: BinaryHeap<Due>,
    live: HashMap<u64, Live>,
    finished: Vec<GroundTruth>,
    id_counters: BTreeMap<String, u64>,
    next_correlation: u64,
    next_seq: u64,
    now_ms: i64,
    counters: SimCounters,
}

impl Simulator {
    /// Checks the scenario against the topology (every problem at once) and prepares
    /// the timeline.
    pub fn new(
        topology: &Topology,
        scenario: &Scenario,
        options: &SimOptions,
    ) -> Result<Simulator, SimError> {
        let encoders = topology
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| StreamEncoder::new(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        let workflows: Vec<WorkflowModel> = topology
            .workflows
            .iter()
            .enumerate()
            .map(|(i, w)| WorkflowModel::new(i, w, topology, &encoders))
            .collect();
        let signals_stream = topology
            .streams
            .iter()
            .position(|s| s.role == Role::Signals);
        let mut problems = Vec::new();

        let mut values = BTreeMap::new();
        for enc in &encoders {
            for d in enc.dimension_names() {
                values
                    .entry(d.to_string())
                    .or_insert_with(|| ValueSet::new(d, scenario.values.get(d)));
            }
        }
        for w in &workflows {
            for d in &w.dimensions {
                values
                    .entry(d.clone())
                    .or_insert_with(|| ValueSet::new(d, scenario.values.get(d)));
            }
        }
        for name in scenario.weights.keys() {
            if !workflows.iter().any(|w| &w.name == name) {
                tracing::warn!(workflow = %name, "scenario weight names a workflow the topology does not have; ignored");
            }
        }

        let base_rate = scenario.rate;
        let scale = match options.rate {
            Some(r) if base_rate > 0.0 => r / base_rate,
            _ => 1.0,
        };
        let weights: Vec<f64> = workflows
            .iter()
            .map(|w| scenario.weights.get(&w.name).copied().unwrap_or(1.0))
            .collect();
        let weight_sum: f64 = weights.iter().sum();
        let start_ms = options.start.timestamp_millis();
        let total_ms = duration_ms(options.duration.unwrap_or_else(|| scenario.duration()));
        let end_ms = start_ms.saturating_add(total_ms);

        let mut phases = Vec::new();
        let mut holds: Vec<Vec<AppliedFault>> = vec![Vec::new(); workflows.len()];
        let mut surges = Vec::new();
        let mut cursor = start_ms;
        for (pi, phase) in scenario.phases.iter().enumerate() {
            if cursor >= end_ms {
                break;
            }
            let last = pi + 1 == scenario.phases.len();
            let phase_end = if last {
                end_ms
            } else {
                cursor
                    .saturating_add(duration_ms(phase.duration))
                    .min(end_ms)
            };
            let total_rate = match (phase.rate, options.rate) {
                (Some(r), _) => r * scale,
                (None, Some(r)) => r,
                (None, None) => base_rate,
            };
            let rates: Vec<f64> = weights
                .iter()
                .map(|w| {
                    if weight_sum > 0.0 {
                        total_rate * w / weight_sum
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut start_faults: Vec<Vec<AppliedFault>> = vec![Vec::new(); workflows.len()];
            for fault in &phase.faults {
                let at = format!("phase `{}` fault `{}`", phase.name, fault.name);
                let targets = target_workflows(&workflows, fault, &at, &mut problems);
                if let StageSelector::Named(names) = &fault.target.stages {
                    for n in names {
                        let known = targets
                            .iter()
                            .any(|&wi| workflows[wi].stages.iter().any(|s| &s.name == n));
                        if !known {
                            problems.push(format!("{at}: no targeted workflow has a stage `{n}`"));
                        }
                    }
                }
                if let Some((dim, value)) = &fault.target.dimension {
                    if let Some(set) = values.get(dim) {
                        if !set.values.contains(value) {
                            problems.push(format!(
                                "{at}: `{value}` is not one of the `{dim}` values drawn ({})",
                                set.values.join(", ")
                            ));
                        }
                    }
                }
                if fault.signal.is_some() && signals_stream.is_none() {
                    problems.push(format!(
                        "{at}: emits signals, but no stream has `role: signals`"
                    ));
                }
                for wi in targets {
                    let effect = match &fault.kind {
                        FaultKind::ErpDelay { delay } => Effect::ErpDelay(*delay),
                        FaultKind::IngestionDelay { delay } => Effect::IngestionDelay(*delay),
                        FaultKind::Hold { burst } => Effect::Hold {
                            burst_ms: duration_ms(*burst),
                        },
                        FaultKind::Drop => Effect::Drop,
                        FaultKind::Surge { factor } => {
                            surges.push((pi, wi, *factor, fault.target.dimension.clone()));
                            continue;
                        }
                    };
                    let stages = select_stages(&workflows[wi], &encoders, fault);
                    let applied = AppliedFault {
                        name: fault.name.clone(),
                        effect,
                        stages,
                        signal: fault.signal.clone(),
                        dimension: fault.target.dimension.clone(),
                        share: fault.share,
                        window: (cursor, phase_end),
                    };
                    if matches!(effect, Effect::Hold { .. }) {
                        holds[wi].push(applied);
                    } else {
                        start_faults[wi].push(applied);
                    }
                }
            }
            phases.push(PhaseWindow {
                name: phase.name.clone(),
                start_ms: cursor,
                end_ms: phase_end,
                rates,
                start_faults,
            });
            cursor = phase_end;
        }
        if !problems.is_empty() {
            return Err(SimError::Mismatch {
                scenario: scenario.name.clone(),
                problems,
            });
        }

        let mut arrivals: Vec<Arrivals> = (0..workflows.len())
            .map(|wi| Arrivals {
                workflow: wi,
                rates: phases.iter().map(|p| p.rates[wi]).collect(),
                forced: None,
                next_ms: None,
            })
            .collect();
        for (pi, wi, factor, forced) in surges {
            let mut rates = vec![0.0; phases.len()];
            if let Some(p) = phases.get(pi) {
                rates[pi] = p.rates[wi] * (factor - 1.0);
            }
            arrivals.push(Arrivals {
                workflow: wi,
                rates,
                forced,
                next_ms: None,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        for a in &mut arrivals {
            a.next_ms = next_arrival(&mut rng, &phases, &a.rates, start_ms as f64);
        }
        Ok(Simulator {
            scenario_name: scenario.name.clone(),
            seed: options.seed,
            encoders,
            workflows,
            signals_stream,
            values,
            phases,
            holds,
            arrivals,
            start_ms,
            end_ms,
            drain: options.drain,
            rng,
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            finished: Vec::new(),
            id_counters: BTreeMap::new(),
            next_correlation: 0,
            next_seq: 0,
            now_ms: start_ms,
            counters: SimCounters::default(),
        })
    }

    pub fn scenario_name(&self) -> &str {
        &self.scenario_name
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// When the first phase starts.
    pub fn start(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.start_ms).unwrap_or_default()
    }

    /// When the last phase ends: no correlation starts after it.
    pub fn end(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.end_ms).unwrap_or_default()
    }

    /// The phase running at `t` (the last one after the end).
    pub fn phase_at(&self, t: DateTime<Utc>) -> &str {
        let ms = t.timestamp_millis();
        self.phases
            .iter()
            .find(|p| ms < p.end_ms)
            .or(self.phases.last())
            .map_or("", |p| p.name.as_str())
    }

    /// Stream encoders, one per topology stream (schemas of Avro streams, for example).
    pub fn encoders(&self) -> &[StreamEncoder] {
        &self.encoders
    }

    pub fn counters(&self) -> SimCounters {
        SimCounters {
            in_flight: self.live.len() as u64,
            ..self.counters
        }
    }

    /// Whether nothing more will be produced after `now`.
    pub fn is_done(&self, now: DateTime<Utc>) -> bool {
        let past_end = now.timestamp_millis() >= self.end_ms;
        past_end && (!self.drain || self.heap.is_empty())
    }

    /// Starts every correlation due by `now` and returns every record due by `now`, in
    /// Kafka-timestamp order. Records are due at their Kafka timestamp. After the end,
    /// only already started correlations produce records, and only when draining.
    pub fn advance_to(&mut self, now: DateTime<Utc>) -> Result<Vec<SimRecord>, SimError> {
        let now_ms = now.timestamp_millis();
        self.now_ms = self.now_ms.max(now_ms);
        self.start_arrivals(now_ms.min(self.end_ms));
        let limit = if now_ms >= self.end_ms && !self.drain {
            self.end_ms
        } else {
            now_ms
        };
        let mut out = Vec::new();
        while let Some(due) = self.heap.peek().copied() {
            if due.at_ms > limit {
                break;
            }
            self.heap.pop();
            if let Some(r) = self.emit(due)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Ground truth of every correlation whose records have all been handed out since
    /// the last call.
    pub fn take_finished(&mut self) -> Vec<GroundTruth> {
        std::mem::take(&mut self.finished)
    }

    /// Ends the run: the ground truth of every correlation still in flight, marked
    /// `cut_off`, in start order.
    pub fn finish(&mut self) -> Vec<GroundTruth> {
        let mut rest: Vec<(u64, Live)> = self.live.drain().collect();
        rest.sort_by_key(|(k, _)| *k);
        self.heap.clear();
        let mut out = self.take_finished();
        out.extend(rest.into_iter().map(|(_, mut l)| {
            l.truth.cut_off = true;
            l.truth
        }));
        out
    }

    fn start_arrivals(&mut self, until_ms: i64) {
        loop {
            let next = self
                .arrivals
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.next_ms.map(|t| (i, t)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let Some((ai, t)) = next else { return };
            if t > until_ms as f64 {
                return;
            }
            let start = t as i64;
            self.start_correlation(ai, start);
            let rates = self.arrivals[ai].rates.clone();
            self.arrivals[ai].next_ms = next_arrival(&mut self.rng, &self.phases, &rates, t);
        }
    }

    fn phase_index(&self, ms: i64) -> usize {
        self.phases
            .iter()
            .position(|p| ms < p.end_ms)
            .unwrap_or(self.phases.len().saturating_sub(1))
    }

    fn start_correlation(&mut self, arrival: usize, start_ms: i64) {
        let wi = self.arrivals[arrival].workflow;
        let forced = self.arrivals[arrival].forced.clone();
        let wf = &self.workflows[wi];
        let workflow_name = wf.name.clone();
        let mut dims = BTreeMap::new();
        for d in &wf.dimensions {
            if let Some(set) = self.values.get(d) {
                dims.insert(d.clone(), set.draw(&mut self.rng));
            }
        }
        if let Some((d, v)) = forced {
            dims.insert(d, v);
        }
        let pi = self.phase_index(start_ms);
        let mut selected: Vec<&AppliedFault> = Vec::new();
        let candidates = self
            .phases
            .get(pi)
            .map(|p| p.start_faults[wi].as_slice())
            .unwrap_or_default()
            .iter()
            .chain(self.holds[wi].iter().filter(|h| h.window.1 > start_ms));
        for f in candidates {
            let matches = f
                .dimension
                .as_ref()
                .is_none_or(|(d, v)| dims.get(d) == Some(v));
            if matches && (f.share >= 1.0 || self.rng.random::<f64>() < f.share) {
                selected.push(f);
            }
        }
        let planned = plan(&mut self.rng, wf, start_ms, &selected);

        let year = DateTime::<Utc>::from_timestamp_millis(start_ms).map_or(1970, |t| t.year());
        let counter = self.id_counters.entry(wf.id_prefix.clone()).or_insert(0);
        *counter += 1;
        let correlation_id = format!("{}-{year}-{:06}", wf.id_prefix, *counter);

        let key = self.next_correlation;
        self.next_correlation += 1;
        let mut remaining = 0;
        for (i, s) in planned.stages.iter().enumerate() {
            if !s.dropped {
                self.push_due(s.kafka_time_ms, key, What::Stage(i));
                remaining += 1;
            }
        }
        if self.signals_stream.is_some() {
            for (i, s) in planned.signals.iter().enumerate() {
                self.push_due(s.kafka_time_ms, key, What::Signal(i));
                remaining += 1;
            }
        }
        let truth = GroundTruth {
            workflow: workflow_name,
            correlation_id,
            dimensions: dims,
            phase: self
                .phases
                .get(pi)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            start: rfc3339(planned.stages.first().map_or(start_ms, |s| s.event_time_ms)),
            start_ms: planned.stages.first().map_or(start_ms, |s| s.event_time_ms),
            stages: planned.stages,
            signals: planned.signals,
            faults: planned.faults,
            fault_delay_ms: planned.fault_delay_ms,
            never_completes: planned.never_completes,
            lag_ms: planned.lag_ms,
            sla: planned.sla,
            expected: planned.expected,
            cut_off: false,
            produced_late_ms: 0,
        };
        self.counters.correlations_started += 1;
        if remaining == 0 {
            self.finished.push(truth);
        } else {
            self.live.insert(
                key,
                Live {
                    workflow: wi,
                    truth,
                    remaining,
                },
            );
        }
    }

    fn push_due(&mut self, at_ms: i64, correlation: u64, what: What) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Due {
            at_ms,
            seq,
            correlation,
            what,
        });
    }

    fn emit(&mut self, due: Due) -> Result<Option<SimRecord>, SimError> {
        let entropy = splitmix64(self.seed ^ splitmix64(due.seq));
        let Some(live) = self.live.get_mut(&due.correlation) else {
            return Ok(None);
        };
        let wf = &self.workflows[live.workflow];
        let record = match due.what {
            What::Stage(i) => {
                let stage = &wf.stages[i];
                let planned = &mut live.truth.stages[i];
                planned.emitted = true;
                let enc = &self.encoders[stage.stream];
                enc.encode(&RecordInput {
                    correlation_id: &live.truth.correlation_id,
                    event_type: Some(stage.event_type.as_deref().unwrap_or(&stage.name)),
                    event_ms: planned.event_time_ms,
                    kafka_ms: planned.kafka_time_ms,
                    dimensions: &live.truth.dimensions,
                    entropy,
                    origin: OriginKind::Stage {
                        workflow: live.workflow,
                        stage: i,
                    },
                })?
            }
            What::Signal(i) => {
                let Some(si) = self.signals_stream else {
                    return Ok(None);
                };
                let enc = &self.encoders[si];
                let signal: &mut PlannedSignal = &mut live.truth.signals[i];
                signal.emitted = true;
                let mut dims = live.truth.dimensions.clone();
                for d in enc.dimension_names() {
                    if d == "connector" {
                        let c = signal.connector.clone().unwrap_or_else(|| {
                            default_connector(&signal.signal_type, &live.truth.dimensions)
                        });
                        dims.insert(d.to_string(), c);
                    } else if !dims.contains_key(d) {
                        if let Some(set) = self.values.get(d) {
                            let v = set.values[(entropy % set.values.len().max(1) as u64) as usize]
                                .clone();
                            dims.insert(d.to_string(), v);
                        }
                    }
                }
                self.counters.signals += 1;
                enc.encode(&RecordInput {
                    correlation_id: &live.truth.correlation_id,
                    event_type: Some(&signal.signal_type),
                    event_ms: signal.event_time_ms,
                    kafka_ms: signal.kafka_time_ms,
                    dimensions: &dims,
                    entropy,
                    origin: OriginKind::Signal {
                        signal_type: signal.signal_type.clone(),
                    },
                })?
            }
        };
        self.counters.records += 1;
        live.remaining = live.remaining.saturating_sub(1);
        if live.remaining == 0 {
            if let Some(done) = self.live.remove(&due.correlation) {
                self.finished.push(done.truth);
            }
        }
        Ok(Some(record))
    }
}

/// The connector a signal is about when the scenario does not say.
fn default_connector(signal_type: &str, dims: &BTreeMap<String, String>) -> String {
    if signal_type.starts_with("carrier") {
        match dims.get("carrier") {
            Some(c) => format!("carrier-{}", c.to_lowercase()),
            None => "carrier-hub".into(),
        }
    } else if signal_type.starts_with("odoo") {
        "odoo-connector".into()
    } else if signal_type.starts_with("wms") || signal_type.starts_with("warehouse") {
        "wms-bridge".into()
    } else {
        "middleware".into()
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Next arrival of a Poisson process whose rate changes per phase, after `from_ms`.
/// Memorylessness makes restarting the draw at a phase boundary exact.
fn next_arrival(
    rng: &mut ChaCha8Rng,
    phases: &[PhaseWindow],
    rates: &[f64],
    from_ms: f64,
) -> Option<f64> {
    let mut t = from_ms;
    for (p, rate) in phases.iter().zip(rates) {
        if t >= p.end_ms as f64 {
            continue;
        }
        t = t.max(p.start_ms as f64);
        if *rate <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.random::<f64>();
        let candidate = t + (-u.ln() / rate) * 1000.0;
        if candidate < p.end_ms as f64 {
            return Some(candidate);
        }
        t = p.end_ms as f64;
    }
    None
}

fn target_workflows(
    workflows: &[WorkflowModel],
    fault: &super::scenario::Fault,
    at: &str,
    problems: &mut Vec<String>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for name in &fault.target.workflows {
        match workflows.iter().position(|w| &w.name == name) {
            Some(i) => out.push(i),
            None => {
                let known: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
                problems.push(format!(
                    "{at}: names workflow `{name}`, which the topology does not have ({})",
                    known.join(", ")
                ));
            }
        }
    }
    if fault.target.workflows.is_empty() {
        out = (0..workflows.len()).collect();
    }
    if let Some((dim, _)) = &fault.target.dimension {
        let named = !fault.target.workflows.is_empty();
        out.retain(|&i| {
            let has = workflows[i].dimensions.iter().any(|d| d == dim);
            if !has && named {
                problems.push(format!(
                    "{at}: workflow `{}` carries no `{dim}` dimension",
                    workflows[i].name
                ));
            }
            has
        });
        if out.is_empty() && !named {
            problems.push(format!("{at}: no workflow carries a `{dim}` dimension"));
        }
    }
    out
}

fn select_stages(
    wf: &WorkflowModel,
    encoders: &[StreamEncoder],
    fault: &super::scenario::Fault,
) -> Vec<bool> {
    let source_on_dimension = |i: usize| {
        let s = &wf.stages[i];
        !s.erp
            && fault
                .target
                .dimension
                .as_ref()
                .is_none_or(|(d, _)| encoders.get(s.stream).is_some_and(|e| e.has_dimension(d)))
    };
    let selector = match (&fault.target.stages, &fault.kind) {
        (StageSelector::Default, FaultKind::ErpDelay { .. } | FaultKind::Drop) => {
            StageSelector::Erp
        }
        (sel, _) => sel.clone(),
    };
    let stages: Vec<bool> = (0..wf.stages.len())
        .map(|i| match &selector {
            StageSelector::Erp => wf.stages[i].erp,
            StageSelector::Source => !wf.stages[i].erp,
            StageSelector::Default => source_on_dimension(i),
            StageSelector::Named(names) => names.contains(&wf.stages[i].name),
        })
        .collect();
    stages
}
