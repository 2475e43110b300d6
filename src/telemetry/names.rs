//! Metric names and their descriptions. Add new metrics here, in the block of the
//! module that records them, and describe them in [`describe_all`].

/// Registers the description and unit of every metric with the installed recorder.
pub fn describe_all() {
    // ---- backlog monitor (src/backlog)
    // BACKLOG-DESCRIBE-MARKER
    metrics::describe_gauge!(
        BACKLOG_CYCLE_DURATION,
        metrics::Unit::Seconds,
        "Wall time of the last backlog poll cycle (all watched groups)."
    );
    metrics::describe_counter!(
        BACKLOG_CYCLE_ERRORS,
        metrics::Unit::Count,
        "Backlog poll cycles that failed as a whole (metadata or group list unreadable)."
    );

    // ---- pipeline (src/ingest, src/decode, src/correlate, src/emit)
    // PIPELINE-DESCRIBE-MARKER
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        RECORDS_CONSUMED_TOTAL,
        Unit::Count,
        "Input records read, by topic."
    );
    describe_counter!(
        DECODE_ERRORS_TOTAL,
        Unit::Count,
        "Input records that could not be decoded, by topic and reason."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Records copied to the dead-letter topic, by reason."
    );
    describe_counter!(
        REGISTRY_RETRIES_TOTAL,
        Unit::Count,
        "Decode attempts retried because the schema registry was unavailable."
    );
    describe_counter!(
        UNMATCHED_RECORDS_TOTAL,
        Unit::Count,
        "Decoded records whose event type closes no configured stage, by topic."
    );
    describe_counter!(
        SIGNALS_TOTAL,
        Unit::Count,
        "Error/throttling signals read, by stream and kind."
    );
    describe_counter!(
        STAGE_EVENTS_TOTAL,
        Unit::Count,
        "Stage events reached, by workflow and stage."
    );
    describe_counter!(
        COMPLETED_TOTAL,
        Unit::Count,
        "Correlations that reached their last stage, by workflow."
    );
    describe_counter!(
        BREACHES_TOTAL,
        Unit::Count,
        "SLA breaches raised while pending, by workflow, severity and cause."
    );
    describe_counter!(
        NEVER_ARRIVED_TOTAL,
        Unit::Count,
        "Correlations whose window ended before the last stage, by workflow."
    );
    describe_counter!(LATE_ARRIVALS_TOTAL, Unit::Count, "Stages that arrived after their correlation was declared never_arrived or evicted, by workflow.");
    describe_counter!(
        DUPLICATES_TOTAL,
        Unit::Count,
        "Stage events suppressed as duplicates."
    );
    describe_counter!(
        EVICTED_TOTAL,
        Unit::Count,
        "Pending correlations evicted because the store was full (store.max_pending)."
    );
    describe_counter!(
        REJECTED_EVENTS_TOTAL,
        Unit::Count,
        "Stage events the engine rejected (no usable timestamp), sent to the dead-letter topic."
    );
    describe_counter!(
        DIMENSION_OVERFLOW_TOTAL,
        Unit::Count,
        "Dimension values beyond store.dimension_value_cap, labelled `other`."
    );
    describe_counter!(
        SIGNALS_FORGOTTEN_TOTAL,
        Unit::Count,
        "Correlations dropped from the bounded signal memory."
    );
    describe_histogram!(LAG_SECONDS, Unit::Seconds, "Lag per workflow, stage pair and segment (stage_to_stage, from_first, end_to_end, partner_ingestion, middleware_erp, outbox_cdc).");
    describe_gauge!(
        PENDING_CORRELATIONS,
        Unit::Count,
        "Correlations still waiting for a stage, by workflow and age bucket."
    );
    describe_gauge!(
        STORE_CAPACITY,
        Unit::Count,
        "Bound of the correlation store (store.max_pending)."
    );
    describe_gauge!(
        INPUT_OFFSET,
        Unit::Count,
        "Offset synclag may commit per input partition (never past a pending correlation)."
    );
    describe_gauge!(
        INPUT_LAG_RECORDS,
        Unit::Count,
        "Records not yet read per input partition."
    );
    describe_gauge!(ENGINE_CLOCK_SECONDS, Unit::Seconds, "The engine clock (wall time when caught up, event-time watermark while reading a backlog).");
    describe_gauge!(
        GROUP_MEMBERS,
        Unit::Count,
        "Members of synclag's own consumer group; above 1 means another instance joined."
    );
    describe_counter!(
        OUTPUT_RECORDS_TOTAL,
        Unit::Count,
        "Records written to output topics, by topic and result."
    );
    describe_counter!(
        STAGES_AFTER_COMPLETION_TOTAL,
        Unit::Count,
        "Intermediate stages read after their correlation completed (read order across partitions); no event."
    );
    describe_histogram!(
        OUTPUT_BACKPRESSURE_WAIT_SECONDS,
        Unit::Seconds,
        "Waits over 100 ms of ingestion for the breach emitter's bounded queue (Kafka slower than breaches are raised)."
    );
    describe_gauge!(
        DEFERRED_OUTCOMES,
        Unit::Count,
        "Outcomes waiting for the engine clock to pass their time before they are emitted (non-zero while reading a backlog)."
    );
    describe_counter!(
        OUTPUT_ERRORS_TOTAL,
        Unit::Count,
        "Output events that could not be encoded or delivered, by topic."
    );

    // ---- correlation engine bounds (src/correlate): published from Engine::counters(),
    // Engine::recent_len() and PendingStatus::held
    describe_counter!(
        HELD_STAGES_TOTAL,
        Unit::Count,
        "Stages read before their correlation's start stage and held until it arrives."
    );
    describe_counter!(
        HELD_EXPIRED_TOTAL,
        Unit::Count,
        "Correlations whose start stage never came: held stages reached the end of their window (also counted as never_arrived)."
    );
    describe_gauge!(
        HELD_CORRELATIONS,
        Unit::Count,
        "Pending correlations whose start stage has not been read yet, by workflow."
    );
    describe_counter!(
        STAGES_BEYOND_WINDOW_TOTAL,
        Unit::Count,
        "Stages read before the engine clock reached their window end but that happened after it (a replay reading one partition ahead); reported late at the window end."
    );
    describe_counter!(
        NEGATIVE_LAGS_TOTAL,
        Unit::Count,
        "Lags below zero (clock skew between sources), recorded as 0."
    );
    describe_counter!(
        RECENT_FORGOTTEN_TOTAL,
        Unit::Count,
        "Finished correlations dropped from the bounded memory that recognises their later stages; its size is the engine config's recent_terminal_cap."
    );
    describe_gauge!(
        RECENT_CORRELATIONS,
        Unit::Count,
        "Finished correlations currently remembered to recognise their later stages."
    );
    describe_counter!(
        TIERS_AFTER_WINDOW_TOTAL,
        Unit::Count,
        "SLA tiers not raised because the workflow's window ends before their deadline."
    );
}

// ---- backlog monitor (src/backlog)
// BACKLOG-NAMES-MARKER
// Per group / partition series are rendered by the backlog monitor's own collector
// (`BacklogHandle::render_prometheus`) so that they disappear with their group or topic;
// only the process-level series below go through the `metrics` recorder.
/// Offset lag (log-end − committed) per group/topic/partition.
pub const BACKLOG_OFFSET_LAG: &str = "synclag_backlog_offset_lag_records";
/// Time lag per group/topic/partition, with the `method` that produced it.
pub const BACKLOG_TIME_LAG: &str = "synclag_backlog_time_lag_seconds";
/// Current status of a partition: value 1, the status in the `status` label.
pub const BACKLOG_PARTITION_STATUS: &str = "synclag_backlog_partition_status_info";
/// Current status of a group (its worst partition): value 1, the status in `status`.
pub const BACKLOG_GROUP_STATUS: &str = "synclag_backlog_group_status_info";
/// Sum of a group's offset lag over its partitions.
pub const BACKLOG_GROUP_OFFSET_LAG: &str = "synclag_backlog_group_offset_lag_records";
/// Largest time lag among a group's partitions.
pub const BACKLOG_GROUP_TIME_LAG: &str = "synclag_backlog_group_time_lag_seconds";
/// Active members of a group (0: no consumer running, offsets still reported).
pub const BACKLOG_GROUP_MEMBERS: &str = "synclag_backlog_group_members";
/// Partitions of a group's topics on which the group has no committed offset.
pub const BACKLOG_GROUP_UNCOMMITTED: &str = "synclag_backlog_group_uncommitted_partitions";
/// Wall time of the last backlog poll cycle (recorder).
pub const BACKLOG_CYCLE_DURATION: &str = "synclag_backlog_cycle_duration_seconds";
/// Backlog poll cycles that failed as a whole (recorder).
pub const BACKLOG_CYCLE_ERRORS: &str = "synclag_backlog_cycle_errors_total";

// ---- pipeline (src/ingest, src/decode, src/correlate, src/emit)
// PIPELINE-NAMES-MARKER
pub const RECORDS_CONSUMED_TOTAL: &str = "synclag_records_consumed_total";
pub const DECODE_ERRORS_TOTAL: &str = "synclag_decode_errors_total";
pub const DEAD_LETTERS_TOTAL: &str = "synclag_dead_letters_total";
pub const REGISTRY_RETRIES_TOTAL: &str = "synclag_registry_retries_total";
pub const UNMATCHED_RECORDS_TOTAL: &str = "synclag_unmatched_records_total";
pub const SIGNALS_TOTAL: &str = "synclag_signals_total";
pub const STAGE_EVENTS_TOTAL: &str = "synclag_stage_events_total";
pub const COMPLETED_TOTAL: &str = "synclag_completed_total";
pub const BREACHES_TOTAL: &str = "synclag_breaches_total";
pub const NEVER_ARRIVED_TOTAL: &str = "synclag_never_arrived_total";
pub const LATE_ARRIVALS_TOTAL: &str = "synclag_late_arrivals_total";
pub const DUPLICATES_TOTAL: &str = "synclag_duplicates_total";
pub const EVICTED_TOTAL: &str = "synclag_evicted_total";
pub const REJECTED_EVENTS_TOTAL: &str = "synclag_rejected_events_total";
pub const DIMENSION_OVERFLOW_TOTAL: &str = "synclag_dimension_overflow_total";
pub const SIGNALS_FORGOTTEN_TOTAL: &str = "synclag_signals_forgotten_total";
pub const LAG_SECONDS: &str = "synclag_lag_seconds";
pub const PENDING_CORRELATIONS: &str = "synclag_pending_correlations";
pub const STORE_CAPACITY: &str = "synclag_store_capacity_correlations";
pub const INPUT_OFFSET: &str = "synclag_input_committable_offset";
pub const INPUT_LAG_RECORDS: &str = "synclag_input_lag_records";
pub const ENGINE_CLOCK_SECONDS: &str = "synclag_engine_clock_seconds";
pub const GROUP_MEMBERS: &str = "synclag_group_members";
pub const OUTPUT_RECORDS_TOTAL: &str = "synclag_output_records_total";
pub const OUTPUT_ERRORS_TOTAL: &str = "synclag_output_errors_total";
pub const DEFERRED_OUTCOMES: &str = "synclag_deferred_outcomes";
pub const OUTPUT_BACKPRESSURE_WAIT_SECONDS: &str = "synclag_output_backpressure_wait_seconds";
pub const STAGES_AFTER_COMPLETION_TOTAL: &str = "synclag_stages_after_completion_total";

// ---- correlation engine bounds (src/correlate)
/// `Counters::held_early`.
pub const HELD_STAGES_TOTAL: &str = "synclag_held_stages_total";
/// `Counters::held_expired`.
pub const HELD_EXPIRED_TOTAL: &str = "synclag_held_expired_total";
/// `PendingStatus::held`, per workflow.
pub const HELD_CORRELATIONS: &str = "synclag_held_correlations";
/// `Counters::beyond_window`.
pub const STAGES_BEYOND_WINDOW_TOTAL: &str = "synclag_stages_beyond_window_total";
/// `Counters::negative_lags`.
pub const NEGATIVE_LAGS_TOTAL: &str = "synclag_negative_lags_total";
/// `Counters::recent_forgotten`.
pub const RECENT_FORGOTTEN_TOTAL: &str = "synclag_recent_forgotten_total";
/// `Engine::recent_len()`.
pub const RECENT_CORRELATIONS: &str = "synclag_recent_correlations";
/// `Counters::tiers_after_window`.
pub const TIERS_AFTER_WINDOW_TOTAL: &str = "synclag_tiers_after_window_total";
