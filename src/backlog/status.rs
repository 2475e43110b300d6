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
use std::collections::VecDeque;
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

/// The last `capacity` observations of one partition, newest last.
#[derive(Debug, Clone)]
pub struct Window {
    capacity: usize,
    observations: VecDeque<Observation>,
}

impl Window {
    /// An empty window holding at most `capacity` observations (at least 2).
    pub fn new(capacity: usize) -> Window {
        let capacity = capacity.max(2);
        Window {
            capacity,
            observations: VecDeque::with_capacity(capacity),
        }
    }

    /// Adds the newest observation, dropping the oldest when full.
    pub fn push(&mut self, observation: Observation) {
        if self.observations.len() == self.capacity {
            self.observations.pop_front();
        }
        self.observations.push_back(observation);
    }

    pub fn len(&self) -> usize {
        self.observations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.observations.len() == self.capacity
    }

    /// The status the window shows now.
    pub fn status(&self) -> Status {
        let Some(newest) = self.observations.back() else {
            return Status::Ok;
        };
        let Some(newest_lag) = newest.lag else {
            return Status::Err;
        };
        let positions: Vec<i64> = self
            .observations
            .iter()
            .filter_map(|o| o.position)
            .collect();
        if positions.windows(2).any(|w| w[1] < w[0]) {
            return Status::Rewind;
        }
        if newest_lag == 0 || !self.is_full() {
            return Status::Ok;
        }
        // A full window with no gaps from here on: an earlier ERR observation means we
        // cannot say the position stood still or the lag kept growing.
        let lags: Vec<i64> = self.observations.iter().filter_map(|o| o.lag).collect();
        if lags.len() != self.observations.len() || positions.len() != lags.len() {
            return Status::Ok;
        }
        let unchanged = positions.windows(2).all(|w| w[0] == w[1]);
        if unchanged && lags.iter().all(|&l| l > 0) {
            let log_readable = self.observations.iter().all(|o| o.commit_seen.is_some());
            let committing = if log_readable {
                self.observations
                    .iter()
                    .any(|o| o.commit_seen == Some(true))
            } else {
                self.observations.iter().any(|o| o.owned)
            };
            return if committing {
                Status::Stall
            } else {
                Status::Stop
            };
        }
        let never_shrank = lags.windows(2).all(|w| w[1] >= w[0]);
        if !unchanged && never_shrank && lags[lags.len() - 1] > lags[0] {
            return Status::Warn;
        }
        Status::Ok
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
}
