//! A stage or signal as a record of its stream: values written at the configured field
//! paths, in the stream's format.
//!
//! | format            | value                                                         |
//! |-------------------|---------------------------------------------------------------|
//! | `json`            | a JSON object built from the payload paths                     |
//! | `avro`            | the same object as an Avro record whose schema is derived from the paths (the Kafka sink adds the Confluent header) |
//! | `debezium_cdc`    | `{"before":null,"after":{..},"source":{..,"ts_ms","db","table"},"op":"c","ts_ms"}`, paths relative to the envelope |
//! | `debezium_outbox` | the payload object; headers `id` (event uuid) and `type`       |
//!
//! `header:` paths become record headers, `kafka:key` the key, `kafka:timestamp` the
//! record timestamp. Times are written as RFC 3339 (`2026-03-02T14:05:03.120Z`), as epoch
//! milliseconds when the field is named `ts_ms` or `*_ms`, and as Odoo writes them
//! (`2026-03-02 14:05:04`, UTC, whole seconds) for `*_date` fields of ERP streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};

use crate::config::field_path::{KafkaField, Segment};
use crate::config::{FieldPath, Format, Stream};

/// One record ready for a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRecord {
    /// Index into the topology's streams.
    pub stream: usize,
    pub topic: String,
    pub format: Format,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Kafka record timestamp, epoch milliseconds: when the record is produced.
    pub timestamp_ms: i64,
    /// The logical value: the JSON body, the Debezium envelope, or the Avro record's
    /// fields as JSON (see [`SimRecord::avro_value`]).
    pub value: Json,
    /// Set for `avro` streams.
    pub avro_schema: Option<Arc<AvroSchema>>,
    /// What the record stands for, for tests and in-process consumers.
    pub origin: Origin,
}

/// What a record stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub correlation_id: String,
    /// Business time written at the stream's event-time path, epoch milliseconds.
    pub event_time_ms: i64,
    pub kind: OriginKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OriginKind {
    /// Stage `stage` of workflow `workflow` (indices into the topology).
    Stage { workflow: usize, stage: usize },
    /// An error/throttling signal of this type.
    Signal { signal_type: String },
    /// A record of a run of batch workflow `workflow` (index into `Topology::batches`),
    /// or its ERP match (see `sim::batch`).
    Batch { workflow: usize },
}

/// An Avro schema derived from a stream's field paths.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroSchema {
    /// The schema as registered.
    pub text: String,
    pub schema: apache_avro::Schema,
}

/// A record cannot be built for a stream; not retryable (the topology must change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream `{stream}`: {message}")]
pub struct EncodeError {
    pub stream: String,
    pub message: String,
}

/// How a time is written at a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEncoding {
    /// `2026-03-02T14:05:03.120Z`
    Rfc3339,
    /// Epoch milliseconds as a number.
    EpochMillis,
    /// `2026-03-02 14:05:04` in UTC, whole seconds, as Odoo stores `write_date`.
    OdooDatetime,
    /// The Kafka record timestamp is the event time.
    KafkaTimestamp,
}

impl TimeEncoding {
    /// The encoding for a stream's event-time path.
    pub fn for_path(stream: &Stream, path: &FieldPath) -> TimeEncoding {
        match path {
            FieldPath::Kafka(KafkaField::Timestamp) => TimeEncoding::KafkaTimestamp,
            FieldPath::Payload(segs) => match segs.last() {
                Some(Segment::Key(k)) if k == "ts_ms" || k.ends_with("_ms") => {
                    TimeEncoding::EpochMillis
                }
                Some(Segment::Key(k)) if stream.erp_time && k.ends_with("_date") => {
                    TimeEncoding::OdooDatetime
                }
                _ => TimeEncoding::Rfc3339,
            },
            _ => TimeEncoding::Rfc3339,
        }
    }

    /// Rounds a planned time to what this encoding can express, so that the ground truth
    /// holds exactly the time a decoder will read. Odoo times are rounded *up* to the
    /// second: the ERP cannot have written a record before it received its input.
    pub fn round(self, ms: i64) -> i64 {
        match self {
            TimeEncoding::OdooDatetime => {
                ms.div_euclid(1000) * 1000 + 1000 * i64::from(ms.rem_euclid(1000) != 0)
            }
            _ => ms,
        }
    }

    fn value(self, ms: i64) -> Json {
        match self {
            TimeEncoding::EpochMillis => Json::from(ms),
            TimeEncoding::OdooDatetime => Json::String(odoo_datetime(ms)),
            TimeEncoding::Rfc3339 | TimeEncoding::KafkaTimestamp => Json::String(rfc3339(ms)),
        }
    }
}

/// RFC 3339 with milliseconds and `Z`.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn odoo_datetime(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// What goes into one record.
#[derive(Debug, Clone)]
pub struct RecordInput<'a> {
    pub correlation_id: &'a str,
    pub event_type: Option<&'a str>,
    pub event_ms: i64,
    pub kafka_ms: i64,
    /// Values for the stream's dimension names.
    pub dimensions: &'a BTreeMap<String, String>,
    /// Deterministic per-record entropy (event uuid, CDC row ids).
    pub entropy: u64,
    pub origin: OriginKind,
}

/// Builds the records of one stream.
#[derive(Debug, Clone)]
pub struct StreamEncoder {
    pub index: usize,
    pub name: String,
    pub topic: String,
    pub format: Format,
    correlation_id: FieldPath,
    event_time: Option<(FieldPath, TimeEncoding)>,
    event_type: Option<FieldPath>,
    dimensions: Vec<(String, FieldPath)>,
    /// Table name in the Debezium `source` block.
    cdc_table: String,
    avro: Option<Arc<AvroSchema>>,
}

impl StreamEncoder {
    /// Checks that every path can be produced and, for Avro, derives the schema from a
    /// template record: every record of a stream has the same shape.
    pub fn new(index: usize, stream: &Stream) -> Result<StreamEncoder, EncodeError> {
        let err = |message: String| EncodeError {
            stream: stream.name.clone(),
            message,
        };
        let check = |what: &str, path: &FieldPath, allow_timestamp: bool| match path {
            FieldPath::Kafka(KafkaField::Key) | FieldPath::Payload(_) | FieldPath::Header(_) => {
                Ok(())
            }
            FieldPath::Kafka(KafkaField::Timestamp) if allow_timestamp => Ok(()),
            other => Err(err(format!(
                "{what} at `{other}` cannot be produced; use a payload path or a header"
            ))),
        };
        check("correlation_id", &stream.correlation_id, false)?;
        if let Some(p) = &stream.event_type {
            check("event_type", p, false)?;
        }
        for (name, p) in &stream.dimensions {
            check(&format!("dimension `{name}`"), p, false)?;
        }
        let event_time = match &stream.event_time {
            Some(p) => {
                check("event_time", p, true)?;
                Some((p.clone(), TimeEncoding::for_path(stream, p)))
            }
            None => None,
        };
        let mut enc = StreamEncoder {
            index,
            name: stream.name.clone(),
            topic: stream.topic.clone(),
            format: stream.format,
            correlation_id: stream.correlation_id.clone(),
            event_time,
            event_type: stream.event_type.clone(),
            dimensions: stream.dimensions.clone(),
            cdc_table: stream
                .topic
                .rsplit('.')
                .next()
                .unwrap_or(&stream.topic)
                .to_string(),
            avro: None,
        };
        if stream.format == Format::Avro {
            let dims: BTreeMap<String, String> = stream
                .dimensions
                .iter()
                .map(|(n, _)| (n.clone(), "x".to_string()))
                .collect();
            let template = enc.encode(&RecordInput {
                correlation_id: "x",
                event_type: Some("x"),
                event_ms: 0,
                kafka_ms: 0,
                dimensions: &dims,
                entropy: 0,
                origin: OriginKind::Signal {
                    signal_type: String::new(),
                },
            })?;
            let text = derive_avro_schema(&stream.name, &template.value).map_err(err)?;
            let schema = apache_avro::Schema::parse_str(&text)
                .map_err(|e| err(format!("derived Avro schema is invalid: {e}")))?;
            enc.avro = Some(Arc::new(AvroSchema { text, schema }));
        }
        Ok(enc)
    }

    /// How this stream writes its event time; `None` when it has no event-time path.
    pub fn time_encoding(&self) -> Option<TimeEncoding> {
        self.event_time.as_ref().map(|(_, e)| *e)
    }

    pub fn avro_schema(&self) -> Option<&Arc<AvroSchema>> {
        self.avro.as_ref()
    }

    pub fn has_dimension(&self, name: &str) -> bool {
        self.dimensions.iter().any(|(n, _)| n == name)
    }

    pub fn dimension_names(&self) -> impl Iterator<Item = &str> {
        self.dimensions.iter().map(|(n, _)| n.as_str())
    }

    /// Builds one record.
    pub fn encode(&self, input: &RecordInput<'_>) -> Result<SimRecord, EncodeError> {
        let err = |message: String| EncodeError {
            stream: self.name.clone(),
            message,
        };
        let mut out = Parts {
            root: Json::Null,
            headers: Vec::new(),
            key: None,
            timestamp_ms: input.kafka_ms,
        };
        let mut event_ms = input.event_ms;
        // Later writes win, so the correlation id is written last.
        for (name, path) in &self.dimensions {
            let v = input.dimensions.get(name).cloned().unwrap_or_default();
            out.put(path, Json::String(v)).map_err(err)?;
        }
        let event_type = input.event_type.unwrap_or_default().to_string();
        if let Some(path) = &self.event_type {
            out.put(path, Json::String(event_type.clone()))
                .map_err(err)?;
        }
        if let Some((path, encoding)) = &self.event_time {
            if *encoding == TimeEncoding::KafkaTimestamp {
                out.timestamp_ms = input.event_ms;
            } else {
                event_ms = encoding.round(input.event_ms);
                out.put(path, encoding.value(event_ms)).map_err(err)?;
            }
        }
        out.put(
            &self.correlation_id,
            Json::String(input.correlation_id.to_string()),
        )
        .map_err(err)?;
        if out.root.is_null() {
            out.root = Json::Object(Map::new());
        }
        match self.format {
            Format::Json | Format::Avro => {}
            Format::DebeziumCdc => {
                let skeleton = self.cdc_skeleton(input, event_ms);
                fill_missing(&mut out.root, skeleton);
            }
            Format::DebeziumOutbox => {
                if !out.headers.iter().any(|(k, _)| k == "id") {
                    out.headers.push(("id".into(), uuid_v4(input.entropy)));
                }
                if !out.headers.iter().any(|(k, _)| k == "type") {
                    out.headers.push(("type".into(), event_type));
                }
            }
        }
        Ok(SimRecord {
            stream: self.index,
            topic: self.topic.clone(),
            format: self.format,
            key: Some(out.key.unwrap_or_else(|| input.correlation_id.to_string())),
            headers: out.headers,
            timestamp_ms: out.timestamp_ms,
            value: out.root,
            avro_schema: self.avro.clone(),
            origin: Origin {
                correlation_id: input.correlation_id.to_string(),
                event_time_ms: if self.time_encoding() == Some(TimeEncoding::KafkaTimestamp) {
                    out.timestamp_ms
                } else {
                    event_ms
                },
                kind: input.origin.clone(),
            },
        })
    }

    /// A Debezium change event for an insert into an Odoo table; fields the topology names
    /// take precedence, this only fills what is missing.
    fn cdc_skeleton(&self, input: &RecordInput<'_>, event_ms: i64) -> Json {
        let e = input.entropy;
        serde_json::json!({
            "before": null,
            "after": {
                "id": (e % 900_000 + 100_000) as i64,
                "product_id": ((e >> 20) % 5_000 + 1) as i64,
                "location_id": ((e >> 36) % 40 + 8) as i64,
                "quantity": (((e >> 44) % 400) as f64) / 4.0,
                "write_date": odoo_datetime(event_ms),
            },
            "source": {
                "version": "2.7.3.Final",
                "connector": "postgresql",
                "name": "odoo",
                "ts_ms": event_ms,
                "snapshot": "false",
                "db": "odoo",
                "schema": "public",
                "table": self.cdc_table,
                "txId": ((e >> 8) % 10_000_000) as i64,
            },
            "op": "c",
            "ts_ms": input.kafka_ms,
        })
    }
}

struct Parts {
    root: Json,
    headers: Vec<(String, String)>,
    key: Option<String>,
    timestamp_ms: i64,
}

impl Parts {
    fn put(&mut self, path: &FieldPath, value: Json) -> Result<(), String> {
        match path {
            FieldPath::Payload(segs) => set_path(&mut self.root, segs, value),
            FieldPath::Header(name) => {
                let text = match value {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                self.headers.retain(|(k, _)| k != name);
                self.headers.push((name.clone(), text));
                Ok(())
            }
            FieldPath::Kafka(KafkaField::Key) => {
                self.key = Some(match value {
                    Json::String(s) => s,
                    other => other.to_string(),
                });
                Ok(())
            }
            other => Err(format!("`{other}` cannot be produced")),
        }
    }
}

/// Writes `value` at `segs`, creating objects and arrays (padded with nulls) on the way.
pub fn set_path(root: &mut Json, segs: &[Segment], value: Json) -> Result<(), String> {
    let Some((first, rest)) = segs.split_first() else {
        *root = value;
        return Ok(());
    };
    match first {
        Segment::Key(k) => {
            if root.is_null() {
                *root = Json::Object(Map::new());
            }
            let Json::Object(map) = root else {
                return Err(format!(
                    "path conflict: `{k}` is written inside a value that is not an object"
                ));
            };
            let slot = map.entry(k.clone()).or_insert(Json::Null);
            set_path(slot, rest, value)
        }
        Segment::Index(i) => {
            if root.is_null() {
                *root = Json::Array(Vec::new());
            }
            let Json::Array(items) = root else {
                return Err(format!(
                    "path conflict: `[{i}]` is written inside a value that is not an array"
                ));
            };
            if items.len() <= *i {
                items.resize(*i + 1, Json::Null);
            }
            set_path(&mut items[*i], rest, value)
        }
    }
}

/// Adds what `defaults` has and `target` lacks, recursively through objects.
fn fill_missing(target: &mut Json, defaults: Json) {
    match (target, defaults) {
        (Json::Object(t), Json::Object(d)) => {
            for (k, v) in d {
                match t.get_mut(&k) {
                    Some(existing) => fill_missing(existing, v),
                    None => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (t @ Json::Null, d) => *t = d,
        _ => {}
    }
}

/// A random (version 4) UUID from 64 bits of entropy, stretched deterministically.
pub fn uuid_v4(entropy: u64) -> String {
    let hi = splitmix64(entropy);
    let lo = splitmix64(hi ^ 0x9e37_79b9_7f4a_7c15);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A well-mixed 64-bit hash step (SplitMix64).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---- Avro

/// An Avro record schema for the shape of `value`: objects become records (nested ones
/// named after their path), strings `string`, integers `long`, other numbers `double`,
/// arrays `array` of nullable items.
pub fn derive_avro_schema(stream_name: &str, value: &Json) -> Result<String, String> {
    let name = avro_name(stream_name);
    let schema = schema_of(&name, value)?;
    let mut top = match schema {
        Json::Object(m) => m,
        _ => return Err("the payload of an Avro stream must be an object".into()),
    };
    top.insert("namespace".into(), Json::String("synclag.sim".into()));
    Ok(Json::Object(top).to_string())
}

fn avro_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn valid_field_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn schema_of(record_name: &str, value: &Json) -> Result<Json, String> {
    Ok(match value {
        Json::Null => Json::String("null".into()),
        Json::Bool(_) => Json::String("boolean".into()),
        Json::Number(n) if n.is_i64() || n.is_u64() => Json::String("long".into()),
        Json::Number(_) => Json::String("double".into()),
        Json::String(_) => Json::String("string".into()),
        Json::Array(items) => {
            let item = items.iter().rev().find(|v| !v.is_null());
            let item_schema = match item {
                Some(v) => schema_of(&format!("{record_name}_item"), v)?,
                None => Json::String("string".into()),
            };
            serde_json::json!({
                "type": "array",
                "items": ["null", item_schema],
            })
        }
        Json::Object(map) => {
            let mut fields = Vec::new();
            for (k, v) in map {
                if !valid_field_name(k) {
                    return Err(format!(
                        "`{k}` is not a valid Avro field name (letters, digits and `_`, not starting with a digit)"
                    ));
                }
                fields.push(serde_json::json!({
                    "name": k,
                    "type": schema_of(&format!("{record_name}_{k}"), v)?,
                }));
            }
            serde_json::json!({
                "type": "record",
                "name": record_name,
                "fields": fields,
            })
        }
    })
}

impl SimRecord {
    /// The value as an Avro datum for the record's schema (`None` for non-Avro streams).
    pub fn avro_value(&self) -> Option<Result<apache_avro::types::Value, String>> {
        self.avro_schema
            .as_ref()
            .map(|s| json_to_avro(&s.schema, &self.value))
    }

    /// The value as bytes, for every format but Avro (which needs the registry).
    pub fn json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.value)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Converts a JSON value of the shape a schema was derived from into an Avro value.
pub fn json_to_avro(
    schema: &apache_avro::Schema,
    value: &Json,
) -> Result<apache_avro::types::Value, String> {
    use apache_avro::types::Value as V;
    use apache_avro::Schema as S;
    Ok(match (schema, value) {
        (S::Null, Json::Null) => V::Null,
        (S::Boolean, Json::Bool(b)) => V::Boolean(*b),
        (S::Long, Json::Number(n)) => V::Long(
            n.as_i64()
                .ok_or_else(|| format!("{n} does not fit a long"))?,
        ),
        (S::Double, Json::Number(n)) => V::Double(n.as_f64().unwrap_or_default()),
        (S::String, Json::String(s)) => V::String(s.clone()),
        (S::Array(a), Json::Array(items)) => V::Array(
            items
                .iter()
                .map(|v| json_to_avro(&a.items, v))
                .collect::<Result<_, _>>()?,
        ),
        (S::Union(u), v) => {
            let mut last = String::from("empty union");
            for (i, variant) in u.variants().iter().enumerate() {
                match json_to_avro(variant, v) {
                    Ok(x) => {
                        return Ok(V::Union(
                            u32::try_from(i).map_err(|e| e.to_string())?,
                            Box::new(x),
                        ))
                    }
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
        (S::Record(r), Json::Object(map)) => V::Record(
            r.fields
                .iter()
                .map(|f| {
                    let v = map.get(&f.name).unwrap_or(&Json::Null);
                    json_to_avro(&f.schema, v).map(|x| (f.name.clone(), x))
                })
                .collect::<Result<_, _>>()?,
        ),
        (s, v) => return Err(format!("value {v} does not match the Avro schema {s:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<Segment> {
        match FieldPath::parse(p).unwrap() {
            FieldPath::Payload(s) => s,
            other => panic!("{other} is not a payload path"),
        }
    }

    #[test]
    fn set_path_creates_nested_objects_and_arrays() {
        let mut root = Json::Null;
        set_path(&mut root, &segs("$.shipment.order_ref"), "SO-1".into()).unwrap();
        set_path(&mut root, &segs("$.lines[1].sku"), "A".into()).unwrap();
        set_path(&mut root, &segs("$.shipment.carrier"), "DHL".into()).unwrap();
        assert_eq!(
            root,
            serde_json::json!({
                "shipment": {"order_ref": "SO-1", "carrier": "DHL"},
                "lines": [null, {"sku": "A"}],
            })
        );
        let err = set_path(&mut root, &segs("$.shipment.order_ref.x"), "y".into());
        assert!(err.is_err(), "writing inside a string is a conflict");
    }

    #[test]
    fn odoo_times_round_up_to_the_second() {
        assert_eq!(TimeEncoding::OdooDatetime.round(1_000), 1_000);
        assert_eq!(TimeEncoding::OdooDatetime.round(1_001), 2_000);
        assert_eq!(TimeEncoding::Rfc3339.round(1_001), 1_001);
        assert_eq!(odoo_datetime(1_772_460_304_000), "2026-03-02 14:05:04");
        assert_eq!(rfc3339(1_772_460_303_120), "2026-03-02T14:05:03.120Z");
    }

    #[test]
    fn uuids_are_version_4_and_deterministic() {
        let a = uuid_v4(7);
        assert_eq!(a, uuid_v4(7));
        assert_ne!(a, uuid_v4(8));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn derived_avro_schema_round_trips_a_nested_value() {
        let value = serde_json::json!({
            "order_ref": "SO-1",
            "at_ms": 12,
            "ship_to": {"region": "BE"},
            "lines": [null, {"qty": 2.5}],
        });
        let text = derive_avro_schema("wms fulfilment", &value).unwrap();
        let schema = apache_avro::Schema::parse_str(&text).unwrap();
        let avro = json_to_avro(&schema, &value).unwrap();
        assert!(avro.validate(&schema));
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(avro)
            .unwrap();
        assert!(!bytes.is_empty());
        assert!(derive_avro_schema("s", &serde_json::json!({"odd key": 1})).is_err());
    }
}
