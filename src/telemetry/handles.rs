//! Metric handles resolved once per label set, for the per-record path.
//!
//! `metrics::counter!(name, labels…)` looks the series up in the registry on every call
//! (label strings built, hashed and compared). On the hot path that cost is paid per record
//! and per outcome, so the series whose labels follow from the topology are resolved here
//! up front, and lag histograms (labels from a correlation's dimensions) the first time a
//! combination is seen. Every handle is the same series the look-up would find.

use super::names;
use crate::config::Topology;
use crate::correlate::Dimensions;
use metrics::{Counter, Gauge, Histogram, Label};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Per-workflow counters of the outcome path.
pub struct WorkflowCounters {
    /// `synclag_stage_events_total` by workflow, stage.
    stage_events: Vec<Vec<Counter>>,
    completed: Vec<Counter>,
    never_arrived: Vec<Counter>,
    late_arrivals: Vec<Counter>,
    /// `synclag_breaches_total` by workflow, then cause: [warn, critical].
    breaches: Vec<HashMap<String, [Counter; 2]>>,
    pub deferred_outcomes: Gauge,
}

impl WorkflowCounters {
    pub fn new(topology: &Topology) -> WorkflowCounters {
        let causes = super::series::cause_labels(topology);
        let wf = topology.workflows.iter();
        WorkflowCounters {
            stage_events: wf
                .clone()
                .map(|w| {
                    w.stages
                        .iter()
                        .map(|s| metrics::counter!(names::STAGE_EVENTS_TOTAL, "workflow" => w.name.clone(), "stage" => s.name.clone()))
                        .collect()
                })
                .collect(),
            completed: wf
                .clone()
                .map(|w| metrics::counter!(names::COMPLETED_TOTAL, "workflow" => w.name.clone()))
                .collect(),
            never_arrived: wf
                .clone()
                .map(|w| metrics::counter!(names::NEVER_ARRIVED_TOTAL, "workflow" => w.name.clone()))
                .collect(),
            late_arrivals: wf
                .clone()
                .map(|w| metrics::counter!(names::LATE_ARRIVALS_TOTAL, "workflow" => w.name.clone()))
                .collect(),
            breaches: wf
                .map(|w| {
                    causes
                        .iter()
                        .map(|cause| {
                            let c = |severity: &'static str| metrics::counter!(names::BREACHES_TOTAL, "workflow" => w.name.clone(), "severity" => severity, "cause" => cause.clone());
                            (cause.clone(), [c("warn"), c("critical")])
                        })
                        .collect()
                })
                .collect(),
            deferred_outcomes: metrics::gauge!(names::DEFERRED_OUTCOMES),
        }
    }

    pub fn stage_event(&self, workflow: usize, stage: usize) {
        if let Some(c) = self.stage_events.get(workflow).and_then(|w| w.get(stage)) {
            c.increment(1);
        }
    }

    pub fn completed(&self, workflow: usize) {
        if let Some(c) = self.completed.get(workflow) {
            c.increment(1);
        }
    }

    pub fn never_arrived(&self, workflow: usize) {
        if let Some(c) = self.never_arrived.get(workflow) {
            c.increment(1);
        }
    }

    pub fn late_arrival(&self, workflow: usize) {
        if let Some(c) = self.late_arrivals.get(workflow) {
            c.increment(1);
        }
    }

    /// One breach of `workflow` at `severity` attributed to `cause`. Every cause label is
    /// known up front; one that is not (none today) is looked up like before.
    pub fn breach(
        &self,
        workflow: usize,
        workflow_name: &str,
        severity: &'static str,
        cause: &str,
    ) {
        let tier = match severity {
            "warn" => 0,
            "critical" => 1,
            _ => 2,
        };
        let known = self
            .breaches
            .get(workflow)
            .and_then(|m| m.get(cause))
            .and_then(|c| c.get(tier));
        match known {
            Some(c) => c.increment(1),
            None => metrics::counter!(names::BREACHES_TOTAL, "workflow" => workflow_name.to_string(), "severity" => severity, "cause" => cause.to_string()).increment(1),
        }
    }
}

/// `synclag_lag_seconds` handles by (workflow, from stage, to stage, segment, dimension
/// values). Only combinations the lag histogram's label cap admitted are kept, so this
/// holds at most as many entries as that cap (`synclag_lag_label_overflow_total` counts the
/// others, which are looked up each time as before).
pub struct LagHistograms {
    by_key: hashbrown::HashMap<u64, Histogram>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Default for LagHistograms {
    fn default() -> Self {
        LagHistograms {
            by_key: hashbrown::HashMap::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }
}

impl LagHistograms {
    /// The cache key of a series: its fixed labels and the correlation's dimensions as the
    /// engine interned them (before masking, which is a function of them).
    pub fn key(
        &self,
        workflow: usize,
        from: usize,
        to: usize,
        segment: &str,
        dims: &Dimensions,
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        (workflow, from, to, segment).hash(&mut h);
        for (k, v) in dims.iter() {
            (&**k, &**v).hash(&mut h);
        }
        std::hash::Hasher::finish(&h)
    }

    pub fn get(&self, key: u64) -> Option<&Histogram> {
        self.by_key.get(&key)
    }

    /// Resolves and keeps the series of an admitted combination.
    pub fn admit(&mut self, key: u64, labels: Vec<Label>) -> &Histogram {
        self.by_key
            .entry(key)
            .or_insert_with(|| metrics::histogram!(names::LAG_SECONDS, labels))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
