//! Timestamps as systems write them: epoch seconds/ms/µs/ns (numbers or numeric
//! strings), RFC 3339, and Odoo's naive UTC `YYYY-MM-DD HH:MM:SS[.ffffff]`.

use chrono::{DateTime, NaiveDateTime};
use serde_json::Value;

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
