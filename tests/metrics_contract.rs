//! Every metric the README lists is exported from start-up — before any input record —
//! so dashboards and alert rules see their series at once. Only histograms whose label
//! values come from traffic (lag by dimension values) or from a wait that has not
//! happened yet are exempt, and the README says so.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::service::SynclagProcess;

/// Histograms with no observation yet: their label values are not known up front.
const ONLY_AFTER_OBSERVATIONS: &[&str] = &[
    "synclag_lag_seconds",
    "synclag_output_backpressure_wait_seconds",
    "synclag_output_queue_full_wait_seconds",
];

fn readme_metrics() -> BTreeSet<String> {
    let readme = include_str!("../README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `synclag_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("synclag_{name}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_metric_exists_from_start_up() {
    let orders = support::random_name("mc-orders");
    let outbox = support::random_name("mc-outbox");
    let signals = support::random_name("mc-signals");
    let out = support::random_name("mc-breaches");
    let manifests = support::random_name("mc-manifests");
    for t in [&orders, &outbox, &signals, &out, &manifests] {
        support::create_topic(t, 1).await;
    }
    let group = support::random_name("synclag-mc");
    let http = support::free_port();
    let config = format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog, incidents_topic: {out}-incidents }}
streams:
  - {{ name: orders, topic: {orders}, format: json, fields: {{ correlation_id: $.id, event_time: $.at, dimensions: {{ channel: $.channel }} }} }}
  - {{ name: outbox, topic: {outbox}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: errors, topic: {signals}, format: json, role: signals, fields: {{ correlation_id: $.id, event_time: $.at, event_type: $.kind }} }}
  - {{ name: manifests, topic: {manifests}, format: json, fields: {{ correlation_id: $.id, event_time: $.at, event_type: $.kind, dimensions: {{ count: $.count }} }} }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox }} ]
    sla: {{ warn: 5m, critical: 15m }}
    window: 1h
    dimensions: [channel]
causes:
  - {{ name: throttled, signal_stream: errors, signal_type: throttled, route: integration }}
routes:
  integration: {{ team: integration-support }}
batches:
  - name: manifest
    stream: manifests
    trailer_type: trailer
    expected_count: count
    schedule: {{ cron: "0 2 * * *", timezone: UTC }}
    start: {{ warn: 10m, critical: 30m }}
    completion: {{ warn: 1h, critical: 2h }}
backlog:
  interval: 2s
  groups: [ {{ name: {group} }} ]
"#,
        bootstrap = support::bootstrap(),
    );
    let svc = SynclagProcess::start(&config, http, "metrics-contract");
    svc.wait_ready().await;
    let wanted: BTreeSet<String> = readme_metrics()
        .into_iter()
        .filter(|m| !ONLY_AFTER_OBSERVATIONS.contains(&m.as_str()))
        .collect();
    assert!(
        wanted.len() > 40,
        "README metric table not found: {wanted:?}"
    );
    let mut missing = wanted.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !missing.is_empty() && std::time::Instant::now() < deadline {
        let text = svc.get_text("/metrics").await.unwrap_or_default();
        let present: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|n| {
                n.trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
                    .to_string()
            })
            .collect();
        missing.retain(|m| !present.contains(m));
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        missing.is_empty(),
        "listed in the README but not exported before any record: {missing:?}\n{}",
        svc.log_tail()
    );
    // Labels are real topic names, never placeholders.
    let text = svc.get_text("/metrics").await.unwrap_or_default();
    for l in text.lines().filter(|l| l.contains("topic=\"")) {
        let topic = l
            .split("topic=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        assert!(
            // (the batch state topic is named after the group)
            [&orders, &outbox, &signals, &out, &manifests, &group]
                .iter()
                .any(|t| topic.starts_with(t.as_str())),
            "topic label `{topic}` is not a real topic: {l}"
        );
    }
}
