//! Mapping of failures to `tonic::Status`: the classes every service shares. Each service keeps its
//! own error enum and converts it in one place with these helpers; internal causes are logged with
//! the request id (the current span), never sent to the caller.

use std::fmt::Display;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tonic::Status;

use crate::db::DbError;

/// Logs `cause` and returns an `INTERNAL` status that reveals nothing of it.
pub fn internal(cause: &dyn Display) -> Status {
    tracing::error!(%cause, "internal error");
    Status::internal("internal error")
}

/// `UNAVAILABLE` for a database that does not answer (pool timeout, broken connection), so
/// clients retry; anything else is internal.
pub fn from_db(err: &DbError) -> Status {
    match err {
        DbError::Pool(_) | DbError::Connect(_) => {
            tracing::warn!(cause = %err, "database unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        DbError::Query(query) if is_connection_lost(query) => {
            tracing::warn!(cause = %err, "database connection lost");
            Status::unavailable("the database is unavailable; retry later")
        }
        other => internal(other),
    }
}

/// `INVALID_ARGUMENT` naming the offending field.
pub fn invalid_field(field: &str, problem: impl Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// Bad input in one request field: what the shared decoders ([`crate::convert`], [`crate::page`])
/// return, so each service can fold it into its own error's invalid-field variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field as the proto names it (`page_token`, `limits.limit`).
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

impl From<FieldError> for Status {
    fn from(err: FieldError) -> Self {
        invalid_field(err.field, err.problem)
    }
}

/// A unique constraint was violated (e.g. a duplicate email).
pub fn is_unique_violation(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// The unique constraint a statement violated, when PostgreSQL names it (e.g. `users_email_key`);
/// `None` for any other error.
pub fn violated_unique_constraint(err: &DieselError) -> Option<&str> {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name()
        }
        _ => None,
    }
}

/// A serializable transaction lost a conflict and may be retried.
pub fn is_serialization_failure(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)
    )
}

/// The connection broke mid-query; the database (or the network to it) is down.
pub fn is_connection_lost(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | DieselError::BrokenTransactionManager
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_is_invalid_argument_naming_the_field() {
        let err = FieldError::new("page_size", "must not be negative");
        assert_eq!(err.to_string(), "page_size: must not be negative");
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "page_size: must not be negative");
    }
}
