//! `synclag demo`: the whole product in one command, nothing to install.
//!
//! It starts an in-process Kafka (librdkafka's mock cluster), runs the simulator's
//! `demo` scenario (steady → carrier slowdown → recovery → warehouse outage → order
//! surge) squeezed into `--duration`, and runs the real service on top of it, serving
//! `/metrics` and the API on localhost. A terminal view, read from the service's own
//! JSON API, refreshes every second; at the end a summary says, for each injected
//! fault, whether synclag detected it, how many seconds after it began, on which
//! workflow and dimension. Detection is judged from the breach topic, exactly as an
//! alerting system would see it.

use crate::config::duration::millis;
use crate::config::Topology;
use crate::emit::events::BreachEvent;
use crate::service::wall_ms;
use crate::sim::{self, FaultKind, RealClock, RunOptions, Scenario, SimOptions, Simulator};
use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The demo topology (short SLAs, JSON everywhere).
pub const DEMO_TOPOLOGY: &str = include_str!("../demo/topology.yaml");

/// Flags of `synclag demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long the scripted scenario runs; its phases are scaled to fit.
    #[arg(long, default_value = "3m", value_parser = crate::config::duration::parse_duration)]
    pub duration: Duration,
    /// Address of `/metrics` and the API.
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: SocketAddr,
    /// Correlations started per second over all workflows.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seed of the simulator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// A topology to use instead of the built-in demo topology.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Plain progress lines instead of the refreshing view (default when not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Write every breach event seen, as JSON lines with the wall time it arrived.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Write the simulator's ground truth (one JSON line per correlation).
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    /// Write the summary as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What happened to one injected fault.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultReport {
    pub phase: String,
    pub fault: String,
    pub kind: String,
    pub target: String,
    pub detected: bool,
    /// Seconds from the start of the fault's phase to the first evidence.
    pub after_seconds: Option<f64>,
    pub workflow: Option<String>,
    pub dimension: Option<String>,
    pub how: Option<String>,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub faults: Vec<FaultReport>,
    pub breaches: usize,
    /// Breach events (warn or critical) by the phase their correlation started in.
    pub breaches_by_phase: BTreeMap<String, usize>,
    pub records_produced: u64,
}

/// Scales every phase so the scenario lasts `total`.
pub fn squeeze(mut scenario: Scenario, total: Duration) -> Scenario {
    let length: Duration = scenario.phases.iter().map(|p| p.duration).sum();
    if length.is_zero() {
        return scenario;
    }
    let factor = total.as_secs_f64() / length.as_secs_f64();
    for p in &mut scenario.phases {
        p.duration = p.duration.mul_f64(factor);
        for f in &mut p.faults {
            if let FaultKind::Hold { burst } = &mut f.kind {
                *burst = burst.mul_f64(factor).max(Duration::from_secs(1));
            }
            // Retry signals keep their cadence relative to the phase.
            if let Some(signal) = &mut f.signal {
                signal.every = signal.every.mul_f64(factor).max(Duration::from_secs(1));
            }
        }
    }
    scenario
}

/// Runs the demo; returns its report (also printed).
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let mut topology = match &args.config {
        Some(p) => Topology::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Topology::from_yaml_str("demo/topology.yaml", DEMO_TOPOLOGY, std::env::vars())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    if topology.registry.is_some() {
        anyhow::bail!("the demo runs without a schema registry; use a topology without `registry:` and without Avro streams");
    }
    // The in-process cluster lives as long as this function.
    let mock = MockCluster::new(1).context("cannot start the in-process Kafka cluster")?;
    for s in &topology.streams {
        mock.create_topic(&s.topic, 3, 1)
            .with_context(|| format!("create topic {}", s.topic))?;
    }
    let o = &topology.outputs;
    for t in [
        &o.breaches_topic,
        &o.lag_topic,
        &o.backlog_topic,
        &o.dead_letter_topic,
    ] {
        mock.create_topic(t, 1, 1)
            .with_context(|| format!("create topic {t}"))?;
    }
    topology.kafka.bootstrap_servers = mock.bootstrap_servers();
    topology.kafka.properties.retain(|k, _| {
        !k.starts_with("security.") && !k.starts_with("sasl.") && !k.starts_with("ssl.")
    });
    topology.service.http_listen = args.listen;

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crate::service::run(topology.clone(), shutdown.clone()));

    // Watch the breach topic like an alerting system would.
    let breaches: Arc<Mutex<Vec<(i64, BreachEvent)>>> = Arc::default();
    let watcher = spawn_breach_watcher(&topology, breaches.clone(), shutdown.clone())?;

    let scenario = squeeze(
        Scenario::builtin("demo").context("the demo scenario is built in")??,
        args.duration,
    );
    let start = chrono::Utc::now();
    let options = SimOptions {
        seed: args.seed,
        start,
        duration: None,
        rate: Some(args.rate),
        drain: false,
    };
    let mut simulator = Simulator::new(&topology, &scenario, &options)?;
    let mut sink = sim::kafka_sink_for(&topology, None)?;
    let mut truth_file = match &args.ground_truth {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let producer = tokio::spawn(async move {
        let opts = RunOptions {
            step: Duration::from_millis(50),
            progress: false,
        };
        let truth: Option<&mut (dyn Write + Send)> = match truth_file.as_mut() {
            Some(w) => Some(w),
            None => None,
        };
        sim::run(&mut simulator, &RealClock, &mut sink, truth, &opts).await
    });

    // Phase boundaries in wall time.
    let mut phases = Vec::new();
    let mut at = start.timestamp_millis();
    for p in &scenario.phases {
        let end = at.saturating_add(millis(p.duration));
        phases.push((p.clone(), at, end));
        at = end;
    }
    let scenario_end = at;
    // After the last phase, leave time for the slowest SLA to expire.
    let grace = topology
        .workflows
        .iter()
        .map(|w| w.sla.critical)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(5);
    let stop_at = scenario_end.saturating_add(millis(grace));

    let plain = args.plain || !std::io::stdout().is_terminal();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let api = format!("http://{}", args.listen);
    let mut rates = RateTracker::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = wall_ms();
        let status: Option<serde_json::Value> =
            match client.get(format!("{api}/api/v1/workflows")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
        let phase = phases
            .iter()
            .find(|(_, s, e)| now >= *s && now < *e)
            .map(|(p, _, _)| p.name.clone());
        if let Some(s) = &status {
            rates.observe(now, s);
            let n = breaches.lock().map(|b| b.len()).unwrap_or(0);
            render(
                s,
                &rates,
                phase.as_deref().unwrap_or("draining"),
                now - start.timestamp_millis(),
                n,
                plain,
            );
        }
        if now >= stop_at || service.is_finished() {
            break;
        }
    }
    let produced = match producer.await {
        Ok(Ok(summary)) => summary.sink.produced,
        Ok(Err(e)) => return Err(anyhow::anyhow!("simulator failed: {e}")),
        Err(e) => return Err(anyhow::anyhow!("simulator task failed: {e}")),
    };
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), watcher).await;
    match tokio::time::timeout(Duration::from_secs(30), service).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(anyhow::anyhow!("service failed: {e}")),
        Ok(Err(e)) => return Err(anyhow::anyhow!("service task failed: {e}")),
        Err(_) => return Err(anyhow::anyhow!("service did not stop within 30s")),
    }

    let seen = breaches.lock().map(|b| b.clone()).unwrap_or_default();
    if let Some(path) = &args.events {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        for (at, e) in &seen {
            let mut v = serde_json::to_value(e)?;
            v["received_at_ms"] = serde_json::json!(at);
            writeln!(w, "{v}")?;
        }
        w.flush()?;
    }
    let mut faults = Vec::new();
    for (phase, begin, end) in &phases {
        for f in &phase.faults {
            faults.push(judge(
                phase.name.as_str(),
                f,
                *begin,
                end.saturating_add(millis(grace)),
                &seen,
                &rates,
            ));
        }
    }
    let mut breaches_by_phase = BTreeMap::new();
    for (_, e) in seen.iter().filter(|(_, e)| e.kind == "breach") {
        let phase = phases
            .iter()
            .find(|(_, b, end)| e.started_at_ms >= *b && e.started_at_ms < *end)
            .map_or("after the scenario".to_string(), |(p, _, _)| p.name.clone());
        *breaches_by_phase.entry(phase).or_insert(0) += 1;
    }
    let report = DemoReport {
        faults,
        breaches: seen.len(),
        breaches_by_phase,
        records_produced: produced,
    };
    print_summary(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

fn spawn_breach_watcher(
    topology: &Topology,
    out: Arc<Mutex<Vec<(i64, BreachEvent)>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut cfg = crate::config::kafka::admin_config(topology);
    cfg.set("group.id", "synclag-demo-breach-watch")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = cfg.create().context("cannot create the breach watcher")?;
    consumer.subscribe(&[topology.outputs.breaches_topic.as_str()])?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => {
                    let Ok(m) = m else { continue };
                    let Some(payload) = m.payload() else { continue };
                    if let Ok(ev) = serde_json::from_slice::<BreachEvent>(payload) {
                        if let Ok(mut v) = out.lock() {
                            v.push((wall_ms(), ev));
                        }
                    }
                }
            }
        }
    }))
}

/// Completions per second per workflow, from successive API snapshots.
#[derive(Default)]
struct RateTracker {
    last: BTreeMap<String, (i64, u64)>,
    current: BTreeMap<String, f64>,
    /// (wall ms, workflow, rate) history, for surge detection.
    history: Vec<(i64, String, f64)>,
}

impl RateTracker {
    fn observe(&mut self, now: i64, status: &serde_json::Value) {
        for w in status["workflows"].as_array().into_iter().flatten() {
            let name = w["name"].as_str().unwrap_or_default().to_string();
            let seen = w["completed"].as_u64().unwrap_or(0)
                + w["pending"].as_u64().unwrap_or(0)
                + w["never_arrived"].as_u64().unwrap_or(0);
            if let Some((t, c)) = self.last.get(&name) {
                let dt = (now - t) as f64 / 1000.0;
                if dt > 0.0 {
                    let rate = seen.saturating_sub(*c) as f64 / dt;
                    self.current.insert(name.clone(), rate);
                    self.history.push((now, name.clone(), rate));
                }
            }
            self.last.insert(name, (now, seen));
        }
    }

    /// Mean rate of `workflow` over [from, to).
    fn mean(&self, workflow: &str, from: i64, to: i64) -> Option<f64> {
        let v: Vec<f64> = self
            .history
            .iter()
            .filter(|(t, w, _)| w == workflow && *t >= from && *t < to)
            .map(|(_, _, r)| *r)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn judge(
    phase: &str,
    f: &sim::Fault,
    begin: i64,
    until: i64,
    seen: &[(i64, BreachEvent)],
    rates: &RateTracker,
) -> FaultReport {
    let target = match (&f.target.dimension, f.target.workflows.is_empty()) {
        (Some((d, v)), true) => format!("{d}={v}"),
        (Some((d, v)), false) => format!("{d}={v} in {}", f.target.workflows.join(",")),
        (None, false) => f.target.workflows.join(","),
        (None, true) => "all workflows".into(),
    };
    let mut report = FaultReport {
        phase: phase.to_string(),
        fault: f.name.clone(),
        kind: f.kind.name().to_string(),
        target,
        detected: false,
        after_seconds: None,
        workflow: None,
        dimension: None,
        how: None,
    };
    if let FaultKind::Surge { factor } = f.kind {
        // A surge is a throughput change, not a delay: detected when the targeted
        // workflow's arrival rate doubles against the steady phase before it.
        for wf in &f.target.workflows {
            let Some(base) = rates.mean(wf, begin - 60_000, begin).filter(|b| *b > 0.0) else {
                continue;
            };
            if let Some((t, _, r)) = rates
                .history
                .iter()
                .find(|(t, w, r)| w == wf && *t >= begin && *t < until && *r >= base * 2.0)
            {
                report.detected = true;
                report.after_seconds = Some((t - begin) as f64 / 1000.0);
                report.workflow = Some(wf.clone());
                report.how = Some(format!(
                    "arrival rate {r:.1}/s vs {base:.1}/s before (×{factor} injected)"
                ));
                break;
            }
        }
        return report;
    }
    // Evidence: a breach of a correlation that started once the fault was active.
    let hit = seen.iter().find(|(at, e)| {
        *at >= begin
            && *at < until
            && e.started_at_ms >= begin
            && e.kind == "breach"
            && (f.target.workflows.is_empty() || f.target.workflows.contains(&e.workflow))
            && f.target
                .dimension
                .as_ref()
                .is_none_or(|(d, v)| e.dimensions.get(d) == Some(v))
    });
    if let Some((at, e)) = hit {
        report.detected = true;
        report.after_seconds = Some((at - begin) as f64 / 1000.0);
        report.workflow = Some(e.workflow.clone());
        report.dimension = f.target.dimension.as_ref().map(|(d, v)| format!("{d}={v}"));
        report.how = Some(format!(
            "{} breach, cause {}, route {}",
            e.severity,
            e.probable_cause.as_deref().unwrap_or("unknown"),
            e.route.as_deref().unwrap_or("-")
        ));
    }
    report
}

fn render(
    status: &serde_json::Value,
    rates: &RateTracker,
    phase: &str,
    elapsed_ms: i64,
    breaches: usize,
    plain: bool,
) {
    let mut out = String::new();
    if !plain {
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!(
        "synclag demo  t+{:>4}s  phase: {phase:<18} breach events: {breaches}\n",
        elapsed_ms / 1000
    ));
    if !plain {
        out.push_str(&format!(
            "{:<18} {:>7} {:>9} {:>9} {:>8} {:>6} {:>9} {:>6}\n",
            "workflow", "rate/s", "p50 lag", "p99 lag", "pending", "warn", "critical", "never"
        ));
    }
    for w in status["workflows"].as_array().into_iter().flatten() {
        let name = w["name"].as_str().unwrap_or_default();
        let secs = |k: &str| {
            w["end_to_end"][k]
                .as_u64()
                .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
        };
        let line = format!(
            "{:<18} {:>7.1} {:>9} {:>9} {:>8} {:>6} {:>9} {:>6}",
            name,
            rates.current.get(name).copied().unwrap_or(0.0),
            secs("p50_ms"),
            secs("p99_ms"),
            w["pending"].as_u64().unwrap_or(0),
            w["breaches_warn"].as_u64().unwrap_or(0),
            w["breaches_critical"].as_u64().unwrap_or(0),
            w["never_arrived"].as_u64().unwrap_or(0),
        );
        if plain {
            out.push_str(&format!(
                "  {}\n",
                line.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn print_summary(report: &DemoReport) {
    println!(
        "\nsummary: {} records produced, {} breach events",
        report.records_produced, report.breaches
    );
    let by_phase: Vec<String> = report
        .breaches_by_phase
        .iter()
        .map(|(p, n)| format!("{p}: {n}"))
        .collect();
    println!(
        "breaches by the phase their correlation started in: {}",
        by_phase.join(", ")
    );
    for f in &report.faults {
        match (f.detected, f.after_seconds) {
            (true, Some(s)) => println!(
                "  {:<18} {:<16} {:<32} DETECTED after {s:>5.1}s on {}{} — {}",
                f.fault,
                f.kind,
                f.target,
                f.workflow.as_deref().unwrap_or("-"),
                f.dimension
                    .as_ref()
                    .map(|d| format!(" [{d}]"))
                    .unwrap_or_default(),
                f.how.as_deref().unwrap_or("")
            ),
            _ => println!(
                "  {:<18} {:<16} {:<32} NOT DETECTED",
                f.fault, f.kind, f.target
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_topology_is_valid_and_needs_no_registry() {
        let t = Topology::from_yaml_str("demo", DEMO_TOPOLOGY, Vec::new())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(t.registry.is_none());
        assert!(t
            .streams
            .iter()
            .all(|s| s.format != crate::config::Format::Avro));
        assert!(t
            .workflows
            .iter()
            .all(|w| w.sla.critical <= Duration::from_secs(30)));
    }

    #[test]
    fn squeeze_keeps_proportions() {
        let s = Scenario::builtin("demo")
            .expect("built in")
            .expect("parses");
        let total: Duration = s.phases.iter().map(|p| p.duration).sum();
        let squeezed = squeeze(s.clone(), Duration::from_secs(60));
        let new_total: Duration = squeezed.phases.iter().map(|p| p.duration).sum();
        assert!((new_total.as_secs_f64() - 60.0).abs() < 0.01);
        for (a, b) in s.phases.iter().zip(&squeezed.phases) {
            let ratio = a.duration.as_secs_f64() / total.as_secs_f64();
            assert!((b.duration.as_secs_f64() / 60.0 - ratio).abs() < 1e-6);
        }
    }
}
