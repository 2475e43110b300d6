//! Batch workflows on the real broker: the simulator sends scheduled runs (clean, late,
//! missing, partial, a volume spike, unreconciled) of a batch workflow scheduled every 15
//! seconds, `synclag run` watches them, and the batch and incident topics are read as an
//! alerting system would.
//!
//! - Each faulty run is reported with the right check and status, and on time: schedule
//!   findings while the run is missing (never before their deadline, each tier before the
//!   next tier's deadline), the others before the next run is due. Clean runs raise
//!   nothing but their run summary. Each check's incident opens and is resolved by the next
//!   run that passes it.
//! - Recent runs survive a restart in the middle of a run: the restarted service knows the
//!   earlier run from the state topic, and the interrupted run counts every record once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::drill::{create_log_append_topic, Keyed, Seen, Watcher};
use support::{free_port, SynclagProcess};
use synclag::batch::BatchEvent;
use synclag::config::Topology;
use synclag::emit::events::IncidentEvent;
use synclag::sim::batch::{plan_runs, produce_runs, BatchScenario, PlannedRun, RunFault};

impl Keyed for BatchEvent {
    fn record_key(&self) -> String {
        self.key()
    }
}

struct Topics {
    orders: String,
    outbox: String,
    manifests: String,
    out: String,
    batches: String,
    incidents: String,
    group: String,
}

impl Topics {
    async fn create(label: &str) -> Topics {
        let t = Topics {
            orders: support::random_name(&format!("{label}-orders")),
            outbox: support::random_name(&format!("{label}-outbox")),
            manifests: support::random_name(&format!("{label}-manifests")),
            out: support::random_name(&format!("{label}-out")),
            batches: support::random_name(&format!("{label}-batches")),
            incidents: support::random_name(&format!("{label}-incidents")),
            group: support::random_name(&format!("synclag-{label}")),
        };
        for topic in [&t.orders, &t.outbox, &t.manifests] {
            support::create_topic(topic, 1).await;
        }
        create_log_append_topic(&t.batches).await;
        create_log_append_topic(&t.incidents).await;
        t
    }
}

/// A carrier manifest batch every `every` seconds: records and a trailer with the count,
/// each record posted in the ERP stream (the outbox), which also closes a small streaming
/// workflow.
fn config(t: &Topics, port: u16, every: u32, tiers: &str) -> String {
    format!(
        r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{port}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog, incidents_topic: {incidents}, batches_topic: {batches} }}
streams:
  - {{ name: orders, topic: {orders}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: outbox, topic: {outbox}, format: json, fields: {{ correlation_id: $.id, event_time: $.at, event_type: $.type }} }}
  - name: manifests
    topic: {manifests}
    format: json
    fields:
      correlation_id: $.parcel
      event_time: $.at
      event_type: $.kind
      dimensions: {{ manifest: $.manifest, parcels: $.parcels }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox, event_type: sale.order.imported }} ]
    sla: {{ warn: 5m, critical: 15m }}
    window: 1h
routes:
  operations: {{ team: logistics-operations }}
batches:
  - name: carrier_manifest
    stream: manifests
    record_type: parcel
    trailer_type: trailer
    batch_id: manifest
    expected_count: parcels
    schedule: {{ cron: "*/{every} * * * * *", timezone: Europe/Brussels }}
{tiers}
    completeness: {{ warn: 1.0, critical: 0.9 }}
    volume: {{ expected: 10, baseline_runs: 4, min_history: 2, warn: 0.3, critical: 0.6 }}
    reconciliation: {{ stream: outbox, event_type: manifest.parcel.booked, within: 3s, warn: 1.0, critical: 0.9 }}
    route: operations
"#,
        group = t.group,
        bootstrap = support::bootstrap(),
        out = t.out,
        incidents = t.incidents,
        batches = t.batches,
        orders = t.orders,
        outbox = t.outbox,
        manifests = t.manifests,
    )
}

const FAST_TIERS: &str =
    "    start: { warn: 3s, critical: 6s }\n    completion: { warn: 8s, critical: 12s }";

/// Waits until just after a run of `topology`'s batch workflow falls due, so that a
/// service started now takes up the schedule with a whole interval before its next run.
/// The service judges every run that falls due after its first clock reading; a test that
/// plans its runs from a moment after the service is ready must leave none of them out.
async fn start_after_a_boundary(topology: &Topology) {
    let schedule = synclag::batch::Schedule::new(&topology.batches[0].schedule);
    let now = chrono::Utc::now().timestamp_millis();
    let next = schedule
        .next_after(now)
        .unwrap_or_else(|| panic!("the schedule has a next run"));
    let wait = u64::try_from(next + 500 - now).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn findings<'a>(seen: &'a [Seen<BatchEvent>], run: &PlannedRun) -> Vec<&'a Seen<BatchEvent>> {
    seen.iter()
        .filter(|s| s.event.scheduled_at_ms == run.scheduled_ms && s.event.check != "run")
        .collect()
}

fn statuses(found: &[&Seen<BatchEvent>]) -> BTreeSet<(String, String, String)> {
    found
        .iter()
        .map(|s| {
            (
                s.event.check.clone(),
                s.event.status.clone(),
                s.event.severity.clone(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

const HOUR_MS: i64 = 3_600_000;

/// Waits, when needed, so that the next `span` lies in one hour. The volume baseline is the
/// median of earlier runs in the same local weekday and hour, so runs planned across an
/// hour would be judged against a different (shorter) history than the scenario means.
/// Europe/Brussels is a whole number of hours from UTC: its hours are UTC's.
async fn keep_within_one_hour(span: Duration) {
    let now = chrono::Utc::now().timestamp_millis();
    let end = now + i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    if now.div_euclid(HOUR_MS) != end.div_euclid(HOUR_MS) {
        let next_hour = (now.div_euclid(HOUR_MS) + 1) * HOUR_MS;
        tokio::time::sleep(Duration::from_millis((next_hour - now) as u64 + 100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_fault_is_reported_with_its_check_on_time_and_clean_runs_raise_nothing() {
    let t = Topics::create("batches").await;
    let port = free_port();
    let scenario = BatchScenario::builtin("batch_faults").expect("built-in");
    let yaml = config(&t, port, 15, FAST_TIERS);
    let topology = Topology::from_yaml_str("batches.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    // Start-up, the runs 15 s apart and a margin, all in one hour; a wait to the next hour
    // ends on a run's time, as the wait before it does.
    start_after_a_boundary(&topology).await;
    keep_within_one_hour(Duration::from_secs(30 + 15 * scenario.runs.len() as u64)).await;
    let batches: Watcher<BatchEvent> = Watcher::start(&t.batches);
    let incidents: Watcher<IncidentEvent> = Watcher::start(&t.incidents);
    let mut svc = SynclagProcess::start(&yaml, port, "batches");
    svc.wait_ready().await;

    // Runs from the next scheduled time at least a second away.
    let after = chrono::Utc::now().timestamp_millis() + 1_000;
    let runs = plan_runs(&topology, "carrier_manifest", &scenario, after)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs[0].scheduled_ms.div_euclid(HOUR_MS),
        runs[runs.len() - 1].scheduled_ms.div_euclid(HOUR_MS),
        "the runs are planned within one hour"
    );
    let mut sink = synclag::sim::kafka_sink_for(&topology, None).expect("sink");
    produce_runs(&runs, &mut sink)
        .await
        .expect("produce the runs");

    // The last run is clean and closes every incident: wait for its summary and for the
    // resolution of the reconciliation incident opened by the run before it.
    let last = runs.last().expect("runs").scheduled_ms;
    support::wait_until_async(Duration::from_secs(60), "the last run's summary", || {
        let seen = batches.snapshot();
        async move {
            seen.iter()
                .any(|s| s.event.scheduled_at_ms == last && s.event.check == "run")
        }
    })
    .await;
    support::wait_until_async(
        Duration::from_secs(30),
        "the reconciliation incident resolved",
        || {
            let seen = incidents.snapshot();
            async move {
                seen.iter().any(|s| {
                    s.event.probable_cause == "batch_reconciliation" && s.event.kind == "resolved"
                })
            }
        },
    )
    .await;
    let api = svc
        .get_json("/api/v1/batches")
        .await
        .expect("/api/v1/batches");
    let metrics = svc.get_text("/metrics").await.unwrap_or_default();
    assert_eq!(svc.terminate().await, Some(0), "{}", svc.log_tail());
    let seen = batches.finish().await;
    let incident_events = incidents.finish().await;

    let period = 15_000;
    for run in &runs {
        let found = findings(&seen, run);
        let expected = match run.fault {
            RunFault::Clean => set(&[]),
            RunFault::Late => set(&[
                ("schedule", "not_started", "warn"),
                ("schedule", "not_started", "critical"),
                ("schedule", "not_completed", "warn"),
            ]),
            RunFault::Missing => set(&[
                ("schedule", "not_started", "warn"),
                ("schedule", "not_started", "critical"),
                ("schedule", "missed", "critical"),
            ]),
            RunFault::Partial { .. } => set(&[("completeness", "missing_records", "critical")]),
            RunFault::Spike { .. } => set(&[("volume", "above_baseline", "critical")]),
            RunFault::Unreconciled { .. } => {
                set(&[("reconciliation", "unmatched_records", "critical")])
            }
        };
        assert_eq!(
            statuses(&found),
            expected,
            "run {} ({}): {found:#?}\nservice log:\n{}",
            run.scheduled_ms,
            run.fault.name(),
            svc.log_tail()
        );
        assert_eq!(found.len(), expected.len(), "each finding once: {found:#?}");
        if let Some((check, status)) = run.fault.expected_finding() {
            assert!(
                found
                    .iter()
                    .any(|s| s.event.check == check && s.event.status == status),
                "the simulator's expectation for {}: {check} {status}",
                run.fault.name()
            );
        }
        for s in &found {
            let e = &s.event;
            if let Some(deadline) = e.deadline_ms {
                assert!(
                    e.observed_at_ms >= deadline,
                    "never before its deadline: {e:?}"
                );
            }
            match e.status.as_str() {
                // Raised while the run is missing: before the next tier is due.
                "not_started" if e.severity == "warn" => {
                    assert!(
                        s.append_ms < run.scheduled_ms + 6_000,
                        "{e:?} at {}",
                        s.append_ms
                    )
                }
                "not_started" => {
                    assert!(
                        s.append_ms < run.scheduled_ms + 12_000,
                        "{e:?} at {}",
                        s.append_ms
                    )
                }
                "not_completed" => {
                    assert!(
                        s.append_ms < run.scheduled_ms + 12_000,
                        "{e:?} at {}",
                        s.append_ms
                    );
                    assert!(
                        e.completed_at_ms.is_none(),
                        "raised before the trailer came: {e:?}"
                    );
                }
                // Everything else before the next run is due (reconciliation: before the
                // one after, as its records have `within` after completion).
                "unmatched_records" => {
                    assert!(s.append_ms < run.scheduled_ms + 2 * period, "{e:?}")
                }
                _ => assert!(s.append_ms < run.scheduled_ms + period, "{e:?}"),
            }
            assert_eq!(e.route.as_deref(), Some("operations"));
            assert_eq!(e.team.as_deref(), Some("logistics-operations"));
        }
        // Every run that came has its summary, once.
        let summaries: Vec<&BatchEvent> = seen
            .iter()
            .map(|s| &s.event)
            .filter(|e| e.scheduled_at_ms == run.scheduled_ms && e.check == "run")
            .collect();
        if run.fault == RunFault::Missing {
            assert!(summaries.is_empty(), "{summaries:?}");
        } else {
            assert_eq!(summaries.len(), 1, "{summaries:?}");
            assert_eq!(
                summaries[0].batch_id.as_deref(),
                Some(run.batch_id.as_str())
            );
        }
        if run.fault == RunFault::Clean {
            assert_eq!(summaries[0].severity, "ok");
        }
    }
    let spike = runs
        .iter()
        .find(|r| matches!(r.fault, RunFault::Spike { .. }))
        .expect("a spike");
    let v = seen
        .iter()
        .find(|s| s.event.scheduled_at_ms == spike.scheduled_ms && s.event.check == "volume")
        .expect("the volume finding");
    assert_eq!(v.event.distinct_records, 25);
    assert_eq!(v.event.baseline_records, Some(10.0));
    assert_eq!(v.event.baseline_source.as_deref(), Some("history"));

    // One incident per check, opened by its fault and resolved by the next run passing it.
    let mut last_kind: BTreeMap<String, (String, String)> = BTreeMap::new();
    for s in &incident_events {
        last_kind.insert(
            s.event.incident_id.clone(),
            (s.event.probable_cause.clone(), s.event.kind.clone()),
        );
    }
    let causes: BTreeSet<&str> = last_kind.values().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        causes,
        BTreeSet::from([
            "batch_completeness",
            "batch_reconciliation",
            "batch_schedule",
            "batch_volume"
        ]),
        "{incident_events:#?}"
    );
    assert!(
        last_kind.values().all(|(_, k)| k == "resolved"),
        "every incident resolved by the next good run: {last_kind:?}"
    );

    // The API and the metrics.
    let views = api["batches"].as_array().expect("batches");
    assert_eq!(views.len(), 1);
    let missing = runs
        .iter()
        .find(|r| r.fault == RunFault::Missing)
        .expect("a missing run");
    let api_runs = views[0]["runs"].as_array().expect("runs");
    let state_of = |ms: i64| {
        api_runs
            .iter()
            .find(|r| r["scheduled_at_ms"] == ms)
            .map(|r| r["state"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(state_of(missing.scheduled_ms).as_deref(), Some("missed"));
    assert_eq!(state_of(runs[0].scheduled_ms).as_deref(), Some("completed"));
    assert_eq!(
        metric(
            &metrics,
            "synclag_batch_findings_total",
            &[("check", "completeness"), ("severity", "critical")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "synclag_batch_findings_total",
            &[("check", "schedule"), ("severity", "critical")]
        ),
        Some(3.0),
        "not started (late), not started and missed (missing): {metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "synclag_batch_run_records",
            &[("workflow", "carrier_manifest")]
        ),
        Some(10.0),
        "the last run's records: {metrics}"
    );
}

/// The value of the series of `name` carrying every label of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_runs_survive_a_restart_in_the_middle_of_a_run() {
    let t = Topics::create("batch-restart").await;
    let port = free_port();
    // Wide tiers: neither the restart nor a broker slow to take the first records (the
    // other test of this file runs at the same time) may make a run late.
    let tiers =
        "    start: { warn: 20s, critical: 25s }\n    completion: { warn: 40s, critical: 50s }";
    let yaml = config(&t, port, 30, tiers);
    let topology = Topology::from_yaml_str("batches.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Watcher<BatchEvent> = Watcher::start(&t.batches);
    start_after_a_boundary(&topology).await;
    let mut svc = SynclagProcess::start(&yaml, port, "batch-restart-1");
    svc.wait_ready().await;

    let scenario = BatchScenario {
        name: "two_clean_runs".into(),
        records: 10,
        runs: vec![RunFault::Clean, RunFault::Clean],
    };
    let after = chrono::Utc::now().timestamp_millis() + 1_000;
    let runs = plan_runs(&topology, "carrier_manifest", &scenario, after)
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, second) = (&runs[0], &runs[1]);
    // The second run's first half, then the service is killed (no flush, no commit).
    let half = second.records.len() / 2;
    let before_kill = PlannedRun {
        records: second.records[..half].to_vec(),
        ..second.clone()
    };
    let after_kill = PlannedRun {
        records: second.records[half..].to_vec(),
        ..second.clone()
    };
    let mut sink = synclag::sim::kafka_sink_for(&topology, None).expect("sink");
    produce_runs(&[first.clone(), before_kill], &mut sink)
        .await
        .expect("produce");
    let second_ms = second.scheduled_ms;
    let parcels_before = second.records[..half]
        .iter()
        .filter(|r| r.topic == t.manifests)
        .count() as u64;
    support::wait_until_async(
        Duration::from_secs(30),
        "the interrupted run's first records counted",
        || {
            let svc = &svc;
            async move {
                svc.get_json("/api/v1/batches").await.is_some_and(|v| {
                    v["batches"][0]["runs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| {
                            r["scheduled_at_ms"] == second_ms && r["records"] == parcels_before
                        })
                })
            }
        },
    )
    .await;
    // Let the state of what was counted reach the state topic before the kill (it is
    // written before each commit, once a second).
    let committed = wait_for_committed_state(&topology, second_ms, parcels_before).await;
    assert!(committed, "state written");
    svc.kill();

    let mut svc = SynclagProcess::start(&yaml, port, "batch-restart-2");
    svc.wait_ready().await;
    // Restored before the first record: the first run is known without being read again
    // (its records were committed before the kill).
    let first_ms = first.scheduled_ms;
    let first_view = std::sync::Arc::new(std::sync::Mutex::new(None));
    support::wait_until_async(Duration::from_secs(30), "the first run in the API", || {
        let (svc, first_view) = (&svc, first_view.clone());
        async move {
            let found = svc.get_json("/api/v1/batches").await.and_then(|v| {
                v["batches"][0]["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["scheduled_at_ms"] == first_ms)
                    .cloned()
            });
            let ok = found.is_some();
            *first_view.lock().unwrap() = found;
            ok
        }
    })
    .await;
    let first_view = first_view.lock().unwrap().clone();
    let api = svc.get_json("/api/v1/batches").await;
    produce_runs(&[after_kill], &mut sink)
        .await
        .expect("produce the rest");
    support::wait_until_async(
        Duration::from_secs(60),
        "the interrupted run's summary",
        || {
            let seen = batches.snapshot();
            async move {
                seen.iter()
                    .any(|s| s.event.scheduled_at_ms == second_ms && s.event.check == "run")
            }
        },
    )
    .await;
    assert_eq!(svc.terminate().await, Some(0), "{}", svc.log_tail());
    let seen = batches.finish().await;

    let first_view = first_view.unwrap_or_else(|| panic!("first run restored: {api:?}"));
    assert_eq!(first_view["state"], "completed", "{first_view:#}");
    assert_eq!(first_view["records"], 10);
    let summaries: Vec<&BatchEvent> = seen
        .iter()
        .map(|s| &s.event)
        .filter(|e| e.check == "run")
        .collect();
    assert_eq!(
        summaries.len(),
        2,
        "one summary per run, none repeated: {summaries:#?}"
    );
    let s = summaries
        .iter()
        .find(|e| e.scheduled_at_ms == second_ms)
        .expect("second run");
    assert_eq!(
        (s.records, s.distinct_records, s.duplicate_records),
        (10, 10, 0),
        "every record of the interrupted run counted once: {s:?}"
    );
    assert_eq!(s.severity, "ok");
    assert!(
        seen.iter().all(|s| s.event.check == "run"),
        "no finding: {seen:#?}"
    );
}

/// Polls the state topic until the workflow's latest state counts `records` for the run.
async fn wait_for_committed_state(topology: &Topology, run_ms: i64, records: u64) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let topic = topology.batch_state_topic();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let consumer: BaseConsumer = support::client_config()
            .set("group.id", support::random_name("state-reader"))
            .set("isolation.level", "read_committed")
            .create()
            .expect("state reader");
        let (_, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(5))
            .unwrap_or((0, 0));
        if high > 0 {
            // Written in transactions: the last offsets are commit markers, never read.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset((high - 8).max(0)))
                .expect("partition");
            consumer.assign(&tpl).expect("assign");
            let mut last = None;
            while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                last = Some(m.detach());
            }
            if let Some(m) = last {
                let state: synclag::batch::StateRecord =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("state JSON");
                if state
                    .state
                    .runs
                    .iter()
                    .any(|r| r.scheduled_ms == run_ms && r.records == records)
                {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
