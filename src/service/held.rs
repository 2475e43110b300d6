//! Outcomes held back until the engine clock passes their time (see `outcomes`).
//!
//! Released in time order and, per correlation, in the order the engine raised them: an
//! outcome waits while an earlier one of its correlation is still held. A backlog can hold
//! a hundred thousand of them, so a release looks only at what is due — each correlation
//! with something held has one entry in a heap, keyed by the time of its first outcome —
//! instead of scanning the whole queue.

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
    /// Per correlation (hashed key): its held items in the order they came, numbered.
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

    /// The next item due at `now` whose key has nothing earlier held (`None` for `now`:
    /// every item, at shutdown), removed from the queue.
    pub fn pop_due(&mut self, now: Option<i64>) -> Option<Held<T>> {
        let Reverse((at, _, key)) = *self.heads.peek()?;
        if now.is_some_and(|now| at > now) {
            return None;
        }
        self.heads.pop();
        let queue = self.queues.get_mut(&key)?;
        let (_, held) = queue.pop_front()?;
        match queue.front() {
            Some((n, next)) => self.heads.push(Reverse((next.release_at, *n, key))),
            None => {
                self.queues.remove(&key);
            }
        }
        self.len -= 1;
        if let Some(count) = self.generations.get_mut(&held.generation) {
            *count -= 1;
            if *count == 0 {
                self.generations.remove(&held.generation);
            }
        }
        Some(held)
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
    pub fn iter(&self) -> impl Iterator<Item = &Held<T>> {
        self.queues.values().flat_map(|q| q.iter().map(|(_, h)| h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(release_at: i64, generation: u64, item: &'static str) -> Held<&'static str> {
        Held {
            release_at,
            generation,
            item,
        }
    }

    fn drain(q: &mut HeldQueue<&'static str>, now: Option<i64>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop_due(now).map(|h| h.item)).collect()
    }

    #[test]
    fn releases_what_is_due_in_time_order_and_per_key_in_arrival_order() {
        let mut q = HeldQueue::default();
        q.push(1, held(30, 0, "a-breach"));
        q.push(2, held(10, 0, "b-done"));
        // Due earlier than a-breach, but raised after it: waits for it.
        q.push(1, held(20, 1, "a-done"));
        q.push(3, held(25, 1, "c-done"));
        assert_eq!(q.len(), 4);
        assert_eq!(drain(&mut q, Some(5)), Vec::<&str>::new());
        assert_eq!(drain(&mut q, Some(25)), ["b-done", "c-done"]);
        assert_eq!(q.oldest_generation(), Some(0));
        assert_eq!(drain(&mut q, Some(30)), ["a-breach", "a-done"]);
        assert!(q.is_empty());
        assert_eq!(q.oldest_generation(), None);
    }

    #[test]
    fn everything_goes_at_shutdown_and_generations_follow_what_is_held() {
        let mut q = HeldQueue::default();
        q.push(7, held(i64::MAX, 3, "far"));
        q.push(8, held(100, 4, "near"));
        assert_eq!(q.oldest_generation(), Some(3));
        assert_eq!(drain(&mut q, Some(100)), ["near"]);
        assert_eq!(q.iter().count(), 1);
        assert_eq!(drain(&mut q, None), ["far"]);
        assert_eq!(q.len(), 0);
    }
}
