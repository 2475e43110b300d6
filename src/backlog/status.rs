//! The threshold-free status of a partition and of a group, computed from a sliding
//! window of observations. Pure: no I/O, no clock.
//!
//! One *observation* is what one poll cycle saw for one (group, topic, partition): the
//! group's effective position (its committed offset, or the reset position when it has
//! none), the offset lag, whether a commit for that partition was written since the
//! previous cycle (when the commit log is readable), and whether an active member owns
//! the partition. The window holds the last `window` observations, newest last.
//!
//! The rules, applied in this order to a partition's window (the first that matches wins):
//!
//! | status   | rule |
//! |----------|------|
//! | `ERR`    | the newest observation has no offset lag: the committed or log-end offset could not be read this cycle. |
//! | `REWIND` | somewhere in the window the position moved back (an observation's position is lower than the one before it). |
//! | `OK`     | the newest offset lag is 0 (caught up — also on idle topics). |
//! | `OK`     | the window is not full yet: too little evidence to call anything worse. |
//! | `STALL`  | the position is the same in every observation, every lag is > 0, and the group *is* committing: a commit for this partition was seen in the window (or, when the commit log cannot be read, an active member owns the partition). |
//! | `STOP`   | the position is the same in every observation, every lag is > 0, and no commit for this partition was seen in the whole window (or, without the commit log, no active member owns it). A full window spans `(window − 1) × interval`, so this means "no commits for longer than the window". |
//! | `WARN`   | the position advanced in the window but the lag never shrank from one observation to the next and is larger at the end than at the start: the consumer is falling behind. |
//! | `OK`     | anything else: the consumer is moving and not losing ground. |
//!
//! A group's status is the worst status of its partitions, by [`Status::severity`]
//! (`OK` < `WARN` < `REWIND` < `STALL` < `STOP` < `ERR`); `ERR` ranks worst because a
//! partition that cannot be read could hide any of the others. A group with no
//! partitions is `OK`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Status of a partition or a group (see the module documentation for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Rewind,
    Stall,
    Stop,
    Err,
}

impl Status {
    /// Every status, from least to most severe.
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::Warn,
        Status::Rewind,
        Status::Stall,
        Status::Stop,
        Status::Err,
    ];

    /// The label value (`OK`, `WARN`, `REWIND`, `STALL`, `STOP`, `ERR`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Rewind => "REWIND",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Err => "ERR",
        }
    }

    /// Rank used to pick a group's worst partition: higher is worse.
    pub fn severity(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Rewind => 2,
            Status::Stall => 3,
            Status::Stop => 4,
            Status::Err => 5,
        }
    }

    /// The worst of several statuses; `OK` for none.
    pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
        statuses
            .into_iter()
            .max_by_key(|s| s.severity())
            .unwrap_or(Status::Ok)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one cycle saw for one (group, topic, partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The group's effective position: committed offset, or the reset position when the
    /// partition has no commit. `None` when it could not be read.
    pub position: Option<i64>,
    /// Offset lag (log-end − position, never negative). `None` when it could not be read.
    pub lag: Option<i64>,
    /// A commit for this partition was written since the previous cycle. `None` when the
    /// commit log could not be read, so commit activity is unknown.
    pub commit_seen: Option<bool>,
    /// An active member of the group owns this partition.
    pub owned: bool,
}

/// The largest status window: window ages are kept in one byte each.
pub const MAX_WINDOW: usize = 250;

/// "Never happened, or longer ago than any window."
const NEVER: u8 = u8::MAX;

/// What the previous observations of the same partition left behind, as far as the
/// next observation needs it: the newest known position and the previous lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Previous {
    /// The newest position any earlier observation had (across unreadable ones).
    pub known_position: Option<i64>,
    /// The lag of the observation just before (`None` when it had none, or there was none).
    pub lag: Option<i64>,
}

/// The sliding window of one partition in 11 bytes: instead of the observations
/// themselves it keeps, for every fact the rules ask about, how many observations ago
/// it was last true (saturating). "Somewhere in the window" is then "fewer observations
/// ago than the window is long", which gives exactly the rules of the module
/// documentation without keeping `window` observations per partition — at 1,000,000
/// (group, partition) rows that is the difference between 11 MB and hundreds.
///
/// For a pair of consecutive observations the age kept is that of the earlier one: the
/// pair is inside the window when its earlier observation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ages {
    /// Observations so far (saturating).
    n: u8,
    /// The newest observation with a position.
    known: u8,
    /// The earlier observation of the newest pair whose position moved back.
    rewind: u8,
    /// The newest observation without a position or a lag.
    gap: u8,
    /// The earlier observation of the newest pair whose positions differ.
    moved: u8,
    /// The newest observation with lag 0.
    caught_up: u8,
    /// The newest observation without commit-log evidence (log unreadable).
    no_log: u8,
    /// The newest observation with a commit seen.
    commit: u8,
    /// The newest observation while an active member owned the partition.
    owned: u8,
    /// The earlier observation of the newest pair whose lag shrank.
    shrank: u8,
    /// The earlier observation of the newest pair whose lag changed.
    lag_changed: u8,
}

impl Default for Ages {
    fn default() -> Self {
        Ages {
            n: 0,
            known: NEVER,
            rewind: NEVER,
            gap: NEVER,
            moved: NEVER,
            caught_up: NEVER,
            no_log: NEVER,
            commit: NEVER,
            owned: NEVER,
            shrank: NEVER,
            lag_changed: NEVER,
        }
    }
}

fn older(age: &mut u8) {
    if *age < NEVER {
        *age += 1;
    }
}

impl Ages {
    /// Adds the newest observation; `previous` describes the observations before it.
    pub fn push(&mut self, o: Observation, previous: Previous) {
        for a in [
            &mut self.known,
            &mut self.rewind,
            &mut self.gap,
            &mut self.moved,
            &mut self.caught_up,
            &mut self.no_log,
            &mut self.commit,
            &mut self.owned,
            &mut self.shrank,
            &mut self.lag_changed,
        ] {
            older(a);
        }
        self.n = self.n.saturating_add(1);
        if let Some(p) = o.position {
            if let (Some(q), true) = (previous.known_position, self.known < NEVER) {
                if p < q {
                    self.rewind = self.known;
                }
                if p != q {
                    self.moved = self.known;
                }
            }
            self.known = 0;
        }
        if o.position.is_none() || o.lag.is_none() {
            self.gap = 0;
        }
        if let (Some(l), Some(pl)) = (o.lag, previous.lag) {
            if self.n > 1 {
                if l < pl {
                    self.shrank = 1;
                }
                if l != pl {
                    self.lag_changed = 1;
                }
            }
        }
        if o.lag == Some(0) {
            self.caught_up = 0;
        }
        match o.commit_seen {
            None => self.no_log = 0,
            Some(true) => self.commit = 0,
            Some(false) => {}
        }
        if o.owned {
            self.owned = 0;
        }
    }

    /// The status of a window of `capacity` observations whose newest is `newest`
    /// (the one pushed last).
    pub fn status(&self, newest: &Observation, capacity: usize) -> Status {
        let capacity = capacity.clamp(2, MAX_WINDOW);
        let len = usize::from(self.n).min(capacity);
        let inside = |age: u8| usize::from(age) < len;
        if newest.lag.is_none() {
            return Status::Err;
        }
        if inside(self.rewind) {
            return Status::Rewind;
        }
        if newest.lag == Some(0) || usize::from(self.n) < capacity {
            return Status::Ok;
        }
        // A full window with an unreadable observation: we cannot say the position
        // stood still or the lag kept growing.
        if inside(self.gap) {
            return Status::Ok;
        }
        let unchanged = !inside(self.moved);
        if unchanged && !inside(self.caught_up) {
            let committing = if inside(self.no_log) {
                inside(self.owned)
            } else {
                inside(self.commit)
            };
            return if committing {
                Status::Stall
            } else {
                Status::Stop
            };
        }
        if !unchanged && !inside(self.shrank) && inside(self.lag_changed) {
            return Status::Warn;
        }
        Status::Ok
    }
}

/// A window that keeps what [`Ages::push`] needs from earlier observations itself:
/// convenient for one partition at a time (the monitor keeps that in its report).
#[derive(Debug, Clone)]
pub struct Window {
    capacity: usize,
    ages: Ages,
    previous: Previous,
    newest: Option<Observation>,
}

impl Window {
    /// An empty window holding at most `capacity` observations (2 to [`MAX_WINDOW`]).
    pub fn new(capacity: usize) -> Window {
        Window {
            capacity: capacity.clamp(2, MAX_WINDOW),
            ages: Ages::default(),
            previous: Previous::default(),
            newest: None,
        }
    }

    /// Adds the newest observation, dropping the oldest when full.
    pub fn push(&mut self, observation: Observation) {
        self.ages.push(observation, self.previous);
        self.previous = Previous {
            known_position: observation.position.or(self.previous.known_position),
            lag: observation.lag,
        };
        self.newest = Some(observation);
    }

    pub fn len(&self) -> usize {
        usize::from(self.ages.n).min(self.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.ages.n == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.capacity
    }

    /// The status the window shows now.
    pub fn status(&self) -> Status {
        match &self.newest {
            None => Status::Ok,
            Some(newest) => self.ages.status(newest, self.capacity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(position: i64, lag: i64, commit_seen: bool) -> Observation {
        Observation {
            position: Some(position),
            lag: Some(lag),
            commit_seen: Some(commit_seen),
            owned: false,
        }
    }

    fn window(observations: &[Observation]) -> Window {
        let mut w = Window::new(observations.len());
        for o in observations {
            w.push(*o);
        }
        w
    }

    #[test]
    fn caught_up_is_ok_even_when_idle() {
        let w = window(&[obs(10, 0, false), obs(10, 0, false), obs(10, 0, false)]);
        assert_eq!(w.status(), Status::Ok);
    }

    #[test]
    fn same_offset_committed_with_lag_is_stall() {
        let w = window(&[obs(5, 3, true), obs(5, 4, true), obs(5, 6, true)]);
        assert_eq!(w.status(), Status::Stall);
    }

    #[test]
    fn no_commits_for_the_whole_window_with_lag_is_stop() {
        let w = window(&[obs(5, 3, false), obs(5, 4, false), obs(5, 6, false)]);
        assert_eq!(w.status(), Status::Stop);
    }

    #[test]
    fn without_commit_log_ownership_decides_stall_or_stop() {
        let unknown = |owned| Observation {
            position: Some(5),
            lag: Some(2),
            commit_seen: None,
            owned,
        };
        assert_eq!(
            window(&[unknown(true), unknown(true)]).status(),
            Status::Stall
        );
        assert_eq!(
            window(&[unknown(false), unknown(false)]).status(),
            Status::Stop
        );
    }

    #[test]
    fn moving_but_falling_behind_is_warn() {
        let w = window(&[obs(5, 3, true), obs(6, 4, true), obs(7, 9, true)]);
        assert_eq!(w.status(), Status::Warn);
    }

    #[test]
    fn moving_and_gaining_is_ok() {
        let w = window(&[obs(5, 9, true), obs(8, 4, true), obs(9, 5, true)]);
        assert_eq!(w.status(), Status::Ok);
    }

    #[test]
    fn offset_moving_back_is_rewind() {
        let w = window(&[obs(5, 3, true), obs(2, 6, true), obs(3, 5, true)]);
        assert_eq!(w.status(), Status::Rewind);
    }

    #[test]
    fn unreadable_newest_is_err_and_partial_window_is_ok() {
        let mut w = Window::new(3);
        w.push(obs(5, 3, false));
        w.push(obs(5, 3, false));
        assert_eq!(w.status(), Status::Ok, "window not full yet");
        w.push(Observation {
            position: None,
            lag: None,
            commit_seen: None,
            owned: false,
        });
        assert_eq!(w.status(), Status::Err);
    }

    #[test]
    fn group_status_is_worst_partition() {
        assert_eq!(
            Status::worst([Status::Ok, Status::Stop, Status::Warn]),
            Status::Stop
        );
        assert_eq!(Status::worst([]), Status::Ok);
        assert_eq!(Status::worst([Status::Stop, Status::Err]), Status::Err);
    }

    /// The rules read literally over the last `capacity` observations.
    fn reference(window: &[Observation]) -> Status {
        let Some(newest) = window.last() else {
            return Status::Ok;
        };
        let Some(newest_lag) = newest.lag else {
            return Status::Err;
        };
        let positions: Vec<i64> = window.iter().filter_map(|o| o.position).collect();
        if positions.windows(2).any(|w| w[1] < w[0]) {
            return Status::Rewind;
        }
        if newest_lag == 0 || window.len() < CAP {
            return Status::Ok;
        }
        let lags: Vec<i64> = window.iter().filter_map(|o| o.lag).collect();
        if lags.len() != window.len() || positions.len() != lags.len() {
            return Status::Ok;
        }
        let unchanged = positions.windows(2).all(|w| w[0] == w[1]);
        if unchanged && lags.iter().all(|&l| l > 0) {
            let committing = if window.iter().all(|o| o.commit_seen.is_some()) {
                window.iter().any(|o| o.commit_seen == Some(true))
            } else {
                window.iter().any(|o| o.owned)
            };
            return if committing {
                Status::Stall
            } else {
                Status::Stop
            };
        }
        if !unchanged && lags.windows(2).all(|w| w[1] >= w[0]) && lags[lags.len() - 1] > lags[0] {
            return Status::Warn;
        }
        Status::Ok
    }

    const CAP: usize = 4;

    fn observation() -> impl proptest::strategy::Strategy<Value = Observation> {
        use proptest::prelude::*;
        (
            proptest::option::weighted(0.9, 0i64..4),
            proptest::option::weighted(0.9, 0i64..3),
            proptest::option::weighted(0.8, any::<bool>()),
            any::<bool>(),
        )
            .prop_map(|(position, lag, commit_seen, owned)| Observation {
                position,
                lag: position.and(lag),
                commit_seen,
                owned,
            })
    }

    proptest::proptest! {
        #[test]
        fn compact_window_agrees_with_the_rules_read_literally(
            seq in proptest::collection::vec(observation(), 1..14)
        ) {
            let mut w = Window::new(CAP);
            for (i, o) in seq.iter().enumerate() {
                w.push(*o);
                let from = (i + 1).saturating_sub(CAP);
                proptest::prop_assert_eq!(w.status(), reference(&seq[from..=i]), "after {:?}", &seq[..=i]);
            }
        }
    }
}
