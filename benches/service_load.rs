//! Load command for the service path: `synclag run` and a Kafka Streams peer doing the same
//! job, side by side on one broker and one backlog, end to end from start until every input
//! record is consumed (committed).
//!
//! ```text
//! cargo bench --bench service_load -- [--peer true] [--correlations 1000000]
//!     [--rounds 3] [--partitions 6] [--bootstrap HOST:PORT] [--property KEY=VALUE]...
//!     [--delivery exactly_once|at_least_once|both|in_memory|all|none] [--instances 1,2,3]
//! ```
//!
//! Without `--bootstrap` it starts the test harness broker (a real Kafka 4.1, as the
//! integration tests do). It produces the workload of `benches/workload` (1M order-import
//! correlations = ~1.97M JSON records on two topics of 6 partitions, SLA warn 2 s /
//! critical 5 s, window 60 s) once, then runs the systems alternately, each round reading
//! the whole backlog from the start under a consumer group of its own, and prints events/s,
//! events per CPU-second and peak RSS (min / median / max over the rounds). CPU and peak
//! RSS come from `/proc` of the system's own process.
//!
//! `--property KEY=VALUE` (repeatable) gives synclag that librdkafka setting in
//! `kafka.properties`, over its defaults: how the memory breakdown in the README was
//! measured, one setting changed at a time.
//!
//! `--delivery` picks synclag's delivery mode (`store.exactly_once`; default: exactly
//! once, the service's default); `both` runs synclag in each mode every round, one after
//! the other, for the cost of transactions measured side by side; `in_memory` runs it
//! with `store.durable: false` (no changelog, no transactions), for the cost of the
//! durable state; `all` runs the three; `none` runs only the repartitioned systems of
//! `--instances`.
//!
//! `--instances 1,2,3` also runs synclag with `store.repartition: true` (exactly once), as
//! that many instances sharing one consumer group, every round: each count is one more
//! system in the table. The run ends when the input and the group's stages topic are
//! both committed to their ends; CPU is the instances' sum, peak RSS the sum of their
//! peaks.
//!
//! `--peer true` builds the Kafka Streams peer (`benches/streams-peer`, Maven, into the
//! target dir) and runs it too; without it only synclag runs, so nothing needs Maven beyond
//! the test broker. Run by `cargo test --all-targets` (no `--bench`) it is a smoke run of
//! 2,000 correlations, one round, that checks every record was consumed and breaches came out,
//! for one instance and for two repartitioned instances.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "workload/mod.rs"]
mod workload;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::process::{self, Service};

/// How long one system may take for the whole backlog before the run fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

struct Args {
    bootstrap: Option<String>,
    correlations: u64,
    rounds: usize,
    partitions: i32,
    peer: bool,
    /// librdkafka settings for synclag (`kafka.properties`).
    properties: Vec<(String, String)>,
    /// synclag's delivery modes to run, each round.
    modes: Vec<Delivery>,
    /// Another synclag binary (an earlier build) run after this one in each round and
    /// mode, for a before/after comparison under the same conditions.
    against: Option<PathBuf>,
    /// Instance counts to run repartitioned (`store.repartition`), each round.
    instances: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstrap: None,
        correlations: 1_000_000,
        rounds: 3,
        partitions: 6,
        peer: false,
        properties: Vec::new(),
        modes: vec![Delivery::ExactlyOnce],
        against: None,
        instances: Vec::new(),
    };
    if !support::bench::is_bench_run() {
        a.correlations = 2_000;
        a.rounds = 1;
        a.instances = vec![2];
    }
    for (flag, value) in support::bench::flag_pairs().map_err(anyhow::Error::msg)? {
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(value),
            "--correlations" => a.correlations = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--partitions" => a.partitions = value.parse()?,
            "--peer" => a.peer = value.parse()?,
            "--against" => {
                let path = PathBuf::from(&value);
                anyhow::ensure!(path.is_file(), "--against: no file {value}");
                a.against = Some(path);
            }
            "--delivery" => {
                a.modes = match value.as_str() {
                    "exactly_once" => vec![Delivery::ExactlyOnce],
                    "at_least_once" => vec![Delivery::AtLeastOnce],
                    "both" => vec![Delivery::ExactlyOnce, Delivery::AtLeastOnce],
                    "in_memory" => vec![Delivery::InMemory],
                    "all" => vec![
                        Delivery::ExactlyOnce,
                        Delivery::AtLeastOnce,
                        Delivery::InMemory,
                    ],
                    // Only the repartitioned runs of `--instances`.
                    "none" => vec![],
                    other => anyhow::bail!(
                        "--delivery wants exactly_once, at_least_once, both, in_memory, all or none, got {other}"
                    ),
                }
            }
            "--instances" => {
                a.instances = value
                    .split(',')
                    .map(|n| match n.trim().parse::<usize>() {
                        Ok(n) if n >= 1 => Ok(n),
                        _ => Err(anyhow::anyhow!(
                            "--instances wants counts ≥ 1 separated by commas, got {value}"
                        )),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--property" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--property wants KEY=VALUE, got {value}"))?;
                a.properties
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Breach records a `read_committed` reader got.
#[derive(Default)]
struct Breaches {
    total: i64,
    /// Records whose `breach_id` and kind came before (the same alert again).
    repeated: i64,
    /// Records per kind and severity.
    kinds: std::collections::BTreeMap<String, i64>,
    /// Alerts the workload's correlation did not deserve: how many, and the first few.
    undeserved_total: i64,
    undeserved: Vec<String>,
    /// Of the alerts the workload did not deserve, those whose closing record reached
    /// Kafka after the deadline it happened before (`workload::reached_kafka_at_deadline`).
    at_deadline: i64,
}

/// One system's run over the whole backlog.
struct Measured {
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    /// CPU seconds the harness broker spent during the run (`None` with `--bootstrap`).
    broker_cpu_s: Option<f64>,
    breaches: Breaches,
}

/// Input topics and how many records they hold.
struct Backlog {
    created: String,
    imported: String,
    partitions: i32,
    records: u64,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => {
            HARNESS_BROKER.store(true, std::sync::atomic::Ordering::Relaxed);
            support::bootstrap()
        }
    };
    let peer = if args.peer { Some(build_peer()?) } else { None };
    let rt = tokio::runtime::Runtime::new()?;
    let backlog = Backlog {
        created: support::random_name("load-orders-created"),
        imported: support::random_name("load-odoo-outbox"),
        partitions: args.partitions,
        records: 0,
    };
    rt.block_on(async {
        support::kafka::create_topic_on(&bootstrap, &backlog.created, args.partitions).await;
        support::kafka::create_topic_on(&bootstrap, &backlog.imported, args.partitions).await;
    });
    let t0 = Instant::now();
    let records = produce(&bootstrap, &backlog, args.correlations)?;
    let backlog = Backlog { records, ..backlog };
    eprintln!(
        "produced {records} records ({} correlations) in {:.1}s",
        args.correlations,
        t0.elapsed().as_secs_f64()
    );

    // Each delivery mode with this build and, with `--against`, the other binary.
    let this_build = PathBuf::from(env!("CARGO_BIN_EXE_synclag"));
    let mut systems: Vec<System> = Vec::new();
    for mode in &args.modes {
        systems.push(System::new(*mode, None, this_build.as_path()));
        if let Some(other) = &args.against {
            systems.push(System::new(*mode, None, other.as_path()));
        }
    }
    for n in &args.instances {
        systems.push(System::new(
            Delivery::ExactlyOnce,
            Some(*n),
            this_build.as_path(),
        ));
        if let Some(other) = &args.against {
            systems.push(System::new(
                Delivery::ExactlyOnce,
                Some(*n),
                other.as_path(),
            ));
        }
    }
    let mut synclag_runs: Vec<Vec<Measured>> = systems.iter().map(|_| Vec::new()).collect();
    let mut peer_runs = Vec::new();
    for round in 1..=args.rounds {
        for (system, runs) in systems.iter().zip(&mut synclag_runs) {
            let label = &system.label;
            let m = run_synclag(system, &bootstrap, &backlog, &args.properties, round)?;
            report_run(label, round, &backlog, &m);
            anyhow::ensure!(m.breaches.total > 0, "synclag run raised no breach events");
            anyhow::ensure!(
                system.delivery != Delivery::ExactlyOnce || m.breaches.repeated == 0,
                "{label}: {} breach events read twice (same breach_id and kind)",
                m.breaches.repeated
            );
            runs.push(m);
        }
        if let Some(peer) = &peer {
            let m = run_peer(peer, &bootstrap, &backlog, round)?;
            report_run("Kafka Streams peer", round, &backlog, &m);
            anyhow::ensure!(
                m.breaches.total > 0,
                "the Streams peer raised no breach events"
            );
            peer_runs.push(m);
        }
    }
    println!();
    println!(
        "{} input records ({} correlations, {} partitions per topic), {} round(s), {} cores",
        backlog.records,
        args.correlations,
        args.partitions,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| system | events/s (min / median / max) | events per CPU-second (min / median / max) | peak RSS MiB (min / median / max) |");
    println!("|---|---|---|---|");
    for (system, runs) in systems.iter().zip(&synclag_runs) {
        print_row(&system.label, &backlog, runs);
    }
    if peer.is_some() {
        print_row(
            "Kafka Streams 4.1 left join (1 stream thread, RocksDB changelogged)",
            &backlog,
            &peer_runs,
        );
    }
    Ok(())
}

/// How synclag keeps its state and delivers its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// `store.exactly_once: true` (the default): transactions.
    ExactlyOnce,
    /// `store.exactly_once: false`: durable state, no transactions.
    AtLeastOnce,
    /// `store.durable: false`: no changelog, no transactions.
    InMemory,
}

/// One way of running synclag, measured every round.
struct System<'a> {
    label: String,
    delivery: Delivery,
    /// `Some(n)`: `store.repartition` with `n` instances in the group.
    instances: Option<usize>,
    binary: &'a Path,
}

impl<'a> System<'a> {
    fn new(delivery: Delivery, instances: Option<usize>, binary: &'a Path) -> System<'a> {
        let mut what = vec![match delivery {
            Delivery::ExactlyOnce => "exactly once".to_owned(),
            Delivery::AtLeastOnce => "at least once".to_owned(),
            Delivery::InMemory => "in memory, store.durable false".to_owned(),
        }];
        if let Some(n) = instances {
            what.push(format!(
                "repartitioned, {n} instance{}",
                if n == 1 { "" } else { "s" }
            ));
        }
        if binary != Path::new(env!("CARGO_BIN_EXE_synclag")) {
            what.push(binary.display().to_string());
        }
        System {
            label: format!("synclag run ({})", what.join(", ")),
            delivery,
            instances,
            binary,
        }
    }
}

fn report_run(system: &str, round: usize, backlog: &Backlog, m: &Measured) {
    eprintln!(
        "round {round}: {system}: {:.1}s wall, {:.1} CPU-s, {:.0} events/s, {:.0} events/CPU-s, peak RSS {:.0} MiB, {} breach records (read_committed), {} of them an alert read before",
        m.wall_s,
        m.cpu_s,
        backlog.records as f64 / m.wall_s,
        backlog.records as f64 / m.cpu_s,
        m.peak_rss_mib,
        m.breaches.total,
        m.breaches.repeated
    );
    if let Some(broker) = m.broker_cpu_s {
        eprintln!(
            "round {round}: {system}: the broker spent {broker:.1} CPU-s meanwhile ({:.0} % of the run's 2-core capacity with the system's own)",
            100.0 * (broker + m.cpu_s) / (2.0 * m.wall_s)
        );
    }
    eprintln!(
        "round {round}: {system}: breach records by kind: {:?}; {} alerts the workload does not explain (first: {:?}); {} more whose closing record happened before the deadline but reached Kafka after it",
        m.breaches.kinds, m.breaches.undeserved_total, m.breaches.undeserved, m.breaches.at_deadline
    );
}

fn print_row(system: &str, backlog: &Backlog, runs: &[Measured]) {
    let n = backlog.records as f64;
    let stats = |mut v: Vec<f64>| -> (f64, f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let rate = stats(runs.iter().map(|m| n / m.wall_s).collect());
    let per_cpu = stats(runs.iter().map(|m| n / m.cpu_s).collect());
    let rss = stats(runs.iter().map(|m| m.peak_rss_mib).collect());
    let k = |v: f64| format!("{:.0} k", v / 1000.0);
    println!(
        "| {system} | {} / **{}** / {} | {} / **{}** / {} | {:.0} / **{:.0}** / {:.0} |",
        k(rate.0),
        k(rate.1),
        k(rate.2),
        k(per_cpu.0),
        k(per_cpu.1),
        k(per_cpu.2),
        rss.0,
        rss.1,
        rss.2
    );
}

/// Produces the workload; returns how many records were written.
fn produce(bootstrap: &str, backlog: &Backlog, correlations: u64) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("compression.type", "none")
        .create()?;
    // Times end a little before now, so the backlog is recent for retention and for the
    // event-time tolerance, and every window has closed by the time it is read.
    let spacing_us = 400;
    let span_ms = i64::try_from(correlations * spacing_us / 1_000)?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let base = now - span_ms - 120_000;
    let mut n = 0u64;
    for r in workload::records(correlations, base, spacing_us) {
        let topic = match r.side {
            workload::Side::Created => &backlog.created,
            workload::Side::Imported => &backlog.imported,
        };
        let mut record = BaseRecord::to(topic)
            .key(r.key.as_bytes())
            .payload(r.value.as_bytes())
            .timestamp(r.timestamp_ms);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    anyhow::ensure!(
        producer.in_flight_count() == 0,
        "{} records not delivered",
        producer.in_flight_count()
    );
    Ok(n)
}

/// Committed offsets of `group` on the input topics, summed, against their ends.
struct Progress {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
    /// The group's stages topic (repartitioned runs), also committed to its end at the end.
    stages: Option<String>,
    /// Its partitions' ends once the input was committed (see `stages_behind`).
    stages_target: Option<Vec<(i32, i64)>>,
}

impl Progress {
    fn new(
        bootstrap: &str,
        group: &str,
        backlog: &Backlog,
        stages: Option<String>,
    ) -> anyhow::Result<Progress> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in [&backlog.created, &backlog.imported] {
            for p in 0..backlog.partitions {
                tpl.add_partition(topic, p);
            }
        }
        Ok(Progress {
            consumer,
            tpl,
            stages,
            stages_target: None,
        })
    }

    /// Records of the backlog the group has committed past.
    fn committed(&self) -> u64 {
        let Ok(list) = self
            .consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(5))
        else {
            return 0;
        };
        list.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => u64::try_from(o).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }

    /// Stage records routed from the backlog that the group has not committed past yet
    /// (0 without a stages topic; `None` while it cannot be read). Called once the input
    /// is committed: every stage record routed from it was written by then (in the same
    /// transactions), so the stages topic's ends at the first call are the target. The
    /// topic keeps growing afterwards (each reader writes its progress every tick), and a
    /// partition is done when its committed offset reaches its target less the
    /// transaction marker no consumer reads.
    fn stages_behind(&mut self) -> Option<u64> {
        let Some(topic) = self.stages.clone() else {
            return Some(0);
        };
        if self.stages_target.is_none() {
            let md = self
                .consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            let mut target = Vec::new();
            for p in md.topics().iter().flat_map(|t| t.partitions()) {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                    .ok()?;
                target.push((p.id(), high));
            }
            if target.is_empty() {
                return None;
            }
            self.stages_target = Some(target);
        }
        let target = self.stages_target.as_ref()?;
        let mut tpl = TopicPartitionList::new();
        for (p, _) in target {
            tpl.add_partition(&topic, *p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()?;
        let mut behind = 0u64;
        for (e, (_, high)) in committed.elements().iter().zip(target) {
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            behind += u64::try_from((high - 1).saturating_sub(at)).unwrap_or(0);
        }
        Some(behind)
    }
}

/// synclag's gauges that say where its memory is, sampled with its RSS.
const MEMORY_GAUGES: [&str; 7] = [
    "synclag_pending_correlations",
    "synclag_deferred_outcomes",
    "synclag_output_queued_records",
    "synclag_output_unacknowledged_records",
    "synclag_state_cuts_waiting",
    "synclag_recent_correlations",
    "synclag_held_correlations",
];

/// The sum of each of `names` in a Prometheus text page.
fn gauges(page: &str, names: &[&str]) -> Vec<f64> {
    names
        .iter()
        .map(|name| {
            page.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

/// The values of series `name` in a Prometheus text page, by their `label`.
fn by_label(page: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let want = format!("{label}=\"");
    page.lines()
        .filter_map(|l| {
            let labels = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.rsplit_once("} ")?;
            let at = labels.find(&want)? + want.len();
            let v = labels[at..].split('"').next()?;
            Some((v.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// GET `/metrics` of the service on `port` (plain HTTP/1.0; `None` if it does not answer).
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    Some(page)
}

/// RSS of process `pid` now, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Waits until `group` has committed the whole backlog (and, repartitioned, its stages
/// topic), sampling the processes' CPU and peak RSS before they are stopped. The memory
/// gauges on `metrics_ports` (synclag) are sampled once a second, summed over the
/// instances, and printed as they were at the highest RSS seen.
fn measure(
    services: &[Service],
    bootstrap: &str,
    group: &str,
    backlog: &Backlog,
    breaches_topic: &str,
    metrics_ports: &[u16],
    stages: Option<String>,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let broker_at_start = broker_cpu_s();
    let mut progress = Progress::new(bootstrap, group, backlog, stages)?;
    let mut last = (0u64, Instant::now());
    let mut sampled = Instant::now();
    let mut at_peak: Option<(f64, f64, Vec<f64>)> = None;
    let mut highest = vec![0.0; MEMORY_GAUGES.len()];
    // When the input records consumed first reached the backlog (sampled once a second).
    let mut read_all_at: Option<f64> = None;
    let tails = || {
        services
            .iter()
            .map(|s| format!("{}:\n{}", s.name(), s.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    loop {
        if !metrics_ports.is_empty() && sampled.elapsed() >= Duration::from_secs(1) {
            sampled = Instant::now();
            let mut rss = 0.0;
            let mut g = vec![0.0; MEMORY_GAUGES.len()];
            let mut complete = true;
            let mut consumed = 0.0;
            for (service, port) in services.iter().zip(metrics_ports) {
                match (service.pid().and_then(rss_mib), scrape(*port)) {
                    (Some(r), Some(page)) => {
                        rss += r;
                        consumed += gauges(&page, &["synclag_records_consumed_total"])[0];
                        for (sum, v) in g.iter_mut().zip(gauges(&page, &MEMORY_GAUGES)) {
                            *sum += v;
                        }
                    }
                    _ => complete = false,
                }
            }
            if complete && read_all_at.is_none() && consumed >= backlog.records as f64 {
                read_all_at = Some(started.elapsed().as_secs_f64());
            }
            if complete {
                for (h, v) in highest.iter_mut().zip(&g) {
                    *h = f64::max(*h, *v);
                }
                if at_peak.as_ref().is_none_or(|(r, _, _)| rss > *r) {
                    at_peak = Some((rss, started.elapsed().as_secs_f64(), g));
                }
            }
        }
        for service in services {
            if let Some(status) = service.exited() {
                anyhow::bail!("{} exited with {status}\n{}", service.name(), tails());
            }
        }
        let done = progress.committed();
        if done >= backlog.records && progress.stages_behind() == Some(0) {
            break;
        }
        if done > last.0 {
            last = (done, Instant::now());
        }
        // Offsets follow the window and acknowledged outputs, so commits may pause for
        // minutes while the backlog is read; only the total run time is bounded.
        let stalled = started.elapsed() >= RUN_TIMEOUT || last.1.elapsed() >= RUN_TIMEOUT / 2;
        let behind = match &progress.stages_target {
            Some(_) if stalled => progress.stages_behind(),
            _ => None,
        };
        anyhow::ensure!(
            !stalled,
            "committed {done} of {} input records (stages topic: {:?} behind) and stopped moving\n{}",
            backlog.records,
            behind,
            tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(at) = read_all_at {
        let name = services.first().map_or("", |s| s.name());
        eprintln!("{name}: every input record consumed by {at:.0}s, all committed at {wall_s:.1}s");
    }
    let broker_cpu = broker_at_start.zip(broker_cpu_s()).map(|(a, b)| b - a);
    if let Some((rss, at_s, g)) = &at_peak {
        let list = |v: &[f64]| {
            MEMORY_GAUGES
                .iter()
                .zip(v)
                .map(|(n, v)| format!("{}={v:.0}", n.trim_start_matches("synclag_")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let name = services.first().map_or("", |s| s.name());
        eprintln!(
            "{name}: highest sampled RSS {rss:.0} MiB at {at_s:.0}s: {}",
            list(g)
        );
        eprintln!("{name}: highest of each: {}", list(&highest));
    }
    // What the durable state wrote, per kind of changelog record, summed over instances.
    let pages: Vec<String> = metrics_ports.iter().filter_map(|p| scrape(*p)).collect();
    let mut written: std::collections::BTreeMap<String, f64> = Default::default();
    for page in &pages {
        for (kind, v) in by_label(page, "synclag_state_records_total", "kind") {
            *written.entry(kind).or_default() += v;
        }
    }
    if !written.is_empty() {
        let name = services.first().map_or("", |s| s.name());
        let list: Vec<String> = written.iter().map(|(k, v)| format!("{k}={v:.0}")).collect();
        eprintln!("{name}: changelog records written: {}", list.join(" "));
    }
    // How often reading stopped for the clock, summed over instances.
    if !pages.is_empty() {
        let total = |name: &str| -> f64 { pages.iter().map(|p| gauges(p, &[name])[0]).sum() };
        let name = services.first().map_or("", |s| s.name());
        eprintln!(
            "{name}: input partitions paused for running ahead of the clock {:.0} time(s)",
            total("synclag_input_paced_total")
        );
        // A pause drops what the consumer fetched ahead for the partition; it is fetched again.
        let fetched = total("synclag_input_fetched_records");
        eprintln!(
            "{name}: input records fetched from the broker {fetched:.0}, {:.2} per record in the backlog",
            fetched / backlog.records.max(1) as f64
        );
    }
    let (mut cpu_s, mut peak_rss_mib) = (0.0, 0.0);
    for service in services {
        let pid = service
            .pid()
            .ok_or_else(|| anyhow::anyhow!("{} has no PID", service.name()))?;
        let (cpu, peak) = usage(pid)?;
        cpu_s += cpu;
        peak_rss_mib += peak;
    }
    for service in services {
        service.stop();
    }
    let breaches = topic_records(bootstrap, breaches_topic)?;
    Ok(Measured {
        wall_s,
        cpu_s,
        peak_rss_mib,
        broker_cpu_s: broker_cpu,
        breaches,
    })
}

/// Whether the broker is the harness's (no `--bootstrap`), so its process can be read.
static HARNESS_BROKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// CPU seconds the harness broker has used so far, if this run started it.
fn broker_cpu_s() -> Option<f64> {
    if !HARNESS_BROKER.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let pid = support::kafka::broker().local.as_ref()?.service.pid()?;
    usage(pid).ok().map(|(cpu, _)| cpu)
}

/// (user + system CPU seconds, peak RSS MiB) of process `pid`, all its threads.
fn usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime, stime: fields 14 and 15, in clock ticks of 1/100 s.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for process {pid}"))?;
    Ok((cpu, hwm_kib / 1024.0))
}

/// Records in `topic` as a `read_committed` reader sees them (what alerting receives:
/// records of aborted transactions and transaction markers are not counted); 0 if it
/// does not exist.
fn topic_records(bootstrap: &str, topic: &str) -> anyhow::Result<Breaches> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", support::random_name("load-count"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut left = std::collections::HashSet::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                left.insert(p.id());
            }
        }
    }
    if left.is_empty() {
        return Ok(Breaches::default());
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut total = 0;
    let mut ids = std::collections::HashSet::new();
    let mut repeated = 0;
    let mut kinds = std::collections::BTreeMap::new();
    let mut undeserved = Vec::new();
    let mut undeserved_total = 0;
    let mut at_deadline = 0;
    while !left.is_empty() {
        anyhow::ensure!(
            started.elapsed() < RUN_TIMEOUT,
            "{topic}: partitions {left:?} not read to their end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                total += 1;
                // synclag's breach events carry a `breach_id`; the same id twice is the
                // same alert delivered again.
                let value = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
                let text = |v: &serde_json::Value, field: &str| {
                    v.get(field)
                        .and_then(|k| k.as_str())
                        .unwrap_or("")
                        .to_owned()
                };
                if let Some(v) = &value {
                    let kind = format!("{} {}", text(v, "kind"), text(v, "severity"));
                    let id = text(v, "correlation_id");
                    if workload::deserved(&id, &kind) == Some(false) {
                        if workload::reached_kafka_at_deadline(&id, &kind) {
                            at_deadline += 1;
                        } else {
                            if undeserved.len() < 2 {
                                // In full: what the service knew when it raised it.
                                eprintln!("{topic}: an alert the workload does not explain: {v}");
                            }
                            if undeserved.len() < 5 {
                                undeserved.push(format!("{kind} {id}"));
                            }
                            undeserved_total += 1;
                        }
                    }
                    *kinds.entry(kind).or_insert(0) += 1;
                }
                let id = value.and_then(|v| {
                    Some(format!(
                        "{}/{}",
                        v.get("breach_id")?.as_str()?,
                        text(&v, "kind")
                    ))
                });
                if let Some(id) = id {
                    if !ids.insert(id) {
                        repeated += 1;
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                left.remove(&p);
            }
            Some(Err(e)) => anyhow::bail!("{topic}: {e}"),
        }
    }
    Ok(Breaches {
        total,
        repeated,
        kinds,
        undeserved,
        undeserved_total,
        at_deadline,
    })
}

fn run_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(support::random_name(name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn run_synclag(
    system: &System,
    bootstrap: &str,
    backlog: &Backlog,
    properties: &[(String, String)],
    round: usize,
) -> anyhow::Result<Measured> {
    let group = support::random_name("load-synclag");
    let outputs = support::random_name("load-out");
    let n = system.instances.unwrap_or(1);
    let ports = process::free_ports(n);
    let mut store = match system.delivery {
        Delivery::ExactlyOnce => "store:\n  exactly_once: true\n".to_owned(),
        Delivery::AtLeastOnce => "store:\n  exactly_once: false\n".to_owned(),
        Delivery::InMemory => "store:\n  durable: false\n  exactly_once: false\n".to_owned(),
    };
    if system.instances.is_some() {
        store.push_str("  repartition: true\n");
    }
    let mut services = Vec::new();
    let mut dirs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = run_dir("load-synclag");
        let mut yaml = workload::topology_yaml_with_properties(
            bootstrap,
            &group,
            *port,
            &backlog.created,
            &backlog.imported,
            &outputs,
            properties,
        ) + &store;
        if system.instances.is_some() {
            let listen = format!("http_listen: 127.0.0.1:{port}");
            yaml = yaml.replacen(&listen, &format!("{listen}\n  instance_id: {group}-{i}"), 1);
        }
        let config = dir.join("topology.yaml");
        std::fs::write(&config, yaml)?;
        services.push(Service::spawn(
            &format!("synclag run (round {round}, instance {i})"),
            system.binary,
            &[
                "run".to_owned(),
                "--config".to_owned(),
                config.display().to_string(),
            ],
            &dir.join("synclag.log"),
            None,
        ));
        dirs.push(dir);
    }
    let m = measure(
        &services,
        bootstrap,
        &group,
        backlog,
        &format!("{outputs}.breaches"),
        &ports,
        system.instances.map(|_| format!("{group}.stages")),
    )?;
    // What the service's log says about the run: how often input waited for outputs and
    // whether a partition was judged stalled (which ends pending correlations early).
    let log: String = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("synclag.log")).unwrap_or_default())
        .collect();
    let log = strip_ansi(&log);
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "round {round}: {}: input paused for outputs {} time(s) for {:.1}s in all, partitions judged stalled {} time(s), pipeline restarts {}",
        system.label,
        count(PAUSED_FOR_OUTPUTS),
        paused_for_outputs_s(&log),
        count("input partition stalled"),
        count("partitions moved to another instance"),
    );
    // Where each instance's pipeline loop spent its time (its "pipeline time" line at
    // shutdown): busy per activity, the rest it waited for Kafka.
    for line in log.lines().filter(|l| l.contains("pipeline time")) {
        let fields: Vec<String> = line
            .split_whitespace()
            .filter(|w| w.contains("_s="))
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                let v = v
                    .parse::<f64>()
                    .map_or(v.to_string(), |x| format!("{x:.1}"));
                format!("{}={v}", k.trim_end_matches("_s"))
            })
            .collect();
        eprintln!(
            "round {round}: {}: pipeline loop seconds: {}",
            system.label,
            fields.join(" ")
        );
    }
    Ok(m)
}

/// What synclag logs when input pauses for outputs, and when it resumes.
const PAUSED_FOR_OUTPUTS: &str = "input paused, timers keep running";
const RESUMED_FOR_OUTPUTS: &str = "outputs moving again: input resumed";

/// `log` without terminal colour sequences.
fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds between each "input paused" line and the "resumed" line after it (log lines
/// begin with an RFC 3339 time).
fn paused_for_outputs_s(log: &str) -> f64 {
    let at = |l: &str| {
        l.split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let mut paused_at = None;
    let mut total = 0.0;
    for line in log.lines() {
        if line.contains(PAUSED_FOR_OUTPUTS) {
            paused_at = paused_at.or_else(|| at(line));
        } else if line.contains(RESUMED_FOR_OUTPUTS) {
            if let (Some(from), Some(to)) = (paused_at.take(), at(line)) {
                total += (to - from).num_milliseconds() as f64 / 1000.0;
            }
        }
    }
    total
}

/// The built peer: its classpath.
struct Peer {
    classpath: String,
}

/// Builds the Kafka Streams peer with Maven into the target dir.
fn build_peer() -> anyhow::Result<Peer> {
    process::require_java("the Kafka Streams peer");
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/streams-peer/pom.xml");
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("streams-peer");
    eprintln!(
        "building the Kafka Streams peer with Maven into {}",
        build.display()
    );
    let out = Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .arg(format!("-Dpeer.build.dir={}", build.display()))
        .args([
            "compile",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run mvn (is Maven installed?): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "building the Streams peer failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Peer {
        classpath: format!(
            "{}:{}/*",
            build.join("classes").display(),
            build.join("dependency").display()
        ),
    })
}

fn run_peer(
    peer: &Peer,
    bootstrap: &str,
    backlog: &Backlog,
    round: usize,
) -> anyhow::Result<Measured> {
    let dir = run_dir("load-streams-peer");
    let app = support::random_name("load-streams-peer");
    let breaches = format!("{app}.breaches");
    let args: Vec<String> = vec![
        "-cp".into(),
        peer.classpath.clone(),
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".into(),
        "synclag.peer.StreamsPeer".into(),
        bootstrap.into(),
        app.clone(),
        backlog.created.clone(),
        backlog.imported.clone(),
        breaches.clone(),
        format!("{app}.lag"),
        dir.join("state").display().to_string(),
        workload::WARN_MS.to_string(),
        workload::CRITICAL_MS.to_string(),
        workload::WINDOW_MS.to_string(),
    ];
    let service = Service::spawn(
        &format!("Kafka Streams peer (round {round})"),
        &process::java_program(),
        &args,
        &dir.join("peer.log"),
        Some(&dir.join("state")),
    );
    measure(
        std::slice::from_ref(&service),
        bootstrap,
        &app,
        backlog,
        &breaches,
        &[],
        None,
    )
}
