//! The dead-letter API (operator role, see `auth`):
//!
//! - `GET /api/v1/dlq?reason=&since=&until=&source_topic=&limit=` — letters as `dlq list`;
//! - `POST /api/v1/dlq/redrive` with a JSON body `{reason, since, until, source_topic,
//!   dry_run, max_per_second, limit}` — a redrive as `dlq redrive`, one at a time.

use super::{Actor, RedriveOptions, Selection, DEFAULT_LIST_LIMIT, DEFAULT_MAX_PER_SECOND};
use crate::audit::AuditLog;
use crate::auth::Caller;
use crate::config::Topology;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// Letters one list request returns at most.
const LIST_CAP: usize = 1_000;

#[derive(Clone)]
struct DlqState {
    topology: Arc<Topology>,
    audit: AuditLog,
    /// One redrive at a time per instance (the transactional id fences across instances).
    running: Arc<tokio::sync::Mutex<()>>,
}

/// The dead-letter routes.
pub fn router(topology: Arc<Topology>, audit: AuditLog) -> Router {
    super::preregister();
    Router::new()
        .route("/api/v1/dlq", get(list))
        .route("/api/v1/dlq/redrive", post(redrive))
        .with_state(DlqState {
            topology,
            audit,
            running: Arc::new(tokio::sync::Mutex::new(())),
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    source_topic: Option<String>,
    limit: Option<usize>,
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

fn status_of(e: &super::DlqError) -> StatusCode {
    match e {
        super::DlqError::Selection(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn list(State(s): State<DlqState>, Query(q): Query<ListQuery>) -> Response {
    let selection = Selection {
        reason: q.reason,
        since: q.since,
        until: q.until,
        source_topic: q.source_topic,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(LIST_CAP);
    let topology = s.topology.clone();
    match tokio::task::spawn_blocking(move || super::list(&topology, &selection, limit)).await {
        Ok(Ok(letters)) => Json(serde_json::json!({ "letters": letters })).into_response(),
        Ok(Err(e)) => error(status_of(&e), e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    source_topic: Option<String>,
    #[serde(default)]
    dry_run: bool,
    max_per_second: Option<u32>,
    limit: Option<usize>,
}

async fn redrive(
    State(s): State<DlqState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<RedriveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if body.reason.is_none() && body.since.is_none() && body.source_topic.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "name what to redrive: at least one of reason, since, source_topic",
        );
    }
    let caller = caller.map(|Extension(c)| c);
    let actor = Actor {
        channel: "api",
        name: caller
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), Caller::name),
        role: caller.as_ref().and_then(Caller::role),
        client: caller
            .as_ref()
            .and_then(|c| c.client.map(|a| a.to_string())),
    };
    let Ok(_one) = s.running.try_lock() else {
        return error(StatusCode::CONFLICT, "a redrive is already running");
    };
    let selection = Selection {
        reason: body.reason,
        since: body.since,
        until: body.until,
        source_topic: body.source_topic,
    };
    let options = RedriveOptions {
        dry_run: body.dry_run,
        max_per_second: body.max_per_second.unwrap_or(DEFAULT_MAX_PER_SECOND),
        limit: body.limit.unwrap_or(10_000),
    };
    match super::redrive(&s.topology, &selection, &options, &actor, &s.audit).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(status_of(&e), e),
    }
}
