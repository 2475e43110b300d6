//! The backlog monitor against the real broker: offset lag, time lag, status, groups
//! without members, deleted groups, and the `synclag.backlog` events. Cycles are driven
//! with `poll_once()`; nothing waits on the monitor's interval.

mod support;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use synclag::backlog::{
    BacklogEvent, BacklogMonitor, BacklogReport, Election, EventSink, GroupReport, Method,
    MonitorConfig, PartitionReport, ResetPolicy, Status,
};
use synclag::config::GroupSelector;

const WINDOW: usize = 3;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn config(groups: Vec<GroupSelector>) -> MonitorConfig {
    let mut c = MonitorConfig::new(support::bootstrap(), groups);
    c.properties
        .insert("broker.address.family".into(), "v4".into());
    c.window = WINDOW;
    c
}

fn monitor_for(group: &str) -> BacklogMonitor {
    BacklogMonitor::new(config(vec![GroupSelector::Name(group.to_owned())]))
        .expect("create the backlog monitor")
}

/// Produces one record per timestamp to `partition`, in order.
async fn produce(topic: &str, partition: i32, timestamps_ms: &[i64]) {
    let producer = support::producer();
    for (i, ts) in timestamps_ms.iter().enumerate() {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&format!("k{i}"))
                    .payload(&format!("{{\"n\":{i}}}"))
                    .timestamp(*ts),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition} failed: {e}"));
    }
}

fn commit(consumer: &StreamConsumer, topic: &str, partition: i32, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("add partition offset");
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("synchronous commit");
}

fn group(report: &BacklogReport, name: &str) -> GroupReport {
    report.group(name).unwrap_or_else(|| {
        panic!(
            "group {name} missing from report: {}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        )
    })
}

fn partition(g: &GroupReport, topic: &str, p: i32) -> PartitionReport {
    g.partitions
        .iter()
        .find(|x| x.topic == topic && x.partition == p)
        .cloned()
        .unwrap_or_else(|| panic!("{topic}/{p} missing from group {}: {g:#?}", g.group))
}

#[tokio::test]
async fn offset_lag_and_time_lag_of_a_partial_consumer_then_zero_when_caught_up() {
    const N: i64 = 10;
    const M: i64 = 4;
    let topic = support::random_name("backlog-lag");
    let name = support::random_name("backlog-lag-group");
    support::create_topic(&topic, 1).await;
    // Record i is (600 − 30·i) s old: far enough apart that ±1 s pins down record M.
    let base = now_ms();
    let stamps: Vec<i64> = (0..N).map(|i| base - 600_000 + i * 30_000).collect();
    produce(&topic, 0, &stamps).await;

    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, M);

    let mut monitor = monitor_for(&name);
    let before = now_ms();
    let report = monitor.poll_once().await.expect("first cycle");
    let after = now_ms();
    let g = group(&report, &name);
    let p = partition(&g, &topic, 0);
    assert_eq!(p.committed, Some(M));
    assert_eq!(p.log_end, Some(N));
    assert_eq!(p.offset_lag, Some(N - M), "offset lag is N − M");
    assert_eq!(p.method, Method::Record, "the record at the commit exists");
    let time_lag = p.time_lag_seconds.expect("a time lag");
    let true_age_min = (before - stamps[M as usize]) as f64 / 1000.0;
    let true_age_max = (after - stamps[M as usize]) as f64 / 1000.0;
    assert!(
        time_lag >= true_age_min - 1.0 && time_lag <= true_age_max + 1.0,
        "time lag {time_lag} s is not within ±1 s of the age of record {M} ({true_age_min}..{true_age_max} s)"
    );
    assert!(!p.no_commit);
    assert_eq!(g.members, 0);
    assert_eq!(g.offset_lag, N - M);

    let metrics = monitor.handle().render_prometheus();
    let series = format!(
        "synclag_backlog_offset_lag_records{{group=\"{name}\",topic=\"{topic}\",partition=\"0\"}} {}",
        N - M
    );
    assert!(
        metrics.contains(&series),
        "missing `{series}` in:\n{metrics}"
    );
    assert!(metrics.contains(&format!(
        "synclag_backlog_time_lag_seconds{{group=\"{name}\",topic=\"{topic}\",partition=\"0\",method=\"record\"}}"
    )));

    // An unchanged commit is not read again.
    let again = monitor.poll_once().await.expect("second cycle");
    assert_eq!(again.records_read, 0, "cached record is re-read");
    assert_eq!(
        partition(&group(&again, &name), &topic, 0).method,
        Method::Record
    );

    // Caught up: lag 0, time lag 0, OK.
    commit(&committer, &topic, 0, N);
    let caught_up = monitor.poll_once().await.expect("third cycle");
    let g = group(&caught_up, &name);
    let p = partition(&g, &topic, 0);
    assert_eq!(p.offset_lag, Some(0));
    assert_eq!(p.time_lag_seconds, Some(0.0));
    assert_eq!(p.status, Status::Ok);
    assert_eq!(g.status, Status::Ok);
}

#[tokio::test]
async fn stop_when_commits_cease_while_producers_continue() {
    let topic = support::random_name("backlog-stop");
    let name = support::random_name("backlog-stop-group");
    support::create_topic(&topic, 1).await;
    let base = now_ms() - 60_000;
    produce(&topic, 0, &[base, base + 1, base + 2, base + 3]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 2);

    let mut monitor = monitor_for(&name);
    let mut statuses = Vec::new();
    let mut lags = Vec::new();
    for i in 0..=WINDOW {
        produce(&topic, 0, &[now_ms() + i as i64]).await;
        let report = monitor.poll_once().await.expect("cycle");
        assert!(
            report.commit_log,
            "the commit log is readable on the test broker"
        );
        let p = partition(&group(&report, &name), &topic, 0);
        statuses.push(p.status);
        lags.push(p.offset_lag.expect("offset lag"));
    }
    assert_eq!(lags, vec![3, 4, 5, 6], "producers kept going");
    assert_eq!(
        statuses[..WINDOW - 1],
        vec![Status::Ok; WINDOW - 1],
        "too little evidence before the window is full"
    );
    assert_eq!(statuses[WINDOW - 1..], [Status::Stop, Status::Stop]);
    let report = monitor.handle().snapshot();
    assert_eq!(group(&report, &name).status, Status::Stop);
    assert!(report.render_prometheus().contains(&format!(
        "synclag_backlog_group_status_info{{group=\"{name}\",status=\"STOP\"}} 1"
    )));
}

#[tokio::test]
async fn stall_when_the_same_offset_is_committed_with_lag() {
    let topic = support::random_name("backlog-stall");
    let name = support::random_name("backlog-stall-group");
    support::create_topic(&topic, 1).await;
    let base = now_ms() - 60_000;
    produce(&topic, 0, &[base, base + 1, base + 2, base + 3, base + 4]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 2);

    let mut monitor = monitor_for(&name);
    let mut statuses = Vec::new();
    for _ in 0..=WINDOW {
        commit(&committer, &topic, 0, 2);
        let report = monitor.poll_once().await.expect("cycle");
        let p = partition(&group(&report, &name), &topic, 0);
        assert_eq!(p.offset_lag, Some(3));
        statuses.push(p.status);
    }
    assert_eq!(statuses[WINDOW - 1..], [Status::Stall, Status::Stall]);
}

#[tokio::test]
async fn idle_topic_with_a_caught_up_group_has_zero_time_lag_and_is_ok() {
    let topic = support::random_name("backlog-idle");
    let name = support::random_name("backlog-idle-group");
    support::create_topic(&topic, 1).await;
    let hour_ago = now_ms() - 3_600_000;
    produce(&topic, 0, &[hour_ago, hour_ago + 1, hour_ago + 2]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 3);

    let mut monitor = monitor_for(&name);
    for _ in 0..=WINDOW {
        let report = monitor.poll_once().await.expect("cycle");
        let p = partition(&group(&report, &name), &topic, 0);
        assert_eq!(p.offset_lag, Some(0));
        assert_eq!(
            p.time_lag_seconds,
            Some(0.0),
            "idle topic must not show the hour-old record's age"
        );
        assert_eq!(p.status, Status::Ok);
    }
}

#[tokio::test]
async fn group_without_members_is_reported_and_its_series_go_when_it_is_deleted() {
    let topic = support::random_name("backlog-empty");
    let prefix = support::random_name("backlog-empty-group");
    let name = format!("{prefix}-connector");
    support::create_topic(&topic, 2).await;
    let old = now_ms() - 7_200_000;
    produce(&topic, 0, &[old, old + 1, old + 2]).await;
    produce(&topic, 1, &[old, old + 1]).await;
    {
        // Old commits on partition 0 only; the client leaves, so the group has no member.
        let committer = support::consumer(&name);
        commit(&committer, &topic, 0, 1);
    }

    // Matched by pattern from the cluster's group list, not listed by name.
    let pattern = regex::Regex::new(&format!("^{}-.*$", regex::escape(&prefix))).expect("regex");
    let mut monitor = BacklogMonitor::new(config(vec![GroupSelector::Pattern(pattern)]))
        .expect("create the monitor");
    let report = monitor.poll_once().await.expect("cycle");
    let g = group(&report, &name);
    assert_eq!(g.members, 0);
    assert_eq!(g.state, "Empty");
    let p0 = partition(&g, &topic, 0);
    assert_eq!((p0.committed, p0.offset_lag), (Some(1), Some(2)));
    let age = p0.time_lag_seconds.expect("time lag of the old commit");
    assert!(age > 7_190.0, "two-hour-old record shows {age} s");
    let p1 = partition(&g, &topic, 1);
    assert!(p1.no_commit, "partition without a commit is flagged");
    assert_eq!(p1.committed, None);
    assert_eq!(
        p1.offset_lag,
        Some(0),
        "reset policy latest: nothing to catch up"
    );
    assert_eq!(g.uncommitted_partitions, 1);
    let metrics = report.render_prometheus();
    assert!(metrics.contains(&format!(
        "synclag_backlog_group_members{{group=\"{name}\"}} 0"
    )));

    // With `earliest`, the whole partition is backlog.
    let mut earliest = config(vec![GroupSelector::Name(name.clone())]);
    earliest
        .reset_policies
        .push((GroupSelector::Name(name.clone()), ResetPolicy::Earliest));
    let mut other = BacklogMonitor::new(earliest).expect("create the monitor");
    let report = other.poll_once().await.expect("cycle");
    let p1 = partition(&group(&report, &name), &topic, 1);
    assert_eq!((p1.no_commit, p1.offset_lag), (true, Some(2)));
    assert_eq!(group(&report, &name).reset_policy, ResetPolicy::Earliest);

    // Delete the group: its series are gone after the next cycle.
    let admin: AdminClient<DefaultClientContext> =
        support::client_config().create().expect("admin client");
    let results = admin
        .delete_groups(&[name.as_str()], &AdminOptions::new())
        .await
        .expect("DeleteGroups request");
    for r in results {
        r.unwrap_or_else(|(g, code)| panic!("deleting {g} failed: {code}"));
    }
    let report = monitor.poll_once().await.expect("cycle after deletion");
    assert!(
        report.group(&name).is_none(),
        "deleted group still reported"
    );
    let metrics = monitor.handle().render_prometheus();
    assert!(
        !metrics.contains(&name),
        "series of the deleted group remain:\n{metrics}"
    );
}

#[tokio::test]
async fn backlog_events_are_published_per_group_as_json_without_a_registry() {
    let topic = support::random_name("backlog-ev-src");
    let out = support::random_name("backlog-ev-out");
    let name = support::random_name("backlog-ev-group");
    support::create_topic(&topic, 1).await;
    support::create_topic(&out, 1).await;
    let base = now_ms() - 10_000;
    produce(&topic, 0, &[base, base + 1]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 1);

    let mut cfg = config(vec![GroupSelector::Name(name.clone())]);
    cfg.backlog_topic = out.clone();
    let sink = EventSink::new(&cfg).expect("event sink");
    let mut monitor = BacklogMonitor::new(cfg).expect("monitor");
    let report = monitor.poll_once().await.expect("cycle");
    assert_eq!(sink.publish(&report).await.expect("publish"), 1);

    let reader = support::consumer(&support::random_name("backlog-ev-reader"));
    reader.subscribe(&[&out]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("event arrives within 30 s")
        .expect("receive");
    assert_eq!(msg.key(), Some(name.as_bytes()));
    let event: BacklogEvent =
        serde_json::from_slice(msg.payload().expect("payload")).expect("JSON event");
    assert_eq!(event.group, name);
    assert_eq!(event.offset_lag, 1);
    assert_eq!(event.partitions.len(), 1);
    assert_eq!(event.partitions[0].committed, Some(1));
    assert_eq!(event.partitions[0].method, "record");
}

#[tokio::test]
async fn backlog_events_are_avro_registered_under_topic_value_with_a_registry() {
    use schema_registry_converter::async_impl::avro::AvroDecoder;
    use schema_registry_converter::async_impl::schema_registry::{
        get_schema_by_subject, SrSettings,
    };
    use schema_registry_converter::schema_registry_common::SubjectNameStrategy;

    let topic = support::random_name("backlog-avro-src");
    let out = support::random_name("backlog-avro-out");
    let name = support::random_name("backlog-avro-group");
    support::create_topic(&topic, 1).await;
    support::create_topic(&out, 1).await;
    let base = now_ms() - 10_000;
    produce(&topic, 0, &[base, base + 1, base + 2]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 3);

    let url = support::registry_url();
    let mut cfg = config(vec![GroupSelector::Name(name.clone())]);
    cfg.backlog_topic = out.clone();
    cfg.registry = Some(synclag::config::Registry {
        url: url.clone(),
        username: None,
        password_env: None,
        timeout: Duration::from_secs(10),
    });
    let sink = EventSink::new(&cfg).expect("event sink");
    let mut monitor = BacklogMonitor::new(cfg).expect("monitor");
    let report = monitor.poll_once().await.expect("cycle");
    assert_eq!(sink.publish(&report).await.expect("publish"), 1);

    let reader = support::consumer(&support::random_name("backlog-avro-reader"));
    reader.subscribe(&[&out]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("event arrives within 30 s")
        .expect("receive");
    let payload = msg.payload().expect("payload");
    assert_eq!(payload[0], 0, "Confluent wire format magic byte");
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let registered = get_schema_by_subject(
        &SrSettings::new(url.clone()),
        &SubjectNameStrategy::TopicNameStrategy(out.clone(), false),
    )
    .await
    .expect("schema registered under <topic>-value");
    assert_eq!(registered.id, id);

    let decoded = AvroDecoder::new(SrSettings::new(url))
        .decode(Some(payload))
        .await
        .expect("decodes with the registered schema");
    let event: BacklogEvent = apache_avro::from_value(&decoded.value).expect("BacklogEvent");
    assert_eq!(event.group, name);
    assert_eq!(event.status, "OK");
    assert_eq!(event.offset_lag, 0);
    assert_eq!(event.partitions[0].time_lag_seconds, Some(0.0));
}

#[tokio::test]
async fn time_lag_is_interpolated_when_retention_removed_the_committed_record() {
    let topic = support::random_name("backlog-gone");
    let name = support::random_name("backlog-gone-group");
    support::create_topic(&topic, 1).await;
    let base = now_ms();
    let stamps: Vec<i64> = (0..10).map(|i| base - 600_000 + i * 30_000).collect();
    produce(&topic, 0, &stamps).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 2);

    // Records 0..5 are deleted, as retention would: the record at the commit is gone.
    let admin: AdminClient<DefaultClientContext> =
        support::client_config().create().expect("admin client");
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, Offset::Offset(5))
        .expect("add partition offset");
    admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("DeleteRecords");

    let mut monitor = monitor_for(&name);
    let before = now_ms();
    let report = monitor.poll_once().await.expect("cycle");
    let after = now_ms();
    let p = partition(&group(&report, &name), &topic, 0);
    assert_eq!(p.log_start, Some(5));
    assert_eq!(p.offset_lag, Some(8), "lag still counts from the commit");
    assert_eq!(p.method, Method::Interpolated);
    let lag = p.time_lag_seconds.expect("an estimate");
    // A lower bound: at least the age of the oldest record left, at most the true age.
    let oldest_left = (before - stamps[5]) as f64 / 1000.0;
    let true_age = (after - stamps[2]) as f64 / 1000.0;
    assert!(
        lag >= oldest_left - 1.0 && lag <= true_age + 1.0,
        "estimate {lag} s outside [{oldest_left}, {true_age}] s"
    );
}

#[tokio::test]
async fn run_loop_publishes_reports_until_cancelled() {
    let topic = support::random_name("backlog-run");
    let name = support::random_name("backlog-run-group");
    support::create_topic(&topic, 1).await;
    produce(&topic, 0, &[now_ms() - 5_000]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 0);

    let mut cfg = config(vec![GroupSelector::Name(name.clone())]);
    cfg.interval = Duration::from_millis(200);
    cfg.backlog_topic = support::random_name("backlog-run-out");
    let monitor = BacklogMonitor::new(cfg).expect("monitor");
    let handle = monitor.handle();
    assert_eq!(handle.snapshot().cycle, 0, "no cycle before the task runs");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(monitor.run(shutdown.clone()));
    support::wait_until_async(Duration::from_secs(60), "two cycles have run", || {
        let handle = handle.clone();
        async move { handle.snapshot().cycle >= 2 }
    })
    .await;
    let json: serde_json::Value =
        serde_json::from_str(&handle.groups_json()).expect("groups JSON parses");
    assert_eq!(json["groups"][0]["group"], name.as_str());
    assert_eq!(json["groups"][0]["offset_lag"], 1);
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("run returns after cancellation")
        .expect("task did not panic");
    assert!(result.is_ok(), "run ended with {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_groups_by_name_and_pattern_each_measured_exactly() {
    const PARTITIONS: i32 = 4;
    const N: i64 = 20;
    const GROUPS: usize = 100;
    let topic = support::random_name("backlog-many");
    let prefix = support::random_name("backlog-many-group");
    support::create_topic(&topic, PARTITIONS).await;
    // Record i of partition p is (1200 − 40·i − p) s old: every offset has its own age,
    // far enough apart that ±1 s pins down the record.
    let base = now_ms();
    let stamp = |p: i32, i: i64| base - 1_200_000 + i * 40_000 - i64::from(p) * 1_000;
    for p in 0..PARTITIONS {
        let stamps: Vec<i64> = (0..N).map(|i| stamp(p, i)).collect();
        produce(&topic, p, &stamps).await;
    }
    // Group g commits offset (g + 3p) mod (N + 1) on partition p: some at the log end
    // (caught up), the others spread over every offset.
    let committed = |g: usize, p: i32| ((g as i64) + 3 * i64::from(p)) % (N + 1);
    let names: Vec<String> = (0..GROUPS).map(|g| format!("{prefix}-{g}")).collect();
    for (g, name) in names.iter().enumerate() {
        let committer = support::consumer(name);
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Offset(committed(g, p)))
                .expect("add partition offset");
        }
        committer
            .commit(&tpl, CommitMode::Sync)
            .expect("synchronous commit");
    }

    // Half by name, half by one pattern.
    let mut selectors: Vec<GroupSelector> = names[..GROUPS / 2]
        .iter()
        .map(|n| GroupSelector::Name(n.clone()))
        .collect();
    let second_half = format!(
        "^{}-({})$",
        regex::escape(&prefix),
        (GROUPS / 2..GROUPS)
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join("|")
    );
    selectors.push(GroupSelector::Pattern(
        regex::Regex::new(&second_half).expect("regex"),
    ));
    let mut monitor = BacklogMonitor::new(config(selectors)).expect("monitor");
    let before = now_ms();
    let report = monitor.poll_once().await.expect("first cycle");
    let after = now_ms();
    assert!(report.commit_log, "committed offsets from the commit log");
    assert!(
        report.missing_groups.is_empty(),
        "{:?}",
        report.missing_groups
    );
    // Every distinct committed record below the log end read once: at most N a partition.
    assert!(
        report.records_read <= (N as usize) * PARTITIONS as usize,
        "{} records read",
        report.records_read
    );
    for (g, name) in names.iter().enumerate() {
        let gr = group(&report, name);
        assert_eq!(gr.partitions.len(), PARTITIONS as usize, "group {name}");
        let mut sum = 0;
        for p in 0..PARTITIONS {
            let c = committed(g, p);
            let part = partition(&gr, &topic, p);
            assert_eq!(part.committed, Some(c), "{name} {topic}/{p}");
            assert_eq!(part.log_end, Some(N), "{name} {topic}/{p}");
            assert_eq!(part.offset_lag, Some(N - c), "{name} {topic}/{p}");
            sum += N - c;
            let lag = part.time_lag_seconds.expect("a time lag");
            if c == N {
                assert_eq!((lag, part.method), (0.0, Method::None), "{name} caught up");
            } else {
                assert_eq!(part.method, Method::Record, "{name} {topic}/{p}");
                let min = (before - stamp(p, c)) as f64 / 1000.0;
                let max = (after - stamp(p, c)) as f64 / 1000.0;
                assert!(
                    lag >= min - 1.0 && lag <= max + 1.0,
                    "{name} {topic}/{p}: time lag {lag} s, record {c} is {min}..{max} s old"
                );
            }
        }
        assert_eq!(gr.offset_lag, sum, "group {name}");
    }

    // Nothing moved: nothing is read again. Then ten groups move on partition 0.
    let again = monitor.poll_once().await.expect("second cycle");
    assert_eq!(again.records_read, 0, "cached records are read again");
    for name in &names[..10] {
        let committer = support::consumer(name);
        commit(&committer, &topic, 0, N - 1);
    }
    let moved = monitor.poll_once().await.expect("third cycle");
    for name in &names[..10] {
        let p = partition(&group(&moved, name), &topic, 0);
        assert_eq!(
            (p.committed, p.offset_lag),
            (Some(N - 1), Some(1)),
            "{name}"
        );
        assert_eq!(p.method, Method::Record, "{name}");
    }
    assert!(
        moved.records_read <= 1,
        "one new committed offset, {} reads",
        moved.records_read
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_monitors_exactly_one_runs_and_the_other_takes_over_when_it_stops() {
    let topic = support::random_name("backlog-elect");
    let name = support::random_name("backlog-elect-group");
    support::create_topic(&topic, 1).await;
    produce(&topic, 0, &[now_ms() - 5_000, now_ms() - 4_000]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 1);

    let election = Election {
        bootstrap_servers: support::bootstrap(),
        properties: [("broker.address.family".to_owned(), "v4".to_owned())].into(),
        group_id: support::random_name("backlog-elect-synclag"),
        topic: support::random_name("backlog-election"),
        session_timeout: Duration::from_secs(6),
        client_id: String::new(),
    };
    let start = |id: &str| {
        let mut cfg = config(vec![GroupSelector::Name(name.clone())]);
        cfg.interval = Duration::from_millis(200);
        cfg.backlog_topic = support::random_name("backlog-elect-out");
        cfg.election = Some(Election {
            client_id: format!("synclag-backlog-{id}"),
            ..election.clone()
        });
        let monitor = BacklogMonitor::new(cfg).expect("monitor");
        let handle = monitor.handle();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(monitor.run(shutdown.clone()));
        (handle, shutdown, task)
    };
    let (a, stop_a, task_a) = start("a");
    let (b, stop_b, task_b) = start("b");
    let both = [a.clone(), b.clone()];
    let never_both = || {
        let leaders = both.iter().filter(|h| h.is_leader()).count();
        assert!(leaders <= 1, "two instances run the monitor at once");
        leaders
    };
    // Both monitors joined the election group and it settled: until then the partition
    // may still move from the first to join to the second.
    let group_probe: rdkafka::consumer::BaseConsumer = support::client_config()
        .create()
        .expect("a client to describe the election group");
    support::wait_until_async(
        Duration::from_secs(60),
        "one monitor is elected and has run, with both in a stable election group",
        || {
            let leaders = never_both();
            let ran = both
                .iter()
                .any(|h| h.is_leader() && h.snapshot().group(&name).is_some());
            let settled = group_probe
                .fetch_group_list(Some(&election.group_id), Duration::from_secs(5))
                .ok()
                .and_then(|list| {
                    list.groups()
                        .first()
                        .map(|g| g.state() == "Stable" && g.members().len() == 2)
                })
                .unwrap_or(false);
            async move { leaders == 1 && ran && settled }
        },
    )
    .await;
    // A while of observations: still one leader, and only it reports groups.
    for _ in 0..40 {
        assert_eq!(never_both(), 1);
        for h in &both {
            if !h.is_leader() {
                let s = h.snapshot();
                assert!(
                    !s.leader && s.summaries().count() == 0,
                    "a follower reports"
                );
                assert_eq!(s.render_prometheus(), "", "a follower exports series");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leader, follower, stop_leader, task_leader, stop_follower, task_follower) =
        if a.is_leader() {
            (a, b, stop_a, task_a, stop_b, task_b)
        } else {
            (b, a, stop_b, task_b, stop_a, task_a)
        };

    // The leader stops: it leaves the group and the other takes over.
    stop_leader.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task_leader)
        .await
        .expect("the stopped monitor returns")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    support::wait_until_async(
        Duration::from_secs(30),
        "the other monitor takes over and measures the group",
        || {
            let leaders = never_both();
            let took_over = follower.is_leader()
                && follower
                    .snapshot()
                    .group(&name)
                    .is_some_and(|g| g.offset_lag == 1);
            async move { leaders == 1 && took_over }
        },
    )
    .await;
    assert!(!leader.is_leader());
    stop_follower.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task_follower)
        .await
        .expect("the second monitor returns")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn without_the_commit_log_offsets_come_from_the_admin_api_for_every_group() {
    let topic = support::random_name("backlog-admin");
    let prefix = support::random_name("backlog-admin-group");
    support::create_topic(&topic, 2).await;
    let base = now_ms() - 60_000;
    for p in 0..2 {
        produce(&topic, p, &[base, base + 1, base + 2, base + 3, base + 4]).await;
    }
    let names: Vec<String> = (0..3).map(|g| format!("{prefix}-{g}")).collect();
    for (g, name) in names.iter().enumerate() {
        let committer = support::consumer(name);
        commit(&committer, &topic, 0, g as i64);
        commit(&committer, &topic, 1, 4 - g as i64);
    }
    let pattern = regex::Regex::new(&format!("^{}-", regex::escape(&prefix))).expect("regex");
    let mut cfg = config(vec![GroupSelector::Pattern(pattern)]);
    cfg.read_commit_log = false;
    let mut monitor = BacklogMonitor::new(cfg).expect("monitor");
    let report = monitor.poll_once().await.expect("cycle");
    assert!(!report.commit_log, "the commit log was not read");
    for (g, name) in names.iter().enumerate() {
        let gr = group(&report, name);
        assert_eq!(gr.error, None, "{name}");
        let p0 = partition(&gr, &topic, 0);
        let p1 = partition(&gr, &topic, 1);
        assert_eq!(
            (p0.committed, p0.offset_lag),
            (Some(g as i64), Some(5 - g as i64))
        );
        assert_eq!(
            (p1.committed, p1.offset_lag),
            (Some(4 - g as i64), Some(1 + g as i64))
        );
        assert_eq!(p0.method, Method::Record);
    }
}

#[tokio::test]
async fn backlog_once_applies_the_reset_policy_from_topology_yaml() {
    let topic = support::random_name("backlog-once");
    let name = support::random_name("backlog-once-group");
    support::create_topic(&topic, 2).await;
    let base = now_ms() - 60_000;
    produce(&topic, 0, &[base, base + 1, base + 2]).await;
    produce(&topic, 1, &[base, base + 1, base + 2, base + 3]).await;
    let committer = support::consumer(&name);
    commit(&committer, &topic, 0, 1);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("topology.yaml");
    let yaml = format!(
        r#"
service: {{ group_id: {name}-synclag }}
kafka: {{ bootstrap_servers: "{bootstrap}", properties: {{ broker.address.family: v4 }} }}
streams:
  - {{ name: orders, topic: {topic}, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
  - {{ name: outbox, topic: {topic}-outbox, format: json, fields: {{ correlation_id: $.id, event_time: $.at }} }}
workflows:
  - name: order_import
    stages: [ {{ name: created, stream: orders }}, {{ name: imported, stream: outbox }} ]
    sla: {{ warn: 5m, critical: 15m }}
    window: 1h
backlog:
  groups: [ {{ name: {name} }} ]
  reset:
    - {{ pattern: "^{name}$", policy: earliest }}
"#,
        bootstrap = support::bootstrap(),
    );
    std::fs::write(&path, yaml).expect("write topology");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synclag"))
        .args(["backlog", "--once", "--config"])
        .arg(&path)
        .output()
        .expect("run synclag backlog --once");
    assert!(
        out.status.success(),
        "synclag backlog --once failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["leader"], true, "{report:#}");
    let g = &report["groups"][0];
    assert_eq!(g["group"], name.as_str());
    assert_eq!(g["reset_policy"], "earliest");
    let parts = g["partitions"].as_array().expect("partitions");
    let p1 = parts
        .iter()
        .find(|p| p["partition"] == 1)
        .expect("partition 1");
    assert_eq!(p1["no_commit"], true);
    assert_eq!(
        p1["offset_lag"], 4,
        "earliest: the whole partition is backlog"
    );
    let p0 = parts
        .iter()
        .find(|p| p["partition"] == 0)
        .expect("partition 0");
    assert_eq!(
        (&p0["committed"], &p0["offset_lag"]),
        (&1.into(), &2.into())
    );
}
