//! Benches of the correlation engine (`cargo bench --bench correlate`).
//!
//! Besides the criterion groups, the binary first prints the memory held per pending
//! correlation at 1M pending, measured with a counting global allocator; pass
//! `--memory-only` to print just that (`cargo bench --bench correlate -- --memory-only`),
//! and the time to restore 1M pending correlations from their durable images.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use dashmap::DashMap;
use hdrhistogram::Histogram;
use synclag::correlate::durable::{self, Image};
use synclag::correlate::{
    Engine, EngineConfig, Origin, SlaPolicy, StageEvent, Timestamps, WorkflowSpec,
};

/// Counts live heap bytes (requested sizes), so the memory figure excludes allocator
/// rounding but includes every container's spare capacity.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIN: i64 = 60_000;

fn config(max_pending: usize) -> EngineConfig {
    let mut cfg = EngineConfig::with_workflows(vec![WorkflowSpec {
        name: "order_import".into(),
        stages: vec!["created".into(), "imported".into()],
        sla: SlaPolicy {
            warn_ms: 5 * MIN,
            critical_ms: 15 * MIN,
            overrides: vec![],
        },
        window_ms: 120 * MIN,
        dimensions: vec!["carrier".into(), "warehouse".into()],
    }]);
    cfg.max_pending = max_pending;
    cfg
}

fn id(i: u64) -> String {
    format!("SO{i:012}")
}

fn event(stage: usize, i: u64, at: i64) -> StageEvent {
    StageEvent {
        workflow: 0,
        stage,
        correlation_id: id(i).into(),
        ts: Timestamps {
            source_event_ms: Some(at),
            kafka_ms: Some(at + 40),
            erp_write_ms: (stage == 1).then_some(at + 10),
            outbox_kafka_ms: (stage == 1).then_some(at + 60),
        },
        dimensions: vec![],
        origin: Origin {
            partition_id: stage as u32,
            offset: i as i64,
        },
    }
}

/// Engine with `n` pending starts, one per millisecond from t = 0.
fn engine_with_pending(n: u64) -> Engine {
    let mut e = Engine::new(&config(2 * n as usize)).unwrap_or_else(|err| panic!("{err}"));
    let mut out = Vec::new();
    for i in 0..n {
        let _ = e.process(event(0, i, i as i64), &mut out);
    }
    e
}

fn memory_report() {
    const N: u64 = 1_000_000;
    let id_bytes = id(0).len() as isize;
    let mut e = Engine::new(&config(2 * N as usize)).unwrap_or_else(|err| panic!("{err}"));
    let mut out = Vec::new();
    // Warm-up correlation so one-off allocations (histogram maps, dimension tables) are
    // not charged to pending entries.
    let _ = e.process(event(0, u64::MAX, 0), &mut out);
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        let _ = e.process(event(0, i, i as i64), &mut out);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let per = (after - before) as f64 / N as f64;
    println!(
        "correlate/memory: {N} pending, {:.1} bytes/pending total, {:.1} bytes/pending beyond the {id_bytes}-byte id",
        per,
        per - id_bytes as f64
    );
    black_box(&e);
}

fn match_path(c: &mut Criterion) {
    const BATCH: u64 = 100_000;
    // Closing records trail their starts by this many correlations, so a realistic
    // in-flight set is pending while the path runs.
    const IN_FLIGHT: u64 = 1_000;
    let mut g = c.benchmark_group("correlate");
    g.throughput(Throughput::Elements(2 * BATCH));
    let mut e = Engine::new(&config(10_000_000)).unwrap_or_else(|err| panic!("{err}"));
    let next = Cell::new(0u64);
    let mut out = Vec::with_capacity(16);
    g.bench_function("match_path", |b| {
        b.iter_batched(
            || {
                let base = next.get();
                next.set(base + BATCH);
                let mut evs = Vec::with_capacity(2 * BATCH as usize);
                for i in base..base + BATCH {
                    evs.push(event(0, i, i as i64));
                    if i >= IN_FLIGHT {
                        evs.push(event(1, i - IN_FLIGHT, i as i64));
                    }
                }
                evs
            },
            |evs| {
                for ev in evs {
                    let _ = e.process(ev, &mut out);
                    out.clear();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn timer_firing(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    // Each step moves the clock 100 ms, so 100 warn deadlines fire (one start per ms).
    const STEP: i64 = 100;
    let mut g = c.benchmark_group("correlate");
    g.sample_size(20);
    g.throughput(Throughput::Elements(STEP as u64));
    g.bench_function("timer_firing_1m_pending", |b| {
        let mut e = engine_with_pending(N);
        let mut now = 5 * MIN;
        let mut out = Vec::with_capacity(256);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if now + STEP >= 5 * MIN + N as i64 {
                    // Every warn has fired; start over with a full store (untimed).
                    e = engine_with_pending(N);
                    now = 5 * MIN;
                }
                now += STEP;
                let t = Instant::now();
                e.advance(now, &mut out);
                total += t.elapsed();
                out.clear();
            }
            total
        })
    });
    g.finish();
}

/// Completes `n` correlations over 20 carrier × 5 warehouse labels and a spread of lags,
/// ids from `first`.
fn complete_labelled(e: &mut Engine, first: u64, n: u64) {
    let mut out = Vec::new();
    for i in first..first + n {
        let mut s = event(0, i, 0);
        s.dimensions = vec![
            (0, format!("carrier{}", i % 20)),
            (1, format!("wh{}", i % 5)),
        ];
        let _ = e.process(s, &mut out);
        let _ = e.process(event(1, i, (i % 600_000) as i64), &mut out);
        out.clear();
    }
}

fn snapshots(c: &mut Criterion) {
    const PER_INTERVAL: u64 = 20_000;
    let mut g = c.benchmark_group("correlate");
    g.sample_size(10);
    let mut e = engine_with_pending(1_000_000);
    let mut out = Vec::new();
    complete_labelled(&mut e, 10_000_000, 200_000);
    e.advance(1_000_000, &mut out);
    let series = e.lag_snapshot(0).len();
    println!("correlate/snapshot: {series} histogram series, 1M pending");
    // Each snapshot closes an interval in which every series recorded lags (a quiet series
    // costs only its skip).
    let mut next = 20_000_000u64;
    let mut now = 0i64;
    g.bench_function("lag_snapshot", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                complete_labelled(&mut e, next, PER_INTERVAL);
                next += PER_INTERVAL;
                now += 1_000;
                let t = Instant::now();
                black_box(e.lag_snapshot(now));
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("pending_status_1m", |b| {
        b.iter(|| black_box(e.pending_status()))
    });
    g.finish();
}

/// The store choice: the same keyed insert / remove / record work on a single-owner map
/// and on a DashMap (which would let several tasks share one store).
fn store_choice(c: &mut Criterion) {
    const N: u64 = 100_000;
    let ids: Vec<Box<[u8]>> = (0..N).map(|i| id(i).into_bytes().into()).collect();
    let mut g = c.benchmark_group("correlate/store_choice");
    g.throughput(Throughput::Elements(2 * N));
    g.bench_function("single_owner", |b| {
        let mut map: hashbrown::HashMap<Box<[u8]>, (i64, i64)> = hashbrown::HashMap::new();
        let mut hist = Histogram::<u64>::new(3).unwrap_or_else(|err| panic!("{err}"));
        b.iter(|| {
            for (i, k) in ids.iter().enumerate() {
                map.insert(k.clone(), (i as i64, 0));
            }
            for (i, k) in ids.iter().enumerate() {
                if let Some((start, _)) = map.remove(k) {
                    let _ = hist.record((i as i64 + 50 - start) as u64);
                }
            }
        })
    });
    for threads in [1usize, 2] {
        g.bench_function(format!("dashmap_{threads}_threads"), |b| {
            let map: DashMap<Box<[u8]>, (i64, i64)> = DashMap::new();
            let hist = Mutex::new(Histogram::<u64>::new(3).unwrap_or_else(|err| panic!("{err}")));
            b.iter(|| {
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (map, hist, ids) = (&map, &hist, &ids);
                        s.spawn(move || {
                            let mine = ids.iter().enumerate().skip(t).step_by(threads);
                            for (i, k) in mine.clone() {
                                map.insert(k.clone(), (i as i64, 0));
                            }
                            for (i, k) in mine {
                                if let Some((_, (start, _))) = map.remove(k) {
                                    if let Ok(mut h) = hist.lock() {
                                        let _ = h.record((i as i64 + 50 - start) as u64);
                                    }
                                }
                            }
                        });
                    }
                })
            })
        });
    }
    g.finish();
}

/// A changelog of `n` pending correlations (with carrier and warehouse), as encoded
/// (key, value) records.
fn changelog_of(n: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut e = Engine::new(&config(2 * n as usize)).unwrap_or_else(|err| panic!("{err}"));
    let mut out = Vec::new();
    for i in 0..n {
        let mut ev = event(0, i, i as i64);
        ev.dimensions = vec![
            (0, format!("carrier-{}", i % 8)),
            (1, format!("WH-{}", i % 20)),
        ];
        let _ = e.process(ev, &mut out);
    }
    e.export_pending()
        .into_iter()
        .map(|p| {
            let key = durable::encode_key("order_import", &p.correlation_id);
            let mut value = Vec::new();
            durable::encode_value(&Image::Pending(p), &mut value);
            (key, value)
        })
        .collect()
}

/// Decodes and restores a changelog into a fresh engine (what a restart does after
/// reading the changelog partitions).
fn restore_all(log: &[(Vec<u8>, Vec<u8>)], n: usize) -> Engine {
    let mut e = Engine::new(&config(2 * n)).unwrap_or_else(|err| panic!("{err}"));
    for (k, v) in log {
        if let Ok(image) = durable::decode(k, v, &["order_import"]) {
            let _ = e.restore(image);
        }
    }
    e
}

/// Correlations restored by the restore bench: 1M under `cargo bench`; a smoke-sized run
/// of the same path when `cargo test --all-targets` runs this target (no `--bench`).
fn restore_size() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        20_000
    }
}

/// 1M pending correlations restored from their images, once, with the heap they take.
fn restore_report() {
    let n = restore_size();
    let log = changelog_of(n);
    let bytes: usize = log.iter().map(|(k, v)| k.len() + v.len()).sum();
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let e = restore_all(&log, n as usize);
    let took = t.elapsed();
    let heap = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(e.pending(), n as usize);
    println!(
        "correlate/restore: {n} pending restored in {:.2} s ({:.2} M/s) from {:.0} MiB of images; engine heap {:.0} MiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64() / 1e6,
        bytes as f64 / (1024.0 * 1024.0),
        heap as f64 / (1024.0 * 1024.0),
    );
    black_box(&e);
}

fn restore(c: &mut Criterion) {
    let n = restore_size();
    let log = changelog_of(n);
    let mut g = c.benchmark_group("correlate");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n));
    g.bench_function("restore_1m_pending", |b| {
        b.iter(|| black_box(restore_all(&log, n as usize).pending()))
    });
    g.finish();
}

criterion_group!(
    benches,
    match_path,
    timer_firing,
    snapshots,
    store_choice,
    restore
);

fn main() {
    memory_report();
    restore_report();
    if std::env::args().any(|a| a == "--memory-only") {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
