//! Outcomes held back until the engine clock passes their time (see `outcomes`).
//!
//! What a release hands out is exactly what a scan of the whole queue in engine order
//! would: every item that is due and has nothing earlier of its correlation still held,
//! in the order the engine raised them. A backlog can hold a hundred thousand items, and
//! the clock moves every tick, so the queue is not scanned: each correlation with
//! something held has one entry in a heap keyed by the time of its first item, a release
//! pops only the correlations whose first item is due, takes the due run of each, and
//! sorts what it took by engine order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// One held item.
pub(super) struct Held<T> {
    pub release_at: i64,
    /// The commit-gate generation it was raised in (see `ingest::commit`).
    pub generation: u64,
    pub item: T,
}

pub(super) struct HeldQueue<T> {
    /// Per correlation (hashed key): its held items in engine order, numbered.
    queues: HashMap<u64, VecDeque<(u64, Held<T>)>>,
    /// One entry per key in `queues`: (release time, number) of its first item.
    heads: BinaryHeap<Reverse<(i64, u64, u64)>>,
    /// Held items per generation.
    generations: BTreeMap<u64, usize>,
    next: u64,
    len: usize,
}

impl<T> Default for HeldQueue<T> {
    fn default() -> Self {
        HeldQueue {
            queues: HashMap::new(),
            heads: BinaryHeap::new(),
            generations: BTreeMap::new(),
            next: 0,
            len: 0,
        }
    }
}

impl<T> HeldQueue<T> {
    /// Holds `held` behind everything already held for `key`.
    pub fn push(&mut self, key: u64, held: Held<T>) {
        let n = self.next;
        self.next += 1;
        *self.generations.entry(held.generation).or_default() += 1;
        let queue = self.queues.entry(key).or_default();
        if queue.is_empty() {
            self.heads.push(Reverse((held.release_at, n, key)));
        }
        queue.push_back((n, held));
        self.len += 1;
    }

    /// Removes and returns, in engine order, every item due at `now` (every item for
    /// `None`, at shutdown) with nothing earlier of its key left held.
    pub fn take_due(&mut self, now: Option<i64>) -> Vec<Held<T>> {
        let mut taken: Vec<(u64, Held<T>)> = Vec::new();
        while let Some(&Reverse((at, _, key))) = self.heads.peek() {
            if now.is_some_and(|now| at > now) {
                break;
            }
            self.heads.pop();
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            while let Some((_, first)) = queue.front() {
                if now.is_some_and(|now| first.release_at > now) {
                    break;
                }
                if let Some(entry) = queue.pop_front() {
                    taken.push(entry);
                }
            }
            match queue.front() {
                Some((n, first)) => self.heads.push(Reverse((first.release_at, *n, key))),
                None => {
                    self.queues.remove(&key);
                }
            }
        }
        taken.sort_unstable_by_key(|(n, _)| *n);
        self.len -= taken.len();
        for (_, held) in &taken {
            if let Some(count) = self.generations.get_mut(&held.generation) {
                *count -= 1;
                if *count == 0 {
                    self.generations.remove(&held.generation);
                }
            }
        }
        taken.into_iter().map(|(_, held)| held).collect()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest generation an item still held was raised in.
    pub fn oldest_generation(&self) -> Option<u64> {
        self.generations.keys().next().copied()
    }

    /// Every held item, in no particular order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Held<T>> {
        self.queues.values().flat_map(|q| q.iter().map(|(_, h)| h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn held(release_at: i64, generation: u64, item: &'static str) -> Held<&'static str> {
        Held {
            release_at,
            generation,
            item,
        }
    }

    fn take(q: &mut HeldQueue<&'static str>, now: Option<i64>) -> Vec<&'static str> {
        q.take_due(now).into_iter().map(|h| h.item).collect()
    }

    #[test]
    fn releases_what_is_due_in_engine_order_and_waits_behind_its_own_key() {
        let mut q = HeldQueue::default();
        q.push(1, held(30, 0, "a-breach"));
        q.push(2, held(10, 0, "b-done"));
        // Due earlier than a-breach, but raised after it: waits for it.
        q.push(1, held(20, 1, "a-done"));
        q.push(3, held(25, 1, "c-done"));
        q.push(4, held(5, 1, "d-done"));
        assert_eq!(q.len(), 5);
        assert_eq!(take(&mut q, Some(4)), Vec::<&str>::new());
        // Engine order, not time order: b (10) was raised before d (5).
        assert_eq!(take(&mut q, Some(25)), ["b-done", "c-done", "d-done"]);
        assert_eq!(q.oldest_generation(), Some(0));
        assert_eq!(take(&mut q, Some(30)), ["a-breach", "a-done"]);
        assert!(q.is_empty());
        assert_eq!(q.oldest_generation(), None);
    }

    #[test]
    fn everything_goes_at_shutdown_and_generations_follow_what_is_held() {
        let mut q = HeldQueue::default();
        q.push(7, held(i64::MAX, 3, "far"));
        q.push(8, held(100, 4, "near"));
        assert_eq!(q.oldest_generation(), Some(3));
        assert_eq!(take(&mut q, Some(100)), ["near"]);
        assert_eq!(q.iter().count(), 1);
        assert_eq!(take(&mut q, None), ["far"]);
        assert_eq!(q.len(), 0);
    }

    /// The scan this queue replaces: in engine order, an item goes when it is due and no
    /// earlier item of its key stays.
    fn scan(queue: &mut Vec<(u64, i64, u32)>, now: Option<i64>) -> Vec<u32> {
        let mut blocked = HashSet::new();
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for (key, at, id) in queue.drain(..) {
            let due = now.is_none_or(|now| at <= now);
            if due && !blocked.contains(&key) {
                out.push(id);
            } else {
                blocked.insert(key);
                keep.push((key, at, id));
            }
        }
        *queue = keep;
        out
    }

    #[test]
    fn hands_out_exactly_what_a_scan_of_the_whole_queue_would_in_the_same_order() {
        // A small deterministic generator: keys collide often, times go back and forth.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _round in 0..200 {
            let mut q: HeldQueue<u32> = HeldQueue::default();
            let mut reference: Vec<(u64, i64, u32)> = Vec::new();
            let mut now = 0i64;
            let mut id = 0u32;
            for _step in 0..60 {
                for _ in 0..next(6) {
                    let key = next(8);
                    let at = now + next(40) as i64 - 10;
                    q.push(
                        key,
                        Held {
                            release_at: at,
                            generation: u64::from(id / 7),
                            item: id,
                        },
                    );
                    reference.push((key, at, id));
                    id += 1;
                }
                now += next(12) as i64;
                let got: Vec<u32> = q.take_due(Some(now)).into_iter().map(|h| h.item).collect();
                assert_eq!(got, scan(&mut reference, Some(now)), "at {now}");
                assert_eq!(q.len(), reference.len());
                let oldest = reference.iter().map(|(_, _, id)| u64::from(id / 7)).min();
                assert_eq!(q.oldest_generation(), oldest);
            }
            let got: Vec<u32> = q.take_due(None).into_iter().map(|h| h.item).collect();
            assert_eq!(got, scan(&mut reference, None));
            assert!(q.is_empty());
        }
    }
}
