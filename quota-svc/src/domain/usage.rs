//! Usage report buckets and the page tokens of the list RPCs.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use uuid::Uuid;

use super::period::{add_months, month_start};
use crate::error::Error;

/// At most this many buckets per usage report.
pub const MAX_BUCKETS: usize = 1000;

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

/// The keyset position after the last event of a page: `(occurred_at, usage_id)`.
pub fn event_token(occurred_at: DateTime<Utc>, usage_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{usage_id}", occurred_at.timestamp_micros()))
}

/// Decodes [`event_token`].
pub fn parse_event_token(token: &str) -> Result<(DateTime<Utc>, Uuid), Error> {
    let bad = || Error::invalid("page_token", "not a token from a previous response");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad)?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// The keyset position after the last metric of a quota page.
pub fn metric_token(metric: &str) -> String {
    URL_SAFE_NO_PAD.encode(metric)
}

/// Decodes [`metric_token`].
pub fn parse_metric_token(token: &str) -> Result<String, Error> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Error::invalid("page_token", "not a token from a previous response"))
}

/// The page size: default 50, at most 200, negative is invalid.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    match requested {
        ..0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(50),
        n => Ok(usize::try_from(n).unwrap_or(200).min(200)),
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

    #[test]
    fn tokens_round_trip() {
        let id = Uuid::now_v7();
        let when = at("2026-03-01T10:00:00.123456Z");
        assert_eq!(
            parse_event_token(&event_token(when, id)).unwrap(),
            (when, id)
        );
        assert!(parse_event_token("garbage!").is_err());
        assert_eq!(
            parse_metric_token(&metric_token("api.calls")).unwrap(),
            "api.calls"
        );
    }
}
