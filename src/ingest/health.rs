//! Input health: can synclag reach Kafka, and do its configured input topics exist?
//!
//! Three sources feed one [`InputHealth`] handle:
//! - a light metadata probe (its own client, one small request per configured topic every
//!   [`PROBE_EVERY`]) — the only signal that also says which topics are missing, and the
//!   one that notices the cluster coming back, since librdkafka sends no "all brokers up"
//!   event;
//! - the consumer's statistics (every broker it knows down → unreachable within a
//!   statistics interval);
//! - the consumer's error callback (`AllBrokersDown` → unreachable at once; a fatal
//!   error, such as being fenced by another process with the same `service.instance_id`,
//!   → never ready again).
//!
//! Kafka counts as reachable only when the last probe succeeded, the statistics do not
//! say every broker is down, and no `AllBrokersDown` arrived since the consumer last had
//! a broker connection up (by its statistics; by a later successful probe when the
//! consumer sends no statistics). Flipping to unreachable takes the fastest signal;
//! coming back takes both the probe and the consumer's own reconnection, so `/readyz`
//! does not flap while the consumer is still in its reconnect backoff.
//!
//! A missing topic does not make `/readyz` fail: the other workflows still work, and a
//! service that restarts or leaves rotation over one absent topic would hide everything
//! else. It is listed in the `/readyz` body, in `synclag_input_topic_missing`, in a WARN
//! line when it goes missing, and [`InputHealth::missing_topics`] gives it to breach
//! attribution.

use crate::config::Topology;
use crate::telemetry::names;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the metadata probe runs.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one probe request may take before Kafka counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the broker last said about a configured input topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicState {
    Present,
    /// The broker does not know the topic, or refuses to describe it (the reason).
    Missing(String),
}

/// What `/readyz` shows about Kafka and the inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthSnapshot {
    pub kafka_reachable: bool,
    /// Configured input topics the broker does not have (sorted).
    pub missing_topics: Vec<String>,
    /// Set once the consumer hit a fatal error; the process must be restarted.
    pub fatal_error: Option<String>,
    /// The brokers refused synclag's credentials (SASL), as librdkafka last said; cleared
    /// by the next successful probe.
    pub auth_error: Option<String>,
}

/// The pure state behind [`InputHealth`]: no I/O, no clock, unit-tested below.
#[derive(Debug, Default)]
struct State {
    /// Result of the last completed probe; `None` before the first.
    probe_ok: Option<bool>,
    /// From the last statistics: is any broker connection up? `None` before any.
    stats_up: Option<bool>,
    /// Bumped by every `AllBrokersDown`; a probe only clears a down signal it started after.
    down_epoch: u64,
    /// `down_epoch` at the start of the last successful probe.
    cleared_epoch: u64,
    fatal: Option<String>,
    auth_error: Option<String>,
    topics: BTreeMap<String, TopicState>,
    /// What was last logged, so transitions are logged once.
    logged_reachable: Option<bool>,
}

impl State {
    fn reachable(&self) -> bool {
        self.probe_ok == Some(true)
            && self.stats_up != Some(false)
            && self.cleared_epoch == self.down_epoch
            && self.fatal.is_none()
    }

    fn missing(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, s)| matches!(s, TopicState::Missing(_)))
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn probe_done(&mut self, started_epoch: u64, ok: bool) {
        self.probe_ok = Some(ok);
        if ok {
            self.auth_error = None;
        }
        // The consumer's own statistics, when it sends them, decide when its outage is
        // over: the probe's client may reconnect seconds before the consumer does.
        if ok && self.stats_up.is_none() {
            self.cleared_epoch = self.cleared_epoch.max(started_epoch);
        }
    }

    fn stats(&mut self, up: Option<bool>) {
        self.stats_up = up;
        // Statistics come through the consumer's queue after any error event before
        // them: a connection up now is up after the last `AllBrokersDown`.
        if up == Some(true) {
            self.cleared_epoch = self.down_epoch;
        }
    }

    /// Records a topic's state; returns the previous one when it changed.
    fn topic(&mut self, topic: &str, state: TopicState) -> Option<Option<TopicState>> {
        let old = self.topics.insert(topic.to_string(), state.clone());
        (old.as_ref() != Some(&state)).then_some(old)
    }
}

/// A cheap, cloneable view of Kafka reachability and input topic presence, shared by the
/// consumer's callbacks, the probe task, `/readyz` and breach attribution.
#[derive(Debug, Clone, Default)]
pub struct InputHealth(Arc<Mutex<State>>);

impl InputHealth {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether Kafka answers and the consumer is usable (see the module docs).
    pub fn kafka_reachable(&self) -> bool {
        self.lock().reachable()
    }

    /// Configured input topics that do not exist (as of the last probe), sorted.
    pub fn missing_topics(&self) -> Vec<String> {
        self.lock().missing()
    }

    /// Whether `topic` is known to be missing ("the stage's topic does not exist").
    pub fn is_missing(&self, topic: &str) -> bool {
        matches!(self.lock().topics.get(topic), Some(TopicState::Missing(_)))
    }

    /// Breach evidence: the topic of stage `stage` of workflow `workflow` (indices into
    /// the topology) when it is known to be missing — "the stage's topic does not exist".
    pub fn missing_stage_topic(
        &self,
        topology: &Topology,
        workflow: usize,
        stage: usize,
    ) -> Option<String> {
        let stream = topology.workflows.get(workflow)?.stages.get(stage)?.stream;
        let topic = &topology.streams.get(stream)?.topic;
        self.is_missing(topic).then(|| topic.clone())
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let s = self.lock();
        HealthSnapshot {
            kafka_reachable: s.reachable(),
            missing_topics: s.missing(),
            fatal_error: s.fatal.clone(),
            auth_error: s.auth_error.clone(),
        }
    }

    /// From the consumer's error callback (`ClientContext::error`).
    pub fn on_client_error(&self, error: &KafkaError) {
        self.on_client_error_because(error, "");
    }

    /// [`Self::on_client_error`] with librdkafka's reason text (which says, for example,
    /// why the brokers refused the credentials).
    pub fn on_client_error_because(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        {
            let mut s = self.lock();
            match code {
                Some(RDKafkaErrorCode::AllBrokersDown) => s.down_epoch += 1,
                Some(RDKafkaErrorCode::Fatal) if s.fatal.is_none() => {
                    tracing::error!(error = %error, "the Kafka consumer hit a fatal error and stops consuming; if another process uses the same service.instance_id it has taken this one's place — give each instance its own id");
                    s.fatal = Some(error.to_string());
                }
                Some(RDKafkaErrorCode::Authentication) => {
                    let why = if reason.is_empty() {
                        error.to_string()
                    } else {
                        reason.to_string()
                    };
                    if s.auth_error.is_none() {
                        tracing::error!(error = %why, "Kafka refused synclag's credentials: check kafka.properties (security.protocol, sasl.mechanism, sasl.username) and the password variable; /readyz reports not ready");
                    }
                    s.auth_error = Some(why);
                }
                _ => {}
            }
        }
        self.log_transition();
    }

    /// From the consumer's statistics: is any connection to a broker up?
    pub fn on_stats(&self, statistics: &Statistics) {
        let up = brokers_up(
            statistics
                .brokers
                .values()
                .map(|b| (b.source.as_str(), b.state.as_str())),
        );
        self.lock().stats(up);
        self.log_transition();
    }

    fn probe_started(&self) -> u64 {
        self.lock().down_epoch
    }

    fn probe_done(&self, started_epoch: u64, ok: bool) {
        self.lock().probe_done(started_epoch, ok);
        self.log_transition();
    }

    fn set_topic(&self, topic: &str, state: TopicState) {
        let changed = self.lock().topic(topic, state.clone());
        metrics::gauge!(names::INPUT_TOPIC_MISSING, "topic" => topic.to_string()).set(
            if matches!(state, TopicState::Missing(_)) {
                1.0
            } else {
                0.0
            },
        );
        match (changed, &state) {
            (Some(_), TopicState::Missing(why)) => tracing::warn!(
                topic,
                reason = %why,
                "configured input topic is missing; its workflows get no records until it exists"
            ),
            (Some(Some(TopicState::Missing(_))), TopicState::Present) => {
                tracing::info!(topic, "input topic exists now");
            }
            _ => {}
        }
    }

    /// Logs and exports reachability when it changed.
    fn log_transition(&self) {
        let mut s = self.lock();
        let now = s.reachable();
        if s.logged_reachable == Some(now) {
            return;
        }
        // Before the first probe "not reachable" only means "not known yet".
        if s.probe_ok.is_none() {
            return;
        }
        let first = s.logged_reachable.is_none();
        s.logged_reachable = Some(now);
        drop(s);
        metrics::gauge!(names::KAFKA_REACHABLE).set(if now { 1.0 } else { 0.0 });
        match (now, first) {
            (true, true) => {}
            (true, false) => tracing::info!("Kafka is reachable again; /readyz may report ready"),
            (false, _) => tracing::warn!("Kafka is unreachable; /readyz reports not ready"),
        }
    }
}

/// `Some(true)` when a real broker connection is up, `Some(false)` when brokers are known
/// but none is up, `None` when the statistics list none yet. Logical entries (the group
/// coordinator alias) mirror a real broker and are skipped.
fn brokers_up<'a>(brokers: impl Iterator<Item = (&'a str, &'a str)>) -> Option<bool> {
    let mut any = false;
    for (source, state) in brokers {
        if source == "logical" || source == "internal" {
            continue;
        }
        any = true;
        if state == "UP" {
            return Some(true);
        }
    }
    any.then_some(false)
}

/// Whether a consumer error is one this module reports once per change (a missing
/// subscribed topic, broker connections down): the pipeline can log librdkafka's
/// repetitions of it at DEBUG instead of one WARN per retry.
pub fn is_reported_by_health(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// Context of synclag's side clients (the probe, the membership watch): their errors are
/// what they report, so librdkafka's own error callback only logs at DEBUG instead of
/// repeating every connection failure at ERROR.
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka side client error");
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Client context of synclag's helper clients that talk to the input cluster before the
/// consumer does (e.g. the durable state's admin client at start): their errors reach
/// `/readyz` like the consumer's (refused credentials, brokers down).
pub struct HealthContext(pub InputHealth);

impl rdkafka::consumer::ConsumerContext for HealthContext {}

/// While alive, a client of the input cluster that only listens: its errors (refused
/// credentials, brokers down) reach `/readyz` before the input consumer runs (e.g. while
/// the durable state is restored at start). Dropping it stops it.
pub struct ErrorWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ErrorWatch {
    pub fn start(topology: &Topology, health: InputHealth) -> ErrorWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cfg = crate::config::kafka::admin_config(topology);
        let flag = stop.clone();
        let started = std::thread::Builder::new()
            .name("kafka-error-watch".into())
            .spawn(move || {
                let client: BaseConsumer<HealthContext> = match cfg
                    .create_with_context(HealthContext(health))
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the cluster's errors at start");
                        return;
                    }
                };
                // Error events are served by poll; asking for metadata makes it connect.
                let _ = client.fetch_metadata(None, std::time::Duration::from_millis(100));
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.poll(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot watch the cluster's errors at start");
        }
        ErrorWatch { stop }
    }
}

impl Drop for ErrorWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl rdkafka::ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka side client error");
        self.0.on_client_error_because(&error, reason);
    }
}

/// Starts the metadata probe (see the module docs); it stops with `shutdown`.
pub fn spawn_probe(topology: &Topology, health: InputHealth, shutdown: CancellationToken) {
    let mut topics: Vec<String> = topology.streams.iter().map(|s| s.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let mut cfg = crate::config::kafka::admin_config(topology);
    // The probe must never create the topics it asks about (brokers with
    // auto.create.topics.enable would), and must notice a returning cluster quickly.
    cfg.set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.max.ms", "1000");
    let client: BaseConsumer<QuietContext> = match cfg.create_with_context(QuietContext) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the Kafka health probe; /readyz cannot tell whether Kafka is reachable");
            health.probe_done(0, false);
            return;
        }
    };
    let client = Arc::new(client);
    tokio::spawn(async move {
        loop {
            let epoch = health.probe_started();
            let (c, t) = (client.clone(), topics.clone());
            let result = tokio::task::spawn_blocking(move || probe_topics(&c, &t))
                .await
                .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            match result {
                Ok(states) => {
                    for (topic, state) in states {
                        health.set_topic(&topic, state);
                    }
                    health.probe_done(epoch, true);
                }
                Err(why) => {
                    tracing::debug!(error = %why, "Kafka metadata probe failed");
                    health.probe_done(epoch, false);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    });
}

/// One metadata request per topic (cheaper than the whole cluster's metadata on big
/// clusters). Err when the cluster does not answer.
fn probe_topics(
    client: &BaseConsumer<QuietContext>,
    topics: &[String],
) -> Result<Vec<(String, TopicState)>, String> {
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let md = client
            .fetch_metadata(Some(topic), PROBE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let state = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) => match t.error() {
                None if !t.partitions().is_empty() => TopicState::Present,
                None => TopicState::Missing("no partitions".into()),
                Some(e) => TopicState::Missing(RDKafkaErrorCode::from(e).to_string()),
            },
            None => TopicState::Missing("not in the broker's metadata".into()),
        };
        out.push((topic.clone(), state));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_the_first_probe_then_follows_it() {
        let mut s = State::default();
        assert!(!s.reachable());
        s.probe_done(0, true);
        assert!(s.reachable());
        s.probe_done(0, false);
        assert!(!s.reachable());
        s.probe_done(0, true);
        assert!(s.reachable());
    }

    #[test]
    fn with_statistics_only_the_consumer_reconnecting_ends_an_outage() {
        let mut s = State::default();
        s.stats(Some(true));
        s.probe_done(0, true);
        assert!(s.reachable());
        s.down_epoch += 1;
        // The probe's own client is back first: still not ready.
        s.probe_done(s.down_epoch, true);
        assert!(!s.reachable());
        s.stats(Some(false));
        assert!(!s.reachable());
        s.stats(Some(true));
        assert!(s.reachable());
    }

    #[test]
    fn all_brokers_down_wins_until_a_later_probe_succeeds() {
        let mut s = State::default();
        s.probe_done(0, true);
        // A probe that started before the outage signal cannot clear it.
        let before = s.down_epoch;
        s.down_epoch += 1;
        assert!(!s.reachable());
        s.probe_done(before, true);
        assert!(!s.reachable());
        // One that started after it can.
        let after = s.down_epoch;
        s.probe_done(after, true);
        assert!(s.reachable());
    }

    #[test]
    fn statistics_with_every_broker_down_mean_unreachable() {
        let mut s = State::default();
        s.probe_done(0, true);
        s.stats_up = brokers_up(
            [
                ("configured", "DOWN"),
                ("learned", "CONNECT"),
                ("logical", "UP"),
            ]
            .into_iter(),
        );
        assert_eq!(s.stats_up, Some(false));
        assert!(!s.reachable());
        s.stats_up = brokers_up([("configured", "INIT"), ("learned", "UP")].into_iter());
        assert!(s.reachable());
        // No brokers listed yet says nothing either way.
        assert_eq!(brokers_up([("logical", "UP")].into_iter()), None);
    }

    #[test]
    fn a_fatal_error_is_never_ready() {
        let h = InputHealth::default();
        h.probe_done(0, true);
        assert!(h.kafka_reachable());
        h.on_client_error(&KafkaError::Global(RDKafkaErrorCode::Fatal));
        assert!(!h.kafka_reachable());
        h.probe_done(h.probe_started(), true);
        assert!(!h.kafka_reachable());
        assert!(h.snapshot().fatal_error.is_some());
    }

    #[test]
    fn topics_go_missing_and_come_back() {
        let h = InputHealth::default();
        h.set_topic("orders", TopicState::Present);
        h.set_topic("outbox", TopicState::Missing("unknown topic".into()));
        h.set_topic("carriers", TopicState::Missing("unknown topic".into()));
        assert_eq!(h.missing_topics(), vec!["carriers", "outbox"]);
        assert!(h.is_missing("outbox"));
        assert!(!h.is_missing("orders"));
        assert!(!h.is_missing("never-configured"));
        h.set_topic("outbox", TopicState::Present);
        assert_eq!(h.missing_topics(), vec!["carriers"]);
        let mut s = State::default();
        assert_eq!(s.topic("a", TopicState::Present), Some(None));
        assert_eq!(s.topic("a", TopicState::Present), None);
    }

    #[test]
    fn a_breach_can_name_the_missing_topic_of_its_stage() {
        let yaml = r#"
kafka: { bootstrap_servers: "127.0.0.1:9092" }
streams:
  - { name: a, topic: orders, format: json, fields: { correlation_id: $.id, event_time: $.t } }
  - { name: b, topic: outbox, format: json, fields: { correlation_id: $.id, event_time: $.t } }
workflows:
  - name: w
    stages: [{ name: s1, stream: a }, { name: s2, stream: b }]
    sla: { warn: 1m, critical: 2m }
    window: 1h
"#;
        let t = match Topology::from_yaml_str("t.yaml", yaml, Vec::new()) {
            Ok(t) => t,
            Err(e) => panic!("{e:?}"),
        };
        let h = InputHealth::default();
        h.set_topic("orders", TopicState::Present);
        h.set_topic("outbox", TopicState::Missing("unknown topic".into()));
        assert_eq!(h.missing_stage_topic(&t, 0, 0), None);
        assert_eq!(h.missing_stage_topic(&t, 0, 1), Some("outbox".into()));
        assert_eq!(h.missing_stage_topic(&t, 0, 7), None);
        assert_eq!(h.missing_stage_topic(&t, 3, 0), None);
    }

    #[test]
    fn errors_reported_by_health_are_recognised() {
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert!(is_reported_by_health(&KafkaError::MessageConsumption(code)));
        }
        assert!(!is_reported_by_health(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::OffsetOutOfRange
        )));
    }
}
