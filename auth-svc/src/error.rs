//! auth-svc's errors and their one mapping to gRPC statuses.

use diesel_async::pooled_connection::deadpool::PoolError;
use kit::{db::DbError, error::FieldError};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `INVALID_ARGUMENT` naming the field.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    /// The named thing does not exist or the caller may not see it.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Too many failed password attempts: `RESOURCE_EXHAUSTED` with `retry-after` metadata.
    #[error("too many failed attempts; retry in {retry_after_secs} seconds")]
    LockedOut { retry_after_secs: u64 },
    /// A unique field is taken (the message says which).
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// Anything else that must not happen; logged, never shown to callers.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::InvalidField(FieldError::new(field, problem))
    }
}

impl From<diesel::result::Error> for Error {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(err))
    }
}

impl From<PoolError> for Error {
    fn from(err: PoolError) -> Self {
        Self::Db(DbError::Pool(err))
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidField(err) => err.into(),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::LockedOut { retry_after_secs } => {
                let mut status = Status::resource_exhausted(format!(
                    "too many failed attempts; retry in {retry_after_secs} seconds"
                ));
                status
                    .metadata_mut()
                    .insert("retry-after", retry_after_secs.into());
                status
            }
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Db(err) => kit::error::from_db(&err),
            Error::Internal(cause) => kit::error::internal(&cause),
        }
    }
}
