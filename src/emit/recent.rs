//! The most recent breaches, for `/api/v1/breaches` and the web view: a bounded memory of
//! the last breach and never-arrived events (as the breach topic carries them, so masked
//! when masking is on), each closed once its correlation resolves or its missing stage
//! arrives late, and their grouping by workflow × dimension value.
//!
//! Grouping counts every breach once: within a workflow, the dimension value that most of
//! its remaining breaches share takes them all, then the next, and so on. A DHL slowdown
//! becomes one group `carrier=DHL` (its breaches are spread over every warehouse), a
//! warehouse outage one group `warehouse=WH-LGG` (spread over every carrier).

use super::events::{bound_text, BreachEvent, BREACH_FIELD_MAX_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Breach events remembered.
pub const RECENT_BREACHES: usize = 1_000;

/// Most buckets in a group's timeline.
const TIMELINE_BUCKETS: i64 = 30;

/// Timeline bucket widths to choose from, smallest first.
const TIMELINE_WIDTHS_MS: [i64; 8] = [
    5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 21_600_000,
];

/// One remembered breach event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecentBreach {
    /// Shared with the output on its way to the breach topic: not copied.
    #[serde(flatten)]
    pub event: Arc<BreachEvent>,
    /// `resolved` (the closing stage arrived), `late_arrival` (the missing stage arrived
    /// after the window) or `evicted`; `None` while the correlation is still late.
    pub closed_by: Option<String>,
    /// Wall time the closing event was raised.
    pub closed_at_ms: Option<i64>,
}

/// Breach counts over time, for a group's timeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineBucket {
    pub start_ms: i64,
    pub warn: u64,
    pub critical: u64,
    pub never_arrived: u64,
}

/// How often one value occurs in a group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

/// Where a group's breaches are routed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteCount {
    pub route: Option<String>,
    pub team: Option<String>,
    pub count: u64,
}

/// Breaches of one workflow that share one dimension value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreachGroup {
    pub workflow: String,
    /// `None` when the breaches carry no dimension.
    pub dimension: Option<String>,
    pub value: Option<String>,
    /// Breach events (each tier of a correlation is one event).
    pub events: u64,
    pub correlations: u64,
    /// Correlations neither resolved nor arrived late nor evicted.
    pub open: u64,
    pub warn: u64,
    pub critical: u64,
    pub never_arrived: u64,
    /// Start of the earliest breached correlation: late since then.
    pub since_ms: i64,
    pub first_observed_ms: i64,
    pub last_observed_ms: i64,
    /// Probable causes, most frequent first (`unknown` when none matched).
    pub causes: Vec<Count>,
    /// Routes and their teams, most frequent first.
    pub routes: Vec<RouteCount>,
    /// Stages waited for, most frequent first.
    pub waiting_for: Vec<Count>,
    /// Evidence: signals seen, dominant lag segments, stalled inputs, backlogged groups.
    pub signals: Vec<Count>,
    pub dominant_segments: Vec<Count>,
    pub stalled_inputs: Vec<String>,
    pub backlogged_groups: Vec<String>,
    /// Breach events per bucket of `observed_at_ms`, from the oldest remembered breach to
    /// now (the same buckets for every group).
    pub timeline: Vec<TimelineBucket>,
}

/// The answer of `/api/v1/breaches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreachesView {
    /// Events remembered at most; the oldest are forgotten beyond.
    pub capacity: usize,
    /// Events remembered now (for the workflow asked about, if any).
    pub remembered: usize,
    pub timeline_bucket_ms: i64,
    pub groups: Vec<BreachGroup>,
    /// The most recent events first, at most `limit`.
    pub breaches: Vec<RecentBreach>,
}

/// The bounded memory.
#[derive(Debug)]
pub struct RecentBreaches {
    capacity: usize,
    events: VecDeque<RecentBreach>,
    /// Remembered events not closed yet, per (workflow, correlation id): a closing event
    /// of a correlation without one (most completions) costs a lookup, not a scan.
    open: hashbrown::HashMap<(String, String), usize>,
}

/// A (workflow, correlation id) key of [`RecentBreaches`] by reference: hashes and
/// compares like the owned pair, so the key is copied only when a breach is first open.
#[derive(Hash)]
struct PairRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for PairRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl Default for RecentBreaches {
    fn default() -> Self {
        RecentBreaches::new(RECENT_BREACHES)
    }
}

impl RecentBreaches {
    pub fn new(capacity: usize) -> RecentBreaches {
        RecentBreaches {
            capacity: capacity.max(1),
            events: VecDeque::new(),
            open: hashbrown::HashMap::new(),
        }
    }

    /// Takes one event as it is raised: breaches and never-arrived events are remembered
    /// (bounded like the breach topic's), resolutions, late arrivals and evictions close
    /// the breaches of their correlation.
    pub fn observe(&mut self, ev: &Arc<BreachEvent>) {
        match ev.kind.as_str() {
            "breach" | "never_arrived" => {
                if self.events.len() == self.capacity {
                    if let Some(old) = self.events.pop_front() {
                        if old.closed_by.is_none() {
                            self.forget_open(&PairRef(
                                &old.event.workflow,
                                &old.event.correlation_id,
                            ));
                        }
                    }
                }
                // Bounded as on the breach topic: memory stays small whatever inputs hold.
                let event = match ev.bounded_cow() {
                    std::borrow::Cow::Borrowed(_) => Arc::clone(ev),
                    std::borrow::Cow::Owned(bounded) => Arc::new(bounded),
                };
                let key = PairRef(&event.workflow, &event.correlation_id);
                match self.open.get_mut(&key) {
                    Some(n) => *n += 1,
                    None => {
                        let owned = (event.workflow.clone(), event.correlation_id.clone());
                        self.open.insert(owned, 1);
                    }
                }
                self.events.push_back(RecentBreach {
                    event,
                    closed_by: None,
                    closed_at_ms: None,
                });
            }
            "resolved" | "late_arrival" | "evicted" => {
                let workflow = bound_text(&ev.workflow, BREACH_FIELD_MAX_BYTES);
                let id = bound_text(&ev.correlation_id, BREACH_FIELD_MAX_BYTES);
                let Some(mut open) = self.open.remove(&PairRef(&workflow, &id)) else {
                    return;
                };
                // Newest first, and only as far back as the last open one of the key: a
                // resolution mostly follows its breaches closely.
                for r in self.events.iter_mut().rev() {
                    if open == 0 {
                        break;
                    }
                    if r.closed_by.is_none()
                        && r.event.correlation_id == *id
                        && r.event.workflow == *workflow
                    {
                        r.closed_by = Some(ev.kind.clone());
                        r.closed_at_ms = Some(ev.observed_at_ms);
                        open -= 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn forget_open(&mut self, key: &PairRef<'_>) {
        if let Some(n) = self.open.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The view `/api/v1/breaches` serves: groups over every remembered event (of
    /// `workflow`, when given) and the `limit` most recent events, as of wall time `now_ms`.
    pub fn view(&self, workflow: Option<&str>, limit: usize, now_ms: i64) -> BreachesView {
        let selected: Vec<&RecentBreach> = self
            .events
            .iter()
            .filter(|r| workflow.is_none_or(|w| r.event.workflow == w))
            .collect();
        let oldest = selected
            .iter()
            .map(|r| r.event.observed_at_ms)
            .min()
            .unwrap_or(now_ms);
        let span = now_ms.saturating_sub(oldest).max(0);
        let width = TIMELINE_WIDTHS_MS
            .iter()
            .copied()
            .find(|w| span / w < TIMELINE_BUCKETS - 1)
            .unwrap_or(TIMELINE_WIDTHS_MS[TIMELINE_WIDTHS_MS.len() - 1]);
        let timeline_start = now_ms.div_euclid(width) * width - (TIMELINE_BUCKETS - 1) * width;
        let groups = group(&selected, timeline_start, width, now_ms);
        let breaches = selected
            .iter()
            .rev()
            .take(limit)
            .map(|r| (*r).clone())
            .collect();
        BreachesView {
            capacity: self.capacity,
            remembered: selected.len(),
            timeline_bucket_ms: width,
            groups,
            breaches,
        }
    }
}

type DimValue<'a> = (&'a str, &'a str);

/// Splits events into groups: per workflow, the dimension value shared by most of the
/// events not yet grouped takes them, until none is left.
fn group(
    events: &[&RecentBreach],
    timeline_start: i64,
    width: i64,
    now_ms: i64,
) -> Vec<BreachGroup> {
    let mut by_workflow: BTreeMap<&str, Vec<&RecentBreach>> = BTreeMap::new();
    for r in events {
        by_workflow.entry(&r.event.workflow).or_default().push(r);
    }
    let mut out = Vec::new();
    for (workflow, mut rest) in by_workflow {
        while !rest.is_empty() {
            let mut counts: BTreeMap<DimValue<'_>, u64> = BTreeMap::new();
            for r in &rest {
                for (k, v) in &r.event.dimensions {
                    *counts.entry((k.as_str(), v.as_str())).or_default() += 1;
                }
            }
            // Most events first; ties go to the first dimension and value by name.
            let best = counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(k, _)| *k);
            let (members, left): (Vec<&RecentBreach>, Vec<&RecentBreach>) = match best {
                Some((k, v)) => rest
                    .iter()
                    .partition(|r| r.event.dimensions.get(k).map(String::as_str) == Some(v)),
                None => (std::mem::take(&mut rest), Vec::new()),
            };
            out.push(summarise(
                workflow,
                best,
                &members,
                timeline_start,
                width,
                now_ms,
            ));
            rest = left;
        }
    }
    out.sort_by(|a, b| {
        b.open
            .cmp(&a.open)
            .then((b.critical + b.never_arrived).cmp(&(a.critical + a.never_arrived)))
            .then(b.last_observed_ms.cmp(&a.last_observed_ms))
            .then(a.workflow.cmp(&b.workflow))
    });
    out
}

fn summarise(
    workflow: &str,
    key: Option<DimValue<'_>>,
    members: &[&RecentBreach],
    timeline_start: i64,
    width: i64,
    now_ms: i64,
) -> BreachGroup {
    let mut correlations = BTreeSet::new();
    let mut open = BTreeSet::new();
    let (mut warn, mut critical, mut never_arrived) = (0, 0, 0);
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let mut routes: BTreeMap<(Option<String>, Option<String>), u64> = BTreeMap::new();
    let mut waiting: BTreeMap<String, u64> = BTreeMap::new();
    let mut signals: BTreeMap<String, u64> = BTreeMap::new();
    let mut segments: BTreeMap<String, u64> = BTreeMap::new();
    let mut stalled = BTreeSet::new();
    let mut backlogged = BTreeSet::new();
    let buckets = usize::try_from(TIMELINE_BUCKETS).unwrap_or(30);
    let mut timeline: Vec<TimelineBucket> = (0..TIMELINE_BUCKETS)
        .map(|i| TimelineBucket {
            start_ms: timeline_start + i * width,
            ..TimelineBucket::default()
        })
        .collect();
    for r in members {
        let e = &r.event;
        correlations.insert(e.correlation_id.as_str());
        if r.closed_by.is_none() {
            open.insert(e.correlation_id.as_str());
        }
        let slot = if e.observed_at_ms >= timeline_start && e.observed_at_ms <= now_ms {
            usize::try_from((e.observed_at_ms - timeline_start) / width)
                .ok()
                .filter(|i| *i < buckets)
        } else {
            None
        };
        let bucket = slot.and_then(|i| timeline.get_mut(i));
        match (e.kind.as_str(), e.severity.as_str()) {
            ("never_arrived", _) => {
                never_arrived += 1;
                if let Some(b) = bucket {
                    b.never_arrived += 1;
                }
            }
            (_, "critical") => {
                critical += 1;
                if let Some(b) = bucket {
                    b.critical += 1;
                }
            }
            _ => {
                warn += 1;
                if let Some(b) = bucket {
                    b.warn += 1;
                }
            }
        }
        *causes
            .entry(
                e.probable_cause
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
            )
            .or_default() += 1;
        *routes.entry((e.route.clone(), e.team.clone())).or_default() += 1;
        if let Some(s) = &e.stage {
            *waiting.entry(s.clone()).or_default() += 1;
        }
        for s in &e.signals {
            *signals.entry(s.clone()).or_default() += 1;
        }
        if let Some(s) = &e.dominant_segment {
            *segments.entry(s.clone()).or_default() += 1;
        }
        stalled.extend(e.stalled_inputs.iter().cloned());
        backlogged.extend(e.backlogged_groups.iter().cloned());
    }
    let mut routes: Vec<RouteCount> = routes
        .into_iter()
        .map(|((route, team), count)| RouteCount { route, team, count })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.count));
    BreachGroup {
        workflow: workflow.to_string(),
        dimension: key.map(|(k, _)| k.to_string()),
        value: key.map(|(_, v)| v.to_string()),
        events: members.len() as u64,
        correlations: correlations.len() as u64,
        open: open.len() as u64,
        warn,
        critical,
        never_arrived,
        since_ms: members
            .iter()
            .map(|r| r.event.started_at_ms)
            .min()
            .unwrap_or_default(),
        first_observed_ms: members
            .iter()
            .map(|r| r.event.observed_at_ms)
            .min()
            .unwrap_or_default(),
        last_observed_ms: members
            .iter()
            .map(|r| r.event.observed_at_ms)
            .max()
            .unwrap_or_default(),
        causes: ranked(causes),
        routes,
        waiting_for: ranked(waiting),
        signals: ranked(signals),
        dominant_segments: ranked(segments),
        stalled_inputs: stalled.into_iter().collect(),
        backlogged_groups: backlogged.into_iter().collect(),
        timeline,
    }
}

fn ranked(counts: BTreeMap<String, u64>) -> Vec<Count> {
    let mut v: Vec<Count> = counts
        .into_iter()
        .map(|(name, count)| Count { name, count })
        .collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.count));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        kind: &str,
        severity: &str,
        id: &str,
        dims: &[(&str, &str)],
        at: i64,
    ) -> Arc<BreachEvent> {
        Arc::new(BreachEvent {
            breach_id: format!("{id}-{severity}"),
            kind: kind.into(),
            severity: severity.into(),
            workflow: "shipment_status".into(),
            correlation_id: id.into(),
            stage: Some("picking_done_in_odoo".into()),
            last_stage_seen: None,
            started_at_ms: at - 10_000,
            deadline_ms: Some(at),
            observed_at_ms: at,
            lag_ms: 10_000,
            dimensions: dims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            segments_ms: BTreeMap::new(),
            dominant_segment: None,
            probable_cause: Some("carrier_api_throttling".into()),
            route: Some("integration_support".into()),
            team: Some("integration-support".into()),
            signals: vec!["carrier_api_throttled".into()],
            backlogged_groups: Vec::new(),
            stalled_inputs: Vec::new(),
            evidence: vec![],
            waiting_for: None,
            waiting_ms: None,
            truncated: Vec::new(),
        })
    }

    #[test]
    fn a_carrier_slowdown_spread_over_warehouses_is_one_group() {
        let mut r = RecentBreaches::new(100);
        let warehouses = ["WH-ANR", "WH-LGG", "WH-RTM"];
        for i in 0..9 {
            let id = format!("SO-{i}");
            let dims = [("carrier", "DHL"), ("warehouse", warehouses[i % 3])];
            r.observe(&event("breach", "warn", &id, &dims, 1_000 + i as i64));
            if i < 3 {
                r.observe(&event("breach", "critical", &id, &dims, 2_000 + i as i64));
            }
        }
        // One unrelated breach elsewhere.
        r.observe(&event(
            "breach",
            "warn",
            "SO-x",
            &[("carrier", "UPS"), ("warehouse", "WH-ANR")],
            3_000,
        ));
        // Two DHL correlations resolve.
        let mut done = event("resolved", "info", "SO-0", &[], 4_000);
        r.observe(&done);
        Arc::make_mut(&mut done).correlation_id = "SO-1".into();
        r.observe(&done);

        let v = r.view(None, 5, 10_000);
        assert_eq!(v.remembered, 13);
        assert_eq!(v.breaches.len(), 5);
        assert_eq!(
            v.breaches[0].event.correlation_id, "SO-x",
            "most recent first"
        );
        assert_eq!(v.groups.len(), 2, "{:#?}", v.groups);
        let dhl = &v.groups[0];
        assert_eq!(
            (dhl.dimension.as_deref(), dhl.value.as_deref()),
            (Some("carrier"), Some("DHL"))
        );
        assert_eq!((dhl.events, dhl.correlations, dhl.open), (12, 9, 7));
        assert_eq!((dhl.warn, dhl.critical, dhl.never_arrived), (9, 3, 0));
        assert_eq!(dhl.since_ms, 1_000 - 10_000);
        assert_eq!(dhl.causes[0].name, "carrier_api_throttling");
        assert_eq!(dhl.routes[0].team.as_deref(), Some("integration-support"));
        assert_eq!(dhl.signals[0].count, 12);
        let in_timeline: u64 = dhl
            .timeline
            .iter()
            .map(|b| b.warn + b.critical + b.never_arrived)
            .sum();
        assert_eq!(in_timeline, 12, "every event is in a timeline bucket");
        let ups = &v.groups[1];
        assert_eq!(ups.value.as_deref(), Some("UPS"));
        assert_eq!(ups.events, 1);
        // The resolved correlations are closed, with the time they resolved.
        let closed: Vec<&RecentBreach> = v
            .breaches
            .iter()
            .filter(|b| b.closed_by.is_some())
            .collect();
        assert!(closed.is_empty(), "the 5 most recent are still open");
        let all = r.view(None, 100, 10_000);
        let closed = all
            .breaches
            .iter()
            .filter(|b| b.closed_by.as_deref() == Some("resolved"))
            .count();
        assert_eq!(closed, 4, "the warn and critical breaches of SO-0 and SO-1");
    }

    #[test]
    fn a_resolution_closes_every_open_breach_of_its_correlation_and_no_other() {
        let closed = |r: &RecentBreaches| -> Vec<(String, String, Option<String>)> {
            r.events
                .iter()
                .map(|b| {
                    (
                        b.event.correlation_id.clone(),
                        b.event.severity.clone(),
                        b.closed_by.clone(),
                    )
                })
                .collect()
        };
        let mut r = RecentBreaches::new(4);
        r.observe(&event("breach", "warn", "SO-1", &[], 1_000));
        r.observe(&event("breach", "warn", "SO-2", &[], 1_001));
        r.observe(&event("breach", "critical", "SO-1", &[], 1_002));
        r.observe(&event("resolved", "info", "SO-1", &[], 1_003));
        let resolved = Some("resolved".to_string());
        assert_eq!(
            closed(&r),
            vec![
                ("SO-1".into(), "warn".into(), resolved.clone()),
                ("SO-2".into(), "warn".into(), None),
                ("SO-1".into(), "critical".into(), resolved.clone()),
            ]
        );
        // A second resolution of it finds nothing open; a later breach of it is open.
        r.observe(&event("resolved", "info", "SO-1", &[], 1_004));
        r.observe(&event("breach", "warn", "SO-1", &[], 1_005));
        assert_eq!(closed(&r)[3], ("SO-1".into(), "warn".into(), None));
        // The oldest (closed) is pushed out by a new breach; the next resolution closes
        // the one still open and leaves the closed ones as they were.
        r.observe(&event("breach", "warn", "SO-3", &[], 1_006));
        r.observe(&event("resolved", "info", "SO-1", &[], 1_007));
        assert_eq!(
            closed(&r),
            vec![
                ("SO-2".into(), "warn".into(), None),
                ("SO-1".into(), "critical".into(), resolved.clone()),
                ("SO-1".into(), "warn".into(), resolved),
                ("SO-3".into(), "warn".into(), None),
            ]
        );
        assert_eq!(
            r.open
                .get(&("shipment_status".to_string(), "SO-1".to_string())),
            None
        );
    }

    #[test]
    fn memory_is_bounded_and_workflow_filtered() {
        let mut r = RecentBreaches::new(3);
        for i in 0..5 {
            r.observe(&event("breach", "warn", &format!("SO-{i}"), &[], i));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.open.len(), 3, "forgotten events leave the open index");
        let mut done = event("resolved", "info", "SO-0", &[], 9);
        r.observe(&done);
        assert_eq!(
            r.open.len(),
            3,
            "a correlation no longer remembered changes nothing"
        );
        Arc::make_mut(&mut done).correlation_id = "SO-4".into();
        r.observe(&done);
        assert_eq!(r.open.len(), 2);
        let v = r.view(None, 10, 10);
        let ids: Vec<&str> = v
            .breaches
            .iter()
            .map(|b| b.event.correlation_id.as_str())
            .collect();
        assert_eq!(ids, ["SO-4", "SO-3", "SO-2"]);
        assert_eq!(v.groups.len(), 1);
        assert_eq!(v.groups[0].dimension, None, "no dimension: one group");
        let none = r.view(Some("returns"), 10, 10);
        assert_eq!(none.remembered, 0);
        assert!(none.groups.is_empty());
    }

    #[test]
    fn timeline_buckets_cover_the_remembered_span() {
        let mut r = RecentBreaches::new(10);
        let now = 10_000_000;
        r.observe(&event("breach", "warn", "a", &[], now - 3_600_000));
        r.observe(&event("never_arrived", "never_arrived", "b", &[], now));
        let v = r.view(None, 10, now);
        assert_eq!(v.timeline_bucket_ms, 300_000, "an hour in 5-minute buckets");
        let t = &v.groups[0].timeline;
        assert_eq!(t.len(), 30);
        assert_eq!(t.iter().map(|b| b.warn).sum::<u64>(), 1);
        assert_eq!(t.last().map(|b| b.never_arrived), Some(1));
    }
}
