//! Reading whole topics back in tests: every record from the start to the end offsets
//! observed when called.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Every committed record of `topic` (empty when it does not exist), through a group-less
/// consumer made from `config` (bootstrap and security settings).
pub fn read_all(mut config: ClientConfig, topic: &str) -> Vec<OwnedMessage> {
    config
        .set("group.id", super::random_name("read-all"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().expect("create reader");
    let timeout = Duration::from_secs(10);
    let Ok(md) = consumer.fetch_metadata(Some(topic), timeout) else {
        return Vec::new();
    };
    let Some(t) = md.topics().first() else {
        return Vec::new();
    };
    if t.error().is_some() {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .expect("watermarks");
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .expect("add partition");
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end took over 30 s"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(0) {
                    ends.remove(&m.partition());
                }
                out.push(m.detach());
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(end)) =
                            (e.offset(), ends.get(&e.partition()))
                        {
                            if o >= *end {
                                ends.remove(&e.partition());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every committed record of the JSON breach topic `topic`, as breach events.
#[allow(dead_code)] // not every test binary reads breach events
pub fn breach_events(topic: &str) -> Vec<synclag::emit::events::BreachEvent> {
    read_all(super::client_config(), topic)
        .iter()
        .map(|m| {
            let text = text(m);
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("a breach record is a breach event: {e}: {text}"))
        })
        .collect()
}

/// The payload of `m` as text (lossy).
pub fn text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

/// The value of header `name` of `m`, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// Every byte of `m` a reader could see, as text: key, payload, header names and values.
pub fn all_text(m: &OwnedMessage) -> String {
    let mut s = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
    s.push('\n');
    s.push_str(&text(m));
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            s.push('\n');
            s.push_str(h.key);
            s.push('=');
            s.push_str(&String::from_utf8_lossy(h.value.unwrap_or_default()));
        }
    }
    s
}
