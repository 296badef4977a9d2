//! Subscriptions and payments: checkouts, their idempotency keys, the paid subscription's
//! limits in quota-svc, cancellation, plan changes and the payment list.

use proto::billing::{
    ChangePlanRequest, CreatePaymentRequest, CreateSubscriptionRequest, GetPaymentRequest,
    ListPaymentsRequest, PaymentProvider, PaymentStatus, SubscriptionStatus, payment::Checkout,
};
use tonic::Code;
use uuid::Uuid;

use super::harness::Mesh;

fn subscribe_request(plan: &str, key: &str) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        plan_code: plan.to_owned(),
        provider: PaymentProvider::Alipay as i32,
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_paid_subscription_gets_its_plan_limits_and_loses_them_when_canceled() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    mesh.wait_for_limit(user, "analyses", 10).await;
    let created = mesh.subscribe(user, "basic").await;
    let subscription = created.subscription.unwrap();
    let payment = created.payment.unwrap();
    assert_eq!(
        subscription.status,
        SubscriptionStatus::PendingPayment as i32
    );
    assert_eq!(payment.status, PaymentStatus::Pending as i32);
    assert_eq!(payment.amount_minor, 1999);
    let Some(Checkout::RedirectUrl(url)) = &payment.checkout else {
        panic!("no redirect URL: {payment:?}");
    };
    let gateway = format!("http://{}/gateway.do", mesh.provider_proxy.addr());
    assert!(url.starts_with(&gateway), "{url}");
    // The checkout page shows the amount in yuan.
    let page = mesh
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("19.99"), "{page}");

    assert_eq!(mesh.pay_once(&payment).await, [200]);
    let current = mesh.current(user).await.unwrap();
    assert_eq!(current.status, SubscriptionStatus::Active as i32);
    assert!(current.current_period_end.is_some());
    let paid = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert!(!paid.provider_trade_no.is_empty() && paid.paid_at.is_some());
    assert!(paid.checkout.is_none(), "a paid checkout is not shown");
    mesh.wait_for_limit(user, "analyses", 100).await;

    let canceled = mesh.cancel(user, false).await;
    assert_eq!(canceled.status, SubscriptionStatus::Canceled as i32);
    assert!(canceled.canceled_at.is_some());
    mesh.wait_for_limit(user, "analyses", 10).await;
    // Repeating the cancellation is OK and changes nothing.
    let again = mesh.cancel(user, false).await;
    assert_eq!(again.subscription_id, canceled.subscription_id);
    let none = mesh.current(user).await;
    assert!(none.is_none());
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_original_checkout() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let mut client = mesh.billing_client();
    let first = client
        .create_subscription(mesh.as_user(user, subscribe_request("basic", "k-1")))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_subscription(mesh.as_user(user, subscribe_request("basic", "k-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let other = client
        .create_subscription(mesh.as_user(user, subscribe_request("pro", "k-1")))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    // Another user's key of the same name is theirs.
    let stranger = client
        .create_subscription(mesh.as_user(Uuid::now_v7(), subscribe_request("pro", "k-1")))
        .await
        .unwrap();
    assert_eq!(stranger.into_inner().payment.unwrap().amount_minor, 9900);
    // A new key replaces the pending subscription (and cancels its payment).
    mesh.open_checkout(first.payment.as_ref().unwrap()).await;
    let replaced = client
        .create_subscription(mesh.as_user(user, subscribe_request("pro", "k-2")))
        .await
        .unwrap()
        .into_inner();
    let old_payment = mesh
        .payment(user, &first.payment.as_ref().unwrap().payment_id)
        .await;
    assert_eq!(old_payment.status, PaymentStatus::Canceled as i32);
    assert_ne!(
        replaced.subscription.unwrap().subscription_id,
        first.subscription.unwrap().subscription_id
    );
    // ... and the old order is closed at the provider.
    let order = mesh.order(&old_payment.payment_id).await;
    assert_eq!(order["status"], "TRADE_CLOSED", "{order}");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_payment() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let calls = (0..8).map(|_| {
        let mut client = mesh.billing_client();
        let request = mesh.as_user(user, subscribe_request("basic", "same"));
        async move { client.create_subscription(request).await }
    });
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::BTreeSet<String> = answers
        .into_iter()
        .map(|answer| answer.unwrap().into_inner().payment.unwrap().payment_id)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let payments = mesh
        .texts("SELECT payment_id::text AS v FROM payments")
        .await;
    assert_eq!(payments.len(), 1);
}

#[tokio::test]
async fn checkout_requests_name_the_bad_field() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let mut client = mesh.billing_client();
    for (request, field) in [
        (subscribe_request("", "k"), "plan_code"),
        (subscribe_request("basic", ""), "idempotency_key"),
        (subscribe_request("basic", "caf\u{e9}"), "idempotency_key"),
        (
            CreateSubscriptionRequest {
                provider: 0,
                ..subscribe_request("basic", "k")
            },
            "provider",
        ),
        (
            CreateSubscriptionRequest {
                provider: 9,
                ..subscribe_request("basic", "k")
            },
            "provider",
        ),
        (
            CreateSubscriptionRequest {
                return_url: "http://evil.example/".into(),
                ..subscribe_request("basic", "k")
            },
            "return_url",
        ),
    ] {
        let err = client
            .create_subscription(mesh.as_user(user, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let missing = client
        .create_subscription(mesh.as_user(user, subscribe_request("gold", "k")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let wechat = client
        .create_subscription(mesh.as_user(
            user,
            CreateSubscriptionRequest {
                provider: PaymentProvider::WechatPay as i32,
                ..subscribe_request("basic", "k")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        wechat.code(),
        Code::FailedPrecondition,
        "not configured here"
    );
    let anonymous = client
        .create_subscription(tonic::Request::new(subscribe_request("basic", "k")))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let bad_id = client
        .get_payment(mesh.as_user(
            user,
            GetPaymentRequest {
                payment_id: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        bad_id.message().starts_with("payment_id"),
        "{}",
        bad_id.message()
    );
}

#[tokio::test]
async fn another_users_payment_is_not_found_but_an_admin_sees_it() {
    let mesh = Mesh::start().await;
    let owner = Uuid::now_v7();
    let payment = mesh.subscribe(owner, "basic").await.payment.unwrap();
    let request = || GetPaymentRequest {
        payment_id: payment.payment_id.clone(),
    };
    let err = mesh
        .billing_client()
        .get_payment(mesh.as_user(Uuid::now_v7(), request()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    mesh.billing_client()
        .get_payment(mesh.as_admin(request()))
        .await
        .unwrap();
    let others = mesh
        .billing_client()
        .list_payments(mesh.as_user(
            Uuid::now_v7(),
            ListPaymentsRequest {
                user_id: owner.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(others.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn list_payments_pages_newest_first_and_filters_by_status() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let first = mesh.subscribe(user, "basic").await;
    let subscription_id = first.subscription.unwrap().subscription_id;
    let mut created = vec![first.payment.unwrap().payment_id];
    for key in 0..4 {
        let payment = mesh
            .billing_client()
            .create_payment(mesh.as_user(
                user,
                CreatePaymentRequest {
                    subscription_id: subscription_id.clone(),
                    provider: PaymentProvider::Alipay as i32,
                    idempotency_key: format!("renew-{key}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap();
        created.push(payment.payment_id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = mesh
            .billing_client()
            .list_payments(mesh.as_user(
                user,
                ListPaymentsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.payments.into_iter().map(|p| p.payment_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(listed, created);
    // Each new payment canceled the one before: one is pending.
    let pending = mesh
        .billing_client()
        .list_payments(mesh.as_user(
            user,
            ListPaymentsRequest {
                status: PaymentStatus::Pending as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .payments;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].payment_id, created[0]);
    // A token is bound to its filters.
    let page = mesh
        .billing_client()
        .list_payments(mesh.as_user(
            user,
            ListPaymentsRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let err = mesh
        .billing_client()
        .list_payments(mesh.as_user(
            user,
            ListPaymentsRequest {
                status: PaymentStatus::Pending as i32,
                page_token: page.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_token"), "{}", err.message());
}

#[tokio::test]
async fn changing_plan_takes_effect_when_paid() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let first = mesh.subscribe(user, "basic").await.payment.unwrap();
    mesh.pay_once(&first).await;
    mesh.wait_for_limit(user, "analyses", 100).await;
    let change = |plan: &str, key: &str| ChangePlanRequest {
        plan_code: plan.to_owned(),
        provider: PaymentProvider::Alipay as i32,
        idempotency_key: key.to_owned(),
        ..Default::default()
    };
    let same = mesh
        .billing_client()
        .change_plan(mesh.as_user(user, change("basic", "c0")))
        .await
        .unwrap_err();
    assert_eq!(same.code(), Code::FailedPrecondition);
    let changing = mesh
        .billing_client()
        .change_plan(mesh.as_user(user, change("pro", "c1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        changing.subscription.unwrap().plan_code,
        "basic",
        "not before it is paid"
    );
    let payment = changing.payment.unwrap();
    assert_eq!(payment.amount_minor, 9900);
    mesh.pay_once(&payment).await;
    mesh.wait_for_limit(user, "analyses", 1000).await;
    let current = mesh.current(user).await.unwrap();
    assert_eq!(current.plan_code, "pro");
    assert!(mesh.quota(user, "exports").await.unwrap().unlimited);
}
