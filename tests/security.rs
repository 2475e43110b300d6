//! The API's governance on the real broker: bearer tokens with roles (401 without a valid
//! token, 403 when the role does not allow the request), HTTPS with a certificate made in
//! the test, an audit record for every request on the audit topic, output topics created
//! with the configured retention, and a service that refuses a public address without
//! authentication unless told `--insecure-no-auth`.

mod support;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::topics;

const OPERATOR: &str = "op-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789ab";
const SCRAPER: &str = "metrics-token-0123456789a";

fn yaml(prefix: &str, listen: &str, api: &str) -> String {
    format!(
        r#"
service: {{ group_id: {prefix}-g, http_listen: "{listen}", lag_interval: 1h }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
outputs: {{ breaches_topic: {prefix}-breaches, lag_topic: {prefix}-lag, backlog_topic: {prefix}-backlog, dead_letter_topic: {prefix}-dlq, incidents_topic: {prefix}-incidents }}
audit: {{ topic: {prefix}-audit }}
retention:
  breaches: {{ retention: 7d }}
  lag: {{ retention: 1d, cleanup: delete }}
{api}
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

async fn status(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_https_audit_and_retention() {
    let prefix = support::random_name("sec");
    for t in ["orders", "outbox"] {
        support::create_topic(&format!("{prefix}-{t}"), 1).await;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(support::random_name("sec-certs"));
    let certs = support::tls::generate(&dir);
    let port = support::free_port();
    let api = format!(
        "api: {{ tokens_env: SYNCLAG_TEST_API_TOKENS, tls_cert: \"{}\", tls_key: \"{}\" }}",
        certs.server_cert.display(),
        certs.server_key.display()
    );
    let tokens = format!("ann:operator:{OPERATOR},vic:viewer:{VIEWER},prom:metrics:{SCRAPER}");
    let service = support::SynclagProcess::start_with_env(
        &yaml(&prefix, &format!("127.0.0.1:{port}"), &api),
        port,
        "sec",
        &[("SYNCLAG_TEST_API_TOKENS", tokens.as_str())],
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca_cert).expect("ca"))
        .expect("ca pem");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("https client");
    let base = format!("https://127.0.0.1:{port}");
    let url = |p: &str| format!("{base}{p}");
    support::wait_until_async(
        Duration::from_secs(60),
        "the API answers over HTTPS",
        || async {
            matches!(https.get(url("/healthz")).send().await, Ok(r) if r.status().is_success())
        },
    )
    .await;
    assert!(
        service.get_text("/healthz").await.is_none(),
        "plain HTTP must not be served on the HTTPS port"
    );

    // 401: no token, a wrong token; the challenge names the scheme.
    let r = https
        .get(url("/api/v1/workflows"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"synclag\"")
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("bearer token"),
        "{body}"
    );
    assert_eq!(
        status(&https, &url("/api/v1/workflows"), Some("not-a-token")).await,
        401
    );
    assert_eq!(status(&https, &url("/metrics"), None).await, 401);
    // Roles.
    assert_eq!(status(&https, &url("/metrics"), Some(SCRAPER)).await, 200);
    let r = https
        .get(url("/api/v1/workflows"))
        .bearer_auth(SCRAPER)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 403);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("needs role `viewer`"),
        "{body}"
    );
    assert_eq!(
        status(&https, &url("/api/v1/workflows"), Some(VIEWER)).await,
        200
    );
    assert_eq!(status(&https, &url("/metrics"), Some(VIEWER)).await, 200);
    assert_eq!(status(&https, &url("/api/v1/dlq"), Some(VIEWER)).await, 403);
    // The API answers before the service has created its dead-letter topics; until they
    // can be read, listing them is 503 (Kafka not ready) for whoever may ask.
    support::wait_until_async(
        Duration::from_secs(60),
        "the dead-letter topics can be read",
        || async { status(&https, &url("/api/v1/dlq"), Some(OPERATOR)).await != 503 },
    )
    .await;
    assert_eq!(
        status(&https, &url("/api/v1/dlq"), Some(OPERATOR)).await,
        200
    );
    let r = https
        .post(url("/api/v1/dlq/redrive"))
        .bearer_auth(VIEWER)
        .json(&serde_json::json!({"reason": "not_json", "dry_run": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 403, "a viewer may not act");
    // Probes and the page stay open.
    assert!(matches!(
        status(&https, &url("/readyz"), None).await,
        200 | 503
    ));
    assert_eq!(status(&https, &url("/"), None).await, 200);
    let metrics = https
        .get(url("/metrics"))
        .bearer_auth(SCRAPER)
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("synclag_audit_records_total"),
        "audit series exported"
    );

    // The audit topic has a record per request: who, which role, from where, what answer.
    let audit_topic = format!("{prefix}-audit");
    let wanted: [(&str, Option<&str>, &str, &str, i64); 5] = [
        ("anonymous", None, "GET", "/api/v1/workflows", 401),
        ("prom", Some("metrics"), "GET", "/api/v1/workflows", 403),
        ("vic", Some("viewer"), "GET", "/api/v1/workflows", 200),
        ("ann", Some("operator"), "GET", "/api/v1/dlq", 200),
        ("vic", Some("viewer"), "POST", "/api/v1/dlq/redrive", 403),
    ];
    let mut records = Vec::new();
    support::wait_until_async(
        Duration::from_secs(30),
        "the audit topic has every request",
        || {
            records = topics::read_all(support::client_config(), &audit_topic)
                .iter()
                .map(|m| {
                    serde_json::from_str::<serde_json::Value>(&topics::text(m)).expect("audit JSON")
                })
                .collect::<Vec<_>>();
            let found = wanted.iter().all(|(actor, role, method, path, status)| {
                records.iter().any(|r| {
                    r["actor"] == *actor
                        && r["role"].as_str() == *role
                        && r["method"] == *method
                        && r["path"] == *path
                        && r["status"] == *status
                        && r["kind"] == "request"
                        && r["channel"] == "api"
                        && r["client"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("127.0.0.1:"))
                        && r["at_ms"].as_i64().is_some_and(|t| t > 0)
                })
            });
            async move { found }
        },
    )
    .await;
    let denied = records.iter().filter(|r| r["outcome"] == "denied").count();
    assert!(
        denied >= 4,
        "401 and 403 are audited as denied: {records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| !r.to_string().contains(OPERATOR) && !r.to_string().contains(VIEWER)),
        "tokens never appear in audit records"
    );
    let log = std::fs::read_to_string(&service.log).unwrap_or_default();
    assert!(
        !log.contains(OPERATOR) && !log.contains(VIEWER) && !log.contains(SCRAPER),
        "tokens never appear in the log"
    );
    assert!(log.contains("audit"), "audit records are logged too");

    // Output topics were created with the configured retention and cleanup policy.
    let admin: AdminClient<DefaultClientContext> =
        support::client_config().create().expect("admin");
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let checks = [
        (
            format!("{prefix}-breaches"),
            (7 * 86_400_000u64).to_string(),
            "delete",
        ),
        (format!("{prefix}-lag"), 86_400_000u64.to_string(), "delete"),
        (
            format!("{prefix}-audit"),
            (400 * 86_400_000u64).to_string(),
            "delete",
        ),
        (
            format!("{prefix}-dlq.redriven"),
            (14 * 86_400_000u64).to_string(),
            "compact",
        ),
    ];
    let specs: Vec<ResourceSpecifier<'_>> = checks
        .iter()
        .map(|(t, _, _)| ResourceSpecifier::Topic(t))
        .collect();
    let described = admin
        .describe_configs(&specs, &opts)
        .await
        .expect("describe configs");
    for (result, (topic, retention, cleanup)) in described.into_iter().zip(&checks) {
        let resource = result.unwrap_or_else(|e| panic!("{topic}: {e}"));
        let value = |n: &str| resource.get(n).and_then(|e| e.value.clone());
        assert_eq!(
            value("retention.ms").as_deref(),
            Some(retention.as_str()),
            "{topic}"
        );
        assert_eq!(
            value("cleanup.policy").as_deref(),
            Some(*cleanup),
            "{topic}"
        );
    }
}

fn run_synclag(config: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_synclag"))
        .args(["run", "--config"])
        .arg(config)
        .args(extra)
        .env("SYNCLAG_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn synclag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_needs_auth_or_an_explicit_insecure_flag() {
    let prefix = support::random_name("sec-pub");
    for t in ["orders", "outbox"] {
        support::create_topic(&format!("{prefix}-{t}"), 1).await;
    }
    let port = support::free_port();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&prefix);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("topology.yaml");
    std::fs::write(&config, yaml(&prefix, &format!("0.0.0.0:{port}"), "")).expect("write");

    // Refused: exits with a message that says what to do.
    let out = run_synclag(&config, &[]).wait_with_output().expect("wait");
    assert!(!out.status.success(), "must not serve 0.0.0.0 without auth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without authentication") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );

    // The standalone backlog monitor serves the same API under the same rule.
    let out = Command::new(env!("CARGO_BIN_EXE_synclag"))
        .args(["backlog", "--config"])
        .arg(&config)
        .output()
        .expect("run synclag backlog");
    assert!(
        !out.status.success(),
        "backlog must not serve 0.0.0.0 without auth"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");

    // Told explicitly: serves, and says so loudly.
    let mut child = run_synclag(&config, &["--insecure-no-auth"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/api/v1/workflows");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("synclag exited with {status} although --insecure-no-auth was given");
        }
        assert!(Instant::now() < deadline, "API not served within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR") && stderr.contains("WITHOUT AUTHENTICATION"),
        "insecure mode is logged at ERROR: {stderr}"
    );
}

#[test]
fn governance_settings_are_validated_all_at_once() {
    let yaml = r#"
kafka: { bootstrap_servers: "localhost:9092" }
api: { tokens_fil: x, tls_cert: a.pem }
audit: { topic: "synclag.breaches", queue: 0 }
retention: { lag: { retention: 0s, cleanup: shred }, audti: { retention: 1d } }
masking: { dead_letters: maks }
streams:
  - { name: a, topic: a, format: json, fields: { correlation_id: $.id } }
  - { name: b, topic: b, format: json, fields: { correlation_id: $.id } }
workflows:
  - { name: w, stages: [ { name: s1, stream: a }, { name: s2, stream: b } ], sla: { warn: 1m, critical: 2m }, window: 1h }
"#;
    let errors = synclag::config::Topology::from_yaml_str("t.yaml", yaml, Vec::new())
        .expect_err("invalid")
        .to_string();
    for expected in [
        "api.tokens_fil: unknown key; did you mean `tokens_file`?",
        "api.tls_key: missing",
        "audit.queue: `0`",
        "audit.topic: `synclag.breaches` is also an output topic",
        "retention.lag.retention: `0s` is zero",
        "retention.lag.cleanup: `shred` is not a cleanup policy",
        "retention.audti: unknown key; did you mean `audit`?",
        "masking.dead_letters: `maks` is not a dead-letter option",
    ] {
        assert!(
            errors.contains(expected),
            "missing `{expected}` in:\n{errors}"
        );
    }
    let ok = synclag::config::Topology::from_yaml_str(
        "t.yaml",
        &yaml
            .lines()
            .filter(|l| {
                !l.starts_with("api:")
                    && !l.starts_with("audit:")
                    && !l.starts_with("retention:")
                    && !l.starts_with("masking:")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        [(
            "SYNCLAG__RETENTION__BREACHES__RETENTION".to_string(),
            "90d".to_string(),
        )],
    )
    .expect("valid");
    assert_eq!(
        ok.retention.breaches.retention,
        Duration::from_secs(90 * 86_400)
    );
    assert_eq!(
        ok.retention.audit.retention,
        Duration::from_secs(400 * 86_400)
    );
    assert_eq!(ok.audit.topic, "synclag.audit");
}
