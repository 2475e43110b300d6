//! Repartitioning by correlation id: the records an instance's reader hands to the
//! instance that owns a correlation.
//!
//! Inputs are keyed however their producers chose (order id, tracking number, aggregate
//! id), so the stages of one correlation arrive on different partitions of different
//! topics. To let several instances share the work, each correlation needs exactly one
//! owner. The reader side decodes and classifies its input partitions and writes compact
//! records to the internal *stages* topic (`<service.group_id>.stages`), keyed like the
//! changelog; the engine side reads that topic, so a key's stages, its changelog records
//! and its timers all live on one partition number and move together:
//!
//! ```text
//!  input partitions ─> reader: decode, classify ─> <group_id>.stages[k] ─> engine k ─> outputs
//!                                                        │                  │
//!                       progress of every input ─────────┘ (to every k)     └─> <group_id>.state[k]
//! ```
//!
//! [`partition_of`] places a key; it is the partitioner librdkafka uses for keyed records
//! by default (CRC-32 of the key modulo the partition count), so changelogs written
//! before synclag placed its records itself keep every key where it was.
//!
//! The records (see [`codec`]):
//! - a **stage** per classified stage event, keyed `(workflow, correlation id)`;
//! - a **signal** per cause-evidence record (carrier throttling, …), copied to every
//!   partition: any correlation's breach may cite it;
//! - a **progress** record per input partition, copied to every partition: how far the
//!   reader has read that input and where its end was. An engine partition's clock can
//!   only move as far as every input has been read into it; an input that routes nothing
//!   to a partition for a while still moves that partition's clock through these.

pub mod codec;

/// The partition of `key` among `partitions`: CRC-32 (IEEE) of the key modulo the
/// partition count, as librdkafka's default partitioner places a keyed record. Stable
/// across runs and versions: a changelog and a stages topic with the same partition count
/// place a key on the same partition number.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    let p = crc32fast::hash(key) % n;
    i32::try_from(p).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_and_stay_put() {
        // Known CRC-32 (IEEE) values: the partition does not depend on the run.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_of(b"123456789", 6), (0xCBF4_3926u32 % 6) as i32);
        let mut counts = [0u32; 6];
        for i in 0..6_000 {
            let key =
                crate::correlate::durable::encode_key("order_import", format!("SO-{i}").as_bytes());
            let p = partition_of(&key, 6);
            assert!((0..6).contains(&p));
            counts[p as usize] += 1;
        }
        // Roughly even: every partition gets between half and twice its share.
        assert!(
            counts.iter().all(|&c| (500..2_000).contains(&c)),
            "{counts:?}"
        );
        // Degenerate counts never divide by zero.
        assert_eq!(partition_of(b"x", 0), 0);
        assert_eq!(partition_of(b"x", -3), 0);
        assert_eq!(partition_of(b"", 1), 0);
    }
}
