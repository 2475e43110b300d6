//! Time for the simulator: the wall clock, or a simulated one that jumps ahead instead
//! of sleeping, so minutes of traffic are produced in well under a second.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What time it is, and how to let time pass.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Lets `step` pass: the wall clock sleeps, a simulated clock jumps ahead.
    fn tick(&self, step: Duration) -> impl Future<Output = ()> + Send;

    /// Whether this clock follows the wall clock (progress lines differ).
    fn is_real(&self) -> bool;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn tick(&self, step: Duration) {
        tokio::time::sleep(step).await;
    }

    fn is_real(&self) -> bool {
        true
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct SimulatedClock {
    now: Mutex<DateTime<Utc>>,
}

impl SimulatedClock {
    pub fn new(start: DateTime<Utc>) -> SimulatedClock {
        SimulatedClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now = now.checked_add_signed(step).unwrap_or(*now);
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn tick(&self, step: Duration) {
        self.advance(step);
        // Let other tasks (delivery reports, progress) run between jumps.
        tokio::task::yield_now().await;
    }

    fn is_real(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulated_clock_jumps_without_sleeping() {
        let start = DateTime::<Utc>::from_timestamp_millis(1_772_460_000_000).unwrap();
        let clock = SimulatedClock::new(start);
        for _ in 0..600 {
            clock.tick(Duration::from_secs(1)).await;
        }
        assert_eq!(clock.now() - start, chrono::Duration::minutes(10));
    }
}
