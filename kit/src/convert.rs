//! Decoding and encoding the wire types every service's handlers share: protobuf timestamps and
//! UUID strings. Failures name the request field (see the protos' conventions).

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::error::FieldError;

/// The protobuf timestamp of `at`.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // Below 2·10⁹ by construction, so the conversion never saturates.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

/// A request's timestamp `field`, or an error naming it when out of range.
pub fn from_timestamp(field: &'static str, at: &Timestamp) -> Result<DateTime<Utc>, FieldError> {
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos))
        .ok_or_else(|| FieldError::new(field, "not a valid timestamp"))
}

/// A request's optional timestamp `field`: `None` when absent.
pub fn optional_time(
    field: &'static str,
    at: Option<&Timestamp>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    at.map(|at| from_timestamp(field, at)).transpose()
}

/// A request's timestamp `field` that must be present.
pub fn required_time(
    field: &'static str,
    at: Option<&Timestamp>,
) -> Result<DateTime<Utc>, FieldError> {
    optional_time(field, at)?.ok_or_else(|| FieldError::new(field, "is required"))
}

/// A request's UUID `field`, which must be present.
pub fn uuid(field: &'static str, text: &str) -> Result<Uuid, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Uuid::parse_str(text).map_err(|_| FieldError::new(field, "not a valid UUID"))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn problem<T: std::fmt::Debug>(result: Result<T, FieldError>) -> (&'static str, String) {
        let err = result.unwrap_err();
        (err.field, err.problem)
    }

    #[test]
    fn timestamps_round_trip_and_bad_ones_name_the_field() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(from_timestamp("at", &timestamp(at)).unwrap(), at);
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            problem(from_timestamp("expires_at", &bad)),
            ("expires_at", "not a valid timestamp".to_owned())
        );
        assert_eq!(
            problem(optional_time("from", Some(&bad))).0,
            "from",
            "a present but bad optional time is still an error"
        );
    }

    #[test]
    fn optional_and_required_times() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(optional_time("from", None).unwrap(), None);
        assert_eq!(
            optional_time("from", Some(&timestamp(at))).unwrap(),
            Some(at)
        );
        assert_eq!(required_time("to", Some(&timestamp(at))).unwrap(), at);
        assert_eq!(
            problem(required_time("to", None)),
            ("to", "is required".to_owned())
        );
    }

    #[test]
    fn uuids_are_required_and_must_parse() {
        let id = Uuid::now_v7();
        assert_eq!(uuid("key_id", &id.to_string()).unwrap(), id);
        assert_eq!(
            problem(uuid("key_id", "x")),
            ("key_id", "not a valid UUID".to_owned())
        );
        assert_eq!(
            problem(uuid("key_id", "")),
            ("key_id", "is required".to_owned())
        );
    }
}
