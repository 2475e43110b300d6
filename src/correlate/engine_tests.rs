//! Behaviour of the engine, one outcome at a time.

use chrono::{NaiveTime, TimeZone, Utc, Weekday};

use super::clock::InputClock;
use super::*;

const MIN: i64 = 60_000;

fn wf(name: &str, stages: &[&str], warn: i64, critical: i64, window: i64) -> WorkflowSpec {
    WorkflowSpec {
        name: name.into(),
        stages: stages.iter().map(|s| s.to_string()).collect(),
        sla: SlaPolicy {
            warn_ms: warn,
            critical_ms: critical,
            overrides: vec![],
        },
        window_ms: window,
        dimensions: vec!["carrier".into(), "warehouse".into()],
    }
}

fn engine(workflows: Vec<WorkflowSpec>) -> Engine {
    Engine::new(&EngineConfig::with_workflows(workflows)).unwrap()
}

fn order_flow() -> Engine {
    engine(vec![wf(
        "order_import",
        &["created", "imported"],
        5 * MIN,
        15 * MIN,
        60 * MIN,
    )])
}

fn ev(stage: usize, id: &str, at: i64, offset: i64) -> StageEvent {
    StageEvent {
        workflow: 0,
        stage,
        correlation_id: id.into(),
        ts: Timestamps {
            source_event_ms: Some(at),
            ..Timestamps::default()
        },
        dimensions: vec![],
        origin: Origin {
            partition_id: stage as u32,
            offset,
        },
    }
}

fn kinds(out: &[Outcome]) -> Vec<&'static str> {
    out.iter()
        .map(|o| match o.kind {
            OutcomeKind::StageReached { .. } => "stage",
            OutcomeKind::Completed { .. } => "completed",
            OutcomeKind::Breach {
                tier: Tier::Warn, ..
            } => "warn",
            OutcomeKind::Breach {
                tier: Tier::Critical,
                ..
            } => "critical",
            OutcomeKind::NeverArrived { .. } => "never",
            OutcomeKind::LateArrival { .. } => "late",
            OutcomeKind::Evicted { .. } => "evicted",
        })
        .collect()
}

#[test]
fn start_then_end_completes_with_decomposition() {
    let mut e = order_flow();
    let mut out = Vec::new();
    let mut start = ev(0, "SO1", 1_000, 10);
    start.ts.kafka_ms = Some(1_500);
    start.dimensions = vec![(0, "dhl".into()), (1, "ams".into())];
    e.process(start, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(e.pending(), 1);
    assert_eq!(e.min_pinned_offset(0), Some(10));

    let mut end = ev(1, "SO1", 0, 99);
    end.ts = Timestamps {
        source_event_ms: None,
        kafka_ms: Some(9_000),
        erp_write_ms: Some(4_000),
        outbox_kafka_ms: Some(4_700),
    };
    e.process(end, &mut out).unwrap();
    assert_eq!(kinds(&out), ["completed"]);
    let o = &out[0];
    assert_eq!(&*o.info.correlation_id.to_string(), "SO1");
    assert_eq!(o.info.start_ms, 1_000);
    assert_eq!(&*o.info.workflow_name, "order_import");
    assert_eq!(o.info.dimensions.len(), 2);
    assert_eq!(&*o.info.dimensions[0].1, "dhl");
    let d = o.info.deadlines.unwrap();
    assert_eq!(
        (d.warn_ms, d.critical_ms),
        (1_000 + 5 * MIN, 1_000 + 15 * MIN)
    );
    match &o.kind {
        OutcomeKind::Completed {
            at_ms,
            lag_from_first_ms,
            end_to_end_ms,
            decomposition,
            stages_seen,
            ..
        } => {
            // Occurrence of a closing record without source time is its ERP write time.
            assert_eq!(*at_ms, 4_000);
            assert_eq!(*lag_from_first_ms, 3_000);
            assert_eq!(*end_to_end_ms, 3_000);
            assert_eq!(decomposition.partner_ingestion_ms, Some(500));
            assert_eq!(decomposition.middleware_erp_ms, Some(2_500));
            assert_eq!(decomposition.outbox_cdc_ms, Some(700));
            assert_eq!(decomposition.business_ms, Some(3_000));
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [0, 1]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.pending(), 0);
    assert_eq!(e.min_pinned_offset(0), None);
    let snap = e.lag_snapshot(5_000);
    let segs: Vec<&str> = snap.iter().map(|s| s.key.segment.as_str()).collect();
    assert_eq!(
        segs,
        [
            "stage_to_stage",
            "from_first",
            "end_to_end",
            "partner_ingestion",
            "middleware_erp",
            "outbox_cdc"
        ]
    );
    let e2e = &snap[2];
    // HDR reports the highest value equivalent at 3 significant digits.
    assert_eq!((e2e.interval.count, e2e.interval.min_ms), (1, 3_000));
    assert!((3_000..=3_003).contains(&e2e.interval.max_ms));
    assert_eq!(e2e.cumulative, e2e.interval);
    assert_eq!((e2e.interval_start_ms, e2e.interval_end_ms), (0, 5_000));
    assert_eq!(e2e.from_stage, "created");
    assert_eq!(e2e.to_stage, "imported");
    assert_eq!(&*e2e.dimensions[1].1, "ams");
    assert!(!e2e.histogram_b64.is_empty());
    assert_eq!(e.counters().completed, 1);
}

#[test]
fn missing_timestamps_leave_segments_out_but_end_to_end_in() {
    let mut e = order_flow();
    let mut out = Vec::new();
    let mut start = ev(0, "A", 0, 0);
    start.ts = Timestamps {
        kafka_ms: Some(100),
        ..Timestamps::default()
    };
    e.process(start, &mut out).unwrap();
    let mut end = ev(1, "A", 0, 0);
    end.ts = Timestamps {
        kafka_ms: Some(900),
        ..Timestamps::default()
    };
    e.process(end, &mut out).unwrap();
    match &out[0].kind {
        OutcomeKind::Completed {
            end_to_end_ms,
            decomposition,
            ..
        } => {
            assert_eq!(*end_to_end_ms, 800);
            assert_eq!(decomposition.partner_ingestion_ms, None);
            assert_eq!(decomposition.business_ms, None);
            assert_eq!(decomposition.middleware_erp_ms, None);
            assert_eq!(decomposition.outbox_cdc_ms, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.lag_snapshot(0).len(), 3);
}

#[test]
fn intermediate_stages_report_lags_from_previous_and_first() {
    let mut e = engine(vec![wf(
        "dispatch",
        &["released", "picked", "labelled", "done"],
        10 * MIN,
        20 * MIN,
        60 * MIN,
    )]);
    let mut out = Vec::new();
    e.process(ev(0, "P1", 0, 0), &mut out).unwrap();
    e.process(ev(2, "P1", 3_000, 0), &mut out).unwrap();
    e.process(ev(1, "P1", 1_000, 0), &mut out).unwrap();
    e.process(ev(3, "P1", 7_000, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["stage", "stage", "completed"]);
    match out[0].kind {
        OutcomeKind::StageReached {
            stage,
            previous_stage,
            lag_from_previous_ms,
            lag_from_first_ms,
            ..
        } => assert_eq!(
            (
                stage,
                previous_stage,
                lag_from_previous_ms,
                lag_from_first_ms
            ),
            (2, 0, 3_000, 3_000)
        ),
        ref other => panic!("unexpected {other:?}"),
    }
    match out[1].kind {
        OutcomeKind::StageReached {
            stage,
            previous_stage,
            lag_from_previous_ms,
            ..
        } => assert_eq!((stage, previous_stage, lag_from_previous_ms), (1, 0, 1_000)),
        ref other => panic!("unexpected {other:?}"),
    }
    match out[2].kind {
        OutcomeKind::Completed {
            previous_stage,
            lag_from_previous_ms,
            lag_from_first_ms,
            ..
        } => assert_eq!(
            (previous_stage, lag_from_previous_ms, lag_from_first_ms),
            (2, 4_000, 7_000)
        ),
        ref other => panic!("unexpected {other:?}"),
    }
    let key = |from, to, segment| SeriesKey {
        workflow: 0,
        from_stage: from,
        to_stage: to,
        segment,
        combo: 0,
    };
    assert_eq!(e.series_count(key(0, 2, Segment::StageToStage)), 1);
    assert_eq!(e.series_count(key(2, 3, Segment::StageToStage)), 1);
    assert_eq!(e.series_count(key(0, 3, Segment::FromFirst)), 1);
    assert_eq!(e.series_count(key(0, 3, Segment::EndToEnd)), 1);
}

#[test]
fn an_intermediate_stage_read_after_completion_is_no_late_arrival() {
    // Replay order across partitions: the closing record is read before `labelled`,
    // which happened earlier. Live, the same stages arrive in order; both must give
    // the same outcomes.
    let mut e = engine(vec![wf(
        "dispatch",
        &["released", "picked", "labelled", "done"],
        10 * MIN,
        20 * MIN,
        60 * MIN,
    )]);
    let mut out = Vec::new();
    e.process(ev(0, "P2", 0, 0), &mut out).unwrap();
    e.process(ev(1, "P2", 1_000, 1), &mut out).unwrap();
    e.process(ev(3, "P2", 7_000, 2), &mut out).unwrap();
    e.process(ev(2, "P2", 3_000, 3), &mut out).unwrap();
    assert_eq!(kinds(&out), ["stage", "completed"]);
    assert_eq!(e.counters().after_completion, 1);
    assert_eq!(e.counters().late_arrivals, 0);
}

#[test]
fn duplicates_are_suppressed_and_counted_also_after_completion() {
    let mut e = order_flow();
    let mut out = Vec::new();
    e.process(ev(0, "D", 0, 1), &mut out).unwrap();
    e.process(ev(0, "D", 0, 2), &mut out).unwrap();
    assert_eq!(e.min_pinned_offset(0), Some(1));
    e.process(ev(1, "D", 10, 3), &mut out).unwrap();
    e.process(ev(1, "D", 10, 3), &mut out).unwrap();
    e.process(ev(0, "D", 0, 1), &mut out).unwrap();
    assert_eq!(kinds(&out), ["completed"]);
    assert_eq!(e.counters().duplicates, 3);
    assert_eq!(e.pending(), 0);
}

#[test]
fn end_before_start_is_held_until_the_start_arrives() {
    let mut e = engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    let mut out = Vec::new();
    e.process(ev(2, "H", 9_000, 7), &mut out).unwrap();
    e.process(ev(1, "H", 4_000, 5), &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(e.counters().held_early, 2);
    assert_eq!(e.min_pinned_offset(1), Some(5));
    assert_eq!(e.min_pinned_offset(2), Some(7));
    let st = e.pending_status();
    assert_eq!(st[0].oldest[0].start_ms, 4_000);
    assert!(!st[0].oldest[0].started);
    e.process(ev(0, "H", 1_000, 3), &mut out).unwrap();
    assert_eq!(kinds(&out), ["stage", "completed"]);
    match out[1].kind {
        OutcomeKind::Completed {
            lag_from_first_ms, ..
        } => assert_eq!(lag_from_first_ms, 8_000),
        ref other => panic!("unexpected {other:?}"),
    }
    assert!(out[1].info.started);
    assert_eq!(out[1].info.start_ms, 1_000);
    for p in 0..3 {
        assert_eq!(e.min_pinned_offset(p), None);
    }
}

#[test]
fn breaches_fire_once_per_tier_while_pending() {
    let mut e = engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    let mut out = Vec::new();
    e.process(ev(0, "B", 0, 0), &mut out).unwrap();
    e.process(ev(1, "B", MIN, 0), &mut out).unwrap();
    out.clear();
    e.advance(5 * MIN - 1, &mut out);
    assert!(out.is_empty());
    e.advance(5 * MIN, &mut out);
    e.advance(6 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn"]);
    match out[0].kind {
        OutcomeKind::Breach {
            deadline_ms,
            lag_so_far_ms,
            last_stage_seen,
            missing_stage,
            ..
        } => assert_eq!(
            (deadline_ms, lag_so_far_ms, last_stage_seen, missing_stage),
            (5 * MIN, 5 * MIN, Some(1), 2)
        ),
        ref other => panic!("unexpected {other:?}"),
    }
    e.advance(15 * MIN, &mut out);
    e.advance(16 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn", "critical"]);
    e.process(ev(2, "B", 17 * MIN, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["warn", "critical", "completed"]);
    assert_eq!(e.counters().breaches_warn, 1);
    assert_eq!(e.counters().breaches_critical, 1);
}

#[test]
fn a_closing_record_past_the_deadline_settles_the_breach_first() {
    // Replay: the engine clock (watermark) is behind, but the closing record's own time
    // shows the warn deadline passed while it was pending.
    let mut e = order_flow();
    let mut out = Vec::new();
    e.process(ev(0, "R", 0, 0), &mut out).unwrap();
    e.process(ev(1, "R", 7 * MIN, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["warn", "completed"]);
    // A correlation closing within its SLA never breaches.
    out.clear();
    e.process(ev(0, "S", 0, 0), &mut out).unwrap();
    e.process(ev(1, "S", 5 * MIN - 1, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["completed"]);
}

#[test]
fn window_end_frees_state_and_late_stage_is_reported() {
    let mut e = order_flow();
    let mut out = Vec::new();
    let mut start = ev(0, "N", 1_000, 4);
    start.dimensions = vec![(0, "ups".into())];
    e.process(start, &mut out).unwrap();
    e.advance(1_000 + 60 * MIN - 1, &mut out);
    assert_eq!(kinds(&out), ["warn", "critical"]);
    e.advance(1_000 + 60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn", "critical", "never"]);
    match &out[2].kind {
        OutcomeKind::NeverArrived {
            window_end_ms,
            missing,
            ..
        } => {
            assert_eq!(*window_end_ms, 1_000 + 60 * MIN);
            assert_eq!(missing, &vec![1]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.pending(), 0);
    assert_eq!(e.min_pinned_offset(0), None);
    out.clear();
    e.process(ev(1, "N", 1_000 + 70 * MIN, 9), &mut out)
        .unwrap();
    assert_eq!(kinds(&out), ["late"]);
    match out[0].kind {
        OutcomeKind::LateArrival {
            stage,
            lag_from_first_ms,
            after,
            ..
        } => assert_eq!(
            (stage, lag_from_first_ms, after),
            (1, Some(70 * MIN), Terminal::NeverArrived)
        ),
        ref other => panic!("unexpected {other:?}"),
    }
    // Same incident identity as the breach: workflow, id, start.
    assert_eq!(out[0].info.start_ms, 1_000);
    assert_eq!(&*out[0].info.dimensions[0].1, "ups");
    assert_eq!(e.pending(), 0);
    assert_eq!(e.counters().late_arrivals, 1);
    // A second copy of the late record is a duplicate.
    e.process(ev(1, "N", 1_000 + 70 * MIN, 9), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(e.counters().duplicates, 1);
}

#[test]
fn a_stage_past_the_window_waits_for_the_window_end_and_is_late() {
    let mut e = order_flow();
    let mut out = Vec::new();
    e.process(ev(0, "X", 0, 0), &mut out).unwrap();
    e.process(ev(1, "X", 61 * MIN, 7), &mut out).unwrap();
    // Read ahead of the clock: it stays pending (and pinned) until the window ends.
    assert!(out.is_empty());
    assert_eq!(e.min_pinned_offset(1), Some(7));
    e.advance(60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn", "critical", "never", "late"]);
    assert_eq!(e.counters().beyond_window, 1);
    assert_eq!(e.min_pinned_offset(1), None);
}

#[test]
fn a_middle_stage_read_after_a_stage_past_the_window_still_counts() {
    // Partition order: start, the closing stage (past the window), then a middle stage
    // that happened inside the window. Live, the middle stage comes before the window end.
    let mut e = engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    let mut out = Vec::new();
    e.process(ev(0, "Y", 0, 0), &mut out).unwrap();
    e.process(ev(2, "Y", 70 * MIN, 0), &mut out).unwrap();
    e.process(ev(1, "Y", 30 * MIN, 0), &mut out).unwrap();
    e.advance(60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["stage", "warn", "critical", "never", "late"]);
    match &out[3].kind {
        OutcomeKind::NeverArrived { stages_seen, .. } => {
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [0, 1])
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_middle_stage_past_a_deadline_does_not_fire_it_before_an_earlier_close() {
    // The middle stage happened after the warn deadline, but the closing stage (read
    // later, another partition) happened before it: live there is no breach.
    let mut e = engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    let mut out = Vec::new();
    e.process(ev(0, "Z", 0, 0), &mut out).unwrap();
    e.process(ev(1, "Z", 10 * MIN, 0), &mut out).unwrap();
    e.process(ev(2, "Z", 4 * MIN, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["stage", "completed"]);
}

#[test]
fn full_store_evicts_the_oldest() {
    let mut cfg = EngineConfig::with_workflows(vec![wf("w", &["a", "b"], MIN, 2 * MIN, 10 * MIN)]);
    cfg.max_pending = 2;
    let mut e = Engine::new(&cfg).unwrap();
    let mut out = Vec::new();
    e.process(ev(0, "old", 100, 1), &mut out).unwrap();
    e.process(ev(0, "mid", 200, 2), &mut out).unwrap();
    e.process(ev(0, "new", 300, 3), &mut out).unwrap();
    assert_eq!(kinds(&out), ["evicted"]);
    assert_eq!(out[0].info.correlation_id.to_string(), "old");
    assert_eq!(e.pending(), 2);
    assert_eq!(e.counters().evicted, 1);
    assert_eq!(e.min_pinned_offset(0), Some(2));
    // The evicted key's closing stage is late, not a new correlation.
    e.process(ev(1, "old", 400, 4), &mut out).unwrap();
    assert_eq!(kinds(&out), ["evicted", "late"]);
    assert_eq!(e.pending(), 2);
}

#[test]
fn bad_events_are_rejected_and_counted() {
    let mut e = order_flow();
    let mut out = Vec::new();
    let mut bad = ev(0, "A", 0, 0);
    bad.ts = Timestamps::default();
    assert_eq!(e.process(bad, &mut out), Err(CorrelateError::NoTimestamp));
    let mut bad = ev(0, "A", 0, 0);
    bad.workflow = 3;
    assert_eq!(
        e.process(bad, &mut out),
        Err(CorrelateError::UnknownWorkflow(3))
    );
    assert!(matches!(
        e.process(ev(2, "A", 0, 0), &mut out),
        Err(CorrelateError::UnknownStage { .. })
    ));
    assert_eq!(
        e.process(ev(0, "", 0, 0), &mut out),
        Err(CorrelateError::EmptyCorrelationId)
    );
    let mut bad = ev(0, "A", 0, 0);
    bad.dimensions = vec![(5, "x".into())];
    assert!(matches!(
        e.process(bad, &mut out),
        Err(CorrelateError::UnknownDimension { .. })
    ));
    let mut bad = ev(0, "A", 0, 0);
    bad.origin.partition_id = MAX_PARTITIONS;
    assert!(e.process(bad, &mut out).is_err());
    assert_eq!(e.counters().rejected, 6);
    assert_eq!(e.counters().processed, 0);
    assert_eq!(e.pending(), 0);
    assert!(out.is_empty());
}

#[test]
fn dimension_overflow_goes_to_other() {
    let mut cfg = EngineConfig::with_workflows(vec![wf("w", &["a", "b"], MIN, 2 * MIN, 10 * MIN)]);
    cfg.dimension_value_cap = 1;
    let mut e = Engine::new(&cfg).unwrap();
    let mut out = Vec::new();
    for (i, carrier) in ["dhl", "ups", "gls"].iter().enumerate() {
        let id = format!("c{i}");
        let mut s = ev(0, &id, 0, 0);
        s.dimensions = vec![(0, carrier.to_string())];
        e.process(s, &mut out).unwrap();
        e.process(ev(1, &id, 10, 0), &mut out).unwrap();
    }
    let labels: Vec<String> = out
        .iter()
        .map(|o| o.info.dimensions[0].1.to_string())
        .collect();
    assert_eq!(labels, ["dhl", "other", "other"]);
    assert_eq!(e.counters().dimension_overflow, 2);
    let e2e: Vec<_> = e
        .lag_snapshot(0)
        .into_iter()
        .filter(|s| s.key.segment == Segment::EndToEnd)
        .map(|s| s.interval.count)
        .collect();
    assert_eq!(e2e, [1, 2]);
}

fn brussels_flow() -> Engine {
    let mut spec = wf("w", &["a", "b"], 4 * 60 * MIN, 8 * 60 * MIN, 24 * 60 * MIN);
    spec.sla.overrides = vec![BusinessHoursOverride {
        tz: chrono_tz::Europe::Brussels,
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
        start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
        warn_ms: 30 * MIN,
        critical_ms: 60 * MIN,
    }];
    engine(vec![spec])
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .timestamp_millis()
}

#[test]
fn business_hours_override_uses_local_time_across_dst() {
    let mut e = brussels_flow();
    let mut out = Vec::new();
    // 07:30 UTC on Tue 2024-03-26 is 08:30 CET: off hours, base SLA.
    let before = utc(2024, 3, 26, 7, 30);
    // 07:30 UTC on Tue 2024-04-02 is 09:30 CEST: business hours, override SLA.
    let after = utc(2024, 4, 2, 7, 30);
    // Autumn: Mon 2024-10-28 (CET again) 07:30 UTC is 08:30 local: off hours.
    let autumn = utc(2024, 10, 28, 7, 30);
    e.process(ev(0, "before", before, 0), &mut out).unwrap();
    e.process(ev(0, "after", after, 0), &mut out).unwrap();
    e.process(ev(0, "autumn", autumn, 0), &mut out).unwrap();
    for (id, at) in [("before", before), ("after", after), ("autumn", autumn)] {
        e.process(ev(1, id, at + 45 * MIN, 0), &mut out).unwrap();
    }
    let got: Vec<(String, Vec<&str>, usize)> = ["before", "after", "autumn"]
        .iter()
        .map(|id| {
            let mine: Vec<&Outcome> = out
                .iter()
                .filter(|o| o.info.correlation_id.to_string() == *id)
                .collect();
            let variant = mine[0].info.deadlines.unwrap().variant;
            let k = kinds(&mine.iter().map(|o| (*o).clone()).collect::<Vec<_>>());
            (id.to_string(), k, variant)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("before".to_string(), vec!["completed"], 0),
            ("after".to_string(), vec!["warn", "completed"], 1),
            ("autumn".to_string(), vec!["completed"], 0),
        ]
    );
    let after_out = out
        .iter()
        .find(|o| o.info.correlation_id.to_string() == "after")
        .unwrap();
    assert_eq!(after_out.info.deadlines.unwrap().warn_ms, after + 30 * MIN);
}

#[test]
fn pending_status_buckets_ages_and_lists_the_oldest() {
    let mut cfg =
        EngineConfig::with_workflows(vec![wf("w", &["a", "b"], 600 * MIN, 700 * MIN, 800 * MIN)]);
    cfg.oldest_n = 2;
    let mut e = Engine::new(&cfg).unwrap();
    let mut out = Vec::new();
    let now = 1_000 * MIN;
    for (id, age) in [
        ("a", 30_000),
        ("b", 2 * MIN),
        ("c", 10 * MIN),
        ("d", 30 * MIN),
        ("e", 90 * MIN),
        ("f", 95 * MIN),
    ] {
        let mut s = ev(0, id, now - age, 0);
        s.dimensions = vec![(1, "ams".into())];
        e.process(s, &mut out).unwrap();
    }
    e.process(ev(1, "late-held", now - 20 * MIN, 0), &mut out)
        .unwrap();
    e.advance(now, &mut out);
    assert!(out.is_empty());
    let st = &e.pending_status()[0];
    assert_eq!(st.pending, 7);
    assert_eq!(st.by_age, [1, 1, 1, 2, 2]);
    let oldest: Vec<String> = st
        .oldest
        .iter()
        .map(|p| p.correlation_id.to_string())
        .collect();
    assert_eq!(oldest, ["f", "e"]);
    assert_eq!(&*st.oldest[0].dimensions[0].0, "warehouse");
    assert_eq!(st.oldest[0].stages_seen.iter().collect::<Vec<_>>(), [0]);
}

/// Live: each record is handled when it happens (wall clock = event time). Replay: the same
/// records read later from a backlog, partition by partition, with the watermark clock.
#[test]
fn replay_from_backlog_gives_the_same_outcomes_as_live() {
    let spec = || {
        engine(vec![
            wf("w", &["a", "b", "c"], 5 * MIN, 10 * MIN, 30 * MIN),
            wf("v", &["x", "y"], 2 * MIN, 3 * MIN, 20 * MIN),
        ])
    };
    // (partition, workflow, stage, id, minute)
    let records: Vec<(u32, usize, usize, &str, i64)> = vec![
        (0, 0, 0, "o1", 0),
        (0, 0, 0, "o2", 1),
        (1, 0, 1, "o1", 2),
        (0, 1, 0, "v1", 3),
        (1, 0, 2, "o1", 4),
        (1, 0, 2, "o2", 4),
        (0, 0, 0, "o3", 5),
        (1, 1, 1, "v1", 7),
        (1, 0, 1, "o2", 8),
        (0, 0, 0, "o4", 9),
        (1, 0, 1, "o3", 12),
        (1, 0, 2, "o3", 14),
        (0, 1, 0, "v2", 15),
        (1, 0, 1, "o4", 45),
        (0, 0, 0, "o5", 50),
        (1, 0, 2, "o5", 52),
    ];
    let to_event = |(p, w, s, id, m): (u32, usize, usize, &str, i64), offset: i64| StageEvent {
        workflow: w,
        stage: s,
        correlation_id: id.into(),
        ts: Timestamps {
            source_event_ms: Some(m * MIN),
            kafka_ms: Some(m * MIN + 10),
            ..Timestamps::default()
        },
        dimensions: vec![],
        origin: Origin {
            partition_id: p,
            offset,
        },
    };
    let end = 120 * MIN;

    let mut live = spec();
    let mut live_out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        live.advance(r.4 * MIN, &mut live_out);
        live.process(to_event(*r, i as i64), &mut live_out).unwrap();
    }
    live.advance(end, &mut live_out);

    let mut replay = spec();
    let mut replay_out = Vec::new();
    let wall = end + 10 * MIN;
    let mut clock = InputClock::new(60_000);
    clock.assign(0, wall);
    clock.assign(1, wall);
    // Consumer reads partition 0's backlog in chunks, then partition 1's, interleaved.
    let p0: Vec<_> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 == 0)
        .collect();
    let p1: Vec<_> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 == 1)
        .collect();
    let mut order = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < p0.len() || j < p1.len() {
        order.extend(p0.iter().skip(i).take(3));
        i += 3;
        order.extend(p1.iter().skip(j).take(2));
        j += 2;
    }
    let mut next = [0i64; 2];
    for (off, r) in order {
        clock.record(r.0, next[r.0 as usize], Some(r.4 * MIN), wall);
        next[r.0 as usize] += 1;
        replay
            .process(to_event(*r, off as i64), &mut replay_out)
            .unwrap();
        if let Some(now) = clock.read(wall).now_ms {
            replay.advance(now, &mut replay_out);
        }
    }
    // Both partitions read to their ends: the clock follows confirmed wall time.
    clock.end_offset(0, next[0], wall);
    clock.end_offset(1, next[1], wall);
    let now = clock.read(wall).now_ms.unwrap();
    replay.advance(now, &mut replay_out);

    let norm = |mut v: Vec<Outcome>| {
        let mut s: Vec<String> = v.drain(..).map(|o| format!("{o:?}")).collect();
        s.sort();
        s
    };
    let live_n = norm(live_out);
    assert_eq!(live_n, norm(replay_out));
    // The scenario exercises every outcome kind that a replay can reorder.
    let all = live_n.join("\n");
    for k in [
        "Completed",
        "StageReached",
        "Warn",
        "Critical",
        "NeverArrived",
        "LateArrival",
    ] {
        assert!(all.contains(k), "{k} missing");
    }
}

fn lag_of(o: &Outcome) -> Option<i64> {
    match o.kind {
        OutcomeKind::Completed {
            lag_from_first_ms, ..
        } => Some(lag_from_first_ms),
        OutcomeKind::LateArrival {
            lag_from_first_ms, ..
        } => lag_from_first_ms,
        _ => None,
    }
}

#[test]
fn a_closing_stage_read_before_its_start_and_past_the_window_is_late_as_live() {
    // Live: start, window end (never arrived), then the closing record (late).
    let mut live = order_flow();
    let mut live_out = Vec::new();
    live.process(ev(0, "L", 0, 0), &mut live_out).unwrap();
    live.advance(61 * MIN, &mut live_out);
    live.process(ev(1, "L", 61 * MIN, 0), &mut live_out)
        .unwrap();
    assert_eq!(kinds(&live_out), ["warn", "critical", "never", "late"]);

    // Replay: the closing record's partition is read first.
    let mut e = order_flow();
    let mut out = Vec::new();
    e.process(ev(1, "L", 61 * MIN, 5), &mut out).unwrap();
    assert!(out.is_empty());
    e.process(ev(0, "L", 0, 3), &mut out).unwrap();
    // The watermark clock is at most the start's time when the start is read.
    e.advance(0, &mut out);
    assert!(out.is_empty());
    e.advance(60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn", "critical", "never", "late"]);
    assert_eq!(out, live_out);
    match &out[2].kind {
        OutcomeKind::NeverArrived {
            window_end_ms,
            stages_seen,
            missing,
        } => {
            assert_eq!(*window_end_ms, 60 * MIN);
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [0]);
            assert_eq!(missing, &vec![1]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(lag_of(&out[3]), Some(61 * MIN));
    let c = e.counters();
    assert_eq!(
        (c.held_early, c.beyond_window, c.late_arrivals, c.completed),
        (1, 1, 1, 0)
    );
    assert_eq!(e.pending(), 0);
    for p in 0..2 {
        assert_eq!(e.min_pinned_offset(p), None);
    }
    // The late stage is remembered: its redelivery is a duplicate.
    e.process(ev(1, "L", 61 * MIN, 5), &mut out).unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(e.counters().duplicates, 1);
}

#[test]
fn held_stages_are_applied_in_the_order_they_happened() {
    let flow = || engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    // Middle stage in time, closing stage past the window: stage, never arrived, late.
    let mut e = flow();
    let mut out = Vec::new();
    e.process(ev(2, "M", 70 * MIN, 0), &mut out).unwrap();
    e.process(ev(1, "M", 2 * MIN, 0), &mut out).unwrap();
    e.process(ev(0, "M", 0, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["stage"]);
    e.advance(60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["stage", "warn", "critical", "never", "late"]);
    match &out[3].kind {
        OutcomeKind::NeverArrived { stages_seen, .. } => {
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [0, 1])
        }
        other => panic!("unexpected {other:?}"),
    }
    // The warn breach knew the middle stage (it happened before the deadline).
    match out[1].kind {
        OutcomeKind::Breach {
            last_stage_seen,
            missing_stage,
            ..
        } => assert_eq!((last_stage_seen, missing_stage), (Some(1), 2)),
        ref other => panic!("unexpected {other:?}"),
    }

    // Closing stage in time, middle stage after it: completed, then a stage read after
    // completion (no outcome), as live.
    let mut e = flow();
    let mut out = Vec::new();
    e.process(ev(1, "N", 9 * MIN, 0), &mut out).unwrap();
    e.process(ev(2, "N", 3 * MIN, 0), &mut out).unwrap();
    e.process(ev(0, "N", 0, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["completed"]);
    match out[0].kind {
        OutcomeKind::Completed {
            previous_stage,
            stages_seen,
            ..
        } => {
            assert_eq!(previous_stage, 0);
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [0, 2]);
        }
        ref other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.counters().after_completion, 1);
    // Both held stages are remembered.
    e.process(ev(1, "N", 9 * MIN, 0), &mut out).unwrap();
    assert_eq!(e.counters().duplicates, 1);

    // Two middle stages out of chain order: each lag is from the stage seen before it.
    let mut e = engine(vec![wf(
        "d",
        &["a", "b", "c", "d"],
        50 * MIN,
        55 * MIN,
        60 * MIN,
    )]);
    let mut out = Vec::new();
    e.process(ev(1, "O", 5 * MIN, 0), &mut out).unwrap();
    e.process(ev(2, "O", 3 * MIN, 0), &mut out).unwrap();
    e.process(ev(0, "O", 0, 0), &mut out).unwrap();
    let stages: Vec<(usize, usize)> = out
        .iter()
        .filter_map(|o| match o.kind {
            OutcomeKind::StageReached {
                stage,
                previous_stage,
                ..
            } => Some((stage, previous_stage)),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [(2, 0), (1, 0)]);
}

#[test]
fn held_stages_without_a_start_expire_and_later_ones_are_late() {
    let mut e = order_flow();
    let mut out = Vec::new();
    // Two records of the closing stage's partition... and one of another stage far later:
    // a three-stage chain makes both non-start stages holdable.
    let mut e3 = engine(vec![wf("w", &["a", "b", "c"], 5 * MIN, 15 * MIN, 60 * MIN)]);
    e3.process(ev(2, "U", 90 * MIN, 0), &mut out).unwrap();
    e3.process(ev(1, "U", 10 * MIN, 0), &mut out).unwrap();
    e3.advance(80 * MIN, &mut out);
    assert_eq!(kinds(&out), ["never", "late"]);
    assert!(!out[0].info.started);
    assert_eq!(out[0].info.start_ms, 10 * MIN);
    match &out[0].kind {
        OutcomeKind::NeverArrived { stages_seen, .. } => {
            assert_eq!(stages_seen.iter().collect::<Vec<_>>(), [1])
        }
        other => panic!("unexpected {other:?}"),
    }
    let c = e3.counters();
    assert_eq!(
        (c.held_expired, c.beyond_window, c.late_arrivals),
        (1, 1, 1)
    );
    // The start, read last, is late too.
    e3.process(ev(0, "U", 5 * MIN, 0), &mut out).unwrap();
    assert_eq!(kinds(&out), ["never", "late", "late"]);
    assert_eq!(e3.pending(), 0);

    // A held closing stage whose start is more than a window later: the start waits
    // for the held window to end, then is late.
    e.process(ev(1, "V", 0, 0), &mut out).unwrap();
    out.clear();
    e.process(ev(0, "V", 61 * MIN, 0), &mut out).unwrap();
    assert!(out.is_empty());
    e.advance(60 * MIN, &mut out);
    assert_eq!(kinds(&out), ["never", "late"]);
    assert!(!out[0].info.started);
    assert_eq!(e.counters().held_expired, 1);
    assert_eq!(e.pending(), 0);
}

#[test]
fn a_tier_past_the_window_end_never_fires() {
    let mut e = engine(vec![wf("w", &["a", "b"], MIN, 20 * MIN, 10 * MIN)]);
    let mut out = Vec::new();
    e.process(ev(0, "T", 0, 0), &mut out).unwrap();
    // One big clock step over warn, window end and critical.
    e.advance(30 * MIN, &mut out);
    assert_eq!(kinds(&out), ["warn", "never"]);
    assert_eq!(e.counters().tiers_after_window, 1);
}

#[test]
fn lag_snapshots_cover_one_interval_each_with_the_cumulative_view() {
    let mut e = order_flow();
    let mut out = Vec::new();
    e.open_lag_interval(1_000);
    for (i, lag) in [100, 200, 300].into_iter().enumerate() {
        let id = format!("a{i}");
        e.process(ev(0, &id, 0, 0), &mut out).unwrap();
        e.process(ev(1, &id, lag, 0), &mut out).unwrap();
    }
    let e2e = |snap: &[SeriesSnapshot]| {
        snap.iter()
            .find(|s| s.key.segment == Segment::EndToEnd)
            .cloned()
    };
    let first = e2e(&e.lag_snapshot(2_000)).unwrap();
    assert_eq!(
        (first.interval_start_ms, first.interval_end_ms),
        (1_000, 2_000)
    );
    assert_eq!((first.interval.count, first.interval.min_ms), (3, 100));
    assert_eq!(first.cumulative, first.interval);
    // A quiet interval sends nothing.
    assert!(e.lag_snapshot(3_000).is_empty());
    e.process(ev(0, "b", 0, 0), &mut out).unwrap();
    e.process(ev(1, "b", 5_000, 0), &mut out).unwrap();
    let second = e2e(&e.lag_snapshot(4_000)).unwrap();
    assert_eq!(
        (second.interval_start_ms, second.interval_end_ms),
        (3_000, 4_000)
    );
    assert_eq!((second.interval.count, second.interval.min_ms), (1, 5_000));
    assert_eq!(
        (second.cumulative.count, second.cumulative.min_ms),
        (4, 100)
    );
    let totals = e.lag_totals(0, Segment::EndToEnd).unwrap();
    assert_eq!(totals, second.cumulative);
    assert_eq!(e.series_count(second.key), 4);
    assert_eq!(e.lag_totals(0, Segment::OutboxCdc), None);
    assert_eq!(e.lag_totals(7, Segment::EndToEnd), None);
}

#[test]
fn recent_memory_size_comes_from_the_config() {
    let mut cfg = EngineConfig::with_workflows(vec![wf("w", &["a", "b"], MIN, 2 * MIN, 10 * MIN)]);
    cfg.recent_terminal_cap = 2;
    let mut e = Engine::new(&cfg).unwrap();
    let mut out = Vec::new();
    for i in 0..5 {
        let id = format!("r{i}");
        e.process(ev(0, &id, 0, 0), &mut out).unwrap();
        e.process(ev(1, &id, 10, 0), &mut out).unwrap();
    }
    assert_eq!(e.recent_len(), 2);
    assert_eq!(e.counters().recent_forgotten, 3);
    assert_eq!(
        EngineConfig::with_workflows(vec![]).recent_terminal_cap,
        DEFAULT_RECENT_TERMINAL_CAP
    );
}
