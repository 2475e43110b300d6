//! The dominant segments of recent late completions: evidence for a pending breach whose
//! own measured segments explain little (the segment that made this workflow's recent
//! completions late is the likely one now).
//!
//! Asked for most pending breach events, about the completions in a time range, so each
//! workflow's completions are kept in time order with running counts per segment: a
//! range is counted with two binary searches, whatever the number kept. Beyond the bound
//! the first written is forgotten (so completions with times far ahead cannot take the
//! memory for good). Completions come nearly in time order, so an insertion or a removal
//! is mostly at an end and moves few entries.

use crate::config::LagSegment;
use std::collections::VecDeque;

/// Segments in the order of their names: a tie goes to the last of the largest.
const BY_NAME: [LagSegment; 3] = [
    LagSegment::MiddlewareErp,
    LagSegment::OutboxCdc,
    LagSegment::PartnerIngestion,
];

fn slot(segment: LagSegment) -> usize {
    match segment {
        LagSegment::MiddlewareErp => 0,
        LagSegment::OutboxCdc => 1,
        LagSegment::PartnerIngestion => 2,
    }
}

/// A remembered completion: its time, the order it came in, and the completions of each
/// segment counted up to and including it since the workflow's first one.
#[derive(Clone, Copy)]
struct Entry {
    at_ms: i64,
    seq: u64,
    slot: usize,
    running: [u64; 3],
}

/// One workflow's remembered completions, earliest first.
#[derive(Default)]
struct Column {
    entries: VecDeque<Entry>,
    /// The running counts of the last completion forgotten.
    forgotten: [u64; 3],
}

impl Column {
    fn running_before(&self, i: usize) -> [u64; 3] {
        match i.checked_sub(1).and_then(|j| self.entries.get(j)) {
            Some(e) => e.running,
            None => self.forgotten,
        }
    }
}

/// Late completions of every workflow; beyond a bound the first written is forgotten.
pub struct LateSegments {
    kept: usize,
    /// (workflow, time, order) of every remembered completion, first written first.
    written: VecDeque<(usize, i64, u64)>,
    next_seq: u64,
    columns: Vec<Column>,
}

/// How the segments of a workflow's late completions within a time range split.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The segment with the most completions (the last by name among equals).
    pub segment: LagSegment,
    /// Completions it dominated.
    pub dominated: usize,
    /// Completions in the range.
    pub total: usize,
}

impl Split {
    /// The split of completions counted per [`slot`]; `None` when there are none.
    fn of(counts: [usize; 3]) -> Option<Split> {
        let total = counts.iter().sum();
        let (segment, dominated) = BY_NAME
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .max_by_key(|(_, n)| *n)?;
        Some(Split {
            segment,
            dominated,
            total,
        })
    }
}

impl LateSegments {
    pub fn new(kept: usize) -> LateSegments {
        LateSegments {
            kept,
            written: VecDeque::new(),
            next_seq: 0,
            columns: Vec::new(),
        }
    }

    /// Remembers a late completion of `workflow` at `at_ms` dominated by `segment`.
    pub fn push(&mut self, workflow: usize, at_ms: i64, segment: LagSegment) {
        if self.kept == 0 {
            return;
        }
        if self.columns.len() <= workflow {
            self.columns.resize_with(workflow + 1, Column::default);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let s = slot(segment);
        let column = &mut self.columns[workflow];
        // After every entry at or before its time: usually the end.
        let i = column.entries.partition_point(|e| e.at_ms <= at_ms);
        let mut running = column.running_before(i);
        running[s] += 1;
        column.entries.insert(
            i,
            Entry {
                at_ms,
                seq,
                slot: s,
                running,
            },
        );
        for later in column.entries.range_mut(i + 1..) {
            later.running[s] += 1;
        }
        self.written.push_back((workflow, at_ms, seq));
        while self.written.len() > self.kept {
            self.forget_first_written();
        }
    }

    /// Forgets the completion written first, of all workflows.
    fn forget_first_written(&mut self) {
        let Some((w, at_ms, seq)) = self.written.pop_front() else {
            return;
        };
        let Some(column) = self.columns.get_mut(w) else {
            return;
        };
        let i = column
            .entries
            .partition_point(|e| (e.at_ms, e.seq) < (at_ms, seq));
        if column.entries.get(i).map(|e| e.seq) != Some(seq) {
            return;
        }
        let Some(gone) = column.entries.remove(i) else {
            return;
        };
        if i == 0 {
            column.forgotten = gone.running;
            return;
        }
        // From the middle: the later running counts no longer include it.
        for later in column.entries.range_mut(i..) {
            later.running[gone.slot] -= 1;
        }
    }

    /// The split of `workflow`'s remembered completions at `since_ms..=until_ms`; `None`
    /// when there are none.
    pub fn split(&self, workflow: usize, since_ms: i64, until_ms: i64) -> Option<Split> {
        let column = self.columns.get(workflow)?;
        let lo = column.entries.partition_point(|e| e.at_ms < since_ms);
        let hi = column.entries.partition_point(|e| e.at_ms <= until_ms);
        if hi <= lo {
            return None;
        }
        let (upto, before) = (column.running_before(hi), column.running_before(lo));
        Split::of(std::array::from_fn(|k| {
            usize::try_from(upto[k].saturating_sub(before[k])).unwrap_or(usize::MAX)
        }))
    }

    /// Completions remembered, over all workflows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.written.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The count as first written: one list of every workflow's completions, filtered.
    fn model(
        all: &[(usize, i64, LagSegment)],
        workflow: usize,
        since: i64,
        until: i64,
    ) -> Option<Split> {
        let mut counts = [0usize; 3];
        for (_, _, seg) in all
            .iter()
            .filter(|(w, t, _)| *w == workflow && *t >= since && *t <= until)
        {
            counts[slot(*seg)] += 1;
        }
        Split::of(counts)
    }

    fn segment(i: u8) -> LagSegment {
        match i % 3 {
            0 => LagSegment::PartnerIngestion,
            1 => LagSegment::MiddlewareErp,
            _ => LagSegment::OutboxCdc,
        }
    }

    #[test]
    fn the_first_written_completion_of_any_workflow_is_forgotten_first() {
        let mut late = LateSegments::new(3);
        // Far ahead in time, but written first: the first to go.
        late.push(0, 1_000_000, LagSegment::OutboxCdc);
        late.push(1, 20, LagSegment::PartnerIngestion);
        late.push(0, 30, LagSegment::MiddlewareErp);
        late.push(1, 40, LagSegment::PartnerIngestion);
        assert_eq!(late.len(), 3);
        // Workflow 0 lost its first completion, workflow 1 kept both.
        let w0 = late.split(0, i64::MIN, i64::MAX).expect("workflow 0");
        assert_eq!(
            (w0.segment, w0.dominated, w0.total),
            (LagSegment::MiddlewareErp, 1, 1)
        );
        let w1 = late.split(1, i64::MIN, i64::MAX).expect("workflow 1");
        assert_eq!((w1.dominated, w1.total), (2, 2));
        assert_eq!(late.split(2, i64::MIN, i64::MAX), None);
        assert_eq!(late.split(1, 41, i64::MAX), None);
    }

    #[test]
    fn nothing_is_kept_without_room() {
        let mut late = LateSegments::new(0);
        late.push(0, 10, LagSegment::OutboxCdc);
        assert_eq!(late.len(), 0);
        assert_eq!(late.split(0, i64::MIN, i64::MAX), None);
    }

    proptest! {
        #[test]
        fn splits_as_one_filtered_list_does(
            kept in 0usize..40,
            pushes in prop::collection::vec((0usize..3, -50i64..50, 0u8..3), 0..120),
            queries in prop::collection::vec((0usize..4, -60i64..60, 0i64..80), 1..20),
        ) {
            let mut late = LateSegments::new(kept);
            let mut all = VecDeque::new();
            for (w, t, s) in pushes {
                late.push(w, t, segment(s));
                if kept > 0 {
                    all.push_back((w, t, segment(s)));
                    while all.len() > kept {
                        all.pop_front();
                    }
                }
                let all: Vec<_> = all.iter().copied().collect();
                for (qw, since, width) in &queries {
                    prop_assert_eq!(
                        late.split(*qw, *since, since + width),
                        model(&all, *qw, *since, since + width)
                    );
                }
                prop_assert_eq!(late.len(), all.len());
            }
        }
    }
}
