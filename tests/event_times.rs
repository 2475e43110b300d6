//! Event times out of tolerance (`service.event_time`), end to end on the real broker:
//! a start record dated in the year 9999 and one dated 1938 (a negative epoch) on a
//! 2-stage JSON workflow. With the default policy they count at their Kafka time: no
//! breach at once, nothing pending past its window, and synclag's committed offset
//! moves past them. With `dead_letter` they land on the dead-letter topic as
//! `bad_timestamp` and never reach the engine.

mod support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};
use support::{free_port, SynclagProcess};

const FAR_FUTURE: &str = "9999-12-31T00:00:00Z";
/// 1938-04-24T22:13:20Z in epoch seconds.
const NEGATIVE_EPOCH: i64 = -1_000_000_000;
/// SLA of the workflow, seconds: warn, critical, window.
const WARN_S: i64 = 3;
const WINDOW_S: i64 = 10;

struct Topics {
    starts: String,
    done: String,
    breaches: String,
    dlq: String,
    group: String,
}

impl Topics {
    async fn create() -> Topics {
        let t = Topics {
            starts: support::random_name("starts"),
            done: support::random_name("done"),
            breaches: support::random_name("breaches"),
            dlq: support::random_name("dlq"),
            group: support::random_name("synclag"),
        };
        for topic in [&t.starts, &t.done, &t.breaches, &t.dlq] {
            support::create_topic(topic, 1).await;
        }
        t
    }
}

fn config(t: &Topics, port: u16, event_time: &str) -> String {
    format!(
        r#"
service:
  group_id: {group}
  http_listen: 127.0.0.1:{port}
  idle_partition: 2s
  shutdown_timeout: 10s
{event_time}
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
outputs:
  breaches_topic: {breaches}
  lag_topic: {breaches}-lag
  backlog_topic: {breaches}-backlog
  dead_letter_topic: {dlq}
streams:
  - name: starts
    topic: {starts}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: done
    topic: {done}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
workflows:
  - name: w
    stages:
      - {{ name: started, stream: starts }}
      - {{ name: done, stream: done }}
    sla: {{ warn: {WARN_S}s, critical: 6s }}
    window: {WINDOW_S}s
"#,
        group = t.group,
        bootstrap = support::bootstrap(),
        breaches = t.breaches,
        dlq = t.dlq,
        starts = t.starts,
        done = t.done,
    )
}

/// Produces `value` with key `id`; returns the record's (offset, Kafka time).
async fn produce(topic: &str, id: &str, value: serde_json::Value) -> (i64, i64) {
    let producer = support::producer();
    let payload = serde_json::to_vec(&value).expect("json");
    let now = chrono::Utc::now().timestamp_millis();
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .key(id)
                .payload(&payload)
                .timestamp(now),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (delivery.offset, now)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Produces the two bad starts, one good correlation, and the close of the 1938 one;
/// returns the Kafka times of the year-9999 and the 1938 start.
async fn produce_scenario(t: &Topics) -> (i64, i64) {
    let (o, future_ts) = produce(
        &t.starts,
        "FUTURE",
        serde_json::json!({"id": "FUTURE", "at": FAR_FUTURE}),
    )
    .await;
    assert_eq!(o, 0);
    let (o, past_ts) = produce(
        &t.starts,
        "PAST",
        serde_json::json!({"id": "PAST", "at": NEGATIVE_EPOCH}),
    )
    .await;
    assert_eq!(o, 1);
    produce(
        &t.starts,
        "GOOD",
        serde_json::json!({"id": "GOOD", "at": now_rfc3339()}),
    )
    .await;
    produce(
        &t.done,
        "PAST",
        serde_json::json!({"id": "PAST", "at": now_rfc3339()}),
    )
    .await;
    produce(
        &t.done,
        "GOOD",
        serde_json::json!({"id": "GOOD", "at": now_rfc3339()}),
    )
    .await;
    (future_ts, past_ts)
}

/// synclag's committed offset of partition 0 of `topic`, read as another client of its group.
fn committed(group: &str, topic: &str) -> Option<i64> {
    let probe: StreamConsumer = support::consumer(group);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let c = probe.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    let e = c.elements().into_iter().next()?;
    match e.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The one workflow's status from `/api/v1/workflows`.
async fn workflow(s: &SynclagProcess) -> serde_json::Value {
    s.get_json("/api/v1/workflows")
        .await
        .map(|v| v["workflows"][0].clone())
        .unwrap_or_default()
}

fn metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads `topic` from the start until `done` holds for what was read, or `timeout`.
async fn read_until(
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = support::consumer(&support::random_name("reader"));
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline && !done(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

fn json_of(m: &OwnedMessage) -> serde_json::Value {
    m.payload()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or_default()
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Waits until synclag's committed offset on `topic` reaches `end`: nothing before it
/// is pinned by a pending correlation any more.
async fn wait_committed(s: &SynclagProcess, group: &str, topic: &str, end: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let g = group.to_string();
        let t = topic.to_string();
        let c = tokio::task::spawn_blocking(move || committed(&g, &t))
            .await
            .ok()
            .flatten();
        if c == Some(end) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offset of {topic}[0] is {c:?}, expected {end}: a record holds it back\n{}",
            s.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_times_count_at_their_kafka_time_and_never_pin_offsets() {
    let t = Topics::create().await;
    let port = free_port();
    let s = SynclagProcess::start(&config(&t, port, ""), port, "event-times-default");
    s.wait_ready().await;
    let (future_ts, _) = produce_scenario(&t).await;

    // The year-9999 start is pending on its Kafka time: warn, critical, then
    // never_arrived at the end of its window — not pending until the year 9999.
    let breaches = read_until(&t.breaches, Duration::from_secs(60), |m| {
        m.iter().any(|m| json_of(m)["kind"] == "never_arrived")
    })
    .await;
    let events: Vec<serde_json::Value> = breaches.iter().map(json_of).collect();
    let kinds: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["correlation_id"].as_str().unwrap_or("?").to_string(),
                e["kind"].as_str().unwrap_or("?").to_string(),
                e["severity"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert!(
        kinds.iter().all(|(id, _, _)| id == "FUTURE"),
        "only the unclosed year-9999 start may breach; the 1938 start closed in time: {kinds:?}\n{}",
        s.log_tail()
    );
    let warn = events
        .iter()
        .find(|e| e["severity"] == "warn")
        .unwrap_or_else(|| panic!("no warn breach for FUTURE: {kinds:?}"));
    assert_eq!(
        warn["started_at_ms"].as_i64(),
        Some(future_ts),
        "the year-9999 start counts at its Kafka time"
    );
    assert_eq!(
        warn["deadline_ms"].as_i64(),
        Some(future_ts + WARN_S * 1000),
        "its warn deadline is the SLA after its Kafka time, not an instant breach"
    );
    assert!(
        kinds.contains(&(
            "FUTURE".into(),
            "never_arrived".into(),
            "never_arrived".into()
        )),
        "{kinds:?}"
    );

    // Nothing is left pending, both good closes completed, and the committed offset of
    // the start partition has moved past both bad records.
    wait_committed(&s, &t.group, &t.starts, 3).await;
    wait_committed(&s, &t.group, &t.done, 2).await;
    let w = workflow(&s).await;
    assert_eq!(w["completed"].as_u64(), Some(2), "{w}");
    assert_eq!(w["pending"].as_u64(), Some(0), "{w}");
    assert_eq!(w["never_arrived"].as_u64(), Some(1), "{w}");

    let text = s.get_text("/metrics").await.unwrap_or_default();
    let topic_label = format!("topic=\"{}\"", t.starts);
    assert_eq!(
        metric(
            &text,
            "synclag_event_time_violations_total",
            &[&topic_label, "action=\"use_kafka_time\""]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "synclag_dead_letters_total", &[]),
        0.0,
        "nothing is dead-lettered under the default policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_policy_sends_bad_event_times_to_the_dead_letter_topic() {
    let t = Topics::create().await;
    let port = free_port();
    let policy = "  event_time: { max_ahead: 5m, max_behind: 1d, on_violation: dead_letter }";
    let s = SynclagProcess::start(&config(&t, port, policy), port, "event-times-dlq");
    s.wait_ready().await;
    produce_scenario(&t).await;

    let dead = read_until(&t.dlq, Duration::from_secs(60), |m| m.len() >= 2).await;
    assert_eq!(dead.len(), 2, "{}", s.log_tail());
    let mut seen = Vec::new();
    for m in &dead {
        assert_eq!(
            header(m, "synclag.reason").as_deref(),
            Some("bad_timestamp")
        );
        assert_eq!(
            header(m, "synclag.source.topic").as_deref(),
            Some(t.starts.as_str())
        );
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let error = header(m, "synclag.error").unwrap_or_default();
        seen.push((
            key,
            header(m, "synclag.source.offset").unwrap_or_default(),
            error,
        ));
    }
    seen.sort();
    assert_eq!(seen[0].0.as_deref(), Some("FUTURE"));
    assert_eq!(seen[0].1, "0");
    assert!(
        seen[0].2.contains("ahead of the record's Kafka time"),
        "{seen:?}"
    );
    assert_eq!(seen[1].0.as_deref(), Some("PAST"));
    assert_eq!(seen[1].1, "1");
    assert!(seen[1].2.contains("before 1970"), "{seen:?}");

    // They never reached the engine: nothing breaches or stays pending, and the offsets
    // move on. Only GOOD completes; the close of the 1938 start waits for a start that
    // was dead-lettered and is reported `never_arrived` at the end of its window — the
    // price of `dead_letter`, and why `use_kafka_time` is the default.
    wait_committed(&s, &t.group, &t.starts, 3).await;
    wait_committed(&s, &t.group, &t.done, 2).await;
    // Offsets follow the durable state, not the window: the held close is still pending
    // when they are committed, and ends at its window end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let w = loop {
        let w = workflow(&s).await;
        if w["never_arrived"].as_u64() == Some(1) || Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(w["completed"].as_u64(), Some(1), "{w}");
    assert_eq!(w["pending"].as_u64(), Some(0), "{w}");
    assert_eq!(w["breaches_warn"].as_u64(), Some(0), "{w}");
    assert_eq!(w["breaches_critical"].as_u64(), Some(0), "{w}");
    assert_eq!(w["never_arrived"].as_u64(), Some(1), "{w}");

    let text = s.get_text("/metrics").await.unwrap_or_default();
    let topic_label = format!("topic=\"{}\"", t.starts);
    assert_eq!(
        metric(
            &text,
            "synclag_event_time_violations_total",
            &[&topic_label, "action=\"dead_letter\""]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "synclag_dead_letters_total",
            &["reason=\"bad_timestamp\""]
        ),
        2.0,
        "{text}"
    );
}
