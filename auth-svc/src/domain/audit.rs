//! The kinds of security event the audit log records (`audit_events.event_type`, whose CHECK
//! constraint lists the same names).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::UnknownValue;

/// One kind of audit event; its name is what ListAuditEvents shows and filters by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    UserRegistered,
    EmailVerified,
    EmailChanged,
    LoginSucceeded,
    LoginFailed,
    LoginLocked,
    Logout,
    TokenReuseDetected,
    SessionRevoked,
    PasswordChanged,
    PasswordResetRequested,
    PasswordReset,
    UserUpdated,
    UserDeleted,
    ApiKeyCreated,
    ApiKeyRevoked,
}

impl EventType {
    /// Every kind, in the order of the CHECK constraint.
    pub const ALL: [Self; 16] = [
        Self::UserRegistered,
        Self::EmailVerified,
        Self::EmailChanged,
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::LoginLocked,
        Self::Logout,
        Self::TokenReuseDetected,
        Self::SessionRevoked,
        Self::PasswordChanged,
        Self::PasswordResetRequested,
        Self::PasswordReset,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRegistered => "user.registered",
            Self::EmailVerified => "email.verified",
            Self::EmailChanged => "email.changed",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::LoginLocked => "login.locked",
            Self::Logout => "logout",
            Self::TokenReuseDetected => "token.reuse_detected",
            Self::SessionRevoked => "session.revoked",
            Self::PasswordChanged => "password.changed",
            Self::PasswordResetRequested => "password.reset_requested",
            Self::PasswordReset => "password.reset",
            Self::UserUpdated => "user.updated",
            Self::UserDeleted => "user.deleted",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
        }
    }
}

impl FromStr for EventType {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownValue(text.to_owned()))
    }
}

/// Filters of ListAuditEvents; `to` is exclusive.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub subject: Option<Uuid>,
    pub event_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        let mut names: Vec<_> = EventType::ALL.iter().map(|kind| kind.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventType::ALL.len());
        assert!("login.bogus".parse::<EventType>().is_err());
    }

    #[test]
    fn the_schema_allows_exactly_these_names() {
        let migration =
            include_str!("../../../migrations/auth/2026-12-02-000003_audit_event_types/up.sql");
        for kind in EventType::ALL {
            assert!(
                migration.contains(&format!("'{}'", kind.as_str())),
                "{} is missing from the CHECK constraint",
                kind.as_str()
            );
        }
        assert_eq!(migration.matches("'").count(), EventType::ALL.len() * 2);
    }
}
