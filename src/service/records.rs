//! The per-record path: decode, classify, feed the engine — and what happens when a record
//! cannot be decoded yet.
//!
//! A record whose schema the registry must provide and that does not answer within
//! [`DECODE_WAIT`] is *held*: its partition is paused behind it (records after it are
//! fetched again from there on resume), the decode is retried off the pipeline task with
//! backoff, and the clock knows the partition waits. Every other partition, the tick and
//! the timers go on; nothing is dropped and nothing is dead-lettered for an outage.

use super::{pause, resume, wall_ms, Pipeline};
use crate::config::Role;
use crate::correlate::Origin;
use crate::correlate::StageEvent;
use crate::decode::{DecodeError, Decoded, Decoder, RecordView};
use crate::emit::emitter::{DeadLetter, Output};
use crate::ingest::IngestContext;
use crate::telemetry::names;
use metrics::Counter;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a decode may wait for the registry on the pipeline task before the record is
/// held and retried off it.
const DECODE_WAIT: Duration = Duration::from_millis(50);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Records of one paused partition waiting to be decoded, oldest first.
pub struct Held {
    records: VecDeque<OwnedMessage>,
    backoff: Duration,
}

impl Held {
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// What the per-record path keeps between records so a record allocates and looks up
/// nothing it did for the one before: counter handles by input partition, the stage
/// event buffer.
#[derive(Default)]
pub struct Hot {
    /// `synclag_records_consumed_total{topic}` by input partition id.
    consumed: Vec<Option<Counter>>,
    stage_events: Vec<StageEvent>,
}

impl Hot {
    fn consumed(&mut self, pid: u32, topic: &str) -> &Counter {
        let i = pid as usize;
        if self.consumed.len() <= i {
            self.consumed.resize_with(i + 1, || None);
        }
        self.consumed[i].get_or_insert_with(
            || metrics::counter!(names::RECORDS_CONSUMED_TOTAL, "topic" => topic.to_string()),
        )
    }
}

/// The result of a decode retried off the pipeline task.
pub struct Retry {
    partition_id: u32,
    offset: i64,
    result: Result<Decoded, DecodeError>,
}

/// Headers as the decoder reads them.
fn header_list<M: Message>(m: &M) -> Vec<(String, Option<&[u8]>)> {
    m.headers()
        .map(|h| h.iter().map(|x| (x.key.to_string(), x.value)).collect())
        .unwrap_or_default()
}

pub(super) fn view<'a, M: Message>(
    m: &'a M,
    headers: &'a [(String, Option<&'a [u8]>)],
) -> RecordView<'a> {
    RecordView {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        payload: m.payload(),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}

impl Pipeline {
    /// A record from the consumer.
    pub(super) async fn on_message(
        &mut self,
        m: &BorrowedMessage<'_>,
        consumer: &StreamConsumer<IngestContext>,
    ) {
        let pid = self.offsets.id(m.topic(), m.partition());
        self.hot.consumed(pid, m.topic()).increment(1);
        if self.route.as_ref().is_some_and(|r| r.is_stages(m.topic())) {
            self.on_routed(m, consumer);
            return;
        }
        if let Some(held) = self.held.get_mut(&pid) {
            // Fetched before the pause took effect: it waits behind the held one.
            held.records.push_back(m.detach());
            return;
        }
        if self.waits_for_clock(pid) {
            self.wait_for_clock(pid, m.detach(), consumer);
            return;
        }
        self.take(pid, m, || m.detach(), consumer).await;
    }

    /// Decodes and processes a record of input partition `pid`, or holds it (`own` makes
    /// the copy kept) when the registry does not answer in time.
    async fn take<M: Message>(
        &mut self,
        pid: u32,
        m: &M,
        own: impl FnOnce() -> OwnedMessage,
        consumer: &StreamConsumer<IngestContext>,
    ) {
        let headers = header_list(m);
        let record = view(m, &headers);
        // Formats that need no registry decode at once: no future, no timer.
        if let Some(result) = self.decoder.decode_ready(&record) {
            self.process(pid, &record, result);
            return;
        }
        match tokio::time::timeout(DECODE_WAIT, self.decoder.decode(&record)).await {
            Ok(Err(e)) if e.is_retryable() => self.hold(pid, own(), consumer),
            Err(_) => self.hold(pid, own(), consumer),
            Ok(result) => self.process(pid, &record, result),
        }
    }

    /// Processes the records that waited for the clock, for every partition back within
    /// the read-ahead, in offset order, as they would have been when read; stops where
    /// outputs hold input back or a partition runs ahead again (the rest waits on), and
    /// moves the clock along as the reading loop does.
    pub(super) async fn replay_paced(&mut self, consumer: &StreamConsumer<IngestContext>) {
        while let Some(pid) = self.replay.pop_first() {
            loop {
                if self.paused_for_output {
                    self.replay.insert(pid);
                    return;
                }
                if self.clock.is_paced(pid) || self.held.contains_key(&pid) {
                    break;
                }
                let Some(record) = self.paced.get_mut(&pid).and_then(VecDeque::pop_front) else {
                    self.paced.remove(&pid);
                    break;
                };
                self.take(pid, &record, || record.clone(), consumer).await;
                self.advance_clock_when_due(Instant::now(), consumer);
            }
        }
    }

    /// Pauses the record's partition behind it and retries its decode off the task.
    fn hold(&mut self, pid: u32, record: OwnedMessage, consumer: &StreamConsumer<IngestContext>) {
        let tp = (record.topic().to_string(), record.partition());
        tracing::warn!(partition = %format!("{}[{}]", tp.0, tp.1), offset = record.offset(), "record waits for the schema registry; its partition is paused, the rest goes on");
        pause(consumer, &[tp]);
        self.clock.wait(pid, wall_ms());
        let held = self.held.entry(pid).or_insert_with(|| Held {
            records: VecDeque::new(),
            backoff: RETRY_FIRST,
        });
        held.records.push_front(record);
        // Records that waited for the clock come after it.
        if let Some(waiting) = self.paced.remove(&pid) {
            held.records.extend(waiting);
        }
        self.replay.remove(&pid);
        self.schedule_retry(pid);
    }

    fn schedule_retry(&mut self, pid: u32) {
        let Some(held) = self.held.get_mut(&pid) else {
            return;
        };
        let Some(head) = held.records.front().cloned() else {
            return;
        };
        let delay = held.backoff + jitter(held.backoff);
        held.backoff = (held.backoff * 2).min(RETRY_MAX);
        metrics::counter!(names::REGISTRY_RETRIES_TOTAL).increment(1);
        let decoder: Arc<Decoder> = self.decoder.clone();
        let tx = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let headers = header_list(&head);
            let result = decoder.decode(&view(&head, &headers)).await;
            let _ = tx
                .send(Retry {
                    partition_id: pid,
                    offset: head.offset(),
                    result,
                })
                .await;
        });
    }

    /// A retried decode finished: process the held records it unblocks, in order, and
    /// resume the partition once none waits.
    pub(super) async fn on_retry(
        &mut self,
        retry: Retry,
        consumer: &StreamConsumer<IngestContext>,
    ) {
        let pid = retry.partition_id;
        let Some(held) = self.held.get_mut(&pid) else {
            return; // revoked meanwhile
        };
        if held.records.front().map(Message::offset) != Some(retry.offset) {
            return;
        }
        if matches!(&retry.result, Err(e) if e.is_retryable()) {
            self.schedule_retry(pid);
            return;
        }
        let mut result = Some(retry.result);
        loop {
            let Some(held) = self.held.get_mut(&pid) else {
                return;
            };
            let Some(record) = held.records.pop_front() else {
                break;
            };
            let headers = header_list(&record);
            let v = view(&record, &headers);
            let decoded = match result.take() {
                Some(r) => r,
                None => match tokio::time::timeout(DECODE_WAIT, self.decoder.decode(&v)).await {
                    Ok(r) if !matches!(&r, Err(e) if e.is_retryable()) => r,
                    _ => {
                        drop(headers);
                        if let Some(held) = self.held.get_mut(&pid) {
                            held.records.push_front(record);
                        }
                        self.schedule_retry(pid);
                        return;
                    }
                },
            };
            self.process(pid, &v, decoded);
        }
        self.held.remove(&pid);
        self.clock.resume(pid, wall_ms());
        if let Some(tp) = self.offsets.tp(pid).cloned() {
            tracing::info!(partition = %format!("{}[{}]", tp.0, tp.1), "waiting records processed; partition resumed");
            if !self.paused_in_client && !self.paced_in_client.contains(&pid) {
                resume(consumer, &[tp]);
            }
        }
        self.advance_clock(consumer);
    }

    /// A decoded (or undecodable) record: dead letter, signal, or stage events for the
    /// engine. Afterwards the record counts as processed.
    fn process(
        &mut self,
        pid: u32,
        record: &RecordView<'_>,
        decoded: Result<Decoded, DecodeError>,
    ) {
        let wall = wall_ms();
        match decoded {
            Err(e) => {
                metrics::counter!(names::DECODE_ERRORS_TOTAL, "topic" => record.topic.to_string(), "reason" => e.reason()).increment(1);
                self.dead_letter(record, e.reason(), e.to_string());
            }
            Ok(d) if self.topology.streams[d.stream].role == Role::Signals => {
                let stream = &self.topology.streams[d.stream];
                let kind = d.event_type.clone().unwrap_or_else(|| "signal".into());
                let label = self.signal_kinds.label(&stream.name, &kind);
                metrics::counter!(names::SIGNALS_TOTAL, "stream" => stream.name.clone(), "kind" => label).increment(1);
                if self.route.is_some() {
                    self.route_signal(record, d.stream, &d.correlation_id, &kind);
                } else {
                    self.signals.record(d.stream, &d.correlation_id, &kind);
                }
            }
            Ok(d) => {
                let batched = self.batch_observe(&d, record);
                let mut events = std::mem::take(&mut self.hot.stage_events);
                self.rules.stage_events_into(
                    d,
                    Origin {
                        partition_id: pid,
                        offset: record.offset,
                    },
                    &mut events,
                );
                if events.is_empty() && !batched {
                    metrics::counter!(names::UNMATCHED_RECORDS_TOTAL, "topic" => record.topic.to_string())
                        .increment(1);
                }
                if self.route.is_some() {
                    self.route_stages(record, &mut events);
                } else {
                    for ev in events.drain(..) {
                        self.feed(ev, record, None);
                    }
                }
                self.hot.stage_events = events;
                self.take_outcomes();
            }
        }
        self.offsets
            .processed(pid, record.offset, record.timestamp_ms);
        self.clock
            .record(pid, record.offset, record.timestamp_ms, wall);
    }

    /// One stage event into the engine (with `store.repartition`, the engine of stages
    /// partition `task`); one it rejects dead-letters `record` (the input record, or the
    /// stages record it was read from).
    pub(super) fn feed(&mut self, ev: StageEvent, record: &RecordView<'_>, task: Option<i32>) {
        self.outcomes.note_stage(&ev);
        let (workflow, stage) = (ev.workflow, ev.stage);
        let at_ms = ev.ts.occurrence_ms();
        let engine = match task {
            None => &mut self.engine,
            Some(k) => match self.route.as_mut().and_then(|r| r.tasks.get_mut(&k)) {
                Some(t) => &mut t.engine,
                None => return,
            },
        };
        match engine.process(ev, &mut self.out) {
            Ok(()) if stage == 0 => {
                if let Some(at) = at_ms {
                    self.outcomes.note_started(workflow, at);
                }
                self.outcomes.count_stage(workflow, 0);
            }
            Ok(()) => {}
            Err(e) => {
                metrics::counter!(names::REJECTED_EVENTS_TOTAL).increment(1);
                self.dead_letter(record, "rejected", e.to_string());
            }
        }
    }

    /// Hands a copy of `record` to the dead-letter topic (acknowledged before its offset
    /// is committed, see `ingest::commit`).
    pub(super) fn dead_letter(
        &mut self,
        record: &RecordView<'_>,
        reason: &'static str,
        error: String,
    ) {
        let mut letter = DeadLetter::new(record, reason, error);
        crate::dlq::mask::apply(&self.topology, self.outcomes.masker(), &mut letter);
        tracing::debug!(
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            reason,
            error = %letter.error,
            "record sent to the dead-letter topic"
        );
        self.emitter.submit(Output::DeadLetter(Box::new(letter)));
        self.after_submit();
    }
}

/// Up to 25 % random jitter, so many instances do not retry in lockstep.
pub(super) fn jitter(base: Duration) -> Duration {
    let nanos = u64::from(chrono::Utc::now().timestamp_subsec_nanos());
    base.mul_f64((nanos % 250) as f64 / 1000.0)
}
