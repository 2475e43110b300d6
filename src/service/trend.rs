//! A workflow's recent activity for the API and the web view's sparkline: correlations
//! started and completed, and the end-to-end lag of those completed, per bucket of engine
//! time. Bounded: [`TREND_POINTS`] buckets of [`TREND_BUCKET_MS`].

use crate::emit::http::TrendPoint;
use hdrhistogram::Histogram;
use std::collections::VecDeque;

/// Width of one bucket.
pub const TREND_BUCKET_MS: i64 = 10_000;
/// Buckets kept (ten minutes).
pub const TREND_POINTS: usize = 60;
/// The rate is measured over this many complete buckets (one minute).
const RATE_BUCKETS: i64 = 6;

#[derive(Debug, Clone, Default)]
struct Bucket {
    start_ms: i64,
    started: u64,
    completed: u64,
    max_ms: Option<u64>,
    p50_ms: Option<u64>,
    p99_ms: Option<u64>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Trend {
    buckets: VecDeque<Bucket>,
    /// Lags of the newest bucket (its quantiles are taken when a newer one starts).
    newest: Option<Histogram<u64>>,
}

impl Default for Trend {
    fn default() -> Self {
        Trend::new()
    }
}

impl Trend {
    pub fn new() -> Trend {
        Trend {
            buckets: VecDeque::new(),
            newest: Histogram::new(2).ok(),
        }
    }

    /// A correlation started at `at_ms`.
    pub fn started(&mut self, at_ms: i64) {
        if let Some(b) = self.bucket(at_ms) {
            b.started += 1;
        }
    }

    /// A correlation completed at `at_ms` with end-to-end lag `lag_ms`.
    pub fn completed(&mut self, at_ms: i64, lag_ms: i64) {
        let lag = u64::try_from(lag_ms.max(0)).unwrap_or(0);
        let newest = self.buckets.back().map(|b| b.start_ms);
        let Some(b) = self.bucket(at_ms) else {
            return;
        };
        b.completed += 1;
        b.max_ms = Some(b.max_ms.map_or(lag, |m| m.max(lag)));
        let start = b.start_ms;
        // The bucket may just have become the newest.
        if newest.is_none_or(|n| start >= n) {
            if let Some(h) = &mut self.newest {
                let _ = h.record(lag);
            }
        }
    }

    /// The bucket `at_ms` falls in, started (with empty ones between) when it is newer
    /// than every bucket so far; `None` when it is older than every bucket kept.
    fn bucket(&mut self, at_ms: i64) -> Option<&mut Bucket> {
        let start = at_ms.div_euclid(TREND_BUCKET_MS) * TREND_BUCKET_MS;
        let newest = self.buckets.back().map(|b| b.start_ms);
        if newest.is_none_or(|n| start > n) {
            self.close_newest();
            let mut next = match newest {
                Some(n) if start - n <= TREND_BUCKET_MS * TREND_POINTS as i64 => {
                    n + TREND_BUCKET_MS
                }
                _ => {
                    self.buckets.clear();
                    start
                }
            };
            while next <= start {
                self.buckets.push_back(Bucket {
                    start_ms: next,
                    ..Bucket::default()
                });
                next += TREND_BUCKET_MS;
            }
            while self.buckets.len() > TREND_POINTS {
                self.buckets.pop_front();
            }
        }
        let first = self.buckets.front()?.start_ms;
        if start < first {
            return None;
        }
        let i = usize::try_from((start - first) / TREND_BUCKET_MS).ok()?;
        self.buckets.get_mut(i)
    }

    /// Takes the quantiles of the newest bucket and empties its histogram.
    fn close_newest(&mut self) {
        let (Some(b), Some(h)) = (self.buckets.back_mut(), &mut self.newest) else {
            return;
        };
        if !h.is_empty() {
            b.p50_ms = Some(h.value_at_quantile(0.5));
            b.p99_ms = Some(h.value_at_quantile(0.99));
        }
        h.reset();
    }

    /// The last [`TREND_POINTS`] buckets up to the one `now_ms` is in, oldest first.
    pub fn points(&self, now_ms: i64) -> Vec<TrendPoint> {
        let now_bucket = now_ms.div_euclid(TREND_BUCKET_MS) * TREND_BUCKET_MS;
        let newest = self.buckets.back().map(|b| b.start_ms);
        let end = newest.map_or(now_bucket, |n| n.max(now_bucket));
        let first = end - (TREND_POINTS as i64 - 1) * TREND_BUCKET_MS;
        (0..TREND_POINTS as i64)
            .map(|i| {
                let start_ms = first + i * TREND_BUCKET_MS;
                let Some(b) = self.buckets.iter().find(|b| b.start_ms == start_ms) else {
                    return TrendPoint {
                        start_ms,
                        ..TrendPoint::default()
                    };
                };
                let (p50_ms, p99_ms) = match &self.newest {
                    Some(h) if Some(start_ms) == newest && !h.is_empty() => (
                        Some(h.value_at_quantile(0.5)),
                        Some(h.value_at_quantile(0.99)),
                    ),
                    _ => (b.p50_ms, b.p99_ms),
                };
                TrendPoint {
                    start_ms,
                    started: b.started,
                    completed: b.completed,
                    p50_ms,
                    p99_ms,
                    max_ms: b.max_ms,
                }
            })
            .collect()
    }

    /// Starts per second over the last minute of complete buckets before the one `now_ms`
    /// is in (fewer when less has been seen).
    pub fn rate_per_second(&self, now_ms: i64) -> f64 {
        let now_bucket = now_ms.div_euclid(TREND_BUCKET_MS) * TREND_BUCKET_MS;
        let from = now_bucket - RATE_BUCKETS * TREND_BUCKET_MS;
        let Some(first) = self.buckets.front().map(|b| b.start_ms) else {
            return 0.0;
        };
        let from = from.max(first);
        let buckets = (now_bucket - from) / TREND_BUCKET_MS;
        if buckets <= 0 {
            return 0.0;
        }
        let started: u64 = self
            .buckets
            .iter()
            .filter(|b| b.start_ms >= from && b.start_ms < now_bucket)
            .map(|b| b.started)
            .sum();
        started as f64 / (buckets as f64 * TREND_BUCKET_MS as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: i64 = TREND_BUCKET_MS;

    #[test]
    fn buckets_count_starts_and_completions_with_their_lag() {
        let mut t = Trend::new();
        let base = 1_000 * B;
        for i in 0..10 {
            t.started(base + i * 100);
        }
        t.completed(base + 500, 2_000);
        t.completed(base + 600, 4_000);
        // The next bucket: the first one's quantiles are kept.
        t.started(base + B);
        t.completed(base + B + 1, 9_000);
        // A late completion of the first bucket raises its count and max only.
        t.completed(base + 900, 30_000);
        let p = t.points(base + B + 5);
        assert_eq!(p.len(), TREND_POINTS);
        let last = &p[TREND_POINTS - 1];
        let prev = &p[TREND_POINTS - 2];
        assert_eq!(last.start_ms, base + B);
        assert_eq!((last.started, last.completed), (1, 1));
        assert_eq!(last.p99_ms.map(|v| v / 100), Some(90));
        assert_eq!((prev.started, prev.completed), (10, 3));
        assert_eq!(prev.max_ms, Some(30_000));
        assert_eq!(prev.p50_ms.map(|v| v / 100), Some(20));
        assert_eq!(prev.p99_ms.map(|v| v / 100), Some(40));
        assert!(p[..TREND_POINTS - 2].iter().all(|b| b.started == 0));
        // Ten starts in the one complete bucket before now's: one per second.
        assert!((t.rate_per_second(base + B + 5) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn points_reach_the_clock_through_quiet_buckets_and_stay_bounded() {
        let mut t = Trend::new();
        let base = 500 * B;
        t.started(base);
        let p = t.points(base + 3 * B);
        assert_eq!(p[TREND_POINTS - 1].start_ms, base + 3 * B);
        assert_eq!(p[TREND_POINTS - 4].started, 1);
        for i in 0..(3 * TREND_POINTS as i64) {
            t.started(base + i * B);
        }
        assert!(t.buckets.len() <= TREND_POINTS);
        // Older than everything kept: ignored.
        t.started(base);
        let p = t.points(base + (3 * TREND_POINTS as i64 - 1) * B);
        assert!(p.iter().all(|b| b.started == 1), "{p:?}");
        // A jump far ahead starts over.
        t.completed(base + 10_000 * B, 1);
        assert_eq!(t.buckets.len(), 1);
        assert_eq!(t.rate_per_second(base + 10_000 * B), 0.0);
    }
}
