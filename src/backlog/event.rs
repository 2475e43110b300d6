//! The periodic `synclag.backlog` event: one record per watched group and cycle, keyed
//! by group id. Avro (schema `schemas/backlog.avsc`, registered as `<topic>-value`) when
//! a registry is configured, JSON otherwise — the same fields either way.

use super::monitor::MonitorConfig;
use super::report::{BacklogReport, GroupReport};
use super::BacklogError;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The Avro schema of [`BacklogEvent`].
pub const BACKLOG_SCHEMA: &str = include_str!("../../schemas/backlog.avsc");

/// One group at one cycle, as published (fields as in `schemas/backlog.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogEvent {
    pub observed_at: i64,
    pub cycle: i64,
    pub group: String,
    pub state: String,
    pub members: i32,
    pub reset_policy: String,
    pub status: String,
    pub offset_lag: i64,
    pub max_time_lag_seconds: Option<f64>,
    pub uncommitted_partitions: i32,
    pub error: Option<String>,
    pub partitions: Vec<BacklogPartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogPartition {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub no_commit: bool,
    pub log_start: Option<i64>,
    pub log_end: Option<i64>,
    pub offset_lag: Option<i64>,
    pub time_lag_seconds: Option<f64>,
    pub method: String,
    pub status: String,
    pub owned: bool,
    pub error: Option<String>,
}

impl BacklogEvent {
    pub fn from_group(report: &BacklogReport, g: &GroupReport) -> BacklogEvent {
        BacklogEvent {
            observed_at: report.observed_at_ms,
            cycle: i64::try_from(report.cycle).unwrap_or(i64::MAX),
            group: g.group.clone(),
            state: g.state.clone(),
            members: i32::try_from(g.members).unwrap_or(i32::MAX),
            reset_policy: g.reset_policy.as_str().to_owned(),
            status: g.status.as_str().to_owned(),
            offset_lag: g.offset_lag,
            max_time_lag_seconds: g.max_time_lag_seconds,
            uncommitted_partitions: i32::try_from(g.uncommitted_partitions).unwrap_or(i32::MAX),
            error: g.error.clone(),
            partitions: g
                .partitions
                .iter()
                .map(|p| BacklogPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed: p.committed,
                    no_commit: p.no_commit,
                    log_start: p.log_start,
                    log_end: p.log_end,
                    offset_lag: p.offset_lag,
                    time_lag_seconds: p.time_lag_seconds,
                    method: p.method.as_str().to_owned(),
                    status: p.status.as_str().to_owned(),
                    owned: p.owned,
                    error: p.error.clone(),
                })
                .collect(),
        }
    }
}

/// Publishes [`BacklogEvent`]s.
pub struct EventSink {
    producer: FutureProducer,
    topic: String,
    avro: Option<AvroEncoder>,
}

impl EventSink {
    pub fn new(config: &MonitorConfig) -> Result<EventSink, BacklogError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.bootstrap_servers);
        for (k, v) in &config.properties {
            c.set(k, v);
        }
        c.remove("group.id");
        let producer: FutureProducer = c.create().map_err(BacklogError::Client)?;
        let avro = match &config.registry {
            None => None,
            Some(r) => {
                let mut b = SrSettings::new_builder(r.url.clone());
                if let Some(user) = &r.username {
                    let password = r
                        .password_env
                        .as_ref()
                        .and_then(|name| std::env::var(name).ok());
                    b.set_basic_authorization(user, password.as_deref());
                }
                b.set_timeout(r.timeout);
                let settings = b
                    .build()
                    .map_err(|e| BacklogError::Registry(e.to_string()))?;
                Some(AvroEncoder::new(settings))
            }
        };
        Ok(EventSink {
            producer,
            topic: config.backlog_topic.clone(),
            avro,
        })
    }

    /// Encodes one event as the sink is configured to (Avro with registry, else JSON).
    pub async fn encode(&self, event: &BacklogEvent) -> Result<Vec<u8>, BacklogError> {
        match &self.avro {
            None => serde_json::to_vec(event).map_err(|e| BacklogError::Encode(e.to_string())),
            Some(encoder) => {
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    self.topic.clone(),
                    false,
                    SuppliedSchema::new(None, SchemaType::Avro, BACKLOG_SCHEMA.to_owned()),
                );
                encoder
                    .encode_struct(event, &strategy)
                    .await
                    .map_err(|e| BacklogError::Registry(e.to_string()))
            }
        }
    }

    /// Publishes one event per group of `report`; returns how many were delivered.
    pub async fn publish(&self, report: &BacklogReport) -> Result<usize, BacklogError> {
        let mut delivered = 0;
        for g in report.groups() {
            let event = BacklogEvent::from_group(report, &g);
            let payload = self.encode(&event).await?;
            self.producer
                .send(
                    FutureRecord::to(&self.topic)
                        .key(&g.group)
                        .payload(&payload)
                        .timestamp(report.observed_at_ms),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| BacklogError::Publish(e.to_string()))?;
            delivered += 1;
        }
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parses_and_accepts_an_event() {
        let schema = apache_avro::Schema::parse_str(BACKLOG_SCHEMA).expect("schema parses");
        let event = BacklogEvent {
            observed_at: 1_700_000_000_000,
            cycle: 3,
            group: "odoo-connector".into(),
            state: "Empty".into(),
            members: 0,
            reset_policy: "latest".into(),
            status: "STOP".into(),
            offset_lag: 5,
            max_time_lag_seconds: Some(61.5),
            uncommitted_partitions: 1,
            error: None,
            partitions: vec![BacklogPartition {
                topic: "orders".into(),
                partition: 0,
                committed: None,
                no_commit: true,
                log_start: Some(0),
                log_end: Some(5),
                offset_lag: Some(5),
                time_lag_seconds: Some(61.5),
                method: "record".into(),
                status: "STOP".into(),
                owned: false,
                error: None,
            }],
        };
        let value = apache_avro::to_value(&event).expect("to avro value");
        let resolved = value.resolve(&schema).expect("event fits the schema");
        let mut writer = apache_avro::Writer::new(&schema, Vec::new()).expect("writer");
        writer.append_value(resolved).expect("encode");
        let bytes = writer.into_inner().expect("flush");
        let mut reader = apache_avro::Reader::new(bytes.as_slice()).expect("container");
        let back = reader.next().expect("one record").expect("decode");
        let back: BacklogEvent = apache_avro::from_value(&back).expect("from value");
        assert_eq!(back, event);
    }
}
