//! The billing-svc error and its one mapping to a gRPC status.

use kit::{db::DbError, error::FieldError};
use tonic::Status;

use crate::providers::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; names the field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("idempotency_key: already used with different parameters")]
    KeyReused,
    /// A notification whose signature is missing or does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid(FieldError::new(field, problem))
    }
}

impl From<diesel::result::Error> for Error {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(err))
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(invalid) => invalid.into(),
            Error::NotFound(message) => Status::not_found(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::AlreadyExists(message) => Status::already_exists(message),
            err @ Error::KeyReused => Status::already_exists(err.to_string()),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::Provider(cause) => {
                tracing::warn!(%cause, "payment provider call failed");
                // The provider's own words help the caller; nothing of ours is in them.
                Status::unavailable(format!(
                    "{cause}; retry with the same idempotency key: a retry never charges or \
                     refunds twice"
                ))
            }
            Error::Db(err) => kit::error::from_db(&err),
        }
    }
}
