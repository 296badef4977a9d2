//! Field rules of billing's requests. Each error names the field (INVALID_ARGUMENT).

pub use kit::error::FieldError as Invalid;

/// 1–64 of `a-z0-9_-`, starting with a letter or digit.
pub fn plan_code(field: &'static str, code: &str) -> Result<(), Invalid> {
    if code.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    let mut bytes = code.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if code.len() > 64
        || !first_ok
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Invalid::new(
            field,
            "must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Text of `min..=max` characters.
pub fn text(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let length = value.chars().count();
    if length < min {
        return Err(Invalid::new(field, "is required"));
    }
    if length > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// An uppercase ISO 4217 code.
pub fn currency(field: &'static str, code: &str) -> Result<(), Invalid> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be an uppercase ISO 4217 code such as CNY",
        ))
    }
}

/// A quota metric name as quota-svc accepts it.
pub fn metric(field: &'static str, name: &str) -> Result<(), Invalid> {
    kit::validate::metric(name).map_err(|problem| Invalid::new(field, problem))
}

/// An idempotency key: 1–128 printable ASCII characters.
pub fn idempotency_key(key: &str) -> Result<(), Invalid> {
    const FIELD: &str = "idempotency_key";
    if key.is_empty() {
        return Err(Invalid::new(FIELD, "is required"));
    }
    if key.len() > 128 || !key.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Invalid::new(
            FIELD,
            "must be 1-128 printable ASCII characters",
        ));
    }
    Ok(())
}

/// Where Alipay sends the buyer's browser after paying: https (or http to this machine, for
/// development), at most 512 characters.
pub fn return_url(url: &str) -> Result<(), Invalid> {
    const FIELD: &str = "return_url";
    if url.len() > 512 {
        return Err(Invalid::new(FIELD, "must be at most 512 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| Invalid::new(FIELD, "not a valid URL"))?;
    let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        _ => Err(Invalid::new(
            FIELD,
            "must be an https URL (http only for localhost)",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn plan_codes() {
        assert!(plan_code("plan_code", "pro-monthly").is_ok());
        assert!(plan_code("plan_code", "9x_y").is_ok());
        for bad in ["", "-pro", "Pro", "pro monthly", &"a".repeat(65)] {
            let err = plan_code("plan_code", bad).unwrap_err();
            assert_eq!(err.field, "plan_code", "{bad}");
        }
    }

    #[test]
    fn return_urls_are_https_or_local_http() {
        assert!(return_url("https://shop.example/done?x=1").is_ok());
        assert!(return_url("http://localhost:9000/").is_ok());
        assert!(return_url("http://127.0.0.1/").is_ok());
        assert!(return_url("http://shop.example/").is_err());
        assert!(return_url("javascript:alert(1)").is_err());
        assert!(return_url("not a url").is_err());
        assert!(return_url(&format!("https://x.example/{}", "a".repeat(512))).is_err());
    }

    #[test]
    fn currencies_and_text() {
        assert!(currency("currency", "CNY").is_ok());
        assert!(currency("currency", "cny").is_err());
        assert!(currency("currency", "CNYY").is_err());
        assert!(text("name", "", 1, 100).is_err());
        assert!(text("name", &"é".repeat(100), 1, 100).is_ok());
        assert!(text("name", &"é".repeat(101), 1, 100).is_err());
    }
}
