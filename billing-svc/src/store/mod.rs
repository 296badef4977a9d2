//! Storage of billing-svc in the `billing` schema. Every function takes `&mut AsyncPgConnection`
//! so the caller (the service layer) decides the transaction; every state transition is a
//! conditional UPDATE on the state it was decided from, returning the row only if it applied.

pub mod events;
pub mod idempotency;
pub mod outbox;
pub mod payments;
pub mod plans;
pub mod refunds;
pub mod schema;
pub mod subscriptions;

pub use diesel_async::AsyncPgConnection as Conn;
