//! The quota-svc error and its one mapping to a gRPC status.

use kit::{db::DbError, error::FieldError};
use tonic::Status;

use crate::domain::consumer::RefundRefused;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message starts with the field name.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("idempotency_key: already used with a different metric or amount")]
    KeyReused,
    #[error("idempotency_key: already used for this subject by another caller")]
    KeyTaken,
    /// The call could not be served (database down, a batch queue closed, the default tier
    /// changing under a read); nothing was consumed, a retry is safe.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid(FieldError::new(field, problem))
    }
}

impl From<RefundRefused> for Error {
    fn from(refused: RefundRefused) -> Self {
        Self::PermissionDenied(refused.to_string())
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
            Error::Invalid(err) => err.into(),
            Error::NotFound(message) => Status::not_found(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            err @ (Error::KeyReused | Error::KeyTaken) => Status::already_exists(err.to_string()),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "quota call unavailable");
                Status::unavailable("quota is unavailable; nothing was consumed; retry later")
            }
            Error::Db(err) => kit::error::from_db(&err),
        }
    }
}
