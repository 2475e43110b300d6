//! The throughput workload, shared by the per-record bench (`record_path`) and the load
//! command (`service_load`) so both measure the same records: one workflow, order created
//! in the shop → order imported in Odoo (its outbox), JSON, SLA warn 2 s / critical 5 s,
//! window 60 s.
//!
//! Correlation `i` is created at `base + i · spacing`. 3 % are never imported; 35 % are
//! imported 2–8 s later (they breach the warn tier, a part of them the critical one); the
//! rest within 0.1–2 s. With the never-imported ones, 38 % of correlations breach at the
//! warn tier. Everything is a pure function of `i`, so every run produces the same records.

#![allow(dead_code)] // each of the two targets uses a part

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const WARN_MS: i64 = 2_000;
pub const CRITICAL_MS: i64 = 5_000;
pub const WINDOW_MS: i64 = 60_000;
pub const WORKFLOW: &str = "order_import";
const CHANNELS: [&str; 3] = ["webshop", "marketplace", "b2b_edi"];
/// Time from the ERP write to the outbox record's Kafka timestamp.
const OUTBOX_DELAY_MS: i64 = 40;

/// Which input a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Created,
    Imported,
}

/// One input record: key (the correlation id), JSON value, Kafka timestamp.
#[derive(Debug, Clone)]
pub struct Record {
    pub side: Side,
    pub key: String,
    pub value: String,
    pub timestamp_ms: i64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, well-spread hash of the index.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How long after its creation correlation `i` is imported; `None`: never.
pub fn import_lag_ms(i: u64) -> Option<i64> {
    let u = mix(i) % 10_000;
    let v = (mix(i ^ 0x5eed) % 1_000_000) as i64;
    match u {
        0..300 => None,
        300..3_800 => Some(2_000 + v % 6_000),
        _ => Some(100 + v % 1_900),
    }
}

/// How long after its creation the correlation `order_ref` names is imported (the inner
/// `None`: never); `None` when the id is not the workload's.
fn lag_of(order_ref: &str) -> Option<Option<i64>> {
    let i: u64 = order_ref.strip_prefix("SO-")?.parse().ok()?;
    Some(import_lag_ms(i))
}

/// The SLA tier a breach alert of `kind` is raised at.
fn tier_ms(kind: &str) -> Option<i64> {
    match kind {
        "breach warn" => Some(WARN_MS),
        "breach critical" => Some(CRITICAL_MS),
        _ => None,
    }
}

/// Whether an alert of `kind` (a breach event's `kind` and `severity`: `breach warn`,
/// `breach critical`, `never_arrived`) is deserved by the correlation `order_ref`
/// names; `None` when the id is not the workload's.
pub fn deserved(order_ref: &str, kind: &str) -> Option<bool> {
    let lag = lag_of(order_ref)?;
    Some(match tier_ms(kind) {
        Some(tier) => lag.is_none_or(|l| l >= tier),
        None if kind.starts_with("never_arrived") => lag.is_none(),
        None => true,
    })
}

/// Whether an alert `deserved` refuses is one of a closing record that happened before
/// the tier's deadline but reached Kafka after it (its Kafka timestamp is the ERP write
/// plus [`OUTBOX_DELAY_MS`]): the clock runs on Kafka time, so while other partitions are
/// read further, that deadline can pass before the record is read. Counted apart, not as
/// deserved.
pub fn reached_kafka_at_deadline(order_ref: &str, kind: &str) -> bool {
    match (lag_of(order_ref).flatten(), tier_ms(kind)) {
        (Some(lag), Some(tier)) => lag < tier && lag + OUTBOX_DELAY_MS >= tier,
        _ => false,
    }
}

pub fn order_ref(i: u64) -> String {
    format!("SO-{i:09}")
}

pub fn created_json(i: u64, created_ms: i64) -> String {
    format!(
        r#"{{"order_ref":"{}","event":"order.created","created_at":{created_ms},"channel":"{}","lines":3,"currency":"EUR"}}"#,
        order_ref(i),
        CHANNELS[(i % 3) as usize]
    )
}

pub fn imported_json(i: u64, write_ms: i64) -> String {
    format!(
        r#"{{"id":{i},"model":"sale.order","event":"sale.order.imported","correlation_id":"{}","write_date":{write_ms},"state":"sale"}}"#,
        order_ref(i)
    )
}

/// `n` correlations' records in Kafka-time order, created ones `spacing_us` apart from
/// `base_ms` on.
pub fn records(n: u64, base_ms: i64, spacing_us: u64) -> impl Iterator<Item = Record> {
    let mut pending: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut i = 0u64;
    std::iter::from_fn(move || {
        let next_created =
            (i < n).then(|| base_ms + i64::try_from(i * spacing_us / 1_000).unwrap_or(0));
        let import_due = pending.peek().map(|Reverse((t, _))| *t);
        match (next_created, import_due) {
            (Some(c), due) if due.is_none_or(|d| c <= d) => {
                if let Some(lag) = import_lag_ms(i) {
                    pending.push(Reverse((c + lag + OUTBOX_DELAY_MS, i)));
                }
                let r = Record {
                    side: Side::Created,
                    key: order_ref(i),
                    value: created_json(i, c),
                    timestamp_ms: c,
                };
                i += 1;
                Some(r)
            }
            (_, Some(_)) => {
                let Reverse((t, j)) = pending.pop()?;
                Some(Record {
                    side: Side::Imported,
                    key: order_ref(j),
                    value: imported_json(j, t - OUTBOX_DELAY_MS),
                    timestamp_ms: t,
                })
            }
            _ => None,
        }
    })
}

/// The topology `synclag run` gets for the workload.
pub fn topology_yaml(
    bootstrap: &str,
    group: &str,
    http_port: u16,
    created_topic: &str,
    imported_topic: &str,
    output_prefix: &str,
) -> String {
    topology_yaml_with_properties(
        bootstrap,
        group,
        http_port,
        created_topic,
        imported_topic,
        output_prefix,
        &[],
    )
}

/// [`topology_yaml`] with `kafka.properties` (librdkafka settings over synclag's
/// defaults), to measure what one setting changes.
pub fn topology_yaml_with_properties(
    bootstrap: &str,
    group: &str,
    http_port: u16,
    created_topic: &str,
    imported_topic: &str,
    output_prefix: &str,
    properties: &[(String, String)],
) -> String {
    let properties: String = properties
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    let properties = if properties.is_empty() {
        String::new()
    } else {
        format!("  properties:\n{properties}")
    };
    format!(
        r#"
service:
  group_id: {group}
  http_listen: 127.0.0.1:{http_port}
kafka:
  bootstrap_servers: "{bootstrap}"
{properties}outputs:
  breaches_topic: {output_prefix}.breaches
  lag_topic: {output_prefix}.lag
  backlog_topic: {output_prefix}.backlog
  dead_letter_topic: {output_prefix}.dlq
  incidents_topic: {output_prefix}.incidents
streams:
  - name: orders
    topic: {created_topic}
    format: json
    fields:
      correlation_id: $.order_ref
      event_time: $.created_at
      event_type: $.event
      dimensions:
        channel: $.channel
  - name: odoo_outbox
    topic: {imported_topic}
    format: json
    erp_time: true
    fields:
      correlation_id: $.correlation_id
      event_time: $.write_date
      event_type: $.event
workflows:
  - name: {WORKFLOW}
    stages:
      - {{ name: created, stream: orders, event_type: order.created }}
      - {{ name: imported, stream: odoo_outbox, event_type: sale.order.imported }}
    sla: {{ warn: {WARN_MS}ms, critical: {CRITICAL_MS}ms }}
    window: {WINDOW_MS}ms
    dimensions: [channel]
"#
    )
}
