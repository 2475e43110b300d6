//! Load command for the durable state: writes a changelog of N pending correlations to a
//! real broker, then times a start's restore of it — reading the topic, decoding every
//! record and rebuilding the store — and reports its wall time, CPU time and peak RSS.
//!
//! ```text
//! cargo bench --bench state_restore -- [--bootstrap HOST:PORT] [--pending 1000000]
//!     [--partitions 6]
//! ```
//!
//! Without `--bootstrap` it starts the test harness broker (a real Kafka 4.1, as the
//! integration tests do). The restore runs in a child process (this program again, with
//! `--restore TOPIC`), so its RSS and CPU are the restore's alone, not the writer's.

#[path = "../tests/support/mod.rs"]
mod support;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use synclag::config::Topology;
use synclag::correlate::durable::{self, Image, PendingImage};
use synclag::correlate::Engine;
use synclag::rules::Rules;
use synclag::service::state::DurableState;

struct Args {
    bootstrap: Option<String>,
    restore: Option<String>,
    pending: u64,
    partitions: i32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstrap: None,
        restore: None,
        pending: 1_000_000,
        partitions: 6,
    };
    // Run by `cargo test --all-targets` (no `--bench`): a smoke run of the same path.
    if !support::bench::is_bench_run() {
        a.pending = 2_000;
    }
    for (flag, value) in support::bench::flag_pairs().map_err(anyhow::Error::msg)? {
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(value),
            "--restore" => a.restore = Some(value),
            "--pending" => a.pending = value.parse()?,
            "--partitions" => a.partitions = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// A one-workflow topology whose changelog is `topic`.
fn topology(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Topology> {
    let yaml = format!(
        r#"
service:
  group_id: {topic}-group
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
store:
  max_pending: 2000000
  changelog_topic: {topic}
  changelog_partitions: {partitions}
  changelog_replication: 1
streams:
  - name: orders
    topic: {topic}-orders
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at, dimensions: {{ carrier: $.carrier, warehouse: $.wh }} }}
  - name: odoo
    topic: {topic}-odoo
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
workflows:
  - name: order_import
    stages:
      - {{ name: created, stream: orders }}
      - {{ name: imported, stream: odoo }}
    sla: {{ warn: 5m, critical: 15m }}
    window: 2h
    dimensions: [carrier, warehouse]
"#
    );
    Topology::from_yaml_str("state_restore.yaml", &yaml, Vec::new())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Child mode: restore the changelog and report.
fn restore(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let topology = topology(bootstrap, topic, partitions)?;
    let mut engine = Engine::new(&Rules::engine_config(&topology))?;
    let mut state = DurableState::new(&topology);
    let (cpu0, _, _) = support::bench::usage();
    let t0 = Instant::now();
    let mut breached = 0u64;
    let report = state.restore(
        &topology,
        &mut engine,
        &mut |_, _| breached += 1,
        chrono::Utc::now().timestamp_millis(),
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss, peak) = support::bench::usage();
    println!(
        "restore: {} pending ({} records, {} rejected, {breached} with a tier raised) in {wall:.2} s wall, {:.2} s CPU; RSS {rss:.0} MiB, peak {peak:.0} MiB",
        report.pending,
        report.records,
        report.rejected,
        cpu1 - cpu0
    );
    anyhow::ensure!(report.rejected == 0, "rejected records");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let (Some(topic), Some(bootstrap)) = (&args.restore, &args.bootstrap) {
        // Rejected records are logged with their reason.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .init();
        return tokio::task::block_in_place(|| restore(bootstrap, topic, args.partitions));
    }
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => support::bootstrap(),
    };
    let topic = support::random_name("state-restore");
    let topology = topology(&bootstrap, &topic, args.partitions)?;
    DurableState::new(&topology)
        .create_topic(&topology, &Default::default())
        .await?;

    let t0 = Instant::now();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000")
        .create()?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut acks = Vec::new();
    let mut value = Vec::new();
    for i in 0..args.pending {
        let id = format!("SO{i:012}");
        let image = Image::Pending(PendingImage {
            workflow: 0,
            correlation_id: id.as_bytes().into(),
            start_ms: now - (i % 600_000) as i64,
            start_kafka_ms: now - (i % 600_000) as i64 + 40,
            flags: 1,
            seen: 1,
            fired: u8::from(i % 10 == 0),
            lane: 0,
            stages: vec![],
            dimensions: vec![
                (0, format!("carrier-{}", i % 8)),
                (1, format!("WH-{}", i % 20)),
            ],
        });
        let key = durable::encode_key("order_import", id.as_bytes());
        durable::encode_value(&image, &mut value);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&value);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((e, back)) => {
                    anyhow::ensure!(
                        e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "produce: {e}"
                    );
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        acks.push(delivery);
        if acks.len() >= 50_000 {
            for a in futures::future::join_all(acks.drain(..)).await {
                a?.map_err(|(e, _)| e)?;
            }
        }
    }
    for a in futures::future::join_all(acks).await {
        a?.map_err(|(e, _)| e)?;
    }
    eprintln!(
        "wrote {} pending records to {topic} ({} partitions) in {:.1} s",
        args.pending,
        args.partitions,
        t0.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe);
    child.args([
        "--bootstrap",
        &bootstrap,
        "--restore",
        &topic,
        "--partitions",
        &args.partitions.to_string(),
    ]);
    if support::bench::is_bench_run() {
        child.arg("--bench");
    }
    let status = child.status()?;
    anyhow::ensure!(status.success(), "restore child failed: {status}");
    Ok(())
}
