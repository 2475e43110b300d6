//! Kafka output: breach and lag events (Avro through the registry, or JSON), dead letters.
//!
//! Delivery is awaited for breach events (they are what alerting depends on); retries
//! are librdkafka's (`message.timeout.ms` bounds them). Failures are counted, never
//! silent.

use super::events::{BreachEvent, LagSummary, BREACH_SCHEMA, LAG_SCHEMA};
use crate::config::Topology;
use crate::telemetry::names;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use std::time::Duration;

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("cannot create the Kafka producer: {0}")]
    Client(String),
    #[error("cannot encode for `{topic}`: {why}")]
    Encode { topic: String, why: String },
    #[error("delivery to `{topic}` failed: {why}")]
    Delivery { topic: String, why: String },
}

impl EmitError {
    /// Delivery and registry problems may pass; encoding bugs do not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EmitError::Delivery { .. })
    }
}

/// Base librdkafka configuration for every client synclag creates.
pub fn client_config(topology: &Topology) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &topology.kafka.bootstrap_servers);
    for (k, v) in &topology.kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The producer of every synclag output topic.
pub struct Outputs {
    producer: FutureProducer,
    encoder: Option<AvroEncoder>,
    breaches_topic: String,
    lag_topic: String,
    dead_letter_topic: String,
}

impl Outputs {
    pub fn new(topology: &Topology) -> Result<Outputs, EmitError> {
        let mut cfg = client_config(topology);
        cfg.set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "20");
        let producer: FutureProducer =
            cfg.create().map_err(|e| EmitError::Client(e.to_string()))?;
        // librdkafka looks up a topic it has never produced to only at its next periodic
        // topic scan (every second), which would hold the first breach after start-up
        // back by up to a second. Fetching the metadata now puts the topic in the
        // client's cache; in the background, so start-up never waits on the cluster.
        let warm = producer.clone();
        let breaches_topic = topology.outputs.breaches_topic.clone();
        std::thread::spawn(move || {
            let _ = warm
                .client()
                .fetch_metadata(Some(&breaches_topic), Duration::from_secs(10));
        });
        let encoder = topology
            .registry
            .as_ref()
            .map(|r| AvroEncoder::new(crate::decode::avro::sr_settings(r)));
        Ok(Outputs {
            producer,
            encoder,
            breaches_topic: topology.outputs.breaches_topic.clone(),
            lag_topic: topology.outputs.lag_topic.clone(),
            dead_letter_topic: topology.outputs.dead_letter_topic.clone(),
        })
    }

    async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: &str,
        item: &T,
    ) -> Result<Vec<u8>, EmitError> {
        match &self.encoder {
            None => serde_json::to_vec(item).map_err(|e| EmitError::Encode {
                topic: topic.into(),
                why: e.to_string(),
            }),
            Some(enc) => {
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    topic.to_string(),
                    false,
                    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string()),
                );
                let out = enc.encode_struct(item, &strategy).await;
                if out.is_err() {
                    enc.remove_errors_from_cache();
                }
                out.map_err(|e| EmitError::Encode {
                    topic: topic.into(),
                    why: e.to_string(),
                })
            }
        }
    }

    /// Sends one record and waits for its delivery; counted by topic and result.
    async fn deliver(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<(), EmitError> {
        let topic = record.topic.to_string();
        let result = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| EmitError::Delivery {
                topic: topic.clone(),
                why: e.to_string(),
            });
        count_delivery(topic, result.is_ok());
        result
    }

    /// Encodes a breach event and hands it to the producer queue (order of calls is the
    /// order on the partition); the returned future resolves on delivery. Waits while
    /// librdkafka's queue is full instead of dropping.
    pub async fn enqueue_breach(
        &self,
        event: &BreachEvent,
    ) -> Result<impl std::future::Future<Output = Result<(), EmitError>> + Send + 'static, EmitError>
    {
        let bytes = self
            .encode(&self.breaches_topic, BREACH_SCHEMA, event)
            .await?;
        let key = event.key();
        let topic = self.breaches_topic.clone();
        let delivery = loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&bytes);
            match self.producer.send_result(record) {
                Ok(d) => break d,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => {
                    return Err(EmitError::Delivery {
                        topic,
                        why: e.to_string(),
                    });
                }
            }
        };
        Ok(async move {
            let result = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(EmitError::Delivery {
                    topic: topic.clone(),
                    why: e.to_string(),
                }),
                Err(_) => Err(EmitError::Delivery {
                    topic: topic.clone(),
                    why: "producer dropped the message".into(),
                }),
            };
            count_delivery(topic, result.is_ok());
            result
        })
    }

    /// Writes lag summaries, keyed by workflow.
    pub async fn lag(&self, summaries: &[LagSummary]) -> Result<(), EmitError> {
        let mut encoded = Vec::with_capacity(summaries.len());
        for s in summaries {
            encoded.push((
                s.workflow.as_str(),
                self.encode(&self.lag_topic, LAG_SCHEMA, s).await?,
            ));
        }
        // All in flight at once: one summary per series can be hundreds of records.
        let sends = encoded.iter().map(|(key, bytes)| {
            self.deliver(
                FutureRecord::to(&self.lag_topic)
                    .key(key.as_bytes())
                    .payload(bytes.as_slice()),
            )
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// Copies a record that could not be processed to the dead-letter topic: original key,
    /// value and headers, plus `synclag.reason`, `synclag.error` and the source coordinates.
    pub async fn dead_letter(
        &self,
        record: &crate::decode::RecordView<'_>,
        reason: &str,
        error: &str,
    ) -> Result<(), EmitError> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in record.headers {
            headers = headers.insert(Header { key: k, value: *v });
        }
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        for (k, v) in [
            ("synclag.reason", reason),
            ("synclag.error", error),
            ("synclag.source.topic", record.topic),
            ("synclag.source.partition", partition.as_str()),
            ("synclag.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(k) = record.key {
            rec = rec.key(k);
        }
        if let Some(p) = record.payload {
            rec = rec.payload(p);
        }
        if let Some(ts) = record.timestamp_ms {
            rec = rec.timestamp(ts);
        }
        self.deliver(rec).await
    }

    /// Waits for everything in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), EmitError> {
        self.producer
            .flush(timeout)
            .map_err(|e| EmitError::Delivery {
                topic: "*".into(),
                why: e.to_string(),
            })
    }
}

/// Counts one delivery outcome on `synclag_output_records_total`.
fn count_delivery(topic: String, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(names::OUTPUT_RECORDS_TOTAL, "topic" => topic, "result" => result)
        .increment(1);
}
