//! Conversions between protobuf and Rust types shared by the handlers.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::error::Error;

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // Below 2·10⁹ by construction, so the conversion never saturates.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

/// A request's timestamp `field`, or `INVALID_ARGUMENT` naming it when out of range.
pub fn from_timestamp(field: &'static str, at: &Timestamp) -> Result<DateTime<Utc>, Error> {
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, "not a valid timestamp"))
}

/// A request's UUID `field`, or `INVALID_ARGUMENT` naming it.
pub fn uuid(field: &'static str, text: &str) -> Result<Uuid, Error> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(text).map_err(|_| Error::invalid(field, "not a valid UUID"))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn timestamps_round_trip_and_bad_ones_name_the_field() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(from_timestamp("at", &timestamp(at)).unwrap(), at);
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(matches!(
            from_timestamp("expires_at", &bad),
            Err(Error::InvalidField {
                field: "expires_at",
                ..
            })
        ));
        assert!(matches!(
            uuid("key_id", "x"),
            Err(Error::InvalidField {
                field: "key_id",
                ..
            })
        ));
        assert!(matches!(
            uuid("key_id", ""),
            Err(Error::InvalidField {
                field: "key_id",
                ..
            })
        ));
    }
}
