//! Emit: what synclag writes for others.
//!
//! - [`emitter`]  — the one output path: numbered outputs, back-pressure without blocking, acknowledgements.
//! - [`events`]   — the breach and lag-summary event contracts (schemas in `schemas/`).
//! - [`producer`] — Kafka output: Avro through the registry (or JSON without one), dead letters.
//! - [`http`]     — `/metrics`, `/healthz`, `/readyz` and the JSON API.

pub mod emitter;
pub mod events;
pub mod http;
pub mod producer;
