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
    metrics::describe_gauge!(
        BACKLOG_LEADER,
        metrics::Unit::Count,
        "1 while this instance is the elected one that runs the backlog monitor, else 0."
    );
    metrics::describe_counter!(
        BACKLOG_BOUND_HITS,
        metrics::Unit::Count,
        "Backlog cycles that hit a bound, by bound: max_record_reads (records left to later cycles), record_wait (partitions given up, time lag interpolated), commit_log_budget (commit log not at its end, offsets from per-group queries)."
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
        OUTPUT_TRANSACTIONS_TOTAL,
        Unit::Count,
        "Output transactions (store.exactly_once) by result: `committed`; `aborted` (its outputs, changelog records and offsets are written again in a new transaction); `fenced` (the producer was replaced first); `rolled_back` (store.repartition: the group moved on before it committed, its outputs are dropped and the pipeline starts again from the committed state)."
    );
    describe_histogram!(
        OUTPUT_TRANSACTION_COMMIT_SECONDS,
        Unit::Seconds,
        "Time to commit one output transaction (store.exactly_once), from the commit request to the coordinator's answer."
    );
    describe_counter!(
        OUTPUT_ERRORS_TOTAL,
        Unit::Count,
        "Output events that could not be encoded or delivered, by topic (each is retried until acknowledged)."
    );

    // ---- service path: clock, stalls, held records, output queue (src/service, src/ingest)
    describe_gauge!(
        INPUT_STALLED,
        Unit::Count,
        "1 while an input partition has neither moved nor confirmed its end for the stall budget (service.idle_partition): it no longer holds the clock back, and breaches that may wait behind it carry it as evidence. By topic, partition and reason."
    );
    describe_gauge!(
        INPUT_HELD_RECORDS,
        Unit::Count,
        "Input records waiting (e.g. for the schema registry) with their partition paused behind them."
    );
    describe_gauge!(
        OUTPUT_QUEUED,
        Unit::Count,
        "Outputs waiting beyond the emitter's channel; while above 0 every input partition is paused (back-pressure)."
    );
    describe_gauge!(
        INPUTS_PAUSED_FOR_OUTPUT,
        Unit::Count,
        "1 while input is paused because outputs wait for Kafka."
    );
    describe_gauge!(
        INPUT_PACED,
        Unit::Count,
        "Input partitions held back now because, while a backlog is read, their record time ran more than 3 s ahead of the clock (their records wait until it is within 1.5 s)."
    );
    describe_counter!(
        INPUT_PACED_PAUSES_TOTAL,
        Unit::Count,
        "Times a partition running ahead of the clock had 4,000 records waiting and was paused in the consumer as well (which drops what the consumer had fetched ahead for it and fetches it again on resume)."
    );
    describe_gauge!(
        INPUT_PACED_RECORDS,
        Unit::Count,
        "Records taken from the consumer that wait because their partition runs ahead of the clock; at 4,000 for a partition it is paused in the consumer as well."
    );
    describe_gauge!(
        PIPELINE_BUSY_RATIO,
        Unit::Count,
        "Share of the last second the pipeline's loop spent on each activity (records, tick, end_offsets, registry_retries); summed, the share of one core it keeps busy: near 1 the pipeline bounds throughput, well below 1 while input lags it waits for Kafka."
    );
    describe_counter!(
        PIPELINE_RESTARTS_TOTAL,
        Unit::Count,
        "Times the pipeline started again from the committed state because partitions moved to another instance, or because outputs were dropped when the group moved on before they committed (store.repartition)."
    );
    describe_gauge!(
        REPARTITIONED,
        Unit::Count,
        "1 when stage events go through the stages topic (store.repartition): several instances in the group are then expected."
    );
    describe_gauge!(
        OWNED_STAGES_PARTITIONS,
        Unit::Count,
        "Stages partitions this instance owns and has restored (store.repartition); summed over instances it is the stages topic's partition count."
    );
    describe_gauge!(
        INPUT_FETCHED_RECORDS,
        Unit::Count,
        "Records the input consumer fetched from the brokers, summed over its partitions (librdkafka's rxmsgs): more than it handed over when a pause dropped records fetched ahead, which were fetched again after the resume."
    );
    describe_counter!(
        INPUT_PACED_TOTAL,
        Unit::Count,
        "Times an input partition was paused for running ahead of the clock while a backlog was read."
    );
    describe_gauge!(
        CLOCK_LIVE,
        Unit::Count,
        "1 while every input partition is read to its latest end offset (the clock follows confirmed wall time); 0 while a backlog is read (event time)."
    );
    describe_gauge!(
        OUTPUT_UNACKED,
        Unit::Count,
        "Outputs submitted but not yet acknowledged by Kafka; input offsets are committed only behind them."
    );
    describe_gauge!(
        EVIDENCE_ENTRIES,
        Unit::Count,
        "Entries in the bounded cause-evidence memory (open breaches, partner delays)."
    );
    describe_counter!(
        LAG_LABEL_OVERFLOW_TOTAL,
        Unit::Count,
        "Lag observations recorded under `other` dimension labels because the lag histogram reached its cap on label combinations."
    );
    describe_counter!(
        EVIDENCE_FORGOTTEN_TOTAL,
        Unit::Count,
        "Evidence entries dropped because the bounded memory was full."
    );

    // ---- input health and membership (src/ingest/health.rs, src/ingest/membership.rs)
    describe_gauge!(
        INPUT_TOPIC_MISSING,
        Unit::Count,
        "1 while a configured input topic does not exist (or cannot be described), else 0, by topic."
    );
    describe_gauge!(
        KAFKA_REACHABLE,
        Unit::Count,
        "1 while Kafka answers synclag's metadata probe and the consumer has a broker connection up, else 0; /readyz is 503 while 0."
    );
    describe_counter!(
        GROUP_MEMBER_CHECKS_TOTAL,
        Unit::Count,
        "Listings of synclag's own consumer group by the one-instance watch, by result (ok, error)."
    );

    // ---- event-time policy (src/decode/time.rs, service.event_time)
    metrics::describe_counter!(
        EVENT_TIME_VIOLATIONS_TOTAL,
        metrics::Unit::Count,
        "Records whose payload time was out of tolerance against their Kafka time (service.event_time), by topic and action (use_kafka_time, dead_letter)."
    );

    // ---- Kafka outputs (src/emit/producer.rs)
    describe_histogram!(
        OUTPUT_QUEUE_FULL_WAIT_SECONDS,
        Unit::Seconds,
        "Waits of one output record for room in the producer's local queue (queue.buffering.max.messages / .kbytes reached), by topic; count = records that waited."
    );
    describe_gauge!(
        OUTPUT_QUEUE_FULL_WAITING,
        Unit::Count,
        "Output records waiting now for room in the producer's local queue, by topic (non-zero while Kafka is down or slower than synclag writes)."
    );
    describe_counter!(
        OUTPUT_TRUNCATIONS_TOTAL,
        Unit::Count,
        "Output fields cut to fit the topic (breach event fields; dead-letter key, value, headers, error; smallest_form: a breach or incident event sent again without its evidence because the topic refused it for its size), by topic and field."
    );
    describe_counter!(
        OUTPUT_DROPPED_TOTAL,
        Unit::Count,
        "Outputs dropped because their topic refused them for their size even in their smallest form (max.message.bytes), so the outputs behind them go on, by topic and reason."
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

    // ---- incidents (src/incidents)
    describe_gauge!(
        INCIDENTS_OPEN,
        Unit::Count,
        "Open incidents, by workflow and probable cause."
    );
    describe_counter!(
        INCIDENT_EVENTS_TOTAL,
        Unit::Count,
        "Incident events raised, by kind (opened, updated, resolved)."
    );
    describe_counter!(
        INCIDENTS_SUPPRESSED_TOTAL,
        Unit::Count,
        "Flood control: breaches that could not open an incident because incidents.max_open were open (open_cap), and incident updates deferred by incidents.max_events_per_minute (rate_cap)."
    );
    describe_counter!(
        INCIDENT_BREACHES_FOLDED_TOTAL,
        Unit::Count,
        "Breaches that joined an incident already open instead of alerting on their own."
    );
    describe_gauge!(
        DEGRADED_SLICES,
        Unit::Count,
        "Dimension values currently degraded (breach rate far above their peers')."
    );
    describe_counter!(
        DEGRADED_FLAPS_SUPPRESSED_TOTAL,
        Unit::Count,
        "Times hysteresis kept a degraded dimension value degraded when its breach ratio dipped below the opening factor."
    );
    describe_counter!(
        DEGRADED_SLICES_NOT_FOLLOWED_TOTAL,
        Unit::Count,
        "Breaches and completions of dimension values not counted for degraded slices because 10,000 values were already followed."
    );
    describe_counter!(
        INCIDENT_CORRELATIONS_NOT_FOLLOWED_TOTAL,
        Unit::Count,
        "Breached correlations an incident counted but did not follow (beyond 1,000 per incident): its pending count leaves them out."
    );
    describe_gauge!(
        STATE_RESTORE_SECONDS,
        Unit::Seconds,
        "Time the last start took to restore the durable state from the changelog topic."
    );
    describe_gauge!(
        STATE_RESTORED,
        Unit::Count,
        "Correlations the last start restored from the changelog, by kind (pending, finished)."
    );
    describe_counter!(
        STATE_REJECTED_TOTAL,
        Unit::Count,
        "Changelog records a restore could not use (unreadable, or no longer fitting the topology); each is logged with its partition and offset."
    );
    describe_counter!(
        STATE_RECORDS_TOTAL,
        Unit::Count,
        "Changelog records written, by kind (pending images, finished batches, deleted: tombstones of ended pending images and of expired batches, lag)."
    );
    describe_gauge!(
        STATE_CUTS_WAITING,
        Unit::Count,
        "Changelog cuts waiting for the outputs raised before them to be acknowledged (their input offsets wait too)."
    );
    describe_counter!(
        SLICE_SIGNALS_FORGOTTEN_TOTAL,
        Unit::Count,
        "Dimension values dropped from the signal-rate evidence because it was full."
    );

    // ---- governance (src/auth, src/audit, src/dlq)
    describe_counter!(
        AUDIT_RECORDS_TOTAL,
        Unit::Count,
        "Audit records by outcome: written (acknowledged by the audit topic), queue_full (audit.queue was full; the record is only in the log), delivery_failed (not acknowledged; only in the log)."
    );
    describe_counter!(
        API_TLS_HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "HTTPS connections to the API whose TLS handshake failed or timed out."
    );
    describe_counter!(
        DLQ_REDRIVE_RECORDS_TOTAL,
        Unit::Count,
        "Dead letters handled by API redrives, by outcome: moved, skipped_already_redriven, skipped_masked, skipped_truncated, skipped_no_source."
    );
    describe_counter!(
        DLQ_REDRIVE_THROTTLED_SECONDS_TOTAL,
        Unit::Seconds,
        "Time API redrives waited for their rate limit (max_per_second)."
    );
    describe_batch();
}

// ---- incidents (src/incidents)
pub const INCIDENTS_OPEN: &str = "synclag_incidents_open";

// ---- durable state (src/service/state.rs)
pub const STATE_RESTORE_SECONDS: &str = "synclag_state_restore_seconds";
pub const STATE_RESTORED: &str = "synclag_state_restored_correlations";
pub const STATE_REJECTED_TOTAL: &str = "synclag_state_rejected_total";
pub const STATE_RECORDS_TOTAL: &str = "synclag_state_records_total";
pub const STATE_CUTS_WAITING: &str = "synclag_state_cuts_waiting";
pub const INCIDENT_EVENTS_TOTAL: &str = "synclag_incident_events_total";
pub const INCIDENTS_SUPPRESSED_TOTAL: &str = "synclag_incidents_suppressed_total";
pub const INCIDENT_BREACHES_FOLDED_TOTAL: &str = "synclag_incident_breaches_folded_total";
pub const DEGRADED_SLICES: &str = "synclag_degraded_slices";
pub const DEGRADED_FLAPS_SUPPRESSED_TOTAL: &str = "synclag_degraded_flaps_suppressed_total";
pub const DEGRADED_SLICES_NOT_FOLLOWED_TOTAL: &str = "synclag_degraded_slices_not_followed_total";
pub const SLICE_SIGNALS_FORGOTTEN_TOTAL: &str = "synclag_slice_signals_forgotten_total";
pub const INCIDENT_CORRELATIONS_NOT_FOLLOWED_TOTAL: &str =
    "synclag_incident_correlations_not_followed_total";

// ---- service path: clock, stalls, held records, output queue (src/service, src/ingest)
pub const INPUT_STALLED: &str = "synclag_input_stalled_partitions";
pub const INPUT_HELD_RECORDS: &str = "synclag_input_held_records";
pub const OUTPUT_QUEUED: &str = "synclag_output_queued_records";
pub const INPUTS_PAUSED_FOR_OUTPUT: &str = "synclag_input_paused_for_output";
pub const INPUT_PACED: &str = "synclag_input_paced_partitions";
pub const INPUT_PACED_RECORDS: &str = "synclag_input_paced_records";
pub const INPUT_PACED_PAUSES_TOTAL: &str = "synclag_input_paced_pauses_total";
pub const PIPELINE_BUSY_RATIO: &str = "synclag_pipeline_busy_ratio";
/// The `activity` labels of [`PIPELINE_BUSY_RATIO`].
pub const PIPELINE_ACTIVITIES: [&str; 4] = ["records", "tick", "end_offsets", "registry_retries"];
pub const INPUT_PACED_TOTAL: &str = "synclag_input_paced_total";
pub const INPUT_FETCHED_RECORDS: &str = "synclag_input_fetched_records";
pub const PIPELINE_RESTARTS_TOTAL: &str = "synclag_pipeline_restarts_total";
pub const OWNED_STAGES_PARTITIONS: &str = "synclag_owned_stages_partitions";
pub const REPARTITIONED: &str = "synclag_repartitioned";
pub const CLOCK_LIVE: &str = "synclag_clock_live";
pub const OUTPUT_UNACKED: &str = "synclag_output_unacknowledged_records";
pub const EVIDENCE_ENTRIES: &str = "synclag_evidence_entries";
pub const EVIDENCE_FORGOTTEN_TOTAL: &str = "synclag_evidence_forgotten_total";
pub const LAG_LABEL_OVERFLOW_TOTAL: &str = "synclag_lag_label_overflow_total";

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
/// 1 while this instance runs the backlog monitor (elected), else 0.
pub const BACKLOG_LEADER: &str = "synclag_backlog_leader";
/// Cycles that hit a bound, by `bound`.
pub const BACKLOG_BOUND_HITS: &str = "synclag_backlog_bound_hits_total";

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
pub const OUTPUT_TRANSACTIONS_TOTAL: &str = "synclag_output_transactions_total";
pub const OUTPUT_TRANSACTION_COMMIT_SECONDS: &str = "synclag_output_transaction_commit_seconds";
pub const DEFERRED_OUTCOMES: &str = "synclag_deferred_outcomes";
pub const OUTPUT_BACKPRESSURE_WAIT_SECONDS: &str = "synclag_output_backpressure_wait_seconds";
pub const STAGES_AFTER_COMPLETION_TOTAL: &str = "synclag_stages_after_completion_total";

// ---- input health and membership (src/ingest/health.rs, src/ingest/membership.rs)
pub const INPUT_TOPIC_MISSING: &str = "synclag_input_topic_missing";
pub const KAFKA_REACHABLE: &str = "synclag_kafka_reachable";
pub const GROUP_MEMBER_CHECKS_TOTAL: &str = "synclag_group_member_checks_total";

// ---- event-time policy (src/decode/time.rs, service.event_time)
pub const EVENT_TIME_VIOLATIONS_TOTAL: &str = "synclag_event_time_violations_total";

// ---- Kafka outputs (src/emit/producer.rs)
pub const OUTPUT_QUEUE_FULL_WAIT_SECONDS: &str = "synclag_output_queue_full_wait_seconds";
pub const OUTPUT_QUEUE_FULL_WAITING: &str = "synclag_output_queue_full_waiting_records";
pub const OUTPUT_TRUNCATIONS_TOTAL: &str = "synclag_output_truncations_total";
pub const OUTPUT_DROPPED_TOTAL: &str = "synclag_output_dropped_total";

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

// ---- governance (src/auth, src/audit, src/dlq)
pub const AUDIT_RECORDS_TOTAL: &str = "synclag_audit_records_total";
pub const API_TLS_HANDSHAKE_FAILURES_TOTAL: &str = "synclag_api_tls_handshake_failures_total";
pub const DLQ_REDRIVE_RECORDS_TOTAL: &str = "synclag_dlq_redrive_records_total";
pub const DLQ_REDRIVE_THROTTLED_SECONDS_TOTAL: &str = "synclag_dlq_redrive_throttled_seconds_total";
// ---- batch workflows (src/batch)
pub const BATCH_LAST_RUN_TIMESTAMP: &str = "synclag_batch_last_run_timestamp_seconds";
pub const BATCH_RUN_DURATION: &str = "synclag_batch_run_duration_seconds";
pub const BATCH_RUN_RECORDS: &str = "synclag_batch_run_records";
pub const BATCH_COMPLETENESS_RATIO: &str = "synclag_batch_completeness_ratio";
pub const BATCH_VOLUME_VARIANCE_RATIO: &str = "synclag_batch_volume_variance_ratio";
pub const BATCH_RECONCILIATION_RATIO: &str = "synclag_batch_reconciliation_ratio";
pub const BATCH_FINDINGS_TOTAL: &str = "synclag_batch_findings_total";
pub const BATCH_BOUND_HITS_TOTAL: &str = "synclag_batch_bound_hits_total";
pub const BATCH_BAD_TRAILERS_TOTAL: &str = "synclag_batch_bad_trailers_total";
pub const BATCH_REPLAYED_RECORDS_TOTAL: &str = "synclag_batch_replayed_records_total";
pub const BATCH_STATE_ERRORS_TOTAL: &str = "synclag_batch_state_errors_total";

fn describe_batch() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        BATCH_LAST_RUN_TIMESTAMP,
        Unit::Seconds,
        "Completion time (epoch) of the last completed run, per batch workflow; 0 before any."
    );
    describe_gauge!(
        BATCH_RUN_DURATION,
        Unit::Seconds,
        "First record to completion of the last completed run, per batch workflow (NaN before any)."
    );
    describe_gauge!(
        BATCH_RUN_RECORDS,
        Unit::Count,
        "Distinct records of the last completed run, per batch workflow (NaN before any)."
    );
    describe_gauge!(
        BATCH_COMPLETENESS_RATIO,
        Unit::Count,
        "Distinct records / announced count of the last completed run, per batch workflow (NaN without an announced count)."
    );
    describe_gauge!(
        BATCH_VOLUME_VARIANCE_RATIO,
        Unit::Count,
        "(records - baseline) / baseline of the last completed run, per batch workflow (NaN without a baseline)."
    );
    describe_gauge!(
        BATCH_RECONCILIATION_RATIO,
        Unit::Count,
        "Records matched in the ERP stream / records of the last reconciled run, per batch workflow (NaN before any)."
    );
    describe_counter!(
        BATCH_FINDINGS_TOTAL,
        Unit::Count,
        "Batch findings raised, by workflow, check (run, schedule, completeness, volume, reconciliation) and severity."
    );
    describe_counter!(
        BATCH_BOUND_HITS_TOTAL,
        Unit::Count,
        "Batch bounds hit, by bound: untracked_ids (record ids beyond 10,000 per run, duplicates among them unseen), erp_forgotten (early ERP ids beyond 50,000), runs_pruned (runs beyond 64 per workflow), state_ids_dropped (state records persisted without their id sets to fit a Kafka record)."
    );
    describe_counter!(
        BATCH_BAD_TRAILERS_TOTAL,
        Unit::Count,
        "Trailer records whose announced count was missing or not a number, by workflow."
    );
    describe_counter!(
        BATCH_REPLAYED_RECORDS_TOTAL,
        Unit::Count,
        "Batch records read again after a restart and recognised as already counted."
    );
    describe_counter!(
        BATCH_STATE_ERRORS_TOTAL,
        Unit::Count,
        "Batch state records that could not be restored or written, by stage (restore, encode)."
    );
}
