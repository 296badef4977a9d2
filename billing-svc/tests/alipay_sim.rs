//! The Alipay provider against the provider simulator, in process: checkout page, query, close,
//! refunds, payments and their notifications (genuine, tampered, for another app), wrong keys
//! both ways.
//! Each test starts its own simulator on 127.0.0.1:0 and a small receiver for notifications.

#![expect(clippy::unwrap_used, reason = "tests")]

#[path = "common/sim_harness.rs"]
mod sim_harness;

use std::collections::BTreeMap;

use axum::response::IntoResponse;
use billing_svc::{
    domain::Provider,
    providers::{
        Checkout, CheckoutOrder, Notification, NotificationEvent, PaymentProvider, ProviderError,
        Refusal, Trade, TradeStatus,
        alipay::{Alipay, AlipayConfig, NOTIFY_SIGN_EXCLUDED, Refund, sign_content},
        rsa_keys::{self, PrivateKey, PublicKey},
    },
    sim::test_keys,
};
use chrono::{TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::json;
use sim_harness::{Receiver, SimHarness};
use tokio::net::TcpListener;

const APP_ID: &str = "2021000000000001";

type Harness = SimHarness<Alipay>;

impl Harness {
    async fn start() -> Self {
        let receiver = Receiver {
            path: "/v1/webhooks/alipay",
            headers: &[],
            ack: || "success".into_response(),
        };
        SimHarness::start_with(None, "/sim/alipay/orders", receiver, |sim| {
            let keys = test_keys();
            provider(
                sim.gateway_url(),
                APP_ID,
                keys.merchant.clone(),
                keys.alipay.public_key(),
            )
        })
        .await
    }

    fn order(&self) -> CheckoutOrder {
        self.checkout_order("https://app.example/billing/done")
    }

    /// Creates the checkout with `alipay` and opens its page the way the buyer's browser does.
    async fn open_checkout_with(
        &self,
        alipay: &Alipay,
        order: &CheckoutOrder,
    ) -> (StatusCode, String) {
        let Checkout::RedirectUrl(url) = alipay.create_checkout(order).await.unwrap() else {
            panic!("Alipay checkouts are redirects");
        };
        assert!(url.starts_with(&self.sim.gateway_url()), "{url}");
        let page = self.http.get(&url).send().await.unwrap();
        (page.status(), page.text().await.unwrap())
    }

    /// Opens the checkout page of an order that can be opened.
    async fn open_checkout(&self, order: &CheckoutOrder) -> String {
        let (status, page) = self.open_checkout_with(&self.provider, order).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    /// An order whose checkout page the buyer has opened.
    async fn opened_order(&self) -> CheckoutOrder {
        let order = self.order();
        self.open_checkout(&order).await;
        order
    }

    /// The trade as the provider queries it.
    async fn trade(&self, out_trade_no: &str) -> Trade {
        self.provider.query(out_trade_no).await.unwrap().unwrap()
    }
}

fn provider(gateway_url: String, app_id: &str, merchant: PrivateKey, alipay: PublicKey) -> Alipay {
    Alipay::new(AlipayConfig {
        gateway_url,
        app_id: app_id.to_owned(),
        merchant_private_key: merchant,
        alipay_public_key: alipay,
    })
    .unwrap()
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn a_paid_order_is_notified_as_often_as_asked_and_every_notification_verifies() {
    let harness = Harness::start().await;
    let order = harness.order();

    let page = harness.open_checkout(&order).await;
    assert!(page.contains("¥19.99"), "{page}");
    assert!(page.contains("Pro &lt;monthly&gt;"), "{page}");
    assert!(page.contains(&order.out_trade_no), "{page}");
    assert!(page.contains("Pay ¥19.99"), "{page}");
    let pending = harness.trade(&order.out_trade_no).await;
    assert_eq!(pending.status, TradeStatus::Pending);
    assert_eq!(pending.amount_minor, 1999);
    assert_eq!(pending.trade_no, None);

    let (status, paid) = harness
        .pay(&order.out_trade_no, Some(json!({ "deliveries": 2 })))
        .await;

    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["notifyStatuses"], json!([200, 200]));
    let trade_no = paid["tradeNo"].as_str().unwrap();
    let received = harness.received();
    assert_eq!(received.len(), 2);
    let mut notification_ids = Vec::new();
    for raw in &received {
        let notification = harness
            .provider
            .verify_notification(raw, Utc::now())
            .unwrap();
        let trade = trade_of(&notification);
        assert_eq!(trade.out_trade_no, order.out_trade_no);
        assert_eq!(trade.trade_no.as_deref(), Some(trade_no));
        assert_eq!(trade.status, TradeStatus::Paid);
        assert_eq!(trade.amount_minor, 1999);
        assert_eq!(trade.currency, "CNY");
        assert!(trade.paid_at.is_some());
        notification_ids.push(notification.notification_id);
        let fields = form(&raw.body);
        for name in [
            "notify_time",
            "notify_type",
            "charset",
            "version",
            "sign_type",
            "receipt_amount",
            "buyer_pay_amount",
            "subject",
            "gmt_create",
            "gmt_payment",
        ] {
            assert!(fields.contains_key(name), "{name} missing from {fields:?}");
        }
        assert_eq!(fields["subject"], "Pro <monthly>");
    }
    assert_eq!(notification_ids[0], notification_ids[1]);
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Paid);
    assert_eq!(trade.trade_no.as_deref(), Some(trade_no));
    assert!(trade.paid_at.is_some());

    let (_, again) = harness.pay(&order.out_trade_no, None).await;
    assert_eq!(again["tradeNo"], trade_no);
    assert_eq!(again["notifyStatuses"], json!([200]));
}

#[tokio::test]
async fn the_pay_button_pays_and_sends_the_buyer_back_with_signed_parameters() {
    let harness = Harness::start().await;
    let order = harness.opened_order().await;

    let response = harness
        .http
        .post(format!(
            "http://{}/sim/alipay/checkout/{}",
            harness.sim.addr(),
            order.out_trade_no
        ))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()["location"].to_str().unwrap();
    let (url, query) = location.split_once('?').unwrap();
    assert_eq!(url, order.return_url);
    let params = form(query.as_bytes());
    assert_eq!(params["out_trade_no"], order.out_trade_no);
    assert_eq!(params["total_amount"], "19.99");
    assert_eq!(params["app_id"], APP_ID);
    let content = sign_content(&params, NOTIFY_SIGN_EXCLUDED);
    assert!(rsa_keys::verify(
        &test_keys().alipay.public_key(),
        &content,
        &params["sign"]
    ));
    assert_eq!(harness.received().len(), 1);
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Paid);
    assert_eq!(trade.trade_no.as_deref(), Some(params["trade_no"].as_str()));
}

#[tokio::test]
async fn a_notification_with_a_tampered_signature_is_refused_and_the_order_stays_unpaid() {
    let harness = Harness::start().await;
    let order = harness.opened_order().await;

    let (status, paid) = harness
        .pay(&order.out_trade_no, Some(json!({ "tamper": "signature" })))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(paid["notifyStatuses"], json!([200]));
    let received = harness.received();
    assert_eq!(
        harness
            .provider
            .verify_notification(&received[0], Utc::now()),
        Err(Refusal::BadSignature)
    );
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Pending);
}

#[tokio::test]
async fn a_notification_with_a_tampered_amount_verifies_but_states_another_amount() {
    let harness = Harness::start().await;
    let order = harness.opened_order().await;

    harness
        .pay(
            &order.out_trade_no,
            Some(json!({ "tamper": "amount", "deliveries": 3 })),
        )
        .await;

    let received = harness.received();
    assert_eq!(received.len(), 1, "a tampered payment is sent once");
    let notification = harness
        .provider
        .verify_notification(&received[0], Utc::now())
        .unwrap();
    assert_ne!(trade_of(&notification).amount_minor, order.amount_minor);
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Pending);
}

#[tokio::test]
async fn a_notification_for_another_app_is_refused_as_wrong_merchant() {
    let harness = Harness::start().await;
    let keys = test_keys();
    let other_app = provider(
        harness.sim.gateway_url(),
        "2021000000009999",
        keys.merchant.clone(),
        keys.alipay.public_key(),
    );
    let order = harness.opened_order().await;
    harness.pay(&order.out_trade_no, None).await;

    assert_eq!(
        other_app.verify_notification(&harness.received()[0], Utc::now()),
        Err(Refusal::WrongMerchant(APP_ID.to_owned()))
    );
}

#[tokio::test]
async fn closing_succeeds_for_unknown_waiting_and_closed_orders_and_is_refused_for_paid_ones() {
    let harness = Harness::start().await;
    let alipay = &harness.provider;
    alipay.close("never-opened").await.unwrap();
    assert_eq!(alipay.query("never-opened").await.unwrap(), None);

    let waiting = harness.opened_order().await;
    alipay.close(&waiting.out_trade_no).await.unwrap();
    let closed = alipay.query(&waiting.out_trade_no).await.unwrap().unwrap();
    assert_eq!(closed.status, TradeStatus::Closed);
    alipay.close(&waiting.out_trade_no).await.unwrap();
    let (status, _) = harness.pay(&waiting.out_trade_no, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(harness.received().is_empty());

    let paid = harness.opened_order().await;
    harness.pay(&paid.out_trade_no, None).await;
    let refused = alipay.close(&paid.out_trade_no).await.unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Refused { provider: Provider::Alipay, code, .. } if code == "ACQ.TRADE_STATUS_ERROR"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refunds_are_partial_or_whole_never_twice_and_a_whole_refund_closes_the_trade() {
    let harness = Harness::start().await;
    let alipay = &harness.provider;
    let order = harness.opened_order().await;
    let refused_code = |result: Result<Refund, ProviderError>| match result {
        Err(ProviderError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused_code(alipay.trade_refund(&order.out_trade_no, "r1", 999).await),
        "ACQ.TRADE_STATUS_ERROR"
    );
    let (_, paid) = harness.pay(&order.out_trade_no, None).await;

    let first = alipay
        .trade_refund(&order.out_trade_no, "r1", 999)
        .await
        .unwrap();
    let repeated = alipay
        .trade_refund(&order.out_trade_no, "r1", 999)
        .await
        .unwrap();
    let too_much = alipay.trade_refund(&order.out_trade_no, "r2", 1001).await;

    assert_eq!(
        first,
        Refund {
            trade_no: paid["tradeNo"].as_str().unwrap().to_owned(),
            refunded_total_minor: 999,
            fund_change: true,
        }
    );
    assert_eq!(
        (repeated.refunded_total_minor, repeated.fund_change),
        (999, false)
    );
    assert_eq!(refused_code(too_much), "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Paid
    );
    let rest = alipay
        .trade_refund(&order.out_trade_no, "r2", 1000)
        .await
        .unwrap();
    assert_eq!(rest.refunded_total_minor, 1999);
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Closed
    );
    assert_eq!(
        refused_code(alipay.trade_refund("never-opened", "r1", 1).await),
        "ACQ.TRADE_NOT_EXIST"
    );
}

#[tokio::test]
async fn an_order_past_its_expiry_is_closed_and_cannot_be_paid() {
    let harness = Harness::start().await;
    let order = harness.opened_order().await;

    harness.clock.advance(TimeDelta::minutes(15));

    let (status, error) = harness.pay(&order.out_trade_no, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Closed);
    let page = harness.open_checkout(&order).await;
    assert!(!page.contains("<button"), "{page}");
}

#[tokio::test]
async fn requests_signed_with_another_key_are_refused_by_the_simulator() {
    let harness = Harness::start().await;
    let keys = test_keys();
    // "Alipay's" key is not the merchant's: the simulator checks with the merchant's public key.
    let impostor = provider(
        harness.sim.gateway_url(),
        APP_ID,
        keys.alipay.clone(),
        keys.alipay.public_key(),
    );
    let order = harness.order();

    let refused = impostor.query(&order.out_trade_no).await.unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Refused { code, .. } if code == "isv.invalid-signature"),
        "{refused:?}"
    );
    let (status, page) = harness.open_checkout_with(&impostor, &order).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("isv.invalid-signature"), "{page}");
    let (status, _) = harness.state(&order.out_trade_no).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn answers_that_do_not_verify_or_do_not_come_make_the_provider_unavailable() {
    let harness = Harness::start().await;
    let keys = test_keys();
    let wrong_alipay_key = provider(
        harness.sim.gateway_url(),
        APP_ID,
        keys.merchant.clone(),
        keys.merchant.public_key(),
    );
    let unavailable = wrong_alipay_key.query("any").await.unwrap_err();
    assert!(
        matches!(&unavailable, ProviderError::Unavailable { cause, .. } if cause.contains("signature")),
        "{unavailable:?}"
    );

    let addr = harness.sim.addr();
    harness.sim.stop().await.unwrap();
    let gone = provider(
        format!("http://{addr}/gateway.do"),
        APP_ID,
        keys.merchant.clone(),
        keys.alipay.public_key(),
    );
    assert!(matches!(
        gone.close("any").await,
        Err(ProviderError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn the_control_api_pays_without_sending_reports_unreachable_endpoints_and_shows_the_order() {
    let harness = Harness::start().await;
    let silent = harness.opened_order().await;

    let (_, paid) = harness
        .pay(&silent.out_trade_no, Some(json!({ "deliveries": 0 })))
        .await;

    assert_eq!(paid["notifyStatuses"], json!([]));
    assert!(harness.received().is_empty());
    let (_, state) = harness.state(&silent.out_trade_no).await;
    assert_eq!(state["status"], "TRADE_SUCCESS");
    assert_eq!(state["totalAmount"], "19.99");
    assert_eq!(state["tradeNo"], paid["tradeNo"]);
    assert_eq!(state["appId"], APP_ID);

    let closed_port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unreachable = CheckoutOrder {
        notify_url: format!("http://{}/notify", closed_port.local_addr().unwrap()),
        ..harness.order()
    };
    drop(closed_port);
    harness.open_checkout(&unreachable).await;
    let (_, paid) = harness.pay(&unreachable.out_trade_no, None).await;
    assert_eq!(paid["notifyStatuses"], json!([0]));

    let (status, error) = harness.pay("unknown", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown order");
}

#[tokio::test]
async fn reopening_a_checkout_shows_the_same_order_again() {
    let harness = Harness::start().await;
    let order = harness.opened_order().await;

    let page = harness.open_checkout(&order).await;

    assert!(page.contains("Pay ¥19.99"), "{page}");
    let changed = CheckoutOrder {
        amount_minor: 2999,
        ..order
    };
    let (status, page) = harness
        .open_checkout_with(&harness.provider, &changed)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("ACQ.CONTEXT_INCONSISTENT"), "{page}");
}

#[tokio::test]
async fn the_binary_writes_development_keys_and_serves_with_them() {
    let dir = std::env::temp_dir().join(format!("provider-sim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let binary = env!("CARGO_BIN_EXE_provider-sim");
    let keygen = std::process::Command::new(binary)
        .args(["keygen", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let merchant_private = std::fs::read(dir.join("merchant-private.pem")).unwrap();
    let again = std::process::Command::new(binary)
        .args(["keygen", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        std::fs::read(dir.join("merchant-private.pem")).unwrap(),
        merchant_private,
        "existing keys are kept"
    );

    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = std::process::Command::new(binary)
        .env("PROVIDER_SIM_ADDR", addr.to_string())
        .env(
            "SIM_ALIPAY_PRIVATE_KEY_FILE",
            dir.join("alipay-private.pem"),
        )
        .env(
            "SIM_MERCHANT_PUBLIC_KEY_FILE",
            dir.join("merchant-public.pem"),
        )
        .spawn()
        .unwrap();
    let alipay = provider(
        format!("http://{addr}/gateway.do"),
        APP_ID,
        PrivateKey::from_file(&dir.join("merchant-private.pem")).unwrap(),
        PublicKey::from_file(&dir.join("alipay-public.pem")).unwrap(),
    );
    let mut answer = alipay.query("never-opened").await;
    for _ in 0..100 {
        if !matches!(answer, Err(ProviderError::Unavailable { .. })) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        answer = alipay.query("never-opened").await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(answer.unwrap(), None);
}

/// The trade a payment notification reports.
fn trade_of(notification: &Notification) -> &Trade {
    match &notification.event {
        NotificationEvent::Trade(trade) => trade,
        NotificationEvent::Refund(refund) => panic!("a refund notification: {refund:?}"),
    }
}
