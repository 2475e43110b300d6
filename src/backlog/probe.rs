//! The Kafka side of the monitor: every request one poll cycle makes, batched.
//!
//! All calls here block (librdkafka is synchronous); the monitor runs its cycle on the
//! blocking pool. Per cycle, for the whole cluster:
//!
//! - one metadata request (topics and partition counts);
//! - one ListGroups + DescribeGroups round (`fetch_group_list`): states, members and
//!   their assignments;
//! - the new records of `__consumer_offsets` ([`CommitLog`]): read from the beginning
//!   once, then incrementally; it is the source of every watched group's committed
//!   offsets *and* the evidence that a commit happened, for all groups at once. Only
//!   while it cannot be read (not permitted) or has not reached its end yet, committed
//!   offsets come from the admin API instead ([`Probe::committed`]: one client, one
//!   request per group, all in flight at once);
//! - two ListOffsets rounds (`offsets_for_times` with the latest and earliest
//!   sentinels), which librdkafka batches per partition leader;
//! - when some committed offset moved: one group-less consumer assigned to every
//!   partition to read at once ([`Probe::read_records`]), created for the read and
//!   closed after it.

use super::report::NONE;
use super::BacklogError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A (topic, partition) pair.
pub type Tp = (String, i32);

/// Committed offset per partition (`None`: no commit), or why the fetch failed.
pub type Committed = Result<BTreeMap<Tp, Option<i64>>, String>;

/// `group.id` of the monitor's own readers (never subscribed, never committing).
pub const READER_GROUP_ID: &str = "synclag-backlog-reader";

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Wanted offsets of one partition that lie within this many offsets of each other
/// are read in one pass (the records between them come in the same fetches anyway);
/// farther ones are read in a later round, after a seek.
const READ_SPAN: i64 = 1_000;

/// A consumer group as the cluster describes it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub name: String,
    pub state: String,
    pub members: usize,
    /// Partitions owned by active members (from the consumer protocol assignment), by topic.
    pub owned: BTreeMap<String, BTreeSet<i32>>,
}

/// What reading the record at a committed offset gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The first record at or after the requested offset, with its timestamp (ms).
    Found { offset: i64, timestamp_ms: i64 },
    /// Nothing readable at or after the requested offset (or no timestamp).
    Missing,
}

/// Records wanted from one partition.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Sorted, distinct offsets; for each the first record at or after it is wanted.
    pub offsets: Vec<i64>,
    /// The log end: no record is at or after it when the read starts.
    pub end: i64,
}

/// What [`Probe::read_records`] found: (topic, partition, wanted offset, outcome).
#[derive(Debug, Default)]
pub struct ReadResult {
    pub outcomes: Vec<(Arc<str>, i32, i64, ReadOutcome)>,
    /// Wanted records given up because their partition yielded nothing for the wait
    /// bound (they are interpolated this cycle).
    pub timed_out: usize,
}

/// Kafka clients of the monitor, created once and reused across cycles (the record
/// reader excepted: it exists only while it reads).
pub struct Probe {
    reader_config: ClientConfig,
    timeout: Duration,
    /// Metadata, group list, ListOffsets, ListConsumerGroupOffsets.
    pub(crate) admin: BaseConsumer,
    pub(crate) commit_log: CommitLog,
}

impl Probe {
    /// Creates the shared clients. `properties` win over synclag's defaults; the values
    /// the monitor depends on are fixed (see `config::kafka`).
    pub fn new(
        bootstrap_servers: &str,
        properties: &BTreeMap<String, String>,
        timeout: Duration,
        read_commit_log: bool,
        commit_log_budget: Duration,
    ) -> Result<Probe, BacklogError> {
        use crate::config::kafka::{client_config, Client};
        let base = client_config(Client::Admin, bootstrap_servers, properties);
        let admin = group_less(&base).create().map_err(BacklogError::Client)?;
        let reader_config = group_less(&client_config(
            Client::BacklogReader,
            bootstrap_servers,
            properties,
        ));
        let tail: BaseConsumer = group_less(&client_config(
            Client::CommitLogTail,
            bootstrap_servers,
            properties,
        ))
        .create()
        .map_err(BacklogError::Client)?;
        Ok(Probe {
            reader_config,
            timeout,
            admin,
            commit_log: CommitLog::new(tail, read_commit_log, commit_log_budget),
        })
    }

    /// Topic name → partition count, internal topics (`__…`) left out.
    pub fn topics(&self) -> Result<BTreeMap<String, i32>, BacklogError> {
        let md = self
            .admin
            .fetch_metadata(None, self.timeout)
            .map_err(BacklogError::Metadata)?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }

    /// Every consumer group the cluster knows, with members and assignments.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, BacklogError> {
        let list = self
            .admin
            .fetch_group_list(None, self.timeout)
            .map_err(BacklogError::GroupList)?;
        Ok(list
            .groups()
            .iter()
            .map(|g| {
                let mut owned: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
                if g.protocol_type() == "consumer" {
                    for m in g.members() {
                        if let Some(bytes) = m.assignment() {
                            for (t, p) in parse_assignment(bytes).unwrap_or_default() {
                                owned.entry(t).or_default().insert(p);
                            }
                        }
                    }
                }
                GroupInfo {
                    name: g.name().to_owned(),
                    state: g.state().to_owned(),
                    members: g.members().len(),
                    owned,
                }
            })
            .collect())
    }

    /// Committed offsets of many groups through the one admin client: a
    /// ListConsumerGroupOffsets request per group (the admin API takes one group per
    /// request), all in flight at once, each answered with every partition the group
    /// has a commit on. Used only while the commit log cannot be.
    pub fn committed(&self, groups: &[String]) -> Vec<(String, Committed)> {
        list_group_offsets(&self.admin, groups, self.timeout)
    }

    /// Log-end (`latest == true`) or log-start offsets of every partition of `topics`,
    /// in one ListOffsets round (batched per leader). Unreadable ones are [`NONE`].
    pub fn log_offsets(
        &self,
        topics: &[(Arc<str>, usize)],
        latest: bool,
    ) -> Result<HashMap<Arc<str>, Vec<i64>>, String> {
        let sentinel = if latest {
            Offset::End
        } else {
            Offset::Beginning
        };
        let total: usize = topics.iter().map(|(_, n)| n).sum();
        let mut out: HashMap<Arc<str>, Vec<i64>> = topics
            .iter()
            .map(|(t, n)| (t.clone(), vec![NONE; *n]))
            .collect();
        if total == 0 {
            return Ok(out);
        }
        // librdkafka matches the answers to the request partition by partition with a
        // linear search (quadratic in the request's size: seconds of CPU at 10,000
        // partitions), so the round is sent in slices.
        let all: Vec<(&Arc<str>, i32)> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t, p as i32)))
            .collect();
        for slice in all.chunks(LIST_OFFSETS_SLICE) {
            let mut tpl = TopicPartitionList::with_capacity(slice.len());
            for (t, p) in slice {
                add_at(&mut tpl, t, *p, sentinel)?;
            }
            let res = self
                .admin
                .offsets_for_times(tpl, self.timeout)
                .map_err(|e| format!("list offsets failed: {e}"))?;
            for e in res.elements() {
                if let (Ok(()), Offset::Offset(n), Some(v)) =
                    (e.error(), e.offset(), out.get_mut(e.topic()))
                {
                    if let Some(slot) = usize::try_from(e.partition())
                        .ok()
                        .and_then(|p| v.get_mut(p))
                    {
                        *slot = n;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads, for every wanted offset, the first record at or after it: one consumer
    /// assigned to every requested partition at once (a fetch carries many partitions'
    /// records), offsets of a partition close together read in one pass, far-apart ones
    /// in later rounds. A partition that yields nothing for `wait` is given up.
    pub fn read_records(&self, requests: Vec<ReadRequest>, wait: Duration) -> ReadResult {
        let mut result = ReadResult::default();
        let reader: BaseConsumer = match self.reader_config.create() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the record reader");
                return result;
            }
        };
        // topic → partition → request index.
        let mut index: HashMap<Arc<str>, HashMap<i32, usize>> = HashMap::new();
        let mut next = vec![0usize; requests.len()];
        for (i, r) in requests.iter().enumerate() {
            index
                .entry(r.topic.clone())
                .or_default()
                .insert(r.partition, i);
            // No record is at or after the log end.
            let below_end = r.offsets.partition_point(|&o| o < r.end);
            for &o in &r.offsets[below_end..] {
                result
                    .outcomes
                    .push((r.topic.clone(), r.partition, o, ReadOutcome::Missing));
            }
            next[i] = 0;
        }
        let limit: Vec<usize> = requests
            .iter()
            .map(|r| r.offsets.partition_point(|&o| o < r.end))
            .collect();
        loop {
            // This round: each unfinished partition from its next wanted offset, up to
            // the last wanted offset within READ_SPAN of it.
            let mut round: Vec<(usize, i64)> = Vec::new();
            let mut tpl = TopicPartitionList::new();
            for (i, r) in requests.iter().enumerate() {
                if next[i] < limit[i] {
                    let from = r.offsets[next[i]];
                    let last_in_span = r.offsets[next[i]..limit[i]]
                        .iter()
                        .take_while(|&&o| o - from <= READ_SPAN)
                        .last()
                        .copied()
                        .unwrap_or(from);
                    if add_at(&mut tpl, &r.topic, r.partition, Offset::Offset(from)).is_ok() {
                        round.push((i, last_in_span));
                    }
                }
            }
            if round.is_empty() {
                break;
            }
            if let Err(e) = reader.assign(&tpl) {
                tracing::warn!(error = %e, "cannot assign partitions to read committed records");
                for (i, _) in round {
                    let r = &requests[i];
                    for &o in &r.offsets[next[i]..limit[i]] {
                        result.outcomes.push((
                            r.topic.clone(),
                            r.partition,
                            o,
                            ReadOutcome::Missing,
                        ));
                    }
                    next[i] = limit[i];
                }
                break;
            }
            let round_end: HashMap<usize, i64> = round.iter().copied().collect();
            let mut pending: HashSet<usize> = round.iter().map(|(i, _)| *i).collect();
            let mut to_pause = TopicPartitionList::new();
            let mut last_progress = Instant::now();
            let mut check_positions = false;
            let mut last_check = Instant::now();
            while !pending.is_empty() && last_progress.elapsed() < wait {
                match reader.poll(Duration::from_millis(20)) {
                    None => check_positions = true,
                    Some(Ok(msg)) => {
                        let Some(&i) = index.get(msg.topic()).and_then(|m| m.get(&msg.partition()))
                        else {
                            continue;
                        };
                        if !pending.contains(&i) {
                            continue;
                        }
                        let r = &requests[i];
                        let o = msg.offset();
                        let ts = msg.timestamp().to_millis();
                        while next[i] < limit[i] && r.offsets[next[i]] <= o {
                            let outcome = match ts {
                                Some(ts) => ReadOutcome::Found {
                                    offset: o,
                                    timestamp_ms: ts,
                                },
                                None => ReadOutcome::Missing,
                            };
                            result.outcomes.push((
                                r.topic.clone(),
                                r.partition,
                                r.offsets[next[i]],
                                outcome,
                            ));
                            next[i] += 1;
                            last_progress = Instant::now();
                        }
                        if next[i] >= limit[i] || r.offsets[next[i]] > round_end[&i] {
                            pending.remove(&i);
                            let _ = to_pause.add_partition(&r.topic, r.partition);
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => check_positions = true,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "error while reading committed records");
                    }
                }
                if to_pause.count() > 0 && last_check.elapsed() >= Duration::from_millis(20) {
                    let _ = reader.pause(&to_pause);
                    to_pause = TopicPartitionList::new();
                }
                // A partition whose position reached its log end has nothing more to
                // give (the rest was transaction markers or compacted away).
                if check_positions && last_check.elapsed() >= Duration::from_millis(100) {
                    check_positions = false;
                    last_check = Instant::now();
                    if let Ok(pos) = reader.position() {
                        for e in pos.elements() {
                            let Offset::Offset(at) = e.offset() else {
                                continue;
                            };
                            let Some(&i) = index.get(e.topic()).and_then(|m| m.get(&e.partition()))
                            else {
                                continue;
                            };
                            let r = &requests[i];
                            if pending.contains(&i) && at >= r.end {
                                for &o in &r.offsets[next[i]..limit[i]] {
                                    result.outcomes.push((
                                        r.topic.clone(),
                                        r.partition,
                                        o,
                                        ReadOutcome::Missing,
                                    ));
                                }
                                next[i] = limit[i];
                                pending.remove(&i);
                                last_progress = Instant::now();
                            }
                        }
                    }
                }
            }
            // Given up: what the wait did not bring is interpolated this cycle.
            for i in pending {
                let r = &requests[i];
                for &o in &r.offsets[next[i]..limit[i]] {
                    result
                        .outcomes
                        .push((r.topic.clone(), r.partition, o, ReadOutcome::Missing));
                    result.timed_out += 1;
                }
                next[i] = limit[i];
            }
            let _ = reader.unassign();
        }
        result
    }
}

/// Adds a partition at an offset in constant time (`add_partition_offset` searches the
/// whole list for it again: quadratic over a cluster's partitions).
fn add_at(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    at: Offset,
) -> Result<(), String> {
    tpl.add_partition(topic, partition)
        .set_offset(at)
        .map_err(|e| e.to_string())
}

/// Partitions per ListOffsets request (see [`Probe::log_offsets`]).
const LIST_OFFSETS_SLICE: usize = 500;

/// Clients that never join a group or commit. librdkafka only allows `assign()` on a
/// consumer with a `group.id`, so the readers get a fixed one; with no subscription and
/// no commits it never becomes a group the cluster lists.
fn group_less(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", READER_GROUP_ID);
    c
}

/// The committed offsets of one group on one topic, by partition ([`NONE`]: none), and
/// which of them were committed since the previous cycle.
#[derive(Debug, Default)]
pub(crate) struct TopicCommits {
    pub offsets: Vec<i64>,
    seen: Vec<u64>,
    any_seen: bool,
}

impl TopicCommits {
    fn with_partitions(partitions: usize) -> TopicCommits {
        TopicCommits {
            offsets: Vec::with_capacity(partitions),
            ..TopicCommits::default()
        }
    }

    fn set(&mut self, partition: usize, offset: i64, seen: bool) {
        if self.offsets.len() <= partition {
            self.offsets.resize(partition + 1, NONE);
        }
        self.offsets[partition] = offset;
        if seen {
            let word = partition / 64;
            if self.seen.len() <= word {
                self.seen.resize(word + 1, 0);
            }
            self.seen[word] |= 1 << (partition % 64);
            self.any_seen = true;
        }
    }

    /// The committed offset of `partition`, if any.
    pub fn offset(&self, partition: usize) -> Option<i64> {
        self.offsets.get(partition).copied().filter(|&o| o != NONE)
    }

    /// A commit for `partition` was written since the previous cycle.
    pub fn seen(&self, partition: usize) -> bool {
        self.any_seen
            && self
                .seen
                .get(partition / 64)
                .is_some_and(|w| w & (1 << (partition % 64)) != 0)
    }

    pub fn has_commits(&self) -> bool {
        self.offsets.iter().any(|&o| o != NONE)
    }
}

/// What one drain of the commit log gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// The log was read (commit evidence is known this cycle).
    pub readable: bool,
    /// The log has been read to its end at least once: the committed offsets it holds
    /// are complete and the per-group queries are not needed.
    pub complete: bool,
    /// Commit records read this cycle.
    pub records: usize,
}

/// `__consumer_offsets`, read from its beginning once and then incrementally: the
/// committed offset of every (watched group, topic, partition) and whether a commit was
/// written since the previous cycle. Keys and values are decoded here (key versions 0
/// and 1, value versions 0 to 4); group metadata and other record kinds are skipped,
/// tombstones remove an offset (expired, deleted group or topic).
pub(crate) struct CommitLog {
    consumer: BaseConsumer,
    enabled: bool,
    budget: Duration,
    partitions: Option<i32>,
    /// Partition → next offset to read.
    next: BTreeMap<i32, i64>,
    /// Partition → end at the first drain: records below it are history (offsets, but no
    /// commit evidence).
    history_end: HashMap<i32, i64>,
    complete: bool,
    /// Whether the last drain failed (the failure is logged once per change, not per cycle).
    failing: bool,
    /// Watched group → its commits, by topic.
    groups: HashMap<String, HashMap<Arc<str>, TopicCommits>>,
    /// Groups seen in the log that no selector matches (bounded, cleared when full).
    ignored: HashSet<String>,
}

impl CommitLog {
    fn new(consumer: BaseConsumer, enabled: bool, budget: Duration) -> CommitLog {
        CommitLog {
            consumer,
            enabled,
            budget,
            partitions: None,
            next: BTreeMap::new(),
            history_end: HashMap::new(),
            complete: false,
            failing: false,
            groups: HashMap::new(),
            ignored: HashSet::new(),
        }
    }

    /// The commits of `group` by topic (empty when it has none or the log is not used).
    pub fn group(&self, group: &str) -> Option<&HashMap<Arc<str>, TopicCommits>> {
        self.groups.get(group)
    }

    /// Forgets which commits were seen: called once a cycle has used them.
    pub fn clear_seen(&mut self) {
        for topics in self.groups.values_mut() {
            for t in topics.values_mut() {
                if std::mem::take(&mut t.any_seen) {
                    t.seen.iter_mut().for_each(|w| *w = 0);
                }
            }
        }
    }

    /// Reads what was written since the previous drain, for the groups `watch` accepts.
    pub fn drain(
        &mut self,
        admin: &BaseConsumer,
        timeout: Duration,
        watch: &dyn Fn(&str) -> bool,
        intern: &mut dyn FnMut(&str) -> (Arc<str>, usize),
    ) -> Drain {
        let failed = Drain {
            readable: false,
            complete: false,
            records: 0,
        };
        if !self.enabled {
            return failed;
        }
        match self.try_drain(admin, timeout, watch, intern) {
            Ok(d) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("commit log readable again");
                }
                d
            }
            Err(e) if self.failing => {
                tracing::debug!(error = %e, "commit log still unreadable");
                failed
            }
            Err(e) => {
                self.failing = true;
                tracing::warn!(error = %e, "commit log unreadable; committed offsets come from one query per group and STALL/STOP fall back to group membership until it is readable again");
                failed
            }
        }
    }

    fn try_drain(
        &mut self,
        admin: &BaseConsumer,
        timeout: Duration,
        watch: &dyn Fn(&str) -> bool,
        intern: &mut dyn FnMut(&str) -> (Arc<str>, usize),
    ) -> Result<Drain, String> {
        let n = match self.partitions {
            Some(n) => n,
            None => {
                let md = admin
                    .fetch_metadata(Some(OFFSETS_TOPIC), timeout)
                    .map_err(|e| e.to_string())?;
                let n = md
                    .topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{OFFSETS_TOPIC} is not visible"))?;
                self.partitions = Some(n);
                n
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            add_at(&mut tpl, OFFSETS_TOPIC, p, Offset::End)?;
        }
        // Through the tail itself: read_committed, so the end is the last stable offset.
        let ends: HashMap<i32, i64> = self
            .consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| e.to_string())?
            .elements()
            .iter()
            .filter(|e| e.error().is_ok())
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        if self.next.is_empty() {
            let mut assign = TopicPartitionList::new();
            for p in 0..n {
                add_at(&mut assign, OFFSETS_TOPIC, p, Offset::Beginning)?;
                self.next.insert(p, 0);
            }
            self.consumer.assign(&assign).map_err(|e| e.to_string())?;
            self.history_end = ends.clone();
        }
        let behind = |next: &BTreeMap<i32, i64>| {
            next.iter()
                .any(|(p, o)| ends.get(p).is_some_and(|end| o < end))
        };
        let mut records = 0usize;
        let deadline = Instant::now() + self.budget;
        let mut last_position = Instant::now();
        while behind(&self.next) && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(20)) {
                None => {
                    // Control records are never delivered; the position still moves
                    // past them. (Also the start of a compacted log.)
                    if last_position.elapsed() >= Duration::from_millis(20) {
                        last_position = Instant::now();
                        if let Ok(pos) = self.consumer.position() {
                            for e in pos.elements() {
                                if let (Offset::Offset(o), Some(next)) =
                                    (e.offset(), self.next.get_mut(&e.partition()))
                                {
                                    *next = (*next).max(o);
                                }
                            }
                        }
                    }
                }
                Some(Ok(msg)) => {
                    let p = msg.partition();
                    if let Some(next) = self.next.get_mut(&p) {
                        *next = (*next).max(msg.offset() + 1);
                    }
                    records += 1;
                    let history = self
                        .history_end
                        .get(&p)
                        .is_some_and(|&end| msg.offset() < end);
                    apply_commit(
                        &mut self.groups,
                        &mut self.ignored,
                        msg.key(),
                        msg.payload(),
                        !history,
                        watch,
                        intern,
                    );
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        // Complete only when every partition's end was known and reached.
        if !behind(&self.next) && ends.len() == self.next.len() && !self.complete {
            self.complete = true;
            tracing::info!("commit log read to its end: committed offsets come from it");
        }
        Ok(Drain {
            readable: true,
            complete: self.complete,
            records,
        })
    }
}

/// Applies one `__consumer_offsets` record to the commits of the watched groups.
#[allow(clippy::too_many_arguments)]
fn apply_commit(
    groups: &mut HashMap<String, HashMap<Arc<str>, TopicCommits>>,
    ignored: &mut HashSet<String>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    evidence: bool,
    watch: &dyn Fn(&str) -> bool,
    intern: &mut dyn FnMut(&str) -> (Arc<str>, usize),
) {
    let Some((group, topic, partition)) = key.and_then(offset_commit_key) else {
        return;
    };
    let Ok(partition) = usize::try_from(partition) else {
        return;
    };
    if !groups.contains_key(group) {
        if ignored.contains(group) {
            return;
        }
        if !watch(group) {
            if ignored.len() >= 100_000 {
                ignored.clear();
            }
            ignored.insert(group.to_owned());
            return;
        }
        groups.insert(group.to_owned(), HashMap::new());
    }
    let Some(topics) = groups.get_mut(group) else {
        return;
    };
    match value {
        // A tombstone: the offset was deleted (expired, group or topic deleted).
        None => {
            if let Some(t) = topics.get_mut(topic) {
                if let Some(slot) = t.offsets.get_mut(partition) {
                    *slot = NONE;
                }
                if !t.has_commits() {
                    topics.remove(topic);
                }
            }
        }
        Some(v) => {
            let Some(commit) = parse_offset_commit_value(v) else {
                return;
            };
            if !topics.contains_key(topic) {
                let (name, partitions) = intern(topic);
                topics.insert(name, TopicCommits::with_partitions(partitions));
            }
            if let Some(t) = topics.get_mut(topic) {
                t.set(partition, commit.offset, evidence);
            }
        }
    }
}

/// ListConsumerGroupOffsets for many groups on one client (librdkafka's admin API;
/// the Rust bindings do not wrap it). Every request is submitted before any answer is
/// awaited; answers are told apart by the opaque each request carries.
fn list_group_offsets(
    client: &BaseConsumer,
    groups: &[String],
    timeout: Duration,
) -> Vec<(String, Committed)> {
    use rdkafka_sys as rd;
    use std::ffi::{c_void, CStr, CString};
    let mut answers: Vec<Option<Committed>> = vec![None; groups.len()];
    if groups.is_empty() {
        return Vec::new();
    }
    let rk = client.client().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the live client owned by `client` for the whole call; every
    // object created here is destroyed here; librdkafka copies requests and options
    // when they are submitted; results are read before their event is destroyed.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        if queue.is_null() {
            return groups
                .iter()
                .map(|g| (g.clone(), Err("cannot create an admin queue".to_owned())))
                .collect();
        }
        let mut submitted = 0usize;
        for (i, g) in groups.iter().enumerate() {
            let Ok(name) = CString::new(g.as_str()) else {
                answers[i] = Some(Err("group id contains a NUL byte".to_owned()));
                continue;
            };
            let options = rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
            );
            if options.is_null() {
                answers[i] = Some(Err("cannot create admin options".to_owned()));
                continue;
            }
            let mut errbuf = [0 as std::ffi::c_char; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options,
                timeout_ms,
                errbuf.as_mut_ptr(),
                errbuf.len(),
            );
            // Opaque: index + 1 (null stays "unknown").
            rd::rd_kafka_AdminOptions_set_opaque(options, (i + 1) as *mut c_void);
            let request =
                rd::rd_kafka_ListConsumerGroupOffsets_new(name.as_ptr(), std::ptr::null());
            let mut requests = [request];
            rd::rd_kafka_ListConsumerGroupOffsets(rk, requests.as_mut_ptr(), 1, options, queue);
            rd::rd_kafka_ListConsumerGroupOffsets_destroy(request);
            rd::rd_kafka_AdminOptions_destroy(options);
            submitted += 1;
        }
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        let mut received = 0usize;
        while received < submitted && Instant::now() < deadline {
            let ev = rd::rd_kafka_queue_poll(queue, 100);
            if ev.is_null() {
                continue;
            }
            received += 1;
            let i = (rd::rd_kafka_event_opaque(ev) as usize).wrapping_sub(1);
            let answer = if rd::rd_kafka_event_error(ev)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let why = rd::rd_kafka_event_error_string(ev);
                let why = if why.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(why).to_string_lossy().into_owned()
                };
                Err(why)
            } else {
                read_group_result(ev)
            };
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(
                    answer.map_err(|e| format!("offset fetch for group {} failed: {e}", groups[i])),
                );
            }
            rd::rd_kafka_event_destroy(ev);
        }
        rd::rd_kafka_queue_destroy(queue);
    }
    groups
        .iter()
        .zip(answers)
        .map(|(g, a)| {
            (
                g.clone(),
                a.unwrap_or_else(|| Err(format!("offset fetch for group {g} timed out"))),
            )
        })
        .collect()
}

/// The (single) group result of a ListConsumerGroupOffsets event.
///
/// # Safety
/// `ev` must be a live ListConsumerGroupOffsets result event.
unsafe fn read_group_result(ev: *mut rdkafka_sys::rd_kafka_event_t) -> Committed {
    use rdkafka_sys as rd;
    use std::ffi::CStr;
    let result = rd::rd_kafka_event_ListConsumerGroupOffsets_result(ev);
    if result.is_null() {
        return Err("not a group offsets result".to_owned());
    }
    let mut count = 0usize;
    let groups = rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count);
    if groups.is_null() || count == 0 {
        return Err("empty group offsets result".to_owned());
    }
    let group = *groups;
    let error = rd::rd_kafka_group_result_error(group);
    if !error.is_null() {
        let why = rd::rd_kafka_error_string(error);
        return Err(if why.is_null() {
            "unknown error".to_owned()
        } else {
            CStr::from_ptr(why).to_string_lossy().into_owned()
        });
    }
    let list = rd::rd_kafka_group_result_partitions(group);
    let mut out = BTreeMap::new();
    if list.is_null() {
        return Ok(out);
    }
    let cnt = usize::try_from((*list).cnt).unwrap_or(0);
    if cnt == 0 || (*list).elems.is_null() {
        return Ok(out);
    }
    for e in std::slice::from_raw_parts((*list).elems, cnt) {
        if e.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || e.topic.is_null() {
            continue;
        }
        let topic = CStr::from_ptr(e.topic).to_string_lossy().into_owned();
        out.insert((topic, e.partition), (e.offset >= 0).then_some(e.offset));
    }
    Ok(out)
}

/// The `__consumer_offsets` partition of a group's coordinator: Java's
/// `String.hashCode`, made non-negative the way Kafka does, modulo the partition count.
pub fn coordinator_partition(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Option<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(i64::from_be_bytes(a))
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len).and_then(|b| std::str::from_utf8(b).ok())
    }
    /// A nullable string (length −1 is null).
    fn nullable_str(&mut self) -> Option<Option<&'a str>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        let b = self.take(usize::try_from(len).ok()?)?;
        std::str::from_utf8(b).ok().map(Some)
    }
    /// A compact (flexible-version) nullable string: length + 1 as an unsigned varint.
    fn compact_str(&mut self) -> Option<Option<&'a str>> {
        let n = self.uvarint()?;
        if n == 0 {
            return Some(None);
        }
        let b = self.take(usize::try_from(n - 1).ok()?)?;
        std::str::from_utf8(b).ok().map(Some)
    }
    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }
}

/// Key of an offset-commit record in `__consumer_offsets` (key versions 0 and 1):
/// (group, topic, partition), borrowed from the key. Other record kinds give `None`.
pub fn offset_commit_key(key: &[u8]) -> Option<(&str, &str, i32)> {
    let mut r = Reader(key);
    match r.i16()? {
        0 | 1 => {}
        _ => return None,
    }
    let group = r.str()?;
    let topic = r.str()?;
    let partition = r.i32()?;
    Some((group, topic, partition))
}

/// [`offset_commit_key`] with owned strings.
pub fn parse_offset_commit_key(key: &[u8]) -> Option<(String, String, i32)> {
    offset_commit_key(key).map(|(g, t, p)| (g.to_owned(), t.to_owned(), p))
}

/// The value of an offset-commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub offset: i64,
    /// Leader epoch of the committed record (versions 3 and 4; −1 when unknown).
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    /// When the coordinator accepted the commit (ms).
    pub commit_timestamp_ms: i64,
    /// Version 1 only: when the offset was due to expire (ms).
    pub expire_timestamp_ms: Option<i64>,
}

/// Decodes an offset-commit value, versions 0 to 4:
///
/// | version | fields |
/// |---|---|
/// | 0, 2 | offset i64, metadata string, commit timestamp i64 |
/// | 1 | offset i64, metadata string, commit timestamp i64, expire timestamp i64 |
/// | 3 | offset i64, leader epoch i32, metadata string, commit timestamp i64 |
/// | 4 | as 3, flexible: compact metadata string, then tagged fields |
///
/// Unknown later versions give `None` (the record is skipped).
pub fn parse_offset_commit_value(value: &[u8]) -> Option<OffsetCommitValue> {
    let mut r = Reader(value);
    let version = r.i16()?;
    let offset = r.i64()?;
    let (leader_epoch, metadata) = match version {
        0..=2 => (-1, r.nullable_str()?),
        3 => (r.i32()?, r.nullable_str()?),
        4 => (r.i32()?, r.compact_str()?),
        _ => return None,
    };
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = if version == 1 { Some(r.i64()?) } else { None };
    Some(OffsetCommitValue {
        offset,
        leader_epoch,
        metadata: metadata.map(str::to_owned),
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

/// Partitions in a consumer-protocol member assignment
/// (version, [topic, [partition]], user data).
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<Tp>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let topic = r.string()?;
        let n = r.i32()?;
        for _ in 0..n.max(0) {
            out.push((topic.clone(), r.i32()?));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_partition_matches_java_hash() {
        // "hello".hashCode() == 99162322 in Java.
        assert_eq!(coordinator_partition("hello", 50), 99_162_322 % 50);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka maps it to 0.
        assert_eq!(coordinator_partition("polygenelubricants", 50), 0);
        assert_eq!(coordinator_partition("", 50), 0);
    }

    #[test]
    fn parses_commit_keys_and_assignments() {
        let mut key = vec![0, 1];
        for s in ["grp", "orders"] {
            key.extend((s.len() as i16).to_be_bytes());
            key.extend(s.as_bytes());
        }
        key.extend(7i32.to_be_bytes());
        assert_eq!(
            parse_offset_commit_key(&key),
            Some(("grp".into(), "orders".into(), 7))
        );
        assert_eq!(parse_offset_commit_key(&[0, 2, 0, 3, b'g']), None);
        assert_eq!(parse_offset_commit_key(&key[..5]), None);

        let mut a = vec![0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2];
        a.extend(0i32.to_be_bytes());
        a.extend(3i32.to_be_bytes());
        a.extend((-1i32).to_be_bytes()); // null user data
        assert_eq!(
            parse_assignment(&a),
            Some(vec![("t".into(), 0), ("t".into(), 3)])
        );
        assert_eq!(parse_assignment(&a[..9]), None);
    }

    fn value(version: i16, epoch: Option<i32>, metadata: &str, extra: &[i64]) -> Vec<u8> {
        let mut v = version.to_be_bytes().to_vec();
        v.extend(42i64.to_be_bytes());
        if let Some(e) = epoch {
            v.extend(e.to_be_bytes());
        }
        if version == 4 {
            v.push(metadata.len() as u8 + 1);
        } else {
            v.extend((metadata.len() as i16).to_be_bytes());
        }
        v.extend(metadata.as_bytes());
        for x in extra {
            v.extend(x.to_be_bytes());
        }
        if version == 4 {
            v.push(0); // no tagged fields
        }
        v
    }

    #[test]
    fn parses_offset_commit_values_of_every_version() {
        for version in [0, 2] {
            let c = parse_offset_commit_value(&value(version, None, "m", &[1_000])).expect("v0/v2");
            assert_eq!(
                (c.offset, c.leader_epoch, c.commit_timestamp_ms),
                (42, -1, 1_000)
            );
            assert_eq!(c.metadata.as_deref(), Some("m"));
        }
        let c = parse_offset_commit_value(&value(1, None, "", &[1_000, 2_000])).expect("v1");
        assert_eq!((c.offset, c.expire_timestamp_ms), (42, Some(2_000)));
        let c = parse_offset_commit_value(&value(3, Some(7), "meta", &[1_000])).expect("v3");
        assert_eq!(
            (c.offset, c.leader_epoch, c.commit_timestamp_ms),
            (42, 7, 1_000)
        );
        let c = parse_offset_commit_value(&value(4, Some(7), "meta", &[1_000])).expect("v4");
        assert_eq!(
            (c.offset, c.leader_epoch, c.commit_timestamp_ms),
            (42, 7, 1_000)
        );
        assert_eq!(c.metadata.as_deref(), Some("meta"));
        // Null metadata, truncated values and unknown versions.
        let mut null_meta = 3i16.to_be_bytes().to_vec();
        null_meta.extend(5i64.to_be_bytes());
        null_meta.extend((-1i32).to_be_bytes());
        null_meta.extend((-1i16).to_be_bytes());
        null_meta.extend(9i64.to_be_bytes());
        let c = parse_offset_commit_value(&null_meta).expect("null metadata");
        assert_eq!((c.offset, c.metadata), (5, None));
        assert_eq!(
            parse_offset_commit_value(&value(3, Some(7), "meta", &[])),
            None
        );
        assert_eq!(parse_offset_commit_value(&value(9, None, "", &[1])), None);
    }
}
