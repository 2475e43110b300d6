//! `synclag demo` runs to completion with nothing but the binary (in-process Kafka),
//! and its summary reports every injected fault as detected.

use std::process::Command;

#[test]
fn demo_detects_every_injected_fault() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_synclag"))
        .args(["demo", "--duration", "60s", "--plain", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run synclag demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    // The live view printed per-workflow lines while it ran.
    assert!(stdout.contains("synclag demo  t+"), "{stdout}");
    assert!(stdout.contains("shipment_status"), "{stdout}");
    assert!(stdout.contains("summary:"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written"))
            .expect("report is JSON");
    let faults = report["faults"].as_array().expect("faults listed");
    let names: Vec<&str> = faults.iter().filter_map(|f| f["fault"].as_str()).collect();
    assert_eq!(
        names,
        ["carrier_slowdown", "warehouse_outage", "order_surge"],
        "{report:#}"
    );
    for f in faults {
        assert_eq!(f["detected"], true, "fault not detected: {f:#}\n{stdout}");
        let after = f["after_seconds"].as_f64().expect("detection time");
        assert!(after >= 0.0, "{f:#}");
        assert!(f["workflow"].is_string(), "{f:#}");
    }
    // Delay faults are attributed to the dimension they were injected on.
    assert_eq!(faults[0]["dimension"], "carrier=DHL");
    assert_eq!(faults[1]["dimension"], "warehouse=WH-LGG");
    assert_eq!(faults[1]["workflow"], "shipment_status");
    // Steady traffic raised no breach.
    assert!(
        report["breaches_by_phase"].get("steady").is_none(),
        "{report:#}"
    );
    assert!(report["records_produced"].as_u64().unwrap_or(0) > 500);
}
