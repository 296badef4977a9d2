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

    /// Whether a consumption made at `consumed_at` is held only through the usage this
    /// default-tier counter started from when it was created mid-month, at `seeded_at`.
    pub fn seeded_with(&self, consumed_at: DateTime<Utc>, seeded_at: DateTime<Utc>) -> bool {
        self.source == Source::Default && self.holds(consumed_at) && consumed_at < seeded_at
    }

    /// Takes a refunded consumption of `amount`, made at `consumed_at` and counted in a period
    /// ending at `resets_at`, off the counter. A plan counter holds the consumptions made in and
    /// counted in its period, a default counter those made in its month. One the default counter was seeded with
    /// ([`Self::seeded_with`]) is held only as the usage before the seeding capped at the limit:
    /// `seed_usage`, that usage before this refund, gives what the capped usage drops by.
    pub fn give_back(
        &mut self,
        amount: i64,
        consumed_at: DateTime<Utc>,
        resets_at: DateTime<Utc>,
        seed_usage: Option<i64>,
    ) {
        let taken_off = match self.source {
            Source::Plan if self.holds(consumed_at) && resets_at == self.period_end => amount,
            Source::Default if self.holds(consumed_at) => match (seed_usage, self.limit) {
                (Some(usage), Some(limit)) => usage.min(limit) - (usage - amount).max(0).min(limit),
                _ => amount,
            },
            Source::Plan | Source::Default => 0,
        };
        self.used = (self.used - taken_off.max(0)).max(0);
    }

    fn holds(&self, at: DateTime<Utc>) -> bool {
        self.period_start <= at && at < self.period_end
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

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_seeded_default_counter_gives_back_what_the_capped_seed_drops_by() {
        // 150 units on a plan cancelled on the 10th: the free tier of 100 starts full.
        let seeded_at = at("2026-03-10T00:00:00Z");
        let mut counter = Counter::default_tier(Some(100), at("2026-03-10T00:00:00Z"), 150);
        let (paid_at, plan_end) = (at("2026-03-05T00:00:00Z"), at("2026-03-20T00:00:00Z"));
        assert!(counter.seeded_with(paid_at, seeded_at));
        counter.give_back(50, paid_at, plan_end, Some(150));
        assert_eq!(counter.used, 100, "the plan still used 100 units");
        counter.give_back(30, paid_at, plan_end, Some(100));
        assert_eq!(counter.used, 70);

        let mut straddling = Counter::default_tier(Some(100), at("2026-03-10T00:00:00Z"), 120);
        straddling.give_back(30, paid_at, plan_end, Some(120));
        assert_eq!(straddling.used, 90, "120 - 30 units: 10 under the cap");
    }

    #[test]
    fn a_default_counter_gives_back_its_own_consumptions_whole() {
        // Seeded full with 5 of the plan's 12 units, reset by support, then refilled with 5
        // free units: refunding those gives all 5 back, whatever the month's usage.
        let seeded_at = at("2026-03-10T00:00:00Z");
        let mut counter = Counter::default_tier(Some(5), at("2026-03-10T00:00:00Z"), 12);
        counter.used = 5;
        let free_at = at("2026-03-11T00:00:00Z");
        assert!(!counter.seeded_with(free_at, seeded_at));
        counter.give_back(5, free_at, counter.period_end, None);
        assert_eq!(counter.used, 0);
    }

    #[test]
    fn a_counter_gives_back_only_consumptions_of_its_period() {
        let mut plan = Counter {
            limit: Some(10),
            used: 6,
            period_start: at("2026-03-01T00:00:00Z"),
            period_end: at("2026-03-31T00:00:00Z"),
            source: Source::Plan,
        };
        plan.give_back(
            4,
            at("2026-02-20T00:00:00Z"),
            at("2026-03-01T00:00:00Z"),
            None,
        );
        assert_eq!(plan.used, 6, "last period's consumption");
        let consumed_at = at("2026-03-05T00:00:00Z");
        assert!(!plan.seeded_with(consumed_at, at("2026-03-10T00:00:00Z")));
        plan.give_back(4, consumed_at, plan.period_end, None);
        assert_eq!(plan.used, 2);

        // A free consumption of the 5th, refunded on a plan subscribed on the 10th that ends
        // with the month: the plan never held it.
        let mut subscribed = Counter {
            period_start: at("2026-03-10T00:00:00Z"),
            period_end: at("2026-04-01T00:00:00Z"),
            ..plan.clone()
        };
        subscribed.give_back(4, consumed_at, at("2026-04-01T00:00:00Z"), None);
        assert_eq!(subscribed.used, 2);

        // An annual plan's November consumption, refunded on December's free tier: its period
        // ends with the month, but the free tier holds only December's usage.
        let mut free = Counter::default_tier(Some(100), at("2026-12-10T00:00:00Z"), 0);
        free.used = 5;
        let november = at("2026-11-20T00:00:00Z");
        assert!(!free.seeded_with(november, at("2026-12-10T00:00:00Z")));
        free.give_back(5, november, free.period_end, None);
        assert_eq!(free.used, 5);
    }
}
