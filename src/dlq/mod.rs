//! Dead letters: inspect them, and redrive them to their source topic once the cause is
//! fixed — governed.
//!
//! - [`list`] reads the dead-letter topic (to its end at the time of the call) and keeps
//!   the letters matching a [`Selection`] (reason, time range of the input record's
//!   timestamp, source topic).
//! - [`redrive`] writes the selected letters back to their source topic, as they were read
//!   (key, value, timestamp, input headers, plus `synclag.redriven.from`), at most
//!   `max_per_second`, at most `limit`. Idempotent: every moved letter is recorded in the
//!   ledger topic `<dead_letter_topic>.redriven` (compacted, key `partition/offset`) in
//!   the same Kafka transaction as its copy, so a letter is moved once even when a
//!   redrive is interrupted or run twice, and two redrives at once fence each other
//!   (one transactional id per dead-letter topic). Letters move in transactions of 100
//!   while the topic is read, so a redrive holds at most 100 letters in memory. A dry
//!   run moves nothing and reports what would move.
//! - Letters that cannot be redriven are skipped and counted: already redriven, masked
//!   (`masking.dead_letters: mask`), cut to fit the topic, or without a source.
//! - Every redrive and dry run is audited: a `started` record before anything moves (a
//!   redrive that cannot write it does not start) and a result record naming the actor
//!   and what moved.
//!
//! [`mask`] masks dead letters when `masking.dead_letters: mask`. The command line lives
//! in [`DlqArgs`]; the operator-only API in [`api`].

pub mod api;
pub mod mask;

use crate::audit::{AuditLog, AuditRecord};
use crate::config::Topology;
use crate::telemetry::names;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Header naming where a redriven record came from: `<dlq topic>/<partition>/<offset>`.
pub const REDRIVEN_FROM_HEADER: &str = "synclag.redriven.from";

/// Dead letters listed at most by default.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Letters moved per second at most, by default.
pub const DEFAULT_MAX_PER_SECOND: u32 = 50;
/// Upper bound of `max_per_second`.
pub const MAX_PER_SECOND_CAP: u32 = 5_000;
/// Letters moved in one Kafka transaction at most.
const BATCH: usize = 100;
/// Moved letters named one by one in the audit record; the rest are counted.
const AUDIT_MOVED_NAMED: usize = 200;

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why dead letters could not be read or redriven.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("{0}")]
    Selection(String),
    #[error("audit: {0} (nothing was moved)")]
    Audit(String),
    #[error("redrive stopped after {moved} moved letters: {why}")]
    Interrupted { moved: usize, why: String },
}

impl DlqError {
    /// Kafka trouble may pass (an interrupted redrive resumes where it stopped: moved
    /// letters are in the ledger); a bad selection or a missing audit topic does not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DlqError::Kafka(_) | DlqError::Interrupted { .. })
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// `synclag.reason` of the letter (exact).
    pub reason: Option<String>,
    /// Input records at or after this time: RFC 3339, or a duration ago (`2h`).
    pub since: Option<String>,
    /// Input records before this time: RFC 3339, or a duration ago.
    pub until: Option<String>,
    /// Only letters from this source topic.
    pub source_topic: Option<String>,
}

/// A time bound in epoch ms: RFC 3339, or a duration before `now_ms`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.timestamp_millis());
    }
    crate::config::duration::parse_duration(text)
        .map(|d| now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
        .map_err(|why| {
            format!("`{text}` is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor a duration ago (90m, 2h, 7d): {why}")
        })
}

struct Bounds {
    since: Option<i64>,
    until: Option<i64>,
}

impl Selection {
    fn bounds(&self, now_ms: i64) -> Result<Bounds, DlqError> {
        let mut problems = Vec::new();
        let mut parse = |name: &str, v: &Option<String>| {
            v.as_deref().and_then(|t| match parse_time(t, now_ms) {
                Ok(ms) => Some(ms),
                Err(why) => {
                    problems.push(format!("{name}: {why}"));
                    None
                }
            })
        };
        let bounds = Bounds {
            since: parse("since", &self.since),
            until: parse("until", &self.until),
        };
        if problems.is_empty() {
            Ok(bounds)
        } else {
            Err(DlqError::Selection(problems.join("; ")))
        }
    }

    fn matches(&self, b: &Bounds, l: &Letter) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == l.reason)
            && self
                .source_topic
                .as_ref()
                .is_none_or(|t| Some(t) == l.source_topic.as_ref())
            && b.since
                .is_none_or(|s| l.timestamp_ms.is_some_and(|t| t >= s))
            && b.until
                .is_none_or(|u| l.timestamp_ms.is_some_and(|t| t < u))
    }

    fn describe(&self, out: &mut BTreeMap<String, String>) {
        for (k, v) in [
            ("reason", &self.reason),
            ("since", &self.since),
            ("until", &self.until),
            ("source_topic", &self.source_topic),
        ] {
            if let Some(v) = v {
                out.insert(k.to_string(), v.clone());
            }
        }
    }
}

/// One dead letter as read.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    /// The input record's timestamp (dead letters keep it).
    pub timestamp_ms: Option<i64>,
    pub reason: String,
    pub error: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// The input key and value, lossy UTF-8, as the letter holds them.
    pub key: Option<String>,
    pub value: Option<String>,
    pub value_bytes: usize,
    /// Masked or cut letters are not redriven.
    pub masked: bool,
    pub truncated: bool,
    /// Already redriven (in the ledger).
    pub redriven: bool,
    #[serde(skip)]
    raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    raw_value: Option<Vec<u8>>,
    #[serde(skip)]
    input_headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn from_message(m: &BorrowedMessage<'_>) -> Letter {
        let mut synclag: BTreeMap<String, String> = BTreeMap::new();
        let mut input_headers = Vec::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if h.key.starts_with("synclag.") {
                    let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    synclag.insert(h.key.to_string(), v.unwrap_or_default());
                } else {
                    input_headers.push((h.key.to_string(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        Letter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            reason: synclag.get("synclag.reason").cloned().unwrap_or_default(),
            error: synclag.get("synclag.error").cloned().unwrap_or_default(),
            source_topic: synclag.get("synclag.source.topic").cloned(),
            source_partition: synclag
                .get("synclag.source.partition")
                .and_then(|p| p.parse().ok()),
            source_offset: synclag
                .get("synclag.source.offset")
                .and_then(|p| p.parse().ok()),
            key: text(m.key()),
            value: text(m.payload()),
            value_bytes: m.payload().map_or(0, <[u8]>::len),
            masked: synclag.contains_key(mask::MASKED_HEADER),
            truncated: synclag.contains_key(crate::emit::producer::TRUNCATED_HEADER),
            redriven: false,
            raw_key: m.key().map(<[u8]>::to_vec),
            raw_value: m.payload().map(<[u8]>::to_vec),
            input_headers,
        }
    }

    /// `partition/offset`: the letter's ledger key.
    pub fn ledger_key(&self) -> String {
        format!("{}/{}", self.partition, self.offset)
    }
}

/// The ledger of redriven letters for `dlq_topic`.
pub fn ledger_topic(dlq_topic: &str) -> String {
    format!("{dlq_topic}.redriven")
}

fn reader_config(topology: &Topology) -> ClientConfig {
    let mut cfg = crate::config::kafka::admin_config(topology);
    cfg.set(
        "group.id",
        format!("{}-dlq-reader", topology.service.group_id),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("isolation.level", "read_committed")
    .set("enable.partition.eof", "false");
    cfg
}

/// Reads `topic` from its start to its end as of now, calling `each` per record. A topic
/// that does not exist reads as empty.
fn read_to_end(
    cfg: &ClientConfig,
    topic: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), DlqError>,
) -> Result<usize, DlqError> {
    let consumer: BaseConsumer = cfg.create().map_err(|e| DlqError::Kafka(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), IO_TIMEOUT)
        .map_err(|e| DlqError::Kafka(format!("metadata of `{topic}`: {e}")))?;
    let Some(t) = md.topics().first() else {
        return Ok(0);
    };
    if t.error().is_some() {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), IO_TIMEOUT)
            .map_err(|e| DlqError::Kafka(format!("end offsets of `{topic}`: {e}")))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| DlqError::Kafka(e.to_string()))?;
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| DlqError::Kafka(e.to_string()))?;
    let mut read = 0;
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let end = ends.get(&m.partition()).copied().unwrap_or(0);
                if m.offset() < end {
                    each(&m)?;
                    read += 1;
                }
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(DlqError::Kafka(format!("reading `{topic}`: {e}"))),
            None => {
                // Transaction markers and aborted records take offsets without being
                // returned: a partition whose position reached its end is done.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(end)) =
                            (e.offset(), ends.get(&e.partition()))
                        {
                            if o >= *end {
                                ends.remove(&e.partition());
                            }
                        }
                    }
                }
                if idle_since.elapsed() > IO_TIMEOUT {
                    return Err(DlqError::Kafka(format!(
                        "reading `{topic}`: no record for {}s before its end",
                        IO_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
    Ok(read)
}

/// Keys in the ledger of `topology`'s dead-letter topic.
fn redriven(topology: &Topology) -> Result<HashSet<String>, DlqError> {
    let mut keys = HashSet::new();
    read_to_end(
        &reader_config(topology),
        &ledger_topic(&topology.outputs.dead_letter_topic),
        |m| {
            if let Some(k) = m.key() {
                keys.insert(String::from_utf8_lossy(k).into_owned());
            }
            Ok(())
        },
    )?;
    Ok(keys)
}

/// Dead letters matching `selection`, oldest offset first per partition, at most `limit`
/// (blocking: run it off the async runtime).
pub fn list(
    topology: &Topology,
    selection: &Selection,
    limit: usize,
) -> Result<Vec<Letter>, DlqError> {
    let mut out = Vec::new();
    scan(topology, selection, |l| {
        if out.len() < limit {
            out.push(l);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Calls `each` with every dead letter matching `selection`, in offset order per
/// partition, `redriven` set from the ledger; one letter in memory at a time.
fn scan(
    topology: &Topology,
    selection: &Selection,
    mut each: impl FnMut(Letter) -> Result<(), DlqError>,
) -> Result<(), DlqError> {
    let bounds = selection.bounds(crate::decode::time::wall_ms())?;
    let done = redriven(topology)?;
    read_to_end(
        &reader_config(topology),
        &topology.outputs.dead_letter_topic,
        |m| {
            let mut l = Letter::from_message(m);
            if selection.matches(&bounds, &l) {
                l.redriven = done.contains(&l.ledger_key());
                each(l)?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// How a redrive runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedriveOptions {
    pub dry_run: bool,
    pub max_per_second: u32,
    pub limit: usize,
}

/// Who asks for a redrive, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub channel: &'static str,
    pub name: String,
    pub role: Option<&'static str>,
    pub client: Option<String>,
}

/// What a redrive did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RedriveReport {
    pub dry_run: bool,
    pub selected: usize,
    pub moved: usize,
    pub skipped_already_redriven: usize,
    pub skipped_masked: usize,
    pub skipped_truncated: usize,
    pub skipped_no_source: usize,
    /// `dlq partition/offset -> source topic/partition/offset` of what moved (or would).
    pub records: Vec<String>,
    /// Time spent waiting for the rate limit.
    pub throttled_seconds: f64,
}

fn audit_record(
    actor: &Actor,
    action: &str,
    outcome: &str,
    details: BTreeMap<String, String>,
) -> AuditRecord {
    AuditRecord::action(
        actor.channel,
        &actor.name,
        actor.role,
        actor.client.clone(),
        action,
        outcome,
        details,
    )
}

fn count(outcome: &'static str, n: usize) {
    metrics::counter!(names::DLQ_REDRIVE_RECORDS_TOTAL, "outcome" => outcome).increment(n as u64);
}

/// Exports the redrive series at zero.
pub fn preregister() {
    for outcome in [
        "moved",
        "skipped_already_redriven",
        "skipped_masked",
        "skipped_truncated",
        "skipped_no_source",
    ] {
        count(outcome, 0);
    }
    metrics::counter!(names::DLQ_REDRIVE_THROTTLED_SECONDS_TOTAL).increment(0);
}

/// Redrives the letters `selection` picks (see the module docs), audited through `audit`.
pub async fn redrive(
    topology: &Topology,
    selection: &Selection,
    options: &RedriveOptions,
    actor: &Actor,
    audit: &AuditLog,
) -> Result<RedriveReport, DlqError> {
    if options.max_per_second == 0 || options.max_per_second > MAX_PER_SECOND_CAP {
        return Err(DlqError::Selection(format!(
            "max_per_second `{}` is out of range; expected 1 to {MAX_PER_SECOND_CAP}",
            options.max_per_second
        )));
    }
    selection.bounds(crate::decode::time::wall_ms())?;
    let action = if options.dry_run {
        "dlq_redrive_dry_run"
    } else {
        "dlq_redrive"
    };
    let mut details = BTreeMap::new();
    selection.describe(&mut details);
    details.insert(
        "dead_letter_topic".into(),
        topology.outputs.dead_letter_topic.clone(),
    );
    details.insert("limit".into(), options.limit.to_string());
    details.insert("max_per_second".into(), options.max_per_second.to_string());
    audit
        .write(audit_record(actor, action, "started", details.clone()))
        .await
        .map_err(|e| DlqError::Audit(e.to_string()))?;

    let t = topology.clone();
    let sel = selection.clone();
    let opts = options.clone();
    let result = tokio::task::spawn_blocking(move || redrive_blocking(&t, &sel, &opts))
        .await
        .map_err(|e| DlqError::Kafka(format!("redrive task: {e}")))
        .and_then(|r| r);
    let (outcome, report) = match &result {
        Ok(r) => ("ok", r.clone()),
        Err(DlqError::Interrupted { moved, .. }) => (
            "failed",
            RedriveReport {
                moved: *moved,
                ..RedriveReport::default()
            },
        ),
        Err(_) => ("failed", RedriveReport::default()),
    };
    for (k, v) in [
        ("selected", report.selected),
        ("moved", report.moved),
        ("skipped_already_redriven", report.skipped_already_redriven),
        ("skipped_masked", report.skipped_masked),
        ("skipped_truncated", report.skipped_truncated),
        ("skipped_no_source", report.skipped_no_source),
    ] {
        details.insert(k.into(), v.to_string());
    }
    for (i, r) in report.records.iter().take(AUDIT_MOVED_NAMED).enumerate() {
        details.insert(format!("record.{i:04}"), r.clone());
    }
    if let Err(e) = &result {
        details.insert("error".into(), e.to_string());
    }
    if let Err(e) = audit
        .write(audit_record(actor, action, outcome, details))
        .await
    {
        // The letters moved; the `started` record names the selection. Say so loudly.
        tracing::error!(target: "audit", error = %e, ?report, "redrive result not written to the audit topic");
    }
    if !options.dry_run {
        count("moved", report.moved);
        count("skipped_already_redriven", report.skipped_already_redriven);
        count("skipped_masked", report.skipped_masked);
        count("skipped_truncated", report.skipped_truncated);
        count("skipped_no_source", report.skipped_no_source);
        metrics::counter!(names::DLQ_REDRIVE_THROTTLED_SECONDS_TOTAL)
            .increment(report.throttled_seconds.round() as u64);
    }
    result
}

fn redrive_blocking(
    topology: &Topology,
    selection: &Selection,
    options: &RedriveOptions,
) -> Result<RedriveReport, DlqError> {
    let dlq = topology.outputs.dead_letter_topic.clone();
    let mut report = RedriveReport {
        dry_run: options.dry_run,
        ..RedriveReport::default()
    };
    let mut mover = if options.dry_run {
        None
    } else {
        Some(Mover::start(topology, options)?)
    };
    // Letters are moved in transactions of BATCH while the dead-letter topic is read, so
    // at most BATCH letters are held in memory whatever the selection.
    let mut batch: Vec<Letter> = Vec::with_capacity(BATCH);
    let mut taken = 0;
    scan(topology, selection, |l| {
        report.selected += 1;
        if l.redriven {
            report.skipped_already_redriven += 1;
        } else if l.masked {
            report.skipped_masked += 1;
        } else if l.truncated {
            report.skipped_truncated += 1;
        } else if l.source_topic.is_none() {
            report.skipped_no_source += 1;
        } else if taken < options.limit {
            taken += 1;
            batch.push(l);
            if batch.len() == BATCH {
                flush(&dlq, &mut mover, &mut batch, &mut report)?;
            }
        }
        Ok(())
    })?;
    flush(&dlq, &mut mover, &mut batch, &mut report)?;
    Ok(report)
}

/// `dlq partition/offset -> source topic/partition/offset` of a letter.
fn describe(dlq: &str, l: &Letter) -> String {
    format!(
        "{dlq}/{}/{} -> {}/{}/{}",
        l.partition,
        l.offset,
        l.source_topic.as_deref().unwrap_or(""),
        l.source_partition.map_or("?".into(), |p| p.to_string()),
        l.source_offset.map_or("?".into(), |o| o.to_string()),
    )
}

/// Moves `batch` (in one transaction; a dry run only reports it) and empties it.
fn flush(
    dlq: &str,
    mover: &mut Option<Mover>,
    batch: &mut Vec<Letter>,
    report: &mut RedriveReport,
) -> Result<(), DlqError> {
    if batch.is_empty() {
        return Ok(());
    }
    if let Some(m) = mover {
        m.send(dlq, batch, report)?;
        report.moved += batch.len();
    }
    report
        .records
        .extend(batch.iter().map(|l| describe(dlq, l)));
    batch.clear();
    Ok(())
}

/// The transactional producer of a redrive, with its rate limit.
struct Mover {
    producer: ThreadedProducer<DefaultProducerContext>,
    ledger: String,
    period: Duration,
    next: Instant,
}

impl Mover {
    fn start(topology: &Topology, options: &RedriveOptions) -> Result<Mover, DlqError> {
        let dlq = &topology.outputs.dead_letter_topic;
        let mut cfg = crate::config::kafka::producer_config(topology);
        cfg.set("transactional.id", format!("synclag-redrive.{dlq}"))
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let producer: ThreadedProducer<DefaultProducerContext> =
            cfg.create().map_err(|e| DlqError::Kafka(e.to_string()))?;
        producer
            .init_transactions(IO_TIMEOUT)
            .map_err(|e| DlqError::Kafka(format!("init transactions: {e}")))?;
        Ok(Mover {
            producer,
            ledger: ledger_topic(dlq),
            period: Duration::from_secs_f64(1.0 / f64::from(options.max_per_second)),
            next: Instant::now(),
        })
    }

    /// Copies `batch` to the source topics and records it in the ledger, in one
    /// transaction, at most one letter per `period`.
    fn send(
        &mut self,
        dlq: &str,
        batch: &[Letter],
        report: &mut RedriveReport,
    ) -> Result<(), DlqError> {
        let moved = report.moved;
        let interrupted = |why: String| DlqError::Interrupted { moved, why };
        self.producer
            .begin_transaction()
            .map_err(|e| interrupted(e.to_string()))?;
        for l in batch {
            let now = Instant::now();
            if self.next > now {
                report.throttled_seconds += (self.next - now).as_secs_f64();
                std::thread::sleep(self.next - now);
            }
            self.next = self.next.max(now) + self.period;
            let from = format!("{dlq}/{}/{}", l.partition, l.offset);
            let mut headers = OwnedHeaders::new();
            for (k, v) in &l.input_headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: REDRIVEN_FROM_HEADER,
                value: Some(from.as_bytes()),
            });
            let topic = l.source_topic.as_deref().unwrap_or_default();
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
            if let Some(k) = &l.raw_key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &l.raw_value {
                rec = rec.payload(v.as_slice());
            }
            if let Some(ts) = l.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            self.producer
                .send(rec)
                .map_err(|(e, _)| interrupted(e.to_string()))?;
            let key = l.ledger_key();
            let entry = serde_json::json!({
                "redriven_at_ms": crate::decode::time::wall_ms(),
                "to": describe(dlq, l),
            })
            .to_string();
            self.producer
                .send(BaseRecord::to(&self.ledger).key(&key).payload(&entry))
                .map_err(|(e, _)| interrupted(e.to_string()))?;
        }
        self.producer
            .commit_transaction(IO_TIMEOUT)
            .map_err(|e| interrupted(format!("commit: {e}")))
    }
}

/// `synclag dlq …`
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// Path to topology.yaml.
    #[arg(long, short, default_value = "topology.yaml", global = true)]
    pub config: std::path::PathBuf,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SelectionArgs {
    /// Only letters with this reason (`synclag.reason`, e.g. `not_json`, `bad_timestamp`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only input records at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only input records before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Only letters from this source topic.
    #[arg(long)]
    pub source_topic: Option<String>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        Selection {
            reason: self.reason.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            source_topic: self.source_topic.clone(),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (JSON lines) by reason and time (audited).
    List {
        #[command(flatten)]
        select: SelectionArgs,
        /// Letters listed at most.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: usize,
        /// Who is reading, for the audit trail (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Write selected dead letters back to their source topic (audited, once each).
    Redrive {
        #[command(flatten)]
        select: SelectionArgs,
        /// Report what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Letters moved per second at most.
        #[arg(long, default_value_t = DEFAULT_MAX_PER_SECOND)]
        max_per_second: u32,
        /// Letters moved at most.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Who is acting, for the audit trail (default: the OS user).
        #[arg(long)]
        actor: Option<String>,
    },
}

/// A command has no token: the OS user (or `--actor`) and the host name it.
fn cli_actor(actor: Option<String>) -> Actor {
    Actor {
        channel: "cli",
        name: actor
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into()),
        role: None,
        client: Some(format!("cli@{}", crate::config::instance::hostname())),
    }
}

/// Runs `synclag dlq …`; the report goes to stdout as JSON.
pub async fn run_cli(topology: Topology, command: DlqCommand) -> Result<(), DlqError> {
    match command {
        DlqCommand::List {
            select,
            limit,
            actor,
        } => {
            // Dead letters hold raw records: reading them is audited like the API's list.
            let audit = AuditLog::start(&topology).map_err(|e| DlqError::Audit(e.to_string()))?;
            let selection = select.selection();
            let mut details = BTreeMap::new();
            selection.describe(&mut details);
            details.insert("limit".into(), limit.to_string());
            audit
                .write(audit_record(&cli_actor(actor), "dlq_list", "ok", details))
                .await
                .map_err(|e| DlqError::Audit(e.to_string()))?;
            let letters = tokio::task::spawn_blocking(move || list(&topology, &selection, limit))
                .await
                .map_err(|e| DlqError::Kafka(e.to_string()))??;
            for l in letters {
                println!("{}", serde_json::to_string(&l).unwrap_or_default());
            }
            Ok(())
        }
        DlqCommand::Redrive {
            select,
            dry_run,
            max_per_second,
            limit,
            actor,
        } => {
            let actor = cli_actor(actor);
            let audit = AuditLog::start(&topology).map_err(|e| DlqError::Audit(e.to_string()))?;
            let report = redrive(
                &topology,
                &select.selection(),
                &RedriveOptions {
                    dry_run,
                    max_per_second,
                    limit,
                },
                &actor,
                &audit,
            )
            .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0), Ok(1_000));
        let err = parse_time("yesterday", 0).expect_err("not a time");
        assert!(err.contains("RFC 3339"), "{err}");
        let sel = Selection {
            since: Some("soon".into()),
            until: Some("later".into()),
            ..Selection::default()
        };
        let Err(DlqError::Selection(why)) = sel.bounds(0) else {
            panic!("bad bounds must fail");
        };
        assert!(
            why.contains("since") && why.contains("until"),
            "both reported: {why}"
        );
    }
}
