//! Property tests of durable engine state: a changelog kept from the engine's changed
//! entries and finished keys, encoded and decoded, rebuilds an engine that goes on exactly
//! as the original would have — under any arrival order, duplicates, held stages, late
//! arrivals and clock movement, wherever the restart falls. This is what lets a restart
//! restore state instead of re-reading input (and raise no false `never_arrived`, and no
//! tier twice).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use synclag::correlate::durable::{self, Image};
use synclag::correlate::{
    Engine, EngineConfig, Origin, Outcome, OutcomeKind, SlaPolicy, StageEvent, Timestamps,
    WorkflowSpec,
};

#[derive(Debug, Clone)]
enum Step {
    /// (correlation index, stage (mod chain length), occurrence time, with a dimension)
    Event(usize, usize, i64, bool),
    /// Move the clock forward by this much.
    Advance(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..10, 0usize..5, 0i64..400, any::<bool>())
            .prop_map(|(c, s, t, d)| Step::Event(c, s, t, d)),
        1 => (0i64..80).prop_map(Step::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    stages: usize,
    warn: i64,
    critical: i64,
    window: i64,
    steps: Vec<Step>,
    split: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        2usize..=5,
        1i64..60,
        0i64..60,
        1i64..200,
        proptest::collection::vec(step(), 1..120),
        0usize..120,
    )
        .prop_map(|(stages, warn, extra, window, steps, split)| Case {
            stages,
            warn,
            critical: warn + extra,
            window,
            split: split.min(steps.len()),
            steps,
        })
}

const NAMES: [&str; 2] = ["orders", "shipments"];

fn engine(c: &Case) -> Engine {
    let wf = |name: &str| WorkflowSpec {
        name: name.into(),
        stages: (0..c.stages).map(|i| format!("s{i}")).collect(),
        sla: SlaPolicy {
            warn_ms: c.warn,
            critical_ms: c.critical,
            overrides: vec![],
        },
        window_ms: c.window,
        dimensions: vec!["carrier".into(), "warehouse".into()],
    };
    let mut cfg = EngineConfig::with_workflows(NAMES.iter().map(|n| wf(n)).collect());
    cfg.recent_terminal_cap = 10_000;
    Engine::new(&cfg).unwrap()
}

fn event(c: &Case, corr: usize, stage: usize, at: i64, with_dim: bool, offset: i64) -> StageEvent {
    StageEvent {
        // Two workflows share ids: a key is (workflow, id), never the id alone.
        workflow: corr % 2,
        stage: stage % c.stages,
        correlation_id: format!("C-{}", corr / 2).into(),
        ts: Timestamps {
            source_event_ms: Some(at),
            kafka_ms: Some(at + 3),
            erp_write_ms: (stage % c.stages == c.stages - 1).then_some(at + 1),
            outbox_kafka_ms: None,
        },
        dimensions: if with_dim {
            vec![(corr % 2, format!("v{}", corr % 3))]
        } else {
            vec![]
        },
        origin: Origin {
            partition_id: (corr % 3) as u32,
            offset,
        },
    }
}

/// Runs one step; returns its outcomes sorted (the order of simultaneous timers follows
/// storage slots, which a restored engine numbers differently).
fn apply(c: &Case, e: &mut Engine, step: &Step, clock: &mut i64, offset: i64) -> Vec<String> {
    sorted(&run_with_outcomes(c, e, step, clock, offset))
}

fn sorted(out: &[Outcome]) -> Vec<String> {
    let mut shown: Vec<String> = out.iter().map(|o| format!("{o:?}")).collect();
    shown.sort();
    shown
}

/// The changelog as a compacted topic would hold it: the latest value per key.
#[derive(Default)]
struct Changelog {
    latest: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Changelog {
    fn write(&mut self, image: &Image) {
        let key = durable::encode_key(NAMES[image.workflow()], image.correlation_id());
        let mut value = Vec::new();
        durable::encode_value(image, &mut value);
        self.latest.insert(key, value);
    }

    /// What a service writes after each step: changed entries, and the finished image of
    /// every key an outcome ended (or a late arrival touched).
    fn follow(&mut self, e: &mut Engine, outcomes: &[Outcome]) {
        let mut pending = Vec::new();
        e.drain_dirty(&mut pending);
        for p in pending {
            self.write(&Image::Pending(p));
        }
        for o in outcomes {
            let ends = o.is_terminal() || matches!(o.kind, OutcomeKind::LateArrival { .. });
            if ends {
                let id = o.info.correlation_id.as_bytes();
                if let Some(f) = e.finished_image(o.info.workflow, id) {
                    self.write(&Image::Finished(f));
                }
            }
        }
    }

    fn pending_images(&self) -> HashMap<Vec<u8>, durable::PendingImage> {
        let names: Vec<&str> = NAMES.to_vec();
        self.latest
            .iter()
            .filter_map(|(k, v)| match durable::decode(k, v, &names) {
                Ok(Image::Pending(p)) => Some((k.clone(), p)),
                _ => None,
            })
            .collect()
    }
}

fn run_with_outcomes(
    c: &Case,
    e: &mut Engine,
    step: &Step,
    clock: &mut i64,
    offset: i64,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    match *step {
        Step::Event(corr, stage, at, d) => {
            let _ = e.process(event(c, corr, stage, at, d, offset), &mut out);
        }
        Step::Advance(by) => {
            *clock += by;
            e.advance(*clock, &mut out);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_restored_engine_goes_on_as_the_original(c in case()) {
        let mut original = engine(&c);
        original.track_changes(true);
        let mut log = Changelog::default();
        let mut clock = 0i64;
        for (i, step) in c.steps[..c.split].iter().enumerate() {
            let out = run_with_outcomes(&c, &mut original, step, &mut clock, i as i64);
            log.follow(&mut original, &out);
        }

        // The incrementally kept changelog describes exactly the pending entries.
        let kept = log.pending_images();
        let exported: HashMap<Vec<u8>, durable::PendingImage> = original
            .export_pending()
            .into_iter()
            .map(|p| (durable::encode_key(NAMES[p.workflow], &p.correlation_id), p))
            .collect();
        prop_assert_eq!(&kept, &exported);

        let mut restored = engine(&c);
        let names: Vec<&str> = NAMES.to_vec();
        for (k, v) in &log.latest {
            let image = durable::decode(k, v, &names).expect("own images decode");
            restored.restore(image).expect("own images restore");
        }
        prop_assert_eq!(restored.pending(), original.pending());
        // Catching the clock up raises what the original raises at the same clock (an
        // entry a stage made overdue ends at the next clock movement, in both).
        if original.now() != i64::MIN {
            let now = original.now();
            let mut a = Vec::new();
            let mut b = Vec::new();
            original.advance(now, &mut a);
            restored.advance(now, &mut b);
            prop_assert_eq!(sorted(&a), sorted(&b));
        }

        let mut clock_a = clock;
        let mut clock_b = clock;
        for (i, step) in c.steps[c.split..].iter().enumerate() {
            let offset = (c.split + i) as i64;
            let a = apply(&c, &mut original, step, &mut clock_a, offset);
            let b = apply(&c, &mut restored, step, &mut clock_b, offset);
            prop_assert_eq!(a, b, "step {} ({:?})", c.split + i, step);
        }
        prop_assert_eq!(restored.pending(), original.pending());
    }
}

fn two_stages() -> Case {
    Case {
        stages: 2,
        warn: 5,
        critical: 10,
        window: 50,
        steps: vec![],
        split: 0,
    }
}

#[test]
fn restoring_after_the_clock_moved_is_refused() {
    let c = two_stages();
    let mut e = engine(&c);
    let mut out = Vec::new();
    e.advance(100, &mut out);
    let image = Image::Finished(durable::FinishedImage {
        workflow: 0,
        correlation_id: (*b"C-1").into(),
        start_ms: 1,
        started: true,
        variant: 0,
        seen: 3,
        terminal: synclag::correlate::Terminal::Completed,
        dimensions: vec![],
    });
    assert_eq!(
        e.restore(image),
        Err(durable::ImageError::ClockMoved),
        "timer cursors may have passed a restored entry"
    );
}

#[test]
fn images_that_do_not_fit_the_topology_are_refused_with_the_reason() {
    let c = two_stages();
    let mut e = engine(&c);
    let pending = |seen: u16, lane: u8, dims: Vec<(usize, String)>| {
        Image::Pending(durable::PendingImage {
            workflow: 0,
            correlation_id: (*b"C-1").into(),
            start_ms: 10,
            start_kafka_ms: i64::MIN,
            flags: 0,
            seen,
            fired: 0,
            lane,
            stages: vec![],
            dimensions: dims,
        })
    };
    for (image, why) in [
        (pending(0b101, 0, vec![]), "stages beyond"),
        (pending(1, 5, vec![]), "timer lane"),
        (pending(1, 0, vec![(7, "x".into())]), "dimension index 7"),
        (pending(0, 1, vec![]), "neither a start nor a stage"),
    ] {
        let err = e.restore(image).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(e.pending(), 0);
    e.restore(pending(1, 0, vec![(1, "WH-1".into())])).unwrap();
    assert_eq!(e.pending(), 1);
    // The same key again replaces it.
    e.restore(pending(1, 0, vec![])).unwrap();
    assert_eq!(e.pending(), 1);
}

/// The end-to-end lag series of the two-stage workflow.
fn end_to_end() -> synclag::correlate::SeriesKey {
    synclag::correlate::SeriesKey {
        workflow: 0,
        from_stage: 0,
        to_stage: 1,
        segment: synclag::correlate::Segment::EndToEnd,
        combo: 0,
    }
}

#[test]
fn a_breached_completion_counted_before_a_restart_is_announced_once_and_counted_once() {
    let c = two_stages();
    let mut original = engine(&c);
    original.track_changes(true);
    let mut clock = 0;
    let start = Step::Event(0, 0, 0, false);
    let close = Step::Event(0, 1, 20, false);
    // Starts at 0, passes both tiers (warn 5, critical 10), closes at 20.
    let _ = run_with_outcomes(&c, &mut original, &start, &mut clock, 0);
    let breaches = run_with_outcomes(&c, &mut original, &Step::Advance(15), &mut clock, 1);
    assert_eq!(breaches.len(), 2, "{breaches:?}");
    let closing = run_with_outcomes(&c, &mut original, &close, &mut clock, 2);
    assert!(
        matches!(
            closing.as_slice(),
            [Outcome {
                kind: OutcomeKind::Completed { .. },
                ..
            }]
        ),
        "{closing:?}"
    );
    let end_to_end = end_to_end();
    assert_eq!(original.series_count(end_to_end), 1);

    // The image of that moment: pending as before the closing stage, marked as counted;
    // and the open lag interval, with the completion in it.
    let mut closed = Vec::new();
    original.take_closed_images(&mut closed);
    assert_eq!(closed.len(), 1, "a breached completion keeps its image");
    let image = closed.remove(0);
    assert_eq!(image.seen, 1, "the closing stage is not in it");
    assert_eq!(image.fired, 3, "both tiers are out");
    let mut value = Vec::new();
    durable::encode_value(&Image::Pending(image.clone()), &mut value);
    let key = durable::encode_key(NAMES[0], &image.correlation_id);
    let names: Vec<&str> = NAMES.to_vec();
    let decoded = durable::decode(&key, &value, &names).expect("decodes");
    assert_eq!(
        decoded,
        Image::Pending(image.clone()),
        "the mark survives encoding"
    );
    let lags = original.lag_images();
    assert!(!lags.is_empty());

    // A restart reads the closing stage again: the completion is announced (it was owed),
    // no tier is raised again, and the lag interval counts it once.
    let restart = |image: Image| {
        let mut e = engine(&c);
        e.restore(image).unwrap();
        for l in lags.clone() {
            e.restore_lag(l).unwrap();
        }
        assert_eq!(e.series_count(end_to_end), 1);
        let mut clock = 15;
        let out = run_with_outcomes(&c, &mut e, &close, &mut clock, 2);
        (e, out)
    };
    let (restored, again) = restart(decoded);
    assert_eq!(
        sorted(&again),
        sorted(&closing),
        "the same outcomes as the original"
    );
    assert_eq!(
        restored.series_count(end_to_end),
        1,
        "counted once across the restart"
    );
    assert_eq!(restored.pending(), 0);

    // Without the mark the same restart counts it twice (what the mark is for).
    let unmarked = durable::PendingImage { flags: 0, ..image };
    let (twice, _) = restart(Image::Pending(unmarked));
    assert_eq!(twice.series_count(end_to_end), 2);
}

#[test]
fn a_breached_completion_whose_closing_stage_came_before_its_start_survives_a_restart() {
    let c = two_stages();
    let mut original = engine(&c);
    original.track_changes(true);
    let mut clock = 0;
    // The closing stage (at 20) is read before the start (at 0), from another partition:
    // held until the start comes, which completes it past both tiers (warn 5, critical 10).
    let close = Step::Event(0, 1, 20, false);
    let start = Step::Event(0, 0, 0, false);
    assert!(run_with_outcomes(&c, &mut original, &close, &mut clock, 0).is_empty());
    let completing = run_with_outcomes(&c, &mut original, &start, &mut clock, 1);
    let kinds = |out: &[Outcome]| -> Vec<&'static str> {
        out.iter()
            .map(|o| match o.kind {
                OutcomeKind::Breach { .. } => "breach",
                OutcomeKind::Completed { .. } => "completed",
                OutcomeKind::NeverArrived { .. } => "never_arrived",
                OutcomeKind::LateArrival { .. } => "late_arrival",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(kinds(&completing), ["breach", "breach", "completed"]);
    let end_to_end = end_to_end();
    assert_eq!(original.series_count(end_to_end), 1);

    // The image of that moment is the one before the record that completed it, the
    // start: held, with its closing stage, marked as counted, both tiers out.
    let mut closed = Vec::new();
    original.take_closed_images(&mut closed);
    assert_eq!(closed.len(), 1);
    let image = closed.remove(0);
    assert_eq!(image.seen & 1, 0, "the start is not in it");
    assert_eq!(image.stages.len(), 1, "the closing stage is: {image:?}");
    assert_eq!(image.fired, 3);
    let lags = original.lag_images();

    // A restart reads the start again (offsets stay behind the record that completed
    // it): the completion is announced once, counted once, and nothing else is raised
    // however far the clock goes.
    let mut e = engine(&c);
    e.restore(Image::Pending(image)).unwrap();
    for l in lags {
        e.restore_lag(l).unwrap();
    }
    let mut clock = 15;
    let again = run_with_outcomes(&c, &mut e, &start, &mut clock, 1);
    assert_eq!(kinds(&again), ["completed"]);
    assert_eq!(e.pending(), 0);
    assert_eq!(
        e.series_count(end_to_end),
        1,
        "counted once across the restart"
    );
    let later = run_with_outcomes(&c, &mut e, &Step::Advance(200), &mut clock, 2);
    assert!(later.is_empty(), "nothing more is raised: {later:?}");
}
