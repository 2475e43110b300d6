//! The loop that drives a [`Simulator`] with a [`Clock`] into a [`RecordSink`]: hands over
//! due records, writes ground truth, prints a progress line every second.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::engine::{SimError, Simulator};
use super::plan::GroundTruth;
use super::sink::{RecordSink, SinkError, SinkStats};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How far the clock moves between rounds: a real clock sleeps this long, a
    /// simulated one jumps this far.
    pub step: Duration,
    /// Print a progress line to stderr every wall-clock second.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            step: Duration::from_millis(50),
            progress: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub correlations: u64,
    /// Records handed to the sink.
    pub records: u64,
    pub signals: u64,
    pub sink: SinkStats,
    /// Ground-truth lines written (every correlation, completed or cut off).
    pub ground_truth: u64,
}

/// A run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Writing the ground-truth file failed; retryable once the disk has room.
    #[error("cannot write the ground truth: {0}")]
    GroundTruth(#[source] std::io::Error),
}

/// Runs the simulator until it is done, then flushes the sink and writes the ground
/// truth of the correlations still in flight (marked `cut_off`).
pub async fn run<C: Clock, S: RecordSink>(
    sim: &mut Simulator,
    clock: &C,
    sink: &mut S,
    ground_truth: Option<&mut (dyn Write + Send)>,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    run_until(
        sim,
        clock,
        sink,
        ground_truth,
        options,
        &CancellationToken::new(),
    )
    .await
}

/// [`run`], stopped early when `stop` is cancelled: what is due by then is produced, and
/// every correlation still in flight is written to the ground truth as `cut_off`.
pub async fn run_until<C: Clock, S: RecordSink>(
    sim: &mut Simulator,
    clock: &C,
    sink: &mut S,
    mut ground_truth: Option<&mut (dyn Write + Send)>,
    options: &RunOptions,
    stop: &CancellationToken,
) -> Result<RunSummary, RunError> {
    let mut summary = RunSummary::default();
    let mut last_report = Instant::now();
    let mut last_records = 0u64;
    let mut late = Lateness::default();
    loop {
        let now = clock.now();
        for record in sim.advance_to(now)? {
            if clock.is_real() {
                late.sent(&record, clock.now().timestamp_millis());
            }
            sink.send(record).await?;
        }
        write_truth(
            &mut ground_truth,
            late.stamp(sim.take_finished()),
            &mut summary,
        )?;
        if sim.is_done(now) || stop.is_cancelled() {
            break;
        }
        if options.progress && last_report.elapsed() >= Duration::from_secs(1) {
            let records = sim.counters().records;
            let rate = (records - last_records) as f64 / last_report.elapsed().as_secs_f64();
            progress_line(sim, clock, sink.stats(), rate);
            last_records = records;
            last_report = Instant::now();
        }
        tokio::select! {
            _ = clock.tick(options.step) => {}
            _ = stop.cancelled() => {}
        }
    }
    sink.flush().await?;
    write_truth(&mut ground_truth, late.stamp(sim.finish()), &mut summary)?;
    if let Some(w) = ground_truth.as_mut() {
        w.flush().map_err(RunError::GroundTruth)?;
    }
    let c = sim.counters();
    summary.correlations = c.correlations_started;
    summary.records = c.records;
    summary.signals = c.signals;
    summary.sink = sink.stats();
    if options.progress {
        progress_line(sim, clock, summary.sink, 0.0);
    }
    Ok(summary)
}

/// How late each correlation's records were handed to the sink on the wall clock, until
/// its ground truth is written (a simulated clock is never behind).
#[derive(Default)]
struct Lateness {
    by_correlation: std::collections::HashMap<String, i64>,
}

impl Lateness {
    fn sent(&mut self, record: &super::SimRecord, now_ms: i64) {
        let behind = now_ms - record.timestamp_ms;
        // Stage records only: the ground truth is written after the last of them.
        let stage = matches!(record.origin.kind, super::OriginKind::Stage { .. });
        if stage && behind > 0 {
            let e = self
                .by_correlation
                .entry(record.origin.correlation_id.clone())
                .or_default();
            *e = (*e).max(behind);
        }
    }

    fn stamp(&mut self, mut truths: Vec<GroundTruth>) -> Vec<GroundTruth> {
        for t in &mut truths {
            if let Some(ms) = self.by_correlation.remove(&t.correlation_id) {
                t.produced_late_ms = ms;
            }
        }
        truths
    }
}

fn write_truth(
    out: &mut Option<&mut (dyn Write + Send)>,
    truths: Vec<GroundTruth>,
    summary: &mut RunSummary,
) -> Result<(), RunError> {
    let Some(w) = out.as_mut() else {
        summary.ground_truth += truths.len() as u64;
        return Ok(());
    };
    for t in truths {
        let line = serde_json::to_string(&t)
            .map_err(|e| RunError::GroundTruth(std::io::Error::other(e)))?;
        w.write_all(line.as_bytes())
            .map_err(RunError::GroundTruth)?;
        w.write_all(b"\n").map_err(RunError::GroundTruth)?;
        summary.ground_truth += 1;
    }
    Ok(())
}

fn progress_line<C: Clock>(sim: &Simulator, clock: &C, stats: SinkStats, rate: f64) {
    let now = clock.now();
    let c = sim.counters();
    eprintln!(
        "simulate {} [{}] {} rate={:.0}/s produced={} errors={} correlations={} in_flight={}",
        sim.scenario_name(),
        sim.phase_at(now),
        now.format("%H:%M:%S"),
        rate,
        stats.produced,
        stats.errors,
        c.correlations_started,
        c.in_flight,
    );
}
