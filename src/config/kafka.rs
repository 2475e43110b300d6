//! Every librdkafka property synclag sets, per client, in one table — and how the
//! user's `kafka.properties` combine with it.
//!
//! Each entry is either a *default* (synclag's choice when the user says nothing; the
//! user's value wins) or *required* (synclag's correctness depends on the exact value;
//! a different user value is a validation problem that says why and what to do
//! instead). A client's configuration is built in three layers: defaults, then the
//! user's properties, then the required values — so after a topology has validated,
//! the user's properties are applied unchanged and nothing is overwritten silently.
//!
//! `bootstrap.servers` and `group.id` are not in the table: they come from
//! `kafka.bootstrap_servers` and `service.group_id` (or, for the backlog monitor's
//! clients, from the group being read), so a user value for them is always a problem.

use super::Topology;
use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;

/// The kinds of Kafka client synclag creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The consumer of the input topics (`synclag run`).
    Input,
    /// The producer of breach, lag and dead-letter events.
    Output,
    /// Group-less clients for metadata, group lists and committed offsets (membership
    /// watch, backlog monitor).
    Admin,
    /// The backlog monitor's reader of single records at committed offsets.
    BacklogReader,
    /// The backlog monitor's tail of `__consumer_offsets`.
    CommitLogTail,
}

impl Client {
    pub const ALL: [Client; 5] = [
        Client::Input,
        Client::Output,
        Client::Admin,
        Client::BacklogReader,
        Client::CommitLogTail,
    ];

    /// How a problem names the client.
    pub fn describe(self) -> &'static str {
        match self {
            Client::Input => "the input consumer",
            Client::Output => "the output producer",
            Client::Admin => "the group and metadata reader",
            Client::BacklogReader => "the backlog record reader",
            Client::CommitLogTail => "the backlog commit-log reader",
        }
    }
}

/// Who decides a property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// synclag's value unless the user sets one.
    Default,
    /// Like [`Rule::Default`], but `0` switches off something synclag relies on.
    DefaultNotZero,
    /// synclag's value, always; a different user value is a validation problem.
    Required,
}

/// One property synclag sets.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub value: &'static str,
    pub rule: Rule,
    pub clients: &'static [Client],
    /// Why synclag sets it (shown in validation problems).
    pub why: &'static str,
}

use Client::*;

const BACKLOG_CLIENTS: &[Client] = &[Admin, BacklogReader, CommitLogTail];

/// Every property synclag sets on its clients.
pub const SETTINGS: &[Setting] = &[
    // ---- input consumer
    Setting {
        key: "enable.auto.commit",
        value: "false",
        rule: Rule::Required,
        clients: &[Input],
        why: "synclag commits an input offset only once every correlation that needs the record is accounted for; an automatic commit would move past pending correlations and a restart would lose them",
    },
    Setting {
        key: "enable.auto.offset.store",
        value: "false",
        rule: Rule::Required,
        clients: &[Input],
        why: "synclag stores offsets itself, after a record is processed (at-least-once)",
    },
    Setting {
        key: "isolation.level",
        value: "read_committed",
        rule: Rule::Required,
        clients: &[Input],
        why: "records of aborted transactions must never count as workflow stages",
    },
    Setting {
        key: "auto.offset.reset",
        value: "earliest",
        rule: Rule::Default,
        clients: &[Input],
        why: "a new group reads the retained history, so correlations started before the first run are known",
    },
    Setting {
        key: "statistics.interval.ms",
        value: "1000",
        rule: Rule::DefaultNotZero,
        clients: &[Input],
        why: "the statistics report each input partition's committed offset, fetch position and locally queued records, which tell the clock a partition that is merely queued behind others from one that is stalled; `0` turns them off and busy partitions would be judged stalled",
    },
    Setting {
        key: "fetch.wait.max.ms",
        value: "100",
        rule: Rule::Default,
        clients: &[Input],
        why: "breaches are judged on the wall clock, so records must not idle in a fetch request",
    },
    Setting {
        key: "fetch.message.max.bytes",
        value: "65536",
        rule: Rule::Default,
        clients: &[Input],
        why: "each fetch brings at most 64 KiB of a partition, so all input partitions are read in step: with librdkafka's 1 MiB one partition could run seconds of event time ahead of the others, whose stages then waited in memory for the slowest partition's clock (the load run held 124,000 outcomes at 667 MiB RSS; at 64 KiB 364 MiB and 3.8× the throughput)",
    },
    Setting {
        key: "queued.min.messages",
        value: "5000",
        rule: Rule::Default,
        clients: &[Input],
        why: "records fetched ahead per partition; librdkafka's 100,000 held about 50 MiB of fetched records in the load run and each pause of a partition dropped up to that many to fetch them again (records fetched per record read 2.2-2.3 against 1.5 at 5,000, peak RSS 208-213 MiB against 161-166, the same throughput; at 1,000-2,000 the run was slower)",
    },
    Setting {
        key: "fetch.queue.backoff.ms",
        value: "10",
        rule: Rule::Default,
        clients: &[Input],
        why: "input partitions are paused and resumed (a record waiting for the registry, a long wait for outputs, a partition far ahead of the clock); with librdkafka's 1,000 ms a resumed partition whose queue was judged full waited up to a second before it was fetched again, while every other partition waited for it (the load run read 27 k records/s with it, 70 k with 10 ms)",
    },
    Setting {
        key: "partition.assignment.strategy",
        value: "cooperative-sticky",
        rule: Rule::Default,
        clients: &[Input],
        why: "a rebalance moves only the partitions that change owner",
    },
    Setting {
        key: "topic.metadata.refresh.interval.ms",
        value: "5000",
        rule: Rule::Default,
        clients: &[Input],
        why: "an input topic created after start is found within seconds (librdkafka's own default is 5 minutes)",
    },
    // ---- output producer
    Setting {
        key: "enable.idempotence",
        value: "true",
        rule: Rule::Required,
        clients: &[Output],
        why: "outputs are retried until delivered; idempotence keeps a retry from duplicating or reordering breach events",
    },
    Setting {
        key: "message.timeout.ms",
        value: "0",
        rule: Rule::Default,
        clients: &[Output],
        why: "0 is no limit: while Kafka is down outputs wait instead of being given up",
    },
    Setting {
        key: "linger.ms",
        value: "20",
        rule: Rule::Default,
        clients: &[Output],
        why: "batches outputs without delaying a breach event noticeably",
    },
    Setting {
        key: "queue.buffering.max.messages",
        value: "1000000",
        rule: Rule::Default,
        clients: &[Output],
        why: "room for outputs waiting out a broker outage (librdkafka's default is 100000); when it is full synclag waits instead of dropping",
    },
    Setting {
        key: "queue.buffering.max.kbytes",
        value: "32768",
        rule: Rule::Default,
        clients: &[Output],
        why: "outputs waiting for the broker are bounded for the memory target (≤ 100 MiB RSS): 32 MiB, whichever of this and the message count is reached first (librdkafka's default is 1 GiB); when it is full synclag waits instead of dropping",
    },
    // ---- backlog monitor and membership watch
    Setting {
        key: "enable.auto.commit",
        value: "false",
        rule: Rule::Required,
        clients: BACKLOG_CLIENTS,
        why: "these clients read the committed offsets of watched groups and must never commit in their name",
    },
    Setting {
        key: "enable.auto.offset.store",
        value: "false",
        rule: Rule::Required,
        clients: BACKLOG_CLIENTS,
        why: "these clients read the committed offsets of watched groups and must never store offsets",
    },
    Setting {
        key: "enable.partition.eof",
        value: "true",
        rule: Rule::Required,
        clients: &[BacklogReader],
        why: "the reader learns that no record is left at a committed offset from the end-of-partition event",
    },
    Setting {
        key: "enable.partition.eof",
        value: "false",
        rule: Rule::Required,
        clients: &[CommitLogTail],
        why: "the commit log is tailed continuously; end-of-partition events would be read as errors",
    },
    Setting {
        key: "queued.min.messages",
        value: "1",
        rule: Rule::Default,
        clients: &[BacklogReader],
        why: "only the first record at each committed offset is wanted: keep prefetch small",
    },
    Setting {
        key: "queued.max.messages.kbytes",
        value: "1024",
        rule: Rule::Default,
        clients: &[BacklogReader],
        why: "only the first record at each committed offset is wanted: keep prefetch small",
    },
    Setting {
        key: "fetch.message.max.bytes",
        value: "65536",
        rule: Rule::Default,
        clients: &[BacklogReader],
        why: "only the first record at each committed offset is wanted: keep prefetch small",
    },
    Setting {
        key: "queued.min.messages",
        value: "10000",
        rule: Rule::Default,
        clients: &[CommitLogTail],
        why: "the commit log is read in bounded steps; librdkafka's default prefetch (100,000 records a partition, 64 MB) would dominate the monitor's memory",
    },
    Setting {
        key: "queued.max.messages.kbytes",
        value: "4096",
        rule: Rule::Default,
        clients: &[CommitLogTail],
        why: "the commit log is read in bounded steps; librdkafka's default prefetch (100,000 records a partition, 64 MB) would dominate the monitor's memory",
    },
    Setting {
        key: "fetch.max.bytes",
        value: "4194304",
        rule: Rule::Default,
        clients: &[BacklogReader, CommitLogTail],
        why: "one fetch response spans every assigned partition; librdkafka's default (50 MB) would be held in memory at once",
    },
    Setting {
        key: "fetch.queue.backoff.ms",
        value: "10",
        rule: Rule::Default,
        clients: &[BacklogReader, CommitLogTail],
        why: "with small fetch queues librdkafka would otherwise pause each partition's fetching for a second whenever its queue is full, which makes reading the commit log and the records of a cycle take minutes on a big cluster",
    },
    Setting {
        key: "fetch.wait.max.ms",
        value: "50",
        rule: Rule::Default,
        clients: &[BacklogReader, CommitLogTail],
        why: "a backlog cycle waits for these reads",
    },
    Setting {
        key: "isolation.level",
        value: "read_uncommitted",
        rule: Rule::Default,
        clients: &[BacklogReader],
        why: "the record at a committed offset may belong to an open transaction; its time is read without waiting for the transaction to end",
    },
    Setting {
        key: "isolation.level",
        value: "read_committed",
        rule: Rule::Default,
        clients: &[CommitLogTail],
        why: "offsets committed inside a transaction count only once the transaction commits, as the group coordinator applies them",
    },
];

/// Properties that other configuration keys decide.
pub const MANAGED: &[&str] = &["bootstrap.servers", "group.id", "transactional.id"];

/// The settings of one kind of client.
pub fn settings(client: Client) -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(move |s| s.clients.contains(&client))
}

/// A client's configuration: synclag's defaults, then the user's `properties`, then
/// synclag's required values. No `group.id`; the caller sets the group it needs.
pub fn client_config(
    client: Client,
    bootstrap_servers: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap_servers);
    for s in settings(client).filter(|s| s.rule != Rule::Required) {
        cfg.set(s.key, s.value);
    }
    for (k, v) in properties {
        cfg.set(k, v);
    }
    for s in settings(client).filter(|s| s.rule == Rule::Required) {
        cfg.set(s.key, s.value);
    }
    cfg
}

/// The input consumer of `synclag run`, in group `service.group_id`.
pub fn consumer_config(topology: &Topology) -> ClientConfig {
    let mut cfg = client_config(
        Client::Input,
        &topology.kafka.bootstrap_servers,
        &topology.kafka.properties,
    );
    cfg.set("group.id", &topology.service.group_id);
    cfg
}

/// A producer of synclag's topics (outputs, audit records, redriven dead letters).
pub fn producer_config(topology: &Topology) -> ClientConfig {
    client_config(
        Client::Output,
        &topology.kafka.bootstrap_servers,
        &topology.kafka.properties,
    )
}

/// The producer of the pipeline's outputs: [`producer_config`], transactional with
/// `store.exactly_once`. Its `transactional.id` is `service.instance_id` (stable across
/// restarts, so a restarted instance fences the transactions its previous process left
/// open; no other client of synclag's uses it), and a record may wait for the broker as
/// long as a transaction may stay open (`transaction.timeout.ms`, librdkafka's limit for
/// transactional producers), not forever: a transaction that outlives it is aborted and
/// written again (see `emit::emitter`).
pub fn output_producer_config(topology: &Topology) -> ClientConfig {
    let mut cfg = producer_config(topology);
    if topology.store.exactly_once {
        cfg.set("transactional.id", &topology.service.instance_id);
        let props = &topology.kafka.properties;
        if !props.contains_key("message.timeout.ms") {
            let txn = props
                .get("transaction.timeout.ms")
                .map_or(TRANSACTION_TIMEOUT_MS, String::as_str);
            cfg.set("message.timeout.ms", txn);
        }
    }
    cfg
}

/// librdkafka's default `transaction.timeout.ms`.
const TRANSACTION_TIMEOUT_MS: &str = "60000";

/// A group-less client for metadata, group lists and committed offsets.
pub fn admin_config(topology: &Topology) -> ClientConfig {
    client_config(
        Client::Admin,
        &topology.kafka.bootstrap_servers,
        &topology.kafka.properties,
    )
}

/// librdkafka reads booleans as `true`/`false`/`t`/`f`/`1`/`0` in any case; compare
/// values the way it will read them, so `False` for a required `false` is no conflict.
fn same_value(user: &str, required: &str) -> bool {
    let norm = |v: &str| {
        let v = v.trim().to_ascii_lowercase();
        match v.as_str() {
            "t" | "1" => "true".to_string(),
            "f" | "0" => "false".to_string(),
            _ => v,
        }
    };
    if matches!(required, "true" | "false") {
        norm(user) == required
    } else {
        user.trim().eq_ignore_ascii_case(required)
    }
}

/// A user property that synclag cannot accept: (property, what is wrong).
pub fn conflicts(properties: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in properties {
        if MANAGED.contains(&key.as_str()) {
            out.push((
                key.clone(),
                "is managed by synclag; set `service.group_id` / `kafka.bootstrap_servers` / `service.instance_id` instead"
                    .to_string(),
            ));
            continue;
        }
        // One problem per property, naming every client it conflicts for.
        let mut required = Vec::new();
        for s in SETTINGS.iter().filter(|s| s.key == key) {
            let clients = s
                .clients
                .iter()
                .map(|c| c.describe())
                .collect::<Vec<_>>()
                .join(", ");
            match s.rule {
                Rule::Required if !same_value(value, s.value) => {
                    required.push(format!("`{}` for {clients}: {}", s.value, s.why));
                }
                Rule::DefaultNotZero if value.trim() == "0" => out.push((
                    key.clone(),
                    format!(
                        "`0` is not allowed for {clients}: {}; remove the property to get synclag's `{}`, or give a positive value",
                        s.why, s.value
                    ),
                )),
                _ => {}
            }
        }
        if !required.is_empty() {
            out.push((
                key.clone(),
                format!(
                    "`{value}` conflicts with synclag's required {}; remove the property",
                    required.join("; and ")
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_user_value_wins_over_a_default() {
        let user = props(&[
            ("fetch.wait.max.ms", "500"),
            ("linger.ms", "100"),
            ("auto.offset.reset", "latest"),
            ("security.protocol", "SASL_SSL"),
        ]);
        let input = client_config(Client::Input, "k:9092", &user);
        assert_eq!(input.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(input.get("auto.offset.reset"), Some("latest"));
        assert_eq!(input.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(input.get("bootstrap.servers"), Some("k:9092"));
        // Defaults the user did not touch are there.
        assert_eq!(
            input.get("topic.metadata.refresh.interval.ms"),
            Some("5000")
        );
        assert_eq!(
            input.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        let output = client_config(Client::Output, "k:9092", &user);
        assert_eq!(output.get("linger.ms"), Some("100"));
        assert_eq!(output.get("message.timeout.ms"), Some("0"));
        // A default of one client does not leak into another.
        assert_eq!(output.get("auto.offset.reset"), Some("latest"));
        assert_eq!(output.get("partition.assignment.strategy"), None);
    }

    #[test]
    fn required_values_are_applied_last() {
        // Validation rejects a conflicting value; if a caller skips validation the
        // required value still holds.
        let user = props(&[
            ("enable.auto.commit", "true"),
            ("isolation.level", "read_uncommitted"),
        ]);
        let input = client_config(Client::Input, "k:9092", &user);
        assert_eq!(input.get("enable.auto.commit"), Some("false"));
        assert_eq!(input.get("isolation.level"), Some("read_committed"));
        let reader = client_config(Client::BacklogReader, "k:9092", &user);
        assert_eq!(reader.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        assert_eq!(reader.get("enable.partition.eof"), Some("true"));
        let tail = client_config(Client::CommitLogTail, "k:9092", &user);
        assert_eq!(tail.get("enable.partition.eof"), Some("false"));
    }

    #[test]
    fn conflicts_name_the_key_the_value_and_why() {
        let found = conflicts(&props(&[
            ("enable.auto.commit", "true"),
            ("enable.idempotence", "false"),
            ("isolation.level", "read_uncommitted"),
            ("statistics.interval.ms", "0"),
            ("group.id", "x"),
        ]));
        let text = |key: &str| -> Vec<&str> {
            found
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, m)| m.as_str())
                .collect()
        };
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(text("enable.auto.commit")[0].starts_with(
            "`true` conflicts with synclag's required `false` for the input consumer: synclag commits"
        ));
        assert!(text("enable.idempotence")[0].contains("required `true` for the output producer"));
        assert!(text("isolation.level")[0].contains("aborted transactions"));
        assert!(text("statistics.interval.ms")[0].starts_with("`0` is not allowed"));
        assert!(text("group.id")[0].starts_with("is managed by synclag"));
    }

    #[test]
    fn equal_values_and_defaults_are_no_conflict() {
        assert!(conflicts(&props(&[
            ("enable.auto.commit", "False"),
            ("enable.auto.offset.store", "0"),
            ("enable.idempotence", "TRUE"),
            ("isolation.level", "read_committed"),
            ("statistics.interval.ms", "5000"),
            ("message.timeout.ms", "300000"),
            ("linger.ms", "0"),
            ("sasl.mechanism", "PLAIN"),
        ]))
        .is_empty());
    }

    #[test]
    fn every_client_config_is_accepted_by_librdkafka() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        let none = BTreeMap::new();
        let mut input = client_config(Client::Input, "127.0.0.1:1", &none);
        input.set("group.id", "g");
        input
            .create::<BaseConsumer>()
            .unwrap_or_else(|e| panic!("input: {e}"));
        client_config(Client::Output, "127.0.0.1:1", &none)
            .create::<BaseProducer>()
            .unwrap_or_else(|e| panic!("output: {e}"));
        for c in [Client::Admin, Client::BacklogReader, Client::CommitLogTail] {
            let mut cfg = client_config(c, "127.0.0.1:1", &none);
            cfg.set("group.id", "g");
            cfg.create::<BaseConsumer>()
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }

    #[test]
    fn every_setting_has_a_reason_and_no_key_is_set_twice_per_client() {
        for c in Client::ALL {
            let mut keys: Vec<&str> = settings(c).map(|s| s.key).collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "{c:?} sets a key twice");
        }
        assert!(SETTINGS
            .iter()
            .all(|s| !s.why.is_empty() && !s.clients.is_empty()));
    }
}
