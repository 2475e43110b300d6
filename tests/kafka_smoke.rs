//! Smoke test of the real test broker: topic creation, produce with keys, headers and
//! explicit timestamps, group consumption, commits, and reading commits back.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};

const PARTITIONS: i32 = 6;
const PER_PARTITION: i64 = 3;
/// 2023-11-14T22:13:20Z: far from "now", so a broker-assigned timestamp cannot pass for it.
const BASE_TS_MS: i64 = 1_700_000_000_000;

/// One record we send and expect back unchanged.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    partition: i32,
    key: String,
    payload: String,
    timestamp_ms: i64,
    seq: String,
}

fn record_for(partition: i32, n: i64) -> Sent {
    Sent {
        partition,
        key: format!("shipment-{partition}-{n}"),
        payload: format!("{{\"partition\":{partition},\"n\":{n}}}"),
        timestamp_ms: BASE_TS_MS + i64::from(partition) * 60_000 + n * 1_000,
        seq: format!("{partition}/{n}"),
    }
}

async fn produce(producer: &FutureProducer, topic: &str, record: &Sent) -> (i32, i64) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "workflow",
            value: Some("outbound-delivery"),
        })
        .insert(Header {
            key: "seq",
            value: Some(record.seq.as_str()),
        })
        .insert(Header {
            key: "trace",
            value: None::<&[u8]>,
        });
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .partition(record.partition)
                .key(&record.key)
                .payload(&record.payload)
                .timestamp(record.timestamp_ms)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("delivery of {record:?} failed: {e}"));
    assert_eq!(
        delivery.timestamp,
        Timestamp::CreateTime(record.timestamp_ms),
        "broker acknowledged a different timestamp"
    );
    (delivery.partition, delivery.offset)
}

/// Receives exactly `count` messages (each within 30 s) and returns them as `Sent` values
/// keyed by (partition, offset), checking the fixed headers on the way.
async fn receive(consumer: &StreamConsumer, count: usize) -> BTreeMap<(i32, i64), Sent> {
    let mut got = BTreeMap::new();
    while got.len() < count {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("only {} of {count} messages arrived within 30 s", got.len())
            })
            .expect("consumer error while receiving");
        let headers = msg.headers().expect("message has headers");
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(
            names,
            ["workflow", "seq", "trace"],
            "header names and order"
        );
        let header = |i: usize| {
            headers
                .get(i)
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(0).as_deref(), Some("outbound-delivery"));
        assert_eq!(header(2), None, "null header value must stay null");
        let timestamp_ms = match msg.timestamp() {
            Timestamp::CreateTime(ts) => ts,
            other => panic!("expected a CreateTime timestamp, got {other:?}"),
        };
        let sent = Sent {
            partition: msg.partition(),
            key: String::from_utf8(msg.key().expect("message has a key").to_vec())
                .expect("utf-8 key"),
            payload: msg
                .payload_view::<str>()
                .expect("payload present")
                .expect("utf-8 payload")
                .to_owned(),
            timestamp_ms,
            seq: header(1).expect("seq header has a value"),
        };
        let previous = got.insert((msg.partition(), msg.offset()), sent);
        assert!(
            previous.is_none(),
            "duplicate delivery at {}:{}",
            msg.partition(),
            msg.offset()
        );
    }
    got
}

#[tokio::test]
async fn produce_consume_commit_and_read_committed_offsets() {
    let topic = support::random_name("smoke");
    support::create_topic(&topic, PARTITIONS).await;

    // The topic really has six partitions, each led by our broker.
    let group = support::random_name("smoke-group");
    let consumer = support::consumer(&group);
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata for the new topic");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert_eq!(partitions, (0..PARTITIONS).collect::<Vec<_>>());

    // Produce three records to every partition, with explicit partition, key, headers and
    // timestamp; remember where the broker put each one.
    let producer = support::producer();
    let mut expected = BTreeMap::new();
    for n in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            let record = record_for(partition, n);
            let (p, offset) = produce(&producer, &topic, &record).await;
            assert_eq!(p, partition);
            assert_eq!(offset, n, "offsets in a fresh partition count from 0");
            expected.insert((p, offset), record);
        }
    }

    consumer.subscribe(&[&topic]).expect("subscribe");
    let received = receive(&consumer, expected.len()).await;
    assert_eq!(received, expected);

    // Commit "everything read" for four partitions and only the first record for the other two.
    let mut commits = TopicPartitionList::new();
    let committed_next = |partition: i32| if partition < 4 { PER_PARTITION } else { 1 };
    for partition in 0..PARTITIONS {
        commits
            .add_partition_offset(&topic, partition, Offset::Offset(committed_next(partition)))
            .expect("add partition offset");
    }
    consumer
        .commit(&commits, CommitMode::Sync)
        .expect("synchronous commit");

    // A different client in the same group sees exactly those commits.
    let observer = support::consumer(&group);
    let mut query = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        query.add_partition(&topic, partition);
    }
    let committed = observer
        .committed_offsets(query, Duration::from_secs(10))
        .expect("committed offsets from a second client");
    for partition in 0..PARTITIONS {
        let elem = committed
            .find_partition(&topic, partition)
            .unwrap_or_else(|| panic!("partition {partition} missing from committed offsets"));
        assert_eq!(
            elem.offset(),
            Offset::Offset(committed_next(partition)),
            "committed offset of partition {partition}"
        );
    }

    // A group with no commits reports none.
    let stranger = support::consumer(&support::random_name("smoke-other-group"));
    let mut query = TopicPartitionList::new();
    query.add_partition(&topic, 0);
    let none = stranger
        .committed_offsets(query, Duration::from_secs(10))
        .expect("committed offsets for an unused group");
    assert_eq!(
        none.find_partition(&topic, 0).map(|e| e.offset()),
        Some(Offset::Invalid)
    );

    // After the first member leaves, a new member resumes from the commits: it re-reads the
    // two uncommitted records of partitions 4 and 5 and nothing else.
    drop(consumer);
    let resumed = support::consumer(&group);
    resumed.subscribe(&[&topic]).expect("subscribe again");
    let replayed = receive(&resumed, 4).await;
    let replayed_at: Vec<(i32, i64)> = replayed.keys().copied().collect();
    assert_eq!(replayed_at, [(4, 1), (4, 2), (5, 1), (5, 2)]);
    for (at, record) in &replayed {
        assert_eq!(Some(record), expected.get(at));
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), resumed.recv()).await;
    assert!(
        extra.is_err(),
        "no records beyond the uncommitted ones may arrive"
    );
}

#[test]
fn bootstrap_is_a_loopback_address_unless_overridden() {
    let bootstrap = support::bootstrap();
    if std::env::var(support::kafka::BOOTSTRAP_ENV).is_err() {
        assert!(
            bootstrap.starts_with("127.0.0.1:"),
            "the harness broker must listen on loopback only, got {bootstrap}"
        );
        let local = support::kafka::broker()
            .local
            .as_ref()
            .expect("a local broker was started");
        assert!(local.service.pid().is_some(), "the broker PID is known");
        assert!(local.service.exited().is_none(), "the broker is running");
    }
}

#[test]
fn cluster_ids_are_valid_for_the_storage_formatter() {
    let ids: std::collections::HashSet<String> = (0..2000)
        .map(|_| support::kafka::random_cluster_id())
        .collect();
    assert_eq!(ids.len(), 2000, "cluster ids repeat");
    for id in &ids {
        assert_eq!(id.len(), 22, "16 bytes in unpadded base64: {id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "not URL-safe base64: {id}"
        );
        assert!(
            id.starts_with(|c: char| c.is_ascii_alphabetic()),
            "an id starting with {:?} would be read as an option: {id}",
            id.chars().next()
        );
    }
}

/// The watchdog that every harness JVM runs under: it reports early exits with the log,
/// stops the service by PID on request, and stops it when the guarded process dies.
mod watchdog {
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use super::support;
    use support::process::{await_ready, run_dir, Service};

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_owned(), script.to_owned()]
    }

    fn alive(pid: u32) -> bool {
        // A zombie has no /proc/<pid>/cwd target we can read; a live process does.
        Path::new(&format!("/proc/{pid}/cwd")).read_link().is_ok()
    }

    #[test]
    fn early_exit_is_reported_with_the_log_tail() {
        let run = run_dir("watchdog-test");
        let service = Service::spawn(
            "doomed",
            Path::new("sh"),
            &sh("echo 'fatal: listener already bound' >&2; exit 3"),
            &run.join("doomed.log"),
            None,
        );
        let err = await_ready(&service, Duration::from_secs(30), || false)
            .expect_err("a service that exits is never ready");
        assert!(err.contains("exited during startup"), "{err}");
        assert!(err.contains("fatal: listener already bound"), "{err}");
    }

    #[test]
    fn stop_ends_the_service_and_removes_its_scratch_dir() {
        let run = run_dir("watchdog-test");
        let scratch = run.join("scratch");
        std::fs::create_dir_all(&scratch).expect("create scratch dir");
        let service = Service::spawn(
            "sleeper",
            Path::new("sleep"),
            &["300".to_owned()],
            &run.join("sleeper.log"),
            Some(&scratch),
        );
        support::wait_until(Duration::from_secs(10), "the sleeper has a PID", || {
            service.pid().is_some()
        });
        let pid = service.pid().expect("pid");
        assert!(alive(pid));
        service.stop();
        assert!(service.exited().is_some());
        assert!(!alive(pid), "service {pid} still running after stop()");
        assert!(!scratch.exists(), "scratch dir left behind");
    }

    #[test]
    fn service_does_not_outlive_the_guarded_process() {
        let run = run_dir("watchdog-test");
        let mut parent = Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("start a stand-in parent process");
        let service = Service::spawn_guarded_by(
            parent.id(),
            "orphan",
            Path::new("sleep"),
            &["300".to_owned()],
            &run.join("orphan.log"),
            None,
        );
        support::wait_until(Duration::from_secs(10), "the orphan has a PID", || {
            service.pid().is_some()
        });
        let pid = service.pid().expect("pid");
        assert!(alive(pid));
        parent.kill().expect("kill the stand-in parent");
        parent.wait().expect("reap the stand-in parent");
        support::wait_until(
            Duration::from_secs(15),
            "the service is stopped after its parent died",
            || service.exited().is_some(),
        );
        assert!(!alive(pid), "service {pid} outlived its parent");
    }
}

/// synclag places changelog and stages records itself (`route::partition_of`); a key must
/// land where the client's own partitioner put it before, or a changelog written by an
/// earlier version would hold one key on two partitions.
#[tokio::test]
async fn keyed_records_land_where_the_route_partitioner_places_them() {
    let topic = support::random_name("smoke-keys");
    support::create_topic(&topic, PARTITIONS).await;
    let producer = support::producer();
    let mut seen = [0u32; PARTITIONS as usize];
    for i in 0..300 {
        let key =
            synclag::correlate::durable::encode_key("order_import", format!("SO-{i}").as_bytes());
        let partition = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("x"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"))
            .partition;
        assert_eq!(
            partition,
            synclag::route::partition_of(&key, PARTITIONS),
            "key {i}"
        );
        seen[partition as usize] += 1;
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "every partition gets keys: {seen:?}"
    );
}
