//! Alipay open platform (RSA2): page pay, trade query and close, and the asynchronous notify.
//!
//! This is Alipay's real protocol, so the same code talks to `https://openapi.alipay.com/gateway.do`,
//! to Alipay's sandbox or to the provider simulator (`crate::sim`); only [`AlipayConfig`] differs.
//! The signing rules are pure functions below ([`sign_content`], [`Alipay::signed_params`],
//! [`verified_response_node`]) and are shared with the simulator, which plays Alipay's side.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use super::{
    Acknowledgement, Checkout, CheckoutOrder, Notification, NotificationEvent, PaymentProvider,
    ProviderError, RawNotification, RefundOrder, RefundStatus, RefundUpdate, Refusal, Trade,
    TradeStatus,
    rsa_keys::{self, PrivateKey, PublicKey},
};
use crate::domain::{
    Provider,
    money::{format_yuan, parse_yuan},
};

/// Alipay's production gateway, the SDKs' default.
pub const PRODUCTION_GATEWAY_URL: &str = "https://openapi.alipay.com/gateway.do";

/// The method that opens the cashier page in the buyer's browser.
pub const PAGE_PAY: &str = "alipay.trade.page.pay";
pub const TRADE_QUERY: &str = "alipay.trade.query";
pub const TRADE_CLOSE: &str = "alipay.trade.close";
pub const TRADE_REFUND: &str = "alipay.trade.refund";

/// The `code` of a successful response; anything else is a business error.
pub const SUCCESS_CODE: &str = "10000";
/// `sub_code` for an order Alipay does not know (never opened by the buyer).
pub const TRADE_NOT_EXIST: &str = "ACQ.TRADE_NOT_EXIST";
/// `sub_code` for closing a trade that is not waiting for payment (paid, or closed already).
pub const TRADE_STATUS_ERROR: &str = "ACQ.TRADE_STATUS_ERROR";

/// Request parameters left out of the request signature.
pub const REQUEST_SIGN_EXCLUDED: &[&str] = &["sign"];
/// Notification (and page return) parameters left out of their signature (`rsaCheckV1`).
pub const NOTIFY_SIGN_EXCLUDED: &[&str] = &["sign", "sign_type"];

/// Alipay's times are Beijing time (UTC+8), written without an offset.
pub const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};
const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Alipay's documented range for `total_amount`: 0.01 to 100,000,000 yuan.
pub const AMOUNT_RANGE_MINOR: std::ops::RangeInclusive<i64> = 1..=10_000_000_000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for Alipay's slowest answers; a timeout is `Unavailable` and the caller retries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How billing reaches one Alipay merchant application.
#[derive(Debug, Clone)]
pub struct AlipayConfig {
    /// `https://openapi.alipay.com/gateway.do`, the sandbox's gateway or the simulator's `/gateway.do`.
    pub gateway_url: String,
    /// The merchant application's id (`app_id`).
    pub app_id: String,
    /// Signs our requests; its `Debug` prints no key material.
    pub merchant_private_key: PrivateKey,
    /// Verifies Alipay's responses and notifications.
    pub alipay_public_key: PublicKey,
}

/// Alipay as a [`PaymentProvider`].
#[derive(Debug)]
pub struct Alipay {
    config: AlipayConfig,
    http: reqwest::Client,
}

/// A refund as Alipay answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// Alipay's number of the refunded trade.
    pub trade_no: String,
    /// Everything refunded on the trade so far, this refund included, in fen.
    pub refunded_total_minor: i64,
    /// Whether this request moved money; `false` when it repeated an earlier `out_request_no`.
    pub fund_change: bool,
}

impl Alipay {
    /// Builds the provider and its HTTP client (rustls, timeouts set).
    pub fn new(config: AlipayConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self { config, http })
    }

    /// The common parameters plus `biz_content`, signed with the merchant key. Page pay passes
    /// the notify and return URLs; the server-to-server calls pass none.
    pub fn signed_params(
        &self,
        method: &str,
        biz_content: String,
        urls: Option<(&str, &str)>,
        now: DateTime<Utc>,
    ) -> BTreeMap<&'static str, String> {
        let mut params = BTreeMap::from([
            ("app_id", self.config.app_id.clone()),
            ("method", method.to_owned()),
            ("format", "JSON".to_owned()),
            ("charset", "utf-8".to_owned()),
            ("sign_type", "RSA2".to_owned()),
            ("timestamp", format_beijing(now)),
            ("version", "1.0".to_owned()),
            ("biz_content", biz_content),
        ]);
        if let Some((notify_url, return_url)) = urls {
            params.insert("notify_url", notify_url.to_owned());
            params.insert("return_url", return_url.to_owned());
        }
        let content = sign_content(&params, REQUEST_SIGN_EXCLUDED);
        params.insert(
            "sign",
            rsa_keys::sign(&self.config.merchant_private_key, &content),
        );
        params
    }

    /// The cashier URL for an order: the gateway with the signed `alipay.trade.page.pay`
    /// parameters in its query string.
    pub fn checkout_url(
        &self,
        order: &CheckoutOrder,
        now: DateTime<Utc>,
    ) -> Result<String, ProviderError> {
        if order.currency != "CNY" {
            return Err(refused(
                "UNSUPPORTED_CURRENCY",
                format!("Alipay page pay collects CNY, not {}", order.currency),
            ));
        }
        if !AMOUNT_RANGE_MINOR.contains(&order.amount_minor) {
            return Err(refused(
                "INVALID_AMOUNT",
                format!(
                    "{} fen is outside Alipay's 0.01 to 100000000 yuan",
                    order.amount_minor
                ),
            ));
        }
        let biz_content = serde_json::to_string(&PagePayContent {
            out_trade_no: &order.out_trade_no,
            total_amount: format_yuan(order.amount_minor),
            subject: &order.subject,
            product_code: "FAST_INSTANT_TRADE_PAY",
            time_expire: format_beijing(order.expires_at),
        })
        .map_err(|err| unavailable(format!("encoding biz_content: {err}")))?;
        let params = self.signed_params(
            PAGE_PAY,
            biz_content,
            Some((order.notify_url.as_str(), order.return_url.as_str())),
            now,
        );
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        Ok(format!("{}?{query}", self.config.gateway_url))
    }

    /// Refunds `amount_minor` of a paid trade (`alipay.trade.refund`). `out_request_no` names
    /// this refund: repeating it never refunds twice, so a retry after `Unavailable` is safe.
    pub async fn trade_refund(
        &self,
        out_trade_no: &str,
        out_request_no: &str,
        amount_minor: i64,
    ) -> Result<Refund, ProviderError> {
        let biz_content = serde_json::json!({
            "out_trade_no": out_trade_no,
            "out_request_no": out_request_no,
            "refund_amount": format_yuan(amount_minor),
        })
        .to_string();
        let node = self
            .call::<RefundNode>(TRADE_REFUND, biz_content)
            .await?
            .map_err(ResultCode::refused)?;
        Ok(Refund {
            refunded_total_minor: parse_yuan(&node.refund_fee)
                .map_err(|err| unavailable(format!("{TRADE_REFUND}: refund_fee: {err}")))?,
            fund_change: node.fund_change == "Y",
            trade_no: node.trade_no,
        })
    }

    /// Calls a server-to-server method and returns its verified response node: `Ok(node)` for
    /// code 10000, `Err(error)` for a business error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        biz_content: String,
    ) -> Result<Result<T, ResultCode>, ProviderError> {
        let params = self.signed_params(method, biz_content, None, Utc::now());
        // As Alipay's SDKs do: the common parameters in the URL (the gateway reads `charset`
        // there before decoding the body), `biz_content` in the form body.
        let (body, query): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(key, _)| *key == "biz_content");
        let response = self
            .http
            .post(&self.config.gateway_url)
            .query(&query)
            .form(&body)
            .send()
            .await
            .map_err(|err| unavailable(format!("{method}: {err}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("{method}: HTTP {status}")));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| unavailable(format!("{method}: {err}")))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| unavailable(format!("{method}: response is not UTF-8")))?;
        let node = verified_response_node(text, method, &self.config.alipay_public_key)
            .map_err(|cause| unavailable(format!("{method}: {cause}")))?;
        let outcome: ResultCode =
            serde_json::from_str(node).map_err(|err| unavailable(format!("{method}: {err}")))?;
        if outcome.code != SUCCESS_CODE {
            return Ok(Err(outcome));
        }
        serde_json::from_str(node)
            .map(Ok)
            .map_err(|err| unavailable(format!("{method}: {err}")))
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Alipay {
    fn provider(&self) -> Provider {
        Provider::Alipay
    }

    async fn create_checkout(&self, order: &CheckoutOrder) -> Result<Checkout, ProviderError> {
        // Page pay needs no call: Alipay creates the trade when the buyer's browser arrives.
        self.checkout_url(order, Utc::now())
            .map(Checkout::RedirectUrl)
    }

    async fn query(&self, out_trade_no: &str) -> Result<Option<Trade>, ProviderError> {
        match self
            .call::<QueryNode>(TRADE_QUERY, out_trade_no_content(out_trade_no))
            .await?
        {
            Ok(node) => node
                .fields()
                .parse()
                .map(Some)
                .map_err(|cause| unavailable(format!("{TRADE_QUERY}: {cause}"))),
            Err(error) if error.is(TRADE_NOT_EXIST) => Ok(None),
            Err(error) => Err(error.refused()),
        }
    }

    async fn close(&self, out_trade_no: &str) -> Result<(), ProviderError> {
        match self
            .call::<serde::de::IgnoredAny>(TRADE_CLOSE, out_trade_no_content(out_trade_no))
            .await?
        {
            Ok(_) => Ok(()),
            Err(error) if error.is(TRADE_NOT_EXIST) => Ok(()),
            // Alipay gives this one code for a paid and for a closed trade; only the closed one
            // is the success the trait promises, so ask which it is.
            Err(error) if error.is(TRADE_STATUS_ERROR) => match self.query(out_trade_no).await? {
                Some(trade) if trade.status == TradeStatus::Closed => Ok(()),
                _ => Err(error.refused()),
            },
            Err(error) => Err(error.refused()),
        }
    }

    /// Alipay refunds synchronously: an answer means the refund is done (or was done by an
    /// earlier request with the same `out_request_no`).
    async fn refund(&self, order: &RefundOrder) -> Result<RefundUpdate, ProviderError> {
        self.trade_refund(
            &order.out_trade_no,
            &order.out_refund_no,
            order.amount_minor,
        )
        .await?;
        Ok(RefundUpdate {
            out_trade_no: order.out_trade_no.clone(),
            out_refund_no: order.out_refund_no.clone(),
            status: RefundStatus::Succeeded,
            amount_minor: order.amount_minor,
            refund_id: None,
        })
    }

    fn verify_notification(
        &self,
        notification: &RawNotification,
        // Alipay's notify carries no freshness rule: retries span about 25 hours with the same
        // notify_id, which is what dedupes a replay.
        _now: DateTime<Utc>,
    ) -> Result<Notification, Refusal> {
        if !is_form(&notification.content_type) {
            return Err(Refusal::Malformed(format!(
                "content type {:?}, expected application/x-www-form-urlencoded",
                notification.content_type
            )));
        }
        let mut params = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(&notification.body).into_owned() {
            if params.contains_key(&key) {
                // Two values for one name leave it open which one the signature covered.
                return Err(Refusal::Malformed(format!("parameter {key} repeated")));
            }
            params.insert(key, value);
        }
        let sign = params.get("sign").ok_or(Refusal::BadSignature)?;
        if params.get("sign_type").is_some_and(|kind| kind != "RSA2") {
            return Err(Refusal::BadSignature);
        }
        let content = sign_content(&params, NOTIFY_SIGN_EXCLUDED);
        if !rsa_keys::verify(&self.config.alipay_public_key, &content, sign) {
            return Err(Refusal::BadSignature);
        }
        let field = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|value| !value.is_empty())
        };
        let required =
            |name: &str| field(name).ok_or_else(|| Refusal::Malformed(format!("{name} missing")));
        let app_id = required("app_id")?;
        if app_id != self.config.app_id {
            return Err(Refusal::WrongMerchant(app_id.to_owned()));
        }
        let trade = TradeFields {
            out_trade_no: required("out_trade_no")?,
            trade_no: Some(required("trade_no")?),
            trade_status: required("trade_status")?,
            total_amount: required("total_amount")?,
            paid_at: field("gmt_payment"),
            trans_currency: field("trans_currency"),
        }
        .parse()
        .map_err(Refusal::Malformed)?;
        Ok(Notification {
            notification_id: required("notify_id")?.to_owned(),
            event: NotificationEvent::Trade(trade),
        })
    }

    fn acknowledgement(&self) -> Acknowledgement {
        Acknowledgement {
            content_type: "text/plain",
            body: b"success".to_vec(),
        }
    }
}

/// The text Alipay signs: the parameters not `excluded`, without empty keys or values, sorted
/// by key and joined as `k=v` with `&`, values raw (not URL-encoded).
pub fn sign_content<K: AsRef<str>, V: AsRef<str>>(
    params: impl IntoIterator<Item = (K, V)>,
    excluded: &[&str],
) -> String {
    let mut kept: Vec<(K, V)> = params
        .into_iter()
        .filter(|(key, value)| {
            let key = key.as_ref();
            !key.is_empty() && !value.as_ref().is_empty() && !excluded.contains(&key)
        })
        .collect();
    kept.sort_unstable_by(|(left, _), (right, _)| left.as_ref().cmp(right.as_ref()));
    let mut content = String::new();
    for (key, value) in kept {
        if !content.is_empty() {
            content.push('&');
        }
        content.push_str(key.as_ref());
        content.push('=');
        content.push_str(value.as_ref());
    }
    content
}

/// The name of a method's response node: `alipay.trade.query` → `alipay_trade_query_response`.
pub fn response_node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// The raw JSON text of `method`'s response node (or of `error_response`, where the gateway
/// answers requests it cannot route), once the sibling `sign` verifies over exactly that text.
pub fn verified_response_node<'a>(
    body: &'a str,
    method: &str,
    alipay_public_key: &PublicKey,
) -> Result<&'a str, String> {
    let nodes: BTreeMap<&str, &RawValue> = serde_json::from_str(body)
        .map_err(|err| format!("response is not a JSON object: {err}"))?;
    let node = nodes
        .get(response_node_name(method).as_str())
        .or_else(|| nodes.get("error_response"))
        .ok_or_else(|| format!("response has no {} node", response_node_name(method)))?
        .get();
    let sign: String = nodes
        .get("sign")
        .ok_or("response is not signed")
        .and_then(|sign| serde_json::from_str(sign.get()).map_err(|_| "sign is not a string"))?;
    // Alipay's SDKs retry with `\/` unescaped: some answers were signed before that escaping.
    let verified = rsa_keys::verify(alipay_public_key, node, &sign)
        || (node.contains("\\/")
            && rsa_keys::verify(alipay_public_key, &node.replace("\\/", "/"), &sign));
    if !verified {
        return Err("response signature does not verify".to_owned());
    }
    Ok(node)
}

/// Formats a time as Alipay's `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn format_beijing(time: DateTime<Utc>) -> String {
    time.with_timezone(&BEIJING)
        .format(TIMESTAMP_FORMAT)
        .to_string()
}

/// Parses Alipay's `yyyy-MM-dd HH:mm:ss` Beijing time.
pub fn parse_beijing(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, TIMESTAMP_FORMAT)
        .ok()?
        .and_local_timezone(BEIJING)
        .single()
        .map(|time| time.with_timezone(&Utc))
}

/// `trade_status` as billing sees it.
pub fn parse_trade_status(text: &str) -> Option<TradeStatus> {
    match text {
        "WAIT_BUYER_PAY" => Some(TradeStatus::Pending),
        "TRADE_SUCCESS" | "TRADE_FINISHED" => Some(TradeStatus::Paid),
        "TRADE_CLOSED" => Some(TradeStatus::Closed),
        _ => None,
    }
}

fn unavailable(cause: String) -> ProviderError {
    ProviderError::Unavailable {
        provider: Provider::Alipay,
        cause,
    }
}

fn refused(code: &str, message: String) -> ProviderError {
    ProviderError::Refused {
        provider: Provider::Alipay,
        code: code.to_owned(),
        message,
    }
}

fn is_form(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|media| {
        media
            .trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

fn out_trade_no_content(out_trade_no: &str) -> String {
    serde_json::json!({ "out_trade_no": out_trade_no }).to_string()
}

#[derive(Serialize)]
struct PagePayContent<'a> {
    out_trade_no: &'a str,
    total_amount: String,
    subject: &'a str,
    product_code: &'static str,
    time_expire: String,
}

/// The result fields every response node has; a business error unless `code` is 10000.
#[derive(Deserialize)]
struct ResultCode {
    code: String,
    msg: String,
    sub_code: Option<String>,
    sub_msg: Option<String>,
}

impl ResultCode {
    fn is(&self, sub_code: &str) -> bool {
        self.sub_code.as_deref() == Some(sub_code)
    }

    fn refused(self) -> ProviderError {
        let message = match self.sub_msg {
            Some(sub_msg) => format!("{}: {sub_msg}", self.msg),
            None => self.msg,
        };
        // The sub_code is the specific one (`ACQ.…`, `isv.…`); the code only its class.
        refused(self.sub_code.as_deref().unwrap_or(&self.code), message)
    }
}

#[derive(Deserialize)]
struct RefundNode {
    trade_no: String,
    /// The trade's cumulative refunded amount.
    refund_fee: String,
    fund_change: String,
}

#[derive(Deserialize)]
struct QueryNode {
    out_trade_no: String,
    trade_no: Option<String>,
    trade_status: String,
    total_amount: String,
    send_pay_date: Option<String>,
    trans_currency: Option<String>,
}

impl QueryNode {
    fn fields(&self) -> TradeFields<'_> {
        TradeFields {
            out_trade_no: &self.out_trade_no,
            trade_no: self.trade_no.as_deref().filter(|no| !no.is_empty()),
            trade_status: &self.trade_status,
            total_amount: &self.total_amount,
            paid_at: self.send_pay_date.as_deref(),
            trans_currency: self.trans_currency.as_deref(),
        }
    }
}

/// A trade's fields as Alipay states them, in a query answer or a notification.
struct TradeFields<'a> {
    out_trade_no: &'a str,
    trade_no: Option<&'a str>,
    trade_status: &'a str,
    total_amount: &'a str,
    paid_at: Option<&'a str>,
    trans_currency: Option<&'a str>,
}

impl TradeFields<'_> {
    fn parse(self) -> Result<Trade, String> {
        let status = parse_trade_status(self.trade_status)
            .ok_or_else(|| format!("unknown trade_status {:?}", self.trade_status))?;
        let amount_minor =
            parse_yuan(self.total_amount).map_err(|err| format!("total_amount: {err}"))?;
        let paid_at = self
            .paid_at
            .map(|text| {
                parse_beijing(text).ok_or_else(|| format!("payment time {text:?} is not a time"))
            })
            .transpose()?;
        Ok(Trade {
            out_trade_no: self.out_trade_no.to_owned(),
            trade_no: self.trade_no.map(str::to_owned),
            status,
            amount_minor,
            // Alipay names a currency only for foreign-currency trades; otherwise it is yuan.
            currency: self.trans_currency.unwrap_or("CNY").to_owned(),
            paid_at,
        })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use chrono::TimeZone;

    use super::*;
    use crate::sim::test_keys;

    const APP_ID: &str = "2021000000000001";

    fn alipay() -> Alipay {
        let keys = test_keys();
        Alipay::new(AlipayConfig {
            gateway_url: "https://openapi.example/gateway.do".to_owned(),
            app_id: APP_ID.to_owned(),
            merchant_private_key: keys.merchant.clone(),
            alipay_public_key: keys.alipay.public_key(),
        })
        .unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn order() -> CheckoutOrder {
        CheckoutOrder {
            out_trade_no: "0190f1a2b3c47d8e9fa0b1c2d3e4f506".to_owned(),
            amount_minor: 1999,
            currency: "CNY".to_owned(),
            subject: "Pro & more / month".to_owned(),
            notify_url: "https://billing.example/v1/webhooks/alipay".to_owned(),
            return_url: "https://app.example/billing/done?plan=pro".to_owned(),
            expires_at: utc("2025-01-02T03:19:05Z"),
        }
    }

    /// A notification as Alipay would send it, signed with "Alipay's" test key.
    fn notification_body(overrides: &[(&str, &str)], removed: &[&str]) -> Vec<u8> {
        let mut params: BTreeMap<&str, &str> = BTreeMap::from([
            ("notify_time", "2025-01-02 11:05:00"),
            ("notify_type", "trade_status_sync"),
            ("notify_id", "2025010200222110500012345678"),
            ("app_id", APP_ID),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("sign_type", "RSA2"),
            ("trade_no", "2025010222001400000012345678"),
            ("out_trade_no", "0190f1a2b3c47d8e9fa0b1c2d3e4f506"),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", "19.99"),
            ("subject", "Pro & more / month"),
            ("gmt_create", "2025-01-02 11:04:05"),
            ("gmt_payment", "2025-01-02 11:04:59"),
        ]);
        params.extend(overrides.iter().copied());
        for name in removed {
            params.remove(name);
        }
        let sign = rsa_keys::sign(
            &test_keys().alipay,
            &sign_content(&params, NOTIFY_SIGN_EXCLUDED),
        );
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .append_pair("sign", &sign)
            .finish()
            .into_bytes()
    }

    fn raw(body: Vec<u8>) -> RawNotification {
        RawNotification {
            content_type: "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            body,
            headers: Vec::new(),
        }
    }

    #[test]
    fn sign_content_sorts_drops_empty_and_excluded_and_keeps_values_raw() {
        let params = [
            ("timestamp", "2025-01-02 11:04:05"),
            ("sign", "ignored"),
            ("app_id", "1"),
            ("empty", ""),
            ("", "nameless"),
            ("biz_content", r#"{"subject":"a&b=c"}"#),
            ("sign_type", "RSA2"),
        ];
        assert_eq!(
            sign_content(params, REQUEST_SIGN_EXCLUDED),
            r#"app_id=1&biz_content={"subject":"a&b=c"}&sign_type=RSA2&timestamp=2025-01-02 11:04:05"#
        );
        assert_eq!(
            sign_content(params, NOTIFY_SIGN_EXCLUDED),
            r#"app_id=1&biz_content={"subject":"a&b=c"}&timestamp=2025-01-02 11:04:05"#
        );
    }

    #[test]
    fn request_parameters_are_the_common_ones_signed_with_the_merchant_key() {
        let now = utc("2025-01-02T03:04:05Z");
        let params = alipay().signed_params(
            TRADE_QUERY,
            r#"{"out_trade_no":"o1"}"#.to_owned(),
            None,
            now,
        );

        let expected_content = format!(
            "app_id={APP_ID}&biz_content={{\"out_trade_no\":\"o1\"}}&charset=utf-8&format=JSON\
             &method=alipay.trade.query&sign_type=RSA2&timestamp=2025-01-02 11:04:05&version=1.0"
        );
        let sign = params.get("sign").unwrap();
        assert!(rsa_keys::verify(
            &test_keys().merchant.public_key(),
            &expected_content,
            sign
        ));
        assert!(!params.contains_key("notify_url"));
    }

    #[test]
    fn the_checkout_url_carries_signed_page_pay_parameters() {
        let now = utc("2025-01-02T03:04:05Z");
        let url = alipay().checkout_url(&order(), now).unwrap();

        let (gateway, query) = url.split_once('?').unwrap();
        assert_eq!(gateway, "https://openapi.example/gateway.do");
        let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(params["method"], PAGE_PAY);
        assert_eq!(params["timestamp"], "2025-01-02 11:04:05");
        assert_eq!(
            params["notify_url"],
            "https://billing.example/v1/webhooks/alipay"
        );
        assert_eq!(
            params["return_url"],
            "https://app.example/billing/done?plan=pro"
        );
        let biz: serde_json::Value = serde_json::from_str(&params["biz_content"]).unwrap();
        assert_eq!(
            biz,
            serde_json::json!({
                "out_trade_no": "0190f1a2b3c47d8e9fa0b1c2d3e4f506",
                "total_amount": "19.99",
                "subject": "Pro & more / month",
                "product_code": "FAST_INSTANT_TRADE_PAY",
                "time_expire": "2025-01-02 11:19:05",
            })
        );
        let content = sign_content(&params, REQUEST_SIGN_EXCLUDED);
        assert!(rsa_keys::verify(
            &test_keys().merchant.public_key(),
            &content,
            &params["sign"]
        ));
    }

    #[test]
    fn a_checkout_in_another_currency_or_out_of_range_is_refused() {
        let alipay = alipay();
        let now = Utc::now();
        let dollars = CheckoutOrder {
            currency: "USD".to_owned(),
            ..order()
        };
        assert!(matches!(
            alipay.checkout_url(&dollars, now),
            Err(ProviderError::Refused { code, .. }) if code == "UNSUPPORTED_CURRENCY"
        ));
        for amount_minor in [0, -1, 10_000_000_001] {
            let order = CheckoutOrder {
                amount_minor,
                ..order()
            };
            assert!(matches!(
                alipay.checkout_url(&order, now),
                Err(ProviderError::Refused { code, .. }) if code == "INVALID_AMOUNT"
            ));
        }
    }

    #[test]
    fn a_response_node_verifies_over_its_raw_text() {
        let key = &test_keys().alipay;
        // Spacing and key order a re-serialisation would change: the signature covers them.
        let node =
            r#"{ "code":"10000","msg":"Success", "out_trade_no":"o1","total_amount":"19.99"}"#;
        let body = format!(
            r#"{{"alipay_trade_query_response":{node},"sign":"{}"}}"#,
            rsa_keys::sign(key, node)
        );
        let public = key.public_key();

        assert_eq!(
            verified_response_node(&body, TRADE_QUERY, &public),
            Ok(node)
        );
        assert!(verified_response_node(&body, TRADE_CLOSE, &public).is_err());
        let tampered = body.replace("19.99", "0.01");
        assert!(verified_response_node(&tampered, TRADE_QUERY, &public).is_err());
        let unsigned = format!(r#"{{"alipay_trade_query_response":{node}}}"#);
        assert_eq!(
            verified_response_node(&unsigned, TRADE_QUERY, &public),
            Err("response is not signed".to_owned())
        );
        assert!(verified_response_node("<html>", TRADE_QUERY, &public).is_err());
    }

    #[test]
    fn a_response_signed_before_slash_escaping_still_verifies() {
        let key = &test_keys().alipay;
        let node = r#"{"code":"10000","msg":"Success","url":"https:\/\/x"}"#;
        let body = format!(
            r#"{{"alipay_trade_query_response":{node},"sign":"{}"}}"#,
            rsa_keys::sign(key, &node.replace("\\/", "/"))
        );
        assert_eq!(
            verified_response_node(&body, TRADE_QUERY, &key.public_key()),
            Ok(node)
        );
    }

    #[test]
    fn an_error_response_node_is_verified_too() {
        let key = &test_keys().alipay;
        let node = r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-method"}"#;
        let body = format!(
            r#"{{"error_response":{node},"sign":"{}"}}"#,
            rsa_keys::sign(key, node)
        );
        assert_eq!(
            verified_response_node(&body, TRADE_QUERY, &key.public_key()),
            Ok(node)
        );
    }

    #[test]
    fn a_signed_notification_gives_the_trade_with_its_payment_time_in_utc() {
        let notification = alipay()
            .verify_notification(&raw(notification_body(&[], &[])), Utc::now())
            .unwrap();
        assert_eq!(
            notification,
            Notification {
                notification_id: "2025010200222110500012345678".to_owned(),
                event: NotificationEvent::Trade(Trade {
                    out_trade_no: "0190f1a2b3c47d8e9fa0b1c2d3e4f506".to_owned(),
                    trade_no: Some("2025010222001400000012345678".to_owned()),
                    status: TradeStatus::Paid,
                    amount_minor: 1999,
                    currency: "CNY".to_owned(),
                    paid_at: Some(utc("2025-01-02T03:04:59Z")),
                }),
            }
        );
    }

    #[test]
    fn a_notification_names_its_currency_when_it_is_not_yuan() {
        let body = notification_body(
            &[("trans_currency", "USD"), ("trade_status", "TRADE_CLOSED")],
            &["gmt_payment"],
        );
        let notification = alipay()
            .verify_notification(&raw(body), Utc::now())
            .unwrap();
        let NotificationEvent::Trade(trade) = notification.event else {
            panic!("a trade notification, got {notification:?}");
        };
        assert_eq!(trade.currency, "USD");
        assert_eq!(trade.status, TradeStatus::Closed);
        assert_eq!(trade.paid_at, None);
    }

    #[test]
    fn a_notification_that_does_not_verify_is_refused() {
        let alipay = alipay();
        let body = String::from_utf8(notification_body(&[], &[])).unwrap();
        let tampered = body.replace("total_amount=19.99", "total_amount=0.01");
        assert_eq!(
            alipay.verify_notification(&raw(tampered.into_bytes()), Utc::now()),
            Err(Refusal::BadSignature)
        );
        let unsigned: String = body
            .split('&')
            .filter(|pair| !pair.starts_with("sign="))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            alipay.verify_notification(&raw(unsigned.into_bytes()), Utc::now()),
            Err(Refusal::BadSignature)
        );
        let sha1 = body.replace("sign_type=RSA2", "sign_type=RSA");
        assert_eq!(
            alipay.verify_notification(&raw(sha1.into_bytes()), Utc::now()),
            Err(Refusal::BadSignature)
        );
        // Signed by someone else's key (here the merchant's own).
        let forged = Alipay::new(AlipayConfig {
            alipay_public_key: test_keys().merchant.public_key(),
            ..alipay.config.clone()
        })
        .unwrap();
        assert_eq!(
            forged.verify_notification(&raw(body.into_bytes()), Utc::now()),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_notification_for_another_app_is_refused_as_wrong_merchant() {
        let body = notification_body(&[("app_id", "2021000000009999")], &[]);
        assert_eq!(
            alipay().verify_notification(&raw(body), Utc::now()),
            Err(Refusal::WrongMerchant("2021000000009999".to_owned()))
        );
    }

    #[test]
    fn malformed_notifications_are_refused_with_the_reason() {
        let alipay = alipay();
        let refusal = |body| {
            alipay
                .verify_notification(&raw(body), Utc::now())
                .unwrap_err()
        };
        for (removed, reason) in [
            ("notify_id", "notify_id missing"),
            ("out_trade_no", "out_trade_no missing"),
            ("trade_no", "trade_no missing"),
            ("trade_status", "trade_status missing"),
            ("total_amount", "total_amount missing"),
        ] {
            assert_eq!(
                refusal(notification_body(&[], &[removed])),
                Refusal::Malformed(reason.to_owned())
            );
        }
        assert!(matches!(
            refusal(notification_body(&[("total_amount", "19.999")], &[])),
            Refusal::Malformed(reason) if reason.starts_with("total_amount")
        ));
        assert!(matches!(
            refusal(notification_body(&[("trade_status", "TRADE_PENDING")], &[])),
            Refusal::Malformed(reason) if reason.contains("TRADE_PENDING")
        ));
        assert!(matches!(
            refusal(notification_body(&[("gmt_payment", "yesterday")], &[])),
            Refusal::Malformed(reason) if reason.contains("yesterday")
        ));
        let mut repeated = notification_body(&[], &[]);
        repeated.extend_from_slice(b"&out_trade_no=other");
        assert_eq!(
            refusal(repeated),
            Refusal::Malformed("parameter out_trade_no repeated".to_owned())
        );
        let json = RawNotification {
            content_type: "application/json".to_owned(),
            ..raw(notification_body(&[], &[]))
        };
        assert!(matches!(
            alipay.verify_notification(&json, Utc::now()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn beijing_times_convert_both_ways() {
        let time = Utc.with_ymd_and_hms(2024, 12, 31, 16, 30, 0).unwrap();
        assert_eq!(format_beijing(time), "2025-01-01 00:30:00");
        assert_eq!(parse_beijing("2025-01-01 00:30:00"), Some(time));
        assert_eq!(parse_beijing("2025-01-01T00:30:00"), None);
        assert_eq!(parse_beijing("2025-02-30 00:00:00"), None);
    }

    #[test]
    fn trade_statuses_map_to_billings() {
        assert_eq!(
            parse_trade_status("WAIT_BUYER_PAY"),
            Some(TradeStatus::Pending)
        );
        assert_eq!(parse_trade_status("TRADE_SUCCESS"), Some(TradeStatus::Paid));
        assert_eq!(
            parse_trade_status("TRADE_FINISHED"),
            Some(TradeStatus::Paid)
        );
        assert_eq!(
            parse_trade_status("TRADE_CLOSED"),
            Some(TradeStatus::Closed)
        );
        assert_eq!(parse_trade_status("trade_success"), None);
    }

    #[test]
    fn the_acknowledgement_is_the_bare_word_success() {
        let ack = alipay().acknowledgement();
        assert_eq!(ack.content_type, "text/plain");
        assert_eq!(ack.body, b"success");
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let debug = format!("{:?}", alipay());
        assert!(debug.contains("PrivateKey(2048 bits, ***)"), "{debug}");
        assert!(!debug.contains("BEGIN"), "{debug}");
    }
}
