//! `batches:` — shape, types and meaning of batch workflows, every problem at once.

use super::*;
use crate::config::batch::*;
use std::str::FromStr;

static SCHEDULE_SHAPE: Shape = Shape {
    keys: SCHEDULE_KEYS,
    required: &["cron", "timezone"],
    children: &[],
};
static TIERS_SHAPE: Shape = Shape {
    keys: TIERS_KEYS,
    required: &["warn", "critical"],
    children: &[],
};
static RATIO_SHAPE: Shape = Shape {
    keys: RATIO_KEYS,
    required: &["warn", "critical"],
    children: &[],
};
static VOLUME_SHAPE: Shape = Shape {
    keys: VOLUME_KEYS,
    required: &["warn", "critical"],
    children: &[],
};
static RECONCILIATION_SHAPE: Shape = Shape {
    keys: RECONCILIATION_KEYS,
    required: &["stream", "within", "warn", "critical"],
    children: &[],
};
pub(super) static BATCH_SHAPE: Shape = Shape {
    keys: BATCH_KEYS,
    required: &["name", "stream", "schedule", "start", "completion"],
    children: &[
        ("schedule", Child::Object(&SCHEDULE_SHAPE)),
        ("start", Child::Object(&TIERS_SHAPE)),
        ("completion", Child::Object(&TIERS_SHAPE)),
        ("completeness", Child::Object(&RATIO_SHAPE)),
        ("volume", Child::Object(&VOLUME_SHAPE)),
        ("reconciliation", Child::Object(&RECONCILIATION_SHAPE)),
    ],
};

/// Parses a cron expression the way every batch schedule is read: 5 fields, or 6 with
/// seconds first; `L`, `W` and `#` allowed (e.g. `0 22 L * *`: the last day of the month).
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(text).map_err(|e| e.to_string())
}

fn tiers(ctx: &mut Ctx, p: &str, raw: &RawTiers) -> Tiers {
    let warn = duration(
        ctx,
        &format!("{p}.warn"),
        Some(&raw.warn),
        Duration::from_secs(60),
    );
    let critical = duration(
        ctx,
        &format!("{p}.critical"),
        Some(&raw.critical),
        Duration::from_secs(120),
    );
    if warn >= critical {
        ctx.push(
            p,
            format!(
                "warn `{}` must be shorter than critical `{}`",
                raw.warn, raw.critical
            ),
        );
    }
    Tiers { warn, critical }
}

fn ratio(ctx: &mut Ctx, p: &str, warn: f64, critical: f64) -> RatioTiers {
    for (k, v) in [("warn", warn), ("critical", critical)] {
        if !(v > 0.0 && v <= 1.0) {
            ctx.push(
                format!("{p}.{k}"),
                format!("`{v}` is not a ratio; expected a number in (0, 1], e.g. 0.99"),
            );
        }
    }
    if critical >= warn {
        ctx.push(
            p,
            format!(
                "critical `{critical}` must be below warn `{warn}` (the lowest acceptable ratios)"
            ),
        );
    }
    RatioTiers { warn, critical }
}

fn stream_field(ctx: &mut Ctx, p: &str, stream: Option<&Stream>, field: &str) {
    let Some(s) = stream else { return };
    if !s.dimensions.iter().any(|(n, _)| n == field) {
        let names: Vec<&str> = s.dimensions.iter().map(|(n, _)| n.as_str()).collect();
        ctx.push(
            p,
            format!(
                "stream `{}` extracts no field `{field}`{}; add it to the stream's `fields.dimensions` (fields there: {})",
                s.name,
                suggest(field, names.iter().copied()),
                if names.is_empty() { "none".to_string() } else { list(&names) }
            ),
        );
    }
}

fn stream_ref(ctx: &mut Ctx, p: &str, streams: &[Stream], name: &str) -> Option<usize> {
    match stream_index(streams, name) {
        Some(i) if streams[i].role == Role::Stages => Some(i),
        Some(_) => {
            ctx.push(
                p,
                format!("stream `{name}` has role `signals`; a batch reads a stream of records (role `stages`)"),
            );
            None
        }
        None => {
            let names = stream_names(streams);
            ctx.push(
                p,
                format!(
                    "unknown stream `{name}`{}; streams: {}",
                    suggest(name, names.iter().copied()),
                    list(&names)
                ),
            );
            None
        }
    }
}

/// `batches:`
pub(super) fn batches_section(
    ctx: &mut Ctx,
    batches: &[(usize, RawBatch)],
    streams: &[Stream],
    routes: &BTreeMap<String, Route>,
    workflows: &[Workflow],
) -> Vec<BatchWorkflow> {
    // Batch workflows share the workflow namespace: metrics and events carry one
    // `workflow` label.
    let mut names: HashSet<String> = workflows.iter().map(|w| w.name.clone()).collect();
    let mut out = Vec::new();
    for (i, b) in batches {
        let p = format!("batches[{i}]");
        check_name(ctx, &format!("{p}.name"), &b.name, &mut names, "workflow");
        let stream = stream_ref(ctx, &format!("{p}.stream"), streams, &b.stream);
        let s = stream.map(|i| &streams[i]);
        if let Some(s) = s {
            if s.event_type.is_none()
                && (b.record_type.is_some() || b.start_type.is_some() || b.trailer_type.is_some())
            {
                ctx.push(
                    format!("{p}.stream"),
                    format!("stream `{}` has no `fields.event_type`, so `record_type`, `start_type` and `trailer_type` cannot tell its records apart", s.name),
                );
            }
        }
        if let Some(f) = &b.batch_id {
            stream_field(ctx, &format!("{p}.batch_id"), s, f);
        }
        if let Some(f) = &b.expected_count {
            stream_field(ctx, &format!("{p}.expected_count"), s, f);
            if b.trailer_type.is_none() {
                ctx.push(
                    format!("{p}.expected_count"),
                    "needs `trailer_type`: the announced count is read from the trailer record",
                );
            }
        }
        let quiet = b.quiet.as_deref().map(|q| {
            duration(
                ctx,
                &format!("{p}.quiet"),
                Some(q),
                Duration::from_secs(300),
            )
        });
        if b.trailer_type.is_none() && quiet.is_none() {
            ctx.push(
                &p,
                "a run needs a completion marker: `trailer_type` (a trailer or \"done\" record) and/or `quiet` (complete after this long without a record)",
            );
        }
        let sp = format!("{p}.schedule");
        let cron = parse_cron(&b.schedule.cron).map_err(|why| {
            ctx.push(
                format!("{sp}.cron"),
                format!(
                    "`{}` is not a cron expression ({why}); expected 5 fields `min hour day-of-month month day-of-week` (or 6 with seconds first), e.g. `0 2 * * *`",
                    b.schedule.cron
                ),
            );
        });
        let timezone = b.schedule.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            ctx.push(
                format!("{sp}.timezone"),
                format!(
                    "unknown time zone `{}`; expected an IANA name like `Europe/Brussels` or `UTC`",
                    b.schedule.timezone
                ),
            );
        });
        let early = b.schedule.early.as_deref().map_or(Duration::ZERO, |e| {
            duration(ctx, &format!("{sp}.early"), Some(e), Duration::ZERO)
        });
        let start = tiers(ctx, &format!("{p}.start"), &b.start);
        let completion = tiers(ctx, &format!("{p}.completion"), &b.completion);
        if completion.warn < start.warn || completion.critical < start.critical {
            ctx.push(
                format!("{p}.completion"),
                format!(
                    "completion tiers (warn `{}`, critical `{}`) must not be shorter than the start tiers (warn `{}`, critical `{}`)",
                    b.completion.warn, b.completion.critical, b.start.warn, b.start.critical
                ),
            );
        }
        let completeness = b.completeness.as_ref().map(|c| {
            if b.expected_count.is_none() {
                ctx.push(
                    format!("{p}.completeness"),
                    "needs `expected_count`: completeness compares records received with the count the trailer announces",
                );
            }
            ratio(ctx, &format!("{p}.completeness"), c.warn, c.critical)
        });
        let volume = b.volume.as_ref().map(|v| {
            let vp = format!("{p}.volume");
            for (k, x) in [("warn", v.warn), ("critical", v.critical)] {
                if !(x > 0.0 && x.is_finite()) {
                    ctx.push(
                        format!("{vp}.{k}"),
                        format!("`{x}` is not a positive relative deviation; expected e.g. 0.3 (30 %)"),
                    );
                }
            }
            if v.warn >= v.critical {
                ctx.push(
                    &vp,
                    format!("warn `{}` must be below critical `{}`", v.warn, v.critical),
                );
            }
            let baseline_runs = v.baseline_runs.unwrap_or(4);
            let min_history = v.min_history.unwrap_or(2);
            if baseline_runs == 0 || baseline_runs > 100 {
                ctx.push(
                    format!("{vp}.baseline_runs"),
                    format!("`{baseline_runs}` is out of range; expected 1 to 100"),
                );
            }
            if min_history == 0 || min_history > baseline_runs {
                ctx.push(
                    format!("{vp}.min_history"),
                    format!("`{min_history}` is out of range; expected 1 to baseline_runs ({baseline_runs})"),
                );
            }
            if v.expected == Some(0) {
                ctx.push(
                    format!("{vp}.expected"),
                    "`0` cannot be a baseline; leave it out to rely on the history",
                );
            }
            Volume {
                expected: v.expected,
                baseline_runs: baseline_runs as usize,
                min_history: min_history as usize,
                warn: v.warn,
                critical: v.critical,
            }
        });
        let reconciliation = b.reconciliation.as_ref().and_then(|r| {
            let rp = format!("{p}.reconciliation");
            let stream = stream_ref(ctx, &format!("{rp}.stream"), streams, &r.stream);
            let within = duration(
                ctx,
                &format!("{rp}.within"),
                Some(&r.within),
                Duration::from_secs(3600),
            );
            let ratio = ratio(ctx, &rp, r.warn, r.critical);
            Some(Reconciliation {
                stream: stream?,
                event_type: r.event_type.clone(),
                within,
                ratio,
            })
        });
        if let Some(r) = &b.route {
            check_route(ctx, routes, &format!("{p}.route"), r);
        }
        if let (Some(stream), Ok(cron), Ok(timezone)) = (stream, cron, timezone) {
            out.push(BatchWorkflow {
                name: b.name.clone(),
                description: b.description.clone(),
                stream,
                record_type: b.record_type.clone(),
                start_type: b.start_type.clone(),
                trailer_type: b.trailer_type.clone(),
                batch_id: b.batch_id.clone(),
                expected_count: b.expected_count.clone(),
                quiet,
                schedule: BatchSchedule {
                    cron_text: b.schedule.cron.clone(),
                    cron,
                    timezone,
                    early,
                },
                start,
                completion,
                completeness,
                volume,
                reconciliation,
                route: b.route.clone(),
            });
        }
    }
    out
}
