//! Membership of synclag's own consumer group: static membership and the one-instance check.
//!
//! **Static membership.** The consumer joins with `group.instance.id` =
//! `service.instance_id` (default `<group_id>-<hostname>`). A restarted instance presents
//! the same id, so the coordinator hands it the old member's partitions at once instead
//! of waiting for the dead member's session timeout (45 s by default). Two instances
//! must never share an id: the coordinator fences the older one (a fatal consumer error).
//!
//! **One instance per group, unless repartitioned.** Without `store.repartition`
//! correlation state is per instance, so a second instance in the group splits stages and
//! produces false `never_arrived`s; the watch reports it. With it, instances share the
//! stages topic's partitions (each correlation has one owner) and the watch only logs
//! how many there are.
//! A member counts as *this* instance when its client id is ours: after an outage or a
//! crash the previous session of this same instance can linger in the group until its
//! session times out, and that is not another instance. The consumer's client id is
//! `synclag-<instance_id>` unless `kafka.properties.client.id` is set (then instances
//! are told apart only if each sets its own client id).

use crate::config::Topology;
use crate::telemetry::names;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the group's members are listed.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The client id synclag's consumer presents to the group.
pub fn own_client_id(topology: &Topology) -> String {
    topology
        .kafka
        .properties
        .get("client.id")
        .cloned()
        .unwrap_or_else(|| format!("synclag-{}", topology.service.instance_id))
}

/// Settings for synclag's input consumer: static membership and a client id that tells
/// this instance's sessions apart from other instances'. A `group.instance.id` or
/// `client.id` the user set in `kafka.properties` is kept (it is already in the base
/// client config).
pub fn consumer_settings(topology: &Topology) -> Vec<(&'static str, String)> {
    let props = &topology.kafka.properties;
    let mut out = Vec::new();
    if !props.contains_key("group.instance.id") {
        out.push(("group.instance.id", topology.service.instance_id.clone()));
    }
    if !props.contains_key("client.id") {
        out.push(("client.id", own_client_id(topology)));
    }
    out
}

/// Instances in the group: this one (any of its sessions) plus every member with another
/// client id. Returns (instances, other instances).
pub fn count_instances<'a>(
    member_client_ids: impl Iterator<Item = &'a str>,
    own_client_id: &str,
) -> (usize, usize) {
    let (mut own, mut others) = (false, 0);
    for id in member_client_ids {
        if id == own_client_id {
            own = true;
        } else {
            others += 1;
        }
    }
    (usize::from(own) + others, others)
}

/// Every [`WATCH_EVERY`], lists the group's members and exports the number of instances;
/// without `store.repartition` another instance in the group is an ERROR.
pub fn spawn_member_watch(topology: &Topology, shutdown: CancellationToken) {
    let cfg = crate::config::kafka::admin_config(topology);
    let group = topology.service.group_id.clone();
    let own = own_client_id(topology);
    // With the stages topic, instances share the work: more of them is the point.
    let shared = topology.store.repartition;
    metrics::gauge!(names::REPARTITIONED).set(if shared { 1.0 } else { 0.0 });
    let mut last_instances = 0usize;
    tokio::spawn(async move {
        let client: BaseConsumer<super::health::QuietContext> =
            match cfg.create_with_context(super::health::QuietContext) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch group membership");
                    return;
                }
            };
        let client = Arc::new(client);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let c = client.clone();
            let g = group.clone();
            let members = tokio::task::spawn_blocking(move || {
                c.fetch_group_list(Some(&g), Duration::from_secs(5))
                    .map_err(|e| e.to_string())
                    .map(|l| {
                        l.groups()
                            .first()
                            .map(|x| {
                                x.members()
                                    .iter()
                                    .map(|m| m.client_id().to_string())
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default()
                    })
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let members = match members {
                Ok(m) => {
                    metrics::counter!(names::GROUP_MEMBER_CHECKS_TOTAL, "result" => "ok")
                        .increment(1);
                    m
                }
                Err(e) => {
                    metrics::counter!(names::GROUP_MEMBER_CHECKS_TOTAL, "result" => "error")
                        .increment(1);
                    tracing::debug!(error = %e, "cannot list synclag's group members");
                    continue;
                }
            };
            let (instances, others) = count_instances(members.iter().map(String::as_str), &own);
            metrics::gauge!(names::GROUP_MEMBERS).set(instances as f64);
            if shared {
                if instances != last_instances {
                    tracing::info!(instances, group = %group, "instances sharing the group's partitions");
                    last_instances = instances;
                }
            } else if others > 0 {
                tracing::error!(
                    members = instances,
                    group = %group,
                    "another instance joined synclag's consumer group; correlation state is per instance, so stages split across instances will be reported as never arrived — run one instance per group"
                );
            } else if members.len() > 1 {
                tracing::debug!(
                    sessions = members.len(),
                    "an earlier session of this instance is still in the group until its session times out"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::instance::{check_instance_id, default_instance_id};

    #[test]
    fn a_lingering_session_of_this_instance_is_not_another_instance() {
        let own = "synclag-g-host1";
        assert_eq!(count_instances([own].into_iter(), own), (1, 0));
        assert_eq!(count_instances([own, own].into_iter(), own), (1, 0));
        assert_eq!(count_instances([own, "rdkafka"].into_iter(), own), (2, 1));
        assert_eq!(
            count_instances(["synclag-g-host2", own, own].into_iter(), own),
            (2, 1)
        );
        // Not joined (yet): only the others count.
        assert_eq!(count_instances(["rdkafka"].into_iter(), own), (1, 1));
        assert_eq!(count_instances([].into_iter(), own), (0, 0));
    }

    fn topology(service: &str, properties: &str) -> Topology {
        let yaml = format!(
            r#"
service: {{ group_id: "grp 1"{service} }}
kafka: {{ bootstrap_servers: "127.0.0.1:9092", properties: {{ {properties} }} }}
streams:
  - {{ name: a, topic: a, format: json, fields: {{ correlation_id: $.id, event_time: $.t }} }}
  - {{ name: b, topic: b, format: json, fields: {{ correlation_id: $.id, event_time: $.t }} }}
workflows:
  - name: w
    stages: [{{ name: s1, stream: a }}, {{ name: s2, stream: b }}]
    sla: {{ warn: 1m, critical: 2m }}
    window: 1h
"#
        );
        match Topology::from_yaml_str("t.yaml", &yaml, Vec::new()) {
            Ok(t) => t,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn consumer_settings_default_to_the_host_and_keep_what_the_user_set() {
        let t = topology("", "");
        let id = default_instance_id("grp 1");
        assert_eq!(t.service.instance_id, id);
        assert_eq!(
            consumer_settings(&t),
            vec![
                ("group.instance.id", id.clone()),
                ("client.id", format!("synclag-{id}"))
            ]
        );
        let t = topology(", instance_id: node-2", "");
        assert_eq!(own_client_id(&t), "synclag-node-2");
        assert_eq!(
            consumer_settings(&t)[0],
            ("group.instance.id", "node-2".into())
        );
        let t = topology("", "client.id: mine, group.instance.id: theirs");
        assert!(consumer_settings(&t).is_empty());
        assert_eq!(own_client_id(&t), "mine");
    }

    #[test]
    fn a_bad_instance_id_is_a_config_problem() {
        let yaml = "service: { instance_id: \"a b\" }\n";
        let err = Topology::from_yaml_str("t.yaml", yaml, Vec::new())
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        assert!(err.contains("service.instance_id"), "{err}");
    }

    #[test]
    fn instance_id_rules() {
        assert!(check_instance_id("synclag-node-1.eu_west").is_ok());
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id("..").is_err());
        assert!(check_instance_id("a b").is_err());
        assert!(check_instance_id(&"x".repeat(250)).is_err());
    }
}
