//! RefundPayment: full and partial refunds through the provider, the refundable remainder under
//! concurrency, idempotency keys, and who may refund what.

use proto::billing::{Payment, PaymentStatus, RefundPaymentRequest, SubscriptionStatus};
use tonic::{Code, Status};
use uuid::Uuid;

use super::harness::Mesh;

fn refund_request(payment: &Payment, amount: Option<i64>, key: &str) -> RefundPaymentRequest {
    RefundPaymentRequest {
        payment_id: payment.payment_id.clone(),
        amount_minor: amount,
        reason: "customer asked".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

/// A user with a paid Basic subscription (19.99 CNY) and its payment.
async fn paid(mesh: &Mesh) -> (Uuid, Payment) {
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    assert_eq!(mesh.pay_once(&payment).await, [200]);
    (user, mesh.payment(user, &payment.payment_id).await)
}

async fn refund(mesh: &Mesh, request: RefundPaymentRequest) -> Result<Payment, Status> {
    mesh.billing_client()
        .refund_payment(mesh.as_admin(request))
        .await
        .map(|response| response.into_inner().payment.unwrap())
}

/// What the simulated provider has refunded of the payment's order, in yuan.
async fn refunded_at_provider(mesh: &Mesh, payment: &Payment) -> String {
    mesh.order(&payment.payment_id).await["refundedAmount"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn partial_refunds_add_up_to_a_full_one_and_leave_the_subscription_alone() {
    let mesh = Mesh::start().await;
    let (user, payment) = paid(&mesh).await;

    let partial = refund(&mesh, refund_request(&payment, Some(500), "r1"))
        .await
        .unwrap();
    assert_eq!(partial.status, PaymentStatus::PartiallyRefunded as i32);
    assert_eq!(partial.refunded_amount_minor, 500);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "5.00");

    // No amount: the whole remainder.
    let full = refund(&mesh, refund_request(&payment, None, "r2"))
        .await
        .unwrap();
    assert_eq!(full.status, PaymentStatus::Refunded as i32);
    assert_eq!(full.refunded_amount_minor, 1999);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "19.99");

    let nothing_left = refund(&mesh, refund_request(&payment, Some(1), "r3"))
        .await
        .unwrap_err();
    assert_eq!(
        nothing_left.code(),
        Code::FailedPrecondition,
        "{nothing_left:?}"
    );
    let current = mesh.current(user).await.unwrap();
    assert_eq!(current.status, SubscriptionStatus::Active as i32);
}

#[tokio::test]
async fn a_refund_above_the_remainder_is_refused_and_changes_nothing() {
    let mesh = Mesh::start().await;
    let (_, payment) = paid(&mesh).await;
    refund(&mesh, refund_request(&payment, Some(1000), "r1"))
        .await
        .unwrap();
    let refused = refund(&mesh, refund_request(&payment, Some(1000), "r2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("999"), "{}", refused.message());
    let negative = refund(&mesh, refund_request(&payment, Some(-5), "r3"))
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    let after = refund(&mesh, refund_request(&payment, Some(999), "r4"))
        .await
        .unwrap();
    assert_eq!(after.refunded_amount_minor, 1999);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "19.99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_what_was_paid() {
    let mesh = Mesh::start().await;
    let (user, payment) = paid(&mesh).await;
    let attempts = (0..10).map(|n| {
        let request = refund_request(&payment, Some(500), &format!("parallel-{n}"));
        refund(&mesh, request)
    });
    let results = futures::future::join_all(attempts).await;
    let succeeded = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(succeeded, 3, "{results:?}");
    for refused in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let after = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(after.refunded_amount_minor, 1500);
    assert_eq!(after.status, PaymentStatus::PartiallyRefunded as i32);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "15.00");
}

#[tokio::test]
async fn a_retried_refund_refunds_once_and_a_reused_key_is_refused() {
    let mesh = Mesh::start().await;
    let (_, payment) = paid(&mesh).await;
    let first = refund(&mesh, refund_request(&payment, Some(700), "once"))
        .await
        .unwrap();
    let again = refund(&mesh, refund_request(&payment, Some(700), "once"))
        .await
        .unwrap();
    assert_eq!(first.refunded_amount_minor, 700);
    assert_eq!(again.refunded_amount_minor, 700);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "7.00");

    let reused = refund(&mesh, refund_request(&payment, Some(800), "once"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    let rows = mesh
        .texts("SELECT status || ' ' || amount_minor AS v FROM refunds ORDER BY created_at")
        .await;
    assert_eq!(rows, ["succeeded 700"]);
}

#[tokio::test]
async fn only_an_admin_refunds_and_only_a_paid_payment() {
    let mesh = Mesh::start().await;
    let (user, payment) = paid(&mesh).await;
    let by_owner = mesh
        .billing_client()
        .refund_payment(mesh.as_user(user, refund_request(&payment, None, "mine")))
        .await
        .unwrap_err();
    assert_eq!(by_owner.code(), Code::PermissionDenied);

    let other = Uuid::now_v7();
    let pending = mesh.subscribe(other, "basic").await.payment.unwrap();
    let unpaid = refund(&mesh, refund_request(&pending, None, "unpaid"))
        .await
        .unwrap_err();
    assert_eq!(unpaid.code(), Code::FailedPrecondition, "{unpaid:?}");

    let unknown = Payment {
        payment_id: Uuid::now_v7().to_string(),
        ..Payment::default()
    };
    let missing = refund(&mesh, refund_request(&unknown, None, "nobody"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad_key = refund(&mesh, refund_request(&payment, None, ""))
        .await
        .unwrap_err();
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
}

#[tokio::test]
async fn an_unreachable_provider_leaves_the_refund_open_and_a_retry_or_the_worker_finishes_it() {
    let mesh = Mesh::start().await;
    let (user, payment) = paid(&mesh).await;

    mesh.provider_proxy.set_up(false);
    let down = refund(&mesh, refund_request(&payment, Some(300), "retry-me"))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(down.message().contains("same idempotency key"), "{down:?}");
    // Reserved meanwhile: another refund cannot take the same money.
    let held = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(held.refunded_amount_minor, 300);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "0.00");

    mesh.provider_proxy.set_up(true);
    let retried = refund(&mesh, refund_request(&payment, Some(300), "retry-me"))
        .await
        .unwrap();
    assert_eq!(retried.refunded_amount_minor, 300);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "3.00");

    // Left to the worker: it asks again once the refund has waited long enough.
    mesh.provider_proxy.set_up(false);
    refund(&mesh, refund_request(&payment, Some(200), "worker"))
        .await
        .unwrap_err();
    mesh.provider_proxy.set_up(true);
    assert_eq!(
        mesh.billing.reconcile_refunds().await.unwrap(),
        0,
        "not yet due"
    );
    mesh.clock.advance(chrono::TimeDelta::minutes(3));
    assert_eq!(mesh.billing.reconcile_refunds().await.unwrap(), 1);
    assert_eq!(refunded_at_provider(&mesh, &payment).await, "5.00");
    let rows = mesh
        .texts("SELECT status || ' ' || amount_minor AS v FROM refunds ORDER BY created_at")
        .await;
    assert_eq!(rows, ["succeeded 300", "succeeded 200"]);
}
