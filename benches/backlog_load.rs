//! Load command for the backlog monitor: builds a cluster's worth of topics and consumer
//! groups, then times full poll cycles and reports wall time, CPU time and RSS.
//!
//! ```text
//! cargo bench --bench backlog_load -- [--bootstrap HOST:PORT]
//!     [--topics 40] [--partitions 50] [--groups 20] [--records 5] [--cycles 4]
//!     [--hold SECONDS]
//! ```
//!
//! Without `--bootstrap` it starts the test harness broker (a real Kafka 4.1, as the
//! integration tests do). Every group commits on every partition, at an offset that
//! differs by group, so the cold cycle has to read `min(groups, records)` records per
//! partition and later cycles hit the record cache. The monitor runs in a child process
//! of its own (this program again, with `--monitor-pattern`), so its CPU and RSS from
//! `/proc` are the monitor's alone: not the setup's producer and committers, not the
//! broker's JVM.

#[path = "../tests/support/mod.rs"]
mod support;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use synclag::backlog::{BacklogMonitor, MonitorConfig};
use synclag::config::GroupSelector;

struct Args {
    bootstrap: Option<String>,
    /// Child mode: run only the monitor, on groups matching this pattern.
    monitor_pattern: Option<String>,
    /// Keep the cluster this many seconds after the run (to profile the monitor alone
    /// against it: the child's command line is printed).
    hold: u64,
    topics: usize,
    partitions: i32,
    groups: usize,
    records: i64,
    cycles: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstrap: None,
        monitor_pattern: None,
        hold: 0,
        topics: 40,
        partitions: 50,
        groups: 20,
        records: 5,
        cycles: 4,
    };
    // `cargo test --all-targets` runs this target without `--bench`: then it is a smoke
    // run of the same code path at a size that fits a test suite.
    if !support::bench::is_bench_run() {
        a.topics = 2;
        a.partitions = 5;
        a.groups = 3;
        a.cycles = 2;
    }
    for (flag, value) in support::bench::flag_pairs().map_err(anyhow::Error::msg)? {
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(value),
            "--monitor-pattern" => a.monitor_pattern = Some(value),
            "--hold" => a.hold = value.parse()?,
            "--topics" => a.topics = value.parse()?,
            "--partitions" => a.partitions = value.parse()?,
            "--groups" => a.groups = value.parse()?,
            "--records" => a.records = value.parse()?,
            "--cycles" => a.cycles = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Child mode: the monitor alone, one line per cycle.
async fn run_monitor(bootstrap: String, pattern: &str, cycles: usize) -> anyhow::Result<()> {
    let mut config = MonitorConfig::new(
        bootstrap,
        vec![GroupSelector::Pattern(regex::Regex::new(pattern)?)],
    );
    config
        .properties
        .insert("broker.address.family".into(), "v4".into());
    config.max_record_reads = usize::MAX;
    let mut monitor = BacklogMonitor::new(config)?;
    for _ in 0..cycles {
        let (cpu0, _, _) = support::bench::usage();
        let t0 = Instant::now();
        let report = monitor.poll_once().await?;
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, rss, peak) = support::bench::usage();
        println!(
            "{:>5}  {:>6}  {:>14}  {:>12}  {:>6.2}  {:>5.2}  {:>7.1}  {:>12.1}",
            report.cycle,
            report.summaries().count(),
            report.rows(),
            report.records_read,
            wall,
            cpu1 - cpu0,
            rss,
            peak
        );
        drop(report);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let (Some(pattern), Some(bootstrap)) = (&args.monitor_pattern, &args.bootstrap) {
        return run_monitor(bootstrap.clone(), pattern, args.cycles).await;
    }
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => support::bootstrap(),
    };
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4");
    let run = support::random_name("bl-load");
    let topics: Vec<String> = (0..args.topics).map(|i| format!("{run}-t{i}")).collect();
    let groups: Vec<String> = (0..args.groups).map(|i| format!("{run}-g{i}")).collect();
    let total = args.topics as i64 * i64::from(args.partitions);
    eprintln!(
        "setting up {} topics x {} partitions = {total} partitions, {} groups, {} records each",
        args.topics, args.partitions, args.groups, args.records
    );
    let setup = Instant::now();

    let admin: AdminClient<DefaultClientContext> = base.create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(120)));
    for chunk in topics.chunks(20) {
        let new: Vec<NewTopic> = chunk
            .iter()
            .map(|t| NewTopic::new(t, args.partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin.create_topics(new.iter(), &opts).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
        }
    }

    {
        let producer: FutureProducer = base
            .clone()
            .set("linger.ms", "20")
            .set("message.timeout.ms", "300000")
            .create()?;
        let old = chrono::Utc::now().timestamp_millis() - 3_600_000;
        for t in &topics {
            let mut pending = Vec::new();
            for p in 0..args.partitions {
                for n in 0..args.records {
                    let record = FutureRecord::<(), str>::to(t)
                        .partition(p)
                        .payload("{}")
                        .timestamp(old + n * 60_000);
                    pending.push(producer.send(record, Duration::from_secs(300)));
                }
            }
            for r in futures::future::join_all(pending).await {
                r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
        }
    }
    for (i, g) in groups.iter().enumerate() {
        let consumer: BaseConsumer = base
            .clone()
            .set("group.id", g)
            .set("enable.auto.commit", "false")
            .create()?;
        let offset = (i as i64) % args.records.max(1);
        // The coordinator writes one commit as one batch: keep each under the broker's
        // record size limit.
        for chunk in topics.chunks((2_000 / args.partitions.max(1) as usize).max(1)) {
            let mut tpl = TopicPartitionList::new();
            for t in chunk {
                for p in 0..args.partitions {
                    tpl.add_partition_offset(t, p, Offset::Offset(offset))?;
                }
            }
            consumer.commit(&tpl, CommitMode::Sync)?;
        }
    }
    eprintln!("set up in {:.1} s", setup.elapsed().as_secs_f64());

    println!("cycle  groups  partition-rows  records-read  wall_s  cpu_s  rss_mib  peak_rss_mib");
    let pattern = format!("^{}-g", regex::escape(&run));
    let mut child = std::process::Command::new(std::env::current_exe()?);
    if support::bench::is_bench_run() {
        child.arg("--bench");
    }
    let status = child
        .args(["--bootstrap", &bootstrap, "--monitor-pattern", &pattern])
        .args(["--cycles", &args.cycles.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "the monitor process failed: {status}");
    if args.hold > 0 {
        eprintln!(
            "holding the cluster for {} s; the monitor alone: {} --bench --bootstrap {bootstrap} --monitor-pattern '{pattern}' --cycles N",
            args.hold,
            std::env::current_exe()?.display()
        );
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let _ = admin.delete_groups(&names, &AdminOptions::new()).await;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    Ok(())
}
