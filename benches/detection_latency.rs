//! Load command: how soon after its deadline is a breach on the breach topic?
//!
//! ```text
//! cargo bench --bench detection_latency -- [--bootstrap HOST:PORT] [--correlations 600] [--seconds 20]
//! ```
//!
//! Without `--bootstrap` it starts the test harness broker (a real Kafka 4.1). It runs
//! `synclag run` in this process on a 2-stage JSON workflow (warn 2 s, critical 30 s),
//! creates the breach topic with `message.timestamp.type=LogAppendTime`, and produces
//! correlations at an even rate for `--seconds`: a third never close, a third close well
//! before the deadline, and a third close *just* before it (the closing record is
//! acknowledged by the broker 20–150 ms before the deadline, i.e. appended before it).
//!
//! It prints the latency of every warn breach — broker append time minus deadline, and
//! the moment a `read_committed` reader (running from before the traffic) is handed it
//! minus deadline, which includes waiting for the output transaction to commit — as
//! min/p50/p95/p99/max, and the number of false breaches (a breach for a correlation
//! whose closing record was appended before its deadline). Run by `cargo test
//! --all-targets` (without `--bench`) it does a small smoke run of the same path.

#[path = "../tests/support/mod.rs"]
mod support;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use synclag::config::Topology;
use synclag::emit::events::BreachEvent;
use tokio_util::sync::CancellationToken;

struct Args {
    bootstrap: Option<String>,
    correlations: usize,
    seconds: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let bench = support::bench::is_bench_run();
    let mut a = Args {
        bootstrap: None,
        correlations: if bench { 600 } else { 30 },
        seconds: if bench { 20 } else { 4 },
    };
    for (flag, value) in support::bench::flag_pairs().map_err(anyhow::Error::msg)? {
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = Some(value),
            "--correlations" => a.correlations = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const WARN_MS: i64 = 2_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Early,
    JustBefore,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => support::bootstrap(),
    };
    let run = support::random_name("latency");
    let (starts, ends, out) = (
        format!("{run}-starts"),
        format!("{run}-ends"),
        format!("{run}-breaches"),
    );
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .create()?;
    let append = [("message.timestamp.type", "LogAppendTime")];
    let topics = [
        NewTopic::new(&starts, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&ends, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&out, 1, TopicReplication::Fixed(1)).set(append[0].0, append[0].1),
    ];
    admin
        .create_topics(&topics, &AdminOptions::new())
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let http = support::free_port();
    let group = format!("{run}-synclag");
    let yaml = support::service::TwoStage {
        group: &group,
        http,
        bootstrap: &bootstrap,
        starts: &starts,
        ends: &ends,
        out: &out,
        workflow: "latency",
        warn: "2s",
        critical: "30s",
        window: "60s",
        service: "",
        properties: "",
    }
    .yaml();
    let topology = Topology::from_yaml_str("latency.yaml", &yaml, std::iter::empty())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(synclag::service::run(topology, shutdown.clone()));
    // Ready once partitions are assigned.
    let client = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{http}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        anyhow::ensure!(Instant::now() < ready_by, "synclag did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The alerting side: a read_committed reader of the breach topic from before the
    // traffic starts, noting when each warn breach is handed to it.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", format!("{run}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    consumer.subscribe(&[&out])?;
    type Received = Vec<(BreachEvent, i64, i64)>;
    let received: std::sync::Arc<std::sync::Mutex<Received>> = Default::default();
    let stop_reader = CancellationToken::new();
    let reader = {
        let (received, stop) = (received.clone(), stop_reader.clone());
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = consumer.recv() => m,
                };
                let Ok(m) = m else { continue };
                let read_at = now_ms();
                let Some(ev) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<BreachEvent>(p).ok())
                else {
                    continue;
                };
                if ev.kind != "breach" || ev.severity != "warn" {
                    continue;
                }
                let appended = m.timestamp().to_millis().unwrap_or(0);
                if let Ok(mut g) = received.lock() {
                    g.push((ev, appended, read_at));
                }
            }
        })
    };
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .set("linger.ms", "0")
        .create()?;
    let n = args.correlations;
    let gap = Duration::from_millis(args.seconds * 1000 / n.max(1) as u64);
    let mut fates: HashMap<String, (Fate, i64)> = HashMap::new();
    let mut closers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let id = format!("C-{i}");
        let at = now_ms();
        let fate = match i % 3 {
            0 => Fate::Open,
            1 => Fate::Early,
            _ => Fate::JustBefore,
        };
        let payload = serde_json::to_vec(&serde_json::json!({"id": id, "at": at}))?;
        producer
            .send(
                FutureRecord::to(&starts).key(&id).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        fates.insert(id.clone(), (fate, at + WARN_MS));
        if fate != Fate::Open {
            let close_in = match fate {
                Fate::Early => 500,
                _ => WARN_MS - 150 + (i as i64 * 37) % 130,
            };
            let (producer, ends, id) = (producer.clone(), ends.clone(), id.clone());
            closers.spawn(async move {
                tokio::time::sleep(Duration::from_millis(close_in as u64)).await;
                let payload =
                    serde_json::to_vec(&serde_json::json!({"id": id, "at": now_ms()})).ok()?;
                producer
                    .send(
                        FutureRecord::to(&ends).key(&id).payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .ok()?;
                Some((id, now_ms()))
            });
        }
        tokio::time::sleep(gap).await;
    }
    let mut acked_at: HashMap<String, i64> = HashMap::new();
    while let Some(r) = closers.join_next().await {
        if let Ok(Some((id, at))) = r {
            acked_at.insert(id, at);
        }
    }
    let produced_in = started.elapsed();

    // Read every breach until the last open correlation's deadline has long passed.
    let open = fates.values().filter(|(f, _)| *f == Fate::Open).count();
    let mut latencies = Vec::new();
    // When the reader (read_committed, reading since before the traffic) was handed the
    // breach: its transaction had committed.
    let mut visible = Vec::new();
    let mut false_breaches = Vec::new();
    let mut seen = HashSet::new();
    let read_by = Instant::now() + Duration::from_secs(15);
    loop {
        let enough = {
            let got = received.lock().map(|g| g.len()).unwrap_or(0);
            got >= open
        };
        if enough || Instant::now() >= read_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything raised twice or late arrives within this too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_reader.cancel();
    let _ = reader.await;
    let received = received.lock().map(|g| g.clone()).unwrap_or_default();
    for (ev, appended, read_at) in received {
        let deadline = ev.deadline_ms.unwrap_or(0);
        match fates.get(&ev.correlation_id) {
            // A repeated breach of an open correlation falls through to the arm below,
            // where it never counts as false (it has no closing record).
            Some((Fate::Open, _)) if seen.insert(ev.correlation_id.clone()) => {
                latencies.push(appended - deadline);
                visible.push(read_at - deadline);
            }
            Some(_) => {
                let closed = acked_at
                    .get(&ev.correlation_id)
                    .copied()
                    .unwrap_or(i64::MAX);
                if closed < deadline {
                    false_breaches.push((ev.correlation_id.clone(), deadline - closed));
                }
            }
            None => {}
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), service).await;

    latencies.sort_unstable();
    visible.sort_unstable();
    let quantile = |v: &[i64], p: f64| -> i64 {
        if v.is_empty() {
            return -1;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    let q = |p: f64| quantile(&latencies, p);
    let just_before = fates
        .values()
        .filter(|(f, _)| *f == Fate::JustBefore)
        .count();
    println!(
        "detection_latency: {n} correlations in {:.1} s ({open} never closed, {just_before} closed 20–150 ms before their deadline)",
        produced_in.as_secs_f64()
    );
    println!(
        "warn breaches on the topic: {} of {open}; append time − deadline (ms): min {} p50 {} p95 {} p99 {} max {}",
        latencies.len(),
        q(0.0),
        q(0.5),
        q(0.95),
        q(0.99),
        latencies.last().copied().unwrap_or(-1)
    );
    println!(
        "read by a read_committed consumer (its transaction committed) − deadline (ms): min {} p50 {} p95 {} p99 {} max {}",
        quantile(&visible, 0.0),
        quantile(&visible, 0.5),
        quantile(&visible, 0.95),
        quantile(&visible, 0.99),
        visible.last().copied().unwrap_or(-1)
    );
    println!(
        "false breaches (closing record appended before the deadline): {}",
        false_breaches.len()
    );
    anyhow::ensure!(
        latencies.len() == open,
        "{} open correlations were never breached",
        open - latencies.len()
    );
    anyhow::ensure!(
        false_breaches.is_empty(),
        "false breaches: {false_breaches:?}"
    );
    Ok(())
}
