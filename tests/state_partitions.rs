//! The changelog by partition, on the harness broker: synclag places each record on
//! `route::partition_of(key)` whatever partitioner the producer is configured with, and
//! an owner of some partition numbers restores exactly the keys placed there.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synclag::config::Topology;
use synclag::correlate::{CorrelationId, Engine, Origin, StageEvent, Timestamps};
use synclag::emit::emitter::Emitter;
use synclag::emit::producer::Outputs;
use synclag::ingest::commit::CommitGate;
use synclag::rules::{Masker, Rules};
use synclag::service::outcomes::Outcomes;
use synclag::service::state::DurableState;

const PARTITIONS: i32 = 6;

fn topology(topic: &str) -> Topology {
    let yaml = format!(
        r#"
service:
  group_id: {topic}-group
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
    # Not the partitioner keys were placed with so far: placement must not depend on it.
    partitioner: murmur2_random
store:
  changelog_topic: {topic}
  changelog_partitions: {PARTITIONS}
  changelog_replication: 1
  exactly_once: false
outputs:
  breaches_topic: {topic}-breaches
  lag_topic: {topic}-lag
  incidents_topic: {topic}-incidents
  dead_letter_topic: {topic}-dlq
streams:
  - name: orders
    topic: {topic}-orders
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
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
"#,
        bootstrap = support::bootstrap()
    );
    Topology::from_yaml_str("state_partitions.yaml", &yaml, Vec::new()).expect("topology")
}

fn start(id: &str, at: i64) -> StageEvent {
    StageEvent {
        workflow: 0,
        stage: 0,
        correlation_id: CorrelationId::from(id),
        ts: Timestamps {
            source_event_ms: Some(at),
            ..Timestamps::default()
        },
        dimensions: Vec::new(),
        origin: Origin {
            partition_id: 0,
            offset: 0,
        },
    }
}

/// The durable state of a new changelog topic, and an engine restored from it (empty),
/// tracking its changes as the service's does.
async fn fresh_state(topology: &Topology) -> (DurableState, Engine) {
    let mut state = DurableState::new(topology);
    state
        .create_topic(topology, &Default::default())
        .await
        .expect("changelog topic");
    let mut engine = Engine::new(&Rules::engine_config(topology)).expect("engine");
    tokio::task::block_in_place(|| state.restore(topology, &mut engine, &mut |_, _| {}, 0))
        .expect("restore of the empty changelog");
    (state, engine)
}

/// Cuts the engine's changes and writes them to the changelog through the service's own
/// path; returns once the broker has them.
async fn write_cut(
    topology: &Topology,
    state: &mut DurableState,
    engine: &mut Engine,
    outcomes: &mut Outcomes,
    now: i64,
) {
    state.cut(engine, outcomes, HashMap::new(), 0, now);
    flush_all(topology, state).await;
}

/// The start of `id` read again by a restored engine that remembers its end: a
/// duplicate, not a new correlation.
fn assert_start_is_a_duplicate(engine: &mut Engine, id: &str, t0: i64) {
    let mut again = Vec::new();
    engine
        .process(start(id, t0), &mut again)
        .expect("start read again");
    assert!(
        again
            .iter()
            .all(|o| !matches!(o.kind, synclag::correlate::OutcomeKind::Completed { .. })),
        "{id}: a duplicate, not a new correlation: {again:?}"
    );
}

/// Writes what `state` has waiting (a restore's deletions) and waits for the broker.
async fn flush_all(topology: &Topology, state: &mut DurableState) {
    let outputs = Arc::new(Outputs::new(topology).expect("producer"));
    let mut emitter = Emitter::start(outputs, &topology.outputs, None);
    state.flush(u64::MAX, &mut emitter, &mut CommitGate::default());
    assert!(
        emitter
            .drain(Instant::now() + Duration::from_secs(30))
            .await,
        "changelog records acknowledged"
    );
}

fn pending_ids(engine: &Engine) -> BTreeSet<String> {
    engine
        .export_pending()
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.correlation_id).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_placed_by_key_and_an_owner_restores_its_partitions_only() {
    let topic = support::random_name("state-parts");
    let topology = Arc::new(topology(&topic));
    let config = Rules::engine_config(&topology);

    // Write pending correlations through the service's own changelog path.
    let (mut state, mut engine) = fresh_state(&topology).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    let ids: Vec<String> = (0..120).map(|i| format!("SO-{i:04}")).collect();
    for id in &ids {
        engine.process(start(id, now), &mut out).expect("start");
    }
    let mut outcomes = Outcomes::new(topology.clone(), Masker::off());
    write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;

    // Every record is on the partition its key hashes to.
    let records = support::topics::read_all(support::client_config(), &topic);
    assert_eq!(
        records.len(),
        ids.len(),
        "one record per pending correlation"
    );
    let mut by_partition: HashMap<i32, BTreeSet<String>> = HashMap::new();
    for m in &records {
        use rdkafka::Message;
        let key = m.key().expect("keyed");
        assert_eq!(
            m.partition(),
            synclag::route::partition_of(key, PARTITIONS),
            "record placed by its key"
        );
        let (_, id) = synclag::correlate::durable::decode_key(key).expect("changelog key");
        by_partition
            .entry(m.partition())
            .or_default()
            .insert(String::from_utf8_lossy(id).into_owned());
    }
    assert!(
        by_partition.len() >= 4,
        "keys spread over partitions: {by_partition:?}"
    );

    // An owner of partitions 1 and 4 restores exactly their keys.
    let mut owner = Engine::new(&config).expect("engine");
    let report = tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore_partitions(
            &topology,
            &mut owner,
            &mut |_, _| {},
            now,
            Some(&[1, 4]),
        )
    })
    .expect("restore of two partitions");
    let expected: BTreeSet<String> = [1, 4]
        .iter()
        .flat_map(|p| by_partition.get(p).cloned().unwrap_or_default())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(pending_ids(&owner), expected);
    assert_eq!(report.pending as usize, expected.len());

    // All partitions: every key.
    let mut all = Engine::new(&config).expect("engine");
    tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore(&topology, &mut all, &mut |_, _| {}, now)
    })
    .expect("full restore");
    assert_eq!(pending_ids(&all), ids.iter().cloned().collect());

    // A partition the topic does not have is refused, not skipped.
    let err = tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore_partitions(
            &topology,
            &mut Engine::new(&config).expect("engine"),
            &mut |_, _| {},
            now,
            Some(&[2, PARTITIONS]),
        )
    })
    .expect_err("unknown partition");
    assert!(
        err.to_string()
            .contains("partition 6 asked for, the topic has 6"),
        "{err}"
    );
}

fn closing(id: &str, at: i64) -> StageEvent {
    StageEvent {
        stage: 1,
        ..start(id, at)
    }
}

/// A correlation whose closing record is read before its start (another partition, read
/// further), completed by the start past both tiers while its outcomes wait for the
/// clock: written to the changelog at that moment and restored, the start read again
/// completes it. (Restored as the started entry that still held its closing stage, the
/// start was a duplicate, the correlation never completed, and a false critical breach
/// and `never_arrived` followed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breached_completion_completed_by_its_start_completes_again_after_a_restore() {
    let topic = support::random_name("state-held-close");
    let topology = Arc::new(topology(&topic));
    let config = Rules::engine_config(&topology);
    let (mut state, mut engine) = fresh_state(&topology).await;
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000;
    let id = "SO-HELD-1";
    let mut out = Vec::new();
    // Closed 20 minutes after its start: past warn (5m) and critical (15m).
    engine
        .process(closing(id, t0 + 1_200_000), &mut out)
        .expect("close");
    assert!(out.is_empty(), "held until its start: {out:?}");
    engine.process(start(id, t0), &mut out).expect("start");
    assert_eq!(out.len(), 3, "two breaches and the completion: {out:?}");
    // The outcomes wait for the clock (it has not moved), as while a backlog is read.
    let mut outcomes = Outcomes::new(topology.clone(), Masker::off());
    outcomes.take_lane(synclag::service::outcomes::DIRECT, &mut out, 1);
    write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;

    // Restored elsewhere; the start is read again (offsets stayed behind it).
    let mut restored = Engine::new(&config).expect("engine");
    tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore(&topology, &mut restored, &mut |_, _| {}, now)
    })
    .expect("restore");
    assert_eq!(pending_ids(&restored), BTreeSet::from([id.to_string()]));
    let mut again = Vec::new();
    restored
        .process(start(id, t0), &mut again)
        .expect("start read again");
    let completed = again
        .iter()
        .filter(|o| matches!(o.kind, synclag::correlate::OutcomeKind::Completed { .. }))
        .count();
    assert_eq!(completed, 1, "completed once: {again:?}");
    assert!(pending_ids(&restored).is_empty());
    // However far the clock goes, nothing else is raised for it.
    let mut later = Vec::new();
    restored.advance(now + 10_800_000, &mut later);
    assert!(later.is_empty(), "{later:?}");
}

/// Kinds of the changelog records written for `id`, in the order written (a finished
/// batch that holds it counts as its `finished` record).
fn written_for(topic: &str, id: &str) -> Vec<&'static str> {
    use rdkafka::Message;
    support::topics::read_all(support::client_config(), topic)
        .iter()
        .filter_map(|m| {
            if let (Some(key), Some(value)) = (m.key(), m.payload()) {
                if let Some(batch) = synclag::correlate::durable::decode_finished_batch(
                    key,
                    value,
                    &["order_import"],
                ) {
                    let images = batch.expect("a readable finished batch");
                    let holds = images.iter().any(|f| &*f.correlation_id == id.as_bytes());
                    return holds.then_some("finished");
                }
            }
            let (_, key_id) = synclag::correlate::durable::decode_key(m.key()?).ok()?;
            if key_id != id.as_bytes() {
                return None;
            }
            let Some(value) = m.payload() else {
                return Some("deleted");
            };
            match synclag::correlate::durable::decode(m.key()?, value, &["order_import"]) {
                Ok(synclag::correlate::durable::Image::Pending(_)) => Some("pending"),
                Ok(synclag::correlate::durable::Image::Finished(_)) => Some("finished"),
                Err(_) => Some("unreadable"),
            }
        })
        .collect()
}

/// A completion within its SLA whose outcome waits for the clock is written as finished at
/// the first cut, and neither the cuts while it waits nor its release write it again (a
/// cut every tick wrote it at each of them, and a deletion for each later). Restored, the
/// start read again is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_end_is_written_once_however_many_cuts_it_waits() {
    let topic = support::random_name("state-held-once");
    let topology = Arc::new(topology(&topic));
    let config = Rules::engine_config(&topology);
    let (mut state, mut engine) = fresh_state(&topology).await;
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000;
    let id = "SO-HELD-ONCE";
    let mut out = Vec::new();
    engine.process(start(id, t0), &mut out).expect("start");
    engine
        .process(closing(id, t0 + 60_000), &mut out)
        .expect("close within the SLA");
    let mut outcomes = Outcomes::new(topology.clone(), Masker::off());
    outcomes.track_ended();
    outcomes.take_lane(synclag::service::outcomes::DIRECT, &mut out, 1);
    for _ in 0..3 {
        write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;
    }
    assert_eq!(written_for(&topic, id), ["finished"], "held: written once");

    // Released; the next cuts write nothing more for it.
    let signals = synclag::rules::SignalBook::new(1_000);
    let ctx = synclag::service::outcomes::Context {
        signals: &signals,
        backlogged: &[],
        stalled: &HashMap::new(),
        wall_ms: now,
    };
    let mut raised = Vec::new();
    outcomes.release(now, true, &ctx, &mut raised);
    assert!(raised.is_empty(), "within its SLA: {raised:?}");
    for _ in 0..2 {
        write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;
    }
    assert_eq!(written_for(&topic, id), ["finished"], "released: not again");

    let mut restored = Engine::new(&config).expect("engine");
    tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore(&topology, &mut restored, &mut |_, _| {}, now)
    })
    .expect("restore");
    assert_start_is_a_duplicate(&mut restored, id, t0);
    assert!(pending_ids(&restored).is_empty());
}

/// Correlations that end between two cuts are remembered in one finished batch per
/// partition instead of a record per key, and the pending image of each is deleted after
/// its batch, on the batch's partition. Restored, their starts read again are duplicates,
/// nothing stays pending, and the batch is deleted once its ends are old enough. A write
/// cut short between a batch and the deletions after it (a crash) is finished by the
/// restore: the pending images it left are deleted then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_are_written_in_one_batch_per_partition_and_their_pending_images_deleted() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::Message;
    let topic = support::random_name("state-batched");
    let topology = Arc::new(self::topology(&topic));
    let config = Rules::engine_config(&topology);
    let (mut state, mut engine) = fresh_state(&topology).await;
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000;
    let ids: Vec<String> = (0..60).map(|i| format!("SO-B{i:03}")).collect();
    let mut out = Vec::new();
    for id in &ids {
        engine.process(start(id, t0), &mut out).expect("start");
    }
    let mut outcomes = Outcomes::new(topology.clone(), Masker::off());
    outcomes.track_ended();
    write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;
    for id in &ids {
        engine
            .process(closing(id, t0 + 60_000), &mut out)
            .expect("close within the SLA");
    }
    outcomes.take_lane(synclag::service::outcomes::DIRECT, &mut out, 1);
    write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;

    let records = support::topics::read_all(support::client_config(), &topic);
    for id in &ids {
        assert_eq!(
            written_for(&topic, id),
            ["pending", "finished", "deleted"],
            "{id}"
        );
    }
    // One batch per partition that has ends, on that partition, with its keys' deletions
    // after it there.
    let mut batches = 0;
    let mut batch_at: HashMap<i32, i64> = HashMap::new();
    for m in &records {
        let (Some(key), Some(value)) = (m.key(), m.payload()) else {
            continue;
        };
        let Some(batch) =
            synclag::correlate::durable::decode_finished_batch(key, value, &["order_import"])
        else {
            continue;
        };
        batches += 1;
        for f in batch.expect("readable") {
            let record_key =
                synclag::correlate::durable::encode_key("order_import", &f.correlation_id);
            assert_eq!(
                synclag::route::partition_of(&record_key, PARTITIONS),
                m.partition(),
                "an end is batched on its key's partition"
            );
        }
        assert!(
            batch_at.insert(m.partition(), m.offset()).is_none(),
            "one batch a partition"
        );
    }
    assert!(
        (2..=PARTITIONS as usize).contains(&batches),
        "{batches} batches for 60 ends"
    );
    for m in &records {
        if m.payload().is_none() {
            let key = m.key().expect("keyed");
            assert_eq!(m.partition(), synclag::route::partition_of(key, PARTITIONS));
            assert!(
                m.offset() > batch_at[&m.partition()],
                "deleted after its batch"
            );
        }
    }
    let lag = records
        .iter()
        .filter(|m| {
            let (Some(k), Some(v)) = (m.key(), m.payload()) else {
                return false;
            };
            synclag::correlate::durable::decode_lag(k, v, &["order_import"]).is_some()
        })
        .count();
    assert_eq!(
        records.len(),
        2 * ids.len() + batches + lag,
        "per correlation its pending image and its deletion, and the batches"
    );

    // Restored: nothing pending, and each start read again is a duplicate.
    let restore = |topology: &Topology, at: i64| {
        let mut restored = Engine::new(&config).expect("engine");
        let mut state = DurableState::new(topology);
        let report = tokio::task::block_in_place(|| {
            state.restore(topology, &mut restored, &mut |_, _| {}, at)
        })
        .expect("restore");
        (restored, state, report)
    };
    let (mut restored, _, report) = restore(&topology, now);
    assert!(pending_ids(&restored).is_empty());
    assert_eq!(report.finished as usize, ids.len());
    for id in &ids {
        assert_start_is_a_duplicate(&mut restored, id, t0);
    }

    // The same records without the deletions, as if the writer died after the batches:
    // the restore deletes the pending images it finds ended.
    let short = support::random_name("state-batched-short");
    let short_topology = Arc::new(self::topology(&short));
    let (_, _) = fresh_state(&short_topology).await;
    let producer: ThreadedProducer<DefaultProducerContext> =
        support::client_config().create().expect("producer");
    for m in records.iter().filter(|m| m.payload().is_some()) {
        let key = m.key().expect("keyed");
        producer
            .send(
                BaseRecord::to(&short)
                    .partition(m.partition())
                    .key(key)
                    .payload(m.payload().unwrap_or_default()),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("copied");
    let (restored, mut state, _) = restore(&short_topology, now);
    assert!(pending_ids(&restored).is_empty(), "the batch ends them");
    flush_all(&short_topology, &mut state).await;
    for id in &ids {
        assert_eq!(
            written_for(&short, id),
            ["pending", "finished", "deleted"],
            "{id}: deleted at the restore"
        );
    }

    // Restored once its ends are old enough (start + 2 × window): the batches are deleted.
    let (_, mut state, report) = restore(&topology, t0 + 2 * 7_200_000 + 1);
    assert_eq!(report.expired as usize, batches);
    flush_all(&topology, &mut state).await;
    let deleted_batches = support::topics::read_all(support::client_config(), &topic)
        .iter()
        .filter(|m| {
            m.payload().is_none()
                && m.key().is_some_and(|k| {
                    synclag::correlate::durable::decode_finished_batch(k, b"", &["order_import"])
                        .is_some()
                })
        })
        .count();
    assert_eq!(deleted_batches, batches);
}

/// Many ends in one cut are written in several finished batches, each within the
/// record size a topic takes by default: one record of all of a partition's ends was refused by the
/// broker (over `max.message.bytes`) and, a changelog record never being dropped, retried
/// forever, holding every later cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_of_many_ends_stays_within_the_record_size_a_topic_takes() {
    use rdkafka::Message;
    let topic = support::random_name("state-batched-big");
    let topology = Arc::new(self::topology(&topic));
    let config = Rules::engine_config(&topology);
    let (mut state, mut engine) = fresh_state(&topology).await;
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000;
    // About 100 bytes an end: each partition's share is more than the broker's default
    // record limit (about 1 MiB).
    let ids: Vec<String> = (0..80_000)
        .map(|i| format!("SO-{i:08}-a-long-correlation-id-as-some-producers-send-them"))
        .collect();
    let mut out = Vec::new();
    for id in &ids {
        engine.process(start(id, t0), &mut out).expect("start");
        engine
            .process(closing(id, t0 + 60_000), &mut out)
            .expect("close within the SLA");
    }
    let mut outcomes = Outcomes::new(topology.clone(), Masker::off());
    outcomes.track_ended();
    outcomes.take_lane(synclag::service::outcomes::DIRECT, &mut out, 1);
    write_cut(&topology, &mut state, &mut engine, &mut outcomes, now).await;

    let records = support::topics::read_all(support::client_config(), &topic);
    let mut ends = 0;
    let mut batches_on: HashMap<i32, usize> = HashMap::new();
    for m in &records {
        let (Some(key), Some(value)) = (m.key(), m.payload()) else {
            continue;
        };
        if let Some(batch) =
            synclag::correlate::durable::decode_finished_batch(key, value, &["order_import"])
        {
            assert!(value.len() <= 256 * 1024, "{} bytes", value.len());
            ends += batch.expect("readable").len();
            *batches_on.entry(m.partition()).or_default() += 1;
        }
    }
    assert_eq!(ends, ids.len(), "every end written");
    assert!(
        batches_on.values().any(|n| *n > 1),
        "a partition's ends split: {batches_on:?}"
    );
    let mut restored = Engine::new(&config).expect("engine");
    tokio::task::block_in_place(|| {
        DurableState::new(&topology).restore(&topology, &mut restored, &mut |_, _| {}, now)
    })
    .expect("restore");
    assert!(pending_ids(&restored).is_empty());
    assert_start_is_a_duplicate(&mut restored, &ids[0], t0);
}
