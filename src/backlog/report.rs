//! What one poll cycle found: the serde report behind `/api/v1/groups` and the
//! `synclag.backlog` events, and its Prometheus rendering.
//!
//! # Why the backlog series are rendered here, not through the `metrics` recorder
//!
//! The `metrics-exporter-prometheus` recorder keeps every series it has ever seen until
//! the process exits; its only way to drop one is a global idle timeout per metric kind,
//! which would also expire other modules' gauges and would still show a deleted group
//! for the length of the timeout. The backlog series are instead a pure function of the
//! latest report: [`BacklogReport::render_prometheus`] writes them in the text
//! exposition format, and the HTTP layer appends that text to the recorder's output. A
//! group or topic that is gone from the cluster is gone from the next report, so its
//! series disappear on the next scrape after the cycle that noticed — no timeout, no
//! bookkeeping of what to delete. A scrape never talks to Kafka: it renders the last
//! report, so it stays fast however big the cluster.

use super::status::Status;
use super::timeline::Method;
use crate::telemetry::names;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

pub use crate::config::ResetPolicy;

/// One partition of one watched group (materialized from the compact report on demand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// The committed offset (the next record the group will read); `null` without a commit.
    pub committed: Option<i64>,
    /// No commit on this partition: lag is measured from the reset position.
    pub no_commit: bool,
    /// First offset still in the log.
    pub log_start: Option<i64>,
    /// Offset the next produced record will get.
    pub log_end: Option<i64>,
    /// `log_end − position`, never negative; `null` when unreadable.
    pub offset_lag: Option<i64>,
    /// Age of the oldest unconsumed record; 0 when caught up; `null` when unknown.
    pub time_lag_seconds: Option<f64>,
    pub method: Method,
    pub status: Status,
    /// An active member of the group owns this partition.
    pub owned: bool,
    /// Why the partition could not be read, when it could not.
    pub error: Option<String>,
}

/// What a group is, as a whole, in one cycle (no per-partition data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: String,
    /// Broker-reported group state (`Stable`, `Empty`, `PreparingRebalance`, …).
    pub state: String,
    /// Active members; 0 means no consumer is running and offsets are still reported.
    pub members: usize,
    pub reset_policy: ResetPolicy,
    /// Worst partition status.
    pub status: Status,
    /// Sum of partition offset lags.
    pub offset_lag: i64,
    /// Largest known partition time lag.
    pub max_time_lag_seconds: Option<f64>,
    /// Partitions without a commit (see [`PartitionReport::no_commit`]).
    pub uncommitted_partitions: usize,
    /// Why the group's offsets could not be read, when they could not.
    pub error: Option<String>,
}

/// One watched group with its partitions (materialized from the compact report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    /// Broker-reported group state (`Stable`, `Empty`, `PreparingRebalance`, …).
    pub state: String,
    /// Active members; 0 means no consumer is running and offsets are still reported.
    pub members: usize,
    pub reset_policy: ResetPolicy,
    /// Worst partition status.
    pub status: Status,
    /// Sum of partition offset lags.
    pub offset_lag: i64,
    /// Largest known partition time lag.
    pub max_time_lag_seconds: Option<f64>,
    /// Partitions without a commit (see [`PartitionReport::no_commit`]).
    pub uncommitted_partitions: usize,
    /// Why the group's offsets could not be read, when they could not.
    pub error: Option<String>,
    pub partitions: Vec<PartitionReport>,
}

/// What rendering does with one row: (labels, group, row, offset lag).
type RowFn<'a> = dyn FnMut(&str, &GroupRows, usize, Option<i64>) + 'a;

/// "No value" in the compact columns.
pub(crate) const NONE: i64 = i64::MIN;

/// Log start and end of each partition of one topic this cycle ([`NONE`]: unreadable).
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicOffsets {
    pub start: Vec<i64>,
    pub end: Vec<i64>,
}

impl TopicOffsets {
    pub fn get(&self, partition: usize) -> (Option<i64>, Option<i64>) {
        let some = |v: Option<&i64>| v.copied().filter(|&x| x != NONE);
        (
            some(self.start.get(partition)),
            some(self.end.get(partition)),
        )
    }
}

/// Row flags: status (3 bits), method (2 bits), and three booleans.
pub(crate) mod flag {
    pub const STATUS: u16 = 0b111;
    pub const METHOD_SHIFT: u16 = 3;
    pub const METHOD: u16 = 0b11 << METHOD_SHIFT;
    pub const NO_COMMIT: u16 = 1 << 5;
    pub const OWNED: u16 = 1 << 6;
    /// The row has a position and a lag this cycle (else it shows `ERR` and the
    /// position column holds the last known one, for the next observation's window).
    pub const READABLE: u16 = 1 << 7;
}

pub(crate) fn pack(
    status: Status,
    method: Method,
    no_commit: bool,
    owned: bool,
    readable: bool,
) -> u16 {
    let s = Status::ALL.iter().position(|x| *x == status).unwrap_or(0) as u16;
    let m = match method {
        Method::None => 0,
        Method::Record => 1,
        Method::Interpolated => 2,
    };
    let mut f = s | (m << flag::METHOD_SHIFT);
    if no_commit {
        f |= flag::NO_COMMIT;
    }
    if owned {
        f |= flag::OWNED;
    }
    if readable {
        f |= flag::READABLE;
    }
    f
}

pub(crate) fn status_of(f: u16) -> Status {
    Status::ALL[usize::from(f & flag::STATUS).min(Status::ALL.len() - 1)]
}

pub(crate) fn method_of(f: u16) -> Method {
    match (f & flag::METHOD) >> flag::METHOD_SHIFT {
        1 => Method::Record,
        2 => Method::Interpolated,
        _ => Method::None,
    }
}

/// One group's rows in columns: 14 bytes per (group, partition). Rows are ordered by
/// topic name, then partition.
#[derive(Debug, Clone)]
pub(crate) struct GroupRows {
    pub summary: GroupSummary,
    /// (topic, first row, partitions).
    pub topics: Vec<(Arc<str>, usize, usize)>,
    /// Log start and end of the partitions, as the cycle that measured the group read them.
    pub offsets: Arc<HashMap<Arc<str>, TopicOffsets>>,
    /// The position this cycle, or the newest known one when unreadable ([`NONE`]: never).
    pub position: Vec<i64>,
    /// Seconds; NaN when unknown.
    pub time_lag: Vec<f32>,
    pub flags: Vec<u16>,
}

/// Everything one cycle found; what `/api/v1/groups` serves. Kept in columns (about 14
/// bytes per group and partition); [`BacklogReport::group`] and
/// [`BacklogReport::groups`] materialize [`GroupReport`]s on demand, and the JSON form
/// is written group by group.
#[derive(Debug, Clone, Default)]
pub struct BacklogReport {
    /// Cycle counter since start (0: no cycle has run yet).
    pub cycle: u64,
    /// Monitor clock at the cycle, ms since the Unix epoch.
    pub observed_at_ms: i64,
    pub cycle_duration_seconds: f64,
    /// Commit activity comes from the commit log (`__consumer_offsets`); when false it is
    /// inferred from group membership (see `docs/backlog.md`).
    pub commit_log: bool,
    /// Records read at committed offsets this cycle (cache misses).
    pub records_read: usize,
    /// Groups named in the configuration that the cluster does not know.
    pub missing_groups: Vec<String>,
    /// This instance runs the monitor (with several instances, only the elected one
    /// does; the others serve a report with no groups).
    pub leader: bool,
    /// Groups are shared between consecutive reports: a cycle replaces them one by one
    /// (publishing as it goes), so a group's old rows are freed as soon as its new ones
    /// exist instead of two full reports being held at once.
    pub(crate) groups: Vec<Arc<GroupRows>>,
}

impl BacklogReport {
    /// The report of `group`, if it is watched and exists.
    pub fn group(&self, group: &str) -> Option<GroupReport> {
        self.groups
            .iter()
            .find(|g| g.summary.group == group)
            .map(|g| self.materialize(g))
    }

    /// Every watched group, materialized one at a time.
    pub fn groups(&self) -> impl Iterator<Item = GroupReport> + '_ {
        self.groups.iter().map(|g| self.materialize(g))
    }

    /// Every watched group without its partitions.
    pub fn summaries(&self) -> impl Iterator<Item = &GroupSummary> + '_ {
        self.groups.iter().map(|g| &g.summary)
    }

    /// (group, partition) rows in the report.
    pub fn rows(&self) -> usize {
        self.groups.iter().map(|g| g.flags.len()).sum()
    }

    fn materialize(&self, g: &GroupRows) -> GroupReport {
        let s = &g.summary;
        let mut partitions = Vec::with_capacity(g.flags.len());
        for (topic, first, n) in &g.topics {
            let offsets = g.offsets.get(topic);
            for p in 0..*n {
                let row = first + p;
                let f = g.flags[row];
                let (log_start, log_end) = offsets.map(|o| o.get(p)).unwrap_or((None, None));
                let readable = f & flag::READABLE != 0;
                let no_commit = f & flag::NO_COMMIT != 0;
                let position = Some(g.position[row]).filter(|&x| x != NONE && readable);
                let t = g.time_lag[row];
                partitions.push(PartitionReport {
                    topic: topic.to_string(),
                    partition: p as i32,
                    committed: position.filter(|_| !no_commit),
                    no_commit: no_commit && readable,
                    log_start,
                    log_end,
                    offset_lag: position.zip(log_end).map(|(pos, end)| (end - pos).max(0)),
                    time_lag_seconds: (!t.is_nan()).then_some(f64::from(t)),
                    method: method_of(f),
                    status: status_of(f),
                    owned: f & flag::OWNED != 0,
                    error: (!readable).then(|| {
                        s.error
                            .clone()
                            .unwrap_or_else(|| "log offsets unreadable".to_owned())
                    }),
                });
            }
        }
        GroupReport {
            group: s.group.clone(),
            state: s.state.clone(),
            members: s.members,
            reset_policy: s.reset_policy,
            status: s.status,
            offset_lag: s.offset_lag,
            max_time_lag_seconds: s.max_time_lag_seconds,
            uncommitted_partitions: s.uncommitted_partitions,
            error: s.error.clone(),
            partitions,
        }
    }

    /// The backlog series in the Prometheus text exposition format (see the module docs).
    /// Nothing before the first cycle, nor on an instance that does not run the monitor.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        if self.cycle == 0 || !self.leader {
            return out;
        }
        // (group, topic, partition) label prefix of every row, computed per topic.
        let rows = |f: &mut RowFn<'_>| {
            let mut labels = String::new();
            for g in &self.groups {
                let group = escape(&g.summary.group);
                for (topic, first, n) in &g.topics {
                    let topic_l = escape(topic);
                    let offsets = g.offsets.get(topic);
                    for p in 0..*n {
                        labels.clear();
                        let _ = write!(
                            labels,
                            "group=\"{group}\",topic=\"{topic_l}\",partition=\"{p}\""
                        );
                        let row = first + p;
                        let readable = g.flags[row] & flag::READABLE != 0;
                        let end = offsets.and_then(|o| o.get(p).1);
                        let lag = end
                            .filter(|_| readable && g.position[row] != NONE)
                            .map(|e| (e - g.position[row]).max(0));
                        f(&labels, g, row, lag);
                    }
                }
            }
        };
        header(
            &mut out,
            names::BACKLOG_OFFSET_LAG,
            "Offset lag (log-end minus committed offset) of a watched group on a partition.",
        );
        rows(&mut |l, _, _, lag| {
            if let Some(lag) = lag {
                sample(&mut out, names::BACKLOG_OFFSET_LAG, l, lag as f64);
            }
        });
        header(
            &mut out,
            names::BACKLOG_TIME_LAG,
            "Age of the oldest unconsumed record of a watched group on a partition; 0 when caught up.",
        );
        rows(&mut |l, g, row, _| {
            let t = g.time_lag[row];
            if !t.is_nan() {
                let m = method_of(g.flags[row]).as_str();
                let _ = writeln!(
                    out,
                    "{}{{{l},method=\"{m}\"}} {}",
                    names::BACKLOG_TIME_LAG,
                    f64::from(t)
                );
            }
        });
        header(
            &mut out,
            names::BACKLOG_PARTITION_STATUS,
            "Status of a watched group on a partition (OK, WARN, REWIND, STALL, STOP, ERR); always 1.",
        );
        rows(&mut |l, g, row, _| {
            let st = status_of(g.flags[row]).as_str();
            let _ = writeln!(
                out,
                "{}{{{l},status=\"{st}\"}} 1",
                names::BACKLOG_PARTITION_STATUS
            );
        });
        header(
            &mut out,
            names::BACKLOG_GROUP_STATUS,
            "Status of a watched group: its worst partition status; always 1.",
        );
        for g in self.summaries() {
            let l = format!(
                "group=\"{}\",status=\"{}\"",
                escape(&g.group),
                g.status.as_str()
            );
            sample(&mut out, names::BACKLOG_GROUP_STATUS, &l, 1.0);
        }
        type GroupGauge = (&'static str, &'static str, fn(&GroupSummary) -> Option<f64>);
        let group_gauges: [GroupGauge; 4] = [
            (
                names::BACKLOG_GROUP_OFFSET_LAG,
                "Offset lag of a watched group summed over its partitions.",
                |g| Some(g.offset_lag as f64),
            ),
            (
                names::BACKLOG_GROUP_TIME_LAG,
                "Largest time lag among a watched group's partitions.",
                |g| g.max_time_lag_seconds,
            ),
            (
                names::BACKLOG_GROUP_MEMBERS,
                "Active members of a watched group (0: offsets reported without a running consumer).",
                |g| Some(g.members as f64),
            ),
            (
                names::BACKLOG_GROUP_UNCOMMITTED,
                "Partitions of a watched group's topics without a committed offset (lag from the reset policy).",
                |g| Some(g.uncommitted_partitions as f64),
            ),
        ];
        for (name, help, value) in group_gauges {
            header(&mut out, name, help);
            for g in self.summaries() {
                if let Some(v) = value(g) {
                    sample(
                        &mut out,
                        name,
                        &format!("group=\"{}\"", escape(&g.group)),
                        v,
                    );
                }
            }
        }
        out
    }
}

impl Serialize for BacklogReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Groups<'a>(&'a BacklogReport);
        impl Serialize for Groups<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.groups())
            }
        }
        let mut st = serializer.serialize_struct("BacklogReport", 8)?;
        st.serialize_field("cycle", &self.cycle)?;
        st.serialize_field("observed_at_ms", &self.observed_at_ms)?;
        st.serialize_field("cycle_duration_seconds", &self.cycle_duration_seconds)?;
        st.serialize_field("leader", &self.leader)?;
        st.serialize_field("commit_log", &self.commit_log)?;
        st.serialize_field("records_read", &self.records_read)?;
        st.serialize_field("groups", &Groups(self))?;
        st.serialize_field("missing_groups", &self.missing_groups)?;
        st.end()
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BacklogReport {
        let mut topics = HashMap::new();
        topics.insert(
            Arc::<str>::from("orders"),
            TopicOffsets {
                start: vec![0; 4],
                end: vec![10; 4],
            },
        );
        let stop = pack(Status::Stop, Method::Record, false, false, true);
        BacklogReport {
            cycle: 1,
            leader: true,
            groups: vec![Arc::new(GroupRows {
                summary: GroupSummary {
                    group: "odoo\"connector".into(),
                    state: "Empty".into(),
                    members: 0,
                    reset_policy: ResetPolicy::Latest,
                    status: Status::Stop,
                    offset_lag: 4,
                    max_time_lag_seconds: Some(12.5),
                    uncommitted_partitions: 0,
                    error: None,
                },
                topics: vec![(Arc::from("orders"), 0, 4)],
                offsets: Arc::new(topics),
                position: vec![10, 10, 10, 6],
                time_lag: vec![0.0, 0.0, 0.0, 12.5],
                flags: vec![
                    pack(Status::Ok, Method::None, false, true, true),
                    pack(Status::Ok, Method::None, false, false, true),
                    pack(Status::Err, Method::None, false, false, false),
                    stop,
                ],
            })],
            ..BacklogReport::default()
        }
    }

    #[test]
    fn materializes_rows_from_the_columns() {
        let g = report().group("odoo\"connector").expect("group");
        assert_eq!(g.partitions.len(), 4);
        let p3 = &g.partitions[3];
        assert_eq!(
            (p3.partition, p3.committed, p3.offset_lag, p3.log_end),
            (3, Some(6), Some(4), Some(10))
        );
        assert_eq!((p3.status, p3.method), (Status::Stop, Method::Record));
        assert_eq!(p3.time_lag_seconds, Some(12.5));
        assert!(g.partitions[0].owned && !g.partitions[1].owned);
        let p2 = &g.partitions[2];
        assert_eq!(
            (p2.committed, p2.offset_lag, p2.status),
            (None, None, Status::Err)
        );
        assert_eq!(p2.error.as_deref(), Some("log offsets unreadable"));
        let json = serde_json::to_value(report()).expect("json");
        assert_eq!(json["groups"][0]["partitions"][3]["committed"], 6);
        assert_eq!(json["leader"], true);
    }

    #[test]
    fn renders_escaped_labels_and_only_current_series() {
        let text = report().render_prometheus();
        assert!(text.contains(
            "synclag_backlog_offset_lag_records{group=\"odoo\\\"connector\",topic=\"orders\",partition=\"3\"} 4\n"
        ));
        assert!(text.contains("method=\"record\"} 12.5\n"));
        assert!(text.contains(
            "synclag_backlog_group_status_info{group=\"odoo\\\"connector\",status=\"STOP\"} 1\n"
        ));
        let empty = BacklogReport {
            cycle: 2,
            ..BacklogReport::default()
        };
        assert!(!empty.render_prometheus().contains("odoo"));
        assert_eq!(BacklogReport::default().render_prometheus(), "");
        let follower = BacklogReport {
            leader: false,
            ..report()
        };
        assert_eq!(follower.render_prometheus(), "");
    }
}
