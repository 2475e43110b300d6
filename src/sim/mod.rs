//! The simulator: realistic logistics and Odoo outbox traffic, with injected faults, for
//! demos, load tests and the periodic drills an operations team should run.
//!
//! - [`scenario`] — the timeline: phases with durations, rates and faults; built-ins and files.
//! - [`plan`]     — one correlation's walk through its stages, faults applied, its ground truth.
//! - [`encode`]   — a stage or signal as a record of its stream's format, at the configured paths.
//! - [`engine`]   — [`Simulator`]: arrivals over the timeline, records due by a given time.
//! - [`clock`]    — real or simulated time.
//! - [`sink`]     — where records go: Kafka (+ schema registry), or memory.
//! - [`run`]      — the loop driving a simulator with a clock into a sink.
//! - [`batch`]    — runs of batch workflows, clean or late, missing, partial, spiking, unreconciled.
//!
//! Everything is decided by the topology, the scenario and the seed: the same seed gives
//! the same records and the same ground truth, whatever the clock.

pub mod batch;
pub mod clock;
pub mod encode;
pub mod engine;
pub mod plan;
pub mod run;
pub mod scenario;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

pub use clock::{Clock, RealClock, SimulatedClock};
pub use encode::{Origin, OriginKind, SimRecord, TimeEncoding};
pub use engine::{SimError, SimOptions, Simulator};
pub use plan::{Expected, GroundTruth};
pub use run::{run, run_until, RunOptions, RunSummary};
pub use scenario::{Fault, FaultKind, Phase, Scenario};
pub use sink::{KafkaSink, MemorySink, RecordSink, RegistrySettings, SinkStats};

use crate::config::Topology;

/// Which clock `synclag simulate` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockKind {
    /// Records are produced when their time comes.
    Real,
    /// Time jumps ahead: the whole scenario is produced as fast as Kafka takes it, with
    /// event and record timestamps following the simulated clock.
    Simulated,
}

/// Flags of `synclag simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Path to topology.yaml.
    #[arg(long, short, default_value = "topology.yaml")]
    pub config: PathBuf,
    /// Built-in scenario (steady, carrier_slowdown, warehouse_outage, order_surge,
    /// odoo_validation_failures, partner_delay, demo), a batch scenario (batch_clean,
    /// batch_late_run, batch_missing_run, batch_partial_run, batch_volume_spike,
    /// batch_unreconciled, batch_faults: runs of every batch workflow, real time), or a
    /// scenario YAML file.
    #[arg(long, default_value = "steady")]
    pub scenario: String,
    /// Correlations started per second over all workflows (`20` or `20/s`); phase rates
    /// of the scenario scale with it.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How long to run (`90s`, `10m`, `2h`); default: the scenario's length.
    #[arg(long, value_parser = crate::config::duration::parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the random generator; the same seed gives the same traffic.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write one JSON line per correlation: stages, faults, expected SLA outcome.
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    /// Kafka bootstrap servers, instead of the topology's.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Real time, or simulated time produced as fast as possible.
    #[arg(long, value_enum, default_value_t = ClockKind::Real)]
    pub clock: ClockKind,
    /// Start of the scenario (RFC 3339) on the simulated clock; default now.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// After the scenario ends, keep producing until every started correlation is complete.
    #[arg(long)]
    pub drain: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let n = t.strip_suffix("/s").unwrap_or(t).trim();
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "`{text}` is not a rate; write correlations per second like `20` or `20/s`"
        )),
    }
}

/// Kafka producer properties and registry settings for a topology.
pub fn kafka_sink_for(
    topology: &Topology,
    bootstrap: Option<&str>,
) -> Result<KafkaSink, sink::SinkError> {
    let mut props: Vec<(String, String)> = topology
        .kafka
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.push((
        "bootstrap.servers".into(),
        bootstrap
            .unwrap_or(&topology.kafka.bootstrap_servers)
            .to_string(),
    ));
    let registry = topology.registry.as_ref().map(|r| RegistrySettings {
        url: r.url.clone(),
        timeout: r.timeout,
        basic_auth: r.username.as_ref().map(|u| {
            (
                u.clone(),
                r.password_env.as_ref().and_then(|e| std::env::var(e).ok()),
            )
        }),
    });
    KafkaSink::new(&props, registry)
}

/// Runs `synclag simulate`.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let topology = Topology::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(batch) = batch::BatchScenario::builtin(&args.scenario) {
        return simulate_batches(&topology, &batch, &args).await;
    }
    let scenario = Scenario::resolve(&args.scenario)?;
    let seed = args
        .seed
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64);
    let start = match (args.clock, args.start) {
        (ClockKind::Simulated, Some(s)) => s,
        (ClockKind::Real, Some(_)) => anyhow::bail!("--start needs --clock simulated"),
        (_, None) => Utc::now(),
    };
    let options = SimOptions {
        seed,
        start,
        duration: args.duration,
        rate: args.rate,
        drain: args.drain,
    };
    let mut sim = Simulator::new(&topology, &scenario, &options)?;
    let mut sink = kafka_sink_for(&topology, args.bootstrap.as_deref())?;
    let mut truth_file = match &args.ground_truth {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    eprintln!(
        "simulate {}: {} phase(s), {} to {}, seed {seed}, {} clock",
        scenario.name,
        scenario.phases.len(),
        sim.start().to_rfc3339(),
        sim.end().to_rfc3339(),
        match args.clock {
            ClockKind::Real => "real",
            ClockKind::Simulated => "simulated",
        }
    );
    let truth: Option<&mut (dyn std::io::Write + Send)> = match truth_file.as_mut() {
        Some(w) => Some(w),
        None => None,
    };
    let summary = match args.clock {
        ClockKind::Real => {
            run(
                &mut sim,
                &RealClock,
                &mut sink,
                truth,
                &RunOptions::default(),
            )
            .await?
        }
        ClockKind::Simulated => {
            let clock = SimulatedClock::new(start);
            let opts = RunOptions {
                step: Duration::from_secs(1),
                progress: true,
            };
            run(&mut sim, &clock, &mut sink, truth, &opts).await?
        }
    };
    eprintln!(
        "simulate {}: {} correlations, {} records ({} signals), {} produced, {} errors{}",
        scenario.name,
        summary.correlations,
        summary.records,
        summary.signals,
        summary.sink.produced,
        summary.sink.errors,
        match &args.ground_truth {
            Some(p) => format!(", ground truth in {}", p.display()),
            None => String::new(),
        }
    );
    if summary.sink.errors > 0 {
        anyhow::bail!(
            "{} records were not delivered{}",
            summary.sink.errors,
            sink.last_error()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// `synclag simulate --scenario batch_*`: the scenario's runs for every batch workflow of
/// the topology, from its next scheduled time on, each record sent when its time comes.
async fn simulate_batches(
    topology: &Topology,
    scenario: &batch::BatchScenario,
    args: &SimulateArgs,
) -> anyhow::Result<()> {
    if args.clock != ClockKind::Real {
        anyhow::bail!("batch scenarios run on the real clock (their runs follow the schedule)");
    }
    if topology.batches.is_empty() {
        anyhow::bail!("the topology has no batch workflows (`batches:`)");
    }
    let now = Utc::now().timestamp_millis();
    let mut runs = Vec::new();
    for b in &topology.batches {
        runs.extend(batch::plan_runs(topology, &b.name, scenario, now)?);
    }
    for r in &runs {
        eprintln!(
            "simulate {}: {} run at {} — {} ({} Kafka records: data, trailer, ERP matches)",
            scenario.name,
            r.workflow,
            chrono::DateTime::from_timestamp_millis(r.scheduled_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            r.fault.name(),
            r.records.len()
        );
    }
    let mut sink = kafka_sink_for(topology, args.bootstrap.as_deref())?;
    let sent = batch::produce_runs(&runs, &mut sink).await?;
    eprintln!("simulate {}: {sent} records sent", scenario.name);
    Ok(())
}
