//! Raw YAML → [`Topology`], collecting every problem.
//!
//! Three passes, each reporting all it finds: (1) shape — unknown keys (with a
//! "did you mean") and missing required keys anywhere in the tree; (2) types —
//! serde per section and per list element, so one bad element does not hide
//! the others; (3) meaning — durations, names, references, SLA ordering.

use super::duration::parse_duration;
use super::field_path::{FieldPath, FIELD_PATH_HELP};
use super::raw::*;
use super::*;
use serde::de::DeserializeOwned;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

mod batch;
pub use batch::parse_cron;

/// Where a key leads: a nested object, or a list of objects.
#[derive(Clone, Copy)]
enum Child {
    Object(&'static Shape),
    List(&'static Shape),
    /// A map with free keys (properties, dimensions): not checked.
    Free,
}

struct Shape {
    keys: &'static [&'static str],
    required: &'static [&'static str],
    children: &'static [(&'static str, Child)],
}

static FIELDS_SHAPE: Shape = Shape {
    keys: FIELDS_KEYS,
    required: &["correlation_id"],
    children: &[("dimensions", Child::Free)],
};
static STREAM_SHAPE: Shape = Shape {
    keys: STREAM_KEYS,
    required: &["name", "topic", "format", "fields"],
    children: &[("fields", Child::Object(&FIELDS_SHAPE))],
};
static STAGE_SHAPE: Shape = Shape {
    keys: STAGE_KEYS,
    required: &["name", "stream"],
    children: &[],
};
static BH_SHAPE: Shape = Shape {
    keys: BUSINESS_HOURS_KEYS,
    required: &["timezone", "days", "from", "to", "warn", "critical"],
    children: &[],
};
static SLA_SHAPE: Shape = Shape {
    keys: SLA_KEYS,
    required: &["warn", "critical"],
    children: &[("business_hours", Child::List(&BH_SHAPE))],
};
static WORKFLOW_SHAPE: Shape = Shape {
    keys: WORKFLOW_KEYS,
    required: &["name", "stages", "sla", "window"],
    children: &[
        ("stages", Child::List(&STAGE_SHAPE)),
        ("sla", Child::Object(&SLA_SHAPE)),
    ],
};
static CAUSE_SHAPE: Shape = Shape {
    keys: CAUSE_KEYS,
    required: &["name", "route"],
    children: &[],
};
static ROUTE_SHAPE: Shape = Shape {
    keys: ROUTE_KEYS,
    required: &["team"],
    children: &[],
};
static GROUP_SHAPE: Shape = Shape {
    keys: GROUP_KEYS,
    required: &[],
    children: &[],
};
static RESET_SHAPE: Shape = Shape {
    keys: RESET_KEYS,
    required: &["policy"],
    children: &[],
};
static BACKLOG_SHAPE: Shape = Shape {
    keys: BACKLOG_KEYS,
    required: &[],
    children: &[
        ("groups", Child::List(&GROUP_SHAPE)),
        ("reset", Child::List(&RESET_SHAPE)),
    ],
};
static EVENT_TIME_SHAPE: Shape = Shape {
    keys: EVENT_TIME_KEYS,
    required: &[],
    children: &[],
};
static SERVICE_SHAPE: Shape = Shape {
    keys: SERVICE_KEYS,
    required: &[],
    children: &[("event_time", Child::Object(&EVENT_TIME_SHAPE))],
};
static KAFKA_SHAPE: Shape = Shape {
    keys: KAFKA_KEYS,
    required: &["bootstrap_servers"],
    children: &[("properties", Child::Free)],
};
static REGISTRY_SHAPE: Shape = Shape {
    keys: REGISTRY_KEYS,
    required: &["url"],
    children: &[],
};
static OUTPUTS_SHAPE: Shape = Shape {
    keys: OUTPUTS_KEYS,
    required: &[],
    children: &[],
};
static MASKING_SHAPE: Shape = Shape {
    keys: MASKING_KEYS,
    required: &[],
    children: &[],
};
static INCIDENTS_SHAPE: Shape = Shape {
    keys: INCIDENTS_KEYS,
    required: &[],
    children: &[],
};
static API_SHAPE: Shape = Shape {
    keys: API_KEYS,
    required: &[],
    children: &[],
};
static AUDIT_SHAPE: Shape = Shape {
    keys: AUDIT_KEYS,
    required: &[],
    children: &[],
};
static TOPIC_POLICY_SHAPE: Shape = Shape {
    keys: TOPIC_POLICY_KEYS,
    required: &[],
    children: &[],
};
static RETENTION_SHAPE: Shape = Shape {
    keys: RETENTION_KEYS,
    required: &[],
    children: &[
        ("breaches", Child::Object(&TOPIC_POLICY_SHAPE)),
        ("incidents", Child::Object(&TOPIC_POLICY_SHAPE)),
        ("lag", Child::Object(&TOPIC_POLICY_SHAPE)),
        ("backlog", Child::Object(&TOPIC_POLICY_SHAPE)),
        ("dead_letters", Child::Object(&TOPIC_POLICY_SHAPE)),
        ("audit", Child::Object(&TOPIC_POLICY_SHAPE)),
    ],
};
static STORE_SHAPE: Shape = Shape {
    keys: STORE_KEYS,
    required: &[],
    children: &[],
};

struct Ctx {
    problems: Vec<Problem>,
}

impl Ctx {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ", did you mean `x`?" when a candidate is close, else "".
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Null => "nothing".into(),
        other => serde_norway::to_string(other)
            .map(|s| format!("`{}`", s.trim()))
            .unwrap_or_else(|_| "a value".into()),
    }
}

/// Pass 1: reports unknown and missing keys, removes unknown keys so pass 2 can go on.
fn check_shape(ctx: &mut Ctx, value: &mut Value, path: &str, shape: &Shape) -> bool {
    let Value::Mapping(map) = value else {
        ctx.push(
            path,
            format!(
                "expected a mapping of {}, found {}",
                list(shape.keys),
                show(value)
            ),
        );
        return false;
    };
    let mut complete = true;
    let mut unknown = Vec::new();
    for key in map.keys() {
        let name = key
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| show(key));
        if !shape.keys.contains(&name.as_str()) {
            ctx.push(
                join(path, &name),
                format!(
                    "unknown key{}; valid keys here: {}",
                    suggest(&name, shape.keys.iter().copied()),
                    list(shape.keys)
                ),
            );
            unknown.push(key.clone());
        }
    }
    for key in unknown {
        map.remove(&key);
    }
    for req in shape.required {
        if map.get(*req).is_none_or(Value::is_null) {
            ctx.push(join(path, req), "missing; this key is required");
            complete = false;
        }
    }
    for (key, child) in shape.children {
        let Some(v) = map.get_mut(*key) else { continue };
        let p = join(path, key);
        match child {
            Child::Free => {}
            Child::Object(s) => complete &= check_shape(ctx, v, &p, s),
            Child::List(s) => complete &= check_list(ctx, v, &p, s),
        }
    }
    complete
}

fn check_list(ctx: &mut Ctx, value: &mut Value, path: &str, shape: &Shape) -> bool {
    match value {
        Value::Sequence(items) => {
            let mut ok = true;
            for (i, item) in items.iter_mut().enumerate() {
                ok &= check_shape(ctx, item, &format!("{path}[{i}]"), shape);
            }
            ok
        }
        Value::Null => true,
        other => {
            ctx.push(path, format!("expected a list, found {}", show(other)));
            false
        }
    }
}

/// Pass 2: serde with the path of the first type error.
fn typed<T: DeserializeOwned>(ctx: &mut Ctx, value: Value, path: &str) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let p = if inner == "." {
                path.to_string()
            } else {
                join(path, &inner)
            };
            ctx.push(p, e.into_inner().to_string());
            None
        }
    }
}

fn section<T: DeserializeOwned + Default>(
    ctx: &mut Ctx,
    root: &mut serde_norway::Mapping,
    key: &str,
    shape: &Shape,
) -> Option<T> {
    match root.get_mut(key) {
        None | Some(Value::Null) => {
            if shape.required.is_empty() {
                Some(T::default())
            } else {
                ctx.push(
                    key,
                    format!(
                        "missing; this section is required (keys: {})",
                        list(shape.required)
                    ),
                );
                None
            }
        }
        Some(v) => {
            if check_shape(ctx, v, key, shape) {
                typed(ctx, v.clone(), key)
            } else {
                None
            }
        }
    }
}

fn elements<T: DeserializeOwned>(
    ctx: &mut Ctx,
    root: &mut serde_norway::Mapping,
    key: &str,
    shape: &Shape,
) -> Vec<(usize, T)> {
    let mut out = Vec::new();
    match root.get_mut(key) {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                let p = format!("{key}[{i}]");
                if check_shape(ctx, item, &p, shape) {
                    if let Some(t) = typed(ctx, item.clone(), &p) {
                        out.push((i, t));
                    }
                }
            }
        }
        Some(other) => ctx.push(key, format!("expected a list, found {}", show(other))),
    }
    out
}

fn duration(ctx: &mut Ctx, path: &str, text: Option<&str>, default: Duration) -> Duration {
    match text {
        None => default,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                ctx.push(
                    path,
                    format!("`{t}` is zero; expected a positive duration like `90s`, `5m` or `2h`"),
                );
                default
            }
            Err(why) => {
                ctx.push(
                    path,
                    format!("{why}; expected a duration like `90s`, `5m`, `2h` or `1h30m`"),
                );
                default
            }
        },
    }
}

fn field_path(ctx: &mut Ctx, path: &str, text: &str) -> Option<FieldPath> {
    match FieldPath::parse(text) {
        Ok(p) => Some(p),
        Err(why) => {
            ctx.push(
                path,
                format!("bad field path `{text}`: {why}; expected {FIELD_PATH_HELP}"),
            );
            None
        }
    }
}

fn check_name(ctx: &mut Ctx, path: &str, name: &str, seen: &mut HashSet<String>, what: &str) {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        ctx.push(
            path,
            format!("`{name}` is not a valid {what} name; use letters, digits, `_` or `-`"),
        );
    }
    if !seen.insert(name.to_string()) {
        ctx.push(
            path,
            format!("duplicate {what} name `{name}`; names must be unique"),
        );
    }
}

fn check_topic(ctx: &mut Ctx, path: &str, topic: &str) {
    if topic.trim().is_empty() {
        ctx.push(path, "empty topic; expected a Kafka topic name");
    } else if topic.len() > 249
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        ctx.push(path, format!("`{topic}` is not a valid Kafka topic name; use up to 249 of letters, digits, `.`, `_`, `-`"));
    }
}

fn parse_weekdays(ctx: &mut Ctx, path: &str, days: &[String]) -> Vec<Weekday> {
    const NAMES: [(&str, Weekday); 7] = [
        ("mon", Weekday::Mon),
        ("tue", Weekday::Tue),
        ("wed", Weekday::Wed),
        ("thu", Weekday::Thu),
        ("fri", Weekday::Fri),
        ("sat", Weekday::Sat),
        ("sun", Weekday::Sun),
    ];
    let lookup = |s: &str| {
        NAMES
            .iter()
            .position(|(n, _)| *n == s.trim().to_lowercase())
    };
    let mut out = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let range: Vec<&str> = d.split('-').collect();
        let bounds: Option<Vec<usize>> = range.iter().map(|s| lookup(s)).collect();
        match bounds.as_deref() {
            Some([one]) => out.push(NAMES[*one].1),
            Some([from, to]) if from <= to => {
                out.extend(NAMES[*from..=*to].iter().map(|(_, w)| *w))
            }
            _ => ctx.push(
                p,
                format!("`{d}` is not a day; expected `mon`..`sun` or a range like `mon-fri`"),
            ),
        }
    }
    if days.is_empty() {
        ctx.push(path, "no days; expected e.g. [mon-fri]");
    }
    out
}

fn parse_time(ctx: &mut Ctx, path: &str, t: &str) -> Option<NaiveTime> {
    match NaiveTime::parse_from_str(t, "%H:%M") {
        Ok(v) => Some(v),
        Err(_) => {
            ctx.push(
                path,
                format!("`{t}` is not a time of day; expected `HH:MM` (24h), e.g. `14:00`"),
            );
            None
        }
    }
}

/// Validates a YAML tree (after environment overrides) into a [`Topology`].
///
/// Sections are read in two passes (shape and types) first, so that one broken section
/// does not hide problems in the others; then each section is checked for meaning by its
/// own function, in dependency order: streams before the workflows and causes that name
/// them, routes before what routes to them, the backlog before causes that name groups.
pub fn validate(value: &Value) -> Result<Topology, Vec<Problem>> {
    let mut ctx = Ctx {
        problems: Vec::new(),
    };
    let mut value = value.clone();
    let Value::Mapping(root) = &mut value else {
        return Err(vec![Problem {
            path: String::new(),
            message: format!("expected a mapping with sections {}", list(TOP_KEYS)),
        }]);
    };
    unknown_sections(&mut ctx, root);

    let service: Option<RawService> = section(&mut ctx, root, "service", &SERVICE_SHAPE);
    let kafka: Option<RawKafka> = section(&mut ctx, root, "kafka", &KAFKA_SHAPE);
    let registry: Option<Option<RawRegistry>> = match root.get("registry") {
        None | Some(Value::Null) => Some(None),
        Some(_) => section(&mut ctx, root, "registry", &REGISTRY_SHAPE).map(Some),
    };
    let outputs: Option<RawOutputs> = section(&mut ctx, root, "outputs", &OUTPUTS_SHAPE);
    let masking: Option<RawMasking> = section(&mut ctx, root, "masking", &MASKING_SHAPE);
    let store: Option<RawStore> = section(&mut ctx, root, "store", &STORE_SHAPE);
    let backlog: Option<RawBacklog> = section(&mut ctx, root, "backlog", &BACKLOG_SHAPE);
    let incidents: Option<RawIncidents> = section(&mut ctx, root, "incidents", &INCIDENTS_SHAPE);
    let api: Option<RawApi> = section(&mut ctx, root, "api", &API_SHAPE);
    let audit: Option<RawAudit> = section(&mut ctx, root, "audit", &AUDIT_SHAPE);
    let retention: Option<RawRetention> = section(&mut ctx, root, "retention", &RETENTION_SHAPE);
    let streams: Vec<(usize, RawStream)> = elements(&mut ctx, root, "streams", &STREAM_SHAPE);
    let workflows: Vec<(usize, RawWorkflow)> =
        elements(&mut ctx, root, "workflows", &WORKFLOW_SHAPE);
    let causes: Vec<(usize, RawCause)> = elements(&mut ctx, root, "causes", &CAUSE_SHAPE);
    let batches: Vec<(usize, super::batch::RawBatch)> =
        elements(&mut ctx, root, "batches", &batch::BATCH_SHAPE);
    let routes_raw = route_entries(&mut ctx, root);
    if root.get("streams").is_none_or(Value::is_null) {
        ctx.push("streams", "missing; at least one stream is required");
    }
    if root.get("workflows").is_none_or(Value::is_null) {
        ctx.push("workflows", "missing; at least one workflow is required");
    }

    let service = service_section(&mut ctx, service.unwrap_or_default());
    let kafka = kafka_section(
        &mut ctx,
        root.get("kafka").is_some(),
        kafka.unwrap_or_default(),
    );
    let registry = registry.flatten().map(|r| registry_section(&mut ctx, r));
    let outputs = outputs_section(&mut ctx, outputs.unwrap_or_default());
    let store = store_section(&mut ctx, store.unwrap_or_default());
    let streams_out = streams_section(&mut ctx, &streams, registry.is_some());
    let routes = routes_section(routes_raw);
    let workflows_out = workflows_section(&mut ctx, &workflows, &streams_out, &routes);
    event_time_covers_windows(&mut ctx, &service.event_time, &workflows_out);
    if workflows.is_empty()
        && root.get("workflows").is_some_and(|v| !v.is_null())
        && ctx.problems.is_empty()
    {
        ctx.push("workflows", "empty; at least one workflow is required");
    }
    let batches_out =
        batch::batches_section(&mut ctx, &batches, &streams_out, &routes, &workflows_out);
    let backlog = backlog_section(&mut ctx, backlog.unwrap_or_default());
    let causes_out = causes_section(&mut ctx, &causes, &streams_out, &routes, &backlog);
    let masking = masking_section(&mut ctx, masking.unwrap_or_default(), &streams_out);
    let incidents = incidents_section(&mut ctx, incidents.unwrap_or_default());
    let api = api_section(&mut ctx, api.unwrap_or_default());
    let audit = audit_section(&mut ctx, audit.unwrap_or_default(), &outputs);
    let retention = retention_section(&mut ctx, retention.unwrap_or_default());

    if ctx.problems.is_empty() {
        Ok(Topology {
            service,
            kafka,
            registry,
            outputs,
            masking,
            store,
            streams: streams_out,
            workflows: workflows_out,
            causes: causes_out,
            routes,
            backlog,
            incidents,
            api,
            audit,
            retention,
            batches: batches_out,
        })
    } else {
        Err(ctx.problems)
    }
}

/// Reports and removes top-level keys that are not sections.
fn unknown_sections(ctx: &mut Ctx, root: &mut serde_norway::Mapping) {
    let unknown: Vec<Value> = root
        .keys()
        .filter(|k| !k.as_str().is_some_and(|k| TOP_KEYS.contains(&k)))
        .cloned()
        .collect();
    for k in unknown {
        let name = k.as_str().map(str::to_string).unwrap_or_else(|| show(&k));
        ctx.push(
            name.clone(),
            format!(
                "unknown section{}; valid sections: {}",
                suggest(&name, TOP_KEYS.iter().copied()),
                list(TOP_KEYS)
            ),
        );
        root.remove(&k);
    }
}

/// `routes:` is a map of name → route, so it is read entry by entry (shape and types).
fn route_entries(ctx: &mut Ctx, root: &mut serde_norway::Mapping) -> Vec<(String, RawRoute)> {
    let mut routes_raw = Vec::new();
    match root.get_mut("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m.iter_mut() {
                let name = k.as_str().unwrap_or_default().to_string();
                let p = format!("routes.{name}");
                if check_shape(ctx, v, &p, &ROUTE_SHAPE) {
                    if let Some(r) = typed::<RawRoute>(ctx, v.clone(), &p) {
                        routes_raw.push((name, r));
                    }
                }
            }
        }
        Some(other) => ctx.push(
            "routes",
            format!(
                "expected a mapping of route name to {{team, description}}, found {}",
                show(other)
            ),
        ),
    }
    routes_raw
}

/// `service:`
fn service_section(ctx: &mut Ctx, service: RawService) -> Service {
    let http_text = service
        .http_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9187".into());
    let http_listen = http_text.parse().unwrap_or_else(|_| {
        ctx.push(
            "service.http_listen",
            format!("`{http_text}` is not an address; expected `host:port`, e.g. `0.0.0.0:9187`"),
        );
        SocketAddr::from(([127, 0, 0, 1], 9187))
    });
    let group_id = service.group_id.clone().unwrap_or_else(|| "synclag".into());
    if group_id.trim().is_empty() {
        ctx.push("service.group_id", "empty consumer group id");
    }
    let instance_id = match service.instance_id.clone() {
        Some(id) => {
            if let Err(why) = super::instance::check_instance_id(&id) {
                ctx.push("service.instance_id", why);
            }
            id
        }
        None => super::instance::default_instance_id(&group_id),
    };
    Service {
        instance_id,
        group_id,
        http_listen,
        shutdown_timeout: duration(
            ctx,
            "service.shutdown_timeout",
            service.shutdown_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        lag_interval: duration(
            ctx,
            "service.lag_interval",
            service.lag_interval.as_deref(),
            Duration::from_secs(60),
        ),
        idle_partition: duration(
            ctx,
            "service.idle_partition",
            service.idle_partition.as_deref(),
            Duration::from_secs(10),
        ),
        event_time: event_time_policy(ctx, service.event_time.unwrap_or_default()),
    }
}

/// `service.event_time:`
fn event_time_policy(ctx: &mut Ctx, raw: RawEventTime) -> EventTimePolicy {
    let d = EventTimePolicy::DEFAULT;
    let on_violation = match raw.on_violation.as_deref() {
        None => d.on_violation,
        Some(text) => OnViolation::parse(text).unwrap_or_else(|| {
            ctx.push(
                "service.event_time.on_violation",
                format!(
                    "unknown action `{text}`{}; expected one of {}",
                    suggest(text, OnViolation::NAMES.iter().copied()),
                    list(OnViolation::NAMES)
                ),
            );
            d.on_violation
        }),
    };
    EventTimePolicy {
        max_ahead: duration(
            ctx,
            "service.event_time.max_ahead",
            raw.max_ahead.as_deref(),
            d.max_ahead,
        ),
        max_behind: duration(
            ctx,
            "service.event_time.max_behind",
            raw.max_behind.as_deref(),
            d.max_behind,
        ),
        on_violation,
    }
}

/// A record later than `max_behind` is genuinely late when a workflow still waits for
/// it; replacing its time would hide the very delay the SLA is about.
fn event_time_covers_windows(ctx: &mut Ctx, policy: &EventTimePolicy, workflows: &[Workflow]) {
    if let Some(w) = workflows.iter().max_by_key(|w| w.window) {
        if policy.max_behind < w.window {
            ctx.push(
                "service.event_time.max_behind",
                format!(
                    "`{}` is shorter than the window `{}` of workflow `{}`; a record that late is a genuine delay, and replacing its time would hide it; use at least `{}`",
                    super::duration::format_duration(policy.max_behind),
                    super::duration::format_duration(w.window),
                    w.name,
                    super::duration::format_duration(w.window),
                ),
            );
        }
    }
}

/// `kafka:` — `present` says whether the section was written at all.
fn kafka_section(ctx: &mut Ctx, present: bool, kafka: RawKafka) -> Kafka {
    let bootstrap = kafka.bootstrap_servers.clone().unwrap_or_default();
    if present && bootstrap.trim().is_empty() && kafka.bootstrap_servers.is_some() {
        ctx.push(
            "kafka.bootstrap_servers",
            "empty; expected `host:port[,host:port…]`",
        );
    }
    let mut properties = BTreeMap::new();
    for (k, v) in &kafka.properties {
        let text = match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match text {
            Some(t) => {
                properties.insert(k.clone(), t);
            }
            None => ctx.push(format!("kafka.properties.{k}"), format!("{} is not a plain value; librdkafka properties are strings, numbers or booleans", show(v))),
        }
    }
    // One table (config::kafka) says which properties synclag sets and which of them
    // it cannot let the user change; see there for the reasons.
    for (key, message) in super::kafka::conflicts(&properties) {
        ctx.push(format!("kafka.properties.{key}"), message);
    }
    Kafka {
        bootstrap_servers: bootstrap,
        properties,
    }
}

/// `registry:` (when present).
fn registry_section(ctx: &mut Ctx, r: RawRegistry) -> Registry {
    let url = r.url.clone().unwrap_or_default();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        ctx.push("registry.url", format!("`{url}` is not an http(s) URL"));
    }
    Registry {
        url: url.trim_end_matches('/').to_string(),
        username: r.username,
        password_env: r.password_env,
        timeout: duration(
            ctx,
            "registry.timeout",
            r.timeout.as_deref(),
            Duration::from_secs(10),
        ),
    }
}

/// `outputs:`
fn outputs_section(ctx: &mut Ctx, outputs: RawOutputs) -> Outputs {
    let outputs = Outputs {
        breaches_topic: outputs
            .breaches_topic
            .unwrap_or_else(|| "synclag.breaches".into()),
        lag_topic: outputs.lag_topic.unwrap_or_else(|| "synclag.lag".into()),
        backlog_topic: outputs
            .backlog_topic
            .unwrap_or_else(|| "synclag.backlog".into()),
        dead_letter_topic: outputs
            .dead_letter_topic
            .unwrap_or_else(|| "synclag.dlq".into()),
        incidents_topic: outputs
            .incidents_topic
            .unwrap_or_else(|| "synclag.incidents".into()),
        batches_topic: outputs
            .batches_topic
            .unwrap_or_else(|| "synclag.batches".into()),
    };
    for (p, t) in [
        ("outputs.breaches_topic", &outputs.breaches_topic),
        ("outputs.lag_topic", &outputs.lag_topic),
        ("outputs.backlog_topic", &outputs.backlog_topic),
        ("outputs.dead_letter_topic", &outputs.dead_letter_topic),
        ("outputs.incidents_topic", &outputs.incidents_topic),
        ("outputs.batches_topic", &outputs.batches_topic),
    ] {
        check_topic(ctx, p, t);
    }
    outputs
}

/// `incidents:`
fn incidents_section(ctx: &mut Ctx, raw: RawIncidents) -> Incidents {
    let d = Incidents::default();
    let count = |ctx: &mut Ctx, key: &str, v: Option<u64>, default: usize| -> usize {
        match v {
            None => default,
            Some(0) => {
                ctx.push(
                    format!("incidents.{key}"),
                    "`0` is not allowed; expected a positive number",
                );
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    };
    let factor = match raw.degraded_factor {
        None => d.degraded_factor,
        Some(f) if f.is_finite() && f > 1.0 => f,
        Some(f) => {
            ctx.push(
                "incidents.degraded_factor",
                format!("`{f}` is not above 1; a degraded value has a higher breach rate than its peers, e.g. `4`"),
            );
            d.degraded_factor
        }
    };
    Incidents {
        quiet: duration(ctx, "incidents.quiet", raw.quiet.as_deref(), d.quiet),
        update_every: duration(
            ctx,
            "incidents.update_every",
            raw.update_every.as_deref(),
            d.update_every,
        ),
        max_open: count(ctx, "max_open", raw.max_open, d.max_open),
        max_events_per_minute: count(
            ctx,
            "max_events_per_minute",
            raw.max_events_per_minute,
            d.max_events_per_minute,
        ),
        sample: count(ctx, "sample", raw.sample, d.sample),
        slice_window: duration(
            ctx,
            "incidents.slice_window",
            raw.slice_window.as_deref(),
            d.slice_window,
        ),
        degraded_min_breaches: count(
            ctx,
            "degraded_min_breaches",
            raw.degraded_min_breaches,
            d.degraded_min_breaches,
        ),
        degraded_factor: factor,
    }
}

/// `store:`
fn store_section(ctx: &mut Ctx, store: RawStore) -> Store {
    let positive = |ctx: &mut Ctx, p: &str, v: Option<u64>, default: usize| -> usize {
        match v {
            None => default,
            Some(0) => {
                ctx.push(p, "`0` is not allowed; expected a positive number");
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    };
    let durable = store.durable.unwrap_or(true);
    let exactly_once = store.exactly_once.unwrap_or(durable);
    if exactly_once && !durable {
        ctx.push(
            "store.exactly_once",
            "is true while `store.durable` is false: exactly-once outputs commit the durable state in the same transaction; set `store.durable: true` or `store.exactly_once: false`",
        );
    }
    let repartition = store.repartition.unwrap_or(false);
    if repartition && !exactly_once {
        ctx.push(
            "store.repartition",
            "is true without exactly-once outputs: the stages topic is written and read in the same transactions as the state and the input offsets; set `store.durable: true` and `store.exactly_once: true`",
        );
    }
    Store {
        repartition,
        max_pending: positive(ctx, "store.max_pending", store.max_pending, 1_000_000),
        dimension_value_cap: positive(
            ctx,
            "store.dimension_value_cap",
            store.dimension_value_cap,
            64,
        ),
        oldest_n: positive(ctx, "store.oldest_n", store.oldest_n, 20),
        recent_finished: positive(
            ctx,
            "store.recent_finished",
            store.recent_finished,
            crate::correlate::spec::DEFAULT_RECENT_TERMINAL_CAP,
        ),
        durable,
        exactly_once,
        changelog_topic: store.changelog_topic.inspect(|t| {
            check_topic(ctx, "store.changelog_topic", t);
        }),
        changelog_partitions: i32::try_from(positive(
            ctx,
            "store.changelog_partitions",
            store.changelog_partitions,
            6,
        ))
        .unwrap_or(i32::MAX),
        changelog_replication: store.changelog_replication.map(|r| {
            i32::try_from(positive(ctx, "store.changelog_replication", Some(r), 1))
                .unwrap_or(i32::MAX)
        }),
    }
}

/// `streams:` — `has_registry` says whether Avro streams can be decoded.
fn streams_section(
    ctx: &mut Ctx,
    streams: &[(usize, RawStream)],
    has_registry: bool,
) -> Vec<Stream> {
    let mut stream_names = HashSet::new();
    let mut streams_out: Vec<Stream> = Vec::new();
    let mut topics_seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, s) in streams {
        let p = format!("streams[{i}]");
        check_name(
            ctx,
            &format!("{p}.name"),
            &s.name,
            &mut stream_names,
            "stream",
        );
        check_topic(ctx, &format!("{p}.topic"), &s.topic);
        if let Some(other) = topics_seen.insert(s.topic.clone(), s.name.clone()) {
            ctx.push(format!("{p}.topic"), format!("topic `{}` is already read by stream `{other}`; one stream per topic (use stage `event_type` to split a topic)", s.topic));
        }
        let format = Format::parse(&s.format).unwrap_or_else(|| {
            ctx.push(
                format!("{p}.format"),
                format!(
                    "unknown format `{}`{}; expected one of {}",
                    s.format,
                    suggest(&s.format, Format::NAMES.iter().copied()),
                    list(Format::NAMES)
                ),
            );
            Format::Json
        });
        if format == Format::Avro && !has_registry {
            ctx.push(
                format!("{p}.format"),
                "`avro` needs a `registry:` section with the schema registry URL",
            );
        }
        let role = match s.role.as_deref() {
            None | Some("stages") => Role::Stages,
            Some("signals") => Role::Signals,
            Some(other) => {
                ctx.push(
                    format!("{p}.role"),
                    format!("unknown role `{other}`; expected `stages` or `signals`"),
                );
                Role::Stages
            }
        };
        let erp_time = s.erp_time.unwrap_or(matches!(
            format,
            Format::DebeziumCdc | Format::DebeziumOutbox
        ));
        let fp = format!("{p}.fields");
        let correlation_id = field_path(
            ctx,
            &format!("{fp}.correlation_id"),
            &s.fields.correlation_id,
        );
        let event_time = s
            .fields
            .event_time
            .as_deref()
            .and_then(|t| field_path(ctx, &format!("{fp}.event_time"), t));
        let event_type = s
            .fields
            .event_type
            .as_deref()
            .and_then(|t| field_path(ctx, &format!("{fp}.event_type"), t));
        let mut dimensions = Vec::new();
        for (name, path) in &s.fields.dimensions {
            if let Some(fpath) = field_path(ctx, &format!("{fp}.dimensions.{name}"), path) {
                dimensions.push((name.clone(), fpath));
            }
        }
        streams_out.push(Stream {
            name: s.name.clone(),
            topic: s.topic.clone(),
            format,
            role,
            erp_time,
            correlation_id: correlation_id.unwrap_or(FieldPath::Kafka(field_path::KafkaField::Key)),
            event_time,
            event_type,
            dimensions,
        });
    }
    streams_out
}

fn stream_index(streams: &[Stream], name: &str) -> Option<usize> {
    streams.iter().position(|s| s.name == name)
}

fn stream_names(streams: &[Stream]) -> Vec<&str> {
    streams.iter().map(|s| s.name.as_str()).collect()
}

/// `routes:`
fn routes_section(routes_raw: Vec<(String, RawRoute)>) -> BTreeMap<String, Route> {
    routes_raw
        .into_iter()
        .map(|(k, r)| {
            (
                k,
                Route {
                    team: r.team,
                    description: r.description,
                },
            )
        })
        .collect()
}

/// A reference to a route must name a defined one.
fn check_route(ctx: &mut Ctx, routes: &BTreeMap<String, Route>, p: &str, r: &str) {
    if !routes.contains_key(r) {
        let route_names: Vec<&str> = routes.keys().map(String::as_str).collect();
        ctx.push(
            p,
            format!(
                "unknown route `{r}`{}; defined routes: {}",
                suggest(r, route_names.iter().copied()),
                if route_names.is_empty() {
                    "none (add a `routes:` section)".into()
                } else {
                    list(&route_names)
                }
            ),
        );
    }
}

/// `workflows:`
fn workflows_section(
    ctx: &mut Ctx,
    workflows: &[(usize, RawWorkflow)],
    streams: &[Stream],
    routes: &BTreeMap<String, Route>,
) -> Vec<Workflow> {
    let mut workflow_names = HashSet::new();
    let mut out = Vec::new();
    for (i, w) in workflows {
        let p = format!("workflows[{i}]");
        check_name(
            ctx,
            &format!("{p}.name"),
            &w.name,
            &mut workflow_names,
            "workflow",
        );
        let stages = workflow_stages(ctx, &p, w, streams);
        let sp = format!("{p}.sla");
        let warn = duration(
            ctx,
            &format!("{sp}.warn"),
            Some(&w.sla.warn),
            Duration::from_secs(60),
        );
        let critical = duration(
            ctx,
            &format!("{sp}.critical"),
            Some(&w.sla.critical),
            Duration::from_secs(120),
        );
        if warn >= critical {
            ctx.push(
                &sp,
                format!(
                    "warn `{}` must be shorter than critical `{}`",
                    w.sla.warn, w.sla.critical
                ),
            );
        }
        let window = duration(
            ctx,
            &format!("{p}.window"),
            Some(&w.window),
            Duration::from_secs(3600),
        );
        let business_hours = w
            .sla
            .business_hours
            .iter()
            .enumerate()
            .filter_map(|(j, bh)| {
                business_hours(
                    ctx,
                    &format!("{sp}.business_hours[{j}]"),
                    bh,
                    w,
                    (warn, critical, window),
                )
            })
            .collect();
        if window < critical {
            ctx.push(
                format!("{p}.window"),
                format!("`{}` is shorter than the critical SLA `{}`; the window must cover it so the critical breach can fire", w.window, w.sla.critical),
            );
        }
        workflow_dimensions(ctx, &p, w, &stages, streams);
        if let Some(r) = &w.route {
            check_route(ctx, routes, &format!("{p}.route"), r);
        }
        out.push(Workflow {
            name: w.name.clone(),
            description: w.description.clone(),
            stages,
            sla: Sla {
                warn,
                critical,
                business_hours,
            },
            window,
            dimensions: w.dimensions.clone(),
            route: w.route.clone(),
        });
    }
    out
}

/// The stage chain of workflow `p`: names, streams they read, event types.
fn workflow_stages(ctx: &mut Ctx, p: &str, w: &RawWorkflow, streams: &[Stream]) -> Vec<Stage> {
    if w.stages.len() < 2 {
        ctx.push(
            format!("{p}.stages"),
            format!("{} stage(s); a workflow is a chain of at least 2 stages (a start and the stage that closes it)", w.stages.len()),
        );
    }
    let mut stage_names = HashSet::new();
    let mut stages = Vec::new();
    for (j, st) in w.stages.iter().enumerate() {
        let sp = format!("{p}.stages[{j}]");
        check_name(
            ctx,
            &format!("{sp}.name"),
            &st.name,
            &mut stage_names,
            "stage",
        );
        match stream_index(streams, &st.stream) {
            Some(idx) => {
                if streams[idx].role == Role::Signals {
                    ctx.push(
                        format!("{sp}.stream"),
                        format!(
                            "stream `{}` has role `signals`; stages need a `stages` stream",
                            st.stream
                        ),
                    );
                }
                if st.event_type.is_some() && streams[idx].event_type.is_none() {
                    ctx.push(format!("{sp}.event_type"), format!("stream `{}` has no `fields.event_type`, so stages cannot filter on a type", st.stream));
                }
                stages.push(Stage {
                    name: st.name.clone(),
                    stream: idx,
                    event_type: st.event_type.clone(),
                });
            }
            None => {
                let names = stream_names(streams);
                ctx.push(
                    format!("{sp}.stream"),
                    format!(
                        "unknown stream `{}`{}; defined streams: {}",
                        st.stream,
                        suggest(&st.stream, names.iter().copied()),
                        list(&names)
                    ),
                )
            }
        }
    }
    let mut seen_pairs = HashSet::new();
    for st in &stages {
        if !seen_pairs.insert((st.stream, st.event_type.clone())) {
            ctx.push(
                format!("{p}.stages"),
                format!("two stages read stream `{}` with the same event_type; give each its own `event_type`", streams[st.stream].name),
            );
        }
    }
    stages
}

/// One business-hours override at `bp`; `sla` is the workflow's (warn, critical, window).
fn business_hours(
    ctx: &mut Ctx,
    bp: &str,
    bh: &RawBusinessHours,
    w: &RawWorkflow,
    (warn, critical, window): (Duration, Duration, Duration),
) -> Option<BusinessHours> {
    let timezone = bh.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        ctx.push(
            format!("{bp}.timezone"),
            format!(
                "unknown time zone `{}`; expected an IANA name like `Europe/Brussels` or `UTC`",
                bh.timezone
            ),
        );
    });
    let days = parse_weekdays(ctx, &format!("{bp}.days"), &bh.days);
    let from = parse_time(ctx, &format!("{bp}.from"), &bh.from);
    let to = parse_time(ctx, &format!("{bp}.to"), &bh.to);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            ctx.push(
                format!("{bp}.to"),
                format!(
                    "`{}` must be after from `{}` (windows across midnight: use two entries)",
                    bh.to, bh.from
                ),
            );
        }
    }
    let bwarn = duration(ctx, &format!("{bp}.warn"), Some(&bh.warn), warn);
    let bcrit = duration(ctx, &format!("{bp}.critical"), Some(&bh.critical), critical);
    if bwarn >= bcrit {
        ctx.push(
            bp,
            format!(
                "warn `{}` must be shorter than critical `{}`",
                bh.warn, bh.critical
            ),
        );
    }
    if window < bcrit {
        ctx.push(bp, format!("critical `{}` is longer than the workflow window `{}`; the correlation would be dropped before it can breach", bh.critical, w.window));
    }
    match (timezone, from, to) {
        (Ok(tz), Some(from), Some(to)) => Some(BusinessHours {
            timezone: tz,
            days,
            from,
            to,
            warn: bwarn,
            critical: bcrit,
        }),
        _ => None,
    }
}

/// A workflow's dimensions must be provided by one of its stage streams.
fn workflow_dimensions(
    ctx: &mut Ctx,
    p: &str,
    w: &RawWorkflow,
    stages: &[Stage],
    streams: &[Stream],
) {
    let provided: BTreeSet<&str> = stages
        .iter()
        .flat_map(|s| streams[s.stream].dimensions.iter().map(|(n, _)| n.as_str()))
        .collect();
    for (j, d) in w.dimensions.iter().enumerate() {
        if !provided.contains(d.as_str()) {
            ctx.push(
                format!("{p}.dimensions[{j}]"),
                format!(
                    "no stage stream of this workflow provides dimension `{d}`{}; provided: {}",
                    suggest(d, provided.iter().copied()),
                    if provided.is_empty() {
                        "none".to_string()
                    } else {
                        list(&provided.iter().copied().collect::<Vec<_>>())
                    }
                ),
            );
        }
    }
}

/// `backlog:`
fn backlog_section(ctx: &mut Ctx, backlog: RawBacklog) -> Backlog {
    let mut groups = Vec::new();
    let mut group_names = HashSet::new();
    for (i, g) in backlog.groups.iter().enumerate() {
        let p = format!("backlog.groups[{i}]");
        match (&g.name, &g.pattern) {
            (Some(n), None) => {
                if n.trim().is_empty() {
                    ctx.push(format!("{p}.name"), "empty group name");
                } else if !group_names.insert(n.clone()) {
                    ctx.push(format!("{p}.name"), format!("group `{n}` is listed twice"));
                }
                groups.push(GroupSelector::Name(n.clone()));
            }
            (None, Some(pat)) => match regex::Regex::new(pat) {
                Ok(re) => groups.push(GroupSelector::Pattern(re)),
                Err(e) => ctx.push(
                    format!("{p}.pattern"),
                    format!("`{pat}` is not a valid regular expression: {e}"),
                ),
            },
            _ => ctx.push(
                &p,
                "give exactly one of `name` (a group id) or `pattern` (a regular expression)",
            ),
        }
    }
    let mut reset = Vec::new();
    for (i, r) in backlog.reset.iter().enumerate() {
        let p = format!("backlog.reset[{i}]");
        let policy = match r.policy.as_str() {
            "earliest" => Some(ResetPolicy::Earliest),
            "latest" => Some(ResetPolicy::Latest),
            other => {
                ctx.push(
                    format!("{p}.policy"),
                    format!("`{other}` is not a reset policy; use `earliest` or `latest`"),
                );
                None
            }
        };
        let selector = match (&r.name, &r.pattern) {
            (Some(n), None) if !n.trim().is_empty() => Some(GroupSelector::Name(n.clone())),
            (Some(_), None) => {
                ctx.push(format!("{p}.name"), "empty group name");
                None
            }
            (None, Some(pat)) => match regex::Regex::new(pat) {
                Ok(re) => Some(GroupSelector::Pattern(re)),
                Err(e) => {
                    ctx.push(
                        format!("{p}.pattern"),
                        format!("`{pat}` is not a valid regular expression: {e}"),
                    );
                    None
                }
            },
            _ => {
                ctx.push(
                    &p,
                    "give exactly one of `name` (a group id) or `pattern` (a regular expression)",
                );
                None
            }
        };
        if let (Some(s), Some(policy)) = (selector, policy) {
            reset.push((s, policy));
        }
    }
    // The window's ages are kept in one byte each (see backlog::status).
    const MAX_WINDOW: u64 = 250;
    let window = match backlog.window {
        None => 10,
        Some(n) if (2..=MAX_WINDOW).contains(&n) => usize::try_from(n).unwrap_or(10),
        Some(n) if n > MAX_WINDOW => {
            ctx.push(
                "backlog.window",
                format!("`{n}` observations is too many; at most {MAX_WINDOW}"),
            );
            10
        }
        Some(n) => {
            ctx.push(
                "backlog.window",
                format!("`{n}` observations is too few; the status needs at least 2"),
            );
            10
        }
    };
    Backlog {
        interval: duration(
            ctx,
            "backlog.interval",
            backlog.interval.as_deref(),
            Duration::from_secs(30),
        ),
        window,
        groups,
        reset,
    }
}

/// `causes:`
fn causes_section(
    ctx: &mut Ctx,
    causes: &[(usize, RawCause)],
    streams: &[Stream],
    routes: &BTreeMap<String, Route>,
    backlog: &Backlog,
) -> Vec<Cause> {
    let mut cause_names = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in causes {
        let p = format!("causes[{i}]");
        check_name(
            ctx,
            &format!("{p}.name"),
            &c.name,
            &mut cause_names,
            "cause",
        );
        check_route(ctx, routes, &format!("{p}.route"), &c.route);
        let matcher = cause_matcher(ctx, &p, c, streams, backlog);
        if c.signal_stream.is_none() {
            for (key, set) in [
                ("signal_type", c.signal_type.is_some()),
                ("slice_min_signals", c.slice_min_signals.is_some()),
                ("slice_within", c.slice_within.is_some()),
            ] {
                if set {
                    ctx.push(
                        format!("{p}.{key}"),
                        "only applies together with `signal_stream`",
                    );
                }
            }
        }
        if let Some(matcher) = matcher {
            out.push(Cause {
                name: c.name.clone(),
                description: c.description.clone(),
                matcher,
                route: c.route.clone(),
            });
        }
    }
    out
}

/// What cause `p` matches on: exactly one of a signal stream, a segment or a group.
fn cause_matcher(
    ctx: &mut Ctx,
    p: &str,
    c: &RawCause,
    streams: &[Stream],
    backlog: &Backlog,
) -> Option<CauseMatch> {
    match (&c.signal_stream, &c.segment, &c.group) {
        (Some(s), None, None) => match stream_index(streams, s) {
            Some(idx) if streams[idx].role == Role::Signals => Some(CauseMatch::Signal {
                stream: idx,
                event_type: c.signal_type.clone(),
                slice_rate: slice_rate(ctx, p, c),
            }),
            Some(_) => {
                ctx.push(
                    format!("{p}.signal_stream"),
                    format!("stream `{s}` is not a `signals` stream; set `role: signals` on it"),
                );
                None
            }
            None => {
                ctx.push(
                    format!("{p}.signal_stream"),
                    format!("unknown stream `{s}`{}", suggest(s, stream_names(streams))),
                );
                None
            }
        },
        (None, Some(seg), None) => match LagSegment::parse(seg) {
            Some(s) => Some(CauseMatch::Segment(s)),
            None => {
                ctx.push(
                    format!("{p}.segment"),
                    format!(
                        "unknown segment `{seg}`; expected one of {}",
                        list(LagSegment::NAMES)
                    ),
                );
                None
            }
        },
        (None, None, Some(g)) => {
            if !backlog.groups.iter().any(|sel| sel.matches(g)) {
                ctx.push(
                    format!("{p}.group"),
                    format!("group `{g}` is not watched; add it under `backlog.groups`"),
                );
            }
            Some(CauseMatch::Group(g.clone()))
        }
        _ => {
            ctx.push(
                p,
                "give exactly one of `signal_stream`, `segment` or `group`",
            );
            None
        }
    }
}

/// `slice_min_signals` and `slice_within` of a signal cause: both or neither.
fn slice_rate(ctx: &mut Ctx, p: &str, c: &RawCause) -> Option<(u32, i64)> {
    match (c.slice_min_signals, &c.slice_within) {
        (None, None) => None,
        (Some(0), _) => {
            ctx.push(
                format!("{p}.slice_min_signals"),
                "`0` is not allowed; expected a positive number",
            );
            None
        }
        (Some(n), Some(w)) => {
            let within = duration(ctx, &format!("{p}.slice_within"), Some(w), Duration::ZERO);
            Some((
                u32::try_from(n).unwrap_or(u32::MAX),
                i64::try_from(within.as_millis()).unwrap_or(i64::MAX),
            ))
        }
        (Some(_), None) => {
            ctx.push(
                format!("{p}.slice_within"),
                "missing; `slice_min_signals` counts signals within this span, e.g. `5m`",
            );
            None
        }
        (None, Some(_)) => {
            ctx.push(
                format!("{p}.slice_min_signals"),
                "missing; `slice_within` is the span `slice_min_signals` counts over",
            );
            None
        }
    }
}

/// `masking:`
fn masking_section(ctx: &mut Ctx, masking: RawMasking, streams: &[Stream]) -> Masking {
    let masking = Masking {
        key_env: masking.key_env,
        correlation_ids: masking.correlation_ids.unwrap_or(false),
        dimensions: masking.dimensions,
        dead_letters: match masking.dead_letters.as_deref() {
            None | Some("raw") => DeadLetterMasking::Raw,
            Some("mask") => DeadLetterMasking::Mask,
            Some(other) => {
                ctx.push(
                    "masking.dead_letters",
                    format!(
                        "`{other}` is not a dead-letter option; expected {}{}",
                        list(DeadLetterMasking::NAMES),
                        suggest(other, DeadLetterMasking::NAMES.iter().copied())
                    ),
                );
                DeadLetterMasking::Raw
            }
        },
    };
    if (masking.correlation_ids || !masking.dimensions.is_empty()) && masking.key_env.is_none() {
        ctx.push(
            "masking.key_env",
            "missing; masking needs the name of an environment variable holding the HMAC key",
        );
    }
    let all_dims: BTreeSet<&str> = streams
        .iter()
        .flat_map(|s| s.dimensions.iter().map(|(n, _)| n.as_str()))
        .collect();
    for (i, d) in masking.dimensions.iter().enumerate() {
        if !all_dims.contains(d.as_str()) {
            ctx.push(
                format!("masking.dimensions[{i}]"),
                format!(
                    "no stream defines dimension `{d}`{}",
                    suggest(d, all_dims.iter().copied())
                ),
            );
        }
    }
    masking
}

/// `api:`
fn api_section(ctx: &mut Ctx, raw: RawApi) -> Api {
    let nonempty = |ctx: &mut Ctx, key: &str, v: Option<String>| -> Option<String> {
        match v {
            Some(t) if t.trim().is_empty() => {
                ctx.push(format!("api.{key}"), "empty; leave the key out instead");
                None
            }
            v => v,
        }
    };
    let api = Api {
        tokens_file: nonempty(ctx, "tokens_file", raw.tokens_file).map(Into::into),
        tokens_env: nonempty(ctx, "tokens_env", raw.tokens_env),
        tls_cert: nonempty(ctx, "tls_cert", raw.tls_cert).map(Into::into),
        tls_key: nonempty(ctx, "tls_key", raw.tls_key).map(Into::into),
        insecure_no_auth: raw.insecure_no_auth.unwrap_or(false),
    };
    match (&api.tls_cert, &api.tls_key) {
        (Some(_), None) => ctx.push(
            "api.tls_key",
            "missing; `api.tls_cert` needs the private key that goes with it",
        ),
        (None, Some(_)) => ctx.push(
            "api.tls_cert",
            "missing; `api.tls_key` needs the certificate that goes with it",
        ),
        _ => {}
    }
    api
}

/// `audit:`
fn audit_section(ctx: &mut Ctx, raw: RawAudit, outputs: &Outputs) -> Audit {
    let defaults = Audit::default();
    let audit = Audit {
        topic: raw.topic.unwrap_or(defaults.topic),
        queue: match raw.queue {
            None => defaults.queue,
            Some(0) => {
                ctx.push("audit.queue", "`0`; expected at least 1");
                defaults.queue
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
    };
    check_topic(ctx, "audit.topic", &audit.topic);
    if outputs.topics().contains(&audit.topic.as_str()) {
        ctx.push(
            "audit.topic",
            format!(
                "`{}` is also an output topic; the audit trail needs a topic of its own",
                audit.topic
            ),
        );
    }
    audit
}

/// `retention:`
fn retention_section(ctx: &mut Ctx, raw: RawRetention) -> Retention {
    let defaults = Retention::default();
    let policy = |ctx: &mut Ctx, key: &str, raw: Option<RawTopicPolicy>, default: TopicPolicy| {
        let Some(raw) = raw else {
            return default;
        };
        let path = format!("retention.{key}");
        let retention = duration(
            ctx,
            &format!("{path}.retention"),
            raw.retention.as_deref(),
            default.retention,
        );
        let cleanup = match raw.cleanup {
            None => default.cleanup,
            Some(c) => {
                let normal = c.replace(' ', "");
                let normal = if normal == "delete,compact" {
                    "compact,delete".to_string()
                } else {
                    normal
                };
                if !TopicPolicy::CLEANUP.contains(&normal.as_str()) {
                    ctx.push(
                        format!("{path}.cleanup"),
                        format!(
                            "`{c}` is not a cleanup policy; expected {}",
                            list(TopicPolicy::CLEANUP)
                        ),
                    );
                }
                normal
            }
        };
        TopicPolicy { retention, cleanup }
    };
    Retention {
        create_topics: raw.create_topics.unwrap_or(defaults.create_topics),
        breaches: policy(ctx, "breaches", raw.breaches, defaults.breaches),
        incidents: policy(ctx, "incidents", raw.incidents, defaults.incidents),
        lag: policy(ctx, "lag", raw.lag, defaults.lag),
        backlog: policy(ctx, "backlog", raw.backlog, defaults.backlog),
        dead_letters: policy(ctx, "dead_letters", raw.dead_letters, defaults.dead_letters),
        audit: policy(ctx, "audit", raw.audit, defaults.audit),
    }
}
