//! A schema registry outage is retried, not dead-lettered: Avro records wait, `/readyz`
//! says the registry is down, and once it answers every record is processed.
//!
//! The service talks to the real test registry through a TCP relay owned by the test;
//! the relay's port accepts nothing until the test "restores" the registry.

mod support;

use rdkafka::producer::FutureRecord;
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use std::time::Duration;

const SCHEMA: &str = r#"{"type":"record","name":"Move","namespace":"test.outage","fields":[
  {"name":"move_id","type":"string"},{"name":"moved_at","type":"long"}]}"#;

async fn metric(port: u16, name: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return -1.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_delays_but_loses_nothing() {
    let real = support::registry_url(); // http://127.0.0.1:PORT/apis/ccompat/v7
    let rest = real.trim_start_matches("http://");
    let (hostport, path) = rest.split_once('/').expect("registry url has a path");
    let relay_port = support::free_port();
    let via_relay = format!("http://127.0.0.1:{relay_port}/{path}");

    let moves = support::random_name("moves");
    let quants = support::random_name("quants");
    let breaches = support::random_name("breaches");
    let dlq = support::random_name("dlq");
    for t in [&moves, &quants, &breaches, &dlq] {
        support::create_topic(t, 1).await;
    }

    // Avro records encoded while the registry is reachable directly.
    let enc = AvroEncoder::new(SrSettings::new(real.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        moves.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, SCHEMA.to_string()),
    );
    let producer = support::producer();
    let now = chrono::Utc::now().timestamp_millis();
    let n = 20;
    for i in 0..n {
        use apache_avro::types::Value;
        let id = format!("MV-{i}");
        let bytes = enc
            .encode(
                vec![
                    ("move_id", Value::String(id.clone())),
                    ("moved_at", Value::Long(now - 5_000)),
                ],
                strategy.clone(),
            )
            .await
            .expect("encode");
        producer
            .send(
                FutureRecord::to(&moves).key(&id).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
        let cdc = serde_json::json!({"before": null, "after": {"move_ref": id}, "source": {"ts_ms": now - 4_000}, "op": "c"});
        producer
            .send(
                FutureRecord::to(&quants)
                    .key(&id)
                    .payload(&serde_json::to_vec(&cdc).expect("json")),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
    }

    let http = support::free_port();
    let config = format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
registry: {{ url: "{via_relay}", timeout: 2s }}
outputs: {{ breaches_topic: {breaches}, dead_letter_topic: {dlq}, lag_topic: {breaches}-lag, backlog_topic: {breaches}-backlog }}
streams:
  - name: moves
    topic: {moves}
    format: avro
    fields: {{ correlation_id: $.move_id, event_time: $.moved_at }}
  - name: quants
    topic: {quants}
    format: debezium_cdc
    fields: {{ correlation_id: $.after.move_ref, event_time: $.source.ts_ms }}
workflows:
  - name: inventory_sync
    stages: [{{ name: move, stream: moves }}, {{ name: quant, stream: quants }}]
    sla: {{ warn: 10m, critical: 20m }}
    window: 1h
"#,
        group = support::random_name("synclag"),
        bootstrap = support::bootstrap(),
    );
    let svc = support::SynclagProcess::start(&config, http, "registry-outage");

    // While the registry is unreachable: retries, nothing dead-lettered, not ready.
    support::wait_until_async(
        Duration::from_secs(60),
        "registry retries are counted",
        || async { metric(http, "synclag_registry_retries_total").await >= 2.0 },
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status().as_u16(),
        503,
        "not ready while the registry is down"
    );
    assert_eq!(metric(http, "synclag_dead_letters_total").await, 0.0);
    assert_eq!(metric(http, "synclag_completed_total").await, 0.0);

    // The registry comes back: every correlation completes, still no dead letter.
    tokio::spawn(support::relay(relay_port, hostport.to_string()));
    support::wait_until_async(
        Duration::from_secs(60),
        "all correlations complete",
        || async { metric(http, "synclag_completed_total").await >= n as f64 },
    )
    .await;
    assert_eq!(metric(http, "synclag_completed_total").await, n as f64);
    assert_eq!(metric(http, "synclag_dead_letters_total").await, 0.0);
    support::wait_until_async(
        Duration::from_secs(30),
        "ready once the registry answers",
        || async {
            reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
    drop(svc);
}
