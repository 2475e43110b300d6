//! Input paused for outputs is no stall, and a short wait for outputs costs no fetched
//! input, on the real broker.
//!
//! A backlog of one two-stage workflow is read while outputs cannot be written: they
//! are Avro, and the schema registry cannot be reached (the service talks to it through
//! a relay that accepts nothing yet), so the first breach event waits to be encoded and
//! every later output waits behind it. Outputs pile up until the reader pauses its input,
//! with the records of many on-time correlations still unread. The registry stays away
//! for several stall budgets (`service.idle_partition`), then answers. Afterwards the
//! breach topic must show:
//!
//! - no invented alert: no `breach` and no `never_arrived` on a correlation that closed
//!   on time — had the paused partitions been judged stalled, the clock would have passed
//!   them and ended those correlations while their stages waited unread;
//! - no lost alert: every correlation that is never closed has its warn, critical and
//!   `never_arrived` event.

mod support;

use rdkafka::Message;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::SynclagProcess;
use synclag::emit::events::BreachEvent;

/// Correlations that are never closed, started first (1 ms apart). Each raises three
/// events (warn, critical, `never_arrived`): far more than the output path holds before it
/// pauses the input (its channel).
const NEVER_CLOSED: u64 = 8_000;
/// Correlations that close on time, started after a gap of event time (1 ms apart). The
/// first of them read moves the clock past the deadlines of all never-closed ones at
/// once, so the pause comes while most of these wait unread.
const ON_TIME: u64 = 8_000;
/// Event time from the first never-closed start to the first on-time start.
const GAP_MS: i64 = 30_000;
/// When an on-time correlation closes after it started (warn is 2 s).
const ON_TIME_MS: i64 = 500;
/// The stall budget the service gets, and for how many of them outputs stay blocked.
const IDLE_PARTITION_S: u64 = 3;
const BLOCKED_BUDGETS: u64 = 3;

fn order_ref(i: u64) -> String {
    format!("SO-{i:09}")
}

/// Correlation `i`'s start, and its closing time if it closes.
fn times(i: u64, base_ms: i64) -> (i64, Option<i64>) {
    if i < NEVER_CLOSED {
        (base_ms + i as i64, None)
    } else {
        let start = base_ms + GAP_MS + (i - NEVER_CLOSED) as i64;
        (start, Some(start + ON_TIME_MS))
    }
}

/// Writes the backlog: created records on `orders`, closing records on `outbox`, each
/// topic in event-time order; everything ended long before the service reads it.
fn produce_backlog(orders: &str, outbox: &str, base_ms: i64) {
    let writer = support::BacklogWriter::new();
    let send = |topic: &str, key: &str, value: String, ts: i64| writer.send(topic, key, &value, ts);
    for i in 0..NEVER_CLOSED + ON_TIME {
        let (created, _) = times(i, base_ms);
        let id = order_ref(i);
        send(
            orders,
            &id,
            format!(
                r#"{{"order_ref":"{id}","event":"order.created","created_at":{created},"channel":"webshop"}}"#
            ),
            created,
        );
    }
    for i in NEVER_CLOSED..NEVER_CLOSED + ON_TIME {
        let Some(imported) = times(i, base_ms).1 else {
            continue;
        };
        let id = order_ref(i);
        send(
            outbox,
            &id,
            format!(
                r#"{{"correlation_id":"{id}","event":"sale.order.imported","write_date":{imported}}}"#
            ),
            imported,
        );
    }
    writer.flush();
}

async fn metrics(svc: &SynclagProcess) -> String {
    svc.get_text("/metrics").await.unwrap_or_default()
}

/// Fresh single-partition `orders` and `outbox` topics named after `prefix`, the output
/// prefix, and the breach topic under it.
async fn topics(prefix: &str) -> (String, String, String, String) {
    let orders = support::random_name(&format!("{prefix}-orders"));
    let outbox = support::random_name(&format!("{prefix}-outbox"));
    let out = support::random_name(&format!("{prefix}-out"));
    support::create_topic(&orders, 1).await;
    support::create_topic(&outbox, 1).await;
    let breaches = format!("{out}.breaches");
    (orders, outbox, out, breaches)
}

/// Every breach record on `topic`: correlation id to its `kind/severity` pairs.
async fn breaches_by_correlation(
    topic: &str,
    registry: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let dec = AvroDecoder::new(SrSettings::new(registry.to_string()));
    for m in support::topics::read_all(support::client_config(), topic) {
        let v = dec
            .decode(m.payload())
            .await
            .unwrap_or_else(|e| panic!("a breach record decodes with the registry: {e}"));
        let ev: BreachEvent = apache_avro::from_value(&v.value)
            .unwrap_or_else(|e| panic!("a breach record matches the schema: {e}"));
        seen.entry(ev.correlation_id)
            .or_default()
            .insert(format!("{}/{}", ev.kind, ev.severity));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_paused_for_outputs_is_not_a_stall() {
    let (orders, outbox, out, breaches) = topics("pause").await;
    // The registry, reached through a relay that accepts nothing until it is started.
    let support::registry::Relayed {
        real,
        via_relay,
        relay_port,
        hostport,
    } = support::registry::behind_relay();

    let now = chrono::Utc::now().timestamp_millis();
    let base = now - 10 * 60_000;
    produce_backlog(&orders, &outbox, base);

    let port = support::free_port();
    let yaml = support::OrderImport {
        orders: &orders,
        outbox: &outbox,
        out: &out,
        idle_partition_s: IDLE_PARTITION_S,
        registry_url: Some(&via_relay),
    }
    .yaml(port);
    let mut svc = SynclagProcess::start(&yaml, port, "output-pause");

    // Outputs pile up until the reader pauses its input, with closing records unread.
    support::wait_until_async(
        Duration::from_secs(120),
        "input is paused for outputs",
        || async {
            support::metric_sum(&metrics(&svc).await, "synclag_input_paused_for_output", &[]) == 1.0
        },
    )
    .await;
    let unread = support::metric_sum(&metrics(&svc).await, "synclag_input_lag_records", &[]);
    assert!(
        unread > 0.0,
        "records of on-time correlations wait in the paused input (input lag {unread})\n{}",
        svc.log_tail()
    );
    // Paused for several stall budgets: long enough for a partition standing still to be
    // judged stalled, were the reader's own pause taken for one.
    tokio::time::sleep(Duration::from_secs(IDLE_PARTITION_S * BLOCKED_BUDGETS)).await;
    assert_eq!(
        support::metric_sum(&metrics(&svc).await, "synclag_input_paused_for_output", &[]),
        1.0,
        "input stayed paused while outputs were blocked\n{}",
        svc.log_tail()
    );

    // The registry answers: outputs move, the backlog is read to its end and every output
    // is delivered.
    tokio::spawn(support::relay(relay_port, hostport));
    let never = NEVER_CLOSED as f64;
    svc.stop_when_drained(
        never,
        &[
            "synclag_input_paused_for_output",
            "synclag_output_queued_records",
        ],
        Duration::from_secs(180),
    )
    .await;

    let seen = breaches_by_correlation(&breaches, &real).await;
    let mut invented = Vec::new();
    let mut lost = Vec::new();
    for i in 0..NEVER_CLOSED + ON_TIME {
        let id = order_ref(i);
        let got = seen.get(&id).cloned().unwrap_or_default();
        if i < NEVER_CLOSED {
            for want in [
                "breach/warn",
                "breach/critical",
                "never_arrived/never_arrived",
            ] {
                if !got.contains(want) {
                    lost.push(format!("{id}: {want}"));
                }
            }
        } else if got
            .iter()
            .any(|k| k.starts_with("breach/") || k.starts_with("never_arrived/"))
        {
            invented.push(format!("{id}: {got:?}"));
        }
    }
    assert!(
        invented.is_empty(),
        "{} on-time correlations were alerted while their stages waited in the paused input, e.g. {:?}",
        invented.len(),
        &invented[..invented.len().min(5)]
    );
    assert!(
        lost.is_empty(),
        "{} alerts lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Correlations of the in-step backlog, 1 ms apart; each closes [`LATE_MS`] after it
/// started: after its warn deadline (2 s), before its critical one (5 s).
const IN_STEP: u64 = 12_000;
const LATE_MS: i64 = 2_500;

/// A short wait for outputs leaves the records the consumer fetched ahead where they are.
///
/// Both stages are read from one single-partition topic, so no partition is paused in
/// the consumer for running ahead. Every correlation closes 2.5 s after its start and raises a warn; the first waits for the registry,
/// behind a relay that accepts nothing, so outputs pile up until input is held back. The
/// relay is started as soon as that is seen. A pause in the consumer would drop every
/// record fetched ahead and fetch it again, so the consumer would have fetched more records
/// than the topic holds (`synclag_input_fetched_records`, librdkafka's `rxmsgs`); a wait shorter than a second must not pause there,
/// and no alert may be lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_output_wait_drops_no_fetched_input() {
    let (orders, outbox, out, breaches) = topics("hold").await;
    let support::registry::Relayed {
        real,
        via_relay,
        relay_port,
        hostport,
    } = support::registry::behind_relay();

    // Both stages on one single-partition topic, in record-time order: nothing can run
    // ahead of anything.
    let base = chrono::Utc::now().timestamp_millis() - 10 * 60_000;
    let writer = support::BacklogWriter::new();
    let mut records: Vec<(i64, String, String)> = Vec::new();
    for i in 0..IN_STEP {
        let id = order_ref(i);
        let created = base + i as i64;
        let imported = created + LATE_MS;
        records.push((
            created,
            id.clone(),
            format!(r#"{{"order_ref":"{id}","event":"order.created","created_at":{created}}}"#),
        ));
        records.push((
            imported,
            id.clone(),
            format!(
                r#"{{"order_ref":"{id}","event":"sale.order.imported","created_at":{imported}}}"#
            ),
        ));
    }
    records.sort();
    for (ts, id, value) in &records {
        writer.send(&orders, id, value, *ts);
    }
    writer.flush();

    let port = support::free_port();
    let yaml = support::OrderImport {
        orders: &orders,
        outbox: &outbox,
        out: &out,
        idle_partition_s: IDLE_PARTITION_S,
        registry_url: Some(&via_relay),
    }
    .yaml(port)
    .replace("stream: odoo_outbox", "stream: orders");
    let mut svc = SynclagProcess::start(&yaml, port, "output-hold");
    support::wait_until_async(
        Duration::from_secs(120),
        "input is held back for outputs",
        || async {
            support::metric_sum(&metrics(&svc).await, "synclag_input_paused_for_output", &[]) == 1.0
        },
    )
    .await;
    tokio::spawn(support::relay(relay_port, hostport));
    support::wait_until_async(
        Duration::from_secs(180),
        "the backlog was read to its end and every output was acknowledged",
        || async {
            let text = metrics(&svc).await;
            support::metric_sum(&text, "synclag_input_lag_records", &[]) == 0.0
                && support::metric_sum(&text, "synclag_input_paused_for_output", &[]) == 0.0
                && support::metric_sum(&text, "synclag_output_unacknowledged_records", &[]) == 0.0
                && support::metric_sum(&text, "synclag_output_queued_records", &[]) == 0.0
                && support::metric_sum(&text, "synclag_breaches_total", &[]) >= IN_STEP as f64
        },
    )
    .await;
    // The consumer's statistics, where the dropped records are counted, come once a second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let text = metrics(&svc).await;
    let waits = support::metric_sum(&text, "synclag_output_backpressure_wait_seconds_count", &[]);
    let short = support::metric_sum(
        &text,
        "synclag_output_backpressure_wait_seconds_bucket",
        &["le=\"1\""],
    );
    // Until the empty outbox partition has confirmed its end the clock has no reading, and
    // the orders partition may be held back in the pipeline meanwhile; never in the
    // consumer, which would drop what it fetched ahead.
    let paced = support::metric_sum(&text, "synclag_input_paced_pauses_total", &[]);
    let fetched = support::metric_sum(&text, "synclag_input_fetched_records", &[]);
    assert!(
        waits >= 1.0,
        "outputs held input back at least once ({waits} waits)\n{}",
        svc.log_tail()
    );
    assert_eq!(
        short,
        waits,
        "every wait for outputs ended within a second, so none paused the consumer\n{}",
        svc.log_tail()
    );
    assert_eq!(
        paced,
        0.0,
        "the backlog is read in step: no partition paused in the consumer for running ahead\n{}",
        svc.log_tail()
    );
    assert_eq!(
        fetched,
        (2 * IN_STEP) as f64,
        "each record fetched once: none fetched ahead, dropped while outputs held input back, and fetched again\n{}",
        svc.log_tail()
    );
    assert_eq!(
        svc.terminate().await,
        Some(0),
        "clean exit\n{}",
        svc.log_tail()
    );

    let seen = breaches_by_correlation(&breaches, &real).await;
    let lost: Vec<String> = (0..IN_STEP)
        .map(order_ref)
        .filter(|id| {
            let got = seen.get(id).cloned().unwrap_or_default();
            !got.contains("breach/warn")
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} correlations lack their warn, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
