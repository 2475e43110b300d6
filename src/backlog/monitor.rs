//! The monitor: one poll cycle turns what [`Probe`] reads into a [`BacklogReport`],
//! keeping the small state the status and the time lag need between cycles.
//!
//! Sized for a whole cluster (10,000 partitions × 100 groups = 1,000,000 rows): per row
//! the monitor keeps 11 bytes of window state ([`Ages`]) and the report 14 bytes of
//! columns; committed offsets are 8 bytes a row in the commit-log state. Per partition
//! (not per row) it keeps the interpolation samples and the records read at committed
//! offsets. Nothing is hashed per row: rows are walked topic by topic.

use super::leader::Election;
use super::probe::{GroupInfo, Probe, ReadOutcome, ReadRequest, TopicCommits};
use super::report::{
    flag, pack, BacklogReport, GroupRows, GroupSummary, ResetPolicy, TopicOffsets, NONE,
};
use super::status::{Ages, Observation, Previous, Status};
use super::timeline::{age_seconds, Method, Timeline};
use super::{BacklogError, BacklogHandle, Clock, EventSink, SystemClock};
use crate::config::{GroupSelector, Registry, Topology};
use crate::telemetry::names;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Everything the monitor needs; [`MonitorConfig::from_topology`] fills it from
/// `topology.yaml`, tests and tools build it directly.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub bootstrap_servers: String,
    /// librdkafka properties, passed through (SASL, TLS, …).
    pub properties: BTreeMap<String, String>,
    /// Which groups to watch: exact names or patterns matched against the cluster's list.
    pub groups: Vec<GroupSelector>,
    /// Time between cycles in [`BacklogMonitor::run`].
    pub interval: Duration,
    /// Observations in the status window (2 to 250).
    pub window: usize,
    /// Reset policy per group, first match wins; groups matching none use `latest`.
    pub reset_policies: Vec<(GroupSelector, ResetPolicy)>,
    /// Timeout of each Kafka request.
    pub request_timeout: Duration,
    /// At most this many records are read at committed offsets per cycle; the rest are
    /// interpolated and read in later cycles. Bounds the cost of a cold start.
    pub max_record_reads: usize,
    /// A partition that yields no wanted record for this long is given up for the cycle
    /// (its time lag is interpolated).
    pub record_wait: Duration,
    /// Read `__consumer_offsets`: the committed offsets of every group at once, and the
    /// commits themselves (tells STALL from STOP exactly).
    pub read_commit_log: bool,
    /// Time one cycle may spend reading the commit log (the first cycle reads it from
    /// its beginning); until it has reached its end, offsets come from the admin API.
    pub commit_log_budget: Duration,
    /// Sampled (offset, time) points kept per partition for interpolation.
    pub timeline_points: usize,
    /// Topic of the periodic `synclag.backlog` events.
    pub backlog_topic: String,
    /// Register the event schema here and publish Avro; JSON without one.
    pub registry: Option<Registry>,
    /// With several instances, only the one elected here runs the monitor; `None`: this
    /// instance always does.
    pub election: Option<Election>,
}

impl MonitorConfig {
    /// Defaults for everything the topology does not say.
    pub fn new(bootstrap_servers: impl Into<String>, groups: Vec<GroupSelector>) -> Self {
        MonitorConfig {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            groups,
            interval: Duration::from_secs(30),
            window: 10,
            reset_policies: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_record_reads: 100_000,
            record_wait: Duration::from_secs(3),
            read_commit_log: true,
            commit_log_budget: Duration::from_secs(30),
            timeline_points: 64,
            backlog_topic: "synclag.backlog".into(),
            registry: None,
            election: None,
        }
    }

    pub fn from_topology(topology: &Topology) -> Self {
        let mut c = MonitorConfig::new(
            topology.kafka.bootstrap_servers.clone(),
            topology.backlog.groups.clone(),
        );
        c.properties = topology.kafka.properties.clone();
        c.interval = topology.backlog.interval;
        c.window = topology.backlog.window;
        c.reset_policies = topology.backlog.reset.clone();
        c.backlog_topic = topology.outputs.backlog_topic.clone();
        c.registry = topology.registry.clone();
        c.election = Some(Election::from_topology(topology));
        c
    }

    fn reset_policy(&self, group: &str) -> ResetPolicy {
        self.reset_policies
            .iter()
            .find(|(sel, _)| sel.matches(group))
            .map(|(_, p)| *p)
            .unwrap_or_default()
    }
}

/// Per watched group, between cycles.
#[derive(Debug, Default)]
struct GroupState {
    /// Topics with commits at the last answered per-group query (measured again while
    /// the group's offsets cannot be read, so its partitions show ERR).
    topics: BTreeSet<String>,
    /// Window state of each row of the group's rows in the last report (same order).
    ages: Vec<Ages>,
}

/// Per partition of a measured topic, between cycles.
#[derive(Debug)]
struct PartitionState {
    timeline: Timeline,
    last_end: Option<i64>,
    /// Records read at wanted offsets, sorted by wanted offset; only offsets that are
    /// some group's position are kept.
    records: Vec<(i64, ReadOutcome)>,
}

/// The bounds a cycle can hit; each is counted in `synclag_backlog_bound_hits_total`.
pub const BOUNDS: [&str; 3] = ["max_record_reads", "record_wait", "commit_log_budget"];

/// The blocking part: clients and state, driven one cycle at a time.
struct Engine {
    config: MonitorConfig,
    probe: Probe,
    clock: Arc<dyn Clock>,
    cycle: u64,
    groups: HashMap<String, GroupState>,
    partitions: HashMap<Arc<str>, Vec<PartitionState>>,
    /// Interned topic names.
    names: HashSet<Arc<str>>,
    last: Arc<BacklogReport>,
}

/// A per-group query's answer: topic → committed offsets by partition ([`NONE`]: none).
type FetchedOffsets = Result<HashMap<Arc<str>, Vec<i64>>, String>;

/// Topics and their partition counts.
type TopicList = Vec<(Arc<str>, usize)>;

/// Committed offsets of one group this cycle.
enum Commits<'a> {
    /// From the commit log (with commit evidence).
    Log(Option<&'a HashMap<Arc<str>, TopicCommits>>),
    /// From a per-group query: topic → offsets by partition ([`NONE`]: none).
    Fetched(&'a FetchedOffsets),
}

impl Commits<'_> {
    fn topics(&self) -> Vec<Arc<str>> {
        match self {
            Commits::Log(None) | Commits::Fetched(Err(_)) => Vec::new(),
            Commits::Log(Some(m)) => m
                .iter()
                .filter(|(_, c)| c.has_commits())
                .map(|(t, _)| t.clone())
                .collect(),
            Commits::Fetched(Ok(m)) => m
                .iter()
                .filter(|(_, v)| v.iter().any(|&o| o != NONE))
                .map(|(t, _)| t.clone())
                .collect(),
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            Commits::Fetched(Err(e)) => Some(e.as_str()),
            _ => None,
        }
    }

    /// (committed offset by partition, commit seen by partition) of one topic.
    fn topic(&self, topic: &str) -> TopicView<'_> {
        match self {
            Commits::Log(Some(m)) => TopicView::Log(m.get(topic)),
            Commits::Fetched(Ok(m)) => TopicView::Fetched(m.get(topic)),
            _ => TopicView::Fetched(None),
        }
    }
}

enum TopicView<'a> {
    Log(Option<&'a TopicCommits>),
    Fetched(Option<&'a Vec<i64>>),
}

impl TopicView<'_> {
    fn committed(&self, p: usize) -> Option<i64> {
        match self {
            TopicView::Log(t) => t.and_then(|t| t.offset(p)),
            TopicView::Fetched(v) => v.and_then(|v| v.get(p).copied()).filter(|&o| o != NONE),
        }
    }
    fn seen(&self, p: usize) -> bool {
        match self {
            TopicView::Log(t) => t.is_some_and(|t| t.seen(p)),
            TopicView::Fetched(_) => false,
        }
    }
}

/// The position of a row and whether it is readable; shared by both passes of a cycle.
fn position(
    committed: Option<i64>,
    error: bool,
    start: Option<i64>,
    end: Option<i64>,
    reset: ResetPolicy,
) -> Option<i64> {
    if error || start.is_none() || end.is_none() {
        return None;
    }
    committed.or(match reset {
        ResetPolicy::Latest => end,
        ResetPolicy::Earliest => start,
    })
}

impl Engine {
    fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        names.insert(n.clone());
        n
    }

    fn cycle(&mut self, handle: &BacklogHandle) -> Result<Arc<BacklogReport>, BacklogError> {
        let started = Instant::now();
        let now_ms = self.clock.now_ms();
        self.cycle += 1;
        let cycle = self.cycle;

        let topics_md = self.probe.topics()?;
        let cluster_groups = self.probe.groups()?;
        let topics: HashMap<Arc<str>, usize> = topics_md
            .iter()
            .map(|(t, &n)| {
                (
                    Engine::intern(&mut self.names, t),
                    usize::try_from(n).unwrap_or(0),
                )
            })
            .collect();
        self.names.retain(|n| topics.contains_key(n));

        // Which groups to watch this cycle.
        let selectors = self.config.groups.clone();
        let watched: BTreeMap<String, GroupInfo> = cluster_groups
            .into_iter()
            .filter(|g| g.state != "Dead" && selectors.iter().any(|s| s.matches(&g.name)))
            .map(|g| (g.name.clone(), g))
            .collect();
        let missing_groups: Vec<String> = selectors
            .iter()
            .filter_map(|s| match s {
                GroupSelector::Name(n) if !watched.contains_key(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        self.groups.retain(|g, _| watched.contains_key(g));

        // Commits written since the last cycle (before the log ends, so none is missed).
        let drain = {
            let names = &mut self.names;
            let mut intern = |t: &str| {
                (
                    Engine::intern(names, t),
                    topics.get(t).copied().unwrap_or(0),
                )
            };
            let watch = |g: &str| selectors.iter().any(|s| s.matches(g));
            let admin_timeout = self.config.request_timeout;
            let Probe {
                commit_log, admin, ..
            } = &mut self.probe;
            commit_log.drain(admin, admin_timeout, &watch, &mut intern)
        };
        if drain.readable && !drain.complete {
            metrics::counter!(names::BACKLOG_BOUND_HITS, "bound" => "commit_log_budget")
                .increment(1);
        }

        // Without a complete commit log: the admin API, every group at once.
        let mut fetched: HashMap<String, FetchedOffsets> = HashMap::new();
        if !drain.complete {
            let names: Vec<String> = watched.keys().cloned().collect();
            for (name, result) in self.probe.committed(&names) {
                let converted = result.map(|map| {
                    let mut out: HashMap<Arc<str>, Vec<i64>> = HashMap::new();
                    for ((t, p), c) in map {
                        let Some(n) = topics.get(t.as_str()) else {
                            continue;
                        };
                        let v = out
                            .entry(Engine::intern(&mut self.names, &t))
                            .or_insert_with(|| vec![NONE; *n]);
                        if let (Some(slot), Some(c)) =
                            (usize::try_from(p).ok().and_then(|p| v.get_mut(p)), c)
                        {
                            *slot = c;
                        }
                    }
                    out
                });
                if let Ok(map) = &converted {
                    self.groups.entry(name.clone()).or_default().topics = map
                        .iter()
                        .filter(|(_, v)| v.iter().any(|&o| o != NONE))
                        .map(|(t, _)| t.to_string())
                        .collect();
                }
                fetched.insert(name, converted);
            }
        }
        let commits_of = |name: &str| -> Commits<'_> {
            if drain.complete {
                Commits::Log(self.probe.commit_log.group(name))
            } else {
                match fetched.get(name) {
                    Some(r) => Commits::Fetched(r),
                    None => Commits::Log(None),
                }
            }
        };

        // The topics each group is measured on: every topic it has a commit on or is
        // assigned (and, when its offsets are unreadable, the last known ones).
        let mut layout: Vec<(String, TopicList)> = Vec::new();
        let mut measured: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for (name, info) in &watched {
            let commits = commits_of(name);
            let mut set: BTreeSet<Arc<str>> = commits.topics().into_iter().collect();
            for t in info.owned.keys() {
                if let Some((k, _)) = topics.get_key_value(t.as_str()) {
                    set.insert(k.clone());
                }
            }
            if commits.error().is_some() {
                if let Some(state) = self.groups.get(name) {
                    for t in &state.topics {
                        if let Some((k, _)) = topics.get_key_value(t.as_str()) {
                            set.insert(k.clone());
                        }
                    }
                }
            }
            let list: Vec<(Arc<str>, usize)> = set
                .into_iter()
                .filter_map(|t| topics.get(&t).map(|&n| (t, n)))
                .collect();
            for (t, n) in &list {
                measured.insert(t.clone(), *n);
            }
            layout.push((name.clone(), list));
        }

        // Log start and end of every measured partition: one ListOffsets round each.
        let measured_list: Vec<(Arc<str>, usize)> =
            measured.iter().map(|(t, n)| (t.clone(), *n)).collect();
        let ends = self
            .probe
            .log_offsets(&measured_list, true)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "log-end offsets unreadable");
                HashMap::new()
            });
        let starts = self
            .probe
            .log_offsets(&measured_list, false)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "log-start offsets unreadable");
                HashMap::new()
            });
        let mut offsets: HashMap<Arc<str>, TopicOffsets> =
            HashMap::with_capacity(measured_list.len());
        for (t, n) in &measured_list {
            let end = ends.get(t).cloned().unwrap_or_else(|| vec![NONE; *n]);
            let start = starts.get(t).cloned().unwrap_or_else(|| vec![NONE; *n]);
            offsets.insert(t.clone(), TopicOffsets { start, end });
        }
        drop(ends);
        drop(starts);
        self.partitions.retain(|t, _| measured.contains_key(t));
        for (t, n) in &measured_list {
            let points = self.config.timeline_points;
            let parts = self.partitions.entry(t.clone()).or_default();
            parts.truncate(*n);
            while parts.len() < *n {
                parts.push(PartitionState {
                    timeline: Timeline::new(points),
                    last_end: None,
                    records: Vec::new(),
                });
            }
            let Some(o) = offsets.get(t) else { continue };
            for (p, part) in parts.iter_mut().enumerate() {
                if let (_, Some(end)) = o.get(p) {
                    if part.last_end.is_some_and(|prev| end < prev) {
                        // Truncated or recreated: samples and records above are stale.
                        part.timeline.forget_from(end);
                        part.records.clear();
                    }
                    part.last_end = Some(end);
                    part.timeline.log_end(end, now_ms);
                }
            }
        }

        // Which records at positions are wanted: per partition, sorted and distinct.
        let mut wanted: HashMap<Arc<str>, Vec<Vec<i64>>> = HashMap::new();
        for (name, list) in &layout {
            let commits = commits_of(name);
            let error = commits.error().is_some();
            let reset = self.config.reset_policy(name);
            for (t, n) in list {
                let view = commits.topic(t);
                let Some(o) = offsets.get(t) else { continue };
                let w = wanted
                    .entry(t.clone())
                    .or_insert_with(|| vec![Vec::new(); *n]);
                for (p, slot) in w.iter_mut().enumerate().take(*n) {
                    let (start, end) = o.get(p);
                    let pos = position(view.committed(p), error, start, end, reset);
                    if let (Some(pos), Some(start), Some(end)) = (pos, start, end) {
                        if pos < end {
                            // Retention deleted the committed record: the oldest one left
                            // becomes a sample, so the estimate is a tight lower bound.
                            let at = pos.max(start);
                            if let Err(i) = slot.binary_search(&at) {
                                slot.insert(i, at);
                            }
                        }
                    }
                }
            }
        }
        let mut requests: Vec<ReadRequest> = Vec::new();
        let mut budget = self.config.max_record_reads;
        let mut deferred = 0usize;
        for (t, parts) in self.partitions.iter_mut() {
            let w = wanted.get(t);
            for (p, part) in parts.iter_mut().enumerate() {
                let empty = Vec::new();
                let want = w.and_then(|w| w.get(p)).unwrap_or(&empty);
                part.records.retain(|(o, _)| want.binary_search(o).is_ok());
                let missing: Vec<i64> = want
                    .iter()
                    .copied()
                    .filter(|o| part.records.binary_search_by_key(o, |r| r.0).is_err())
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let take = missing.len().min(budget);
                deferred += missing.len() - take;
                budget -= take;
                if take > 0 {
                    let end = offsets.get(t).and_then(|o| o.get(p).1).unwrap_or(0);
                    requests.push(ReadRequest {
                        topic: t.clone(),
                        partition: p as i32,
                        offsets: missing[..take].to_vec(),
                        end,
                    });
                }
            }
        }
        drop(wanted);
        if deferred > 0 {
            metrics::counter!(names::BACKLOG_BOUND_HITS, "bound" => "max_record_reads")
                .increment(1);
        }
        let records_read: usize = requests.iter().map(|r| r.offsets.len()).sum();
        if !requests.is_empty() {
            let read = self.probe.read_records(requests, self.config.record_wait);
            if read.timed_out > 0 {
                metrics::counter!(names::BACKLOG_BOUND_HITS, "bound" => "record_wait").increment(1);
            }
            for (t, p, wanted_at, outcome) in read.outcomes {
                let Some(part) = self
                    .partitions
                    .get_mut(&t)
                    .and_then(|v| usize::try_from(p).ok().and_then(|p| v.get_mut(p)))
                else {
                    continue;
                };
                if let ReadOutcome::Found {
                    offset,
                    timestamp_ms,
                } = outcome
                {
                    part.timeline.record(offset, timestamp_ms);
                }
                match part.records.binary_search_by_key(&wanted_at, |r| r.0) {
                    Ok(i) => part.records[i].1 = outcome,
                    Err(i) => part.records.insert(i, (wanted_at, outcome)),
                }
            }
        }

        // Rows, observations and statuses, group by group.
        let window = self.config.window;
        let evidence = drain.readable;
        let offsets = Arc::new(offsets);
        // The previous report is taken apart: each group's old rows live only until its
        // new rows are published (readers holding an older snapshot keep theirs).
        let previous = std::mem::take(&mut self.last);
        let header = |p: &BacklogReport| BacklogReport {
            cycle: p.cycle,
            observed_at_ms: p.observed_at_ms,
            cycle_duration_seconds: p.cycle_duration_seconds,
            commit_log: p.commit_log,
            records_read: p.records_read,
            missing_groups: p.missing_groups.clone(),
            leader: true,
            groups: Vec::new(),
        };
        let partial_header = header(&previous);
        let mut old_groups: HashMap<String, Arc<GroupRows>> = previous
            .groups
            .iter()
            .map(|g| (g.summary.group.clone(), g.clone()))
            .collect();
        drop(previous);
        let order: Vec<String> = layout.iter().map(|(n, _)| n.clone()).collect();
        let mut groups: Vec<Arc<GroupRows>> = Vec::with_capacity(layout.len());
        for (name, list) in layout {
            let Some(info) = watched.get(&name) else {
                continue;
            };
            let commits = commits_of(&name);
            let group_error = commits.error().map(str::to_owned);
            let reset = self.config.reset_policy(&name);
            let state = self.groups.entry(name.clone()).or_default();
            let old_arc = old_groups.remove(&name);
            let old = old_arc.as_deref();
            let old_topics: HashMap<&str, (usize, usize)> = old
                .map(|g| {
                    g.topics
                        .iter()
                        .map(|(t, first, n)| (&**t, (*first, *n)))
                        .collect()
                })
                .unwrap_or_default();
            let rows: usize = list.iter().map(|(_, n)| n).sum();
            let mut out = GroupRows {
                summary: GroupSummary {
                    group: name.clone(),
                    state: info.state.clone(),
                    members: info.members,
                    reset_policy: reset,
                    status: Status::Ok,
                    offset_lag: 0,
                    max_time_lag_seconds: None,
                    uncommitted_partitions: 0,
                    error: group_error.clone(),
                },
                topics: Vec::with_capacity(list.len()),
                offsets: offsets.clone(),
                position: Vec::with_capacity(rows),
                time_lag: Vec::with_capacity(rows),
                flags: Vec::with_capacity(rows),
            };
            let mut worst = Status::Ok;
            let mut new_ages: Vec<Ages> = Vec::with_capacity(rows);
            for (t, n) in list {
                let first = out.flags.len();
                out.topics.push((t.clone(), first, n));
                let view = commits.topic(&t);
                let o = offsets.get(&t);
                let parts = self.partitions.get(&t);
                let owned = info.owned.get(&*t);
                let prev_rows = old_topics.get(&*t).copied();
                let prev_offsets = old.and_then(|g| g.offsets.get(&t));
                for p in 0..n {
                    // Window state is only valid together with the previous rows.
                    let mut age = prev_rows
                        .filter(|(_, pn)| p < *pn)
                        .and_then(|(pf, _)| state.ages.get(pf + p).copied())
                        .unwrap_or_default();
                    let (start, end) = o.map(|o| o.get(p)).unwrap_or((None, None));
                    let committed = view.committed(p);
                    let pos = position(committed, group_error.is_some(), start, end, reset);
                    let lag = pos.zip(end).map(|(pos, end)| (end - pos).max(0));
                    let (time_lag, method) = match (lag, pos) {
                        (Some(0), _) => (Some(0.0), Method::None),
                        (Some(_), Some(pos)) => {
                            let part = parts.and_then(|v| v.get(p));
                            let at = pos.max(start.unwrap_or(pos));
                            let read = part.and_then(|part| {
                                part.records
                                    .binary_search_by_key(&at, |r| r.0)
                                    .ok()
                                    .map(|i| part.records[i].1)
                            });
                            match read {
                                Some(ReadOutcome::Found {
                                    offset,
                                    timestamp_ms,
                                }) if offset == pos => {
                                    (Some(age_seconds(now_ms, timestamp_ms)), Method::Record)
                                }
                                _ => match part.and_then(|part| part.timeline.estimate(pos)) {
                                    Some(ts) => {
                                        (Some(age_seconds(now_ms, ts)), Method::Interpolated)
                                    }
                                    None => (None, Method::None),
                                },
                            }
                        }
                        _ => (None, Method::None),
                    };
                    let is_owned = owned.is_some_and(|s| s.contains(&(p as i32)));
                    let previous = match prev_rows.filter(|(_, pn)| p < *pn) {
                        Some((pf, _)) => old.map_or(Previous::default(), |g| {
                            let row = pf + p;
                            let known = Some(g.position[row]).filter(|&x| x != NONE);
                            let readable = g.flags[row] & flag::READABLE != 0;
                            let prev_end = prev_offsets.and_then(|o| o.get(p).1);
                            Previous {
                                known_position: known,
                                lag: known
                                    .zip(prev_end)
                                    .filter(|_| readable)
                                    .map(|(k, e)| (e - k).max(0)),
                            }
                        }),
                        None => Previous::default(),
                    };
                    let obs = Observation {
                        position: pos,
                        lag,
                        commit_seen: evidence.then(|| view.seen(p)),
                        owned: is_owned,
                    };
                    age.push(obs, previous);
                    let status = age.status(&obs, window);
                    worst = Status::worst([worst, status]);
                    let no_commit = committed.is_none() && pos.is_some();
                    if let Some(l) = lag {
                        out.summary.offset_lag += l;
                    }
                    if let Some(secs) = time_lag {
                        let m = out.summary.max_time_lag_seconds.get_or_insert(secs);
                        *m = m.max(secs);
                    }
                    if no_commit {
                        out.summary.uncommitted_partitions += 1;
                    }
                    out.position
                        .push(pos.or(previous.known_position).unwrap_or(NONE));
                    out.time_lag.push(time_lag.map_or(f32::NAN, |s| s as f32));
                    out.flags
                        .push(pack(status, method, no_commit, is_owned, pos.is_some()));
                    new_ages.push(age);
                }
            }
            state.ages = new_ages;
            out.summary.status = worst;
            groups.push(Arc::new(out));
            drop(old_topics);
            // Publish what is new so far; the group's old rows go now.
            let mut partial = header(&partial_header);
            partial.groups = groups.clone();
            partial.groups.extend(
                order[groups.len()..]
                    .iter()
                    .filter_map(|n| old_groups.get(n).cloned()),
            );
            handle.publish(Arc::new(partial));
            drop(old_arc);
        }
        drop(old_groups);
        self.probe.commit_log.clear_seen();

        let duration = started.elapsed().as_secs_f64();
        metrics::gauge!(names::BACKLOG_CYCLE_DURATION).set(duration);
        let report = Arc::new(BacklogReport {
            cycle,
            observed_at_ms: now_ms,
            cycle_duration_seconds: duration,
            commit_log: evidence,
            records_read,
            missing_groups,
            leader: true,
            groups,
        });
        self.last = report.clone();
        Ok(report)
    }

    /// Forgets everything learned from earlier cycles except the commit log (after a
    /// period without leadership the windows would join observations across a gap).
    fn reset_windows(&mut self) {
        self.groups.clear();
        self.last = Arc::new(BacklogReport::default());
    }
}

/// The consumer backlog monitor. Drive it with [`BacklogMonitor::poll_once`] (tests) or
/// let [`BacklogMonitor::run`] do that every `interval` until cancelled.
pub struct BacklogMonitor {
    config: MonitorConfig,
    engine: Arc<Mutex<Engine>>,
    handle: BacklogHandle,
    /// Cycles run on one thread of their own: its allocations stay in one malloc
    /// arena, where the blocking pool's changing threads would spread a cycle's
    /// megabytes over many (and keep them all resident).
    worker: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Hands the memory a cycle freed back to the system. A cycle allocates and frees tens
/// of megabytes in several threads (the client's fetch threads among them), and glibc
/// keeps freed memory in each thread's arena: without this the resident size settles
/// near the sum of every arena's peak rather than what is in use.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl BacklogMonitor {
    /// Creates the Kafka clients (no request is made yet).
    pub fn new(config: MonitorConfig) -> Result<BacklogMonitor, BacklogError> {
        let probe = Probe::new(
            &config.bootstrap_servers,
            &config.properties,
            config.request_timeout,
            config.read_commit_log,
            config.commit_log_budget,
        )?;
        let engine = Engine {
            config: config.clone(),
            probe,
            clock: Arc::new(SystemClock),
            cycle: 0,
            groups: HashMap::new(),
            partitions: HashMap::new(),
            names: HashSet::new(),
            last: Arc::new(BacklogReport::default()),
        };
        let handle = BacklogHandle::default();
        // Without an election this instance always runs the monitor.
        handle.set_leader(config.election.is_none());
        let (worker, jobs) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("backlog-cycle".into())
            .spawn(move || {
                for job in jobs {
                    job();
                }
            })
            .map_err(|e| BacklogError::Worker(e.to_string()))?;
        Ok(BacklogMonitor {
            config,
            engine: Arc::new(Mutex::new(engine)),
            handle,
            worker,
        })
    }

    /// Replaces the clock that "now" comes from (time lags are `now − record time`).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> BacklogMonitor {
        self.engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clock = clock;
        self
    }

    /// A cheap, cloneable handle to the latest report, for the HTTP API and `/metrics`.
    pub fn handle(&self) -> BacklogHandle {
        self.handle.clone()
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Runs a cycle every `interval` until `shutdown` is cancelled, publishing a
    /// `synclag.backlog` event per group after each cycle. Errors of one cycle are
    /// logged and counted; the loop carries on. With an election configured, cycles run
    /// only while this instance is the elected one.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BacklogError> {
        metrics::counter!(names::BACKLOG_CYCLE_ERRORS).absolute(0);
        for bound in BOUNDS {
            metrics::counter!(names::BACKLOG_BOUND_HITS, "bound" => bound).absolute(0);
        }
        metrics::gauge!(names::BACKLOG_LEADER).set(if self.handle.is_leader() { 1.0 } else { 0.0 });
        let sink = EventSink::new(&self.config)?;
        let mut leadership = match &self.config.election {
            None => None,
            Some(e) => {
                let handle = self.handle.clone();
                let engine = self.engine.clone();
                let fence: super::leader::Fence = Arc::new(move |leader| {
                    handle.set_leader(leader);
                    metrics::gauge!(names::BACKLOG_LEADER).set(if leader { 1.0 } else { 0.0 });
                    if !leader {
                        // Returns once a cycle in progress has ended: no cycle runs
                        // after the partition is given up.
                        drop(engine.lock().unwrap_or_else(PoisonError::into_inner));
                    }
                });
                Some(e.start(shutdown.clone(), fence).await?)
            }
        };
        loop {
            // Wait to be elected (at once without an election).
            if let Some(l) = leadership.as_mut() {
                self.handle.publish(Arc::new(BacklogReport::default()));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = l.wait_for(true) => {}
                }
                tracing::info!("elected to run the backlog monitor");
            }
            let lost = self.lead(&sink, &shutdown, leadership.as_mut()).await;
            if !lost {
                return Ok(());
            }
            tracing::info!("no longer the elected backlog monitor; another instance runs it");
            self.engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset_windows();
        }
    }

    /// Cycles while elected; true when leadership was lost, false on shutdown.
    async fn lead(
        &self,
        sink: &EventSink,
        shutdown: &CancellationToken,
        mut leadership: Option<&mut super::leader::Leadership>,
    ) -> bool {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lost = async {
                match leadership.as_mut() {
                    Some(l) => l.wait_for(false).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = lost => return true,
                _ = ticker.tick() => {}
            }
            let lost = async {
                match leadership.as_mut() {
                    Some(l) => l.wait_for(false).await,
                    None => std::future::pending().await,
                }
            };
            let report = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = lost => return true,
                r = self.cycle_now() => r,
            };
            match report {
                Ok(report) => {
                    if let Err(e) = sink.publish(&report).await {
                        tracing::warn!(error = %e, retryable = e.is_retryable(), "backlog events not published");
                    }
                }
                Err(BacklogError::NotLeader) => {}
                Err(e) => {
                    metrics::counter!(names::BACKLOG_CYCLE_ERRORS).increment(1);
                    tracing::warn!(error = %e, retryable = e.is_retryable(), "backlog cycle failed");
                }
            }
        }
    }

    /// Runs one cycle now: reads the cluster, updates windows and caches, publishes the
    /// new report to the handle and returns it. With an election configured, only while
    /// [`BacklogMonitor::run`] holds the leadership (else [`BacklogError::NotLeader`]).
    pub async fn poll_once(&mut self) -> Result<Arc<BacklogReport>, BacklogError> {
        self.cycle_now().await
    }

    async fn cycle_now(&self) -> Result<Arc<BacklogReport>, BacklogError> {
        let engine = self.engine.clone();
        let handle = self.handle.clone();
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock the election's fence takes: a cycle either ends
            // before leadership is given up or does not start.
            let report = if handle.is_leader() {
                engine.cycle(&handle)
            } else {
                Err(BacklogError::NotLeader)
            };
            drop(engine);
            release_free_memory();
            let _ = done.send(report);
        });
        self.worker
            .send(job)
            .map_err(|_| BacklogError::Worker("the cycle thread has ended".into()))?;
        let report = answer
            .await
            .map_err(|_| BacklogError::Worker("a cycle failed without an answer".into()))??;
        self.handle.publish(report.clone());
        Ok(report)
    }
}
