//! A Confluent-compatible schema registry for the integration tests: Apicurio Registry 2.x
//! (its `/apis/ccompat/v7` API) with in-memory storage, listening on 127.0.0.1 only.
//!
//! The distribution (a Quarkus runner jar plus `lib/`, published with the `all` classifier)
//! is unpacked by Maven (`tests/harness/apicurio/pom.xml`) into
//! `target/test-infra/apicurio-<version>/`. Each test binary starts one registry on first use;
//! the watchdog stops it by PID when the test process exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{self, Service};

/// The Apicurio Registry release the harness runs (also the default in the harness pom).
pub const APICURIO_VERSION: &str = "2.6.13.Final";

/// Set to a Confluent-compatible base URL to use an already running registry.
pub const REGISTRY_ENV: &str = "SYNCLAG_TEST_REGISTRY_URL";

/// Where Apicurio serves the Confluent schema registry API.
const CCOMPAT_PATH: &str = "/apis/ccompat/v7";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const START_ATTEMPTS: usize = 3;

pub struct RegistryInfo {
    /// Base URL of the Confluent-compatible API (no trailing slash).
    pub url: String,
    /// The registry process, when this test binary started one.
    pub local: Option<LocalRegistry>,
}

pub struct LocalRegistry {
    pub service: Service,
    pub log: PathBuf,
    /// From spawning the JVM to the first successful API call.
    pub startup: Duration,
}

static REGISTRY: OnceLock<Result<RegistryInfo, String>> = OnceLock::new();

/// The registry shared by every test in this binary, started on first call. If it cannot be
/// started, this and every later call panic with the reason.
pub fn registry() -> &'static RegistryInfo {
    process::start_once(&REGISTRY, || match std::env::var(REGISTRY_ENV) {
        Ok(external) if !external.trim().is_empty() => RegistryInfo {
            url: external.trim().trim_end_matches('/').to_owned(),
            local: None,
        },
        _ => start_local_registry(),
    })
}

/// Base URL of the Confluent-compatible registry API, e.g. for `SrSettings::new`.
pub fn registry_url() -> String {
    registry().url.clone()
}

fn start_local_registry() -> RegistryInfo {
    process::require_java("the test schema registry (Apicurio)");
    let home = process::infra_dir().join(format!("apicurio-{APICURIO_VERSION}"));
    process::fetch_with_maven(
        &format!("Apicurio Registry {APICURIO_VERSION}"),
        &process::harness_pom("apicurio"),
        &[
            "dependency:unpack".to_owned(),
            format!("-Dapicurio.version={APICURIO_VERSION}"),
        ],
        "registry.unpack.dir",
        &home,
    );
    let runner = home.join(format!(
        "apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
    ));
    if !runner.is_file() {
        panic!(
            "the Apicurio distribution in {} has no {}; delete that directory to fetch it again",
            home.display(),
            runner.display()
        );
    }

    let mut failures = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let port = process::free_ports(1)[0];
        let run = process::run_dir("apicurio");
        let log = run.join("registry.log");
        let args = vec![
            "-Xms64m".to_owned(),
            "-Xmx512m".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            "-XX:TieredStopAtLevel=1".to_owned(),
            "-Djava.awt.headless=true".to_owned(),
            format!("-Djava.io.tmpdir={}", run.display()),
            "-Dquarkus.http.host=127.0.0.1".to_owned(),
            format!("-Dquarkus.http.port={port}"),
            "-Dquarkus.log.console.color=false".to_owned(),
            "-jar".to_owned(),
            runner.display().to_string(),
        ];
        let service = Service::spawn(
            "Apicurio Registry",
            &process::java_program(),
            &args,
            &log,
            None,
        );
        let probe_path = format!("{CCOMPAT_PATH}/subjects");
        match process::await_ready(&service, STARTUP_TIMEOUT, || {
            http_get_status(port, &probe_path) == Some(200)
        }) {
            Ok(startup) => {
                let url = format!("http://127.0.0.1:{port}{CCOMPAT_PATH}");
                eprintln!(
                    "test schema registry (Apicurio {APICURIO_VERSION}) ready at {url} after {:.1}s (log: {})",
                    startup.as_secs_f64(),
                    log.display()
                );
                return RegistryInfo {
                    url,
                    local: Some(LocalRegistry {
                        service,
                        log,
                        startup,
                    }),
                };
            }
            Err(message) => {
                service.stop();
                let port_clash = message.contains("Address already in use")
                    || message.contains("Port already bound");
                failures.push_str(&format!("attempt {attempt}: {message}\n"));
                if !port_clash {
                    break;
                }
            }
        }
    }
    panic!("could not start the test schema registry ({REGISTRY_ENV} is not set):\n{failures}");
}

/// Status code of `GET path` on 127.0.0.1:port, or None if nothing answered.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// The registry's URL, and a URL of the same registry through a relay on a free port that
/// accepts nothing until `support::relay` is started on that port with `hostport`.
#[allow(dead_code)] // not every test binary relays
pub struct Relayed {
    pub real: String,
    pub via_relay: String,
    pub relay_port: u16,
    pub hostport: String,
}

/// The registry behind a relay that does not run yet (see [`Relayed`]).
#[allow(dead_code)] // not every test binary relays
pub fn behind_relay() -> Relayed {
    let real = registry_url(); // http://127.0.0.1:PORT/apis/ccompat/v7
    let (hostport, path) = real
        .trim_start_matches("http://")
        .split_once('/')
        .expect("registry url has a path");
    let relay_port = super::free_port();
    Relayed {
        via_relay: format!("http://127.0.0.1:{relay_port}/{path}"),
        hostport: hostport.to_string(),
        relay_port,
        real,
    }
}
