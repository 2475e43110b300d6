//! The binary records of the stages topic (see the module docs of [`crate::route`]).
//!
//! Workflows, stages, dimensions and streams travel by name, not by index: during a
//! rolling deploy the reader and the engine of one key may run different topologies, and
//! a name that no longer exists is rejected with the reason instead of being read as
//! another stage. Integers are big-endian; version 1.
//!
//! ```text
//! stage key      = the changelog key: 0x01 | u16 workflow length | workflow | correlation id
//! stage value    = 0x01 | 0x01 | str8 stage | u8 present | i64 × present | u8 n × (str8 dimension | str16 value)
//!                  | input
//! progress key   = 0x10 | str16 topic | i32 partition
//! progress value = 0x01 | 0x02 | i64 position | i64 record time | i64 confirmed at
//!                  | i64 progress at | i64 waiting since
//! signal key     = 0x11 | str16 stream | signal id bytes
//! signal value   = 0x01 | 0x03 | str16 kind | input
//! input          = str16 topic | i32 partition | i64 offset | i64 record time
//! ```
//!
//! `present` has a bit per timestamp (source event, Kafka, ERP write, outbox Kafka); a
//! time that is not known is `i64::MIN`.

use crate::config::Topology;
use crate::correlate::durable::{self, put_str16, ImageError, Reader};
use crate::correlate::{CorrelationId, Origin, StageEvent, Timestamps};

const VERSION: u8 = 1;
const KIND_STAGE: u8 = 1;
const KIND_PROGRESS: u8 = 2;
const KIND_SIGNAL: u8 = 3;
const KEY_PROGRESS: u8 = 0x10;
const KEY_SIGNAL: u8 = 0x11;

/// Why a stages-topic record could not be read. None is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("stages record: {0}")]
    Bytes(#[from] ImageError),
    #[error("stages record: unknown record kind {0}")]
    Kind(u8),
    #[error("stages record: workflow `{0}` is not configured")]
    Workflow(String),
    #[error("stages record: workflow `{workflow}` has no stage `{stage}`")]
    Stage { workflow: String, stage: String },
    #[error("stages record: workflow `{workflow}` has no dimension `{dimension}`")]
    Dimension { workflow: String, dimension: String },
    #[error("stages record: stream `{0}` is not configured")]
    Stream(String),
    #[error("stages record: {0} bytes after the end")]
    Trailing(usize),
}

/// The names the records carry, in topology order.
#[derive(Debug, Clone)]
pub struct Names {
    workflows: Vec<String>,
    stages: Vec<Vec<String>>,
    dimensions: Vec<Vec<String>>,
    streams: Vec<String>,
}

impl Names {
    pub fn new(topology: &Topology) -> Names {
        Names {
            workflows: topology.workflows.iter().map(|w| w.name.clone()).collect(),
            stages: topology
                .workflows
                .iter()
                .map(|w| w.stages.iter().map(|s| s.name.clone()).collect())
                .collect(),
            dimensions: topology
                .workflows
                .iter()
                .map(|w| w.dimensions.clone())
                .collect(),
            streams: topology.streams.iter().map(|s| s.name.clone()).collect(),
        }
    }

    fn workflow(&self, i: usize) -> &str {
        self.workflows.get(i).map_or("", String::as_str)
    }
}

/// The input record a routed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The input record's Kafka timestamp (`i64::MIN`: none).
    pub timestamp_ms: i64,
}

/// How far a reader has read one input partition (what its own clock knows of it, see
/// `correlate::clock::PartView`); `i64::MIN`: not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub topic: String,
    pub partition: i32,
    /// The next offset the reader processes: every record before it is routed (`-1`:
    /// none read yet).
    pub position: i64,
    /// Largest Kafka time of a record processed.
    pub record_ms: i64,
    /// Latest wall time the reader had read the partition to its end offset as asked
    /// for then.
    pub confirmed_ms: i64,
    /// Wall time of the partition's last movement at the reader.
    pub progress_ms: i64,
    /// Since when a record of it waits (for the registry) at the reader.
    pub waiting_since_ms: i64,
}

/// A cause-evidence record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedSignal {
    /// Stream index.
    pub stream: usize,
    pub id: CorrelationId,
    pub kind: String,
    pub input: InputRef,
}

/// A decoded stages-topic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// A stage event; its `origin` is left for the reader of the stages topic to set.
    Stage(StageEvent, InputRef),
    Progress(Progress),
    Signal(RoutedSignal),
}

fn put_str8(s: &str, out: &mut Vec<u8>) {
    let s = durable::prefix_within(s, usize::from(u8::MAX));
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn str8<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a str, ImageError> {
    let len = usize::from(r.u8()?);
    std::str::from_utf8(r.take(len)?)
        .map_err(|_| ImageError::Invalid(format!("{what} is not UTF-8")))
}

fn put_input(input: &InputRef, out: &mut Vec<u8>) {
    put_str16(&input.topic, out);
    out.extend_from_slice(&input.partition.to_be_bytes());
    out.extend_from_slice(&input.offset.to_be_bytes());
    out.extend_from_slice(&input.timestamp_ms.to_be_bytes());
}

fn input(r: &mut Reader<'_>) -> Result<InputRef, ImageError> {
    Ok(InputRef {
        topic: r.str16("input topic")?.to_string(),
        partition: r.i32()?,
        offset: r.i64()?,
        timestamp_ms: r.i64()?,
    })
}

/// Encodes a stage event into `key` and `value` (both cleared first).
pub fn encode_stage(
    names: &Names,
    ev: &StageEvent,
    from: &InputRef,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    key.clear();
    key.extend_from_slice(&durable::encode_key(
        names.workflow(ev.workflow),
        ev.correlation_id.as_bytes(),
    ));
    value.clear();
    value.push(VERSION);
    value.push(KIND_STAGE);
    let stage = names
        .stages
        .get(ev.workflow)
        .and_then(|s| s.get(ev.stage))
        .map_or("", String::as_str);
    put_str8(stage, value);
    let times = [
        ev.ts.source_event_ms,
        ev.ts.kafka_ms,
        ev.ts.erp_write_ms,
        ev.ts.outbox_kafka_ms,
    ];
    let present =
        times.iter().enumerate().fold(
            0u8,
            |bits, (i, t)| if t.is_some() { bits | 1 << i } else { bits },
        );
    value.push(present);
    for t in times.into_iter().flatten() {
        value.extend_from_slice(&t.to_be_bytes());
    }
    let dims = names.dimensions.get(ev.workflow);
    let n = ev.dimensions.len().min(usize::from(u8::MAX));
    value.push(n as u8);
    for (d, v) in &ev.dimensions[..n] {
        let name = dims.and_then(|ds| ds.get(*d)).map_or("", String::as_str);
        put_str8(name, value);
        put_str16(v, value);
    }
    put_input(from, value);
}

/// Encodes a progress record.
pub fn encode_progress(p: &Progress, key: &mut Vec<u8>, value: &mut Vec<u8>) {
    key.clear();
    key.push(KEY_PROGRESS);
    put_str16(&p.topic, key);
    key.extend_from_slice(&p.partition.to_be_bytes());
    value.clear();
    value.push(VERSION);
    value.push(KIND_PROGRESS);
    for v in [
        p.position,
        p.record_ms,
        p.confirmed_ms,
        p.progress_ms,
        p.waiting_since_ms,
    ] {
        value.extend_from_slice(&v.to_be_bytes());
    }
}

/// Encodes a signal record.
pub fn encode_signal(names: &Names, s: &RoutedSignal, key: &mut Vec<u8>, value: &mut Vec<u8>) {
    key.clear();
    key.push(KEY_SIGNAL);
    put_str16(names.streams.get(s.stream).map_or("", String::as_str), key);
    key.extend_from_slice(s.id.as_bytes());
    value.clear();
    value.push(VERSION);
    value.push(KIND_SIGNAL);
    put_str16(&s.kind, value);
    put_input(&s.input, value);
}

/// Decodes a stages-topic record against this instance's topology.
pub fn decode(names: &Names, key: &[u8], value: &[u8]) -> Result<Routed, RouteError> {
    let mut r = Reader::new(value);
    let version = r.u8()?;
    if version != VERSION {
        return Err(ImageError::Version(version).into());
    }
    let routed = match r.u8()? {
        KIND_STAGE => decode_stage(names, key, &mut r)?,
        KIND_PROGRESS => {
            let mut k = Reader::new(key);
            if k.u8()? != KEY_PROGRESS {
                return Err(ImageError::Invalid("progress record with a stage key".into()).into());
            }
            let topic = k.str16("input topic")?.to_string();
            let partition = k.i32()?;
            if !k.is_done() {
                return Err(RouteError::Trailing(key.len() - k.pos));
            }
            Routed::Progress(Progress {
                topic,
                partition,
                position: r.i64()?,
                record_ms: r.i64()?,
                confirmed_ms: r.i64()?,
                progress_ms: r.i64()?,
                waiting_since_ms: r.i64()?,
            })
        }
        KIND_SIGNAL => {
            let mut k = Reader::new(key);
            if k.u8()? != KEY_SIGNAL {
                return Err(
                    ImageError::Invalid("signal record without a signal key".into()).into(),
                );
            }
            let name = k.str16("stream name")?;
            let stream = names
                .streams
                .iter()
                .position(|s| s == name)
                .ok_or_else(|| RouteError::Stream(name.to_string()))?;
            let id = CorrelationId::from(k.rest());
            Routed::Signal(RoutedSignal {
                stream,
                id,
                kind: r.str16("signal kind")?.to_string(),
                input: input(&mut r)?,
            })
        }
        other => return Err(RouteError::Kind(other)),
    };
    if !r.is_done() {
        return Err(RouteError::Trailing(value.len() - r.pos));
    }
    Ok(routed)
}

fn decode_stage(names: &Names, key: &[u8], r: &mut Reader<'_>) -> Result<Routed, RouteError> {
    let (workflow_name, id) = durable::decode_key(key)?;
    let workflow = names
        .workflows
        .iter()
        .position(|w| w == workflow_name)
        .ok_or_else(|| RouteError::Workflow(workflow_name.to_string()))?;
    let stage_name = str8(r, "stage name")?;
    let stage = names.stages[workflow]
        .iter()
        .position(|s| s == stage_name)
        .ok_or_else(|| RouteError::Stage {
            workflow: workflow_name.to_string(),
            stage: stage_name.to_string(),
        })?;
    let present = r.u8()?;
    let mut times = [None; 4];
    for (i, t) in times.iter_mut().enumerate() {
        if present & (1 << i) != 0 {
            *t = Some(r.i64()?);
        }
    }
    let n = r.u8()?;
    let mut dimensions = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let name = str8(r, "dimension name")?;
        let d = names.dimensions[workflow]
            .iter()
            .position(|x| x == name)
            .ok_or_else(|| RouteError::Dimension {
                workflow: workflow_name.to_string(),
                dimension: name.to_string(),
            })?;
        dimensions.push((d, r.str16("dimension value")?.to_string()));
    }
    let from = input(r)?;
    Ok(Routed::Stage(
        StageEvent {
            workflow,
            stage,
            correlation_id: CorrelationId::from(id),
            ts: Timestamps {
                source_event_ms: times[0],
                kafka_ms: times[1],
                erp_write_ms: times[2],
                outbox_kafka_ms: times[3],
            },
            dimensions,
            origin: Origin {
                partition_id: 0,
                offset: 0,
            },
        },
        from,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> Names {
        Names {
            workflows: vec!["order_import".into(), "shipment_status".into()],
            stages: vec![
                vec!["received".into(), "in_odoo".into()],
                vec![
                    "carrier_event".into(),
                    "picking_done".into(),
                    "in_odoo".into(),
                ],
            ],
            dimensions: vec![
                vec!["channel".into()],
                vec!["carrier".into(), "warehouse".into()],
            ],
            streams: vec!["orders".into(), "carrier_health".into()],
        }
    }

    fn input_ref() -> InputRef {
        InputRef {
            topic: "carrier.events".into(),
            partition: 7,
            offset: 123_456,
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn stage(
        workflow: usize,
        stage: usize,
        dims: Vec<(usize, String)>,
        ts: Timestamps,
    ) -> StageEvent {
        StageEvent {
            workflow,
            stage,
            correlation_id: CorrelationId::from("TRK-ÄÖ-1"),
            ts,
            dimensions: dims,
            origin: Origin {
                partition_id: 0,
                offset: 0,
            },
        }
    }

    fn round_trip(ev: &StageEvent) -> Result<Routed, RouteError> {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        encode_stage(&names(), ev, &input_ref(), &mut k, &mut v);
        decode(&names(), &k, &v)
    }

    #[test]
    fn a_stage_keeps_its_key_times_dimensions_and_input() {
        let ev = stage(
            1,
            2,
            vec![(1, "WH-ÄMS".into()), (0, "DHL".into())],
            Timestamps {
                source_event_ms: Some(1_700_000_000_000),
                kafka_ms: None,
                erp_write_ms: Some(-5),
                outbox_kafka_ms: Some(i64::MAX),
            },
        );
        assert_eq!(round_trip(&ev), Ok(Routed::Stage(ev.clone(), input_ref())));
        // The key is the changelog's: same partition for the stages and the state.
        let (mut k, mut v) = (Vec::new(), Vec::new());
        encode_stage(&names(), &ev, &input_ref(), &mut k, &mut v);
        assert_eq!(
            k,
            durable::encode_key("shipment_status", "TRK-ÄÖ-1".as_bytes())
        );
    }

    #[test]
    fn progress_and_signals_round_trip() {
        let p = Progress {
            topic: "orders".into(),
            partition: 3,
            position: 99,
            record_ms: i64::MIN,
            confirmed_ms: 1_700_000_000_000,
            progress_ms: 1_700_000_000_050,
            waiting_since_ms: -7,
        };
        let (mut k, mut v) = (Vec::new(), Vec::new());
        encode_progress(&p, &mut k, &mut v);
        assert_eq!(decode(&names(), &k, &v), Ok(Routed::Progress(p)));
        let s = RoutedSignal {
            stream: 1,
            id: CorrelationId::from("DHL"),
            kind: "throttled".into(),
            input: input_ref(),
        };
        encode_signal(&names(), &s, &mut k, &mut v);
        assert_eq!(decode(&names(), &k, &v), Ok(Routed::Signal(s)));
    }

    #[test]
    fn names_this_topology_lacks_are_rejected_with_the_name() {
        let ev = stage(1, 1, vec![(1, "WH-1".into())], Timestamps::default());
        let (mut k, mut v) = (Vec::new(), Vec::new());
        encode_stage(&names(), &ev, &input_ref(), &mut k, &mut v);
        let mut other = names();
        other.stages[1][1] = "picked".into();
        assert_eq!(
            decode(&other, &k, &v),
            Err(RouteError::Stage {
                workflow: "shipment_status".into(),
                stage: "picking_done".into()
            })
        );
        let mut other = names();
        other.dimensions[1].truncate(1);
        assert!(matches!(
            decode(&other, &k, &v),
            Err(RouteError::Dimension { .. })
        ));
        let mut other = names();
        other.workflows[1] = "returns".into();
        assert_eq!(
            decode(&other, &k, &v),
            Err(RouteError::Workflow("shipment_status".into()))
        );
        // Every truncation and any extra byte is an error, never a panic.
        for cut in 0..v.len() {
            assert!(decode(&names(), &k, &v[..cut]).is_err(), "cut at {cut}");
        }
        v.push(0);
        assert_eq!(decode(&names(), &k, &v), Err(RouteError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn stages_round_trip(
            workflow in 0usize..2,
            stage_pick in 0usize..3,
            id in proptest::collection::vec(any::<u8>(), 1..64),
            times in proptest::array::uniform4(proptest::option::of(any::<i64>())),
            dim in proptest::option::of("\\PC{0,40}"),
        ) {
            let n_stages = names().stages[workflow].len();
            let mut ev = stage(workflow, stage_pick % n_stages, Vec::new(), Timestamps {
                source_event_ms: times[0],
                kafka_ms: times[1],
                erp_write_ms: times[2],
                outbox_kafka_ms: times[3],
            });
            ev.correlation_id = CorrelationId::from(id);
            if let Some(d) = dim {
                ev.dimensions.push((0, d));
            }
            prop_assert_eq!(round_trip(&ev), Ok(Routed::Stage(ev.clone(), input_ref())));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(
            key in proptest::collection::vec(any::<u8>(), 0..48),
            value in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let _ = decode(&names(), &key, &value);
            let mut v = vec![VERSION, KIND_STAGE];
            v.extend_from_slice(&value);
            let _ = decode(&names(), &key, &v);
        }
    }
}
