//! `topology.yaml`: the model of what synclag watches and how.
//!
//! Loading goes in layers — built-in defaults, then the file, then
//! `SYNCLAG__SECTION__KEY` environment overrides — and validation collects
//! *every* problem (path, offending value, what would be valid) before failing.
//!
//! - [`raw`]        — the file as written (serde, `deny_unknown_fields`).
//! - [`validate`]   — raw → [`Topology`], all problems at once.
//! - [`duration`]   — human durations (`90s`, `5m`, `2h`).
//! - [`field_path`] — where a value lives in a record (`$.a.b`, `header:x`, `kafka:key`).
//! - [`env`]        — environment overrides.
//! - [`batch`]      — batch workflows (`batches:`): schedule, markers, checks.
//! - [`kafka`]      — every librdkafka property synclag sets, per client, and how the
//!   user's `kafka.properties` combine with them.

pub mod batch;
pub mod duration;
pub mod env;
pub mod field_path;
pub mod instance;
pub mod kafka;
pub mod raw;
pub mod validate;

use chrono::{NaiveTime, Weekday};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use field_path::FieldPath;

/// A validated topology: every reference resolved, every value parsed.
#[derive(Debug, Clone)]
pub struct Topology {
    pub service: Service,
    pub kafka: Kafka,
    pub registry: Option<Registry>,
    pub outputs: Outputs,
    pub masking: Masking,
    pub store: Store,
    pub streams: Vec<Stream>,
    pub workflows: Vec<Workflow>,
    pub causes: Vec<Cause>,
    pub routes: BTreeMap<String, Route>,
    pub backlog: Backlog,
    pub incidents: Incidents,
    pub api: Api,
    pub audit: Audit,
    pub retention: Retention,
    /// Scheduled batch workflows (`batches:`).
    pub batches: Vec<batch::BatchWorkflow>,
}

/// How breaches are grouped into incidents (see `incidents`).
#[derive(Debug, Clone)]
pub struct Incidents {
    /// An incident resolves after this long without a breach, once completions flow again.
    pub quiet: Duration,
    /// An open incident is re-announced (`updated`) at most this often, unless its
    /// severity or slice changes.
    pub update_every: Duration,
    /// Open incidents at most; breaches that would open more are counted, not grouped.
    pub max_open: usize,
    /// Incident events per minute at most; `updated` events beyond it are deferred.
    pub max_events_per_minute: usize,
    /// Correlation ids carried as a sample by each incident.
    pub sample: usize,
    /// Span of the per-dimension-value breach statistics (degraded slices, signal rates).
    pub slice_window: Duration,
    /// Breaches a dimension value needs in `slice_window` before it can count as degraded.
    pub degraded_min_breaches: usize,
    /// How many times its peers' breach rate a degraded value has (it stops being
    /// degraded below half of this: hysteresis).
    pub degraded_factor: f64,
}

impl Default for Incidents {
    fn default() -> Incidents {
        Incidents {
            quiet: Duration::from_secs(300),
            update_every: Duration::from_secs(60),
            max_open: 500,
            max_events_per_minute: 120,
            sample: 10,
            slice_window: Duration::from_secs(300),
            degraded_min_breaches: 3,
            degraded_factor: 4.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub group_id: String,
    pub http_listen: SocketAddr,
    pub shutdown_timeout: Duration,
    pub lag_interval: Duration,
    /// The stall budget: an input partition that neither moves nor confirms its end for
    /// this long stops holding the clock back (see `correlate::clock`).
    pub idle_partition: Duration,
    /// `group.instance.id` of the input consumer (static membership).
    pub instance_id: String,
    /// What an event time far from its record's Kafka time is taken for.
    pub event_time: EventTimePolicy,
}

/// How far a record's payload time (source event time, or ERP write time on `erp_time`
/// streams) may be from its Kafka time before synclag stops trusting it.
///
/// A payload time years away is a bug upstream (a unit or sign error, a default value,
/// a wrong time zone), not a delay: believed, a far-future time would stay pending
/// forever and hold the partition's committed offset back; a far-past time would raise
/// a breach at once. Times out of tolerance are counted per topic and either replaced by
/// the Kafka time or dead-lettered as `bad_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimePolicy {
    /// Largest accepted lead of the payload time over the Kafka time: clock skew.
    pub max_ahead: Duration,
    /// Largest accepted lag of the payload time behind the Kafka time: genuine partner,
    /// batch and CDC delays, which can be days.
    pub max_behind: Duration,
    pub on_violation: OnViolation,
}

impl EventTimePolicy {
    /// 5 minutes ahead covers the skew between hosts that keep their clocks roughly
    /// right; a lead of hours is a time-zone or unit error. 30 days behind lets through
    /// partner backfills, month-end batches and connectors stopped over a long weekend,
    /// and is longer than any sensible workflow window; anything older is almost surely
    /// a wrong value (epoch 0, negative epochs, a placeholder date).
    pub const DEFAULT: EventTimePolicy = EventTimePolicy {
        max_ahead: Duration::from_secs(5 * 60),
        max_behind: Duration::from_secs(30 * 86_400),
        on_violation: OnViolation::UseKafkaTime,
    };
}

impl Default for EventTimePolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What happens to a record whose event time is out of tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnViolation {
    /// The record counts at its Kafka time. The default: the stage still arrives, so a
    /// bad clock upstream does not turn into `never_arrived` alarms.
    UseKafkaTime,
    /// The record goes to the dead-letter topic with reason `bad_timestamp` and never
    /// reaches the engine.
    DeadLetter,
}

impl OnViolation {
    pub const NAMES: &'static [&'static str] = &["use_kafka_time", "dead_letter"];

    pub fn parse(s: &str) -> Option<OnViolation> {
        match s {
            "use_kafka_time" => Some(OnViolation::UseKafkaTime),
            "dead_letter" => Some(OnViolation::DeadLetter),
            _ => None,
        }
    }

    /// Also the `action` label of `synclag_event_time_violations_total`.
    pub fn name(self) -> &'static str {
        match self {
            OnViolation::UseKafkaTime => "use_kafka_time",
            OnViolation::DeadLetter => "dead_letter",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Kafka {
    pub bootstrap_servers: String,
    /// librdkafka properties; they win over synclag's defaults (see [`kafka`]).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub url: String,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Outputs {
    pub breaches_topic: String,
    pub lag_topic: String,
    pub backlog_topic: String,
    pub dead_letter_topic: String,
    pub incidents_topic: String,
    /// Batch run events (see `batch`).
    pub batches_topic: String,
}

impl Outputs {
    /// Every topic synclag writes to.
    pub fn topics(&self) -> [&str; 6] {
        [
            &self.breaches_topic,
            &self.lag_topic,
            &self.backlog_topic,
            &self.dead_letter_topic,
            &self.incidents_topic,
            &self.batches_topic,
        ]
    }
}

#[derive(Debug, Clone)]
pub struct Masking {
    pub key_env: Option<String>,
    pub correlation_ids: bool,
    pub dimensions: Vec<String>,
    /// What dead letters carry (see `dlq`).
    pub dead_letters: DeadLetterMasking,
}

/// What a dead letter keeps of its input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterMasking {
    /// The record as read: it can be redriven once the cause is fixed. The dead-letter
    /// topic must then be access-controlled like the input topics.
    #[default]
    Raw,
    /// Correlation ids and masked dimensions replaced by their masked values at the
    /// configured paths; a value that cannot be parsed is withheld. Not redrivable.
    Mask,
}

impl DeadLetterMasking {
    pub const NAMES: &'static [&'static str] = &["raw", "mask"];
}

/// `api:` — authentication and transport of the HTTP API (see `auth`).
#[derive(Debug, Clone, Default)]
pub struct Api {
    pub tokens_file: Option<std::path::PathBuf>,
    pub tokens_env: Option<String>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Serve a non-loopback address without authentication (also `run --insecure-no-auth`).
    pub insecure_no_auth: bool,
}

/// `audit:` — the audit trail (see `audit`).
#[derive(Debug, Clone)]
pub struct Audit {
    pub topic: String,
    pub queue: usize,
}

impl Default for Audit {
    fn default() -> Audit {
        Audit {
            topic: "synclag.audit".into(),
            queue: 10_000,
        }
    }
}

/// `retention:` — settings of the output topics synclag creates (see `retention`).
#[derive(Debug, Clone)]
pub struct Retention {
    pub create_topics: bool,
    pub breaches: TopicPolicy,
    pub incidents: TopicPolicy,
    pub lag: TopicPolicy,
    pub backlog: TopicPolicy,
    pub dead_letters: TopicPolicy,
    pub audit: TopicPolicy,
}

/// `retention.ms` and `cleanup.policy` of one output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    pub retention: Duration,
    pub cleanup: String,
}

impl TopicPolicy {
    pub const CLEANUP: &'static [&'static str] = &["delete", "compact", "compact,delete"];

    fn days(d: u64) -> TopicPolicy {
        TopicPolicy {
            retention: Duration::from_secs(d * 86_400),
            cleanup: "delete".into(),
        }
    }
}

impl Default for Retention {
    /// Breaches and incidents are the record of what went wrong: a month. Lag and backlog
    /// summaries are dashboards' raw material, superseded every minute: three days. Dead
    /// letters wait for their cause to be fixed: two weeks. The audit trail outlives them
    /// all: 400 days (a year plus a quarter for the yearly review).
    fn default() -> Retention {
        Retention {
            create_topics: true,
            breaches: TopicPolicy::days(30),
            incidents: TopicPolicy::days(30),
            lag: TopicPolicy::days(3),
            backlog: TopicPolicy::days(3),
            dead_letters: TopicPolicy::days(14),
            audit: TopicPolicy::days(400),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub max_pending: usize,
    pub dimension_value_cap: usize,
    pub oldest_n: usize,
    /// Recently finished correlations remembered, so a stage read after its correlation
    /// ended is recognised (late arrival, or a stage after completion) instead of starting
    /// a new correlation.
    pub recent_finished: usize,
    /// Pending state is mirrored to a compacted changelog topic and restored from it at
    /// start (see `service::state`), instead of being rebuilt by re-reading input.
    pub durable: bool,
    /// The changelog topic; `None`: `<group_id>.state`.
    pub changelog_topic: Option<String>,
    /// Partitions of the changelog topic when synclag creates it.
    pub changelog_partitions: i32,
    /// Replication factor when synclag creates it; `None`: the broker's default.
    pub changelog_replication: Option<i32>,
    /// Outputs, changelog records and input offsets are written in Kafka transactions
    /// (see `emit::emitter`): a `read_committed` reader sees each output once.
    pub exactly_once: bool,
    /// Stage events go through the internal stages topic, keyed by correlation id (see
    /// `route`), instead of straight from the reader to the engine.
    pub repartition: bool,
}

impl Topology {
    /// The changelog topic of the durable state.
    pub fn changelog_topic(&self) -> String {
        self.store
            .changelog_topic
            .clone()
            .unwrap_or_else(|| format!("{}.state", self.service.group_id))
    }

    /// The internal topic stage events are repartitioned through by correlation id (see
    /// `route`); it has the changelog's partition count, so a key's stages and state share
    /// a partition number.
    pub fn stages_topic(&self) -> String {
        format!("{}.stages", self.service.group_id)
    }
}

/// How a stream's records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain JSON value.
    Json,
    /// Avro in the Confluent wire format (magic byte, schema id), schemas from the registry.
    Avro,
    /// Debezium change event: `before`/`after`/`source`/`ts_ms`, JSON.
    DebeziumCdc,
    /// Debezium Outbox Event Router output: payload with `id`/`type` headers.
    DebeziumOutbox,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["json", "avro", "debezium_cdc", "debezium_outbox"];

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "avro" => Some(Format::Avro),
            "debezium_cdc" => Some(Format::DebeziumCdc),
            "debezium_outbox" => Some(Format::DebeziumOutbox),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::DebeziumCdc => "debezium_cdc",
            Format::DebeziumOutbox => "debezium_outbox",
        }
    }
}

/// What a stream's records mean to synclag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Records are workflow stages.
    Stages,
    /// Records are evidence (errors, throttling) attached to a correlation.
    Signals,
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub topic: String,
    pub format: Format,
    pub role: Role,
    /// The record's own time is when the ERP wrote it (outbox / CDC).
    pub erp_time: bool,
    pub correlation_id: FieldPath,
    pub event_time: Option<FieldPath>,
    pub event_type: Option<FieldPath>,
    pub dimensions: Vec<(String, FieldPath)>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// Index into [`Topology::streams`].
    pub stream: usize,
    pub event_type: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BusinessHours {
    pub timezone: chrono_tz::Tz,
    pub days: Vec<Weekday>,
    pub from: NaiveTime,
    pub to: NaiveTime,
    pub warn: Duration,
    pub critical: Duration,
}

#[derive(Debug, Clone)]
pub struct Sla {
    pub warn: Duration,
    pub critical: Duration,
    pub business_hours: Vec<BusinessHours>,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub stages: Vec<Stage>,
    pub sla: Sla,
    pub window: Duration,
    pub dimensions: Vec<String>,
    /// Default route when no cause matches.
    pub route: Option<String>,
}

/// Lag segments of DESIGN §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LagSegment {
    PartnerIngestion,
    MiddlewareErp,
    OutboxCdc,
}

impl LagSegment {
    pub const NAMES: &'static [&'static str] =
        &["partner_ingestion", "middleware_erp", "outbox_cdc"];

    pub fn parse(s: &str) -> Option<LagSegment> {
        match s {
            "partner_ingestion" => Some(LagSegment::PartnerIngestion),
            "middleware_erp" => Some(LagSegment::MiddlewareErp),
            "outbox_cdc" => Some(LagSegment::OutboxCdc),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LagSegment::PartnerIngestion => "partner_ingestion",
            LagSegment::MiddlewareErp => "middleware_erp",
            LagSegment::OutboxCdc => "outbox_cdc",
        }
    }
}

/// What makes a cause probable for a breach.
#[derive(Debug, Clone)]
pub enum CauseMatch {
    /// A record on this signals stream (optionally of this type) for the same correlation.
    Signal {
        stream: usize,
        event_type: Option<String>,
        /// Also match when a dimension value of the breach had this many such signals on
        /// breached correlations within the span (ms): a connector failing repeatedly.
        slice_rate: Option<(u32, i64)>,
    },
    /// The named lag segment dominated.
    Segment(LagSegment),
    /// This watched consumer group was backlogged.
    Group(String),
}

/// The built-in cause of an event raised while an input it may depend on is stalled or
/// missing (see `correlate::clock`); it comes before the configured causes.
pub const INPUT_STALLED: &str = "input_stalled";

#[derive(Debug, Clone)]
pub struct Cause {
    pub name: String,
    pub description: Option<String>,
    pub matcher: CauseMatch,
    pub route: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub team: String,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub enum GroupSelector {
    Name(String),
    Pattern(regex::Regex),
}

impl GroupSelector {
    pub fn matches(&self, group: &str) -> bool {
        match self {
            GroupSelector::Name(n) => n == group,
            GroupSelector::Pattern(re) => re.is_match(group),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backlog {
    pub interval: Duration,
    pub window: usize,
    pub groups: Vec<GroupSelector>,
    /// `backlog.reset`: where groups without a commit start, first match wins
    /// (`latest` for groups that match none).
    pub reset: Vec<(GroupSelector, ResetPolicy)>,
}

/// Where a group without a commit on a partition would start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResetPolicy {
    /// The log end: such a partition has no backlog (lag 0).
    #[default]
    Latest,
    /// The log start: the whole retained log is backlog.
    Earliest,
}

impl ResetPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetPolicy::Latest => "latest",
            ResetPolicy::Earliest => "earliest",
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, e.g. `workflows[1].sla.warn`.
    pub path: String,
    /// What is wrong, with the offending value and what would be valid.
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Topology {
    /// Reads, overrides from the process environment, and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::from_yaml_str(&file, &text, std::env::vars())
    }

    /// Parses and validates YAML text with the given environment overrides.
    pub fn from_yaml_str(
        file: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Topology, ConfigErrors> {
        let fail = |problems| ConfigErrors {
            file: file.to_string(),
            problems,
        };
        let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
            fail(vec![Problem {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            }])
        })?;
        let mut problems = env::apply_overrides(&mut value, env);
        match validate::validate(&value) {
            Ok(t) if problems.is_empty() => Ok(t),
            Ok(_) => Err(fail(problems)),
            Err(mut more) => {
                problems.append(&mut more);
                Err(fail(problems))
            }
        }
    }

    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }

    pub fn batch(&self, name: &str) -> Option<&batch::BatchWorkflow> {
        self.batches.iter().find(|b| b.name == name)
    }

    /// The internal compacted topic where recent batch runs are kept across restarts.
    pub fn batch_state_topic(&self) -> String {
        format!("{}.batch-runs", self.service.group_id)
    }

    pub fn workflow(&self, name: &str) -> Option<&Workflow> {
        self.workflows.iter().find(|w| w.name == name)
    }

    /// A one-screen summary for `synclag validate`.
    pub fn summary(&self) -> String {
        use duration::format_duration as d;
        let mut out = String::new();
        out.push_str(&format!(
            "kafka: {}  group: {}  registry: {}\n",
            self.kafka.bootstrap_servers,
            self.service.group_id,
            self.registry
                .as_ref()
                .map_or("none (JSON outputs)", |r| r.url.as_str())
        ));
        let et = &self.service.event_time;
        out.push_str(&format!(
            "event times: at most {} ahead of / {} behind the Kafka time, else {}\n",
            d(et.max_ahead),
            d(et.max_behind),
            et.on_violation.name()
        ));
        out.push_str(&format!("streams ({}):\n", self.streams.len()));
        for s in &self.streams {
            out.push_str(&format!(
                "  {:<22} {:<30} {:<16} {}\n",
                s.name,
                s.topic,
                s.format.name(),
                if s.role == Role::Signals {
                    "signals"
                } else {
                    "stages"
                }
            ));
        }
        out.push_str(&format!("workflows ({}):\n", self.workflows.len()));
        for w in &self.workflows {
            let chain: Vec<&str> = w.stages.iter().map(|s| s.name.as_str()).collect();
            let bh = if w.sla.business_hours.is_empty() {
                String::new()
            } else {
                format!(
                    "  (+{} business-hours override)",
                    w.sla.business_hours.len()
                )
            };
            out.push_str(&format!(
                "  {:<22} warn {:<6} critical {:<6} window {:<6}{bh}\n    {}\n",
                w.name,
                d(w.sla.warn),
                d(w.sla.critical),
                d(w.window),
                chain.join(" -> ")
            ));
        }
        if !self.batches.is_empty() {
            out.push_str(&format!("batch workflows ({}):\n", self.batches.len()));
            for b in &self.batches {
                out.push_str(&format!(
                    "  {:<22} cron `{}` {}  start by {}/{}  complete by {}/{}\n",
                    b.name,
                    b.schedule.cron_text,
                    b.schedule.timezone.name(),
                    d(b.start.warn),
                    d(b.start.critical),
                    d(b.completion.warn),
                    d(b.completion.critical)
                ));
            }
        }
        out.push_str(&format!("causes ({}): ", self.causes.len()));
        let causes: Vec<String> = self
            .causes
            .iter()
            .map(|c| format!("{} -> {}", c.name, c.route))
            .collect();
        out.push_str(&causes.join(", "));
        out.push('\n');
        let groups: Vec<String> = self
            .backlog
            .groups
            .iter()
            .map(|g| match g {
                GroupSelector::Name(n) => n.clone(),
                GroupSelector::Pattern(p) => format!("/{}/", p.as_str()),
            })
            .collect();
        out.push_str(&format!(
            "watched groups ({}): {}\n",
            groups.len(),
            groups.join(", ")
        ));
        out
    }
}
