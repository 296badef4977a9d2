//! API key rules without storage: the secret's form, and what a new key may be granted.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kit::caller::{API_KEY_PREFIX, scope, scopes_of_roles};
use rand::{Rng, distributions::Alphanumeric};

use super::validate::SERVICE_USERNAME_PREFIX;
use crate::error::Error;

/// Random characters after `cmk_`: 43 base62 characters carry 256 bits.
const SECRET_CHARS: usize = 43;
/// Characters of the secret shown in lists (`cmk_` plus 8), as the contract says.
pub const DISPLAY_PREFIX_CHARS: usize = 12;
/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Unrevoked keys one user may hold.
pub const MAX_UNREVOKED_KEYS_PER_USER: i64 = 100;

/// A new secret: `cmk_` and base62 characters drawn from `rng` (the OS generator in production).
pub fn generate_secret(rng: &mut impl Rng) -> String {
    let mut secret = String::with_capacity(API_KEY_PREFIX.len() + SECRET_CHARS);
    secret.push_str(API_KEY_PREFIX);
    secret.extend(
        rng.sample_iter(Alphanumeric)
            .take(SECRET_CHARS)
            .map(char::from),
    );
    secret
}

/// The part of a secret shown in lists.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(DISPLAY_PREFIX_CHARS).collect()
}

/// Whether `key` has the form of a secret, checked before hashing or a lookup.
pub fn check_secret_form(key: &str) -> Result<(), Error> {
    let random = key.strip_prefix(API_KEY_PREFIX).ok_or_else(|| {
        Error::invalid("key", format!("an API key starts with `{API_KEY_PREFIX}`"))
    })?;
    if random.is_empty() || random.len() > 100 || !random.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::invalid("key", "not a well-formed API key"));
    }
    Ok(())
}

/// Who grants a key: its owner through the API, or the operator through the CLI (service keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantor {
    Owner,
    Operator,
}

/// A request for a key, as received.
#[derive(Debug, Clone)]
pub struct KeyRequest<'a> {
    pub name: &'a str,
    pub scopes: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
}

/// A request that passed [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKey {
    pub name: String,
    /// Without duplicates, in the order of [`scope::ALL`].
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks a key request against the owner's roles at `now`: a name of 1–64 characters, known
/// scopes no wider than the owner's roles allow (`admin` only for an admin owner, `service` only
/// for a service account and only from the operator), an expiry in the future.
pub fn validate(
    request: &KeyRequest<'_>,
    owner_roles: &[String],
    grantor: Grantor,
    now: DateTime<Utc>,
) -> Result<ValidKey, Error> {
    let name = request.name.trim();
    let name_chars = name.chars().count();
    if name_chars == 0 {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name_chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            "name",
            format!("at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    if request.scopes.is_empty() {
        return Err(Error::invalid("scopes", "at least one scope is required"));
    }
    let requested: BTreeSet<&str> = request.scopes.iter().map(String::as_str).collect();
    if let Some(unknown) = requested.iter().find(|s| !scope::ALL.contains(*s)) {
        return Err(Error::invalid(
            "scopes",
            format!(
                "unknown scope `{unknown}` (known: {})",
                scope::ALL.join(", ")
            ),
        ));
    }
    let allowed = scopes_of_roles(owner_roles);
    for requested in &requested {
        // Service = a service account's key, which only `auth-svc service-key issue` makes.
        if *requested == scope::SERVICE && grantor != Grantor::Operator {
            return Err(Error::PermissionDenied(
                "scopes: the `service` scope is issued only by `auth-svc service-key issue`".into(),
            ));
        }
        if !allowed.contains(*requested) {
            return Err(Error::PermissionDenied(format!(
                "scopes: the `{requested}` scope is beyond what this account may grant"
            )));
        }
    }
    if let Some(expires_at) = request.expires_at
        && expires_at <= now
    {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    Ok(ValidKey {
        name: name.to_owned(),
        scopes: scope::ALL
            .iter()
            .filter(|s| requested.contains(*s))
            .map(|s| (*s).to_owned())
            .collect(),
        expires_at: request.expires_at,
    })
}

/// The username of the service account of `service`: `svc-` and 1–28 characters of `a-z`,
/// `0-9` and `-`.
pub fn service_account_name(service: &str) -> Result<String, Error> {
    let valid = (1..=28).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::invalid(
            "service",
            "1–28 characters of a-z, 0-9 and -",
        ));
    }
    Ok(format!("{SERVICE_USERNAME_PREFIX}{service}"))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use chrono::Duration;
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn check(
        name: &str,
        scopes: &[&str],
        roles: &[&str],
        grantor: Grantor,
    ) -> Result<ValidKey, Error> {
        let scopes = strings(scopes);
        let request = KeyRequest {
            name,
            scopes: &scopes,
            expires_at: None,
        };
        validate(&request, &strings(roles), grantor, now())
    }

    fn field_of(result: Result<ValidKey, Error>) -> String {
        match result {
            Err(Error::InvalidField(err)) => err.field.to_owned(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn secrets_are_prefixed_base62_with_256_bits() {
        let mut rng = StdRng::seed_from_u64(7);
        let secret = generate_secret(&mut rng);
        assert_eq!(secret.len(), 4 + 43);
        assert!(check_secret_form(&secret).is_ok());
        assert_ne!(secret, generate_secret(&mut rng));
        assert_eq!(display_prefix(&secret), secret[..12]);
        // 62^43 > 2^256.
        assert!(43.0 * 62_f64.log2() >= 256.0);
    }

    #[test]
    fn malformed_secrets_are_refused_before_a_lookup() {
        for bad in ["", "cmk_", "abc_123", "cmk_with space", "cmk_ümlaut"] {
            assert!(
                matches!(
                    check_secret_form(bad),
                    Err(Error::InvalidField(kit::error::FieldError {
                        field: "key",
                        ..
                    }))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_must_be_1_to_64_characters() {
        assert_eq!(
            field_of(check("  ", &["quota:read"], &[], Grantor::Owner)),
            "name"
        );
        assert_eq!(
            field_of(check(&"x".repeat(65), &["quota:read"], &[], Grantor::Owner)),
            "name"
        );
        assert!(check(&"é".repeat(64), &["quota:read"], &[], Grantor::Owner).is_ok());
        assert_eq!(
            field_of(check("a\nb", &["quota:read"], &[], Grantor::Owner)),
            "name"
        );
    }

    #[test]
    fn scopes_must_be_known_and_are_deduplicated_in_a_stable_order() {
        assert_eq!(field_of(check("k", &[], &[], Grantor::Owner)), "scopes");
        assert_eq!(
            field_of(check("k", &["quota:read", "root"], &[], Grantor::Owner)),
            "scopes"
        );
        let key = check(
            "k",
            &["billing:read", "quota:consume", "billing:read"],
            &[],
            Grantor::Owner,
        )
        .unwrap();
        assert_eq!(key.scopes, strings(&["quota:consume", "billing:read"]));
    }

    #[test]
    fn privileged_scopes_need_the_owners_role() {
        let denied = |result| matches!(result, Err(Error::PermissionDenied(_)));
        assert!(denied(check("k", &["admin"], &[], Grantor::Owner)));
        assert!(denied(check("k", &["service"], &[], Grantor::Owner)));
        assert!(check("k", &["admin"], &["admin"], Grantor::Owner).is_ok());
        // An admin is not a service, and a service account cannot grant itself keys.
        assert!(denied(check("k", &["service"], &["admin"], Grantor::Owner)));
        assert!(denied(check(
            "k",
            &["service"],
            &["service"],
            Grantor::Owner
        )));
        assert!(denied(check(
            "k",
            &["service"],
            &["admin", "service"],
            Grantor::Owner
        )));
        // The operator issues service keys, still only to service accounts.
        assert!(check("k", &["service"], &["service"], Grantor::Operator).is_ok());
        assert!(denied(check("k", &["service"], &[], Grantor::Operator)));
    }

    #[test]
    fn expiry_must_be_in_the_future() {
        let scopes = strings(&["quota:read"]);
        let at = |offset| KeyRequest {
            name: "k",
            scopes: &scopes,
            expires_at: Some(now() + offset),
        };
        assert_eq!(
            field_of(validate(&at(Duration::zero()), &[], Grantor::Owner, now())),
            "expires_at"
        );
        assert!(validate(&at(Duration::seconds(1)), &[], Grantor::Owner, now()).is_ok());
    }

    #[test]
    fn service_names_become_account_names() {
        assert_eq!(
            service_account_name("quota").ok().as_deref(),
            Some("svc-quota")
        );
        for bad in ["", "Quota", "a_b", &"x".repeat(29)] {
            assert!(service_account_name(bad).is_err(), "{bad:?}");
        }
    }
}
