//! The monitor: one poll cycle turns what [`Probe`] reads into a [`BacklogReport`],
//! keeping the small state the status and the time lag need between cycles.

use super::probe::{Committed, GroupInfo, Probe, ReadOutcome, Tp};
use super::report::{BacklogReport, GroupReport, PartitionReport, ResetPolicy};
use super::status::{Observation, Status, Window};
use super::timeline::{age_seconds, Method, Timeline};
use super::{BacklogError, BacklogHandle, Clock, EventSink, SystemClock};
use crate::config::{GroupSelector, Registry, Topology};
use crate::telemetry::names;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
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
    /// Observations in the status window (at least 2).
    pub window: usize,
    /// Reset policy per group, first match wins; groups matching none use `latest`.
    pub reset_policies: Vec<(GroupSelector, ResetPolicy)>,
    /// Timeout of each Kafka request.
    pub request_timeout: Duration,
    /// At most this many records are read at committed offsets per cycle; the rest are
    /// interpolated and read in later cycles. Bounds the cost of a cold start.
    pub max_record_reads: usize,
    /// Every this many cycles, each group's commits are looked up on every topic, to find
    /// topics it started consuming without the commit log noticing.
    pub rescan_every: u64,
    /// Tail `__consumer_offsets` to see commits (tells STALL from STOP exactly).
    pub read_commit_log: bool,
    /// Sampled (offset, time) points kept per partition for interpolation.
    pub timeline_points: usize,
    /// Topic of the periodic `synclag.backlog` events.
    pub backlog_topic: String,
    /// Register the event schema here and publish Avro; JSON without one.
    pub registry: Option<Registry>,
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
            max_record_reads: 10_000,
            rescan_every: 10,
            read_commit_log: true,
            timeline_points: 64,
            backlog_topic: "synclag.backlog".into(),
            registry: None,
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
        c.backlog_topic = topology.outputs.backlog_topic.clone();
        c.registry = topology.registry.clone();
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

#[derive(Debug, Default)]
struct GroupState {
    /// Topics the group has commits on or is assigned; looked up every cycle.
    topics: BTreeSet<String>,
    last_rescan: Option<u64>,
    windows: HashMap<Tp, Window>,
}

/// The consumer backlog monitor. Drive it with [`BacklogMonitor::poll_once`] (tests) or
/// let [`BacklogMonitor::run`] do that every `interval` until cancelled.
pub struct BacklogMonitor {
    config: MonitorConfig,
    probe: Arc<Probe>,
    clock: Arc<dyn Clock>,
    handle: BacklogHandle,
    cycle: u64,
    groups: HashMap<String, GroupState>,
    timelines: HashMap<Tp, Timeline>,
    last_log_end: HashMap<Tp, i64>,
    /// (topic, partition, offset) → what the record there gave; only offsets that are
    /// some group's position this cycle are kept.
    records: HashMap<(String, i32, i64), ReadOutcome>,
}

impl BacklogMonitor {
    /// Creates the Kafka clients (no request is made yet).
    pub fn new(config: MonitorConfig) -> Result<BacklogMonitor, BacklogError> {
        let probe = Probe::new(
            &config.bootstrap_servers,
            &config.properties,
            config.request_timeout,
            config.read_commit_log,
        )?;
        Ok(BacklogMonitor {
            config,
            probe: Arc::new(probe),
            clock: Arc::new(SystemClock),
            handle: BacklogHandle::default(),
            cycle: 0,
            groups: HashMap::new(),
            timelines: HashMap::new(),
            last_log_end: HashMap::new(),
            records: HashMap::new(),
        })
    }

    /// Replaces the clock that "now" comes from (time lags are `now − record time`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> BacklogMonitor {
        self.clock = clock;
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
    /// logged and counted; the loop carries on.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BacklogError> {
        metrics::counter!(names::BACKLOG_CYCLE_ERRORS).absolute(0);
        let sink = EventSink::new(&self.config)?;
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let report = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = self.poll_once() => r,
            };
            match report {
                Ok(report) => {
                    if let Err(e) = sink.publish(&report).await {
                        tracing::warn!(error = %e, retryable = e.is_retryable(), "backlog events not published");
                    }
                }
                Err(e) => {
                    metrics::counter!(names::BACKLOG_CYCLE_ERRORS).increment(1);
                    tracing::warn!(error = %e, retryable = e.is_retryable(), "backlog cycle failed");
                }
            }
        }
    }

    /// Runs one cycle now: reads the cluster, updates windows and caches, publishes the
    /// new report to the handle and returns it.
    pub async fn poll_once(&mut self) -> Result<Arc<BacklogReport>, BacklogError> {
        let started = Instant::now();
        let now_ms = self.clock.now_ms();
        self.cycle += 1;
        let cycle = self.cycle;

        let (topics, cluster_groups) = self
            .blocking(|p| Ok::<_, BacklogError>((p.topics()?, p.groups()?)))
            .await??;

        // Which groups to watch this cycle.
        let watched: BTreeMap<String, GroupInfo> = cluster_groups
            .into_iter()
            .filter(|g| g.state != "Dead" && self.config.groups.iter().any(|s| s.matches(&g.name)))
            .map(|g| (g.name.clone(), g))
            .collect();
        let missing_groups: Vec<String> = self
            .config
            .groups
            .iter()
            .filter_map(|s| match s {
                GroupSelector::Name(n) if !watched.contains_key(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let names: HashSet<String> = watched.keys().cloned().collect();
        self.groups.retain(|g, _| names.contains(g));
        {
            let keep = names.clone();
            self.blocking(move |p| p.retain_groups(&keep)).await?;
        }

        // Commits seen since the last cycle (before the offsets, so none is missed).
        let commits = {
            let keep = names.clone();
            self.blocking(move |p| p.drain_commits(&keep)).await?
        };

        // One OffsetFetch per group, on the topics worth asking about.
        let mut queries = Vec::new();
        for (name, info) in &watched {
            let state = self.groups.entry(name.clone()).or_default();
            let rescan = state
                .last_rescan
                .is_none_or(|last| cycle - last >= self.config.rescan_every.max(1));
            let mut ask: BTreeSet<String> = if rescan {
                state.last_rescan = Some(cycle);
                topics.keys().cloned().collect()
            } else {
                state.topics.clone()
            };
            ask.extend(info.owned.iter().map(|(t, _)| t.clone()));
            if let Some(c) = &commits {
                ask.extend(
                    c.keys()
                        .filter(|(g, _)| g == name)
                        .map(|(_, (t, _))| t.clone()),
                );
            }
            let ask: Vec<(String, i32)> = ask
                .into_iter()
                .filter_map(|t| topics.get(&t).map(|&n| (t, n)))
                .collect();
            queries.push((name.clone(), ask));
        }
        let committed = self.blocking(move |p| p.committed(queries)).await?;

        // The partitions each group is measured on: every partition of a topic it has a
        // commit on or is assigned.
        let mut group_parts: BTreeMap<String, (Committed, BTreeSet<Tp>)> = BTreeMap::new();
        let mut all_tps: BTreeSet<Tp> = BTreeSet::new();
        for (name, result) in committed {
            let Some(info) = watched.get(&name) else {
                continue;
            };
            let mut group_topics: BTreeSet<String> =
                info.owned.iter().map(|(t, _)| t.clone()).collect();
            let state = self.groups.entry(name.clone()).or_default();
            match &result {
                Ok(map) => {
                    group_topics.extend(
                        map.iter()
                            .filter(|(_, c)| c.is_some())
                            .map(|((t, _), _)| t.clone()),
                    );
                    state.topics = group_topics.clone();
                }
                // Keep measuring the last known topics so the partitions show ERR.
                Err(_) => group_topics.extend(state.topics.iter().cloned()),
            }
            let mut tps = BTreeSet::new();
            for t in group_topics {
                if let Some(&n) = topics.get(&t) {
                    for p in 0..n {
                        tps.insert((t.clone(), p));
                    }
                }
            }
            all_tps.extend(tps.iter().cloned());
            group_parts.insert(name, (result, tps));
        }

        // Log start and end of every measured partition, batched.
        let tps_vec: Vec<Tp> = all_tps.iter().cloned().collect();
        let (ends, starts) = self
            .blocking(move |p| {
                let ends = p.log_offsets(&tps_vec, true);
                let starts = p.log_offsets(&tps_vec, false);
                (ends, starts)
            })
            .await?;
        let ends = ends.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "log-end offsets unreadable");
            HashMap::new()
        });
        let starts = starts.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "log-start offsets unreadable");
            HashMap::new()
        });
        for tp in &all_tps {
            if let Some(&end) = ends.get(tp) {
                let timeline = self
                    .timelines
                    .entry(tp.clone())
                    .or_insert_with(|| Timeline::new(self.config.timeline_points));
                if self.last_log_end.get(tp).is_some_and(|&prev| end < prev) {
                    timeline.forget_from(end);
                    self.records.retain(|(t, p, _), _| (t, p) != (&tp.0, &tp.1));
                }
                self.last_log_end.insert(tp.clone(), end);
                timeline.log_end(end, now_ms);
            }
        }
        self.timelines.retain(|tp, _| all_tps.contains(tp));
        self.last_log_end.retain(|tp, _| all_tps.contains(tp));

        // Positions, and which records at them still need reading.
        struct Row {
            tp: Tp,
            committed: Option<i64>,
            position: Option<i64>,
            start: Option<i64>,
            end: Option<i64>,
            error: Option<String>,
        }
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        let mut wanted: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        for (name, (result, tps)) in &group_parts {
            let reset = self.config.reset_policy(name);
            let mut list = Vec::new();
            for tp in tps {
                let start = starts.get(tp).copied();
                let end = ends.get(tp).copied();
                let (committed, error) = match result {
                    Ok(map) => (map.get(tp).copied().flatten(), None),
                    Err(e) => (None, Some(e.clone())),
                };
                let error = error.or_else(|| {
                    (end.is_none() || start.is_none()).then(|| "log offsets unreadable".to_owned())
                });
                let position = if error.is_some() {
                    None
                } else {
                    committed.or(match reset {
                        ResetPolicy::Latest => end,
                        ResetPolicy::Earliest => start,
                    })
                };
                if let (Some(pos), Some(end), Some(start)) = (position, end, start) {
                    if pos < end {
                        // Retention deleted the committed record: the oldest one left
                        // becomes a sample, so the estimate is a tight lower bound.
                        wanted.insert((tp.0.clone(), tp.1, pos.max(start)));
                    }
                }
                list.push(Row {
                    tp: tp.clone(),
                    committed,
                    position,
                    start,
                    end,
                    error,
                });
            }
            rows.insert(name.clone(), list);
        }
        self.records.retain(|k, _| wanted.contains(k));
        let to_read: Vec<(String, i32, i64)> = wanted
            .iter()
            .filter(|k| !self.records.contains_key(*k))
            .take(self.config.max_record_reads)
            .cloned()
            .collect();
        let records_read = to_read.len();
        if !to_read.is_empty() {
            let read = self.blocking(move |p| p.read_records(&to_read)).await?;
            for (k, outcome) in read {
                if let ReadOutcome::Found {
                    offset,
                    timestamp_ms,
                } = outcome
                {
                    if let Some(t) = self.timelines.get_mut(&(k.0.clone(), k.1)) {
                        t.record(offset, timestamp_ms);
                    }
                }
                self.records.insert(k, outcome);
            }
        }

        // Reports, observations and statuses.
        let mut groups = Vec::new();
        for (name, list) in rows {
            let Some(info) = watched.get(&name) else {
                continue;
            };
            let state = self.groups.entry(name.clone()).or_default();
            let group_error = match group_parts.get(&name) {
                Some((Err(e), _)) => Some(e.clone()),
                _ => None,
            };
            let mut partitions = Vec::with_capacity(list.len());
            let mut live: HashSet<Tp> = HashSet::new();
            for row in list {
                let lag = match (row.position, row.end) {
                    (Some(pos), Some(end)) => Some((end - pos).max(0)),
                    _ => None,
                };
                let (time_lag, method) = match (lag, row.position) {
                    (Some(0), _) => (Some(0.0), Method::None),
                    (Some(_), Some(pos)) => {
                        let key = (row.tp.0.clone(), row.tp.1, pos);
                        match self.records.get(&key) {
                            Some(ReadOutcome::Found {
                                offset,
                                timestamp_ms,
                            }) if *offset == pos => {
                                (Some(age_seconds(now_ms, *timestamp_ms)), Method::Record)
                            }
                            _ => match self.timelines.get(&row.tp).and_then(|t| t.estimate(pos)) {
                                Some(ts) => (Some(age_seconds(now_ms, ts)), Method::Interpolated),
                                None => (None, Method::None),
                            },
                        }
                    }
                    _ => (None, Method::None),
                };
                let commit_seen = commits
                    .as_ref()
                    .map(|c| c.contains_key(&(name.clone(), row.tp.clone())));
                let owned = info.owned.contains(&row.tp);
                let window = state
                    .windows
                    .entry(row.tp.clone())
                    .or_insert_with(|| Window::new(self.config.window));
                window.push(Observation {
                    position: row.position,
                    lag,
                    commit_seen,
                    owned,
                });
                let status = window.status();
                live.insert(row.tp.clone());
                partitions.push(PartitionReport {
                    topic: row.tp.0,
                    partition: row.tp.1,
                    committed: row.committed,
                    no_commit: row.committed.is_none() && row.error.is_none(),
                    log_start: row.start,
                    log_end: row.end,
                    offset_lag: lag,
                    time_lag_seconds: time_lag,
                    method,
                    status,
                    owned,
                    error: row.error,
                });
            }
            state.windows.retain(|tp, _| live.contains(tp));
            groups.push(GroupReport {
                group: name.clone(),
                state: info.state.clone(),
                members: info.members,
                reset_policy: self.config.reset_policy(&name),
                status: Status::worst(partitions.iter().map(|p| p.status)),
                offset_lag: partitions.iter().filter_map(|p| p.offset_lag).sum(),
                max_time_lag_seconds: partitions
                    .iter()
                    .filter_map(|p| p.time_lag_seconds)
                    .reduce(f64::max),
                uncommitted_partitions: partitions.iter().filter(|p| p.no_commit).count(),
                error: group_error,
                partitions,
            });
        }

        let duration = started.elapsed().as_secs_f64();
        metrics::gauge!(names::BACKLOG_CYCLE_DURATION).set(duration);
        let report = Arc::new(BacklogReport {
            cycle,
            observed_at_ms: now_ms,
            cycle_duration_seconds: duration,
            commit_log: commits.is_some(),
            records_read,
            groups,
            missing_groups,
        });
        self.handle.publish(report.clone());
        Ok(report)
    }

    /// Runs `f` with the probe on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BacklogError>
    where
        T: Send + 'static,
        F: FnOnce(&Probe) -> T + Send + 'static,
    {
        let probe = self.probe.clone();
        tokio::task::spawn_blocking(move || f(&probe))
            .await
            .map_err(|e| BacklogError::Worker(e.to_string()))
    }
}
