//! Rules: how the topology turns decoded records into engine events, and breaches
//! into a probable cause, a route and a stable id.
//!
//! - [`Rules`]      — stage matching table (stream + event type → workflow stages),
//!   conversion of the topology into the engine's spec.
//! - [`SignalBook`] — recent error/throttling signals per correlation, bounded.
//! - [`attribute`]  — first configured cause that matches a breach.
//! - [`breach_id`]  — stable id: same breach after a restart → same id.
//! - [`Masker`]     — keyed hashing (HMAC-SHA256) of sensitive values.

use crate::config::{Cause, CauseMatch, LagSegment, Topology};
use crate::correlate::{
    BusinessHoursOverride, CorrelationId, EngineConfig, Origin, SlaPolicy, StageEvent, Timestamps,
    WorkflowSpec,
};
use crate::decode::Decoded;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::config::duration::millis as ms;

/// One stage a record can close: (workflow, stage, required event type).
#[derive(Debug, Clone)]
struct StageMatch {
    workflow: usize,
    stage: usize,
    event_type: Option<String>,
}

/// Stage matching and spec conversion for one topology.
#[derive(Debug, Clone)]
pub struct Rules {
    by_stream: Vec<Vec<StageMatch>>,
    /// Per workflow: dimension name → index in the workflow's `dimensions`.
    dim_index: Vec<HashMap<String, usize>>,
    erp_time: Vec<bool>,
}

impl Rules {
    pub fn new(topology: &Topology) -> Rules {
        let mut by_stream = vec![Vec::new(); topology.streams.len()];
        for (w, wf) in topology.workflows.iter().enumerate() {
            for (s, st) in wf.stages.iter().enumerate() {
                by_stream[st.stream].push(StageMatch {
                    workflow: w,
                    stage: s,
                    event_type: st.event_type.clone(),
                });
            }
        }
        let dim_index = topology
            .workflows
            .iter()
            .map(|w| {
                w.dimensions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.clone(), i))
                    .collect()
            })
            .collect();
        Rules {
            by_stream,
            dim_index,
            erp_time: topology.streams.iter().map(|s| s.erp_time).collect(),
        }
    }

    /// The engine's view of the topology.
    pub fn engine_config(topology: &Topology) -> EngineConfig {
        let workflows = topology
            .workflows
            .iter()
            .map(|w| WorkflowSpec {
                name: w.name.clone(),
                stages: w.stages.iter().map(|s| s.name.clone()).collect(),
                sla: SlaPolicy {
                    warn_ms: ms(w.sla.warn),
                    critical_ms: ms(w.sla.critical),
                    overrides: w
                        .sla
                        .business_hours
                        .iter()
                        .map(|b| BusinessHoursOverride {
                            tz: b.timezone,
                            days: b.days.clone(),
                            start: b.from,
                            end: b.to,
                            warn_ms: ms(b.warn),
                            critical_ms: ms(b.critical),
                        })
                        .collect(),
                },
                window_ms: ms(w.window),
                dimensions: w.dimensions.clone(),
            })
            .collect();
        let mut cfg = EngineConfig::with_workflows(workflows);
        cfg.max_pending = topology.store.max_pending;
        cfg.dimension_value_cap = topology.store.dimension_value_cap;
        cfg.oldest_n = topology.store.oldest_n;
        cfg.recent_terminal_cap = topology.store.recent_finished;
        cfg
    }

    /// Timestamps of a decoded record: the payload time is a source event time, or the
    /// ERP write time on `erp_time` streams (outbox / CDC). The decoder has already held
    /// the payload time against the `service.event_time` tolerance; when it replaced an
    /// out-of-tolerance time, `event_time_ms` is `None` here and the engine places the
    /// record at its Kafka time, leaving out the lag segments that need the payload time.
    pub fn timestamps(&self, d: &Decoded) -> Timestamps {
        if self.erp_time.get(d.stream).copied().unwrap_or(false) {
            Timestamps {
                erp_write_ms: d.event_time_ms,
                outbox_kafka_ms: d.kafka_time_ms,
                ..Timestamps::default()
            }
        } else {
            Timestamps {
                source_event_ms: d.event_time_ms,
                kafka_ms: d.kafka_time_ms,
                ..Timestamps::default()
            }
        }
    }

    /// Every workflow stage this record closes (usually one, none when its type matches no stage).
    pub fn stage_events(&self, d: &Decoded, origin: Origin) -> Vec<StageEvent> {
        let mut out = Vec::new();
        self.stage_events_into(d.clone(), origin, &mut out);
        out
    }

    /// [`Self::stage_events`] appended to `out`, taking the record by value: the last (as a
    /// rule the only) event gets its id and dimension values moved, not copied.
    pub fn stage_events_into(&self, d: Decoded, origin: Origin, out: &mut Vec<StageEvent>) {
        let Some(matches) = self.by_stream.get(d.stream) else {
            return;
        };
        let ts = self.timestamps(&d);
        let Decoded {
            correlation_id,
            event_type,
            dimensions,
            ..
        } = d;
        let mut hits = matches
            .iter()
            .filter(|m| m.event_type.is_none() || m.event_type == event_type)
            .peekable();
        while let Some(m) = hits.next() {
            let index = &self.dim_index[m.workflow];
            let (workflow, stage) = (m.workflow, m.stage);
            if hits.peek().is_some() {
                out.push(StageEvent {
                    workflow,
                    stage,
                    correlation_id: CorrelationId::from(correlation_id.as_str()),
                    ts,
                    dimensions: dimensions
                        .iter()
                        .filter_map(|(name, value)| Some((*index.get(name)?, value.clone())))
                        .collect(),
                    origin,
                });
            } else {
                out.push(StageEvent {
                    workflow,
                    stage,
                    correlation_id: CorrelationId::from(correlation_id),
                    ts,
                    dimensions: dimensions
                        .into_iter()
                        .filter_map(|(name, value)| Some((*index.get(&name)?, value)))
                        .collect(),
                    origin,
                });
                break;
            }
        }
    }
}

/// Recent signals (errors, throttling) by correlation id, oldest forgotten first.
#[derive(Debug)]
pub struct SignalBook {
    by_id: HashMap<String, Vec<(usize, String)>>,
    order: VecDeque<String>,
    capacity: usize,
    forgotten: u64,
}

impl SignalBook {
    pub fn new(capacity: usize) -> SignalBook {
        SignalBook {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            forgotten: 0,
        }
    }

    /// Records a signal of `kind` seen on signals stream `stream` for `correlation_id`.
    pub fn record(&mut self, stream: usize, correlation_id: &str, kind: &str) {
        let entry = self.by_id.entry(correlation_id.to_string()).or_default();
        if entry.is_empty() {
            self.order.push_back(correlation_id.to_string());
        }
        if !entry.iter().any(|(s, k)| *s == stream && k == kind) {
            entry.push((stream, kind.to_string()));
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                self.forgotten += 1;
            }
        }
    }

    pub fn signals(&self, correlation_id: &str) -> &[(usize, String)] {
        self.by_id.get(correlation_id).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Correlations dropped because the book was full (a bound, reported as a metric).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

/// A watched consumer group that is not OK, and the topics of its partitions that are not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlogged {
    pub group: String,
    /// Empty when the group as a whole is in trouble (e.g. its offsets cannot be read).
    pub topics: Vec<String>,
}

/// The evidence about one breach.
pub struct Evidence<'a> {
    /// Signals seen for the same correlation: (signals stream, kind).
    pub signals: &'a [(usize, String)],
    /// The segment that dominated, why it is said to (`1200 ms of 9000 ms`), and whether
    /// that is inferred (from other correlations) rather than measured on this one.
    pub dominant_segment: Option<(LagSegment, &'a str, bool)>,
    pub backlogged: &'a [Backlogged],
    /// Topics of the workflow's stages up to the one waited for (where a backlogged
    /// group's partitions must be for it to explain the breach).
    pub stage_topics: &'a [String],
    /// The breach's dimension values with the signal counts of [`SliceSignals`].
    pub slices: Option<SliceQuery<'a>>,
}

/// Asks [`SliceSignals`] about one breach's dimension values.
pub struct SliceQuery<'a> {
    pub book: &'a SliceSignals,
    pub workflow: usize,
    pub dimensions: &'a BTreeMap<String, String>,
    /// The breach's time: signals within a cause's span before it count...
    pub at_ms: i64,
    /// ...and not before the correlation started: what happened to other shipments
    /// before this one existed cannot have delayed it.
    pub started_ms: i64,
}

/// A cause and the evidence that chose it, as short texts (`signal:carrier_api_throttled`,
/// `group:wms-bridge backlogged on wms.events`, …).
#[derive(Debug, Clone)]
pub struct Attribution<'c> {
    pub cause: &'c Cause,
    pub evidence: Vec<String>,
}

/// The first cause, in configuration order, that direct evidence supports (a signal of
/// this correlation, its measured segments, a group behind on its topics); failing that,
/// the first that inferred evidence supports (signals on other correlations of one of its
/// dimension values, the segment that dominated its workflow's recent late completions).
/// Direct evidence wins: a carrier's throttling a minute ago does not explain a shipment
/// whose warehouse bridge is stopped now.
pub fn attribute<'c>(causes: &'c [Cause], ev: &Evidence<'_>) -> Option<Attribution<'c>> {
    attribute_pass(causes, ev, false).or_else(|| attribute_pass(causes, ev, true))
}

fn attribute_pass<'c>(
    causes: &'c [Cause],
    ev: &Evidence<'_>,
    inferred: bool,
) -> Option<Attribution<'c>> {
    causes.iter().find_map(|c| {
        let evidence = match &c.matcher {
            CauseMatch::Signal {
                stream,
                event_type,
                slice_rate,
            } => {
                let kind_ok = |kind: &str| event_type.as_deref().is_none_or(|t| t == kind);
                if !inferred {
                    let (_, kind) = ev
                        .signals
                        .iter()
                        .find(|(s, kind)| s == stream && kind_ok(kind))?;
                    vec![format!("signal:{kind}")]
                } else {
                    let (min, within) = (*slice_rate)?;
                    let q = ev.slices.as_ref()?;
                    let (dim, value, n) = q.book.strongest(
                        q.workflow,
                        q.dimensions,
                        *stream,
                        event_type.as_deref(),
                        q.at_ms.saturating_sub(within).max(q.started_ms),
                    )?;
                    if n < min {
                        return None;
                    }
                    let kind = event_type.as_deref().unwrap_or("any");
                    vec![format!(
                        "signal_rate:{dim}={value} {n} {kind} signals on breached correlations in {}",
                        crate::config::duration::format_duration(std::time::Duration::from_millis(
                            u64::try_from(within).unwrap_or(0)
                        ))
                    )]
                }
            }
            CauseMatch::Segment(seg) => match ev.dominant_segment {
                Some((s, why, from_others)) if s == *seg && from_others == inferred => {
                    vec![format!("segment:{} {why}", seg.name())]
                }
                _ => return None,
            },
            CauseMatch::Group(_) if inferred => return None,
            CauseMatch::Group(g) => {
                let b = ev.backlogged.iter().find(|b| &b.group == g)?;
                if b.topics.is_empty() {
                    vec![format!("group:{g} not OK")]
                } else {
                    let hit: Vec<&str> = b
                        .topics
                        .iter()
                        .filter(|t| ev.stage_topics.contains(t))
                        .map(String::as_str)
                        .collect();
                    if hit.is_empty() {
                        return None;
                    }
                    vec![format!("group:{g} backlogged on {}", hit.join(","))]
                }
            }
        };
        Some(Attribution { cause: c, evidence })
    })
}

/// Signals seen on breached correlations, per workflow and dimension value, over a
/// sliding span: evidence that one value (a carrier, a connector's warehouse) keeps
/// failing, for breaches of that value whose own correlation had no signal (yet).
/// Bounded: at most `capacity` values, each remembering its last [`SLICE_SIGNALS_KEPT`].
#[derive(Debug)]
pub struct SliceSignals {
    by_value: HashMap<(usize, String, String), Seen>,
    /// The same signals per workflow and dimension (all its values together).
    by_dimension: HashMap<(usize, String), Seen>,
    order: VecDeque<(usize, String, String)>,
    capacity: usize,
    forgotten: u64,
}

/// Signals seen, oldest first: (time, signals stream, kind).
type Seen = VecDeque<(i64, usize, Box<str>)>;

/// Signals remembered per dimension value, and per dimension.
pub const SLICE_SIGNALS_KEPT: usize = 256;
const DIMENSION_SIGNALS_KEPT: usize = 4 * SLICE_SIGNALS_KEPT;

/// Share of a dimension's signals one value must hold to be their evidence: signals on
/// DHL shipments spread over every warehouse say something of DHL, nothing of a warehouse.
pub const SLICE_SIGNALS_SHARE: f64 = 0.5;

impl SliceSignals {
    pub fn new(capacity: usize) -> SliceSignals {
        SliceSignals {
            by_value: HashMap::new(),
            by_dimension: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            forgotten: 0,
        }
    }

    /// Remembers the signals of a breached correlation against each of its dimension values.
    pub fn record(
        &mut self,
        workflow: usize,
        dimensions: &BTreeMap<String, String>,
        signals: &[(usize, String)],
        at_ms: i64,
    ) {
        if signals.is_empty() {
            return;
        }
        for (dim, value) in dimensions {
            let key = (workflow, dim.clone(), value.clone());
            let seen = match self.by_value.get_mut(&key) {
                Some(seen) => seen,
                None => {
                    self.order.push_back(key.clone());
                    self.by_value.entry(key).or_default()
                }
            };
            for (stream, kind) in signals {
                seen.push_back((at_ms, *stream, kind.as_str().into()));
            }
            while seen.len() > SLICE_SIGNALS_KEPT {
                seen.pop_front();
            }
            let all = self
                .by_dimension
                .entry((workflow, dim.clone()))
                .or_default();
            for (stream, kind) in signals {
                all.push_back((at_ms, *stream, kind.as_str().into()));
            }
            while all.len() > DIMENSION_SIGNALS_KEPT {
                all.pop_front();
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_value.remove(&old);
                self.forgotten += 1;
            }
        }
    }

    /// The dimension value of `dimensions` with the most signals of `stream` (and `kind`
    /// when given) at or after `since_ms`, with that count, among values that hold at
    /// least [`SLICE_SIGNALS_SHARE`] of their dimension's such signals.
    pub fn strongest(
        &self,
        workflow: usize,
        dimensions: &BTreeMap<String, String>,
        stream: usize,
        kind: Option<&str>,
        since_ms: i64,
    ) -> Option<(String, String, u32)> {
        let count = |seen: &Seen| {
            seen.iter()
                .filter(|(at, s, k)| {
                    *at >= since_ms && *s == stream && kind.is_none_or(|t| t == &**k)
                })
                .count()
        };
        dimensions
            .iter()
            .filter_map(|(dim, value)| {
                let n = count(self.by_value.get(&(workflow, dim.clone(), value.clone()))?);
                let all = self
                    .by_dimension
                    .get(&(workflow, dim.clone()))
                    .map_or(n, count);
                let concentrated = n as f64 >= SLICE_SIGNALS_SHARE * all as f64;
                (n > 0 && concentrated).then(|| {
                    (
                        dim.clone(),
                        value.clone(),
                        u32::try_from(n).unwrap_or(u32::MAX),
                    )
                })
            })
            .max_by_key(|(_, _, n)| *n)
    }

    /// Values dropped because the book was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub fn len(&self) -> usize {
        self.by_value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }
}

/// Which segment dominated a lag, from the parts that are known.
pub fn dominant_segment(
    partner: Option<i64>,
    middleware: Option<i64>,
    outbox: Option<i64>,
) -> Option<LagSegment> {
    [
        (partner, LagSegment::PartnerIngestion),
        (middleware, LagSegment::MiddlewareErp),
        (outbox, LagSegment::OutboxCdc),
    ]
    .into_iter()
    .filter_map(|(v, s)| v.filter(|v| *v > 0).map(|v| (v, s)))
    .max_by_key(|(v, _)| *v)
    .map(|(_, s)| s)
}

/// A stable breach id: the same workflow, correlation, kind and start time always give
/// the same id, so a breach re-emitted after a restart deduplicates downstream.
pub fn breach_id(workflow: &str, correlation_id: &[u8], kind: &str, start_ms: i64) -> String {
    let mut h = Sha256::new();
    for part in [
        workflow.as_bytes(),
        correlation_id,
        kind.as_bytes(),
        &start_ms.to_be_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for b in &digest[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

/// [`breach_id`], keyed with the masking key when masking is on: correlation ids are often
/// sequential order numbers, so an unkeyed digest of one could be reversed by trying them
/// all. Without a key it is [`breach_id`] itself.
pub fn keyed_breach_id(
    masker: &Masker,
    workflow: &str,
    correlation_id: &[u8],
    kind: &str,
    start_ms: i64,
) -> String {
    match masker.digest(&[
        workflow.as_bytes(),
        correlation_id,
        kind.as_bytes(),
        &start_ms.to_be_bytes(),
    ]) {
        Some(id) => id,
        None => breach_id(workflow, correlation_id, kind, start_ms),
    }
}

/// Keyed hashing of sensitive values; the same input and key give the same token.
#[derive(Clone)]
pub struct Masker {
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() {
            "Masker(keyed)"
        } else {
            "Masker(off)"
        })
    }
}

impl Masker {
    pub fn new(key: Option<Vec<u8>>) -> Masker {
        Masker { key }
    }

    pub fn off() -> Masker {
        Masker { key: None }
    }

    /// Whether a key is set (masking is on).
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// 32 hex chars of HMAC-SHA256 over the length-prefixed `parts`, or `None` when
    /// masking is off. For ids derived from sensitive values.
    pub fn digest(&self, parts: &[&[u8]]) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let out = mac.finalize().into_bytes();
        Some(out[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `value` unchanged when masking is off, else `h:` + 32 hex chars of HMAC-SHA256.
    pub fn mask(&self, value: &str) -> String {
        match &self.key {
            None => value.to_string(),
            Some(key) => match Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(value.as_bytes());
                    let out = mac.finalize().into_bytes();
                    let hex: String = out[..16].iter().map(|b| format!("{b:02x}")).collect();
                    format!("h:{hex}")
                }
                // HMAC takes keys of any length; this arm is unreachable in practice.
                Err(_) => "h:invalid-key".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breach_ids_are_stable_and_distinct() {
        let a = breach_id("order_import", b"SO-1", "critical", 1000);
        assert_eq!(a, breach_id("order_import", b"SO-1", "critical", 1000));
        assert_eq!(a.len(), 32);
        assert_ne!(a, breach_id("order_import", b"SO-1", "warn", 1000));
        assert_ne!(a, breach_id("order_import", b"SO-2", "critical", 1000));
        assert_ne!(a, breach_id("order_import", b"SO-1", "critical", 1001));
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(breach_id("ab", b"c", "x", 0), breach_id("a", b"bc", "x", 0));
    }

    #[test]
    fn breach_ids_are_keyed_when_masking_is_on() {
        let plain = breach_id("order_import", b"SO-1", "critical", 1000);
        assert_eq!(
            keyed_breach_id(&Masker::off(), "order_import", b"SO-1", "critical", 1000),
            plain
        );
        let k1 = Masker::new(Some(b"k1".to_vec()));
        let k2 = Masker::new(Some(b"k2".to_vec()));
        let a = keyed_breach_id(&k1, "order_import", b"SO-1", "critical", 1000);
        assert_eq!(a.len(), 32);
        assert_ne!(
            a, plain,
            "an unkeyed digest of the raw id can be enumerated"
        );
        assert_eq!(
            a,
            keyed_breach_id(&k1, "order_import", b"SO-1", "critical", 1000)
        );
        assert_ne!(
            a,
            keyed_breach_id(&k2, "order_import", b"SO-1", "critical", 1000)
        );
        assert_ne!(
            a,
            keyed_breach_id(&k1, "order_import", b"SO-2", "critical", 1000)
        );
    }

    #[test]
    fn masking_is_keyed_and_deterministic() {
        let m = Masker::new(Some(b"k1".to_vec()));
        assert_eq!(m.mask("SO-1"), m.mask("SO-1"));
        assert!(m.mask("SO-1").starts_with("h:"));
        assert_ne!(
            m.mask("SO-1"),
            Masker::new(Some(b"k2".to_vec())).mask("SO-1")
        );
        assert_eq!(Masker::off().mask("SO-1"), "SO-1");
    }

    #[test]
    fn signal_book_is_bounded() {
        let mut b = SignalBook::new(2);
        b.record(0, "a", "throttled");
        b.record(0, "a", "throttled");
        b.record(0, "b", "x");
        b.record(0, "c", "y");
        assert_eq!(b.len(), 2);
        assert_eq!(b.forgotten(), 1);
        assert!(b.signals("a").is_empty());
        assert_eq!(b.signals("c"), &[(0, "y".to_string())]);
    }

    #[test]
    fn signal_rates_name_only_a_value_the_signals_concentrate_on() {
        let mut book = SliceSignals::new(100);
        let throttled = vec![(0usize, "throttled".to_string())];
        for (n, wh) in ["WH-1", "WH-2", "WH-3", "WH-4"]
            .iter()
            .cycle()
            .take(12)
            .enumerate()
        {
            let dims: BTreeMap<String, String> = [
                ("carrier".to_string(), "DHL".to_string()),
                ("warehouse".to_string(), wh.to_string()),
            ]
            .into();
            book.record(0, &dims, &throttled, n as i64);
        }
        let shipment = |carrier: &str| -> BTreeMap<String, String> {
            [
                ("carrier".to_string(), carrier.to_string()),
                ("warehouse".to_string(), "WH-1".to_string()),
            ]
            .into()
        };
        // A DHL shipment: DHL holds all of the carrier dimension's signals.
        assert_eq!(
            book.strongest(0, &shipment("DHL"), 0, Some("throttled"), 0),
            Some(("carrier".into(), "DHL".into(), 12))
        );
        // A UPS shipment from WH-1: WH-1 holds a quarter of the warehouse signals.
        assert_eq!(
            book.strongest(0, &shipment("UPS"), 0, Some("throttled"), 0),
            None
        );
        // Too old, or another kind: nothing.
        assert_eq!(
            book.strongest(0, &shipment("DHL"), 0, Some("throttled"), 100),
            None
        );
        assert_eq!(
            book.strongest(0, &shipment("DHL"), 0, Some("other"), 0),
            None
        );
    }

    #[test]
    fn dominant_segment_picks_the_largest_known_part() {
        assert_eq!(
            dominant_segment(Some(5), Some(50), None),
            Some(LagSegment::MiddlewareErp)
        );
        assert_eq!(
            dominant_segment(Some(500), Some(50), Some(1)),
            Some(LagSegment::PartnerIngestion)
        );
        assert_eq!(dominant_segment(None, None, None), None);
    }
}
