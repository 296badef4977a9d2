//! Quota rules as plain Rust: input validation, periods and their rollover, the in-memory
//! application of a batch of consumptions, and who may refund one. No I/O: time and ids are parameters.

pub mod batch;
pub mod consumer;
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

/// What a counter's `used` holds, so a refund gives back what the counter took and no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// Consumptions made since then (before the period ends) count whole: the counter was
    /// created, its period started (a new plan period, a rollover), or support reset it.
    pub since: DateTime<Utc>,
    /// A default-tier counter created mid-month holds the month's earlier consumptions as
    /// their usage capped at the free limit: this many units...
    pub seed_held: i64,
    /// ...of this usage, uncapped, less what has been refunded of it since.
    pub seed_usage: i64,
}

impl Holding {
    /// A count starting over at `now`: nothing earlier is held.
    pub fn starting_at(now: DateTime<Utc>) -> Self {
        Self {
            since: now,
            seed_held: 0,
            seed_usage: 0,
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

    /// Takes a refunded consumption of `amount` made at `consumed_at` off the counter, by what
    /// the counter holds of it (`holding`, whose seed usage it lowers when the consumption is
    /// part of it): all of one made since its count started and before its period ends; for a
    /// default counter, the drop in the capped seed for an earlier one of its month; otherwise
    /// nothing.
    pub fn give_back(&mut self, amount: i64, consumed_at: DateTime<Utc>, holding: &mut Holding) {
        let taken_off = if holding.since <= consumed_at && consumed_at < self.period_end {
            amount
        } else if self.source == Source::Default
            && self.period_start <= consumed_at
            && consumed_at < holding.since
        {
            let (held, usage) = (holding.seed_held, holding.seed_usage);
            holding.seed_usage = (usage - amount).max(0);
            usage.min(held) - holding.seed_usage.min(held)
        } else {
            0
        };
        self.used = (self.used - taken_off).max(0);
    }

    /// `max(limit - used, 0)`; 0 when unlimited.
    pub fn remaining(&self) -> i64 {
        self.limit.map_or(0, |limit| (limit - self.used).max(0))
    }
}

/// The quota state a subject sees at `now`: its own counters (periods rolled over in memory)
/// and, for the default tier's metrics (`limits`: metric and limit) it has none of, the
/// default-tier counter a consume would create: the store keeps a counter wherever the month has
/// usage, so those start from nothing. By metric name.
pub fn effective_quotas<'a>(
    own: Vec<(String, Counter)>,
    limits: impl Iterator<Item = &'a (String, Option<i64>)>,
    now: DateTime<Utc>,
) -> std::collections::BTreeMap<String, Counter> {
    let mut quotas: std::collections::BTreeMap<String, Counter> = limits
        .map(|(metric, limit)| (metric.clone(), Counter::default_tier(*limit, now, 0)))
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

    fn seeded(held: i64, usage: i64) -> Holding {
        Holding {
            since: at("2026-03-10T00:00:00Z"),
            seed_held: held,
            seed_usage: usage,
        }
    }

    #[test]
    fn a_seeded_default_counter_gives_back_what_the_capped_seed_drops_by() {
        // 150 units on a plan cancelled on the 10th: the free tier of 100 starts full.
        let mut counter = Counter::default_tier(Some(100), at("2026-03-10T00:00:00Z"), 150);
        let mut holding = seeded(100, 150);
        let paid_at = at("2026-03-05T00:00:00Z");
        counter.give_back(50, paid_at, &mut holding);
        assert_eq!(counter.used, 100, "the plan still used 100 units");
        counter.give_back(30, paid_at, &mut holding);
        assert_eq!((counter.used, holding.seed_usage), (70, 70));

        let mut straddling = Counter::default_tier(Some(100), at("2026-03-10T00:00:00Z"), 120);
        straddling.give_back(30, paid_at, &mut seeded(100, 120));
        assert_eq!(straddling.used, 90, "120 - 30 units: 10 under the cap");
    }

    #[test]
    fn a_raised_free_limit_does_not_change_what_the_seed_holds() {
        // Seeded with 5 of 12 plan units, then the free limit went from 5 to 10.
        let mut counter = Counter::default_tier(Some(10), at("2026-03-10T00:00:00Z"), 0);
        counter.used = 5;
        counter.give_back(4, at("2026-03-05T00:00:00Z"), &mut seeded(5, 12));
        assert_eq!(counter.used, 5, "8 plan units left still fill the 5 held");
    }

    #[test]
    fn after_a_reset_only_later_consumptions_come_back() {
        // Seeded with 5 of 12 plan units, reset on the 11th, then 5 free units.
        let mut counter = Counter::default_tier(Some(5), at("2026-03-10T00:00:00Z"), 0);
        counter.used = 5;
        let mut holding = Holding::starting_at(at("2026-03-11T00:00:00Z"));
        counter.give_back(4, at("2026-03-05T00:00:00Z"), &mut holding);
        counter.give_back(2, at("2026-03-10T12:00:00Z"), &mut holding);
        assert_eq!(counter.used, 5, "the reset forgave them already");
        counter.give_back(5, at("2026-03-12T00:00:00Z"), &mut holding);
        assert_eq!(counter.used, 0);
    }

    #[test]
    fn a_counter_gives_back_only_consumptions_since_its_count_started() {
        let mut plan = Counter {
            limit: Some(10),
            used: 6,
            period_start: at("2026-03-01T00:00:00Z"),
            period_end: at("2026-04-01T00:00:00Z"),
            source: Source::Plan,
        };
        let mut holding = Holding::starting_at(plan.period_start);
        plan.give_back(4, at("2026-02-20T00:00:00Z"), &mut holding);
        assert_eq!(plan.used, 6, "last period's consumption");
        plan.give_back(4, at("2026-03-05T00:00:00Z"), &mut holding);
        assert_eq!(plan.used, 2);

        // A free consumption of the 5th, refunded on a plan for the month subscribed on the 10th
        // (or subscribed again after a cancellation): the plan never held it.
        let mut subscribed = Counter {
            used: 3,
            ..plan.clone()
        };
        subscribed.give_back(4, at("2026-03-05T00:00:00Z"), &mut seeded(0, 0));
        assert_eq!(subscribed.used, 3);

        // A plan applied on the 5th for a period starting on the 10th counts from the 5th.
        let mut ahead = Counter {
            used: 4,
            period_start: at("2026-03-10T00:00:00Z"),
            ..plan.clone()
        };
        let mut applied = Holding::starting_at(at("2026-03-05T00:00:00Z"));
        ahead.give_back(4, at("2026-03-07T00:00:00Z"), &mut applied);
        assert_eq!(ahead.used, 0);

        // An annual plan's November consumption, refunded on December's free tier: the free
        // tier holds only December's usage.
        let mut free = Counter::default_tier(Some(100), at("2026-12-10T00:00:00Z"), 0);
        free.used = 5;
        let mut holding = Holding {
            since: at("2026-12-10T00:00:00Z"),
            seed_held: 5,
            seed_usage: 5,
        };
        free.give_back(5, at("2026-11-20T00:00:00Z"), &mut holding);
        assert_eq!((free.used, holding.seed_usage), (5, 5));
    }
}
