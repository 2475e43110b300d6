use super::*;
use std::time::Duration;

fn cfg() -> Config {
    Config {
        quiet: Duration::from_secs(10),
        update_every: Duration::from_secs(60),
        max_open: 100,
        max_events_per_minute: 100,
        sample: 3,
        slice_window: Duration::from_secs(100),
        degraded_min_breaches: 3,
        degraded_factor: 4.0,
    }
}

fn breach(n: u32, carrier: &str, cause: &str, severity: &str) -> BreachEvent {
    BreachEvent {
        breach_id: format!("b{n}-{severity}"),
        kind: "breach".into(),
        severity: severity.into(),
        workflow: "shipment_status".into(),
        correlation_id: format!("c{n}"),
        stage: Some("delivered_in_odoo".into()),
        last_stage_seen: Some("dispatched".into()),
        started_at_ms: 0,
        deadline_ms: Some(0),
        observed_at_ms: 0,
        lag_ms: 1_000 + i64::from(n),
        dimensions: [("carrier".to_string(), carrier.to_string())].into(),
        segments_ms: BTreeMap::new(),
        dominant_segment: None,
        probable_cause: Some(cause.into()),
        route: Some("integration_support".into()),
        team: Some("integration-support".into()),
        signals: vec![],
        backlogged_groups: vec![],
        stalled_inputs: vec![],
        evidence: vec![format!("signal:{cause}")],
        waiting_for: Some("delivered_in_odoo".into()),
        waiting_ms: Some(1_000),
        truncated: vec![],
    }
}

fn dims(carrier: &str) -> BTreeMap<String, String> {
    [("carrier".to_string(), carrier.to_string())].into()
}

/// Healthy traffic: completions of every carrier.
fn traffic(book: &mut IncidentBook, at_ms: i64, per_carrier: u32) {
    for c in ["DHL", "UPS", "DPD", "GLS"] {
        for _ in 0..per_carrier {
            book.completed("shipment_status", &[("carrier", c)], at_ms, true);
        }
    }
}

fn tick(book: &mut IncidentBook, now: i64, wall: i64) -> Vec<IncidentEvent> {
    let mut out = Vec::new();
    book.tick(now, wall, &mut out);
    out
}

#[test]
fn one_fault_is_one_incident_narrowed_to_the_degraded_value() {
    let mut book = IncidentBook::new(&cfg());
    traffic(&mut book, 1_000, 20);
    // DHL breaches one after another; the first ones arrive before DHL counts as degraded.
    let mut events = Vec::new();
    for n in 0..30 {
        let at = 2_000 + i64::from(n) * 100;
        book.observe(&breach(n, "DHL", "carrier_api_throttling", "warn"), at);
        events.extend(tick(&mut book, at, at));
    }
    let opened: Vec<_> = events.iter().filter(|e| e.kind == "opened").collect();
    assert_eq!(opened.len(), 1, "{events:#?}");
    let (open, _) = book.snapshot(0);
    assert_eq!(open.len(), 1);
    let inc = &open[0];
    assert_eq!(inc.slice, dims("DHL"), "narrowed to the degraded carrier");
    assert_eq!(inc.breached, 30);
    assert_eq!(inc.pending, 30);
    assert_eq!(inc.sample.len(), 3, "bounded sample");
    assert_eq!(inc.probable_cause, "carrier_api_throttling");
    assert_eq!(inc.route.as_deref(), Some("integration_support"));
    assert!(inc.slice_breach_rate.unwrap_or(0.0) > 4.0 * inc.peer_breach_rate.unwrap_or(1.0));
    // The narrowing was announced at once, not after update_every.
    assert!(
        events
            .iter()
            .any(|e| e.kind == "updated" && e.slice == dims("DHL")),
        "{events:#?}"
    );
    assert_eq!(book.counters().folded, 29);
    assert_eq!(
        book.degraded(),
        vec![("shipment_status".into(), "carrier".into(), "DHL".into())]
    );
}

#[test]
fn an_even_spread_of_breaches_degrades_no_value() {
    let mut book = IncidentBook::new(&cfg());
    traffic(&mut book, 1_000, 20);
    for n in 0..40 {
        let carrier = ["DHL", "UPS", "DPD", "GLS"][n as usize % 4];
        book.observe(&breach(n, carrier, "outbox_delay", "warn"), 2_000);
    }
    tick(&mut book, 2_000, 2_000);
    let (open, _) = book.snapshot(0);
    assert_eq!(open.len(), 1);
    assert!(
        open[0].slice.is_empty(),
        "whole workflow: {:?}",
        open[0].slice
    );
    assert!(book.degraded().is_empty());
}

#[test]
fn a_dimension_without_peers_is_never_degraded() {
    let mut book = IncidentBook::new(&cfg());
    for n in 0..20 {
        book.observe(&breach(n, "DHL", "x", "warn"), 1_000);
    }
    assert!(book.degraded().is_empty());
}

#[test]
fn causes_and_workflows_make_separate_incidents_and_severity_escalates() {
    let mut book = IncidentBook::new(&cfg());
    book.observe(&breach(1, "DHL", "a", "warn"), 1_000);
    book.observe(&breach(2, "UPS", "b", "warn"), 1_000);
    let opened = tick(&mut book, 1_000, 1_000);
    assert_eq!(opened.len(), 2);
    assert!(opened
        .iter()
        .all(|e| e.kind == "opened" && e.severity == "warn"));
    book.observe(&breach(1, "DHL", "a", "critical"), 2_000);
    let up = tick(&mut book, 2_000, 2_000);
    assert_eq!(up.len(), 1, "escalation is announced at once: {up:#?}");
    assert_eq!(up[0].severity, "critical");
    assert_eq!(up[0].breached, 1, "one correlation, two tiers");
    assert_eq!(up[0].sequence, 2);
}

#[test]
fn updates_are_throttled_and_resolution_needs_quiet_and_completions() {
    let mut book = IncidentBook::new(&cfg());
    book.observe(&breach(1, "DHL", "a", "warn"), 1_000);
    assert_eq!(tick(&mut book, 1_000, 1_000).len(), 1);
    book.observe(&breach(2, "DHL", "a", "warn"), 2_000);
    assert!(
        tick(&mut book, 2_000, 2_000).is_empty(),
        "within update_every"
    );
    let up = tick(&mut book, 2_000, 61_000);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].kind, "updated");
    assert_eq!(up[0].breached, 2);
    // Quiet for long enough but nothing completes: still open (e.g. input stalled).
    assert!(tick(&mut book, 30_000, 90_000).is_empty());
    // The breached ones complete late, and other traffic flows again.
    let mut late = breach(1, "DHL", "a", "warn");
    late.kind = "resolved".into();
    book.observe(&late, 31_000);
    book.completed("shipment_status", &[("carrier", "DHL")], 31_000, false);
    let done = tick(&mut book, 31_000, 91_000);
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(done[0].kind, "resolved");
    assert_eq!(done[0].pending, 1, "one breached correlation never closed");
    assert_eq!(done[0].resolved_at_ms, Some(31_000));
    let (open, resolved) = book.snapshot(0);
    assert!(open.is_empty());
    assert_eq!(resolved.len(), 1);
}

#[test]
fn flood_control_caps_open_incidents_and_defers_updates() {
    let mut c = cfg();
    c.max_open = 2;
    c.max_events_per_minute = 3;
    c.update_every = Duration::from_millis(1);
    let mut book = IncidentBook::new(&c);
    for (n, cause) in ["a", "b", "c", "d"].iter().enumerate() {
        book.observe(&breach(n as u32, "DHL", cause, "warn"), 1_000);
    }
    assert_eq!(book.counters().suppressed_open_cap, 2);
    assert_eq!(tick(&mut book, 1_000, 1_000).len(), 2, "two opened");
    book.observe(&breach(10, "DHL", "a", "warn"), 1_100);
    book.observe(&breach(11, "DHL", "b", "warn"), 1_100);
    let up = tick(&mut book, 1_100, 1_100);
    assert_eq!(up.len(), 1, "budget of 3 per minute: {up:#?}");
    assert_eq!(book.counters().deferred_rate_cap, 1);
    // The next minute carries the deferred update with the state then.
    let later = tick(&mut book, 1_200, 61_200);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].breached, 2);
}

#[test]
fn hysteresis_keeps_a_degraded_value_through_a_dip_and_counts_it() {
    let mut book = IncidentBook::new(&cfg());
    traffic(&mut book, 1_000, 20);
    for n in 0..6 {
        book.observe(&breach(n, "DHL", "a", "warn"), 2_000);
    }
    assert_eq!(book.degraded().len(), 1);
    // Peers start breaching a little: DHL's ratio falls below 4× but stays above 2×.
    for n in 100..102 {
        book.observe(&breach(n, "UPS", "a", "warn"), 2_000);
    }
    let key = (
        "shipment_status".to_string(),
        "carrier".to_string(),
        "DHL".to_string(),
    );
    book.judge(&key, 2_000);
    assert_eq!(book.degraded().len(), 1, "kept by hysteresis");
    assert!(book.counters().flaps_suppressed >= 1);
    // Once its breaches leave the window it is no longer degraded.
    tick(&mut book, 500_000, 500_000);
    assert!(book.degraded().is_empty());
}

#[test]
fn never_arrived_counts_escalates_and_closes() {
    let mut book = IncidentBook::new(&cfg());
    book.observe(&breach(1, "DHL", "a", "warn"), 1_000);
    let mut na = breach(1, "DHL", "a", "never_arrived");
    na.kind = "never_arrived".into();
    book.observe(&na, 5_000);
    tick(&mut book, 5_000, 5_000);
    let (open, _) = book.snapshot(0);
    assert_eq!(open[0].severity, "critical");
    assert_eq!(open[0].never_arrived, 1);
    assert_eq!(open[0].pending, 0);
}

#[test]
fn ids_are_stable_and_distinct() {
    let k = |cause: &str| Key {
        workflow: "w".into(),
        cause: cause.into(),
        slice: None,
    };
    assert_eq!(incident_id(&k("a"), "b1"), incident_id(&k("a"), "b1"));
    assert_ne!(incident_id(&k("a"), "b1"), incident_id(&k("b"), "b1"));
    assert_ne!(incident_id(&k("a"), "b1"), incident_id(&k("a"), "b2"));
}

#[test]
fn an_unknown_incident_takes_the_cause_its_late_completions_show() {
    let mut book = IncidentBook::new(&cfg());
    let mut events = Vec::new();
    for n in 0..6 {
        let mut b = breach(n, "DHL", "x", "warn");
        b.probable_cause = None;
        b.evidence.clear();
        book.observe(&b, 1_000);
    }
    events.extend(tick(&mut book, 1_000, 1_000));
    for n in 0..3 {
        let mut r = breach(n, "DHL", "outbox_delay", "warn");
        r.kind = "resolved".into();
        r.route = Some("platform".into());
        book.observe(&r, 2_000);
    }
    events.extend(tick(&mut book, 2_000, 2_000));
    // Later unexplained breaches of the workflow join it.
    let mut b = breach(50, "UPS", "x", "warn");
    b.probable_cause = None;
    book.observe(&b, 3_000);
    let (open, _) = book.snapshot(0);
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0].probable_cause, "outbox_delay");
    assert_eq!(open[0].route.as_deref(), Some("platform"));
    assert_eq!(open[0].breached, 7);
    assert!(open[0]
        .evidence
        .iter()
        .any(|e| e.starts_with("late_completions:3 of 3 late completions")));
    assert_eq!(events.iter().filter(|e| e.kind == "opened").count(), 1);
    assert!(events
        .iter()
        .any(|e| e.kind == "updated" && e.probable_cause == "outbox_delay"));
}

#[test]
fn an_incident_follows_at_most_a_thousand_correlations_and_counts_the_rest() {
    let mut book = IncidentBook::new(&cfg());
    for n in 0..1_005 {
        book.observe(&breach(n, "DHL", "a", "warn"), 1_000);
    }
    let (open, _) = book.snapshot(0);
    assert_eq!(open[0].breached, 1_005);
    assert_eq!(
        open[0].pending, 1_000,
        "only followed correlations are pending"
    );
    assert_eq!(book.counters().correlations_not_followed, 5);
}
