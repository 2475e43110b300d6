//! HDR lag histograms per workflow × stage pair × segment × dimension combination.
//!
//! Milliseconds, 3 significant digits, auto-resizing. Series are keyed by one packed
//! `u64` so a record on the match path is one hash lookup plus the HDR increment.
//! Snapshots carry the V2-serialized histogram (base64) so downstream can merge series
//! across instances and time instead of averaging percentiles.

use base64::Engine as _;
use hashbrown::HashMap;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;

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

/// Summary of one series.
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
    /// HDR V2 serialization, base64 (standard alphabet, padded).
    pub histogram_b64: String,
}

pub(crate) struct LagStore {
    series: HashMap<u64, Histogram<u64>>,
}

impl LagStore {
    pub(crate) fn new() -> Self {
        Self {
            series: HashMap::new(),
        }
    }

    /// Records `value_ms` (clamped at 0); returns whether it had to be clamped.
    pub(crate) fn record(&mut self, key: SeriesKey, value_ms: i64) -> bool {
        let h = match self.series.entry(key.pack()) {
            hashbrown::hash_map::Entry::Occupied(o) => o.into_mut(),
            // `new` auto-resizes, so no upper bound has to be guessed per workflow; 3 digits
            // is ±0.1 %, far below any SLA granularity. It only fails for > 5 digits.
            hashbrown::hash_map::Entry::Vacant(v) => match Histogram::new(3) {
                Ok(h) => v.insert(h),
                Err(_) => return value_ms < 0,
            },
        };
        let v = value_ms.max(0) as u64;
        // `record` grows an auto-resizing histogram; `saturating_record` would clamp to its
        // current range instead. Only a value beyond what HDR can represent at all fails.
        if h.record(v).is_err() {
            h.saturating_record(v);
        }
        value_ms < 0
    }

    /// Number of values recorded in a series (0 if it does not exist).
    pub(crate) fn count(&self, key: SeriesKey) -> u64 {
        self.series.get(&key.pack()).map_or(0, |h| h.len())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = SeriesKey> + '_ {
        self.series.keys().map(|&k| SeriesKey::unpack(k))
    }

    pub(crate) fn summarize(&self, key: SeriesKey) -> Option<Stats> {
        let h = self.series.get(&key.pack())?;
        let mut buf = Vec::new();
        // Serialization into a Vec cannot fail for I/O reasons; an error here would be an
        // internal HDR invariant, so report the series without its encoding rather than drop it.
        let histogram_b64 = match V2Serializer::new().serialize(h, &mut buf) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&buf),
            Err(_) => String::new(),
        };
        Some(Stats {
            count: h.len(),
            min_ms: h.min(),
            p50_ms: h.value_at_quantile(0.5),
            p90_ms: h.value_at_quantile(0.9),
            p99_ms: h.value_at_quantile(0.99),
            p999_ms: h.value_at_quantile(0.999),
            max_ms: h.max(),
            histogram_b64,
        })
    }
}

pub(crate) struct Stats {
    pub count: u64,
    pub min_ms: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub p999_ms: u64,
    pub max_ms: u64,
    pub histogram_b64: String,
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

    #[test]
    fn snapshot_decodes_to_the_same_histogram() {
        let mut s = LagStore::new();
        let k = SeriesKey {
            workflow: 0,
            from_stage: 0,
            to_stage: 1,
            segment: Segment::EndToEnd,
            combo: 0,
        };
        for v in 1..=1000 {
            s.record(k, v);
        }
        assert!(s.record(k, -5));
        let st = s.summarize(k).unwrap();
        assert_eq!(st.count, 1001);
        assert_eq!(st.min_ms, 0);
        assert_eq!(st.max_ms, 1000);
        assert!((499..=501).contains(&st.p50_ms));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(st.histogram_b64)
            .unwrap();
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(h.len(), 1001);
        assert_eq!(h.value_at_quantile(0.9), st.p90_ms);
    }
}
