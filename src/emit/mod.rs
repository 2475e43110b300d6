//! Emit: what synclag writes for others.
//!
//! - [`emitter`]  — the one output path: numbered outputs, back-pressure without blocking, acknowledgements.
//! - [`events`]   — the breach and lag-summary event contracts (schemas in `schemas/`).
//! - [`producer`] — Kafka output: Avro through the registry (or JSON without one), dead letters.
//! - [`http`]     — `/metrics`, `/healthz`, `/readyz`, the JSON API and the web view.
//! - [`recent`]   — the most recent breaches and their grouping, for the API.
//! - [`web`]      — the web view's static files, embedded in the binary.

pub mod emitter;
pub mod events;
pub mod http;
pub mod producer;
pub mod recent;
pub mod web;
