//! Ingest: synclag's consumer group over every configured topic.
//!
//! At-least-once: auto-commit and auto offset store are off; synclag commits, per
//! partition, the lowest of (a) the next offset to read, (b) the oldest record a
//! still-pending correlation depends on, and (c) the oldest record younger than the
//! longest workflow window. (b) alone is not enough when a correlation spans
//! partitions: a finished correlation whose start is re-read after a restart but whose
//! end is not would look pending again and be falsely breached. With (c), whenever a
//! start is re-read its later stages are re-read too, so a restart replays the same
//! outcomes (breaches carry the same `breach_id`; completions are counted again, the
//! usual at-least-once duplicate). Offsets are committed periodically, on partition
//! revoke (synchronously, inside the rebalance callback) and on shutdown.

pub mod commit;
pub mod ends;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub mod health;
pub mod membership;

/// (topic, partition).
pub type Tp = (String, i32);

/// Where each input partition stands, as librdkafka's statistics report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub lo_offset: i64,
    pub hi_offset: i64,
    pub committed_offset: i64,
    /// librdkafka's fetch position (ahead of what the application has been handed).
    pub fetch_offset: i64,
    /// Records fetched for this partition and queued locally, not yet handed over.
    pub queued: i64,
}

/// Shared between the consumer's callbacks (librdkafka's thread) and the pipeline task.
#[derive(Debug, Default)]
pub struct Shared {
    /// Offsets that are safe to commit, published by the pipeline after each batch.
    pub committable: Mutex<HashMap<Tp, i64>>,
    /// Latest statistics per partition.
    pub stats: Mutex<HashMap<Tp, PartitionStats>>,
    /// Rebalance events for the pipeline: (partition, assigned?).
    pub changes: Mutex<Vec<(Tp, bool)>>,
    pub assigned: AtomicBool,
    /// Offsets are committed only inside output transactions (`store.exactly_once`): the
    /// consumer never commits on its own, not even for revoked partitions — a commit
    /// outside the transaction could move past state that never committed.
    pub offsets_in_transactions: bool,
    /// Kafka reachability and input topic presence (fed by the callbacks below and the
    /// metadata probe, read by `/readyz`).
    pub health: health::InputHealth,
}

/// Consumer context: commits on revoke (at least once only), collects statistics and
/// assignment changes.
pub struct IngestContext {
    pub shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        self.shared.health.on_stats(&statistics);
        let mut stats = lock(&self.shared.stats);
        let mut fetched = 0;
        for (topic, t) in statistics.topics {
            for (p, part) in t.partitions {
                if p < 0 {
                    continue; // the internal "unassigned" partition
                }
                fetched += part.rxmsgs;
                stats.insert(
                    (topic.clone(), p),
                    PartitionStats {
                        lo_offset: part.lo_offset,
                        hi_offset: part.hi_offset,
                        committed_offset: part.committed_offset,
                        fetch_offset: part.next_offset,
                        queued: part.fetchq_cnt,
                    },
                );
            }
        }
        metrics::gauge!(crate::telemetry::names::INPUT_FETCHED_RECORDS).set(fetched as f64);
    }

    /// Feeds the health view only: librdkafka hands the same error to the consumer's
    /// `recv()` as well, where the pipeline logs it.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.shared.health.on_client_error_because(&error, reason);
        tracing::debug!(error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Partitions *lost* (the session timed out, e.g. in a broker outage) may already
            // be someone else's: committing with the stale membership is refused, and a
            // static member is then fenced for good. Only a clean revoke commits.
            let committable = if self.shared.offsets_in_transactions || consumer.assignment_lost() {
                Default::default()
            } else {
                lock(&self.shared.committable).clone()
            };
            let mut out = TopicPartitionList::new();
            for e in tpl.elements() {
                if let Some(off) = committable.get(&(e.topic().to_string(), e.partition())) {
                    let _ =
                        out.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*off));
                }
            }
            if out.count() > 0 {
                match consumer.commit(&out, rdkafka::consumer::CommitMode::Sync) {
                    Ok(()) => tracing::info!(
                        partitions = out.count(),
                        "committed offsets of revoked partitions"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not commit offsets of revoked partitions; they will be re-read")
                    }
                }
            }
            let mut changes = lock(&self.shared.changes);
            for e in tpl.elements() {
                changes.push(((e.topic().to_string(), e.partition()), false));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut changes = lock(&self.shared.changes);
                for e in tpl.elements() {
                    changes.push(((e.topic().to_string(), e.partition()), true));
                }
                self.shared
                    .assigned
                    .store(tpl.count() > 0, Ordering::Relaxed);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => self.shared.assigned.store(false, Ordering::Relaxed),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Records are grouped by record time in buckets of this size for the retention cut.
const RETAIN_BUCKET_MS: i64 = 10_000;

/// Per input partition: the next offset to read, the first offset of each recent time
/// bucket (for the retention cut), and a dense id for the engine.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Looked up per record by a borrowed topic ([`TpRef`]): no `String` per record.
    ids: hashbrown::HashMap<Tp, u32>,
    tps: Vec<Tp>,
    next: HashMap<u32, i64>,
    retain: HashMap<u32, std::collections::VecDeque<(i64, i64)>>,
}

/// A [`Tp`] by reference: hashes and compares like the owned pair.
#[derive(Hash)]
struct TpRef<'a>(&'a str, i32);

impl hashbrown::Equivalent<Tp> for TpRef<'_> {
    fn equivalent(&self, key: &Tp) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl OffsetTracker {
    /// The dense id of a partition (assigned on first sight, stable for the process).
    pub fn id(&mut self, topic: &str, partition: i32) -> u32 {
        if let Some(id) = self.ids.get(&TpRef(topic, partition)) {
            return *id;
        }
        let id = u32::try_from(self.tps.len()).unwrap_or(u32::MAX);
        self.ids.insert((topic.to_string(), partition), id);
        self.tps.push((topic.to_string(), partition));
        id
    }

    pub fn lookup(&self, tp: &Tp) -> Option<u32> {
        self.ids.get(tp).copied()
    }

    pub fn tp(&self, id: u32) -> Option<&Tp> {
        self.tps.get(id as usize)
    }

    /// Marks `offset` (record time `ts_ms`) as fully processed.
    pub fn processed(&mut self, id: u32, offset: i64, ts_ms: Option<i64>) {
        let e = self.next.entry(id).or_insert(offset + 1);
        *e = (*e).max(offset + 1);
        if let Some(ts) = ts_ms {
            let bucket = ts.div_euclid(RETAIN_BUCKET_MS);
            let q = self.retain.entry(id).or_default();
            match q.back() {
                Some((b, _)) if *b >= bucket => {}
                _ => q.push_back((bucket, offset)),
            }
        }
    }

    pub fn next_offset(&self, id: u32) -> Option<i64> {
        self.next.get(&id).copied()
    }

    /// Forgets the read position of a revoked partition (it may come back elsewhere).
    pub fn revoke(&mut self, id: u32) {
        self.next.remove(&id);
        self.retain.remove(&id);
    }

    /// Committable offset per partition: never past the oldest record a pending
    /// correlation depends on, nor past the first record with time ≥ `cut_ms`.
    pub fn committable(
        &mut self,
        min_pinned: impl Fn(u32) -> Option<i64>,
        cut_ms: i64,
    ) -> HashMap<Tp, i64> {
        let cut_bucket = cut_ms.div_euclid(RETAIN_BUCKET_MS);
        let mut out = HashMap::new();
        for (id, next) in &self.next {
            let Some(tp) = self.tps.get(*id as usize) else {
                continue;
            };
            let mut safe = min_pinned(*id).map_or(*next, |p| p.min(*next));
            if let Some(q) = self.retain.get_mut(id) {
                // Buckets wholly older than the cut no longer hold the commit back.
                while q.len() > 1 && q.get(1).is_some_and(|(b, _)| *b <= cut_bucket) {
                    q.pop_front();
                }
                if let Some((b, first)) = q.front() {
                    if *b >= cut_bucket - 1 {
                        safe = safe.min(*first);
                    }
                }
            }
            out.insert(tp.clone(), safe);
        }
        out
    }
}

/// The last known (low, high) watermarks of a partition from the consumer's own fetch
/// responses — no broker request, updated with every fetched batch, so "caught up" is
/// known within a fetch cycle instead of a statistics interval.
pub fn cached_watermarks(
    client: &rdkafka::client::Client<IngestContext>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `client` keeps the handle alive for the call; librdkafka only reads its
    // cache and writes the two out-parameters, which live on this stack frame.
    let err = unsafe {
        rdkafka_sys::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committable_never_passes_a_pinned_record() {
        let mut t = OffsetTracker::default();
        let a = t.id("orders", 0);
        let b = t.id("orders", 1);
        assert_eq!(t.id("orders", 0), a);
        for o in 0..10 {
            t.processed(a, o, Some(o * 1_000));
        }
        t.processed(b, 4, Some(0));
        let c = t.committable(|id| if id == a { Some(3) } else { None }, 1_000_000);
        assert_eq!(c.get(&("orders".to_string(), 0)), Some(&3));
        assert_eq!(c.get(&("orders".to_string(), 1)), Some(&5));
        t.revoke(b);
        assert!(!t
            .committable(|_| None, 1_000_000)
            .contains_key(&("orders".to_string(), 1)));
    }

    #[test]
    fn commit_never_passes_records_younger_than_the_cut() {
        let mut t = OffsetTracker::default();
        let a = t.id("orders", 0);
        // Offsets 0..30 with record times 0 s, 1 s, ... 29 s.
        for o in 0..30 {
            t.processed(a, o, Some(o * 1_000));
        }
        let tp = ("orders".to_string(), 0);
        // Cut at 25 s: records younger than the cut must stay re-readable.
        let safe = t.committable(|_| None, 25_000)[&tp];
        assert!(
            safe <= 20,
            "offset {safe} passes records younger than the cut"
        );
        assert!(safe >= 10, "offset {safe} holds back more than two buckets");
        // Everything older than the cut can be committed once the cut moves on.
        assert_eq!(t.committable(|_| None, 1_000_000)[&tp], 30);
        // A pending correlation still pins below the cut.
        assert_eq!(t.committable(|_| Some(2), 1_000_000)[&tp], 2);
    }
}
