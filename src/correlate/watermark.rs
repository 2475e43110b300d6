//! The engine clock: event-time watermarks while reading a backlog, wall time when caught up.
//!
//! Firing timers on wall time while the consumer is still working through a backlog would
//! breach correlations whose closing record is simply further down the backlog. So while
//! any partition is behind, the clock is the watermark: per partition the largest event time
//! seen, and overall the minimum over partitions that are not idle. A partition is idle
//! when the caller says it is caught up, or when it has delivered nothing for
//! `idle_timeout_ms` of wall time (so a quiet partition cannot hold the clock back forever).
//! Once every partition is caught up, the clock is the wall clock. The clock never goes back.

/// Per-partition watermark tracking; pure (wall time is passed in).
#[derive(Debug, Clone)]
pub struct Watermarks {
    parts: Vec<Part>,
    idle_timeout_ms: i64,
    last: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Part {
    assigned: bool,
    max_event_ms: Option<i64>,
    last_record_wall_ms: Option<i64>,
    caught_up: bool,
}

impl Watermarks {
    /// A tracker where a partition with no record for `idle_timeout_ms` of wall time stops
    /// holding the watermark back.
    pub fn new(idle_timeout_ms: i64) -> Self {
        Self {
            parts: Vec::new(),
            idle_timeout_ms,
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

    /// A partition was assigned: until it delivers a record or is caught up, it holds the
    /// watermark back (its backlog may hold the oldest events).
    pub fn assign(&mut self, partition: u32) {
        let p = self.part(partition);
        *p = Part {
            assigned: true,
            ..Part::default()
        };
    }

    /// A partition was revoked; it no longer takes part.
    pub fn revoke(&mut self, partition: u32) {
        if let Some(p) = self.parts.get_mut(partition as usize) {
            *p = Part::default();
        }
    }

    /// A record with event time `event_time_ms` was read from `partition` at `wall_ms`.
    /// Assigns the partition if needed.
    pub fn observe(&mut self, partition: u32, event_time_ms: i64, wall_ms: i64) {
        let p = self.part(partition);
        p.assigned = true;
        p.max_event_ms = Some(
            p.max_event_ms
                .map_or(event_time_ms, |m| m.max(event_time_ms)),
        );
        p.last_record_wall_ms = Some(wall_ms);
    }

    /// Whether the consumer has reached the end of `partition` (offset lag 0).
    pub fn set_caught_up(&mut self, partition: u32, caught_up: bool) {
        let p = self.part(partition);
        p.assigned = true;
        p.caught_up = caught_up;
    }

    fn active(&self, wall_ms: i64) -> impl Iterator<Item = &Part> {
        let idle = self.idle_timeout_ms;
        self.parts.iter().filter(move |p| {
            p.assigned
                && !p.caught_up
                && p.last_record_wall_ms
                    .is_none_or(|last| wall_ms.saturating_sub(last) < idle)
        })
    }

    /// Minimum over active partitions of their largest event time; `None` while an active
    /// partition has delivered nothing yet (its backlog may start earlier than anything
    /// seen) or when no partition is active.
    pub fn watermark(&self, wall_ms: i64) -> Option<i64> {
        let mut min: Option<i64> = None;
        for p in self.active(wall_ms) {
            let m = p.max_event_ms?;
            min = Some(min.map_or(m, |x| x.min(m)));
        }
        min
    }

    /// The clock to drive [`Engine::advance`](super::Engine::advance) with: wall time when no
    /// partition is behind, else the watermark (never ahead of wall time), never going
    /// backwards. `None` until there is anything to go by.
    pub fn effective_now(&mut self, wall_ms: i64) -> Option<i64> {
        let behind = self.active(wall_ms).next().is_some();
        let candidate = if behind {
            self.watermark(wall_ms).map(|w| w.min(wall_ms))
        } else {
            Some(wall_ms)
        };
        let next = match (self.last, candidate) {
            (Some(l), Some(c)) => Some(l.max(c)),
            (l, c) => l.or(c),
        };
        self.last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_slowest_active_partition() {
        let mut w = Watermarks::new(10_000);
        w.assign(0);
        w.assign(1);
        w.observe(0, 500, 1_000);
        // Partition 1 has delivered nothing: hold.
        assert_eq!(w.watermark(1_000), None);
        assert_eq!(w.effective_now(1_000), None);
        w.observe(1, 200, 1_000);
        w.observe(0, 900, 1_001);
        assert_eq!(w.watermark(1_001), Some(200));
        assert_eq!(w.effective_now(1_001), Some(200));
        // Event times going back on one partition do not lower its maximum.
        w.observe(1, 100, 1_002);
        assert_eq!(w.watermark(1_002), Some(200));
    }

    #[test]
    fn caught_up_partitions_hand_over_to_wall_time() {
        let mut w = Watermarks::new(10_000);
        w.observe(0, 100, 5_000);
        w.observe(1, 300, 5_000);
        assert_eq!(w.effective_now(5_000), Some(100));
        w.set_caught_up(0, true);
        assert_eq!(w.effective_now(5_001), Some(300));
        w.set_caught_up(1, true);
        assert_eq!(w.effective_now(5_002), Some(5_002));
        // Falling behind again never moves the clock back.
        w.set_caught_up(1, false);
        w.observe(1, 400, 5_003);
        assert_eq!(w.effective_now(5_003), Some(5_002));
    }

    #[test]
    fn idle_partition_stops_holding_the_clock() {
        let mut w = Watermarks::new(1_000);
        w.observe(0, 100, 0);
        w.observe(1, 5_000, 0);
        assert_eq!(w.effective_now(500), Some(100));
        w.observe(1, 5_500, 1_200);
        // Partition 0 has been silent for 1.2 s of wall time.
        assert_eq!(w.watermark(1_200), Some(5_500));
        assert_eq!(w.effective_now(1_200), Some(1_200));
        w.revoke(1);
        assert_eq!(w.effective_now(1_300), Some(1_300));
    }

    #[test]
    fn watermark_never_runs_ahead_of_wall_time() {
        let mut w = Watermarks::new(10_000);
        w.observe(0, 9_000, 1_000);
        assert_eq!(w.effective_now(1_000), Some(1_000));
    }
}
