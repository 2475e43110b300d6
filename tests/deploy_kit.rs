//! The alerting and dashboard kit, checked without running it: the rules derived from
//! topology.yaml, `promtool check` and `promtool test rules`, static route labels, every
//! query naming only series synclag exports, the Grafana dashboard and provisioning, the
//! compose stack and the Dockerfile. `tests/deploy_prometheus.rs` runs the rules and the
//! dashboard queries on a real Prometheus scraping a real synclag.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use support::deploy::{self, Rule};
use synclag::config::{CauseMatch, Topology};

fn shipped_topology() -> Topology {
    let path = deploy::repo().join("topology.yaml");
    let yaml = std::fs::read_to_string(&path).expect("topology.yaml");
    Topology::from_yaml_str("topology.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"))
}

fn all_rules() -> Vec<Rule> {
    deploy::rule_files()
        .iter()
        .flat_map(|p| deploy::read_rules(p))
        .collect()
}

fn recorded(rules: &[Rule]) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| !r.alert)
        .map(|r| r.name.clone())
        .collect()
}

/// `SYNCLAG_UPDATE_DEPLOY=1` rewrites the generated file instead of failing.
#[test]
fn topology_rules_are_generated_from_topology_yaml() {
    let expected = deploy::topology_rules(&shipped_topology());
    let path = deploy::prometheus_dir().join(deploy::TOPOLOGY_RULES);
    if std::env::var_os("SYNCLAG_UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &expected).expect("write topology.rules.yml");
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == expected,
        "{} does not match topology.yaml; regenerate it with \
         `SYNCLAG_UPDATE_DEPLOY=1 cargo test --test deploy_kit`. Expected:\n{expected}",
        path.display()
    );
}

#[test]
fn topology_rules_name_every_cause_workflow_and_group_route() {
    let topology = shipped_topology();
    let rules = deploy::read_rules(&deploy::prometheus_dir().join(deploy::TOPOLOGY_RULES));
    let info = |record: &str| -> Vec<&BTreeMap<String, String>> {
        rules
            .iter()
            .filter(|r| r.name == record)
            .map(|r| &r.labels)
            .collect()
    };
    let causes = info("synclag:cause_route:info");
    assert_eq!(causes.len(), topology.causes.len());
    for c in &topology.causes {
        let l = causes
            .iter()
            .find(|l| l["cause"] == c.name)
            .unwrap_or_else(|| panic!("cause {} has no route record", c.name));
        assert_eq!(l["route"], c.route, "cause {}", c.name);
        assert_eq!(
            l["team"], topology.routes[&c.route].team,
            "cause {}",
            c.name
        );
    }
    let workflows = info("synclag:workflow_route:info");
    for w in &topology.workflows {
        let l = workflows
            .iter()
            .find(|l| l["workflow"] == w.name)
            .unwrap_or_else(|| panic!("workflow {} has no route record", w.name));
        let route = w
            .route
            .as_ref()
            .expect("every shipped workflow has a route");
        assert_eq!(&l["route"], route);
        assert_eq!(l["team"], topology.routes[route].team);
    }
    let groups = info("synclag:group_route:info");
    let named: Vec<&String> = topology
        .causes
        .iter()
        .filter_map(|c| match &c.matcher {
            CauseMatch::Group(g) => Some(g),
            _ => None,
        })
        .collect();
    assert!(!named.is_empty(), "topology.yaml names backlogged groups");
    assert_eq!(groups.len(), named.len());
    for g in named {
        assert!(groups.iter().any(|l| &l["group"] == g), "group {g}");
    }
    // Every SLA tier of the shipped topology is a bucket bound, so the by-dimension view
    // is exact there.
    let buckets = info("synclag:sla_bucket:info");
    for w in &topology.workflows {
        for (severity, tier) in [("warn", w.sla.warn), ("critical", w.sla.critical)] {
            let l = buckets
                .iter()
                .find(|l| l["workflow"] == w.name && l["severity"] == severity)
                .unwrap_or_else(|| panic!("{} {severity} has no bucket record", w.name));
            assert_eq!(
                l["le"].parse::<f64>().expect("le is a number"),
                tier.as_secs_f64(),
                "{} {severity}: the tier is not a lag bucket bound ({:?})",
                w.name,
                synclag::telemetry::LAG_BUCKETS_SECONDS
            );
        }
    }
}

#[test]
fn sla_bucket_is_the_largest_bound_not_above_the_tier() {
    use std::time::Duration;
    assert_eq!(deploy::sla_bucket(Duration::from_secs(120)), 120.0);
    assert_eq!(deploy::sla_bucket(Duration::from_secs(150)), 120.0);
    assert_eq!(deploy::sla_bucket(Duration::from_millis(500)), 1.0);
    assert_eq!(deploy::sla_bucket(Duration::from_secs(3 * 86400)), 86400.0);
    assert_eq!(deploy::le_label(120.0), "120");
    assert_eq!(deploy::le_label(0.5), "0.5");
}

fn promtool() -> Command {
    let program = std::env::var_os("SYNCLAG_TEST_PROMTOOL").unwrap_or_else(|| "promtool".into());
    let probe = Command::new(&program).arg("--version").output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "promtool is not installed (it ships in Debian's `prometheus` package; `.ci/run` \
             installs it): cannot check the Prometheus rules"
        ),
    }
    Command::new(program)
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .current_dir(deploy::prometheus_dir())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_the_config_and_runs_the_rule_unit_tests() {
    let files = deploy::rule_files();
    assert!(files.len() >= 2, "rule files: {files:?}");
    let mut check = promtool();
    check.arg("check").arg("rules").args(&files);
    let text = run_ok(check, "promtool check rules");
    assert!(text.contains("SUCCESS"), "{text}");

    let mut config = promtool();
    config.args(["check", "config", "prometheus.yml"]);
    run_ok(
        config,
        "promtool check config deploy/prometheus/prometheus.yml",
    );

    let tests: Vec<_> = std::fs::read_dir(deploy::prometheus_dir())
        .expect("deploy/prometheus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("test") && n.ends_with(".yml"))
        })
        .collect();
    assert!(!tests.is_empty(), "no rule unit tests in deploy/prometheus");
    let mut unit = promtool();
    unit.args(["test", "rules"]).args(&tests);
    let text = run_ok(unit, "promtool test rules");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_carries_a_team_and_route_from_topology_yaml() {
    let topology = shipped_topology();
    let rules = all_rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert).collect();
    assert!(alerts.len() >= 10, "alerts: {}", alerts.len());
    for a in alerts {
        assert!(
            a.labels.contains_key("severity"),
            "{}: alert {} has no severity label",
            a.file,
            a.name
        );
        match (a.labels.get("route"), a.labels.get("team")) {
            (Some(route), Some(team)) => {
                let r = topology.routes.get(route).unwrap_or_else(|| {
                    panic!(
                        "alert {}: route `{route}` is not in topology.yaml routes",
                        a.name
                    )
                });
                assert_eq!(&r.team, team, "alert {}: team of route {route}", a.name);
            }
            (None, None) => assert!(
                routed(&a.expr, &rules, 0),
                "alert {} neither sets route/team nor takes them from the topology records: {}",
                a.name,
                a.expr
            ),
            _ => panic!("alert {}: route and team go together", a.name),
        }
    }
}

/// Whether `expr` joins a `synclag:*_route:info` record, directly or through the
/// recording rules it reads.
fn routed(expr: &str, rules: &[Rule], depth: usize) -> bool {
    assert!(depth < 10, "recording rules refer to each other in a loop");
    deploy::referenced_metrics(expr).iter().any(|m| {
        (m.starts_with("synclag:") && m.ends_with("_route:info"))
            || rules
                .iter()
                .filter(|r| !r.alert && &r.name == m)
                .any(|r| routed(&r.expr, rules, depth + 1))
    })
}

#[test]
fn metric_names_are_read_out_of_expressions() {
    let got = deploy::referenced_metrics(
        r#"histogram_quantile(0.99, sum by (le, workflow) (rate(synclag_lag_seconds_bucket{segment="end_to_end", workflow=~"a|b"}[5m])))
        / on (workflow) group_left (team) synclag:workflow_route:info
        or label_replace(up{job="synclag"}, "le", "$1", "le", "(.+)\\.0+") > bool 1e3
        and ignoring (severity) group_left other_metric offset 5m
        unless {__name__="named_metric"} # comment_metric"#,
    );
    let want: BTreeSet<String> = [
        "synclag_lag_seconds_bucket",
        "synclag:workflow_route:info",
        "up",
        "other_metric",
        "named_metric",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}

#[test]
fn every_rule_and_dashboard_query_names_only_series_synclag_exports() {
    let rules = all_rules();
    let recorded = recorded(&rules);
    let (_, vars, queries) = deploy::dashboard();
    let mut problems = Vec::new();
    let exprs = rules
        .iter()
        .map(|r| (format!("{} {}", r.file, r.name), r.expr.clone()))
        .chain(
            queries
                .iter()
                .map(|q| (format!("panel `{}` {}", q.panel, q.ref_id), q.expr.clone())),
        )
        .chain(vars.iter().filter(|v| v.kind == "query").map(|v| {
            (
                format!("variable ${}", v.name),
                label_values_metric(&v.query),
            )
        }));
    let mut referenced = 0;
    for (what, expr) in exprs {
        for metric in deploy::referenced_metrics(&expr) {
            referenced += 1;
            if let Some(why) = deploy::unexported(&metric, &recorded) {
                problems.push(format!("{what}: {why}"));
            }
        }
    }
    assert!(
        referenced > 50,
        "too few metric references found: {referenced}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `label_values(metric, label)` -> `metric`.
fn label_values_metric(query: &str) -> String {
    query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.rsplit_once(','))
        .map(|(m, _)| m.trim().to_string())
        .unwrap_or_else(|| panic!("query variables use label_values(metric, label): {query}"))
}

#[test]
fn dashboard_is_well_formed_and_its_dimensions_are_topology_yaml_s() {
    let topology = shipped_topology();
    let (json, vars, queries) = deploy::dashboard();
    assert!(
        json["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "dashboard uid"
    );
    assert!(json["title"].as_str().is_some(), "dashboard title");
    // Panel ids are unique; every panel with queries uses the datasource variable.
    let mut ids = BTreeSet::new();
    fn panels(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p.clone());
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&json["panels"], &mut all);
    for p in &all {
        let id = p["id"].as_u64().expect("every panel has an id");
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(
            ["row", "timeseries", "table", "stat", "bargauge"].contains(&kind),
            "panel {id}: type `{kind}` is not one of Grafana's built-in panels used here"
        );
        assert!(ids.insert(id), "panel id {id} used twice");
        assert!(p["gridPos"].is_object(), "panel {id} has no gridPos");
        if p["targets"].is_array() {
            assert_eq!(
                p["datasource"]["uid"].as_str(),
                Some("${datasource}"),
                "panel `{}` does not use the datasource variable",
                p["title"]
            );
        }
    }
    assert!(queries.len() >= 25, "dashboard queries: {}", queries.len());
    for q in &queries {
        assert!(
            !q.ref_id.is_empty(),
            "panel `{}`: query without refId",
            q.panel
        );
        // expand() panics on unknown variables
        let expanded = deploy::expand(&q.expr, &vars);
        assert!(!expanded.is_empty());
    }
    // The dimension variable lists exactly the dimensions the workflows label lags with.
    let dims: BTreeSet<String> = topology
        .workflows
        .iter()
        .flat_map(|w| w.dimensions.iter().cloned())
        .collect();
    let var = vars
        .iter()
        .find(|v| v.name == "dimension")
        .expect("a `dimension` variable");
    assert_eq!(var.kind, "custom");
    let options: BTreeSet<String> = var.options.iter().cloned().collect();
    assert_eq!(
        options, dims,
        "the dashboard's `dimension` options differ from topology.yaml's workflow dimensions"
    );
    let query_options: BTreeSet<String> =
        var.query.split(',').map(|s| s.trim().to_string()).collect();
    assert_eq!(query_options, dims, "`dimension` query and options differ");
    for name in ["datasource", "workflow", "group"] {
        assert!(vars.iter().any(|v| v.name == name), "variable ${name}");
    }
}

#[test]
fn grafana_provisioning_points_at_the_dashboard_and_prometheus() {
    let grafana = deploy::repo().join("deploy").join("grafana");
    let ds: serde_norway::Value = yaml(&grafana.join("provisioning/datasources/prometheus.yaml"));
    let source = &ds["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    assert_eq!(source["isDefault"].as_bool(), Some(true));
    let provider: serde_norway::Value = yaml(&grafana.join("provisioning/dashboards/synclag.yaml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard provider path");
    // Checked against the compose mounts in compose_stack_is_consistent.
    assert!(path.starts_with('/'), "{path}");
}

fn yaml(path: &Path) -> serde_norway::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the compose stack -------------------------------------------------------------

/// `docker/compose.yaml` with its file's directory (paths in it are relative to it).
fn compose() -> serde_norway::Value {
    let mut doc = yaml(&deploy::repo().join("docker").join("compose.yaml"));
    doc.apply_merge().expect("compose merge keys");
    doc
}

fn services(doc: &serde_norway::Value) -> BTreeMap<String, serde_norway::Value> {
    doc["services"]
        .as_mapping()
        .expect("compose `services:`")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

fn str_list(v: &serde_norway::Value) -> Vec<String> {
    match v {
        serde_norway::Value::Sequence(s) => s
            .iter()
            .map(|x| match x {
                serde_norway::Value::String(s) => s.clone(),
                other => panic!("expected a string, got {other:?}"),
            })
            .collect(),
        serde_norway::Value::String(s) => vec![s.clone()],
        serde_norway::Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other:?}"),
    }
}

fn env_of(service: &serde_norway::Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        serde_norway::Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_norway::Value::String(s) => s.clone(),
                    serde_norway::Value::Number(n) => n.to_string(),
                    serde_norway::Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (k.as_str().expect("env name").to_string(), value)
            })
            .collect(),
        serde_norway::Value::Sequence(_) => str_list(&service["environment"])
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("KEY=value");
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Bind mounts of a service: (repository path, container path).
fn binds(service: &serde_norway::Value) -> Vec<(std::path::PathBuf, String)> {
    let docker = deploy::repo().join("docker");
    str_list(&service["volumes"])
        .iter()
        .filter(|v| v.starts_with('.') || v.starts_with('/'))
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().expect("volume source");
            let target = parts.next().expect("volume target").to_string();
            (docker.join(source), target)
        })
        .collect()
}

/// The repository file a container path of `service` comes from, through its bind mounts.
fn host_path(service: &serde_norway::Value, container: &str) -> Option<std::path::PathBuf> {
    binds(service)
        .into_iter()
        .filter_map(|(source, target)| {
            let rest = container.strip_prefix(target.as_str())?;
            if rest.is_empty() {
                Some(source)
            } else {
                rest.strip_prefix('/').map(|r| source.join(r))
            }
        })
        .next()
}

/// `host:port` of an `http://host:port/...` URL or a `host:port` address.
fn host_port(addr: &str) -> (String, u16) {
    let rest = addr.split("://").last().unwrap_or(addr);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport.rsplit_once(':').expect("host:port");
    (host.to_string(), port.parse().expect("port"))
}

/// Container ports a service publishes (`"127.0.0.1:HOST:CONTAINER"`), by container port.
fn published(service: &serde_norway::Value) -> BTreeMap<u16, u16> {
    str_list(&service["ports"])
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            let container: u16 = parts[parts.len() - 1].parse().expect("container port");
            let host: u16 = parts[parts.len() - 2].parse().expect("host port");
            (container, host)
        })
        .collect()
}

fn flag(args: &[String], name: &str) -> String {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
        .or_else(|| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        })
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
}

#[test]
fn compose_stack_references_files_volumes_and_services_that_exist() {
    let doc = compose();
    let services = services(&doc);
    for name in [
        "kafka",
        "kafka-topics",
        "registry",
        "synclag",
        "simulator",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(
            services.contains_key(name),
            "compose has no `{name}` service"
        );
    }
    let declared: BTreeSet<String> = doc["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let mut used = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (name, s) in &services {
        // An image pinned to a version, or built from this repository.
        match (s["image"].as_str(), s["build"].is_mapping()) {
            (_, true) => {
                let build = &s["build"];
                let context = deploy::repo()
                    .join("docker")
                    .join(build["context"].as_str().expect("build context"));
                assert!(
                    context.is_dir(),
                    "{name}: build context {}",
                    context.display()
                );
                let dockerfile = context.join(build["dockerfile"].as_str().expect("dockerfile"));
                assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
            }
            (Some(image), false) => {
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    !tag.is_empty() && tag != "latest",
                    "{name}: pin the image version ({image})"
                );
            }
            (None, false) => panic!("{name}: neither image nor build"),
        }
        for (source, target) in binds(s) {
            assert!(
                source.exists(),
                "{name}: mounts {} (at {target}), which does not exist",
                source.display()
            );
        }
        for v in str_list(&s["volumes"]) {
            if !(v.starts_with('.') || v.starts_with('/')) {
                let volume = v.split(':').next().unwrap().to_string();
                assert!(
                    declared.contains(&volume),
                    "{name}: volume `{volume}` is not declared"
                );
                used.insert(volume);
            }
        }
        let deps: Vec<String> = match &s["depends_on"] {
            serde_norway::Value::Mapping(m) => {
                m.keys().map(|k| k.as_str().unwrap().to_string()).collect()
            }
            other => str_list(other),
        };
        for d in deps {
            assert!(
                services.contains_key(&d),
                "{name} depends on unknown service `{d}`"
            );
            assert_ne!(&d, name);
        }
        for (_, host) in published(s) {
            assert!(host_ports.insert(host), "host port {host} published twice");
        }
    }
    assert_eq!(used, declared, "declared volumes that no service uses");
}

#[test]
fn compose_stack_agrees_with_topology_yaml_and_the_deploy_configs() {
    let doc = compose();
    let services = services(&doc);
    let repo = deploy::repo();

    // synclag and the simulator run topology.yaml, with overrides that validate.
    for name in ["synclag", "simulator"] {
        let s = &services[name];
        let command = str_list(&s["command"]);
        let config = flag(&command, "--config");
        let file = host_path(s, &config)
            .unwrap_or_else(|| panic!("{name}: {config} is not mounted from the repository"));
        assert_eq!(file, repo.join("docker").join("../topology.yaml"));
        let env: Vec<(String, String)> = env_of(s)
            .into_iter()
            .filter(|(k, _)| k.starts_with("SYNCLAG__"))
            .collect();
        let yaml_text = std::fs::read_to_string(&file).expect("topology");
        let topology = Topology::from_yaml_str("topology.yaml", &yaml_text, env.clone())
            .unwrap_or_else(|e| panic!("{name}: topology.yaml with the compose environment: {e}"));
        // Kafka: the broker service, on a listener it advertises under that name.
        let (host, port) = host_port(&topology.kafka.bootstrap_servers);
        let kafka_env = env_of(&services[&host]);
        let advertised = &kafka_env["KAFKA_ADVERTISED_LISTENERS"];
        assert!(
            advertised
                .split(',')
                .any(|l| l.ends_with(&format!("://{host}:{port}"))),
            "{name}: bootstrap {host}:{port} is not advertised by the broker: {advertised}"
        );
        // The registry service, on the port its image listens on (8080) and with the
        // Confluent-compatible API path.
        let registry = topology
            .registry
            .as_ref()
            .expect("topology.yaml has a registry");
        let (host, port) = host_port(&registry.url);
        assert!(
            published(&services[&host]).contains_key(&port),
            "{name}: registry port {port}"
        );
        assert!(
            registry.url.ends_with("/apis/ccompat/v7"),
            "{}",
            registry.url
        );
        if name == "synclag" {
            let listen = topology.service.http_listen;
            assert_eq!(
                listen.ip().to_string(),
                "0.0.0.0",
                "listen on the container network"
            );
            assert!(
                published(s).contains_key(&listen.port()),
                "synclag's port {} is not published",
                listen.port()
            );
            // Prometheus scrapes it there, under the job name the rules use.
            let prom = yaml(&repo.join("deploy/prometheus/prometheus.yml"));
            let job = &prom["scrape_configs"][0];
            assert_eq!(job["job_name"].as_str(), Some("synclag"));
            let target = job["static_configs"][0]["targets"][0]
                .as_str()
                .expect("target");
            assert_eq!(host_port(target), ("synclag".to_string(), listen.port()));
        } else {
            let scenario = flag(&command, "--scenario");
            let path = host_path(s, &scenario).expect("scenario mounted");
            synclag::sim::Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // The topics kafka-topics creates are topology.yaml's.
    let topology = shipped_topology();
    let topics_env = env_of(&services["kafka-topics"]);
    let words = |k: &str| -> BTreeSet<String> {
        topics_env[k]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let inputs: BTreeSet<String> = topology.streams.iter().map(|s| s.topic.clone()).collect();
    assert_eq!(words("INPUT_TOPICS"), inputs);
    let outputs: BTreeSet<String> = topology
        .outputs
        .topics()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(words("OUTPUT_TOPICS"), outputs);

    // Prometheus: its config and rules from deploy/prometheus; Alertmanager where the
    // config says.
    let prom = &services["prometheus"];
    let config = flag(&str_list(&prom["command"]), "--config.file");
    assert_eq!(
        host_path(prom, &config).expect("prometheus config mounted"),
        repo.join("docker")
            .join("../deploy/prometheus/prometheus.yml")
    );
    let prom_cfg = yaml(&repo.join("deploy/prometheus/prometheus.yml"));
    let am_target = prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .expect("alertmanager target");
    let (host, port) = host_port(am_target);
    assert!(
        published(&services[&host]).contains_key(&port),
        "alertmanager port {port}"
    );
    let am = &services["alertmanager"];
    let am_config = flag(&str_list(&am["command"]), "--config.file");
    assert!(
        host_path(am, &am_config).expect("mounted").is_file(),
        "{am_config}"
    );

    // Grafana: provisioning from deploy/grafana, a datasource pointing at the Prometheus
    // service, a dashboard provider path where the dashboards are mounted.
    let grafana = &services["grafana"];
    let ds_dir = host_path(grafana, "/etc/grafana/provisioning/datasources").expect("datasources");
    let ds = yaml(&ds_dir.join("prometheus.yaml"));
    let (host, port) = host_port(ds["datasources"][0]["url"].as_str().expect("url"));
    assert_eq!(host, "prometheus");
    assert!(
        published(&services[&host]).contains_key(&port),
        "prometheus port {port}"
    );
    let prov_dir = host_path(grafana, "/etc/grafana/provisioning/dashboards").expect("dashboards");
    let provider = yaml(&prov_dir.join("synclag.yaml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    let dashboards = host_path(grafana, path).expect("dashboard dir mounted");
    assert!(dashboards.join("synclag.json").is_file());
    let home = &env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    assert_eq!(
        std::fs::canonicalize(host_path(grafana, home).expect("home mounted")).unwrap(),
        std::fs::canonicalize(deploy::dashboard_path()).unwrap()
    );
}

#[test]
fn dockerfile_builds_from_files_that_exist_and_copies_what_the_build_includes() {
    let repo = deploy::repo();
    let text = std::fs::read_to_string(repo.join("docker/Dockerfile")).expect("Dockerfile");
    let mut copied = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo.join(source).exists(),
                "Dockerfile copies missing `{source}`"
            );
            copied.insert(source.trim_end_matches('/').to_string());
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.contains(needed), "Dockerfile does not copy {needed}");
    }
    // Every [[bench]] of Cargo.toml must be there for cargo to read the manifest.
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).expect("Cargo.toml");
    if manifest.contains("[[bench]]") {
        assert!(copied.contains("benches"), "Cargo.toml declares benches");
    }
    // Files the binary embeds (include_str!/include_bytes! outside test modules).
    let mut stack = vec![repo.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap_or_default();
            let code = code.split("#[cfg(test)]").next().unwrap_or_default();
            let pieces = code
                .split("include_str!(\"")
                .skip(1)
                .chain(code.split("include_bytes!(\"").skip(1));
            for piece in pieces {
                let Some(rel) = piece.split('"').next() else {
                    continue;
                };
                let target = path.parent().unwrap().join(rel);
                let target = std::fs::canonicalize(&target)
                    .unwrap_or_else(|e| panic!("{}: {rel}: {e}", path.display()));
                let top = target
                    .strip_prefix(std::fs::canonicalize(&repo).unwrap())
                    .expect("inside the repository")
                    .components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap();
                assert!(
                    copied.contains(&top),
                    "{} embeds {rel}, but the Dockerfile does not copy `{top}`",
                    path.display()
                );
            }
        }
    }
    // The image runs synclag on the port it exposes.
    assert!(text.contains("ENTRYPOINT [\"synclag\"]"));
    let listen = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV SYNCLAG__SERVICE__HTTP_LISTEN="))
        .expect("listen address");
    let port = host_port(listen).1;
    assert!(text.contains(&format!("EXPOSE {port}")), "EXPOSE {port}");
    assert_eq!(port, shipped_topology().service.http_listen.port());
}

// ---- Alertmanager ------------------------------------------------------------------

fn amtool() -> Command {
    let program = std::env::var_os("SYNCLAG_TEST_AMTOOL").unwrap_or_else(|| "amtool".into());
    match Command::new(&program).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "amtool is not installed (it ships in Debian's `prometheus-alertmanager` package; \
             `.ci/run` installs it): cannot check the example Alertmanager routes"
        ),
    }
    Command::new(program)
}

#[test]
fn example_alertmanager_config_routes_each_team_to_its_receiver() {
    let config = deploy::repo().join("deploy/alertmanager/alertmanager.example.yml");
    let mut check = amtool();
    check.arg("check-config").arg(&config);
    run_ok(check, "amtool check-config");
    let route = |labels: &[(&str, &str)]| -> String {
        let mut cmd = amtool();
        cmd.args(["config", "routes", "test"])
            .arg(format!("--config.file={}", config.display()));
        for (k, v) in labels {
            cmd.arg(format!("{k}={v}"));
        }
        run_ok(cmd, "amtool config routes test")
            .lines()
            .find(|l| !l.starts_with("Warning"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let topology = shipped_topology();
    for (name, r) in &topology.routes {
        assert_eq!(
            route(&[
                ("alertname", "SynclagCriticalBreaches"),
                ("route", name),
                ("team", &r.team),
                ("severity", "critical")
            ]),
            r.team,
            "alerts for team {} (route {name})",
            r.team
        );
    }
    assert_eq!(
        route(&[
            ("alertname", "SynclagConsumerGroupStalled"),
            ("group", "middleware-orders")
        ]),
        "default"
    );
}
