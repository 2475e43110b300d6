//! The file as written: serde structs whose leaves are kept as text where a
//! value needs checking (durations, paths, time zones), so that validation can
//! report every problem at once instead of stopping at the first.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Keys accepted at the top level of `topology.yaml`.
pub const TOP_KEYS: &[&str] = &[
    "service",
    "kafka",
    "registry",
    "outputs",
    "masking",
    "store",
    "streams",
    "workflows",
    "causes",
    "routes",
    "backlog",
    "incidents",
    "api",
    "audit",
    "retention",
    "batches",
];

/// `service:` — how this instance runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Consumer group id of synclag itself.
    pub group_id: Option<String>,
    /// Address of the HTTP server (metrics and API).
    pub http_listen: Option<String>,
    /// Longest time a graceful shutdown may take.
    pub shutdown_timeout: Option<String>,
    /// How often to publish lag summaries.
    pub lag_interval: Option<String>,
    /// After this long with no record, an input partition stops holding the watermark back.
    pub idle_partition: Option<String>,
    /// Static group membership id of this instance (`group.instance.id`); default
    /// `<group_id>-<hostname>`.
    pub instance_id: Option<String>,
    /// Tolerance of payload times against the record's Kafka time.
    pub event_time: Option<RawEventTime>,
}
pub const SERVICE_KEYS: &[&str] = &[
    "event_time",
    "group_id",
    "instance_id",
    "http_listen",
    "shutdown_timeout",
    "lag_interval",
    "idle_partition",
];

/// `service.event_time:` — when a payload time is not believed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventTime {
    /// Largest accepted lead over the record's Kafka time (clock skew).
    pub max_ahead: Option<String>,
    /// Largest accepted lag behind the record's Kafka time (genuine delays).
    pub max_behind: Option<String>,
    /// `use_kafka_time` or `dead_letter`.
    pub on_violation: Option<String>,
}
pub const EVENT_TIME_KEYS: &[&str] = &["max_ahead", "max_behind", "on_violation"];

/// `kafka:` — the cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `host:port` list.
    pub bootstrap_servers: Option<String>,
    /// librdkafka properties passed through untouched (SASL, TLS, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_norway::Value>,
}
pub const KAFKA_KEYS: &[&str] = &["bootstrap_servers", "properties"];

/// `registry:` — a Confluent-compatible schema registry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub url: Option<String>,
    pub username: Option<String>,
    /// Name of an environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    pub timeout: Option<String>,
}
pub const REGISTRY_KEYS: &[&str] = &["url", "username", "password_env", "timeout"];

/// `outputs:` — topic names of what synclag writes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutputs {
    pub breaches_topic: Option<String>,
    pub lag_topic: Option<String>,
    pub backlog_topic: Option<String>,
    pub dead_letter_topic: Option<String>,
    pub incidents_topic: Option<String>,
    /// Batch run events (`batches:` workflows).
    pub batches_topic: Option<String>,
}
pub const OUTPUTS_KEYS: &[&str] = &[
    "breaches_topic",
    "lag_topic",
    "backlog_topic",
    "dead_letter_topic",
    "incidents_topic",
    "batches_topic",
];

/// `masking:` — keyed hashing of sensitive values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasking {
    /// Environment variable holding the HMAC key.
    pub key_env: Option<String>,
    /// Mask correlation ids in events, logs and the API.
    pub correlation_ids: Option<bool>,
    /// Dimension names whose values are masked.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Dead letters: `raw` (default; kept as read, so they can be redriven) or `mask`.
    pub dead_letters: Option<String>,
}
pub const MASKING_KEYS: &[&str] = &["key_env", "correlation_ids", "dimensions", "dead_letters"];

/// `api:` — who may use the HTTP API, and how it is served.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// File of `<name> <role> sha256:<hex>` lines (token hashes, never tokens).
    pub tokens_file: Option<String>,
    /// Environment variable holding `<name>:<role>:<token>` entries, comma-separated.
    pub tokens_env: Option<String>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// Serve a non-loopback address without authentication (logged loudly).
    pub insecure_no_auth: Option<bool>,
}
pub const API_KEYS: &[&str] = &[
    "tokens_file",
    "tokens_env",
    "tls_cert",
    "tls_key",
    "insecure_no_auth",
];

/// `audit:` — where the audit trail goes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Audit topic (default `synclag.audit`).
    pub topic: Option<String>,
    /// Audit records waiting for the producer at most; beyond it they are counted as dropped.
    pub queue: Option<u64>,
}
pub const AUDIT_KEYS: &[&str] = &["topic", "queue"];

/// `retention:` — settings of the output topics synclag creates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Create missing output topics with these settings at start-up (default true).
    pub create_topics: Option<bool>,
    pub breaches: Option<RawTopicPolicy>,
    pub incidents: Option<RawTopicPolicy>,
    pub lag: Option<RawTopicPolicy>,
    pub backlog: Option<RawTopicPolicy>,
    pub dead_letters: Option<RawTopicPolicy>,
    pub audit: Option<RawTopicPolicy>,
}
pub const RETENTION_KEYS: &[&str] = &[
    "create_topics",
    "breaches",
    "incidents",
    "lag",
    "backlog",
    "dead_letters",
    "audit",
];

/// One output topic's `retention.ms` and `cleanup.policy`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopicPolicy {
    /// How long records are kept (`30d`).
    pub retention: Option<String>,
    /// `delete`, `compact` or `compact,delete`.
    pub cleanup: Option<String>,
}
pub const TOPIC_POLICY_KEYS: &[&str] = &["retention", "cleanup"];

/// `store:` — bounds of the correlation store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub max_pending: Option<u64>,
    pub dimension_value_cap: Option<u64>,
    pub oldest_n: Option<u64>,
    pub recent_finished: Option<u64>,
    /// Mirror pending state to a compacted changelog topic and restore it at start.
    pub durable: Option<bool>,
    /// The changelog topic; default `<group_id>.state`.
    pub changelog_topic: Option<String>,
    /// Partitions of the changelog topic when synclag creates it.
    pub changelog_partitions: Option<u64>,
    /// Replication factor of the changelog topic when synclag creates it (default: the
    /// broker's `default.replication.factor`).
    pub changelog_replication: Option<u64>,
    /// Outputs, state and input offsets committed together in Kafka transactions
    /// (default: whenever the state is durable).
    pub exactly_once: Option<bool>,
    /// Route stage events through `<group_id>.stages` by correlation id.
    pub repartition: Option<bool>,
}
pub const STORE_KEYS: &[&str] = &[
    "max_pending",
    "dimension_value_cap",
    "oldest_n",
    "recent_finished",
    "durable",
    "changelog_topic",
    "changelog_partitions",
    "changelog_replication",
    "exactly_once",
    "repartition",
];

/// One entry of `streams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: String,
    pub topic: String,
    pub format: String,
    /// `stages` (default) or `signals` (errors, throttling: attached to a correlation as evidence).
    pub role: Option<String>,
    /// True when the record's own time is the ERP write time (default for Debezium formats).
    pub erp_time: Option<bool>,
    pub fields: RawFields,
}
pub const STREAM_KEYS: &[&str] = &["name", "topic", "format", "role", "erp_time", "fields"];

/// `fields:` of a stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    pub correlation_id: String,
    pub event_time: Option<String>,
    pub event_type: Option<String>,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}
pub const FIELDS_KEYS: &[&str] = &["correlation_id", "event_time", "event_type", "dimensions"];

/// One entry of `workflows:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub name: String,
    pub description: Option<String>,
    pub stages: Vec<RawStage>,
    pub sla: RawSla,
    pub window: String,
    #[serde(default)]
    pub dimensions: Vec<String>,
    pub route: Option<String>,
}
pub const WORKFLOW_KEYS: &[&str] = &[
    "name",
    "description",
    "stages",
    "sla",
    "window",
    "dimensions",
    "route",
];

/// One stage of a workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub name: String,
    pub stream: String,
    /// Only records whose `event_type` equals this value close the stage.
    pub event_type: Option<String>,
}
pub const STAGE_KEYS: &[&str] = &["name", "stream", "event_type"];

/// `sla:` of a workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSla {
    pub warn: String,
    pub critical: String,
    #[serde(default)]
    pub business_hours: Vec<RawBusinessHours>,
}
pub const SLA_KEYS: &[&str] = &["warn", "critical", "business_hours"];

/// A tighter (or looser) SLA during local business hours.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusinessHours {
    pub timezone: String,
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
    pub warn: String,
    pub critical: String,
}
pub const BUSINESS_HOURS_KEYS: &[&str] = &["timezone", "days", "from", "to", "warn", "critical"];

/// One entry of `causes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCause {
    pub name: String,
    pub route: String,
    pub description: Option<String>,
    /// A record on this signal stream for the same correlation.
    pub signal_stream: Option<String>,
    /// ... optionally only with this event type.
    pub signal_type: Option<String>,
    /// The lag segment that dominated.
    pub segment: Option<String>,
    /// A watched consumer group that was backlogged.
    pub group: Option<String>,
    /// With `signal_stream`: also match a breach without its own signal when breached
    /// correlations of one of its dimension values carried at least this many such
    /// signals within `slice_within`.
    pub slice_min_signals: Option<u64>,
    pub slice_within: Option<String>,
}
pub const CAUSE_KEYS: &[&str] = &[
    "name",
    "route",
    "description",
    "signal_stream",
    "signal_type",
    "segment",
    "group",
    "slice_min_signals",
    "slice_within",
];

/// `incidents:` — how breaches are grouped into incidents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncidents {
    pub quiet: Option<String>,
    pub update_every: Option<String>,
    pub max_open: Option<u64>,
    pub max_events_per_minute: Option<u64>,
    pub sample: Option<u64>,
    pub slice_window: Option<String>,
    pub degraded_min_breaches: Option<u64>,
    pub degraded_factor: Option<f64>,
}
pub const INCIDENTS_KEYS: &[&str] = &[
    "quiet",
    "update_every",
    "max_open",
    "max_events_per_minute",
    "sample",
    "slice_window",
    "degraded_min_breaches",
    "degraded_factor",
];

/// One entry of `routes:` (a map name → route).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub team: String,
    pub description: Option<String>,
}
pub const ROUTE_KEYS: &[&str] = &["team", "description"];

/// `backlog:` — consumer groups whose backlog is watched.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBacklog {
    pub interval: Option<String>,
    /// Number of observations in the status window.
    pub window: Option<u64>,
    #[serde(default)]
    pub groups: Vec<RawGroup>,
    /// Where groups without a commit on a partition start: first match wins.
    #[serde(default)]
    pub reset: Vec<RawReset>,
}
pub const BACKLOG_KEYS: &[&str] = &["interval", "window", "groups", "reset"];

/// A reset policy for the groups a `name` or `pattern` selects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReset {
    pub name: Option<String>,
    pub pattern: Option<String>,
    pub policy: String,
}
pub const RESET_KEYS: &[&str] = &["name", "pattern", "policy"];

/// A watched group: an exact `name` or a `pattern` (regex).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Option<String>,
    pub pattern: Option<String>,
    pub description: Option<String>,
}
pub const GROUP_KEYS: &[&str] = &["name", "pattern", "description"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// The key lists used for typo reports must match what serde accepts.
    fn accepted_keys<T: DeserializeOwned>() -> Vec<String> {
        let err = serde_norway::from_str::<T>("__not_a_key: 1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let list = err
            .split("expected ")
            .nth(1)
            .unwrap_or("")
            .trim_start_matches("one of ")
            .replace(" or ", ",");
        list.split(',')
            .map(|k| k.trim().trim_matches('`').to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    fn same(mut a: Vec<String>, b: &[&str]) {
        let mut b: Vec<String> = b.iter().map(|s| s.to_string()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn key_lists_match_structs() {
        same(accepted_keys::<RawService>(), SERVICE_KEYS);
        same(accepted_keys::<RawEventTime>(), EVENT_TIME_KEYS);
        same(accepted_keys::<RawKafka>(), KAFKA_KEYS);
        same(accepted_keys::<RawRegistry>(), REGISTRY_KEYS);
        same(accepted_keys::<RawOutputs>(), OUTPUTS_KEYS);
        same(accepted_keys::<RawMasking>(), MASKING_KEYS);
        same(accepted_keys::<RawStore>(), STORE_KEYS);
        same(accepted_keys::<RawStream>(), STREAM_KEYS);
        same(accepted_keys::<RawFields>(), FIELDS_KEYS);
        same(accepted_keys::<RawWorkflow>(), WORKFLOW_KEYS);
        same(accepted_keys::<RawStage>(), STAGE_KEYS);
        same(accepted_keys::<RawSla>(), SLA_KEYS);
        same(accepted_keys::<RawBusinessHours>(), BUSINESS_HOURS_KEYS);
        same(accepted_keys::<RawCause>(), CAUSE_KEYS);
        same(accepted_keys::<RawRoute>(), ROUTE_KEYS);
        same(accepted_keys::<RawBacklog>(), BACKLOG_KEYS);
        same(accepted_keys::<RawGroup>(), GROUP_KEYS);
        same(accepted_keys::<RawIncidents>(), INCIDENTS_KEYS);
        same(accepted_keys::<RawReset>(), RESET_KEYS);
        same(accepted_keys::<RawApi>(), API_KEYS);
        same(accepted_keys::<RawAudit>(), AUDIT_KEYS);
        same(accepted_keys::<RawRetention>(), RETENTION_KEYS);
        same(accepted_keys::<RawTopicPolicy>(), TOPIC_POLICY_KEYS);
    }
}
