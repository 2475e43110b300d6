//! Offset pinning: which input records pending correlations still depend on.
//!
//! At-least-once ingest may only commit a partition up to the lowest offset a pending
//! correlation was built from; otherwise a restart would lose that record. Each seen stage
//! of a pending entry holds one reference on its `(partition, offset)`; terminal outcomes
//! drop them. A `BTreeMap` per partition makes pin, unpin and "lowest pinned" logarithmic.

use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct Pins {
    parts: Vec<BTreeMap<i64, u32>>,
}

impl Pins {
    pub(crate) fn pin(&mut self, partition: u32, offset: i64) {
        let p = partition as usize;
        if self.parts.len() <= p {
            self.parts.resize_with(p + 1, BTreeMap::new);
        }
        *self.parts[p].entry(offset).or_insert(0) += 1;
    }

    pub(crate) fn unpin(&mut self, partition: u32, offset: i64) {
        let Some(map) = self.parts.get_mut(partition as usize) else {
            return;
        };
        if let Some(n) = map.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                map.remove(&offset);
            }
        }
    }

    pub(crate) fn min(&self, partition: u32) -> Option<i64> {
        self.parts
            .get(partition as usize)
            .and_then(|m| m.keys().next().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_pinned_offset_follows_references() {
        let mut p = Pins::default();
        assert_eq!(p.min(3), None);
        p.pin(3, 10);
        p.pin(3, 7);
        p.pin(3, 7);
        assert_eq!(p.min(3), Some(7));
        p.unpin(3, 7);
        assert_eq!(p.min(3), Some(7));
        p.unpin(3, 7);
        assert_eq!(p.min(3), Some(10));
        p.unpin(3, 10);
        assert_eq!(p.min(3), None);
        // Unknown partitions and offsets are ignored.
        p.unpin(9, 1);
        assert_eq!(p.min(0), None);
    }
}
