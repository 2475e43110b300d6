//! Incidents: what an alerting consumer acts on, instead of one breach event per late
//! correlation.
//!
//! Breach events (`breach`, `never_arrived`) are grouped by **workflow × probable cause ×
//! slice**. The slice is a dimension value (`carrier=DHL`) when that value is *degraded*,
//! and the whole workflow otherwise. An incident is `opened` at its first breach,
//! `updated` at most every `incidents.update_every` (at once when its severity or slice
//! changes), and `resolved` once no breach has come for `incidents.quiet` and completions
//! flow again in its slice.
//!
//! **Degraded slices.** Per workflow and dimension value, correlations are counted over
//! `incidents.slice_window` (ten buckets, on the engine's event-time clock) as trials:
//! a warn breach, or a completion that never breached. A value is degraded when it has at
//! least `incidents.degraded_min_breaches` breaches and the *lower bound* of its breach
//! rate (Wilson score interval, 95%) is at least `incidents.degraded_factor` times its
//! peers' rate (the other values of the same dimension, smoothed as `(b + ½) / (n + 1)`).
//! It stays degraded until that ratio falls below half the factor (hysteresis) or its
//! breaches leave the window. The lower bound keeps a short streak (three of three orders
//! of one channel late when a fault hits a random share of all orders) from naming a
//! value; the smoothing keeps a dimension without peers from ever naming one. When a value becomes degraded, an open whole-workflow incident whose
//! breaches are mostly (≥ 80%) of that value is narrowed to it, so one fault stays one
//! incident even though its first breaches came before the slice was recognised.
//!
//! **Flood control.** At most `incidents.max_open` incidents are open: a breach that would
//! open one more is counted (`synclag_incidents_suppressed_total{reason="open_cap"}`) and
//! stays a breach event only. At most `incidents.max_events_per_minute` incident events
//! are emitted per minute; `opened` and `resolved` always go out (they count against the
//! budget), `updated` events beyond it wait for the next minute and carry the state then
//! (`reason="rate_cap"`).
//!
//! Pure: no Kafka, no clock of its own (times are passed in), metrics only in `publish`.

use crate::config::Incidents as Config;
use crate::emit::events::{bound_text, BreachEvent, IncidentEvent, BREACH_FIELD_MAX_BYTES};
use crate::telemetry::names;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A dimension value: (dimension, value).
pub type Slice = (String, String);

/// Share of an open whole-workflow incident's breaches a newly degraded value must hold
/// for the incident to be narrowed to it.
const NARROW_SHARE: f64 = 0.8;
/// Evidence texts an incident keeps.
const EVIDENCE_KEPT: usize = 16;
/// Distinct dimension values an incident counts its breaches by.
const VALUES_KEPT: usize = 64;
/// Correlations an incident follows individually (for its pending count and to count each
/// once); beyond this, breaches are counted but not followed (counted in
/// `synclag_incident_correlations_not_followed_total`). With `max_open` incidents this
/// bounds the memory of a flood: 500 × 1,000 ids.
const CORRELATIONS_FOLLOWED: usize = 1_000;
/// Dimension values the slice statistics follow; beyond this, new values are not counted.
const SLICES_FOLLOWED: usize = 10_000;
/// Buckets of the slice window.
const BUCKETS: i64 = 10;
/// The cause of breaches no configured cause matched.
pub const UNKNOWN: &str = "unknown";
/// Late completions of an `unknown` incident that must agree on a cause, and their share
/// of its late completions, before the incident takes that cause (the same rule that lets
/// a workflow's late completions explain its pending breaches, so both switch together).
const VOTES_NEEDED: u32 = 3;
const VOTES_SHARE: f64 = 0.6;

/// Resolved incidents kept for the API.
const RESOLVED_KEPT: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    workflow: String,
    cause: String,
    slice: Option<Slice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    Pending,
    Closed,
}

#[derive(Debug)]
struct Incident {
    id: String,
    key: Key,
    severity: &'static str,
    route: Option<String>,
    team: Option<String>,
    trigger: &'static str,
    opened_at_ms: i64,
    first_breach_ms: i64,
    last_breach_ms: i64,
    breached: u64,
    never_arrived: u64,
    completed: u64,
    worst_lag_ms: i64,
    correlations: HashMap<String, Followed>,
    sample: Vec<String>,
    evidence: Vec<String>,
    by_value: HashMap<Slice, u32>,
    /// A completion was seen in the slice after the last breach.
    flowing: bool,
    sequence: u64,
    /// Wall time of the last event emitted for it.
    last_emitted_wall: i64,
    /// Changed since the last event.
    dirty: bool,
    /// Changed in a way that is announced at once (severity, slice).
    urgent: bool,
    /// An update is waiting for the event budget.
    deferred: bool,
    rates: Option<(f64, f64)>,
    /// Opened as `unknown`; the causes its late completions (`resolved` breaches) were
    /// attributed to, until one wins.
    votes: Option<BTreeMap<String, u32>>,
}

impl Incident {
    fn pending(&self) -> u64 {
        self.correlations
            .values()
            .filter(|f| **f == Followed::Pending)
            .count() as u64
    }

    fn event(&self, kind: &str, wall_ms: i64, resolved_at_ms: Option<i64>) -> IncidentEvent {
        let text = |s: &str| bound_text(s, BREACH_FIELD_MAX_BYTES).into_owned();
        IncidentEvent {
            incident_id: self.id.clone(),
            kind: kind.to_string(),
            sequence: self.sequence as i64,
            severity: self.severity.to_string(),
            workflow: text(&self.key.workflow),
            slice: self
                .key
                .slice
                .iter()
                .map(|(d, v)| (text(d), text(v)))
                .collect(),
            probable_cause: text(&self.key.cause),
            route: self.route.clone(),
            team: self.team.clone(),
            evidence: self.evidence.iter().map(|e| text(e)).collect(),
            trigger: self.trigger.to_string(),
            opened_at_ms: self.opened_at_ms,
            first_breach_ms: self.first_breach_ms,
            last_breach_ms: self.last_breach_ms,
            resolved_at_ms,
            emitted_at_ms: wall_ms,
            breached: self.breached as i64,
            pending: self.pending() as i64,
            completed: self.completed as i64,
            never_arrived: self.never_arrived as i64,
            worst_lag_ms: self.worst_lag_ms,
            sample: self.sample.iter().map(|c| text(c)).collect(),
            slice_breach_rate: self.rates.map(|r| r.0),
            peer_breach_rate: self.rates.map(|r| r.1),
        }
    }
}

/// Breaches and finished correlations per time bucket.
#[derive(Debug, Default, Clone)]
struct Counts {
    buckets: VecDeque<(i64, u32, u32)>,
}

impl Counts {
    fn add(&mut self, bucket: i64, breaches: u32, finished: u32) {
        match self.buckets.back_mut() {
            Some(b) if b.0 == bucket => {
                b.1 += breaches;
                b.2 += finished;
            }
            Some(b) if b.0 > bucket => {
                // An older time (outcomes are released in per-correlation order, not
                // globally sorted): count it in the newest bucket it is not after.
                if let Some(b) = self.buckets.iter_mut().rev().find(|b| b.0 <= bucket) {
                    b.1 += breaches;
                    b.2 += finished;
                }
            }
            _ => self.buckets.push_back((bucket, breaches, finished)),
        }
    }

    fn trim(&mut self, oldest: i64) {
        while self.buckets.front().is_some_and(|b| b.0 < oldest) {
            self.buckets.pop_front();
        }
    }

    fn sum(&self, oldest: i64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| b.0 >= oldest)
            .fold((0, 0), |(b, n), x| (b + x.1, n + x.2))
    }
}

#[derive(Debug, Clone, Copy)]
struct Degraded {
    /// Point breach rates of the value and of its peers (shown in incidents).
    rate: f64,
    peer_rate: f64,
    /// What the decision is made on: lower bound of the value's rate / peers' rate.
    ratio: f64,
    /// The ratio fell below the opening factor but not below the clearing one: the flag
    /// was kept (one suppressed flap is counted per dip).
    dipped: bool,
}

/// Breach statistics of one dimension value against its peers.
struct Rates {
    breaches: u32,
    /// Lower bound of the value's breach rate: few trials prove little.
    slice_low: f64,
    /// Peers' breach rate, smoothed (`(b + ½) / (n + 1)`): no peers, no comparison.
    peers: f64,
    slice_point: f64,
    peers_point: f64,
}

/// Lower bound of the Wilson score interval (95%) for `b` successes in `n` trials.
fn wilson_lower(b: u32, n: u32) -> f64 {
    if n == 0 {
        return 0.0;
    }
    const Z: f64 = 1.96;
    let n = f64::from(n);
    let p = f64::from(b) / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let margin = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).max(0.0)
}

/// What the book counted, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub opened: u64,
    pub updated: u64,
    pub resolved: u64,
    pub suppressed_open_cap: u64,
    pub deferred_rate_cap: u64,
    /// Breaches that joined an incident already open (alerts not sent one by one).
    pub folded: u64,
    /// Times hysteresis kept a degraded value degraded.
    pub flaps_suppressed: u64,
    /// Dimension values not followed because [`SLICES_FOLLOWED`] was reached.
    pub slices_not_followed: u64,
    /// Breached correlations an incident did not follow (beyond its 1,000).
    pub correlations_not_followed: u64,
}

/// Groups breach events into incidents. See the module documentation.
#[derive(Debug)]
pub struct IncidentBook {
    cfg: Config,
    open: BTreeMap<Key, Incident>,
    resolved: VecDeque<IncidentEvent>,
    /// Looked up per outcome by borrowed names ([`SliceRef`], [`TotalRef`]).
    slices: hashbrown::HashMap<(String, String, String), Counts>,
    totals: hashbrown::HashMap<(String, String), Counts>,
    degraded: HashMap<(String, String, String), Degraded>,
    /// Start of the current budget minute (wall ms) and events emitted in it.
    budget: (i64, usize),
    counters: Counters,
    window_ms: i64,
}

impl IncidentBook {
    pub fn new(cfg: &Config) -> IncidentBook {
        IncidentBook {
            window_ms: i64::try_from(cfg.slice_window.as_millis())
                .unwrap_or(i64::MAX)
                .max(BUCKETS),
            cfg: cfg.clone(),
            open: BTreeMap::new(),
            resolved: VecDeque::new(),
            slices: hashbrown::HashMap::new(),
            totals: hashbrown::HashMap::new(),
            degraded: HashMap::new(),
            budget: (i64::MIN, 0),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn bucket(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.window_ms / BUCKETS)
    }

    fn oldest_bucket(&self, now_ms: i64) -> i64 {
        self.bucket(now_ms) - (BUCKETS - 1)
    }

    /// Counts one breach or finished correlation against each of its dimension values.
    fn count<'d>(
        &mut self,
        workflow: &str,
        dims: impl IntoIterator<Item = (&'d str, &'d str)>,
        at_ms: i64,
        breach: bool,
    ) {
        let bucket = self.bucket(at_ms);
        let (b, n) = if breach { (1, 0) } else { (0, 1) };
        for (dim, value) in dims {
            let full = self.slices.len() >= SLICES_FOLLOWED;
            match self.slices.get_mut(&SliceRef(workflow, dim, value)) {
                Some(c) => c.add(bucket, b, n),
                None if !full => self
                    .slices
                    .entry((workflow.to_string(), dim.to_string(), value.to_string()))
                    .or_default()
                    .add(bucket, b, n),
                None => self.counters.slices_not_followed += 1,
            }
            match self.totals.get_mut(&TotalRef(workflow, dim)) {
                Some(c) => c.add(bucket, b, n),
                None => self
                    .totals
                    .entry((workflow.to_string(), dim.to_string()))
                    .or_default()
                    .add(bucket, b, n),
            }
        }
    }

    /// Over the window ending `now_ms`: the value's breaches, the lower bound of its breach
    /// rate (Wilson score, 95%), its peers' smoothed rate, and both point rates.
    fn rates(&self, key: &(String, String, String), now_ms: i64) -> Option<Rates> {
        let oldest = self.oldest_bucket(now_ms);
        let (b_s, n_s) = self.slices.get(key)?.sum(oldest);
        let (b_t, n_t) = self
            .totals
            .get(&TotalRef(&key.0, &key.1))
            .map_or((0, 0), |c| c.sum(oldest));
        let (b_p, n_p) = (b_t.saturating_sub(b_s), n_t.saturating_sub(n_s));
        let point = |b: u32, n: u32| f64::from(b) / f64::from((b + n).max(1));
        Some(Rates {
            breaches: b_s,
            slice_low: wilson_lower(b_s, b_s + n_s),
            peers: (f64::from(b_p) + 0.5) / (f64::from(b_p + n_p) + 1.0),
            slice_point: point(b_s, n_s),
            peers_point: point(b_p, n_p),
        })
    }

    /// Re-judges whether the value `key` is degraded; returns true when it just became so.
    fn judge(&mut self, key: &(String, String, String), now_ms: i64) -> bool {
        let Some(r) = self.rates(key, now_ms) else {
            return false;
        };
        let (breaches, rate, peer) = (r.breaches, r.slice_point, r.peers_point);
        let ratio = r.slice_low / r.peers;
        let open_at = self.cfg.degraded_factor;
        let clear_at = open_at / 2.0;
        match self.degraded.get_mut(key) {
            Some(d) => {
                if breaches == 0 || ratio < clear_at {
                    self.degraded.remove(key);
                } else {
                    d.rate = rate;
                    d.peer_rate = peer;
                    d.ratio = ratio;
                    if ratio < open_at && !d.dipped {
                        d.dipped = true;
                        self.counters.flaps_suppressed += 1;
                    } else if ratio >= open_at {
                        d.dipped = false;
                    }
                }
                false
            }
            None => {
                if breaches as usize >= self.cfg.degraded_min_breaches && ratio >= open_at {
                    self.degraded.insert(
                        key.clone(),
                        Degraded {
                            rate,
                            peer_rate: peer,
                            ratio,
                            dipped: false,
                        },
                    );
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Dimension values currently degraded, as `(workflow, dimension, value)`.
    pub fn degraded(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self.degraded.keys().cloned().collect();
        v.sort();
        v
    }

    /// A completion of `workflow` with these (shown) dimension values at event time
    /// `at_ms`; `on_time` when it never breached (then it counts as a trial of the slice
    /// statistics, a breach being the other kind). Counted in open incidents whose slice
    /// it is in.
    pub fn completed(&mut self, workflow: &str, dims: &[(&str, &str)], at_ms: i64, on_time: bool) {
        if on_time {
            self.count(workflow, dims.iter().copied(), at_ms, false);
        }
        for inc in open_of(&mut self.open, workflow) {
            let in_slice = inc.key.slice.as_ref().is_none_or(|(d, v)| {
                dims.iter()
                    .any(|(k, value)| *k == d.as_str() && *value == v.as_str())
            });
            if in_slice {
                inc.completed += 1;
                if at_ms >= inc.last_breach_ms {
                    inc.flowing = true;
                }
                inc.dirty = true;
            }
        }
    }

    /// Takes one breach event (any kind) raised at event time `at_ms`.
    pub fn observe(&mut self, ev: &BreachEvent, at_ms: i64) {
        match ev.kind.as_str() {
            "breach" | "never_arrived" => self.breach(ev, at_ms),
            "resolved" | "evicted" => self.close(ev),
            _ => {}
        }
    }

    /// A breached correlation ended (completed late, or evicted): no longer pending. A late
    /// completion names the cause its measured segments show; an incident opened as
    /// `unknown` takes the cause most of its late completions agree on.
    fn close(&mut self, ev: &BreachEvent) {
        let mut adopt: Vec<(Key, String)> = Vec::new();
        for inc in open_of(&mut self.open, &ev.workflow) {
            let Some(f) = inc.correlations.get_mut(&ev.correlation_id) else {
                continue;
            };
            if *f == Followed::Pending {
                *f = Followed::Closed;
                inc.dirty = true;
            }
            let (Some(votes), Some(cause)) = (&mut inc.votes, &ev.probable_cause) else {
                continue;
            };
            if inc.key.cause != UNKNOWN || ev.kind != "resolved" {
                continue;
            }
            *votes.entry(cause.clone()).or_default() += 1;
            let total: u32 = votes.values().sum();
            let n = votes.get(cause).copied().unwrap_or(0);
            if n >= VOTES_NEEDED && f64::from(n) >= VOTES_SHARE * f64::from(total) {
                adopt.push((inc.key.clone(), cause.clone()));
            }
        }
        for (old, cause) in adopt {
            let new = Key {
                cause,
                ..old.clone()
            };
            if self.open.contains_key(&new) {
                continue;
            }
            if let Some(mut inc) = self.open.remove(&old) {
                let votes = inc.votes.as_ref();
                inc.evidence.push(format!(
                    "late_completions:{} of {} late completions had this cause ({} breached)",
                    votes.and_then(|v| v.get(&new.cause)).copied().unwrap_or(0),
                    votes.map_or(0, |v| v.values().sum::<u32>()),
                    inc.breached
                ));
                inc.evidence.truncate(EVIDENCE_KEPT);
                inc.route = ev.route.clone();
                inc.team = ev.team.clone();
                inc.key = new.clone();
                inc.urgent = true;
                inc.dirty = true;
                self.open.insert(new, inc);
            }
        }
    }

    fn breach(&mut self, ev: &BreachEvent, at_ms: i64) {
        let never_arrived = ev.kind == "never_arrived";
        // A breached correlation is one trial (its warn breach); a correlation that never
        // arrived was breached before.
        if ev.kind == "breach" && ev.severity == "warn" {
            let dims = ev.dimensions.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            self.count(&ev.workflow, dims, at_ms, true);
        }
        // Which of its values are degraded (re-judged now), the strongest first.
        let mut slice: Option<(Slice, f64)> = None;
        for (dim, value) in &ev.dimensions {
            let key = (ev.workflow.clone(), dim.clone(), value.clone());
            if self.judge(&key, at_ms) {
                self.narrow(&key);
            }
            if let Some(d) = self.degraded.get(&key) {
                if slice.as_ref().is_none_or(|(_, r)| d.ratio > *r) {
                    slice = Some(((dim.clone(), value.clone()), d.ratio));
                }
            }
        }
        let cause = ev.probable_cause.clone().unwrap_or_else(|| UNKNOWN.into());
        let key = Key {
            workflow: ev.workflow.clone(),
            cause,
            slice: slice.map(|(s, _)| s),
        };
        // An unexplained breach joins an incident of its workflow and slice that was opened
        // as unknown and has since taken the cause its late completions showed.
        let key = if key.cause == UNKNOWN {
            self.open
                .iter()
                .find(|(k, inc)| {
                    inc.votes.is_some()
                        && k.workflow == key.workflow
                        && k.slice
                            .as_ref()
                            .is_none_or(|(d, v)| ev.dimensions.get(d) == Some(v))
                })
                .map(|(k, _)| k.clone())
                .unwrap_or(key)
        } else {
            key
        };
        // A breach joins an open incident of its workflow and cause that covers it: one
        // narrowed to one of its values first, else a whole-workflow one. Only when none
        // is open does it open one, narrowed to its most degraded value if it has one (a
        // value degraded by another cause does not split this cause's incident).
        let covering = |k: &Key| {
            k.workflow == key.workflow
                && k.cause == key.cause
                && k.slice
                    .as_ref()
                    .is_some_and(|(d, v)| ev.dimensions.get(d) == Some(v))
        };
        let whole = Key {
            slice: None,
            ..key.clone()
        };
        let key = if self.open.contains_key(&key) {
            key
        } else if let Some(k) = self.open.keys().find(|k| covering(k)).cloned() {
            k
        } else if self.open.contains_key(&whole) {
            whole
        } else {
            key
        };
        if !self.open.contains_key(&key) {
            if self.open.len() >= self.cfg.max_open {
                self.counters.suppressed_open_cap += 1;
                return;
            }
            let trigger = if key.slice.is_some() {
                "degraded_slice"
            } else {
                "breach"
            };
            let inc = Incident {
                id: incident_id(&key, &ev.breach_id),
                severity: "warn",
                route: ev.route.clone(),
                team: ev.team.clone(),
                trigger,
                opened_at_ms: at_ms,
                first_breach_ms: at_ms,
                last_breach_ms: at_ms,
                breached: 0,
                never_arrived: 0,
                completed: 0,
                worst_lag_ms: 0,
                correlations: HashMap::new(),
                sample: Vec::new(),
                evidence: Vec::new(),
                by_value: HashMap::new(),
                flowing: false,
                sequence: 0,
                last_emitted_wall: i64::MIN,
                dirty: true,
                urgent: false,
                deferred: false,
                rates: None,
                votes: (key.cause == UNKNOWN).then(BTreeMap::new),
                key: key.clone(),
            };
            self.open.insert(key.clone(), inc);
        } else {
            self.counters.folded += 1;
        }
        let rates = key
            .slice
            .as_ref()
            .and_then(|(d, v)| {
                self.degraded
                    .get(&(key.workflow.clone(), d.clone(), v.clone()))
            })
            .map(|d| (d.rate, d.peer_rate));
        let Some(inc) = self.open.get_mut(&key) else {
            return;
        };
        if rates.is_some() {
            inc.rates = rates;
        }
        let severity = if ev.severity == "warn" {
            "warn"
        } else {
            "critical"
        };
        if severity == "critical" && inc.severity != "critical" {
            inc.severity = "critical";
            inc.urgent = true;
        }
        inc.first_breach_ms = inc.first_breach_ms.min(at_ms);
        inc.last_breach_ms = inc.last_breach_ms.max(at_ms);
        inc.flowing = false;
        inc.worst_lag_ms = inc.worst_lag_ms.max(ev.lag_ms);
        let new_correlation = !inc.correlations.contains_key(&ev.correlation_id);
        if new_correlation {
            inc.breached += 1;
            if inc.correlations.len() < CORRELATIONS_FOLLOWED {
                inc.correlations
                    .insert(ev.correlation_id.clone(), Followed::Pending);
            } else {
                self.counters.correlations_not_followed += 1;
            }
            if inc.sample.len() < self.cfg.sample {
                inc.sample.push(ev.correlation_id.clone());
            }
            for (d, v) in &ev.dimensions {
                let k = (d.clone(), v.clone());
                if inc.by_value.len() < VALUES_KEPT || inc.by_value.contains_key(&k) {
                    *inc.by_value.entry(k).or_default() += 1;
                }
            }
        }
        for e in &ev.evidence {
            if inc.evidence.len() < EVIDENCE_KEPT && !inc.evidence.contains(e) {
                inc.evidence.push(e.clone());
            }
        }
        inc.dirty = true;
        if never_arrived {
            let cid = ev.correlation_id.clone();
            if let Some(f) = inc.correlations.get_mut(&cid) {
                if *f == Followed::Pending {
                    *f = Followed::Closed;
                    inc.never_arrived += 1;
                }
            }
        }
    }

    /// A value just became degraded: open whole-workflow incidents mostly made of its
    /// breaches are narrowed to it (unless one is already open for it).
    fn narrow(&mut self, slice_key: &(String, String, String)) {
        let (workflow, dim, value) = slice_key;
        let slice = (dim.clone(), value.clone());
        let candidates: Vec<Key> = self
            .open
            .iter()
            .filter(|(k, inc)| {
                &k.workflow == workflow && k.slice.is_none() && {
                    let of_value = inc.by_value.get(&slice).copied().unwrap_or(0);
                    inc.breached > 0 && f64::from(of_value) >= NARROW_SHARE * inc.breached as f64
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for old in candidates {
            let new = Key {
                slice: Some(slice.clone()),
                ..old.clone()
            };
            if self.open.contains_key(&new) {
                continue;
            }
            if let Some(mut inc) = self.open.remove(&old) {
                inc.key = new.clone();
                inc.urgent = true;
                inc.dirty = true;
                self.open.insert(new, inc);
            }
        }
    }

    /// Emits what is due at engine clock `now_ms` and wall time `wall_ms`: new incidents,
    /// updates (throttled), resolutions after the quiet period.
    pub fn tick(&mut self, now_ms: i64, wall_ms: i64, out: &mut Vec<IncidentEvent>) {
        if wall_ms.saturating_sub(self.budget.0) >= 60_000 {
            self.budget = (wall_ms, 0);
        }
        // Values whose breaches left the window stop being degraded.
        if now_ms != i64::MIN {
            let keys: Vec<_> = self.degraded.keys().cloned().collect();
            for k in keys {
                self.judge(&k, now_ms);
            }
            let oldest = self.oldest_bucket(now_ms);
            self.slices.retain(|_, c| {
                c.trim(oldest);
                !c.buckets.is_empty()
            });
            for c in self.totals.values_mut() {
                c.trim(oldest);
            }
        }
        let quiet_ms = i64::try_from(self.cfg.quiet.as_millis()).unwrap_or(i64::MAX);
        let every_ms = i64::try_from(self.cfg.update_every.as_millis()).unwrap_or(i64::MAX);
        let mut done = Vec::new();
        for (key, inc) in self.open.iter_mut() {
            if inc.sequence == 0 {
                inc.sequence = 1;
                inc.last_emitted_wall = wall_ms;
                inc.dirty = false;
                inc.urgent = false;
                self.budget.1 += 1;
                self.counters.opened += 1;
                out.push(inc.event("opened", wall_ms, None));
                continue;
            }
            let quiet = now_ms != i64::MIN && now_ms.saturating_sub(inc.last_breach_ms) >= quiet_ms;
            if quiet && inc.flowing {
                inc.sequence += 1;
                self.budget.1 += 1;
                self.counters.resolved += 1;
                let ev = inc.event("resolved", wall_ms, Some(now_ms));
                done.push(key.clone());
                out.push(ev);
                continue;
            }
            let due = inc.dirty
                && (inc.urgent || wall_ms.saturating_sub(inc.last_emitted_wall) >= every_ms);
            if !due {
                continue;
            }
            if self.budget.1 >= self.cfg.max_events_per_minute {
                if !inc.deferred {
                    inc.deferred = true;
                    self.counters.deferred_rate_cap += 1;
                }
                continue;
            }
            inc.sequence += 1;
            inc.last_emitted_wall = wall_ms;
            inc.dirty = false;
            inc.urgent = false;
            inc.deferred = false;
            self.budget.1 += 1;
            self.counters.updated += 1;
            out.push(inc.event("updated", wall_ms, None));
        }
        for key in done {
            self.open.remove(&key);
        }
        for ev in out.iter().filter(|e| e.kind == "resolved") {
            self.resolved.push_back(ev.clone());
            while self.resolved.len() > RESOLVED_KEPT {
                self.resolved.pop_front();
            }
        }
    }

    /// Open incidents as of now (their latest state), worst first, then recently resolved.
    pub fn snapshot(&self, wall_ms: i64) -> (Vec<IncidentEvent>, Vec<IncidentEvent>) {
        let mut open: Vec<IncidentEvent> = self
            .open
            .values()
            .map(|i| i.event("open", wall_ms, None))
            .collect();
        open.sort_by(|a, b| {
            (b.severity == "critical")
                .cmp(&(a.severity == "critical"))
                .then(b.breached.cmp(&a.breached))
        });
        let resolved = self.resolved.iter().rev().cloned().collect();
        (open, resolved)
    }

    /// Publishes the open-incident gauges (every workflow × cause known up front is set,
    /// so series go back to 0) and the counters.
    pub fn publish(&self, known: &[(String, String)]) {
        let mut open: HashMap<(&str, &str), u64> = HashMap::new();
        for k in self.open.keys() {
            *open.entry((&k.workflow, &k.cause)).or_default() += 1;
        }
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        for (w, c) in known {
            let n = open.get(&(w.as_str(), c.as_str())).copied().unwrap_or(0);
            metrics::gauge!(names::INCIDENTS_OPEN, "workflow" => w.clone(), "cause" => c.clone())
                .set(n as f64);
            seen.insert((w, c));
        }
        for ((w, c), n) in &open {
            if !seen.contains(&(*w, *c)) {
                metrics::gauge!(names::INCIDENTS_OPEN, "workflow" => w.to_string(), "cause" => c.to_string())
                    .set(*n as f64);
            }
        }
        let c = self.counters;
        for (kind, n) in [
            ("opened", c.opened),
            ("updated", c.updated),
            ("resolved", c.resolved),
        ] {
            metrics::counter!(names::INCIDENT_EVENTS_TOTAL, "kind" => kind).absolute(n);
        }
        for (reason, n) in [
            ("open_cap", c.suppressed_open_cap),
            ("rate_cap", c.deferred_rate_cap),
        ] {
            metrics::counter!(names::INCIDENTS_SUPPRESSED_TOTAL, "reason" => reason).absolute(n);
        }
        metrics::counter!(names::INCIDENT_BREACHES_FOLDED_TOTAL).absolute(c.folded);
        metrics::counter!(names::DEGRADED_FLAPS_SUPPRESSED_TOTAL).absolute(c.flaps_suppressed);
        metrics::counter!(names::DEGRADED_SLICES_NOT_FOLLOWED_TOTAL)
            .absolute(c.slices_not_followed);
        metrics::counter!(names::INCIDENT_CORRELATIONS_NOT_FOLLOWED_TOTAL)
            .absolute(c.correlations_not_followed);
        metrics::gauge!(names::DEGRADED_SLICES).set(self.degraded.len() as f64);
    }
}

/// The open incidents of `workflow` (keys sort by workflow first, so this is a range, not
/// a scan of every open incident).
/// A followed dimension value's key by reference: hashes and compares like the owned
/// `(workflow, dimension, value)`.
#[derive(Hash)]
struct SliceRef<'a>(&'a str, &'a str, &'a str);

impl hashbrown::Equivalent<(String, String, String)> for SliceRef<'_> {
    fn equivalent(&self, key: &(String, String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

/// A dimension's key by reference: hashes and compares like the owned
/// `(workflow, dimension)`.
#[derive(Hash)]
struct TotalRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for TotalRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

fn open_of<'a>(
    open: &'a mut BTreeMap<Key, Incident>,
    workflow: &'a str,
) -> impl Iterator<Item = &'a mut Incident> {
    let from = Key {
        workflow: workflow.to_string(),
        cause: String::new(),
        slice: None,
    };
    open.range_mut(from..)
        .take_while(move |(k, _)| k.workflow == workflow)
        .map(|(_, inc)| inc)
}

/// Stable id: the same incident key opened by the same breach gets the same id, so an
/// incident re-derived after a restart (from the same re-read breaches) keeps its id.
fn incident_id(key: &Key, first_breach_id: &str) -> String {
    let mut h = Sha256::new();
    let slice = key
        .slice
        .as_ref()
        .map(|(d, v)| format!("{d}={v}"))
        .unwrap_or_default();
    for part in [
        key.workflow.as_str(),
        key.cause.as_str(),
        slice.as_str(),
        first_breach_id,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
