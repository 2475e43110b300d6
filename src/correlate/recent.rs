//! Bounded memory of recently finished correlations.
//!
//! Without it, a stage arriving after `NeverArrived` would open a fresh correlation that
//! can never complete (and raise a second, false incident), and a record redelivered after
//! `Completed` would do the same. The memory is a FIFO ring: the oldest key is forgotten
//! when it is full, and every forgotten key is counted.

use std::collections::VecDeque;

use hashbrown::HashTable;

use super::outcome::Terminal;

pub(crate) struct RecentRec {
    pub hash: u64,
    pub workflow: u16,
    pub start_ms: i64,
    pub started: bool,
    pub variant: u8,
    pub combo: u32,
    pub seen: u16,
    pub terminal: Terminal,
}

pub(crate) struct Recent {
    cap: usize,
    ring: VecDeque<RecentRec>,
    /// Sequence number of `ring[0]`; the table stores sequence numbers so entries never
    /// move when the front is popped.
    base: u64,
    table: HashTable<u64>,
    pub forgotten: u64,
}

impl Recent {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            ring: VecDeque::new(),
            base: 0,
            table: HashTable::new(),
            forgotten: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn remember(&mut self, rec: RecentRec) {
        if self.cap == 0 {
            self.forgotten += 1;
            return;
        }
        if self.ring.len() >= self.cap {
            if let Some(old) = self.ring.pop_front() {
                let seq = self.base;
                if let Ok(e) = self.table.find_entry(old.hash, |&s| s == seq) {
                    e.remove();
                }
                self.base += 1;
                self.forgotten += 1;
            }
        }
        let seq = self.base + self.ring.len() as u64;
        let hash = rec.hash;
        self.ring.push_back(rec);
        let (ring, base) = (&self.ring, self.base);
        self.table.insert_unique(hash, seq, |&s| {
            ring.get((s - base) as usize).map_or(0, |r| r.hash)
        });
    }

    /// Position in `ring` of the record of `(hash, workflow)`.
    fn position(&self, hash: u64, workflow: u16) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let (ring, base) = (&self.ring, self.base);
        let seq = *self.table.find(hash, |&s| {
            ring.get((s - base) as usize)
                .is_some_and(|r| r.hash == hash && r.workflow == workflow)
        })?;
        Some((seq - self.base) as usize)
    }

    pub(crate) fn get(&self, hash: u64, workflow: u16) -> Option<&RecentRec> {
        self.ring.get(self.position(hash, workflow)?)
    }

    pub(crate) fn get_mut(&mut self, hash: u64, workflow: u16) -> Option<&mut RecentRec> {
        let at = self.position(hash, workflow)?;
        self.ring.get_mut(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hash: u64) -> RecentRec {
        RecentRec {
            hash,
            workflow: 0,
            start_ms: 0,
            started: true,
            variant: 0,
            combo: 0,
            seen: 1,
            terminal: Terminal::NeverArrived,
        }
    }

    #[test]
    fn oldest_keys_are_forgotten_and_counted() {
        let mut r = Recent::new(2);
        r.remember(rec(7));
        r.remember(rec(8));
        assert!(r.get_mut(7, 0).is_some());
        r.remember(rec(9));
        assert!(r.get_mut(7, 0).is_none());
        assert!(r.get_mut(8, 0).is_some());
        assert!(r.get_mut(9, 0).is_some());
        assert!(r.get_mut(9, 1).is_none());
        assert_eq!(r.forgotten, 1);
        assert_eq!(r.len(), 2);
    }
}
