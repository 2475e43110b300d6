//! The clock never stops: conditions the simulator does not make, on the real broker.
//!
//! - inputs written by a transactional producer (commit markers after the last record, an
//!   aborted transaction) still confirm as read, so breaches fire on time;
//! - a record waiting for an unreachable registry pauses only its own partition: other
//!   workflows breach on time, and a correlation that may wait behind the stalled
//!   partition still breaches, flagged `input_stalled` with the partition.

mod support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::service::SynclagProcess;
use synclag::emit::events::BreachEvent;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reads `topic` from the start (read_committed) until `done` or `timeout`.
async fn read_topic(
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = support::consumer_with(
        &support::random_name("reader"),
        &[("isolation.level", "read_committed")],
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline && !done(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

/// Breach events, JSON or Avro (Confluent wire format, decoded with our own schema).
fn breaches(msgs: &[OwnedMessage]) -> Vec<BreachEvent> {
    static SCHEMA: std::sync::OnceLock<Option<apache_avro::Schema>> = std::sync::OnceLock::new();
    let schema = SCHEMA
        .get_or_init(|| apache_avro::Schema::parse_str(synclag::emit::events::BREACH_SCHEMA).ok())
        .as_ref();
    msgs.iter()
        .filter_map(|m| {
            let payload = m.payload()?;
            if payload.first() == Some(&0) {
                let value = apache_avro::reader::datum::GenericDatumReader::builder(schema?)
                    .build()
                    .ok()?
                    .read_value(&mut payload.get(5..)?)
                    .ok()?;
                apache_avro::from_value(&value).ok()
            } else {
                serde_json::from_slice(payload).ok()
            }
        })
        .collect()
}

/// Forwards connections on `port` to `target` until `cut` is set; then it drops every
/// forwarded connection and accepts new ones without ever answering (a registry that
/// stops responding).
async fn relay(port: u16, target: String, cut: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind relay port");
    let mut forwarding: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut silent = Vec::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if cut.load(Ordering::SeqCst) {
                    for f in forwarding.drain(..) {
                        f.abort();
                    }
                }
                continue;
            }
        };
        let Ok((mut inbound, _)) = accepted else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            for f in forwarding.drain(..) {
                f.abort();
            }
            silent.push(inbound); // held open, never answered
            continue;
        }
        let target = target.clone();
        forwarding.push(tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        }));
    }
}

/// `(workflow, correlation, kind/severity)` of the events read so far.
fn kinds(msgs: &[OwnedMessage]) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for b in breaches(msgs) {
        out.entry((b.workflow.clone(), b.correlation_id.clone()))
            .or_default()
            .push(format!("{}/{}", b.kind, b.severity));
    }
    out
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_inputs_confirm_and_breach_on_time() {
    let starts = support::random_name("tx-starts");
    let ends = support::random_name("tx-ends");
    let out = support::random_name("tx-breaches");
    for t in [&starts, &ends, &out] {
        support::create_topic(t, 1).await;
    }
    let http = support::free_port();
    let config = format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h, idle_partition: 60s }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog }}
streams:
  - name: starts
    topic: {starts}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: ends
    topic: {ends}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
workflows:
  - name: tx
    stages: [ {{ name: started, stream: starts }}, {{ name: done, stream: ends }} ]
    sla: {{ warn: 3s, critical: 6s }}
    window: 60s
"#,
        group = support::random_name("synclag-tx"),
        bootstrap = support::bootstrap(),
    );
    let mut svc = SynclagProcess::start(&config, http, "tx");
    svc.wait_ready().await;

    // Every input record comes from a transactional producer, as from Kafka Connect or
    // Kafka Streams with exactly-once: each partition ends with a commit marker.
    let producer: FutureProducer = support::client_config()
        .set("transactional.id", support::random_name("txid"))
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    let t0 = now_ms();
    let send = |topic: &str, id: &str| {
        let payload = json(serde_json::json!({"id": id, "at": now_ms()}));
        let topic = topic.to_string();
        let id = id.to_string();
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&id).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
        }
    };
    producer.begin_transaction().expect("begin");
    for id in ["TX-OK", "TX-ABORTED-END", "TX-OPEN"] {
        send(&starts, id).await;
    }
    send(&ends, "TX-OK").await;
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    // The only end of TX-ABORTED-END is in an aborted transaction: it must not count.
    producer.begin_transaction().expect("begin");
    send(&ends, "TX-ABORTED-END").await;
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");

    // Both unfinished correlations breach (warn at t0 + 3 s, critical at t0 + 6 s) while
    // nothing else is ever written to the inputs: the markers must count as read.
    let msgs = read_topic(&out, Duration::from_secs(30), |m| {
        let k = kinds(m);
        ["TX-ABORTED-END", "TX-OPEN"].iter().all(|id| {
            k.get(&("tx".to_string(), id.to_string()))
                .is_some_and(|v| v.iter().any(|s| s == "breach/critical"))
        })
    })
    .await;
    let got = kinds(&msgs);
    for id in ["TX-ABORTED-END", "TX-OPEN"] {
        let v = got
            .get(&("tx".to_string(), id.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "no breach for {id} with transactional inputs; events: {got:?}\n{}",
                    svc.log_tail()
                )
            });
        assert!(v.contains(&"breach/warn".to_string()), "{id}: {v:?}");
        assert!(v.contains(&"breach/critical".to_string()), "{id}: {v:?}");
    }
    assert!(
        !got.contains_key(&("tx".to_string(), "TX-OK".to_string())),
        "a completed correlation breached: {got:?}"
    );
    // On time: raised once the inputs were confirmed read past the deadline, not after
    // some unrelated record moved the clock (none was written).
    for b in breaches(&msgs) {
        if let Some(deadline) = b.deadline_ms {
            assert!(
                b.observed_at_ms >= deadline,
                "raised before its deadline: {b:?}"
            );
            assert!(
                b.observed_at_ms - deadline < 3_000,
                "raised {} ms after its deadline",
                b.observed_at_ms - deadline
            );
        }
    }
    assert!(now_ms() - t0 < 60_000);
    let metrics = svc.get_text("/metrics").await.unwrap_or_default();
    assert!(
        metrics.contains("synclag_clock_live 1"),
        "the clock never went live on transactional inputs:\n{}",
        svc.log_tail()
    );
    assert_eq!(svc.terminate().await, Some(0));
}

const MOVE_SCHEMA: &str = r#"{"type":"record","name":"Move","namespace":"test.stall","fields":[
  {"name":"move_id","type":"string"},{"name":"moved_at","type":"long"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waiting_for_the_registry_stalls_only_its_partition() {
    let orders = support::random_name("st-orders");
    let shipments = support::random_name("st-shipments");
    let moves = support::random_name("st-moves");
    let done = support::random_name("st-done");
    let out = support::random_name("st-breaches");
    let dlq = support::random_name("st-dlq");
    let incidents = format!("{out}-incidents");
    for t in [&orders, &shipments, &moves, &done, &out, &dlq, &incidents] {
        support::create_topic(t, 1).await;
    }
    // synclag talks to the registry through a relay the test cuts once synclag has
    // registered its own output schemas (breach and incident): from then on the registry
    // stops answering, and
    // an input schema synclag has not seen cannot be fetched.
    let real = support::registry_url();
    let rest = real.trim_start_matches("http://");
    let (hostport, path) = rest.split_once('/').expect("registry url has a path");
    let relay_port = support::free_port();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(relay(relay_port, hostport.to_string(), cut.clone()));
    let via_relay = format!("http://127.0.0.1:{relay_port}/{path}");
    let enc = AvroEncoder::new(SrSettings::new(real.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        moves.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, MOVE_SCHEMA.to_string()),
    );
    let http = support::free_port();
    let config = format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h, idle_partition: 2s }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
registry: {{ url: "{via_relay}", timeout: 1s }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {dlq}, lag_topic: {out}-lag, backlog_topic: {out}-backlog, incidents_topic: {incidents} }}
streams:
  - name: orders
    topic: {orders}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: shipments
    topic: {shipments}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: moves
    topic: {moves}
    format: avro
    fields: {{ correlation_id: $.move_id, event_time: $.moved_at }}
  - name: done
    topic: {done}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
workflows:
  - name: via_avro
    stages: [ {{ name: shipped, stream: shipments }}, {{ name: moved, stream: moves }} ]
    sla: {{ warn: 4s, critical: 8s }}
    window: 60s
  - name: json_only
    stages: [ {{ name: ordered, stream: orders }}, {{ name: finished, stream: done }} ]
    sla: {{ warn: 4s, critical: 8s }}
    window: 60s
"#,
        group = support::random_name("synclag-stall"),
        bootstrap = support::bootstrap(),
    );
    let mut svc = SynclagProcess::start(&config, http, "stall");
    let producer = support::producer();
    let produce = |topic: String, key: String, payload: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
        }
    };
    // A first breach registers synclag's output schema while the registry answers.
    svc.wait_ready().await;
    produce(
        orders.clone(),
        "J-WARM".into(),
        json(serde_json::json!({"id": "J-WARM", "at": now_ms()})),
    )
    .await;
    let warm = read_topic(&out, Duration::from_secs(30), |m| !breaches(m).is_empty()).await;
    assert!(
        !breaches(&warm).is_empty(),
        "no first breach\n{}",
        svc.log_tail()
    );
    // Its incident too: an output that cannot be encoded holds the later ones behind it.
    let opened = read_topic(&incidents, Duration::from_secs(30), |m| !m.is_empty()).await;
    assert!(!opened.is_empty(), "no first incident\n{}", svc.log_tail());
    cut.store(true, std::sync::atomic::Ordering::SeqCst);

    // The Avro record first: it waits for the registry from the start.
    let t0 = now_ms();
    {
        use apache_avro::types::Value;
        let bytes = enc
            .encode(
                vec![
                    ("move_id", Value::String("MV-1".into())),
                    ("moved_at", Value::Long(t0)),
                ],
                strategy.clone(),
            )
            .await
            .expect("encode");
        produce(moves.clone(), "MV-1".into(), bytes).await;
    }
    produce(
        shipments.clone(),
        "MV-1".into(),
        json(serde_json::json!({"id": "MV-1", "at": now_ms()})),
    )
    .await;
    for id in ["J-OPEN", "J-DONE"] {
        produce(
            orders.clone(),
            id.into(),
            json(serde_json::json!({"id": id, "at": now_ms()})),
        )
        .await;
    }
    produce(
        done.clone(),
        "J-DONE".into(),
        json(serde_json::json!({"id": "J-DONE", "at": now_ms()})),
    )
    .await;

    let msgs = read_topic(&out, Duration::from_secs(40), |m| {
        let k = kinds(m);
        k.contains_key(&("json_only".into(), "J-OPEN".into()))
            && k.contains_key(&("via_avro".into(), "MV-1".into()))
    })
    .await;
    let events = breaches(&msgs);
    let open = events
        .iter()
        .find(|b| b.workflow == "json_only" && b.correlation_id == "J-OPEN")
        .unwrap_or_else(|| {
            panic!(
                "the JSON workflow went silent while one Avro record waited; events: {events:?}\n{}",
                svc.log_tail()
            )
        });
    assert_eq!(open.kind, "breach");
    assert_eq!(open.severity, "warn");
    assert!(
        open.stalled_inputs.is_empty(),
        "its missing stage is not behind the stall: {open:?}"
    );
    assert!(
        !events.iter().any(|b| b.correlation_id == "J-DONE"),
        "{events:?}"
    );
    let mv = events
        .iter()
        .find(|b| b.workflow == "via_avro" && b.correlation_id == "MV-1")
        .expect("the correlation behind the stalled partition was not breached");
    assert_eq!(mv.kind, "breach");
    assert_eq!(
        mv.probable_cause.as_deref(),
        Some("input_stalled"),
        "{mv:?}"
    );
    assert_eq!(
        mv.stalled_inputs,
        vec![format!("{moves}[0]: record_waiting")],
        "{mv:?}"
    );
    let deadline = mv.deadline_ms.expect("deadline");
    assert!(mv.observed_at_ms >= deadline);
    assert!(
        mv.observed_at_ms - t0 < 20_000,
        "raised {} ms after the start",
        mv.observed_at_ms - t0
    );

    // The stall is visible, and nothing was dead-lettered for an outage.
    let metrics = svc.get_text("/metrics").await.unwrap_or_default();
    let stalled_line = format!(
        "synclag_input_stalled_partitions{{topic=\"{moves}\",partition=\"0\",reason=\"record_waiting\"}} 1"
    );
    assert!(
        metrics.contains(&stalled_line),
        "missing `{stalled_line}`:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("stalled") || l.contains("held"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("synclag_input_held_records 1"));
    let status = svc
        .get_json("/api/v1/workflows")
        .await
        .expect("workflows API");
    assert!(
        status.to_string().contains("record_waiting"),
        "API does not show the stall: {status}"
    );
    let dead = read_topic(&dlq, Duration::from_secs(2), |_| false).await;
    assert!(dead.is_empty(), "dead-lettered during a registry outage");

    // The registry answers again: the waiting record is processed, nothing was lost.
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    let msgs = read_topic(&out, Duration::from_secs(40), |m| {
        breaches(m)
            .iter()
            .any(|b| b.correlation_id == "MV-1" && b.kind == "resolved")
    })
    .await;
    assert!(
        breaches(&msgs)
            .iter()
            .any(|b| b.correlation_id == "MV-1" && b.kind == "resolved"),
        "the waiting record was never processed\n{}",
        svc.log_tail()
    );
    assert_eq!(svc.terminate().await, Some(0));
    drop(producer.flush(Duration::from_secs(5)));
}

/// Breaches due while the broker is down wait for it, however long it takes: none is
/// given up after a delivery timeout, none is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaches_due_during_a_broker_outage_are_delivered_after_it() {
    broker_outage("", Outage::Direct).await;
}

/// The same with `store.repartition`: the engine's clock is fed by the progress its
/// reader routes through Kafka, so while the broker is down it cannot tell a stalled input
/// from a reader that cannot write; it holds timers (up to the 90 s reader handover) and
/// raises the breaches once progress flows again — each once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_breaches_due_during_a_broker_outage_are_raised_once_after_it() {
    broker_outage("", Outage::Repartitioned).await;
}

/// The same with an output transaction that outlives its timeout (10 s) in the outage:
/// its records time out, the transaction is aborted once the broker is back, and its
/// outputs are written again in a new one — each breach is read once, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_aborted_by_an_outage_is_written_again_once() {
    broker_outage(", transaction.timeout.ms: 10000", Outage::Direct).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outage {
    /// The default pipeline: input read and judged in one process.
    Direct,
    /// `store.repartition: true`: stages and progress travel through the stages topic.
    Repartitioned,
}

/// A 40 s broker outage while 100 warn deadlines fall; `extra` adds Kafka properties.
async fn broker_outage(extra: &str, mode: Outage) {
    use support::kafka::{create_topic_on, DedicatedBroker};
    let broker = std::sync::Arc::new(
        tokio::task::spawn_blocking(DedicatedBroker::start)
            .await
            .expect("start dedicated broker"),
    );
    let bootstrap = broker.bootstrap().to_string();
    let starts = support::random_name("bo-starts");
    let ends = support::random_name("bo-ends");
    let out = support::random_name("bo-breaches");
    for t in [&starts, &ends, &out] {
        create_topic_on(&bootstrap, t, 1).await;
    }
    let http = support::free_port();
    let group = support::random_name("synclag-bo");
    let config = support::service::TwoStage {
        group: &group,
        http,
        bootstrap: &bootstrap,
        starts: &starts,
        ends: &ends,
        out: &out,
        workflow: "outage",
        warn: "4s",
        critical: "10m",
        window: "30m",
        service: ", idle_partition: 5s",
        properties: extra,
    }
    .yaml()
        + if mode == Outage::Repartitioned {
            "store: { repartition: true }\n"
        } else {
            ""
        };
    let mut svc = SynclagProcess::start(&config, http, "outage");
    svc.wait_ready().await;
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let n = 100;
    for i in 0..n {
        let id = format!("BO-{i:03}");
        let payload = json(serde_json::json!({"id": id, "at": now_ms()}));
        producer
            .send(
                FutureRecord::to(&starts).key(&id).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
    }
    support::wait_until_async(
        Duration::from_secs(30),
        "every start read before the outage",
        || async {
            svc.get_json("/api/v1/workflows")
                .await
                .and_then(|v| v["workflows"][0]["pending"].as_u64())
                == Some(n)
        },
    )
    .await;
    // Down for longer than librdkafka's default delivery timeout (30 s); every warn
    // deadline falls inside the outage.
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.kill())
        .await
        .expect("kill broker");
    tokio::time::sleep(Duration::from_secs(40)).await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.restart())
        .await
        .expect("restart broker");

    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", support::random_name("bo-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    consumer.subscribe(&[&out]).expect("subscribe");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut raised: Vec<BreachEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline && seen.len() < n as usize {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            for b in breaches(&[m.detach()]) {
                if b.kind == "breach" && b.severity == "warn" {
                    *seen.entry(b.correlation_id.clone()).or_default() += 1;
                    raised.push(b);
                }
            }
        }
    }
    // Let anything written twice arrive too.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
            for b in breaches(&[m.detach()]) {
                if b.kind == "breach" && b.severity == "warn" {
                    *seen.entry(b.correlation_id).or_default() += 1;
                }
            }
        }
    }
    assert_eq!(
        seen.len(),
        n as usize,
        "warn breaches lost in the outage: got {} of {n}\n{}",
        seen.len(),
        svc.log_tail()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    if mode == Outage::Repartitioned {
        // Raised once progress flows again: after the 40 s outage, well before the 90 s
        // after which a silent reader's inputs would be judged stalled.
        for b in &raised {
            assert_raised_within(b, 75_000);
        }
        let mut late: Vec<i64> = raised
            .iter()
            .map(|b| b.observed_at_ms - b.deadline_ms.unwrap_or(0))
            .collect();
        late.sort_unstable();
        eprintln!(
            "repartitioned outage: {} breaches raised {} to {} ms after their deadline; causes {:?}",
            raised.len(),
            late.first().copied().unwrap_or(0),
            late.last().copied().unwrap_or(0),
            raised
                .iter()
                .map(|b| b.probable_cause.clone())
                .collect::<std::collections::BTreeSet<_>>()
        );
        assert_eq!(svc.terminate().await, Some(0));
        return;
    }
    // Raised while Kafka was down — once the inputs were found stalled (budget 5 s), not
    // only after the broker came back 40 s later — and saying why.
    for b in &raised {
        assert_raised_within(b, 15_000);
        assert!(
            b.stalled_inputs.iter().any(|s| s.ends_with("no_progress")),
            "{b:?}"
        );
        assert_eq!(b.probable_cause.as_deref(), Some("input_stalled"));
    }
    // With transactions, outputs count as acknowledged once their transaction commits
    // (every second).
    support::wait_until_async(
        Duration::from_secs(15),
        "every output acknowledged after the outage",
        || async {
            svc.get_text("/metrics")
                .await
                .unwrap_or_default()
                .contains("synclag_output_unacknowledged_records 0")
        },
    )
    .await;
    if extra.contains("transaction.timeout.ms") {
        let metrics = svc.get_text("/metrics").await.unwrap_or_default();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("synclag_output_transactions_total{result=\"aborted\"}")),
            "the outage outlived a transaction, which was aborted and written again\n{}",
            svc.log_tail()
        );
    }
    assert_eq!(svc.terminate().await, Some(0));
}

/// `b` was raised after its deadline, by less than `max_ms`.
fn assert_raised_within(b: &BreachEvent, max_ms: i64) {
    let late = b.observed_at_ms - b.deadline_ms.unwrap_or(i64::MAX);
    assert!(
        (0..max_ms).contains(&late),
        "{}: raised {late} ms after its deadline",
        b.correlation_id
    );
}

/// A configured input topic that does not exist: the breaches whose missing stage it would
/// carry say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaches_waiting_on_a_missing_topic_say_so() {
    let starts = support::random_name("mt-starts");
    let never_created = support::random_name("mt-missing");
    let out = support::random_name("mt-breaches");
    for t in [&starts, &out] {
        support::create_topic(t, 1).await;
    }
    let http = support::free_port();
    let config = format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h, idle_partition: 5s }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog, incidents_topic: {out}-incidents }}
incidents: {{ update_every: 1s }}
streams:
  - {{ name: starts, topic: {starts}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: ends, topic: {never_created}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: missing
    stages: [ {{ name: started, stream: starts }}, {{ name: done, stream: ends }} ]
    sla: {{ warn: 3s, critical: 10m }}
    window: 30m
"#,
        group = support::random_name("synclag-mt"),
        bootstrap = support::bootstrap(),
    );
    let mut svc = SynclagProcess::start(&config, http, "missing-topic");
    support::wait_until_async(Duration::from_secs(60), "partitions assigned", || async {
        svc.get_json("/readyz")
            .await
            .is_some_and(|v| v.to_string().contains(never_created.as_str()))
    })
    .await;
    let producer = support::producer();
    for n in 1..=5 {
        let id = format!("MT-{n}");
        let payload = json(serde_json::json!({"id": id, "at": now_ms()}));
        producer
            .send(
                FutureRecord::to(&starts).key(id.as_str()).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
    }
    let msgs = read_topic(&out, Duration::from_secs(30), |m| !breaches(m).is_empty()).await;
    let b = breaches(&msgs)
        .into_iter()
        .find(|b| b.correlation_id == "MT-1")
        .unwrap_or_else(|| panic!("no breach\n{}", svc.log_tail()));
    assert_eq!(
        b.stalled_inputs,
        vec![format!("{never_created}: topic_missing")],
        "{b:?}"
    );
    assert_eq!(b.probable_cause.as_deref(), Some("input_stalled"));
    assert_eq!(
        b.evidence,
        vec![format!("stalled:{never_created}: topic_missing")]
    );

    // One incident for the five, saying why, not five alerts.
    let incidents_topic = format!("{out}-incidents");
    let latest = |msgs: &[OwnedMessage]| -> Vec<synclag::emit::events::IncidentEvent> {
        msgs.iter()
            .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
            .collect()
    };
    let msgs = read_topic(&incidents_topic, Duration::from_secs(30), |m| {
        latest(m).iter().any(|i| i.breached == 5)
    })
    .await;
    let incidents = latest(&msgs);
    let ids: std::collections::BTreeSet<&str> =
        incidents.iter().map(|i| i.incident_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one incident: {incidents:#?}");
    let last = incidents.last().expect("an incident");
    assert_eq!(last.probable_cause, "input_stalled", "{last:?}");
    assert_eq!(last.breached, 5, "{last:?}");
    assert_eq!(last.workflow, "missing");
    assert!(
        last.evidence.iter().any(|e| e.contains("topic_missing")),
        "{last:?}"
    );
    assert_eq!(svc.terminate().await, Some(0));
}
