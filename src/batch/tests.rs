use super::schedule::local_ms;
use super::*;
use chrono_tz::Tz;

const MIN: i64 = 60_000;

fn topology(batch: &str) -> Topology {
    let yaml = format!(
        r#"
kafka: {{ bootstrap_servers: "localhost:9092" }}
streams:
  - name: orders
    topic: orders
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at }}
  - name: outbox
    topic: outbox
    format: json
    fields: {{ correlation_id: $.id, event_time: $.at, event_type: $.type }}
  - name: invoices
    topic: edi.invoices
    format: json
    fields:
      correlation_id: $.invoice
      event_time: $.at
      event_type: $.kind
      dimensions: {{ batch_ref: $.batch, record_count: $.count }}
workflows:
  - name: order_import
    stages: [{{ name: a, stream: orders }}, {{ name: b, stream: outbox }}]
    sla: {{ warn: 1m, critical: 2m }}
    window: 1h
routes:
  billing: {{ team: billing-support }}
batches:
{batch}
"#
    );
    Topology::from_yaml_str("t.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"))
}

/// An EDI invoice batch at 06:00 Brussels time: trailer with count, reconciliation.
const EDI: &str = r#"
  - name: edi_invoices
    stream: invoices
    record_type: invoice
    trailer_type: trailer
    batch_id: batch_ref
    expected_count: record_count
    schedule: { cron: "0 6 * * *", timezone: Europe/Brussels }
    start: { warn: 10m, critical: 30m }
    completion: { warn: 30m, critical: 1h }
    completeness: { warn: 1.0, critical: 0.9 }
    volume: { baseline_runs: 4, min_history: 2, warn: 0.3, critical: 0.6 }
    reconciliation: { stream: outbox, event_type: account.move.posted, within: 20m, warn: 1.0, critical: 0.9 }
    route: billing
"#;

fn brussels() -> Tz {
    "Europe/Brussels".parse().unwrap()
}

struct Feed {
    book: BatchBook,
    offset: i64,
    found: Found,
}

impl Feed {
    fn new(batch: &str) -> Feed {
        Feed {
            book: BatchBook::new(&topology(batch)),
            offset: 0,
            found: Found::default(),
        }
    }

    fn record(&mut self, stream: usize, id: &str, kind: &str, at: i64, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.offset += 1;
        let topic = if stream == 2 {
            "edi.invoices"
        } else {
            "outbox"
        };
        let rec = BatchRecord {
            stream,
            id,
            event_type: Some(kind),
            time_ms: at,
            fields: &fields,
            source: Some((topic, 0, self.offset)),
        };
        self.book.observe(&rec, at, &mut self.found);
        self.book.advance(at, &mut self.found);
    }

    fn invoice(&mut self, id: &str, at: i64) {
        self.record(2, id, "invoice", at, &[("batch_ref", "B1")]);
    }

    fn trailer(&mut self, count: &str, at: i64) {
        self.record(
            2,
            "trailer",
            "trailer",
            at,
            &[("batch_ref", "B1"), ("record_count", count)],
        );
    }

    fn posted(&mut self, id: &str, at: i64) {
        self.record(1, id, "account.move.posted", at, &[]);
    }

    fn tick(&mut self, at: i64) {
        self.book.advance(at, &mut self.found);
    }

    fn take(&mut self) -> Vec<BatchEvent> {
        std::mem::take(&mut self.found.events)
    }

    fn statuses(&mut self) -> Vec<(String, String, String)> {
        self.take()
            .into_iter()
            .map(|e| (e.check, e.status, e.severity))
            .collect()
    }
}

fn s(check: &str, status: &str, sev: &str) -> (String, String, String) {
    (check.into(), status.into(), sev.into())
}

// ---- schedules

#[test]
fn a_daily_run_keeps_its_local_time_across_both_dst_changes() {
    let tz = brussels();
    let sched = Schedule::from_parts(validate_cron("0 2 * * *"), tz);
    // Spring forward (2026-03-29 02:00 -> 03:00): 02:00 does not exist that day and the run
    // fires right after the gap, at 03:00 CEST = 01:00 UTC.
    let fires = sched.fires_between(
        local_ms(tz, 2026, 3, 27, 12, 0),
        local_ms(tz, 2026, 3, 31, 0, 0),
    );
    let utc: Vec<String> = fires
        .iter()
        .map(|ms| {
            chrono::DateTime::from_timestamp_millis(*ms)
                .unwrap()
                .to_rfc3339()
        })
        .collect();
    assert_eq!(
        utc,
        [
            "2026-03-28T01:00:00+00:00",
            "2026-03-29T01:00:00+00:00",
            "2026-03-30T00:00:00+00:00"
        ]
    );
    // Fall back (2026-10-25 03:00 -> 02:00): 02:30 exists twice and fires once.
    let sched = Schedule::from_parts(validate_cron("30 2 * * *"), tz);
    let fires = sched.fires_between(
        local_ms(tz, 2026, 10, 24, 12, 0),
        local_ms(tz, 2026, 10, 26, 12, 0),
    );
    let utc: Vec<String> = fires
        .iter()
        .map(|ms| {
            chrono::DateTime::from_timestamp_millis(*ms)
                .unwrap()
                .to_rfc3339()
        })
        .collect();
    assert_eq!(
        utc,
        ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"],
        "the first 02:30 (CEST) only, then 02:30 CET the next day"
    );
}

#[test]
fn month_end_billing_runs_on_the_last_day_of_each_month_leap_years_included() {
    let tz = brussels();
    let sched = Schedule::from_parts(validate_cron("0 22 L * *"), tz);
    let fires = sched.fires_between(
        local_ms(tz, 2027, 12, 15, 0, 0),
        local_ms(tz, 2028, 5, 1, 0, 0),
    );
    let local: Vec<String> = fires
        .iter()
        .map(|ms| sched.local_text(*ms)[..16].to_string())
        .collect();
    assert_eq!(
        local,
        [
            "2027-12-31T22:00",
            "2028-01-31T22:00",
            "2028-02-29T22:00",
            "2028-03-31T22:00",
            "2028-04-30T22:00"
        ]
    );
    // The last run at or before a time, for attributing records.
    let t = local_ms(tz, 2028, 3, 1, 9, 0);
    assert_eq!(sched.last_at_or_before(t), Some(fires[2]));
}

#[test]
fn a_bad_cron_or_zone_is_reported_with_every_other_problem() {
    let yaml = r#"
kafka: { bootstrap_servers: "localhost:9092" }
streams:
  - { name: s, topic: s, format: json, fields: { correlation_id: $.id } }
workflows:
  - { name: w, stages: [{ name: a, stream: s }, { name: b, stream: s }], sla: { warn: 1m, critical: 2m }, window: 1h }
batches:
  - name: w
    stream: missing_stream
    expected_count: count
    schedule: { cron: "61 * * *", timezone: Europe/Bruxelles, colour: red }
    start: { warn: 30m, critical: 10m }
    completion: { warn: 1m, critical: 2m }
    completeness: { warn: 0.9, critical: 0.95 }
"#;
    let err = Topology::from_yaml_str("t.yaml", yaml, Vec::new()).unwrap_err();
    let text = err.to_string();
    for needle in [
        "batches[0].schedule.colour: unknown key",
        "batches[0].name: duplicate workflow name `w`",
        "batches[0].stream: unknown stream `missing_stream`",
        "batches[0].expected_count: needs `trailer_type`",
        "batches[0].schedule.cron: `61 * * *` is not a cron expression",
        "batches[0].schedule.timezone: unknown time zone `Europe/Bruxelles`",
        "batches[0].start: warn `30m` must be shorter than critical `10m`",
        "batches[0].completeness: critical `0.95` must be below warn `0.9`",
        "batches[0]: a run needs a completion marker",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

fn validate_cron(text: &str) -> croner::Cron {
    crate::config::validate::parse_cron(text).unwrap()
}

// ---- runs

#[test]
fn a_missing_run_is_reported_while_missing_then_as_missed_and_its_incident_resolves_with_the_next_good_run(
) {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    let day1 = local_ms(tz, 2026, 11, 30, 6, 0);
    f.tick(day1 - MIN);
    f.tick(day1 + 9 * MIN);
    assert!(f.take().is_empty(), "nothing before start.warn");
    f.tick(day1 + 10 * MIN);
    let evs = f.take();
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (
            evs[0].check.as_str(),
            evs[0].status.as_str(),
            evs[0].severity.as_str()
        ),
        ("schedule", "not_started", "warn")
    );
    assert_eq!(evs[0].deadline_ms, Some(day1 + 10 * MIN));
    assert_eq!(evs[0].team.as_deref(), Some("billing-support"));
    assert_eq!(f.found.incidents.len(), 1);
    assert_eq!(f.found.incidents[0].kind, "opened");
    f.tick(day1 + 30 * MIN);
    assert_eq!(f.statuses(), [s("schedule", "not_started", "critical")]);
    f.tick(day1 + 59 * MIN);
    assert!(f.take().is_empty(), "each finding once");
    f.tick(day1 + 60 * MIN);
    assert_eq!(f.statuses(), [s("schedule", "missed", "critical")]);
    // The next day's run is on time and complete: the schedule incident resolves.
    let day2 = local_ms(tz, 2026, 12, 1, 6, 0);
    f.found.incidents.clear();
    f.invoice("I1", day2 + MIN);
    f.trailer("1", day2 + 2 * MIN);
    f.posted("I1", day2 + 3 * MIN);
    let kinds: Vec<(String, String)> = f
        .found
        .incidents
        .iter()
        .map(|i| (i.kind.clone(), i.probable_cause.clone()))
        .collect();
    assert_eq!(
        kinds,
        [("resolved".to_string(), "batch_schedule".to_string())]
    );
    let evs = f.statuses();
    assert!(evs.contains(&s("run", "completed", "ok")), "{evs:?}");
}

#[test]
fn completeness_counts_distinct_records_against_the_trailer_and_reports_duplicates() {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    let day = local_ms(tz, 2026, 11, 30, 6, 0);
    f.tick(day - MIN);
    for (i, id) in ["A", "B", "C", "C", "D"].iter().enumerate() {
        f.invoice(id, day + i as i64 * 1000);
    }
    f.trailer("5", day + 10_000);
    let evs = f.take();
    let c = evs
        .iter()
        .find(|e| e.check == "completeness")
        .expect("a completeness finding");
    assert_eq!(c.status, "missing_records");
    assert_eq!(c.severity, "critical", "0.8 < critical 0.9");
    assert_eq!(
        (c.records, c.distinct_records, c.duplicate_records),
        (5, 4, 1)
    );
    assert_eq!((c.expected_records, c.missing_records), (Some(5), Some(1)));
    assert_eq!(c.completeness_ratio, Some(0.8));
    assert_eq!(c.batch_id.as_deref(), Some("B1"));
    let run = evs
        .iter()
        .find(|e| e.check == "run")
        .expect("the run summary");
    assert_eq!(
        (run.status.as_str(), run.severity.as_str()),
        ("completed", "critical")
    );

    // All announced records, one of them twice: complete, but duplicates are a finding.
    let mut f = Feed::new(EDI);
    f.tick(day - MIN);
    for id in ["A", "B", "B"] {
        f.invoice(id, day + MIN);
    }
    f.trailer("2", day + 2 * MIN);
    let evs = f.statuses();
    assert!(
        evs.contains(&s("completeness", "duplicate_records", "warn")),
        "{evs:?}"
    );
}

#[test]
fn a_record_read_again_after_a_restart_is_not_counted_twice() {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    let day = local_ms(tz, 2026, 11, 30, 6, 0);
    f.tick(day - MIN);
    f.invoice("A", day + MIN);
    f.invoice("B", day + MIN);
    let saved: Vec<StateRecord> = f.book.take_dirty();
    let json = serde_json::to_vec(&saved[0]).unwrap();
    // Restart: a new book restored from the state record; the consumer re-reads B (offset 2).
    let mut g = Feed::new(EDI);
    assert!(g.book.restore(serde_json::from_slice(&json).unwrap()));
    g.offset = 1;
    g.invoice("B", day + MIN);
    g.invoice("C", day + 2 * MIN);
    g.trailer("3", day + 3 * MIN);
    let evs = g.take();
    let run = evs.iter().find(|e| e.check == "run").unwrap();
    assert_eq!(
        (run.records, run.distinct_records, run.duplicate_records),
        (3, 3, 0)
    );
    assert_eq!(g.book.counters().replayed_records, 1);
    assert!(evs.iter().all(|e| e.check != "completeness"), "{evs:?}");
}

#[test]
fn volume_needs_history_or_a_configured_expectation_and_then_compares_like_runs() {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    // Mondays at 06:00: the first two runs have no baseline (no history, none configured).
    let mut counts = Vec::new();
    for (week, n) in [10, 10, 11, 30].iter().enumerate() {
        let day = local_ms(tz, 2026, 11, 2 + 7 * week as u32, 6, 0);
        f.tick(day - MIN);
        for i in 0..*n {
            f.invoice(&format!("W{week}-{i}"), day + MIN);
            f.posted(&format!("W{week}-{i}"), day + MIN);
        }
        f.trailer(&n.to_string(), day + 2 * MIN);
        f.tick(day + 3 * MIN);
        let evs = f.take();
        let run = evs.iter().find(|e| e.check == "run").unwrap().clone();
        counts.push((
            run.baseline_source.clone(),
            run.baseline_records,
            run.variance_ratio,
        ));
        if week == 3 {
            let v = evs
                .iter()
                .find(|e| e.check == "volume")
                .expect("a volume finding");
            assert_eq!(
                (v.status.as_str(), v.severity.as_str()),
                ("above_baseline", "critical")
            );
        } else {
            assert!(
                evs.iter().all(|e| e.check != "volume"),
                "week {week}: {evs:?}"
            );
        }
    }
    assert_eq!(counts[0], (None, None, None), "first run: no baseline");
    assert_eq!(
        counts[1],
        (None, None, None),
        "one run of history is below min_history"
    );
    assert_eq!(counts[2], (Some("history".into()), Some(10.0), Some(0.1)));
    assert_eq!(counts[3].1, Some(10.0), "median of 10, 10, 11");
    // Other days of the week are not part of a Monday baseline.
    let tuesday = local_ms(tz, 2026, 12, 1, 6, 0);
    f.tick(tuesday - MIN);
    f.invoice("T1", tuesday + MIN);
    f.trailer("1", tuesday + 2 * MIN);
    let evs = f.take();
    let run = evs.iter().find(|e| e.check == "run").unwrap();
    assert_eq!(run.baseline_source, None);

    // With `expected` configured, the first run already has a baseline.
    let configured = EDI.replace("baseline_runs: 4,", "expected: 100, baseline_runs: 4,");
    let mut g = Feed::new(&configured);
    let day = local_ms(tz, 2026, 11, 2, 6, 0);
    g.tick(day - MIN);
    g.invoice("X", day + MIN);
    g.trailer("1", day + 2 * MIN);
    let evs = g.statuses();
    assert!(
        evs.contains(&s("volume", "below_baseline", "critical")),
        "{evs:?}"
    );
}

#[test]
fn reconciliation_waits_for_erp_postings_before_or_after_the_batch_record() {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    let day = local_ms(tz, 2026, 11, 30, 6, 0);
    f.tick(day - MIN);
    f.posted("A", day); // posted before the batch record is read
    for id in ["A", "B", "C", "D", "E"] {
        f.invoice(id, day + MIN);
    }
    f.trailer("5", day + 2 * MIN);
    f.posted("B", day + 3 * MIN);
    f.posted("C", day + 4 * MIN);
    f.posted("D", day + 5 * MIN);
    assert!(f.take().iter().all(|e| e.check != "reconciliation"));
    f.tick(day + 21 * MIN);
    assert!(f.take().is_empty(), "within 20m of completion");
    f.tick(day + 22 * MIN);
    let evs = f.take();
    assert_eq!(evs.len(), 1, "{evs:?}");
    let r = &evs[0];
    assert_eq!(
        (r.check.as_str(), r.status.as_str(), r.severity.as_str()),
        ("reconciliation", "unmatched_records", "critical")
    );
    assert_eq!(r.reconciled_records, Some(4));
    assert_eq!(r.reconciliation_ratio, Some(0.8));
    assert_eq!(r.deadline_ms, Some(day + 22 * MIN));
}

#[test]
fn a_started_run_without_trailer_is_late_then_completes_on_quiet_time() {
    let tz = brussels();
    let quiet = r#"
  - name: stock_reconciliation
    stream: invoices
    quiet: 5m
    schedule: { cron: "0 2 * * *", timezone: Europe/Brussels, early: 5m }
    start: { warn: 10m, critical: 30m }
    completion: { warn: 20m, critical: 1h }
"#;
    let mut f = Feed::new(quiet);
    let day = local_ms(tz, 2026, 11, 30, 2, 0);
    f.tick(day - 10 * MIN);
    // A record 3 minutes early belongs to the 02:00 run (early: 5m).
    f.record(2, "S1", "line", day - 3 * MIN, &[]);
    f.record(2, "S2", "line", day + 18 * MIN, &[]);
    f.tick(day + 20 * MIN);
    assert_eq!(f.statuses(), [s("schedule", "not_completed", "warn")]);
    f.tick(day + 23 * MIN);
    let evs = f.take();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].status, "completed");
    assert_eq!(evs[0].completion.as_deref(), Some("quiet"));
    assert_eq!(evs[0].scheduled_at_ms, day);
    assert_eq!(evs[0].records, 2);
    assert_eq!(evs[0].completed_at_ms, Some(day + 18 * MIN));
}

#[test]
fn a_clean_day_raises_nothing_but_run_summaries() {
    let tz = brussels();
    let mut f = Feed::new(EDI);
    for d in 0..7 {
        let day = local_ms(tz, 2026, 11, 23 + d, 6, 0);
        f.tick(day - MIN);
        for i in 0..20 {
            let id = format!("D{d}-{i}");
            f.invoice(&id, day + MIN);
            f.posted(&id, day + 2 * MIN);
        }
        f.trailer("20", day + 3 * MIN);
        f.tick(day + 4 * 60 * MIN);
    }
    let evs = f.statuses();
    assert_eq!(evs.len(), 7);
    assert!(
        evs.iter().all(|e| *e == s("run", "completed", "ok")),
        "{evs:?}"
    );
    assert!(f.found.incidents.is_empty());
}

#[test]
fn batch_events_round_trip_through_their_avro_schema() {
    use apache_avro::Schema;
    let schema = Schema::parse_str(BATCH_SCHEMA).unwrap();
    let tz = brussels();
    let mut f = Feed::new(EDI);
    let day = local_ms(tz, 2026, 11, 30, 6, 0);
    f.tick(day - MIN);
    f.tick(day + 10 * MIN); // a schedule finding: optional fields empty
    for id in ["A", "B", "B"] {
        f.invoice(id, day + 11 * MIN);
    }
    f.trailer("3", day + 12 * MIN); // completeness and run: optional fields set
    let events = f.take();
    assert!(events.len() >= 3, "{events:?}");
    for ev in events {
        let value = apache_avro::to_value(&ev)
            .unwrap()
            .resolve(&schema)
            .unwrap();
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        let back: BatchEvent = apache_avro::from_value(&back).unwrap();
        assert_eq!(back, ev);
    }
}
