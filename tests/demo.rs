//! `synclag demo` runs with nothing but the binary (in-process Kafka): it serves the web
//! view while it runs, reports every injected fault as detected, and its summary explains
//! every breach on the breach topic — by the injected fault that caused it, or, when the
//! user quits early, by the end of the run cutting its correlation off (reported as such).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use synclag::emit::events::BreachEvent;
use synclag::sim::{Expected, GroundTruth};

/// A `synclag demo` child process writing its files into a temporary directory.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Demo {
    /// Starts a demo on a port it chooses (see [`Demo::base`]): a port chosen here and
    /// handed over could be taken in between, e.g. by a broker of the in-process cluster.
    fn start(duration: &str) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_synclag"))
            .args(["demo", "--duration", duration, "--plain", "--listen"])
            .arg("127.0.0.1:0")
            .arg("--report")
            .arg(dir.path().join("report.json"))
            .arg("--events")
            .arg(dir.path().join("events.jsonl"))
            .arg("--ground-truth")
            .arg(dir.path().join("truth.jsonl"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run synclag demo");
        Demo { child, dir }
    }

    /// The web view's address (`http://127.0.0.1:PORT/`) as the demo prints it.
    async fn base(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stdout = self.stdout();
            if let Some(rest) = stdout.split("web view on ").nth(1) {
                if let Some(url) = rest.split_whitespace().next() {
                    assert!(url.starts_with("http://127.0.0.1:"), "{stdout}");
                    return url.to_string();
                }
            }
            if let Some(status) = self.child.try_wait().expect("demo status") {
                panic!("demo ended ({status}) before serving\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "no web view\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.path("stdout")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            std::fs::read_to_string(self.path("stderr")).unwrap_or_default()
        )
    }

    /// Waits for the demo to exit on its own and checks it succeeded.
    async fn wait_success(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("demo status") {
                assert!(status.success(), "demo failed: {status}\n{}", self.output());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "demo still running after {within:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("report.json")).expect("report written"))
            .expect("report is JSON")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

fn lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Checks, from the events and the ground truth the demo wrote, that every breach maps
/// to an injected fault or to a cut-off correlation, and that the report counts them
/// the same way. Returns the report.
fn every_breach_is_explained(demo: &Demo) -> serde_json::Value {
    let report = demo.report();
    let truth: HashMap<(String, String), GroundTruth> =
        lines::<GroundTruth>(&demo.path("truth.jsonl"))
            .into_iter()
            .map(|t| ((t.workflow.clone(), t.correlation_id.clone()), t))
            .collect();
    let events: Vec<BreachEvent> = lines(&demo.path("events.jsonl"));
    let mut by_fault: BTreeMap<String, u64> = BTreeMap::new();
    let mut cut_off = 0u64;
    let mut produced_at_deadline = 0u64;
    let mut breaches = 0u64;
    for e in events
        .iter()
        .filter(|e| e.kind == "breach" || e.kind == "never_arrived")
    {
        breaches += 1;
        let t = truth
            .get(&(e.workflow.clone(), e.correlation_id.clone()))
            .unwrap_or_else(|| {
                panic!("breach for a correlation the simulator never started: {e:?}")
            });
        // A fault explains it, unless the correlation was cut off and the fault alone
        // would not have pushed it past its SLA.
        if !t.faults.is_empty() && (t.expected >= Expected::Warn || !t.cut_off) {
            *by_fault.entry(t.faults.join("+")).or_insert(0) += 1;
        } else if !t.cut_off && t.produced_at_deadline() {
            // Right, though planned in time: the record was written at the deadline.
            eprintln!("breach on a record written at its deadline: {e:?}\n{t:?}");
            produced_at_deadline += 1;
        } else {
            assert!(
                t.cut_off,
                "breach on a correlation no fault touched and the run did not cut off: {e:?}\n{t:?}\n{report:#}"
            );
            cut_off += 1;
        }
    }
    let b = &report["breaches"];
    assert_eq!(b["unexplained"], 0, "{report:#}");
    assert_eq!(b["breaches"], breaches, "{report:#}");
    assert_eq!(
        b["cut_off"], cut_off,
        "cut-off breaches are reported as such: {report:#}"
    );
    assert_eq!(
        b["produced_at_deadline"], produced_at_deadline,
        "breaches on records written at their deadline are reported as such: {report:#}"
    );
    let reported: BTreeMap<String, u64> =
        serde_json::from_value(b["explained_by_fault"].clone()).expect("counts by fault");
    assert_eq!(reported, by_fault, "{report:#}");
    let cut_off_correlations = truth.values().filter(|t| t.cut_off).count() as u64;
    assert_eq!(report["cut_off_correlations"], cut_off_correlations);
    assert_eq!(report["correlations"], truth.len() as u64);
    // The summary says it in words too.
    let stdout = demo.stdout();
    assert!(
        stdout.contains(&format!(
            "{cut_off} on correlations cut off by the end of the run (not findings); 0 unexplained"
        )),
        "{stdout}"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_detects_every_injected_fault_and_explains_every_breach() {
    let mut demo = Demo::start("60s");
    // The web view is served, at the address the demo prints, while it runs.
    let base = demo.base().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, page)) = get(&base).await {
            assert!(page.contains("assets/app.js"), "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "no web view\n{}", demo.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    demo.wait_success(Duration::from_secs(240)).await;
    let stdout = demo.stdout();
    // The live view printed per-workflow lines and the breaches with cause and route.
    assert!(stdout.contains("synclag demo  t+"), "{stdout}");
    assert!(stdout.contains("shipment_status"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("breach: ")
            && l.contains("carrier=DHL")
            && l.contains("cause carrier_api_throttling → route integration_support (team integration-support)")),
        "{stdout}"
    );
    assert!(stdout.contains("summary:"), "{stdout}");

    let report = every_breach_is_explained(&demo);
    assert_eq!(report["interrupted"], false);
    // Every started correlation was let finish.
    assert_eq!(report["cut_off_correlations"], 0, "{report:#}");
    assert_eq!(report["breaches"]["cut_off"], 0, "{report:#}");
    let faults = report["faults"].as_array().expect("faults listed");
    let names: Vec<&str> = faults.iter().filter_map(|f| f["fault"].as_str()).collect();
    assert_eq!(
        names,
        ["carrier_slowdown", "warehouse_outage", "order_surge"],
        "{report:#}"
    );
    for f in faults {
        assert_eq!(f["reached"], true, "{f:#}");
        assert_eq!(f["detected"], true, "fault not detected: {f:#}\n{stdout}");
        let after = f["after_seconds"].as_f64().expect("detection time");
        assert!(after >= 0.0, "{f:#}");
        assert!(f["workflow"].is_string(), "{f:#}");
    }
    // Delay faults are attributed to the dimension they were injected on.
    assert_eq!(faults[0]["dimension"], "carrier=DHL");
    assert_eq!(faults[1]["dimension"], "warehouse=WH-LGG");
    assert_eq!(faults[1]["workflow"], "shipment_status");
    // Fault-free phases raised no breach; the delay faults did.
    let by_phase = &report["breaches"]["by_phase"];
    for phase in ["steady", "recovery", "order_surge"] {
        assert_eq!(by_phase[phase], 0, "{phase}: {report:#}");
    }
    for phase in ["carrier_slowdown", "warehouse_outage"] {
        assert!(
            by_phase[phase].as_u64().unwrap_or(0) > 0,
            "{phase}: {report:#}"
        );
    }
    assert!(report["records_produced"].as_u64().unwrap_or(0) > 500);

    // One incident per fault and workflow it hit, each from an injected fault, with the
    // fault's route; the live view and the summary show them.
    let incidents = report["incidents"].as_array().expect("incidents listed");
    assert!(!incidents.is_empty(), "{report:#}");
    let mut per_fault_workflow = BTreeMap::new();
    for i in incidents {
        if i["fault"].is_null() && i["produced_at_deadline"] == true {
            // Raised right: every sampled correlation's last record reached Kafka at its
            // deadline or later (the machine was too busy for the simulator's plan); the
            // breach accounting above counts them the same way.
            continue;
        }
        let fault = i["fault"]
            .as_str()
            .unwrap_or_else(|| panic!("an incident no fault explains: {i:#}"));
        let route = match fault {
            "carrier_slowdown" => {
                assert_eq!(i["cause"], "carrier_api_throttling", "{i:#}");
                "integration_support"
            }
            "warehouse_outage" => "operations",
            other => panic!("an incident from {other}: {i:#}"),
        };
        assert_eq!(i["route"], route, "{i:#}");
        *per_fault_workflow
            .entry((fault.to_string(), i["workflow"].to_string()))
            .or_insert(0) += 1;
    }
    assert!(
        per_fault_workflow.values().all(|n| *n == 1),
        "one incident per fault and workflow: {per_fault_workflow:?}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("incident: ")
            && l.contains("carrier=DHL")
            && l.contains("cause carrier_api_throttling → route integration_support")),
        "{stdout}"
    );
    assert!(stdout.contains("incidents ("), "{stdout}");

    // The demo's batch workflow: its partial run is reported as incomplete (and any other
    // faulty run the demo had time for with its own check).
    let batch = report["batch_faults"]
        .as_array()
        .expect("batch faults listed");
    let partial: Vec<&serde_json::Value> = batch
        .iter()
        .filter(|f| f["fault"] == "partial_run")
        .collect();
    assert_eq!(partial.len(), 1, "{report:#}");
    assert!(
        partial[0]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "completeness:missing_records:critical"),
        "{report:#}"
    );
    for f in batch {
        assert_eq!(
            f["detected"], true,
            "batch fault not detected: {f:#}\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.contains("carrier_manifest")
            && l.contains("partial_run")
            && l.contains("DETECTED")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_stopped_early_reports_its_cut_off_correlations() {
    let mut demo = Demo::start("60s");
    // Quit once the carrier slowdown has raised breaches (its phase starts at ~9 s; the
    // warehouse outage only at ~31 s).
    let api = format!("{}api/v1/breaches?limit=1", demo.base().await);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((200, body)) = get(&api).await {
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            if v["remembered"].as_u64().unwrap_or(0) > 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no breach\n{}", demo.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .expect("send SIGINT");
    assert!(status.success());
    demo.wait_success(Duration::from_secs(60)).await;
    let stdout = demo.stdout();
    assert!(
        stdout.contains("stopping: the simulator stops now"),
        "{stdout}"
    );
    assert!(stdout.contains("(the demo was stopped early)"), "{stdout}");

    let report = every_breach_is_explained(&demo);
    assert_eq!(report["interrupted"], true);
    assert!(
        report["cut_off_correlations"].as_u64().unwrap_or(0) > 0,
        "correlations were in flight when the demo stopped: {report:#}"
    );
    let faults = report["faults"].as_array().expect("faults listed");
    assert_eq!(faults[0]["reached"], true, "{report:#}");
    assert_eq!(faults[0]["detected"], true, "{report:#}");
    assert_eq!(faults[2]["reached"], false, "{report:#}");
    assert!(stdout.contains("NOT REACHED"), "{stdout}");
}
