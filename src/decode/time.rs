//! Timestamps as systems write them: epoch seconds/ms/µs/ns (numbers or numeric
//! strings), RFC 3339, and Odoo's naive UTC `YYYY-MM-DD HH:MM:SS[.ffffff]` — and
//! whether a parsed payload time is believable next to its record's Kafka time
//! ([`judge_event_time`], the `service.event_time` policy).

use crate::config::duration::{format_duration, millis};
use crate::config::{EventTimePolicy, OnViolation};
use chrono::{DateTime, NaiveDateTime};
use serde_json::Value;
use std::fmt;

/// Epoch numbers are told apart by magnitude: the year 2001 in seconds is 1e9, in
/// milliseconds 1e12, in microseconds 1e15 — any realistic logistics time falls in one band.
fn epoch_to_ms(n: i128) -> Option<i64> {
    let abs = n.unsigned_abs();
    let ms = if abs < 100_000_000_000 {
        n * 1000
    } else if abs < 100_000_000_000_000 {
        n
    } else if abs < 100_000_000_000_000_000 {
        n / 1000
    } else {
        n / 1_000_000
    };
    i64::try_from(ms).ok()
}

/// Parses a timestamp value into epoch milliseconds.
pub fn parse_timestamp(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                epoch_to_ms(i128::from(i))
                    .ok_or_else(|| format!("epoch number {i} is out of range"))
            } else if let Some(f) = n.as_f64() {
                // Fractional epoch seconds (e.g. 1732700000.123).
                if f.is_finite() && f.abs() < 1e11 {
                    Ok((f * 1000.0).round() as i64)
                } else {
                    Err(format!("epoch number {f} is out of range"))
                }
            } else {
                Err(format!("epoch number {n} is out of range"))
            }
        }
        Value::String(s) => parse_timestamp_str(s),
        other => Err(format!(
            "expected a timestamp (epoch number or RFC 3339 text), found {}",
            kind(other)
        )),
    }
}

/// Parses textual timestamps.
pub fn parse_timestamp_str(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        if let Ok(n) = t.parse::<i128>() {
            return epoch_to_ms(n).ok_or_else(|| format!("epoch number {t} is out of range"));
        }
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            // Odoo stores naive datetimes in UTC.
            return Ok(naive.and_utc().timestamp_millis());
        }
    }
    Err(format!(
        "`{s}` is not a timestamp; expected epoch s/ms/µs, RFC 3339 or `YYYY-MM-DD HH:MM:SS` (UTC)"
    ))
}

/// What a payload time is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The record's Kafka timestamp: the normal case.
    Kafka(i64),
    /// When synclag read a record that has no Kafka timestamp (pre-0.10 message
    /// format). Only a lead can be judged against it: a record read from a backlog is
    /// legitimately old, so a lag behind the read time says nothing.
    ReadAt(i64),
}

/// Which bound a payload time broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Before 1970: no logistics system writes that; it is a sign or unit error.
    BeforeEpoch,
    Ahead,
    Behind,
}

/// A payload time out of tolerance, with what it was judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub bound: Bound,
    pub event_ms: i64,
    pub reference: Reference,
    /// The tolerance that was exceeded (zero for [`Bound::BeforeEpoch`]).
    pub allowed_ms: i64,
}

/// What to do with a payload time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTimeVerdict {
    /// Within tolerance: the payload time stands.
    Valid(i64),
    /// Out of tolerance, `on_violation: use_kafka_time`: the record keeps going with
    /// this payload time. `None` when it has a Kafka time — the engine then places the
    /// record at its Kafka time, and lag segments that need the payload time are not
    /// recorded for it instead of being recorded as zero. Without a Kafka time, the
    /// read time.
    Replaced {
        event_time_ms: Option<i64>,
        violation: Violation,
    },
    /// Out of tolerance, `on_violation: dead_letter`.
    Rejected(Violation),
}

/// Judges payload time `event_ms` against `reference` under `policy`. Bounds are
/// inclusive: a time exactly `max_ahead` ahead or `max_behind` behind is accepted.
pub fn judge_event_time(
    policy: &EventTimePolicy,
    event_ms: i64,
    reference: Reference,
) -> EventTimeVerdict {
    let max_ahead = millis(policy.max_ahead);
    let max_behind = millis(policy.max_behind);
    let violation = |bound, allowed_ms| Violation {
        bound,
        event_ms,
        reference,
        allowed_ms,
    };
    let broken = if event_ms < 0 {
        Some(violation(Bound::BeforeEpoch, 0))
    } else {
        match reference {
            Reference::Kafka(k) | Reference::ReadAt(k)
                if event_ms.saturating_sub(k) > max_ahead =>
            {
                Some(violation(Bound::Ahead, max_ahead))
            }
            Reference::Kafka(k) if k.saturating_sub(event_ms) > max_behind => {
                Some(violation(Bound::Behind, max_behind))
            }
            _ => None,
        }
    };
    match (broken, policy.on_violation) {
        (None, _) => EventTimeVerdict::Valid(event_ms),
        (Some(v), OnViolation::DeadLetter) => EventTimeVerdict::Rejected(v),
        (Some(v), OnViolation::UseKafkaTime) => EventTimeVerdict::Replaced {
            event_time_ms: match reference {
                Reference::Kafka(_) => None,
                Reference::ReadAt(r) => Some(r),
            },
            violation: v,
        },
    }
}

/// Epoch milliseconds as RFC 3339, or the raw number when chrono cannot show it.
fn show_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| format!("epoch ms {ms}"))
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, at) = match self.reference {
            Reference::Kafka(k) => ("the record's Kafka time", k),
            Reference::ReadAt(r) => ("the time it was read (the record has no Kafka time)", r),
        };
        let gap = |ms: i64| format_duration(std::time::Duration::from_millis(ms.unsigned_abs()));
        let event = show_ms(self.event_ms);
        match self.bound {
            Bound::BeforeEpoch => write!(f, "event time {event} is before 1970"),
            Bound::Ahead => write!(
                f,
                "event time {event} is {} ahead of {what} {}; at most {} is accepted (service.event_time.max_ahead)",
                gap(self.event_ms.saturating_sub(at)),
                show_ms(at),
                gap(self.allowed_ms)
            ),
            Bound::Behind => write!(
                f,
                "event time {event} is {} behind {what} {}; at most {} is accepted (service.event_time.max_behind)",
                gap(at.saturating_sub(self.event_ms)),
                show_ms(at),
                gap(self.allowed_ms)
            ),
        }
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Wall-clock time now, epoch ms.
pub fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MS: i64 = 1_764_230_400_000; // 2025-11-27T08:00:00Z

    #[test]
    fn epoch_units_by_magnitude() {
        assert_eq!(parse_timestamp(&json!(MS / 1000)), Ok(MS));
        assert_eq!(parse_timestamp(&json!(MS)), Ok(MS));
        assert_eq!(parse_timestamp(&json!(MS * 1000 + 999)), Ok(MS));
        assert_eq!(parse_timestamp(&json!(MS as i128 as i64 * 1000)), Ok(MS));
        assert_eq!(parse_timestamp(&json!(1_764_230_400.25)), Ok(MS + 250));
        assert_eq!(parse_timestamp(&json!(MS.to_string())), Ok(MS));
    }

    #[test]
    fn text_forms() {
        assert_eq!(parse_timestamp(&json!("2025-11-27T08:00:00Z")), Ok(MS));
        assert_eq!(
            parse_timestamp(&json!("2025-11-27T09:00:00.000+01:00")),
            Ok(MS)
        );
        assert_eq!(parse_timestamp(&json!("2025-11-27 08:00:00")), Ok(MS));
        assert_eq!(
            parse_timestamp(&json!("2025-11-27 08:00:00.5")),
            Ok(MS + 500)
        );
    }

    fn policy(on_violation: OnViolation) -> EventTimePolicy {
        EventTimePolicy {
            max_ahead: std::time::Duration::from_secs(300),
            max_behind: std::time::Duration::from_secs(30 * 86_400),
            on_violation,
        }
    }

    const AHEAD: i64 = 300_000;
    const BEHIND: i64 = 30 * 86_400_000;

    fn judge(event: i64, reference: Reference) -> EventTimeVerdict {
        judge_event_time(&policy(OnViolation::UseKafkaTime), event, reference)
    }

    fn bound_of(v: EventTimeVerdict) -> Option<Bound> {
        match v {
            EventTimeVerdict::Valid(_) => None,
            EventTimeVerdict::Replaced { violation, .. }
            | EventTimeVerdict::Rejected(violation) => Some(violation.bound),
        }
    }

    #[test]
    fn times_at_a_bound_are_accepted_and_one_ms_beyond_is_not() {
        let k = Reference::Kafka(MS);
        assert_eq!(judge(MS, k), EventTimeVerdict::Valid(MS));
        assert_eq!(judge(MS + AHEAD, k), EventTimeVerdict::Valid(MS + AHEAD));
        assert_eq!(bound_of(judge(MS + AHEAD + 1, k)), Some(Bound::Ahead));
        assert_eq!(judge(MS - BEHIND, k), EventTimeVerdict::Valid(MS - BEHIND));
        assert_eq!(bound_of(judge(MS - BEHIND - 1, k)), Some(Bound::Behind));
    }

    #[test]
    fn year_9999_and_1938_are_violations() {
        let year_9999 = parse_timestamp(&json!("9999-12-31T23:59:59Z")).unwrap();
        let year_1938 = parse_timestamp(&json!(-1_000_000_000)).unwrap();
        assert!(year_1938 < 0);
        assert_eq!(
            judge(year_9999, Reference::Kafka(MS)),
            EventTimeVerdict::Replaced {
                event_time_ms: None,
                violation: Violation {
                    bound: Bound::Ahead,
                    event_ms: year_9999,
                    reference: Reference::Kafka(MS),
                    allowed_ms: AHEAD,
                },
            }
        );
        assert_eq!(
            bound_of(judge(year_1938, Reference::Kafka(MS))),
            Some(Bound::BeforeEpoch)
        );
        // A negative epoch is wrong whatever it is compared with.
        assert_eq!(
            bound_of(judge(-1, Reference::ReadAt(MS))),
            Some(Bound::BeforeEpoch)
        );
        assert_eq!(
            bound_of(judge(-1, Reference::Kafka(-5))),
            Some(Bound::BeforeEpoch)
        );
        // Extreme values do not overflow.
        assert_eq!(
            bound_of(judge(i64::MAX, Reference::Kafka(MS))),
            Some(Bound::Ahead)
        );
        assert_eq!(
            bound_of(judge(i64::MIN, Reference::Kafka(MS))),
            Some(Bound::BeforeEpoch)
        );
        assert_eq!(
            bound_of(judge(0, Reference::Kafka(i64::MAX))),
            Some(Bound::Behind)
        );
    }

    #[test]
    fn without_a_kafka_time_only_a_lead_over_the_read_time_is_judged() {
        let read = Reference::ReadAt(MS);
        assert_eq!(judge(MS + AHEAD, read), EventTimeVerdict::Valid(MS + AHEAD));
        // The replacement is the read time: there is no Kafka time to fall back to.
        assert!(matches!(
            judge(MS + AHEAD + 1, read),
            EventTimeVerdict::Replaced { event_time_ms: Some(MS), violation } if violation.bound == Bound::Ahead
        ));
        // A record read from an old backlog is not judged late.
        assert_eq!(
            judge(MS - 10 * BEHIND, read),
            EventTimeVerdict::Valid(MS - 10 * BEHIND)
        );
    }

    #[test]
    fn dead_letter_policy_rejects_instead_of_replacing() {
        let p = policy(OnViolation::DeadLetter);
        assert!(matches!(
            judge_event_time(&p, MS + AHEAD + 1, Reference::Kafka(MS)),
            EventTimeVerdict::Rejected(v) if v.bound == Bound::Ahead
        ));
        assert!(matches!(
            judge_event_time(&p, MS - BEHIND - 1, Reference::Kafka(MS)),
            EventTimeVerdict::Rejected(v) if v.bound == Bound::Behind
        ));
        assert_eq!(
            judge_event_time(&p, MS, Reference::Kafka(MS)),
            EventTimeVerdict::Valid(MS)
        );
    }

    #[test]
    fn violations_say_what_was_compared() {
        let v = Violation {
            bound: Bound::Ahead,
            event_ms: MS + 3_600_000,
            reference: Reference::Kafka(MS),
            allowed_ms: AHEAD,
        };
        assert_eq!(
            v.to_string(),
            "event time 2025-11-27T09:00:00+00:00 is 1h ahead of the record's Kafka time 2025-11-27T08:00:00+00:00; at most 5m is accepted (service.event_time.max_ahead)"
        );
        let v = Violation {
            bound: Bound::Behind,
            event_ms: MS - 40 * 86_400_000,
            reference: Reference::Kafka(MS),
            allowed_ms: BEHIND,
        };
        assert!(v
            .to_string()
            .contains("is 40d behind the record's Kafka time"));
        let v = Violation {
            bound: Bound::BeforeEpoch,
            event_ms: -1_000_000_000_000,
            reference: Reference::Kafka(MS),
            allowed_ms: 0,
        };
        assert_eq!(
            v.to_string(),
            "event time 1938-04-24T22:13:20+00:00 is before 1970"
        );
    }

    #[test]
    fn rejects_with_reason() {
        assert!(parse_timestamp(&json!("yesterday"))
            .unwrap_err()
            .contains("is not a timestamp"));
        assert!(parse_timestamp(&json!(true))
            .unwrap_err()
            .contains("found a boolean"));
        assert!(parse_timestamp(&json!(null)).is_err());
    }
}
