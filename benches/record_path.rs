//! The whole per-record path of `synclag run` on one core, in input events per second:
//! record bytes → decoded → classified → engine → outcomes → encoded breach events, with
//! the Prometheus recorder installed as in the service. The records are those of the load
//! workload (`benches/workload`), so this is the CPU cost behind `service_load`'s numbers
//! without Kafka around it.
//!
//! ```text
//! cargo bench --bench record_path
//! ```
//!
//! The engine clock follows the records' event time (as it does while the service reads a
//! backlog), advanced and released every [`TICK_RECORDS`] records the way the service's
//! tick does, so breaches fire and are encoded at the workload's rate.

#[path = "workload/mod.rs"]
mod workload;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use std::collections::HashMap;
use std::sync::Arc;
use synclag::config::Topology;
use synclag::correlate::{Engine, Origin, Outcome};
use synclag::decode::{Decoder, RecordView};
use synclag::emit::events::BreachEvent;
use synclag::rules::{Masker, Rules, SignalBook};
use synclag::service::outcomes::{Context, Outcomes};

/// Correlations per measured batch (≈ 1.97 records each).
const CORRELATIONS: u64 = 50_000;
/// Records between two clock advances (the service advances on a 100 ms tick; at a few
/// hundred thousand records per second that is tens of thousands of records).
const TICK_RECORDS: usize = 2_048;

struct Input {
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
    offset: i64,
}

/// Everything the service's pipeline task owns that a record passes through.
struct Path {
    topology: Arc<Topology>,
    decoder: Decoder,
    rules: Rules,
    engine: Engine,
    outcomes: Outcomes,
    signals: SignalBook,
    out: Vec<Outcome>,
    events: Vec<BreachEvent>,
    encoded: Vec<u8>,
    encoded_events: u64,
}

impl Path {
    fn new(topology: &Arc<Topology>) -> Path {
        let mut engine = Engine::new(&Rules::engine_config(topology))
            .unwrap_or_else(|e| panic!("engine config: {e}"));
        engine.open_lag_interval(0);
        Path {
            topology: topology.clone(),
            decoder: Decoder::new(topology),
            rules: Rules::new(topology),
            engine,
            outcomes: Outcomes::new(topology.clone(), Masker::off()),
            signals: SignalBook::new(10_000),
            out: Vec::new(),
            events: Vec::new(),
            encoded: Vec::with_capacity(4096),
            encoded_events: 0,
        }
    }

    fn record(&mut self, input: &Input, partition_id: u32) {
        let record = RecordView {
            topic: &input.topic,
            partition: 0,
            offset: input.offset,
            key: Some(&input.key),
            payload: Some(&input.value),
            headers: &[],
            timestamp_ms: Some(input.timestamp_ms),
        };
        let decoded = match self.decoder.decode_ready(&record) {
            Some(Ok(d)) => d,
            other => panic!("workload record does not decode: {other:?}"),
        };
        let origin = Origin {
            partition_id,
            offset: input.offset,
        };
        for ev in self.rules.stage_events(&decoded, origin) {
            self.outcomes.note_stage(&ev);
            let (workflow, stage, at) = (ev.workflow, ev.stage, ev.ts.occurrence_ms());
            if self.engine.process(ev, &mut self.out).is_ok() && stage == 0 {
                if let Some(at) = at {
                    self.outcomes.note_started(workflow, at);
                }
            }
        }
        self.outcomes.take(&mut self.out, 0);
    }

    /// What the service's tick does: advance the clock, release and encode what is due.
    fn tick(&mut self, now_ms: i64) {
        self.engine.advance(now_ms, &mut self.out);
        self.outcomes.take(&mut self.out, 0);
        let stalled = HashMap::new();
        let ctx = Context {
            signals: &self.signals,
            backlogged: &[],
            stalled: &stalled,
            wall_ms: now_ms,
        };
        self.outcomes
            .release(self.engine.now(), false, &ctx, &mut self.events);
        for ev in self.events.drain(..) {
            self.encoded.clear();
            if let Err(e) = ev.encode_json(&mut self.encoded) {
                panic!("breach event does not encode: {e}");
            }
            self.encoded_events += 1;
        }
    }

    fn run(&mut self, inputs: &[Input]) -> u64 {
        let mut watermark = i64::MIN;
        for (n, input) in inputs.iter().enumerate() {
            self.record(
                input,
                u32::from(input.topic != self.topology.streams[0].topic),
            );
            watermark = watermark.max(input.timestamp_ms);
            if n % TICK_RECORDS == TICK_RECORDS - 1 {
                self.tick(watermark);
            }
        }
        self.tick(watermark);
        self.encoded_events
    }
}

fn inputs(topology: &Topology) -> Vec<Input> {
    let base = 1_764_230_400_000;
    workload::records(CORRELATIONS, base, 400)
        .enumerate()
        .map(|(n, r)| Input {
            topic: match r.side {
                workload::Side::Created => topology.streams[0].topic.clone(),
                workload::Side::Imported => topology.streams[1].topic.clone(),
            },
            key: r.key.into_bytes(),
            value: r.value.into_bytes(),
            timestamp_ms: r.timestamp_ms,
            offset: n as i64,
        })
        .collect()
}

fn topology() -> Arc<Topology> {
    let yaml = workload::topology_yaml(
        "127.0.0.1:9",
        "bench",
        0,
        "orders.created",
        "odoo.outbox",
        "bench",
    );
    Arc::new(
        Topology::from_yaml_str("record_path", &yaml, Vec::new())
            .unwrap_or_else(|e| panic!("workload topology: {e}")),
    )
}

fn record_path(c: &mut Criterion) {
    if let Err(e) = synclag::telemetry::install() {
        panic!("metrics recorder: {e}");
    }
    let topology = topology();
    let inputs = inputs(&topology);
    // One untimed pass: the workload must raise breaches, or this measures less than the job.
    let events = Path::new(&topology).run(&inputs);
    assert!(
        events > CORRELATIONS / 4,
        "only {events} breach events for {CORRELATIONS} correlations"
    );
    eprintln!(
        "record_path: {} records, {events} encoded breach events per pass",
        inputs.len()
    );
    let mut g = c.benchmark_group("service/record_path");
    g.throughput(Throughput::Elements(inputs.len() as u64));
    g.sample_size(10);
    g.bench_function("json_order_import", |b| {
        b.iter_batched(
            || Path::new(&topology),
            |mut path| {
                path.run(&inputs);
                path // dropped outside the timing
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, record_path);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
