//! Telemetry: every Prometheus metric name lives in [`names`], is described once in
//! [`describe_all`], and is exported by the `metrics-exporter-prometheus` recorder.
//!
//! Naming: `synclag_<name>_<unit>[_total]`, base units (seconds), labels only from a
//! fixed low-cardinality set (workflow, stage, segment, configured dimension values,
//! severity, cause, reason, topic, partition, group, status, method). Never a
//! correlation id.

pub mod names;

pub use names::describe_all;
