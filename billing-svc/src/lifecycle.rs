//! The lifecycle worker: runs [`Billing::run_lifecycle`] and the reconciliation with the
//! providers ([`Billing::reconcile_payments`], [`Billing::reconcile_refunds`]) every few seconds, on every replica (rows are
//! claimed with `FOR UPDATE SKIP LOCKED`, so replicas share the work).

use std::{sync::Weak, time::Duration};

use crate::service::Billing;

/// Runs rounds until billing-svc is dropped.
pub async fn run(billing: Weak<Billing>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(billing) = billing.upgrade() else {
            return;
        };
        match billing.run_lifecycle().await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(moved, "lifecycle round"),
            Err(err) => tracing::warn!(%err, "lifecycle round failed; retried next round"),
        }
        match billing.reconcile_payments().await {
            Ok(0) => {}
            Ok(asked) => tracing::info!(asked, "providers asked about unconfirmed payments"),
            Err(err) => tracing::warn!(%err, "payment reconciliation failed; retried next round"),
        }
        match billing.reconcile_refunds().await {
            Ok(0) => {}
            Ok(asked) => tracing::info!(asked, "refunds reconciled"),
            Err(err) => tracing::warn!(%err, "refund reconciliation failed; retried next round"),
        }
    }
}
