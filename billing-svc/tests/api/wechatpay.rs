//! WeChat Pay through the whole mesh: a subscription's checkout is a `weixin://` code, the
//! simulator's encrypted, signed notification goes through the edge (its `Wechatpay-*` headers
//! passed on) and activates the subscription; refused notifications change nothing; a refund
//! answered PROCESSING settles when its REFUND.SUCCESS notification arrives.

use std::time::Duration;

use proto::billing::{
    Payment, PaymentProvider as PbProvider, PaymentStatus, RefundPaymentRequest,
    SubscriptionStatus, payment::Checkout,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::harness::{Mesh, statuses};

/// Subscribes `user` to `plan` paying with WeChat Pay.
async fn subscribe(mesh: &Mesh, user: Uuid, plan: &str) -> Payment {
    mesh.subscribe_with(user, plan, PbProvider::WechatPay)
        .await
        .payment
        .unwrap()
}

/// Tells the simulator to pay the payment's WeChat Pay order; its JSON answer.
async fn pay(mesh: &Mesh, payment: &Payment, body: Value) -> Value {
    let response = mesh
        .http
        .post(format!(
            "http://{}/sim/wechatpay/orders/{}:pay",
            mesh.sim.addr(),
            payment.payment_id.replace('-', "")
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

/// The refund statuses of the payment, oldest first.
async fn refund_statuses(mesh: &Mesh, payment: &Payment) -> Vec<String> {
    mesh.texts(&format!(
        "SELECT status AS v FROM refunds WHERE payment_id = '{}' ORDER BY created_at",
        payment.payment_id
    ))
    .await
}

#[tokio::test]
async fn a_user_pays_a_plan_by_scanning_a_wechat_code_and_gets_its_quota() {
    let mesh = Mesh::start_with_wechatpay().await;
    let user = Uuid::now_v7();
    let payment = subscribe(&mesh, user, "basic").await;
    let Some(Checkout::QrCodeUrl(code_url)) = &payment.checkout else {
        panic!("a WeChat Pay checkout is a QR code: {payment:?}");
    };
    assert!(
        code_url.starts_with("weixin://wxpay/bizpayurl?pr="),
        "{code_url}"
    );

    // Refused at the edge, each for its reason; the payment stays pending.
    for (tamper, status) in [
        ("signature", 401),
        ("stale", 401),
        ("ciphertext", 401),
        ("amount", 400),
    ] {
        let answer = pay(&mesh, &payment, json!({ "tamper": tamper })).await;
        assert_eq!(statuses(&answer), [status], "{tamper}");
    }
    assert_eq!(
        mesh.payment(user, &payment.payment_id).await.status,
        PaymentStatus::Pending as i32
    );

    let answer = pay(&mesh, &payment, json!({ "deliveries": 2 })).await;

    assert_eq!(
        statuses(&answer),
        [200, 200],
        "applied, then acknowledged again"
    );
    let paid = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    let current = mesh.current(user).await.unwrap();
    assert_eq!(current.status, SubscriptionStatus::Active as i32);
    mesh.wait_for_limit(user, "analyses", 100).await;
}

#[tokio::test]
async fn a_wechat_refund_settles_when_its_notification_arrives() {
    let mesh = Mesh::start_with_wechatpay().await;
    let user = Uuid::now_v7();
    let payment = subscribe(&mesh, user, "basic").await;
    assert_eq!(statuses(&pay(&mesh, &payment, json!({})).await), [200]);

    let refunded = mesh
        .billing_client()
        .refund_payment(mesh.as_admin(RefundPaymentRequest {
            payment_id: payment.payment_id.clone(),
            amount_minor: Some(500),
            reason: "customer asked".to_owned(),
            idempotency_key: "r1".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();

    assert_eq!(refunded.payment_id, payment.payment_id);
    let mut settled = Vec::new();
    for _ in 0..100 {
        settled = refund_statuses(&mesh, &payment).await;
        if settled == ["succeeded"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        settled,
        ["succeeded"],
        "the REFUND.SUCCESS notification settles it"
    );
    let order = mesh
        .http
        .get(format!(
            "http://{}/sim/wechatpay/orders/{}",
            mesh.sim.addr(),
            payment.payment_id.replace('-', "")
        ))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(order["refundedTotal"], 500);
    let events = mesh
        .texts("SELECT verdict || ' ' || detail AS v FROM payment_events WHERE provider = 'wechatpay' ORDER BY received_at")
        .await;
    assert!(
        events
            .last()
            .is_some_and(|event| event.starts_with("applied") && event.contains("succeeded")),
        "{events:?}"
    );
}
