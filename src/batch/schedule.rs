//! When runs are due: a cron expression in a time zone, as epoch milliseconds.
//!
//! Fire times are computed by `croner` on the local wall clock of the zone, so DST is the
//! zone's business: a run at a local time that does not exist that day (spring forward)
//! fires right after the gap (02:30 becomes 03:00 that day), and one at a local time that
//! exists twice (fall back) fires once, at the first. Month ends come from the pattern itself
//! (`L` is the last day of the month).

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::batch::BatchSchedule;

/// Most fire times looked at in one call: a schedule firing every second cannot make one
/// clock step (a restart after a long outage) loop without bound.
pub const MAX_FIRES_PER_STEP: usize = 1_000;

/// A schedule ready to answer "when" questions in epoch milliseconds.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: Tz,
}

impl Schedule {
    pub fn new(s: &BatchSchedule) -> Schedule {
        Schedule {
            cron: s.cron.clone(),
            tz: s.timezone,
        }
    }

    pub fn from_parts(cron: croner::Cron, tz: Tz) -> Schedule {
        Schedule { cron, tz }
    }

    fn local(&self, ms: i64) -> Option<DateTime<Tz>> {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms)?;
        Some(utc.with_timezone(&self.tz))
    }

    /// The first fire time strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let local = self.local(ms)?;
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The last fire time at or before `ms`.
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        let local = self.local(ms)?;
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Fire times in `(after, until]`, oldest first, at most [`MAX_FIRES_PER_STEP`].
    pub fn fires_between(&self, after: i64, until: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < MAX_FIRES_PER_STEP {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The local weekday (0 = Monday) and hour of a time: runs in the same slot of the
    /// week make a volume baseline.
    pub fn weekday_hour(&self, ms: i64) -> (u32, u32) {
        self.local(ms)
            .map(|l| (l.weekday().num_days_from_monday(), l.hour()))
            .unwrap_or((0, 0))
    }

    /// The time in the schedule's zone, RFC 3339 (for texts and the API).
    pub fn local_text(&self, ms: i64) -> String {
        self.local(ms)
            .map(|l| l.to_rfc3339())
            .unwrap_or_else(|| ms.to_string())
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }
}

/// Epoch ms of a local wall-clock time in `tz` (first of two in a fold); for tests.
pub fn local_ms(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN)
}
