//! The usage log's event kinds and usage report buckets.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Timelike, Utc};

use super::period::{add_months, month_start};
use crate::error::Error;

/// At most this many buckets per usage report.
pub const MAX_BUCKETS: usize = 1000;

/// What a usage event logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Consume,
    Refund,
}

impl EventKind {
    /// The stored form (`usage_events.kind`, whose CHECK admits exactly these).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Consume => "consume",
            EventKind::Refund => "refund",
        }
    }
}

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [EventKind::Consume, EventKind::Refund]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownEventKind(text.to_owned()))
    }
}

/// A stored event kind that is not an [`EventKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown usage event kind {0:?}")]
pub struct UnknownEventKind(pub String);

/// The size of a usage report bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
    Month,
}

impl Bucket {
    /// The `date_trunc` unit.
    pub fn unit(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Month => "month",
        }
    }

    /// The start of the bucket containing `at`.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let hour = at
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_minute(0))
            .unwrap_or(at);
        match self {
            Bucket::Hour => hour,
            Bucket::Day => hour.with_hour(0).unwrap_or(hour),
            Bucket::Month => month_start(at),
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Bucket::Hour => start + TimeDelta::hours(1),
            Bucket::Day => start + TimeDelta::days(1),
            Bucket::Month => add_months(start, 1),
        }
    }

    /// The bucket starts covering `[from, to)`, `from` rounded down and `to` rounded up.
    pub fn starts(
        self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, Error> {
        if from >= to {
            return Err(Error::invalid("from", "must be before `to`"));
        }
        let mut starts = Vec::new();
        let mut start = self.floor(from);
        while start < to {
            if starts.len() == MAX_BUCKETS {
                return Err(Error::invalid(
                    "bucket",
                    format!("the range holds more than {MAX_BUCKETS} buckets"),
                ));
            }
            starts.push(start);
            start = self.next(start);
        }
        Ok(starts)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn event_kinds_read_back_what_they_store() {
        for kind in [EventKind::Consume, EventKind::Refund] {
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        assert_eq!(
            "Refund".parse::<EventKind>(),
            Err(UnknownEventKind("Refund".to_owned()))
        );
    }

    #[test]
    fn buckets_cover_the_rounded_range() {
        let starts = Bucket::Day
            .starts(at("2026-03-01T10:00:00Z"), at("2026-03-03T00:00:01Z"))
            .unwrap();
        assert_eq!(
            starts,
            vec![
                at("2026-03-01T00:00:00Z"),
                at("2026-03-02T00:00:00Z"),
                at("2026-03-03T00:00:00Z")
            ]
        );
        assert!(
            Bucket::Hour
                .starts(at("2026-01-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
                .is_err()
        );
        assert!(
            Bucket::Month
                .starts(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"))
                .is_err()
        );
    }
}
