//! One backlog monitor per deployment, however many instances run: an election that
//! uses Kafka only.
//!
//! Every instance joins the consumer group `<service.group_id>.backlog` subscribed to
//! [`ELECTION_TOPIC`], a topic with a single partition (created if missing; nothing is
//! ever written to it). The group gives that partition to exactly one member; that
//! member runs the monitor. The group uses the eager `range` assignor, so the old owner
//! is told to give the partition up (and stops) before it is handed to anyone else.
//! When the leader stops it leaves the group and another instance is elected at once;
//! when it dies, after the group's session timeout.
//!
//! Deployments with different `service.group_id`s share the topic but not the group,
//! so each elects its own leader.

use super::BacklogError;
use crate::config::Topology;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The single-partition topic every instance's election consumer subscribes to.
pub const ELECTION_TOPIC: &str = "__synclag_backlog_election";

/// Where and how instances elect the one that runs the monitor.
#[derive(Debug, Clone)]
pub struct Election {
    pub bootstrap_servers: String,
    /// librdkafka properties, passed through (SASL, TLS, …).
    pub properties: BTreeMap<String, String>,
    /// The election group: `<service.group_id>.backlog`.
    pub group_id: String,
    /// The election topic ([`ELECTION_TOPIC`] unless a test picks its own).
    pub topic: String,
    /// A dead leader is replaced after this long.
    pub session_timeout: Duration,
    /// Client id of this instance's election consumer (tells members apart).
    pub client_id: String,
}

impl Election {
    pub fn from_topology(topology: &Topology) -> Election {
        Election {
            bootstrap_servers: topology.kafka.bootstrap_servers.clone(),
            properties: topology.kafka.properties.clone(),
            group_id: format!("{}.backlog", topology.service.group_id),
            topic: ELECTION_TOPIC.to_owned(),
            session_timeout: Duration::from_secs(10),
            client_id: format!("synclag-backlog-{}", topology.service.instance_id),
        }
    }

    /// Joins the election (creating the topic when missing) and keeps taking part in a
    /// thread of its own until `shutdown`; then leaves the group. `fence` is called with
    /// `false` when the partition is taken away, *before* the group can hand it to
    /// another instance (it may block until a cycle in progress has ended), and with
    /// `true` when this instance is elected.
    pub async fn start(
        &self,
        shutdown: CancellationToken,
        fence: Fence,
    ) -> Result<Leadership, BacklogError> {
        self.create_topic().await;
        let mut cfg = crate::config::kafka::client_config(
            crate::config::kafka::Client::Admin,
            &self.bootstrap_servers,
            &self.properties,
        );
        cfg.set("group.id", &self.group_id)
            .set("client.id", &self.client_id)
            .set("partition.assignment.strategy", "range")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 5).max(100).to_string(),
            )
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest");
        let (tx, rx) = watch::channel(false);
        let consumer: BaseConsumer<ElectionContext> = cfg
            .create_with_context(ElectionContext {
                tx: tx.clone(),
                topic: self.topic.clone(),
                fence: fence.clone(),
            })
            .map_err(BacklogError::Client)?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(BacklogError::Client)?;
        std::thread::Builder::new()
            .name("backlog-election".into())
            .spawn(move || {
                while !shutdown.is_cancelled() {
                    // Rebalance callbacks run inside poll; nothing is ever produced.
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                fence(false);
                tx.send_replace(false);
                drop(consumer); // leaves the group: another instance is elected at once
            })
            .map_err(|e| BacklogError::Worker(e.to_string()))?;
        Ok(Leadership { rx })
    }

    async fn create_topic(&self) {
        let mut cfg = rdkafka::config::ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = match cfg.create() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the election topic's admin client");
                return;
            }
        };
        // −1: the cluster's default replication factor.
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        match admin.create_topics([&topic], &opts).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) => {
                            tracing::info!(topic = %self.topic, "created the backlog election topic")
                        }
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((t, code)) => {
                            tracing::warn!(topic = %t, error = %code, "cannot create the backlog election topic; waiting for it to exist")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the backlog election topic; waiting for it to exist")
            }
        }
    }
}

/// Whether this instance is the elected one, as it changes.
pub struct Leadership {
    rx: watch::Receiver<bool>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once leadership is `leader` (at once if it already is). Pending forever
    /// if the election ended (shutdown).
    pub async fn wait_for(&mut self, leader: bool) {
        if self.rx.wait_for(|v| *v == leader).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Called with the new leadership, synchronously from the election's rebalance.
pub type Fence = std::sync::Arc<dyn Fn(bool) + Send + Sync>;

struct ElectionContext {
    tx: watch::Sender<bool>,
    topic: String,
    fence: Fence,
}

impl ClientContext for ElectionContext {}

impl ConsumerContext for ElectionContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Stop before the partition can be given to anyone else.
        if !matches!(rebalance, Rebalance::Assign(_)) {
            (self.fence)(false);
            self.tx.send_replace(false);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let leader = match rebalance {
            Rebalance::Assign(tpl) => tpl
                .elements()
                .iter()
                .any(|e| e.topic() == self.topic && e.partition() == 0),
            _ => false,
        };
        (self.fence)(leader);
        self.tx.send_replace(leader);
    }
}
