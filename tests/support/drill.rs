//! Running the simulator against `synclag run` on the test broker, and reading synclag's
//! output topics as an alerting system would (scenario tests and fault drills).

use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, Timestamp, TopicPartitionList};
use serde::de::DeserializeOwned;
use synclag::config::Topology;
use synclag::emit::events::{BreachEvent, IncidentEvent, LagSummary};
use synclag::sim::{
    self, Clock, Expected, GroundTruth, RealClock, RunOptions, Scenario, SimOptions, Simulator,
};
use tokio_util::sync::CancellationToken;

fn wall_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `demo/topology.yaml` with every topic renamed, the test broker, a fresh consumer group
/// and `http_listen` on `port`. Everything else (SLAs, streams, causes) is untouched.
pub fn demo_yaml(label: &str, port: u16) -> String {
    let mut out = String::new();
    for line in synclag::demo::DEMO_TOPOLOGY.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let (key, rest) = body.split_once(':').unwrap_or((body, ""));
        let value = rest.split_whitespace().next().unwrap_or_default();
        let replaced = match key {
            "topic" | "breaches_topic" | "lag_topic" | "backlog_topic" | "dead_letter_topic"
            | "incidents_topic"
                if !value.is_empty() =>
            {
                let name = super::random_name(&format!("{label}-{}", value.replace('.', "-")));
                Some(format!("{indent}{key}: {name}"))
            }
            "group_id" => Some(format!(
                "{indent}group_id: {}",
                super::random_name(&format!("synclag-{label}"))
            )),
            "http_listen" => Some(format!("{indent}http_listen: 127.0.0.1:{port}")),
            "bootstrap_servers" => Some(format!(
                "{indent}bootstrap_servers: \"{}\"",
                super::bootstrap()
            )),
            _ => None,
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The topics of a drill topology: inputs with 3 partitions, outputs with 1, and the
/// breach and incident topics stamped on append.
pub async fn create_drill_topics(topology: &Topology) {
    for s in &topology.streams {
        super::create_topic(&s.topic, 3).await;
    }
    let o = &topology.outputs;
    for t in [&o.backlog_topic, &o.dead_letter_topic] {
        super::create_topic(t, 1).await;
    }
    create_log_append_topic(&o.lag_topic).await;
    create_log_append_topic(&o.breaches_topic).await;
    create_log_append_topic(&o.incidents_topic).await;
}

/// The breach topic, stamped by the broker on append: a record's timestamp is the
/// moment it arrived on the topic.
pub async fn create_log_append_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = super::client_config()
        .create()
        .expect("create AdminClient for the test broker");
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics([&topic], &options)
        .await
        .unwrap_or_else(|e| panic!("CreateTopics for {name} failed: {e}"))
    {
        if let Err((t, code)) = result {
            panic!("creating topic {t} failed: {code}");
        }
    }
    super::wait_until_async(
        Duration::from_secs(30),
        &format!("topic {name} has a leader"),
        || async {
            admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|t| {
                        t.error().is_none()
                            && t.partitions().len() == 1
                            && t.partitions()[0].leader() >= 0
                    })
                })
                .unwrap_or(false)
        },
    )
    .await;
}

/// An output record as it arrived.
#[derive(Debug, Clone)]
pub struct Seen<T> {
    /// Broker append time (LogAppendTime).
    pub append_ms: i64,
    /// When this test read it.
    pub read_ms: i64,
    pub event: T,
}

/// An output event and the record key synclag must give it.
pub trait Keyed {
    fn record_key(&self) -> String;
}

impl Keyed for BreachEvent {
    fn record_key(&self) -> String {
        self.key()
    }
}

impl Keyed for LagSummary {
    fn record_key(&self) -> String {
        self.workflow.clone()
    }
}

impl Keyed for IncidentEvent {
    fn record_key(&self) -> String {
        self.key().to_string()
    }
}

/// Where `consumer` reads partition 0 next, once it has read something.
fn note_position(consumer: &StreamConsumer, next_offset: &AtomicI64) {
    if let Ok(tpl) = consumer.position() {
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                next_offset.fetch_max(o, Ordering::SeqCst);
            }
        }
    }
}

/// Reads an output topic (one partition, `LogAppendTime`) as `read_committed` from the beginning with short
/// fetch waits, from before the service starts until told to stop.
pub struct Watcher<T> {
    topic: String,
    seen: Arc<Mutex<Vec<Seen<T>>>>,
    problems: Arc<Mutex<Vec<String>>>,
    next_offset: Arc<AtomicI64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Watcher<T>
where
    T: DeserializeOwned + Keyed + Clone + std::fmt::Debug + Send + 'static,
{
    pub fn start(topic: &str) -> Watcher<T> {
        let consumer: StreamConsumer = super::consumer_with(
            &super::random_name("breach-watch"),
            &[
                ("fetch.wait.max.ms", "50"),
                ("fetch.error.backoff.ms", "50"),
                ("isolation.level", "read_committed"),
            ],
        );
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition 0");
        consumer.assign(&tpl).expect("assign the breach topic");
        let seen: Arc<Mutex<Vec<Seen<T>>>> = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let next_offset = Arc::new(AtomicI64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (seen, problems, next_offset, stop) = (
                seen.clone(),
                problems.clone(),
                next_offset.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let m = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = consumer.recv() => m,
                        // The position moves past transaction markers and aborted
                        // records too, which are never handed out.
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            note_position(&consumer, &next_offset);
                            continue;
                        }
                    };
                    note_position(&consumer, &next_offset);
                    let read_ms = wall_ms();
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("consumer error: {e}"));
                            continue;
                        }
                    };
                    next_offset.fetch_max(m.offset() + 1, Ordering::SeqCst);
                    let append_ms = match m.timestamp() {
                        Timestamp::LogAppendTime(t) => t,
                        other => {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("record without append time: {other:?}"));
                            continue;
                        }
                    };
                    match serde_json::from_slice::<T>(m.payload().unwrap_or_default()) {
                        Ok(event) => {
                            let key = m.key().map(|k| String::from_utf8_lossy(k).to_string());
                            if key.as_deref() != Some(event.record_key().as_str()) {
                                problems
                                    .lock()
                                    .unwrap()
                                    .push(format!("{event:?} keyed {key:?}"));
                            }
                            seen.lock().unwrap().push(Seen {
                                append_ms,
                                read_ms,
                                event,
                            });
                        }
                        Err(e) => problems.lock().unwrap().push(format!(
                            "record is not a JSON {}: {e}",
                            std::any::type_name::<T>()
                        )),
                    }
                }
            })
        };
        Watcher {
            topic: topic.to_string(),
            seen,
            problems,
            next_offset,
            stop,
            task,
        }
    }

    pub fn snapshot(&self) -> Vec<Seen<T>> {
        self.seen.lock().unwrap().clone()
    }

    /// Reads up to the end of the topic (call once the service has stopped), then stops.
    pub async fn finish(self) -> Vec<Seen<T>> {
        let probe: BaseConsumer = super::client_config().create().expect("watermark probe");
        let (_, high) = probe
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .expect("output topic watermarks");
        let next = self.next_offset.clone();
        super::wait_until_async(
            Duration::from_secs(30),
            &format!("{} is read to its end ({high})", self.topic),
            || {
                let next = next.clone();
                async move { next.load(Ordering::SeqCst) >= high }
            },
        )
        .await;
        self.stop.cancel();
        let _ = self.task.await;
        let problems = self.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "{}: {problems:#?}", self.topic);
        let seen = self.seen.lock().unwrap().clone();
        // Written in transactions, the topic also holds commit markers (and the records
        // of aborted transactions, which a read_committed reader never sees).
        assert!(
            seen.len() as i64 <= high,
            "{} records of {} read, more than its {high} offsets",
            seen.len(),
            self.topic
        );
        seen
    }
}

/// Whether synclag must have breached the correlation: ground truth says so, or its
/// closing record reached Kafka well after the warn deadline (an outbox/CDC delay: the
/// business time is inside the SLA, but at the deadline nothing on Kafka showed it).
pub fn breached(t: &GroundTruth) -> bool {
    const CLEARLY_AFTER_MS: i64 = 500;
    t.expected >= Expected::Warn
        || t.stages
            .last()
            .is_some_and(|s| s.kafka_time_ms > t.start_ms + t.sla.warn_ms + CLEARLY_AFTER_MS)
}

// ---- running the simulator

/// Runs `scenario` on the wall clock from now, every started correlation to its end;
/// returns the start (epoch ms) and the ground truth.
pub async fn run_real_time(
    topology: &Topology,
    scenario: &Scenario,
    seed: u64,
) -> (i64, Vec<GroundTruth>) {
    let start = Utc::now();
    let options = SimOptions {
        seed,
        start,
        duration: None,
        rate: None,
        drain: true,
    };
    let truth = run_simulator(
        topology,
        scenario,
        &options,
        &RealClock,
        Duration::from_millis(50),
    )
    .await;
    (start.timestamp_millis(), truth)
}

pub async fn run_simulator<C: Clock>(
    topology: &Topology,
    scenario: &Scenario,
    options: &SimOptions,
    clock: &C,
    step: Duration,
) -> Vec<GroundTruth> {
    let mut simulator =
        Simulator::new(topology, scenario, options).unwrap_or_else(|e| panic!("{e}"));
    let mut sink = sim::kafka_sink_for(topology, None).expect("Kafka sink");
    let mut lines: Vec<u8> = Vec::new();
    let summary = {
        let truth: &mut (dyn Write + Send) = &mut lines;
        sim::run(
            &mut simulator,
            clock,
            &mut sink,
            Some(truth),
            &RunOptions {
                step,
                progress: false,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("simulator run failed: {e}"))
    };
    assert_eq!(summary.sink.errors, 0, "every record was delivered");
    assert_eq!(summary.sink.produced, summary.records);
    let truth: Vec<GroundTruth> = String::from_utf8(lines)
        .expect("UTF-8 ground truth")
        .lines()
        .map(|l| serde_json::from_str(l).expect("ground truth line"))
        .collect();
    assert_eq!(truth.len() as u64, summary.correlations);
    assert!(
        truth.iter().all(|t| !t.cut_off),
        "drain lets every correlation finish"
    );
    truth
}
