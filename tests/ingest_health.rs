//! Inputs, readiness and membership of `synclag run` on a real broker:
//! - a configured input topic that does not exist is reported (`/readyz` body, metric,
//!   log) and picked up within seconds once it is created;
//! - `/readyz` is 503 while the broker is down and 200 again once it is back, with no
//!   false "another instance joined";
//! - a SIGKILLed instance restarted with the same `service.instance_id` gets its
//!   partitions back long before the old member's 45 s session timeout.

mod support;

use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use support::kafka::{create_topic_on, DedicatedBroker};
use support::SynclagProcess;

/// Topics of one test: two input streams and the outputs.
struct Topics {
    orders: String,
    outbox: String,
    breaches: String,
    dlq: String,
}

impl Topics {
    fn new() -> Topics {
        Topics {
            orders: support::random_name("orders"),
            outbox: support::random_name("outbox"),
            breaches: support::random_name("breaches"),
            dlq: support::random_name("dlq"),
        }
    }

    async fn create_outputs(&self, bootstrap: &str) {
        for t in [&self.breaches, &self.dlq] {
            create_topic_on(bootstrap, t, 1).await;
        }
    }
}

/// A two-stage JSON workflow (order created → imported in Odoo) with SLAs far beyond
/// the test, so only completions happen.
fn config(t: &Topics, bootstrap: &str, http: u16, group: &str, instance: Option<&str>) -> String {
    let instance = instance
        .map(|i| format!(", instance_id: {i}"))
        .unwrap_or_default();
    format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h, idle_partition: 5s, shutdown_timeout: 5s{instance} }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {breaches}, dead_letter_topic: {dlq}, lag_topic: {breaches}-lag, backlog_topic: {breaches}-backlog }}
streams:
  - name: orders
    topic: {orders}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: outbox
    topic: {outbox}
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
workflows:
  - name: order_import
    stages: [{{ name: created, stream: orders }}, {{ name: imported, stream: outbox }}]
    sla: {{ warn: 10m, critical: 20m }}
    window: 1h
"#,
        breaches = t.breaches,
        dlq = t.dlq,
        orders = t.orders,
        outbox = t.outbox,
    )
}

fn producer_for(bootstrap: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("create producer")
}

/// Produces one record per id to `topic`, stamped now.
async fn produce(producer: &FutureProducer, topic: &str, ids: impl Iterator<Item = String>) {
    let at = chrono::Utc::now().timestamp_millis();
    for id in ids {
        let value = serde_json::to_vec(&serde_json::json!({"id": id, "at": at})).expect("json");
        producer
            .send(
                FutureRecord::to(topic).key(&id).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

fn ids(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}-{i:04}"))
}

/// Sum of the samples of `name` whose labels contain every filter (`key="value"`).
fn metric(text: &str, name: &str, filters: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !filters.iter().all(|f| rest.contains(f)) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

async fn metrics_text(svc: &SynclagProcess) -> String {
    svc.get_text("/metrics").await.unwrap_or_default()
}

/// `/readyz` status code and body; `None` while the service does not answer.
async fn readyz(svc: &SynclagProcess) -> Option<(u16, serde_json::Value)> {
    let r = reqwest::Client::new()
        .get(svc.url("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.json().await.ok()?))
}

async fn completed(svc: &SynclagProcess) -> u64 {
    svc.get_json("/api/v1/workflows")
        .await
        .and_then(|v| v["workflows"][0]["completed"].as_u64())
        .unwrap_or(0)
}

async fn wait_completed(svc: &SynclagProcess, at_least: u64, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = completed(svc).await;
        if got >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} of {at_least} correlations completed within {timeout:?}\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_readyz(svc: &SynclagProcess, code: u16, timeout: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = readyz(svc).await;
        if got.as_ref().is_some_and(|(c, _)| *c == code) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: /readyz not {code} within {timeout:?}, last {got:?}\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_topic_is_reported_and_picked_up_once_created() {
    let bootstrap = support::bootstrap();
    let t = Topics::new();
    t.create_outputs(&bootstrap).await;
    create_topic_on(&bootstrap, &t.orders, 1).await;
    // t.outbox does not exist yet.
    let http = support::free_port();
    let group = support::random_name("synclag");
    let svc = SynclagProcess::start(
        &config(&t, &bootstrap, http, &group, None),
        http,
        "missing-topic",
    );

    // Reported in the /readyz body, which stays 200: the other inputs work.
    let outbox = t.outbox.clone();
    support::wait_until_async(
        Duration::from_secs(60),
        "/readyz is 200 and lists the missing topic",
        || async {
            readyz(&svc).await.is_some_and(|(code, body)| {
                code == 200 && body["missing_topics"] == serde_json::json!([outbox.clone()])
            })
        },
    )
    .await;
    let missing = format!("topic=\"{}\"", t.outbox);
    let present = format!("topic=\"{}\"", t.orders);
    let text = metrics_text(&svc).await;
    assert_eq!(
        metric(&text, "synclag_input_topic_missing", &[&missing]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "synclag_input_topic_missing", &[&present]),
        Some(0.0)
    );
    let log = std::fs::read_to_string(&svc.log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("input topic is missing")
            && l.contains(&t.outbox)),
        "a WARN line names the missing topic\n{}",
        svc.log_tail()
    );

    // Start records arrive while the closing stage's topic is still missing.
    let producer = producer_for(&bootstrap);
    let n = 50;
    produce(&producer, &t.orders, ids("MT", n)).await;

    let created = Instant::now();
    create_topic_on(&bootstrap, &t.outbox, 2).await;
    produce(&producer, &t.outbox, ids("MT", n)).await;

    // The new topic is read: every correlation completes, within seconds, not minutes.
    wait_completed(
        &svc,
        n as u64,
        Duration::from_secs(40),
        "records of a topic created after start",
    )
    .await;
    let took = created.elapsed();
    eprintln!(
        "topic created after start: all {n} correlations complete {:.1}s after creation",
        took.as_secs_f64()
    );
    let body = readyz(&svc).await.map(|(_, b)| b);
    assert_eq!(
        body.as_ref().map(|b| b["missing_topics"].clone()),
        Some(serde_json::json!([])),
        "{body:?}"
    );
    let text = metrics_text(&svc).await;
    assert_eq!(
        metric(&text, "synclag_input_topic_missing", &[&missing]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "synclag_never_arrived_total", &[]).unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_broker_outage_without_a_false_second_instance() {
    let broker = std::sync::Arc::new(
        tokio::task::spawn_blocking(DedicatedBroker::start)
            .await
            .expect("start dedicated broker"),
    );
    let bootstrap = broker.bootstrap().to_string();
    let t = Topics::new();
    t.create_outputs(&bootstrap).await;
    create_topic_on(&bootstrap, &t.orders, 2).await;
    create_topic_on(&bootstrap, &t.outbox, 2).await;
    let http = support::free_port();
    let group = support::random_name("synclag");
    let svc = SynclagProcess::start(
        &config(&t, &bootstrap, http, &group, None),
        http,
        "broker-outage",
    );
    wait_readyz(&svc, 200, Duration::from_secs(60), "before the outage").await;
    let producer = producer_for(&bootstrap);
    let n = 20;
    produce(&producer, &t.orders, ids("BO1", n)).await;
    produce(&producer, &t.outbox, ids("BO1", n)).await;
    wait_completed(&svc, n as u64, Duration::from_secs(30), "before the outage").await;

    // The broker crashes: not ready within seconds, and the body says why.
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.kill())
        .await
        .expect("kill broker");
    let down = wait_readyz(&svc, 503, Duration::from_secs(20), "broker down").await;
    eprintln!("broker down: /readyz 503 after {:.1}s", down.as_secs_f64());
    let body = readyz(&svc).await.map(|(_, b)| b);
    assert_eq!(
        body.as_ref().map(|b| b["kafka_reachable"].clone()),
        Some(serde_json::json!(false)),
        "{body:?}"
    );
    let text = metrics_text(&svc).await;
    assert_eq!(metric(&text, "synclag_kafka_reachable", &[]), Some(0.0));

    // It comes back on the same port with the same data: ready again, consuming again.
    let b = broker.clone();
    let back_at = Instant::now();
    tokio::task::spawn_blocking(move || b.restart())
        .await
        .expect("restart broker");
    let up = wait_readyz(&svc, 200, Duration::from_secs(60), "broker back").await;
    eprintln!(
        "broker back: /readyz 200 {:.1}s after the restart began ({:.1}s after it answered)",
        back_at.elapsed().as_secs_f64(),
        up.as_secs_f64()
    );
    produce(&producer, &t.outbox, ids("BO2", n)).await;
    produce(&producer, &t.orders, ids("BO2", n)).await;
    wait_completed(
        &svc,
        2 * n as u64,
        Duration::from_secs(60),
        "after the outage",
    )
    .await;

    // Two membership checks after the recovery, and neither saw another instance.
    let checks = |text: &str| {
        metric(
            text,
            "synclag_group_member_checks_total",
            &["result=\"ok\""],
        )
    };
    let before = checks(&metrics_text(&svc).await).unwrap_or(0.0);
    support::wait_until_async(
        Duration::from_secs(60),
        "two group membership checks after the outage",
        || async { checks(&metrics_text(&svc).await).unwrap_or(0.0) >= before + 2.0 },
    )
    .await;
    let text = metrics_text(&svc).await;
    assert_eq!(
        metric(&text, "synclag_group_members", &[]),
        Some(1.0),
        "{text}"
    );
    let log = std::fs::read_to_string(&svc.log).unwrap_or_default();
    assert!(
        !log.contains("another instance joined"),
        "no false second instance after the outage\n{}",
        svc.log_tail()
    );
    drop(svc);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_gets_its_partitions_back_before_the_session_timeout() {
    let bootstrap = support::bootstrap();
    let t = Topics::new();
    t.create_outputs(&bootstrap).await;
    create_topic_on(&bootstrap, &t.orders, 3).await;
    create_topic_on(&bootstrap, &t.outbox, 3).await;
    let http = support::free_port();
    let group = support::random_name("synclag");
    let instance = support::random_name("instance");
    let cfg = config(&t, &bootstrap, http, &group, Some(&instance));
    let mut first = SynclagProcess::start(&cfg, http, "static-first");
    wait_readyz(&first, 200, Duration::from_secs(60), "first instance").await;
    let producer = producer_for(&bootstrap);
    let n = 30;
    produce(&producer, &t.orders, ids("SM1", n)).await;
    produce(&producer, &t.outbox, ids("SM1", n)).await;
    wait_completed(&first, n as u64, Duration::from_secs(30), "first instance").await;

    // Crash: the old member stays in the group until its session (45 s) times out.
    first.kill();
    let killed = Instant::now();
    let second = SynclagProcess::start(&cfg, http, "static-second");
    wait_readyz(
        &second,
        200,
        Duration::from_secs(60),
        "restarted instance has partitions",
    )
    .await;
    let assigned = killed.elapsed();
    produce(&producer, &t.orders, ids("SM2", n)).await;
    produce(&producer, &t.outbox, ids("SM2", n)).await;
    // The first batch ended before the kill and is restored as finished (records of it
    // read again are duplicates); the second batch completes here.
    wait_completed(
        &second,
        n as u64,
        Duration::from_secs(60),
        "restarted instance",
    )
    .await;
    let consuming = killed.elapsed();
    eprintln!(
        "restart with the same instance id: partitions back {:.1}s after the kill, the new batch complete after {:.1}s",
        assigned.as_secs_f64(),
        consuming.as_secs_f64()
    );
    // Without static membership the join waits for the dead member's 45 s session timeout.
    assert!(
        assigned < Duration::from_secs(25),
        "partitions came back only {:.1}s after the kill; the old member's session timeout is 45 s\n{}",
        assigned.as_secs_f64(),
        second.log_tail()
    );
    assert!(
        consuming < Duration::from_secs(40),
        "records were consumed only {:.1}s after the kill\n{}",
        consuming.as_secs_f64(),
        second.log_tail()
    );
}

/// The harness's outage tool itself: a controlled stop, then a restart on the same port
/// that still has the records written before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_broker_keeps_its_port_and_data_across_a_restart() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let broker = std::sync::Arc::new(
        tokio::task::spawn_blocking(DedicatedBroker::start)
            .await
            .expect("start dedicated broker"),
    );
    let bootstrap = broker.bootstrap().to_string();
    let topic = support::random_name("kept");
    create_topic_on(&bootstrap, &topic, 1).await;
    let producer = producer_for(&bootstrap);
    produce(&producer, &topic, ids("KEEP", 3)).await;

    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.stop())
        .await
        .expect("stop broker");
    assert!(!broker.is_running());
    let probe: rdkafka::consumer::BaseConsumer = broker
        .client_config()
        .create()
        .expect("create metadata client");
    assert!(
        probe
            .fetch_metadata(None, Duration::from_millis(1500))
            .is_err(),
        "nothing answers on {bootstrap} while the broker is stopped"
    );

    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.restart())
        .await
        .expect("restart broker");
    assert!(broker.is_running());
    assert_eq!(broker.bootstrap(), bootstrap);
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", support::random_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribe");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "records written before the restart not read back: {keys:?}"
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(keys, vec!["KEEP-0000", "KEEP-0001", "KEEP-0002"]);
}
