//! End offsets of the input partitions, asked for continuously.
//!
//! A breach may be raised as soon as synclag has read every input partition up to an end
//! offset the broker reported *after* the deadline (see `correlate::clock`). The end the
//! consumer learns from its own fetch responses is the high watermark and of unknown age;
//! this asks the brokers directly for the latest offsets of every assigned partition in one
//! batched ListOffsets request per broker, with `read_committed` isolation, so the answer
//! is the last stable offset — transaction markers and aborted records sit below it and
//! count as read once the consumer has moved past them.
//!
//! The request runs on its own client and thread: a slow or unreachable broker delays only
//! the answers (the clock then treats the partitions as unconfirmed), never the pipeline.

use super::Tp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One answer: the wall time just before the request was sent, and the end offsets.
#[derive(Debug, Clone)]
pub struct Ends {
    pub asked_at_ms: i64,
    pub offsets: Vec<(Tp, i64)>,
}

/// How often the ends are asked for; it bounds how late after a deadline a breach can be
/// confirmed on a caught-up partition.
pub const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(2);

/// The partitions to ask about, kept current by the pipeline.
pub type Assigned = Arc<Mutex<Vec<Tp>>>;

/// Starts the prober thread; answers arrive on the returned channel (the newest wins:
/// when the pipeline has not taken the previous one, a new answer is dropped).
pub fn spawn(
    cfg: ClientConfig,
    assigned: Assigned,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Ends>, rdkafka::error::KafkaError> {
    let client: BaseConsumer = cfg.create()?;
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("synclag-ends".into())
        .spawn(move || {
            let mut failures = 0u32;
            while !shutdown.is_cancelled() {
                std::thread::sleep(INTERVAL);
                let tps: Vec<Tp> = assigned.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if tps.is_empty() {
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &tps {
                    let _ = tpl.add_partition_offset(t, *p, Offset::End);
                }
                let asked_at_ms = chrono::Utc::now().timestamp_millis();
                match client.offsets_for_times(tpl, TIMEOUT) {
                    Ok(answer) => {
                        failures = 0;
                        let offsets = answer
                            .elements()
                            .iter()
                            .filter(|e| e.error().is_ok())
                            .filter_map(|e| match e.offset() {
                                Offset::Offset(o) => {
                                    Some(((e.topic().to_string(), e.partition()), o))
                                }
                                _ => None,
                            })
                            .collect();
                        if tx
                            .try_send(Ends {
                                asked_at_ms,
                                offsets,
                            })
                            .is_err()
                            && tx.is_closed()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(50) {
                            tracing::warn!(error = %e, failures, "cannot read input end offsets; the clock treats inputs as unconfirmed");
                        }
                    }
                }
            }
        })
        .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
    Ok(rx)
}
