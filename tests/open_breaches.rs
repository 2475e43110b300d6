//! A correlation id used again after its first life ended, on the real broker: once the
//! memory of finished ids has forgotten it, the id starts a correlation of its own, and
//! each life breaches and is resolved once, among a thousand other open breaches.
//!
//! The service remembers each open breach by workflow and id until it resolves or ends;
//! the second life's breach and resolution must be its own, told apart from the first by
//! their start (`started_at_ms`), neither one lost nor repeated.

mod support;

use std::time::Duration;
use support::SynclagProcess;

/// Correlations that breach and stay open meanwhile.
const OPEN: u64 = 999;

fn start(id: &str, at: i64) -> String {
    format!(r#"{{"order_ref":"{id}","event":"order.created","created_at":{at}}}"#)
}

fn imported(id: &str, at: i64) -> String {
    format!(r#"{{"correlation_id":"{id}","event":"sale.order.imported","write_date":{at}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_used_again_breaches_and_resolves_once_in_each_life() {
    let orders = support::random_name("open-orders");
    let outbox = support::random_name("open-outbox");
    let out = support::random_name("open-out");
    let breaches = format!("{out}.breaches");
    support::create_topic(&orders, 1).await;
    support::create_topic(&outbox, 1).await;

    let port = support::free_port();
    let yaml = support::OrderImport {
        orders: &orders,
        outbox: &outbox,
        out: &out,
        idle_partition_s: 5,
        registry_url: None,
    }
    .yaml(port);
    let yaml = format!("{yaml}store:\n  recent_finished: 1\n");
    let mut svc = SynclagProcess::start(&yaml, port, "open-breaches");
    svc.wait_ready().await;

    // Written live, each record at its event time (ms after `base`), so the service reads
    // them in that order; warn 2 s, critical 5 s, window 10 s.
    //     0  AGAIN starts              400  FILLER starts
    //   500–1498  the others start, one a millisecond
    //  2000  AGAIN's warn             2400  FILLER's warn
    //  2500–3498  the others' warns
    //  4000  AGAIN completes, late: resolved; its open breach is removed
    //  4100  FILLER completes, late: resolved; the one-entry memory of finished ids
    //        forgets AGAIN
    //  7200  AGAIN starts again       7700  LAST starts
    //  9200  AGAIN's second warn      9700  LAST's warn
    // 11000  AGAIN completes again, late: resolved
    let again = "SO-AGAIN";
    let mut schedule: Vec<(i64, &str, String)> = vec![
        (0, orders.as_str(), again.to_string()),
        (400, orders.as_str(), "SO-FILLER".to_string()),
        (4_000, outbox.as_str(), again.to_string()),
        (4_100, outbox.as_str(), "SO-FILLER".to_string()),
        (7_200, orders.as_str(), again.to_string()),
        (7_700, orders.as_str(), "SO-LAST".to_string()),
        (11_000, outbox.as_str(), again.to_string()),
    ];
    for i in 0..OPEN {
        schedule.push((500 + i as i64, orders.as_str(), format!("SO-OPEN-{i:04}")));
    }
    schedule.sort_by_key(|(at, _, _)| *at);
    let base = chrono::Utc::now().timestamp_millis() + 500;
    let producer: rdkafka::producer::FutureProducer = support::client_config()
        .set("linger.ms", "0")
        .create()
        .expect("create a producer");
    for (at, topic, id) in &schedule {
        let ts = base + at;
        let wait = ts - chrono::Utc::now().timestamp_millis();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
        }
        let value = if *topic == orders {
            start(id, ts)
        } else {
            imported(id, ts)
        };
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(id.as_str())
                    .payload(&value)
                    .timestamp(ts),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("write {id} to {topic}: {e}"));
    }
    // Every open correlation ends (never arrived) at its start + 10 s: by then every
    // event is out.
    svc.stop_when_drained((OPEN + 1) as f64, &[], Duration::from_secs(120))
        .await;

    let events = support::topics::breach_events(&breaches);
    let again_events: Vec<String> = events
        .iter()
        .filter(|e| e.correlation_id == again || e.correlation_id == "SO-FILLER")
        .map(|e| {
            format!(
                "{} {} {}/{} at {}",
                e.correlation_id,
                e.started_at_ms - base,
                e.kind,
                e.severity,
                e.lag_ms
            )
        })
        .collect();
    let of_again = |started: i64, kind: &str| {
        events
            .iter()
            .filter(|e| {
                e.correlation_id == again && e.started_at_ms == base + started && e.kind == kind
            })
            .count()
    };
    for (life, started) in [("first", 0), ("second", 7_200)] {
        assert_eq!(
            of_again(started, "breach"),
            1,
            "the {life} life of {again} breached at warn, once: {again_events:?}"
        );
        assert_eq!(
            of_again(started, "resolved"),
            1,
            "the {life} life of {again} completed late and was resolved, once: {again_events:?}"
        );
    }
    // Nothing else was resolved: the open ones never completed.
    let resolved: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "resolved")
        .map(|e| e.correlation_id.as_str())
        .collect();
    assert_eq!(
        resolved,
        [again, "SO-FILLER", again],
        "{again}'s two lives and the filler were resolved, in that order"
    );
}
