//! Scenarios: a timeline of phases, each with a rate and the faults active during it.
//!
//! The built-in scenarios are YAML documents in the same format a user writes (see
//! `scenarios/drill.yaml`), parsed by the same code, so a file can copy and adapt them.
//!
//! ```yaml
//! name: drill
//! rate: 20                      # correlations started per second, all workflows together
//! weights: { returns: 0.2 }     # relative share of each workflow (default 1)
//! values: { carrier: [DHL, UPS] }   # dimension values to draw from (defaults exist)
//! phases:
//!   - name: steady
//!     duration: 5m
//!   - name: slowdown
//!     duration: 15m
//!     rate: 30                  # this phase only
//!     faults:
//!       - name: dhl_slow
//!         kind: erp_delay       # erp_delay | ingestion_delay | hold | drop | surge
//!         dimension: carrier
//!         value: DHL
//!         delay: 1.2x critical  # or a duration: 45m
//!         share: 1.0
//!         signal: { kind: carrier_api_throttled, every: 5m, max: 6, connector: carrier-dhl }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration::parse_duration;

/// A timeline of phases; the simulator walks it from the first phase to the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    /// Correlations started per second over all workflows, unless a phase sets its own.
    pub rate: f64,
    /// Relative share of each workflow in the arrivals; workflows not named weigh 1.
    pub weights: BTreeMap<String, f64>,
    /// Values drawn per dimension name; overrides the built-in realistic sets.
    pub values: BTreeMap<String, Vec<String>>,
    pub phases: Vec<Phase>,
}

/// One stretch of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    pub duration: Duration,
    /// Correlations per second in this phase; `None` uses [`Scenario::rate`].
    pub rate: Option<f64>,
    pub faults: Vec<Fault>,
}

/// Something that goes wrong during a phase, for the correlations it targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub kind: FaultKind,
    pub target: Target,
    /// Share (0..=1) of the targeted correlations that are affected.
    pub share: f64,
    /// Error or throttling signals emitted for every affected correlation.
    pub signal: Option<SignalSpec>,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// The ERP writes the selected stages late (middleware/ERP processing delay): the
    /// stage's business time moves. Applies to correlations started during the phase.
    ErpDelay { delay: Delay },
    /// Source records reach Kafka late (partner/ingestion delay): the Kafka time moves,
    /// the business time does not. Applies to correlations started during the phase.
    IngestionDelay { delay: Delay },
    /// Records of the selected stages due on Kafka during the phase are held back and
    /// released in a burst (spread over `burst`) when the phase ends — an outage.
    Hold { burst: Duration },
    /// The selected stage (and every later one) never happens: the correlation never
    /// completes. Applies to correlations started during the phase.
    Drop,
    /// Extra arrivals: the targeted workflows start `factor` times as many correlations
    /// during the phase; the extra ones carry the fault's dimension value when it has one.
    Surge { factor: f64 },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::ErpDelay { .. } => "erp_delay",
            FaultKind::IngestionDelay { .. } => "ingestion_delay",
            FaultKind::Hold { .. } => "hold",
            FaultKind::Drop => "drop",
            FaultKind::Surge { .. } => "surge",
        }
    }
}

/// How much delay a fault adds. Each affected correlation gets between 1.0× and 1.2× of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    Fixed(Duration),
    /// A multiple of the SLA tier that applies to the correlation (business hours included),
    /// so one fault can push workflows with very different SLAs past the same tier.
    Sla {
        factor: f64,
        tier: SlaTier,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaTier {
    Warn,
    Critical,
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delay::Fixed(d) => f.write_str(&crate::config::duration::format_duration(*d)),
            Delay::Sla { factor, tier } => write!(
                f,
                "{factor}x {}",
                match tier {
                    SlaTier::Warn => "warn",
                    SlaTier::Critical => "critical",
                }
            ),
        }
    }
}

/// Which correlations and stages a fault touches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    /// Workflow names; empty means every workflow (that carries `dimension`, if set).
    pub workflows: Vec<String>,
    /// Only correlations with this dimension value, e.g. `("carrier", "DHL")`; for a
    /// surge, the value every extra correlation carries.
    pub dimension: Option<(String, String)>,
    pub stages: StageSelector,
}

/// Which stages of a targeted workflow a fault applies to.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StageSelector {
    /// `erp` for delays on the ERP side and drops; for ingestion delays and holds, the
    /// source stages on streams that carry the fault's dimension (all source stages when
    /// the fault has no dimension) — a warehouse outage holds warehouse events, not
    /// carrier events.
    #[default]
    Default,
    /// Stages on streams whose time is the ERP's (outbox, CDC).
    Erp,
    /// Every stage that is not an ERP stage.
    Source,
    /// These stages, by name.
    Named(Vec<String>),
}

/// Signals emitted for an affected correlation while its fault holds it up.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSpec {
    /// The signal's event type, e.g. `carrier_api_throttled`.
    pub kind: String,
    /// One signal at the start of the hold-up, then one every `every` while it lasts.
    pub every: Duration,
    /// At most this many signals per correlation.
    pub max: u32,
    /// Value of a `connector` dimension on the signals stream; by default derived from
    /// the signal kind and the fault's dimension value.
    pub connector: Option<String>,
}

/// A scenario document that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scenario {source_name}: {}", .problems.join("; "))]
pub struct ScenarioError {
    /// File name or built-in scenario name.
    pub source_name: String,
    pub problems: Vec<String>,
}

// ---- the document as written

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    rate: Option<f64>,
    #[serde(default)]
    weights: BTreeMap<String, f64>,
    #[serde(default)]
    values: BTreeMap<String, Vec<String>>,
    phases: Vec<RawPhase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: String,
    duration: String,
    rate: Option<f64>,
    #[serde(default)]
    faults: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    name: Option<String>,
    kind: String,
    #[serde(default)]
    workflows: Vec<String>,
    dimension: Option<String>,
    value: Option<String>,
    stages: Option<RawStages>,
    delay: Option<String>,
    burst: Option<String>,
    factor: Option<f64>,
    share: Option<f64>,
    signal: Option<RawSignal>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStages {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    kind: String,
    every: Option<String>,
    max: Option<u32>,
    connector: Option<String>,
}

/// Default correlations per second when a scenario names none.
pub const DEFAULT_RATE: f64 = 10.0;
const DEFAULT_BURST: Duration = Duration::from_secs(30);
const DEFAULT_SIGNAL_EVERY: Duration = Duration::from_secs(120);
const DEFAULT_SIGNAL_MAX: u32 = 5;

impl Scenario {
    /// Parses a scenario document, listing every problem at once.
    pub fn from_yaml_str(source_name: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let fail = |problems| ScenarioError {
            source_name: source_name.to_string(),
            problems,
        };
        let raw: RawScenario = serde_norway::from_str(text)
            .map_err(|e| fail(vec![format!("not a valid scenario document: {e}")]))?;
        let mut problems = Vec::new();
        let scenario = convert(raw, source_name, &mut problems);
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(fail(problems))
        }
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            source_name: name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::from_yaml_str(&name, &text)
    }

    /// A built-in scenario by name, see [`BUILTIN`].
    pub fn builtin(name: &str) -> Option<Result<Scenario, ScenarioError>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::from_yaml_str(n, text))
    }

    /// A built-in scenario name, or else a scenario file.
    pub fn resolve(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some(s) = Self::builtin(name_or_path) {
            return s;
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            return Self::load(path);
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        Err(ScenarioError {
            source_name: name_or_path.to_string(),
            problems: vec![format!(
                "neither a built-in scenario ({}) nor an existing file",
                names.join(", ")
            )],
        })
    }

    /// Sum of the phase durations.
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }
}

fn convert(raw: RawScenario, source_name: &str, problems: &mut Vec<String>) -> Scenario {
    let rate = raw.rate.unwrap_or(DEFAULT_RATE);
    if !(rate.is_finite() && rate >= 0.0) {
        problems.push(format!(
            "rate: `{rate}` must be a non-negative number of correlations per second"
        ));
    }
    for (w, weight) in &raw.weights {
        if !(weight.is_finite() && *weight >= 0.0) {
            problems.push(format!(
                "weights.{w}: `{weight}` must be a non-negative number"
            ));
        }
    }
    for (d, vals) in &raw.values {
        if vals.is_empty() {
            problems.push(format!("values.{d}: needs at least one value"));
        }
    }
    if raw.phases.is_empty() {
        problems.push("phases: needs at least one phase".into());
    }
    let mut phases = Vec::new();
    for (i, p) in raw.phases.into_iter().enumerate() {
        let at = format!("phases[{i}]");
        let duration = match parse_duration(&p.duration) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("{at}.duration: must be longer than zero"));
                Duration::ZERO
            }
            Err(e) => {
                problems.push(format!("{at}.duration: {e}"));
                Duration::ZERO
            }
        };
        if let Some(r) = p.rate {
            if !(r.is_finite() && r >= 0.0) {
                problems.push(format!("{at}.rate: `{r}` must be a non-negative number"));
            }
        }
        let mut faults = Vec::new();
        for (j, f) in p.faults.into_iter().enumerate() {
            if let Some(fault) = convert_fault(f, &format!("{at}.faults[{j}]"), problems) {
                faults.push(fault);
            }
        }
        phases.push(Phase {
            name: p.name,
            duration,
            rate: p.rate,
            faults,
        });
    }
    Scenario {
        name: raw.name.unwrap_or_else(|| source_name.to_string()),
        description: raw.description,
        rate,
        weights: raw.weights,
        values: raw.values,
        phases,
    }
}

fn convert_fault(f: RawFault, at: &str, problems: &mut Vec<String>) -> Option<Fault> {
    let before = problems.len();
    let kind_name = f.kind.clone();
    let unused = |problems: &mut Vec<String>, field: &str, present: bool| {
        if present {
            problems.push(format!("{at}.{field}: not used by a `{kind_name}` fault"));
        }
    };
    let kind = match f.kind.as_str() {
        "erp_delay" | "ingestion_delay" => {
            unused(problems, "burst", f.burst.is_some());
            unused(problems, "factor", f.factor.is_some());
            let delay = match f.delay.as_deref().map(parse_delay) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    problems.push(format!("{at}.delay: {e}"));
                    None
                }
                None => {
                    problems.push(format!("{at}.delay: required for a `{}` fault", f.kind));
                    None
                }
            };
            let delay = delay.unwrap_or(Delay::Fixed(Duration::ZERO));
            if f.kind == "erp_delay" {
                FaultKind::ErpDelay { delay }
            } else {
                FaultKind::IngestionDelay { delay }
            }
        }
        "hold" => {
            unused(problems, "delay", f.delay.is_some());
            unused(problems, "factor", f.factor.is_some());
            let burst = match f.burst.as_deref().map(parse_duration) {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    problems.push(format!("{at}.burst: {e}"));
                    DEFAULT_BURST
                }
                None => DEFAULT_BURST,
            };
            FaultKind::Hold { burst }
        }
        "drop" => {
            unused(problems, "delay", f.delay.is_some());
            unused(problems, "burst", f.burst.is_some());
            unused(problems, "factor", f.factor.is_some());
            FaultKind::Drop
        }
        "surge" => {
            unused(problems, "delay", f.delay.is_some());
            unused(problems, "burst", f.burst.is_some());
            unused(problems, "stages", f.stages.is_some());
            unused(problems, "signal", f.signal.is_some());
            unused(problems, "share", f.share.is_some());
            let factor = f.factor.unwrap_or(2.0);
            if !(factor.is_finite() && factor >= 1.0) {
                problems.push(format!("{at}.factor: `{factor}` must be at least 1"));
            }
            FaultKind::Surge { factor }
        }
        other => {
            problems.push(format!(
                "{at}.kind: unknown fault kind `{other}`; expected erp_delay, ingestion_delay, hold, drop or surge"
            ));
            return None;
        }
    };
    let dimension = match (f.dimension, f.value) {
        (Some(d), Some(v)) => Some((d, v)),
        (None, None) => None,
        (Some(d), None) => {
            problems.push(format!(
                "{at}.value: `dimension: {d}` needs the value to match"
            ));
            None
        }
        (None, Some(v)) => {
            problems.push(format!(
                "{at}.dimension: `value: {v}` needs the dimension name"
            ));
            None
        }
    };
    let stages = match f.stages {
        None => StageSelector::Default,
        Some(RawStages::One(s)) => match s.as_str() {
            "erp" => StageSelector::Erp,
            "source" => StageSelector::Source,
            _ => StageSelector::Named(vec![s]),
        },
        Some(RawStages::Many(v)) if v.is_empty() => {
            problems.push(format!("{at}.stages: names no stage"));
            StageSelector::Default
        }
        Some(RawStages::Many(v)) => StageSelector::Named(v),
    };
    let share = f.share.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&share) {
        problems.push(format!("{at}.share: `{share}` must be between 0 and 1"));
    }
    let signal = f.signal.map(|s| {
        let every = match s.every.as_deref().map(parse_duration) {
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                problems.push(format!("{at}.signal.every: must be longer than zero"));
                DEFAULT_SIGNAL_EVERY
            }
            Some(Err(e)) => {
                problems.push(format!("{at}.signal.every: {e}"));
                DEFAULT_SIGNAL_EVERY
            }
            None => DEFAULT_SIGNAL_EVERY,
        };
        let max = s.max.unwrap_or(DEFAULT_SIGNAL_MAX);
        if max == 0 {
            problems.push(format!("{at}.signal.max: must be at least 1"));
        }
        SignalSpec {
            kind: s.kind,
            every,
            max,
            connector: s.connector,
        }
    });
    if problems.len() > before {
        return None;
    }
    Some(Fault {
        name: f.name.unwrap_or_else(|| kind.name().to_string()),
        kind,
        target: Target {
            workflows: f.workflows,
            dimension,
            stages,
        },
        share,
        signal,
    })
}

/// `45m` or `1.5x critical` / `2x warn`.
pub fn parse_delay(text: &str) -> Result<Delay, String> {
    let t = text.trim();
    if let Some((factor, tier)) = t.split_once('x') {
        let tier = match tier.trim() {
            "warn" => Some(SlaTier::Warn),
            "critical" => Some(SlaTier::Critical),
            _ => None,
        };
        if let (Ok(factor), Some(tier)) = (factor.trim().parse::<f64>(), tier) {
            if !(factor.is_finite() && factor >= 0.0) {
                return Err(format!("`{t}`: the factor must be a non-negative number"));
            }
            return Ok(Delay::Sla { factor, tier });
        }
    }
    parse_duration(t)
        .map(Delay::Fixed)
        .map_err(|e| format!("{e}; or write a multiple of an SLA tier such as `1.5x critical`"))
}

/// The built-in scenarios: name and document.
pub const BUILTIN: &[(&str, &str)] = &[
    ("steady", STEADY),
    ("carrier_slowdown", CARRIER_SLOWDOWN),
    ("warehouse_outage", WAREHOUSE_OUTAGE),
    ("order_surge", ORDER_SURGE),
    ("odoo_validation_failures", ODOO_VALIDATION_FAILURES),
    ("partner_delay", PARTNER_DELAY),
    ("demo", DEMO),
];

// Realistic mix: most traffic is orders and their fulfilment, returns are rare.
const STEADY: &str = r#"
name: steady
description: Normal operations; every stage well within its SLA.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 10m }
"#;

const CARRIER_SLOWDOWN: &str = r#"
name: carrier_slowdown
description: >
  During the afternoon dispatch window DHL's API throttles the carrier connector: DHL
  shipment and proof-of-delivery updates reach Odoo past the critical SLA.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: carrier_slowdown
    duration: 15m
    faults:
      - name: carrier_slowdown
        kind: erp_delay
        dimension: carrier
        value: DHL
        delay: 1.2x critical
        signal: { kind: carrier_api_throttled, every: 5m, max: 6, connector: carrier-dhl }
  - { name: recovery, duration: 5m }
"#;

const WAREHOUSE_OUTAGE: &str = r#"
name: warehouse_outage
description: >
  The WMS bridge of the Liège warehouse stops confirming picks and dispatches for
  twelve minutes (orders are still released), then delivers everything it queued in
  one burst.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: warehouse_outage
    duration: 12m
    faults:
      - { name: warehouse_outage, kind: hold, workflows: [shipment_status], dimension: warehouse, value: WH-LGG, stages: [picked, dispatched], burst: 30s }
  - { name: recovery, duration: 5m }
"#;

const ORDER_SURGE: &str = r#"
name: order_surge
description: A marketing campaign brings five times the usual order rate.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: order_surge
    duration: 10m
    faults:
      - { name: order_surge, kind: surge, workflows: [order_import], factor: 5 }
  - { name: recovery, duration: 5m }
"#;

const ODOO_VALIDATION_FAILURES: &str = r#"
name: odoo_validation_failures
description: >
  A broken product mapping makes Odoo reject a share of imports; the connector retries
  them until they pass, and a few never do.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: odoo_validation_failures
    duration: 10m
    faults:
      - name: odoo_validation_retry
        kind: erp_delay
        delay: 1.5x warn
        share: 0.25
        signal: { kind: odoo_validation_failed, every: 90s, max: 5, connector: odoo-connector }
      - name: odoo_validation_rejected
        kind: drop
        share: 0.02
        signal: { kind: odoo_validation_failed, every: 90s, max: 5, connector: odoo-connector }
  - { name: recovery, duration: 5m }
"#;

const PARTNER_DELAY: &str = r#"
name: partner_delay
description: The marketplace forwards its orders and returns late; Odoo is not the problem.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: partner_delay
    duration: 10m
    faults:
      - { name: partner_delay, kind: ingestion_delay, dimension: channel, value: marketplace, delay: 1.5x warn, share: 0.6 }
  - { name: recovery, duration: 5m }
"#;

const DEMO: &str = r#"
name: demo
description: Steady traffic, a carrier slowdown, recovery, a warehouse outage, then an order surge.
rate: 10
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.15 }
phases:
  - { name: steady, duration: 3m }
  - name: carrier_slowdown
    duration: 5m
    faults:
      - name: carrier_slowdown
        kind: erp_delay
        dimension: carrier
        value: DHL
        delay: 1.2x critical
        signal: { kind: carrier_api_throttled, every: 5m, max: 6, connector: carrier-dhl }
  - { name: recovery, duration: 3m }
  - name: warehouse_outage
    duration: 5m
    faults:
      - { name: warehouse_outage, kind: hold, workflows: [shipment_status], dimension: warehouse, value: WH-LGG, stages: [picked, dispatched], burst: 30s }
  - name: order_surge
    duration: 5m
    faults:
      - { name: order_surge, kind: surge, workflows: [order_import], factor: 5 }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        for (name, _) in BUILTIN {
            let s = Scenario::builtin(name)
                .expect("listed")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
            assert!(!s.phases.is_empty());
        }
    }

    #[test]
    fn shipped_drill_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/drill.yaml");
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.phases.len() >= 2);
        assert!(s.phases.iter().any(|p| !p.faults.is_empty()));
    }

    #[test]
    fn delays_parse_as_durations_or_sla_multiples() {
        assert_eq!(
            parse_delay("45m"),
            Ok(Delay::Fixed(Duration::from_secs(2700)))
        );
        assert_eq!(
            parse_delay("1.5x critical"),
            Ok(Delay::Sla {
                factor: 1.5,
                tier: SlaTier::Critical
            })
        );
        assert_eq!(
            parse_delay("2x warn"),
            Ok(Delay::Sla {
                factor: 2.0,
                tier: SlaTier::Warn
            })
        );
        assert!(parse_delay("2x lunch").is_err());
        assert!(parse_delay("soon").is_err());
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = r#"
phases:
  - name: a
    duration: 0s
    faults:
      - { kind: erp_delay }
      - { kind: hold, dimension: warehouse }
      - { kind: explode }
      - { kind: drop, share: 1.5 }
"#;
        let err = Scenario::from_yaml_str("t.yaml", text).expect_err("invalid");
        let all = err.problems.join("\n");
        assert!(all.contains("phases[0].duration"), "{all}");
        assert!(all.contains("phases[0].faults[0].delay"), "{all}");
        assert!(all.contains("phases[0].faults[1].value"), "{all}");
        assert!(all.contains("phases[0].faults[2].kind"), "{all}");
        assert!(all.contains("phases[0].faults[3].share"), "{all}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Scenario::from_yaml_str("t.yaml", "phases: []\nspeed: 3\n").expect_err("invalid");
        assert!(err.problems[0].contains("speed"), "{err}");
    }
}
