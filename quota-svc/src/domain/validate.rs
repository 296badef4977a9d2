//! Input validation; every failure names the field.
//!
//! Strings that reach PostgreSQL must not hold NUL: neither `text` nor `jsonb` can store it, and
//! as consumes are committed in batches, one such request would fail the whole batch.

use serde_json::Value as Json;

use crate::error::Error;

/// Longest idempotency key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Largest `attributes`, as serialized JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 4096;

/// 1–64 characters of `a-z`, `0-9`, `_`, `.`, `:` and `-`.
pub fn metric(field: &'static str, metric: &str) -> Result<(), Error> {
    kit::validate::metric(metric).map_err(|problem| Error::invalid(field, problem))
}

/// Absent means 1; otherwise at least 1.
pub fn amount(amount: Option<i64>) -> Result<i64, Error> {
    match amount {
        None => Ok(1),
        Some(n) if n >= 1 => Ok(n),
        Some(_) => Err(Error::invalid("amount", "must be at least 1")),
    }
}

/// 1–128 characters, no NUL.
pub fn idempotency_key(key: &str) -> Result<(), Error> {
    match key.chars().count() {
        0 => Err(Error::invalid("idempotency_key", "is required")),
        n if n > MAX_KEY_CHARS => Err(Error::invalid(
            "idempotency_key",
            format!("must be at most {MAX_KEY_CHARS} characters"),
        )),
        _ if key.contains('\0') => Err(Error::invalid(
            "idempotency_key",
            "must not contain the NUL character",
        )),
        _ => Ok(()),
    }
}

/// At most 4 KiB of serialized JSON, no NUL in any key or string. Returns the JSON text.
pub fn attributes(attributes: &Json) -> Result<String, Error> {
    let serialized = attributes.to_string();
    if serialized.len() > MAX_ATTRIBUTES_BYTES {
        return Err(Error::invalid(
            "attributes",
            format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON"),
        ));
    }
    if holds_nul(attributes) {
        return Err(Error::invalid(
            "attributes",
            "keys and strings must not contain the NUL character",
        ));
    }
    Ok(serialized)
}

/// Walks the value rather than searching the text for `\u0000`, which would also match an
/// escaped backslash followed by `u0000`.
fn holds_nul(json: &Json) -> bool {
    match json {
        Json::String(text) => text.contains('\0'),
        Json::Array(values) => values.iter().any(holds_nul),
        Json::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Json::Null | Json::Bool(_) | Json::Number(_) => false,
    }
}

/// A limit is ≥ 0.
pub fn limit(limit: i64) -> Result<(), Error> {
    if limit < 0 {
        return Err(Error::invalid("limits.limit", "must not be negative"));
    }
    Ok(())
}

/// A version is ≥ 1.
pub fn version(version: i64) -> Result<(), Error> {
    if version < 1 {
        return Err(Error::invalid("version", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_input_naming_the_field() {
        assert!(metric("metric", "api.calls:v1-x_y").is_ok());
        for bad in ["", "API", "a b", &"m".repeat(65)] {
            let err = metric("metric", bad).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.starts_with("metric:")), "{bad}");
        }
        assert_eq!(amount(None).ok(), Some(1));
        assert!(amount(Some(0)).is_err() && amount(Some(-3)).is_err());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key(&"k".repeat(128)).is_ok());
        assert!(idempotency_key(&"k".repeat(129)).is_err());
        assert!(idempotency_key("a\0b").is_err());
        assert!(metric("metric", "a\0b").is_err());
        assert!(attributes(&Json::String("x".repeat(4097))).is_err());
    }

    #[test]
    fn rejects_nul_anywhere_in_attributes() {
        let ok = serde_json::json!({"file": "a.pdf", "path": "C:\\u0000", "n": [1, {"k": null}]});
        assert_eq!(attributes(&ok).ok(), Some(ok.to_string()));
        for bad in [
            serde_json::json!({"file": "a\u{0}"}),
            serde_json::json!({"a\u{0}": 1}),
            serde_json::json!({"a": {"b": ["x", "\u{0}"]}}),
            serde_json::json!({"a": [{"b\u{0}": true}]}),
        ] {
            let err = attributes(&bad).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.starts_with("attributes:")), "{bad}");
        }
    }
}
