//! `synclag simulate` against the real broker and schema registry: a short `steady` run in
//! simulated time into fresh topics, then every topic is read back and compared with the
//! same run (same seed) collected in memory.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::Timestamp;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, get_schema_by_subject, SrSettings,
};
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde_json::Value as Json;
use synclag::config::field_path::{KafkaField, Segment};
use synclag::config::{FieldPath, Format, Role, Topology};
use synclag::sim::{
    kafka_sink_for, run, GroundTruth, MemorySink, RecordSink, RunOptions, Scenario, SimOptions,
    SimRecord, SimulatedClock, Simulator,
};

/// A record as read back from Kafka.
#[derive(Debug)]
struct Got {
    key: Option<String>,
    timestamp_ms: Option<i64>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn topology_with_fresh_topics() -> Topology {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml"))
        .expect("topology.yaml");
    let shipped = Topology::from_yaml_str("topology.yaml", &yaml, Vec::new()).expect("valid");
    let mut env = vec![
        (
            "SYNCLAG__KAFKA__BOOTSTRAP_SERVERS".to_string(),
            support::bootstrap(),
        ),
        (
            "SYNCLAG__KAFKA__PROPERTIES__BROKER_ADDRESS_FAMILY".to_string(),
            "v4".to_string(),
        ),
        (
            "SYNCLAG__REGISTRY__URL".to_string(),
            support::registry_url(),
        ),
    ];
    for s in &shipped.streams {
        env.push((
            format!("SYNCLAG__STREAMS__{}__TOPIC", s.name.to_uppercase()),
            support::random_name(&format!("sim-{}", s.name.replace('_', "-"))),
        ));
    }
    Topology::from_yaml_str("topology.yaml", &yaml, env).unwrap_or_else(|e| panic!("{e}"))
}

async fn simulate_into<S: RecordSink>(topology: &Topology, sink: &mut S) -> Vec<GroundTruth> {
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-03T09:00:00Z")
        .expect("start")
        .with_timezone(&Utc);
    let scenario = Scenario::resolve("steady").expect("built-in");
    let options = SimOptions {
        seed: 2026,
        start,
        duration: Some(Duration::from_secs(60)),
        rate: Some(5.0),
        drain: true,
    };
    let mut sim = Simulator::new(topology, &scenario, &options).unwrap_or_else(|e| panic!("{e}"));
    let clock = SimulatedClock::new(start);
    let mut lines: Vec<u8> = Vec::new();
    let opts = RunOptions {
        step: Duration::from_secs(1),
        progress: false,
    };
    run(&mut sim, &clock, sink, Some(&mut lines), &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8(lines)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("ground-truth line"))
        .collect()
}

fn read_path(value: &Json, got: &Got, path: &FieldPath) -> Option<String> {
    match path {
        FieldPath::Payload(segs) => {
            let mut v = value;
            for s in segs {
                v = match s {
                    Segment::Key(k) => v.get(k)?,
                    Segment::Index(i) => v.get(*i)?,
                };
            }
            v.as_str().map(String::from)
        }
        FieldPath::Header(h) => got
            .headers
            .iter()
            .find(|(k, _)| k == h)
            .map(|(_, v)| v.clone()),
        FieldPath::Kafka(KafkaField::Key) => got.key.clone(),
        FieldPath::Kafka(_) => None,
    }
}

#[tokio::test]
async fn steady_run_lands_on_kafka_as_configured() {
    let topology = topology_with_fresh_topics();
    for s in &topology.streams {
        support::create_topic(&s.topic, 3).await;
    }

    // The same seed into memory tells exactly what Kafka must hold.
    let mut memory = MemorySink::new();
    let truth = simulate_into(&topology, &mut memory).await;
    assert!(
        (200..=500).contains(&truth.len()),
        "a few hundred correlations, got {}",
        truth.len()
    );
    assert!(truth.iter().all(|g| !g.cut_off));

    let mut kafka = kafka_sink_for(&topology, None).unwrap_or_else(|e| panic!("{e}"));
    let truth_again = simulate_into(&topology, &mut kafka).await;
    assert_eq!(truth, truth_again, "same seed, same ground truth");
    let stats = kafka.stats();
    assert_eq!(stats.errors, 0, "{:?}", kafka.last_error());
    assert_eq!(stats.produced, memory.records.len() as u64);

    // Read every topic back.
    let expected_total = memory.records.len();
    let consumer = support::consumer(&support::random_name("sim-readback"));
    let topics: Vec<&str> = topology.streams.iter().map(|s| s.topic.as_str()).collect();
    consumer.subscribe(&topics).expect("subscribe");
    let mut got: HashMap<String, Vec<Got>> = HashMap::new();
    let mut total = 0usize;
    // Poll until everything is in, with a deadline (never a fixed sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while total < expected_total {
        assert!(
            std::time::Instant::now() < deadline,
            "read back only {total} of {expected_total} records"
        );
        let m = match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => continue,
        };
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        got.entry(m.topic().to_string()).or_default().push(Got {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp_ms: match m.timestamp() {
                Timestamp::CreateTime(t) => Some(t),
                _ => None,
            },
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        });
        total += 1;
    }
    // Nothing beyond what was produced.
    if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        panic!("unexpected extra record on {}", m.topic());
    }
    assert_eq!(total, expected_total, "no more records than produced");

    let settings = SrSettings::new(support::registry_url());
    let decoder = AvroDecoder::new(settings.clone());
    for (si, stream) in topology.streams.iter().enumerate() {
        let expected: Vec<&SimRecord> = memory.records.iter().filter(|r| r.stream == si).collect();
        let received = got
            .get(&stream.topic)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(
            received.len(),
            expected.len(),
            "record count on {} ({})",
            stream.topic,
            stream.name
        );
        // Steady state has no faults, so no error/throttling signals; every stage stream
        // of a workflow has traffic (batch runs come from `sim::batch`).
        let batch_only = !topology
            .workflows
            .iter()
            .any(|w| w.stages.iter().any(|st| st.stream == si));
        if stream.role == Role::Stages && !batch_only {
            assert!(!received.is_empty(), "{} got no traffic", stream.name);
        }

        // Per key, Kafka keeps the order: compare sequences key by key.
        let mut by_key_expected: BTreeMap<&str, Vec<&SimRecord>> = BTreeMap::new();
        for r in &expected {
            by_key_expected
                .entry(r.key.as_deref().expect("keyed"))
                .or_default()
                .push(r);
        }
        let mut by_key_got: BTreeMap<&str, Vec<&Got>> = BTreeMap::new();
        for g in received {
            by_key_got
                .entry(g.key.as_deref().expect("records are keyed"))
                .or_default()
                .push(g);
        }
        assert_eq!(
            by_key_expected.keys().collect::<Vec<_>>(),
            by_key_got.keys().collect::<Vec<_>>(),
            "keys on {}",
            stream.topic
        );

        let mut schema_id = None;
        for (key, exp) in &by_key_expected {
            let rec = &by_key_got[key];
            for (e, g) in exp.iter().zip(rec.iter()) {
                assert_eq!(g.timestamp_ms, Some(e.timestamp_ms), "record timestamp");
                assert_eq!(g.headers, e.headers, "headers");
                let value: Json = match stream.format {
                    Format::Avro => {
                        assert_eq!(g.payload[0], 0, "Confluent magic byte");
                        let id = u32::from_be_bytes(
                            g.payload[1..5].try_into().expect("4-byte schema id"),
                        );
                        if let Some(previous) = schema_id {
                            assert_eq!(previous, id, "one schema per stream");
                        }
                        schema_id = Some(id);
                        let decoded = decoder
                            .decode(Some(&g.payload))
                            .await
                            .unwrap_or_else(|e| panic!("registry decodes {}: {e}", stream.name));
                        let want = e.avro_value().expect("avro stream").expect("convertible");
                        assert_eq!(decoded.value, want);
                        e.value.clone()
                    }
                    _ => serde_json::from_slice(&g.payload).expect("JSON payload"),
                };
                assert_eq!(&value, &e.value, "payload on {}", stream.topic);
                assert_eq!(
                    read_path(&value, g, &stream.correlation_id).as_deref(),
                    Some(*key),
                    "correlation id at {} on {}",
                    stream.correlation_id,
                    stream.name
                );
                if stream.format == Format::DebeziumOutbox {
                    let id = g.headers.iter().find(|(k, _)| k == "id");
                    assert!(id.is_some_and(|(_, v)| v.len() == 36), "outbox id header");
                    let ty = g.headers.iter().find(|(k, _)| k == "type");
                    assert!(ty.is_some_and(|(_, v)| !v.is_empty()), "outbox type header");
                }
                if stream.format == Format::DebeziumCdc {
                    assert_eq!(value["op"], "c");
                    assert_eq!(value["before"], Json::Null);
                    assert!(value["source"]["ts_ms"].is_i64());
                }
            }
        }
        if stream.format == Format::Avro {
            let id = schema_id.expect("avro records seen");
            let registered = get_schema_by_subject(
                &settings,
                &SubjectNameStrategy::TopicNameStrategy(stream.topic.clone(), false),
            )
            .await
            .unwrap_or_else(|e| panic!("subject {}-value is registered: {e}", stream.topic));
            assert_eq!(registered.id, id, "header id is the subject's schema");
            let by_id = get_schema_by_id(id, &settings)
                .await
                .unwrap_or_else(|e| panic!("registry knows schema {id}: {e}"));
            let expected_schema = expected[0].avro_schema.as_ref().expect("schema");
            assert_eq!(
                apache_avro::Schema::parse_str(&by_id.schema).expect("valid schema"),
                expected_schema.schema
            );
        }
    }

    // Every completed correlation's stages are all on Kafka.
    let stage_records = memory
        .records
        .iter()
        .filter(|r| matches!(r.origin.kind, synclag::sim::OriginKind::Stage { .. }))
        .count();
    let planned: usize = truth.iter().map(|g| g.stages.len()).sum();
    assert_eq!(stage_records, planned);
}
