//! The HTTP surface: `/metrics` (Prometheus), `/healthz`, `/readyz`, the JSON API
//! `/api/v1/workflows`, `/api/v1/pending?workflow=&limit=`, `/api/v1/breaches?workflow=&limit=`,
//! `/api/v1/groups`, `/api/v1/batches?workflow=`, and the web view (`/`, see [`super::web`]) built on that API.
//!
//! Handlers only read snapshots that the pipeline publishes (once a second) and the
//! bounded memory of recent breaches; they never touch the engine, so a slow client
//! cannot slow ingestion.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use super::recent::RecentBreaches;
use crate::ingest::health::InputHealth;

/// Status of one workflow for `/api/v1/workflows`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkflowStatus {
    pub name: String,
    pub description: Option<String>,
    pub stages: Vec<String>,
    pub sla_warn_seconds: f64,
    pub sla_critical_seconds: f64,
    pub business_hours_overrides: usize,
    pub window_seconds: f64,
    pub completed: u64,
    pub breaches_warn: u64,
    pub breaches_critical: u64,
    pub never_arrived: u64,
    pub late_arrivals: u64,
    pub pending: usize,
    /// Pending correlations by age bucket label.
    pub pending_by_age: BTreeMap<String, u64>,
    /// End-to-end lag over all dimension values (ms), when any completed.
    pub end_to_end: Option<Quantiles>,
    /// Correlations started per second over the last minute of engine time.
    #[serde(default)]
    pub rate_per_second: f64,
    /// Age of the oldest pending correlation, when one is pending.
    #[serde(default)]
    pub oldest_pending_seconds: Option<f64>,
    /// Starts, completions and end-to-end lag per bucket of engine time, oldest first,
    /// ending with the bucket the engine clock is in.
    #[serde(default)]
    pub lag_trend: Vec<TrendPoint>,
}

/// One bucket of a workflow's recent activity: correlations started and completed in it
/// (by the time their start and closing stage happened) and the end-to-end lag of those
/// completed. Quantiles cover the completions read while the bucket was the newest;
/// completions read later only raise `completed` and `max_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrendPoint {
    pub start_ms: i64,
    pub started: u64,
    pub completed: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

/// Lag quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// One pending correlation for `/api/v1/pending`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingItem {
    pub workflow: String,
    pub correlation_id: String,
    pub started_at_ms: i64,
    pub age_seconds: f64,
    pub stages_seen: Vec<String>,
    pub waiting_for: Option<String>,
    pub dimensions: BTreeMap<String, String>,
}

/// What one instance owns of its group's partitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnedPartitions {
    pub inputs: Vec<String>,
    pub stages: Vec<i32>,
}

/// What the pipeline publishes for the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// Wall time the snapshot was taken.
    #[serde(default)]
    pub observed_at_ms: i64,
    pub engine_clock_ms: i64,
    pub caught_up: bool,
    /// Records on the input partitions not read yet, over all partitions.
    #[serde(default)]
    pub input_lag_records: u64,
    /// Width of a [`TrendPoint`] bucket.
    #[serde(default)]
    pub trend_bucket_ms: i64,
    /// Input partitions that stopped holding the clock back (`topic[p]: reason`).
    #[serde(default)]
    pub stalled_inputs: Vec<String>,
    /// The partitions this instance owns (`topic[p]`): inputs it reads and, with
    /// `store.repartition`, the stages partitions whose correlations it owns.
    #[serde(default)]
    pub owned_partitions: OwnedPartitions,
    pub workflows: Vec<WorkflowStatus>,
    /// Oldest pending first, per workflow.
    pub pending: BTreeMap<String, Vec<PendingItem>>,
    /// Open incidents (their state now), critical and largest first.
    #[serde(default)]
    pub incidents: Vec<crate::emit::events::IncidentEvent>,
    /// Recently resolved incidents, newest first.
    #[serde(default)]
    pub resolved_incidents: Vec<crate::emit::events::IncidentEvent>,
}

/// Readiness: partitions assigned, Kafka reachable, and the registry answers when one is
/// configured. Missing input topics are shown but do not make the service unready (see
/// `ingest::health`).
#[derive(Debug, Default)]
pub struct Readiness {
    pub assigned: AtomicBool,
    pub registry_ok: AtomicBool,
    pub registry_required: bool,
    /// Kafka reachability and missing input topics; the consumer's callbacks and the
    /// metadata probe must be given this same handle.
    pub inputs: InputHealth,
}

type GroupsFn = dyn Fn() -> serde_json::Value + Send + Sync;
type TextFn = dyn Fn() -> String + Send + Sync;

/// Shared state of the HTTP server.
#[derive(Clone)]
pub struct ApiState {
    pub metrics: Option<PrometheusHandle>,
    pub status: Arc<RwLock<StatusSnapshot>>,
    pub ready: Arc<Readiness>,
    pub groups: Option<Arc<GroupsFn>>,
    /// More Prometheus text appended to `/metrics` (series rendered by their owner, such
    /// as the backlog monitor's, which must disappear when their group does).
    pub extra_metrics: Option<Arc<TextFn>>,
    /// The most recent breach events, fed by the pipeline as it raises them.
    pub breaches: Arc<Mutex<RecentBreaches>>,
    /// Batch workflows and their recent runs (`/api/v1/batches`).
    pub batches: crate::batch::glue::BatchesView,
}

impl ApiState {
    pub fn new(metrics: Option<PrometheusHandle>, registry_required: bool) -> ApiState {
        ApiState {
            metrics,
            status: Arc::new(RwLock::new(StatusSnapshot::default())),
            ready: Arc::new(Readiness {
                registry_required,
                ..Readiness::default()
            }),
            groups: None,
            extra_metrics: None,
            breaches: Arc::new(Mutex::new(RecentBreaches::default())),
            batches: Arc::default(),
        }
    }
}

/// The router, separate from the listener so tests can drive it directly.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(super::web::index))
        .route("/assets/{file}", get(super::web::asset))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/api/v1/workflows", get(workflows))
        .route("/api/v1/pending", get(pending))
        .route("/api/v1/breaches", get(breaches))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/batches", get(batches))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let app = router(state);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(local)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => {
            let mut text = h.render();
            if let Some(extra) = &s.extra_metrics {
                text.push_str(&extra());
            }
            ([("content-type", "text/plain; version=0.0.4")], text).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// `/api/v1/batches?workflow=`: batch workflows, their next scheduled run, recent runs
/// (newest first) with their checks, and open incidents by check.
async fn batches(State(s): State<ApiState>, Query(q): Query<BatchesQuery>) -> Response {
    let views = match s.batches.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let views: Vec<_> = views
        .into_iter()
        .filter(|v| q.workflow.as_ref().is_none_or(|w| *w == v.name))
        .collect();
    Json(serde_json::json!({ "batches": views })).into_response()
}

#[derive(Deserialize)]
struct BatchesQuery {
    workflow: Option<String>,
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let assigned = s.ready.assigned.load(Ordering::Relaxed);
    let registry = !s.ready.registry_required || s.ready.registry_ok.load(Ordering::Relaxed);
    let inputs = s.ready.inputs.snapshot();
    let ready = assigned && registry && inputs.kafka_reachable;
    let body = serde_json::json!({
        "ready": ready,
        "partitions_assigned": assigned,
        "registry_ok": registry,
        "kafka_reachable": inputs.kafka_reachable,
        "missing_topics": inputs.missing_topics,
        "fatal_error": inputs.fatal_error,
        "auth_error": inputs.auth_error,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn workflows(State(s): State<ApiState>) -> Response {
    let snap = match s.status.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    Json(serde_json::json!({
        "observed_at_ms": snap.observed_at_ms,
        "engine_clock_ms": snap.engine_clock_ms,
        "caught_up": snap.caught_up,
        "input_lag_records": snap.input_lag_records,
        "stalled_inputs": snap.stalled_inputs,
        "owned_partitions": snap.owned_partitions,
        "trend_bucket_ms": snap.trend_bucket_ms,
        "workflows": snap.workflows,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct BreachesQuery {
    workflow: Option<String>,
    limit: Option<usize>,
}

async fn breaches(State(s): State<ApiState>, Query(q): Query<BreachesQuery>) -> Response {
    if let Some(w) = &q.workflow {
        let snap = match s.status.read() {
            Ok(g) => unknown_workflow(&g, w),
            Err(p) => unknown_workflow(&p.into_inner(), w),
        };
        if let Some(r) = snap {
            return r;
        }
    }
    let limit = q.limit.unwrap_or(50).min(super::recent::RECENT_BREACHES);
    let now = crate::decode::time::wall_ms();
    let view = match s.breaches.lock() {
        Ok(g) => g.view(q.workflow.as_deref(), limit, now),
        Err(p) => p.into_inner().view(q.workflow.as_deref(), limit, now),
    };
    Json(view).into_response()
}

/// 404 naming the known workflows, when `w` is not one of them.
fn unknown_workflow(snap: &StatusSnapshot, w: &str) -> Option<Response> {
    if snap.workflows.iter().any(|x| x.name == w) {
        return None;
    }
    let names: Vec<&str> = snap.workflows.iter().map(|x| x.name.as_str()).collect();
    Some(
        (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({"error": format!("unknown workflow `{w}`"), "workflows": names}),
            ),
        )
            .into_response(),
    )
}

#[derive(Deserialize)]
struct PendingQuery {
    workflow: Option<String>,
    limit: Option<usize>,
}

async fn pending(State(s): State<ApiState>, Query(q): Query<PendingQuery>) -> Response {
    let snap = match s.status.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if let Some(w) = &q.workflow {
        if let Some(r) = unknown_workflow(&snap, w) {
            return r;
        }
    }
    let limit = q.limit.unwrap_or(20).min(1000);
    let mut items: Vec<PendingItem> = snap
        .pending
        .into_iter()
        .filter(|(w, _)| q.workflow.as_ref().is_none_or(|x| x == w))
        .flat_map(|(_, v)| v)
        .collect();
    items.sort_by_key(|i| i.started_at_ms);
    items.truncate(limit);
    Json(serde_json::json!({"pending": items})).into_response()
}

async fn incidents(State(s): State<ApiState>) -> Response {
    let snap = match s.status.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    Json(serde_json::json!({
        "open": snap.incidents,
        "resolved": snap.resolved_incidents,
    }))
    .into_response()
}

async fn groups(State(s): State<ApiState>) -> Response {
    match &s.groups {
        Some(f) => Json(f()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "the backlog monitor is not running"})),
        )
            .into_response(),
    }
}
