//! Quota rules as plain Rust: input validation, periods and their rollover, and the in-memory
//! application of a batch of consumptions. No I/O: time and ids are parameters.

pub mod batch;
pub mod period;
pub mod usage;
pub mod validate;

use chrono::{DateTime, Utc};

/// Where a counter's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Plan,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Plan => "plan",
            Source::Default => "default",
        }
    }

    pub fn parse(text: &str) -> Self {
        if text == "plan" {
            Source::Plan
        } else {
            Source::Default
        }
    }
}

/// A subject's counter for one metric in its current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// `None` is unlimited.
    pub limit: Option<i64>,
    pub used: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub source: Source,
}

impl Counter {
    /// A default-tier counter for the month of `now` that already holds `used_this_month`
    /// (up to the limit).
    pub fn default_tier(limit: Option<i64>, now: DateTime<Utc>, used_this_month: i64) -> Self {
        let (period_start, period_end) = period::month_of(now);
        Self {
            limit,
            used: limit.map_or(used_this_month, |limit| used_this_month.min(limit)),
            period_start,
            period_end,
            source: Source::Default,
        }
    }

    /// Starts the period containing `now` if the stored one has ended (no cron: the first call
    /// after `period_end` does it). Plan periods keep their length; default periods are months.
    /// Returns whether anything changed.
    pub fn roll_over(&mut self, now: DateTime<Utc>) -> bool {
        if now < self.period_end {
            return false;
        }
        let (start, end) = match self.source {
            Source::Default => period::month_of(now),
            Source::Plan => period::next_period(self.period_start, self.period_end, now),
        };
        self.period_start = start;
        self.period_end = end;
        self.used = 0;
        true
    }

    /// `max(limit - used, 0)`; 0 when unlimited.
    pub fn remaining(&self) -> i64 {
        self.limit.map_or(0, |limit| (limit - self.used).max(0))
    }
}

/// The quota state a subject sees at `now`: its own counters (periods rolled over in memory)
/// and, for metrics it has none of, the default-tier counters a consume would create, holding
/// `month_usage` (by metric; absent is 0); by metric name.
pub fn effective_quotas(
    own: Vec<(String, Counter)>,
    defaults: &[(String, Option<i64>)],
    month_usage: &std::collections::HashMap<String, i64>,
    now: DateTime<Utc>,
) -> std::collections::BTreeMap<String, Counter> {
    let mut quotas: std::collections::BTreeMap<String, Counter> = defaults
        .iter()
        .map(|(metric, limit)| {
            let used = month_usage.get(metric).copied().unwrap_or(0);
            (metric.clone(), Counter::default_tier(*limit, now, used))
        })
        .collect();
    for (metric, mut counter) in own {
        counter.roll_over(now);
        quotas.insert(metric, counter);
    }
    quotas
}
