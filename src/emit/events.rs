//! Output event contracts. Field names and types match `schemas/*.avsc` exactly; the
//! same structs are serialized as JSON when no registry is configured.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::correlate::SeriesSnapshot;

/// Avro schema of [`BreachEvent`].
pub const BREACH_SCHEMA: &str = include_str!("../../schemas/breach.avsc");
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
}

impl BreachEvent {
    /// Record key: workflow + correlation id, so consumers can compact and dedupe.
    pub fn key(&self) -> String {
        format!("{}/{}", self.workflow, self.correlation_id)
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
        }
    }

    #[test]
    fn schemas_parse_and_structs_round_trip_through_avro() {
        let schema = Schema::parse_str(BREACH_SCHEMA).unwrap();
        let event = sample();
        let value = apache_avro::to_value(&event)
            .unwrap()
            .resolve(&schema)
            .unwrap();
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        let decoded: BreachEvent = apache_avro::from_value(&back).unwrap();
        assert_eq!(decoded, event);
        Schema::parse_str(LAG_SCHEMA).unwrap();
        assert_eq!(event.key(), "order_import/SO-1");
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

    fn avro_bytes(schema: &Schema, value: apache_avro::types::Value) -> Vec<u8> {
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
        let bytes = avro_bytes(&schema, value);
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
        let old_bytes = avro_bytes(&old_schema, old_value);
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
