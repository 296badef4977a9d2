//! Field rules that more than one service applies to the same values.

/// A quota metric name: 1–64 of `a-z`, `0-9`, `_`, `.`, `:` and `-`. billing-svc checks plan
/// limits with the rule quota-svc enforces, so a plan never names a metric quota-svc refuses.
pub fn metric(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if name.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
    }) {
        Ok(())
    } else {
        Err("may hold only a-z, 0-9, `_`, `.`, `:` and `-`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert!(metric("api.requests").is_ok());
        assert!(metric("svc:analysis-v2_x").is_ok());
        assert!(metric("").is_err());
        assert!(metric("API").is_err());
        assert!(metric(&"a".repeat(65)).is_err());
    }
}
