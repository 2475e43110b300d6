//! Input model of the engine: workflows, SLA tiers, business-hours overrides, bounds.
//!
//! These are plain values the pipeline builds from `topology.yaml`; the engine only reads
//! them. [`EngineConfig::validate`] lists every problem at once so start-up can print them
//! all, the same way the YAML validation does.

use chrono::{Datelike, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// Upper bound on stages per workflow: the engine keeps the set of seen stages as a
/// 16-bit mask so a pending correlation stays small.
pub const MAX_STAGES: usize = 16;
/// Upper bound on workflows (stored as `u16` per pending correlation).
pub const MAX_WORKFLOWS: usize = u16::MAX as usize;
/// Upper bound on configured dimensions per workflow.
pub const MAX_DIMENSIONS: usize = 8;

/// One business workflow: an ordered chain of stages with an SLA and a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowSpec {
    /// Name used in outcomes and histogram labels.
    pub name: String,
    /// Ordered chain; index 0 starts a correlation, the last index closes it. At least 2.
    pub stages: Vec<String>,
    /// Warn / critical tiers, measured from the start stage's occurrence time.
    pub sla: SlaPolicy,
    /// How long a correlation is kept after its start before `NeverArrived` frees it.
    pub window_ms: i64,
    /// Dimension names (e.g. `carrier`, `warehouse`) used as histogram labels.
    pub dimensions: Vec<String>,
}

/// SLA tiers of a workflow, with optional business-hours overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaPolicy {
    /// Lag at which a still-pending correlation raises a `Warn` breach.
    pub warn_ms: i64,
    /// Lag at which a still-pending correlation raises a `Critical` breach.
    pub critical_ms: i64,
    /// First matching override (by the correlation's start time) replaces both tiers.
    pub overrides: Vec<BusinessHoursOverride>,
}

/// Tiers that apply when a correlation starts inside a local-time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessHoursOverride {
    /// Time zone the window is expressed in; DST is handled by converting the start instant.
    pub tz: Tz,
    /// Local weekdays on which the window is open.
    pub days: Vec<Weekday>,
    /// Local opening time (inclusive).
    pub start: NaiveTime,
    /// Local closing time (exclusive). If `end <= start` the window runs past midnight and
    /// `days` names the day it opens.
    pub end: NaiveTime,
    /// Warn tier inside the window.
    pub warn_ms: i64,
    /// Critical tier inside the window.
    pub critical_ms: i64,
}

/// Default of [`EngineConfig::recent_terminal_cap`]: about 4.5 MB of memory, enough for
/// every correlation finished in the last window at up to 100,000 per window (a stage of
/// a correlation remembered no more is taken for a new correlation, which then ends
/// `never_arrived`; each forgotten key is counted).
pub const DEFAULT_RECENT_TERMINAL_CAP: usize = 100_000;

/// Engine-wide bounds and the workflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Workflows; `StageEvent::workflow` indexes this list.
    pub workflows: Vec<WorkflowSpec>,
    /// Maximum pending correlations; when full the oldest is evicted (and reported).
    pub max_pending: usize,
    /// Distinct values kept per dimension; later values are labelled `other` and counted.
    pub dimension_value_cap: usize,
    /// How many oldest pending correlations per workflow the status snapshot lists.
    pub oldest_n: usize,
    /// How many recently finished correlations are remembered, so that a stage arriving
    /// after `NeverArrived`/`Evicted` becomes a `LateArrival` and a redelivered record
    /// after `Completed` is a duplicate instead of a new correlation. When full, the oldest
    /// is forgotten and counted ([`Counters::recent_forgotten`](super::Counters)).
    /// Default [`DEFAULT_RECENT_TERMINAL_CAP`]; 0 remembers nothing.
    pub recent_terminal_cap: usize,
}

impl EngineConfig {
    /// A config with the given workflows and moderate default bounds.
    pub fn with_workflows(workflows: Vec<WorkflowSpec>) -> Self {
        Self {
            workflows,
            max_pending: 1_000_000,
            dimension_value_cap: 32,
            oldest_n: 10,
            recent_terminal_cap: DEFAULT_RECENT_TERMINAL_CAP,
        }
    }

    /// Every problem with this config, each naming its path; empty when valid.
    pub fn problems(&self) -> Vec<SpecProblem> {
        let mut out = Vec::new();
        let mut push = |path: String, message: String| out.push(SpecProblem { path, message });
        if self.workflows.is_empty() {
            push(
                "workflows".into(),
                "at least one workflow is required".into(),
            );
        }
        if self.workflows.len() > MAX_WORKFLOWS {
            push(
                "workflows".into(),
                format!("at most {MAX_WORKFLOWS} workflows are supported"),
            );
        }
        if self.max_pending == 0 {
            push("max_pending".into(), "must be at least 1".into());
        }
        if self.dimension_value_cap == 0 {
            push("dimension_value_cap".into(), "must be at least 1".into());
        }
        for (i, wf) in self.workflows.iter().enumerate() {
            let at = format!("workflows[{i}]");
            if wf.stages.len() < 2 || wf.stages.len() > MAX_STAGES {
                push(
                    format!("{at}.stages"),
                    format!(
                        "has {} stages; a workflow needs between 2 and {MAX_STAGES}",
                        wf.stages.len()
                    ),
                );
            }
            if wf.dimensions.len() > MAX_DIMENSIONS {
                push(
                    format!("{at}.dimensions"),
                    format!(
                        "has {} dimensions; at most {MAX_DIMENSIONS}",
                        wf.dimensions.len()
                    ),
                );
            }
            if wf.window_ms <= 0 {
                push(format!("{at}.window_ms"), "must be positive".into());
            }
            let mut tiers = vec![(format!("{at}.sla"), wf.sla.warn_ms, wf.sla.critical_ms)];
            for (j, o) in wf.sla.overrides.iter().enumerate() {
                tiers.push((format!("{at}.sla.overrides[{j}]"), o.warn_ms, o.critical_ms));
                if o.days.is_empty() {
                    push(
                        format!("{at}.sla.overrides[{j}].days"),
                        "names no weekday".into(),
                    );
                }
            }
            for (path, warn, critical) in tiers {
                if warn <= 0 || critical < warn {
                    push(
                        path,
                        format!("needs 0 < warn_ms <= critical_ms, got warn_ms={warn} critical_ms={critical}"),
                    );
                }
            }
        }
        out
    }

    /// `Ok` when [`problems`](Self::problems) is empty.
    pub fn validate(&self) -> Result<(), SpecError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError { problems })
        }
    }
}

/// One configuration problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// Path inside the engine config, e.g. `workflows[1].sla`.
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// The engine config is invalid; not retryable (the config must change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid correlation config: {}", render(.problems))]
pub struct SpecError {
    /// Every problem found.
    pub problems: Vec<SpecProblem>,
}

fn render(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl BusinessHoursOverride {
    /// Whether the instant `ms` (UTC epoch milliseconds) falls inside this local window.
    ///
    /// Converting the instant into the zone (rather than adding a fixed offset) is what
    /// keeps this right across DST changes: 09:00 Brussels is 08:00 UTC in winter and
    /// 07:00 UTC in summer.
    pub fn contains(&self, ms: i64) -> bool {
        let Some(utc) = Utc.timestamp_millis_opt(ms).single() else {
            return false;
        };
        let local = utc.with_timezone(&self.tz);
        let time = local.time();
        let day = local.weekday();
        if self.start < self.end {
            self.days.contains(&day) && time >= self.start && time < self.end
        } else {
            // Overnight window: the part after midnight belongs to the previous day's opening.
            (self.days.contains(&day) && time >= self.start)
                || (self.days.contains(&day.pred()) && time < self.end)
        }
    }
}

impl SlaPolicy {
    /// Index of the tier set that applies to a correlation starting at `start_ms`:
    /// 0 is the base policy, `i + 1` is `overrides[i]`.
    pub fn variant_for(&self, start_ms: i64) -> usize {
        self.overrides
            .iter()
            .position(|o| o.contains(start_ms))
            .map_or(0, |i| i + 1)
    }

    /// `(warn_ms, critical_ms)` of a variant from [`variant_for`](Self::variant_for).
    pub fn tiers(&self, variant: usize) -> (i64, i64) {
        match variant.checked_sub(1).and_then(|i| self.overrides.get(i)) {
            Some(o) => (o.warn_ms, o.critical_ms),
            None => (self.warn_ms, self.critical_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap()
    }

    fn brussels_office() -> BusinessHoursOverride {
        BusinessHoursOverride {
            tz: chrono_tz::Europe::Brussels,
            days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            warn_ms: 60_000,
            critical_ms: 120_000,
        }
    }

    #[test]
    fn business_hours_follow_dst_in_spring() {
        let o = brussels_office();
        // Fri 2024-03-29, before the change on Sun 03-31: CET = UTC+1.
        assert!(!o.contains(ms(2024, 3, 29, 7, 30)));
        assert!(o.contains(ms(2024, 3, 29, 8, 0)));
        assert!(o.contains(ms(2024, 3, 29, 15, 59)));
        assert!(!o.contains(ms(2024, 3, 29, 16, 0)));
        // Mon 2024-04-01, after: CEST = UTC+2, so 07:00 UTC is already 09:00 local.
        assert!(o.contains(ms(2024, 4, 1, 7, 0)));
        assert!(!o.contains(ms(2024, 4, 1, 6, 59)));
        assert!(!o.contains(ms(2024, 4, 1, 15, 0)));
        // Weekend never matches.
        assert!(!o.contains(ms(2024, 3, 30, 10, 0)));
    }

    #[test]
    fn business_hours_follow_dst_in_autumn() {
        let o = brussels_office();
        // Fri 2024-10-25 (CEST): 07:30 UTC = 09:30 local.
        assert!(o.contains(ms(2024, 10, 25, 7, 30)));
        // Mon 2024-10-28 (CET after the change on 10-27): 07:30 UTC = 08:30 local.
        assert!(!o.contains(ms(2024, 10, 28, 7, 30)));
        assert!(o.contains(ms(2024, 10, 28, 8, 0)));
        assert!(o.contains(ms(2024, 10, 28, 15, 59)));
        assert!(!o.contains(ms(2024, 10, 28, 16, 0)));
    }

    #[test]
    fn overnight_window_belongs_to_its_opening_day() {
        let mut o = brussels_office();
        o.days = vec![Weekday::Fri];
        o.start = NaiveTime::from_hms_opt(22, 0, 0).unwrap();
        o.end = NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        // Fri 2024-01-05 23:00 local (22:00 UTC) and Sat 01:00 local (00:00 UTC).
        assert!(o.contains(ms(2024, 1, 5, 22, 0)));
        assert!(o.contains(ms(2024, 1, 6, 0, 0)));
        // Sat 23:00 local is not a Friday opening.
        assert!(!o.contains(ms(2024, 1, 6, 22, 0)));
    }

    #[test]
    fn first_matching_override_wins() {
        let policy = SlaPolicy {
            warn_ms: 1_000,
            critical_ms: 2_000,
            overrides: vec![brussels_office()],
        };
        assert_eq!(policy.variant_for(ms(2024, 4, 1, 7, 0)), 1);
        assert_eq!(policy.tiers(1), (60_000, 120_000));
        assert_eq!(policy.variant_for(ms(2024, 4, 1, 20, 0)), 0);
        assert_eq!(policy.tiers(0), (1_000, 2_000));
    }

    #[test]
    fn validation_lists_every_problem() {
        let cfg = EngineConfig {
            workflows: vec![WorkflowSpec {
                name: "w".into(),
                stages: vec!["only".into()],
                sla: SlaPolicy {
                    warn_ms: 10,
                    critical_ms: 5,
                    overrides: vec![],
                },
                window_ms: 0,
                dimensions: vec![],
            }],
            max_pending: 0,
            dimension_value_cap: 4,
            oldest_n: 3,
            recent_terminal_cap: 10,
        };
        let err = cfg.validate().unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "max_pending",
                "workflows[0].stages",
                "workflows[0].window_ms",
                "workflows[0].sla"
            ]
        );
    }
}
