//! Two processes of one instance: a restarted instance whose old process still runs (hung,
//! cut off from the cluster, slow to die). Both use the same `service.instance_id`, so the
//! new process fences the old one — its transactions can no longer commit and its consumer
//! is replaced in the group. The old process must stop with an error, not go on looking
//! alive while writing nothing (or, worse, writing behind the new one), and the breach
//! topic must still show each alert exactly once.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use support::{free_port, SynclagProcess};
use synclag::emit::events::BreachEvent;

fn config(group: &str, http: u16, starts: &str, ends: &str, out: &str) -> String {
    support::service::TwoStage {
        group,
        http,
        bootstrap: &support::bootstrap(),
        starts,
        ends,
        out,
        workflow: "fenced",
        warn: "8s",
        critical: "10m",
        window: "30m",
        service: "",
        properties: "",
    }
    .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_of_the_same_instance_fences_the_first() {
    let starts = support::random_name("fence-starts");
    let ends = support::random_name("fence-ends");
    let out = support::random_name("fence-breaches");
    for t in [&starts, &ends, &out] {
        support::create_topic(t, 1).await;
    }
    let group = support::random_name("synclag-fence");
    let (http_a, http_b) = (free_port(), free_port());
    let mut a = SynclagProcess::start(
        &config(&group, http_a, &starts, &ends, &out),
        http_a,
        "fence-a",
    );
    a.wait_ready().await;

    let producer: FutureProducer = support::client_config()
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let n = 40u64;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let id = format!("FN-{i:03}");
        let payload = serde_json::to_vec(&serde_json::json!({"id": id, "at": now})).expect("json");
        producer
            .send(
                FutureRecord::to(&starts).key(&id).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
    }
    support::wait_until_async(Duration::from_secs(30), "every start read by A", || async {
        a.get_json("/api/v1/workflows")
            .await
            .and_then(|v| v["workflows"][0]["pending"].as_u64())
            == Some(n)
    })
    .await;

    // B: the same instance again, while A still runs. The warn deadlines fall after it.
    let mut b = SynclagProcess::start(
        &config(&group, http_b, &starts, &ends, &out),
        http_b,
        "fence-b",
    );
    b.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(code) = a.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced process still runs 60 s after the new one started\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(code, Some(0), "a fenced process stops with an error");
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        log.contains("service.instance_id"),
        "the error names the likely cause\n{}",
        a.log_tail()
    );

    // B carries on from the state A committed: each warn exactly once.
    let reader: StreamConsumer = support::consumer_with(
        &support::random_name("fence-reader"),
        &[("isolation.level", "read_committed")],
    );
    reader.subscribe(&[&out]).expect("subscribe");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && seen.len() < n as usize {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), reader.recv()).await {
            let ev: BreachEvent =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON breach");
            if ev.kind == "breach" && ev.severity == "warn" {
                *seen.entry(ev.correlation_id).or_default() += 1;
            }
        }
    }
    // Anything written twice would arrive within these seconds too.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(300), reader.recv()).await {
            let ev: BreachEvent =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON breach");
            if ev.kind == "breach" && ev.severity == "warn" {
                *seen.entry(ev.correlation_id).or_default() += 1;
            }
        }
    }
    assert_eq!(
        seen.len(),
        n as usize,
        "every warn raised\nA:\n{}\nB:\n{}",
        a.log_tail(),
        b.log_tail()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "raised more than once: {twice:?}");
    assert_eq!(b.terminate().await, Some(0), "{}", b.log_tail());
}
