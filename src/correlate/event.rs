//! What the engine consumes: classified stage events, and why one can be rejected.

use std::fmt;

/// A correlation id as raw bytes.
///
/// Boxed bytes rather than `String`: ids come straight from payloads and Kafka keys, need
/// not be UTF-8, and a boxed slice is 16 bytes with no spare capacity, which matters when a
/// million of them are pending. The engine moves the box into its state on first sight, so
/// the match path copies no id bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationId(Box<[u8]>);

impl CorrelationId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the id has no bytes (such events are rejected).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The owned bytes.
    pub fn into_boxed_bytes(self) -> Box<[u8]> {
        self.0
    }
}

impl From<&str> for CorrelationId {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().into())
    }
}

impl From<String> for CorrelationId {
    fn from(s: String) -> Self {
        Self(s.into_bytes().into_boxed_slice())
    }
}

impl From<&[u8]> for CorrelationId {
    fn from(b: &[u8]) -> Self {
        Self(b.into())
    }
}

impl From<Vec<u8>> for CorrelationId {
    fn from(b: Vec<u8>) -> Self {
        Self(b.into_boxed_slice())
    }
}

impl From<Box<[u8]>> for CorrelationId {
    fn from(b: Box<[u8]>) -> Self {
        Self(b)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({self})")
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// The four timestamps DESIGN §2 decomposes lag with; any may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    /// Event time from the payload (t0 on a start record).
    pub source_event_ms: Option<i64>,
    /// Kafka record timestamp (t1 on a start record).
    pub kafka_ms: Option<i64>,
    /// When Odoo wrote the record (t2 on a closing record).
    pub erp_write_ms: Option<i64>,
    /// Kafka timestamp of the outbox record (t3 on a closing record).
    pub outbox_kafka_ms: Option<i64>,
}

impl Timestamps {
    /// When the stage happened: the most business-meaningful timestamp present.
    pub fn occurrence_ms(&self) -> Option<i64> {
        self.source_event_ms
            .or(self.erp_write_ms)
            .or(self.kafka_ms)
            .or(self.outbox_kafka_ms)
    }
}

/// Which input record an event came from, so pending state can pin its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Dense index the pipeline assigns per (topic, partition); below [`MAX_PARTITIONS`].
    pub partition_id: u32,
    /// Kafka offset of the record.
    pub offset: i64,
}

/// Partition ids are dense indexes into a table; this bounds that table.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// One classified event: a stage of a workflow reached by a correlation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageEvent {
    /// Index into `EngineConfig::workflows`.
    pub workflow: usize,
    /// Index into that workflow's `stages`.
    pub stage: usize,
    /// Joins the stages of one business object (order number, picking id, …).
    pub correlation_id: CorrelationId,
    /// Timestamps found on the record.
    pub ts: Timestamps,
    /// `(index into the workflow's dimensions, value)`; usually on the start record only.
    pub dimensions: Vec<(usize, String)>,
    /// Source record, for offset pinning.
    pub origin: Origin,
}

/// Why an event was rejected. None is retryable: the same record fails the same way, so
/// the caller should count it, dead-letter it with this reason, and move on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrelateError {
    /// `workflow` is not an index into the configured workflows.
    #[error("unknown workflow index {0}")]
    UnknownWorkflow(usize),
    /// `stage` is not an index into the workflow's chain.
    #[error("workflow {workflow} has no stage index {stage}")]
    UnknownStage {
        /// Workflow index.
        workflow: usize,
        /// Offending stage index.
        stage: usize,
    },
    /// A dimension index outside the workflow's configured dimensions.
    #[error("workflow {workflow} has no dimension index {dimension}")]
    UnknownDimension {
        /// Workflow index.
        workflow: usize,
        /// Offending dimension index.
        dimension: usize,
    },
    /// None of the four timestamps is present, so the stage has no occurrence time.
    #[error("event has no timestamp")]
    NoTimestamp,
    /// The correlation id is empty.
    #[error("empty correlation id")]
    EmptyCorrelationId,
    /// `origin.partition_id` is not below [`MAX_PARTITIONS`].
    #[error("partition id {0} out of range")]
    PartitionOutOfRange(u32),
}

impl CorrelateError {
    /// Always `false`: a rejected event is bad data, not a transient failure.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrence_prefers_source_then_erp_then_kafka_then_outbox() {
        let mut ts = Timestamps {
            source_event_ms: Some(1),
            kafka_ms: Some(3),
            erp_write_ms: Some(2),
            outbox_kafka_ms: Some(4),
        };
        assert_eq!(ts.occurrence_ms(), Some(1));
        ts.source_event_ms = None;
        assert_eq!(ts.occurrence_ms(), Some(2));
        ts.erp_write_ms = None;
        assert_eq!(ts.occurrence_ms(), Some(3));
        ts.kafka_ms = None;
        assert_eq!(ts.occurrence_ms(), Some(4));
        ts.outbox_kafka_ms = None;
        assert_eq!(ts.occurrence_ms(), None);
    }

    #[test]
    fn ids_are_bytes_and_display_lossily() {
        let id = CorrelationId::from(vec![b'a', 0xff]);
        assert_eq!(id.as_bytes(), &[b'a', 0xff]);
        assert_eq!(id.to_string(), "a\u{fffd}");
    }
}
