//! `synclag run` as a child process of a test: config written to a fresh folder under
//! the cargo target dir, log captured to a file, killed by PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port, never one handed out before in this process (see
/// [`free_ports`](super::process::free_ports)).
pub fn free_port() -> u16 {
    super::process::free_ports(1)[0]
}

/// A running `synclag run`.
pub struct SynclagProcess {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

impl SynclagProcess {
    /// Writes `config_yaml` and starts `synclag run` on it; `port` is its `http_listen`
    /// port. `SYNCLAG_TEST_LOG` sets the service's log filter (default `info`);
    /// `SYNCLAG_TEST_BIN` another `synclag` binary to run.
    pub fn start(config_yaml: &str, port: u16, name: &str) -> SynclagProcess {
        Self::start_with_env(config_yaml, port, name, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the service.
    pub fn start_with_env(
        config_yaml: &str,
        port: u16,
        name: &str,
        env: &[(&str, &str)],
    ) -> SynclagProcess {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(super::random_name(name));
        std::fs::create_dir_all(&dir).expect("create service dir");
        let cfg = dir.join("topology.yaml");
        std::fs::write(&cfg, config_yaml).expect("write config");
        let log = dir.join("synclag.log");
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        // SYNCLAG_TEST_BIN runs the same test against another build (e.g. to show that a
        // test fails on an earlier version).
        let bin = std::env::var_os("SYNCLAG_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_synclag")));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env(
                "SYNCLAG_LOG",
                std::env::var("SYNCLAG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn synclag run");
        SynclagProcess {
            child,
            port,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path` as JSON; `None` while the service is not answering.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        self.http
            .get(self.url(path))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// GET `path` as text.
    pub async fn get_text(&self, path: &str) -> Option<String> {
        self.http
            .get(self.url(path))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Waits until `/readyz` answers 200 (partitions assigned, registry reachable).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = matches!(self.http.get(self.url("/readyz")).send().await, Ok(r) if r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "synclag run not ready within 60 s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 40 lines of the service's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The exit code once the process has ended on its own (`Some(None)`: by a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// SIGKILL: no chance to flush or commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code of a clean shutdown (outputs flushed, offsets committed).
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl SynclagProcess {
    /// Waits (at most `timeout`) until `never_arrived` correlations ended as never
    /// arrived and every output was acknowledged, each gauge of `idle` being 0 too, then
    /// stops the service and asserts a clean exit: every event of the run is written.
    #[allow(dead_code)] // not every test binary ends a run this way
    pub async fn stop_when_drained(
        &mut self,
        never_arrived: f64,
        idle: &[&str],
        timeout: Duration,
    ) {
        super::wait_until_async(
            timeout,
            "every never-closed correlation ended and every output was acknowledged",
            || async {
                let text = self.get_text("/metrics").await.unwrap_or_default();
                super::metric_sum(&text, "synclag_never_arrived_total", &[]) >= never_arrived
                    && ["synclag_output_unacknowledged_records"]
                        .iter()
                        .chain(idle)
                        .all(|g| super::metric_sum(&text, g, &[]) == 0.0)
            },
        )
        .await;
        assert_eq!(
            self.terminate().await,
            Some(0),
            "clean exit\n{}",
            self.log_tail()
        );
    }
}

impl Drop for SynclagProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A topology with one two-stage workflow — `started` read from `starts`, `done` from
/// `ends`, both JSON `{"id": …, "at": epoch ms}` — as the fault tests and benches use it.
pub struct TwoStage<'a> {
    pub group: &'a str,
    pub http: u16,
    pub bootstrap: &'a str,
    pub starts: &'a str,
    pub ends: &'a str,
    /// Output topic prefix: the breach topic itself, and `-dlq`, `-lag`, `-backlog`.
    pub out: &'a str,
    pub workflow: &'a str,
    pub warn: &'a str,
    pub critical: &'a str,
    pub window: &'a str,
    /// More `service:` entries, e.g. `", idle_partition: 5s"`.
    pub service: &'a str,
    /// More Kafka properties, e.g. `", transaction.timeout.ms: 10000"`.
    pub properties: &'a str,
}

impl TwoStage<'_> {
    pub fn yaml(&self) -> String {
        let TwoStage {
            group,
            http,
            bootstrap,
            starts,
            ends,
            out,
            workflow,
            warn,
            critical,
            window,
            service,
            properties,
        } = self;
        format!(
            r#"
service: {{ group_id: {group}, http_listen: "127.0.0.1:{http}", lag_interval: 1h{service} }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4{properties} }} }}
outputs: {{ breaches_topic: {out}, dead_letter_topic: {out}-dlq, lag_topic: {out}-lag, backlog_topic: {out}-backlog }}
streams:
  - {{ name: starts, topic: {starts}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: ends, topic: {ends}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: {workflow}
    stages: [ {{ name: started, stream: starts }}, {{ name: done, stream: ends }} ]
    sla: {{ warn: {warn}, critical: {critical} }}
    window: {window}
"#
        )
    }
}
