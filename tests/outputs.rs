//! The Kafka outputs on the real broker (and registry): oversized breach events and dead
//! letters are delivered bounded and marked instead of being refused, and many dead
//! letters enqueued at once are each delivered once, in order per partition, waiting for
//! room in the producer's queue instead of failing.

mod support;

use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use synclag::config::Topology;
use synclag::decode::RecordView;
use synclag::emit::events::{BreachEvent, BREACH_FIELD_MAX_BYTES};
use synclag::emit::producer::{
    Outputs, ORIGINAL_VALUE_BYTES_HEADER, ORIGINAL_VALUE_SHA256_HEADER, TRUNCATED_HEADER,
};

const MB: usize = 1 << 20;

struct Names {
    breaches: String,
    dlq: String,
}

impl Names {
    fn new() -> Names {
        Names {
            breaches: support::random_name("out-breaches"),
            dlq: support::random_name("out-dlq"),
        }
    }
}

/// A small valid topology whose outputs go to `names` on the test broker; `extra` is added
/// under `kafka.properties`.
fn topology(names: &Names, registry: bool, extra: &[(&str, &str)]) -> Topology {
    topology_on(&support::bootstrap(), names, registry, extra)
}

/// [`topology`] for the broker at `bootstrap`.
fn topology_on(bootstrap: &str, names: &Names, registry: bool, extra: &[(&str, &str)]) -> Topology {
    let registry = if registry {
        format!("registry:\n  url: {}\n", support::registry_url())
    } else {
        String::new()
    };
    let mut properties = String::from("    broker.address.family: v4\n");
    for (k, v) in extra {
        properties.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    let yaml = format!(
        r#"
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
{properties}{registry}store:
  # These tests write through the producer directly, outside the service's transactions.
  exactly_once: false
outputs:
  breaches_topic: {breaches}
  lag_topic: {breaches}-lag
  backlog_topic: {breaches}-backlog
  dead_letter_topic: {dlq}
streams:
  - name: orders
    topic: {breaches}-orders
    format: json
    fields:
      correlation_id: $.order_ref
      event_time: $.created_at
      event_type: $.event
      dimensions:
        warehouse: $.warehouse
  - name: outbox
    topic: {breaches}-outbox
    format: json
    fields:
      correlation_id: $.order_ref
      event_time: $.written_at
      event_type: $.event
workflows:
  - name: order_import
    stages:
      - {{ name: created, stream: orders, event_type: created }}
      - {{ name: imported, stream: outbox, event_type: imported }}
    sla: {{ warn: 1m, critical: 2m }}
    window: 10m
    dimensions: [warehouse]
"#,
        breaches = names.breaches,
        dlq = names.dlq,
    );
    Topology::from_yaml_str("outputs-test.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("test topology is invalid: {e}"))
}

/// A breach event whose correlation id and one dimension value are 1 MB each.
fn oversized_breach() -> BreachEvent {
    BreachEvent {
        breach_id: "b-1".into(),
        kind: "breach".into(),
        severity: "critical".into(),
        workflow: "order_import".into(),
        correlation_id: format!("SO-{}", "9".repeat(MB)),
        stage: Some("imported".into()),
        last_stage_seen: Some("created".into()),
        started_at_ms: 1_700_000_000_000,
        deadline_ms: Some(1_700_000_120_000),
        observed_at_ms: 1_700_000_121_000,
        lag_ms: 121_000,
        dimensions: BTreeMap::from([("warehouse".to_string(), "W".repeat(MB))]),
        segments_ms: BTreeMap::new(),
        dominant_segment: None,
        probable_cause: None,
        route: None,
        team: None,
        signals: vec![],
        backlogged_groups: vec![],
        stalled_inputs: vec![],
        evidence: vec![],
        waiting_for: None,
        waiting_ms: None,
        truncated: vec![],
    }
}

/// Reads `topic` from the start until `want` records arrived (panics after `timeout`).
async fn read(topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = support::consumer(&support::random_name("out-reader"));
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "read {} of {want} records from {topic} within {timeout:?}",
            out.len()
        );
        if let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await {
            out.push(msg.expect("consume").detach());
        }
    }
    out
}

fn headers_of(m: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

fn header<'h>(h: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).expect("utf-8 header"))
}

/// Installs the process-wide metrics recorder; before it exists, counts are discarded, so
/// every test calls this before it writes anything.
fn metrics_on() {
    synclag::telemetry::install().expect("metrics recorder");
}

/// The value of the series of `metric` whose labels include every one of `labels`.
fn metric_value(metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = synclag::telemetry::install()
        .expect("metrics recorder")
        .render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Checks what a consumer reads back for [`oversized_breach`].
fn assert_bounded(read_back: &BreachEvent, key: Option<&[u8]>) {
    let sent = oversized_breach();
    assert_eq!(
        read_back.truncated,
        vec!["correlation_id".to_string(), "dimensions.warehouse".into()]
    );
    assert!(read_back.correlation_id.len() <= BREACH_FIELD_MAX_BYTES);
    assert!(read_back.correlation_id.starts_with("SO-999"));
    assert!(read_back.dimensions["warehouse"].len() <= BREACH_FIELD_MAX_BYTES);
    assert!(read_back.dimensions["warehouse"].starts_with("WWW"));
    assert_eq!(read_back, &sent.bounded(), "the event is the bounded one");
    assert_eq!(
        key,
        Some(read_back.key().as_bytes()),
        "key is workflow/bounded correlation id"
    );
}

#[tokio::test]
async fn oversized_breach_event_is_delivered_bounded_and_flagged_as_json() {
    metrics_on();
    let names = Names::new();
    support::create_topic(&names.breaches, 1).await;
    let outputs = Outputs::new(&topology(&names, false, &[])).expect("outputs");
    let ack = outputs
        .enqueue_breach(&oversized_breach())
        .await
        .expect("enqueued");
    ack.await.expect("acknowledged by the broker");

    let msgs = read(&names.breaches, 1, Duration::from_secs(30)).await;
    let event: BreachEvent =
        serde_json::from_slice(msgs[0].payload().expect("payload")).expect("JSON breach event");
    assert_bounded(&event, msgs[0].key());
    assert!(msgs[0].payload().unwrap_or_default().len() < 16 * 1024);
    for field in ["correlation_id", "dimensions"] {
        assert_eq!(
            metric_value(
                "synclag_output_truncations_total",
                &[("topic", &names.breaches), ("field", field)]
            ),
            Some(1.0),
            "truncation of {field} counted"
        );
    }
}

#[tokio::test]
async fn oversized_breach_event_is_delivered_bounded_and_flagged_as_avro() {
    metrics_on();
    let names = Names::new();
    support::create_topic(&names.breaches, 1).await;
    let outputs = Outputs::new(&topology(&names, true, &[])).expect("outputs");
    let ack = outputs
        .enqueue_breach(&oversized_breach())
        .await
        .expect("encoded with the registry and enqueued");
    ack.await.expect("acknowledged by the broker");

    let msgs = read(&names.breaches, 1, Duration::from_secs(30)).await;
    let decoded = AvroDecoder::new(SrSettings::new(support::registry_url()))
        .decode(msgs[0].payload())
        .await
        .expect("decodes with the schema registered for the topic");
    let event: BreachEvent =
        apache_avro::from_value(&decoded.value).expect("record matches the BreachEvent schema");
    assert_bounded(&event, msgs[0].key());
}

#[tokio::test]
async fn five_megabyte_dead_letter_is_delivered_truncated_with_its_headers() {
    metrics_on();
    let names = Names::new();
    support::create_topic(&names.dlq, 1).await;
    let outputs = Outputs::new(&topology(&names, false, &[])).expect("outputs");
    let value: Vec<u8> = (0..5 * MB).map(|i| b'a' + (i % 26) as u8).collect();
    let original = [
        ("traceparent".to_string(), Some(&b"00-abc-def-01"[..])),
        ("source".to_string(), Some(&b"edi-gateway"[..])),
    ];
    let record = RecordView {
        topic: "edi.inbound",
        partition: 2,
        offset: 1234,
        key: Some(b"PO-77"),
        payload: Some(&value),
        headers: &original,
        timestamp_ms: Some(1_700_000_000_000),
    };
    let ack = outputs
        .enqueue_dead_letter(&record, "not_json", "expected value at line 1 column 1")
        .await
        .expect("enqueued");
    ack.await.expect("acknowledged by the broker");

    let msgs = read(&names.dlq, 1, Duration::from_secs(30)).await;
    let m = &msgs[0];
    let h = headers_of(m);
    let kept = m.payload().expect("a truncated value, not none");
    assert!(kept.len() <= outputs.dead_letter_max_bytes());
    assert!(kept.len() > outputs.dead_letter_max_bytes() / 2);
    assert_eq!(kept, &value[..kept.len()], "the value's prefix");
    assert_eq!(m.key(), Some(&b"PO-77"[..]));
    assert_eq!(m.timestamp().to_millis(), Some(1_700_000_000_000));
    assert_eq!(header(&h, "traceparent"), Some("00-abc-def-01"));
    assert_eq!(header(&h, "source"), Some("edi-gateway"));
    assert_eq!(header(&h, "synclag.reason"), Some("not_json"));
    assert_eq!(
        header(&h, "synclag.error"),
        Some("expected value at line 1 column 1")
    );
    assert_eq!(header(&h, "synclag.source.topic"), Some("edi.inbound"));
    assert_eq!(header(&h, "synclag.source.partition"), Some("2"));
    assert_eq!(header(&h, "synclag.source.offset"), Some("1234"));
    assert_eq!(header(&h, TRUNCATED_HEADER), Some("value"));
    assert_eq!(
        header(&h, ORIGINAL_VALUE_BYTES_HEADER),
        Some((5 * MB).to_string().as_str())
    );
    let sha = header(&h, ORIGINAL_VALUE_SHA256_HEADER).expect("hash of the whole value");
    assert_eq!(sha.len(), 64);
    assert_eq!(
        metric_value(
            "synclag_output_truncations_total",
            &[("topic", &names.dlq), ("field", "value")]
        ),
        Some(1.0)
    );
}

/// Many dead letters handed over without awaiting each: with a producer queue of only 50
/// records, enqueueing has to wait for room (back-pressure, counted) rather than fail, and
/// every record arrives once, in enqueue order on its partition.
#[tokio::test]
async fn many_dead_letters_enqueued_at_once_arrive_once_and_in_order() {
    const N: usize = 5_000;
    const PARTITIONS: i32 = 4;
    metrics_on();
    let names = Names::new();
    support::create_topic(&names.dlq, PARTITIONS).await;
    let outputs = Outputs::new(&topology(
        &names,
        false,
        &[("queue.buffering.max.messages", "50")],
    ))
    .expect("outputs");

    let payloads: Vec<String> = (0..N).map(|i| format!("{{\"bad\": {i}")).collect();
    let keys: Vec<String> = (0..N).map(|i| format!("key-{}", i % 37)).collect();
    let mut acks = Vec::with_capacity(N);
    for i in 0..N {
        let record = RecordView {
            topic: "shop.orders",
            partition: 0,
            offset: i as i64,
            key: Some(keys[i].as_bytes()),
            payload: Some(payloads[i].as_bytes()),
            headers: &[],
            timestamp_ms: None,
        };
        acks.push(
            outputs
                .enqueue_dead_letter(&record, "not_json", "EOF while parsing")
                .await
                .expect("enqueued, waiting for room when the queue is full"),
        );
    }
    for (i, ack) in join_all(acks).await.into_iter().enumerate() {
        ack.unwrap_or_else(|e| panic!("dead letter {i} not acknowledged: {e}"));
    }

    let msgs = read(&names.dlq, N, Duration::from_secs(60)).await;
    let mut seen = vec![0u32; N];
    let mut last_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    for m in &msgs {
        let h = headers_of(m);
        let offset: i64 = header(&h, "synclag.source.offset")
            .expect("source offset header")
            .parse()
            .expect("a number");
        seen[offset as usize] += 1;
        assert_eq!(m.payload(), Some(payloads[offset as usize].as_bytes()));
        let last = last_per_partition.insert(m.partition(), offset);
        assert!(
            last.is_none_or(|l| l < offset),
            "partition {}: source offset {offset} after {last:?}",
            m.partition()
        );
        let key = m.key().expect("key kept").to_vec();
        assert_eq!(
            *partition_of_key.entry(key).or_insert(m.partition()),
            m.partition(),
            "one key, one partition"
        );
    }
    let missing: Vec<usize> = (0..N).filter(|&i| seen[i] == 0).collect();
    let doubled: Vec<usize> = (0..N).filter(|&i| seen[i] > 1).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");

    // Exactly once on the broker too: the topic holds N records, no retried duplicates.
    let probe = support::consumer(&support::random_name("out-probe"));
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (low, high) = probe
            .fetch_watermarks(&names.dlq, p, Duration::from_secs(10))
            .expect("watermarks");
        total += high - low;
    }
    assert_eq!(total, N as i64);

    let waits = metric_value(
        "synclag_output_queue_full_wait_seconds_count",
        &[("topic", &names.dlq)],
    )
    .unwrap_or(0.0);
    assert!(
        waits > 0.0,
        "the 50-record queue filled and enqueueing waited"
    );
    assert_eq!(
        metric_value(
            "synclag_output_queue_full_waiting_records",
            &[("topic", &names.dlq)]
        ),
        Some(0.0),
        "no record is left waiting"
    );
    assert_eq!(
        metric_value(
            "synclag_output_records_total",
            &[("topic", &names.dlq), ("result", "ok")]
        ),
        Some(N as f64)
    );
}

/// A dead letter of source offset `i` (for the ordering and outage tests).
fn numbered<'a>(i: usize, payloads: &'a [String], keys: &'a [String]) -> RecordView<'a> {
    RecordView {
        topic: "shop.orders",
        partition: 0,
        offset: i as i64,
        key: Some(keys[i].as_bytes()),
        payload: Some(payloads[i].as_bytes()),
        headers: &[],
        timestamp_ms: None,
    }
}

/// While the broker is down, outputs are accepted and wait — longer than the 30 s after
/// which they used to be given up — and once it is back every one is delivered, once and
/// in order. Relies on the producer's `message.timeout.ms` being 0 (synclag's default from
/// `config::kafka::producer_config`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_wait_through_a_broker_outage_and_are_all_delivered() {
    const N: usize = 200;
    const OUTAGE: Duration = Duration::from_secs(40);
    metrics_on();
    let broker = std::sync::Arc::new(
        tokio::task::spawn_blocking(support::kafka::DedicatedBroker::start)
            .await
            .expect("start a dedicated broker"),
    );
    let bootstrap = broker.bootstrap().to_string();
    let names = Names::new();
    support::kafka::create_topic_on(&bootstrap, &names.dlq, 1).await;
    support::kafka::create_topic_on(&bootstrap, &names.breaches, 1).await;
    let outputs = Outputs::new(&topology_on(&bootstrap, &names, false, &[])).expect("outputs");
    let payloads: Vec<String> = (0..=N).map(|i| format!("{{\"bad\": {i}")).collect();
    let keys: Vec<String> = (0..=N).map(|i| format!("key-{}", i % 7)).collect();
    // One delivered before the outage: metadata and producer id are in place.
    outputs
        .enqueue_dead_letter(&numbered(0, &payloads, &keys), "not_json", "e")
        .await
        .expect("enqueued")
        .await
        .expect("delivered before the outage");

    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.stop())
        .await
        .expect("stop the broker");
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 1..=N {
        acks.push(
            outputs
                .enqueue_dead_letter(&numbered(i, &payloads, &keys), "not_json", "e")
                .await
                .expect("accepted while the broker is down"),
        );
    }
    acks.push(
        outputs
            .enqueue_breach(&oversized_breach())
            .await
            .expect("accepted while the broker is down"),
    );
    // Neither delivered nor given up while the broker is away.
    let early = tokio::time::timeout(OUTAGE, futures::StreamExt::next(&mut acks)).await;
    assert!(
        early.is_err(),
        "an output settled during the outage instead of waiting: {early:?}"
    );

    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.restart())
        .await
        .expect("restart the broker");
    let settled = tokio::time::timeout(Duration::from_secs(120), async {
        let mut results = Vec::new();
        while let Some(r) = futures::StreamExt::next(&mut acks).await {
            results.push(r);
        }
        results
    })
    .await
    .expect("every output acknowledged within 2 minutes of the broker's return");
    assert_eq!(settled.len(), N + 1);
    for r in settled {
        r.expect("acknowledged after the outage");
    }

    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", support::random_name("out-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[names.dlq.as_str(), names.breaches.as_str()])
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut offsets, mut breaches) = (Vec::new(), 0);
    while offsets.len() < N + 1 || breaches < 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "read {} dead letters and {breaches} breach events after the outage",
            offsets.len()
        );
        let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let m = msg.expect("consume").detach();
        if m.topic() == names.breaches {
            breaches += 1;
            continue;
        }
        let h = headers_of(&m);
        let offset: usize = header(&h, "synclag.source.offset")
            .expect("source offset header")
            .parse()
            .expect("a number");
        offsets.push(offset);
    }
    assert_eq!(
        offsets,
        (0..=N).collect::<Vec<_>>(),
        "every dead letter once, in the order written"
    );
    let (low, high) = consumer
        .fetch_watermarks(&names.dlq, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(high - low, N as i64 + 1, "no duplicate written by a retry");
}
