//! The money path as a user walks it, through the real binaries on one fresh database: auth-svc,
//! quota-svc, billing-svc, the edge and the provider simulator, set up as `just up` sets them up
//! (service keys from the auth-svc CLI, development keys from `provider-sim keygen`, the plans
//! from `billing-svc plans apply`). Everything the user does is plain HTTP with curl.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use kit::testing::{
    Binary, SignedUp, TestDb, curl, curl_post, free_port, issue_service_key, sign_up,
    start_auth_svc, workspace_binary,
};
use serde_json::{Value, json};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Polls `url` (GET with `auth`) until `done` holds for its JSON body, for up to 10 s.
fn wait_for(url: &str, auth: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = curl(&[auth, &[url]].concat());
        if status == 200 && done(&body) {
            return body;
        }
        last = body;
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never reached the expected state: {last}");
}

/// How the buyer pays: Alipay's page checkout (a redirect URL) or WeChat Pay's Native QR code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    Alipay,
    WechatPay,
}

impl Provider {
    /// The provider's name in the contract and in the simulator's control API.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Provider::Alipay => ("PAYMENT_PROVIDER_ALIPAY", "alipay"),
            Provider::WechatPay => ("PAYMENT_PROVIDER_WECHAT_PAY", "wechatpay"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_buys_a_plan_with_alipay_and_gets_its_quota_until_canceled() {
    buy_a_plan_and_cancel(Provider::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_buys_a_plan_with_wechat_pay_by_qr_code_and_gets_its_quota_until_canceled() {
    buy_a_plan_and_cancel(Provider::WechatPay).await;
}

/// Runs `provider-sim keygen` (with `extra` arguments) into `dir`.
fn keygen(dir: &std::path::Path, extra: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_provider-sim"))
        .args(["keygen", "--dir", dir.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The whole money path with `provider`, as `just up` sets the mesh up.
async fn buy_a_plan_and_cancel(provider: Provider) {
    let db = TestDb::new(&[]).await;
    let keys = tempdir();
    let wechat_keys = keys.join("wechatpay");
    keygen(&keys, &[]);
    keygen(&wechat_keys, &["--provider", "wechatpay"]);
    let sim_bin = env!("CARGO_BIN_EXE_provider-sim");
    let key = |name: &str| keys.join(name).to_str().unwrap().to_owned();
    let wechat = |name: &str| wechat_keys.join(name).to_str().unwrap().to_owned();
    let serial = |name: &str| std::fs::read_to_string(wechat(name)).unwrap();
    let (merchant_serial, platform_serial) = (serial("merchant-serial"), serial("platform-serial"));

    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let quota_key = issue_service_key(db.url(), MASTER_KEY, "quota-svc", "service");
    let billing_key = issue_service_key(db.url(), MASTER_KEY, "billing-svc", "service");
    let edge_key = issue_service_key(db.url(), MASTER_KEY, "edge-proxy", "service");
    let quota = Binary::start(
        &workspace_binary("quota-svc"),
        "QUOTA",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("QUOTA_SERVICE_API_KEY", &quota_key),
        ],
    );
    let quota_url = format!("http://{}", quota.addr);

    let sim_port = free_port();
    let sim_addr = format!("127.0.0.1:{sim_port}");
    let mut sim = Command::new(sim_bin)
        .env("PROVIDER_SIM_ADDR", &sim_addr)
        .env("SIM_ALIPAY_PRIVATE_KEY_FILE", key("alipay-private.pem"))
        .env("SIM_MERCHANT_PUBLIC_KEY_FILE", key("merchant-public.pem"))
        .env("SIM_WECHATPAY_KEY_DIR", &wechat_keys)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let plans = Command::new(env!("CARGO_BIN_EXE_billing-svc"))
        .args([
            "plans",
            "apply",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/plans.toml"),
        ])
        .env("BILLING_DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        plans.status.success(),
        "{}",
        String::from_utf8_lossy(&plans.stderr)
    );

    // The edge and billing-svc name each other: billing's notify URL is the edge.
    let (edge_port, billing_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{edge_port}");
    let billing = Binary::start_on(
        billing_port,
        &workspace_binary("billing-svc"),
        "BILLING",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("QUOTA_URL", &quota_url),
            ("BILLING_SERVICE_API_KEY", &billing_key),
            ("BILLING_PUBLIC_URL", &base),
            (
                "ALIPAY_GATEWAY_URL",
                &format!("http://{sim_addr}/gateway.do"),
            ),
            ("ALIPAY_APP_ID", "2021000000000001"),
            ("ALIPAY_PRIVATE_KEY_FILE", &key("merchant-private.pem")),
            ("ALIPAY_PUBLIC_KEY_FILE", &key("alipay-public.pem")),
            ("WECHATPAY_BASE_URL", &format!("http://{sim_addr}")),
            ("WECHATPAY_MCHID", "1900000109"),
            ("WECHATPAY_APPID", "wxd678efh567hg6787"),
            (
                "WECHATPAY_PRIVATE_KEY_FILE",
                &wechat("merchant-private.pem"),
            ),
            ("WECHATPAY_MERCHANT_SERIAL", merchant_serial.trim()),
            ("WECHATPAY_APIV3_KEY_FILE", &wechat("apiv3-key")),
            (
                "WECHATPAY_PLATFORM_PUBLIC_KEY_FILE",
                &wechat("platform-public.pem"),
            ),
            ("WECHATPAY_PLATFORM_SERIAL", platform_serial.trim()),
        ],
    );
    let edge = Binary::start_on(
        edge_port,
        &workspace_binary("edge-proxy"),
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_QUOTA_UPSTREAM", &quota_url),
            (
                "EDGE_BILLING_UPSTREAM",
                &format!("http://127.0.0.1:{billing_port}"),
            ),
            ("EDGE_SERVICE_KEY", &edge_key),
        ],
    );

    let SignedUp { bearer, .. } = sign_up(&auth, &base, "ada");
    let as_user = ["-H", bearer.as_str()];
    // The free tier (deploy/plans.toml) reached quota-svc through billing's outbox.
    let quota_of = format!("{base}/v1/quotas/analyses");
    wait_for(&quota_of, &as_user, |body| body["quota"]["limit"] == "10");

    let (status, plans) = curl(&[&format!("{base}/v1/plans")]);
    assert_eq!(status, 200, "{plans}");
    let codes: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|plan| plan["planCode"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["basic-monthly", "pro-monthly", "pro-yearly"]);

    let (provider_name, sim_name) = provider.names();
    let (status, created) = curl_post(
        &format!("{base}/v1/subscriptions"),
        &as_user,
        &json!({"planCode": "basic-monthly", "provider": provider_name, "idempotencyKey": "checkout-1"}),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        created["subscription"]["status"],
        "SUBSCRIPTION_STATUS_PENDING_PAYMENT"
    );
    let out_trade_no = created["payment"]["paymentId"]
        .as_str()
        .unwrap()
        .replace('-', "");
    // What a person would see: Alipay's checkout page, or the QR code of WeChat Pay's code_url.
    let page = if provider == Provider::Alipay {
        let redirect = created["payment"]["redirectUrl"].as_str().unwrap();
        assert!(
            redirect.starts_with(&format!("http://{sim_addr}/gateway.do?")),
            "{redirect}"
        );
        redirect.to_owned()
    } else {
        let code_url = created["payment"]["qrCodeUrl"].as_str().unwrap();
        assert!(code_url.starts_with("weixin://"), "{created}");
        format!("http://{sim_addr}/sim/wechatpay/orders/{out_trade_no}/qr")
    };
    let (status, page) = curl(&[&page]);
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("19.00"), "{page}");

    let (status, paid) = curl_post(
        &format!("http://{sim_addr}/sim/{sim_name}/orders/{out_trade_no}:pay"),
        &[],
        &json!({}),
    );
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["notifyStatuses"], json!([200]));

    let current = format!("{base}/v1/subscriptions/current");
    let active = wait_for(&current, &as_user, |body| {
        body["subscription"]["status"] == "SUBSCRIPTION_STATUS_ACTIVE"
    });
    assert_eq!(active["subscription"]["planCode"], "basic-monthly");
    wait_for(&quota_of, &as_user, |body| body["quota"]["limit"] == "200");
    let (status, consumed) = curl_post(
        &format!("{base}/v1/quotas/analyses:consume"),
        &as_user,
        &json!({"idempotencyKey": "job-1"}),
    );
    assert_eq!(status, 200, "{consumed}");
    assert_eq!(consumed["remaining"], "199");

    let (status, canceled) = curl_post(
        &format!("{base}/v1/subscriptions/current:cancel"),
        &as_user,
        &json!({}),
    );
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(
        canceled["subscription"]["status"],
        "SUBSCRIPTION_STATUS_CANCELED"
    );
    wait_for(&quota_of, &as_user, |body| body["quota"]["limit"] == "10");

    let (status, payments) = curl(&["-H", &bearer, &format!("{base}/v1/payments")]);
    assert_eq!(status, 200, "{payments}");
    assert_eq!(
        payments["payments"][0]["status"],
        "PAYMENT_STATUS_SUCCEEDED"
    );
    assert_eq!(payments["payments"][0]["amountMinor"], "1900");

    for (name, mut process) in [
        ("billing-svc", billing),
        ("edge-proxy", edge),
        ("quota-svc", quota),
        ("auth-svc", auth),
    ] {
        let (exit, took) = process.terminate(Duration::from_secs(5));
        assert!(exit.success(), "{name} exited with {exit:?}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
    }
    sim.kill().unwrap();
    sim.wait().unwrap();
    std::fs::remove_dir_all(&keys).unwrap();
}

/// A fresh directory for this test's development keys.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("commerce-e2e-keys-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
