//! Fault drills on the real broker: each injects one fault with the simulator into a
//! fresh copy of the demo topology, runs `synclag run`, and reads the breach and incident
//! topics as an alerting system would. Each drill checks:
//!
//! - the **cause**: for ≥ 95% of the correlations the fault pushed past their SLA,
//!   synclag's last word on the correlation (its `resolved` event when it completed late,
//!   else its last breach or never-arrived event) names the cause the fault is, with that
//!   cause's route;
//! - **one incident per fault** on each workflow it hits, with that cause, route and
//!   team, instead of one alert per correlation; no other incident on those workflows.
//!
//! Faults: carrier API throttling, a warehouse bridge that stopped (its consumer group
//! backlogged), Odoo validation failures, partner-side lateness, a slow outbox/CDC hop.
//! (An input that synclag cannot read is drilled in `tests/hardening.rs`.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::drill::{breached, create_drill_topics, demo_yaml, run_real_time, Seen, Watcher};
use support::{free_port, SynclagProcess};
use synclag::config::Topology;
use synclag::emit::events::{BreachEvent, IncidentEvent};
use synclag::sim::{Expected, GroundTruth, Scenario};

/// Share of affected correlations whose cause must be right.
const RIGHT_CAUSE_SHARE: f64 = 0.95;

/// The demo's weights, so every workflow carries traffic (peers for degraded slices).
const WEIGHTS: &str = "{ order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.3 }";

struct Drill {
    label: &'static str,
    /// The fault phase's `faults:` entry (one fault named `fault`).
    fault: &'static str,
    cause: &'static str,
    route: &'static str,
    /// Watch a consumer group (named here, made unique per run) that commits at the
    /// start of the warehouse topic and then stops: a warehouse bridge that is down.
    stopped_group: Option<&'static str>,
    /// Another fault (named `earlier`) in a phase before, whose evidence must not be
    /// taken for this one's.
    earlier: Option<&'static str>,
}

fn scenario(d: &Drill) -> Scenario {
    let earlier = d
        .earlier
        .map(|f| format!("  - name: earlier\n    duration: 16s\n    faults:\n      - {f}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "name: drill_{label}\nrate: 12\nweights: {WEIGHTS}\nphases:\n  - {{ name: steady, duration: 6s }}\n{earlier}  - name: fault\n    duration: 22s\n    faults:\n      - {fault}\n  - {{ name: recovery, duration: 6s }}\n",
        label = d.label,
        fault = d.fault,
    );
    Scenario::from_yaml_str("drill.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// The demo topology on fresh topics, with a fast backlog cycle and, for a stopped
/// group, that group watched and named by a cause.
fn topology_yaml(d: &Drill, port: u16, group: Option<&str>) -> String {
    let mut yaml = demo_yaml(d.label, port);
    if let (Some(group), Some(cause)) = (group, d.stopped_group.map(|_| d.cause)) {
        yaml = yaml
            .replace("  interval: 5s", "  interval: 1s")
            .replace("  window: 10 ", "  window: 4 ")
            .replacen(
                "  groups: []",
                &format!("  groups:\n    - {{ name: {group} }}\n  #"),
                1,
            )
            .replacen(
                "\nincidents:\n",
                &format!(
                    "\n  - name: {cause}\n    description: The WMS bridge is behind on warehouse events.\n    group: {group}\n    route: {}\n\nincidents:\n",
                    d.route
                ),
                1,
            );
    }
    yaml
}

/// Commits offset 0 on every partition of `topic` for `group`, then never again.
async fn stop_group_at_start(group: &str, topic: &str) {
    let consumer: BaseConsumer = support::client_config()
        .set("group.id", group)
        .create()
        .expect("a client of the stopped group");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata of the warehouse topic");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(0))
            .expect("partition");
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit the stopped group's offsets");
}

type Key = (String, String);

/// synclag's last word on each correlation: its `resolved` event, else its last breach.
fn verdicts(seen: &[Seen<BreachEvent>]) -> BTreeMap<Key, &BreachEvent> {
    let mut out: BTreeMap<Key, &BreachEvent> = BTreeMap::new();
    for s in seen {
        let e = &s.event;
        if !matches!(e.kind.as_str(), "breach" | "never_arrived" | "resolved") {
            continue;
        }
        let key = (e.workflow.clone(), e.correlation_id.clone());
        let keep = out.get(&key).is_some_and(|prev| prev.kind == "resolved");
        if !keep {
            out.insert(key, e);
        }
    }
    out
}

/// Each incident's latest state, by id.
fn incidents(seen: &[Seen<IncidentEvent>]) -> BTreeMap<String, &IncidentEvent> {
    let mut out: BTreeMap<String, &IncidentEvent> = BTreeMap::new();
    for s in seen {
        let prev = out.get(&s.event.incident_id).map_or(0, |e| e.sequence);
        assert!(
            s.event.sequence > prev,
            "incident events of one id come in sequence order: {:?}",
            s.event
        );
        out.insert(s.event.incident_id.clone(), &s.event);
    }
    out
}

async fn run_drill(d: Drill) {
    let port = free_port();
    let group = d
        .stopped_group
        .map(|g| support::random_name(&format!("{}-{g}", d.label)));
    let yaml = topology_yaml(&d, port, group.as_deref());
    let topology = Topology::from_yaml_str("drill/topology.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("{}: the drill topology is valid: {e:?}", d.label));
    create_drill_topics(&topology).await;
    let o = &topology.outputs;
    if let Some(group) = &group {
        let wms = topology
            .streams
            .iter()
            .find(|s| s.name == "wms_fulfilment")
            .expect("the demo has a warehouse stream");
        stop_group_at_start(group, &wms.topic).await;
    }
    let breaches: Watcher<BreachEvent> = Watcher::start(&o.breaches_topic);
    let incident_watch: Watcher<IncidentEvent> = Watcher::start(&o.incidents_topic);
    let mut svc = SynclagProcess::start(&yaml, port, d.label);
    svc.wait_ready().await;

    let scenario = scenario(&d);
    let (_, truth) = run_real_time(&topology, &scenario, 7).await;
    let affected: Vec<&GroundTruth> = truth
        .iter()
        .filter(|t| t.faults == ["fault"] && breached(t))
        .collect();
    assert!(
        affected.len() >= 10,
        "{}: the fault pushes correlations past their SLA ({} did)",
        d.label,
        affected.len()
    );
    let fault_workflows: BTreeSet<&str> = affected.iter().map(|t| t.workflow.as_str()).collect();

    // Wait for synclag's last word on every affected correlation.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = breaches.snapshot();
        let v = verdicts(&seen);
        let missing = affected
            .iter()
            .filter(|t| {
                let key = (t.workflow.clone(), t.correlation_id.clone());
                match v.get(&key) {
                    None => true,
                    // Completed late: wait for the resolution.
                    Some(e) => t.expected != Expected::NeverArrived && e.kind != "resolved",
                }
            })
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {missing} affected correlations without a final event\n{}",
            d.label,
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give open incidents their quiet period to resolve (completions keep flowing from
    // the recovery phase), then stop.
    let quiet = topology.incidents.quiet + Duration::from_secs(3);
    tokio::time::sleep(quiet).await;
    assert_eq!(
        svc.terminate().await,
        Some(0),
        "{}: clean shutdown",
        d.label
    );
    let seen = breaches.finish().await;
    let incident_seen = incident_watch.finish().await;

    // Causes.
    let v = verdicts(&seen);
    let mut wrong: BTreeMap<String, u32> = BTreeMap::new();
    let mut right = 0u32;
    for t in &affected {
        let e = v[&(t.workflow.clone(), t.correlation_id.clone())];
        if e.probable_cause.as_deref() == Some(d.cause) {
            assert_eq!(
                e.route.as_deref(),
                Some(d.route),
                "{}: the cause routes to its team: {e:?}",
                d.label
            );
            assert!(
                !e.evidence.is_empty(),
                "{}: a cause carries its evidence: {e:?}",
                d.label
            );
            right += 1;
        } else {
            *wrong
                .entry(format!("{}: {:?}", e.kind, e.probable_cause))
                .or_default() += 1;
        }
    }
    let share = f64::from(right) / affected.len() as f64;
    eprintln!(
        "{}: {right} of {} affected correlations attributed to {} ({:.1}%), others: {wrong:?}",
        d.label,
        affected.len(),
        d.cause,
        100.0 * share
    );
    assert!(
        share >= RIGHT_CAUSE_SHARE,
        "{}: only {:.1}% of affected correlations have cause {} (others: {wrong:?})",
        d.label,
        100.0 * share,
        d.cause
    );

    // Incidents: one per workflow the fault hit, with its cause; nothing else there.
    let incidents = incidents(&incident_seen);
    let breach_events = seen
        .iter()
        .filter(|s| s.event.kind == "breach" || s.event.kind == "never_arrived")
        .count();
    eprintln!(
        "{}: {breach_events} breach events, {} incident events, incidents: {:#?}",
        d.label,
        incident_seen.len(),
        incidents
            .values()
            .map(|i| format!(
                "{} {} {:?} {} breached={} pending={} {} seq={}",
                i.workflow,
                i.probable_cause,
                i.slice,
                i.severity,
                i.breached,
                i.pending,
                i.kind,
                i.sequence
            ))
            .collect::<Vec<_>>()
    );
    // Each incident belongs to the fault most of its sampled correlations came from.
    let fault_of = |i: &IncidentEvent| -> Option<String> {
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for id in &i.sample {
            if let Some(t) = truth
                .iter()
                .find(|t| t.workflow == i.workflow && &t.correlation_id == id)
            {
                *votes.entry(t.faults.join("+")).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, n)| *n).map(|(f, _)| f)
    };
    // Every incident comes from an injected fault; those with another cause than this
    // fault's come from the earlier fault only.
    for i in incidents.values() {
        let from = fault_of(i);
        assert!(
            from.is_some(),
            "{}: an incident no injected fault explains: {i:#?}",
            d.label
        );
        if i.probable_cause != d.cause {
            let samples: Vec<&GroundTruth> = i
                .sample
                .iter()
                .filter_map(|id| {
                    truth
                        .iter()
                        .find(|t| t.workflow == i.workflow && &t.correlation_id == id)
                })
                .collect();
            // A correlation no fault touched, whose closing record the simulator could
            // only hand over around its deadline because the machine was busy, is rightly
            // breached: synclag cannot know a record before it is written.
            if !samples.is_empty() && samples.iter().all(|t| t.produced_at_deadline()) {
                eprintln!(
                    "{}: incident {} {} comes from records produced late: {samples:?}",
                    d.label, i.incident_id, i.probable_cause
                );
                continue;
            }
            assert_eq!(
                from.as_deref(),
                Some("earlier"),
                "{}: an incident with another cause than the fault's: {i:#?}\nits sampled correlations: {samples:#?}",
                d.label
            );
        }
    }
    for wf in &fault_workflows {
        let on_wf: Vec<&&IncidentEvent> = incidents
            .values()
            .filter(|i| i.workflow == *wf && i.probable_cause == d.cause)
            .collect();
        assert_eq!(
            on_wf.len(),
            1,
            "{}: one incident on {wf}, not {}: {on_wf:#?}",
            d.label,
            on_wf.len()
        );
        let i = on_wf[0];
        assert_eq!(i.probable_cause, d.cause, "{}: {i:?}", d.label);
        assert_eq!(i.route.as_deref(), Some(d.route), "{}: {i:?}", d.label);
        assert!(i.team.is_some(), "{}: the incident names its team", d.label);
        assert!(!i.evidence.is_empty(), "{}: evidence: {i:?}", d.label);
        let on_wf_affected = affected.iter().filter(|t| t.workflow == *wf).count() as i64;
        assert!(
            i.breached >= (on_wf_affected as f64 * RIGHT_CAUSE_SHARE) as i64,
            "{}: the incident holds the breached correlations ({} of {on_wf_affected})",
            d.label,
            i.breached
        );
        assert!(
            incident_seen.len() < breach_events,
            "{}: fewer incident events ({}) than breach events ({breach_events})",
            d.label,
            incident_seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_api_throttling_is_one_incident_for_integration_support() {
    run_drill(Drill {
        label: "carrier",
        fault: "{ name: fault, kind: erp_delay, workflows: [shipment_status], dimension: carrier, value: DHL, delay: 1.2x critical, signal: { kind: carrier_api_throttled, every: 2s, max: 6, connector: carrier-dhl } }",
        cause: "carrier_api_throttling",
        route: "integration_support",
        stopped_group: None,
        earlier: None,
    })
    .await;
}

/// After a DHL throttling whose signals came from shipments of every warehouse, a
/// stopped warehouse bridge: the throttling signals must not explain the warehouse's
/// breaches (they said something of DHL, nothing of a warehouse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_warehouse_bridge_is_one_incident_for_operations() {
    run_drill(Drill {
        label: "wms",
        fault: "{ name: fault, kind: hold, workflows: [shipment_status], dimension: warehouse, value: WH-LGG, stages: [picked, dispatched], burst: 4s }",
        cause: "warehouse_backlog",
        route: "operations",
        stopped_group: Some("wms-bridge"),
        earlier: Some("{ name: earlier, kind: erp_delay, workflows: [shipment_status], dimension: carrier, value: DHL, delay: 1.2x warn, signal: { kind: carrier_api_throttled, every: 2s, max: 4, connector: carrier-dhl } }"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odoo_validation_failures_are_one_incident_for_application_support() {
    run_drill(Drill {
        label: "validation",
        fault: "{ name: fault, kind: erp_delay, workflows: [order_import], delay: 1.5x warn, share: 0.3, signal: { kind: odoo_validation_failed, every: 2s, max: 4, connector: odoo-connector } }",
        cause: "odoo_validation_failure",
        route: "application_support",
        stopped_group: None,
        earlier: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_lateness_is_one_incident_for_integration_support() {
    run_drill(Drill {
        label: "partner",
        fault: "{ name: fault, kind: ingestion_delay, workflows: [order_import], dimension: channel, value: marketplace, delay: 1.5x warn, share: 0.6 }",
        cause: "partner_delay",
        route: "integration_support",
        stopped_group: None,
        earlier: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_outbox_is_one_incident_for_the_platform_team() {
    run_drill(Drill {
        label: "outbox",
        fault: "{ name: fault, kind: ingestion_delay, workflows: [billing_trigger], stages: [invoice_posted_in_odoo], delay: 1.5x warn }",
        cause: "outbox_delay",
        route: "platform",
        stopped_group: None,
        earlier: None,
    })
    .await;
}
