//! The audit trail: who read operational telemetry and who acted on it.
//!
//! Every API request to `/metrics` and `/api/*` (and every refused request), and every
//! action (dead-letter redrive, from the API or the command line), becomes an
//! [`AuditRecord`]: logged at INFO under the `audit` target, and written as JSON
//! (schema `schemas/audit.avsc`) to the audit topic, keyed by actor, by a producer of its
//! own so audit writes never queue behind breach events.
//!
//! Bounded and never silently lost: records wait in a queue of `audit.queue`; a record
//! that finds it full, or that the broker does not acknowledge after retries, is counted
//! on `synclag_audit_records_total{outcome}` and logged at ERROR with its content (the log
//! line is the record of last resort). Actions write their records with [`AuditLog::write`],
//! which waits for the broker and fails the action if the record cannot be written.

use crate::auth::Caller;
use crate::config::Topology;
use crate::telemetry::names;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The Avro schema of the audit topic's records (their JSON follows it field by field).
pub const AUDIT_SCHEMA: &str = include_str!("../../schemas/audit.avsc");

/// How long one audit record may take to be acknowledged (librdkafka retries inside).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Wall time, epoch milliseconds.
    pub at_ms: i64,
    /// `request` (an API request) or `action` (something changed).
    pub kind: String,
    /// Token name, `anonymous` when authentication is off, or the OS user of a command.
    pub actor: String,
    /// Role of the token, when authenticated.
    pub role: Option<String>,
    /// Client address of an API request; `cli@<host>` for commands.
    pub client: Option<String>,
    /// `api` or `cli`.
    pub channel: String,
    pub method: Option<String>,
    pub path: Option<String>,
    /// HTTP status of a request.
    pub status: Option<i32>,
    pub duration_ms: Option<i64>,
    /// Action name, e.g. `dlq_redrive`, `dlq_redrive_dry_run`.
    pub action: Option<String>,
    /// `ok`, `denied`, `failed`, `started`.
    pub outcome: String,
    /// Action parameters and results (selection, counts, moved records).
    pub details: BTreeMap<String, String>,
    /// The synclag instance that wrote the record.
    pub instance: String,
}

fn instance() -> String {
    crate::config::instance::hostname()
}

impl AuditRecord {
    /// An API request as answered.
    pub fn request(
        caller: &Caller,
        method: &str,
        path: &str,
        status: u16,
        took: Duration,
    ) -> AuditRecord {
        AuditRecord {
            at_ms: crate::decode::time::wall_ms(),
            kind: "request".into(),
            actor: caller.name(),
            role: caller.role().map(str::to_string),
            client: caller.client.map(|c| c.to_string()),
            channel: "api".into(),
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            status: Some(i32::from(status)),
            duration_ms: Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
            action: None,
            outcome: match status {
                401 | 403 => "denied",
                s if s >= 500 => "failed",
                _ => "ok",
            }
            .into(),
            details: BTreeMap::new(),
            instance: instance(),
        }
    }

    /// An action by `actor` (role and client when it came through the API).
    pub fn action(
        channel: &str,
        actor: &str,
        role: Option<&str>,
        client: Option<String>,
        action: &str,
        outcome: &str,
        details: BTreeMap<String, String>,
    ) -> AuditRecord {
        AuditRecord {
            at_ms: crate::decode::time::wall_ms(),
            kind: "action".into(),
            actor: actor.to_string(),
            role: role.map(str::to_string),
            client,
            channel: channel.to_string(),
            method: None,
            path: None,
            status: None,
            duration_ms: None,
            action: Some(action.to_string()),
            outcome: outcome.to_string(),
            details,
            instance: instance(),
        }
    }

    fn log(&self) {
        tracing::info!(
            target: "audit",
            kind = %self.kind,
            actor = %self.actor,
            role = ?self.role,
            client = ?self.client,
            method = ?self.method,
            path = ?self.path,
            status = ?self.status,
            action = ?self.action,
            outcome = %self.outcome,
            details = ?self.details,
            "audit"
        );
    }
}

/// Why an audit record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create the audit producer: {0}")]
    Client(String),
    #[error("audit record not written to `{topic}`: {why}")]
    Delivery { topic: String, why: String },
}

/// The writer of the audit topic. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    producer: Option<Arc<FutureProducer>>,
    topic: String,
}

fn count(outcome: &'static str) {
    metrics::counter!(names::AUDIT_RECORDS_TOTAL, "outcome" => outcome).increment(1);
}

/// Exports the audit series at zero, so dashboards see them before the first request.
pub fn preregister() {
    for outcome in ["written", "queue_full", "delivery_failed"] {
        metrics::counter!(names::AUDIT_RECORDS_TOTAL, "outcome" => outcome).increment(0);
    }
}

impl AuditLog {
    /// Starts the writer task for `topology`'s audit topic, with a producer of its own.
    pub fn start(topology: &Topology) -> Result<AuditLog, AuditError> {
        Self::start_after(topology, std::future::ready(()))
    }

    /// [`Self::start`], writing to Kafka only once `ready` resolved (e.g. the audit topic
    /// was created with its retention); records queue meanwhile.
    pub fn start_after(
        topology: &Topology,
        ready: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<AuditLog, AuditError> {
        let mut cfg = crate::config::kafka::producer_config(topology);
        cfg.set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| AuditError::Client(e.to_string()))?;
        Ok(Self::with_producer(
            Arc::new(producer),
            topology.audit.topic.clone(),
            topology.audit.queue,
            ready,
        ))
    }

    fn with_producer(
        producer: Arc<FutureProducer>,
        topic: String,
        queue: usize,
        ready: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> AuditLog {
        preregister();
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(queue.max(1));
        let writer = producer.clone();
        let to = topic.clone();
        tokio::spawn(async move {
            ready.await;
            while let Some(record) = rx.recv().await {
                if let Err(e) = send(&writer, &to, &record).await {
                    count("delivery_failed");
                    tracing::error!(target: "audit", error = %e, record = ?record, "audit record not written to Kafka; this log line is its only copy");
                }
            }
        });
        AuditLog {
            tx,
            producer: Some(producer),
            topic,
        }
    }

    /// A log that only logs and counts (no Kafka): for tools and tests without a broker.
    pub fn log_only() -> AuditLog {
        preregister();
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(1_024);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        AuditLog {
            tx,
            producer: None,
            topic: String::new(),
        }
    }

    /// Logs `record` and queues it for the audit topic without waiting; false when the
    /// queue was full, which is counted and logged at ERROR, with the record.
    pub fn record(&self, record: AuditRecord) -> bool {
        record.log();
        if self.producer.is_none() {
            return true;
        }
        if let Err(e) = self.tx.try_send(record) {
            count("queue_full");
            let record = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            tracing::error!(target: "audit", record = ?record, "audit queue full: record not written to Kafka; this log line is its only copy");
            return false;
        }
        true
    }

    /// Logs `record` and waits until the audit topic has it: for actions, which must not
    /// happen unaudited.
    pub async fn write(&self, record: AuditRecord) -> Result<(), AuditError> {
        record.log();
        match &self.producer {
            None => Ok(()),
            Some(p) => send(p, &self.topic, &record).await.inspect_err(|_| {
                count("delivery_failed");
            }),
        }
    }
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    record: &AuditRecord,
) -> Result<(), AuditError> {
    let payload = serde_json::to_vec(record).map_err(|e| AuditError::Delivery {
        topic: topic.to_string(),
        why: e.to_string(),
    })?;
    producer
        .send(
            FutureRecord::to(topic)
                .key(record.actor.as_bytes())
                .payload(&payload),
            Timeout::After(DELIVERY_TIMEOUT),
        )
        .await
        .map_err(|(e, _)| AuditError::Delivery {
            topic: topic.to_string(),
            why: e.to_string(),
        })?;
    count("written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue refuses the record (counted and logged) instead of growing.
    #[tokio::test]
    async fn the_queue_is_bounded_and_a_full_queue_is_reported() {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("producer");
        // The writer never starts (its gate stays shut): the queue only fills.
        let log = AuditLog::with_producer(
            Arc::new(producer),
            "audit".into(),
            2,
            std::future::pending(),
        );
        let caller = Caller {
            identity: None,
            client: None,
        };
        let rec = || AuditRecord::request(&caller, "GET", "/metrics", 200, Duration::ZERO);
        assert!(log.record(rec()));
        assert!(log.record(rec()));
        assert!(
            !log.record(rec()),
            "a third record does not fit a queue of 2"
        );
    }

    /// The JSON of a record is valid against `schemas/audit.avsc`, field by field.
    #[test]
    fn records_follow_the_avro_schema() {
        let schema = apache_avro::Schema::parse_str(AUDIT_SCHEMA).expect("audit.avsc parses");
        let caller = Caller {
            identity: Some(crate::auth::Identity {
                name: "ann".into(),
                role: crate::auth::Role::Operator,
            }),
            client: Some("127.0.0.1:5000".parse().expect("addr")),
        };
        let records = [
            AuditRecord::request(
                &caller,
                "GET",
                "/api/v1/pending",
                200,
                Duration::from_millis(3),
            ),
            AuditRecord::action(
                "cli",
                "root",
                None,
                None,
                "dlq_redrive",
                "ok",
                BTreeMap::from([("moved".into(), "3".into())]),
            ),
        ];
        for r in records {
            let value = apache_avro::to_value(&r).expect("to avro value");
            let value = value
                .resolve(&schema)
                .expect("record resolves against audit.avsc");
            assert!(value.validate(&schema));
        }
    }
}
