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
use std::fmt::Write as _;

/// Where a group without a commit on a partition would start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// One partition of one watched group.
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

/// One watched group.
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

/// Everything one cycle found; what `/api/v1/groups` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
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
    pub groups: Vec<GroupReport>,
    /// Groups named in the configuration that the cluster does not know.
    pub missing_groups: Vec<String>,
}

impl BacklogReport {
    /// The report of `group`, if it is watched and exists.
    pub fn group(&self, group: &str) -> Option<&GroupReport> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// The backlog series in the Prometheus text exposition format (see the module docs).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        if self.cycle == 0 {
            return out;
        }
        let partitions = || {
            self.groups
                .iter()
                .flat_map(|g| g.partitions.iter().map(move |p| (g, p)))
        };
        header(
            &mut out,
            names::BACKLOG_OFFSET_LAG,
            "Offset lag (log-end minus committed offset) of a watched group on a partition.",
        );
        for (g, p) in partitions() {
            if let Some(lag) = p.offset_lag {
                sample(
                    &mut out,
                    names::BACKLOG_OFFSET_LAG,
                    &labels(g, p, None),
                    lag as f64,
                );
            }
        }
        header(
            &mut out,
            names::BACKLOG_TIME_LAG,
            "Age of the oldest unconsumed record of a watched group on a partition; 0 when caught up.",
        );
        for (g, p) in partitions() {
            if let Some(secs) = p.time_lag_seconds {
                let extra = [("method", p.method.as_str())];
                sample(
                    &mut out,
                    names::BACKLOG_TIME_LAG,
                    &labels(g, p, Some(&extra)),
                    secs,
                );
            }
        }
        header(
            &mut out,
            names::BACKLOG_PARTITION_STATUS,
            "Status of a watched group on a partition (OK, WARN, REWIND, STALL, STOP, ERR); always 1.",
        );
        for (g, p) in partitions() {
            let extra = [("status", p.status.as_str())];
            sample(
                &mut out,
                names::BACKLOG_PARTITION_STATUS,
                &labels(g, p, Some(&extra)),
                1.0,
            );
        }
        header(
            &mut out,
            names::BACKLOG_GROUP_STATUS,
            "Status of a watched group: its worst partition status; always 1.",
        );
        for g in &self.groups {
            let l = format!(
                "group=\"{}\",status=\"{}\"",
                escape(&g.group),
                g.status.as_str()
            );
            sample(&mut out, names::BACKLOG_GROUP_STATUS, &l, 1.0);
        }
        type GroupGauge = (&'static str, &'static str, fn(&GroupReport) -> Option<f64>);
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
            for g in &self.groups {
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

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

fn labels(g: &GroupReport, p: &PartitionReport, extra: Option<&[(&str, &str)]>) -> String {
    let mut l = format!(
        "group=\"{}\",topic=\"{}\",partition=\"{}\"",
        escape(&g.group),
        escape(&p.topic),
        p.partition
    );
    for (k, v) in extra.unwrap_or_default() {
        let _ = write!(l, ",{k}=\"{}\"", escape(v));
    }
    l
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
        BacklogReport {
            cycle: 1,
            groups: vec![GroupReport {
                group: "odoo\"connector".into(),
                state: "Empty".into(),
                members: 0,
                reset_policy: ResetPolicy::Latest,
                status: Status::Stop,
                offset_lag: 4,
                max_time_lag_seconds: Some(12.5),
                uncommitted_partitions: 0,
                error: None,
                partitions: vec![PartitionReport {
                    topic: "orders".into(),
                    partition: 3,
                    committed: Some(6),
                    no_commit: false,
                    log_start: Some(0),
                    log_end: Some(10),
                    offset_lag: Some(4),
                    time_lag_seconds: Some(12.5),
                    method: Method::Record,
                    status: Status::Stop,
                    owned: false,
                    error: None,
                }],
            }],
            ..BacklogReport::default()
        }
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
    }
}
