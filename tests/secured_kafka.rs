//! synclag against a broker that only lets clients in over SASL_SSL (SCRAM-SHA-512 users
//! created when the broker's storage is formatted, TLS with a CA generated in the test):
//! with the right credentials — the password from the environment — a breach is emitted
//! and a watched group's backlog is read; with a wrong password the service says Kafka
//! refused its credentials and `/readyz` answers 503. The password never appears in the
//! log.

mod support;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::Duration;
use support::kafka::SecuredBroker;
use support::topics;

const USER: &str = "synclag";
const PASSWORD: &str = "scram-secret-5b1e";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-secret-77c2";

fn yaml(broker: &SecuredBroker, prefix: &str, port: u16, password_env: &str) -> String {
    format!(
        r#"
service: {{ group_id: {prefix}-g, http_listen: "127.0.0.1:{port}", lag_interval: 1h }}
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: {USER}
    ssl.ca.location: "{ca}"
    broker.address.family: v4
outputs: {{ breaches_topic: {prefix}-breaches, lag_topic: {prefix}-lag, backlog_topic: {prefix}-backlog, dead_letter_topic: {prefix}-dlq, incidents_topic: {prefix}-incidents }}
audit: {{ topic: {prefix}-audit }}
streams:
  - {{ name: orders, topic: {prefix}-orders, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: outbox, topic: {prefix}-outbox, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox }} ]
    sla: {{ warn: 1s, critical: 2s }}
    window: 1h
backlog:
  interval: 2s
  groups: [ {{ name: {prefix}-erp }} ]
"#,
        bootstrap = broker.bootstrap,
        ca = broker.ca_cert.display(),
    )
    .replace("__PASSWORD_ENV__", password_env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synclag_runs_end_to_end_over_sasl_ssl_and_refuses_wrong_credentials() {
    let broker = tokio::task::spawn_blocking(|| {
        SecuredBroker::start(&[(USER, PASSWORD), (ADMIN, ADMIN_PASSWORD)])
    })
    .await
    .expect("start the SASL_SSL broker");
    let prefix = support::random_name("sasl");
    let admin: AdminClient<DefaultClientContext> = broker
        .client_config(ADMIN, ADMIN_PASSWORD)
        .create()
        .expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let names = [format!("{prefix}-orders"), format!("{prefix}-outbox")];
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &opts)
        .await
        .expect("create topics over SASL_SSL")
    {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
    // A watched group with a committed offset behind the end: backlog to read.
    let producer: FutureProducer = broker
        .client_config(ADMIN, ADMIN_PASSWORD)
        .set("acks", "all")
        .create()
        .expect("producer");
    let orders = &names[0];
    let at = chrono::Utc::now().to_rfc3339();
    for i in 0..3 {
        let body = serde_json::json!({"id": format!("SO-{i}"), "at": at}).to_string();
        producer
            .send(
                FutureRecord::to(orders).key("k").payload(&body),
                Duration::from_secs(30),
            )
            .await
            .expect("produce over SASL_SSL");
    }
    let erp: BaseConsumer = broker
        .client_config(ADMIN, ADMIN_PASSWORD)
        .set("group.id", format!("{prefix}-erp"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("erp consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(orders, 0, Offset::Offset(1))
        .expect("tpl");
    erp.commit(&tpl, CommitMode::Sync)
        .expect("commit the ERP group's offset");

    // Right credentials, the password from the environment.
    let port = support::free_port();
    let service = support::SynclagProcess::start_with_env(
        &yaml(
            &broker,
            &prefix,
            port,
            "SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD",
        ),
        port,
        "sasl-ok",
        &[("SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD", PASSWORD)],
    );
    service.wait_ready().await;
    support::wait_until(
        Duration::from_secs(90),
        "a critical breach on the breach topic",
        || {
            topics::read_all(
                broker.client_config(ADMIN, ADMIN_PASSWORD),
                &format!("{prefix}-breaches"),
            )
            .iter()
            .any(|m| topics::text(m).contains("\"critical\""))
        },
    );
    let group = format!("{prefix}-erp");
    support::wait_until_async(
        Duration::from_secs(60),
        "the ERP group's backlog is read",
        || async {
            let groups = service.get_json("/api/v1/groups").await.unwrap_or_default();
            groups.to_string().contains(&group) && groups.to_string().contains("\"offset_lag\":2")
        },
    )
    .await;
    let log = std::fs::read_to_string(&service.log).expect("log");
    assert!(
        !log.contains(PASSWORD),
        "the SASL password never appears in the log"
    );
    drop(service);

    // A wrong password: a clear error, never ready.
    let port = support::free_port();
    let bad = support::SynclagProcess::start_with_env(
        &yaml(
            &broker,
            &format!("{prefix}-bad"),
            port,
            "SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD",
        ),
        port,
        "sasl-bad",
        &[(
            "SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD",
            "wrong-password",
        )],
    );
    let mut last = serde_json::Value::Null;
    support::wait_until_async(
        Duration::from_secs(60),
        "/readyz names the refused credentials",
        || {
            let client = reqwest::Client::new();
            let url = bad.url("/readyz");
            async move {
                let Ok(r) = client.get(url).send().await else {
                    return false;
                };
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                status == 503
                    && body["auth_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("SASL authentication"))
            }
        },
    )
    .await;
    last = bad.get_json("/readyz").await.unwrap_or(last);
    assert_eq!(last["ready"], false, "{last}");
    let log = std::fs::read_to_string(&bad.log).expect("log");
    assert!(
        log.contains("Kafka refused synclag's credentials"),
        "{}",
        bad.log_tail()
    );
    assert!(
        !log.contains("wrong-password"),
        "the password never appears in the log"
    );
}
