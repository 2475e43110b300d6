//! What the API shows: a snapshot of the engine and the per-workflow counts, built once a
//! second by the pipeline (handlers never touch the engine).

use super::outcomes::Outcomes;
use super::trend::TREND_BUCKET_MS;
use crate::config::Topology;
use crate::correlate::{PendingStatus, AGE_BUCKET_LABELS};
use crate::emit::http::{PendingItem, Quantiles, StatusSnapshot, WorkflowStatus};
use crate::telemetry::names;
use std::collections::BTreeMap;

/// Builds the API snapshot and sets the gauges that go with it.
pub fn snapshot(
    topology: &Topology,
    pending: Vec<PendingStatus>,
    outcomes: &Outcomes,
    clock_ms: i64,
    caught_up: bool,
    stalled_inputs: Vec<String>,
) -> StatusSnapshot {
    let mut snapshot = StatusSnapshot {
        engine_clock_ms: clock_ms,
        caught_up,
        stalled_inputs,
        trend_bucket_ms: TREND_BUCKET_MS,
        ..Default::default()
    };
    (snapshot.incidents, snapshot.resolved_incidents) =
        outcomes.incidents(crate::decode::time::wall_ms());
    for ps in pending {
        let wf = &topology.workflows[ps.workflow];
        let st = &outcomes.stats()[ps.workflow];
        metrics::gauge!(names::HELD_CORRELATIONS, "workflow" => wf.name.clone())
            .set(ps.held as f64);
        let mut by_age = BTreeMap::new();
        for (label, n) in AGE_BUCKET_LABELS.iter().zip(ps.by_age.iter()) {
            metrics::gauge!(names::PENDING_CORRELATIONS, "workflow" => wf.name.clone(), "age" => *label).set(*n as f64);
            by_age.insert((*label).to_string(), *n);
        }
        snapshot.workflows.push(WorkflowStatus {
            name: wf.name.clone(),
            description: wf.description.clone(),
            stages: wf.stages.iter().map(|s| s.name.clone()).collect(),
            sla_warn_seconds: wf.sla.warn.as_secs_f64(),
            sla_critical_seconds: wf.sla.critical.as_secs_f64(),
            business_hours_overrides: wf.sla.business_hours.len(),
            window_seconds: wf.window.as_secs_f64(),
            completed: st.completed,
            breaches_warn: st.warn,
            breaches_critical: st.critical,
            never_arrived: st.never_arrived,
            late_arrivals: st.late,
            pending: ps.pending,
            pending_by_age: by_age,
            end_to_end: st
                .end_to_end
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| Quantiles {
                    count: h.len(),
                    p50_ms: h.value_at_quantile(0.5),
                    p90_ms: h.value_at_quantile(0.9),
                    p99_ms: h.value_at_quantile(0.99),
                    max_ms: h.max(),
                }),
            rate_per_second: st.trend.rate_per_second(clock_ms),
            oldest_pending_seconds: ps
                .oldest
                .iter()
                .map(|p| p.start_ms)
                .min()
                .map(|start| clock_ms.saturating_sub(start).max(0) as f64 / 1000.0),
            lag_trend: st.trend.points(clock_ms),
        });
        let items = ps
            .oldest
            .iter()
            .map(|p| {
                let missing = p.stages_seen.missing(wf.stages.len());
                PendingItem {
                    workflow: wf.name.clone(),
                    correlation_id: outcomes.shown_id(p.correlation_id.to_string()),
                    started_at_ms: p.start_ms,
                    age_seconds: clock_ms.saturating_sub(p.start_ms).max(0) as f64 / 1000.0,
                    stages_seen: p
                        .stages_seen
                        .iter()
                        .map(|s| outcomes.stage_name(ps.workflow, s))
                        .collect(),
                    waiting_for: missing
                        .first()
                        .map(|s| outcomes.stage_name(ps.workflow, *s)),
                    dimensions: outcomes.shown_dims(p.dimensions.iter().map(|(k, v)| (&**k, &**v))),
                }
            })
            .collect();
        snapshot.pending.insert(wf.name.clone(), items);
    }
    snapshot
}
