//! Dead letters, governed, on the real broker: `dlq list` and the API find them by
//! reason; a viewer may not redrive; an operator's API redrive and the `dlq redrive`
//! command move letters back to their source topic at most once each (a second run moves
//! nothing), a dry run moves nothing; and every redrive leaves audit records naming who
//! did it and what moved.

mod support;

use rdkafka::producer::FutureRecord;
use std::process::Command;
use std::time::Duration;
use support::topics;

const OPERATOR: &str = "op-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789ab";

fn yaml(prefix: &str, port: u16) -> String {
    format!(
        r#"
service: {{ group_id: {prefix}-g, http_listen: "127.0.0.1:{port}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {prefix}-breaches, lag_topic: {prefix}-lag, backlog_topic: {prefix}-backlog, dead_letter_topic: {prefix}-dlq, incidents_topic: {prefix}-incidents }}
audit: {{ topic: {prefix}-audit }}
api: {{ tokens_env: SYNCLAG_TEST_API_TOKENS }}
streams:
  - {{ name: orders, topic: {prefix}-orders, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: outbox, topic: {prefix}-outbox, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox }} ]
    sla: {{ warn: 5m, critical: 15m }}
    window: 1h
"#,
        bootstrap = support::bootstrap()
    )
}

fn dlq_command(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_synclag"))
        .arg("dlq")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SYNCLAG_LOG", "warn")
        .output()
        .expect("run synclag dlq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn not_json_letters(prefix: &str) -> usize {
    topics::read_all(support::client_config(), &format!("{prefix}-dlq"))
        .iter()
        .filter(|m| topics::header(m, "synclag.reason").as_deref() == Some("not_json"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_redriven_once_and_audited() {
    let prefix = support::random_name("dlq");
    for t in ["orders", "outbox"] {
        support::create_topic(&format!("{prefix}-{t}"), 1).await;
    }
    let port = support::free_port();
    let config_yaml = yaml(&prefix, port);
    let tokens = format!("ann:operator:{OPERATOR},vic:viewer:{VIEWER}");
    let mut service = support::SynclagProcess::start_with_env(
        &config_yaml,
        port,
        "dlq",
        &[("SYNCLAG_TEST_API_TOKENS", tokens.as_str())],
    );
    service.wait_ready().await;

    let orders = format!("{prefix}-orders");
    let producer = support::producer();
    for i in 0..3 {
        let payload = format!("broken record {i} {{");
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(&orders).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    support::wait_until(Duration::from_secs(60), "3 not_json dead letters", || {
        not_json_letters(&prefix) == 3
    });

    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    // Listing needs the operator role (dead letters hold raw records).
    let r = http
        .get(url("/api/v1/dlq?reason=not_json"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 403);
    let listed: serde_json::Value = http
        .get(url("/api/v1/dlq?reason=not_json&since=1h"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    let letters = listed["letters"].as_array().expect("letters");
    assert_eq!(letters.len(), 3, "{listed}");
    assert!(letters
        .iter()
        .all(|l| l["source_topic"] == orders.as_str() && l["redriven"] == false));
    let none: serde_json::Value = http
        .get(url("/api/v1/dlq?reason=bad_timestamp"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(
        none["letters"].as_array().map(Vec::len),
        Some(0),
        "filtered by reason"
    );

    // A viewer may not redrive; an operator's dry run moves nothing.
    let body = serde_json::json!({"reason": "not_json", "dry_run": true});
    let r = http
        .post(url("/api/v1/dlq/redrive"))
        .bearer_auth(VIEWER)
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 403);
    let dry: serde_json::Value = http
        .post(url("/api/v1/dlq/redrive"))
        .bearer_auth(OPERATOR)
        .json(&body)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(dry["selected"], 3, "{dry}");
    assert_eq!(dry["moved"], 0, "{dry}");
    assert_eq!(dry["records"].as_array().map(Vec::len), Some(3), "{dry}");

    // An operator redrives one letter through the API. Its cause is not fixed, so the
    // service dead-letters the copy again: a new letter, naming where it came from.
    let one: serde_json::Value = http
        .post(url("/api/v1/dlq/redrive"))
        .bearer_auth(OPERATOR)
        .json(&serde_json::json!({"reason": "not_json", "limit": 1, "max_per_second": 10}))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(one["moved"], 1, "{one}");
    support::wait_until(
        Duration::from_secs(60),
        "the redriven copy dead-lettered again",
        || not_json_letters(&prefix) == 4,
    );
    let again = topics::read_all(support::client_config(), &format!("{prefix}-dlq"));
    assert!(
        again
            .iter()
            .any(|m| topics::header(m, "synclag.redriven.from")
                .is_some_and(|f| f.starts_with(&format!("{prefix}-dlq/0/")))),
        "the copy carries synclag.redriven.from"
    );

    // The cause is fixed: the service is stopped and the operator redrives from the command line.
    assert_eq!(service.terminate().await, Some(0));
    let config = service.log.with_file_name("topology.yaml");
    let (ok, out, err) = dlq_command(&config, &["list", "--reason", "not_json", "--actor", "bob"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("\"redriven\":true"))
            .count(),
        1,
        "{out}"
    );
    let (ok, out, err) = dlq_command(
        &config,
        &[
            "redrive",
            "--reason",
            "not_json",
            "--since",
            "1h",
            "--max-per-second",
            "20",
            "--actor",
            "alice",
        ],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
    assert_eq!(report["moved"], 3, "{report}");
    assert_eq!(report["skipped_already_redriven"], 1, "{report}");
    let (ok, out, err) = dlq_command(
        &config,
        &["redrive", "--reason", "not_json", "--actor", "alice"],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
    assert_eq!(report["moved"], 0, "a letter is redriven once: {report}");
    assert_eq!(report["skipped_already_redriven"], 4, "{report}");

    // The source topic got each original back once (plus the API's one), as it was.
    let copies: Vec<_> = topics::read_all(support::client_config(), &orders)
        .into_iter()
        .filter(|m| topics::header(m, "synclag.redriven.from").is_some())
        .collect();
    assert_eq!(copies.len(), 4, "1 by the API, 3 by the command");
    let mut payloads: Vec<String> = copies.iter().map(topics::text).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(
        payloads.len(),
        3,
        "same payloads as the originals: {payloads:?}"
    );
    assert!(payloads.iter().all(|p| p.starts_with("broken record ")));

    // The audit trail names who acted and what moved.
    let audit: Vec<serde_json::Value> =
        topics::read_all(support::client_config(), &format!("{prefix}-audit"))
            .iter()
            .map(|m| serde_json::from_str(&topics::text(m)).expect("audit JSON"))
            .collect();
    let action = |actor: &str, action: &str, outcome: &str| {
        audit
            .iter()
            .filter(|r| {
                r["kind"] == "action"
                    && r["actor"] == actor
                    && r["action"] == action
                    && r["outcome"] == outcome
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let api_dry = action("ann", "dlq_redrive_dry_run", "ok");
    assert_eq!(api_dry.len(), 1, "{audit:?}");
    assert_eq!(api_dry[0]["role"], "operator");
    assert_eq!(api_dry[0]["channel"], "api");
    let api_moves = action("ann", "dlq_redrive", "ok");
    assert_eq!(api_moves.len(), 1, "{audit:?}");
    assert_eq!(api_moves[0]["details"]["moved"], "1");
    assert!(api_moves[0]["details"]["record.0000"]
        .as_str()
        .is_some_and(|r| r.contains(&format!("-> {orders}/0/"))));
    let cli = action("alice", "dlq_redrive", "ok");
    assert_eq!(cli.len(), 2, "{audit:?}");
    assert_eq!(cli[0]["channel"], "cli");
    assert_eq!(cli[0]["details"]["moved"], "3");
    assert_eq!(cli[0]["details"]["reason"], "not_json");
    assert_eq!(cli[1]["details"]["moved"], "0");
    assert_eq!(
        action("alice", "dlq_redrive", "started").len(),
        2,
        "started before anything moves"
    );
    let reads = action("bob", "dlq_list", "ok");
    assert_eq!(
        reads.len(),
        1,
        "reading dead letters from the command line is audited: {audit:?}"
    );
    assert_eq!(reads[0]["details"]["reason"], "not_json");
    // Reading them through the API is audited as a request.
    assert!(audit.iter().any(|r| r["kind"] == "request"
        && r["actor"] == "ann"
        && r["path"] == "/api/v1/dlq"
        && r["status"] == 200));
}
