//! Property tests of the correlation engine: under any arrival order, duplicates and clock
//! movement, no correlation is lost or finished twice, tiers fire at most once, histograms
//! agree with outcomes, and offset pins cover every pending record; and a replay of a
//! history spread over partitions, read in any order the partitions allow with the
//! watermark clock, ends every correlation the way live processing does.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use synclag::correlate::clock::InputClock;
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
            .lag_snapshot(0)
            .iter()
            .filter(|s| s.key.segment == Segment::EndToEnd)
            .map(|s| s.cumulative.count)
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

// ---- replay = live

/// Partitions the histories are spread over.
const PARTITIONS: u32 = 3;

/// One input record: correlation, stage, event time, partition.
#[derive(Debug, Clone, Copy)]
struct Rec {
    corr: usize,
    stage: usize,
    at: i64,
    partition: u32,
}

#[derive(Debug, Clone)]
struct Histories {
    stages: usize,
    warn: i64,
    critical: i64,
    window: i64,
    /// In generation order; ties in time keep this order on a partition.
    records: Vec<Rec>,
    /// Which partition the replaying consumer reads next (modulo those with records left).
    picks: Vec<u8>,
}

/// Per correlation: start time, then per stage (present, offset from the start,
/// partition, redelivered copy on partition).
type StagePlan = (bool, i64, u32, Option<u32>);

fn histories() -> impl Strategy<Value = Histories> {
    (2usize..=4, 1i64..40, 0i64..40, 0i64..80).prop_flat_map(|(stages, warn, extra, slack)| {
        let critical = warn + extra;
        // The topology requires window >= critical.
        let window = critical + slack;
        let stage_plan = (
            prop::bool::weighted(0.85),
            // Mostly inside the window, often past it, sometimes before the start (clock
            // skew between sources, less than a window: a stage a whole window before its
            // start is a bad timestamp, not a replay question).
            prop_oneof![
                3 => 0i64..=window,
                2 => window..3 * window + 1,
                1 => (1i64..=20).prop_map(move |x| -(x % window)),
            ],
            0u32..PARTITIONS,
            prop::option::weighted(0.1, 0u32..PARTITIONS),
        );
        let corr = (0i64..300, prop::collection::vec(stage_plan, stages));
        (
            prop::collection::vec(corr, 1..10),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(move |(corrs, picks)| {
                let mut records = Vec::new();
                for (c, (start, plan)) in corrs.into_iter().enumerate() {
                    for (stage, (present, offset, partition, copy)) in plan.into_iter().enumerate()
                    {
                        let plan: StagePlan = (present, offset, partition, copy);
                        if !plan.0 {
                            continue;
                        }
                        let at = if stage == 0 { start } else { start + plan.1 };
                        records.push(Rec {
                            corr: c,
                            stage,
                            at,
                            partition: plan.2,
                        });
                        if let Some(p) = plan.3 {
                            records.push(Rec {
                                corr: c,
                                stage,
                                at,
                                partition: p,
                            });
                        }
                    }
                }
                Histories {
                    stages,
                    warn,
                    critical,
                    window,
                    records,
                    picks,
                }
            })
    })
}

fn replay_engine(h: &Histories) -> Engine {
    let mut cfg = EngineConfig::with_workflows(vec![WorkflowSpec {
        name: "w".into(),
        stages: (0..h.stages).map(|i| format!("s{i}")).collect(),
        sla: SlaPolicy {
            warn_ms: h.warn,
            critical_ms: h.critical,
            overrides: vec![],
        },
        window_ms: h.window,
        dimensions: vec![],
    }]);
    cfg.max_pending = 10_000;
    cfg.recent_terminal_cap = 10_000;
    Engine::new(&cfg).unwrap()
}

fn stage_event(r: &Rec, offset: i64) -> StageEvent {
    StageEvent {
        workflow: 0,
        stage: r.stage,
        correlation_id: format!("c{}", r.corr).into(),
        ts: Timestamps {
            source_event_ms: Some(r.at),
            kafka_ms: Some(r.at + 1),
            ..Timestamps::default()
        },
        dimensions: vec![],
        origin: Origin {
            partition_id: r.partition,
            offset,
        },
    }
}

/// What a correlation's end looks like to an alerting system: breaches (tier and deadline),
/// completion, never-arrived, late arrivals and evictions with their stage, time and lag.
fn ends(out: &[Outcome]) -> Vec<String> {
    let mut v: Vec<String> = out
        .iter()
        .filter_map(|o| {
            let id = o.info.correlation_id.to_string();
            match &o.kind {
                OutcomeKind::StageReached { .. } => None,
                OutcomeKind::Breach {
                    tier, deadline_ms, ..
                } => Some(format!("{id} breach {tier:?} deadline={deadline_ms}")),
                OutcomeKind::Completed {
                    at_ms,
                    lag_from_first_ms,
                    end_to_end_ms,
                    ..
                } => Some(format!(
                    "{id} completed at={at_ms} lag={lag_from_first_ms} e2e={end_to_end_ms}"
                )),
                OutcomeKind::NeverArrived {
                    window_end_ms,
                    stages_seen,
                    ..
                } => Some(format!(
                    "{id} never_arrived end={window_end_ms} started={} seen={:?}",
                    o.info.started,
                    stages_seen.iter().collect::<Vec<_>>()
                )),
                OutcomeKind::LateArrival {
                    stage,
                    at_ms,
                    lag_from_first_ms,
                    after,
                } => Some(format!(
                    "{id} late stage={stage} at={at_ms} lag={lag_from_first_ms:?} after={after:?}"
                )),
                OutcomeKind::Evicted { .. } => Some(format!("{id} evicted")),
            }
        })
        .collect();
    v.sort();
    v
}

/// Live: every record read the moment it happens, the clock at its time.
fn run_live(h: &Histories) -> (Vec<Outcome>, Engine) {
    let mut e = replay_engine(h);
    let mut out = Vec::new();
    let mut order: Vec<(usize, &Rec)> = h.records.iter().enumerate().collect();
    order.sort_by_key(|(i, r)| (r.at, *i));
    for (i, r) in order {
        e.advance(r.at, &mut out);
        e.process(stage_event(r, i as i64), &mut out).unwrap();
    }
    let end = h.records.iter().map(|r| r.at).max().unwrap_or(0) + 4 * h.window + 1;
    e.advance(end, &mut out);
    (out, e)
}

/// Replay: the history was written before the consumer started; it reads the partitions
/// in the interleaving `picks` gives, each partition in order, and drives the clock with
/// the event-time watermark as the service does (a partition read to its end is caught up).
fn run_replay(h: &Histories) -> (Vec<Outcome>, Engine, Vec<usize>) {
    let mut queues: Vec<Vec<(usize, Rec)>> = vec![Vec::new(); PARTITIONS as usize];
    for (i, r) in h.records.iter().enumerate() {
        queues[r.partition as usize].push((i, *r));
    }
    for q in &mut queues {
        // A partition holds its records in time order (ties in production order).
        q.sort_by_key(|(i, r)| (r.at, *i));
        q.reverse();
    }
    let wall = 1_000_000_000;
    // The service's input clock: per partition its largest record time while reading,
    // its confirmed end once read through; no stall budget in a replay.
    let mut clock = InputClock::new(i64::MAX);
    let mut next = vec![0i64; PARTITIONS as usize];
    for p in 0..PARTITIONS {
        clock.assign(p, wall);
        if queues[p as usize].is_empty() {
            clock.end_offset(p, 0, wall);
            clock.position(p, 0, wall);
        }
    }
    let mut e = replay_engine(h);
    let mut out = Vec::new();
    let mut read = Vec::new();
    let mut picks = h.picks.iter().copied().cycle();
    loop {
        let open: Vec<usize> = (0..queues.len())
            .filter(|&p| !queues[p].is_empty())
            .collect();
        if open.is_empty() {
            break;
        }
        let p = open[usize::from(picks.next().unwrap_or(0)) % open.len()];
        let Some((i, r)) = queues[p].pop() else { break };
        read.push(i);
        let offset = next[r.partition as usize];
        next[r.partition as usize] += 1;
        clock.record(r.partition, offset, Some(r.at), wall);
        e.process(stage_event(&r, i as i64), &mut out).unwrap();
        if queues[p].is_empty() {
            clock.end_offset(r.partition, offset + 1, wall);
        }
        if let Some(now) = clock.read(wall).now_ms {
            e.advance(now, &mut out);
        }
    }
    e.advance(wall, &mut out);
    (out, e, read)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn a_replay_ends_every_correlation_as_live_does(h in histories()) {
        let (live, live_engine) = run_live(&h);
        let (replay, replay_engine, read) = run_replay(&h);
        let order: Vec<String> = read
            .iter()
            .map(|&i| {
                let r = h.records[i];
                format!("c{}/s{}@{}p{}", r.corr, r.stage, r.at, r.partition)
            })
            .collect();
        prop_assert_eq!(ends(&live), ends(&replay), "read order {:?}", order);
        prop_assert_eq!(replay_engine.pending(), 0);
        for p in 0..PARTITIONS {
            prop_assert_eq!(replay_engine.min_pinned_offset(p), None);
        }
        let (l, r) = (live_engine.counters(), replay_engine.counters());
        prop_assert_eq!(
            (l.completed, l.never_arrived, l.late_arrivals, l.breaches_warn, l.breaches_critical),
            (r.completed, r.never_arrived, r.late_arrivals, r.breaches_warn, r.breaches_critical)
        );
        // Every record is accounted for once: applied, a duplicate or after completion.
        let e2e = |e: &Engine| e.lag_totals(0, Segment::EndToEnd).map_or(0, |s| s.count);
        prop_assert_eq!(e2e(&live_engine), e2e(&replay_engine));
    }
}
