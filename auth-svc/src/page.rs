//! Pagination of newest-first lists: page sizes and opaque page tokens (see the proto's
//! conventions). A token carries the position after which the next page starts and a fingerprint
//! of the filters it was issued for.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 200;

/// The position of the last item of a page, ordered by `(at, id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// The page size to use for a request's `page_size`: default when 0, clamped to the maximum.
pub fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(Error::invalid("page_size", "must not be negative")),
        size => Ok(i64::from(size).min(MAX_PAGE_SIZE)),
    }
}

fn fingerprint(filters: &str) -> String {
    hex::encode(&Sha256::digest(filters.as_bytes())[..6])
}

/// The token for the page after `last`, for a listing with `filters` (any stable text).
pub fn encode_token(last: &Cursor, filters: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}.{}.{}",
        last.at.timestamp_micros(),
        last.id,
        fingerprint(filters)
    ))
}

/// The cursor of a request's `page_token` (`None` for the first page).
pub fn decode_token(token: &str, filters: &str) -> Result<Option<Cursor>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "not a token from a previous page");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let mut parts = text.split('.');
    let (Some(micros), Some(id), Some(print), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if print != fingerprint(filters) {
        return Err(Error::invalid(
            "page_token",
            "was issued for different filters",
        ));
    }
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some(Cursor { at, id }))
}

/// The next page token of a page of `items` (fetched with `limit + 1` to see whether more exist),
/// truncating `items` to `limit`.
pub fn next_token<T>(
    items: &mut Vec<T>,
    limit: i64,
    filters: &str,
    cursor: impl Fn(&T) -> Cursor,
) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() <= limit {
        return String::new();
    }
    items.truncate(limit);
    items
        .last()
        .map(|last| encode_token(&cursor(last), filters))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(1000).unwrap(), 200);
        assert!(matches!(
            page_size(-1),
            Err(Error::InvalidField {
                field: "page_size",
                ..
            })
        ));
    }

    #[test]
    fn tokens_round_trip_only_with_their_filters() {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        let token = encode_token(&cursor, "status=active");
        assert_eq!(decode_token(&token, "status=active").unwrap(), Some(cursor));
        assert_eq!(decode_token("", "x").unwrap(), None);
        for (token, filters) in [
            (token.as_str(), "status=disabled"),
            ("garbage!", ""),
            ("YWJj", ""),
        ] {
            assert!(matches!(
                decode_token(token, filters),
                Err(Error::InvalidField {
                    field: "page_token",
                    ..
                })
            ));
        }
    }

    #[test]
    fn the_next_token_appears_only_when_more_items_exist() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let cursor = |id: &u128| Cursor {
            at,
            id: Uuid::from_u128(*id),
        };
        let mut items = vec![3_u128, 2, 1];
        assert_eq!(next_token(&mut items, 3, "", cursor), "");
        let token = next_token(&mut items, 2, "", cursor);
        assert_eq!(items, [3, 2]);
        assert_eq!(decode_token(&token, "").unwrap(), Some(cursor(&2)));
    }
}
