//! synclag — how late logistics data reaches the ERP, per business workflow.
//!
//! The crate reads top to bottom in the order data flows:
//!
//! - [`config`]    — `topology.yaml` model: parsing, env overrides, validation (all errors at once).
//! - [`ingest`]    — Kafka consumer group, per-partition offset tracking, rebalance handling.
//! - [`decode`]    — JSON, Avro (Confluent wire format + registry), Debezium envelopes, field paths.
//! - [`correlate`] — the pure engine: windowed state by correlation id, SLA timers, watermarks, HDR lag.
//! - [`route`]     — repartitioning by correlation id: the stages topic's records and partitioner.
//! - [`rules`]     — stage matching, cause attribution and routes, stable breach ids, masking.
//! - [`batch`]     — batch workflows: schedules, runs, completeness, volume, reconciliation (pure).
//! - [`backlog`]   — offset and time lag of the integration's own consumer groups, with status.
//! - [`emit`]      — breach / lag / backlog events onto Kafka, HTTP API.
//! - [`service`]   — `synclag run`: the pipeline task wiring all of the above.
//! - [`telemetry`] — every Prometheus metric name in one place, registration, exporter.
//! - [`auth`]      — API bearer tokens and roles, the auth + audit layer, HTTPS.
//! - [`audit`]     — the audit trail: records of API requests and actions, to Kafka and the log.
//! - [`dlq`]       — dead letters: list, governed redrive (CLI and API), masking of dead letters.
//! - [`retention`] — output topics created with their retention and cleanup policy.
//! - [`demo`]      — `synclag demo`: in-process Kafka, simulator and service, live view and summary.
//! - [`sim`]       — the simulator: realistic logistics + Odoo outbox traffic with injected faults.
//!
//! `main.rs` only parses the command line and calls into these modules.

pub mod audit;
pub mod auth;
pub mod backlog;
pub mod batch;
pub mod config;
pub mod correlate;
pub mod decode;
pub mod demo;
pub mod dlq;
pub mod emit;
pub mod incidents;
pub mod ingest;
pub mod retention;
pub mod route;
pub mod rules;
pub mod service;
pub mod sim;
pub mod telemetry;
