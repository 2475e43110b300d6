//! Shared harness for the integration tests: a real single-node Apache Kafka broker,
//! a Confluent-compatible schema registry (Apicurio Registry), and small helpers.
//!
//! Use it from an integration test with `mod support;`. Every test binary that touches
//! the broker or the registry starts (at most) one of each, lazily, on first use; the
//! JVMs are stopped by PID when the test process exits.
//!
//! Environment overrides:
//! - `SYNCLAG_TEST_BOOTSTRAP`: use this Kafka bootstrap address instead of starting a broker.
//! - `SYNCLAG_TEST_REGISTRY_URL`: use this Confluent-compatible registry base URL instead of
//!   starting Apicurio.
//! - `SYNCLAG_TEST_INFRA_DIR`: where fetched jars and per-run logs go (default
//!   `target/test-infra`).
//!
//! Nothing here ever skips a test: if Java or Maven is missing, or a service cannot start,
//! the calling test panics with the reason and the tail of the service's log.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod bench;
pub mod browser;
pub mod deploy;
pub mod drill;
pub mod kafka;
pub mod process;
pub mod prometheus;
pub mod registry;
pub mod service;
pub mod tls;
pub mod topics;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kafka::{
    bootstrap, client_config, consumer, consumer_with, create_topic, producer, BrokerInfo,
};
pub use registry::registry_url;
pub use service::{free_port, SynclagProcess};

/// A name that no other test, test binary or earlier run uses: `prefix-<pid>-<time>-<n>`.
/// Use it for topics, consumer groups and registry subjects.
pub fn random_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{:x}-{n}", std::process::id(), nanos)
}

const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `condition` until it returns true; panics naming `what` if `timeout` passes first.
/// For synchronous conditions; in async tests prefer [`wait_until_async`].
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Async form of [`wait_until`]: awaits `condition()` repeatedly until it yields true.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The sum of every sample of metric `name` in a Prometheus text exposition whose line
/// contains each of `label_filters` (e.g. `topic="x"`).
#[allow(dead_code)] // not every test binary reads metrics this way
pub fn metric_sum(text: &str, name: &str, label_filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| label_filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A producer for a test's backlog: records with their own timestamps, queued
/// without waiting, written when [`BacklogWriter::flush`] returns.
pub struct BacklogWriter {
    producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
}

impl BacklogWriter {
    pub fn new() -> BacklogWriter {
        BacklogWriter {
            producer: client_config()
                .set("linger.ms", "20")
                .set("queue.buffering.max.messages", "200000")
                .create()
                .expect("create the backlog producer"),
        }
    }

    /// Queues `value` for `topic` under `key`, with record time `ts`.
    pub fn send(&self, topic: &str, key: &str, value: &str, ts: i64) {
        self.send_bytes(topic, key, value.as_bytes(), ts);
    }

    /// [`send`](Self::send) for a value that is not text (e.g. Avro).
    pub fn send_bytes(&self, topic: &str, key: &str, value: &[u8], ts: i64) {
        self.producer
            .send(
                rdkafka::producer::BaseRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .timestamp(ts),
            )
            .unwrap_or_else(|(e, _)| panic!("queue a record for {topic}: {e}"));
    }

    /// Waits until every queued record is handed to the broker.
    pub fn flush(self) {
        use rdkafka::producer::Producer;
        self.producer
            .flush(std::time::Duration::from_secs(60))
            .expect("the backlog is written");
    }
}

/// The topics of a two-stage order-import workflow and where its outputs go.
pub struct OrderImport<'a> {
    /// `order.created` records: `$.order_ref`, `$.created_at`, `$.event`.
    pub orders: &'a str,
    /// `sale.order.imported` records: `$.correlation_id`, `$.write_date`, `$.event`.
    pub outbox: &'a str,
    /// Output topics are `<out>.breaches`, `<out>.lag` and so on.
    pub out: &'a str,
    /// `service.idle_partition`, seconds.
    pub idle_partition_s: u64,
    /// A `registry:` section when outputs go through a schema registry.
    pub registry_url: Option<&'a str>,
}

impl OrderImport<'_> {
    /// The service's topology: JSON inputs, warn 2 s, critical 5 s, window 10 s, a fresh
    /// group, the HTTP API on `port`.
    pub fn yaml(&self, port: u16) -> String {
        let OrderImport {
            orders,
            outbox,
            out,
            idle_partition_s,
            registry_url,
        } = self;
        let registry = registry_url
            .map(|url| format!("registry: {{ url: \"{url}\", timeout: 2s }}"))
            .unwrap_or_default();
        format!(
            r#"
service:
  group_id: {group}
  http_listen: 127.0.0.1:{port}
  lag_interval: 1h
  idle_partition: {idle_partition_s}s
kafka:
  bootstrap_servers: "{bootstrap}"
  properties: {{ broker.address.family: v4 }}
{registry}
outputs:
  breaches_topic: {out}.breaches
  lag_topic: {out}.lag
  backlog_topic: {out}.backlog
  dead_letter_topic: {out}.dlq
  incidents_topic: {out}.incidents
streams:
  - name: orders
    topic: {orders}
    format: json
    fields: {{ correlation_id: $.order_ref, event_time: $.created_at, event_type: $.event }}
  - name: odoo_outbox
    topic: {outbox}
    format: json
    fields: {{ correlation_id: $.correlation_id, event_time: $.write_date, event_type: $.event }}
workflows:
  - name: order_import
    stages:
      - {{ name: created, stream: orders, event_type: order.created }}
      - {{ name: imported, stream: odoo_outbox, event_type: sale.order.imported }}
    sla: {{ warn: 2s, critical: 5s }}
    window: 10s
"#,
            group = random_name("synclag"),
            bootstrap = bootstrap(),
        )
    }
}

/// Forwards every connection on `port` to `target` (host:port) once started: a service
/// pointed at the port reaches `target` only once the relay runs.
#[allow(dead_code)] // not every test binary relays
pub async fn relay(port: u16, target: String) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind relay port");
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
