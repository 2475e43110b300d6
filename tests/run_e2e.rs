//! `synclag run` end to end on the real broker and registry: a scripted scenario with
//! known delays across three workflows (JSON, Avro and Debezium inputs), checked
//! against ground truth on the breach topic, the lag topic, the dead-letter topic,
//! the JSON API and the Prometheus endpoint; and a SIGKILL + restart mid-scenario.

mod support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use synclag::emit::events::{BreachEvent, LagSummary};

const WMS_SCHEMA: &str = r#"{"type":"record","name":"WmsEvent","namespace":"test.wms","fields":[
  {"name":"order_ref","type":"string"},
  {"name":"event_type","type":"string"},
  {"name":"occurred_at","type":"long"},
  {"name":"warehouse_code","type":"string"}]}"#;

struct Topics {
    orders: String,
    wms: String,
    outbox: String,
    moves: String,
    quants: String,
    errors: String,
    breaches: String,
    lag: String,
    dlq: String,
    group: String,
}

impl Topics {
    fn new() -> Topics {
        Topics {
            orders: support::random_name("orders"),
            wms: support::random_name("wms"),
            outbox: support::random_name("outbox"),
            moves: support::random_name("moves"),
            quants: support::random_name("quants"),
            errors: support::random_name("errors"),
            breaches: support::random_name("breaches"),
            lag: support::random_name("lag"),
            dlq: support::random_name("dlq"),
            group: support::random_name("synclag"),
        }
    }

    async fn create(&self) {
        for (t, p) in [
            (&self.orders, 3),
            (&self.wms, 2),
            (&self.outbox, 3),
            (&self.moves, 1),
            (&self.quants, 1),
            (&self.errors, 1),
            (&self.breaches, 1),
            (&self.lag, 1),
            (&self.dlq, 1),
        ] {
            support::create_topic(t, p).await;
        }
        support::create_topic(&format!("{}-incidents", self.breaches), 1).await;
    }
}

/// SLAs (seconds) of the three workflows: warn, critical, window.
struct Slas {
    a: (u64, u64, u64),
    b: (u64, u64, u64),
    c: (u64, u64, u64),
}

fn config(t: &Topics, http_port: u16, s: &Slas) -> String {
    format!(
        r#"
service:
  group_id: {group}
  http_listen: 127.0.0.1:{http_port}
  lag_interval: 2s
  idle_partition: 5s
  shutdown_timeout: 10s
kafka:
  bootstrap_servers: "{bootstrap}"
  properties:
    broker.address.family: v4
registry:
  url: {registry}
outputs:
  breaches_topic: {breaches}
  lag_topic: {lag}
  backlog_topic: {lag}-backlog
  dead_letter_topic: {dlq}
  incidents_topic: {breaches}-incidents
streams:
  - name: orders
    topic: {orders}
    format: json
    fields:
      correlation_id: $.order_ref
      event_time: $.created_at
      event_type: $.event
      dimensions: {{ channel: $.channel }}
  - name: wms
    topic: {wms}
    format: avro
    fields:
      correlation_id: $.order_ref
      event_time: $.occurred_at
      event_type: $.event_type
      dimensions: {{ warehouse: $.warehouse_code }}
  - name: outbox
    topic: {outbox}
    format: debezium_outbox
    fields:
      correlation_id: $.correlation_id
      event_time: $.write_date
      event_type: header:type
  - name: moves
    topic: {moves}
    format: json
    fields:
      correlation_id: $.move_id
      event_time: $.moved_at
  - name: quants
    topic: {quants}
    format: debezium_cdc
    fields:
      correlation_id: $.after.move_ref
      event_time: $.source.ts_ms
  - name: errors
    topic: {errors}
    format: json
    role: signals
    fields:
      correlation_id: $.correlation_id
      event_type: $.kind
workflows:
  - name: order_import
    stages:
      - {{ name: created, stream: orders, event_type: order.created }}
      - {{ name: imported, stream: outbox, event_type: sale.order.imported }}
    sla: {{ warn: {aw}s, critical: {ac}s }}
    window: {awin}s
    dimensions: [channel]
    route: application_support
  - name: shipment
    stages:
      - {{ name: picked, stream: wms, event_type: picked }}
      - {{ name: dispatched, stream: wms, event_type: dispatched }}
      - {{ name: done_in_odoo, stream: outbox, event_type: stock.picking.done }}
    sla: {{ warn: {bw}s, critical: {bc}s }}
    window: {bwin}s
    dimensions: [warehouse]
    route: operations
  - name: inventory_sync
    stages:
      - {{ name: move, stream: moves }}
      - {{ name: quant, stream: quants }}
    sla: {{ warn: {cw}s, critical: {cc}s }}
    window: {cwin}s
    route: operations
causes:
  - {{ name: carrier_api_throttling, signal_stream: errors, signal_type: carrier_api_throttled, route: integration_support }}
routes:
  integration_support: {{ team: integration-support }}
  operations: {{ team: logistics-operations }}
  application_support: {{ team: odoo-application-support }}
"#,
        group = t.group,
        bootstrap = support::bootstrap(),
        registry = support::registry_url(),
        breaches = t.breaches,
        lag = t.lag,
        dlq = t.dlq,
        orders = t.orders,
        wms = t.wms,
        outbox = t.outbox,
        moves = t.moves,
        quants = t.quants,
        errors = t.errors,
        aw = s.a.0,
        ac = s.a.1,
        awin = s.a.2,
        bw = s.b.0,
        bc = s.b.1,
        bwin = s.b.2,
        cw = s.c.0,
        cc = s.c.1,
        cwin = s.c.2,
    )
}

use support::{free_port, SynclagProcess as Service};

/// One record to produce, at its Kafka timestamp.
struct Rec {
    topic: String,
    key: String,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
    ts: i64,
}

async fn produce_all(producer: &FutureProducer, mut recs: Vec<Rec>) {
    // Per partition in timestamp order, like a live system would have written them.
    recs.sort_by_key(|r| r.ts);
    for r in &recs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        producer
            .send(
                FutureRecord::to(&r.topic)
                    .key(&r.key)
                    .payload(&r.value)
                    .timestamp(r.ts)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {}: {e}", r.topic));
    }
}

fn odoo_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("valid time")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("valid time")
        .to_rfc3339()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Ok,
    Warn,
    Critical,
    Never,
}

/// Ground truth of one correlation.
struct Truth {
    workflow: &'static str,
    id: String,
    fate: Fate,
    delay_ms: Option<i64>,
}

fn fate_of(i: usize) -> Fate {
    match i % 10 {
        0..=5 => Fate::Ok,
        6 | 7 => Fate::Warn,
        8 => Fate::Critical,
        _ => Fate::Never,
    }
}

/// Delay (whole seconds, the outbox's time precision) for a fate under an SLA.
fn delay_for(fate: Fate, sla: (u64, u64, u64), i: usize) -> Option<i64> {
    let (w, c, _) = sla;
    let (w, c) = (w as i64 * 1000, c as i64 * 1000);
    let jitter = (i as i64 * 7 % 5) * 1000;
    let small = (i as i64 % 3) * 1000;
    match fate {
        Fate::Ok => Some(w / 4 / 1000 * 1000 + small),
        Fate::Warn => Some((w + c) / 2 / 1000 * 1000 + small),
        Fate::Critical => Some(c + 10_000 + jitter),
        Fate::Never => None,
    }
}

fn outbox(t: &Topics, id: &str, kind: &str, t2: i64, wh_or_channel: (&str, &str)) -> Rec {
    let payload = serde_json::json!({
        "correlation_id": id,
        "write_date": odoo_time(t2),
        "model": "sale.order",
        wh_or_channel.0: wh_or_channel.1,
    });
    Rec {
        topic: t.outbox.clone(),
        key: id.to_string(),
        value: serde_json::to_vec(&payload).expect("json"),
        headers: vec![
            ("id".into(), format!("evt-{id}-{kind}")),
            ("type".into(), kind.to_string()),
        ],
        ts: t2 + 500,
    }
}

async fn wms_record(enc: &AvroEncoder, t: &Topics, id: &str, kind: &str, at: i64, wh: &str) -> Rec {
    use apache_avro::types::Value;
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        t.wms.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, WMS_SCHEMA.to_string()),
    );
    let bytes = enc
        .encode(
            vec![
                ("order_ref", Value::String(id.to_string())),
                ("event_type", Value::String(kind.to_string())),
                ("occurred_at", Value::Long(at)),
                ("warehouse_code", Value::String(wh.to_string())),
            ],
            strategy,
        )
        .await
        .expect("encode WMS Avro");
    Rec {
        topic: t.wms.clone(),
        key: id.to_string(),
        value: bytes,
        headers: vec![],
        ts: at + 1000,
    }
}

/// Builds the scenario: `n` correlations per workflow starting at `base` (whole seconds).
async fn scenario(t: &Topics, s: &Slas, base: i64, n: usize) -> (Vec<Rec>, Vec<Truth>) {
    let enc = AvroEncoder::new(SrSettings::new(support::registry_url()));
    let mut recs = Vec::new();
    let mut truth = Vec::new();
    let channels = ["webshop", "marketplace", "b2b_edi"];
    let warehouses = ["WH-ANR", "WH-LGG"];
    for i in 0..n {
        let t0 = base + i as i64 * 1000;
        let fate = fate_of(i);
        // order_import: JSON start, outbox end.
        let id = format!("SO-{i:05}");
        let d = delay_for(fate, s.a, i);
        let ch = channels[i % 3];
        recs.push(Rec {
            topic: t.orders.clone(),
            key: id.clone(),
            value: serde_json::to_vec(&serde_json::json!({
                "order_ref": id, "event": "order.created", "created_at": rfc3339(t0), "channel": ch
            }))
            .expect("json"),
            headers: vec![],
            ts: t0 + 1000,
        });
        if let Some(d) = d {
            recs.push(outbox(
                t,
                &id,
                "sale.order.imported",
                t0 + d,
                ("team", "sales"),
            ));
        }
        truth.push(Truth {
            workflow: "order_import",
            id,
            fate,
            delay_ms: d,
        });

        // shipment: Avro picked → Avro dispatched → outbox.
        let id = format!("SH-{i:05}");
        let d = delay_for(fate, s.b, i);
        let wh = warehouses[i % 2];
        recs.push(wms_record(&enc, t, &id, "picked", t0, wh).await);
        if let Some(d) = d {
            recs.push(wms_record(&enc, t, &id, "dispatched", t0 + d / 2, wh).await);
            recs.push(outbox(
                t,
                &id,
                "stock.picking.done",
                t0 + d,
                ("warehouse", wh),
            ));
        }
        if fate == Fate::Critical {
            recs.push(Rec {
                topic: t.errors.clone(),
                key: id.clone(),
                value: serde_json::to_vec(&serde_json::json!({
                    "correlation_id": id, "kind": "carrier_api_throttled"
                }))
                .expect("json"),
                headers: vec![],
                ts: t0 + 2000,
            });
        }
        truth.push(Truth {
            workflow: "shipment",
            id,
            fate,
            delay_ms: d,
        });

        // inventory_sync: JSON move → Debezium CDC quant.
        let id = format!("MV-{i:05}");
        let d = delay_for(fate, s.c, i);
        recs.push(Rec {
            topic: t.moves.clone(),
            key: id.clone(),
            value: serde_json::to_vec(&serde_json::json!({"move_id": id, "moved_at": t0}))
                .expect("json"),
            headers: vec![],
            ts: t0 + 1000,
        });
        if let Some(d) = d {
            recs.push(Rec {
                topic: t.quants.clone(),
                key: id.clone(),
                value: serde_json::to_vec(&serde_json::json!({
                    "schema": {"type": "struct"},
                    "payload": {
                        "before": null,
                        "after": {"move_ref": id, "quantity": 5},
                        "source": {"ts_ms": t0 + d, "db": "odoo", "table": "stock_quant"},
                        "op": "u", "ts_ms": t0 + d + 300
                    }
                }))
                .expect("json"),
                headers: vec![],
                ts: t0 + d + 500,
            });
        }
        truth.push(Truth {
            workflow: "inventory_sync",
            id,
            fate,
            delay_ms: d,
        });
    }
    (recs, truth)
}

/// Malformed records, each with the reason it must be dead-lettered with.
fn malformed(t: &Topics, ts: i64) -> Vec<(Rec, &'static str)> {
    let rec = |topic: &str, key: &str, value: &[u8]| Rec {
        topic: topic.to_string(),
        key: key.to_string(),
        value: value.to_vec(),
        headers: vec![("origin".into(), "test".into())],
        ts,
    };
    vec![
        (rec(&t.orders, "bad-1", b"{not json"), "not_json"),
        (
            rec(
                &t.orders,
                "bad-2",
                br#"{"event":"order.created","created_at":"2025-01-01T00:00:00Z"}"#,
            ),
            "missing_correlation_id",
        ),
        (
            rec(
                &t.orders,
                "bad-3",
                br#"{"order_ref":"SO-X","event":"order.created","created_at":"soon"}"#,
            ),
            "bad_timestamp",
        ),
        (
            rec(
                &t.orders,
                "bad-4",
                br#"{"order_ref":{"nested":1},"event":"order.created"}"#,
            ),
            "bad_correlation_id",
        ),
        (rec(&t.wms, "bad-5", b"plain text, not avro"), "not_avro"),
        (rec(&t.quants, "bad-6", br#"{"op":"c"}"#), "not_debezium"),
    ]
}

/// Reads every record of `topic` until `done` says enough, or the deadline.
async fn read_topic(
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = support::consumer(&support::random_name("reader"));
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline && !done(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

async fn decode_breaches(msgs: &[rdkafka::message::OwnedMessage]) -> Vec<BreachEvent> {
    let dec = AvroDecoder::new(SrSettings::new(support::registry_url()));
    let mut out = Vec::new();
    for m in msgs {
        let v = dec
            .decode(m.payload())
            .await
            .expect("breach record decodes with the registry");
        let ev: BreachEvent =
            apache_avro::from_value(&v.value).expect("breach record matches the schema");
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).to_string()),
            Some(ev.key()),
            "breach key is workflow/correlation"
        );
        out.push(ev);
    }
    out
}

/// Decodes a breach record locally (the schema is ours), for stop conditions while reading.
fn breach_of(m: &rdkafka::message::OwnedMessage) -> Option<BreachEvent> {
    static SCHEMA: std::sync::OnceLock<Option<apache_avro::Schema>> = std::sync::OnceLock::new();
    let schema = SCHEMA
        .get_or_init(|| apache_avro::Schema::parse_str(synclag::emit::events::BREACH_SCHEMA).ok())
        .as_ref()?;
    let payload = m.payload()?;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .ok()?
        .read_value(&mut payload.get(5..)?)
        .ok()?;
    apache_avro::from_value(&value).ok()
}

/// A stop condition for [`read_topic`]: true once `want` distinct
/// (correlation, kind, severity) breach events were read. Decodes each record once.
fn distinct_at_least(want: usize) -> impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool {
    let mut seen = BTreeSet::new();
    let mut done = 0;
    move |msgs| {
        for m in &msgs[done..] {
            if let Some(e) = breach_of(m) {
                seen.insert((e.correlation_id, e.kind, e.severity));
            }
        }
        done = msgs.len();
        seen.len() >= want
    }
}

fn expected_events(truth: &[Truth]) -> BTreeSet<(String, String, String, String)> {
    let mut set = BTreeSet::new();
    for t in truth {
        let mut add = |kind: &str, sev: &str| {
            set.insert((
                t.workflow.to_string(),
                t.id.clone(),
                kind.to_string(),
                sev.to_string(),
            ));
        };
        match t.fate {
            Fate::Ok => {}
            Fate::Warn => {
                add("breach", "warn");
                add("resolved", "info");
            }
            Fate::Critical => {
                add("breach", "warn");
                add("breach", "critical");
                add("resolved", "info");
            }
            Fate::Never => {
                add("breach", "warn");
                add("breach", "critical");
                add("never_arrived", "never_arrived");
            }
        }
    }
    set
}

/// The value at quantile `q` as HDR defines it: the smallest value with at least q·N at or below.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_scenario_matches_ground_truth() {
    let t = Topics::new();
    t.create().await;
    let slas = Slas {
        a: (20, 60, 120),
        b: (30, 90, 180),
        c: (20, 60, 120),
    };
    let n = 350; // per workflow: 1,050 correlations
                 // Historical data: every window has ended by the time synclag reads it.
    let now = chrono::Utc::now().timestamp_millis();
    let base = (now - 15 * 60_000) / 1000 * 1000;
    let (mut recs, truth) = scenario(&t, &slas, base, n).await;
    let bad = malformed(&t, base + 5_000);
    let expected_dlq: BTreeMap<String, &str> =
        bad.iter().map(|(r, why)| (r.key.clone(), *why)).collect();
    recs.extend(bad.into_iter().map(|(r, _)| r));
    let producer = support::producer();
    produce_all(&producer, recs).await;

    let port = free_port();
    let mut svc = Service::start(&config(&t, port, &slas), port, "scenario");

    // Wait until every correlation reached its terminal outcome.
    let completed_expected = truth.iter().filter(|x| x.fate != Fate::Never).count() as u64;
    let never_expected = truth.iter().filter(|x| x.fate == Fate::Never).count() as u64;
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = svc.get_json("/api/v1/workflows").await {
            let sum = |k: &str| {
                v["workflows"].as_array().map_or(0, |a| {
                    a.iter().map(|w| w[k].as_u64().unwrap_or(0)).sum::<u64>()
                })
            };
            if sum("completed") >= completed_expected && sum("never_arrived") >= never_expected {
                last = v;
                break;
            }
            last = v;
        }
        assert!(
            Instant::now() < deadline,
            "not all correlations finished; last status {last:#}\n{}",
            svc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Counts and quantiles per workflow match ground truth (HDR: 3 significant digits).
    for wf in ["order_import", "shipment", "inventory_sync"] {
        let status = last["workflows"]
            .as_array()
            .and_then(|a| a.iter().find(|w| w["name"] == wf))
            .expect("workflow listed");
        let mut delays: Vec<i64> = truth
            .iter()
            .filter(|x| x.workflow == wf)
            .filter_map(|x| x.delay_ms)
            .collect();
        delays.sort_unstable();
        let e2e = &status["end_to_end"];
        assert_eq!(
            e2e["count"].as_u64(),
            Some(delays.len() as u64),
            "{wf}: {status:#}"
        );
        assert_eq!(
            status["completed"].as_u64(),
            Some(delays.len() as u64),
            "{wf}"
        );
        assert_eq!(
            status["never_arrived"].as_u64(),
            Some(
                truth
                    .iter()
                    .filter(|x| x.workflow == wf && x.fate == Fate::Never)
                    .count() as u64
            )
        );
        assert_eq!(status["pending"].as_u64(), Some(0), "{wf}");
        for (q, field) in [(0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")] {
            let truth_v = quantile(&delays, q) as f64;
            let got = e2e[field].as_u64().expect("quantile") as f64;
            assert!(
                (got - truth_v).abs() <= truth_v * 0.001 + 1.0,
                "{wf} {field}: got {got}, truth {truth_v}"
            );
        }
        let max = *delays.last().expect("some completed") as f64;
        let got_max = e2e["max_ms"].as_u64().expect("max") as f64;
        assert!(
            (got_max - max).abs() <= max * 0.001 + 1.0,
            "{wf} max: got {got_max}, truth {max}"
        );
    }

    // Every expected breach arrives, decodable with a Confluent-compatible Avro deserializer;
    // nothing unexpected.
    let expected = expected_events(&truth);
    let msgs = read_topic(
        &t.breaches,
        Duration::from_secs(60),
        distinct_at_least(expected.len()),
    )
    .await;
    let events = decode_breaches(&msgs).await;
    let got: BTreeSet<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.workflow.clone(),
                e.correlation_id.clone(),
                e.kind.clone(),
                e.severity.clone(),
            )
        })
        .collect();
    let missing: Vec<_> = expected.difference(&got).take(10).collect();
    let unexpected: Vec<_> = got.difference(&expected).take(10).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing {missing:?}\nunexpected {unexpected:?}"
    );
    let by_id: HashMap<&str, &Truth> = truth.iter().map(|x| (x.id.as_str(), x)).collect();
    for e in &events {
        let tr = by_id[e.correlation_id.as_str()];
        let sla = match tr.workflow {
            "order_import" => slas.a,
            "shipment" => slas.b,
            _ => slas.c,
        };
        match (e.kind.as_str(), e.severity.as_str()) {
            ("breach", sev) => {
                let tier_ms = if sev == "warn" { sla.0 } else { sla.1 } as i64 * 1000;
                assert_eq!(
                    e.lag_ms, tier_ms,
                    "breach lag is the tier it crossed: {e:?}"
                );
                assert_eq!(e.deadline_ms, Some(e.started_at_ms + tier_ms));
                assert!(e.stage.is_some(), "a breach names the missing stage: {e:?}");
            }
            ("resolved", _) => assert_eq!(
                Some(e.lag_ms),
                tr.delay_ms,
                "resolved with the real lag: {e:?}"
            ),
            ("never_arrived", _) => assert_eq!(e.lag_ms, sla.2 as i64 * 1000),
            _ => {}
        }
        if tr.workflow == "shipment" && tr.fate == Fate::Critical && e.kind == "breach" {
            assert_eq!(
                e.probable_cause.as_deref(),
                Some("carrier_api_throttling"),
                "{e:?}"
            );
            assert_eq!(e.route.as_deref(), Some("integration_support"));
            assert_eq!(e.team.as_deref(), Some("integration-support"));
            assert_eq!(e.signals, vec!["carrier_api_throttled".to_string()]);
        } else if tr.workflow == "shipment" && e.kind == "breach" {
            assert_eq!(
                e.route.as_deref(),
                Some("operations"),
                "default route of the workflow"
            );
            assert!(e.dimensions.contains_key("warehouse"), "{e:?}");
        }
        assert_eq!(
            e.breach_id,
            synclag::rules::breach_id(
                &e.workflow,
                e.correlation_id.as_bytes(),
                if e.kind == "breach" {
                    &e.severity
                } else {
                    &e.kind
                },
                e.started_at_ms
            )
        );
    }

    // Malformed records are in the dead-letter topic with their reasons and original headers.
    let dlq = read_topic(&t.dlq, Duration::from_secs(30), |m| {
        m.len() >= expected_dlq.len()
    })
    .await;
    let mut reasons = BTreeMap::new();
    for m in &dlq {
        let headers = m.headers().expect("dead letters carry headers");
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
        };
        assert_eq!(
            get("origin").as_deref(),
            Some("test"),
            "original headers are kept"
        );
        assert!(get("synclag.error").is_some_and(|e| !e.is_empty()));
        assert!(get("synclag.source.topic").is_some());
        reasons.insert(
            String::from_utf8_lossy(m.key().expect("original key")).to_string(),
            get("synclag.reason").unwrap_or_default(),
        );
    }
    let expected_reasons: BTreeMap<String, String> = expected_dlq
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(reasons, expected_reasons);

    // Lag summaries arrive per workflow (Avro).
    // Lag summaries are keyed by workflow: read until every workflow has one.
    let lag = read_topic(&t.lag, Duration::from_secs(30), |m| {
        m.iter()
            .filter_map(|r| r.key())
            .collect::<BTreeSet<_>>()
            .len()
            >= 3
    })
    .await;
    let dec = AvroDecoder::new(SrSettings::new(support::registry_url()));
    let mut workflows = BTreeSet::new();
    for m in &lag {
        let v = dec.decode(m.payload()).await.expect("lag summary decodes");
        let s: LagSummary =
            apache_avro::from_value(&v.value).expect("lag summary matches the schema");
        assert!(
            s.count > 0 && s.p50_ms <= s.p99_ms && s.p99_ms <= s.max_ms && !s.hdr_base64.is_empty()
        );
        workflows.insert(s.workflow);
    }
    assert!(
        workflows.len() >= 3,
        "lag summaries for every workflow, got {workflows:?}"
    );

    // The metrics endpoint shows the same counts.
    let metrics = reqwest::get(svc.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    for wf in ["order_import", "shipment", "inventory_sync"] {
        let completed = truth
            .iter()
            .filter(|x| x.workflow == wf && x.fate != Fate::Never)
            .count() as f64;
        let filter = format!("workflow=\"{wf}\"");
        assert_eq!(
            support::metric_sum(&metrics, "synclag_completed_total", &[&filter]),
            completed,
            "{wf}"
        );
        let never = truth
            .iter()
            .filter(|x| x.workflow == wf && x.fate == Fate::Never)
            .count() as f64;
        assert_eq!(
            support::metric_sum(&metrics, "synclag_never_arrived_total", &[&filter]),
            never,
            "{wf}"
        );
        let crit = truth
            .iter()
            .filter(|x| x.workflow == wf && matches!(x.fate, Fate::Critical | Fate::Never))
            .count() as f64;
        assert_eq!(
            support::metric_sum(
                &metrics,
                "synclag_breaches_total",
                &[&filter, "severity=\"critical\""]
            ),
            crit,
            "{wf}"
        );
        let e2e_count = support::metric_sum(
            &metrics,
            "synclag_lag_seconds_count",
            &[&filter, "segment=\"end_to_end\""],
        );
        assert_eq!(e2e_count, completed, "{wf}: end-to-end histogram count");
    }
    assert_eq!(
        support::metric_sum(&metrics, "synclag_dead_letters_total", &[]),
        expected_dlq.len() as f64
    );
    assert!(
        metrics.contains("# HELP synclag_lag_seconds"),
        "metrics are described"
    );
    assert!(
        !metrics.contains("SO-00"),
        "no correlation id in metric labels"
    );

    // API: readiness, health, pending for unknown workflow.
    let ready = reqwest::get(svc.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let unknown = reqwest::get(svc.url("/api/v1/pending?workflow=nope"))
        .await
        .expect("pending");
    assert_eq!(unknown.status().as_u16(), 404);

    // Graceful shutdown: SIGTERM → exit 0 and offsets committed.
    assert_eq!(
        svc.terminate().await,
        Some(0),
        "clean exit on SIGTERM\n{}",
        svc.log_tail()
    );
}

/// Durable state (the default): a restart restores pending correlations from the
/// changelog, so offsets follow what was processed, nothing is re-read and nothing is
/// raised twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_with_durable_state_restores_and_raises_nothing_twice() {
    sigkill_and_restart(true).await;
}

/// `store.durable: false`: a restart rebuilds pending correlations by re-reading input,
/// so offsets stay behind them and breaches are raised again (same `breach_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_without_durable_state_rereads_and_keeps_breach_ids() {
    sigkill_and_restart(false).await;
}

async fn sigkill_and_restart(durable: bool) {
    let t = Topics::new();
    t.create().await;
    // Live timing: SLA in seconds so the test follows the wall clock.
    let slas = Slas {
        a: (20, 40, 60),
        b: (20, 40, 60),
        c: (20, 40, 60),
    };
    let producer = support::producer();
    let now = chrono::Utc::now().timestamp_millis() / 1000 * 1000;
    let n = 120;
    // Four groups of order_import correlations:
    //   ok_before: completed before the kill; ok_after: completed after it (lag 2 s);
    //   never: no end; old: started 30 s ago (past warn already), no end.
    let group = |i: usize| match i % 4 {
        0 => "ok_before",
        1 => "ok_after",
        2 => "never",
        _ => "old",
    };
    let start = |i: usize| if group(i) == "old" { now - 30_000 } else { now };
    let order = |i: usize| {
        let id = format!("K-{i:04}");
        let t0 = start(i);
        Rec {
            topic: t.orders.clone(),
            key: id.clone(),
            value: serde_json::to_vec(&serde_json::json!({
                "order_ref": id, "event": "order.created", "created_at": rfc3339(t0), "channel": "webshop"
            }))
            .expect("json"),
            headers: vec![],
            ts: t0 + 500,
        }
    };
    let mut phase1: Vec<Rec> = (0..n).map(order).collect();
    phase1.extend((0..n).filter(|i| group(*i) == "ok_before").map(|i| {
        outbox(
            &t,
            &format!("K-{i:04}"),
            "sale.order.imported",
            start(i) + 1000,
            ("team", "sales"),
        )
    }));
    produce_all(&producer, phase1).await;

    let port = free_port();
    let mut cfg = config(&t, port, &slas);
    if !durable {
        cfg.push_str("store:\n  durable: false\n");
    }
    let mut first = Service::start(&cfg, port, "before-kill");
    let old_count = (0..n).filter(|i| group(*i) == "old").count();
    // Run 1 must have processed everything and emitted the warn breaches of the `old` group.
    let early = read_topic(&t.breaches, Duration::from_secs(90), |m| {
        m.len() >= old_count
    })
    .await;
    let early = decode_breaches(&early).await;
    assert_eq!(
        early.len(),
        old_count,
        "warn breaches of the old group before the kill\n{}",
        first.log_tail()
    );
    assert!(
        early
            .iter()
            .all(|e| e.severity == "warn" && e.correlation_id.starts_with("K-")),
        "{early:?}\n{}",
        first.log_tail()
    );
    support::wait_until_async(
        Duration::from_secs(30),
        "run 1 completed the ok_before group",
        || async {
            first
                .get_json("/api/v1/workflows")
                .await
                .and_then(|v| v["workflows"][0]["completed"].as_u64())
                .is_some_and(|c| c as usize >= n / 4)
        },
    )
    .await;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (topic, parts) in [(&t.orders, 3), (&t.outbox, 3)] {
        for p in 0..parts {
            tpl.add_partition(topic, p);
        }
    }
    let probe: StreamConsumer = support::consumer(&t.group);
    let committed_offsets = |probe: &StreamConsumer| -> Vec<(String, i32, rdkafka::Offset)> {
        probe
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .expect("read synclag's committed offsets")
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect()
    };
    if durable {
        // Offsets follow what was processed once its state is in the changelog: every
        // record read is committed, and a restart reads none of them again.
        let ends: Vec<i64> = committed_offsets(&probe)
            .iter()
            .map(|(topic, p, _)| {
                probe
                    .fetch_watermarks(topic, *p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect();
        support::wait_until(
            Duration::from_secs(30),
            "run 1 committed every record it read",
            || {
                committed_offsets(&probe)
                    .iter()
                    .zip(&ends)
                    .all(|((_, _, o), end)| *o == rdkafka::Offset::Offset(*end))
            },
        );
        first.kill();
    } else {
        // Let one periodic commit happen, then kill without any chance to flush or commit.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        first.kill();
        // Which offsets a restart re-reads: every record here is younger than the longest
        // window, so nothing may have been committed past the start of any partition.
        let mut seen_commit = false;
        for (topic, p, offset) in committed_offsets(&probe) {
            match offset {
                rdkafka::Offset::Invalid => {}
                rdkafka::Offset::Offset(o) => {
                    seen_commit = true;
                    assert_eq!(o, 0, "{topic}[{p}] committed past records a restart needs");
                }
                other => panic!("unexpected committed offset {other:?}"),
            }
        }
        assert!(
            seen_commit,
            "run 1 committed its (safe) offsets before the kill"
        );
    }
    drop(probe);

    // Phase 2 while synclag is down.
    let phase2: Vec<Rec> = (0..n)
        .filter(|i| group(*i) == "ok_after")
        .map(|i| {
            outbox(
                &t,
                &format!("K-{i:04}"),
                "sale.order.imported",
                start(i) + 2000,
                ("team", "sales"),
            )
        })
        .collect();
    produce_all(&producer, phase2).await;
    let second = Service::start(&cfg, port, "after-restart");

    // Wait for every correlation's terminal outcome (never_arrived at start + 60 s).
    let expect_done = (0..n)
        .filter(|i| matches!(group(*i), "never" | "old"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let v = second.get_json("/api/v1/workflows").await;
        let never = v
            .as_ref()
            .and_then(|v| v["workflows"][0]["never_arrived"].as_u64())
            .unwrap_or(0);
        if never as usize >= expect_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restart did not finish: {v:?}\n{}",
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all = read_topic(
        &t.breaches,
        Duration::from_secs(60),
        distinct_at_least(expect_done * 3),
    )
    .await;
    let all = decode_breaches(&all).await;

    // Nothing lost, nothing falsely breached while catching up.
    let mut kinds: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for e in &all {
        kinds
            .entry(e.correlation_id.clone())
            .or_default()
            .insert((e.kind.clone(), e.severity.clone()));
        ids.entry((e.correlation_id.clone(), e.severity.clone()))
            .or_default()
            .insert(e.breach_id.clone());
    }
    for i in 0..n {
        let id = format!("K-{i:04}");
        let got = kinds.remove(&id).unwrap_or_default();
        match group(i) {
            "ok_before" | "ok_after" => assert!(
                got.is_empty(),
                "{id} ({}) falsely breached: {got:?}",
                group(i)
            ),
            _ => {
                let want: BTreeSet<(String, String)> = [
                    ("breach", "warn"),
                    ("breach", "critical"),
                    ("never_arrived", "never_arrived"),
                ]
                .iter()
                .map(|(k, s)| (k.to_string(), s.to_string()))
                .collect();
                assert_eq!(got, want, "{id} ({})", group(i));
            }
        }
    }
    // A breach emitted again after the restart carries the same breach_id.
    for e in &early {
        let seen = &ids[&(e.correlation_id.clone(), e.severity.clone())];
        assert_eq!(
            seen.len(),
            1,
            "{}: one breach id across the restart, got {seen:?}",
            e.correlation_id
        );
        assert!(seen.contains(&e.breach_id));
    }
    let warns = all
        .iter()
        .filter(|e| e.severity == "warn" && e.correlation_id.starts_with("K-"))
        .count();
    if durable {
        // The `old` group's warn breaches were raised before the kill and restored as
        // raised; the `never` group's were raised after the restart. Once each.
        assert_eq!(
            warns,
            (0..n)
                .filter(|i| matches!(group(*i), "old" | "never"))
                .count(),
            "each warn breach once across the restart\n{}",
            second.log_tail()
        );
        let metrics = second.get_text("/metrics").await.unwrap_or_default();
        let restored = support::metric_sum(
            &metrics,
            "synclag_state_restored_correlations",
            &["kind=\"pending\""],
        );
        assert_eq!(
            restored as usize,
            (0..n)
                .filter(|i| matches!(group(*i), "ok_after" | "never" | "old"))
                .count(),
            "the correlations pending at the kill were restored"
        );
    } else {
        assert!(
            warns > old_count + (0..n).filter(|i| group(*i) == "never").count(),
            "the restart re-emitted warn breaches (deduplicated by breach_id downstream)"
        );
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_member_is_reported() {
    let t = Topics::new();
    t.create().await;
    let slas = Slas {
        a: (20, 40, 60),
        b: (20, 40, 60),
        c: (20, 40, 60),
    };
    let port = free_port();
    let svc = Service::start(&config(&t, port, &slas), port, "two-members");
    support::wait_until_async(
        Duration::from_secs(60),
        "synclag has its partitions",
        || async {
            reqwest::get(svc.url("/readyz"))
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
    // Another process joins synclag's group (same assignor, or the join is refused).
    let intruder: StreamConsumer = support::consumer_with(
        &t.group,
        &[("partition.assignment.strategy", "cooperative-sticky")],
    );
    intruder.subscribe(&[t.orders.as_str()]).expect("subscribe");
    let poller = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), intruder.recv()).await;
        }
    });
    support::wait_until_async(
        Duration::from_secs(90),
        "synclag reports two group members",
        || async {
            let Ok(r) = reqwest::get(svc.url("/metrics")).await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            support::metric_sum(&text, "synclag_group_members", &[]) >= 2.0
        },
    )
    .await;
    assert!(
        std::fs::read_to_string(&svc.log)
            .unwrap_or_default()
            .contains("another instance joined"),
        "the log says so loudly\n{}",
        svc.log_tail()
    );
    poller.abort();
}
