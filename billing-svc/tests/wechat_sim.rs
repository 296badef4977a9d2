//! The WeChat Pay provider against the provider simulator, in process: Native checkout and its QR
//! page, query, close, refunds (with their notifications), payments and their notifications
//! (genuine and tampered every way the provider must refuse), wrong keys both ways, and the
//! binary's development keys.
//! Each test starts its own simulator on 127.0.0.1:0 and a small receiver for notifications.

#![expect(clippy::unwrap_used, reason = "tests")]

#[path = "common/sim_harness.rs"]
mod sim_harness;

use std::time::Duration;

use axum::response::IntoResponse;
use billing_svc::{
    domain::Provider,
    providers::{
        Checkout, CheckoutOrder, NotificationEvent, PaymentProvider, ProviderError,
        RawNotification, RefundOrder, RefundStatus, Refusal, Trade, TradeStatus,
        rsa_keys::{PrivateKey, PublicKey},
        wechat::{WechatPay, WechatPayConfig},
        wechat_v3::ApiV3Key,
    },
    sim::{
        test_keys,
        wechat::{self as wechat_sim, TEST_MERCHANT_SERIAL, TEST_PLATFORM_SERIAL, test_apiv3_key},
    },
};
use chrono::{TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sim_harness::{Receiver, SimHarness};
use tokio::net::TcpListener;

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";

type Harness = SimHarness<WechatPay>;

impl Harness {
    async fn start() -> Self {
        let receiver = Receiver {
            path: "/v1/webhooks/wechatpay",
            headers: &[
                "wechatpay-signature",
                "wechatpay-timestamp",
                "wechatpay-nonce",
                "wechatpay-serial",
            ],
            // An empty 204, as WeChat Pay allows.
            ack: || StatusCode::NO_CONTENT.into_response(),
        };
        SimHarness::start_with(
            Some(wechat_sim::test_config()),
            "/sim/wechatpay/orders",
            receiver,
            |sim| provider(sim.wechatpay_base_url(), |_| {}),
        )
        .await
    }

    fn order(&self) -> CheckoutOrder {
        self.checkout_order("")
    }

    /// An order placed with WeChat Pay, and its code_url.
    async fn placed_order(&self) -> (CheckoutOrder, String) {
        let order = self.order();
        let Checkout::QrCodeUrl(code_url) = self.provider.create_checkout(&order).await.unwrap()
        else {
            panic!("WeChat Pay Native checkouts are QR codes");
        };
        (order, code_url)
    }

    async fn trade(&self, out_trade_no: &str) -> Trade {
        self.provider.query(out_trade_no).await.unwrap().unwrap()
    }

    /// Waits (up to 5 s) until `count` notifications have arrived.
    async fn received_at_least(&self, count: usize) -> Vec<RawNotification> {
        for _ in 0..100 {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{count} notifications expected, {} arrived",
            self.received().len()
        );
    }
}

/// The provider with the test keys, `change`d (another merchant, wrong keys).
fn provider(base_url: String, change: impl FnOnce(&mut WechatPayConfig)) -> WechatPay {
    let keys = test_keys();
    let mut config = WechatPayConfig {
        base_url,
        mchid: MCHID.to_owned(),
        appid: APPID.to_owned(),
        merchant_private_key: keys.merchant.clone(),
        merchant_serial: TEST_MERCHANT_SERIAL.to_owned(),
        apiv3_key: test_apiv3_key(),
        platform_public_key: keys.alipay.public_key(),
        platform_serial: TEST_PLATFORM_SERIAL.to_owned(),
    };
    change(&mut config);
    WechatPay::new(config).unwrap()
}

fn refused_code<T: std::fmt::Debug>(result: Result<T, ProviderError>) -> String {
    match result {
        Err(ProviderError::Refused {
            provider: Provider::WechatPay,
            code,
            ..
        }) => code,
        other => panic!("expected a WeChat Pay refusal, got {other:?}"),
    }
}

fn trade_of(harness: &Harness, raw: &RawNotification) -> (String, Trade) {
    let notification = harness
        .provider
        .verify_notification(raw, Utc::now())
        .unwrap();
    match notification.event {
        NotificationEvent::Trade(trade) => (notification.notification_id, trade),
        other => panic!("expected a trade, got {other:?}"),
    }
}

fn refund_order(order: &CheckoutOrder, out_refund_no: &str, amount_minor: i64) -> RefundOrder {
    RefundOrder {
        out_trade_no: order.out_trade_no.clone(),
        out_refund_no: out_refund_no.to_owned(),
        amount_minor,
        total_minor: order.amount_minor,
        currency: "CNY".to_owned(),
        reason: "plan canceled".to_owned(),
        notify_url: order.notify_url.clone(),
    }
}

#[tokio::test]
async fn a_checkout_is_a_weixin_code_and_a_paid_order_is_notified_as_often_as_asked() {
    let harness = Harness::start().await;
    let (order, code_url) = harness.placed_order().await;
    assert!(
        code_url.starts_with("weixin://wxpay/bizpayurl?pr="),
        "{code_url}"
    );
    let Checkout::QrCodeUrl(again) = harness.provider.create_checkout(&order).await.unwrap() else {
        panic!("a QR code");
    };
    assert_eq!(
        again, code_url,
        "placing the same order again gives the same code"
    );
    let pending = harness.trade(&order.out_trade_no).await;
    assert_eq!(pending.status, TradeStatus::Pending);
    assert_eq!((pending.amount_minor, pending.trade_no), (1999, None));

    let (status, paid) = harness
        .pay(&order.out_trade_no, Some(json!({ "deliveries": 2 })))
        .await;

    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["notifyStatuses"], json!([204, 204]));
    let transaction_id = paid["tradeNo"].as_str().unwrap();
    let received = harness.received();
    assert_eq!(received.len(), 2);
    let mut ids = Vec::new();
    for raw in &received {
        assert_eq!(raw.content_type, "application/json");
        let (id, trade) = trade_of(&harness, raw);
        assert_eq!(trade.out_trade_no, order.out_trade_no);
        assert_eq!(trade.trade_no.as_deref(), Some(transaction_id));
        assert_eq!(trade.status, TradeStatus::Paid);
        assert_eq!((trade.amount_minor, trade.currency.as_str()), (1999, "CNY"));
        assert!(trade.paid_at.is_some());
        let body: Value = serde_json::from_slice(&raw.body).unwrap();
        assert_eq!(body["event_type"], "TRANSACTION.SUCCESS");
        assert_eq!(body["resource"]["algorithm"], "AEAD_AES_256_GCM");
        assert!(!String::from_utf8_lossy(&raw.body).contains(&order.out_trade_no));
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "retries carry the same notification id");
    let trade = harness.trade(&order.out_trade_no).await;
    assert_eq!(trade.status, TradeStatus::Paid);
    assert_eq!(trade.trade_no.as_deref(), Some(transaction_id));
    assert_eq!(
        refused_code(harness.provider.create_checkout(&order).await),
        "ORDERPAID"
    );
}

#[tokio::test]
async fn closing_succeeds_for_unknown_waiting_and_closed_orders_and_is_refused_for_paid_ones() {
    let harness = Harness::start().await;
    let wechat = &harness.provider;
    wechat.close("neverplaced").await.unwrap();
    assert_eq!(wechat.query("neverplaced").await.unwrap(), None);

    let (waiting, _) = harness.placed_order().await;
    wechat.close(&waiting.out_trade_no).await.unwrap();
    assert_eq!(
        harness.trade(&waiting.out_trade_no).await.status,
        TradeStatus::Closed
    );
    wechat.close(&waiting.out_trade_no).await.unwrap();
    let (status, _) = harness.pay(&waiting.out_trade_no, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(harness.received().is_empty());

    let (paid, _) = harness.placed_order().await;
    harness.pay(&paid.out_trade_no, None).await;
    assert_eq!(
        refused_code(wechat.close(&paid.out_trade_no).await),
        "ORDERPAID"
    );
}

#[tokio::test]
async fn refunds_are_partial_or_whole_never_twice_and_notified_when_done() {
    let harness = Harness::start().await;
    let wechat = &harness.provider;
    let (order, _) = harness.placed_order().await;
    assert_eq!(
        refused_code(wechat.refund(&refund_order(&order, "r1", 999)).await),
        "INVALID_REQUEST"
    );
    harness
        .pay(&order.out_trade_no, Some(json!({ "deliveries": 0 })))
        .await;

    let first = wechat
        .refund(&refund_order(&order, "r1", 999))
        .await
        .unwrap();
    assert_eq!(first.status, RefundStatus::Processing);
    assert_eq!(
        (first.amount_minor, first.out_refund_no.as_str()),
        (999, "r1")
    );
    assert!(first.refund_id.is_some());
    let received = harness.received_at_least(1).await;
    let notification = harness
        .provider
        .verify_notification(&received[0], Utc::now())
        .unwrap();
    let NotificationEvent::Refund(done) = notification.event else {
        panic!("a refund notification");
    };
    assert_eq!(done.status, RefundStatus::Succeeded);
    assert_eq!(done.refund_id, first.refund_id);
    assert_eq!(
        (done.amount_minor, done.out_trade_no.as_str()),
        (999, order.out_trade_no.as_str())
    );

    let repeated = wechat
        .refund(&refund_order(&order, "r1", 999))
        .await
        .unwrap();
    assert_eq!(repeated.status, RefundStatus::Succeeded);
    assert_eq!(repeated.refund_id, first.refund_id);
    assert_eq!(
        refused_code(wechat.refund(&refund_order(&order, "r2", 1001)).await),
        "INVALID_REQUEST",
        "more than the 1000 fen left"
    );
    let rest = wechat
        .refund(&refund_order(&order, "r2", 1000))
        .await
        .unwrap();
    assert_eq!(rest.status, RefundStatus::Processing);
    harness.received_at_least(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(harness.received().len(), 2, "the repeated r1 sent nothing");
    let (_, state) = harness.state(&order.out_trade_no).await;
    assert_eq!(state["refundedTotal"], 1999);
    assert_eq!(state["status"], "REFUND");
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Paid
    );
    let unknown = RefundOrder {
        out_trade_no: "neverplaced".to_owned(),
        ..refund_order(&order, "r3", 1)
    };
    assert_eq!(
        refused_code(wechat.refund(&unknown).await),
        "RESOURCE_NOT_EXISTS"
    );
}

/// Pays `order` with `tamper` and returns the single notification sent.
async fn tampered(harness: &Harness, order: &CheckoutOrder, tamper: &str) -> RawNotification {
    let (status, paid) = harness
        .pay(
            &order.out_trade_no,
            Some(json!({ "tamper": tamper, "deliveries": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(
        paid["notifyStatuses"],
        json!([204]),
        "a tampered payment is sent once"
    );
    let received = harness.received();
    received.last().unwrap().clone()
}

#[tokio::test]
async fn tampered_notifications_are_refused_each_for_its_reason_and_the_order_stays_unpaid() {
    let harness = Harness::start().await;
    let (order, _) = harness.placed_order().await;
    let now = Utc::now();
    for (tamper, refusal) in [
        ("signature", Refusal::BadSignature),
        ("serial", Refusal::BadSignature),
        ("ciphertext", Refusal::BadSignature),
        ("stale", Refusal::Stale),
    ] {
        let raw = tampered(&harness, &order, tamper).await;
        assert_eq!(
            harness.provider.verify_notification(&raw, now),
            Err(refusal),
            "{tamper}"
        );
    }
    // A genuine notification delivered late is stale too.
    let raw = tampered(&harness, &order, "amount").await;
    assert_eq!(
        harness
            .provider
            .verify_notification(&raw, now + TimeDelta::minutes(5)),
        Err(Refusal::Stale)
    );
    // Signed and decrypted fine: billing refuses it by comparing the amount with the payment.
    let (_, trade) = trade_of(&harness, &raw);
    assert_eq!(trade.amount_minor, order.amount_minor + 1);
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Pending
    );
}

#[tokio::test]
async fn a_notification_for_another_merchant_is_refused_as_wrong_merchant() {
    let harness = Harness::start().await;
    let other = provider(harness.sim.wechatpay_base_url(), |config| {
        config.mchid = "1900000999".to_owned();
    });
    let (order, _) = harness.placed_order().await;
    harness.pay(&order.out_trade_no, None).await;
    assert_eq!(
        other.verify_notification(&harness.received()[0], Utc::now()),
        Err(Refusal::WrongMerchant(format!("mchid {MCHID}")))
    );
    let other_app = provider(harness.sim.wechatpay_base_url(), |config| {
        config.appid = "wx0000000000000000".to_owned();
    });
    assert_eq!(
        other_app.verify_notification(&harness.received()[0], Utc::now()),
        Err(Refusal::WrongMerchant(format!("appid {APPID}")))
    );
}

#[tokio::test]
async fn requests_not_signed_by_the_merchant_key_and_serial_are_refused_with_sign_error() {
    let harness = Harness::start().await;
    let order = harness.order();
    let wrong_key = provider(harness.sim.wechatpay_base_url(), |config| {
        config.merchant_private_key = test_keys().alipay.clone();
    });
    assert_eq!(
        refused_code(wrong_key.create_checkout(&order).await),
        "SIGN_ERROR"
    );
    assert_eq!(
        refused_code(wrong_key.query("anyorder").await),
        "SIGN_ERROR"
    );
    let wrong_serial = provider(harness.sim.wechatpay_base_url(), |config| {
        config.merchant_serial = "0000000000000000000000000000000000000000".to_owned();
    });
    assert_eq!(
        refused_code(wrong_serial.close("anyorder").await),
        "SIGN_ERROR"
    );
    let (status, _) = harness.state(&order.out_trade_no).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn answers_that_do_not_verify_or_do_not_come_make_the_provider_unavailable() {
    let harness = Harness::start().await;
    let unavailable = |result: Result<Option<Trade>, ProviderError>| match result {
        Err(ProviderError::Unavailable { cause, .. }) => cause,
        other => panic!("expected Unavailable, got {other:?}"),
    };
    let wrong_platform_key = provider(harness.sim.wechatpay_base_url(), |config| {
        config.platform_public_key = test_keys().merchant.public_key();
    });
    let cause = unavailable(wrong_platform_key.query("anyorder").await);
    assert!(cause.contains("signature"), "{cause}");
    let unknown_serial = provider(harness.sim.wechatpay_base_url(), |config| {
        config.platform_serial = "PUB_KEY_ID_OTHER".to_owned();
    });
    let cause = unavailable(unknown_serial.query("anyorder").await);
    assert!(cause.contains("unknown platform serial"), "{cause}");

    let base_url = harness.sim.wechatpay_base_url();
    harness.sim.stop().await.unwrap();
    let gone = provider(base_url, |_| {});
    unavailable(gone.query("anyorder").await);
}

#[tokio::test]
async fn an_order_past_its_expiry_is_closed_and_cannot_be_paid() {
    let harness = Harness::start().await;
    let (order, _) = harness.placed_order().await;
    harness.clock.advance(TimeDelta::minutes(15));
    let (status, error) = harness.pay(&order.out_trade_no, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Closed
    );
}

#[tokio::test]
async fn the_control_api_pays_without_sending_and_shows_the_order() {
    let harness = Harness::start().await;
    let (order, code_url) = harness.placed_order().await;

    let (_, paid) = harness
        .pay(&order.out_trade_no, Some(json!({ "deliveries": 0 })))
        .await;

    assert_eq!(paid["notifyStatuses"], json!([]));
    assert!(harness.received().is_empty());
    let (_, state) = harness.state(&order.out_trade_no).await;
    assert_eq!(state["status"], "SUCCESS");
    assert_eq!(state["amountTotal"], 1999);
    assert_eq!(state["tradeNo"], paid["tradeNo"]);
    assert_eq!(state["mchid"], MCHID);
    assert_eq!(state["codeUrl"], code_url);
    let (status, error) = harness.pay("unknown", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown order");
    let (status, _) = harness
        .pay(&order.out_trade_no, Some(json!({ "tamper": "nonsense" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qr_page_shows_the_code_and_its_pay_button_pays() {
    let harness = Harness::start().await;
    let (order, code_url) = harness.placed_order().await;
    let qr_url = harness.url(&format!("/sim/wechatpay/orders/{}/qr", order.out_trade_no));

    let page = harness.http.get(&qr_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<svg"), "{page}");
    assert!(page.contains(&code_url.replace('&', "&amp;")), "{page}");
    assert!(page.contains("Pro &lt;monthly&gt;"), "{page}");
    assert!(page.contains("Pay ¥19.99"), "{page}");
    screenshot(&qr_url, &order.out_trade_no);

    let paid = harness
        .http
        .post(harness.url(&format!("/sim/wechatpay/checkout/{}", order.out_trade_no)))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    assert!(paid.text().await.unwrap().contains("Payment successful"));
    assert_eq!(harness.received().len(), 1);
    assert_eq!(
        harness.trade(&order.out_trade_no).await.status,
        TradeStatus::Paid
    );
    let page = harness
        .http
        .get(&qr_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<button"), "{page}");
}

/// A headless Chromium screenshot of the QR page, when a Chromium is installed; otherwise says
/// why it is skipped.
#[expect(
    clippy::print_stdout,
    reason = "the skip reason and the screenshot's path are this test's report"
)]
fn screenshot(url: &str, name: &str) {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|browser| {
            std::process::Command::new(browser)
                .arg("--version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
    else {
        println!("screenshot skipped: no chromium, chromium-browser or google-chrome on PATH");
        return;
    };
    let path = std::env::temp_dir().join(format!("wechat-qr-{name}.png"));
    let _ = std::fs::remove_file(&path);
    let output = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=480,900",
        ])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("QR page screenshot: {}", path.display());
}

#[tokio::test]
async fn the_binary_writes_wechat_development_keys_and_serves_with_them() {
    let dir = std::env::temp_dir().join(format!("provider-sim-wechat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let binary = env!("CARGO_BIN_EXE_provider-sim");
    let keygen = |dir: &std::path::Path| {
        std::process::Command::new(binary)
            .args(["keygen", "--provider", "wechatpay", "--dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let alipay_dir = dir.join("alipay");
    let wechat_dir = dir.join("wechatpay");
    assert!(keygen(&wechat_dir).status.success());
    let serial = std::fs::read_to_string(wechat_dir.join("merchant-serial")).unwrap();
    assert!(keygen(&wechat_dir).status.success());
    assert_eq!(
        std::fs::read_to_string(wechat_dir.join("merchant-serial")).unwrap(),
        serial,
        "existing files are kept"
    );
    let alipay_keygen = std::process::Command::new(binary)
        .args(["keygen", "--dir"])
        .arg(&alipay_dir)
        .output()
        .unwrap();
    assert!(alipay_keygen.status.success(), "{alipay_keygen:?}");

    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = std::process::Command::new(binary)
        .env("PROVIDER_SIM_ADDR", addr.to_string())
        .env(
            "SIM_ALIPAY_PRIVATE_KEY_FILE",
            alipay_dir.join("alipay-private.pem"),
        )
        .env(
            "SIM_MERCHANT_PUBLIC_KEY_FILE",
            alipay_dir.join("merchant-public.pem"),
        )
        .env("SIM_WECHATPAY_KEY_DIR", &wechat_dir)
        .spawn()
        .unwrap();
    let text = |name: &str| std::fs::read_to_string(wechat_dir.join(name)).unwrap();
    let wechat = provider(format!("http://{addr}"), |config| {
        config.merchant_private_key =
            PrivateKey::from_file(&wechat_dir.join("merchant-private.pem")).unwrap();
        config.merchant_serial = text("merchant-serial");
        config.platform_public_key =
            PublicKey::from_file(&wechat_dir.join("platform-public.pem")).unwrap();
        config.platform_serial = text("platform-serial");
        config.apiv3_key = ApiV3Key::from_text(&text("apiv3-key")).unwrap();
    });
    let mut answer = wechat.query("neverplaced").await;
    for _ in 0..100 {
        if !matches!(answer, Err(ProviderError::Unavailable { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = wechat.query("neverplaced").await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(answer.unwrap(), None);
}
