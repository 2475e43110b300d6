//! Decode: turns a Kafka record of a configured stream into a [`Decoded`] event —
//! correlation id, event type, event time, dimensions — or a [`DecodeError`] with a
//! reason code for the dead-letter topic.
//!
//! - [`extract`] — field paths over payload, headers and record metadata.
//! - [`scan`]    — plain JSON: only the configured payload paths, read from borrowed bytes.
//! - [`time`]    — epoch s/ms/µs, RFC 3339 and Odoo's naive UTC timestamps.
//! - [`avro`]    — Confluent wire format through a schema registry, schemas cached.
//!
//! Formats: plain JSON; Avro; Debezium raw CDC envelopes (`before`/`after`/`source`/
//! `ts_ms`, optionally wrapped in the JSON converter's `{schema, payload}`), whose
//! paths are relative to the envelope; and the Outbox Event Router output, whose value
//! is the payload (an object, or a JSON document in a string) with `id`/`type` headers.

pub mod avro;
pub mod extract;
pub mod scan;
pub mod time;

use crate::config::field_path::{FieldPath, Segment};
use crate::config::{EventTimePolicy, Format, Stream, Topology};
use crate::telemetry::names;
use serde_json::Value;
use std::borrow::Cow;

/// A Kafka record as the decoder needs it, independent of the client library.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<&'a [u8]>)],
    pub timestamp_ms: Option<i64>,
}

/// What a record says, in the terms of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Index into `Topology::streams`.
    pub stream: usize,
    pub correlation_id: String,
    pub event_type: Option<String>,
    /// The business time in the payload (source event time, or ERP write time for `erp_time` streams).
    pub event_time_ms: Option<i64>,
    /// The Kafka record timestamp.
    pub kafka_time_ms: Option<i64>,
    pub dimensions: Vec<(String, String)>,
}

/// Why a record could not be decoded. `reason()` is the low-cardinality code used in
/// metrics and in the dead-letter `synclag.reason` header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value (tombstone)")]
    EmptyValue,
    #[error("value is not JSON: {0}")]
    NotJson(String),
    #[error("value is not Avro in the Confluent wire format: {0}")]
    NotAvro(String),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("not a Debezium change event: {0}")]
    NotDebezium(String),
    #[error("no correlation id at `{0}`")]
    MissingCorrelationId(String),
    #[error("correlation id at `{path}` is {found}, expected text or a number")]
    BadCorrelationId { path: String, found: &'static str },
    #[error("bad event time at `{path}`: {why}")]
    BadTimestamp { path: String, why: String },
    #[error("topic `{0}` is not a configured stream")]
    UnknownTopic(String),
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EmptyValue => "empty_value",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotAvro(_) => "not_avro",
            DecodeError::RegistryUnavailable(_) => "registry_unavailable",
            DecodeError::NotDebezium(_) => "not_debezium",
            DecodeError::MissingCorrelationId(_) => "missing_correlation_id",
            DecodeError::BadCorrelationId { .. } => "bad_correlation_id",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::UnknownTopic(_) => "unknown_topic",
        }
    }

    /// Retryable errors must not go to the dead-letter topic: the partition waits and retries.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable(_))
    }
}

/// Every reason code, for pre-registering metrics.
pub const REASONS: &[&str] = &[
    "empty_value",
    "not_json",
    "not_avro",
    "registry_unavailable",
    "not_debezium",
    "missing_correlation_id",
    "bad_correlation_id",
    "bad_timestamp",
    "unknown_topic",
];

/// Decodes records of every configured stream.
pub struct Decoder {
    streams: Vec<Stream>,
    by_topic: hashbrown::HashMap<String, usize>,
    /// Per stream: how its payload paths are scanned (plain JSON streams; the others, and
    /// a stream with too many paths, go through the parsed document).
    plans: Vec<Option<scan::Plan>>,
    avro: Option<avro::RegistryDecoder>,
    event_time: EventTimePolicy,
}

impl Decoder {
    pub fn new(topology: &Topology) -> Decoder {
        let by_topic = topology
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.topic.clone(), i))
            .collect();
        let event_time = topology.service.event_time;
        for s in &topology.streams {
            // The series exists from start-up, so a dashboard shows 0 rather than nothing.
            metrics::counter!(names::EVENT_TIME_VIOLATIONS_TOTAL, "topic" => s.topic.clone(), "action" => event_time.on_violation.name()).increment(0);
        }
        Decoder {
            plans: topology.streams.iter().map(plan_of).collect(),
            streams: topology.streams.clone(),
            by_topic,
            avro: topology.registry.as_ref().map(avro::RegistryDecoder::new),
            event_time,
        }
    }

    pub fn stream_of(&self, topic: &str) -> Option<usize> {
        self.by_topic.get(topic).copied()
    }

    /// Decodes one record. Retryable errors (registry outage) should be retried by the caller.
    pub async fn decode(&self, record: &RecordView<'_>) -> Result<Decoded, DecodeError> {
        if let Some(done) = self.decode_ready(record) {
            return done;
        }
        self.decode_avro(record).await
    }

    /// Decodes a record whose format needs nothing from the network (JSON, Debezium), or
    /// says so: `None` for Avro, which may have to wait for the registry ([`Self::decode`]).
    /// The hot path calls this first, so a JSON record costs no future and no timer.
    pub fn decode_ready(&self, record: &RecordView<'_>) -> Option<Result<Decoded, DecodeError>> {
        let stream_idx = match self.stream_of(record.topic) {
            Some(i) => i,
            None => return Some(Err(DecodeError::UnknownTopic(record.topic.to_string()))),
        };
        let stream = &self.streams[stream_idx];
        let Some(bytes) = record.payload.filter(|p| !p.is_empty()) else {
            return Some(Err(DecodeError::EmptyValue));
        };
        if let Some(plan) = &self.plans[stream_idx] {
            let mut slots = match plan.scan(bytes) {
                Ok(slots) => slots,
                Err(e) => return Some(Err(DecodeError::NotJson(e.to_string()))),
            };
            return Some(fields(
                stream_idx,
                stream,
                record,
                &self.event_time,
                |slot, path| match path {
                    FieldPath::Payload(_) => slots
                        .get_mut(slot)
                        .and_then(Option::take)
                        .filter(|v| !v.is_null())
                        .map(Cow::Owned),
                    _ => extract::extract(path, &NULL, record),
                },
            ));
        }
        let payload = match stream.format {
            Format::Json => parse_json(bytes),
            Format::Avro => return None,
            Format::DebeziumCdc => parse_json(bytes).and_then(debezium_envelope),
            Format::DebeziumOutbox => parse_json(bytes).map(outbox_payload),
        };
        Some(payload.and_then(|p| {
            fields(stream_idx, stream, record, &self.event_time, |_, path| {
                extract::extract(path, &p, record)
            })
        }))
    }

    async fn decode_avro(&self, record: &RecordView<'_>) -> Result<Decoded, DecodeError> {
        let stream_idx = self
            .stream_of(record.topic)
            .ok_or_else(|| DecodeError::UnknownTopic(record.topic.to_string()))?;
        let stream = &self.streams[stream_idx];
        let bytes = record
            .payload
            .filter(|p| !p.is_empty())
            .ok_or(DecodeError::EmptyValue)?;
        let payload = match stream.format {
            Format::Avro => match &self.avro {
                Some(dec) => dec.decode(bytes).await?,
                None => {
                    return Err(DecodeError::RegistryUnavailable(
                        "no registry configured".into(),
                    ))
                }
            },
            _ => return Err(DecodeError::NotAvro("stream is not Avro".into())),
        };
        fields(stream_idx, stream, record, &self.event_time, |_, path| {
            extract::extract(path, &payload, record)
        })
    }
}

static NULL: Value = Value::Null;

/// Slots of a stream's fields, in the order [`fields`] reads them.
const SLOT_CORRELATION_ID: usize = 0;
const SLOT_EVENT_TYPE: usize = 1;
const SLOT_EVENT_TIME: usize = 2;
const SLOT_DIMENSIONS: usize = 3;

/// The scan plan of a plain JSON stream: its payload paths in slot order.
fn plan_of(stream: &Stream) -> Option<scan::Plan> {
    if !matches!(stream.format, Format::Json) {
        return None;
    }
    fn payload(p: &FieldPath) -> Option<&[Segment]> {
        match p {
            FieldPath::Payload(segments) => Some(segments),
            _ => None,
        }
    }
    let mut paths = vec![
        payload(&stream.correlation_id),
        stream.event_type.as_ref().and_then(payload),
        stream.event_time.as_ref().and_then(payload),
    ];
    paths.extend(stream.dimensions.iter().map(|(_, p)| payload(p)));
    scan::Plan::new(&paths)
}

fn parse_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))
}

/// Unwraps `{schema, payload}` and checks the envelope has the Debezium shape.
fn debezium_envelope(v: Value) -> Result<Value, DecodeError> {
    let env = match v {
        Value::Object(mut m) if m.contains_key("schema") && m.contains_key("payload") => {
            m.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    };
    match &env {
        Value::Object(m) if m.contains_key("after") || m.contains_key("before") => Ok(env),
        Value::Object(_) => Err(DecodeError::NotDebezium(
            "no `before`/`after` fields".into(),
        )),
        other => Err(DecodeError::NotDebezium(format!(
            "expected an object, found {}",
            time::kind(other)
        ))),
    }
}

/// The router may emit the payload as a JSON document inside a string; expand it.
fn outbox_payload(v: Value) -> Value {
    match v {
        Value::Object(mut m)
            if m.len() <= 2 && m.contains_key("schema") && m.contains_key("payload") =>
        {
            outbox_payload(m.remove("payload").unwrap_or(Value::Null))
        }
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    }
}

/// The fields of a record; `get(slot, path)` reads one (see the `SLOT_` constants).
fn fields<'v>(
    stream_idx: usize,
    stream: &Stream,
    record: &RecordView<'_>,
    policy: &EventTimePolicy,
    mut get: impl FnMut(usize, &FieldPath) -> Option<Cow<'v, Value>>,
) -> Result<Decoded, DecodeError> {
    let cid_path = || stream.correlation_id.to_string();
    let correlation_id = match get(SLOT_CORRELATION_ID, &stream.correlation_id) {
        None => return Err(DecodeError::MissingCorrelationId(cid_path())),
        Some(v) => {
            let found = time::kind(&v);
            match extract::into_text(v) {
                Some(s) if !s.trim().is_empty() => s,
                Some(_) => return Err(DecodeError::MissingCorrelationId(cid_path())),
                None => {
                    return Err(DecodeError::BadCorrelationId {
                        path: cid_path(),
                        found,
                    })
                }
            }
        }
    };
    let event_type = stream
        .event_type
        .as_ref()
        .and_then(|p| get(SLOT_EVENT_TYPE, p))
        .and_then(extract::into_text);
    let event_time_ms = match &stream.event_time {
        None => None,
        Some(p) => match get(SLOT_EVENT_TIME, p) {
            None => None,
            Some(v) => {
                let t = time::parse_timestamp(&v).map_err(|why| DecodeError::BadTimestamp {
                    path: p.to_string(),
                    why,
                })?;
                checked_event_time(policy, t, record).map_err(|why| DecodeError::BadTimestamp {
                    path: p.to_string(),
                    why,
                })?
            }
        },
    };
    let dimensions = stream
        .dimensions
        .iter()
        .enumerate()
        .filter_map(|(i, (name, p))| {
            let v = get(SLOT_DIMENSIONS + i, p)?;
            Some((name.clone(), extract::into_text(v)?))
        })
        .collect();
    Ok(Decoded {
        stream: stream_idx,
        correlation_id,
        event_type,
        event_time_ms,
        kafka_time_ms: record.timestamp_ms,
        dimensions,
    })
}

/// Applies the `service.event_time` policy to a parsed payload time: the time to use
/// (`None`: place the record at its Kafka time), or why the record is dead-lettered.
/// Either way a violation is counted.
fn checked_event_time(
    policy: &EventTimePolicy,
    event_ms: i64,
    record: &RecordView<'_>,
) -> Result<Option<i64>, String> {
    let reference = match record.timestamp_ms {
        Some(k) if k >= 0 => time::Reference::Kafka(k),
        _ => time::Reference::ReadAt(time::wall_ms()),
    };
    let count = || {
        metrics::counter!(names::EVENT_TIME_VIOLATIONS_TOTAL, "topic" => record.topic.to_string(), "action" => policy.on_violation.name()).increment(1);
    };
    match time::judge_event_time(policy, event_ms, reference) {
        time::EventTimeVerdict::Valid(t) => Ok(Some(t)),
        time::EventTimeVerdict::Replaced {
            event_time_ms,
            violation,
        } => {
            count();
            tracing::debug!(topic = record.topic, partition = record.partition, offset = record.offset, %violation, "event time out of tolerance; using the Kafka time");
            Ok(event_time_ms)
        }
        time::EventTimeVerdict::Rejected(violation) => {
            count();
            Err(violation.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
kafka: { bootstrap_servers: "localhost:9092" }
streams:
  - name: orders
    topic: orders
    format: json
    fields:
      correlation_id: $.order.ref
      event_time: $.created_at
      event_type: $.event
      dimensions: { channel: $.channel }
  - name: outbox
    topic: outbox
    format: debezium_outbox
    fields:
      correlation_id: $.correlation_id
      event_time: $.write_date
      event_type: header:type
  - name: quants
    topic: quants
    format: debezium_cdc
    fields:
      correlation_id: $.after.move_id
      event_time: $.source.ts_ms
workflows:
  - name: w
    stages: [{ name: a, stream: orders }, { name: b, stream: outbox }]
    sla: { warn: 1m, critical: 2m }
    window: 1h
"#;

    fn decoder() -> Decoder {
        let t = Topology::from_yaml_str("t", YAML, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        Decoder::new(&t)
    }

    fn view<'a>(
        topic: &'a str,
        payload: &'a [u8],
        headers: &'a [(String, Option<&'a [u8]>)],
    ) -> RecordView<'a> {
        RecordView {
            topic,
            partition: 0,
            offset: 7,
            key: None,
            payload: Some(payload),
            headers,
            timestamp_ms: Some(1_764_230_460_000),
        }
    }

    fn run(r: RecordView<'_>) -> Result<Decoded, DecodeError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(decoder().decode(&r))
    }

    #[test]
    fn plain_json() {
        let p = br#"{"order":{"ref":"SO-1"},"created_at":"2025-11-27T08:00:00Z","event":"order.created","channel":"webshop"}"#;
        let d = run(view("orders", p, &[])).unwrap();
        assert_eq!(d.correlation_id, "SO-1");
        assert_eq!(d.event_type.as_deref(), Some("order.created"));
        assert_eq!(d.event_time_ms, Some(1_764_230_400_000));
        assert_eq!(d.kafka_time_ms, Some(1_764_230_460_000));
        assert_eq!(
            d.dimensions,
            vec![("channel".to_string(), "webshop".to_string())]
        );
    }

    #[test]
    fn outbox_router_output_object_and_string_payload() {
        let headers = vec![
            ("type".to_string(), Some(&b"sale.order.imported"[..])),
            ("id".to_string(), Some(&b"e-1"[..])),
        ];
        let obj = br#"{"correlation_id":"SO-1","write_date":"2025-11-27 08:01:00"}"#;
        let d = run(view("outbox", obj, &headers)).unwrap();
        assert_eq!(d.event_type.as_deref(), Some("sale.order.imported"));
        assert_eq!(d.event_time_ms, Some(1_764_230_460_000));
        let string_payload =
            br#""{\"correlation_id\":\"SO-2\",\"write_date\":\"2025-11-27 08:01:00\"}""#;
        assert_eq!(
            run(view("outbox", string_payload, &headers))
                .unwrap()
                .correlation_id,
            "SO-2"
        );
    }

    #[test]
    fn debezium_envelope_plain_and_wrapped() {
        let plain = br#"{"before":null,"after":{"move_id":"MV-9"},"source":{"ts_ms":1764230400000},"op":"c","ts_ms":1764230400500}"#;
        let d = run(view("quants", plain, &[])).unwrap();
        assert_eq!(
            (d.correlation_id.as_str(), d.event_time_ms),
            ("MV-9", Some(1_764_230_400_000))
        );
        let wrapped = br#"{"schema":{},"payload":{"before":null,"after":{"move_id":"MV-10"},"source":{"ts_ms":1764230400000},"op":"u"}}"#;
        assert_eq!(
            run(view("quants", wrapped, &[])).unwrap().correlation_id,
            "MV-10"
        );
        assert_eq!(
            run(view("quants", br#"{"x":1}"#, &[]))
                .unwrap_err()
                .reason(),
            "not_debezium"
        );
    }

    fn run_with(yaml: &str, r: RecordView<'_>) -> Result<Decoded, DecodeError> {
        let t = Topology::from_yaml_str("t", yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Decoder::new(&t).decode(&r))
    }

    #[test]
    fn event_times_out_of_tolerance_fall_back_to_the_kafka_time() {
        // The record's Kafka time is 2025-11-27T08:01:00Z.
        let far_future = br#"{"order":{"ref":"SO-1"},"created_at":"9999-12-31T00:00:00Z"}"#;
        let d = run(view("orders", far_future, &[])).unwrap();
        assert_eq!(
            d.event_time_ms, None,
            "the engine places it at its Kafka time"
        );
        assert_eq!(d.kafka_time_ms, Some(1_764_230_460_000));
        let negative = br#"{"order":{"ref":"SO-2"},"created_at":-1000000000}"#;
        assert_eq!(
            run(view("orders", negative, &[])).unwrap().event_time_ms,
            None
        );
        // Within 5 minutes ahead: clock skew, kept.
        let skewed = br#"{"order":{"ref":"SO-3"},"created_at":"2025-11-27T08:05:00Z"}"#;
        assert_eq!(
            run(view("orders", skewed, &[])).unwrap().event_time_ms,
            Some(1_764_230_700_000)
        );
        // The ERP write time of an outbox record is checked the same way.
        let headers = vec![("type".to_string(), Some(&b"sale.order.imported"[..]))];
        let erp = br#"{"correlation_id":"SO-1","write_date":"1938-04-24 22:13:20"}"#;
        assert_eq!(
            run(view("outbox", erp, &headers)).unwrap().event_time_ms,
            None
        );
    }

    #[test]
    fn event_times_out_of_tolerance_can_be_dead_lettered() {
        let yaml = format!(
            "service:\n  event_time: {{ max_ahead: 1m, max_behind: 2h, on_violation: dead_letter }}\n{YAML}"
        );
        let late = br#"{"order":{"ref":"SO-1"},"created_at":"2025-11-27T05:00:00Z"}"#;
        let e = run_with(&yaml, view("orders", late, &[])).unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
        assert_eq!(e.to_string(), "bad event time at `$.created_at`: event time 2025-11-27T05:00:00+00:00 is 3h1m behind the record's Kafka time 2025-11-27T08:01:00+00:00; at most 2h is accepted (service.event_time.max_behind)");
        let headers = vec![("type".to_string(), Some(&b"sale.order.imported"[..]))];
        let erp = br#"{"correlation_id":"SO-1","write_date":"2025-11-27 08:03:00"}"#;
        let e = run_with(&yaml, view("outbox", erp, &headers)).unwrap_err();
        assert!(
            e.to_string()
                .contains("is 2m ahead of the record's Kafka time"),
            "{e}"
        );
        let ok = br#"{"order":{"ref":"SO-1"},"created_at":"2025-11-27T07:00:00Z"}"#;
        assert!(run_with(&yaml, view("orders", ok, &[])).is_ok());
        // No Kafka time: a lead over the read time is still caught.
        let mut no_ts = view(
            "orders",
            br#"{"order":{"ref":"SO-9"},"created_at":"9999-01-01T00:00:00Z"}"#,
            &[],
        );
        no_ts.timestamp_ms = None;
        assert!(run_with(&yaml, no_ts)
            .unwrap_err()
            .to_string()
            .contains("the time it was read"));
    }

    #[test]
    fn bad_records_have_reasons() {
        assert_eq!(
            run(view("orders", b"{not json", &[])).unwrap_err().reason(),
            "not_json"
        );
        assert_eq!(
            run(view("orders", b"", &[])).unwrap_err().reason(),
            "empty_value"
        );
        let no_id = br#"{"order":{},"created_at":"2025-11-27T08:00:00Z"}"#;
        let e = run(view("orders", no_id, &[])).unwrap_err();
        assert_eq!(e.reason(), "missing_correlation_id");
        assert_eq!(e.to_string(), "no correlation id at `$.order.ref`");
        let obj_id = br#"{"order":{"ref":{"x":1}}}"#;
        assert_eq!(
            run(view("orders", obj_id, &[])).unwrap_err().reason(),
            "bad_correlation_id"
        );
        let bad_time = br#"{"order":{"ref":"SO-1"},"created_at":"soon"}"#;
        let e = run(view("orders", bad_time, &[])).unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
        assert!(e.to_string().contains("`$.created_at`"));
        assert_eq!(
            run(view("elsewhere", b"{}", &[])).unwrap_err().reason(),
            "unknown_topic"
        );
        assert!(REASONS.contains(&e.reason()));
    }
}
