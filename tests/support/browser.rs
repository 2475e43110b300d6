//! Headless Chromium for the web view test, driven over the W3C WebDriver protocol:
//! `chromedriver` on a free loopback port (under the watchdog, so it never outlives the
//! test process, and stopped by PID), one browser session, plain HTTP requests.
//!
//! Nothing skips: without `chromium` and `chromedriver` (Debian packages `chromium` and
//! `chromium-driver`, installed by `.ci/run`) the test fails and says so.
//! `SYNCLAG_TEST_CHROMIUM` and `SYNCLAG_TEST_CHROMEDRIVER` name other binaries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{self, Service};

const CHROMIUM_ENV: &str = "SYNCLAG_TEST_CHROMIUM";
const CHROMEDRIVER_ENV: &str = "SYNCLAG_TEST_CHROMEDRIVER";

/// A browser session; dropping it ends the session (Chromium exits) and stops chromedriver.
pub struct Browser {
    driver: Service,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// `name` from the environment variable `env`, else the first of `candidates` on PATH.
fn find(env: &str, candidates: &[&str], what: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for c in candidates {
            let p = dir.join(c);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the web view test needs {what} ({} not found on PATH): install the Debian packages \
         `chromium chromium-driver` (`.ci/run` does this), or set {env}",
        candidates.join(" or ")
    );
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = find(
            CHROMIUM_ENV,
            &["chromium", "chromium-browser", "google-chrome"],
            "headless Chromium",
        );
        let chromedriver = find(CHROMEDRIVER_ENV, &["chromedriver"], "chromedriver");
        let dir = process::run_dir("chromedriver");
        let port = process::free_ports(1)[0];
        let driver = Service::spawn(
            "chromedriver",
            &chromedriver,
            &[format!("--port={port}"), "--allowed-ips=127.0.0.1".into()],
            &dir.join("chromedriver.log"),
            None,
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let status_url = format!("{base}/status");
        let started = std::time::Instant::now();
        loop {
            let ready = match http.get(&status_url).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if let Some(status) = driver.exited() {
                panic!(
                    "chromedriver exited with {status} at start-up:\n{}",
                    driver.log_tail(40)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer within 30 s:\n{}",
                driver.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = dir.join("profile");
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let r = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("POST /session");
        let v: serde_json::Value = r.json().await.expect("session answer");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "Chromium did not start a session: {v}\n{}",
                    driver.log_tail(40)
                )
            })
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let ok = r.status().is_success();
        let v: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        assert!(ok, "WebDriver {path} failed: {v}");
        v["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.command(
            reqwest::Method::POST,
            "/url",
            serde_json::json!({ "url": url }),
        )
        .await;
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            serde_json::json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Resizes the window to the page's full height and writes a PNG screenshot.
    pub async fn screenshot_full_page(&self, width: u32, path: &Path) {
        let height = self
            .eval("return document.documentElement.scrollHeight;")
            .await
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            serde_json::json!({ "width": width, "height": height + 120 }),
        )
        .await;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", serde_json::Value::Null)
            .await;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session (Chromium exits); chromedriver is stopped on drop.
    fn end_session(&self) {
        // Plain blocking HTTP, so that it also works from Drop during a panic.
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.end_session();
        self.driver.stop();
    }
}
