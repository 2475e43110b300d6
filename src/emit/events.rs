//! Output event contracts. Field names and types match `schemas/*.avsc` exactly; the
//! same structs are serialized as JSON when no registry is configured.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Input partitions that may hold the missing stage but were stalled (`topic[p]: reason`).
    #[serde(default)]
    pub stalled_inputs: Vec<String>,
}

impl BreachEvent {
    /// Record key: workflow + correlation id, so consumers can compact and dedupe.
    pub fn key(&self) -> String {
        format!("{}/{}", self.workflow, self.correlation_id)
    }
}

/// See `schemas/lag.avsc`.
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
}
