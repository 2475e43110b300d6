//! Property tests of the correlation engine: under any arrival order, duplicates and clock
//! movement, no correlation is lost or finished twice, tiers fire at most once, histograms
//! agree with outcomes, and offset pins cover every pending record.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use synclag::correlate::{
    Engine, EngineConfig, Origin, Outcome, OutcomeKind, Segment, SlaPolicy, StageEvent, Tier,
    Timestamps, WorkflowSpec,
};

#[derive(Debug, Clone)]
enum Step {
    /// (correlation index, stage (mod chain length), occurrence time, partition)
    Event(usize, usize, i64, u32),
    /// Move the clock forward by this much.
    Advance(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..8, 0usize..5, 0i64..400, 0u32..3)
            .prop_map(|(c, s, t, p)| Step::Event(c, s, t, p)),
        1 => (0i64..80).prop_map(Step::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    stages: usize,
    warn: i64,
    critical: i64,
    window: i64,
    max_pending: usize,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        2usize..=5,
        1i64..60,
        0i64..60,
        1i64..200,
        1usize..10,
        proptest::collection::vec(step(), 1..120),
    )
        .prop_map(|(stages, warn, extra, window, max_pending, steps)| Case {
            stages,
            warn,
            critical: warn + extra,
            window,
            max_pending,
            steps,
        })
}

fn engine(c: &Case) -> Engine {
    let mut cfg = EngineConfig::with_workflows(vec![WorkflowSpec {
        name: "w".into(),
        stages: (0..c.stages).map(|i| format!("s{i}")).collect(),
        sla: SlaPolicy {
            warn_ms: c.warn,
            critical_ms: c.critical,
            overrides: vec![],
        },
        window_ms: c.window,
        dimensions: vec!["d".into()],
    }]);
    cfg.max_pending = c.max_pending;
    cfg.recent_terminal_cap = 1_000;
    Engine::new(&cfg).unwrap()
}

fn id_of(o: &Outcome) -> String {
    o.info.correlation_id.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn store_invariants_hold_under_any_arrival_order(c in case()) {
        let mut e = engine(&c);
        let mut out: Vec<Outcome> = Vec::new();
        let mut now = 0i64;
        let mut next_offset = [0i64; 3];
        // Per correlation id, the first record of each stage: (partition, offset). Those are
        // what a pending correlation depends on; a repeated stage is counted and dropped, so
        // committing past it loses nothing.
        let mut records: HashMap<String, HashMap<usize, (u32, i64)>> = HashMap::new();
        let mut max_time = 0i64;

        for st in &c.steps {
            match *st {
                Step::Event(ci, s, t, p) => {
                    let id = format!("c{ci}");
                    let offset = next_offset[p as usize];
                    next_offset[p as usize] += 1;
                    max_time = max_time.max(t);
                    let stage = s % c.stages;
                    let ev = StageEvent {
                        workflow: 0,
                        stage,
                        correlation_id: id.as_str().into(),
                        ts: Timestamps {
                            source_event_ms: Some(t),
                            kafka_ms: Some(t + 3),
                            ..Timestamps::default()
                        },
                        dimensions: vec![(0, format!("v{}", ci % 3))],
                        origin: Origin { partition_id: p, offset },
                    };
                    e.process(ev, &mut out).unwrap();
                    records.entry(id).or_default().entry(stage).or_insert((p, offset));
                }
                Step::Advance(d) => {
                    now += d;
                    e.advance(now, &mut out);
                }
            }
            // Pins cover every record of every still-pending correlation.
            let finished: HashSet<String> =
                out.iter().filter(|o| o.is_terminal()).map(id_of).collect();
            for (id, recs) in &records {
                if finished.contains(id) {
                    continue;
                }
                for &(p, off) in recs.values() {
                    let pinned = e.min_pinned_offset(p);
                    prop_assert!(
                        pinned.is_some_and(|m| m <= off),
                        "record {off} on partition {p} of pending {id} not pinned ({pinned:?})"
                    );
                }
            }
            prop_assert_eq!(e.pending(), records.len() - finished.len());
        }
        // Run the clock past every window: everything must be finished.
        e.advance(now.max(max_time) + c.window + 1, &mut out);
        prop_assert_eq!(e.pending(), 0);
        for p in 0..3 {
            prop_assert_eq!(e.min_pinned_offset(p), None);
        }

        let mut per_id: HashMap<String, Vec<&Outcome>> = HashMap::new();
        for o in &out {
            per_id.entry(id_of(o)).or_default().push(o);
        }
        prop_assert_eq!(per_id.len(), records.len());
        for (id, os) in &per_id {
            let terminals = os.iter().filter(|o| o.is_terminal()).count();
            prop_assert_eq!(terminals, 1, "{} has {} terminal outcomes", id, terminals);
            let pos = os.iter().position(|o| o.is_terminal()).unwrap_or(0);
            for o in &os[pos + 1..] {
                prop_assert!(
                    matches!(o.kind, OutcomeKind::LateArrival { .. }),
                    "{id}: {:?} after terminal", o.kind
                );
            }
            for tier in [Tier::Warn, Tier::Critical] {
                let n = os
                    .iter()
                    .filter(|o| matches!(o.kind, OutcomeKind::Breach { tier: t, .. } if t == tier))
                    .count();
                prop_assert!(n <= 1, "{id}: {tier:?} fired {n} times");
            }
            // A breach always belongs to a started correlation and precedes its terminal.
            for o in &os[..pos] {
                if let OutcomeKind::Breach { deadline_ms, .. } = o.kind {
                    let d = o.info.deadlines.unwrap();
                    prop_assert!(deadline_ms == d.warn_ms || deadline_ms == d.critical_ms);
                }
            }
        }

        let completed = out
            .iter()
            .filter(|o| matches!(o.kind, OutcomeKind::Completed { .. }))
            .count() as u64;
        let end_to_end: u64 = e
            .lag_snapshot()
            .iter()
            .filter(|s| s.key.segment == Segment::EndToEnd)
            .map(|s| s.count)
            .sum();
        prop_assert_eq!(end_to_end, completed);
        let counters = e.counters();
        prop_assert_eq!(counters.completed, completed);
        prop_assert_eq!(
            counters.completed + counters.never_arrived + counters.evicted,
            records.len() as u64
        );
        let events = c.steps.iter().filter(|s| matches!(s, Step::Event(..))).count() as u64;
        prop_assert_eq!(counters.processed, events);
    }

    #[test]
    fn arrival_order_does_not_change_completed_lags(
        times in proptest::collection::vec(0i64..1_000, 3),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
    ) {
        // With a window and SLAs no record can exceed, any arrival order of the three
        // stages yields the same completion and lag.
        let c = Case { stages: 3, warn: 10_000, critical: 20_000, window: 100_000, max_pending: 10, steps: vec![] };
        let mut e = engine(&c);
        let mut out = Vec::new();
        for &s in &order {
            let ev = StageEvent {
                workflow: 0,
                stage: s,
                correlation_id: "x".into(),
                ts: Timestamps { source_event_ms: Some(times[s]), ..Timestamps::default() },
                dimensions: vec![],
                origin: Origin { partition_id: 0, offset: s as i64 },
            };
            e.process(ev, &mut out).unwrap();
        }
        let done: Vec<_> = out
            .iter()
            .filter_map(|o| match o.kind {
                OutcomeKind::Completed { lag_from_first_ms, .. } => Some(lag_from_first_ms),
                _ => None,
            })
            .collect();
        prop_assert_eq!(done, vec![times[2] - times[0]]);
        prop_assert_eq!(e.pending(), 0);
    }
}
