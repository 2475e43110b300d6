//! `synclag demo`: the whole product in one command, nothing to install.
//!
//! It starts an in-process Kafka (librdkafka's mock cluster), runs the simulator's
//! `demo` scenario (steady → carrier slowdown → recovery → warehouse outage → order
//! surge) squeezed into `--duration`, and runs the real service on top of it, serving
//! the web view, `/metrics` and the API on localhost until the scenario is over or the
//! user quits. A terminal view, read from the service's own JSON API, refreshes every
//! second: per-workflow figures and the most recent breaches with cause and route.
//!
//! When the scenario ends, the correlations already started are let finish (the
//! simulator drains), so what is late at the end is late because of a fault, not because
//! the traffic stopped. The summary then accounts for every breach on the breach topic
//! (read exactly as an alerting system would): each is matched to the simulator's ground
//! truth and counted under the injected fault that caused it, or — when the user quit
//! early — under the correlations the end of the run cut off; anything else is reported
//! as unexplained. For each injected fault it says whether synclag detected it, how many
//! seconds after it began, on which workflow and dimension.

use crate::config::duration::millis;
use crate::config::Topology;
use crate::emit::events::{BreachEvent, IncidentEvent};
use crate::rules::Masker;
use crate::service::wall_ms;
use crate::sim::{
    self, Expected, FaultKind, GroundTruth, RealClock, RunOptions, Scenario, SimOptions, Simulator,
};
use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Message, Offset};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The demo topology (short SLAs, JSON everywhere).
pub const DEMO_TOPOLOGY: &str = include_str!("../demo/topology.yaml");

/// The demo's batch workflow: a carrier manifest every 15 seconds (its stream is added to
/// the demo topology's streams, the workflow as its `batches:` section).
const DEMO_BATCH_STREAM: &str = r#"
  # Carrier manifests: one batch of parcels and a trailer with the count, every 15 s.
  - name: carrier_manifests
    topic: carrier.manifests.v1
    format: json
    fields:
      correlation_id: $.parcel
      event_time: $.at
      event_type: $.kind
      dimensions: { manifest: $.manifest, parcels: $.parcels }
"#;
const DEMO_BATCHES: &str = r#"
batches:
  - name: carrier_manifest
    description: The carrier manifest batch at the end of each dispatch wave.
    stream: carrier_manifests
    record_type: parcel
    trailer_type: trailer
    batch_id: manifest
    expected_count: parcels
    schedule: { cron: "*/15 * * * * *", timezone: Europe/Brussels }
    start: { warn: 3s, critical: 6s }
    completion: { warn: 8s, critical: 12s }
    completeness: { warn: 1.0, critical: 0.9 }
    volume: { expected: 10, baseline_runs: 4, min_history: 2, warn: 0.3, critical: 0.6 }
    route: operations
"#;

/// The built-in demo topology with its batch workflow.
pub fn demo_topology_yaml() -> String {
    let mut yaml = DEMO_TOPOLOGY.replacen(
        "\nworkflows:",
        &format!("{DEMO_BATCH_STREAM}\nworkflows:"),
        1,
    );
    yaml.push_str(DEMO_BATCHES);
    yaml
}

/// The batch runs the demo sends, in turn: a partial run and a missing run among clean ones.
const DEMO_BATCH_RUNS: &[crate::sim::batch::RunFault] = {
    use crate::sim::batch::RunFault::*;
    &[
        Clean,
        Partial { share: 0.6 },
        Clean,
        Missing,
        Clean,
        Late,
        Clean,
    ]
};

/// Flags of `synclag demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long the scripted scenario runs; its phases are scaled to fit. The demo ends
    /// once the correlations started by then have finished and their SLAs have passed.
    #[arg(long, default_value = "3m", value_parser = crate::config::duration::parse_duration)]
    pub duration: Duration,
    /// Address of the web view, `/metrics` and the API (port 0: any free port, printed).
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
    /// The fault's phase began before the demo ended (false when the user quit first).
    pub reached: bool,
    pub detected: bool,
    /// Seconds from the start of the fault's phase to the first evidence.
    pub after_seconds: Option<f64>,
    pub workflow: Option<String>,
    pub dimension: Option<String>,
    pub how: Option<String>,
}

/// Every breach on the breach topic, matched to the ground truth.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BreachAccounting {
    /// Breach (warn, critical) and never-arrived events.
    pub breaches: usize,
    /// Those events by phase, every phase listed: an event a fault explains under the
    /// phase of that fault (a correlation started before an outage is held by it), an
    /// unexplained one under the phase its correlation started in. Events on cut-off
    /// correlations are not in it.
    pub by_phase: BTreeMap<String, usize>,
    /// Events on correlations an injected fault changed, by fault (`a+b` when several).
    pub explained_by_fault: BTreeMap<String, usize>,
    /// Events on correlations no fault touched whose records were not all produced
    /// because the run ended first (the user quit): a consequence of stopping, not a finding.
    pub cut_off: usize,
    /// Events on correlations no fault touched whose last record was handed to Kafka at
    /// its deadline or later, because the simulator fell behind its plan on a busy
    /// machine ([`GroundTruth::produced_at_deadline`]): right, since synclag cannot read
    /// a record before it is written, though the planned lag is within the SLA.
    pub produced_at_deadline: usize,
    /// Events nothing above explains: false alarms.
    pub unexplained: usize,
    /// Up to ten unexplained events, as `workflow correlation_id severity`.
    pub unexplained_examples: Vec<String>,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Where the web view was served.
    pub web_view: String,
    /// The user quit before the scenario was over.
    pub interrupted: bool,
    pub faults: Vec<FaultReport>,
    /// Every event read from the breach topic, by kind (`breach`, `never_arrived`,
    /// `resolved`, `late_arrival`, `evicted`).
    pub events_by_kind: BTreeMap<String, usize>,
    /// Breach and never-arrived events, and what explains each.
    pub breaches: BreachAccounting,
    /// Correlations the simulator started, and those of them cut off by the end of the run.
    pub correlations: u64,
    pub cut_off_correlations: u64,
    pub records_produced: u64,
    /// Every incident synclag raised (open at the end, or resolved), newest state.
    pub incidents: Vec<IncidentSummary>,
    /// Every faulty batch run the demo sent, and whether synclag reported it.
    pub batch_faults: Vec<BatchFaultReport>,
}

/// One faulty batch run and what synclag said about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchFaultReport {
    pub workflow: String,
    pub scheduled_at_ms: i64,
    pub fault: String,
    /// The check and status the fault must be reported with.
    pub expected: String,
    pub detected: bool,
    /// The run's findings (`check:status:severity`) as `/api/v1/batches` shows them.
    pub findings: Vec<String>,
}

/// One incident as the summary shows it, with the injected fault its breaches came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncidentSummary {
    pub workflow: String,
    /// `carrier=DHL`, or `all` for the whole workflow.
    pub slice: String,
    pub cause: String,
    pub route: Option<String>,
    pub team: Option<String>,
    pub severity: String,
    pub breached: i64,
    /// `open` or `resolved`.
    pub state: String,
    pub evidence: Vec<String>,
    /// The fault most of its sampled correlations were changed by (none: see
    /// `produced_at_deadline`, else unexplained).
    pub fault: Option<String>,
    /// No fault changed its sampled correlations and each of their last records was
    /// handed to Kafka at its deadline or later ([`TruthNote::produced_at_deadline`]): the
    /// simulator fell behind its plan, and the incident is right, not a false alarm.
    pub produced_at_deadline: bool,
}

/// Summaries of the incidents in an `/api/v1/incidents` answer, each matched to the fault
/// its sampled correlations were changed by.
pub fn incident_summaries(answer: &serde_json::Value, truth: &TruthNotes) -> Vec<IncidentSummary> {
    let list = |k: &str| -> Vec<IncidentEvent> {
        serde_json::from_value(answer[k].clone()).unwrap_or_default()
    };
    list("open")
        .into_iter()
        .map(|i| ("open", i))
        .chain(list("resolved").into_iter().map(|i| ("resolved", i)))
        .map(|(state, i)| {
            let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
            for id in &i.sample {
                if let Some(n) = truth.get(&(i.workflow.clone(), id.clone())) {
                    for f in &n.faults {
                        *votes.entry(f.as_str()).or_default() += 1;
                    }
                }
            }
            let fault = votes
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(f, _)| f.to_string());
            let produced_at_deadline = fault.is_none()
                && !i.sample.is_empty()
                && i.sample.iter().all(|id| {
                    truth
                        .get(&(i.workflow.clone(), id.clone()))
                        .is_some_and(|n| n.produced_at_deadline)
                });
            IncidentSummary {
                slice: incident_slice(&i),
                workflow: i.workflow,
                cause: i.probable_cause,
                route: i.route,
                team: i.team,
                severity: i.severity,
                breached: i.breached,
                state: state.to_string(),
                evidence: i.evidence,
                fault,
                produced_at_deadline,
            }
        })
        .collect()
}

fn incident_slice(i: &IncidentEvent) -> String {
    if i.slice.is_empty() {
        return "all".into();
    }
    i.slice
        .iter()
        .map(|(d, v)| format!("{d}={v}"))
        .collect::<Vec<_>>()
        .join(",")
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

/// What the summary needs of one correlation's ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthNote {
    pub phase: String,
    pub faults: Vec<String>,
    pub expected: Expected,
    pub cut_off: bool,
    pub produced_at_deadline: bool,
}

/// Correlations by (workflow, correlation id as the breach topic shows it).
pub type TruthNotes = HashMap<(String, String), TruthNote>;

/// The ground-truth lines the simulator writes: kept for the summary and copied to a
/// file when asked.
struct TruthLog {
    file: Option<std::io::BufWriter<std::fs::File>>,
    partial: Vec<u8>,
    notes: TruthNotes,
    /// Masks ids the way the service does, when the topology masks them.
    masker: Option<Masker>,
}

impl TruthLog {
    fn note(&mut self, line: &[u8]) {
        let Ok(t) = serde_json::from_slice::<GroundTruth>(line) else {
            return;
        };
        let produced_at_deadline = t.produced_at_deadline();
        let id = match &self.masker {
            Some(m) => m.mask(&t.correlation_id),
            None => t.correlation_id,
        };
        self.notes.insert(
            (t.workflow, id),
            TruthNote {
                phase: t.phase,
                faults: t.faults,
                expected: t.expected,
                cut_off: t.cut_off,
                produced_at_deadline,
            },
        );
    }
}

impl Write for TruthLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.note(&line[..end]);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Matches every breach and never-arrived event to the ground truth: explained by the
/// fault that changed its correlation, by the end of the run cutting its correlation
/// off, or not at all. `phases` lists every phase, in order, with its faults' names.
pub fn account(
    events: &[BreachEvent],
    truth: &TruthNotes,
    phases: &[(String, Vec<String>)],
) -> BreachAccounting {
    let mut a = BreachAccounting {
        by_phase: phases.iter().map(|(p, _)| (p.clone(), 0)).collect(),
        ..BreachAccounting::default()
    };
    let phase_of_fault = |fault: &str| {
        phases
            .iter()
            .find(|(_, faults)| faults.iter().any(|f| f == fault))
            .map(|(p, _)| p.clone())
    };
    for e in events
        .iter()
        .filter(|e| e.kind == "breach" || e.kind == "never_arrived")
    {
        a.breaches += 1;
        let note = truth.get(&(e.workflow.clone(), e.correlation_id.clone()));
        match note {
            Some(n) if !n.faults.is_empty() && (n.expected >= Expected::Warn || !n.cut_off) => {
                *a.explained_by_fault.entry(n.faults.join("+")).or_insert(0) += 1;
                let phase = phase_of_fault(&n.faults[0]).unwrap_or_else(|| n.phase.clone());
                *a.by_phase.entry(phase).or_insert(0) += 1;
            }
            Some(n) if n.cut_off => a.cut_off += 1,
            Some(n) if n.produced_at_deadline => a.produced_at_deadline += 1,
            _ => {
                a.unexplained += 1;
                let phase = note.map_or("unknown correlation", |n| n.phase.as_str());
                *a.by_phase.entry(phase.to_string()).or_insert(0) += 1;
                if a.unexplained_examples.len() < 10 {
                    a.unexplained_examples.push(format!(
                        "{} {} {}",
                        e.workflow, e.correlation_id, e.severity
                    ));
                }
            }
        }
    }
    a
}

/// Runs the demo until the scenario is over or `quit` is cancelled; returns its report
/// (also printed).
pub async fn run(args: DemoArgs, quit: CancellationToken) -> anyhow::Result<DemoReport> {
    let mut topology = match &args.config {
        Some(p) => Topology::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Topology::from_yaml_str(
            "demo/topology.yaml",
            &demo_topology_yaml(),
            std::env::vars(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    if topology.registry.is_some() {
        anyhow::bail!("the demo runs without a schema registry; use a topology without `registry:` and without Avro streams");
    }
    let masker = match &topology.masking.key_env {
        Some(var) if topology.masking.correlation_ids => {
            let key = std::env::var(var).with_context(|| {
                format!("masking: environment variable `{var}` (masking.key_env) is not set")
            })?;
            Some(Masker::new(Some(key.into_bytes())))
        }
        _ => None,
    };
    // The in-process cluster lives as long as this function.
    let mock = MockCluster::new(1).context("cannot start the in-process Kafka cluster")?;
    for s in &topology.streams {
        mock.create_topic(&s.topic, 3, 1)
            .with_context(|| format!("create topic {}", s.topic))?;
    }
    for t in topology.outputs.topics() {
        mock.create_topic(t, 1, 1)
            .with_context(|| format!("create topic {t}"))?;
    }
    // The in-process cluster has no CreateTopics API: the changelog of the durable state
    // is made here, like every other topic.
    let changelog = topology.changelog_topic();
    mock.create_topic(&changelog, topology.store.changelog_partitions, 1)
        .with_context(|| format!("create topic {changelog}"))?;
    if !topology.batches.is_empty() {
        let t = topology.batch_state_topic();
        mock.create_topic(&t, 1, 1)
            .with_context(|| format!("create topic {t}"))?;
    }
    topology.kafka.bootstrap_servers = mock.bootstrap_servers();
    topology.kafka.properties.retain(|k, _| {
        !k.starts_with("security.") && !k.starts_with("sasl.") && !k.starts_with("ssl.")
    });
    // Bound here, so `--listen 127.0.0.1:0` works: the port chosen is the one printed.
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listen = listener
        .local_addr()
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    topology.service.http_listen = listen;

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crate::service::run_on(
        topology.clone(),
        Some(listener),
        shutdown.clone(),
    ));
    let web_view = format!("http://{listen}/");
    println!(
        "synclag demo: web view on {web_view} (the API and /metrics on the same address); Ctrl-C ends the demo early"
    );

    // Watch the breach topic like an alerting system would.
    let watch = BreachWatch::start(&topology)?;

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
        // Correlations started before the end finish: a fault-free phase stays clean.
        drain: true,
    };
    let mut simulator = Simulator::new(&topology, &scenario, &options)?;
    let mut sink = sim::kafka_sink_for(&topology, None)?;
    let mut truth = TruthLog {
        file: match &args.ground_truth {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => None,
        },
        partial: Vec::new(),
        notes: HashMap::new(),
        masker,
    };
    let stop_simulator = CancellationToken::new();
    let producer = {
        let stop = stop_simulator.clone();
        tokio::spawn(async move {
            let opts = RunOptions {
                step: Duration::from_millis(50),
                progress: false,
            };
            let summary = sim::run_until(
                &mut simulator,
                &RealClock,
                &mut sink,
                Some(&mut truth),
                &opts,
                &stop,
            )
            .await;
            (summary, truth)
        })
    };

    // Batch runs of every batch workflow whose schedule fires while the demo runs (the
    // scenario, then the slowest SLA and a margin: see `stop_at` below).
    let demo_end = start.timestamp_millis()
        + millis(args.duration)
        + millis(
            topology
                .workflows
                .iter()
                .map(|w| w.sla.critical)
                .max()
                .unwrap_or_default(),
        )
        + 5_000;
    let batch_runs =
        plan_demo_batches(&topology, start.timestamp_millis(), args.duration, demo_end)?;
    let batch_producer = {
        let runs = batch_runs.clone();
        let mut sink = sim::kafka_sink_for(&topology, None)?;
        let stop = stop_simulator.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = sim::batch::produce_runs(&runs, &mut sink) => r.map(|_| ()).map_err(|e| e.to_string()),
                _ = stop.cancelled() => Ok(()),
            }
        })
    };

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
    let api = format!("http://{listen}");
    let mut rates = RateTracker::default();
    let mut printed: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut interrupted = false;
    let mut last_incidents = serde_json::Value::Null;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = quit.cancelled() => interrupted = true,
        }
        let now = wall_ms();
        if interrupted {
            println!("\nstopping: the simulator stops now, correlations in flight are cut off");
            break;
        }
        let status = get_json(&client, &format!("{api}/api/v1/workflows")).await;
        let recent = get_json(&client, &format!("{api}/api/v1/breaches?limit=5")).await;
        let incidents = get_json(&client, &format!("{api}/api/v1/incidents")).await;
        if let Some(i) = &incidents {
            last_incidents = i.clone();
        }
        let phase = phases
            .iter()
            .find(|(_, s, e)| now >= *s && now < *e)
            .map_or("draining", |(p, _, _)| p.name.as_str());
        if let Some(s) = &status {
            rates.observe(now, s);
            let view = View {
                status: s,
                recent: recent.as_ref(),
                incidents: incidents.as_ref(),
                rates: &rates,
                phase,
                elapsed_ms: now - start.timestamp_millis(),
                web_view: &web_view,
            };
            render(&view, plain, &mut printed);
        }
        if service.is_finished() || (now >= stop_at && producer.is_finished()) {
            break;
        }
    }
    let ended_at = wall_ms();
    stop_simulator.cancel();
    let (run_summary, truth) = match producer.await {
        Ok((Ok(summary), truth)) => (summary, truth),
        Ok((Err(e), _)) => return Err(anyhow::anyhow!("simulator failed: {e}")),
        Err(e) => return Err(anyhow::anyhow!("simulator task failed: {e}")),
    };
    // The incidents as they stand when the run ends (the service still serves the API).
    if let Some(i) = get_json(&client, &format!("{api}/api/v1/incidents")).await {
        last_incidents = i;
    }
    if let Ok(Err(e)) = batch_producer.await {
        return Err(anyhow::anyhow!("batch runs not produced: {e}"));
    }
    let batch_view = get_json(&client, &format!("{api}/api/v1/batches"))
        .await
        .unwrap_or_default();
    let batch_faults = judge_batches(&batch_runs, &batch_view);
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(30), service).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(anyhow::anyhow!("service failed: {e}")),
        Ok(Err(e)) => return Err(anyhow::anyhow!("service task failed: {e}")),
        Err(_) => return Err(anyhow::anyhow!("service did not stop within 30s")),
    }
    // The service has flushed its outputs: read the breach topic to its end.
    let seen = watch.finish(Duration::from_secs(15)).await;

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
            let mut report = judge(
                phase.name.as_str(),
                f,
                *begin,
                end.saturating_add(millis(grace)),
                &seen,
                &rates,
            );
            report.reached = *begin < ended_at;
            faults.push(report);
        }
    }
    let events: Vec<BreachEvent> = seen.iter().map(|(_, e)| e.clone()).collect();
    let mut events_by_kind = BTreeMap::new();
    for e in &events {
        *events_by_kind.entry(e.kind.clone()).or_insert(0) += 1;
    }
    let phase_names: Vec<String> = scenario.phases.iter().map(|p| p.name.clone()).collect();
    let phase_faults: Vec<(String, Vec<String>)> = scenario
        .phases
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.faults.iter().map(|f| f.name.clone()).collect(),
            )
        })
        .collect();
    let breaches = account(&events, &truth.notes, &phase_faults);
    let report = DemoReport {
        web_view,
        interrupted,
        faults,
        events_by_kind,
        breaches,
        correlations: run_summary.correlations,
        cut_off_correlations: truth.notes.values().filter(|n| n.cut_off).count() as u64,
        records_produced: run_summary.sink.produced,
        incidents: incident_summaries(&last_incidents, &truth.notes),
        batch_faults,
    };
    print_summary(&report, &phase_names);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// The service is reading input this long after the demo starts.
const DEMO_BATCH_LEAD: Duration = Duration::from_secs(5);

/// The demo's batch runs for each batch workflow, every scheduled run from a few seconds
/// after the start to `until_ms` (a run the demo did not send would be reported missing):
/// the faults of [`DEMO_BATCH_RUNS`] on runs early enough that their checks are due before
/// the scenario ends, clean runs otherwise.
fn plan_demo_batches(
    topology: &Topology,
    start_ms: i64,
    duration: Duration,
    until_ms: i64,
) -> anyhow::Result<Vec<sim::batch::PlannedRun>> {
    use sim::batch::{BatchScenario, RunFault};
    let first = start_ms.saturating_add(millis(DEMO_BATCH_LEAD));
    let mut out = Vec::new();
    for b in &topology.batches {
        let scenario = |runs: Vec<RunFault>| BatchScenario {
            name: "demo".into(),
            records: 10,
            runs,
        };
        // The scheduled times first (at most one run per second of the demo).
        let slots = ((until_ms - first) / 1000).clamp(1, 10_000) as usize;
        let times: Vec<i64> = sim::batch::plan_runs(
            topology,
            &b.name,
            &scenario(vec![RunFault::Missing; slots]),
            first,
        )?
        .into_iter()
        .map(|r| r.scheduled_ms)
        .take_while(|t| *t <= until_ms)
        .collect();
        let latest = start_ms.saturating_add(millis(duration)) - millis(b.completion.critical);
        let faults = times
            .iter()
            .enumerate()
            .map(|(i, t)| match DEMO_BATCH_RUNS.get(i) {
                Some(f) if *t <= latest => *f,
                _ => RunFault::Clean,
            })
            .collect();
        out.extend(sim::batch::plan_runs(
            topology,
            &b.name,
            &scenario(faults),
            first,
        )?);
    }
    Ok(out)
}

/// Each faulty batch run, detected when its run carries the finding its fault must raise.
pub fn judge_batches(
    runs: &[sim::batch::PlannedRun],
    view: &serde_json::Value,
) -> Vec<BatchFaultReport> {
    let empty = Vec::new();
    runs.iter()
        .filter_map(|r| {
            let (check, status) = r.fault.expected_finding()?;
            let findings: Vec<String> = view["batches"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .filter(|w| w["name"] == r.workflow.as_str())
                .flat_map(|w| w["runs"].as_array().cloned().unwrap_or_default())
                .filter(|run| run["scheduled_at_ms"] == r.scheduled_ms)
                .flat_map(|run| run["findings"].as_array().cloned().unwrap_or_default())
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            let prefix = format!("{check}:{status}:");
            Some(BatchFaultReport {
                workflow: r.workflow.clone(),
                scheduled_at_ms: r.scheduled_ms,
                fault: r.fault.name().to_string(),
                expected: format!("{check} {status}"),
                detected: findings.iter().any(|f| f.starts_with(&prefix)),
                findings,
            })
        })
        .collect()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => r.json().await.ok(),
        _ => None,
    }
}

/// The breach topic, read from the beginning by a consumer of its own.
struct BreachWatch {
    consumer: Arc<StreamConsumer>,
    topic: String,
    seen: Arc<Mutex<Vec<(i64, BreachEvent)>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl BreachWatch {
    fn start(topology: &Topology) -> anyhow::Result<BreachWatch> {
        let mut cfg = crate::config::kafka::admin_config(topology);
        cfg.set("group.id", "synclag-demo-breach-watch")
            .set("auto.offset.reset", "earliest");
        let consumer: Arc<StreamConsumer> =
            Arc::new(cfg.create().context("cannot create the breach watcher")?);
        let topic = topology.outputs.breaches_topic.clone();
        consumer.subscribe(&[topic.as_str()])?;
        let seen: Arc<Mutex<Vec<(i64, BreachEvent)>>> = Arc::default();
        let stop = CancellationToken::new();
        let task = {
            let (consumer, seen, stop) = (consumer.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        m = consumer.recv() => {
                            let Ok(m) = m else { continue };
                            let Some(payload) = m.payload() else { continue };
                            if let Ok(ev) = serde_json::from_slice::<BreachEvent>(payload) {
                                if let Ok(mut v) = seen.lock() {
                                    v.push((wall_ms(), ev));
                                }
                            }
                        }
                    }
                }
            })
        };
        Ok(BreachWatch {
            consumer,
            topic,
            seen,
            stop,
            task,
        })
    }

    /// Reads on until every partition's end offset as of now is read (or `timeout`
    /// passes), then stops and returns what was seen.
    async fn finish(self, timeout: Duration) -> Vec<(i64, BreachEvent)> {
        let deadline = Instant::now() + timeout;
        let ends = {
            let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
            tokio::task::spawn_blocking(move || end_offsets(&consumer, &topic))
                .await
                .unwrap_or_default()
        };
        while Instant::now() < deadline {
            let positions: HashMap<i32, i64> = self
                .consumer
                .position()
                .map(|tpl| {
                    tpl.elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o) => Some((e.partition(), o)),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let done = ends
                .iter()
                .all(|(p, end)| *end <= 0 || positions.get(p).is_some_and(|o| o >= end));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.cancel();
        let _ = self.task.await;
        let seen = self.seen.lock().map(|v| v.clone()).unwrap_or_default();
        seen
    }
}

/// End offset of every partition of `topic` (blocking: asks the cluster).
fn end_offsets(consumer: &StreamConsumer, topic: &str) -> Vec<(i32, i64)> {
    let timeout = Duration::from_secs(5);
    let Ok(md) = consumer.fetch_metadata(Some(topic), timeout) else {
        return Vec::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter_map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .ok()
                .map(|(_, high)| (p.id(), high))
        })
        .collect()
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
        reached: true,
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

/// What one refresh of the terminal view shows.
struct View<'a> {
    status: &'a serde_json::Value,
    /// `/api/v1/breaches?limit=5`.
    recent: Option<&'a serde_json::Value>,
    /// `/api/v1/incidents`.
    incidents: Option<&'a serde_json::Value>,
    rates: &'a RateTracker,
    phase: &'a str,
    elapsed_ms: i64,
    web_view: &'a str,
}

/// `HH:MM:SS` local time of an epoch-ms instant.
fn local_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn text<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// `cause → team (route)` of a breach event or group.
fn owner_line(cause: &str, route: &str, team: &str) -> String {
    format!("cause {cause} → route {route} (team {team})")
}

/// Open incidents, worst first: one line each.
fn incident_lines(answer: &serde_json::Value) -> Vec<String> {
    let open: Vec<IncidentEvent> =
        serde_json::from_value(answer["open"].clone()).unwrap_or_default();
    open.iter()
        .take(5)
        .map(|i| {
            format!(
                "{} · {}: {} {} breached since {} — {}{}",
                i.workflow,
                incident_slice(i),
                i.severity,
                i.breached,
                local_time(i.first_breach_ms),
                owner_line(
                    &i.probable_cause,
                    i.route.as_deref().unwrap_or("-"),
                    i.team.as_deref().unwrap_or("-"),
                ),
                i.evidence
                    .first()
                    .map(|e| format!("; evidence {e}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// Open breach groups, worst first: one line each.
fn late_lines(recent: &serde_json::Value) -> Vec<String> {
    recent["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["open"].as_u64().unwrap_or(0) > 0)
        .take(3)
        .map(|g| {
            let place = match (g["dimension"].as_str(), g["value"].as_str()) {
                (Some(d), Some(v)) => format!("{d}={v}"),
                _ => "all".into(),
            };
            format!(
                "{} · {place}: {} late ({} critical) since {} — {}",
                text(g, "workflow"),
                g["open"].as_u64().unwrap_or(0),
                g["critical"].as_u64().unwrap_or(0) + g["never_arrived"].as_u64().unwrap_or(0),
                local_time(g["since_ms"].as_i64().unwrap_or(0)),
                owner_line(
                    text(&g["causes"][0], "name"),
                    text(&g["routes"][0], "route"),
                    text(&g["routes"][0], "team"),
                )
            )
        })
        .collect()
}

/// One line for a breach event of `/api/v1/breaches`.
fn breach_line(b: &serde_json::Value) -> String {
    let dims: Vec<String> = b["dimensions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    format!(
        "{} {:<8} {} {} [{}] waiting for {} — {}",
        local_time(b["observed_at_ms"].as_i64().unwrap_or(0)),
        if b["kind"] == "never_arrived" {
            "never"
        } else {
            text(b, "severity")
        },
        text(b, "workflow"),
        text(b, "correlation_id"),
        dims.join(" "),
        text(b, "stage"),
        owner_line(
            b["probable_cause"].as_str().unwrap_or("unknown"),
            text(b, "route"),
            text(b, "team"),
        )
    )
}

/// Draws the view: on a terminal the screen is redrawn; plain output prints the
/// workflow lines and only the breaches not printed before.
fn render(v: &View<'_>, plain: bool, printed: &mut HashSet<String>) {
    let mut out = String::new();
    if !plain {
        out.push_str("\x1b[2J\x1b[H");
    }
    let breaches: u64 = v.status["workflows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            w["breaches_warn"].as_u64().unwrap_or(0)
                + w["breaches_critical"].as_u64().unwrap_or(0)
                + w["never_arrived"].as_u64().unwrap_or(0)
        })
        .sum();
    out.push_str(&format!(
        "synclag demo  t+{:>4}s  phase: {:<18} breaches: {breaches}  web view: {}\n",
        v.elapsed_ms / 1000,
        v.phase,
        v.web_view
    ));
    if !plain {
        out.push_str(&format!(
            "{:<18} {:>7} {:>9} {:>9} {:>8} {:>6} {:>9} {:>6}\n",
            "workflow", "rate/s", "p50 lag", "p99 lag", "pending", "warn", "critical", "never"
        ));
    }
    for w in v.status["workflows"].as_array().into_iter().flatten() {
        let name = w["name"].as_str().unwrap_or_default();
        let secs = |k: &str| {
            w["end_to_end"][k]
                .as_u64()
                .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
        };
        let line = format!(
            "{:<18} {:>7.1} {:>9} {:>9} {:>8} {:>6} {:>9} {:>6}",
            name,
            v.rates.current.get(name).copied().unwrap_or(0.0),
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
    if let Some(answer) = v.incidents {
        let open = incident_lines(answer);
        if !plain {
            out.push_str("\nopen incidents:\n");
            if open.is_empty() {
                out.push_str("  none\n");
            }
        }
        for l in open {
            // Plain output prints an incident line again only when it changed.
            if !plain || printed.insert(l.clone()) {
                out.push_str(&format!("  incident: {l}\n"));
            }
        }
    }
    if let Some(recent) = v.recent {
        let late = late_lines(recent);
        if !plain {
            out.push_str("\nlate now (open breaches by workflow × dimension):\n");
            if late.is_empty() {
                out.push_str("  nothing\n");
            }
        }
        for l in &late {
            out.push_str(&format!("  late: {l}\n"));
        }
        if !plain {
            out.push_str("most recent breaches:\n");
        }
        let mut lines: Vec<String> = Vec::new();
        for b in recent["breaches"].as_array().into_iter().flatten() {
            let id = text(b, "breach_id").to_string();
            if plain && !printed.insert(id) {
                continue;
            }
            lines.push(format!("  breach: {}\n", breach_line(b)));
        }
        // The API lists the most recent first; print in the order they happened.
        for l in lines.iter().rev() {
            out.push_str(l);
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn print_summary(report: &DemoReport, phases: &[String]) {
    let b = &report.breaches;
    println!(
        "\nsummary: {} records produced for {} correlations; {} cut off by the end of the run{}",
        report.records_produced,
        report.correlations,
        report.cut_off_correlations,
        if report.interrupted {
            " (the demo was stopped early)"
        } else {
            " (every correlation was let finish)"
        }
    );
    let kinds: Vec<String> = report
        .events_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "breach topic: {} events ({})",
        report.events_by_kind.values().sum::<usize>(),
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        }
    );
    let by_phase: Vec<String> = phases
        .iter()
        .chain(b.by_phase.keys().filter(|k| !phases.contains(k)))
        .map(|p| format!("{p} {}", b.by_phase.get(p).copied().unwrap_or(0)))
        .collect();
    println!(
        "breaches (warn, critical, never arrived) by the phase of the fault that caused them: {}",
        by_phase.join(", ")
    );
    let by_fault: Vec<String> = b
        .explained_by_fault
        .iter()
        .map(|(f, n)| format!("{n} by {f}"))
        .collect();
    println!(
        "{} {} breaches: {}; {} on correlations cut off by the end of the run (not findings); {} unexplained",
        if b.unexplained == 0 { "explained" } else { "NOT ALL EXPLAINED:" },
        b.breaches,
        if by_fault.is_empty() {
            "none by an injected fault".to_string()
        } else {
            by_fault.join(", ")
        },
        b.cut_off,
        b.unexplained
    );
    if b.produced_at_deadline > 0 {
        println!(
            "  and {} on correlations whose last record was written at its deadline or later: the machine was too busy for the simulator to keep its plan (right, not false alarms)",
            b.produced_at_deadline
        );
    }
    if !b.unexplained_examples.is_empty() {
        println!("  unexplained, e.g.: {}", b.unexplained_examples.join("; "));
    }
    println!("incidents ({}):", report.incidents.len());
    if report.incidents.is_empty() {
        println!("  none");
    }
    for i in &report.incidents {
        println!(
            "  {:<16} {:<18} {:<8} {:>4} breached, {:<8} {} → route {} (team {}){}",
            i.workflow,
            i.slice,
            i.severity,
            i.breached,
            i.state,
            i.cause,
            i.route.as_deref().unwrap_or("-"),
            i.team.as_deref().unwrap_or("-"),
            match (&i.fault, i.produced_at_deadline) {
                (Some(f), _) => format!(" — from {f}"),
                (None, true) => " — from records written at their deadline or later (the simulator fell behind; right, not a false alarm)".into(),
                (None, false) => " — from no injected fault".into(),
            }
        );
    }
    if !report.batch_faults.is_empty() {
        println!("batch runs with an injected fault:");
    }
    for f in &report.batch_faults {
        println!(
            "  {:<18} {:<14} run {} {} — {}",
            f.workflow,
            f.fault,
            local_time(f.scheduled_at_ms),
            if f.detected {
                "DETECTED"
            } else {
                "NOT DETECTED"
            },
            if f.findings.is_empty() {
                format!("expected {}", f.expected)
            } else {
                f.findings.join(", ")
            }
        );
    }
    println!("injected faults:");
    for f in &report.faults {
        match (f.reached, f.detected, f.after_seconds) {
            (false, _, _) => println!(
                "  {:<18} {:<16} {:<32} NOT REACHED (the demo ended before its phase)",
                f.fault, f.kind, f.target
            ),
            (true, true, Some(s)) => println!(
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
    fn the_demo_sends_faulty_batch_runs_that_fit_in_the_demo() {
        use crate::sim::batch::RunFault;
        let t = Topology::from_yaml_str("demo", &demo_topology_yaml(), Vec::new())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.batches.len(), 1);
        let start = 1_800_000_000_000;
        // 60 s and the drain after it: faults only where their checks are due within the
        // 60 s, clean runs to the end (every scheduled run is sent).
        let runs = plan_demo_batches(&t, start, Duration::from_secs(60), start + 100_000).unwrap();
        let faults: Vec<&str> = runs.iter().map(|r| r.fault.name()).collect();
        assert_eq!(
            faults,
            ["clean", "partial_run", "clean", "clean", "clean", "clean"]
        );
        assert_eq!(
            runs[0].scheduled_ms,
            start + 15_000,
            "after the service is up"
        );
        assert!(runs
            .iter()
            .filter(|r| r.fault != RunFault::Clean)
            .all(|r| r.scheduled_ms + 12_000 <= start + 60_000));
        // The default 3 minutes see every fault of the sequence.
        let runs = plan_demo_batches(&t, start, Duration::from_secs(180), start + 180_000).unwrap();
        let faults: Vec<&str> = runs.iter().take(7).map(|r| r.fault.name()).collect();
        assert_eq!(
            faults,
            [
                "clean",
                "partial_run",
                "clean",
                "missing_run",
                "clean",
                "late_run",
                "clean"
            ]
        );
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

    fn breach(workflow: &str, id: &str, kind: &str) -> BreachEvent {
        BreachEvent {
            breach_id: format!("{id}-{kind}"),
            kind: kind.into(),
            severity: if kind == "breach" { "warn" } else { "info" }.into(),
            workflow: workflow.into(),
            correlation_id: id.into(),
            stage: None,
            last_stage_seen: None,
            started_at_ms: 0,
            deadline_ms: None,
            observed_at_ms: 0,
            lag_ms: 0,
            dimensions: BTreeMap::new(),
            segments_ms: BTreeMap::new(),
            dominant_segment: None,
            probable_cause: None,
            route: None,
            team: None,
            signals: Vec::new(),
            backlogged_groups: Vec::new(),
            stalled_inputs: Vec::new(),
            evidence: vec![],
            waiting_for: None,
            waiting_ms: None,
            truncated: Vec::new(),
        }
    }

    fn note(phase: &str, faults: &[&str], expected: Expected, cut_off: bool) -> TruthNote {
        TruthNote {
            phase: phase.into(),
            faults: faults.iter().map(|f| f.to_string()).collect(),
            expected,
            cut_off,
            produced_at_deadline: false,
        }
    }

    #[test]
    fn every_breach_is_explained_by_a_fault_a_cut_off_or_counted_as_unexplained() {
        let mut truth = TruthNotes::new();
        let w = "shipment_status";
        truth.insert(
            (w.into(), "slow".into()),
            note("recovery", &["carrier_slowdown"], Expected::Critical, false),
        );
        truth.insert(
            (w.into(), "cut".into()),
            note("surge", &[], Expected::None, true),
        );
        // Cut off, and touched by a fault that alone would not have breached it.
        truth.insert(
            (w.into(), "cut-faulted".into()),
            note("slowdown", &["carrier_slowdown"], Expected::None, true),
        );
        truth.insert(
            (w.into(), "fine".into()),
            note("steady", &[], Expected::None, false),
        );
        // Untouched, but its closing record was written at the deadline.
        truth.insert(
            (w.into(), "written-late".into()),
            TruthNote {
                produced_at_deadline: true,
                ..note("steady", &[], Expected::None, false)
            },
        );
        let events = vec![
            breach(w, "slow", "breach"),
            breach(w, "slow", "breach"),
            breach(w, "slow", "resolved"),
            breach(w, "cut", "breach"),
            breach(w, "cut-faulted", "never_arrived"),
            breach(w, "fine", "breach"),
            breach(w, "nobody", "breach"),
            breach(w, "written-late", "breach"),
        ];
        let phases: Vec<(String, Vec<String>)> = [
            ("steady", vec![]),
            ("slowdown", vec!["carrier_slowdown".to_string()]),
            ("recovery", vec![]),
            ("surge", vec![]),
        ]
        .into_iter()
        .map(|(p, f)| (p.to_string(), f))
        .collect();
        let a = account(&events, &truth, &phases);
        assert_eq!(a.breaches, 7, "resolved events are not breaches");
        assert_eq!(
            a.explained_by_fault,
            BTreeMap::from([("carrier_slowdown".to_string(), 2)])
        );
        assert_eq!(a.cut_off, 2);
        assert_eq!(a.produced_at_deadline, 1);
        assert_eq!(a.unexplained, 2);
        assert_eq!(
            a.unexplained_examples,
            ["shipment_status fine warn", "shipment_status nobody warn"]
        );
        assert_eq!(a.by_phase["recovery"], 0, "every phase is listed");
        assert_eq!(a.by_phase["steady"], 1, "unexplained: where it started");
        assert_eq!(
            a.by_phase["slowdown"], 2,
            "explained: the fault's phase, also for the one started in recovery"
        );
        assert_eq!(a.by_phase["surge"], 0, "cut-off breaches are counted apart");
        assert_eq!(a.by_phase["unknown correlation"], 1);
    }

    #[test]
    fn an_incident_is_matched_to_its_fault_or_to_records_written_at_their_deadline() {
        let w = "order_import";
        let incident = |id: &str, sample: &[&str]| crate::emit::events::IncidentEvent {
            incident_id: id.into(),
            kind: "opened".into(),
            sequence: 1,
            severity: "warn".into(),
            workflow: w.into(),
            slice: BTreeMap::new(),
            probable_cause: "unknown".into(),
            route: None,
            team: None,
            evidence: Vec::new(),
            trigger: "breaches".into(),
            opened_at_ms: 0,
            first_breach_ms: 0,
            last_breach_ms: 0,
            resolved_at_ms: None,
            emitted_at_ms: 0,
            breached: sample.len() as i64,
            pending: 0,
            completed: 0,
            never_arrived: 0,
            worst_lag_ms: 0,
            sample: sample.iter().map(|c| c.to_string()).collect(),
            slice_breach_rate: None,
            peer_breach_rate: None,
        };
        let late = |phase: &str| TruthNote {
            produced_at_deadline: true,
            ..note(phase, &[], Expected::None, false)
        };
        let mut truth = TruthNotes::new();
        truth.insert(
            (w.into(), "slow".into()),
            note("slowdown", &["carrier_slowdown"], Expected::Warn, false),
        );
        truth.insert((w.into(), "late-1".into()), late("slowdown"));
        truth.insert((w.into(), "late-2".into()), late("steady"));
        truth.insert(
            (w.into(), "fine".into()),
            note("steady", &[], Expected::None, false),
        );
        let answer = serde_json::json!({
            "open": [incident("faulted", &["slow", "late-1"])],
            "resolved": [
                incident("written-late", &["late-1", "late-2"]),
                incident("partly-late", &["late-2", "fine"]),
                incident("no-sample", &[]),
            ],
        });
        let got: Vec<(Option<String>, bool)> = incident_summaries(&answer, &truth)
            .into_iter()
            .map(|i| (i.fault, i.produced_at_deadline))
            .collect();
        assert_eq!(
            got,
            [
                (Some("carrier_slowdown".to_string()), false),
                (None, true),
                (None, false),
                (None, false),
            ]
        );
    }

    #[test]
    fn the_truth_log_keeps_notes_from_lines_written_in_pieces() {
        let line = |id: &str, cut_off: bool| {
            format!(
                r#"{{"workflow":"returns","correlation_id":"{id}","dimensions":{{}},"phase":"steady","start":"x","start_ms":0,"stages":[],"signals":[],"faults":["f"],"fault_delay_ms":0,"never_completes":false,"lag_ms":null,"sla":{{"warn_ms":1,"critical_ms":2,"window_ms":3,"business_hours":false}},"expected":"warn","cut_off":{cut_off}}}"#
            )
        };
        let mut log = TruthLog {
            file: None,
            partial: Vec::new(),
            notes: TruthNotes::new(),
            masker: Some(Masker::new(Some(b"k".to_vec()))),
        };
        let text = format!("{}\n{}", line("RMA-1", false), line("RMA-2", true));
        let (a, b) = text.split_at(40);
        log.write_all(a.as_bytes()).expect("write");
        log.write_all(b.as_bytes()).expect("write");
        assert_eq!(log.notes.len(), 1, "the second line is not complete yet");
        log.write_all(b"\n").expect("write");
        assert_eq!(log.notes.len(), 2);
        let masked = Masker::new(Some(b"k".to_vec())).mask("RMA-2");
        let n = &log.notes[&("returns".to_string(), masked)];
        assert!(n.cut_off, "ids are masked as the breach topic shows them");
        assert_eq!(n.expected, Expected::Warn);
    }
}
