//! Validation and normalisation of account fields. Errors name the field.

use super::password;
use crate::error::Error;

pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Bounds what a client may make the server hash or compare.
pub const MAX_SECRET_CHARS: usize = 1024;
/// Usernames of the mesh's service accounts (`auth-svc service-key issue`): nobody else may take
/// one, or pass for a service in the audit log and in lists.
pub const SERVICE_USERNAME_PREFIX: &str = "svc-";
/// The email domain of the service accounts, reserved for the same reason.
pub const SERVICE_EMAIL_DOMAIN: &str = "service.invalid";

/// A trimmed, lower-cased email address: one `@`, a non-empty local part of at most 64
/// characters, and a domain of letters, digits and hyphens in dot-separated labels (a single
/// label such as `localhost` is allowed for development).
pub fn email(field: &'static str, raw: &str) -> Result<String, Error> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    }
    let invalid = || Error::invalid(field, "is not a valid email address");
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"@<>()[],;:\\\"".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.iter().all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    if !(local_ok && domain_ok) {
        return Err(invalid());
    }
    if domain == SERVICE_EMAIL_DOMAIN {
        return Err(Error::invalid(
            field,
            format!("the domain {SERVICE_EMAIL_DOMAIN} is reserved for service accounts"),
        ));
    }
    Ok(email)
}

/// A lower-cased username: 3–32 characters of `a-z`, `0-9`, `_`, `.` and `-` (upper case
/// accepted). Never an `@`, so a login name is either a username or an email.
pub fn username(raw: &str) -> Result<String, Error> {
    let username = raw.trim().to_ascii_lowercase();
    if username.is_empty() {
        return Err(Error::invalid("username", "is required"));
    }
    if !(3..=32).contains(&username.len())
        || !username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return Err(Error::invalid(
            "username",
            "must be 3–32 characters of a-z, 0-9, _, . and -",
        ));
    }
    if username.starts_with(SERVICE_USERNAME_PREFIX) {
        return Err(Error::invalid(
            "username",
            format!(
                "names starting with `{SERVICE_USERNAME_PREFIX}` are reserved for service accounts"
            ),
        ));
    }
    Ok(username)
}

/// A trimmed display name of 1–64 characters without control characters.
pub fn display_name(raw: &str) -> Result<String, Error> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(Error::invalid("display_name", "must not be empty"));
    }
    if chars > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "display_name",
            format!("must be 1–{MAX_DISPLAY_NAME_CHARS} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

/// A required secret-like input (token, login name, password to check): non-empty, bounded.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.chars().count() > MAX_SECRET_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_SECRET_CHARS} characters"),
        ));
    }
    Ok(value)
}

/// Register's input, unvalidated.
#[derive(Debug)]
pub struct Registration<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// `None`: the username.
    pub display_name: Option<&'a str>,
}

/// Register's fields, normalised; the password passed the policy.
#[derive(Debug)]
pub struct ValidRegistration {
    pub email: String,
    pub username: String,
    /// The username when none was given.
    pub display_name: String,
}

/// Validates and normalises `input`, the password against the policy at `min_strength`.
pub fn registration(
    input: &Registration<'_>,
    min_strength: u8,
) -> Result<ValidRegistration, Error> {
    let email = email("email", input.email)?;
    let username = username(input.username)?;
    let display_name = match input.display_name {
        Some(name) => display_name(name)?,
        None => username.clone(),
    };
    password::check_policy("password", input.password, &username, &email, min_strength)?;
    Ok(ValidRegistration {
        email,
        username,
        display_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<String, Error>) -> &'static str {
        match result {
            Err(Error::InvalidField(err)) => err.field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            email("email", "  Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        assert!(email("email", "admin@localhost").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example.",
            "a b@example.com",
            "ada@exa_mple.com",
            "ada@@example.com",
            &format!("{}@example.com", "a".repeat(250)),
        ] {
            assert_eq!(field_of(email("email", bad)), "email", "{bad:?}");
        }
    }

    #[test]
    fn usernames_are_lower_cased_and_limited() {
        assert_eq!(username("Ada_L-1").ok().as_deref(), Some("ada_l-1"));
        assert_eq!(
            username("Ada.Lovelace").ok().as_deref(),
            Some("ada.lovelace")
        );
        for bad in ["", "ab", &"a".repeat(33), "ada lovelace", "ada@l", "adä"] {
            assert_eq!(field_of(username(bad)), "username", "{bad:?}");
        }
    }

    #[test]
    fn display_names_are_trimmed_and_limited() {
        assert_eq!(display_name(" Ada ").ok().as_deref(), Some("Ada"));
        assert_eq!(field_of(display_name("  ")), "display_name");
        assert_eq!(field_of(display_name(&"x".repeat(65))), "display_name");
        assert_eq!(field_of(display_name("a\u{7}b")), "display_name");
        assert!(required("token", "").is_err());
        assert!(required("token", &"x".repeat(1025)).is_err());
        assert!(required("token", "x").is_ok());
    }
}
