//! Telemetry: every Prometheus metric name lives in [`names`], is described once in
//! [`describe_all`], and is exported by the `metrics-exporter-prometheus` recorder.
//!
//! Naming: `synclag_<name>_<unit>[_total]`, base units (seconds), labels only from a
//! fixed low-cardinality set (workflow, stage, segment, configured dimension values,
//! severity, cause, reason, topic, partition, group, status, method). Never a
//! correlation id.

pub mod handles;
pub mod names;
pub mod series;

pub use names::describe_all;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Histogram buckets for lags, in seconds: from one second to a day, dense where SLAs
/// usually sit (minutes).
pub const LAG_BUCKETS_SECONDS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    43200.0, 86400.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and describes every metric.
/// Later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LAG_BUCKETS_SECONDS)
                .map_err(|e| e.to_string())?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            describe_all();
            Ok(handle)
        })
        .clone()
}
