//! What "Alipay" sends the merchant after a payment: the signed asynchronous notification
//! (a form POSTed to `notify_url`) and the signed parameters of the buyer's way back to
//! `return_url`. Both are signed like Alipay's: RSA2 over the sorted parameters without `sign`
//! and `sign_type`.

use std::collections::BTreeMap;

use axum::http::header::CONTENT_TYPE;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::orders::Order;
use crate::{
    domain::money::format_yuan,
    providers::{
        alipay::{NOTIFY_SIGN_EXCLUDED, format_beijing, sign_content},
        rsa_keys::{self, PrivateKey},
    },
};

/// The simulated buyer and seller (Alipay user ids are 16 digits starting with 2088).
pub(super) const BUYER_ID: &str = "2088102177846880";
pub(super) const BUYER_LOGON_ID: &str = "sim***@example.com";
pub(super) const SELLER_ID: &str = "2088102176545890";

/// A payment notification of `order`, as Alipay sends it, for `amount_minor` (the order's
/// amount unless a test tampers with it). Unsigned: see [`sign`].
pub(super) fn notification(
    order: &Order,
    trade_no: &str,
    notify_id: &str,
    amount_minor: i64,
    now: DateTime<Utc>,
) -> BTreeMap<&'static str, String> {
    let amount = format_yuan(amount_minor);
    let paid_at = order.paid_at.unwrap_or(now);
    BTreeMap::from([
        ("notify_time", format_beijing(now)),
        ("notify_type", "trade_status_sync".to_owned()),
        ("notify_id", notify_id.to_owned()),
        ("app_id", order.app_id.clone()),
        ("auth_app_id", order.app_id.clone()),
        ("charset", "utf-8".to_owned()),
        ("version", "1.0".to_owned()),
        ("sign_type", "RSA2".to_owned()),
        ("trade_no", trade_no.to_owned()),
        ("out_trade_no", order.out_trade_no.clone()),
        ("buyer_id", BUYER_ID.to_owned()),
        ("buyer_logon_id", BUYER_LOGON_ID.to_owned()),
        ("seller_id", SELLER_ID.to_owned()),
        ("trade_status", "TRADE_SUCCESS".to_owned()),
        ("total_amount", amount.clone()),
        ("receipt_amount", amount.clone()),
        ("invoice_amount", amount.clone()),
        ("buyer_pay_amount", amount.clone()),
        ("point_amount", "0.00".to_owned()),
        ("subject", order.subject.clone()),
        ("gmt_create", format_beijing(order.created_at)),
        ("gmt_payment", format_beijing(paid_at)),
        (
            "fund_bill_list",
            json!([{ "amount": amount, "fundChannel": "ALIPAYACCOUNT" }]).to_string(),
        ),
    ])
}

/// The parameters Alipay appends to `return_url` when it sends the buyer back.
pub(super) fn return_params(
    order: &Order,
    trade_no: &str,
    now: DateTime<Utc>,
) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("method", "alipay.trade.page.pay.return".to_owned()),
        ("app_id", order.app_id.clone()),
        ("auth_app_id", order.app_id.clone()),
        ("charset", "utf-8".to_owned()),
        ("version", "1.0".to_owned()),
        ("sign_type", "RSA2".to_owned()),
        ("timestamp", format_beijing(now)),
        ("out_trade_no", order.out_trade_no.clone()),
        ("trade_no", trade_no.to_owned()),
        ("total_amount", format_yuan(order.amount_minor)),
        ("seller_id", SELLER_ID.to_owned()),
    ])
}

/// Adds the `sign` Alipay puts on notifications and return parameters.
pub(super) fn sign(params: &mut BTreeMap<&'static str, String>, key: &PrivateKey) {
    let content = sign_content(&*params, NOTIFY_SIGN_EXCLUDED);
    params.insert("sign", rsa_keys::sign(key, &content));
}

/// `url` with `params` appended to its query string.
pub(super) fn with_query(url: &str, params: &BTreeMap<&'static str, String>) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

/// POSTs a notification form; the answer's HTTP status, 0 if no answer came.
pub(super) async fn deliver(
    http: &reqwest::Client,
    url: &str,
    form: &BTreeMap<&'static str, String>,
) -> u16 {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let sent = http
        .post(url)
        .header(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            tracing::info!(%url, status, "notification delivered");
            status
        }
        Err(err) => {
            tracing::warn!(%url, %err, "notification not delivered");
            0
        }
    }
}
