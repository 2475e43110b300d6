//! The alerting and dashboard kit against the real thing: a Prometheus server (Debian's
//! `prometheus`) loading deploy/prometheus's rules and scraping `synclag run` every second
//! while the simulator sends traffic with faults through a real broker and registry.
//! Then every expression is run on it:
//!
//! - every query of the Grafana dashboard, with each template variable replaced by a
//!   value that matches (see `support::deploy::expand`), and every recording rule must
//!   parse and return data;
//! - every alert expression must parse, and every series it reads must have data. An
//!   alert expression compares, and may rightly be empty when nothing is wrong (synclag
//!   is up, its clock moves): what it compares must exist.
//!
//! The traffic is chosen so that every panel has data: breaches with configured and
//! unknown causes, correlations that never arrive, pending correlations, and a watched
//! consumer group (`wms-bridge`) with a backlog that it does not consume. Finally the
//! alerts that this traffic must raise are checked for the team and route that
//! topology.yaml gives them, and the alerts that must stay quiet are.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use support::deploy;
use support::prometheus::Prometheus;
use support::service::SynclagProcess;
use synclag::config::Topology;

/// Short SLAs on bucket bounds of the lag histogram (5 s, 15 s), so that a minute of
/// traffic breaches and the by-dimension view is exact.
const WARN: &str = "5s";
const CRITICAL: &str = "15s";
const WINDOW: &str = "30s";

/// The consumer group given a backlog it never consumes.
const STUCK_GROUP: &str = "wms-bridge";

const SCENARIO: &str = r#"
name: deploy-check
rate: 12
weights: { order_import: 1.0, shipment_status: 1.0, inventory_sync: 0.8, billing_trigger: 0.6, returns: 0.4 }
phases:
  - name: faults
    duration: 50s
    faults:
      - name: carrier_throttled
        kind: erp_delay
        workflows: [shipment_status, billing_trigger]
        dimension: carrier
        value: DHL
        delay: 1.2x critical
        signal: { kind: carrier_api_throttled, every: 5s, max: 3, connector: carrier-dhl }
      - name: odoo_rejects
        kind: erp_delay
        workflows: [order_import]
        delay: 1.5x critical
        share: 0.3
        signal: { kind: odoo_validation_failed, every: 5s, max: 3 }
      - name: lost
        kind: drop
        share: 0.05
"#;

fn set(v: &mut Yaml, path: &[&str], value: Yaml) {
    let mut cur = v;
    for key in &path[..path.len() - 1] {
        cur = &mut cur[*key];
    }
    cur[path[path.len() - 1]] = value;
}

fn s(text: &str) -> Yaml {
    Yaml::String(text.to_string())
}

/// topology.yaml as the stack runs it, on the test's broker and registry, with fresh
/// topics, short SLAs and a fast backlog cycle. Streams, workflows, causes and routes are
/// the shipped ones.
fn test_topology(http_port: u16, group: &str) -> String {
    let yaml = std::fs::read_to_string(deploy::repo().join("topology.yaml")).expect("topology");
    let mut v: Yaml = serde_norway::from_str(&yaml).expect("yaml");
    set(&mut v, &["service", "group_id"], s(group));
    set(
        &mut v,
        &["service", "http_listen"],
        s(&format!("127.0.0.1:{http_port}")),
    );
    set(&mut v, &["service", "lag_interval"], s("5s"));
    set(
        &mut v,
        &["kafka", "bootstrap_servers"],
        s(&support::bootstrap()),
    );
    set(
        &mut v,
        &["kafka", "properties", "broker.address.family"],
        s("v4"),
    );
    set(&mut v, &["registry", "url"], s(&support::registry_url()));
    for key in [
        "breaches_topic",
        "lag_topic",
        "backlog_topic",
        "dead_letter_topic",
    ] {
        set(
            &mut v,
            &["outputs", key],
            s(&support::random_name("dp-out")),
        );
    }
    for stream in v["streams"].as_sequence_mut().expect("streams") {
        let name = stream["name"].as_str().expect("name").replace('_', "-");
        stream["topic"] = s(&support::random_name(&format!("dp-{name}")));
    }
    for w in v["workflows"].as_sequence_mut().expect("workflows") {
        w["sla"] = serde_norway::from_str(&format!("{{ warn: {WARN}, critical: {CRITICAL} }}"))
            .expect("sla");
        w["window"] = s(WINDOW);
    }
    set(&mut v, &["backlog", "interval"], s("2s"));
    set(&mut v, &["backlog", "window"], Yaml::Number(5.into()));
    // The shipped list, with synclag's own group under the name this test gives it.
    for g in v["backlog"]["groups"].as_sequence_mut().expect("groups") {
        if g["name"].as_str() == Some("synclag") {
            g["name"] = s(group);
        }
    }
    serde_norway::to_string(&v).expect("serialise topology")
}

/// deploy/prometheus/prometheus.yml with a 1 s scrape and evaluation interval, its
/// synclag job pointed at the test's synclag, the given rule files, and no Alertmanager.
fn prometheus_config(synclag_port: u16, rule_files: &[std::path::PathBuf]) -> String {
    let path = deploy::prometheus_dir().join("prometheus.yml");
    let mut v: Yaml =
        serde_norway::from_str(&std::fs::read_to_string(path).expect("prometheus.yml"))
            .expect("yaml");
    set(&mut v, &["global", "scrape_interval"], s("1s"));
    set(&mut v, &["global", "evaluation_interval"], s("1s"));
    v["rule_files"] = Yaml::Sequence(
        rule_files
            .iter()
            .map(|p| s(&p.display().to_string()))
            .collect(),
    );
    if let Some(m) = v.as_mapping_mut() {
        m.remove("alerting");
    }
    let job = &mut v["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("synclag"));
    job["static_configs"][0]["targets"] =
        Yaml::Sequence(vec![s(&format!("127.0.0.1:{synclag_port}"))]);
    serde_norway::to_string(&v).expect("serialise config")
}

async fn wait_for(prom: &Prometheus, svc: &SynclagProcess, what: &str, expr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        match prom.query(expr).await {
            Ok(r) if !r.is_empty() => return,
            Ok(_) => {}
            Err(e) => panic!("`{expr}` does not run: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 180 s for {what} (`{expr}`)\n--- synclag ---\n{}\n--- prometheus ---\n{}",
            svc.log_tail(),
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Gives `group` a committed offset at the start of every partition of `topic` and
/// keeps it there: a backlog no consumer works on.
async fn commit_at_start(group: &str, topic: &str) {
    let consumer = support::consumer(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("partition offset");
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit offsets of {group}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_rule_expression_returns_data_from_a_live_synclag() {
    let http = support::free_port();
    let group = support::random_name("synclag-dp");
    let config = test_topology(http, &group);
    let topology = Topology::from_yaml_str("test topology", &config, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    for stream in &topology.streams {
        support::create_topic(&stream.topic, 3).await;
    }
    for t in topology.outputs.topics() {
        support::create_topic(t, 1).await;
    }
    // The WMS bridge "stopped" at the start of the fulfilment topic.
    let wms_topic = topology
        .streams
        .iter()
        .find(|s| s.name == "wms_fulfilment")
        .expect("wms_fulfilment stream")
        .topic
        .clone();
    commit_at_start(STUCK_GROUP, &wms_topic).await;

    let svc = SynclagProcess::start(&config, http, "deploy-prometheus");
    svc.wait_ready().await;

    // The shipped rules, with the topology records generated for this topology (its
    // SLAs are seconds, not minutes; causes, routes and workflows are the shipped ones).
    let rules_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(support::random_name("deploy-rules"));
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    let mut rule_files = Vec::new();
    for file in deploy::rule_files() {
        let name = file.file_name().expect("name").to_owned();
        let target = rules_dir.join(&name);
        if name == deploy::TOPOLOGY_RULES {
            std::fs::write(&target, deploy::topology_rules(&topology)).expect("write rules");
        } else {
            std::fs::copy(&file, &target).expect("copy rules");
        }
        rule_files.push(target);
    }
    let prom = Prometheus::start(&prometheus_config(http, &rule_files));
    wait_for(&prom, &svc, "the first scrape", r#"up{job="synclag"} == 1"#).await;

    // Traffic with faults, in real time.
    let scenario_file = rules_dir.join("scenario.yaml");
    std::fs::write(&scenario_file, SCENARIO).expect("scenario");
    let scenario = synclag::sim::Scenario::load(&scenario_file).unwrap_or_else(|e| panic!("{e}"));
    let options = synclag::sim::SimOptions {
        seed: 11,
        start: chrono::Utc::now(),
        duration: None,
        rate: None,
        drain: false,
    };
    let mut sim = synclag::sim::Simulator::new(&topology, &scenario, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sink = synclag::sim::kafka_sink_for(&topology, None).unwrap_or_else(|e| panic!("{e}"));
    let run_options = synclag::sim::RunOptions {
        step: Duration::from_millis(100),
        progress: false,
    };
    let summary = synclag::sim::run(
        &mut sim,
        &synclag::sim::RealClock,
        &mut sink,
        None,
        &run_options,
    )
    .await
    .unwrap_or_else(|e| panic!("simulator: {e}"));
    assert!(summary.records > 500, "{summary:?}");
    assert_eq!(summary.sink.errors, 0, "{summary:?}");
    // A record on the stuck group's topic after its offsets, so its backlog keeps growing
    // past the last simulated record.
    let producer = support::producer();
    producer
        .send(
            FutureRecord::to(&wms_topic)
                .key("late")
                .payload("not decoded"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");

    // What the panels show, now on Prometheus.
    let conditions = [
        (
            "critical breaches",
            r#"sum(synclag_breaches_total{severity="critical"}) > 0"#,
        ),
        (
            "breaches routed by a configured cause",
            r#"synclag:breaches_routed:rate5m{cause="carrier_api_throttling"} > 0"#,
        ),
        (
            "correlations that never arrived",
            "sum(synclag_never_arrived_total) > 0",
        ),
        (
            "end-to-end lags by dimension",
            r#"synclag_lag_seconds_count{segment="end_to_end", carrier="DHL"} > 0"#,
        ),
        (
            "completions past the critical tier",
            r#"synclag:lag_over_sla:ratio_rate5m{severity="critical"} > 0"#,
        ),
        (
            "the stuck group's backlog",
            &format!(r#"synclag_backlog_group_offset_lag_records{{group="{STUCK_GROUP}"}} > 0"#),
        ),
        (
            "the stuck group stopped",
            &format!(
                r#"synclag_backlog_group_status_info{{group="{STUCK_GROUP}", status="STOP"}}"#
            ),
        ),
        (
            "the stuck group's backlog in seconds",
            &format!(r#"synclag_backlog_group_time_lag_seconds{{group="{STUCK_GROUP}"}} > 0"#),
        ),
        (
            "synclag's own group",
            &format!(r#"synclag_backlog_group_status_info{{group="{group}"}}"#),
        ),
    ];
    for (what, expr) in conditions {
        wait_for(&prom, &svc, what, expr).await;
    }

    // Every expression of the kit.
    let shipped: Vec<deploy::Rule> = deploy::rule_files()
        .iter()
        .flat_map(|p| deploy::read_rules(p))
        .collect();
    let (_, vars, queries) = deploy::dashboard();
    let mut problems = Vec::new();
    let mut ran = 0;
    let mut metrics_seen = BTreeSet::new();
    for q in &queries {
        for expr in deploy::expand(&q.expr, &vars) {
            ran += 1;
            match prom.query(&expr).await {
                Ok(r) if r.is_empty() => problems.push(format!(
                    "panel `{}` {}: no data from `{expr}`",
                    q.panel, q.ref_id
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("panel `{}` {}: `{expr}`: {e}", q.panel, q.ref_id)),
            }
            metrics_seen.extend(deploy::referenced_metrics(&expr));
        }
    }
    for v in vars.iter().filter(|v| v.kind == "query") {
        // label_values(metric, label)
        let inner = v
            .query
            .trim()
            .trim_start_matches("label_values(")
            .trim_end_matches(')');
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        ran += 1;
        let expr = format!("group by ({}) ({})", label.trim(), metric.trim());
        match prom.query(&expr).await {
            Ok(r) if r.is_empty() => problems.push(format!("variable ${}: no values", v.name)),
            Ok(_) => {}
            Err(e) => problems.push(format!("variable ${}: `{expr}`: {e}", v.name)),
        }
    }
    for r in &shipped {
        ran += 1;
        match prom.query(&r.expr).await {
            Ok(result) if result.is_empty() && !r.alert => problems.push(format!(
                "{}: recording rule {} returns no data: {}",
                r.file, r.name, r.expr
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {}: {e}", r.file, r.name)),
        }
        metrics_seen.extend(deploy::referenced_metrics(&r.expr));
    }
    // Everything read by an expression (alert comparisons included) has data: synclag's
    // series, Prometheus' `up` for it, and the rules' recorded series.
    for metric in &metrics_seen {
        let expr = format!("count({{__name__=\"{metric}\"}})");
        match prom.query(&expr).await {
            Ok(r) if r.is_empty() => problems.push(format!("series `{metric}` has no data")),
            Ok(_) => {}
            Err(e) => problems.push(format!("`{expr}`: {e}")),
        }
    }
    eprintln!(
        "ran {ran} expressions ({} dashboard queries, {} rules); {} series read",
        queries.len(),
        shipped.len(),
        metrics_seen.len()
    );
    assert!(ran > 80, "ran only {ran} expressions");
    assert!(
        problems.is_empty(),
        "{} of {ran} expressions failed:\n{}\n--- prometheus ---\n{}",
        problems.len(),
        problems.join("\n"),
        prom.log_tail()
    );

    // The alerts this traffic raises carry topology.yaml's teams and routes.
    let team_of = |route: &str| topology.routes[route].team.clone();
    let cause_route = |cause: &str| {
        topology
            .causes
            .iter()
            .find(|c| c.name == cause)
            .map(|c| c.route.clone())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (breach_alerts, group_alerts, incident_alerts, all) = loop {
        let alerts = prom.api("alerts").await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let named = |n: &str| -> Vec<Json> {
            alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == n)
                .cloned()
                .collect()
        };
        let breaches = named("SynclagCriticalBreaches");
        let stopped: Vec<Json> = named("SynclagConsumerGroupStopped")
            .into_iter()
            .filter(|a| a["labels"]["group"] == STUCK_GROUP)
            .collect();
        let incidents = named("SynclagIncidentOpen");
        if !breaches.is_empty() && !stopped.is_empty() && !incidents.is_empty() {
            break (breaches, stopped, incidents, alerts);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected alerts did not come: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut configured_cause_seen = false;
    // Breach alerts and open-incident alerts are routed alike: by cause, else by workflow.
    for a in breach_alerts.iter().chain(&incident_alerts) {
        let l = &a["labels"];
        let cause = l["cause"].as_str().expect("cause");
        let workflow = l["workflow"].as_str().expect("workflow");
        let route = cause_route(cause).unwrap_or_else(|| {
            topology
                .workflows
                .iter()
                .find(|w| w.name == workflow)
                .and_then(|w| w.route.clone())
                .expect("workflow route")
        });
        configured_cause_seen |= cause_route(cause).is_some();
        assert_eq!(l["route"].as_str(), Some(route.as_str()), "{a}");
        assert_eq!(l["team"].as_str(), Some(team_of(&route).as_str()), "{a}");
    }
    assert!(
        configured_cause_seen,
        "no breach alert with a configured cause: {breach_alerts:#?}"
    );
    let stuck_route = topology
        .causes
        .iter()
        .find(|c| matches!(&c.matcher, synclag::config::CauseMatch::Group(g) if g == STUCK_GROUP))
        .map(|c| c.route.clone())
        .expect("a cause names the stuck group");
    for a in &group_alerts {
        assert_eq!(
            a["labels"]["route"].as_str(),
            Some(stuck_route.as_str()),
            "{a}"
        );
        assert_eq!(
            a["labels"]["team"].as_str(),
            Some(team_of(&stuck_route).as_str()),
            "{a}"
        );
    }
    // synclag is up, reaches Kafka and its clock moves.
    for quiet in [
        "SynclagDown",
        "SynclagAbsent",
        "SynclagKafkaUnreachable",
        "SynclagClockStalled",
    ] {
        assert!(
            !all.iter().any(|a| a["labels"]["alertname"] == quiet),
            "{quiet} is active: {all:#?}"
        );
    }
}
