//! The output transactions of several instances (`store.repartition`), on the harness
//! broker: outputs are committed only with the input offsets they came from. When the
//! consumer group moved on before a transaction committed (partitions went to another
//! member), its outputs are dropped, not written again without their offsets — the new
//! owner writes them again from the committed state, and a copy committed here would be a
//! second alert or a state that already holds what is processed again. An emitter the
//! pipeline gave up (it starts again after partitions moved) commits nothing more and
//! does not replace its fenced producer, which would fence the next pipeline's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use synclag::config::Topology;
use synclag::emit::emitter::{Commit, Emitter, Output, RoutedBatch, Transactional};
use synclag::emit::producer::{Outputs, TxnFailure};

fn topology(name: &str) -> Arc<Topology> {
    let yaml = format!(
        r#"
service:
  group_id: {name}-group
  instance_id: {name}-instance
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
store:
  changelog_topic: {name}-changelog
  exactly_once: true
  repartition: true
outputs:
  breaches_topic: {name}-breaches
  lag_topic: {name}-lag
  incidents_topic: {name}-incidents
  dead_letter_topic: {name}-dlq
streams:
  - name: orders
    topic: {name}-orders
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: odoo
    topic: {name}-odoo
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
    Arc::new(Topology::from_yaml_str("test", &yaml, Vec::new()).expect("topology"))
}

fn transactional(topology: &Arc<Topology>, bound_to_offsets: bool) -> Transactional {
    let t = topology.clone();
    Transactional {
        factory: Arc::new(move || Outputs::new(&t)),
        bound_to_offsets,
    }
}

/// A registered transactional producer of `topology`'s instance.
fn registered(topology: &Topology) -> Arc<Outputs> {
    let outputs = Outputs::new(topology).expect("producer");
    tokio::task::block_in_place(|| outputs.txn_init(Duration::from_secs(30)))
        .expect("transactional id registered");
    Arc::new(outputs)
}

/// Stage-like records for `topic`, one per partition 0 and 1.
fn routed(topic: &str, tag: &str) -> Output {
    Output::Routed(RoutedBatch {
        topic: Arc::from(topic),
        records: (0..2)
            .map(|p| (p, format!("{tag}-{p}").into_bytes(), b"stage".to_vec()))
            .collect(),
    })
}

/// Polls `consumer` until it has an assignment.
async fn joined(consumer: &StreamConsumer, what: &str) {
    support::wait_until_async(Duration::from_secs(60), what, || async {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
    })
    .await;
}

/// The group metadata of a member of `group` after another member joined: the
/// generation it carries is over.
async fn stale_group_metadata(
    input: &str,
    group: &str,
) -> Arc<rdkafka::consumer::ConsumerGroupMetadata> {
    let first = support::kafka::consumer(group);
    first.subscribe(&[input]).expect("subscribe");
    joined(&first, "the first member has partitions").await;
    let stale = first.group_metadata().expect("group metadata");
    let second = support::kafka::consumer(group);
    second.subscribe(&[input]).expect("subscribe");
    // Both keep polling until the second member has partitions: a new generation.
    support::wait_until_async(
        Duration::from_secs(60),
        "the second member has partitions",
        || async {
            let _ = tokio::time::timeout(Duration::from_millis(100), first.recv()).await;
            let _ = tokio::time::timeout(Duration::from_millis(100), second.recv()).await;
            second.assignment().map(|a| a.count() > 0).unwrap_or(false)
        },
    )
    .await;
    // The members stay in the group until the test ends.
    std::mem::forget(first);
    std::mem::forget(second);
    Arc::new(stale)
}

/// The next pipeline writes its stage records through `next` and commits them; returns
/// its emitter once a `read_committed` reader sees them.
async fn next_pipeline_commits(
    topology: &Arc<Topology>,
    next: Arc<Outputs>,
    stages: &str,
) -> Emitter {
    let mut emitter = Emitter::start(next, &topology.outputs, Some(transactional(topology, true)));
    emitter.submit(routed(stages, "next"));
    emitter.submit(Output::Commit(Box::new(Commit {
        offsets: Vec::new(),
        group: None,
    })));
    support::wait_until_async(
        Duration::from_secs(60),
        "the next pipeline's outputs commit",
        || async { committed_keys(stages).len() >= 2 },
    )
    .await;
    emitter
}

fn committed_keys(topic: &str) -> Vec<String> {
    let mut keys: Vec<String> = support::topics::read_all(support::kafka::client_config(), topic)
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect();
    keys.sort();
    keys
}

fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let c = support::kafka::consumer(group);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements().first().and_then(|e| match e.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_group_moved_on_is_dropped_not_committed_without_its_offsets() {
    let name = support::random_name("txn-moved");
    let topology = topology(&name);
    let input = format!("{name}-orders");
    let stages = format!("{name}-stages");
    support::kafka::create_topic(&input, 2).await;
    support::kafka::create_topic(&stages, 2).await;
    let group = format!("{name}-group");
    let stale = stale_group_metadata(&input, &group).await;

    let outputs = registered(&topology);
    let mut emitter = Emitter::start(
        outputs,
        &topology.outputs,
        Some(transactional(&topology, true)),
    );
    emitter.submit(routed(&stages, "moved"));
    emitter.submit(Output::Commit(Box::new(Commit {
        offsets: vec![((input.clone(), 0), 5), ((input.clone(), 1), 7)],
        group: Some(stale),
    })));
    support::wait_until_async(
        Duration::from_secs(90),
        "the emitter reports its outputs dropped",
        || async { emitter.rolled_back().is_some() },
    )
    .await;
    let why = emitter.rolled_back().unwrap_or_default().to_string();
    assert!(
        why.contains("group moved on"),
        "the reason names the group: {why}"
    );
    // What it would have written again, had it done so, commits within a second or two.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        committed_keys(&stages),
        Vec::<String>::new(),
        "no output of the refused transaction is committed"
    );
    assert_eq!(
        committed_offset(&group, &input, 0),
        None,
        "offsets stay where they were"
    );
    // It writes nothing more: a later output and commit are not delivered either.
    emitter.submit(routed(&stages, "after"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(committed_keys(&stages), Vec::<String>::new());
    emitter.retire().await;

    // The next pipeline's producer registers and commits as usual.
    let next = registered(&topology);
    let _emitter = next_pipeline_commits(&topology, next, &stages).await;
    assert_eq!(committed_keys(&stages), vec!["next-0", "next-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_emitter_commits_nothing_more_and_does_not_fence_the_next_producer() {
    let name = support::random_name("txn-retired");
    let topology = topology(&name);
    let stages = format!("{name}-stages");
    support::kafka::create_topic(&stages, 2).await;

    // The pipeline's emitter has outputs in its open transaction.
    let mut old = Emitter::start(
        registered(&topology),
        &topology.outputs,
        Some(transactional(&topology, true)),
    );
    old.submit(routed(&stages, "old"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Partitions moved: the next pipeline's producer registers the same transactional id,
    // which fences the old one and aborts its transaction. The old emitter's commit fails
    // for it; it waits to replace its producer when the pipeline gives it up.
    let next = registered(&topology);
    old.submit(Output::Commit(Box::new(Commit {
        offsets: Vec::new(),
        group: None,
    })));
    tokio::time::sleep(Duration::from_secs(1)).await;
    old.retire().await;

    // Had the old emitter gone on, it would now replace its fenced producer (after 5 s),
    // fencing this one, and write its outputs again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let producer = next.clone();
    tokio::task::block_in_place(|| {
        producer.txn_begin().expect("begin");
        producer
            .txn_commit(&[], None, Duration::from_secs(30))
            .expect("the next producer is not fenced");
    });
    let _emitter = next_pipeline_commits(&topology, next, &stages).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed_keys(&stages),
        vec!["next-0", "next-1"],
        "only the next pipeline's outputs are committed"
    );
}

/// A commit whose call timed out is resumed by calling it again. The input offsets were
/// already added to the transaction then: adding them again is refused by the producer as
/// a conflict with the pending commit (retriable) for as long as it is retried, and the
/// breaches in the transaction were never committed (seen after a broker outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_timed_out_is_resumed_with_its_offsets_not_sent_again() {
    let name = support::random_name("txn-resume");
    let topology = topology(&name);
    let input = format!("{name}-orders");
    let out = format!("{name}-out");
    support::kafka::create_topic(&input, 1).await;
    support::kafka::create_topic(&out, 1).await;
    let group = format!("{name}-group");
    let member = support::kafka::consumer(&group);
    member.subscribe(&[&input]).expect("subscribe");
    joined(&member, "the member has its partition").await;
    let metadata = member.group_metadata().expect("group metadata");

    let outputs = registered(&topology);
    tokio::task::block_in_place(|| outputs.txn_begin()).expect("begin");
    // Enough in flight that a commit given a millisecond cannot flush it.
    let payload = vec![b'x'; 1000];
    let mut acks = Vec::new();
    for i in 0..5_000 {
        let key = format!("k{i}");
        acks.push(
            outputs
                .enqueue_raw(&out, Some(0), key.as_bytes(), Some(&payload))
                .await
                .expect("queued"),
        );
    }
    let offsets = vec![((input.clone(), 0), 42)];
    let mut timed_out = 0;
    let mut last = None;
    for _ in 0..600 {
        let o = outputs.clone();
        let (offsets, metadata) = (&offsets, &metadata);
        match tokio::task::block_in_place(move || {
            o.txn_commit(offsets, Some(metadata), Duration::from_millis(1))
        }) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(TxnFailure::Retry(why)) => {
                timed_out += 1;
                last = Some(why);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the commit failed: {e}"),
        }
    }
    assert_eq!(
        last, None,
        "the commit never completed after {timed_out} retries"
    );
    assert!(
        timed_out > 0,
        "no call timed out: the commit was not resumed"
    );
    for ack in acks {
        ack.await.expect("delivered");
    }
    assert_eq!(
        committed_offset(&group, &input, 0),
        Some(42),
        "the offsets are committed with the transaction"
    );
    assert_eq!(
        support::topics::read_all(support::kafka::client_config(), &out).len(),
        5_000,
        "every record of the transaction is committed"
    );
}
