//! Field paths: where a value lives in a record.
//!
//! - `$.a.b`, `$.items[0].sku`, `$["odd key"]` — inside the decoded payload;
//! - `header:name` — a Kafka record header (UTF-8 value);
//! - `kafka:timestamp`, `kafka:key`, `kafka:topic`, `kafka:partition`, `kafka:offset` — record metadata.

use std::fmt;

/// One step into a JSON-like value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Record metadata reachable with `kafka:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaField {
    Timestamp,
    Key,
    Topic,
    Partition,
    Offset,
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    Payload(Vec<Segment>),
    Header(String),
    Kafka(KafkaField),
}

/// What a valid field path looks like, used in error messages.
pub const FIELD_PATH_HELP: &str =
    "`$.a.b`, `$.items[0].sku`, `header:name`, `kafka:timestamp`, `kafka:key`, `kafka:topic`, `kafka:partition` or `kafka:offset`";

impl FieldPath {
    /// Parses a field path, explaining what is wrong on failure.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let s = text.trim();
        if let Some(name) = s.strip_prefix("header:") {
            if name.is_empty() {
                return Err("`header:` needs a header name".into());
            }
            return Ok(FieldPath::Header(name.to_string()));
        }
        if let Some(name) = s.strip_prefix("kafka:") {
            let field = match name {
                "timestamp" => KafkaField::Timestamp,
                "key" => KafkaField::Key,
                "topic" => KafkaField::Topic,
                "partition" => KafkaField::Partition,
                "offset" => KafkaField::Offset,
                other => return Err(format!("`kafka:{other}` is not record metadata")),
            };
            return Ok(FieldPath::Kafka(field));
        }
        let Some(rest) = s.strip_prefix('$') else {
            return Err(format!("`{s}` must start with `$`, `header:` or `kafka:`"));
        };
        parse_segments(rest).map(FieldPath::Payload)
    }
}

fn parse_segments(mut rest: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if let Some(after_dot) = rest.strip_prefix('.') {
            let len = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            if len == 0 {
                return Err("empty key after `.`".into());
            }
            segments.push(Segment::Key(after_dot[..len].to_string()));
            rest = &after_dot[len..];
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let close = after_bracket
                .find(']')
                .ok_or_else(|| "`[` without a matching `]`".to_string())?;
            let inner = &after_bracket[..close];
            if let Some(quoted) = inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                segments.push(Segment::Key(quoted.to_string()));
            } else {
                let index: usize = inner
                    .parse()
                    .map_err(|_| format!("`[{inner}]` is not an array index or a quoted key"))?;
                segments.push(Segment::Index(index));
            }
            rest = &after_bracket[close + 1..];
        } else {
            return Err(format!("unexpected `{rest}`; use `.key` or `[index]`"));
        }
    }
    if segments.is_empty() {
        return Err("`$` alone names the whole payload, not a field".into());
    }
    Ok(segments)
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Header(h) => write!(f, "header:{h}"),
            FieldPath::Kafka(k) => {
                let name = match k {
                    KafkaField::Timestamp => "timestamp",
                    KafkaField::Key => "key",
                    KafkaField::Topic => "topic",
                    KafkaField::Partition => "partition",
                    KafkaField::Offset => "offset",
                };
                write!(f, "kafka:{name}")
            }
            FieldPath::Payload(segs) => {
                write!(f, "$")?;
                for seg in segs {
                    match seg {
                        Segment::Key(k) if k.contains(['.', '[', ']']) => write!(f, "[\"{k}\"]")?,
                        Segment::Key(k) => write!(f, ".{k}")?,
                        Segment::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            FieldPath::parse("$.order.ref").unwrap(),
            FieldPath::Payload(vec![
                Segment::Key("order".into()),
                Segment::Key("ref".into())
            ])
        );
        assert_eq!(
            FieldPath::parse("$.lines[2].sku").unwrap(),
            FieldPath::Payload(vec![
                Segment::Key("lines".into()),
                Segment::Index(2),
                Segment::Key("sku".into())
            ])
        );
        assert_eq!(
            FieldPath::parse("$[\"a.b\"]").unwrap(),
            FieldPath::Payload(vec![Segment::Key("a.b".into())])
        );
        assert_eq!(
            FieldPath::parse("header:id").unwrap(),
            FieldPath::Header("id".into())
        );
        assert_eq!(
            FieldPath::parse("kafka:key").unwrap(),
            FieldPath::Kafka(KafkaField::Key)
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "order.ref",
            "$",
            "$.",
            "$.a..b",
            "$.a[x]",
            "$.a[1",
            "header:",
            "kafka:ts",
            "$a",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for p in [
            "$.a.b",
            "$.items[0].sku",
            "$[\"x.y\"].z",
            "header:type",
            "kafka:timestamp",
        ] {
            assert_eq!(FieldPath::parse(p).unwrap().to_string(), p);
        }
    }
}
