//! The web view in a real browser: headless Chromium against `synclag run` on the test
//! broker, with simulated traffic (a DHL carrier slowdown) and two watched consumer
//! groups. The page must show every workflow, the oldest pending correlations (masked,
//! as the API shows them), the breaches grouped by workflow × dimension with cause and
//! team, and the consumer backlog — and keep updating without a reload. A screenshot of
//! the page is written to `target/web-view.png`.

mod support;

use std::cell::RefCell;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::browser::Browser;
use support::{free_port, SynclagProcess};
use synclag::config::Topology;
use synclag::sim::{self, RealClock, RunOptions, Scenario, SimOptions, Simulator};

const WIDTH: u32 = 1440;
const MASK_KEY: &str = "web-view-test-key";

/// `demo/topology.yaml` on fresh topics of the test broker, with correlation ids masked
/// and the backlog monitor watching synclag's own group and `connector`.
fn topology_yaml(port: u16, group: &str, connector: &str) -> String {
    let mut out = String::new();
    for line in synclag::demo::DEMO_TOPOLOGY.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let (key, rest) = body.split_once(':').unwrap_or((body, ""));
        let value = rest.split_whitespace().next().unwrap_or_default();
        let replaced = match key {
            "topic" | "breaches_topic" | "lag_topic" | "backlog_topic" | "dead_letter_topic"
                if !value.is_empty() =>
            {
                let name = support::random_name(&format!("web-{}", value.replace('.', "-")));
                Some(format!("{indent}{key}: {name}"))
            }
            "group_id" => Some(format!("{indent}group_id: {group}")),
            "http_listen" => Some(format!("{indent}http_listen: 127.0.0.1:{port}")),
            "bootstrap_servers" => Some(format!(
                "{indent}bootstrap_servers: \"{}\"",
                support::bootstrap()
            )),
            "correlation_ids" => Some(format!("{indent}correlation_ids: true")),
            "interval" if indent.len() == 2 => Some(format!("{indent}interval: 1s")),
            "groups" => Some(format!(
                "{indent}groups: [ {{ name: {group} }}, {{ name: {connector}, description: Writes into Odoo }} ]"
            )),
            _ => None,
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"
const q = (s) => [...document.querySelectorAll(s)];
const rows = q('#workflows tbody tr[data-workflow]');
return {
  refreshes: Number(document.body.dataset.refreshes),
  state: document.body.dataset.state || null,
  error: document.querySelector('#error').hidden ? null : document.querySelector('#error').textContent,
  workflows: rows.map((r) => r.dataset.workflow),
  completed: rows.map((r) => Number(r.querySelector('[data-field=completed]').textContent)).reduce((a, b) => a + b, 0),
  sparklines: q('#workflows svg.spark polyline, #workflows svg.spark circle').length,
  pending: q('#pending tbody tr[data-correlation]').map((r) => r.dataset.correlation),
  pending_text: q('#pending tbody tr[data-correlation]').map((r) => r.textContent),
  groups: q('#incidents [data-group]').map((g) => g.dataset.group),
  group_text: q('#incidents [data-group]').map((g) => g.textContent),
  incident_text: q('#incidents [data-incident]').map((g) => g.textContent),
  late: q('#late .late').map((e) => e.textContent),
  backlog: q('#backlog tbody tr[data-group]').map((r) => r.textContent),
  health: document.querySelector('#health').textContent,
  text: document.body.innerText,
  marker: window.synclagTestMarker || null,
};
"#;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_shows_what_is_late_where_and_who_owns_it_and_updates_live() {
    let port = free_port();
    let group = support::random_name("synclag-web");
    let connector = support::random_name("odoo-connector");
    let yaml = topology_yaml(port, &group, &connector);
    let topology = Topology::from_yaml_str("demo/topology.yaml", &yaml, Vec::new())
        .unwrap_or_else(|e| panic!("the rewritten demo topology is valid: {e}"));
    for s in &topology.streams {
        support::create_topic(&s.topic, 3).await;
    }
    for t in topology.outputs.topics() {
        support::create_topic(t, 1).await;
    }
    // A connector group that committed at the start of the outbox and stopped: its
    // backlog grows with the traffic.
    let outbox = topology
        .streams
        .iter()
        .find(|s| s.name == "odoo_outbox")
        .map(|s| s.topic.clone())
        .expect("the demo topology has an outbox stream");
    {
        let c = support::consumer(&connector);
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(&outbox, p, Offset::Offset(0))
                .expect("offset");
        }
        c.commit(&tpl, CommitMode::Sync)
            .expect("commit the connector group's offsets");
    }

    let mut svc =
        SynclagProcess::start_with_env(&yaml, port, "web-view", &[("SYNCLAG_MASK_KEY", MASK_KEY)]);
    svc.wait_ready().await;

    // The API the page reads: a bounded list of breaches, unknown workflows refused.
    let unknown = reqwest::get(svc.url("/api/v1/breaches?workflow=nope"))
        .await
        .expect("GET breaches");
    assert_eq!(unknown.status().as_u16(), 404);
    let page = reqwest::get(svc.url("/")).await.expect("GET /");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap_or_default()
        .contains("assets/app.js"));

    // Traffic: steady, then DHL's API throttles the carrier connector.
    let scenario = synclag::demo::squeeze(
        Scenario::builtin("carrier_slowdown")
            .expect("built in")
            .expect("parses"),
        Duration::from_secs(60),
    );
    let options = SimOptions {
        seed: 11,
        start: chrono::Utc::now(),
        duration: None,
        rate: None,
        drain: true,
    };
    let mut simulator =
        Simulator::new(&topology, &scenario, &options).unwrap_or_else(|e| panic!("{e}"));
    let mut sink = sim::kafka_sink_for(&topology, None).expect("Kafka sink");
    let traffic = tokio::spawn(async move {
        let opts = RunOptions {
            step: Duration::from_millis(50),
            progress: false,
        };
        sim::run(&mut simulator, &RealClock, &mut sink, None, &opts).await
    });

    let browser = Browser::start(WIDTH, 1000).await;
    browser.goto(&svc.url("/")).await;

    // Everything the view is for, on one page.
    let names: Vec<String> = topology.workflows.iter().map(|w| w.name.clone()).collect();
    let last = RefCell::new(serde_json::Value::Null);
    support::wait_until_async(
        Duration::from_secs(120),
        "the page shows workflows, a pending correlation, a DHL breach group and the backlog",
        || {
            let (read, last) = (browser.eval(READ_PAGE), &last);
            let (group, connector) = (group.as_str(), connector.as_str());
            async move {
                let page = read.await;
                let groups = strings(&page["groups"]);
                let backlog = strings(&page["backlog"]);
                let done = strings(&page["workflows"]).len() == 5
                    && !strings(&page["pending"]).is_empty()
                    && groups.iter().any(|g| g.contains("carrier=DHL"))
                    && backlog.iter().any(|b| b.contains(connector))
                    && backlog.iter().any(|b| b.contains(group));
                *last.borrow_mut() = page;
                done
            }
        },
    )
    .await;
    let page = last.borrow().clone();
    assert_eq!(page["state"], "ok", "{page:#}");
    assert_eq!(page["error"], serde_json::Value::Null, "{page:#}");
    assert_eq!(
        strings(&page["workflows"]),
        names,
        "every workflow, in order"
    );
    assert!(page["sparklines"].as_u64().unwrap_or(0) > 0, "{page:#}");
    // Correlation ids as the API shows them: masked, never the raw order numbers.
    for id in strings(&page["pending"]) {
        assert!(
            id.len() == 34 && id.starts_with("h:"),
            "a masked id, not {id}"
        );
    }
    let text = page["text"].as_str().unwrap_or_default();
    assert!(!text.contains("SO-20"), "no raw correlation id on the page");
    // A pending row names the stages seen and the stage waited for.
    let pending_text = strings(&page["pending_text"]).join("\n");
    assert!(
        topology.workflows.iter().any(|w| w
            .stages
            .iter()
            .skip(1)
            .any(|s| pending_text.contains(&s.name))),
        "{pending_text}"
    );
    // The DHL incident says what, where, the cause, the evidence and who owns it.
    let dhl = strings(&page["incident_text"])
        .into_iter()
        .find(|g| g.contains("carrier=DHL"))
        .unwrap_or_else(|| panic!("a DHL incident: {page:#}"));
    assert!(dhl.contains("evidence: signal"), "{dhl}");
    assert!(dhl.contains("carrier_api_throttling"), "{dhl}");
    assert!(dhl.contains("integration-support"), "{dhl}");
    assert!(dhl.contains("late since"), "{dhl}");
    // The consumer backlog: the stopped connector has records to read.
    let backlog = strings(&page["backlog"])
        .into_iter()
        .find(|b| b.contains(&connector))
        .expect("the connector's row");
    assert!(
        ["OK", "WARN", "REWIND", "STALL", "STOP", "ERR"]
            .iter()
            .any(|s| backlog.contains(s)),
        "{backlog}"
    );
    // The clock chip, in either state: live, or catching up while partitions are not yet
    // confirmed read to their ends (a moment after start or after a busy second).
    let health = page["health"].as_str().unwrap_or_default();
    assert!(
        health.contains("clock live") || health.contains("catching up"),
        "{health}"
    );

    // Live: the page redraws with new data, and it is the same page (no reload).
    browser
        .eval("window.synclagTestMarker = 'not reloaded'; return null;")
        .await;
    let refreshes = page["refreshes"].as_u64().unwrap_or(0);
    let completed = page["completed"].as_u64().unwrap_or(0);
    support::wait_until_async(
        Duration::from_secs(60),
        "the page shows more completed correlations without a reload",
        || {
            let (read, last) = (browser.eval(READ_PAGE), &last);
            async move {
                let page = read.await;
                let done = page["refreshes"].as_u64().unwrap_or(0) > refreshes + 1
                    && page["completed"].as_u64().unwrap_or(0) > completed;
                *last.borrow_mut() = page;
                done
            }
        },
    )
    .await;
    let page = last.borrow().clone();
    assert_eq!(page["marker"], "not reloaded", "the page was not reloaded");
    assert!(
        !strings(&page["late"]).is_empty(),
        "the 'late now' strip is drawn"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join("web-view.png");
    browser.screenshot_full_page(WIDTH, &shot).await;
    eprintln!("web view screenshot: {}", shot.display());
    drop(browser);

    traffic.abort();
    let _ = traffic.await;
    assert_eq!(svc.terminate().await, Some(0), "clean shutdown");
}
