//! Where simulated records go: Kafka (with the schema registry for Avro streams), or a
//! vector in memory for tests and in-process use.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::channel::oneshot::Canceled;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use super::encode::SimRecord;

/// What a delivery report carries.
type OwnedDeliveryResult =
    Result<rdkafka::producer::future_producer::Delivery, (KafkaError, OwnedMessage)>;

/// Records handed over and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records accepted by the destination (for Kafka: acknowledged by the broker).
    pub produced: u64,
    /// Records the destination refused or lost.
    pub errors: u64,
}

/// A sink failed in a way that makes going on pointless.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created (bad properties); not retryable.
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    /// A record of an Avro stream could not be encoded or its schema not registered
    /// (retryable when the registry was unreachable).
    #[error("cannot encode a record for `{topic}`: {message}")]
    Encode {
        topic: String,
        message: String,
        retryable: bool,
    },
    /// An Avro stream but no registry configured; not retryable.
    #[error("stream on `{0}` is Avro but the topology has no `registry:`")]
    NoRegistry(String),
    /// Records were still undelivered when the flush timed out; retryable.
    #[error("flush timed out: {0}")]
    Flush(#[source] KafkaError),
}

/// Takes simulated records.
pub trait RecordSink: Send {
    /// Hands over one record. Delivery may complete later; failures that concern a single
    /// record are counted in [`stats`](RecordSink::stats), not returned.
    fn send(&mut self, record: SimRecord) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Waits until every record handed over is delivered or has failed.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    fn stats(&self) -> SinkStats;
}

/// Keeps every record, in order.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub records: Vec<SimRecord>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }
}

impl RecordSink for MemorySink {
    async fn send(&mut self, record: SimRecord) -> Result<(), SinkError> {
        self.records.push(record);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            produced: self.records.len() as u64,
            errors: 0,
        }
    }
}

/// Schema registry access for Avro streams.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub url: String,
    pub timeout: Duration,
    pub basic_auth: Option<(String, Option<String>)>,
}

/// Produces to Kafka with a `FutureProducer`, with explicit record timestamps; Avro
/// values in the Confluent wire format, their schemas registered as `<topic>-value`.
pub struct KafkaSink {
    producer: FutureProducer,
    encoder: Option<AvroEncoder>,
    in_flight: VecDeque<DeliveryFuture>,
    max_in_flight: usize,
    stats: SinkStats,
    last_error: Option<String>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink for the given librdkafka properties (`bootstrap.servers` among them).
    pub fn new(
        properties: &[(String, String)],
        registry: Option<RegistrySettings>,
    ) -> Result<KafkaSink, SinkError> {
        let mut config = ClientConfig::new();
        config.set("linger.ms", "5");
        for (k, v) in properties {
            config.set(k, v);
        }
        let producer: FutureProducer = config.create().map_err(SinkError::Producer)?;
        let encoder = match registry {
            Some(r) => {
                let mut b = SrSettings::new_builder(r.url.clone());
                b.set_timeout(r.timeout);
                if let Some((user, pass)) = &r.basic_auth {
                    b.set_basic_authorization(user, pass.as_deref());
                }
                let settings = b.build().map_err(|e| SinkError::Encode {
                    topic: String::new(),
                    message: format!("registry settings: {e}"),
                    retryable: false,
                })?;
                Some(AvroEncoder::new(settings))
            }
            None => None,
        };
        Ok(KafkaSink {
            producer,
            encoder,
            in_flight: VecDeque::new(),
            max_in_flight: 10_000,
            stats: SinkStats::default(),
            last_error: None,
        })
    }

    /// The last delivery error seen, for progress lines.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    async fn settle_oldest(&mut self) {
        if let Some(f) = self.in_flight.pop_front() {
            let report = f.await;
            self.count(report);
        }
    }

    fn count(&mut self, report: Result<OwnedDeliveryResult, Canceled>) {
        match report {
            Ok(Ok(_)) => self.stats.produced += 1,
            Ok(Err((e, _))) => {
                self.stats.errors += 1;
                self.last_error = Some(e.to_string());
            }
            Err(_) => {
                self.stats.errors += 1;
                self.last_error = Some("delivery report lost".into());
            }
        }
    }

    async fn payload(&self, record: &SimRecord) -> Result<Vec<u8>, SinkError> {
        let encode_err = |message: String, retryable: bool| SinkError::Encode {
            topic: record.topic.clone(),
            message,
            retryable,
        };
        match (&record.avro_schema, record.avro_value()) {
            (Some(schema), Some(value)) => {
                let encoder = self
                    .encoder
                    .as_ref()
                    .ok_or_else(|| SinkError::NoRegistry(record.topic.clone()))?;
                let value = value.map_err(|e| encode_err(e, false))?;
                let apache_avro::types::Value::Record(fields) = value else {
                    return Err(encode_err("the value is not an Avro record".into(), false));
                };
                let fields: Vec<(&str, apache_avro::types::Value)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    record.topic.clone(),
                    false,
                    SuppliedSchema::new(None, SchemaType::Avro, schema.text.clone()),
                );
                encoder
                    .encode(fields, strategy)
                    .await
                    .map_err(|e| encode_err(e.to_string(), e.retriable))
            }
            _ => record
                .json_bytes()
                .map_err(|e| encode_err(e.to_string(), false)),
        }
    }
}

impl RecordSink for KafkaSink {
    async fn send(&mut self, record: SimRecord) -> Result<(), SinkError> {
        let payload = self.payload(&record).await?;
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_bytes()),
            });
        }
        let key = record.key.clone().unwrap_or_default();
        let mut pending: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(&record.topic)
            .payload(&payload)
            .key(&key)
            .headers(headers)
            .timestamp(record.timestamp_ms);
        loop {
            match self.producer.send_result(pending) {
                Ok(delivery) => {
                    self.in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for the oldest delivery, then retry.
                    pending = back;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        self.settle_oldest().await;
                    }
                }
                Err((e, _)) => {
                    self.stats.errors += 1;
                    self.last_error = Some(e.to_string());
                    break;
                }
            }
        }
        while self.in_flight.len() > self.max_in_flight {
            self.settle_oldest().await;
        }
        // Count reports that are already in, without waiting.
        while let Some(front) = self.in_flight.front_mut() {
            let Some(report) = futures::FutureExt::now_or_never(&mut *front) else {
                break;
            };
            self.in_flight.pop_front();
            self.count(report);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(SinkError::Flush)
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}
