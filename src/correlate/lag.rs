//! HDR lag histograms per workflow × stage pair × segment × dimension combination.
//!
//! Milliseconds, 3 significant digits, auto-resizing. Series are keyed by one packed
//! `u64` so a record on the match path is one hash lookup plus the HDR increment.
//!
//! Each series has two histograms: the *interval* one, which a snapshot summarizes,
//! serializes and resets, and the *cumulative* one since start. The lag topic carries the
//! interval histograms, which downstream can merge over time and across instances (adding
//! cumulative histograms would count every lag once per snapshot), while the cumulative
//! view stays for quantiles since start. A lag is recorded into both: two HDR increments
//! on the match path cost less than folding the interval into the cumulative histogram at
//! every snapshot (measured: the fold through HDR's bucket iterator doubled the snapshot
//! time). The interval histogram counts in `u32`, half the memory of the `u64` cumulative
//! one: one interval never holds four billion lags in one bucket (and it saturates).

use base64::Engine as _;
use hashbrown::HashMap;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::{Counter, Histogram};

use super::outcome::Dimensions;

/// Which lag a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Previous seen stage → this stage.
    StageToStage,
    /// Start stage → this stage.
    FromFirst,
    /// Business lag t2 − t0 (falls back to closing − start occurrence); one per `Completed`.
    EndToEnd,
    /// t1 − t0.
    PartnerIngestion,
    /// t2 − t1.
    MiddlewareErp,
    /// t3 − t2.
    OutboxCdc,
}

impl Segment {
    /// All segments, in label order.
    pub const ALL: [Segment; 6] = [
        Segment::StageToStage,
        Segment::FromFirst,
        Segment::EndToEnd,
        Segment::PartnerIngestion,
        Segment::MiddlewareErp,
        Segment::OutboxCdc,
    ];

    /// Label value (`segment="…"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::StageToStage => "stage_to_stage",
            Segment::FromFirst => "from_first",
            Segment::EndToEnd => "end_to_end",
            Segment::PartnerIngestion => "partner_ingestion",
            Segment::MiddlewareErp => "middleware_erp",
            Segment::OutboxCdc => "outbox_cdc",
        }
    }

    fn code(self) -> u64 {
        self as u64
    }

    fn from_code(c: u64) -> Segment {
        Segment::ALL
            .get(c as usize)
            .copied()
            .unwrap_or(Segment::StageToStage)
    }
}

/// Identity of one histogram series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// Workflow index.
    pub workflow: usize,
    /// Stage the lag is measured from.
    pub from_stage: usize,
    /// Stage the lag is measured to.
    pub to_stage: usize,
    /// Segment.
    pub segment: Segment,
    /// Interned dimension combination (see [`SeriesSnapshot::dimensions`]).
    pub combo: u32,
}

impl SeriesKey {
    // workflow: 16 bits, from: 4, to: 4, segment: 3, combo: 32.
    fn pack(self) -> u64 {
        ((self.workflow as u64 & 0xffff) << 43)
            | ((self.from_stage as u64 & 0xf) << 39)
            | ((self.to_stage as u64 & 0xf) << 35)
            | (self.segment.code() << 32)
            | u64::from(self.combo)
    }

    fn unpack(k: u64) -> Self {
        Self {
            workflow: ((k >> 43) & 0xffff) as usize,
            from_stage: ((k >> 39) & 0xf) as usize,
            to_stage: ((k >> 35) & 0xf) as usize,
            segment: Segment::from_code((k >> 32) & 0x7),
            combo: (k & 0xffff_ffff) as u32,
        }
    }
}

/// Count, extremes and quantiles of a set of lags (milliseconds; all 0 when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagStats {
    /// Number of recorded lags.
    pub count: u64,
    /// Smallest lag (ms).
    pub min_ms: u64,
    /// Median (ms).
    pub p50_ms: u64,
    /// 90th percentile (ms).
    pub p90_ms: u64,
    /// 99th percentile (ms).
    pub p99_ms: u64,
    /// 99.9th percentile (ms).
    pub p999_ms: u64,
    /// Largest lag (ms).
    pub max_ms: u64,
}

impl LagStats {
    fn of<T: Counter>(h: &Histogram<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        // Four scans that stop at their quantile, each summing counts in vectorised chunks:
        // measured faster than one pass through HDR's bucket iterator.
        Self {
            count: h.len(),
            min_ms: h.min(),
            p50_ms: h.value_at_quantile(0.5),
            p90_ms: h.value_at_quantile(0.9),
            p99_ms: h.value_at_quantile(0.99),
            p999_ms: h.value_at_quantile(0.999),
            max_ms: h.max(),
        }
    }
}

/// Summary of one series for one interval, from
/// [`Engine::lag_snapshot`](super::Engine::lag_snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSnapshot {
    /// Series identity.
    pub key: SeriesKey,
    /// Workflow name.
    pub workflow: String,
    /// Name of `key.from_stage`.
    pub from_stage: String,
    /// Name of `key.to_stage`.
    pub to_stage: String,
    /// Dimension names and values of the series.
    pub dimensions: Dimensions,
    /// Start of the interval (the previous snapshot's end, or the time given to
    /// [`Engine::open_lag_interval`](super::Engine::open_lag_interval); 0 when neither
    /// exists: "since the engine was created").
    pub interval_start_ms: i64,
    /// End of the interval: the time given to this snapshot.
    pub interval_end_ms: i64,
    /// Lags recorded in the interval.
    pub interval: LagStats,
    /// HDR V2 serialization of the interval's histogram, base64 (standard alphabet,
    /// padded). Merging the histograms of consecutive intervals gives any longer span.
    pub histogram_b64: String,
    /// Every lag recorded since the engine was created, this interval included.
    pub cumulative: LagStats,
}

struct Series {
    interval: Histogram<u32>,
    cumulative: Histogram<u64>,
}

pub(crate) struct LagStore {
    series: HashMap<u64, Series>,
    /// Serialization buffer, reused by every snapshot.
    buf: Vec<u8>,
    /// A lag was recorded or an interval closed since [`LagStore::take_changed`].
    changed: bool,
}

/// A fresh histogram: `new` auto-resizes, so no upper bound has to be guessed per workflow;
/// 3 digits is ±0.1 %, far below any SLA granularity. It only fails for > 5 digits.
fn fresh<T: Counter>() -> Option<Histogram<T>> {
    Histogram::new(3).ok()
}

fn record_into<T: Counter>(h: &mut Histogram<T>, v: u64, n: T) {
    // `record_n` grows an auto-resizing histogram; `saturating_record` would clamp to its
    // current range instead. Only a value beyond what HDR can represent at all fails.
    if h.record_n(v, n).is_err() {
        h.saturating_record(v);
    }
}

impl LagStore {
    pub(crate) fn new() -> Self {
        Self {
            series: HashMap::new(),
            buf: Vec::new(),
            changed: false,
        }
    }

    /// The series of `key`, created empty if new (`None` only if HDR refuses to create
    /// a histogram).
    fn series_mut(&mut self, key: SeriesKey) -> Option<&mut Series> {
        Some(match self.series.entry(key.pack()) {
            hashbrown::hash_map::Entry::Occupied(o) => o.into_mut(),
            hashbrown::hash_map::Entry::Vacant(v) => v.insert(Series {
                interval: fresh()?,
                cumulative: fresh()?,
            }),
        })
    }

    /// Whether a lag was recorded or an interval closed since the last call.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every series that recorded a lag in the current interval, with the interval's
    /// histogram (HDR V2), sorted by series key: what a restart must not lose.
    pub(crate) fn open_intervals(&self) -> Vec<(SeriesKey, Vec<u8>)> {
        let mut out: Vec<(SeriesKey, Vec<u8>)> = self
            .series
            .iter()
            .filter(|(_, s)| !s.interval.is_empty())
            .filter_map(|(&k, s)| {
                let mut buf = Vec::new();
                V2Serializer::new()
                    .serialize(&s.interval, &mut buf)
                    .ok()
                    .map(|_| (SeriesKey::unpack(k), buf))
            })
            .collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Adds a restored interval histogram (from [`LagStore::open_intervals`]) to a series,
    /// in its interval and its cumulative view.
    pub(crate) fn restore_interval(&mut self, key: SeriesKey, bytes: &[u8]) -> Result<(), String> {
        use hdrhistogram::serialization::Deserializer;
        let interval: Histogram<u32> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("lag histogram: {e:?}"))?;
        let cumulative: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("lag histogram: {e:?}"))?;
        let s = self
            .series_mut(key)
            .ok_or_else(|| "cannot create a histogram".to_string())?;
        s.interval
            .add(&interval)
            .map_err(|e| format!("lag histogram: {e:?}"))?;
        s.cumulative
            .add(&cumulative)
            .map_err(|e| format!("lag histogram: {e:?}"))?;
        self.changed = true;
        Ok(())
    }

    /// Records `value_ms` (clamped at 0) in the current interval; returns whether it had
    /// to be clamped.
    pub(crate) fn record(&mut self, key: SeriesKey, value_ms: i64) -> bool {
        let Some(s) = self.series_mut(key) else {
            return value_ms < 0;
        };
        let v = value_ms.max(0) as u64;
        record_into(&mut s.interval, v, 1);
        record_into(&mut s.cumulative, v, 1);
        self.changed = true;
        value_ms < 0
    }

    /// Number of values recorded in a series since creation (0 if it does not exist).
    pub(crate) fn count(&self, key: SeriesKey) -> u64 {
        self.series
            .get(&key.pack())
            .map_or(0, |s| s.cumulative.len())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = SeriesKey> + '_ {
        self.series.keys().map(|&k| SeriesKey::unpack(k))
    }

    /// Ends the current interval of a series: its summary and encoding, then the interval
    /// histogram is cleared (keeping its allocation).
    /// `None` when the series does not exist or recorded nothing in the interval.
    pub(crate) fn close_interval(&mut self, key: SeriesKey) -> Option<Closed> {
        let s = self.series.get_mut(&key.pack())?;
        if s.interval.is_empty() {
            return None;
        }
        let Series {
            interval,
            cumulative,
        } = s;
        let stats = LagStats::of(interval);
        self.buf.clear();
        // Serialization into a Vec cannot fail for I/O reasons; an error here would be an
        // internal HDR invariant, so report the series without its encoding rather than drop it.
        let histogram_b64 = match V2Serializer::new().serialize(interval, &mut self.buf) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&self.buf),
            Err(_) => String::new(),
        };
        interval.reset();
        self.changed = true;
        Some(Closed {
            interval: stats,
            histogram_b64,
            cumulative: LagStats::of(cumulative),
        })
    }

    /// Statistics of every lag recorded since creation in the series matching `filter`,
    /// merged. Allocates one histogram per call; meant for status pages, not the match path.
    pub(crate) fn merged(&self, mut filter: impl FnMut(SeriesKey) -> bool) -> Option<LagStats> {
        let mut total: Option<Histogram<u64>> = None;
        for (&k, s) in &self.series {
            if !filter(SeriesKey::unpack(k)) {
                continue;
            }
            let t = match &mut total {
                Some(t) => t,
                None => total.insert(fresh()?),
            };
            // Same precision and lowest value, auto-resizing: adding cannot fail on range.
            let _ = t.add(&s.cumulative);
        }
        total.filter(|t| !t.is_empty()).map(|t| LagStats::of(&t))
    }
}

/// One series' closed interval.
pub(crate) struct Closed {
    pub interval: LagStats,
    pub histogram_b64: String,
    pub cumulative: LagStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn keys_round_trip() {
        let k = SeriesKey {
            workflow: 513,
            from_stage: 3,
            to_stage: 15,
            segment: Segment::OutboxCdc,
            combo: 0xdead_beef,
        };
        assert_eq!(SeriesKey::unpack(k.pack()), k);
    }

    fn key() -> SeriesKey {
        SeriesKey {
            workflow: 0,
            from_stage: 0,
            to_stage: 1,
            segment: Segment::EndToEnd,
            combo: 0,
        }
    }

    fn decode(b64: &str) -> Histogram<u64> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap()
    }

    #[test]
    fn snapshot_decodes_to_the_same_histogram() {
        let mut s = LagStore::new();
        let k = key();
        for v in 1..=1000 {
            s.record(k, v);
        }
        assert!(s.record(k, -5));
        let st = s.close_interval(k).unwrap();
        assert_eq!(st.interval.count, 1001);
        assert_eq!(st.interval.min_ms, 0);
        assert_eq!(st.interval.max_ms, 1000);
        assert!((499..=501).contains(&st.interval.p50_ms));
        let h = decode(&st.histogram_b64);
        assert_eq!(h.len(), 1001);
        for (q, v) in [
            (0.5, st.interval.p50_ms),
            (0.9, st.interval.p90_ms),
            (0.99, st.interval.p99_ms),
            (0.999, st.interval.p999_ms),
        ] {
            assert_eq!(h.value_at_quantile(q), v, "quantile {q}");
        }
    }

    #[test]
    fn summary_quantiles_match_hdr_on_skewed_data() {
        let mut h = Histogram::<u32>::new(3).unwrap();
        for v in 0..5_000u64 {
            h.record_n(v * v % 90_001, 1 + (v % 7) as u32).unwrap();
        }
        h.record(86_400_000).unwrap();
        let st = LagStats::of(&h);
        let hdr = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
        assert_eq!([st.p50_ms, st.p90_ms, st.p99_ms, st.p999_ms], hdr);
        assert_eq!(
            (st.count, st.min_ms, st.max_ms),
            (h.len(), h.min(), h.max())
        );
    }

    #[test]
    fn intervals_hold_only_their_own_lags_and_merge_into_the_cumulative_view() {
        let mut s = LagStore::new();
        let k = key();
        for v in 1..=100 {
            s.record(k, v);
        }
        let first = s.close_interval(k).unwrap();
        // Nothing recorded since: no summary for this interval.
        assert!(s.close_interval(k).is_none());
        for v in 5_000..5_010 {
            s.record(k, v);
        }
        assert_eq!(s.count(k), 110);
        let second = s.close_interval(k).unwrap();
        assert_eq!(second.interval.count, 10);
        assert_eq!(second.interval.min_ms, 5_000);
        assert_eq!(second.cumulative.count, 110);
        assert_eq!(second.cumulative.min_ms, 1);
        assert!((5_009..=5_012).contains(&second.cumulative.max_ms));
        // Downstream: merging the interval histograms gives the cumulative one.
        let mut merged = decode(&first.histogram_b64);
        // A decoded histogram has a fixed range; later intervals may hold larger lags.
        merged.auto(true);
        merged.add(decode(&second.histogram_b64)).unwrap();
        assert_eq!(LagStats::of(&merged), second.cumulative);
        assert_eq!(s.merged(|_| true), Some(second.cumulative));
        s.record(k, 7);
        assert_eq!(s.merged(|_| true).map(|m| m.count), Some(111));
        assert_eq!(s.merged(|k| k.workflow == 9), None);
    }
}
