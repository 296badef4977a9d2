//! billing-svc against real PostgreSQL, the real quota-svc and edge, and the provider simulator:
//! plans, checkouts and their idempotency, notifications, the lifecycle worker, the entitlement
//! outbox, and the schema checks.

#![expect(clippy::unwrap_used, reason = "tests")]

mod checkout;
mod harness;
mod lifecycle;
mod notifications;
mod plans;
mod reconciliation;
mod refunds;
mod schema;
mod wechatpay;
