//! Where the pipeline's time goes: how much of each second its loop spent on records,
//! on its tick (clock, timers, publishing, checkpoints), on end-offset answers and on
//! registry retries, and how much it waited with nothing to do.
//!
//! The loop runs on one task, so the sum of the busy shares is the share of one core it
//! keeps busy: near 1, the pipeline itself bounds throughput (more instances help, see
//! `store.repartition`); well below 1 while input lags, it waits for Kafka (fetches,
//! outputs).

use crate::telemetry::names;
use metrics::Gauge;
use std::time::{Duration, Instant};

/// What the loop was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activity {
    Records,
    Tick,
    Ends,
    Retries,
}

impl Activity {
    const ALL: [Activity; 4] = [
        Activity::Records,
        Activity::Tick,
        Activity::Ends,
        Activity::Retries,
    ];

    /// The `activity` label.
    pub(super) fn label(self) -> &'static str {
        names::PIPELINE_ACTIVITIES[self as usize]
    }
}

/// Busy time per activity, over the current window and over the whole run.
pub(super) struct Busy {
    started: Instant,
    window_started: Instant,
    window: [Duration; 4],
    total: [Duration; 4],
    gauges: [Gauge; 4],
}

impl Busy {
    pub(super) fn new(now: Instant) -> Busy {
        Busy {
            started: now,
            window_started: now,
            window: [Duration::ZERO; 4],
            total: [Duration::ZERO; 4],
            gauges: Activity::ALL
                .map(|a| metrics::gauge!(names::PIPELINE_BUSY_RATIO, "activity" => a.label())),
        }
    }

    /// `activity` took from `since` until now, which is returned (one clock reading less
    /// for what follows).
    pub(super) fn spent(&mut self, activity: Activity, since: Instant) -> Instant {
        let now = Instant::now();
        let d = now.saturating_duration_since(since);
        let i = activity as usize;
        self.window[i] += d;
        self.total[i] += d;
        now
    }

    /// Sets the gauges to the shares of the window that ends `now` and starts the next.
    pub(super) fn publish(&mut self, now: Instant) {
        let wall = now.saturating_duration_since(self.window_started);
        for (i, ratio) in shares(&self.window, wall).into_iter().enumerate() {
            self.gauges[i].set(ratio);
        }
        self.window = [Duration::ZERO; 4];
        self.window_started = now;
    }

    /// One log line with the whole run's busy time per activity.
    pub(super) fn log_run(&self) {
        let wall = self.started.elapsed();
        let busy: Duration = self.total.iter().sum();
        let [records, tick, ends, retries] = self.total.map(|d| d.as_secs_f64());
        tracing::info!(
            wall_s = wall.as_secs_f64(),
            busy_s = busy.as_secs_f64(),
            records_s = records,
            tick_s = tick,
            end_offsets_s = ends,
            registry_retries_s = retries,
            "pipeline time"
        );
    }
}

/// Each activity's share of `wall` (0 for an empty window), at most 1.
fn shares(spent: &[Duration; 4], wall: Duration) -> [f64; 4] {
    let wall = wall.as_secs_f64();
    spent.map(|d| {
        if wall > 0.0 {
            (d.as_secs_f64() / wall).min(1.0)
        } else {
            0.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_fractions_of_the_window() {
        let ms = Duration::from_millis;
        assert_eq!(
            shares(&[ms(250), ms(500), ms(0), ms(0)], ms(1_000)),
            [0.25, 0.5, 0.0, 0.0]
        );
        // A window of no length says nothing was done, not a division by zero.
        assert_eq!(shares(&[ms(1); 4], Duration::ZERO), [0.0; 4]);
        // Time measured across the window's edge never reads as more than all of it.
        assert_eq!(shares(&[ms(1_200), ms(0), ms(0), ms(0)], ms(1_000))[0], 1.0);
    }

    #[test]
    fn the_window_restarts_on_publish_and_the_run_keeps_counting() {
        let t0 = Instant::now();
        let mut busy = Busy::new(t0);
        busy.spent(Activity::Tick, Instant::now());
        busy.window[Activity::Records as usize] = Duration::from_millis(300);
        busy.total[Activity::Records as usize] += Duration::from_millis(300);
        busy.publish(t0 + Duration::from_secs(1));
        assert_eq!(busy.window, [Duration::ZERO; 4]);
        assert!(busy.total[Activity::Records as usize] >= Duration::from_millis(300));
        assert_eq!(Activity::ALL.map(|a| a as usize), [0, 1, 2, 3]);
    }
}
