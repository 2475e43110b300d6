//! Load command for dead letters: writes N dead letters through
//! `Outputs::enqueue_dead_letter` with a bounded number in flight, as the pipeline does,
//! and reports dead letters per second, wall time and CPU time.
//!
//! ```text
//! cargo bench --bench dead_letters -- [--bootstrap HOST:PORT]
//!     [--count 100000] [--warmup 20000] [--in-flight 10000] [--partitions 6]
//!     [--value-bytes 200]
//! ```
//!
//! Without `--bootstrap` it starts the test harness broker (a real Kafka 4.1, as the
//! integration tests do). The records are built before the clock starts, so the figure is
//! the output path alone: bounding, headers, librdkafka and the broker's acknowledgements.
//! `--warmup` dead letters go first, untimed: a broker that has just started spends its
//! first seconds loading and compiling classes, which a long-running broker has done.
//! Every dead letter must be acknowledged and the topic must hold exactly warmup + count
//! of them afterwards, or the command fails. CPU time is this process's (Linux `/proc`), not the
//! broker's.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};
use synclag::config::Topology;
use synclag::decode::RecordView;
use synclag::emit::producer::Outputs;

struct Args {
    bootstrap: Option<String>,
    count: usize,
    warmup: usize,
    in_flight: usize,
    partitions: i32,
    value_bytes: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bootstrap: None,
        count: 100_000,
        warmup: 20_000,
        in_flight: 10_000,
        partitions: 6,
        value_bytes: 200,
    };
    // `cargo test --all-targets` runs this target without `--bench`: then it is a smoke
    // run of the same code path at a size that fits a test suite.
    if !support::bench::is_bench_run() {
        a.count = 2_000;
        a.warmup = 100;
        a.in_flight = 500;
    }
    for (flag, value) in support::bench::flag_pairs().map_err(anyhow::Error::msg)? {
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(value),
            "--count" => a.count = value.parse()?,
            "--warmup" => a.warmup = value.parse()?,
            "--in-flight" => a.in_flight = value.parse::<usize>()?.max(1),
            "--partitions" => a.partitions = value.parse()?,
            "--value-bytes" => a.value_bytes = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn topology(bootstrap: &str, topic: &str) -> anyhow::Result<Topology> {
    let yaml = format!(
        r#"
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
outputs:
  dead_letter_topic: {topic}
# The output producer as the service runs it at least once: with exactly-once, dead
# letters go out in the service's transactions (measured end to end by service_load).
store:
  exactly_once: false
streams:
  - name: orders
    topic: {topic}-orders
    format: json
    fields:
      correlation_id: $.order_ref
      event_type: $.event
  - name: outbox
    topic: {topic}-outbox
    format: json
    fields:
      correlation_id: $.order_ref
      event_type: $.event
workflows:
  - name: order_import
    stages:
      - {{ name: created, stream: orders, event_type: created }}
      - {{ name: imported, stream: outbox, event_type: imported }}
    sla: {{ warn: 1m, critical: 2m }}
    window: 10m
"#
    );
    Topology::from_yaml_str("dead-letters-bench.yaml", &yaml, Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => support::bootstrap(),
    };
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4");
    let topic = support::random_name("dlq-load");
    let admin: AdminClient<DefaultClientContext> = base.create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let new = NewTopic::new(&topic, args.partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&new], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }

    let outputs = Outputs::new(&topology(&bootstrap, &topic)?)?;
    // What a bad input record looks like: a JSON-ish value that does not parse, a key,
    // a couple of headers.
    let filler = "x".repeat(args.value_bytes.saturating_sub(24));
    let records = args.count.max(args.warmup).max(1);
    let values: Vec<String> = (0..records)
        .map(|i| format!("{{\"order_ref\": \"SO-{i:08}\", {filler}"))
        .collect();
    let keys: Vec<String> = (0..records).map(|i| format!("SO-{i:08}")).collect();
    let headers: Vec<(String, Option<&[u8]>)> = vec![
        (
            "traceparent".into(),
            Some(b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"),
        ),
        ("content-type".into(), Some(b"application/json")),
    ];
    let view = |i: usize| RecordView {
        topic: "shop.orders",
        partition: (i % 12) as i32,
        offset: i as i64,
        key: Some(keys[i].as_bytes()),
        payload: Some(values[i].as_bytes()),
        headers: &headers,
        timestamp_ms: None,
    };

    // Untimed: topic metadata, the producer id and the broker's own warm-up.
    let warm = write(&outputs, &view, args.warmup.max(1), args.in_flight).await?;
    anyhow::ensure!(warm == 0, "{warm} warm-up dead letters were not delivered");

    eprintln!(
        "writing {} dead letters ({} value bytes, {} partitions, at most {} in flight)",
        args.count, args.value_bytes, args.partitions, args.in_flight
    );
    let cpu0 = support::bench::cpu_seconds();
    let t0 = Instant::now();
    let failed = write(&outputs, &view, args.count, args.in_flight).await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = support::bench::cpu_seconds() - cpu0;
    anyhow::ensure!(failed == 0, "{failed} dead letters were not delivered");

    let probe: BaseConsumer = base.create()?;
    let mut stored = 0i64;
    for p in 0..args.partitions {
        let (low, high) = probe.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        stored += high - low;
    }
    let expected = (args.count + args.warmup.max(1)) as i64;
    anyhow::ensure!(
        stored == expected,
        "the topic holds {stored} records, expected {expected} (warm-up + count)"
    );

    println!("dead_letters  wall_s  dead_letters_per_s  cpu_s  cpu_us_per_dead_letter");
    println!(
        "{:>12}  {:>6.2}  {:>18.0}  {:>5.2}  {:>22.1}",
        args.count,
        wall,
        args.count as f64 / wall,
        cpu,
        cpu * 1e6 / args.count as f64
    );
    let _ = admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await;
    Ok(())
}

/// Enqueues `count` dead letters as the pipeline would, at most `max_in_flight`
/// unacknowledged, and waits for all acknowledgements; returns how many failed.
async fn write<'a>(
    outputs: &Outputs,
    view: &impl Fn(usize) -> RecordView<'a>,
    count: usize,
    max_in_flight: usize,
) -> anyhow::Result<usize> {
    let mut in_flight = FuturesUnordered::new();
    let mut failed = 0usize;
    let mut settle = |result: Result<(), synclag::emit::producer::EmitError>| {
        if let Err(e) = result {
            failed += 1;
            eprintln!("not delivered: {e}");
        }
    };
    for i in 0..count {
        while in_flight.len() >= max_in_flight {
            if let Some(result) = in_flight.next().await {
                settle(result);
            }
        }
        in_flight.push(
            outputs
                .enqueue_dead_letter(&view(i), "not_json", "expected `,` or `}` at line 1")
                .await?,
        );
    }
    while let Some(result) = in_flight.next().await {
        settle(result);
    }
    Ok(failed)
}
