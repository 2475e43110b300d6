//! A backlog is read in step across partitions, on the real broker.
//!
//! Two inputs of one partition each hold the same 30 s of event time, but the start
//! records are large and the closing records small, so every fetch (at most 64 KiB a
//! partition) brings about twenty times more event time of the closing input. Left to the
//! fetch queue, that partition would run far ahead of the clock, which follows the
//! slowest partition. The reader must hold it back while it is more than 3 s ahead (its
//! records wait in the pipeline, and beyond 4,000 the partition is paused in the
//! consumer) and process it again once the clock has caught up, and doing so must cost
//! nothing in correctness:
//!
//! - the holding back happens (`synclag_input_paced_total`) and ends (the gauges back at
//!   0, no record left waiting);
//! - a partition paused that way is never judged stalled;
//! - a record from a producer whose clock is a day ahead, last on the closing input, does
//!   not keep that partition paused: the whole backlog is read;
//! - no lost alert and no invented one: exactly the late and never-closed correlations
//!   are alerted, each tier once.

mod support;

use rdkafka::consumer::Consumer;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::SynclagProcess;

const CORRELATIONS: u64 = 6_000;
/// Event time between two starts: the backlog spans 30 s.
const SPACING_MS: i64 = 5;
/// Padding of each start record, so few of them fit in one fetch.
const START_PADDING: usize = 1_500;

fn order_ref(i: u64) -> String {
    format!("SO-{i:09}")
}

enum Close {
    Never,
    /// After the warn tier (2 s), before the critical one (5 s).
    Late,
    OnTime,
}

fn close(i: u64) -> Close {
    match (i % 50, i % 10) {
        (0, _) => Close::Never,
        (_, 3) => Close::Late,
        _ => Close::OnTime,
    }
}

fn produce_backlog(orders: &str, outbox: &str, base_ms: i64) {
    let writer = support::BacklogWriter::new();
    let send = |topic: &str, key: &str, value: String, ts: i64| writer.send(topic, key, &value, ts);
    let padding = "x".repeat(START_PADDING);
    let mut closing = Vec::new();
    for i in 0..CORRELATIONS {
        let id = order_ref(i);
        let created = base_ms + i as i64 * SPACING_MS;
        send(
            orders,
            &id,
            format!(
                r#"{{"order_ref":"{id}","event":"order.created","created_at":{created},"note":"{padding}"}}"#
            ),
            created,
        );
        match close(i) {
            Close::Never => {}
            Close::Late => closing.push((created + 3_000, id)),
            Close::OnTime => closing.push((created + 400, id)),
        }
    }
    closing.sort();
    for (at, id) in &closing {
        send(
            outbox,
            id,
            format!(
                r#"{{"correlation_id":"{id}","event":"sale.order.imported","write_date":{at}}}"#
            ),
            *at,
        );
    }
    // Last on the closing input: a record from a producer whose clock is a day ahead.
    let future = chrono::Utc::now().timestamp_millis() + 86_400_000;
    send(
        outbox,
        "clock-ahead",
        r#"{"correlation_id":"clock-ahead","event":"sale.order.noted","write_date":0}"#.into(),
        future,
    );
    writer.flush();
    // Delivery failures are not reported to this producer: count what the topics hold.
    let reader: rdkafka::consumer::BaseConsumer =
        support::client_config().create().expect("create a reader");
    for (topic, want) in [
        (orders, CORRELATIONS as i64),
        (outbox, closing.len() as i64 + 1),
    ] {
        let (_, end) = reader
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("read the end offset");
        assert_eq!(end, want, "every record of {topic} was written");
    }
}

async fn metrics(svc: &SynclagProcess) -> String {
    svc.get_text("/metrics").await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_running_ahead_is_paused_without_losing_or_inventing_an_alert() {
    let orders = support::random_name("step-orders");
    let outbox = support::random_name("step-outbox");
    let out = support::random_name("step-out");
    let breaches = format!("{out}.breaches");
    support::create_topic(&orders, 1).await;
    // Kafka refuses record times more than an hour ahead unless the topic allows them.
    support::kafka::create_topic_with(
        &outbox,
        1,
        &[("message.timestamp.after.max.ms", "172800000")],
    )
    .await;
    let base = chrono::Utc::now().timestamp_millis() - 10 * 60_000;
    produce_backlog(&orders, &outbox, base);

    let port = support::free_port();
    let yaml = support::OrderImport {
        orders: &orders,
        outbox: &outbox,
        out: &out,
        idle_partition_s: 5,
        registry_url: None,
    }
    .yaml(port);
    let mut svc = SynclagProcess::start(&yaml, port, "read-in-step");
    let never = (0..CORRELATIONS)
        .filter(|i| matches!(close(*i), Close::Never))
        .count() as f64;
    // Polled by hand: the highest stalled-partition count seen on the way matters too.
    let mut stalled_seen = 0.0f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let text = metrics(&svc).await;
        stalled_seen = stalled_seen.max(support::metric_sum(
            &text,
            "synclag_input_stalled_partitions",
            &[],
        ));
        if support::metric_sum(&text, "synclag_never_arrived_total", &[]) >= never
            && support::metric_sum(&text, "synclag_input_lag_records", &[]) == 0.0
            && support::metric_sum(&text, "synclag_output_unacknowledged_records", &[]) == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the whole backlog read, every never-closed correlation ended, every output acknowledged, within 180 s\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics(&svc).await;
    let paced = support::metric_sum(&text, "synclag_input_paced_total", &[]);
    assert!(
        paced >= 1.0,
        "the closing input ran ahead and was paused ({paced} times)\n{}",
        svc.log_tail()
    );
    assert_eq!(
        support::metric_sum(&text, "synclag_input_paced_partitions", &[]),
        0.0,
        "no partition stays paused once the backlog is read"
    );
    assert_eq!(
        support::metric_sum(&text, "synclag_input_paced_records", &[]),
        0.0,
        "no record of a partition that ran ahead is left waiting once the backlog is read (fetched {} records, paused in the consumer {} times)",
        support::metric_sum(&text, "synclag_input_fetched_records", &[]),
        support::metric_sum(&text, "synclag_input_paced_pauses_total", &[]),
    );
    assert_eq!(
        stalled_seen,
        0.0,
        "a partition paused for running ahead is not stalled\n{}",
        svc.log_tail()
    );
    assert_eq!(
        svc.terminate().await,
        Some(0),
        "clean exit\n{}",
        svc.log_tail()
    );

    // Each alert once: (correlation, kind/severity) → count.
    let mut seen: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for ev in support::topics::breach_events(&breaches) {
        if ev.kind == "breach" || ev.kind == "never_arrived" {
            *seen
                .entry(ev.correlation_id)
                .or_default()
                .entry(format!("{}/{}", ev.kind, ev.severity))
                .or_default() += 1;
        }
    }
    let mut wrong = Vec::new();
    for i in 0..CORRELATIONS {
        let id = order_ref(i);
        let got = seen.remove(&id).unwrap_or_default();
        let want: BTreeSet<&str> = match close(i) {
            Close::Never => [
                "breach/warn",
                "breach/critical",
                "never_arrived/never_arrived",
            ]
            .into(),
            Close::Late => ["breach/warn"].into(),
            Close::OnTime => BTreeSet::new(),
        };
        let got_kinds: BTreeSet<&str> = got.keys().map(String::as_str).collect();
        if got_kinds != want || got.values().any(|n| *n != 1) {
            wrong.push(format!("{id}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty() && seen.is_empty(),
        "{} correlations alerted wrongly, e.g. {:?}; alerts for unknown ids: {seen:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

const ORDER_SCHEMA: &str = r#"{"type":"record","name":"Order","namespace":"test.step","fields":[
  {"name":"order_ref","type":"string"},{"name":"created_at","type":"long"},{"name":"event","type":"string"}]}"#;

/// Before the clock has its first reading every partition must have delivered or been
/// confirmed, and a partition that delivers nothing yet (here: its first record waits for
/// the schema registry) must not let the others be read without bound meanwhile. The
/// closing input holds 100 s of event time; while the starting input waits, no more than
/// about 3 s of it may be processed, the rest waits (held back in the pipeline, then
/// paused in the consumer). Once the registry answers, the whole backlog is read, and as
/// every correlation closed on time, nothing is alerted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_clock_has_a_reading_no_partition_runs_ahead() {
    use schema_registry_converter::async_impl::avro::AvroEncoder;
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::schema_registry_common::{
        SchemaType, SubjectNameStrategy, SuppliedSchema,
    };
    const ORDERS: i64 = 20_000;
    const SPACING_MS: i64 = 5;
    let orders = support::random_name("first-orders");
    let outbox = support::random_name("first-outbox");
    let out = support::random_name("first-out");
    let breaches = format!("{out}.breaches");
    support::create_topic(&orders, 1).await;
    support::create_topic(&outbox, 1).await;

    // The starting input is Avro: written with the registry, read by synclag through a
    // relay that does not run yet.
    let support::registry::Relayed {
        real,
        via_relay,
        relay_port,
        hostport,
    } = support::registry::behind_relay();
    let enc = AvroEncoder::new(SrSettings::new(real.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        orders.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, ORDER_SCHEMA.to_string()),
    );
    let base = chrono::Utc::now().timestamp_millis() - 10 * 60_000;
    let writer = support::BacklogWriter::new();
    for i in 0..ORDERS {
        use apache_avro::types::Value;
        let id = format!("SO-{i:09}");
        let created = base + i * SPACING_MS;
        let bytes = enc
            .encode(
                vec![
                    ("order_ref", Value::String(id.clone())),
                    ("created_at", Value::Long(created)),
                    ("event", Value::String("order.created".into())),
                ],
                strategy.clone(),
            )
            .await
            .expect("encode an order");
        writer.send_bytes(&orders, &id, &bytes, created);
        let closed = created + 400;
        writer.send(
            &outbox,
            &id,
            &format!(
                r#"{{"correlation_id":"{id}","event":"sale.order.imported","write_date":{closed}}}"#
            ),
            closed,
        );
    }
    writer.flush();

    let port = support::free_port();
    let yaml = support::OrderImport {
        orders: &orders,
        outbox: &outbox,
        out: &out,
        // Far beyond the wait below: the waiting partition holds the clock throughout.
        idle_partition_s: 60,
        registry_url: Some(&via_relay),
    }
    .yaml(port)
    .replacen(
        "format: json\n    fields: { correlation_id: $.order_ref",
        "format: avro\n    fields: { correlation_id: $.order_ref",
        1,
    );
    assert!(yaml.contains("format: avro"), "{yaml}");
    let mut svc = SynclagProcess::start(&yaml, port, "read-in-step-first");
    // Not ready without a registry (`/readyz`): wait for the first order to wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while support::metric_sum(&metrics(&svc).await, "synclag_input_held_records", &[]) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first order waits for the registry within 60 s\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 8 s more without a registry: the closing input is read, the starting one waits.
    let mut held_max = 0.0f64;
    let mut paced_seen = 0.0f64;
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let text = metrics(&svc).await;
        held_max = held_max.max(support::metric_sum(&text, "synclag_held_correlations", &[]));
        paced_seen = paced_seen.max(support::metric_sum(
            &text,
            "synclag_input_paced_partitions",
            &[],
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(&svc).await;
    assert!(
        support::metric_sum(&text, "synclag_input_held_records", &[]) >= 1.0,
        "the first order waits for the registry\n{}",
        svc.log_tail()
    );
    assert!(
        paced_seen >= 1.0,
        "the closing input was held back while the clock had no reading\n{}",
        svc.log_tail()
    );
    // 3 s of closing records are 600; what a fetch brings besides is not processed.
    assert!(
        held_max <= 2_000.0,
        "while the starting input waited, {held_max} closing stages were processed ahead of it (of {ORDERS}, 100 s of event time)"
    );

    tokio::spawn(support::relay(relay_port, hostport));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = metrics(&svc).await;
        if support::metric_sum(&text, "synclag_completed_total", &[]) >= ORDERS as f64
            && support::metric_sum(&text, "synclag_input_lag_records", &[]) == 0.0
            && support::metric_sum(&text, "synclag_input_paced_records", &[]) == 0.0
            && support::metric_sum(&text, "synclag_input_paced_partitions", &[]) == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "once the registry answers, every correlation completes and nothing is left waiting, within 120 s\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        svc.terminate().await,
        Some(0),
        "clean exit\n{}",
        svc.log_tail()
    );
    let alerts: Vec<String> = support::topics::read_all(support::client_config(), &breaches)
        .iter()
        .map(support::topics::text)
        .collect();
    assert!(
        alerts.is_empty(),
        "every correlation closed on time, yet {} alerts, e.g. {:?}",
        alerts.len(),
        alerts.first()
    );
}
