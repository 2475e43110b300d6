//! The Kafka side of the monitor: every request one poll cycle makes, batched.
//!
//! All calls here block (librdkafka is synchronous); the monitor runs them on the
//! blocking pool. Per cycle, for the whole cluster:
//!
//! - one metadata request (topics and partition counts);
//! - one ListGroups + DescribeGroups round (`fetch_group_list`): states, members and
//!   their assignments;
//! - one OffsetFetch per watched group, through a consumer configured with that
//!   `group.id` that never subscribes (so it never joins or disturbs the group); these
//!   run in parallel;
//! - two ListOffsets rounds (`offsets_for_times` with the latest and earliest
//!   sentinels), which librdkafka batches per partition leader;
//! - one assigned (group-less) fetch of the records at the committed offsets that are
//!   not cached yet, all partitions at once;
//! - a tail of the `__consumer_offsets` partitions that coordinate the watched groups,
//!   to see commits happen (how STALL is told apart from STOP).

use super::BacklogError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A (topic, partition) pair.
pub type Tp = (String, i32);

/// Committed offset per partition (`None`: no commit), or why the fetch failed.
pub type Committed = Result<BTreeMap<Tp, Option<i64>>, String>;

/// `group.id` of the monitor's own readers (never subscribed, never committing).
pub const READER_GROUP_ID: &str = "synclag-backlog-reader";

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A consumer group as the cluster describes it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub name: String,
    pub state: String,
    pub members: usize,
    /// Partitions owned by active members (from the consumer protocol assignment).
    pub owned: BTreeSet<Tp>,
}

/// What reading the record at a committed offset gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The first record at or after the requested offset, with its timestamp (ms).
    Found { offset: i64, timestamp_ms: i64 },
    /// Nothing readable at or after the requested offset (or no timestamp).
    Missing,
}

/// Kafka clients of the monitor, created once and reused across cycles.
pub struct Probe {
    base: ClientConfig,
    timeout: Duration,
    /// Metadata, group list, ListOffsets.
    admin: BaseConsumer,
    /// Group-less consumer that reads single records by assignment.
    reader: Mutex<BaseConsumer>,
    /// One unsubscribed consumer per watched group, for OffsetFetch.
    group_clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    commit_log: Mutex<CommitLog>,
}

impl Probe {
    /// Creates the shared clients. `properties` win over synclag's defaults; the values
    /// the monitor depends on are fixed (see `config::kafka`).
    pub fn new(
        bootstrap_servers: &str,
        properties: &BTreeMap<String, String>,
        timeout: Duration,
        read_commit_log: bool,
    ) -> Result<Probe, BacklogError> {
        use crate::config::kafka::{client_config, Client};
        let base = client_config(Client::Admin, bootstrap_servers, properties);
        let admin = group_less(&base).create().map_err(BacklogError::Client)?;
        let reader = group_less(&client_config(
            Client::BacklogReader,
            bootstrap_servers,
            properties,
        ))
        .create()
        .map_err(BacklogError::Client)?;
        let tail: BaseConsumer = group_less(&client_config(
            Client::CommitLogTail,
            bootstrap_servers,
            properties,
        ))
        .create()
        .map_err(BacklogError::Client)?;
        Ok(Probe {
            base,
            timeout,
            admin,
            reader: Mutex::new(reader),
            group_clients: Mutex::new(HashMap::new()),
            commit_log: Mutex::new(CommitLog::new(tail, read_commit_log)),
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
                let mut owned = BTreeSet::new();
                if g.protocol_type() == "consumer" {
                    for m in g.members() {
                        if let Some(bytes) = m.assignment() {
                            owned.extend(parse_assignment(bytes).unwrap_or_default());
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

    /// Committed offsets of several groups, one OffsetFetch each, in parallel. For each
    /// group: the (topic, partition) → committed offset (`None`: no commit), or why not.
    pub fn committed(
        &self,
        queries: Vec<(String, Vec<(String, i32)>)>,
    ) -> Vec<(String, Committed)> {
        const PARALLEL: usize = 8;
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(PARALLEL) {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(group, topics)| {
                        scope.spawn(move || (group.clone(), self.committed_one(group, topics)))
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(r) => out.push(r),
                        Err(_) => {
                            tracing::error!("offset fetch worker panicked");
                        }
                    }
                }
            });
        }
        out
    }

    fn committed_one(&self, group: &str, topics: &[(String, i32)]) -> Committed {
        let client = self.group_client(group).map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                tpl.add_partition(topic, p);
            }
        }
        if tpl.count() == 0 {
            return Ok(BTreeMap::new());
        }
        let res = client
            .committed_offsets(tpl, self.timeout)
            .map_err(|e| format!("offset fetch for group {group} failed: {e}"))?;
        let mut out = BTreeMap::new();
        for e in res.elements() {
            if e.error().is_err() {
                continue;
            }
            let committed = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            out.insert((e.topic().to_owned(), e.partition()), committed);
        }
        Ok(out)
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, BacklogError> {
        let mut clients = self
            .group_clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(group) {
            return Ok(c.clone());
        }
        let client: BaseConsumer = self
            .base
            .clone()
            // `base` never commits (see config::kafka); only the group differs.
            .set("group.id", group)
            .create()
            .map_err(BacklogError::Client)?;
        let client = Arc::new(client);
        clients.insert(group.to_owned(), client.clone());
        Ok(client)
    }

    /// Closes the clients of groups that are no longer watched or no longer exist.
    pub fn retain_groups(&self, keep: &HashSet<String>) {
        let mut clients = self
            .group_clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        clients.retain(|g, _| keep.contains(g));
    }

    /// Log-end (`latest == true`) or log-start offsets of many partitions, batched per
    /// leader. Partitions whose offset could not be read are absent.
    pub fn log_offsets(&self, tps: &[Tp], latest: bool) -> Result<HashMap<Tp, i64>, String> {
        let mut tpl = TopicPartitionList::with_capacity(tps.len());
        let sentinel = if latest {
            Offset::End
        } else {
            Offset::Beginning
        };
        for (t, p) in tps {
            tpl.add_partition_offset(t, *p, sentinel)
                .map_err(|e| e.to_string())?;
        }
        if tps.is_empty() {
            return Ok(HashMap::new());
        }
        let res = self
            .admin
            .offsets_for_times(tpl, self.timeout)
            .map_err(|e| format!("list offsets failed: {e}"))?;
        Ok(res
            .elements()
            .iter()
            .filter(|e| e.error().is_ok())
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
                _ => None,
            })
            .collect())
    }

    /// Reads the first record at or after each requested offset. One assignment per
    /// round; a round holds each partition at most once.
    pub fn read_records(
        &self,
        requests: &[(String, i32, i64)],
    ) -> HashMap<(String, i32, i64), ReadOutcome> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = HashMap::new();
        let mut rounds: Vec<Vec<&(String, i32, i64)>> = Vec::new();
        let mut round_of: HashMap<(&str, i32), usize> = HashMap::new();
        for r in requests {
            let n = round_of.entry((r.0.as_str(), r.1)).or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push(r);
            *n += 1;
        }
        for round in rounds {
            self.read_round(&reader, &round, &mut out);
        }
        out
    }

    fn read_round(
        &self,
        reader: &BaseConsumer,
        round: &[&(String, i32, i64)],
        out: &mut HashMap<(String, i32, i64), ReadOutcome>,
    ) {
        let mut tpl = TopicPartitionList::with_capacity(round.len());
        let mut pending: HashMap<Tp, i64> = HashMap::new();
        for (t, p, o) in round.iter().map(|r| (&r.0, r.1, r.2)) {
            if tpl.add_partition_offset(t, p, Offset::Offset(o)).is_ok() {
                pending.insert((t.clone(), p), o);
            }
        }
        if let Err(e) = reader.assign(&tpl) {
            tracing::warn!(error = %e, "cannot assign partitions to read committed records");
            return;
        }
        // Without progress for this long the remaining partitions count as unreadable.
        let idle_limit = self.timeout.min(Duration::from_secs(3));
        let mut last_progress = Instant::now();
        while !pending.is_empty() && last_progress.elapsed() < idle_limit {
            match reader.poll(Duration::from_millis(50)) {
                None => {}
                Some(Ok(msg)) => {
                    let key = (msg.topic().to_owned(), msg.partition());
                    if let Some(&wanted) = pending.get(&key) {
                        if msg.offset() >= wanted {
                            let outcome = match msg.timestamp().to_millis() {
                                Some(ts) => ReadOutcome::Found {
                                    offset: msg.offset(),
                                    timestamp_ms: ts,
                                },
                                None => ReadOutcome::Missing,
                            };
                            pending.remove(&key);
                            out.insert((key.0, key.1, wanted), outcome);
                            last_progress = Instant::now();
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // The EOF names only the partition; settle it when unambiguous.
                    let hits: Vec<Tp> = pending.keys().filter(|k| k.1 == p).cloned().collect();
                    if let [only] = hits.as_slice() {
                        if let Some(wanted) = pending.remove(only) {
                            out.insert((only.0.clone(), only.1, wanted), ReadOutcome::Missing);
                            last_progress = Instant::now();
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "error while reading committed records");
                }
            }
        }
        for ((t, p), o) in pending {
            out.insert((t, p, o), ReadOutcome::Missing);
        }
        let _ = reader.unassign();
    }

    /// Commits written since the previous call for the given groups:
    /// (group, topic, partition) → commit time (ms). `None` when the commit log cannot be
    /// read (not permitted, or disabled).
    pub fn drain_commits(&self, groups: &HashSet<String>) -> Option<HashMap<(String, Tp), i64>> {
        let mut log = self
            .commit_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.drain(&self.admin, groups, self.timeout)
    }
}

/// Clients that never join a group or commit. librdkafka only allows `assign()` on a
/// consumer with a `group.id`, so the readers get a fixed one; with no subscription and
/// no commits it never becomes a group the cluster lists.
fn group_less(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", READER_GROUP_ID);
    c
}

/// Tails the `__consumer_offsets` partitions of the watched groups' coordinators.
struct CommitLog {
    consumer: BaseConsumer,
    enabled: bool,
    partitions: Option<i32>,
    /// Assigned partition → next offset to read.
    next: BTreeMap<i32, i64>,
    /// Whether the last drain failed (the failure is logged once per change, not per cycle).
    failing: bool,
}

impl CommitLog {
    fn new(consumer: BaseConsumer, enabled: bool) -> CommitLog {
        CommitLog {
            consumer,
            enabled,
            partitions: None,
            next: BTreeMap::new(),
            failing: false,
        }
    }

    fn drain(
        &mut self,
        admin: &BaseConsumer,
        groups: &HashSet<String>,
        timeout: Duration,
    ) -> Option<HashMap<(String, Tp), i64>> {
        if !self.enabled {
            return None;
        }
        match self.try_drain(admin, groups, timeout) {
            Ok(seen) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("commit log readable again");
                }
                Some(seen)
            }
            Err(e) if self.failing => {
                tracing::debug!(error = %e, "commit log still unreadable");
                None
            }
            Err(e) => {
                self.failing = true;
                tracing::warn!(error = %e, "commit log unreadable; STALL/STOP fall back to group membership until it is readable again");
                None
            }
        }
    }

    fn try_drain(
        &mut self,
        admin: &BaseConsumer,
        groups: &HashSet<String>,
        timeout: Duration,
    ) -> Result<HashMap<(String, Tp), i64>, String> {
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
        let wanted: BTreeSet<i32> = groups.iter().map(|g| coordinator_partition(g, n)).collect();
        let tps: Vec<Tp> = wanted
            .iter()
            .map(|&p| (OFFSETS_TOPIC.to_owned(), p))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &tps {
            tpl.add_partition_offset(t, *p, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        let ends: HashMap<i32, i64> = if tps.is_empty() {
            HashMap::new()
        } else {
            admin
                .offsets_for_times(tpl, timeout)
                .map_err(|e| e.to_string())?
                .elements()
                .iter()
                .filter(|e| e.error().is_ok())
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        };
        // Newly needed partitions start at their current end: earlier commits are history.
        let before = self.next.len();
        self.next.retain(|p, _| wanted.contains(p));
        let mut changed = self.next.len() != before;
        for p in &wanted {
            if !self.next.contains_key(p) {
                if let Some(&end) = ends.get(p) {
                    self.next.insert(*p, end);
                    changed = true;
                }
            }
        }
        if changed {
            let mut assign = TopicPartitionList::new();
            for (p, o) in &self.next {
                assign
                    .add_partition_offset(OFFSETS_TOPIC, *p, Offset::Offset(*o))
                    .map_err(|e| e.to_string())?;
            }
            self.consumer.assign(&assign).map_err(|e| e.to_string())?;
        }
        let mut seen = HashMap::new();
        let behind = |next: &BTreeMap<i32, i64>| {
            next.iter()
                .any(|(p, o)| ends.get(p).is_some_and(|end| o < end))
        };
        let deadline = Instant::now() + timeout.min(Duration::from_secs(5));
        while behind(&self.next) && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                None => {
                    // Control records are never delivered; the position still moves past them.
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
                Some(Ok(msg)) => {
                    if let Some(next) = self.next.get_mut(&msg.partition()) {
                        *next = (*next).max(msg.offset() + 1);
                    }
                    if msg.payload().is_none() {
                        continue; // tombstone: an offset deleted, not committed
                    }
                    let Some(key) = msg.key().and_then(parse_offset_commit_key) else {
                        continue;
                    };
                    if groups.contains(&key.0) {
                        let ts = msg.timestamp().to_millis().unwrap_or(0);
                        let slot = seen.entry((key.0, (key.1, key.2))).or_insert(ts);
                        *slot = (*slot).max(ts);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        Ok(seen)
    }
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
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }
}

/// Key of an offset-commit record in `__consumer_offsets` (key versions 0 and 1):
/// (group, topic, partition). Other record kinds give `None`.
pub fn parse_offset_commit_key(key: &[u8]) -> Option<(String, String, i32)> {
    let mut r = Reader(key);
    match r.i16()? {
        0 | 1 => {}
        _ => return None,
    }
    let group = r.string()?;
    let topic = r.string()?;
    let partition = r.i32()?;
    Some((group, topic, partition))
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
}
