//! One correlation's walk through its stage chain: when each stage happens (business
//! time) and reaches Kafka, which faults changed that, which signals go with it, and the
//! SLA outcome a correct monitor must report — decided up front, so the ground truth is
//! exact and independent of how fast the records are produced.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Sla, Topology, Workflow};

use super::encode::{rfc3339, StreamEncoder, TimeEncoding};
use super::scenario::{Delay, SlaTier};

/// Realistic values per dimension name; other names get `<name>-a`, `<name>-b`, `<name>-c`.
pub fn default_values(dimension: &str) -> Vec<String> {
    let v: &[&str] = match dimension {
        "carrier" => &["DHL", "UPS", "DPD", "GLS", "POSTNL"],
        "warehouse" => &["WH-ANR", "WH-LGG", "WH-RTM"],
        "channel" => &["webshop", "marketplace", "b2b_edi"],
        "region" => &["BE", "NL", "DE", "FR"],
        "connector" => &["odoo-connector", "wms-bridge", "carrier-hub"],
        _ => {
            return ["a", "b", "c"]
                .iter()
                .map(|s| format!("{dimension}-{s}"))
                .collect()
        }
    };
    v.iter().map(|s| s.to_string()).collect()
}

/// Relative weights of the default values (more webshop than EDI, more DHL than PostNL).
fn default_weight(dimension: &str, index: usize) -> f64 {
    let w: &[f64] = match dimension {
        "carrier" => &[0.35, 0.2, 0.2, 0.15, 0.1],
        "warehouse" => &[0.45, 0.3, 0.25],
        "channel" => &[0.55, 0.3, 0.15],
        "region" => &[0.35, 0.3, 0.2, 0.15],
        _ => &[],
    };
    w.get(index).copied().unwrap_or(1.0)
}

/// A dimension's values with their weights.
#[derive(Debug, Clone)]
pub struct ValueSet {
    pub values: Vec<String>,
    weights: Vec<f64>,
}

impl ValueSet {
    pub fn new(dimension: &str, configured: Option<&Vec<String>>) -> ValueSet {
        match configured {
            Some(v) if !v.is_empty() => ValueSet {
                values: v.clone(),
                weights: vec![1.0; v.len()],
            },
            _ => {
                let values = default_values(dimension);
                let weights = (0..values.len())
                    .map(|i| default_weight(dimension, i))
                    .collect();
                ValueSet { values, weights }
            }
        }
    }

    pub fn draw(&self, rng: &mut ChaCha8Rng) -> String {
        let total: f64 = self.weights.iter().sum();
        let mut x = rng.random::<f64>() * total;
        for (v, w) in self.values.iter().zip(&self.weights) {
            if x < *w {
                return v.clone();
            }
            x -= w;
        }
        self.values.last().cloned().unwrap_or_default()
    }
}

/// A stage as the planner needs it.
#[derive(Debug, Clone)]
pub struct StageModel {
    pub name: String,
    pub stream: usize,
    pub event_type: Option<String>,
    /// On an ERP stream (outbox/CDC): its time is when Odoo wrote it.
    pub erp: bool,
    pub time_encoding: Option<TimeEncoding>,
}

/// A workflow as the planner needs it.
#[derive(Debug, Clone)]
pub struct WorkflowModel {
    pub index: usize,
    pub name: String,
    pub stages: Vec<StageModel>,
    pub sla: Sla,
    pub window_ms: i64,
    /// Every dimension a correlation of this workflow carries: the workflow's own and
    /// those of its stages' streams.
    pub dimensions: Vec<String>,
    /// `SO`, `RMA`, `MOVE`, ...: ids look like `SO-2026-000123`.
    pub id_prefix: String,
    /// Median delay between consecutive stages.
    pub median_gap_ms: f64,
}

impl WorkflowModel {
    pub fn new(
        index: usize,
        wf: &Workflow,
        topology: &Topology,
        encoders: &[StreamEncoder],
    ) -> Self {
        let stages: Vec<StageModel> = wf
            .stages
            .iter()
            .map(|s| StageModel {
                name: s.name.clone(),
                stream: s.stream,
                event_type: s.event_type.clone(),
                erp: topology.streams.get(s.stream).is_some_and(|st| st.erp_time),
                time_encoding: encoders
                    .get(s.stream)
                    .and_then(StreamEncoder::time_encoding),
            })
            .collect();
        let mut dimensions = wf.dimensions.clone();
        for s in &stages {
            if let Some(enc) = encoders.get(s.stream) {
                for d in enc.dimension_names() {
                    if !dimensions.iter().any(|x| x == d) {
                        dimensions.push(d.to_string());
                    }
                }
            }
        }
        // In steady state the whole chain takes about a quarter of the tightest warn tier.
        let tightest_warn = wf
            .sla
            .business_hours
            .iter()
            .map(|b| b.warn)
            .chain(std::iter::once(wf.sla.warn))
            .min()
            .unwrap_or(wf.sla.warn);
        let gaps = stages.len().saturating_sub(1).max(1) as f64;
        let median_gap_ms = (tightest_warn.as_millis() as f64 * 0.25 / gaps).max(50.0);
        let first_path = topology
            .streams
            .get(wf.stages.first().map_or(0, |s| s.stream))
            .map(|s| s.correlation_id.to_string().to_lowercase())
            .unwrap_or_default();
        let id_prefix = if first_path.contains("rma") || first_path.contains("return") {
            "RMA"
        } else if first_path.contains("move") {
            "MOVE"
        } else if first_path.contains("invoice") {
            "INV"
        } else if first_path.contains("shipment_id") || first_path.contains("picking") {
            "WH-OUT"
        } else {
            "SO"
        };
        WorkflowModel {
            index,
            name: wf.name.clone(),
            stages,
            sla: wf.sla.clone(),
            window_ms: i64::try_from(wf.window.as_millis()).unwrap_or(i64::MAX),
            dimensions,
            id_prefix: id_prefix.to_string(),
            median_gap_ms,
        }
    }
}

/// Warn and critical tiers that apply to a correlation starting at `start_ms`: the first
/// business-hours window that contains the start (local time, DST-aware), else the base.
pub fn sla_tiers(sla: &Sla, start_ms: i64) -> (i64, i64, bool) {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if let Some(utc) = DateTime::<Utc>::from_timestamp_millis(start_ms) {
        for bh in &sla.business_hours {
            let local = utc.with_timezone(&bh.timezone);
            let (day, time) = (local.weekday(), local.time());
            let inside = if bh.from < bh.to {
                bh.days.contains(&day) && time >= bh.from && time < bh.to
            } else {
                // Past midnight: the early part belongs to the previous day's opening.
                (bh.days.contains(&day) && time >= bh.from)
                    || (bh.days.contains(&day.pred()) && time < bh.to)
            };
            if inside {
                return (ms(bh.warn), ms(bh.critical), true);
            }
        }
    }
    (ms(sla.warn), ms(sla.critical), false)
}

/// The outcome a monitor must report for a correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// Completed within the warn tier.
    None,
    /// Completed at or past warn, before critical.
    Warn,
    /// Completed at or past critical, within the window.
    Critical,
    /// Never completes, or completes only after the window.
    NeverArrived,
}

/// A fault as it applies to one workflow.
#[derive(Debug, Clone)]
pub struct AppliedFault {
    pub name: String,
    pub effect: Effect,
    /// Per stage of the workflow: whether the fault touches it.
    pub stages: Vec<bool>,
    pub signal: Option<super::scenario::SignalSpec>,
    /// Dimension and value a correlation must carry, if any.
    pub dimension: Option<(String, String)>,
    pub share: f64,
    /// Start and end of the phase the fault belongs to, epoch ms.
    pub window: (i64, i64),
}

#[derive(Debug, Clone, Copy)]
pub enum Effect {
    ErpDelay(Delay),
    IngestionDelay(Delay),
    Hold { burst_ms: i64 },
    Drop,
}

/// One stage of a planned correlation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStage {
    pub name: String,
    /// Business time written in the record (as a decoder reads it back).
    pub event_time: String,
    pub event_time_ms: i64,
    /// Kafka record timestamp.
    pub kafka_time_ms: i64,
    /// Never happens (a `drop` fault).
    pub dropped: bool,
    /// Handed to the sink.
    pub emitted: bool,
}

/// One signal of a planned correlation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedSignal {
    pub signal_type: String,
    pub fault: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    pub event_time_ms: i64,
    pub kafka_time_ms: i64,
    pub emitted: bool,
}

/// SLA tiers that apply to a correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaApplied {
    pub warn_ms: i64,
    pub critical_ms: i64,
    pub window_ms: i64,
    /// A business-hours override applied.
    pub business_hours: bool,
}

/// One line of the ground-truth file: everything about one correlation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub workflow: String,
    pub correlation_id: String,
    pub dimensions: BTreeMap<String, String>,
    /// Scenario phase the correlation started in.
    pub phase: String,
    pub start: String,
    pub start_ms: i64,
    pub stages: Vec<PlannedStage>,
    pub signals: Vec<PlannedSignal>,
    /// Faults that changed this correlation.
    pub faults: Vec<String>,
    /// How much the faults lengthened the business lag (last stage − first stage).
    pub fault_delay_ms: i64,
    /// A stage never happens.
    pub never_completes: bool,
    /// Business lag from the first to the last stage; `None` when it never completes.
    pub lag_ms: Option<i64>,
    pub sla: SlaApplied,
    pub expected: Expected,
    /// The run ended before every record of this correlation was produced.
    pub cut_off: bool,
    /// How long after its planned time the latest of this correlation's records was
    /// handed to the sink, on the wall clock (which a run falls behind when the machine
    /// is busy; the stages' Kafka times above are the planned ones); 0 when simulated.
    #[serde(default)]
    pub produced_late_ms: i64,
}

/// How close before its deadline a correlation's last record may be handed to the
/// producer and still count as produced in time: the producer's batching and a busy
/// broker add to it before the record is on Kafka, where synclag can first read it.
pub const PRODUCED_IN_TIME_MARGIN_MS: i64 = 250;

impl GroundTruth {
    /// No fault touched this correlation, yet its last record was handed to the producer
    /// at its warn deadline or later (or less than [`PRODUCED_IN_TIME_MARGIN_MS`] before
    /// it), typically because the run fell behind its plan on a busy machine. A breach
    /// on it is right: synclag cannot read a record before it is written. The planned
    /// lag says otherwise, so reports name this case instead of calling the breach a
    /// false alarm or hiding it.
    pub fn produced_at_deadline(&self) -> bool {
        self.faults.is_empty()
            && self.stages.last().is_some_and(|s| {
                s.kafka_time_ms + self.produced_late_ms + PRODUCED_IN_TIME_MARGIN_MS
                    >= self.start_ms + self.sla.warn_ms
            })
    }
}

/// A sample from a log-normal distribution with the given median and shape.
pub fn log_normal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    median * (sigma * z).exp()
}

/// Median time for a source record to reach Kafka, and for an ERP write to reach Kafka.
const INGEST_MEDIAN_MS: f64 = 400.0;
const OUTBOX_MEDIAN_MS: f64 = 250.0;
const GAP_SIGMA: f64 = 0.5;
/// Longest steady gap or transit, as a multiple of its median (the log-normal tail is cut
/// so that a fault-free chain never reaches the warn tier by chance).
const MAX_STEADY_FACTOR: f64 = 2.5;
const TRANSIT_SIGMA: f64 = 0.6;
const MAX_SIGNALS: u32 = 100;

/// Everything random about a correlation, drawn before any fault is applied, so the
/// same draws give the faulted and the undisturbed plan (their difference is the
/// fault's delay).
struct Draws {
    gaps: Vec<f64>,
    transit: Vec<f64>,
    bursts: Vec<f64>,
    jitter: Vec<f64>,
    signal_transit: f64,
}

struct Times {
    event: Vec<i64>,
    kafka: Vec<i64>,
    dropped_from: Option<usize>,
    /// For each fault that changed something: its name and the span it held things up.
    effects: Vec<(usize, i64, i64)>,
}

/// Plans a correlation of `wf` starting at `start_ms` with the faults selected for it.
pub fn plan(
    rng: &mut ChaCha8Rng,
    wf: &WorkflowModel,
    start_ms: i64,
    faults: &[&AppliedFault],
) -> Planned {
    let n = wf.stages.len();
    let draws = Draws {
        gaps: (0..n)
            // Clamped: steady operations stay well inside the SLA; lateness comes from faults.
            .map(|_| {
                log_normal(rng, wf.median_gap_ms, GAP_SIGMA)
                    .clamp(1.0, wf.median_gap_ms * MAX_STEADY_FACTOR)
            })
            .collect(),
        transit: wf
            .stages
            .iter()
            .map(|s| {
                let median = if s.erp {
                    OUTBOX_MEDIAN_MS
                } else {
                    INGEST_MEDIAN_MS
                };
                log_normal(rng, median, TRANSIT_SIGMA).clamp(1.0, median * MAX_STEADY_FACTOR)
            })
            .collect(),
        bursts: (0..n).map(|_| rng.random::<f64>()).collect(),
        jitter: faults
            .iter()
            .map(|_| 1.0 + 0.2 * rng.random::<f64>())
            .collect(),
        signal_transit: log_normal(rng, 200.0, TRANSIT_SIGMA).max(1.0),
    };
    let first_encoding = wf.stages.first().and_then(|s| s.time_encoding);
    let start_ms = first_encoding.map_or(start_ms, |e| e.round(start_ms));
    let (warn_ms, critical_ms, business_hours) = sla_tiers(&wf.sla, start_ms);
    let sla = SlaApplied {
        warn_ms,
        critical_ms,
        window_ms: wf.window_ms,
        business_hours,
    };
    let clean = times(wf, start_ms, &draws, &[], sla);
    let faulted = times(wf, start_ms, &draws, faults, sla);

    let lag = |t: &Times| match t.dropped_from {
        Some(_) => None,
        None => Some(t.event[n - 1] - t.event[0]),
    };
    let lag_ms = lag(&faulted);
    let fault_delay_ms = match (lag_ms, lag(&clean)) {
        (Some(a), Some(b)) => a - b,
        _ => 0,
    };
    let expected = match lag_ms {
        None => Expected::NeverArrived,
        Some(l) if l >= wf.window_ms => Expected::NeverArrived,
        Some(l) if l >= critical_ms => Expected::Critical,
        Some(l) if l >= warn_ms => Expected::Warn,
        Some(_) => Expected::None,
    };
    let stages = wf
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| PlannedStage {
            name: s.name.clone(),
            event_time: rfc3339(faulted.event[i]),
            event_time_ms: faulted.event[i],
            kafka_time_ms: faulted.kafka[i],
            dropped: faulted.dropped_from.is_some_and(|d| i >= d),
            emitted: false,
        })
        .collect();
    let mut signals = Vec::new();
    let mut fault_names = Vec::new();
    for &(fi, from, to) in &faulted.effects {
        let f = faults[fi];
        if !fault_names.contains(&f.name) {
            fault_names.push(f.name.clone());
        }
        let Some(spec) = &f.signal else { continue };
        let every = i64::try_from(spec.every.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let max = spec.max.clamp(1, MAX_SIGNALS);
        let mut t = from;
        for k in 0..max {
            if k > 0 && t >= to {
                break;
            }
            signals.push(PlannedSignal {
                signal_type: spec.kind.clone(),
                fault: f.name.clone(),
                connector: spec.connector.clone(),
                event_time_ms: t,
                kafka_time_ms: t + draws.signal_transit as i64,
                emitted: false,
            });
            t = t.saturating_add(every);
        }
    }
    Planned {
        stages,
        signals,
        faults: fault_names,
        fault_delay_ms,
        never_completes: faulted.dropped_from.is_some(),
        lag_ms,
        sla,
        expected,
    }
}

/// The planned part of a [`GroundTruth`].
#[derive(Debug, Clone)]
pub struct Planned {
    pub stages: Vec<PlannedStage>,
    pub signals: Vec<PlannedSignal>,
    pub faults: Vec<String>,
    pub fault_delay_ms: i64,
    pub never_completes: bool,
    pub lag_ms: Option<i64>,
    pub sla: SlaApplied,
    pub expected: Expected,
}

fn delay_ms(d: Delay, sla: SlaApplied, jitter: f64) -> i64 {
    let base = match d {
        Delay::Fixed(d) => d.as_millis() as f64,
        Delay::Sla { factor, tier } => {
            factor
                * match tier {
                    SlaTier::Warn => sla.warn_ms,
                    SlaTier::Critical => sla.critical_ms,
                } as f64
        }
    };
    (base * jitter) as i64
}

fn times(
    wf: &WorkflowModel,
    start_ms: i64,
    d: &Draws,
    faults: &[&AppliedFault],
    sla: SlaApplied,
) -> Times {
    let n = wf.stages.len();
    let mut t = Times {
        event: Vec::with_capacity(n),
        kafka: Vec::with_capacity(n),
        dropped_from: None,
        effects: Vec::new(),
    };
    for (i, stage) in wf.stages.iter().enumerate() {
        let gap = d.gaps[i] as i64;
        let mut event = match i {
            0 => start_ms,
            // The ERP can only write what has reached it through Kafka.
            _ if stage.erp => t.kafka[i - 1] + gap,
            _ => t.event[i - 1] + gap,
        };
        for (fi, f) in faults.iter().enumerate() {
            if let (Effect::ErpDelay(delay), true) = (f.effect, f.stages[i]) {
                let extra = delay_ms(delay, sla, d.jitter[fi]);
                t.effects.push((fi, event, event + extra));
                event += extra;
            }
        }
        if let Some(enc) = stage.time_encoding {
            event = enc.round(event);
        }
        let kafka_is_event = stage.time_encoding == Some(TimeEncoding::KafkaTimestamp);
        let mut kafka = if kafka_is_event {
            event
        } else {
            event + d.transit[i] as i64
        };
        for (fi, f) in faults.iter().enumerate() {
            if let (Effect::IngestionDelay(delay), true) = (f.effect, f.stages[i]) {
                let extra = delay_ms(delay, sla, d.jitter[fi]);
                t.effects.push((fi, kafka, kafka + extra));
                kafka += extra;
            }
        }
        // A correlation's records reach Kafka in stage order.
        if i > 0 {
            kafka = kafka.max(t.kafka[i - 1]);
        }
        for (fi, f) in faults.iter().enumerate() {
            if let (Effect::Hold { burst_ms }, true) = (f.effect, f.stages[i]) {
                let (from, to) = f.window;
                if kafka >= from && kafka < to {
                    let released = to + (d.bursts[i] * burst_ms as f64) as i64;
                    t.effects.push((fi, kafka, released));
                    kafka = released;
                }
            }
        }
        if kafka_is_event {
            event = kafka;
        }
        t.event.push(event);
        t.kafka.push(kafka);
        if t.dropped_from.is_none() {
            let dropping = faults
                .iter()
                .enumerate()
                .find(|(_, f)| matches!(f.effect, Effect::Drop) && f.stages[i]);
            if let Some((fi, f)) = dropping {
                t.dropped_from = Some(i);
                let from = if i > 0 { t.kafka[i - 1] } else { event };
                let span = f.signal.as_ref().map_or(0, |s| {
                    i64::try_from(s.every.as_millis().saturating_mul(u128::from(s.max)))
                        .unwrap_or(i64::MAX)
                });
                t.effects.push((fi, from, from.saturating_add(span)));
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn log_normal_has_the_requested_median() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut xs: Vec<f64> = (0..20_001)
            .map(|_| log_normal(&mut rng, 1000.0, 0.5))
            .collect();
        xs.sort_by(f64::total_cmp);
        let median = xs[10_000];
        assert!((900.0..1100.0).contains(&median), "median {median}");
        assert!(xs.iter().all(|x| *x > 0.0));
    }

    #[test]
    fn value_sets_draw_only_their_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let set = ValueSet::new("carrier", None);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let v = set.draw(&mut rng);
            assert!(set.values.contains(&v));
            seen.insert(v);
        }
        assert_eq!(seen.len(), 5, "every carrier shows up: {seen:?}");
        assert_eq!(ValueSet::new("dock", None).values[0], "dock-a");
    }
}
