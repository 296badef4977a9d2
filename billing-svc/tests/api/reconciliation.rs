//! Payments whose notification never came: the lifecycle worker's reconciliation and GetPayment
//! ask the provider, apply its answer like a notification, and a late notification is then a
//! duplicate.

use chrono::TimeDelta;
use proto::billing::{PaymentStatus, SubscriptionStatus};
use serde_json::json;
use uuid::Uuid;

use super::harness::{Mesh, statuses};

#[tokio::test]
async fn a_payment_whose_notification_never_came_succeeds_by_reconciliation() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    let answer = mesh.pay(&payment, json!({ "deliveries": 0 })).await;
    assert_eq!(statuses(&answer), Vec::<u64>::new(), "{answer}");
    // Not overdue yet: nobody asks the provider.
    assert_eq!(mesh.billing.reconcile_payments().await.unwrap(), 0);
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Pending as i32
    );

    mesh.clock.advance(TimeDelta::minutes(3));
    // The worker may have asked first; either way the payment is confirmed once.
    mesh.billing.reconcile_payments().await.unwrap();
    let paid = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert!(!paid.provider_trade_no.is_empty());
    assert_eq!(
        mesh.current(user).await.unwrap().status,
        SubscriptionStatus::Active as i32
    );
    mesh.wait_for_limit(user, "analyses", 100).await;

    // The notification arrives after all: acknowledged, recorded as a duplicate, no effect.
    let late = mesh.pay(&payment, json!({ "deliveries": 1 })).await;
    assert_eq!(statuses(&late), [200], "{late}");
    let events = mesh
        .texts(
            "SELECT verdict || ' ' || coalesce(headers->>'source', 'notification') AS v \
             FROM payment_events ORDER BY received_at, event_id",
        )
        .await;
    assert_eq!(events, ["applied reconciliation", "duplicate notification"]);
}

#[tokio::test]
async fn polling_get_payment_sees_a_success_whose_notification_was_lost() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    mesh.pay(&payment, json!({ "deliveries": 0 })).await;
    // Fresh: GetPayment does not ask the provider.
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Pending as i32
    );
    mesh.clock.advance(TimeDelta::seconds(61));
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    let asked = mesh
        .texts("SELECT count(*)::text AS v FROM payment_events")
        .await;
    assert_eq!(asked, ["1"]);
}

#[tokio::test]
async fn an_unpaid_overdue_checkout_stays_pending_and_is_asked_about_once_a_minute() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    mesh.open_checkout(&payment).await;
    mesh.clock.advance(TimeDelta::minutes(3));
    let first = mesh.billing.reconcile_payments().await.unwrap();
    let again = mesh.billing.reconcile_payments().await.unwrap();
    assert!(first <= 1 && again == 0, "{first} then {again}");
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Pending as i32
    );
    let recorded = mesh
        .texts("SELECT count(*)::text AS v FROM payment_events")
        .await;
    assert_eq!(
        recorded,
        ["0"],
        "an unpaid trade changes and records nothing"
    );
}
