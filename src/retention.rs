//! Output topics with their retention: at start-up, synclag creates the output topics
//! that do not exist yet (breaches, incidents, lag, backlog, dead letters and their
//! redrive ledger, audit) with `retention.ms` and `cleanup.policy` from `retention:`, and
//! the broker's default partition count and replication factor. Topics that exist are
//! left as they are; a retention that differs from the configured one is logged once,
//! so an operator can align it (synclag does not alter topics it did not create).
//!
//! Failing to create a topic (no permission, a broker that refuses) is logged at WARN and
//! does not stop the service: writes then go to whatever the broker does.

use crate::config::{TopicPolicy, Topology};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Every topic synclag writes, with its policy.
pub fn output_topics(topology: &Topology) -> Vec<(String, TopicPolicy)> {
    let o = &topology.outputs;
    let r = &topology.retention;
    let ledger = TopicPolicy {
        retention: r.dead_letters.retention,
        cleanup: "compact".into(),
    };
    vec![
        (o.breaches_topic.clone(), r.breaches.clone()),
        (o.incidents_topic.clone(), r.incidents.clone()),
        (o.lag_topic.clone(), r.lag.clone()),
        (o.backlog_topic.clone(), r.backlog.clone()),
        (o.dead_letter_topic.clone(), r.dead_letters.clone()),
        (crate::dlq::ledger_topic(&o.dead_letter_topic), ledger),
        (topology.audit.topic.clone(), r.audit.clone()),
    ]
}

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Exists,
    Failed(String),
}

/// Creates the missing output topics (see the module docs). Topics named twice (the
/// same topic for two outputs) are created once, with the first policy.
pub async fn ensure_output_topics(topology: &Topology) -> Vec<(String, Ensured)> {
    if !topology.retention.create_topics {
        return Vec::new();
    }
    let admin: AdminClient<DefaultClientContext> = match crate::config::kafka::admin_config(
        topology,
    )
    .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the admin client; output topics not created");
            return Vec::new();
        }
    };
    let mut seen = std::collections::HashSet::new();
    let topics: Vec<(String, TopicPolicy)> = output_topics(topology)
        .into_iter()
        .filter(|(t, _)| seen.insert(t.clone()))
        .collect();
    let retention: Vec<String> = topics
        .iter()
        .map(|(_, p)| p.retention.as_millis().to_string())
        .collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retention)
        .map(|((t, p), ms)| {
            NewTopic::new(t, -1, TopicReplication::Fixed(-1))
                .set("retention.ms", ms)
                .set("cleanup.policy", &p.cleanup)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut out = Vec::new();
    match admin.create_topics(&new, &opts).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(t) => {
                        tracing::info!(topic = %t, "output topic created");
                        out.push((t, Ensured::Created));
                    }
                    Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        out.push((t, Ensured::Exists))
                    }
                    Err((t, code)) => {
                        tracing::warn!(topic = %t, error = %code, "cannot create the output topic");
                        out.push((t, Ensured::Failed(code.to_string())));
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the output topics");
            return out;
        }
    }
    // Existing topics: say when their retention differs from the configured one.
    let existing: Vec<&(String, TopicPolicy)> = topics
        .iter()
        .filter(|(t, _)| out.iter().any(|(o, e)| o == t && *e == Ensured::Exists))
        .collect();
    let specs: Vec<ResourceSpecifier<'_>> = existing
        .iter()
        .map(|(t, _)| ResourceSpecifier::Topic(t))
        .collect();
    if let Ok(results) = admin.describe_configs(&specs, &opts).await {
        for (r, (topic, policy)) in results.into_iter().zip(existing) {
            let Ok(resource) = r else { continue };
            let value = |name: &str| {
                resource
                    .get(name)
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default()
            };
            let want = policy.retention.as_millis().to_string();
            if value("retention.ms") != want || value("cleanup.policy") != policy.cleanup {
                tracing::warn!(
                    topic = %topic,
                    retention_ms = %value("retention.ms"),
                    cleanup_policy = %value("cleanup.policy"),
                    configured_retention_ms = %want,
                    configured_cleanup_policy = %policy.cleanup,
                    "output topic exists with other retention settings; left as it is"
                );
            }
        }
    }
    out
}
