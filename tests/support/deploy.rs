//! The alerting and dashboard kit under `deploy/`: the rules derived from a topology, and
//! reading every PromQL expression out of the rule files and the Grafana dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use synclag::config::{CauseMatch, Topology};
use synclag::telemetry::LAG_BUCKETS_SECONDS;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/prometheus/`.
pub fn prometheus_dir() -> PathBuf {
    repo().join("deploy").join("prometheus")
}

/// The shipped Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    repo()
        .join("deploy")
        .join("grafana")
        .join("dashboards")
        .join("synclag.json")
}

/// The rule files Prometheus loads (`*.rules.yml` in `deploy/prometheus/`), sorted.
pub fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(prometheus_dir())
        .expect("read deploy/prometheus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".rules.yml"))
        })
        .collect();
    files.sort();
    files
}

/// The generated rule file that mirrors topology.yaml.
pub const TOPOLOGY_RULES: &str = "topology.rules.yml";

/// The bucket of the lag histogram that an SLA tier is judged by: the largest bucket
/// bound not above it (exact for tiers that are bucket bounds).
pub fn sla_bucket(tier: std::time::Duration) -> f64 {
    let secs = tier.as_secs_f64();
    LAG_BUCKETS_SECONDS
        .iter()
        .copied()
        .filter(|b| *b <= secs)
        .fold(LAG_BUCKETS_SECONDS[0], f64::max)
}

/// Formats a bucket bound the way the exporter writes `le` ("120", "0.5").
pub fn le_label(bound: f64) -> String {
    format!("{bound}")
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn info_rule(out: &mut String, record: &str, labels: &[(&str, &str)]) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}: {}", quoted(v)))
        .collect();
    let _ = writeln!(out, "      - record: {record}");
    let _ = writeln!(out, "        expr: vector(1)");
    let _ = writeln!(out, "        labels: {{ {} }}", labels.join(", "));
}

/// `deploy/prometheus/topology.rules.yml` for `topology`: one constant series per cause,
/// workflow, watched group and SLA tier, carrying the route and team (or the histogram
/// bucket) that the rules in `synclag.rules.yml` join on.
pub fn topology_rules(topology: &Topology) -> String {
    let team = |route: &str| -> String {
        topology
            .routes
            .get(route)
            .map(|r| r.team.clone())
            .unwrap_or_else(|| panic!("route `{route}` has no entry under routes:"))
    };
    let mut out = String::new();
    out.push_str(
        "# Generated from topology.yaml: do not edit by hand. After changing its causes, routes,\n\
         # workflows or SLAs, regenerate with\n\
         #   SYNCLAG_UPDATE_DEPLOY=1 cargo test --test deploy_kit\n\
         # (the test fails while this file and topology.yaml disagree).\n\
         #\n\
         # Constant series (value 1) that synclag.rules.yml joins on:\n\
         # - synclag:cause_route:info     cause -> route, team (topology `causes:` and `routes:`)\n\
         # - synclag:workflow_route:info  workflow -> its default route, team (breaches with cause\n\
         #                                `unknown` or `input_stalled`, SLA burn alerts)\n\
         # - synclag:group_route:info     watched consumer group -> route, team of the first cause\n\
         #                                that names the group\n\
         # - synclag:sla_bucket:info      workflow, SLA tier -> `le` of the lag histogram bucket\n\
         #                                the tier is judged by (the largest bound not above it)\n\
         groups:\n  - name: synclag-topology\n    rules:\n",
    );
    for c in &topology.causes {
        info_rule(
            &mut out,
            "synclag:cause_route:info",
            &[
                ("cause", &c.name),
                ("route", &c.route),
                ("team", &team(&c.route)),
            ],
        );
    }
    for w in &topology.workflows {
        match &w.route {
            Some(route) => info_rule(
                &mut out,
                "synclag:workflow_route:info",
                &[
                    ("workflow", &w.name),
                    ("route", route),
                    ("team", &team(route)),
                ],
            ),
            None => info_rule(
                &mut out,
                "synclag:workflow_route:info",
                &[("workflow", &w.name)],
            ),
        }
    }
    let mut groups_seen = BTreeSet::new();
    for c in &topology.causes {
        if let CauseMatch::Group(group) = &c.matcher {
            if groups_seen.insert(group.clone()) {
                info_rule(
                    &mut out,
                    "synclag:group_route:info",
                    &[
                        ("group", group),
                        ("route", &c.route),
                        ("team", &team(&c.route)),
                    ],
                );
            }
        }
    }
    for w in &topology.workflows {
        let warn = sla_bucket(w.sla.warn);
        let critical = sla_bucket(w.sla.critical);
        assert!(
            warn < critical,
            "workflow {}: warn {:?} and critical {:?} fall into the same lag bucket ({warn} s); \
             choose tiers on different buckets of {LAG_BUCKETS_SECONDS:?}",
            w.name,
            w.sla.warn,
            w.sla.critical
        );
        for (severity, bound) in [("warn", warn), ("critical", critical)] {
            info_rule(
                &mut out,
                "synclag:sla_bucket:info",
                &[
                    ("workflow", &w.name),
                    ("severity", severity),
                    ("le", &le_label(bound)),
                ],
            );
        }
    }
    out
}

/// One rule of a rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: String,
    pub group: String,
    /// `record` or `alert` name.
    pub name: String,
    pub alert: bool,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
}

/// Every rule of `path`.
pub fn read_rules(path: &Path) -> Vec<Rule> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: serde_norway::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rules = Vec::new();
    for g in doc["groups"].as_sequence().expect("`groups:` list") {
        let group = g["name"].as_str().expect("group name").to_string();
        for r in g["rules"].as_sequence().expect("`rules:` list") {
            let (name, alert) = match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(n), None) => (n.to_string(), false),
                (None, Some(n)) => (n.to_string(), true),
                _ => panic!("{file}: a rule needs exactly one of record/alert: {r:?}"),
            };
            let expr = r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: {name} has no expr"))
                .trim()
                .to_string();
            let labels = r["labels"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().expect("label name").to_string(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| format!("{v:?}")),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            rules.push(Rule {
                file: file.clone(),
                group: group.clone(),
                name,
                alert,
                expr,
                labels,
            });
        }
    }
    rules
}

/// A Grafana template variable.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: String,
    /// `query` variables: the query; `custom`: the comma-separated options.
    pub query: String,
    /// `custom` variables: each option's value.
    pub options: Vec<String>,
}

/// A panel query of the dashboard.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// The dashboard's template variables and every panel query (rows and nested panels
/// included).
pub fn dashboard() -> (serde_json::Value, Vec<Variable>, Vec<PanelQuery>) {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut vars = Vec::new();
    for v in json["templating"]["list"].as_array().into_iter().flatten() {
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        let query = match &v["query"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("query")
                .and_then(|q| q.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let options = v["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["value"].as_str().map(str::to_string))
            .collect();
        vars.push(Variable {
            name: v["name"].as_str().expect("variable name").to_string(),
            kind,
            query,
            options,
        });
    }
    let mut queries = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        panel: title.clone(),
                        ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&p["panels"], out);
        }
    }
    walk(&json["panels"], &mut queries);
    (json, vars, queries)
}

/// Grafana's built-in interval variables, as a panel over the last hour would get them.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1h"),
];

/// Every way `expr` is run: each template variable replaced by a value that matches
/// (`.*` for multi-value query variables, used in regex matchers), each option of a
/// custom variable in turn (they may name labels, e.g. a `by (...)` list), and Grafana's
/// interval variables by typical values. Panics if a `$` is left over.
pub fn expand(expr: &str, vars: &[Variable]) -> Vec<String> {
    let mut out = vec![expr.to_string()];
    for v in vars {
        let values: Vec<String> = match v.kind.as_str() {
            "custom" => v.options.clone(),
            "datasource" | "interval" | "constant" | "textbox" => continue,
            _ => vec![".*".to_string()],
        };
        let refs = [
            format!("${{{}}}", v.name),
            format!("[[{}]]", v.name),
            format!("${}", v.name),
        ];
        if !refs.iter().any(|r| expr.contains(r.as_str())) {
            continue;
        }
        assert!(
            !values.is_empty(),
            "variable ${} has no values to run `{expr}` with",
            v.name
        );
        let refs = &refs;
        out = out
            .iter()
            .flat_map(|e| {
                values.iter().map(move |val| {
                    let mut e = e.clone();
                    for r in refs {
                        e = replace_var(&e, r, val);
                    }
                    e
                })
            })
            .collect();
    }
    for (name, value) in BUILTINS {
        out = out
            .into_iter()
            .map(|e| {
                replace_var(
                    &replace_var(&e, &format!("${{{name}}}"), value),
                    &format!("${name}"),
                    value,
                )
            })
            .collect();
    }
    for e in &out {
        assert!(
            !e.contains('$') || only_regex_dollars(e),
            "unknown variable left in `{e}` (from `{expr}`)"
        );
    }
    out
}

/// Replaces `$name` only where the name is not followed by more name characters.
fn replace_var(expr: &str, reference: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(reference) {
        let after = &rest[i + reference.len()..];
        let continues = reference.starts_with('$')
            && !reference.starts_with("${")
            && after
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..i]);
        if continues {
            out.push_str(reference);
        } else {
            out.push_str(value);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `$1`-style references inside quoted strings (label_replace replacements) are not
/// template variables.
fn only_regex_dollars(expr: &str) -> bool {
    let bytes = expr.as_bytes();
    let mut in_string = false;
    let mut quote = b'"';
    for (i, b) in bytes.iter().enumerate() {
        match *b {
            b'"' | b'\'' | b'`' if !in_string => {
                in_string = true;
                quote = *b;
            }
            c if in_string && c == quote && (i == 0 || bytes[i - 1] != b'\\') => in_string = false,
            b'$' if !in_string => return false,
            _ => {}
        }
    }
    true
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects: every identifier outside strings, label
/// matchers, ranges and grouping label lists that is not a function call or keyword, plus
/// `__name__="..."` matchers.
pub fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            let start = i;
            i = skip_until(&chars, i, '}');
            let inner: String = chars[start..i.min(chars.len())].iter().collect();
            if let Some(pos) = inner.find("__name__") {
                let v = inner[pos..]
                    .split('"')
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                names.insert(v);
            }
        } else if c == '[' {
            i = skip_until(&chars, i, ']');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            let next_word: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // A number like 1e3 starts with a digit and never gets here.
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    i = skip_until(&chars, j, ')') + 1;
                }
            } else if KEYWORDS.contains(&word.as_str())
                || next == Some('(')
                || next_word == "by"
                || next_word == "without"
            {
                // a keyword, a function call, or an aggregation with its grouping first
            } else {
                names.insert(word);
            }
            continue;
        } else if c.is_ascii_digit() || c == '.' {
            // numbers and durations (5m, 1.5e3)
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i;
        }
        i += 1;
    }
    i
}

fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
            i = skip_string(chars, i);
        }
        i += 1;
    }
    i
}

/// The metric names the README's metric table lists (the exported contract).
pub fn readme_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `synclag_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("synclag_{name}"))
        .collect()
}

/// Histograms in the README table (their `_bucket`, `_sum` and `_count` series exist).
pub fn readme_histograms() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    readme
        .lines()
        .filter(|l| l.contains("| histogram"))
        .filter_map(|l| l.strip_prefix("| `synclag_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("synclag_{name}"))
        .collect()
}

/// Series Prometheus itself makes for a scraped target.
pub const SCRAPE_SERIES: &[&str] = &["up"];

/// Why `metric` may not be referenced, or `None` when synclag exports it (README table,
/// histogram series of a listed histogram), a rule records it, or Prometheus makes it
/// for the synclag target.
pub fn unexported(metric: &str, recorded: &BTreeSet<String>) -> Option<String> {
    if SCRAPE_SERIES.contains(&metric) || recorded.contains(metric) {
        return None;
    }
    if metric.contains(':') {
        return Some(format!(
            "`{metric}` is recorded by no rule in deploy/prometheus"
        ));
    }
    let listed = readme_metrics();
    if listed.contains(metric) {
        return None;
    }
    let histograms = readme_histograms();
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix) {
            if histograms.contains(base) {
                return None;
            }
        }
    }
    Some(format!(
        "`{metric}` is not a metric synclag exports (README \"Prometheus metrics\")"
    ))
}
