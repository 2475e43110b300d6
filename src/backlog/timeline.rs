//! Time lag: from the record at the committed offset when it can be read, otherwise by
//! interpolation over sampled (offset, time) points of the partition. Pure.
//!
//! Samples come from two places: every cycle adds `(log_end − 1, now)` — the newest
//! record was written no later than now (the first time a log-end offset is seen is
//! kept, which is the tightest bound) — and every record that was read adds its own
//! `(offset, timestamp)`. A committed offset between two samples gets a linearly
//! interpolated write time; one below every sample gets the oldest sample's time, so the
//! time lag is then a lower bound (documented in `docs/backlog.md`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a time lag was obtained; exported as the `method` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The record at the committed offset was read: exact.
    Record,
    /// That record is gone (compaction, retention) or was not read this cycle: estimated
    /// from sampled (offset, time) points.
    Interpolated,
    /// No record was needed (the group is caught up: time lag 0) or no estimate was
    /// possible (time lag unknown: absent from metrics, `null` in JSON).
    None,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Record => "record",
            Method::Interpolated => "interpolated",
            Method::None => "none",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sampled (offset → write time in ms) points of one partition, bounded; a sorted
/// vector (16 bytes a point, no per-node overhead: one per partition of the cluster).
#[derive(Debug, Clone)]
pub struct Timeline {
    capacity: usize,
    points: Vec<(i64, i64)>,
}

impl Timeline {
    /// A timeline keeping at most `capacity` points (at least 2); the oldest offsets are
    /// dropped first, since committed offsets only move forward in the common case.
    pub fn new(capacity: usize) -> Timeline {
        Timeline {
            capacity: capacity.max(2),
            points: Vec::new(),
        }
    }

    /// The record at `offset` was written at `time_ms` (exact).
    pub fn record(&mut self, offset: i64, time_ms: i64) {
        match self.points.binary_search_by_key(&offset, |p| p.0) {
            Ok(i) => self.points[i].1 = time_ms,
            Err(i) => self.points.insert(i, (offset, time_ms)),
        }
        self.trim();
    }

    /// The log ended at `log_end` when observed at `now_ms`: the newest record is no
    /// younger than that. An offset already sampled keeps its earlier (tighter) time.
    pub fn log_end(&mut self, log_end: i64, now_ms: i64) {
        if log_end <= 0 {
            return;
        }
        if let Err(i) = self.points.binary_search_by_key(&(log_end - 1), |p| p.0) {
            self.points.insert(i, (log_end - 1, now_ms));
            self.trim();
        }
    }

    /// Drops every point at or above `from`: used when the partition was truncated or
    /// recreated (its log end moved back), which invalidates the samples.
    pub fn forget_from(&mut self, from: i64) {
        let keep = self.points.partition_point(|p| p.0 < from);
        self.points.truncate(keep);
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    fn trim(&mut self) {
        if self.points.len() > self.capacity {
            let extra = self.points.len() - self.capacity;
            self.points.drain(..extra);
        }
    }

    /// Estimated write time (ms) of the record at `offset`, if any sample is at or above it.
    pub fn estimate(&self, offset: i64) -> Option<i64> {
        let i = self.points.partition_point(|p| p.0 < offset);
        let above = self.points.get(i);
        let below = i.checked_sub(1).and_then(|j| self.points.get(j));
        match (below, above) {
            (_, Some(&(o, t))) if o == offset => Some(t),
            (Some(&(o1, t1)), Some(&(o2, t2))) => {
                let span = (o2 - o1) as f64;
                let frac = (offset - o1) as f64 / span;
                let t = t1 as f64 + frac * (t2 - t1) as f64;
                // Timestamps need not be monotonic; never estimate outside the bracket.
                let (lo, hi) = (t1.min(t2) as f64, t1.max(t2) as f64);
                Some(t.clamp(lo, hi).round() as i64)
            }
            // Below every sample: the oldest sample's time (a lower bound on the age).
            (None, Some(&(_, t))) => Some(t),
            (_, None) => None,
        }
    }
}

/// Time lag in seconds of a record written at `written_ms`, seen at `now_ms`; never
/// negative (a record stamped in the future by a skewed clock counts as fresh).
pub fn age_seconds(now_ms: i64, written_ms: i64) -> f64 {
    ((now_ms - written_ms).max(0)) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sample_wins() {
        let mut t = Timeline::new(8);
        t.record(10, 1_000);
        t.record(20, 2_000);
        assert_eq!(t.estimate(10), Some(1_000));
    }

    #[test]
    fn interpolates_between_samples() {
        let mut t = Timeline::new(8);
        t.record(10, 1_000);
        t.record(20, 3_000);
        assert_eq!(t.estimate(15), Some(2_000));
    }

    #[test]
    fn below_all_samples_uses_oldest_and_above_all_is_unknown() {
        let mut t = Timeline::new(8);
        t.log_end(11, 5_000);
        assert_eq!(t.estimate(3), Some(5_000));
        assert_eq!(t.estimate(11), None);
    }

    #[test]
    fn log_end_keeps_first_sighting_and_capacity_is_bounded() {
        let mut t = Timeline::new(3);
        t.log_end(10, 1_000);
        t.log_end(10, 9_000);
        assert_eq!(t.estimate(9), Some(1_000));
        for i in 0..10 {
            t.record(100 + i, i);
        }
        assert_eq!(t.len(), 3);
        t.forget_from(105);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn age_is_never_negative() {
        assert_eq!(age_seconds(1_000, 3_000), 0.0);
        assert_eq!(age_seconds(3_500, 1_000), 2.5);
    }
}
