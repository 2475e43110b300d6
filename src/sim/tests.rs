//! Simulator tests on the shipped topology, in simulated time, into memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value as Json;

use super::*;
use crate::config::field_path::{KafkaField, Segment};
use crate::config::{FieldPath, Format, Topology};

fn shipped_yaml() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml"))
        .expect("topology.yaml is readable")
}

fn topology() -> Topology {
    Topology::from_yaml_str("topology.yaml", &shipped_yaml(), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Tuesday 2026-03-03 08:00 UTC (09:00 in Brussels): outside the afternoon window.
fn morning() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-03T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Output {
    records: Vec<SimRecord>,
    truth: Vec<GroundTruth>,
    summary: RunSummary,
}

struct Run<'a> {
    topology: &'a Topology,
    scenario: Scenario,
    seed: u64,
    start: DateTime<Utc>,
    duration: Option<Duration>,
    rate: Option<f64>,
    step: Duration,
}

impl<'a> Run<'a> {
    fn new(topology: &'a Topology, scenario: &str) -> Self {
        Run {
            topology,
            scenario: Scenario::resolve(scenario).unwrap_or_else(|e| panic!("{e}")),
            seed: 42,
            start: morning(),
            duration: None,
            rate: None,
            step: Duration::from_secs(1),
        }
    }

    async fn go(self) -> Output {
        let options = SimOptions {
            seed: self.seed,
            start: self.start,
            duration: self.duration,
            rate: self.rate,
            drain: true,
        };
        let mut sim = Simulator::new(self.topology, &self.scenario, &options)
            .unwrap_or_else(|e| panic!("{e}"));
        let clock = SimulatedClock::new(self.start);
        let mut sink = MemorySink::new();
        let mut lines: Vec<u8> = Vec::new();
        let summary = run(
            &mut sim,
            &clock,
            &mut sink,
            Some(&mut lines),
            &RunOptions {
                step: self.step,
                progress: false,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let truth = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<GroundTruth>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        Output {
            records: sink.records,
            truth,
            summary,
        }
    }
}

/// Reads the value at a configured path back out of a produced record, the way a
/// consumer would.
fn read(record: &SimRecord, path: &FieldPath) -> Option<Json> {
    match path {
        FieldPath::Payload(segs) => {
            let mut v = &record.value;
            for s in segs {
                v = match s {
                    Segment::Key(k) => v.get(k)?,
                    Segment::Index(i) => v.get(*i)?,
                };
            }
            Some(v.clone())
        }
        FieldPath::Header(h) => record.header(h).map(|s| Json::String(s.into())),
        FieldPath::Kafka(KafkaField::Key) => record.key.clone().map(Json::String),
        FieldPath::Kafka(KafkaField::Timestamp) => Some(Json::from(record.timestamp_ms)),
        FieldPath::Kafka(_) => None,
    }
}

/// Decodes a time as written by the simulator: RFC 3339, epoch ms, or Odoo's format.
fn decode_time(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                    .ok()
                    .map(|t| t.and_utc().timestamp_millis())
            }),
        _ => None,
    }
}

fn str_at<'v>(v: &'v Json, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn by_stream<'r>(t: &Topology, out: &'r Output, name: &str) -> Vec<&'r SimRecord> {
    let idx = t.streams.iter().position(|s| s.name == name).unwrap();
    out.records.iter().filter(|r| r.stream == idx).collect()
}

#[tokio::test]
async fn records_carry_values_at_the_configured_paths_of_every_stream() {
    let t = topology();
    let mut run = Run::new(&t, "carrier_slowdown");
    run.rate = Some(4.0);
    run.duration = Some(Duration::from_secs(6 * 60));
    let out = run.go().await;
    assert!(out.summary.records > 500, "{:?}", out.summary);

    for (i, stream) in t.streams.iter().enumerate() {
        let batch_only = t.batches.iter().any(|b| b.stream == i)
            && !t
                .workflows
                .iter()
                .any(|w| w.stages.iter().any(|s| s.stream == i));
        if batch_only {
            continue; // batch runs come from sim::batch, not from correlations
        }
        let records: Vec<&SimRecord> = out.records.iter().filter(|r| r.stream == i).collect();
        assert!(!records.is_empty(), "no records on {}", stream.name);
        for r in records {
            assert_eq!(r.topic, stream.topic);
            assert_eq!(r.format, stream.format);
            assert_eq!(r.key.as_deref(), Some(r.origin.correlation_id.as_str()));
            let id = read(r, &stream.correlation_id);
            assert_eq!(
                id,
                Some(Json::String(r.origin.correlation_id.clone())),
                "{r:?}"
            );
            let time = stream
                .event_time
                .as_ref()
                .and_then(|p| read(r, p))
                .and_then(|v| decode_time(&v));
            assert_eq!(time, Some(r.origin.event_time_ms), "{}: {r:?}", stream.name);
            for (dim, path) in &stream.dimensions {
                let v = read(r, path).and_then(|v| v.as_str().map(String::from));
                assert!(
                    v.as_deref().is_some_and(|v| !v.is_empty()),
                    "{} lacks {dim}: {r:?}",
                    stream.name
                );
            }
            if let Some(p) = &stream.event_type {
                let expected = match &r.origin.kind {
                    OriginKind::Stage { workflow, stage } => {
                        let s = &t.workflows[*workflow].stages[*stage];
                        s.event_type.clone().unwrap_or_else(|| s.name.clone())
                    }
                    OriginKind::Signal { signal_type } => signal_type.clone(),
                    OriginKind::Batch { .. } => unreachable!("no batch runs in this scenario"),
                };
                assert_eq!(read(r, p), Some(Json::String(expected)));
            }
            match r.format {
                Format::Avro => {
                    let schema = r.avro_schema.as_ref().expect("avro streams carry a schema");
                    let value = r.avro_value().unwrap().unwrap();
                    assert!(value.validate(&schema.schema), "{r:?}");
                    let bytes =
                        apache_avro::writer::datum::GenericDatumWriter::builder(&schema.schema)
                            .build()
                            .unwrap()
                            .write_value_to_vec(value.clone())
                            .unwrap();
                    let back =
                        apache_avro::reader::datum::GenericDatumReader::builder(&schema.schema)
                            .build()
                            .unwrap()
                            .read_value(&mut bytes.as_slice())
                            .unwrap();
                    assert_eq!(back, value);
                }
                _ => assert!(r.avro_schema.is_none()),
            }
        }
    }

    // Spelled out for the shipped topology, so the test does not only agree with itself.
    let shop = by_stream(&t, &out, "shop_orders");
    let channels = ["webshop", "marketplace", "b2b_edi"];
    for r in &shop {
        assert!(str_at(&r.value, "/order_ref").starts_with("SO-2026-"));
        assert_eq!(str_at(&r.value, "/event"), "order.created");
        assert!(channels.contains(&str_at(&r.value, "/channel")));
        assert!(["BE", "NL", "DE", "FR"].contains(&str_at(&r.value, "/ship_to/region")));
        assert!(str_at(&r.value, "/created_at").ends_with('Z'));
    }
    let wms = by_stream(&t, &out, "wms_fulfilment");
    let schema: Json = serde_json::from_str(&wms[0].avro_schema.as_ref().unwrap().text).unwrap();
    let fields: BTreeSet<&str> = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["event_type", "occurred_at", "order_ref", "warehouse_code"])
    );
    for r in &wms {
        assert!(
            ["order_released", "picked", "dispatched"].contains(&str_at(&r.value, "/event_type"))
        );
        assert!(["WH-ANR", "WH-LGG", "WH-RTM"].contains(&str_at(&r.value, "/warehouse_code")));
    }
    for r in by_stream(&t, &out, "carrier_tracking") {
        assert!(["label_created", "delivered"].contains(&str_at(&r.value, "/status")));
        assert!(["DHL", "UPS", "DPD", "GLS", "POSTNL"].contains(&str_at(&r.value, "/carrier_code")));
        assert!(str_at(&r.value, "/shipment/order_ref").starts_with("SO-"));
    }
    for r in by_stream(&t, &out, "returns") {
        assert!(str_at(&r.value, "/rma_number").starts_with("RMA-2026-"));
    }
    for r in by_stream(&t, &out, "inventory_moves") {
        assert!(str_at(&r.value, "/move_id").starts_with("MOVE-2026-"));
    }
    for r in by_stream(&t, &out, "integration_errors") {
        assert_eq!(str_at(&r.value, "/kind"), "carrier_api_throttled");
        assert_eq!(str_at(&r.value, "/connector"), "carrier-dhl");
    }
    let types = [
        "sale.order.imported",
        "stock.picking.done",
        "account.move.posted",
        "stock.return.received",
    ];
    for r in by_stream(&t, &out, "odoo_outbox") {
        let id = r.header("id").expect("outbox records have an id header");
        assert_eq!(id.len(), 36);
        assert!(types.contains(&r.header("type").expect("and a type header")));
        let write_date = str_at(&r.value, "/write_date");
        assert!(
            NaiveDateTime::parse_from_str(write_date, "%Y-%m-%d %H:%M:%S").is_ok(),
            "Odoo format: {write_date}"
        );
        assert!(r.timestamp_ms >= r.origin.event_time_ms);
    }
    for r in by_stream(&t, &out, "odoo_stock_cdc") {
        assert_eq!(r.value["before"], Json::Null);
        assert_eq!(r.value["op"], "c");
        assert_eq!(r.value["source"]["db"], "odoo");
        assert_eq!(r.value["source"]["table"], "stock_quant");
        assert!(str_at(&r.value, "/after/x_wms_move_id").starts_with("MOVE-"));
        assert_eq!(
            r.value["source"]["ts_ms"],
            Json::from(r.origin.event_time_ms)
        );
        assert_eq!(r.value["ts_ms"], Json::from(r.timestamp_ms));
    }
}

#[tokio::test]
async fn a_changed_topology_changes_what_is_produced() {
    let yaml = shipped_yaml()
        .replace(
            "      correlation_id: $.order_ref\n      event_time: $.created_at ",
            "      correlation_id: header:x-order-ref\n      event_time: $.meta.times[1].at_ms ",
        )
        .replace(
            "        channel: $.channel ",
            "        channel: $.meta.sales_channel ",
        )
        .replace(
            "      correlation_id: $.correlation_id\n      event_time: $.write_date ",
            "      correlation_id: kafka:key\n      event_time: $.written_at ",
        );
    let t = Topology::from_yaml_str("changed.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let shop = t.stream("shop_orders").unwrap();
    assert_eq!(shop.correlation_id, FieldPath::Header("x-order-ref".into()));
    let mut run = Run::new(&t, "steady");
    run.duration = Some(Duration::from_secs(60));
    let out = run.go().await;
    let shop = by_stream(&t, &out, "shop_orders");
    assert!(!shop.is_empty());
    for r in shop {
        assert_eq!(
            r.header("x-order-ref"),
            Some(r.origin.correlation_id.as_str())
        );
        assert!(r.value.get("order_ref").is_none());
        assert_eq!(r.value["meta"]["times"][0], Json::Null);
        assert_eq!(
            r.value["meta"]["times"][1]["at_ms"],
            Json::from(r.origin.event_time_ms)
        );
        assert!(r.value["meta"]["sales_channel"].is_string());
        assert!(r.value.get("channel").is_none());
    }
    for r in by_stream(&t, &out, "odoo_outbox") {
        assert_eq!(r.key.as_deref(), Some(r.origin.correlation_id.as_str()));
        assert!(r.value.get("correlation_id").is_none());
        assert!(
            str_at(&r.value, "/written_at").ends_with('Z'),
            "not an Odoo *_date field: RFC 3339"
        );
    }
}

#[tokio::test]
async fn every_stage_chain_is_walked_in_order_with_positive_delays() {
    let t = topology();
    let mut run = Run::new(&t, "steady");
    run.duration = Some(Duration::from_secs(5 * 60));
    let out = run.go().await;
    assert!(out.truth.len() > 1_000, "{}", out.truth.len());
    let mut seen_workflows = BTreeSet::new();
    for g in &out.truth {
        seen_workflows.insert(g.workflow.clone());
        let wf = t.workflow(&g.workflow).unwrap();
        let names: Vec<&str> = g.stages.iter().map(|s| s.name.as_str()).collect();
        let configured: Vec<&str> = wf.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, configured);
        for w in g.stages.windows(2) {
            assert!(w[1].event_time_ms > w[0].event_time_ms, "{g:?}");
            assert!(w[1].kafka_time_ms >= w[0].kafka_time_ms, "{g:?}");
        }
        assert!(g.stages.iter().all(|s| s.emitted && !s.dropped), "{g:?}");
        assert!(!g.cut_off);
    }
    assert_eq!(seen_workflows.len(), t.workflows.len());

    // On the wire, each correlation's stages come in chain order.
    let mut next_stage: HashMap<(usize, &str), usize> = HashMap::new();
    for r in &out.records {
        if let OriginKind::Stage { workflow, stage } = r.origin.kind {
            let n = next_stage
                .entry((workflow, &r.origin.correlation_id))
                .or_default();
            assert_eq!(*n, stage, "{r:?}");
            *n += 1;
        }
    }
    // Records come in Kafka-timestamp order.
    assert!(out
        .records
        .windows(2)
        .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
}

#[tokio::test]
async fn steady_traffic_stays_within_the_warn_tier() {
    let t = topology();
    let mut run = Run::new(&t, "steady");
    run.duration = Some(Duration::from_secs(5 * 60));
    let out = run.go().await;
    let breaching = out
        .truth
        .iter()
        .filter(|g| g.expected != Expected::None)
        .count();
    assert!(out
        .truth
        .iter()
        .all(|g| g.faults.is_empty() && g.fault_delay_ms == 0));
    assert_eq!(
        breaching,
        0,
        "{breaching} of {} breach in steady state",
        out.truth.len()
    );
    // Also with the demo's second-scale SLAs, where the tail matters most.
    let demo =
        crate::config::Topology::from_yaml_str("demo", crate::demo::DEMO_TOPOLOGY, Vec::new())
            .unwrap_or_else(|e| panic!("{e}"));
    let mut run = Run::new(&demo, "steady");
    run.duration = Some(Duration::from_secs(5 * 60));
    let out = run.go().await;
    let breaching = out
        .truth
        .iter()
        .filter(|g| g.expected != Expected::None)
        .count();
    assert!(out.truth.len() > 1_000);
    assert_eq!(
        breaching,
        0,
        "{breaching} of {} breach in steady state (demo SLAs)",
        out.truth.len()
    );
}

#[tokio::test]
async fn ground_truth_matches_what_was_emitted() {
    let t = topology();
    let mut run = Run::new(&t, "odoo_validation_failures");
    run.rate = Some(5.0);
    run.duration = Some(Duration::from_secs(8 * 60));
    let out = run.go().await;
    let mut emitted: HashMap<(String, String), Vec<&SimRecord>> = HashMap::new();
    for r in &out.records {
        let wf = match &r.origin.kind {
            OriginKind::Stage { workflow, .. } => t.workflows[*workflow].name.clone(),
            OriginKind::Signal { .. } => String::from("signal"),
            OriginKind::Batch { .. } => String::from("batch"),
        };
        emitted
            .entry((wf, r.origin.correlation_id.clone()))
            .or_default()
            .push(r);
    }
    let mut signals_by_id: HashMap<&str, usize> = HashMap::new();
    for r in &out.records {
        if matches!(r.origin.kind, OriginKind::Signal { .. }) {
            *signals_by_id.entry(&r.origin.correlation_id).or_default() += 1;
        }
    }
    let mut expected_records = 0;
    let mut ids = BTreeSet::new();
    for g in &out.truth {
        assert!(
            ids.insert((g.workflow.clone(), g.correlation_id.clone())),
            "duplicate id"
        );
        assert!(!g.cut_off);
        let records = emitted
            .get(&(g.workflow.clone(), g.correlation_id.clone()))
            .cloned()
            .unwrap_or_default();
        let live: Vec<_> = g.stages.iter().filter(|s| !s.dropped).collect();
        assert_eq!(records.len(), live.len(), "{g:?}");
        for (r, s) in records.iter().zip(&live) {
            assert_eq!(r.origin.event_time_ms, s.event_time_ms);
            assert_eq!(r.timestamp_ms, s.kafka_time_ms);
            assert!(s.emitted);
        }
        let dims_of_records: BTreeMap<String, String> = records
            .iter()
            .flat_map(|r| {
                t.streams[r.stream]
                    .dimensions
                    .iter()
                    .map(|(d, p)| (d.clone(), read(r, p).unwrap().as_str().unwrap().to_string()))
            })
            .collect();
        for (d, v) in dims_of_records {
            assert_eq!(g.dimensions.get(&d), Some(&v), "{g:?}");
        }
        assert_eq!(
            signals_by_id
                .get(g.correlation_id.as_str())
                .copied()
                .unwrap_or(0),
            g.signals.len(),
            "{g:?}"
        );
        expected_records += live.len() + g.signals.len();
        // The expected outcome follows from the lag and the tiers that apply.
        let expected = match g.lag_ms {
            None => Expected::NeverArrived,
            Some(l) if l >= g.sla.window_ms => Expected::NeverArrived,
            Some(l) if l >= g.sla.critical_ms => Expected::Critical,
            Some(l) if l >= g.sla.warn_ms => Expected::Warn,
            Some(_) => Expected::None,
        };
        assert_eq!(g.expected, expected);
        if let Some(l) = g.lag_ms {
            let first = &g.stages[0];
            let last = &g.stages[g.stages.len() - 1];
            assert_eq!(l, last.event_time_ms - first.event_time_ms);
        }
    }
    assert_eq!(out.records.len(), expected_records);
    assert_eq!(out.summary.ground_truth as usize, out.truth.len());

    // The scenario's faults show up: retried imports with signals, a few never arriving.
    let retried: Vec<_> = out
        .truth
        .iter()
        .filter(|g| g.faults.contains(&"odoo_validation_retry".to_string()) && !g.never_completes)
        .collect();
    let rejected: Vec<_> = out
        .truth
        .iter()
        .filter(|g| g.faults.contains(&"odoo_validation_rejected".to_string()))
        .collect();
    assert!(!retried.is_empty() && !rejected.is_empty());
    for g in &retried {
        assert_eq!(g.phase, "odoo_validation_failures");
        assert!(g.fault_delay_ms >= g.sla.warn_ms * 3 / 2, "{g:?}");
        assert!(
            matches!(g.expected, Expected::Warn | Expected::Critical),
            "{g:?}"
        );
        assert!(g
            .signals
            .iter()
            .all(|s| s.signal_type == "odoo_validation_failed"));
        assert!(!g.signals.is_empty());
    }
    for g in &rejected {
        assert!(g.never_completes);
        assert_eq!(g.expected, Expected::NeverArrived);
        assert!(g.stages.last().unwrap().dropped);
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_output_whatever_the_step() {
    let t = topology();
    let go = |seed: u64, step: Duration| {
        let mut run = Run::new(&t, "warehouse_outage");
        run.seed = seed;
        run.rate = Some(3.0);
        run.duration = Some(Duration::from_secs(6 * 60));
        run.step = step;
        run.go()
    };
    let a = go(7, Duration::from_secs(1)).await;
    let b = go(7, Duration::from_millis(370)).await;
    let c = go(8, Duration::from_secs(1)).await;
    assert!(!a.records.is_empty());
    assert_eq!(a.records, b.records);
    assert_eq!(a.truth, b.truth);
    assert_ne!(a.records, c.records);
}

#[tokio::test]
async fn carrier_slowdown_delays_exactly_that_carrier_past_critical() {
    let t = topology();
    let mut run = Run::new(&t, "carrier_slowdown");
    run.rate = Some(4.0);
    let out = run.go().await;
    let mut faulted = 0;
    for g in &out.truth {
        let carrier_wf = g.dimensions.contains_key("carrier");
        let targeted = carrier_wf
            && g.phase == "carrier_slowdown"
            && g.dimensions.get("carrier").map(String::as_str) == Some("DHL");
        if targeted {
            faulted += 1;
            assert_eq!(g.faults, vec!["carrier_slowdown".to_string()]);
            assert_eq!(g.expected, Expected::Critical, "{g:?}");
            assert!(g.fault_delay_ms >= g.sla.critical_ms * 6 / 5);
            assert!(!g.signals.is_empty());
            assert!(g
                .signals
                .iter()
                .all(|s| s.signal_type == "carrier_api_throttled"
                    && s.connector.as_deref() == Some("carrier-dhl")));
        } else {
            assert!(g.faults.is_empty(), "{g:?}");
            assert_eq!(g.fault_delay_ms, 0);
            assert!(g.signals.is_empty());
        }
    }
    assert!(faulted > 100, "{faulted}");
    let workflows: BTreeSet<&str> = out
        .truth
        .iter()
        .filter(|g| !g.faults.is_empty())
        .map(|g| g.workflow.as_str())
        .collect();
    assert_eq!(
        workflows,
        BTreeSet::from(["billing_trigger", "shipment_status"])
    );
    // Signals reach the signals stream for those correlations only.
    let dhl_ids: BTreeSet<&str> = out
        .truth
        .iter()
        .filter(|g| !g.faults.is_empty())
        .map(|g| g.correlation_id.as_str())
        .collect();
    let signal_records = by_stream(&t, &out, "integration_errors");
    assert!(!signal_records.is_empty());
    assert!(signal_records
        .iter()
        .all(|r| dhl_ids.contains(str_at(&r.value, "/correlation_id"))));
}

#[tokio::test]
async fn warehouse_outage_holds_back_exactly_that_warehouse() {
    let t = topology();
    let mut run = Run::new(&t, "warehouse_outage");
    run.rate = Some(4.0);
    let out = run.go().await;
    let outage_start = morning().timestamp_millis() + 3 * 60_000;
    let outage_end = outage_start + 12 * 60_000;
    let in_outage = |ms: i64| ms >= outage_start && ms < outage_end;
    let mut lgg_in_outage = 0;
    let mut others_in_outage = 0;
    // The outage stops pick and dispatch confirmations; orders are still released.
    let mut lgg_released_in_outage = 0;
    for r in by_stream(&t, &out, "wms_fulfilment") {
        if in_outage(r.timestamp_ms) {
            let confirmation = matches!(str_at(&r.value, "/event_type"), "picked" | "dispatched");
            let lgg = str_at(&r.value, "/warehouse_code") == "WH-LGG";
            match (lgg, confirmation) {
                (true, true) => lgg_in_outage += 1,
                (true, false) => lgg_released_in_outage += 1,
                (false, _) => others_in_outage += 1,
            }
        }
    }
    assert!(lgg_released_in_outage > 50, "{lgg_released_in_outage}");
    assert_eq!(
        lgg_in_outage, 0,
        "WH-LGG records produced during its outage"
    );
    assert!(others_in_outage > 300, "{others_in_outage}");
    let faulted: Vec<_> = out.truth.iter().filter(|g| !g.faults.is_empty()).collect();
    assert!(faulted.len() > 100);
    for g in faulted {
        assert_eq!(
            g.dimensions.get("warehouse").map(String::as_str),
            Some("WH-LGG")
        );
        assert!(g.stages.iter().any(|s| s.kafka_time_ms >= outage_end));
        assert!(g.fault_delay_ms >= 0);
    }
    // The burst: held records come out within the burst spread after the outage.
    let burst = by_stream(&t, &out, "wms_fulfilment")
        .into_iter()
        .filter(|r| r.timestamp_ms >= outage_end && r.timestamp_ms < outage_end + 30_000)
        .filter(|r| str_at(&r.value, "/warehouse_code") == "WH-LGG")
        .count();
    assert!(burst > 100, "{burst}");
}

#[tokio::test]
async fn order_surge_multiplies_the_order_rate_only() {
    let t = topology();
    let out = Run::new(&t, "order_surge").go().await;
    let per_minute = |wf: &str, phase: &str, minutes: f64| {
        out.truth
            .iter()
            .filter(|g| g.workflow == wf && g.phase == phase)
            .count() as f64
            / minutes
    };
    let orders =
        per_minute("order_import", "order_surge", 10.0) / per_minute("order_import", "steady", 3.0);
    let shipments = per_minute("shipment_status", "order_surge", 10.0)
        / per_minute("shipment_status", "steady", 3.0);
    assert!((4.0..6.0).contains(&orders), "orders ×{orders}");
    assert!((0.75..1.3).contains(&shipments), "shipments ×{shipments}");
}

#[tokio::test]
async fn partner_delay_moves_kafka_time_of_marketplace_records_only() {
    let t = topology();
    let mut run = Run::new(&t, "partner_delay");
    run.rate = Some(4.0);
    let out = run.go().await;
    let faulted: Vec<_> = out.truth.iter().filter(|g| !g.faults.is_empty()).collect();
    assert!(faulted.len() > 50);
    for g in &out.truth {
        if g.faults.is_empty() {
            continue;
        }
        assert_eq!(
            g.dimensions.get("channel").map(String::as_str),
            Some("marketplace")
        );
        assert!(["order_import", "returns"].contains(&g.workflow.as_str()));
        let first = &g.stages[0];
        assert!(first.kafka_time_ms - first.event_time_ms >= g.sla.warn_ms * 3 / 2);
        let erp = g.stages.last().unwrap();
        assert!(erp.event_time_ms > first.kafka_time_ms);
    }
}

#[test]
fn business_hours_tighten_the_sla_in_the_afternoon() {
    let t = topology();
    let wf = t.workflow("order_import").unwrap();
    // 2026-03-03 is a Tuesday; Brussels is UTC+1 in March.
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    assert_eq!(
        plan::sla_tiers(&wf.sla, at("2026-03-03T14:30:00Z")),
        (60_000, 180_000, true)
    );
    assert_eq!(
        plan::sla_tiers(&wf.sla, at("2026-03-03T17:30:00Z")),
        (120_000, 300_000, false)
    );
    // Saturday afternoon: base tiers.
    assert_eq!(
        plan::sla_tiers(&wf.sla, at("2026-03-07T14:30:00Z")),
        (120_000, 300_000, false)
    );
}

#[tokio::test]
async fn ground_truth_uses_business_hours_tiers() {
    let t = topology();
    let mut run = Run::new(&t, "steady");
    run.start = DateTime::parse_from_rfc3339("2026-03-03T12:58:00Z")
        .unwrap()
        .with_timezone(&Utc);
    run.duration = Some(Duration::from_secs(4 * 60));
    let out = run.go().await;
    let window_opens = DateTime::parse_from_rfc3339("2026-03-03T13:00:00Z")
        .unwrap()
        .timestamp_millis();
    let orders: Vec<_> = out
        .truth
        .iter()
        .filter(|g| g.workflow == "order_import")
        .collect();
    assert!(orders.iter().any(|g| g.sla.business_hours));
    assert!(orders.iter().any(|g| !g.sla.business_hours));
    for g in orders {
        assert_eq!(g.sla.business_hours, g.start_ms >= window_opens, "{g:?}");
        assert_eq!(
            g.sla.warn_ms,
            if g.sla.business_hours {
                60_000
            } else {
                120_000
            }
        );
    }
}

#[test]
fn a_scenario_that_does_not_fit_the_topology_lists_every_problem() {
    let t = topology();
    let scenario = Scenario::from_yaml_str(
        "bad.yaml",
        r#"
phases:
  - name: p
    duration: 1m
    faults:
      - { kind: erp_delay, workflows: [order_export], delay: 1m }
      - { kind: hold, dimension: carrier, value: FEDEX }
      - { kind: drop, workflows: [order_import], stages: [teleported] }
"#,
    )
    .unwrap();
    let options = SimOptions {
        seed: 1,
        start: morning(),
        duration: None,
        rate: None,
        drain: false,
    };
    let err = Simulator::new(&t, &scenario, &options).expect_err("does not fit");
    let text = err.to_string();
    assert!(text.contains("order_export"), "{text}");
    assert!(text.contains("FEDEX"), "{text}");
    assert!(text.contains("teleported"), "{text}");
}

#[tokio::test]
async fn without_drain_the_run_stops_at_the_end_and_cuts_off_what_is_in_flight() {
    let t = topology();
    let scenario = Scenario::resolve("steady").unwrap();
    let options = SimOptions {
        seed: 3,
        start: morning(),
        duration: Some(Duration::from_secs(120)),
        rate: None,
        drain: false,
    };
    let mut sim = Simulator::new(&t, &scenario, &options).unwrap();
    let clock = SimulatedClock::new(morning());
    let mut sink = MemorySink::new();
    let mut lines: Vec<u8> = Vec::new();
    let opts = RunOptions {
        step: Duration::from_secs(1),
        progress: false,
    };
    run(&mut sim, &clock, &mut sink, Some(&mut lines), &opts)
        .await
        .unwrap();
    let end = morning().timestamp_millis() + 120_000;
    assert!(sink.records.iter().all(|r| r.timestamp_ms <= end));
    let truth: Vec<GroundTruth> = String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cut: Vec<_> = truth.iter().filter(|g| g.cut_off).collect();
    assert!(!cut.is_empty());
    for g in cut {
        assert!(g.stages.iter().any(|s| !s.emitted));
    }
}

#[test]
fn every_builtin_and_the_shipped_drill_fit_the_shipped_topology() {
    let t = topology();
    let mut names: Vec<String> = scenario::BUILTIN
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names.push(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/drill.yaml").to_string());
    for name in names {
        let s = Scenario::resolve(&name).unwrap_or_else(|e| panic!("{e}"));
        let options = SimOptions {
            seed: 1,
            start: morning(),
            duration: None,
            rate: None,
            drain: false,
        };
        let sim = Simulator::new(&t, &s, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            sim.end() - sim.start(),
            chrono::Duration::from_std(s.duration()).unwrap()
        );
    }
}
