//! Replay = live on the real broker: a two-stage JSON workflow whose start and closing
//! records sit on different topics. Some closing records come later than the workflow's
//! window. Replayed from history (written before synclag starts, with the closing topic
//! read ahead of the start topic) and produced live in time order, the same traffic must
//! give the same outcomes: the late ones `never_arrived` then `late_arrival`, never a
//! `resolved` with a lag beyond the window.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::Utc;

use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use synclag::config::Topology;
use synclag::emit::events::BreachEvent;

use support::{free_port, SynclagProcess};

const WARN_MS: i64 = 4_000;
const CRITICAL_MS: i64 = 8_000;
const WINDOW_MS: i64 = 12_000;
/// Correlations per run.
const CORRELATIONS: usize = 40;
/// Time between two starts.
const START_EVERY_MS: i64 = 300;
/// Unmatched records written to the start topic before the history, in the replay, so the
/// consumer reads the closing topic well ahead of the starts (the situation of a carrier
/// topic keyed by tracking number).
const PADDING: usize = 4_000;

/// How long after its start a correlation's closing record happens, by its index:
/// within the SLA, between warn and critical, between critical and the window end, and
/// past the window end.
fn close_offset_ms(i: usize) -> i64 {
    match i % 4 {
        0 => WINDOW_MS + 6_000,
        1 => 1_000,
        2 => WARN_MS + 2_000,
        _ => CRITICAL_MS + 2_000,
    }
}

fn is_late(i: usize) -> bool {
    close_offset_ms(i) >= WINDOW_MS
}

fn wall_ms() -> i64 {
    Utc::now().timestamp_millis()
}

struct Rig {
    starts: String,
    ends: String,
    breaches: String,
    yaml: String,
    port: u16,
}

impl Rig {
    async fn new(label: &str) -> Rig {
        let starts = support::random_name(&format!("{label}-shipments"));
        let ends = support::random_name(&format!("{label}-deliveries"));
        let breaches = support::random_name(&format!("{label}-breaches"));
        let lag = support::random_name(&format!("{label}-lag"));
        let dlq = support::random_name(&format!("{label}-dlq"));
        for t in [&starts, &ends, &breaches, &lag, &dlq] {
            support::create_topic(t, 1).await;
        }
        let port = free_port();
        let yaml = format!(
            r#"
service:
  group_id: {group}
  http_listen: 127.0.0.1:{port}
  lag_interval: 2s
  idle_partition: 5s
  shutdown_timeout: 10s
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
    # Small fetches: the padded start topic takes many fetches, the closing topic one.
    max.partition.fetch.bytes: "16384"
outputs:
  breaches_topic: {breaches}
  lag_topic: {lag}
  backlog_topic: {lag}-backlog
  dead_letter_topic: {dlq}
streams:
  - name: shipments
    topic: {starts}
    format: json
    fields:
      correlation_id: $.ref
      event_time: $.at
      event_type: $.type
  - name: deliveries
    topic: {ends}
    format: json
    fields:
      correlation_id: $.ref
      event_time: $.at
workflows:
  - name: delivery
    stages:
      - {{ name: shipped, stream: shipments, event_type: shipped }}
      - {{ name: delivered, stream: deliveries }}
    sla: {{ warn: {warn}ms, critical: {critical}ms }}
    window: {window}ms
    route: operations
routes:
  operations: {{ team: logistics-operations }}
"#,
            group = support::random_name(&format!("synclag-{label}")),
            bootstrap = support::bootstrap(),
            warn = WARN_MS,
            critical = CRITICAL_MS,
            window = WINDOW_MS,
        );
        Topology::from_yaml_str("replay.yaml", &yaml, Vec::new())
            .unwrap_or_else(|e| panic!("the test topology is valid: {e}"));
        Rig {
            starts,
            ends,
            breaches,
            yaml,
            port,
        }
    }
}

/// One record of the history: topic, correlation, event time, payload type.
struct Rec {
    topic: String,
    id: String,
    at: i64,
    kind: &'static str,
}

/// The traffic: starts every `START_EVERY_MS` from `base`, each closing record at its
/// offset; in time order.
fn traffic(rig: &Rig, base: i64) -> Vec<Rec> {
    let mut recs = Vec::new();
    for i in 0..CORRELATIONS {
        let id = format!("TRK{i:04}");
        let start = base + i as i64 * START_EVERY_MS;
        recs.push(Rec {
            topic: rig.starts.clone(),
            id: id.clone(),
            at: start,
            kind: "shipped",
        });
        recs.push(Rec {
            topic: rig.ends.clone(),
            id,
            at: start + close_offset_ms(i),
            kind: "delivered",
        });
    }
    recs.sort_by_key(|r| r.at);
    recs
}

fn payload(id: &str, at: i64, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "ref": id, "at": at, "type": kind })).expect("json")
}

async fn send(producer: &FutureProducer, topic: &str, id: &str, at: i64, kind: &str) {
    let value = payload(id, at, kind);
    producer
        .send(
            FutureRecord::to(topic).key(id).payload(&value),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// Writes records of one topic in order without waiting for each acknowledgement, then
/// waits for all of them. Each record's Kafka time is its event time, as in a real
/// history: the clock of a replay follows the records' Kafka times.
async fn send_all(producer: &FutureProducer, topic: &str, recs: &[(String, i64, &str)]) {
    let mut deliveries = Vec::new();
    for (id, at, kind) in recs {
        let value = payload(id, *at, kind);
        // Copied into the client's queue at once; the acknowledgement comes later.
        let d = producer
            .send_result(
                FutureRecord::to(topic)
                    .key(id.as_str())
                    .payload(&value)
                    .timestamp(*at),
            )
            .unwrap_or_else(|(e, _)| panic!("enqueue for {topic}: {e}"));
        deliveries.push(d);
    }
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("produce to {topic}: {e}"),
            Err(_) => panic!("produce to {topic}: delivery cancelled"),
        }
    }
}

/// What one run produced: API counts and breach-topic records.
#[derive(Debug)]
struct Outcomes {
    api: BTreeMap<&'static str, u64>,
    /// `kind/severity` → count.
    topic: BTreeMap<String, u64>,
    events: Vec<BreachEvent>,
}

const API_FIELDS: [&str; 6] = [
    "completed",
    "breaches_warn",
    "breaches_critical",
    "never_arrived",
    "late_arrivals",
    "pending",
];

fn api_counts(status: &serde_json::Value) -> BTreeMap<&'static str, u64> {
    let wf = status["workflows"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "delivery"))
        .cloned()
        .unwrap_or_default();
    API_FIELDS
        .iter()
        .map(|f| (*f, wf[*f].as_u64().unwrap_or(0)))
        .collect()
}

/// The counts the traffic must give, however it is read.
fn expected_api() -> BTreeMap<&'static str, u64> {
    let n = |f: fn(usize) -> bool| (0..CORRELATIONS).filter(|&i| f(i)).count() as u64;
    BTreeMap::from([
        ("completed", n(|i| !is_late(i))),
        ("breaches_warn", n(|i| close_offset_ms(i) >= WARN_MS)),
        (
            "breaches_critical",
            n(|i| close_offset_ms(i) >= CRITICAL_MS),
        ),
        ("never_arrived", n(is_late)),
        ("late_arrivals", n(is_late)),
        ("pending", 0),
    ])
}

/// Waits until every correlation has ended and every late record is counted, stops the
/// service cleanly, and reads the breach topic to its end.
async fn finish(rig: &Rig, mut svc: SynclagProcess, label: &str) -> Outcomes {
    let expected = expected_api();
    let deadline = Instant::now() + Duration::from_secs(120);
    let api = loop {
        if let Some(v) = svc.get_json("/api/v1/workflows").await {
            let counts = api_counts(&v);
            let ended = counts["completed"] + counts["never_arrived"];
            // Late records are counted with their never_arrived; a run that completed
            // more than it should will never count them, and `check` says how.
            if ended >= CORRELATIONS as u64
                && (counts["late_arrivals"] >= expected["late_arrivals"]
                    || counts["completed"] > expected["completed"])
            {
                break counts;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{label}: not every correlation ended within 120 s\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(svc.terminate().await, Some(0), "{label}: clean shutdown");
    let events = read_breaches(&rig.breaches).await;
    let mut topic = BTreeMap::new();
    for e in &events {
        *topic
            .entry(format!("{}/{}", e.kind, e.severity))
            .or_insert(0u64) += 1;
    }
    Outcomes { api, topic, events }
}

/// Every committed record of the breach topic (JSON: no registry is configured).
async fn read_breaches(topic: &str) -> Vec<BreachEvent> {
    let topic = topic.to_string();
    let records = tokio::task::spawn_blocking(move || {
        support::topics::read_all(support::client_config(), &topic)
    })
    .await
    .expect("read the breach topic");
    records
        .iter()
        .map(|m| {
            serde_json::from_slice(m.payload().unwrap_or_default())
                .unwrap_or_else(|e| panic!("breach record is a JSON breach event: {e}"))
        })
        .collect()
}

/// The checks both runs must pass on their own.
fn check(label: &str, o: &Outcomes) {
    assert_eq!(o.api, expected_api(), "{label}: API counts");
    let late_ids: BTreeSet<String> = (0..CORRELATIONS)
        .filter(|&i| is_late(i))
        .map(|i| format!("TRK{i:04}"))
        .collect();
    let ids_of = |kind: &str| -> BTreeSet<String> {
        o.events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.correlation_id.clone())
            .collect()
    };
    assert_eq!(ids_of("never_arrived"), late_ids, "{label}: never_arrived");
    assert_eq!(ids_of("late_arrival"), late_ids, "{label}: late_arrival");
    for e in o.events.iter().filter(|e| e.kind == "resolved") {
        assert!(
            e.lag_ms < WINDOW_MS,
            "{label}: {} resolved with a lag of {} ms, beyond the {WINDOW_MS} ms window",
            e.correlation_id,
            e.lag_ms
        );
        assert!(!late_ids.contains(&e.correlation_id), "{label}: {e:?}");
    }
    let n = |f: fn(usize) -> bool| (0..CORRELATIONS).filter(|&i| f(i)).count() as u64;
    let expected_topic = BTreeMap::from([
        (
            "breach/warn".to_string(),
            n(|i| close_offset_ms(i) >= WARN_MS),
        ),
        (
            "breach/critical".to_string(),
            n(|i| close_offset_ms(i) >= CRITICAL_MS),
        ),
        ("never_arrived/never_arrived".to_string(), n(is_late)),
        ("late_arrival/info".to_string(), n(is_late)),
        (
            "resolved/info".to_string(),
            n(|i| !is_late(i) && close_offset_ms(i) >= WARN_MS),
        ),
    ]);
    assert_eq!(o.topic, expected_topic, "{label}: breach topic by kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_closing_records_replay_as_they_happen_live() {
    let producer = support::producer();

    // ---- replay: the whole history is in Kafka before synclag starts.
    let rig = Rig::new("replay").await;
    let base = wall_ms() - 10 * 60_000;
    // Unmatched records ahead of the starts, older than the first start.
    let padding: Vec<(String, i64, &str)> = (0..PADDING)
        .map(|p| {
            let at = base - 60_000 + (p as i64 * 60_000 / PADDING as i64);
            (format!("PAD{p:05}"), at, "label_printed")
        })
        .collect();
    send_all(&producer, &rig.starts, &padding).await;
    let history = traffic(&rig, base);
    for topic in [&rig.starts, &rig.ends] {
        let recs: Vec<(String, i64, &str)> = history
            .iter()
            .filter(|r| &r.topic == topic)
            .map(|r| (r.id.clone(), r.at, r.kind))
            .collect();
        send_all(&producer, topic, &recs).await;
    }
    let svc = SynclagProcess::start(&rig.yaml, rig.port, "replay");
    let replay = finish(&rig, svc, "replay").await;
    check("replay", &replay);

    // ---- live: synclag runs while the same traffic is produced at the time it happens.
    let rig = Rig::new("live").await;
    let svc = SynclagProcess::start(&rig.yaml, rig.port, "live");
    svc.wait_ready().await;
    let base = wall_ms() + 2_000;
    // The instant at which the wall clock reads `base`.
    let epoch =
        tokio::time::Instant::now() + Duration::from_millis((base - wall_ms()).max(0) as u64);
    for r in traffic(&rig, base) {
        // Pacing the producer to the traffic's own schedule (this is the workload, not a
        // wait for a condition).
        let due = epoch + Duration::from_millis((r.at - base).max(0) as u64);
        tokio::time::sleep_until(due).await;
        send(&producer, &r.topic, &r.id, r.at, r.kind).await;
    }
    let live = finish(&rig, svc, "live").await;
    check("live", &live);

    assert_eq!(replay.api, live.api, "replay and live API counts");
    assert_eq!(replay.topic, live.topic, "replay and live breach records");
    eprintln!(
        "replay = live over {CORRELATIONS} correlations: {:?}",
        live.topic
    );
}
