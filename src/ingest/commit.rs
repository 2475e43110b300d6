//! Offsets follow acknowledged outputs.
//!
//! The offset tracker says which input offsets are fully *processed* (never past a record
//! a pending correlation depends on, see the module above). That is not yet safe to
//! commit: processing may have raised outputs — a dead letter, a `never_arrived` that
//! unpinned its start record, a completion waiting for the clock before it becomes an
//! event — that Kafka has not acknowledged. A crash then would lose them: the restart
//! reads past the records that caused them.
//!
//! So commits go through a gate. Every so often the pipeline offers a snapshot of
//! processed offsets, numbered by a generation. Outcomes the engine raised before that
//! snapshot and still held back (waiting for the clock) carry a generation ≤ it. The
//! snapshot becomes committable once (1) no such held-back outcome is left, and then
//! (2) every output submitted up to that moment has been acknowledged.

use super::Tp;
use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
struct Snapshot {
    generation: u64,
    offsets: HashMap<Tp, i64>,
    /// The output sequence number that must be acknowledged, once (1) holds.
    barrier: Option<u64>,
}

/// Holds offset snapshots until the outputs they imply are acknowledged.
#[derive(Debug, Default)]
pub struct CommitGate {
    snapshots: VecDeque<Snapshot>,
    generation: u64,
}

/// Snapshots waiting at once; beyond it the oldest are merged away (the newest one
/// that passes the gate is the one committed anyway).
const MAX_SNAPSHOTS: usize = 256;

impl CommitGate {
    /// The generation an outcome raised now belongs to: it must be emitted before the
    /// next snapshot can pass.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Offers the processed offsets as of now.
    pub fn offer(&mut self, offsets: HashMap<Tp, i64>) {
        self.snapshots.push_back(Snapshot {
            generation: self.generation,
            offsets,
            barrier: None,
        });
        self.generation += 1;
        while self.snapshots.len() > MAX_SNAPSHOTS {
            // Dropping the oldest only delays commits; it never commits too far.
            self.snapshots.pop_front();
        }
    }

    /// A partition was revoked: its offsets are no longer ours to commit.
    pub fn revoke(&mut self, tp: &Tp) {
        for s in &mut self.snapshots {
            s.offsets.remove(tp);
        }
    }

    /// The newest snapshot that may be committed now, if any (older ones are dropped).
    /// `oldest_held` is the generation of the oldest outcome still held back (none:
    /// `None`), `submitted` the last output sequence number handed to the emitter,
    /// `acked` the acknowledged prefix.
    pub fn ready(
        &mut self,
        oldest_held: Option<u64>,
        submitted: u64,
        acked: u64,
    ) -> Option<HashMap<Tp, i64>> {
        for s in &mut self.snapshots {
            if s.barrier.is_none() && oldest_held.is_none_or(|g| g > s.generation) {
                s.barrier = Some(submitted);
            }
        }
        let mut passed = None;
        while let Some(front) = self.snapshots.front() {
            match front.barrier {
                Some(b) if b <= acked => passed = self.snapshots.pop_front(),
                _ => break,
            }
        }
        passed.map(|s| s.offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(o: i64) -> HashMap<Tp, i64> {
        HashMap::from([(("orders".to_string(), 0), o)])
    }

    #[test]
    fn waits_for_outputs_submitted_before_the_snapshot() {
        let mut g = CommitGate::default();
        g.offer(offsets(10));
        // Outputs 1..=3 were submitted; only 2 acknowledged so far.
        assert_eq!(g.ready(None, 3, 2), None);
        assert_eq!(g.ready(None, 5, 3), Some(offsets(10)));
        assert_eq!(g.ready(None, 5, 5), None, "nothing new offered");
    }

    #[test]
    fn held_back_outcomes_keep_the_snapshot_closed_until_emitted_and_acked() {
        let mut g = CommitGate::default();
        let outcome_generation = g.generation(); // an outcome held back, raised now
        g.offer(offsets(10));
        g.offer(offsets(20));
        assert_eq!(g.ready(Some(outcome_generation), 0, 0), None);
        // The outcome became output 1; it is not acknowledged yet.
        assert_eq!(g.ready(None, 1, 0), None);
        assert_eq!(
            g.ready(None, 1, 1),
            Some(offsets(20)),
            "newest passing wins"
        );
    }

    #[test]
    fn an_outcome_raised_after_a_snapshot_does_not_hold_it() {
        let mut g = CommitGate::default();
        g.offer(offsets(10));
        let later = g.generation();
        assert_eq!(g.ready(Some(later), 0, 0), Some(offsets(10)));
    }

    #[test]
    fn revoked_partitions_are_not_committed() {
        let mut g = CommitGate::default();
        g.offer(offsets(10));
        g.revoke(&("orders".to_string(), 0));
        assert_eq!(g.ready(None, 0, 0), Some(HashMap::new()));
    }
}
