//! The service's hook points for batch workflows (the logic is in `batch`): a decoded
//! record, a clock step, the state written before each commit, the API and metrics.

use super::{wall_ms, Pipeline};
use crate::batch::glue::BatchOutput;
use crate::decode::{Decoded, RecordView};
use crate::emit::emitter::Output;

impl Pipeline {
    fn batch_now(&self) -> i64 {
        match self.engine_now() {
            i64::MIN => wall_ms(),
            t => t,
        }
    }

    /// A decoded record; returns whether a batch workflow used it.
    pub(super) fn batch_observe(&mut self, d: &Decoded, record: &RecordView<'_>) -> bool {
        if self.batches.book.is_empty() {
            return false;
        }
        let now = self.batch_now();
        let (mut out, mut incidents) = (Vec::new(), Vec::new());
        let used = self.batches.observe(
            d,
            (record.topic, record.partition, record.offset),
            now,
            &mut out,
            &mut incidents,
        );
        self.batch_submit(out, incidents);
        used
    }

    /// The clock moved to `now`.
    pub(super) fn batch_advance(&mut self, now: i64) {
        if self.batches.book.is_empty() {
            return;
        }
        let (mut out, mut incidents) = (Vec::new(), Vec::new());
        self.batches.advance(now, &mut out, &mut incidents);
        self.batch_submit(out, incidents);
    }

    /// Writes changed batch state; called before offsets are offered for commit, so the
    /// commit waits for it.
    pub(super) fn batch_persist(&mut self) {
        let mut out = Vec::new();
        self.batches.persist(&mut out);
        self.batch_submit(out, Vec::new());
    }

    pub(super) fn batch_publish(&mut self) {
        let now = self.batch_now();
        self.batches.publish(now);
    }

    fn batch_submit(
        &mut self,
        out: Vec<BatchOutput>,
        incidents: Vec<crate::emit::events::IncidentEvent>,
    ) {
        if out.is_empty() && incidents.is_empty() {
            return;
        }
        for o in out {
            self.emitter.submit(Output::Batch(o));
        }
        for ev in incidents {
            tracing::info!(kind = %ev.kind, incident_id = %ev.incident_id, workflow = %ev.workflow, cause = %ev.probable_cause, severity = %ev.severity, "batch incident");
            self.emitter.submit(Output::Incident(Box::new(ev)));
        }
        self.after_submit();
    }
}
