//! Outputs a topic refuses for their size, on the real broker.
//!
//! The breach topic is created with a small `max.message.bytes` (4 KiB) and the incident
//! topic with one nothing fits in (200 bytes). Correlations that never close are started,
//! half of them carrying six dimensions of 1,000 bytes each: their breach events are about
//! 7 KiB. Before, the refused record was sent again and again (in a transaction: the
//! transaction aborted and written again, forever), every output behind it waited, input
//! paused, and synclag went silent. Now synclag reads the output topics' limits at start
//! and never sends a record over them; in both delivery modes:
//!
//! - every breach arrives, each once: the large ones in their smallest form (evidence left
//!   out, the long dimension values cut to a prefix and a hash), naming what was cut in
//!   `truncated`, counted on `synclag_output_truncations_total{field="smallest_form"}`;
//! - the incident events, which fit in no form, are dropped and counted on
//!   `synclag_output_dropped_total`, and hold nothing up.

mod support;

use rdkafka::producer::FutureRecord;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{free_port, SynclagProcess};
use synclag::emit::events::BreachEvent;

const NORMAL: usize = 8;
const LARGE: usize = 8;
const DIMENSIONS: usize = 6;
const LONG_VALUE_BYTES: usize = 1_000;

/// `batch.size` below the breach topic's limit: the broker judges whole record batches, so
/// a producer that batches more than the topic takes has even small records refused
/// (synclag warns about that at start-up).
fn yaml(group: &str, port: u16, t: &Topics, exactly_once: bool) -> String {
    let dims: Vec<String> = (1..=DIMENSIONS).map(|i| format!("d{i}")).collect();
    let fields: Vec<String> = dims.iter().map(|d| format!("{d}: $.{d}")).collect();
    format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{port}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4, batch.size: 3000 }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog, incidents_topic: {incidents} }}
store: {{ exactly_once: {exactly_once} }}
streams:
  - {{ name: starts, topic: {starts}, format: json, fields: {{ correlation_id: $.id, event_time: $.at, dimensions: {{ {fields} }} }} }}
  - {{ name: ends, topic: {ends}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: shipment
    stages: [ {{ name: started, stream: starts }}, {{ name: done, stream: ends }} ]
    dimensions: [ {dims} ]
    sla: {{ warn: 2s, critical: 4s }}
    window: 6s
"#,
        bootstrap = support::bootstrap(),
        out = t.out,
        incidents = t.incidents,
        starts = t.starts,
        ends = t.ends,
        fields = fields.join(", "),
        dims = dims.join(", "),
    )
}

struct Topics {
    starts: String,
    ends: String,
    out: String,
    incidents: String,
}

async fn topics(label: &str) -> Topics {
    let t = Topics {
        starts: support::random_name(&format!("{label}-starts")),
        ends: support::random_name(&format!("{label}-ends")),
        out: support::random_name(&format!("{label}-breaches")),
        incidents: support::random_name(&format!("{label}-incidents")),
    };
    support::create_topic(&t.starts, 1).await;
    support::create_topic(&t.ends, 1).await;
    support::kafka::create_topic_with(&t.out, 1, &[("max.message.bytes", "4096")]).await;
    support::kafka::create_topic_with(&t.incidents, 1, &[("max.message.bytes", "200")]).await;
    t
}

fn id(i: usize) -> String {
    if i < NORMAL {
        format!("small-{i}")
    } else {
        format!("large-{i}")
    }
}

async fn produce_starts(topic: &str) {
    let producer = support::producer();
    let at = chrono::Utc::now().timestamp_millis();
    for i in 0..NORMAL + LARGE {
        let mut value = serde_json::json!({ "id": id(i), "at": at });
        for d in 1..=DIMENSIONS {
            let v = if i < NORMAL {
                format!("v{d}")
            } else {
                format!("{d}").repeat(LONG_VALUE_BYTES)
            };
            value[format!("d{d}")] = serde_json::Value::String(v);
        }
        let payload = value.to_string();
        let key = id(i);
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce a start: {e}"));
    }
}

fn breaches(topic: &str) -> Vec<BreachEvent> {
    support::topics::read_all(support::client_config(), topic)
        .iter()
        .map(|m| {
            serde_json::from_str(&support::topics::text(m))
                .unwrap_or_else(|e| panic!("a breach event: {e}"))
        })
        .collect()
}

async fn refused_outputs_take_their_smallest_form_or_are_dropped(exactly_once: bool) {
    let label = if exactly_once {
        "oversize-eos"
    } else {
        "oversize-alo"
    };
    let t = topics(label).await;
    let port = free_port();
    let group = support::random_name(label);
    let mut svc = SynclagProcess::start(&yaml(&group, port, &t, exactly_once), port, label);
    svc.wait_ready().await;
    produce_starts(&t.starts).await;

    // warn, critical and never_arrived for every correlation.
    let expected = 3 * (NORMAL + LARGE);
    support::wait_until_async(
        Duration::from_secs(60),
        "every breach event on the breach topic",
        || {
            let topic = t.out.clone();
            async move {
                tokio::task::spawn_blocking(move || breaches(&topic).len() >= expected)
                    .await
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let metrics = svc.get_text("/metrics").await.unwrap_or_default();
    let incidents_dropped = support::metric_sum(
        &metrics,
        "synclag_output_dropped_total",
        &[&format!("topic=\"{}\"", t.incidents)],
    );
    let smallest = support::metric_sum(
        &metrics,
        "synclag_output_truncations_total",
        &[&format!("topic=\"{}\"", t.out), "field=\"smallest_form\""],
    );
    let log = std::fs::read_to_string(&svc.log).unwrap_or_default();
    assert_eq!(svc.terminate().await, Some(0), "{}", svc.log_tail());

    let seen = breaches(&t.out);
    let mut by_id: BTreeMap<String, Vec<&BreachEvent>> = BTreeMap::new();
    for ev in &seen {
        by_id.entry(ev.breach_id.clone()).or_default().push(ev);
    }
    assert!(
        by_id.values().all(|evs| evs.len() == 1),
        "each breach once: {by_id:#?}"
    );
    for i in 0..NORMAL + LARGE {
        let cid = id(i);
        let mine: Vec<&BreachEvent> = seen.iter().filter(|e| e.correlation_id == cid).collect();
        let kinds: Vec<(&str, &str)> = mine
            .iter()
            .map(|e| (e.kind.as_str(), e.severity.as_str()))
            .collect();
        assert_eq!(
            mine.len(),
            3,
            "{cid}: warn, critical, never arrived: {kinds:?}"
        );
        for ev in mine {
            if i < NORMAL {
                assert!(ev.truncated.is_empty(), "{cid}: whole: {ev:?}");
                assert_eq!(ev.dimensions["d1"], "v1");
            } else {
                for d in 1..=DIMENSIONS {
                    let key = format!("dimensions.d{d}");
                    assert!(ev.truncated.contains(&key), "{cid}: {key} cut: {ev:?}");
                    let v = &ev.dimensions[&format!("d{d}")];
                    assert!(
                        v.len() < 100 && v.starts_with(&d.to_string()) && v.contains("sha256:"),
                        "{cid}: a prefix and a hash: {v}"
                    );
                }
            }
        }
    }
    assert_eq!(
        smallest,
        (3 * LARGE) as f64,
        "each large breach event sent once in its smallest form\n{metrics}"
    );
    assert!(
        incidents_dropped >= 1.0,
        "incident events dropped and counted\n{metrics}"
    );
    assert!(
        support::topics::read_all(support::client_config(), &t.incidents).is_empty(),
        "nothing fits the incident topic"
    );
    assert!(
        log.contains("too large for its topic"),
        "the smaller forms are logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outputs_take_their_smallest_form_or_are_dropped_exactly_once() {
    refused_outputs_take_their_smallest_form_or_are_dropped(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outputs_take_their_smallest_form_or_are_dropped_at_least_once() {
    refused_outputs_take_their_smallest_form_or_are_dropped(false).await;
}
