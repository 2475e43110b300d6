//! Human durations: `250ms`, `90s`, `5m`, `2h`, `1d`, and combinations like `1h30m`.

use std::time::Duration;

/// Parses a human duration. Returns a sentence describing what is wrong on failure.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{s}` must start each part with a number"));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 && tail.starts_with(char::is_whitespace) {
            return Err(format!(
                "`{s}` has a space; write the unit right after the number, e.g. `2m`"
            ));
        }
        if unit_len == 0 {
            return Err(format!("`{s}` has a number without a unit"));
        }
        let (unit, tail) = tail.split_at(unit_len);
        let n: u128 = num
            .parse()
            .map_err(|_| format!("`{s}` has a number that is too large"))?;
        let ms_per: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("`{s}` has unknown unit `{other}`")),
        };
        total = total.saturating_add(n.saturating_mul(ms_per));
        rest = tail;
    }
    let ms = u64::try_from(total).map_err(|_| format!("`{s}` is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// A duration in whole milliseconds, as the engine and the clocks count time
/// (saturating; no configurable duration comes near the limit).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Formats a duration the way a person would write it in `topology.yaml`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("without a unit"));
        assert!(parse_duration("10x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(parse_duration("m5").unwrap_err().contains("number"));
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["90s", "5m", "2h", "1h30m", "250ms", "1d"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
