//! WeChat Pay API v3, simulated: Native orders, query, close and refunds on WeChat Pay's paths,
//! each request's `Authorization` checked with the merchant's public key (401 `SIGN_ERROR`
//! otherwise), every answer signed with the "platform" key and its serial, and notifications
//! encrypted with the APIv3 key and signed like WeChat Pay's.
//!
//! Routes:
//! - `POST /v3/pay/transactions/native`, `GET /v3/pay/transactions/out-trade-no/{no}?mchid=…`,
//!   `POST /v3/pay/transactions/out-trade-no/{no}/close`, `POST /v3/refund/domestic/refunds`.
//! - `POST /sim/wechatpay/orders/{out_trade_no}:pay` with an optional JSON body
//!   `{"deliveries": 1, "tamper": "none" | "signature" | "amount" | "serial" | "ciphertext" |
//!   "stale"}`, answering `{"tradeNo": "…", "notifyStatuses": [200, …]}`.
//! - `GET /sim/wechatpay/orders/{out_trade_no}`: the order as JSON.
//! - `GET /sim/wechatpay/orders/{out_trade_no}/qr`: the order's `code_url` as a QR code with a
//!   Pay button (`POST /sim/wechatpay/checkout/{out_trade_no}`).

mod api;
mod control;
mod notify;
mod orders;
mod page;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    http::HeaderValue,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kit::clock::Clock;
use rand::Rng;

use crate::providers::{
    rsa_keys::{self, KeyError, PrivateKey, PublicKey},
    wechat_v3::{self as wechat, ApiV3Key},
};

/// What the simulator needs to play WeChat Pay.
#[derive(Debug, Clone)]
pub struct WechatSimConfig {
    /// The "platform" private key: signs answers and notifications.
    pub platform_private_key: PrivateKey,
    /// Sent as `Wechatpay-Serial` with everything it signs.
    pub platform_serial: String,
    /// The merchant's public key: checks every request's signature.
    pub merchant_public_key: PublicKey,
    /// The merchant certificate serial requests must name (`serial_no`).
    pub merchant_serial: String,
    /// Encrypts notification resources.
    pub apiv3_key: ApiV3Key,
}

/// The state the WeChat Pay handlers share.
#[derive(Clone)]
struct WechatSim {
    config: Arc<WechatSimConfig>,
    clock: Arc<dyn Clock>,
    orders: Arc<super::order_book::OrderBook<orders::Order>>,
    http: reqwest::Client,
}

impl WechatSim {
    /// A response signed the way WeChat Pay signs its answers.
    fn signed(&self, status: axum::http::StatusCode, body: String) -> Response {
        let headers = self.signature_headers(&body, self.clock.now().timestamp());
        let mut response = (status, body).into_response();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        if response.status() != axum::http::StatusCode::NO_CONTENT {
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        response
    }

    /// `Wechatpay-*` headers over `body` at `timestamp`.
    fn signature_headers(&self, body: &str, timestamp: i64) -> Vec<(&'static str, String)> {
        let timestamp = timestamp.to_string();
        let nonce = wechat::new_nonce(32);
        let signature = rsa_keys::sign(
            &self.config.platform_private_key,
            &wechat::response_message(&timestamp, &nonce, body),
        );
        vec![
            ("wechatpay-timestamp", timestamp),
            ("wechatpay-nonce", nonce),
            ("wechatpay-signature", signature),
            ("wechatpay-serial", self.config.platform_serial.clone()),
            ("wechatpay-signature-type", wechat::AUTH_SCHEME.to_owned()),
            ("request-id", uuid::Uuid::new_v4().to_string()),
        ]
    }
}

/// The WeChat Pay routes, with their own state, to merge into the simulator's router.
pub(super) fn router(
    config: WechatSimConfig,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
) -> Router {
    let sim = WechatSim {
        config: Arc::new(config),
        clock,
        orders: Arc::default(),
        http,
    };
    Router::new()
        .route(wechat::NATIVE_ORDER_PATH, post(api::native_order))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            get(api::query),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            post(api::close),
        )
        .route(wechat::REFUNDS_PATH, post(api::refund))
        .route(
            "/sim/wechatpay/checkout/{out_trade_no}",
            post(control::checkout),
        )
        .route(
            // `{order}:pay` on POST: a path parameter cannot end in a literal.
            "/sim/wechatpay/orders/{order}",
            get(control::state).post(control::pay),
        )
        .route("/sim/wechatpay/orders/{order}/qr", get(control::qr_page))
        .with_state(sim)
}

/// The development WeChat Pay files `provider-sim keygen --provider wechatpay` writes.
pub const KEY_FILES: WechatKeyFiles = WechatKeyFiles {
    merchant_private: "merchant-private.pem",
    merchant_public: "merchant-public.pem",
    merchant_serial: "merchant-serial",
    platform_private: "platform-private.pem",
    platform_public: "platform-public.pem",
    platform_serial: "platform-serial",
    apiv3_key: "apiv3-key",
};

/// The names of the development WeChat Pay files.
#[derive(Debug, Clone, Copy)]
pub struct WechatKeyFiles {
    pub merchant_private: &'static str,
    pub merchant_public: &'static str,
    pub merchant_serial: &'static str,
    pub platform_private: &'static str,
    pub platform_public: &'static str,
    pub platform_serial: &'static str,
    pub apiv3_key: &'static str,
}

/// Writes the merchant's and the "platform's" key pairs with their serials, and an APIv3 key,
/// as [`KEY_FILES`] in `dir`, keeping every file that exists (a missing public key is derived
/// from its private key). Returns the files written.
pub fn write_dev_keys(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    super::create_key_dir(dir)?;
    let files = KEY_FILES;
    let mut written = Vec::new();
    for (private_name, public_name, serial_name) in [
        (
            files.merchant_private,
            files.merchant_public,
            files.merchant_serial,
        ),
        (
            files.platform_private,
            files.platform_public,
            files.platform_serial,
        ),
    ] {
        super::write_missing_key_pair(dir, private_name, public_name, &mut written)?;
        let serial_path = dir.join(serial_name);
        if !serial_path.exists() {
            // Certificate serials are 40 upper-case hex digits; a serial only names a key.
            let mut random = rand::thread_rng();
            let serial = format!(
                "{:032X}{:08X}",
                random.r#gen::<u128>(),
                random.r#gen::<u32>()
            );
            rsa_keys::write_new(&serial_path, serial.as_bytes(), 0o644)?;
            written.push(serial_path);
        }
    }
    let key_path = dir.join(files.apiv3_key);
    if !key_path.exists() {
        rsa_keys::write_new(&key_path, ApiV3Key::generate().expose(), 0o600)?;
        written.push(key_path);
    }
    Ok(written)
}

/// The WeChat Pay development files of `dir` as a simulator configuration.
pub fn config_from_dir(dir: &Path) -> anyhow::Result<WechatSimConfig> {
    let files = KEY_FILES;
    let text = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .map(|text| text.trim().to_owned())
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
    };
    Ok(WechatSimConfig {
        platform_private_key: PrivateKey::from_file(&dir.join(files.platform_private))?,
        platform_serial: text(files.platform_serial)?,
        merchant_public_key: PublicKey::from_file(&dir.join(files.merchant_public))?,
        merchant_serial: text(files.merchant_serial)?,
        apiv3_key: ApiV3Key::from_text(&text(files.apiv3_key)?)?,
    })
}

/// A configuration for tests from [`crate::sim::test_keys`]: the merchant key is the merchant's,
/// the "Alipay" key plays the platform; the serials and the APIv3 key are fixed.
pub fn test_config() -> WechatSimConfig {
    let keys = crate::sim::test_keys();
    WechatSimConfig {
        platform_private_key: keys.alipay.clone(),
        platform_serial: TEST_PLATFORM_SERIAL.to_owned(),
        merchant_public_key: keys.merchant.public_key(),
        merchant_serial: TEST_MERCHANT_SERIAL.to_owned(),
        apiv3_key: test_apiv3_key(),
    }
}

pub const TEST_MERCHANT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
pub const TEST_PLATFORM_SERIAL: &str = "PUB_KEY_ID_0114232134912410000000000000";

/// The fixed APIv3 key of [`test_config`].
pub fn test_apiv3_key() -> ApiV3Key {
    match ApiV3Key::from_text("0123456789abcdefghijklmnopqrstuv") {
        Ok(key) => key,
        Err(_) => unreachable!("the test key is 32 bytes"),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn dev_keys_are_written_once_and_load_as_a_configuration() {
        let dir = std::env::temp_dir().join(format!("sim-wechat-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = crate::sim::test_keys();
        // Existing keys are kept (and generation, slow in debug builds, is skipped).
        keys.merchant
            .write_pem(&dir.join(KEY_FILES.merchant_private))
            .unwrap();
        keys.alipay
            .write_pem(&dir.join(KEY_FILES.platform_private))
            .unwrap();

        let written = write_dev_keys(&dir).unwrap();

        assert_eq!(written.len(), 5, "{written:?}");
        assert!(write_dev_keys(&dir).unwrap().is_empty());
        let config = config_from_dir(&dir).unwrap();
        assert_eq!(config.merchant_serial.len(), 40);
        assert_ne!(config.merchant_serial, config.platform_serial);
        let signature = rsa_keys::sign(&keys.merchant, "x");
        assert!(rsa_keys::verify(
            &config.merchant_public_key,
            "x",
            &signature
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILES.apiv3_key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
