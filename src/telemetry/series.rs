//! Series synclag knows up front, and the rules that keep label values low-cardinality.
//!
//! Every counter and gauge whose label set follows from the topology exists from start-up
//! with value 0, so a dashboard or an alert rule (`rate(...)`, `absent(...)`) sees the
//! series before the first event. Label values never come from payloads unchecked: signal
//! kinds that no cause names are counted as `other`.

use super::names;
use crate::config::{CauseMatch, Role, Topology};
use crate::correlate::AGE_BUCKET_LABELS;
use std::collections::HashSet;

/// The `kind` label for signals that no configured cause names.
pub const OTHER: &str = "other";

/// Creates every series whose labels are known from the topology, at 0.
pub fn preregister(topology: &Topology, signal_kinds: &SignalKinds) {
    use metrics::{counter, gauge};
    for c in [
        names::DUPLICATES_TOTAL,
        names::STAGES_AFTER_COMPLETION_TOTAL,
        names::EVICTED_TOTAL,
        names::REJECTED_EVENTS_TOTAL,
        names::DIMENSION_OVERFLOW_TOTAL,
        names::SIGNALS_FORGOTTEN_TOTAL,
        names::REGISTRY_RETRIES_TOTAL,
        names::EVIDENCE_FORGOTTEN_TOTAL,
        names::LAG_LABEL_OVERFLOW_TOTAL,
        names::HELD_STAGES_TOTAL,
        names::HELD_EXPIRED_TOTAL,
        names::STAGES_BEYOND_WINDOW_TOTAL,
        names::NEGATIVE_LAGS_TOTAL,
        names::RECENT_FORGOTTEN_TOTAL,
        names::TIERS_AFTER_WINDOW_TOTAL,
        names::STATE_REJECTED_TOTAL,
        names::INPUT_PACED_TOTAL,
        names::INPUT_PACED_PAUSES_TOTAL,
        names::PIPELINE_RESTARTS_TOTAL,
    ] {
        counter!(c).absolute(0);
    }
    for g in [
        names::ENGINE_CLOCK_SECONDS,
        names::DEFERRED_OUTCOMES,
        names::GROUP_MEMBERS,
        names::INPUT_HELD_RECORDS,
        names::OUTPUT_QUEUED,
        names::INPUTS_PAUSED_FOR_OUTPUT,
        names::INPUT_PACED,
        names::INPUT_PACED_RECORDS,
        names::INPUT_FETCHED_RECORDS,
        names::OWNED_STAGES_PARTITIONS,
        names::REPARTITIONED,
        names::CLOCK_LIVE,
        names::OUTPUT_UNACKED,
        names::EVIDENCE_ENTRIES,
        names::RECENT_CORRELATIONS,
        names::STATE_RESTORE_SECONDS,
        names::STATE_CUTS_WAITING,
    ] {
        gauge!(g).set(0.0);
    }
    for activity in names::PIPELINE_ACTIVITIES {
        gauge!(names::PIPELINE_BUSY_RATIO, "activity" => activity).set(0.0);
    }
    for kind in ["pending", "finished"] {
        gauge!(names::STATE_RESTORED, "kind" => kind).set(0.0);
    }
    for kind in ["pending", "finished", "deleted"] {
        counter!(names::STATE_RECORDS_TOTAL, "kind" => kind).absolute(0);
    }
    gauge!(names::STORE_CAPACITY).set(topology.store.max_pending as f64);
    for s in &topology.streams {
        let topic = s.topic.clone();
        counter!(names::RECORDS_CONSUMED_TOTAL, "topic" => topic.clone()).absolute(0);
        counter!(names::UNMATCHED_RECORDS_TOTAL, "topic" => topic.clone()).absolute(0);
        for reason in crate::decode::REASONS {
            counter!(names::DECODE_ERRORS_TOTAL, "topic" => topic.clone(), "reason" => *reason)
                .absolute(0);
        }
        if s.role == Role::Signals {
            for kind in signal_kinds.labels_of(&s.name) {
                counter!(names::SIGNALS_TOTAL, "stream" => s.name.clone(), "kind" => kind)
                    .absolute(0);
            }
        }
    }
    for reason in crate::decode::REASONS.iter().chain(["rejected"].iter()) {
        counter!(names::DEAD_LETTERS_TOTAL, "reason" => *reason).absolute(0);
    }
    let o = &topology.outputs;
    for topic in [
        &o.breaches_topic,
        &o.lag_topic,
        &o.dead_letter_topic,
        &o.incidents_topic,
    ] {
        for result in ["ok", "error"] {
            counter!(names::OUTPUT_RECORDS_TOTAL, "topic" => topic.clone(), "result" => result)
                .absolute(0);
        }
        counter!(names::OUTPUT_ERRORS_TOTAL, "topic" => topic.clone()).absolute(0);
        counter!(names::OUTPUT_DROPPED_TOTAL, "topic" => topic.clone(), "reason" => "too_large")
            .absolute(0);
        gauge!(names::OUTPUT_QUEUE_FULL_WAITING, "topic" => topic.clone()).set(0.0);
    }
    // The fields most often cut: an oversized id in a breach, an oversized value in a
    // dead letter (others appear when they are first cut).
    counter!(names::OUTPUT_TRUNCATIONS_TOTAL, "topic" => o.breaches_topic.clone(), "field" => "correlation_id")
        .absolute(0);
    for field in ["key", "headers", "error", "value"] {
        counter!(names::OUTPUT_TRUNCATIONS_TOTAL, "topic" => o.dead_letter_topic.clone(), "field" => field)
            .absolute(0);
    }
    let causes = cause_labels(topology);
    for (workflow, cause) in incident_series(topology) {
        gauge!(names::INCIDENTS_OPEN, "workflow" => workflow, "cause" => cause).set(0.0);
    }
    for kind in ["opened", "updated", "resolved"] {
        counter!(names::INCIDENT_EVENTS_TOTAL, "kind" => kind).absolute(0);
    }
    for reason in ["open_cap", "rate_cap"] {
        counter!(names::INCIDENTS_SUPPRESSED_TOTAL, "reason" => reason).absolute(0);
    }
    counter!(names::INCIDENT_BREACHES_FOLDED_TOTAL).absolute(0);
    counter!(names::DEGRADED_FLAPS_SUPPRESSED_TOTAL).absolute(0);
    counter!(names::DEGRADED_SLICES_NOT_FOLLOWED_TOTAL).absolute(0);
    counter!(names::SLICE_SIGNALS_FORGOTTEN_TOTAL).absolute(0);
    counter!(names::INCIDENT_CORRELATIONS_NOT_FOLLOWED_TOTAL).absolute(0);
    gauge!(names::DEGRADED_SLICES).set(0.0);
    for w in &topology.workflows {
        let wf = w.name.clone();
        counter!(names::COMPLETED_TOTAL, "workflow" => wf.clone()).absolute(0);
        counter!(names::NEVER_ARRIVED_TOTAL, "workflow" => wf.clone()).absolute(0);
        counter!(names::LATE_ARRIVALS_TOTAL, "workflow" => wf.clone()).absolute(0);
        for stage in &w.stages {
            counter!(names::STAGE_EVENTS_TOTAL, "workflow" => wf.clone(), "stage" => stage.name.clone())
                .absolute(0);
        }
        for severity in ["warn", "critical"] {
            for cause in &causes {
                counter!(names::BREACHES_TOTAL, "workflow" => wf.clone(), "severity" => severity, "cause" => cause.clone())
                    .absolute(0);
            }
        }
        gauge!(names::HELD_CORRELATIONS, "workflow" => wf.clone()).set(0.0);
        for age in AGE_BUCKET_LABELS.iter() {
            gauge!(names::PENDING_CORRELATIONS, "workflow" => wf.clone(), "age" => *age).set(0.0);
        }
    }
}

/// Every `cause` label value: the configured causes, `input_stalled` and `unknown`.
pub fn cause_labels(topology: &Topology) -> Vec<String> {
    let mut causes: Vec<String> = topology.causes.iter().map(|c| c.name.clone()).collect();
    causes.push("unknown".into());
    causes.push(crate::config::INPUT_STALLED.into());
    causes
}

/// Every (workflow, cause) pair of `synclag_incidents_open`, known from the topology.
pub fn incident_series(topology: &Topology) -> Vec<(String, String)> {
    let causes = cause_labels(topology);
    topology
        .workflows
        .iter()
        .flat_map(|w| causes.iter().map(move |c| (w.name.clone(), c.clone())))
        .collect()
}

/// Which signal kinds may be a label: those a configured cause names for that stream.
#[derive(Debug, Default)]
pub struct SignalKinds {
    /// (stream name, kind)
    named: HashSet<(String, String)>,
}

impl SignalKinds {
    pub fn new(topology: &Topology) -> SignalKinds {
        let named = topology
            .causes
            .iter()
            .filter_map(|c| match &c.matcher {
                CauseMatch::Signal {
                    stream,
                    event_type: Some(kind),
                    ..
                } => Some((topology.streams.get(*stream)?.name.clone(), kind.clone())),
                _ => None,
            })
            .collect();
        SignalKinds { named }
    }

    /// The label for a signal of `kind` read on `stream`.
    pub fn label(&self, stream: &str, kind: &str) -> String {
        if self.named.contains(&(stream.to_string(), kind.to_string())) {
            kind.to_string()
        } else {
            OTHER.to_string()
        }
    }

    fn labels_of(&self, stream: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .named
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, k)| k.clone())
            .collect();
        out.push(OTHER.to_string());
        out.sort();
        out
    }
}

/// Bounds the label combinations of one metric: past `cap` distinct combinations, new
/// ones are folded into one overflow series (counted), so a burst of dimension values
/// cannot grow the exporter without limit.
#[derive(Debug)]
pub struct LabelCap {
    seen: HashSet<u64>,
    cap: usize,
}

impl LabelCap {
    pub fn new(cap: usize) -> LabelCap {
        LabelCap {
            seen: HashSet::new(),
            cap,
        }
    }

    /// Whether the combination hashed to `key` may have its own series.
    pub fn admit(&mut self, key: u64) -> bool {
        if self.seen.contains(&key) {
            return true;
        }
        if self.seen.len() >= self.cap {
            metrics::counter!(names::LAG_LABEL_OVERFLOW_TOTAL).increment(1);
            return false;
        }
        self.seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_admits_known_combinations_only_up_to_the_cap() {
        let mut cap = LabelCap::new(2);
        assert!(cap.admit(1));
        assert!(cap.admit(2));
        assert!(cap.admit(1));
        assert!(!cap.admit(3));
        assert!(cap.admit(2));
    }
}
