//! Reading a [`FieldPath`] out of a decoded payload and the record around it.

use super::RecordView;
use crate::config::field_path::{FieldPath, KafkaField, Segment};
use serde_json::Value;
use std::borrow::Cow;

/// Follows payload segments into a JSON value.
pub fn walk<'v>(value: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    let mut node = value;
    for seg in segments {
        node = match (seg, node) {
            (Segment::Key(k), Value::Object(map)) => map.get(k)?,
            (Segment::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Extracts a field as a JSON value (headers and keys become strings, metadata numbers).
/// `None` when the field is absent or null.
pub fn extract<'v>(
    path: &FieldPath,
    payload: &'v Value,
    record: &RecordView<'_>,
) -> Option<Cow<'v, Value>> {
    let v = match path {
        FieldPath::Payload(segments) => Cow::Borrowed(walk(payload, segments)?),
        FieldPath::Header(name) => {
            let (_, raw) = record.headers.iter().find(|(k, _)| k == name)?;
            Cow::Owned(Value::String(String::from_utf8_lossy((*raw)?).into_owned()))
        }
        FieldPath::Kafka(KafkaField::Key) => Cow::Owned(Value::String(
            String::from_utf8_lossy(record.key?).into_owned(),
        )),
        FieldPath::Kafka(KafkaField::Timestamp) => Cow::Owned(Value::from(record.timestamp_ms?)),
        FieldPath::Kafka(KafkaField::Topic) => Cow::Owned(Value::String(record.topic.to_string())),
        FieldPath::Kafka(KafkaField::Partition) => Cow::Owned(Value::from(record.partition)),
        FieldPath::Kafka(KafkaField::Offset) => Cow::Owned(Value::from(record.offset)),
    };
    if v.is_null() {
        None
    } else {
        Some(v)
    }
}

/// [`as_text`], moving an owned string out instead of copying it.
pub fn into_text(v: Cow<'_, Value>) -> Option<String> {
    match v {
        Cow::Owned(Value::String(s)) => Some(s),
        other => as_text(&other),
    }
}

/// A scalar as text, for ids, types and dimension values. Objects and lists are not ids.
pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record<'a>(headers: &'a [(String, Option<&'a [u8]>)]) -> RecordView<'a> {
        RecordView {
            topic: "t",
            partition: 3,
            offset: 42,
            key: Some(b"K-1"),
            payload: None,
            headers,
            timestamp_ms: Some(1000),
        }
    }

    #[test]
    fn payload_headers_and_metadata() {
        let headers = vec![("type".to_string(), Some(&b"sale.order.imported"[..]))];
        let r = record(&headers);
        let payload = json!({"a": {"b": [10, {"c": "x"}]}, "n": null});
        let get =
            |p: &str| extract(&FieldPath::parse(p).unwrap(), &payload, &r).map(|v| v.into_owned());
        assert_eq!(get("$.a.b[1].c"), Some(json!("x")));
        assert_eq!(get("$.a.b[0]"), Some(json!(10)));
        assert_eq!(get("$.a.b[5]"), None);
        assert_eq!(get("$.n"), None);
        assert_eq!(get("$.a.b.c"), None);
        assert_eq!(get("header:type"), Some(json!("sale.order.imported")));
        assert_eq!(get("header:missing"), None);
        assert_eq!(get("kafka:key"), Some(json!("K-1")));
        assert_eq!(get("kafka:timestamp"), Some(json!(1000)));
        assert_eq!(get("kafka:partition"), Some(json!(3)));
        assert_eq!(get("kafka:offset"), Some(json!(42)));
    }
}
