//! The input clock: when may a timer fire? Pure (wall time and every observation are
//! passed in), so every rule below is unit-tested without Kafka.
//!
//! A pending correlation's deadline may be judged only once synclag has read everything
//! that could close it. Per input partition the clock knows three things:
//!
//! - **confirmed** — the latest wall time `W` such that the partition has been read up to
//!   an end offset asked for at `W` (the broker's last stable offset, so transaction
//!   markers and aborted records are already accounted for). Every record visible before
//!   `W` has been read: a deadline at or before `W` can be judged without a fixed grace.
//! - **record time** — the largest record time read so far. While a partition works
//!   through a backlog its records are the history of that time; the clock is then its
//!   event-time watermark, so a replay gives the same outcomes as live traffic.
//! - **progress** — when its read position last moved (or it was last confirmed).
//!
//! A partition contributes `max(confirmed, record time)`; the clock is the minimum over
//! contributing partitions, never ahead of wall time and never going back.
//!
//! **The clock never stops.** A partition that neither moves nor confirms for the stall
//! budget — a record waiting for the schema registry, a partition behind that delivers
//! nothing, a broker that does not answer — is *stalled*: it stops holding the clock
//! back, and the caller flags what may wait behind it. Without any contributing
//! partition the clock is the wall clock.
//!
//! **Reading in step.** While a backlog is read, a partition whose record time runs far
//! ahead of the clock only fills memory: every outcome it leads to waits for the slowest
//! partition. The clock names such partitions ([`InputClock::running_ahead`]) so the
//! reader can pause them until the clock has caught up ([`InputClock::caught_up`]); a
//! partition paused that way is not stalled. Record times count only up to wall time,
//! so a producer with a clock ahead, or a record from the far future, never holds a
//! partition paused.

use std::collections::VecDeque;

/// Why a partition does not hold the clock back any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StallReason {
    /// A record waits (e.g. for the schema registry); the partition is paused behind it.
    RecordWaiting,
    /// Behind its end offset, or unconfirmed, and not moving.
    NoProgress,
}

impl StallReason {
    /// Stable name for events, labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StallReason::RecordWaiting => "record_waiting",
            StallReason::NoProgress => "no_progress",
        }
    }
}

/// One stalled partition, as the clock last judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The caller's dense partition id.
    pub partition: u32,
    /// Why.
    pub reason: StallReason,
    /// Wall time since which it has not moved or confirmed.
    pub since_ms: i64,
}

/// What the clock says at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// The engine clock; `None` until there is anything to go by.
    pub now_ms: Option<i64>,
    /// Every contributing partition has been read to its latest known end.
    pub live: bool,
    /// Partitions over the stall budget (they no longer hold the clock back).
    pub stalled: Vec<Stall>,
}

#[derive(Debug, Clone, Default)]
struct Part {
    assigned: bool,
    /// Next offset to read (everything below has been fully handled).
    position: Option<i64>,
    max_record_ms: Option<i64>,
    /// Smallest record time read since it was assigned.
    min_record_ms: Option<i64>,
    /// End offsets asked for at a wall time and not reached yet, oldest first.
    probes: VecDeque<(i64, i64)>,
    confirmed_ms: Option<i64>,
    /// Wall time of the last movement (position or fetch position advanced, records
    /// queued, confirmed, assigned).
    progress_ms: i64,
    /// The client's fetch position, when known.
    fetched: Option<i64>,
    /// A record of this partition waits; the partition is paused behind it.
    waiting_since: Option<i64>,
    /// The reader paused it because it ran ahead of the clock (see
    /// [`InputClock::running_ahead`]).
    paced: bool,
}

impl Part {
    /// How far its record time runs ahead of the clock reading `now`, counting record
    /// times only up to `wall_ms` (a producer clock ahead must not make it look ahead).
    fn lead_ms(&self, now: i64, wall_ms: i64) -> Option<i64> {
        self.max_record_ms
            .map(|r| r.min(wall_ms).saturating_sub(now))
    }
}

/// What a reader knows of one of its partitions, to hand on to a clock elsewhere (the
/// engine side of a repartitioned pipeline, see `route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartView {
    /// Next offset to read.
    pub position: Option<i64>,
    /// Largest record time read.
    pub max_record_ms: Option<i64>,
    /// Latest wall time the partition was confirmed read to its end.
    pub confirmed_ms: Option<i64>,
    /// Wall time of its last movement.
    pub progress_ms: i64,
    /// Since when a record of it waits.
    pub waiting_since: Option<i64>,
}

/// Outstanding end-offset observations kept per partition: enough for several seconds of
/// probes; older ones are dropped (the newest is the one that matters).
const MAX_PROBES: usize = 64;

/// The clock over all input partitions (see the module docs).
#[derive(Debug, Clone)]
pub struct InputClock {
    parts: Vec<Part>,
    stall_budget_ms: i64,
    last: Option<i64>,
}

impl InputClock {
    /// A clock where a partition that neither moves nor confirms for `stall_budget_ms`
    /// stops holding the clock back.
    pub fn new(stall_budget_ms: i64) -> Self {
        Self {
            parts: Vec::new(),
            stall_budget_ms: stall_budget_ms.max(1),
            last: None,
        }
    }

    fn part(&mut self, partition: u32) -> &mut Part {
        let p = partition as usize;
        if self.parts.len() <= p {
            self.parts.resize_with(p + 1, Part::default);
        }
        &mut self.parts[p]
    }

    /// A partition was assigned at `wall_ms`: it holds the clock back until it confirms
    /// or delivers, for at most the stall budget.
    pub fn assign(&mut self, partition: u32, wall_ms: i64) {
        *self.part(partition) = Part {
            assigned: true,
            progress_ms: wall_ms,
            ..Part::default()
        };
    }

    /// A partition was revoked; it no longer takes part.
    pub fn revoke(&mut self, partition: u32) {
        if let Some(p) = self.parts.get_mut(partition as usize) {
            *p = Part::default();
        }
    }

    /// What is known of an assigned `partition` (see [`PartView`]).
    pub fn view(&self, partition: u32) -> Option<PartView> {
        self.parts
            .get(partition as usize)
            .filter(|p| p.assigned)
            .map(|p| PartView {
                position: p.position,
                max_record_ms: p.max_record_ms,
                confirmed_ms: p.confirmed_ms,
                progress_ms: p.progress_ms,
                waiting_since: p.waiting_since,
            })
    }

    /// The partition's reader, elsewhere, saw it move at `wall_ms` (records fetched and
    /// queued, paced, confirmed): it is not stalled as of then.
    pub fn progressed(&mut self, partition: u32, wall_ms: i64) {
        let p = self.part(partition);
        if p.assigned {
            p.progress_ms = p.progress_ms.max(wall_ms);
        }
    }

    /// Whether `partition` takes part.
    pub fn is_assigned(&self, partition: u32) -> bool {
        self.parts
            .get(partition as usize)
            .is_some_and(|p| p.assigned)
    }

    /// A record at `offset` with record time `record_ms` was fully handled at `wall_ms`.
    pub fn record(&mut self, partition: u32, offset: i64, record_ms: Option<i64>, wall_ms: i64) {
        let p = self.part(partition);
        if let Some(t) = record_ms {
            p.max_record_ms = Some(p.max_record_ms.map_or(t, |m| m.max(t)));
            p.min_record_ms = Some(p.min_record_ms.map_or(t, |m| m.min(t)));
        }
        Self::advance_position(p, offset.saturating_add(1), wall_ms);
    }

    /// The read position is at least `position` (e.g. the consumer moved past transaction
    /// markers, or the log starts there). Ignored while a record waits.
    pub fn position(&mut self, partition: u32, position: i64, wall_ms: i64) {
        let p = self.part(partition);
        if p.waiting_since.is_none() {
            Self::advance_position(p, position, wall_ms);
        }
    }

    fn advance_position(p: &mut Part, position: i64, wall_ms: i64) {
        if p.position.is_none_or(|old| position > old) {
            p.position = Some(position);
            p.progress_ms = wall_ms;
        }
    }

    /// The client's fetch position is `fetch_position` and `queued` records are fetched
    /// but not handed over yet: a partition whose records wait in the local queue behind
    /// other partitions' is slow to be *processed*, not stalled.
    pub fn fetched(&mut self, partition: u32, fetch_position: i64, queued: bool, wall_ms: i64) {
        let p = self.part(partition);
        if !p.assigned || p.waiting_since.is_some() {
            return;
        }
        if queued || p.fetched.is_some_and(|old| fetch_position > old) {
            p.progress_ms = p.progress_ms.max(wall_ms);
        }
        p.fetched = Some(
            p.fetched
                .map_or(fetch_position, |old| old.max(fetch_position)),
        );
    }

    /// The partition's end offset, asked for at `asked_at_ms` (wall time before the
    /// request was sent), is `end`.
    pub fn end_offset(&mut self, partition: u32, end: i64, asked_at_ms: i64) {
        let p = self.part(partition);
        if !p.assigned {
            return;
        }
        if p.probes.back().is_some_and(|(at, _)| *at > asked_at_ms) {
            return; // an answer older than one already queued adds nothing
        }
        p.probes.push_back((asked_at_ms, end));
        while p.probes.len() > MAX_PROBES {
            p.probes.pop_front();
        }
    }

    /// A record of `partition` waits (the partition is paused behind it) since `wall_ms`.
    pub fn wait(&mut self, partition: u32, wall_ms: i64) {
        let p = self.part(partition);
        if p.waiting_since.is_none() {
            p.waiting_since = Some(wall_ms);
        }
    }

    /// The waiting record of `partition` was handled at `wall_ms`; the partition gets a
    /// fresh stall budget to catch up.
    pub fn resume(&mut self, partition: u32, wall_ms: i64) {
        let p = self.part(partition);
        p.waiting_since = None;
        p.progress_ms = p.progress_ms.max(wall_ms);
    }

    /// Input is paused by the reader itself at `wall_ms` (back-pressure from its outputs):
    /// a partition standing still meanwhile is not stalled, so the clock waits for it
    /// instead of passing it. Passing it would end correlations whose stages wait unread
    /// in it — false `never_arrived`s and breaches while a backlog is read — and gain
    /// nothing: what the timers raise could not be written before the outputs move again.
    pub fn paused_by_reader(&mut self, wall_ms: i64) {
        for p in self.parts.iter_mut().filter(|p| p.assigned) {
            p.progress_ms = p.progress_ms.max(wall_ms);
        }
    }

    /// Assigned partitions, not paused for any reason, whose record time (at most
    /// `wall_ms`) is more than `ahead_ms` past the clock's last reading (before the
    /// first, see [`pace_reference`](Self::pace_reference)).
    pub fn running_ahead(&self, ahead_ms: i64, wall_ms: i64) -> Vec<u32> {
        let Some(now) = self.pace_reference(wall_ms) else {
            return Vec::new();
        };
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.assigned && !p.paced && p.waiting_since.is_none())
            .filter(|(_, p)| p.lead_ms(now, wall_ms).is_some_and(|l| l > ahead_ms))
            .map(|(id, _)| id as u32)
            .collect()
    }

    /// Paced partitions whose record time (at most `wall_ms`) is no more than `ahead_ms`
    /// past the clock's last reading: they may be read again.
    pub fn caught_up(&self, ahead_ms: i64, wall_ms: i64) -> Vec<u32> {
        let now = self.pace_reference(wall_ms).unwrap_or(i64::MAX);
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.assigned && p.paced)
            .filter(|(_, p)| p.lead_ms(now, wall_ms).is_none_or(|l| l <= ahead_ms))
            .map(|(id, _)| id as u32)
            .collect()
    }

    /// What running ahead is measured from: the clock's last reading; before the first,
    /// the earliest record time read of any partition (at most `wall_ms`). Until every
    /// partition has delivered or confirmed there is no reading, and without this the
    /// partitions that deliver first would be read without bound while the others have
    /// not delivered yet: a start-up where the closing input came first held 300,000
    /// outcomes. Measured from a fixed point, they all stop 3 s past it until the clock
    /// has a reading, which it gets once the others deliver or are judged stalled.
    fn pace_reference(&self, wall_ms: i64) -> Option<i64> {
        self.last.or_else(|| {
            self.parts
                .iter()
                .filter(|p| p.assigned)
                .filter_map(|p| p.min_record_ms)
                .min()
                .map(|t| t.min(wall_ms))
        })
    }

    /// The reader paused (`true`) or resumed (`false`) `partition` for running ahead, at
    /// `wall_ms`. While paused that way it is not stalled; resumed, it gets a fresh stall
    /// budget.
    pub fn pace(&mut self, partition: u32, paced: bool, wall_ms: i64) {
        let p = self.part(partition);
        if p.assigned {
            p.paced = paced;
            p.progress_ms = p.progress_ms.max(wall_ms);
        }
    }

    /// Whether `partition` is paused for running ahead.
    pub fn is_paced(&self, partition: u32) -> bool {
        self.parts
            .get(partition as usize)
            .is_some_and(|p| p.assigned && p.paced)
    }

    /// Partitions paused for running ahead now.
    pub fn paced(&self) -> usize {
        self.parts.iter().filter(|p| p.assigned && p.paced).count()
    }

    /// Resolves answered probes and judges every partition at `wall_ms`.
    pub fn read(&mut self, wall_ms: i64) -> Reading {
        let budget = self.stall_budget_ms;
        let mut stalled = Vec::new();
        let mut min: Option<i64> = None;
        let mut holding = false; // a contributing partition with nothing to go by yet
        let mut live = true;
        let mut assigned = 0usize;
        for (id, p) in self.parts.iter_mut().enumerate() {
            if !p.assigned {
                continue;
            }
            assigned += 1;
            if p.paced {
                // Paused by the reader for running ahead: standing still is no stall.
                p.progress_ms = p.progress_ms.max(wall_ms);
            }
            if p.waiting_since.is_none() {
                if let Some(pos) = p.position {
                    while let Some(&(at, end)) = p.probes.front() {
                        if end > pos {
                            break;
                        }
                        p.probes.pop_front();
                        if p.confirmed_ms.is_none_or(|c| at > c) {
                            p.confirmed_ms = Some(at);
                            p.progress_ms = p.progress_ms.max(at);
                        }
                    }
                }
            }
            let caught_up = p.waiting_since.is_none() && p.probes.is_empty();
            let last_good = p.progress_ms.max(p.confirmed_ms.unwrap_or(i64::MIN));
            let stall = match p.waiting_since {
                Some(since) if wall_ms.saturating_sub(since) >= budget => {
                    Some((StallReason::RecordWaiting, since))
                }
                Some(_) => None,
                None if wall_ms.saturating_sub(last_good) >= budget => {
                    Some((StallReason::NoProgress, last_good))
                }
                None => None,
            };
            if let Some((reason, since_ms)) = stall {
                stalled.push(Stall {
                    partition: id as u32,
                    reason,
                    since_ms,
                });
                continue;
            }
            live &= caught_up && p.confirmed_ms.is_some();
            let contribution = match (p.confirmed_ms, p.max_record_ms) {
                (Some(c), Some(r)) => Some(c.max(r)),
                (c, r) => c.or(r),
            };
            match contribution {
                Some(c) => min = Some(min.map_or(c, |m: i64| m.min(c))),
                None => holding = true,
            }
        }
        // Without an assignment there is nothing to judge time by: the clock must not
        // jump to wall time before the backlog has even been seen.
        let candidate = if holding || assigned == 0 {
            None
        } else {
            Some(min.map_or(wall_ms, |m| m.min(wall_ms)))
        };
        let now = match (self.last, candidate) {
            (Some(l), Some(c)) => Some(l.max(c)),
            (l, c) => l.or(c),
        };
        self.last = now;
        Reading {
            now_ms: now,
            live: live && !holding && assigned > 0,
            stalled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: i64 = 5_000;

    #[test]
    fn confirmed_partitions_follow_the_time_their_end_was_asked_for() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 1_000);
        c.assign(1, 1_000);
        // Nothing known yet: hold.
        assert_eq!(c.read(1_010).now_ms, None);
        c.position(0, 10, 1_020);
        c.position(1, 4, 1_020);
        c.end_offset(0, 10, 1_100);
        c.end_offset(1, 4, 1_100);
        let r = c.read(1_150);
        assert_eq!(r.now_ms, Some(1_100));
        assert!(r.live);
        // A newer answer moves the clock; a record appended before it (offset 4 on
        // partition 1) must be read first.
        c.end_offset(0, 10, 1_200);
        c.end_offset(1, 5, 1_200);
        let r = c.read(1_250);
        assert_eq!(r.now_ms, Some(1_100), "partition 1 has not read offset 4");
        assert!(!r.live);
        c.record(1, 4, Some(1_180), 1_260);
        assert_eq!(c.read(1_270).now_ms, Some(1_200));
    }

    #[test]
    fn transaction_markers_count_as_read_through_the_consumer_position() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 10_000);
        // Records 0..=2 (times 1_000..=1_002), then a commit marker at 3: the last stable
        // offset is 4.
        for o in 0..3 {
            c.record(0, o, Some(1_000 + o), 10_010);
        }
        c.end_offset(0, 4, 10_050);
        assert_eq!(
            c.read(10_060).now_ms,
            Some(1_002),
            "marker unread: event time only"
        );
        // The consumer's position moved past the marker.
        c.position(0, 4, 10_070);
        let r = c.read(10_080);
        assert_eq!(r.now_ms, Some(10_050));
        assert!(r.live);
    }

    #[test]
    fn backlog_runs_on_event_time_and_replays_like_live() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 100_000);
        c.assign(1, 100_000);
        c.end_offset(0, 1_000, 100_010);
        c.end_offset(1, 1_000, 100_010);
        c.record(0, 0, Some(500), 100_020);
        c.record(1, 0, Some(300), 100_020);
        let r = c.read(100_030);
        assert_eq!(r.now_ms, Some(300));
        assert!(!r.live);
        c.record(1, 1, Some(700), 100_040);
        assert_eq!(c.read(100_050).now_ms, Some(500));
    }

    #[test]
    fn a_waiting_record_holds_the_clock_for_the_budget_only() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 0);
        c.assign(1, 0);
        c.position(0, 5, 0);
        c.position(1, 5, 0);
        c.end_offset(0, 5, 100);
        c.end_offset(1, 5, 100);
        assert_eq!(c.read(150).now_ms, Some(100));
        // Partition 1: a record at offset 5 waits for the registry.
        c.wait(1, 200);
        c.end_offset(0, 5, 1_000);
        c.end_offset(1, 6, 1_000);
        let r = c.read(1_050);
        assert_eq!(r.now_ms, Some(100), "held while within the budget");
        assert!(r.stalled.is_empty());
        c.end_offset(0, 5, 5_300);
        let r = c.read(5_300);
        assert_eq!(r.now_ms, Some(5_300), "over budget: it no longer holds");
        assert_eq!(
            r.stalled,
            vec![Stall {
                partition: 1,
                reason: StallReason::RecordWaiting,
                since_ms: 200
            }]
        );
        // Position updates from the consumer must not claim the waiting record as read.
        c.position(1, 6, 5_310);
        c.resume(1, 5_315);
        let r = c.read(5_320);
        assert!(!r.live, "offset 5 still unread");
        c.record(1, 5, Some(150), 5_330);
        let r = c.read(5_340);
        assert!(r.stalled.is_empty());
        assert!(r.live);
    }

    #[test]
    fn a_partition_behind_that_delivers_nothing_is_stalled_after_the_budget() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 100_000);
        c.assign(1, 100_000);
        c.record(0, 0, Some(1_000), 100_010);
        c.record(1, 0, Some(1_000), 100_010);
        c.end_offset(0, 1, 100_020);
        c.end_offset(1, 50, 100_020);
        assert_eq!(c.read(100_030).now_ms, Some(1_000));
        for t in (101_000..106_000).step_by(1_000) {
            c.end_offset(0, 1, t);
            c.end_offset(1, 50, t);
        }
        let r = c.read(105_500);
        assert_eq!(r.stalled.len(), 1);
        assert_eq!(r.stalled[0].partition, 1);
        assert_eq!(r.stalled[0].reason, StallReason::NoProgress);
        assert_eq!(r.now_ms, Some(105_000));
    }

    #[test]
    fn a_partition_the_reader_paused_itself_holds_the_clock_and_is_not_stalled() {
        let mut c = InputClock::new(1_000);
        c.assign(0, 0);
        c.assign(1, 0);
        c.record(0, 0, Some(5_000), 0);
        c.record(1, 0, Some(2_000), 0);
        c.position(0, 1, 0);
        c.position(1, 1, 0);
        // Input paused for outputs for 10 budgets: partition 1 is behind, not stalled.
        for wall in (0..=10_000).step_by(100) {
            c.paused_by_reader(wall);
            let r = c.read(wall);
            assert!(r.stalled.is_empty(), "{:?}", r.stalled);
            assert!(r.now_ms <= Some(2_000), "held by the partition behind");
        }
        assert_eq!(c.read(10_000).now_ms, Some(2_000));
        // Once reading resumes, a partition that still does not move stalls as usual.
        let r = c.read(11_001);
        assert_eq!(r.stalled.len(), 2);
    }

    #[test]
    fn records_queued_behind_other_partitions_are_not_a_stall() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 0);
        c.assign(1, 0);
        c.record(0, 0, Some(100), 10);
        c.end_offset(0, 10_000, 20);
        c.end_offset(1, 40, 20);
        for t in (1_000..=7_000).step_by(1_000) {
            // Partition 0 streams its backlog; partition 1's records sit in the local
            // queue behind it, fetched but not handed over yet.
            c.record(0, t / 10, Some(100 + t / 100), t);
            c.fetched(1, 40, true, t);
        }
        let r = c.read(7_000);
        assert!(r.stalled.is_empty(), "{:?}", r.stalled);
        assert_eq!(r.now_ms, None, "partition 1 delivered nothing yet: hold");
        // Once its fetch position stops moving with nothing queued, the budget runs.
        c.fetched(1, 40, false, 7_100);
        c.record(0, 800, Some(200), 12_100);
        let r = c.read(12_200);
        assert_eq!(r.stalled.len(), 1);
        assert_eq!(r.stalled[0].partition, 1);
    }

    #[test]
    fn without_answers_from_the_broker_the_clock_still_runs_after_the_budget() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 0);
        c.position(0, 3, 0);
        c.end_offset(0, 3, 100);
        assert_eq!(c.read(200).now_ms, Some(100));
        assert_eq!(c.read(4_000).now_ms, Some(100), "within the budget: hold");
        let r = c.read(5_200);
        assert_eq!(r.now_ms, Some(5_200), "never silent: wall time");
        assert_eq!(r.stalled.len(), 1);
        // The broker answers again: the partition contributes again, never going back.
        c.end_offset(0, 3, 6_000);
        let r = c.read(6_010);
        assert!(r.stalled.is_empty());
        assert_eq!(r.now_ms, Some(6_000));
    }

    #[test]
    fn no_clock_before_any_partition_is_assigned() {
        let mut c = InputClock::new(BUDGET);
        let r = c.read(1_000_000);
        assert_eq!(r.now_ms, None);
        assert!(!r.live);
        c.assign(0, 1_000_010);
        c.record(0, 0, Some(500), 1_000_020);
        c.end_offset(0, 10, 1_000_030);
        assert_eq!(
            c.read(1_000_040).now_ms,
            Some(500),
            "replays from the start"
        );
    }

    #[test]
    fn never_ahead_of_wall_time_and_never_backwards() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 0);
        c.record(0, 0, Some(9_000_000), 10); // a record time from the future
        c.end_offset(0, 1, 5);
        assert_eq!(c.read(20).now_ms, Some(20));
        c.revoke(0);
        c.assign(1, 30);
        c.record(1, 0, Some(5), 30);
        c.end_offset(1, 5, 25);
        assert_eq!(c.read(40).now_ms, Some(20), "never backwards");
        assert!(!c.is_assigned(0));
    }

    #[test]
    fn a_partition_far_ahead_is_named_and_not_stalled_while_paced() {
        let mut c = InputClock::new(BUDGET);
        let wall = 1_000_000;
        c.assign(0, wall);
        c.assign(1, wall);
        c.end_offset(0, 1_000, wall);
        c.end_offset(1, 1_000, wall);
        c.record(0, 0, Some(10_000), wall);
        c.record(1, 0, Some(10_000), wall);
        assert_eq!(c.read(wall).now_ms, Some(10_000));
        assert!(c.running_ahead(3_000, wall).is_empty(), "in step");
        // Partition 1 runs 5 s of event time ahead.
        c.record(1, 1, Some(15_000), wall + 10);
        assert_eq!(c.read(wall + 10).now_ms, Some(10_000));
        assert_eq!(c.running_ahead(3_000, wall + 10), [1]);
        c.pace(1, true, wall + 10);
        assert!(c.running_ahead(3_000, wall + 10).is_empty(), "named once");
        assert_eq!(c.paced(), 1);
        // Partition 0 keeps moving; partition 1 stands still past the stall budget
        // without being judged stalled.
        let later = wall + 2 * BUDGET;
        c.record(0, 1, Some(11_000), later);
        let r = c.read(later);
        assert!(r.stalled.is_empty(), "{r:?}");
        assert_eq!(r.now_ms, Some(11_000));
        assert!(c.caught_up(1_500, later).is_empty(), "still 4 s ahead");
        c.record(0, 2, Some(13_600), later + 1);
        assert_eq!(c.read(later + 1).now_ms, Some(13_600));
        assert_eq!(c.caught_up(1_500, later + 1), [1]);
        c.pace(1, false, later + 1);
        assert_eq!(c.paced(), 0);
        // Resumed, it gets a fresh budget, then stalls like any other partition.
        assert!(c.read(later + 2).stalled.is_empty());
        c.record(0, 3, Some(13_700), later + BUDGET);
        let r = c.read(later + 1 + BUDGET);
        assert_eq!(r.stalled.len(), 1, "{r:?}");
        assert_eq!(r.stalled[0].partition, 1);
    }

    #[test]
    fn record_times_past_wall_time_never_hold_a_partition_paused() {
        let mut c = InputClock::new(BUDGET);
        let wall = 1_000_000;
        c.assign(0, wall);
        c.assign(1, wall);
        c.end_offset(0, 1_000, wall);
        c.end_offset(1, 1_000, wall);
        c.record(0, 0, Some(wall - 60_000), wall);
        // A producer whose clock is a day ahead.
        c.record(1, 0, Some(wall + 86_400_000), wall);
        assert_eq!(c.read(wall).now_ms, Some(wall - 60_000));
        assert_eq!(
            c.running_ahead(3_000, wall),
            [1],
            "a minute ahead of the clock"
        );
        c.pace(1, true, wall);
        assert!(c.caught_up(1_500, wall).is_empty());
        // The clock catches up with wall time: the partition is read again although
        // its record time stays a day ahead.
        c.record(0, 1, Some(wall + 9_000), wall + 10_000);
        assert_eq!(c.read(wall + 10_000).now_ms, Some(wall + 9_000));
        assert_eq!(c.caught_up(1_500, wall + 10_000), [1]);
    }

    #[test]
    fn waiting_and_unassigned_partitions_are_never_paced() {
        let mut c = InputClock::new(BUDGET);
        c.assign(0, 19_000);
        c.assign(1, 19_000);
        c.record(0, 0, Some(1_000), 19_000);
        c.record(1, 0, Some(9_000), 19_000);
        c.end_offset(0, 5, 0);
        c.end_offset(1, 5, 0);
        assert_eq!(c.read(20_000).now_ms, Some(1_000));
        c.wait(1, 20_000);
        assert!(c.running_ahead(3_000, 20_000).is_empty());
        c.resume(1, 20_000);
        assert_eq!(c.running_ahead(3_000, 20_000), [1]);
        c.revoke(1);
        assert!(c.running_ahead(3_000, 20_000).is_empty());
        c.pace(1, true, 20_000);
        assert_eq!(c.paced(), 0, "an unassigned partition cannot be paced");
    }

    #[test]
    fn before_the_first_reading_partitions_that_deliver_stop_past_the_earliest_record() {
        let mut c = InputClock::new(BUDGET);
        let wall = 1_000_000;
        for id in 0..3 {
            c.assign(id, wall);
            c.end_offset(id, 1_000, wall);
        }
        // Partitions 1 and 2 deliver; partition 0 has delivered nothing yet.
        c.record(1, 0, Some(10_000), wall);
        c.record(2, 0, Some(11_000), wall);
        assert_eq!(c.read(wall).now_ms, None, "partition 0 holds the clock");
        assert!(c.running_ahead(3_000, wall).is_empty(), "within 3 s");
        // Both run on; the reference stays the earliest record read (10 s), so neither
        // follows the other away.
        c.record(1, 1, Some(13_500), wall + 1);
        c.record(2, 1, Some(12_500), wall + 1);
        assert_eq!(c.read(wall + 1).now_ms, None);
        assert_eq!(c.running_ahead(3_000, wall + 1), [1]);
        c.pace(1, true, wall + 1);
        assert!(c.caught_up(1_500, wall + 1).is_empty(), "no reading yet");
        // Partition 0 delivers older records: the clock reads them, and partition 1
        // waits until the clock is back within reach.
        c.record(0, 0, Some(9_000), wall + 2);
        assert_eq!(c.read(wall + 2).now_ms, Some(9_000));
        assert!(c.caught_up(1_500, wall + 2).is_empty());
        c.record(0, 1, Some(12_100), wall + 3);
        assert_eq!(c.read(wall + 3).now_ms, Some(12_100));
        assert_eq!(c.caught_up(1_500, wall + 3), [1]);
    }

    #[test]
    fn before_the_first_reading_a_silent_partition_stalls_and_the_others_go_on() {
        let mut c = InputClock::new(BUDGET);
        let wall = 1_000_000;
        c.assign(0, wall);
        c.assign(1, wall);
        c.record(1, 0, Some(10_000), wall);
        c.record(1, 1, Some(14_000), wall);
        assert_eq!(c.running_ahead(3_000, wall), [1]);
        c.pace(1, true, wall);
        // Partition 0 never delivers nor confirms: past the stall budget it stops
        // holding the clock, which then reads partition 1, caught up with itself.
        let r = c.read(wall + BUDGET);
        assert_eq!(r.now_ms, Some(14_000));
        assert_eq!(r.stalled.len(), 1, "{r:?}");
        assert_eq!(c.caught_up(1_500, wall + BUDGET), [1]);
    }
}
