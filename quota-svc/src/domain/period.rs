//! Period arithmetic in UTC: calendar months for the default tier, fixed-length periods rolled
//! forward for plans, and the usage report buckets.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, TimeZone, Utc};

/// The calendar month (UTC) containing `at`: `[first day 00:00, first day of next month)`.
pub fn month_of(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = month_start(at);
    (start, add_months(start, 1))
}

/// The first instant of the month of `at`.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map_or(at, |naive| Utc.from_utc_datetime(&naive))
}

/// `at` plus `months` calendar months (saturating at the end of chrono's range).
pub fn add_months(at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    at.checked_add_months(Months::new(months)).unwrap_or(at)
}

/// The period of the same length as `[start, end)` that contains `now`, for `now >= end`:
/// skips every whole period that passed without a call.
pub fn next_period(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let length = end - start;
    let (Some(length_us), Some(since_us)) = (
        length.num_microseconds().filter(|us| *us > 0),
        (now - start).num_microseconds(),
    ) else {
        return month_of(now);
    };
    let skipped = since_us / length_us;
    let new_start = start + TimeDelta::microseconds(skipped.saturating_mul(length_us));
    (new_start, new_start + length)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn months_are_calendar_months_in_utc() {
        assert_eq!(
            month_of(at("2026-02-14T23:59:59Z")),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            month_of(at("2026-12-31T23:00:00Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn plan_periods_roll_forward_over_skipped_periods() {
        let (start, end) = (at("2026-01-01T00:00:00Z"), at("2026-01-11T00:00:00Z"));
        assert_eq!(
            next_period(start, end, at("2026-01-11T00:00:00Z")),
            (at("2026-01-11T00:00:00Z"), at("2026-01-21T00:00:00Z"))
        );
        assert_eq!(
            next_period(start, end, at("2026-02-05T12:00:00Z")),
            (at("2026-01-31T00:00:00Z"), at("2026-02-10T00:00:00Z"))
        );
    }
}
