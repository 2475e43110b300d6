//! A real Prometheus server for the tests: Debian's `prometheus` package (or the binary in
//! `SYNCLAG_TEST_PROMETHEUS`), on a free loopback port, with its data under
//! `target/test-infra/runs/`, stopped by PID when dropped (and by the watchdog when the
//! test process ends).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;

use super::process::{self, Service};

/// Overrides the Prometheus binary (default `/usr/bin/prometheus`, else `prometheus` on PATH).
pub const PROMETHEUS_ENV: &str = "SYNCLAG_TEST_PROMETHEUS";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn program() -> PathBuf {
    if let Some(p) = std::env::var_os(PROMETHEUS_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/prometheus");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("prometheus")
    }
}

/// A running Prometheus.
pub struct Prometheus {
    service: Service,
    pub url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus on `config_yaml` (scrape and rule settings; paths absolute).
    /// Panics naming the fix when Prometheus is not installed or does not start.
    pub fn start(config_yaml: &str) -> Prometheus {
        let program = program();
        match Command::new(&program).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "`{} --version` failed ({}): {}",
                program.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!(
                "Prometheus is not installed ({}: {e}). Install Debian's `prometheus` package \
                 (`.ci/run` does) or set {PROMETHEUS_ENV} to a prometheus binary.",
                program.display()
            ),
        }
        let mut failures = String::new();
        for attempt in 1..=3 {
            let run = process::run_dir("prometheus");
            let config = run.join("prometheus.yml");
            std::fs::write(&config, config_yaml).expect("write prometheus.yml");
            let port = process::free_ports(1)[0];
            let args = vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", run.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=info".to_string(),
            ];
            let log = run.join("prometheus.log");
            let service =
                Service::spawn("prometheus", &program, &args, &log, Some(&run.join("data")));
            let url = format!("http://127.0.0.1:{port}");
            let ready = process::await_ready(&service, STARTUP_TIMEOUT, || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|mut s| {
                        use std::io::{Read, Write};
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = write!(s, "GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                        let mut buf = String::new();
                        let _ = s.read_to_string(&mut buf);
                        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
                    })
                    .unwrap_or(false)
            });
            match ready {
                Ok(_) => {
                    return Prometheus {
                        service,
                        url,
                        http: reqwest::Client::builder()
                            .timeout(Duration::from_secs(30))
                            .build()
                            .expect("http client"),
                    }
                }
                Err(e) => {
                    service.stop();
                    let _ = writeln!(failures, "attempt {attempt}: {e}");
                    if !e.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("Prometheus did not start:\n{failures}");
    }

    /// An instant query now: the result vector, or Prometheus' error (a parse error, a
    /// bad match, ...).
    pub async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let body: Json = self
            .http
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                percent_encode(expr)
            ))
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?
            .json()
            .await
            .map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                Ok(data["result"].as_array().cloned().unwrap_or_default())
            }
            // scalars and strings: one value
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    /// `GET /api/v1/<path>` as JSON `data`.
    pub async fn api(&self, path: &str) -> Json {
        let body: Json = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(body["status"], "success", "GET {path}: {body}");
        body["data"].clone()
    }

    /// The last lines of Prometheus' log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.service.log_tail(40)
    }
}

/// `text` as a URL query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.service.stop();
    }
}
