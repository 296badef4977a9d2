//! The quota-svc error and its one mapping to a gRPC status.

use kit::db::DbError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message starts with the field name.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("idempotency_key: already used with a different metric or amount")]
    KeyReused,
    /// The consume batch could not be committed (database down, queue closed); nothing consumed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Error {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            problem: problem.into(),
        }
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
            Error::Invalid { field, problem } => kit::error::invalid_field(field, problem),
            Error::NotFound(message) => Status::not_found(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            err @ Error::KeyReused => Status::already_exists(err.to_string()),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "consume batch failed");
                Status::unavailable("quota is unavailable; nothing was consumed; retry later")
            }
            Error::Db(err) => kit::error::from_db(&err),
        }
    }
}
