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
