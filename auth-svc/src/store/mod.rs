//! Storage of auth-svc: the generated diesel schema and the queries of the accounts half. Every
//! query takes `&mut AsyncPgConnection`, so the caller decides the transaction.

pub mod attempts;
pub mod audit;
pub mod email_tokens;
pub mod outbox;
pub mod registrations;
pub mod schema;
pub mod sessions;
pub mod users;
