//! Masking everywhere it is configured, on the real broker: with correlation ids and the
//! `carrier` dimension masked and `masking.dead_letters: mask`, no output carries a raw
//! id or carrier — breach, incident, lag and dead-letter topics, the audit topic, every
//! API endpoint, `/metrics` and the service's log are searched for them — while the
//! masked values (the keyed HMAC) are there, and breach ids are keyed.

mod support;

use rdkafka::producer::FutureRecord;
use std::time::Duration;
use support::topics;
use synclag::rules::Masker;

const KEY: &str = "test-masking-key-4f1c";
const CARRIER: &str = "CARRIER-RAW-ZX";

fn raw_id(i: usize) -> String {
    format!("SO-RAW-7f3a-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_carries_a_raw_sensitive_value() {
    let prefix = support::random_name("mask");
    for t in ["orders", "outbox"] {
        support::create_topic(&format!("{prefix}-{t}"), 1).await;
    }
    let port = support::free_port();
    let yaml = format!(
        r#"
service:
  group_id: {prefix}-g
  http_listen: "127.0.0.1:{port}"
  lag_interval: 1s
  event_time: {{ max_ahead: 1m, max_behind: 30d, on_violation: dead_letter }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {prefix}-breaches, lag_topic: {prefix}-lag, backlog_topic: {prefix}-backlog, dead_letter_topic: {prefix}-dlq, incidents_topic: {prefix}-incidents }}
audit: {{ topic: {prefix}-audit }}
masking: {{ key_env: SYNCLAG_TEST_MASK_KEY, correlation_ids: true, dimensions: [carrier], dead_letters: mask }}
streams:
  - {{ name: orders, topic: {prefix}-orders, format: json, fields: {{ correlation_id: $.id, event_time: $.at, dimensions: {{ carrier: $.carrier, channel: $.channel }} }} }}
  - {{ name: outbox, topic: {prefix}-outbox, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox }} ]
    sla: {{ warn: 1s, critical: 2s }}
    window: 1h
    dimensions: [carrier, channel]
"#,
        bootstrap = support::bootstrap()
    );
    let service = support::SynclagProcess::start_with_env(
        &yaml,
        port,
        "mask",
        &[("SYNCLAG_TEST_MASK_KEY", KEY), ("SYNCLAG_LOG", "debug")],
    );
    service.wait_ready().await;

    let producer = support::producer();
    let now = chrono::Utc::now();
    let send = |topic: String, key: String, payload: String| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    };
    // 0..3 complete (lag summaries), 3..6 never do (breaches, incident, pending).
    for i in 0..6 {
        let body = serde_json::json!({"id": raw_id(i), "at": now.to_rfc3339(), "carrier": CARRIER, "channel": "web"});
        send(format!("{prefix}-orders"), raw_id(i), body.to_string()).await;
    }
    for i in 0..3 {
        let body = serde_json::json!({"id": raw_id(i), "at": now.to_rfc3339()});
        send(format!("{prefix}-outbox"), raw_id(i), body.to_string()).await;
    }
    // A record from a clock a day ahead: dead-lettered (bad_timestamp), masked.
    let future = (now + chrono::Duration::days(1)).to_rfc3339();
    let body =
        serde_json::json!({"id": raw_id(9), "at": future, "carrier": CARRIER, "channel": "web"});
    send(format!("{prefix}-orders"), raw_id(9), body.to_string()).await;

    let masker = Masker::new(Some(KEY.as_bytes().to_vec()));
    let read = |t: &str| topics::read_all(support::client_config(), &format!("{prefix}-{t}"));
    support::wait_until(
        Duration::from_secs(90),
        "critical breaches, an incident, lag and a dead letter",
        || {
            let breaches = read("breaches");
            let critical = breaches
                .iter()
                .filter(|m| topics::text(m).contains("\"critical\""))
                .count();
            critical >= 3
                && !read("incidents").is_empty()
                && !read("lag").is_empty()
                && !read("dlq").is_empty()
        },
    );
    let http = reqwest::Client::new();
    let mut surfaces: Vec<(String, String)> = Vec::new();
    for path in [
        "/api/v1/pending",
        "/api/v1/breaches",
        "/api/v1/incidents",
        "/api/v1/workflows",
        "/metrics",
    ] {
        let body = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        surfaces.push((path.to_string(), body));
    }
    for t in ["breaches", "incidents", "lag", "dlq", "audit", "backlog"] {
        let text: Vec<String> = read(t).iter().map(topics::all_text).collect();
        surfaces.push((format!("topic {t}"), text.join("\n")));
    }
    surfaces.push((
        "log".into(),
        std::fs::read_to_string(&service.log).expect("log"),
    ));

    let raw: Vec<String> = (0..10).map(raw_id).chain([CARRIER.to_string()]).collect();
    for (name, text) in &surfaces {
        for r in &raw {
            assert!(
                !text.contains(r.as_str()),
                "{name} carries the raw value {r}"
            );
        }
    }
    // The masked values are there (the searches above looked at real content).
    let masked_id = masker.mask(&raw_id(4));
    let masked_carrier = masker.mask(CARRIER);
    let find = |name: &str| {
        surfaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or("")
    };
    assert!(
        find("topic breaches").contains(&masked_id),
        "breaches carry masked ids"
    );
    assert!(find("topic breaches").contains(&masked_carrier));
    assert!(
        find("topic lag").contains(&masked_carrier),
        "lag summaries carry masked dimensions"
    );
    assert!(
        find("topic lag").contains("web"),
        "unmasked dimensions stay as they are"
    );
    assert!(
        find("/api/v1/pending").contains(&masked_id)
            && find("/api/v1/pending").contains(&masked_carrier)
    );
    assert!(
        find("/metrics").contains(&masked_carrier),
        "a masked dimension label carries the masked value"
    );
    assert!(
        find("topic incidents").contains(&masked_carrier)
            || find("topic incidents").contains(&masked_id)
    );
    assert!(
        find("topic dlq").contains(&masker.mask(&raw_id(9))),
        "the dead letter carries the masked id"
    );
    // Breach ids are keyed: not the plain digest of the raw id anyone could recompute.
    let breaches: Vec<serde_json::Value> = read("breaches")
        .iter()
        .map(|m| serde_json::from_str(&topics::text(m)).expect("breach JSON"))
        .collect();
    let b = breaches
        .iter()
        .find(|b| b["correlation_id"] == masked_id.as_str() && b["severity"] == "critical")
        .expect("critical breach of id 4");
    let started = b["started_at_ms"].as_i64().expect("start");
    let plain =
        synclag::rules::breach_id("order_import", raw_id(4).as_bytes(), "critical", started);
    let keyed = synclag::rules::keyed_breach_id(
        &masker,
        "order_import",
        raw_id(4).as_bytes(),
        "critical",
        started,
    );
    assert_ne!(
        b["breach_id"],
        plain.as_str(),
        "breach ids are not an unkeyed digest of the raw id"
    );
    assert_eq!(b["breach_id"], keyed.as_str());
}
