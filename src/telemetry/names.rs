//! Metric names and their descriptions. Add new metrics here, in the block of the
//! module that records them, and describe them in [`describe_all`].

/// Registers the description and unit of every metric with the installed recorder.
pub fn describe_all() {
    // ---- backlog monitor (src/backlog)
    // BACKLOG-DESCRIBE-MARKER

    // ---- pipeline (src/ingest, src/decode, src/correlate, src/emit)
    // PIPELINE-DESCRIBE-MARKER
}

// ---- backlog monitor (src/backlog)
// BACKLOG-NAMES-MARKER

// ---- pipeline (src/ingest, src/decode, src/correlate, src/emit)
// PIPELINE-NAMES-MARKER
