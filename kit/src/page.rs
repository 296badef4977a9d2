//! Pagination of list RPCs per the protos' conventions: page sizes and opaque page tokens. A token
//! carries the position after which the next page starts and a fingerprint of the filters it was
//! issued for, so a token reused with other filters is refused.
//!
//! Two kinds of position: a [`Cursor`] `(at, id)` for newest-first lists ordered by time, and a
//! string key for lists ordered by a unique name (`*_key_token`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::FieldError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 200;

/// The position of the last item of a page, ordered by `(at, id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// The page size to use for a request's `page_size`: default when 0, clamped to the maximum.
pub fn page_size(requested: i32) -> Result<i64, FieldError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(FieldError::new("page_size", "must not be negative")),
        size => Ok(i64::from(size).min(MAX_PAGE_SIZE)),
    }
}

/// The token for the page after `last`, for a listing with `filters` (any stable text).
pub fn encode_token(last: &Cursor, filters: &str) -> String {
    encode_key_token(
        &format!("{}.{}", last.at.timestamp_micros(), last.id),
        filters,
    )
}

/// The cursor of a request's `page_token` (`None` for the first page).
pub fn decode_token(token: &str, filters: &str) -> Result<Option<Cursor>, FieldError> {
    let Some(position) = decode_key_token(token, filters)? else {
        return Ok(None);
    };
    let (micros, id) = position.split_once('.').ok_or_else(not_a_token)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(not_a_token)?;
    let id = Uuid::parse_str(id).map_err(|_| not_a_token())?;
    Ok(Some(Cursor { at, id }))
}

/// The token for the page after the item keyed `key`, for a listing ordered by that key.
pub fn encode_key_token(key: &str, filters: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{key}.{}", fingerprint(filters)))
}

/// The key of a request's `page_token` made by [`encode_key_token`] (`None` for the first page).
pub fn decode_key_token(token: &str, filters: &str) -> Result<Option<String>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(not_a_token)?;
    // The fingerprint is hex, so the last `.` ends the key whatever the key holds.
    let (key, print) = text.rsplit_once('.').ok_or_else(not_a_token)?;
    if print != fingerprint(filters) {
        return Err(FieldError::new(
            "page_token",
            "was issued for different filters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The next page token of a page of `items` (fetched with `limit + 1` to see whether more exist),
/// truncating `items` to `limit`.
pub fn next_token<T>(
    items: &mut Vec<T>,
    limit: i64,
    filters: &str,
    cursor: impl Fn(&T) -> Cursor,
) -> String {
    next_page(items, limit, |last| encode_token(&cursor(last), filters))
}

/// [`next_token`] for a listing ordered by a string key.
pub fn next_key_token<T>(
    items: &mut Vec<T>,
    limit: i64,
    filters: &str,
    key: impl Fn(&T) -> &str,
) -> String {
    next_page(items, limit, |last| encode_key_token(key(last), filters))
}

/// The next page token of `items` fetched with `limit + 1`, made by `token` from the last item
/// kept; truncates `items` to `limit`. Empty on the last page.
pub fn next_page<T>(items: &mut Vec<T>, limit: i64, token: impl FnOnce(&T) -> String) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() <= limit {
        return String::new();
    }
    items.truncate(limit);
    items.last().map(token).unwrap_or_default()
}

fn fingerprint(filters: &str) -> String {
    hex::encode(&Sha256::digest(filters.as_bytes())[..6])
}

fn not_a_token() -> FieldError {
    FieldError::new("page_token", "not a token from a previous page")
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(1000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(page_size(-1).unwrap_err().field, "page_size");
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
        let key_token = encode_key_token("api.calls", "");
        for (token, filters) in [
            (token.as_str(), "status=disabled"),
            ("garbage!", ""),
            ("YWJj", ""),
            (key_token.as_str(), ""),
        ] {
            assert_eq!(
                decode_token(token, filters).unwrap_err().field,
                "page_token",
                "{token}"
            );
        }
    }

    #[test]
    fn key_tokens_round_trip_only_with_their_filters() {
        let token = encode_key_token("api.calls:v1", "subject=1");
        assert_eq!(
            decode_key_token(&token, "subject=1").unwrap().as_deref(),
            Some("api.calls:v1")
        );
        assert_eq!(decode_key_token("", "x").unwrap(), None);
        assert_eq!(
            decode_key_token(&token, "subject=2").unwrap_err().problem,
            "was issued for different filters"
        );
        assert_eq!(
            decode_key_token("garbage!", "").unwrap_err().field,
            "page_token"
        );
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

        let mut keys = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let token = next_key_token(&mut keys, 2, "", String::as_str);
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(decode_key_token(&token, "").unwrap().as_deref(), Some("b"));
    }
}
