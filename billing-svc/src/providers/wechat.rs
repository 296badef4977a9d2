//! WeChat Pay API v3 as a [`PaymentProvider`]: Native orders (a `weixin://` code shown as a QR
//! code), query, close, refunds, and the encrypted, signed notifications.
//!
//! This is WeChat Pay's real protocol, so the same code talks to `https://api.mch.weixin.qq.com`
//! or to the provider simulator (`crate::sim`); only [`WechatPayConfig`] differs. The signing
//! and encryption rules are in [`super::wechat_v3`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{
    Acknowledgement, Checkout, CheckoutOrder, Notification, NotificationEvent, PaymentProvider,
    ProviderError, RawNotification, RefundOrder, RefundStatus, RefundUpdate, Refusal, Trade,
    TradeStatus,
    rsa_keys::{self, PrivateKey, PublicKey},
    wechat_v3::{
        ApiV3Key, Authorization, HEADER_NONCE, HEADER_SERIAL, HEADER_SIGNATURE, HEADER_TIMESTAMP,
        MAX_NOTIFICATION_SKEW, NATIVE_ORDER_PATH, ORDER_CLOSED, ORDER_NOT_EXIST, OUT_TRADE_NO_PATH,
        REFUNDS_PATH, RESOURCE_ALGORITHM, ResourceError, decrypt_resource, format_time, new_nonce,
        request_message, response_message,
    },
};
use crate::domain::Provider;

/// `out_trade_no`: 6 to 32 of `[0-9A-Za-z_-|*]` at WeChat Pay; ours are 32 hex digits.
const MAX_OUT_TRADE_NO_CHARS: usize = 32;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A timeout is `Unavailable` and the caller retries (every call here is idempotent).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How billing reaches one WeChat Pay merchant account.
#[derive(Debug, Clone)]
pub struct WechatPayConfig {
    /// `https://api.mch.weixin.qq.com` or the simulator's address, without a trailing path.
    pub base_url: String,
    /// The merchant id (`mchid`).
    pub mchid: String,
    /// The app (official account, mini program or app) the orders belong to (`appid`).
    pub appid: String,
    /// Signs our requests; its `Debug` prints no key material.
    pub merchant_private_key: PrivateKey,
    /// The serial of the merchant API certificate whose key signs (`serial_no`).
    pub merchant_serial: String,
    /// Decrypts notification resources.
    pub apiv3_key: ApiV3Key,
    /// Verifies answers and notifications that name [`Self::platform_serial`].
    pub platform_public_key: PublicKey,
    /// The platform certificate serial or platform public-key id (`Wechatpay-Serial`).
    pub platform_serial: String,
}

/// WeChat Pay as a [`PaymentProvider`].
#[derive(Debug)]
pub struct WechatPay {
    config: WechatPayConfig,
    http: reqwest::Client,
}

/// `trade_state` as billing sees it.
pub fn parse_trade_state(text: &str) -> Option<TradeStatus> {
    match text {
        "NOTPAY" | "USERPAYING" | "ACCEPT" => Some(TradeStatus::Pending),
        // REFUND: paid, then refunded in part or in whole; refunds are tracked on their own.
        "SUCCESS" | "REFUND" => Some(TradeStatus::Paid),
        "CLOSED" | "REVOKED" => Some(TradeStatus::Closed),
        "PAYERROR" => Some(TradeStatus::Failed),
        _ => None,
    }
}

/// A refund's `status` (answer) or `refund_status` (notification) as billing sees it.
pub fn parse_refund_status(text: &str) -> Option<RefundStatus> {
    match text {
        "SUCCESS" => Some(RefundStatus::Succeeded),
        "PROCESSING" => Some(RefundStatus::Processing),
        "CLOSED" | "ABNORMAL" => Some(RefundStatus::Failed),
        _ => None,
    }
}

/// What an answer said, once its signature verified.
enum Answer<T> {
    Ok(T),
    /// A 4xx with a business `code`.
    Business(ErrorBody),
}

impl WechatPay {
    /// Builds the provider and its HTTP client (rustls, timeouts set).
    pub fn new(config: WechatPayConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // API v3 refuses requests without a User-Agent.
            .user_agent(concat!("commerce-mesh-billing/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self { config, http })
    }

    /// The `Authorization` header of a request, signed with the merchant key.
    pub fn authorization(
        &self,
        method: &str,
        path_and_query: &str,
        body: &str,
        timestamp: i64,
        nonce: &str,
    ) -> Authorization {
        let timestamp = timestamp.to_string();
        let message = request_message(method, path_and_query, &timestamp, nonce, body);
        Authorization {
            mchid: self.config.mchid.clone(),
            nonce_str: nonce.to_owned(),
            timestamp,
            serial_no: self.config.merchant_serial.clone(),
            signature: rsa_keys::sign(&self.config.merchant_private_key, &message),
        }
    }

    /// Whether `signature` over [`response_message`] verifies with the platform key `serial`
    /// names; `Err` says why not.
    pub fn verify_platform_signature(
        &self,
        serial: &str,
        timestamp: &str,
        nonce: &str,
        signature: &str,
        body: &str,
    ) -> Result<(), String> {
        if serial != self.config.platform_serial {
            return Err(format!("unknown platform serial {serial:?}"));
        }
        let message = response_message(timestamp, nonce, body);
        if !rsa_keys::verify(&self.config.platform_public_key, &message, signature) {
            return Err("answer signature does not verify".to_owned());
        }
        Ok(())
    }

    /// The Native order's request body.
    pub fn native_order_body(&self, order: &CheckoutOrder) -> Result<String, ProviderError> {
        check_out_trade_no(&order.out_trade_no)?;
        if order.currency != "CNY" {
            return Err(refused(
                "UNSUPPORTED_CURRENCY",
                format!("WeChat Pay Native collects CNY, not {}", order.currency),
            ));
        }
        if order.amount_minor <= 0 {
            return Err(refused(
                "INVALID_AMOUNT",
                format!("{} fen is not a positive amount", order.amount_minor),
            ));
        }
        serde_json::to_string(&NativeOrderRequest {
            appid: &self.config.appid,
            mchid: &self.config.mchid,
            description: &order.subject,
            out_trade_no: &order.out_trade_no,
            time_expire: format_time(order.expires_at),
            notify_url: &order.notify_url,
            amount: OrderAmount {
                total: order.amount_minor,
                currency: &order.currency,
            },
        })
        .map_err(|err| unavailable(format!("encoding the order: {err}")))
    }

    /// Sends a signed request and verifies the answer: `Ok(Answer::Ok(T))` for 2xx,
    /// `Ok(Answer::Business)` for a 4xx with a `code`, `Err(Unavailable)` for anything else.
    /// `T` is parsed from the body (`()` for a 204 is `IgnoredAny` of "null").
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer<T>, ProviderError> {
        let operation = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        let fail = |cause: String| unavailable(format!("{operation}: {cause}"));
        let url = Url::parse(&format!(
            "{}{path_and_query}",
            self.config.base_url.trim_end_matches('/')
        ))
        .map_err(|err| fail(format!("bad URL: {err}")))?;
        // Signed exactly as sent: the path as the URL parser normalised it.
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let body = body.unwrap_or_default();
        let authorization = self.authorization(
            method.as_str(),
            &target,
            &body,
            Utc::now().timestamp(),
            &new_nonce(32),
        );
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("authorization", authorization.header_value())
            .header("accept", "application/json");
        if method != Method::GET {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|err| fail(err.to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(fail(format!("HTTP {status}")));
        }
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| fail(err.to_string()))?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| fail("answer is not UTF-8".to_owned()))?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| fail(format!("answer is not signed ({name} missing)")))
        };
        self.verify_platform_signature(
            header(HEADER_SERIAL)?,
            header(HEADER_TIMESTAMP)?,
            header(HEADER_NONCE)?,
            header(HEADER_SIGNATURE)?,
            text,
        )
        .map_err(fail)?;
        if status.is_success() {
            let text = if text.is_empty() { "null" } else { text };
            return serde_json::from_str(text)
                .map(Answer::Ok)
                .map_err(|err| fail(format!("unexpected answer: {err}")));
        }
        match serde_json::from_str::<ErrorBody>(text) {
            Ok(error) if status.is_client_error() && !error.code.is_empty() => {
                Ok(Answer::Business(error))
            }
            _ => Err(fail(format!("HTTP {status} without a business code"))),
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for WechatPay {
    fn provider(&self) -> Provider {
        Provider::WechatPay
    }

    async fn create_checkout(&self, order: &CheckoutOrder) -> Result<Checkout, ProviderError> {
        let body = self.native_order_body(order)?;
        match self
            .call::<NativeOrderResponse>(Method::POST, NATIVE_ORDER_PATH, Some(body))
            .await?
        {
            Answer::Ok(answer) => Ok(Checkout::QrCodeUrl(answer.code_url)),
            Answer::Business(error) => Err(error.refused()),
        }
    }

    async fn query(&self, out_trade_no: &str) -> Result<Option<Trade>, ProviderError> {
        check_out_trade_no(out_trade_no)?;
        let path = format!(
            "{OUT_TRADE_NO_PATH}{out_trade_no}?mchid={}",
            form_urlencoded::byte_serialize(self.config.mchid.as_bytes()).collect::<String>()
        );
        match self
            .call::<TransactionResource>(Method::GET, &path, None)
            .await?
        {
            Answer::Ok(transaction) => transaction
                .into_trade()
                .map(Some)
                .map_err(|cause| unavailable(format!("query: {cause}"))),
            Answer::Business(error) if error.code == ORDER_NOT_EXIST => Ok(None),
            Answer::Business(error) => Err(error.refused()),
        }
    }

    async fn close(&self, out_trade_no: &str) -> Result<(), ProviderError> {
        check_out_trade_no(out_trade_no)?;
        let path = format!("{OUT_TRADE_NO_PATH}{out_trade_no}/close");
        let body = serde_json::json!({ "mchid": self.config.mchid }).to_string();
        match self
            .call::<serde::de::IgnoredAny>(Method::POST, &path, Some(body))
            .await?
        {
            Answer::Ok(_) => Ok(()),
            Answer::Business(error)
                if error.code == ORDER_NOT_EXIST || error.code == ORDER_CLOSED =>
            {
                Ok(())
            }
            Answer::Business(error) => Err(error.refused()),
        }
    }

    async fn refund(&self, order: &RefundOrder) -> Result<RefundUpdate, ProviderError> {
        check_out_trade_no(&order.out_trade_no)?;
        let body = serde_json::to_string(&RefundRequest {
            out_trade_no: &order.out_trade_no,
            out_refund_no: &order.out_refund_no,
            reason: Some(order.reason.as_str()).filter(|reason| !reason.is_empty()),
            notify_url: Some(order.notify_url.as_str()).filter(|url| !url.is_empty()),
            amount: RefundAmountRequest {
                refund: order.amount_minor,
                total: order.total_minor,
                currency: &order.currency,
            },
        })
        .map_err(|err| unavailable(format!("encoding the refund: {err}")))?;
        match self
            .call::<RefundResource>(Method::POST, REFUNDS_PATH, Some(body))
            .await?
        {
            Answer::Ok(refund) => {
                let status = refund_status_of(&refund);
                refund.into_update(&status)
            }
            .map_err(|cause| unavailable(format!("refund: {cause}"))),
            Answer::Business(error) => Err(error.refused()),
        }
    }

    fn verify_notification(
        &self,
        notification: &RawNotification,
        now: DateTime<Utc>,
    ) -> Result<Notification, Refusal> {
        let header = |name: &str| {
            notification
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
                .ok_or(Refusal::BadSignature)
        };
        let (serial, timestamp, nonce, signature) = (
            header(HEADER_SERIAL)?,
            header(HEADER_TIMESTAMP)?,
            header(HEADER_NONCE)?,
            header(HEADER_SIGNATURE)?,
        );
        let body = std::str::from_utf8(&notification.body)
            .map_err(|_| Refusal::Malformed("body is not UTF-8".to_owned()))?;
        // A serial we do not know names a key we cannot check with: as good as no signature.
        self.verify_platform_signature(serial, timestamp, nonce, signature, body)
            .map_err(|_| Refusal::BadSignature)?;
        // Only now is the timestamp WeChat Pay's own, so only now does its age mean something.
        let sent_at = timestamp
            .parse::<i64>()
            .ok()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
            .ok_or_else(|| Refusal::Malformed(format!("timestamp {timestamp:?}")))?;
        if (now - sent_at).abs() >= MAX_NOTIFICATION_SKEW {
            return Err(Refusal::Stale);
        }
        let envelope: Envelope =
            serde_json::from_str(body).map_err(|err| Refusal::Malformed(err.to_string()))?;
        let resource = &envelope.resource;
        if resource.algorithm != RESOURCE_ALGORITHM {
            return Err(Refusal::Malformed(format!(
                "resource algorithm {:?}",
                resource.algorithm
            )));
        }
        let plaintext = decrypt_resource(
            &self.config.apiv3_key,
            &resource.nonce,
            resource.associated_data.as_deref().unwrap_or(""),
            &resource.ciphertext,
        )
        .map_err(|err| match err {
            // The header signature covered this ciphertext, yet the GCM tag fails: it was not
            // sealed with our APIv3 key (another merchant's notification, or our key is
            // misconfigured). An authentication failure like a bad signature, and one that a
            // retry after fixing the key can cure, so not Malformed.
            ResourceError::Unauthenticated => Refusal::BadSignature,
            ResourceError::NotBase64 | ResourceError::BadNonce => {
                Refusal::Malformed(format!("resource: {err}"))
            }
        })?;
        let event = match envelope.event_type.as_str() {
            event if event.starts_with("TRANSACTION.") => {
                let transaction: TransactionResource = serde_json::from_slice(&plaintext)
                    .map_err(|err| Refusal::Malformed(format!("transaction: {err}")))?;
                self.check_merchant(transaction.mchid.as_deref(), transaction.appid.as_deref())?;
                NotificationEvent::Trade(transaction.into_trade().map_err(Refusal::Malformed)?)
            }
            "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => {
                let refund: RefundResource = serde_json::from_slice(&plaintext)
                    .map_err(|err| Refusal::Malformed(format!("refund: {err}")))?;
                // Refund resources name the merchant but no app.
                self.check_merchant(refund.mchid.as_deref(), None)?;
                let status = refund.refund_status.clone().unwrap_or_default();
                NotificationEvent::Refund(refund.into_update(&status).map_err(Refusal::Malformed)?)
            }
            other => return Err(Refusal::Malformed(format!("event_type {other:?}"))),
        };
        Ok(Notification {
            notification_id: envelope.id,
            event,
        })
    }

    fn acknowledgement(&self) -> Acknowledgement {
        // WeChat Pay takes any 2xx as received and reads no body.
        Acknowledgement {
            content_type: "text/plain",
            body: Vec::new(),
        }
    }
}

impl WechatPay {
    fn check_merchant(&self, mchid: Option<&str>, appid: Option<&str>) -> Result<(), Refusal> {
        let mchid = mchid.ok_or_else(|| Refusal::Malformed("mchid missing".to_owned()))?;
        if mchid != self.config.mchid {
            return Err(Refusal::WrongMerchant(format!("mchid {mchid}")));
        }
        if let Some(appid) = appid
            && appid != self.config.appid
        {
            return Err(Refusal::WrongMerchant(format!("appid {appid}")));
        }
        Ok(())
    }
}

/// Our order numbers go into URL paths unescaped, so only WeChat's characters pass.
fn check_out_trade_no(out_trade_no: &str) -> Result<(), ProviderError> {
    let valid = !out_trade_no.is_empty()
        && out_trade_no.len() <= MAX_OUT_TRADE_NO_CHARS
        && out_trade_no
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_-|*".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(refused(
            "INVALID_OUT_TRADE_NO",
            format!("{out_trade_no:?} is not 1 to 32 of [0-9A-Za-z_-|*]"),
        ))
    }
}

fn unavailable(cause: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: Provider::WechatPay,
        cause,
    }
}

fn refused(code: &str, message: String) -> ProviderError {
    ProviderError::Refused {
        provider: Provider::WechatPay,
        code: code.to_owned(),
        message,
    }
}

fn refund_status_of(refund: &RefundResource) -> String {
    refund
        .status
        .clone()
        .or_else(|| refund.refund_status.clone())
        .unwrap_or_default()
}

/// The error body of a 4xx/5xx answer.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorBody {
    fn refused(self) -> ProviderError {
        refused(&self.code, self.message)
    }
}

#[derive(Serialize)]
struct NativeOrderRequest<'a> {
    appid: &'a str,
    mchid: &'a str,
    description: &'a str,
    out_trade_no: &'a str,
    time_expire: String,
    notify_url: &'a str,
    amount: OrderAmount<'a>,
}

#[derive(Serialize)]
struct OrderAmount<'a> {
    total: i64,
    currency: &'a str,
}

#[derive(Deserialize)]
struct NativeOrderResponse {
    code_url: String,
}

#[derive(Serialize)]
struct RefundRequest<'a> {
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_url: Option<&'a str>,
    amount: RefundAmountRequest<'a>,
}

#[derive(Serialize)]
struct RefundAmountRequest<'a> {
    refund: i64,
    total: i64,
    currency: &'a str,
}

/// A notification's outer JSON.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    event_type: String,
    resource: EncryptedResource,
}

#[derive(Deserialize)]
struct EncryptedResource {
    algorithm: String,
    ciphertext: String,
    nonce: String,
    associated_data: Option<String>,
}

/// A transaction as a query answers it and a TRANSACTION.* notification carries it.
#[derive(Deserialize)]
struct TransactionResource {
    appid: Option<String>,
    mchid: Option<String>,
    out_trade_no: String,
    transaction_id: Option<String>,
    trade_state: String,
    success_time: Option<String>,
    amount: Option<TransactionAmount>,
}

#[derive(Deserialize)]
struct TransactionAmount {
    total: Option<i64>,
    currency: Option<String>,
}

impl TransactionResource {
    fn into_trade(self) -> Result<Trade, String> {
        let status = parse_trade_state(&self.trade_state)
            .ok_or_else(|| format!("unknown trade_state {:?}", self.trade_state))?;
        let amount = self.amount.ok_or("amount missing")?;
        let amount_minor = amount.total.ok_or("amount.total missing")?;
        let paid_at = self
            .success_time
            .filter(|text| !text.is_empty())
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|_| format!("success_time {text:?} is not RFC 3339"))
            })
            .transpose()?;
        Ok(Trade {
            out_trade_no: self.out_trade_no,
            trade_no: self.transaction_id.filter(|id| !id.is_empty()),
            status,
            amount_minor,
            currency: amount.currency.unwrap_or_else(|| "CNY".to_owned()),
            paid_at,
        })
    }
}

/// A refund as the refund API answers it (`status`) and a REFUND.* notification carries it
/// (`refund_status`).
#[derive(Deserialize)]
struct RefundResource {
    mchid: Option<String>,
    out_trade_no: String,
    out_refund_no: String,
    refund_id: Option<String>,
    status: Option<String>,
    refund_status: Option<String>,
    amount: RefundAmount,
}

#[derive(Deserialize)]
struct RefundAmount {
    refund: i64,
}

impl RefundResource {
    fn into_update(self, status: &str) -> Result<RefundUpdate, String> {
        let status = parse_refund_status(status)
            .ok_or_else(|| format!("unknown refund status {status:?}"))?;
        Ok(RefundUpdate {
            out_trade_no: self.out_trade_no,
            out_refund_no: self.out_refund_no,
            status,
            amount_minor: self.amount.refund,
            refund_id: self.refund_id.filter(|id| !id.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        providers::wechat_v3::{ApiV3KeyLength, encrypt_resource},
        sim::{
            test_keys,
            wechat::{TEST_MERCHANT_SERIAL, TEST_PLATFORM_SERIAL, test_apiv3_key},
        },
    };

    const MCHID: &str = "1900000109";
    const APPID: &str = "wxd678efh567hg6787";
    const NOW: i64 = 1_735_787_045; // 2025-01-02T03:04:05Z

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(NOW, 0).unwrap()
    }

    fn wechat() -> WechatPay {
        let keys = test_keys();
        WechatPay::new(WechatPayConfig {
            base_url: "https://api.mch.example".to_owned(),
            mchid: MCHID.to_owned(),
            appid: APPID.to_owned(),
            merchant_private_key: keys.merchant.clone(),
            merchant_serial: TEST_MERCHANT_SERIAL.to_owned(),
            apiv3_key: test_apiv3_key(),
            platform_public_key: keys.alipay.public_key(),
            platform_serial: TEST_PLATFORM_SERIAL.to_owned(),
        })
        .unwrap()
    }

    fn transaction() -> Value {
        json!({
            "appid": APPID,
            "mchid": MCHID,
            "out_trade_no": "0190f1a2b3c47d8e9fa0b1c2d3e4f506",
            "transaction_id": "4200000001202501020123456789",
            "trade_type": "NATIVE",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "success_time": "2025-01-02T11:04:59+08:00",
            "payer": { "openid": "o1" },
            "amount": { "total": 1999, "payer_total": 1999, "currency": "CNY", "payer_currency": "CNY" },
        })
    }

    fn refund_resource(status: &str) -> Value {
        json!({
            "mchid": MCHID,
            "out_trade_no": "0190f1a2b3c47d8e9fa0b1c2d3e4f506",
            "transaction_id": "4200000001202501020123456789",
            "out_refund_no": "r1",
            "refund_id": "50000000382019052709732678859",
            "refund_status": status,
            "amount": { "total": 1999, "refund": 999, "payer_total": 1999, "payer_refund": 999 },
        })
    }

    /// A notification body as WeChat Pay sends it: `resource` encrypted with the test APIv3 key.
    fn envelope(event_type: &str, original_type: &str, resource: &Value) -> String {
        let nonce = "fdasflkja484";
        json!({
            "id": "EV-2018022511223320873",
            "create_time": "2025-01-02T11:05:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": encrypt_resource(
                    &test_apiv3_key(), nonce, original_type, resource.to_string().as_bytes()
                ).unwrap(),
                "associated_data": original_type,
                "nonce": nonce,
            },
        })
        .to_string()
    }

    /// `body` with `Wechatpay-*` headers signed by the platform (test "Alipay") key at `timestamp`.
    fn signed(body: String, timestamp: i64) -> RawNotification {
        let (timestamp, nonce) = (timestamp.to_string(), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS");
        let signature = rsa_keys::sign(
            &test_keys().alipay,
            &format!("{timestamp}\n{nonce}\n{body}\n"),
        );
        RawNotification {
            content_type: "application/json".to_owned(),
            body: body.into_bytes(),
            headers: vec![
                (
                    "wechatpay-serial".to_owned(),
                    TEST_PLATFORM_SERIAL.to_owned(),
                ),
                ("wechatpay-timestamp".to_owned(), timestamp),
                ("wechatpay-nonce".to_owned(), nonce.to_owned()),
                ("wechatpay-signature".to_owned(), signature),
            ],
        }
    }

    fn header(raw: &mut RawNotification, name: &str, value: &str) {
        for (key, old) in &mut raw.headers {
            if key == name {
                *old = value.to_owned();
            }
        }
    }

    fn payment() -> RawNotification {
        signed(
            envelope("TRANSACTION.SUCCESS", "transaction", &transaction()),
            NOW,
        )
    }

    #[test]
    fn the_signed_messages_are_byte_exact() {
        assert_eq!(
            request_message(
                "POST",
                "/v3/pay/transactions/native",
                "1554208460",
                "593BEC0C930BF1AFEB40B4A08C8FB242",
                r#"{"a":1}"#
            ),
            "POST\n/v3/pay/transactions/native\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{\"a\":1}\n"
        );
        // A GET signs an empty body: the message still ends with its own newline.
        assert_eq!(
            request_message("GET", "/v3/x?mchid=1", "1", "n", ""),
            "GET\n/v3/x?mchid=1\n1\nn\n\n"
        );
        assert_eq!(
            response_message("1554209980", "c5ac7061fccab6bf3e254dcf98995b8c", "{}"),
            "1554209980\nc5ac7061fccab6bf3e254dcf98995b8c\n{}\n"
        );
    }

    #[test]
    fn the_authorization_header_is_wechats_format_signed_by_the_merchant_key() {
        let wechat = wechat();
        let path = "/v3/pay/transactions/out-trade-no/o1?mchid=1900000109";
        let authorization = wechat.authorization("GET", path, "", 1_554_208_460, "NONCE123");
        let expected_message =
            "GET\n/v3/pay/transactions/out-trade-no/o1?mchid=1900000109\n1554208460\nNONCE123\n\n";
        let expected_signature = rsa_keys::sign(&test_keys().merchant, expected_message);
        assert_eq!(
            authorization.header_value(),
            format!(
                "WECHATPAY2-SHA256-RSA2048 mchid=\"1900000109\",nonce_str=\"NONCE123\",\
                 timestamp=\"1554208460\",serial_no=\"{TEST_MERCHANT_SERIAL}\",\
                 signature=\"{expected_signature}\""
            )
        );
        assert!(rsa_keys::verify(
            &test_keys().merchant.public_key(),
            expected_message,
            &authorization.signature
        ));
        assert_eq!(
            Authorization::parse(&authorization.header_value()),
            Some(authorization.clone())
        );
        let value = authorization.header_value();
        for broken in [
            value.replace("WECHATPAY2-SHA256-RSA2048", "WECHATPAY2-SHA256-RSA"),
            value.replace(",serial_no=", ",nonce_str=\"x\",serial_no="),
            value.replace("mchid=\"1900000109\",", ""),
            value.replace("timestamp=\"1554208460\"", "timestamp=1554208460"),
        ] {
            assert_eq!(Authorization::parse(&broken), None, "{broken}");
        }
    }

    #[test]
    fn answers_verify_only_with_the_platform_key_their_serial_names() {
        let wechat = wechat();
        let body = r#"{"code_url":"weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}"#;
        let signature = rsa_keys::sign(&test_keys().alipay, &response_message("1", "n", body));
        assert_eq!(
            wechat.verify_platform_signature(TEST_PLATFORM_SERIAL, "1", "n", &signature, body),
            Ok(())
        );
        assert!(
            wechat
                .verify_platform_signature("OTHER", "1", "n", &signature, body)
                .unwrap_err()
                .contains("unknown platform serial")
        );
        assert!(
            wechat
                .verify_platform_signature(TEST_PLATFORM_SERIAL, "2", "n", &signature, body)
                .is_err()
        );
        let forged = rsa_keys::sign(&test_keys().merchant, &response_message("1", "n", body));
        assert!(
            wechat
                .verify_platform_signature(TEST_PLATFORM_SERIAL, "1", "n", &forged, body)
                .is_err()
        );
    }

    #[test]
    fn the_native_order_body_states_fen_beijing_expiry_and_the_notify_url() {
        let order = CheckoutOrder {
            out_trade_no: "0190f1a2b3c47d8e9fa0b1c2d3e4f506".to_owned(),
            amount_minor: 1999,
            currency: "CNY".to_owned(),
            subject: "Pro / month".to_owned(),
            notify_url: "https://billing.example/v1/webhooks/wechatpay".to_owned(),
            return_url: String::new(),
            expires_at: DateTime::parse_from_rfc3339("2025-01-02T03:19:05Z")
                .unwrap()
                .to_utc(),
        };
        let body = wechat().native_order_body(&order).unwrap();
        assert_eq!(
            body,
            r#"{"appid":"wxd678efh567hg6787","mchid":"1900000109","description":"Pro / month","out_trade_no":"0190f1a2b3c47d8e9fa0b1c2d3e4f506","time_expire":"2025-01-02T11:19:05+08:00","notify_url":"https://billing.example/v1/webhooks/wechatpay","amount":{"total":1999,"currency":"CNY"}}"#
        );
        for (changed, code) in [
            (
                CheckoutOrder {
                    currency: "USD".to_owned(),
                    ..order.clone()
                },
                "UNSUPPORTED_CURRENCY",
            ),
            (
                CheckoutOrder {
                    amount_minor: 0,
                    ..order.clone()
                },
                "INVALID_AMOUNT",
            ),
            (
                CheckoutOrder {
                    out_trade_no: "a/../b".to_owned(),
                    ..order.clone()
                },
                "INVALID_OUT_TRADE_NO",
            ),
        ] {
            assert!(matches!(
                wechat().native_order_body(&changed),
                Err(ProviderError::Refused { code: refused, .. }) if refused == code
            ));
        }
    }

    #[test]
    fn resources_decrypt_as_another_aes_gcm_implementation_encrypts_them() {
        // Made with Python's `cryptography` (OpenSSL): AESGCM(key).encrypt(nonce, plaintext, aad).
        let ciphertext = "mtL55AQqDTUEhqmHH41z0j/xjWOEreTIKL7J0seqwzalyg==";
        let key = test_apiv3_key();
        assert_eq!(
            decrypt_resource(&key, "0123456789ab", "transaction", ciphertext).unwrap(),
            br#"{"hello":"wechat"}"#
        );
        assert_eq!(
            encrypt_resource(
                &key,
                "0123456789ab",
                "transaction",
                br#"{"hello":"wechat"}"#
            ),
            Ok(ciphertext.to_owned())
        );
        assert_eq!(
            decrypt_resource(&key, "0123456789ab", "refund", ciphertext),
            Err(ResourceError::Unauthenticated)
        );
        assert_eq!(
            decrypt_resource(&key, "0123456789ac", "transaction", ciphertext),
            Err(ResourceError::Unauthenticated)
        );
        let other_key = ApiV3Key::from_text("vutsrqponmlkjihgfedcba9876543210").unwrap();
        assert_eq!(
            decrypt_resource(&other_key, "0123456789ab", "transaction", ciphertext),
            Err(ResourceError::Unauthenticated)
        );
        assert_eq!(
            decrypt_resource(&key, "short", "transaction", ciphertext),
            Err(ResourceError::BadNonce)
        );
        assert_eq!(
            decrypt_resource(&key, "0123456789ab", "transaction", "not base64!"),
            Err(ResourceError::NotBase64)
        );
    }

    #[test]
    fn apiv3_keys_are_32_bytes_and_never_shown() {
        assert_eq!(
            ApiV3Key::from_text("0123456789abcdefghijklmnopqrstuv\n").unwrap(),
            test_apiv3_key()
        );
        assert_eq!(ApiV3Key::from_text("short"), Err(ApiV3KeyLength(5)));
        assert_eq!(format!("{:?}", test_apiv3_key()), "ApiV3Key(***)");
        assert_eq!(ApiV3Key::generate().expose().len(), 32);
        let debug = format!("{:?}", wechat());
        assert!(debug.contains("ApiV3Key(***)"), "{debug}");
        assert!(debug.contains("PrivateKey(2048 bits, ***)"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    #[test]
    fn a_payment_notification_gives_the_trade() {
        let notification = wechat().verify_notification(&payment(), now()).unwrap();
        assert_eq!(
            notification,
            Notification {
                notification_id: "EV-2018022511223320873".to_owned(),
                event: NotificationEvent::Trade(Trade {
                    out_trade_no: "0190f1a2b3c47d8e9fa0b1c2d3e4f506".to_owned(),
                    trade_no: Some("4200000001202501020123456789".to_owned()),
                    status: TradeStatus::Paid,
                    amount_minor: 1999,
                    currency: "CNY".to_owned(),
                    paid_at: Some(
                        DateTime::parse_from_rfc3339("2025-01-02T03:04:59Z")
                            .unwrap()
                            .to_utc()
                    ),
                }),
            }
        );
    }

    #[test]
    fn trade_states_map_to_billings() {
        for (state, status) in [
            ("SUCCESS", TradeStatus::Paid),
            ("REFUND", TradeStatus::Paid),
            ("CLOSED", TradeStatus::Closed),
            ("REVOKED", TradeStatus::Closed),
            ("PAYERROR", TradeStatus::Failed),
            ("NOTPAY", TradeStatus::Pending),
            ("USERPAYING", TradeStatus::Pending),
        ] {
            let mut resource = transaction();
            resource["trade_state"] = state.into();
            let raw = signed(
                envelope("TRANSACTION.SUCCESS", "transaction", &resource),
                NOW,
            );
            let notification = wechat().verify_notification(&raw, now()).unwrap();
            let NotificationEvent::Trade(trade) = notification.event else {
                panic!("a transaction is a trade");
            };
            assert_eq!(trade.status, status, "{state}");
        }
        assert_eq!(parse_trade_state("success"), None);
    }

    #[test]
    fn refund_notifications_give_the_refund() {
        for (event, status, expected) in [
            ("REFUND.SUCCESS", "SUCCESS", RefundStatus::Succeeded),
            ("REFUND.ABNORMAL", "ABNORMAL", RefundStatus::Failed),
            ("REFUND.CLOSED", "CLOSED", RefundStatus::Failed),
        ] {
            let raw = signed(envelope(event, "refund", &refund_resource(status)), NOW);
            let notification = wechat().verify_notification(&raw, now()).unwrap();
            assert_eq!(
                notification.event,
                NotificationEvent::Refund(RefundUpdate {
                    out_trade_no: "0190f1a2b3c47d8e9fa0b1c2d3e4f506".to_owned(),
                    out_refund_no: "r1".to_owned(),
                    status: expected,
                    amount_minor: 999,
                    refund_id: Some("50000000382019052709732678859".to_owned()),
                })
            );
        }
        assert_eq!(
            parse_refund_status("PROCESSING"),
            Some(RefundStatus::Processing)
        );
    }

    #[test]
    fn a_notification_whose_signature_does_not_verify_is_refused() {
        let wechat = wechat();
        let mut tampered = payment();
        tampered.body = String::from_utf8(tampered.body)
            .unwrap()
            .replace("EV-2018022511223320873", "EV-2018022511223320874")
            .into_bytes();
        assert_eq!(
            wechat.verify_notification(&tampered, now()),
            Err(Refusal::BadSignature)
        );
        for name in [
            "wechatpay-signature",
            "wechatpay-serial",
            "wechatpay-timestamp",
            "wechatpay-nonce",
        ] {
            let mut missing = payment();
            missing.headers.retain(|(key, _)| key != name);
            assert_eq!(
                wechat.verify_notification(&missing, now()),
                Err(Refusal::BadSignature),
                "{name}"
            );
        }
        let mut wrong_serial = payment();
        header(&mut wrong_serial, "wechatpay-serial", "PUB_KEY_ID_OTHER");
        assert_eq!(
            wechat.verify_notification(&wrong_serial, now()),
            Err(Refusal::BadSignature)
        );
        let mut moved_timestamp = payment();
        header(
            &mut moved_timestamp,
            "wechatpay-timestamp",
            &(NOW + 1).to_string(),
        );
        assert_eq!(
            wechat.verify_notification(&moved_timestamp, now()),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_notification_five_minutes_or_more_away_is_stale() {
        let wechat = wechat();
        let at = |offset: i64| {
            signed(
                envelope("TRANSACTION.SUCCESS", "transaction", &transaction()),
                NOW + offset,
            )
        };
        assert!(wechat.verify_notification(&at(-299), now()).is_ok());
        assert!(wechat.verify_notification(&at(299), now()).is_ok());
        assert_eq!(
            wechat.verify_notification(&at(-300), now()),
            Err(Refusal::Stale)
        );
        assert_eq!(
            wechat.verify_notification(&at(300), now()),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn a_resource_that_does_not_decrypt_is_refused() {
        let wechat = wechat();
        let body: Value = serde_json::from_str(&envelope(
            "TRANSACTION.SUCCESS",
            "transaction",
            &transaction(),
        ))
        .unwrap();
        let with = |field: &str, value: &str| {
            let mut body = body.clone();
            body["resource"][field] = value.into();
            wechat.verify_notification(&signed(body.to_string(), NOW), now())
        };
        let ciphertext = body["resource"]["ciphertext"].as_str().unwrap();
        let flipped = format!(
            "{}{}",
            if ciphertext.starts_with('A') {
                'B'
            } else {
                'A'
            },
            &ciphertext[1..]
        );
        // Signed, but not sealed with our APIv3 key: an authentication failure.
        assert_eq!(with("ciphertext", &flipped), Err(Refusal::BadSignature));
        assert_eq!(
            with("associated_data", "refund"),
            Err(Refusal::BadSignature)
        );
        // Not even well-formed.
        assert!(matches!(
            with("ciphertext", "***"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(with("nonce", "short"), Err(Refusal::Malformed(_))));
        assert!(matches!(
            with("algorithm", "AES_128_CBC"),
            Err(Refusal::Malformed(_))
        ));
        let other_key = WechatPay::new(WechatPayConfig {
            apiv3_key: ApiV3Key::from_text("vutsrqponmlkjihgfedcba9876543210").unwrap(),
            ..wechat.config.clone()
        })
        .unwrap();
        assert_eq!(
            other_key.verify_notification(&payment(), now()),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_notification_for_another_merchant_or_app_is_refused() {
        let wechat = wechat();
        let mut other_mchid = transaction();
        other_mchid["mchid"] = "1900000999".into();
        let raw = signed(
            envelope("TRANSACTION.SUCCESS", "transaction", &other_mchid),
            NOW,
        );
        assert_eq!(
            wechat.verify_notification(&raw, now()),
            Err(Refusal::WrongMerchant("mchid 1900000999".to_owned()))
        );
        let mut other_appid = transaction();
        other_appid["appid"] = "wx0000000000000000".into();
        let raw = signed(
            envelope("TRANSACTION.SUCCESS", "transaction", &other_appid),
            NOW,
        );
        assert_eq!(
            wechat.verify_notification(&raw, now()),
            Err(Refusal::WrongMerchant(
                "appid wx0000000000000000".to_owned()
            ))
        );
        let mut refund = refund_resource("SUCCESS");
        refund["mchid"] = "1900000999".into();
        let raw = signed(envelope("REFUND.SUCCESS", "refund", &refund), NOW);
        assert!(matches!(
            wechat.verify_notification(&raw, now()),
            Err(Refusal::WrongMerchant(_))
        ));
    }

    #[test]
    fn malformed_notifications_are_refused_with_the_reason() {
        let wechat = wechat();
        let refusal = |raw: RawNotification| wechat.verify_notification(&raw, now()).unwrap_err();
        assert!(matches!(
            refusal(signed(envelope("COUPON.USE", "coupon", &transaction()), NOW)),
            Refusal::Malformed(reason) if reason.contains("COUPON.USE")
        ));
        assert!(matches!(
            refusal(signed("not json".to_owned(), NOW)),
            Refusal::Malformed(_)
        ));
        let mut unknown_state = transaction();
        unknown_state["trade_state"] = "PENDING".into();
        assert!(matches!(
            refusal(signed(envelope("TRANSACTION.SUCCESS", "transaction", &unknown_state), NOW)),
            Refusal::Malformed(reason) if reason.contains("PENDING")
        ));
        let mut no_amount = transaction();
        no_amount.as_object_mut().unwrap().remove("amount");
        assert!(matches!(
            refusal(signed(envelope("TRANSACTION.SUCCESS", "transaction", &no_amount), NOW)),
            Refusal::Malformed(reason) if reason.contains("amount")
        ));
    }

    #[test]
    fn the_acknowledgement_is_an_empty_2xx_body() {
        let ack = wechat().acknowledgement();
        assert!(ack.body.is_empty());
    }
}
