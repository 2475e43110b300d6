//! Output event contracts. Field names and types match `schemas/*.avsc` exactly; the
//! same structs are serialized as JSON when no registry is configured.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::correlate::SeriesSnapshot;

/// Avro schema of [`BreachEvent`].
pub const BREACH_SCHEMA: &str = include_str!("../../schemas/breach.avsc");
/// Avro schema of [`IncidentEvent`].
pub const INCIDENT_SCHEMA: &str = include_str!("../../schemas/incident.avsc");
/// Avro schema of [`LagSummary`].
pub const LAG_SCHEMA: &str = include_str!("../../schemas/lag.avsc");

/// See `schemas/breach.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreachEvent {
    pub breach_id: String,
    pub kind: String,
    pub severity: String,
    pub workflow: String,
    pub correlation_id: String,
    pub stage: Option<String>,
    pub last_stage_seen: Option<String>,
    pub started_at_ms: i64,
    pub deadline_ms: Option<i64>,
    pub observed_at_ms: i64,
    pub lag_ms: i64,
    pub dimensions: BTreeMap<String, String>,
    pub segments_ms: BTreeMap<String, i64>,
    pub dominant_segment: Option<String>,
    pub probable_cause: Option<String>,
    pub route: Option<String>,
    pub team: Option<String>,
    pub signals: Vec<String>,
    pub backlogged_groups: Vec<String>,
    /// Input partitions that may hold the missing stage but were stalled (`topic[p]: reason`).
    #[serde(default)]
    pub stalled_inputs: Vec<String>,
    /// What chose `probable_cause` (see `schemas/breach.avsc`).
    #[serde(default)]
    pub evidence: Vec<String>,
    /// While pending: the stage still waited for, and the lag not yet explained by a segment.
    #[serde(default)]
    pub waiting_for: Option<String>,
    #[serde(default)]
    pub waiting_ms: Option<i64>,
    /// Fields cut by [`BreachEvent::bounded`]: a field name, or `dimensions.<key>` for one
    /// dimension. Empty when the event is complete; absent in events written before it existed.
    #[serde(default)]
    pub truncated: Vec<String>,
}

/// Longest text, in bytes, a breach event carries in one field (an id, a stage or group
/// name, one dimension key or value, one signal). Inputs decide these values, so without a
/// bound one odd record could make the event too large for the topic and it would be lost.
pub const BREACH_FIELD_MAX_BYTES: usize = 1024;

/// Most entries a breach event carries in one list or map (signals, backlogged groups,
/// dimensions, segments). With [`BREACH_FIELD_MAX_BYTES`] this keeps every event far below
/// Kafka's default 1 MB message limit.
pub const BREACH_LIST_MAX_ITEMS: usize = 32;

/// Hex digits of the SHA-256 kept after a cut prefix: enough that two different long values
/// never share a bounded form in practice, so keys and joins stay distinct.
const CUT_HASH_HEX: usize = 32;

/// Marks where a bounded text was cut, before the hash of the whole value.
const CUT_MARK: &str = "…sha256:";

/// `value` if it has at most `max` bytes; otherwise its longest prefix that leaves room for
/// the cut mark and a hash of the whole value, so the result has at most `max` bytes, still
/// tells which value it was, and the same value is always bounded the same way.
pub fn bound_text(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    if value.len() <= max {
        return std::borrow::Cow::Borrowed(value);
    }
    let room = max.saturating_sub(CUT_MARK.len() + CUT_HASH_HEX);
    let mut cut = room.min(value.len());
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(cut + CUT_MARK.len() + CUT_HASH_HEX);
    out.push_str(&value[..cut]);
    out.push_str(CUT_MARK);
    for byte in digest.iter().take(CUT_HASH_HEX / 2) {
        let _ = write!(out, "{byte:02x}");
    }
    std::borrow::Cow::Owned(out)
}

/// Collects the names of what [`BreachEvent::bounded`] cut, each once, in field order.
struct Cuts(Vec<String>);

impl Cuts {
    fn note(&mut self, field: &str) {
        if !self.0.iter().any(|f| f == field) {
            self.0.push(field.to_string());
        }
    }

    fn text(&mut self, field: &str, value: &mut String) {
        if let std::borrow::Cow::Owned(cut) = bound_text(value, BREACH_FIELD_MAX_BYTES) {
            *value = cut;
            self.note(field);
        }
    }

    fn optional(&mut self, field: &str, value: &mut Option<String>) {
        if let Some(v) = value {
            self.text(field, v);
        }
    }

    fn list(&mut self, field: &str, values: &mut Vec<String>) {
        if values.len() > BREACH_LIST_MAX_ITEMS {
            values.truncate(BREACH_LIST_MAX_ITEMS);
            self.note(field);
        }
        for v in values.iter_mut() {
            self.text(field, v);
        }
    }

    /// Keys are cut like any text; a cut key keeps its prefix, so the order barely moves.
    /// `value` bounds each value and may name it (`dimensions.<key>`) so the reader knows
    /// which one was cut.
    fn map<V>(
        &mut self,
        field: &str,
        map: &mut BTreeMap<String, V>,
        mut value: impl FnMut(&mut Self, &str, &mut V),
    ) {
        let fits = map.len() <= BREACH_LIST_MAX_ITEMS
            && map.keys().all(|k| k.len() <= BREACH_FIELD_MAX_BYTES);
        if !fits {
            self.note(field);
            *map = std::mem::take(map)
                .into_iter()
                .take(BREACH_LIST_MAX_ITEMS)
                .map(|(k, v)| (bound_text(&k, BREACH_FIELD_MAX_BYTES).into_owned(), v))
                .collect();
        }
        for (k, v) in map.iter_mut() {
            value(self, k, v);
        }
    }
}

impl BreachEvent {
    /// Appends the JSON form of the [bounded](Self::bounded) event to `buf` (the output
    /// encoding when no registry is configured).
    pub fn encode_json(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(buf, &*self.bounded_cow())
    }

    /// [`Self::bounded`] without a copy when nothing needs cutting (nearly always).
    pub fn bounded_cow(&self) -> std::borrow::Cow<'_, BreachEvent> {
        if self.within_bounds() {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(self.bounded())
        }
    }

    /// Whether [`Self::bounded`] would cut nothing.
    fn within_bounds(&self) -> bool {
        let text = |s: &str| s.len() <= BREACH_FIELD_MAX_BYTES;
        let optional = |s: &Option<String>| s.as_deref().is_none_or(text);
        let list = |l: &[String]| l.len() <= BREACH_LIST_MAX_ITEMS && l.iter().all(|s| text(s));
        [
            &self.breach_id,
            &self.kind,
            &self.severity,
            &self.workflow,
            &self.correlation_id,
        ]
        .into_iter()
        .all(|s| text(s))
            && [
                &self.stage,
                &self.last_stage_seen,
                &self.dominant_segment,
                &self.probable_cause,
                &self.route,
                &self.team,
                &self.waiting_for,
            ]
            .into_iter()
            .all(optional)
            && self.dimensions.len() <= BREACH_LIST_MAX_ITEMS
            && self.dimensions.iter().all(|(k, v)| text(k) && text(v))
            && self.segments_ms.len() <= BREACH_LIST_MAX_ITEMS
            && self.segments_ms.keys().all(|k| text(k))
            && list(&self.signals)
            && list(&self.backlogged_groups)
            && list(&self.stalled_inputs)
            && list(&self.evidence)
    }

    /// Record key: workflow + correlation id, so consumers can compact and dedupe.
    pub fn key(&self) -> String {
        format!("{}/{}", self.workflow, self.correlation_id)
    }

    /// This event with every text at most [`BREACH_FIELD_MAX_BYTES`] and every list or map
    /// at most [`BREACH_LIST_MAX_ITEMS`] long, and what was cut named in `truncated`. A cut
    /// text keeps its prefix and gains a hash of the whole value (see [`bound_text`]).
    /// Applying it again changes nothing.
    pub fn bounded(&self) -> BreachEvent {
        let mut ev = self.clone();
        let mut cuts = Cuts(std::mem::take(&mut ev.truncated));
        cuts.text("breach_id", &mut ev.breach_id);
        cuts.text("kind", &mut ev.kind);
        cuts.text("severity", &mut ev.severity);
        cuts.text("workflow", &mut ev.workflow);
        cuts.text("correlation_id", &mut ev.correlation_id);
        cuts.optional("stage", &mut ev.stage);
        cuts.optional("last_stage_seen", &mut ev.last_stage_seen);
        cuts.map("dimensions", &mut ev.dimensions, |cuts, key, value| {
            cuts.text(&format!("dimensions.{key}"), value);
        });
        cuts.map("segments_ms", &mut ev.segments_ms, |_, _, _| {});
        cuts.optional("dominant_segment", &mut ev.dominant_segment);
        cuts.optional("probable_cause", &mut ev.probable_cause);
        cuts.optional("route", &mut ev.route);
        cuts.optional("team", &mut ev.team);
        cuts.list("signals", &mut ev.signals);
        cuts.list("backlogged_groups", &mut ev.backlogged_groups);
        cuts.list("stalled_inputs", &mut ev.stalled_inputs);
        cuts.list("evidence", &mut ev.evidence);
        cuts.optional("waiting_for", &mut ev.waiting_for);
        // Bounded too: one entry per field, plus one per dimension (bounded keys, at most
        // BREACH_LIST_MAX_ITEMS of them); entries already there came from an earlier pass.
        ev.truncated = cuts.0;
        ev
    }
}

/// Longest text a breach or incident event keeps in its smallest form (see
/// [`BreachEvent::smallest`]).
const SMALLEST_TEXT_BYTES: usize = 96;

impl BreachEvent {
    /// The smallest form of this event that still says what breached and how late: the
    /// evidence lists left out and every input-made text cut to a few dozen bytes (with the
    /// hash of the whole value), each cut named in `truncated`. For a topic whose
    /// `max.message.bytes` refuses the event as it is. Applying it again changes nothing.
    pub fn smallest(&self) -> BreachEvent {
        let mut ev = self.bounded();
        let mut cuts = Cuts(std::mem::take(&mut ev.truncated));
        for (field, list) in [
            ("signals", &mut ev.signals),
            ("backlogged_groups", &mut ev.backlogged_groups),
            ("stalled_inputs", &mut ev.stalled_inputs),
            ("evidence", &mut ev.evidence),
        ] {
            if !list.is_empty() {
                list.clear();
                cuts.note(field);
            }
        }
        let mut short = |field: &str, value: &mut String| {
            if let std::borrow::Cow::Owned(cut) = bound_text(value, SMALLEST_TEXT_BYTES) {
                *value = cut;
                cuts.note(field);
            }
        };
        short("correlation_id", &mut ev.correlation_id);
        let dimensions = std::mem::take(&mut ev.dimensions);
        for (mut key, mut value) in dimensions {
            short(&format!("dimensions.{key}"), &mut value);
            short("dimensions", &mut key);
            ev.dimensions.insert(key, value);
        }
        ev.truncated = cuts.0;
        ev
    }
}

/// See `schemas/incident.avsc`: breaches grouped by workflow × cause × slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub incident_id: String,
    pub kind: String,
    pub sequence: i64,
    pub severity: String,
    pub workflow: String,
    pub slice: BTreeMap<String, String>,
    pub probable_cause: String,
    pub route: Option<String>,
    pub team: Option<String>,
    pub evidence: Vec<String>,
    pub trigger: String,
    pub opened_at_ms: i64,
    pub first_breach_ms: i64,
    pub last_breach_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub emitted_at_ms: i64,
    pub breached: i64,
    pub pending: i64,
    pub completed: i64,
    pub never_arrived: i64,
    pub worst_lag_ms: i64,
    pub sample: Vec<String>,
    pub slice_breach_rate: Option<f64>,
    pub peer_breach_rate: Option<f64>,
}

impl IncidentEvent {
    /// Record key: the incident id, so a compacted topic keeps each incident's last state.
    pub fn key(&self) -> &str {
        &self.incident_id
    }

    /// The smallest form of this event (see [`BreachEvent::smallest`]): no sample and no
    /// evidence, slice keys and values cut to a few dozen bytes. Applying it again changes
    /// nothing.
    pub fn smallest(&self) -> IncidentEvent {
        let mut ev = self.clone();
        ev.sample.clear();
        ev.evidence.clear();
        ev.slice = std::mem::take(&mut ev.slice)
            .into_iter()
            .map(|(k, v)| {
                (
                    bound_text(&k, SMALLEST_TEXT_BYTES).into_owned(),
                    bound_text(&v, SMALLEST_TEXT_BYTES).into_owned(),
                )
            })
            .collect();
        ev
    }
}

/// See `schemas/lag.avsc`. One series over one interval: `count` … `max_ms` and
/// `hdr_base64` cover the lags recorded in `[interval_start_ms, interval_end_ms)` only, so
/// consecutive summaries merge into any longer span; the `cumulative_*` fields cover every
/// lag since the process started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSummary {
    pub workflow: String,
    pub from_stage: String,
    pub to_stage: String,
    pub segment: String,
    pub dimensions: BTreeMap<String, String>,
    pub emitted_at_ms: i64,
    pub count: i64,
    pub min_ms: i64,
    pub p50_ms: i64,
    pub p90_ms: i64,
    pub p99_ms: i64,
    pub p999_ms: i64,
    pub max_ms: i64,
    pub hdr_base64: String,
    // Added later, with defaults, so summaries written before still read (Avro) or
    // parse (JSON).
    #[serde(default)]
    pub interval_start_ms: i64,
    #[serde(default)]
    pub interval_end_ms: i64,
    #[serde(default)]
    pub cumulative_count: i64,
    #[serde(default)]
    pub cumulative_p50_ms: i64,
    #[serde(default)]
    pub cumulative_p90_ms: i64,
    #[serde(default)]
    pub cumulative_p99_ms: i64,
    #[serde(default)]
    pub cumulative_max_ms: i64,
}

impl LagSummary {
    /// The lag-topic record of one series' interval, emitted at `emitted_at_ms`.
    pub fn from_snapshot(s: SeriesSnapshot, emitted_at_ms: i64) -> LagSummary {
        let long = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        LagSummary {
            workflow: s.workflow,
            from_stage: s.from_stage,
            to_stage: s.to_stage,
            segment: s.key.segment.as_str().to_string(),
            dimensions: s
                .dimensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            emitted_at_ms,
            count: long(s.interval.count),
            min_ms: long(s.interval.min_ms),
            p50_ms: long(s.interval.p50_ms),
            p90_ms: long(s.interval.p90_ms),
            p99_ms: long(s.interval.p99_ms),
            p999_ms: long(s.interval.p999_ms),
            max_ms: long(s.interval.max_ms),
            hdr_base64: s.histogram_b64,
            interval_start_ms: s.interval_start_ms,
            interval_end_ms: s.interval_end_ms,
            cumulative_count: long(s.cumulative.count),
            cumulative_p50_ms: long(s.cumulative.p50_ms),
            cumulative_p90_ms: long(s.cumulative.p90_ms),
            cumulative_p99_ms: long(s.cumulative.p99_ms),
            cumulative_max_ms: long(s.cumulative.max_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    fn sample() -> BreachEvent {
        BreachEvent {
            breach_id: "b".into(),
            kind: "breach".into(),
            severity: "critical".into(),
            workflow: "order_import".into(),
            correlation_id: "SO-1".into(),
            stage: Some("imported".into()),
            last_stage_seen: None,
            started_at_ms: 1,
            deadline_ms: Some(2),
            observed_at_ms: 3,
            lag_ms: 4,
            dimensions: BTreeMap::from([("carrier".into(), "DHL".into())]),
            segments_ms: BTreeMap::from([("partner_ingestion".into(), 5)]),
            dominant_segment: None,
            probable_cause: Some("carrier_api_throttling".into()),
            route: Some("integration_support".into()),
            team: None,
            signals: vec!["carrier_api_throttled".into()],
            backlogged_groups: vec![],
            stalled_inputs: vec![],
            evidence: vec!["signal:carrier_api_throttled".into()],
            waiting_for: Some("imported".into()),
            waiting_ms: Some(3),
            truncated: vec![],
        }
    }

    fn round_trip<T>(schema: &str, item: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let schema = Schema::parse_str(schema).unwrap();
        let bytes = avro_bytes(&schema, item);
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        apache_avro::from_value(&back).unwrap()
    }

    #[test]
    fn incident_events_round_trip_through_avro() {
        let inc = IncidentEvent {
            incident_id: "i".into(),
            kind: "opened".into(),
            sequence: 1,
            severity: "warn".into(),
            workflow: "shipment_status".into(),
            slice: BTreeMap::from([("carrier".into(), "DHL".into())]),
            probable_cause: "carrier_api_throttling".into(),
            route: Some("integration_support".into()),
            team: None,
            evidence: vec!["signal:carrier_api_throttled".into()],
            trigger: "breach".into(),
            opened_at_ms: 1,
            first_breach_ms: 1,
            last_breach_ms: 2,
            resolved_at_ms: None,
            emitted_at_ms: 3,
            breached: 4,
            pending: 3,
            completed: 9,
            never_arrived: 0,
            worst_lag_ms: 5,
            sample: vec!["c1".into()],
            slice_breach_rate: Some(0.5),
            peer_breach_rate: None,
        };
        assert_eq!(round_trip(INCIDENT_SCHEMA, &inc), inc);
    }

    #[test]
    fn schemas_parse_and_structs_round_trip_through_avro() {
        let event = sample();
        assert_eq!(round_trip(BREACH_SCHEMA, &event), event);
        Schema::parse_str(LAG_SCHEMA).unwrap();
        assert_eq!(event.key(), "order_import/SO-1");
    }

    fn avro_bytes<T: Serialize>(schema: &Schema, item: &T) -> Vec<u8> {
        let value = apache_avro::to_value(item)
            .unwrap()
            .resolve(schema)
            .unwrap();
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn the_smallest_form_leaves_out_evidence_cuts_long_texts_and_stays_put() {
        let mut event = sample();
        event.signals = vec!["carrier_api_throttling".into()];
        event.evidence = vec!["x".repeat(900); 20];
        event
            .dimensions
            .insert("note".into(), "n".repeat(BREACH_FIELD_MAX_BYTES));
        let small = event.smallest();
        assert!(small.signals.is_empty() && small.evidence.is_empty());
        assert!(small.dimensions["note"].len() <= SMALLEST_TEXT_BYTES);
        assert!(small.dimensions["note"].contains("sha256:"));
        for field in ["signals", "evidence", "dimensions.note"] {
            assert!(small.truncated.iter().any(|f| f == field), "{field}");
        }
        // What identifies the breach stays whole.
        assert_eq!(
            (&small.breach_id, &small.correlation_id, small.lag_ms),
            (&event.breach_id, &event.correlation_id, event.lag_ms)
        );
        let bytes = |e: &BreachEvent| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0);
        assert!(bytes(&small) * 10 < bytes(&event), "far smaller");
        assert_eq!(small.smallest(), small, "a second pass changes nothing");
    }

    #[test]
    fn a_small_event_is_left_as_it_is() {
        let event = sample();
        assert_eq!(event.bounded(), event);
        assert!(matches!(event.bounded_cow(), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn megabyte_fields_are_cut_to_a_prefix_and_a_hash_and_named() {
        let mut event = sample();
        event.correlation_id = "SO-".to_string() + &"x".repeat(1 << 20);
        event
            .dimensions
            .insert("warehouse".into(), "W".repeat(1 << 20));
        let bounded = event.bounded();
        assert_eq!(
            bounded.truncated,
            vec!["correlation_id".to_string(), "dimensions.warehouse".into()]
        );
        assert!(bounded.correlation_id.len() <= BREACH_FIELD_MAX_BYTES);
        assert!(bounded.correlation_id.starts_with("SO-xxx"));
        assert!(bounded.correlation_id.contains("…sha256:"));
        assert!(bounded.dimensions["warehouse"].len() <= BREACH_FIELD_MAX_BYTES);
        // What fitted is untouched.
        assert_eq!(bounded.dimensions["carrier"], "DHL");
        assert_eq!(bounded.workflow, "order_import");
        // The same value always bounds the same way; another long value with the same
        // prefix does not collide with it.
        assert_eq!(event.bounded().correlation_id, bounded.correlation_id);
        let mut other = event.clone();
        other.correlation_id.push('y');
        assert_ne!(other.bounded().correlation_id, bounded.correlation_id);
        assert_ne!(other.bounded().key(), bounded.key());
        // Bounding twice changes nothing (the marks survive).
        assert_eq!(bounded.bounded(), bounded);
        assert_eq!(*event.bounded_cow(), bounded);
        assert!(matches!(
            bounded.bounded_cow(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn long_lists_and_maps_keep_the_first_entries() {
        let mut event = sample();
        event.signals = (0..100).map(|i| format!("s{i:03}")).collect();
        event.backlogged_groups = vec!["g".repeat(5000)];
        event.dimensions = (0..100).map(|i| (format!("d{i:03}"), "v".into())).collect();
        let bounded = event.bounded();
        assert_eq!(*event.bounded_cow(), bounded);
        assert_eq!(bounded.signals.len(), BREACH_LIST_MAX_ITEMS);
        assert_eq!(bounded.signals[0], "s000");
        assert_eq!(bounded.dimensions.len(), BREACH_LIST_MAX_ITEMS);
        assert!(bounded.dimensions.contains_key("d000"));
        assert!(bounded.backlogged_groups[0].len() <= BREACH_FIELD_MAX_BYTES);
        assert_eq!(
            bounded.truncated,
            vec![
                "dimensions".to_string(),
                "signals".into(),
                "backlogged_groups".into()
            ]
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // 'é' is two bytes: a cut in the middle of one would not be a string at all.
        for extra in 0..4 {
            let value = "a".repeat(extra) + &"é".repeat(3000);
            let cut = bound_text(&value, BREACH_FIELD_MAX_BYTES);
            assert!(cut.len() <= BREACH_FIELD_MAX_BYTES, "{}", cut.len());
            assert!(cut.len() >= BREACH_FIELD_MAX_BYTES - 4, "{}", cut.len());
        }
        assert_eq!(bound_text("short", 10), "short");
    }

    #[test]
    fn a_bounded_event_round_trips_through_avro_with_its_marks() {
        let schema = Schema::parse_str(BREACH_SCHEMA).unwrap();
        let mut event = sample();
        event.correlation_id = "z".repeat(1 << 20);
        let bounded = event.bounded();
        let bytes = avro_bytes(&schema, &bounded);
        assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        let decoded: BreachEvent = apache_avro::from_value(&back).unwrap();
        assert_eq!(decoded, bounded);
        assert_eq!(decoded.truncated, vec!["correlation_id".to_string()]);
    }

    #[test]
    fn events_written_before_the_truncated_field_still_read() {
        // Backward compatibility: a reader on the current schema reads an event written
        // with the schema that had no `truncated` field (Avro default), and so does JSON.
        let current = Schema::parse_str(BREACH_SCHEMA).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(BREACH_SCHEMA).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "truncated");
        let previous = Schema::parse_str(&json.to_string()).unwrap();
        let event = sample();
        let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&event).unwrap()
        else {
            panic!("a struct serializes to an Avro record");
        };
        fields.retain(|(name, _)| name != "truncated");
        let written = apache_avro::types::Value::Record(fields)
            .resolve(&previous)
            .unwrap();
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&previous)
            .build()
            .unwrap()
            .write_value_to_vec(written)
            .unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&previous)
            .reader_schema(&current)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        let decoded: BreachEvent = apache_avro::from_value(&back).unwrap();
        assert_eq!(decoded, event);
        let mut old_json = serde_json::to_value(&event).unwrap();
        old_json.as_object_mut().unwrap().remove("truncated");
        let from_json: BreachEvent = serde_json::from_value(old_json).unwrap();
        assert_eq!(from_json, event);
    }

    fn lag_sample() -> LagSummary {
        LagSummary {
            workflow: "order_import".into(),
            from_stage: "created".into(),
            to_stage: "imported".into(),
            segment: "end_to_end".into(),
            dimensions: BTreeMap::from([("channel".into(), "b2b".into())]),
            emitted_at_ms: 2_000,
            count: 3,
            min_ms: 10,
            p50_ms: 20,
            p90_ms: 30,
            p99_ms: 30,
            p999_ms: 30,
            max_ms: 30,
            hdr_base64: "SElTVA==".into(),
            interval_start_ms: 1_000,
            interval_end_ms: 2_000,
            cumulative_count: 7,
            cumulative_p50_ms: 15,
            cumulative_p90_ms: 40,
            cumulative_p99_ms: 50,
            cumulative_max_ms: 50,
        }
    }

    fn avro_value_bytes(schema: &Schema, value: apache_avro::types::Value) -> Vec<u8> {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn lag_summaries_round_trip_and_read_records_of_the_earlier_schema() {
        let schema = Schema::parse_str(LAG_SCHEMA).unwrap();
        let summary = lag_sample();
        let value = apache_avro::to_value(&summary)
            .unwrap()
            .resolve(&schema)
            .unwrap();
        let bytes = avro_value_bytes(&schema, value);
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(
            apache_avro::from_value::<LagSummary>(&back).unwrap(),
            summary
        );

        // A record written with the schema before the interval fields: the new reader
        // fills in the defaults.
        let mut old_schema: serde_json::Value = serde_json::from_str(LAG_SCHEMA).unwrap();
        old_schema["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f.get("default").is_none());
        let old_schema = Schema::parse_str(&old_schema.to_string()).unwrap();
        let old_value = apache_avro::to_value(&summary)
            .unwrap()
            .resolve(&old_schema)
            .unwrap();
        let old_bytes = avro_value_bytes(&old_schema, old_value);
        let read = apache_avro::reader::datum::GenericDatumReader::builder(&old_schema)
            .reader_schema(&schema)
            .build()
            .unwrap()
            .read_value(&mut old_bytes.as_slice())
            .unwrap();
        let read: LagSummary = apache_avro::from_value(&read).unwrap();
        assert_eq!(read.count, 3);
        assert_eq!((read.interval_start_ms, read.cumulative_count), (0, 0));
        // Older JSON summaries parse too.
        let mut json = serde_json::to_value(&summary).unwrap();
        json.as_object_mut().unwrap().remove("cumulative_count");
        let parsed: LagSummary = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.cumulative_count, 0);
    }
}
