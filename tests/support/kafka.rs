//! A real Apache Kafka broker for the integration tests: single node, KRaft mode with the
//! broker and controller roles in one JVM, listening on 127.0.0.1 only.
//!
//! The jars come from Maven (`tests/harness/kafka/pom.xml`) and are cached in
//! `target/test-infra/kafka-<version>/libs`. Each test binary starts one broker on first
//! use; its data lives in `target/test-infra/runs/kafka-<pid>-*/` and is removed when the
//! broker stops, which the watchdog makes happen when the test process exits.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;

use super::process::{self, Service};

/// The Apache Kafka release the harness runs (also the default in the harness pom).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Set to a bootstrap address to run the tests against an already running broker.
pub const BOOTSTRAP_ENV: &str = "SYNCLAG_TEST_BOOTSTRAP";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
const START_ATTEMPTS: usize = 3;

/// What the tests are talking to.
pub struct BrokerInfo {
    /// `host:port` list for `bootstrap.servers`.
    pub bootstrap: String,
    /// The broker process, when this test binary started one.
    pub local: Option<LocalBroker>,
}

pub struct LocalBroker {
    pub service: Service,
    pub log: PathBuf,
    /// From spawning the JVM to the first successful metadata fetch.
    pub startup: Duration,
}

static BROKER: OnceLock<Result<BrokerInfo, String>> = OnceLock::new();

/// The broker shared by every test in this binary, started on first call. If it cannot be
/// started, this and every later call panic with the reason.
pub fn broker() -> &'static BrokerInfo {
    process::start_once(&BROKER, || match std::env::var(BOOTSTRAP_ENV) {
        Ok(external) if !external.trim().is_empty() => BrokerInfo {
            bootstrap: external.trim().to_owned(),
            local: None,
        },
        _ => start_local_broker(),
    })
}

/// `bootstrap.servers` for the test broker (starting it if needed).
pub fn bootstrap() -> String {
    broker().bootstrap.clone()
}

/// A client config pointing at the test broker; add settings as needed.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("broker.address.family", "v4");
    config
}

/// A producer for the test broker: acks=all, short linger, 30 s delivery timeout.
pub fn producer() -> FutureProducer {
    client_config()
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("create FutureProducer for the test broker")
}

/// A consumer in `group`: reads from the earliest offset, commits only when told to.
pub fn consumer(group: &str) -> StreamConsumer {
    consumer_with(group, &[])
}

/// Like [`consumer`], with extra or overriding client settings.
pub fn consumer_with(group: &str, overrides: &[(&str, &str)]) -> StreamConsumer {
    let mut config = client_config();
    config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000");
    for (key, value) in overrides {
        config.set(*key, *value);
    }
    config
        .create()
        .expect("create StreamConsumer for the test broker")
}

/// Creates `name` with `partitions` partitions (replication factor 1) and waits until every
/// partition has a leader, so producing right away does not race the metadata.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&bootstrap(), name, partitions).await;
}

/// [`create_topic`] on the broker at `bootstrap` (e.g. a [`DedicatedBroker`]).
pub async fn create_topic_on(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_configured(bootstrap, name, partitions, &[]).await;
}

/// [`create_topic`] with topic configs, e.g. `("max.message.bytes", "4096")`.
#[allow(dead_code)] // not every test binary creates configured topics
pub async fn create_topic_with(name: &str, partitions: i32, config: &[(&str, &str)]) {
    create_topic_configured(&bootstrap(), name, partitions, config).await;
}

async fn create_topic_configured(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .expect("create AdminClient for the test broker");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .unwrap_or_else(|e| panic!("CreateTopics request for {name} failed: {e}"));
    for result in results {
        if let Err((topic, code)) = result {
            panic!("creating topic {topic} failed: {code}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                md.topics().first().map(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if led {
            return;
        }
        if Instant::now() >= deadline {
            panic!("topic {name} was created but its {partitions} partitions got no leaders within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_local_broker() -> BrokerInfo {
    let libs = kafka_libs();
    let mut failures = String::new();
    for attempt in 1..=START_ATTEMPTS {
        match try_start(&libs) {
            Ok(info) => return info,
            Err((message, port_clash)) => {
                let _ = writeln!(failures, "attempt {attempt}: {message}");
                if !port_clash {
                    break;
                }
            }
        }
    }
    panic!("could not start the test Kafka broker ({BOOTSTRAP_ENV} is not set):\n{failures}");
}

/// The Kafka jars, fetched with Maven on first use (needs Java to run them).
fn kafka_libs() -> PathBuf {
    process::require_java("the test Kafka broker");
    let home = process::infra_dir().join(format!("kafka-{KAFKA_VERSION}"));
    let libs = home.join("libs");
    process::fetch_with_maven(
        &format!("Apache Kafka {KAFKA_VERSION} jars"),
        &process::harness_pom("kafka"),
        &[
            "dependency:copy-dependencies".to_owned(),
            format!("-Dkafka.version={KAFKA_VERSION}"),
            "-DincludeScope=runtime".to_owned(),
        ],
        "outputDirectory",
        &libs,
    );
    libs
}

/// One broker's fixed identity: ports, data dir, config and command line. Launching it
/// again after a stop brings back the same broker with the same data.
struct BrokerSetup {
    run: PathBuf,
    data: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    bootstrap: String,
}

/// Picks free ports, writes the config and formats the storage of a new broker.
fn prepare_broker(libs: &Path) -> BrokerSetup {
    let ports = process::free_ports(2);
    let (broker_port, controller_port) = (ports[0], ports[1]);
    let run = process::run_dir("kafka");
    let data = run.join("data");
    let config = run.join("server.properties");
    let log4j = run.join("log4j2.properties");
    let log = run.join("broker.log");
    write_file(
        &config,
        &server_properties(&data, broker_port, controller_port),
    );
    write_file(&log4j, LOG4J2_CONFIG);

    let classpath = format!("{}/*", libs.display());
    let jvm_common = [
        "-Xms128m".to_owned(),
        "-Xmx512m".to_owned(),
        "-XX:+UseSerialGC".to_owned(),
        // C1 only: faster JVM start-up, plenty for test traffic.
        "-XX:TieredStopAtLevel=1".to_owned(),
        "-Djava.awt.headless=true".to_owned(),
        format!("-Dlog4j2.configurationFile={}", log4j.display()),
        "-cp".to_owned(),
        classpath,
    ];

    format_storage(&jvm_common, &config, &log);

    let mut args: Vec<String> = jvm_common.to_vec();
    args.push("kafka.Kafka".to_owned());
    args.push(config.display().to_string());
    BrokerSetup {
        run,
        data,
        log,
        args,
        bootstrap: format!("127.0.0.1:{broker_port}"),
    }
}

/// Starts the broker of `setup` and waits until it answers metadata requests. `scratch`
/// is removed when the process exits. Err carries the reason and whether it was a port
/// clash worth retrying on other ports.
fn launch_broker(
    setup: &BrokerSetup,
    scratch: Option<&Path>,
) -> Result<(Service, Duration), (String, bool)> {
    let service = Service::spawn(
        "Kafka broker",
        &process::java_program(),
        &setup.args,
        &setup.log,
        scratch,
    );
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.bootstrap)
        .set("broker.address.family", "v4")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .map_err(|e| (format!("cannot create readiness probe client: {e}"), false))?;
    let ready = process::await_ready(&service, STARTUP_TIMEOUT, || {
        probe
            .fetch_metadata(None, Duration::from_millis(500))
            .map(|md| !md.brokers().is_empty())
            .unwrap_or(false)
    });
    match ready {
        Ok(startup) => Ok((service, startup)),
        Err(message) => {
            service.stop();
            let port_clash = message.contains("Address already in use");
            Err((message, port_clash))
        }
    }
}

/// One start attempt. Err carries the reason and whether it was a port clash worth retrying.
fn try_start(libs: &Path) -> Result<BrokerInfo, (String, bool)> {
    let setup = prepare_broker(libs);
    let (service, startup) = launch_broker(&setup, Some(&setup.data))?;
    eprintln!(
        "test Kafka broker {KAFKA_VERSION} ready at {} after {:.1}s (log: {})",
        setup.bootstrap,
        startup.as_secs_f64(),
        setup.log.display()
    );
    Ok(BrokerInfo {
        bootstrap: setup.bootstrap,
        local: Some(LocalBroker {
            service,
            log: setup.log,
            startup,
        }),
    })
}

/// `kafka-storage format --standalone` with a fresh cluster id: the node becomes the only
/// voter of a new KRaft quorum.
fn format_storage(jvm_common: &[String], config: &Path, log: &Path) {
    format_storage_with(jvm_common, config, log, &[]);
}

/// [`format_storage`] with more formatter arguments (e.g. `--add-scram`).
fn format_storage_with(jvm_common: &[String], config: &Path, log: &Path, extra: &[String]) {
    let output = Command::new(process::java_program())
        .args(jvm_common)
        .arg("kafka.tools.StorageTool")
        .arg("format")
        .arg("--standalone")
        .arg("--cluster-id")
        .arg(random_cluster_id())
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the Kafka storage formatter: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    write_file(&log.with_extension("format.log"), &text);
    if !output.status.success() {
        panic!(
            "formatting Kafka storage failed with {}:\n{}",
            output.status,
            text.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
pub fn random_cluster_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        hasher.write_u32(std::process::id());
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    // The formatter parses its arguments with argparse4j, which would take an id starting
    // with '-' for an option: keep the first character a letter (index < 32).
    bytes[0] &= 0x7f;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 0x3f) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 0x3f) as usize] as char);
    }
    out
}

fn server_properties(data: &Path, broker_port: u16, controller_port: u16) -> String {
    format!(
        "\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.retention.check.interval.ms=300000
auto.create.topics.enable=true
delete.topic.enable=true
",
        data = data.display()
    )
}

const LOG4J2_CONFIG: &str = "\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
";

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A broker of its own for one test, which the test may stop and bring back: for outage
/// tests. Unlike the shared [`broker`], it is always a local JVM (it ignores
/// `SYNCLAG_TEST_BOOTSTRAP`), and a restart keeps its port and its data (topics, committed
/// offsets, group state), so clients reconnect to the same address as after a real
/// broker outage.
///
/// ```ignore
/// let broker = DedicatedBroker::start();
/// create_topic_on(broker.bootstrap(), "orders", 1).await;
/// broker.kill();     // or stop(): SIGTERM, a controlled shutdown
/// broker.restart();  // same port, same data; returns once it answers again
/// ```
///
/// The process is stopped by its PID when the value is dropped (and by the watchdog if
/// the test process dies first); its data directory is removed on drop. Blocking calls:
/// from an async test, wrap `start`/`restart` in `tokio::task::spawn_blocking` or accept
/// that they block a worker thread for the JVM's start-up (seconds).
pub struct DedicatedBroker {
    setup: BrokerSetup,
    service: Mutex<Option<Service>>,
}

impl DedicatedBroker {
    /// Starts a new single-node broker on free loopback ports and waits until it answers.
    pub fn start() -> DedicatedBroker {
        let libs = kafka_libs();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let setup = prepare_broker(&libs);
            match launch_broker(&setup, None) {
                Ok((service, startup)) => {
                    eprintln!(
                        "dedicated Kafka broker ready at {} after {:.1}s (log: {})",
                        setup.bootstrap,
                        startup.as_secs_f64(),
                        setup.log.display()
                    );
                    return DedicatedBroker {
                        setup,
                        service: Mutex::new(Some(service)),
                    };
                }
                Err((message, port_clash)) => {
                    let _ = fs::remove_dir_all(&setup.run);
                    let _ = writeln!(failures, "attempt {attempt}: {message}");
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        panic!("could not start a dedicated Kafka broker:\n{failures}");
    }

    /// `host:port` for `bootstrap.servers`; the same across restarts.
    pub fn bootstrap(&self) -> &str {
        &self.setup.bootstrap
    }

    /// A client config pointing at this broker; add settings as needed.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4");
        config
    }

    /// The broker's log (all runs of it, appended).
    pub fn log(&self) -> &Path {
        &self.setup.log
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|service| service.exited().is_none())
    }

    /// SIGTERM by PID and waits for the exit: a controlled shutdown (leadership moved,
    /// logs flushed). No-op when already stopped.
    pub fn stop(&self) {
        if let Some(service) = self.lock().take() {
            service.stop();
        }
    }

    /// SIGKILL by PID and waits for the exit: a crash, nothing flushed. No-op when already
    /// stopped.
    pub fn kill(&self) {
        let Some(service) = self.lock().take() else {
            return;
        };
        if let Some(pid) = service.pid() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while service.exited().is_none() {
            assert!(
                Instant::now() < deadline,
                "the dedicated broker did not exit within 30 s of SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again on the same port with the same data (stopping it first if
    /// it runs) and waits until it answers metadata requests. Panics with the log tail if
    /// it cannot.
    pub fn restart(&self) {
        self.stop();
        match launch_broker(&self.setup, None) {
            Ok((service, startup)) => {
                eprintln!(
                    "dedicated Kafka broker back at {} after {:.1}s",
                    self.setup.bootstrap,
                    startup.as_secs_f64()
                );
                *self.lock() = Some(service);
            }
            Err((message, _)) => panic!("could not restart the dedicated broker: {message}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Service>> {
        self.service.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DedicatedBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.setup.run);
    }
}

/// A broker of its own with a SASL_SSL listener: SCRAM-SHA-512 users created when its
/// storage is formatted (`--add-scram`), TLS with a certificate for `127.0.0.1` signed by
/// a CA generated for it (see [`super::tls`]). It also listens on PLAINTEXT (the
/// inter-broker listener, used by the harness to see that it is up); clients under test
/// use [`SecuredBroker::bootstrap`], the SASL_SSL one. Stopped by PID on drop.
pub struct SecuredBroker {
    setup: BrokerSetup,
    service: Option<Service>,
    /// `host:port` of the SASL_SSL listener.
    pub bootstrap: String,
    /// The CA that signed the broker's certificate (PEM): `ssl.ca.location`.
    pub ca_cert: PathBuf,
}

impl SecuredBroker {
    /// Starts a broker whose SASL_SSL listener knows `users` (name, password).
    pub fn start(users: &[(&str, &str)]) -> SecuredBroker {
        let libs = kafka_libs();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let (setup, bootstrap, ca_cert) = prepare_secured_broker(&libs, users);
            match launch_broker(&setup, None) {
                Ok((service, startup)) => {
                    eprintln!(
                        "SASL_SSL Kafka broker ready at {bootstrap} after {:.1}s (log: {})",
                        startup.as_secs_f64(),
                        setup.log.display()
                    );
                    return SecuredBroker {
                        setup,
                        service: Some(service),
                        bootstrap,
                        ca_cert,
                    };
                }
                Err((message, port_clash)) => {
                    let _ = fs::remove_dir_all(&setup.run);
                    let _ = writeln!(failures, "attempt {attempt}: {message}");
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        panic!("could not start a SASL_SSL Kafka broker:\n{failures}");
    }

    /// librdkafka properties to reach the SASL_SSL listener as `user`.
    pub fn properties(&self, user: &str, password: &str) -> Vec<(String, String)> {
        vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), user.into()),
            ("sasl.password".into(), password.into()),
            ("ssl.ca.location".into(), self.ca_cert.display().to_string()),
            ("broker.address.family".into(), "v4".into()),
        ]
    }

    /// A client config for the SASL_SSL listener as `user`.
    pub fn client_config(&self, user: &str, password: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in self.properties(user, password) {
            config.set(k, v);
        }
        config
    }

    /// The broker's log.
    pub fn log(&self) -> &Path {
        &self.setup.log
    }
}

impl Drop for SecuredBroker {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            service.stop();
        }
        let _ = fs::remove_dir_all(&self.setup.run);
    }
}

/// Ports, certificates, config and formatted storage (with SCRAM users) of a SASL_SSL
/// broker; returns the setup, the SASL_SSL bootstrap and the CA certificate.
fn prepare_secured_broker(libs: &Path, users: &[(&str, &str)]) -> (BrokerSetup, String, PathBuf) {
    let ports = process::free_ports(3);
    let (plain_port, controller_port, secure_port) = (ports[0], ports[1], ports[2]);
    let run = process::run_dir("kafka-sasl-ssl");
    let data = run.join("data");
    let config = run.join("server.properties");
    let log4j = run.join("log4j2.properties");
    let log = run.join("broker.log");
    let certs = super::tls::generate(&run.join("certs"));
    let mut props = server_properties(&data, plain_port, controller_port);
    let plain_listeners = format!(
        "listeners=PLAINTEXT://127.0.0.1:{plain_port},CONTROLLER://127.0.0.1:{controller_port}\n"
    );
    props = props.replace(
        &plain_listeners,
        &format!(
            "listeners=PLAINTEXT://127.0.0.1:{plain_port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://127.0.0.1:{secure_port}\n"
        ),
    );
    props = props.replace(
        &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{plain_port}\n"),
        &format!(
            "advertised.listeners=PLAINTEXT://127.0.0.1:{plain_port},SASL_SSL://127.0.0.1:{secure_port}\n"
        ),
    );
    props = props.replace(
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL\n",
    );
    let _ = writeln!(
        props,
        "sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.location={}
ssl.keystore.type=PKCS12
ssl.keystore.password={pw}
ssl.key.password={pw}
ssl.client.auth=none",
        certs.server_p12.display(),
        pw = super::tls::KEYSTORE_PASSWORD
    );
    assert!(
        props.contains("SASL_SSL://127.0.0.1"),
        "the SASL_SSL listener was not added to the broker config"
    );
    write_file(&config, &props);
    write_file(&log4j, LOG4J2_CONFIG);
    let classpath = format!("{}/*", libs.display());
    let jvm_common = vec![
        "-Xms128m".to_owned(),
        "-Xmx512m".to_owned(),
        "-XX:+UseSerialGC".to_owned(),
        "-XX:TieredStopAtLevel=1".to_owned(),
        "-Djava.awt.headless=true".to_owned(),
        format!("-Dlog4j2.configurationFile={}", log4j.display()),
        "-cp".to_owned(),
        classpath,
    ];
    let mut extra = Vec::new();
    for (user, password) in users {
        extra.push("--add-scram".to_owned());
        extra.push(format!("SCRAM-SHA-512=[name={user},password={password}]"));
    }
    format_storage_with(&jvm_common, &config, &log, &extra);
    let mut args = jvm_common;
    args.push("kafka.Kafka".to_owned());
    args.push(config.display().to_string());
    (
        BrokerSetup {
            run,
            data,
            log,
            args,
            bootstrap: format!("127.0.0.1:{plain_port}"),
        },
        format!("127.0.0.1:{secure_port}"),
        certs.ca_cert,
    )
}
