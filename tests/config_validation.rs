//! `topology.yaml` validation: the shipped file is valid, and broken files list
//! every problem with its path, the offending value and what would be valid.

use std::process::Command;
use synclag::config::Topology;

const BASE: &str = r#"
kafka:
  bootstrap_servers: localhost:9092
streams:
  - name: orders
    topic: shop.orders
    format: json
    fields:
      correlation_id: $.order_ref
      event_time: $.created_at
      event_type: $.event
      dimensions:
        channel: $.channel
  - name: outbox
    topic: odoo.outbox
    format: debezium_outbox
    fields:
      correlation_id: $.correlation_id
      event_type: header:type
  - name: errors
    topic: integration.errors
    format: json
    role: signals
    fields:
      correlation_id: $.correlation_id
      event_type: $.kind
workflows:
  - name: order_import
    stages:
      - { name: created, stream: orders, event_type: order.created }
      - { name: imported, stream: outbox, event_type: sale.order.imported }
    sla: { warn: 2m, critical: 5m }
    window: 1h
    dimensions: [channel]
    route: support
causes:
  - { name: throttled, signal_stream: errors, signal_type: throttled, route: support }
routes:
  support: { team: integration-support }
backlog:
  groups:
    - name: odoo-connector
"#;

fn problems(yaml: &str) -> Vec<String> {
    match Topology::from_yaml_str("t.yaml", yaml, Vec::new()) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect(),
    }
}

/// Asserts that `needle` appears in one of the problems of `yaml`.
fn expect(yaml: &str, needle: &str) {
    let found = problems(yaml);
    assert!(
        found.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got {found:#?}"
    );
}

#[test]
fn base_is_valid() {
    assert_eq!(problems(BASE), Vec::<String>::new());
}

#[test]
fn shipped_topology_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml");
    let t = Topology::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    assert!(t.streams.len() >= 6);
    assert!(t.workflows.len() >= 5);
    assert!(t.workflows.iter().any(|w| w.stages.len() >= 3));
    assert!(t.workflows.iter().any(|w| !w.sla.business_hours.is_empty()));
    assert!(t.backlog.groups.len() >= 2);
    assert!(t.causes.iter().all(|c| t.routes.contains_key(&c.route)));
}

#[test]
fn unknown_stream_in_a_stage() {
    expect(
        &BASE.replace("stream: outbox, event_type: sale", "stream: outbx, event_type: sale"),
        "workflows[0].stages[1].stream: unknown stream `outbx`; did you mean `outbox`?; defined streams: `orders`, `outbox`, `errors`",
    );
}

#[test]
fn duplicate_names() {
    expect(
        &BASE.replace("name: errors", "name: orders"),
        "streams[2].name: duplicate stream name `orders`",
    );
}

#[test]
fn warn_not_below_critical() {
    expect(
        &BASE.replace("{ warn: 2m, critical: 5m }", "{ warn: 5m, critical: 5m }"),
        "workflows[0].sla: warn `5m` must be shorter than critical `5m`",
    );
}

#[test]
fn window_shorter_than_critical() {
    expect(
        &BASE.replace("window: 1h", "window: 4m"),
        "workflows[0].window: `4m` is shorter than the critical SLA `5m`",
    );
}

#[test]
fn workflow_with_one_stage() {
    let yaml = BASE.replace(
        "      - { name: imported, stream: outbox, event_type: sale.order.imported }\n",
        "",
    );
    expect(
        &yaml,
        "workflows[0].stages: 1 stage(s); a workflow is a chain of at least 2 stages",
    );
}

#[test]
fn bad_field_path() {
    expect(&BASE.replace("correlation_id: $.order_ref", "correlation_id: order_ref"), "streams[0].fields.correlation_id: bad field path `order_ref`: `order_ref` must start with `$`, `header:` or `kafka:`; expected `$.a.b`");
    expect(
        &BASE.replace("event_time: $.created_at", "event_time: $.lines[x]"),
        "streams[0].fields.event_time: bad field path `$.lines[x]`: `[x]` is not an array index",
    );
}

#[test]
fn unknown_format() {
    expect(&BASE.replace("format: json\n    fields:\n      correlation_id: $.order_ref", "format: jsn\n    fields:\n      correlation_id: $.order_ref"), "streams[0].format: unknown format `jsn`; did you mean `json`?; expected one of `json`, `avro`, `debezium_cdc`, `debezium_outbox`");
}

#[test]
fn avro_without_registry() {
    expect(
        &BASE.replace(
            "format: json\n    fields:\n      correlation_id: $.order_ref",
            "format: avro\n    fields:\n      correlation_id: $.order_ref",
        ),
        "streams[0].format: `avro` needs a `registry:` section",
    );
}

#[test]
fn bad_duration() {
    expect(&BASE.replace("warn: 2m", "warn: 2 minutes"), "workflows[0].sla.warn: `2 minutes` has a space; write the unit right after the number, e.g. `2m`; expected a duration like `90s`, `5m`, `2h`");
    expect(
        &BASE.replace("window: 1h", "window: 1y"),
        "workflows[0].window: `1y` has unknown unit `y`",
    );
}

#[test]
fn bad_time_zone() {
    let yaml = BASE.replace(
        "{ warn: 2m, critical: 5m }",
        "\n      warn: 2m\n      critical: 5m\n      business_hours:\n        - { timezone: Europe/Brussel, days: [mon-fri], from: \"14:00\", to: \"18:00\", warn: 1m, critical: 3m }",
    );
    expect(&yaml, "workflows[0].sla.business_hours[0].timezone: unknown time zone `Europe/Brussel`; expected an IANA name");
}

#[test]
fn bad_business_hours_days_and_times() {
    let yaml = BASE.replace(
        "{ warn: 2m, critical: 5m }",
        "\n      warn: 2m\n      critical: 5m\n      business_hours:\n        - { timezone: UTC, days: [mon-fry], from: \"18:00\", to: \"14:00\", warn: 1m, critical: 3m }",
    );
    expect(&yaml, "business_hours[0].days[0]: `mon-fry` is not a day");
    expect(
        &yaml,
        "business_hours[0].to: `14:00` must be after from `18:00`",
    );
}

#[test]
fn unknown_keys_typos() {
    expect(
        &BASE.replace("window: 1h", "windw: 1h"),
        "workflows[0].windw: unknown key; did you mean `window`?; valid keys here:",
    );
    expect(
        &BASE.replace("backlog:", "backlogs:"),
        "backlogs: unknown section; did you mean `backlog`?",
    );
    expect(
        &BASE.replace(
            "      event_time: $.created_at",
            "      event_tme: $.created_at",
        ),
        "streams[0].fields.event_tme: unknown key; did you mean `event_time`?",
    );
}

#[test]
fn missing_required_fields() {
    expect(
        &BASE.replace("    topic: shop.orders\n", ""),
        "streams[0].topic: missing; this key is required",
    );
    expect(
        &BASE.replace("kafka:\n  bootstrap_servers: localhost:9092\n", ""),
        "kafka: missing; this section is required",
    );
}

#[test]
fn empty_topic() {
    expect(
        &BASE.replace("topic: shop.orders", "topic: \"\""),
        "streams[0].topic: empty topic; expected a Kafka topic name",
    );
    expect(
        &BASE.replace("topic: shop.orders", "topic: shop orders"),
        "streams[0].topic: `shop orders` is not a valid Kafka topic name",
    );
}

#[test]
fn references_to_routes_and_dimensions() {
    expect(
        &BASE.replace("route: support\ncauses", "route: suport\ncauses"),
        "workflows[0].route: unknown route `suport`; did you mean `support`?",
    );
    expect(
        &BASE.replace("dimensions: [channel]", "dimensions: [carrier]"),
        "workflows[0].dimensions[0]: no stage stream of this workflow provides dimension `carrier`",
    );
    expect(
        &BASE.replace("signal_stream: errors", "signal_stream: orders"),
        "causes[0].signal_stream: stream `orders` is not a `signals` stream",
    );
}

#[test]
fn wrong_types_are_reported_with_their_path() {
    expect(
        &BASE.replace("dimensions: [channel]", "dimensions: channel"),
        "workflows[0].dimensions: invalid type: string \"channel\", expected a sequence",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = BASE
        .replace(
            "stream: outbox, event_type: sale",
            "stream: outbx, event_type: sale",
        )
        .replace("{ warn: 2m, critical: 5m }", "{ warn: 9m, critical: 5m }")
        .replace("format: debezium_outbox", "format: debezium")
        .replace("window: 1h", "window: 1x")
        .replace("name: errors", "name: orders")
        .replace(
            "    topic: integration.errors\n",
            "    topic: integration.errors\n    colour: red\n",
        );
    let found = problems(&yaml);
    for needle in [
        "unknown stream `outbx`",
        "warn `9m` must be shorter than critical `5m`",
        "unknown format `debezium`",
        "`1x` has unknown unit `x`",
        "duplicate stream name `orders`",
        "streams[2].colour: unknown key",
    ] {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "missing {needle:?} in {found:#?}"
        );
    }
}

#[test]
fn environment_overrides_are_validated_too() {
    let ok = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![(
            "SYNCLAG__KAFKA__BOOTSTRAP_SERVERS".into(),
            "kafka-1:9093".into(),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.kafka.bootstrap_servers, "kafka-1:9093");
    let err = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![(
            "SYNCLAG__WORKFLOWS__ORDER_IMPORT__WINDOW".into(),
            "2m".into(),
        )],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("workflows[0].window: `2m` is shorter than the critical SLA `5m`"),
        "{err}"
    );
}

#[test]
fn librdkafka_properties_pass_through_untouched() {
    let yaml = BASE.replace(
        "  bootstrap_servers: localhost:9092\n",
        "  bootstrap_servers: localhost:9092\n  properties:\n    security.protocol: SASL_SSL\n    sasl.mechanism: SCRAM-SHA-512\n    socket.keepalive.enable: true\n    message.max.bytes: 2000000\n",
    );
    let t = Topology::from_yaml_str("t.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        t.kafka
            .properties
            .get("security.protocol")
            .map(String::as_str),
        Some("SASL_SSL")
    );
    assert_eq!(
        t.kafka.properties.get("sasl.mechanism").map(String::as_str),
        Some("SCRAM-SHA-512")
    );
    assert_eq!(
        t.kafka
            .properties
            .get("socket.keepalive.enable")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        t.kafka
            .properties
            .get("message.max.bytes")
            .map(String::as_str),
        Some("2000000")
    );
    expect(
        &yaml.replace("socket.keepalive", "group.id: x\n    socket.keepalive"),
        "kafka.properties.group.id: is managed by synclag",
    );
}

#[test]
fn cli_validate_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_synclag");
    let good = Command::new(bin)
        .args([
            "validate",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml"),
        ])
        .output()
        .expect("run synclag validate");
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        out.contains("valid")
            && out.contains("workflows (5)")
            && out.contains("watched groups")
            && out.contains(
                "event times: at most 5m ahead of / 30d behind the Kafka time, else use_kafka_time"
            ),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        BASE.replace("window: 1h", "window: 1x")
            .replace("format: debezium_outbox", "format: cdc"),
    )
    .expect("write bad config");
    let res = Command::new(bin)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .expect("run synclag validate");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains("`1x` has unknown unit") && err.contains("unknown format `cdc`"),
        "{err}"
    );

    let missing = Command::new(bin)
        .args(["validate", "--config", "/nonexistent/topology.yaml"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the file"));
}

fn with_properties(lines: &str) -> String {
    BASE.replace(
        "  bootstrap_servers: localhost:9092\n",
        &format!("  bootstrap_servers: localhost:9092\n  properties:\n{lines}"),
    )
}

#[test]
fn user_kafka_properties_win_over_synclag_defaults() {
    use synclag::config::kafka::{admin_config, consumer_config, producer_config};
    let yaml = with_properties(
        "    fetch.wait.max.ms: 500\n    auto.offset.reset: latest\n    message.timeout.ms: 120000\n    enable.auto.commit: false\n",
    );
    let t = Topology::from_yaml_str("t.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let input = consumer_config(&t);
    assert_eq!(input.get("fetch.wait.max.ms"), Some("500"));
    assert_eq!(input.get("auto.offset.reset"), Some("latest"));
    assert_eq!(input.get("group.id"), Some("synclag"));
    assert_eq!(input.get("bootstrap.servers"), Some("localhost:9092"));
    assert_eq!(input.get("enable.auto.commit"), Some("false"));
    assert_eq!(input.get("isolation.level"), Some("read_committed"));
    // A default the user did not override is synclag's.
    assert_eq!(
        input.get("topic.metadata.refresh.interval.ms"),
        Some("5000")
    );
    let output = producer_config(&t);
    assert_eq!(output.get("message.timeout.ms"), Some("120000"));
    assert_eq!(output.get("enable.idempotence"), Some("true"));
    assert_eq!(output.get("linger.ms"), Some("20"));
    assert_eq!(admin_config(&t).get("enable.auto.commit"), Some("false"));

    // The same through an environment override.
    let t = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![("SYNCLAG__KAFKA__PROPERTIES__LINGER_MS".into(), "0".into())],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(producer_config(&t).get("linger.ms"), Some("0"));
}

#[test]
fn only_the_output_producer_is_transactional_and_its_records_wait_as_long_as_a_transaction() {
    use synclag::config::kafka::{output_producer_config, producer_config};
    let t = Topology::from_yaml_str("t.yaml", BASE, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        t.store.exactly_once,
        "exactly-once is the default with durable state"
    );
    let out = output_producer_config(&t);
    assert_eq!(
        out.get("transactional.id"),
        Some(t.service.instance_id.as_str())
    );
    assert_eq!(out.get("message.timeout.ms"), Some("60000"));
    // Audit records and redriven dead letters are written outside the transactions.
    assert_eq!(producer_config(&t).get("transactional.id"), None);
    assert_eq!(producer_config(&t).get("message.timeout.ms"), Some("0"));

    let yaml = with_properties("    transaction.timeout.ms: 10000\n");
    let t = Topology::from_yaml_str("t.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        output_producer_config(&t).get("message.timeout.ms"),
        Some("10000")
    );

    let at_least_once = format!("{BASE}store: {{ exactly_once: false }}\n");
    let t = Topology::from_yaml_str("t.yaml", &at_least_once, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output_producer_config(&t).get("transactional.id"), None);
}

#[test]
fn exactly_once_without_durable_state_is_refused() {
    expect(
        &format!("{BASE}store: {{ durable: false, exactly_once: true }}\n"),
        "store.exactly_once: is true while `store.durable` is false",
    );
    expect(
        &with_properties("    transactional.id: mine\n"),
        "kafka.properties.transactional.id: is managed by synclag",
    );
    // Without durable state, at-least-once is what remains (and the default).
    let t = Topology::from_yaml_str(
        "t.yaml",
        &format!("{BASE}store: {{ durable: false }}\n"),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!t.store.exactly_once);
}

#[test]
fn kafka_properties_conflicting_with_required_values_are_reported() {
    expect(
        &with_properties("    enable.auto.commit: true\n"),
        "kafka.properties.enable.auto.commit: `true` conflicts with synclag's required `false` for the input consumer: synclag commits an input offset only once every correlation that needs the record is accounted for",
    );
    expect(
        &with_properties("    isolation.level: read_uncommitted\n"),
        "kafka.properties.isolation.level: `read_uncommitted` conflicts with synclag's required `read_committed` for the input consumer: records of aborted transactions must never count as workflow stages; remove the property",
    );
    expect(
        &with_properties("    statistics.interval.ms: 0\n"),
        "kafka.properties.statistics.interval.ms: `0` is not allowed for the input consumer",
    );
    // Every conflict at once, next to other problems.
    let found = problems(
        &with_properties("    enable.idempotence: false\n    enable.auto.offset.store: true\n")
            .replace("window: 1h", "window: 1x"),
    );
    assert_eq!(found.len(), 3, "{found:#?}");

    // An environment override goes through the same check.
    let err = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![(
            "SYNCLAG__KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE".into(),
            "false".into(),
        )],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("kafka.properties.enable.idempotence: `false` conflicts with synclag's required `true` for the output producer"),
        "{err}"
    );
}

#[test]
fn event_time_policy_defaults_and_bad_values() {
    use std::time::Duration;
    use synclag::config::OnViolation;
    let t = Topology::from_yaml_str("t.yaml", BASE, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.service.event_time.max_ahead, Duration::from_secs(300));
    assert_eq!(
        t.service.event_time.max_behind,
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(t.service.event_time.on_violation, OnViolation::UseKafkaTime);

    let with = |policy: &str| format!("service:\n  event_time: {policy}\n{BASE}");
    let t = Topology::from_yaml_str(
        "t.yaml",
        &with("{ max_ahead: 30s, max_behind: 7d, on_violation: dead_letter }"),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.service.event_time.max_ahead, Duration::from_secs(30));
    assert_eq!(
        t.service.event_time.max_behind,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(t.service.event_time.on_violation, OnViolation::DeadLetter);

    expect(
        &with("{ on_violation: fallback }"),
        "service.event_time.on_violation: unknown action `fallback`; expected one of `use_kafka_time`, `dead_letter`",
    );
    expect(
        &with("{ on_violation: dead_leter }"),
        "unknown action `dead_leter`; did you mean `dead_letter`?",
    );
    expect(
        &with("{ max_ahead: 5 minutes }"),
        "service.event_time.max_ahead: `5 minutes` has a space",
    );
    expect(
        &with("{ max_ahead: 0s }"),
        "service.event_time.max_ahead: `0s` is zero; expected a positive duration",
    );
    expect(
        &with("{ max_behind: 30m }"),
        "service.event_time.max_behind: `30m` is shorter than the window `1h` of workflow `order_import`; a record that late is a genuine delay",
    );
    expect(
        &with("{ max_behnd: 1d }"),
        "service.event_time.max_behnd: unknown key; did you mean `max_behind`?; valid keys here: `max_ahead`, `max_behind`, `on_violation`",
    );
    // Environment overrides go through the same checks.
    let err = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![(
            "SYNCLAG__SERVICE__EVENT_TIME__ON_VIOLATION".into(),
            "drop".into(),
        )],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("service.event_time.on_violation: unknown action `drop`"),
        "{err}"
    );
    let t = Topology::from_yaml_str(
        "t.yaml",
        BASE,
        vec![(
            "SYNCLAG__SERVICE__EVENT_TIME__MAX_AHEAD".into(),
            "2m".into(),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.service.event_time.max_ahead, Duration::from_secs(120));
}

#[test]
fn backlog_reset_policies_and_window_bounds() {
    let yaml = BASE.replace(
        "    - name: odoo-connector\n",
        "    - name: odoo-connector\n  reset:\n    - { name: odoo-connector, policy: earliest }\n    - { pattern: \"^mw-.*\", policy: latest }\n",
    );
    let t = Topology::from_yaml_str("t.yaml", &yaml, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let config = synclag::backlog::MonitorConfig::from_topology(&t);
    use synclag::backlog::ResetPolicy;
    let policy = |g: &str| {
        config
            .reset_policies
            .iter()
            .find(|(s, _)| s.matches(g))
            .map(|(_, p)| *p)
            .unwrap_or_default()
    };
    assert_eq!(policy("odoo-connector"), ResetPolicy::Earliest);
    assert_eq!(policy("mw-orders"), ResetPolicy::Latest);
    assert_eq!(policy("other"), ResetPolicy::Latest);

    let bad = BASE.replace(
        "    - name: odoo-connector\n",
        "    - name: odoo-connector\n  window: 300\n  reset:\n    - { name: a, policy: oldest }\n    - { name: b, pattern: c, policy: latest }\n    - { pattern: \"(\", policy: earliest }\n",
    );
    let found = problems(&bad);
    for needle in [
        "backlog.reset[0].policy: `oldest` is not a reset policy; use `earliest` or `latest`",
        "backlog.reset[1]: give exactly one of `name`",
        "backlog.reset[2].pattern: `(` is not a valid regular expression",
        "backlog.window: `300` observations is too many; at most 250",
    ] {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "expected {needle:?} in {found:#?}"
        );
    }
}
