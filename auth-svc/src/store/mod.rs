//! Storage of auth-svc: the generated diesel schema and every query (accounts, sessions, API keys,
//! signing keys, the audit log). Every query takes `&mut AsyncPgConnection`, so the caller
//! decides the transaction.

pub mod api_keys;
pub mod attempts;
pub mod audit;
pub mod email_tokens;
pub mod outbox;
pub mod registrations;
pub mod schema;
pub mod sessions;
pub mod signing_keys;
pub mod users;
