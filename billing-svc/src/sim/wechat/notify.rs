//! What "WeChat Pay" posts to the merchant: a JSON envelope `{id, create_time, event_type,
//! resource_type, summary, resource}` whose `resource` is the transaction or refund encrypted
//! with AEAD_AES_256_GCM under the APIv3 key, signed in the `Wechatpay-*` headers with the
//! platform key over `timestamp\nnonce\nbody\n`.

use axum::http::header::CONTENT_TYPE;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    WechatSim, api,
    orders::{Order, Refund},
};
use crate::providers::wechat_v3::{self as wechat, RESOURCE_ALGORITHM, format_time};

/// The simulated buyer.
pub(super) const PAYER_OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// A kind of notification: its `event_type`, `summary` and resource type.
pub(super) struct Event {
    event_type: &'static str,
    summary: &'static str,
    original_type: &'static str,
}

const TRANSACTION_SUCCESS: Event = Event {
    event_type: "TRANSACTION.SUCCESS",
    summary: "支付成功",
    original_type: "transaction",
};

const REFUND_SUCCESS: Event = Event {
    event_type: "REFUND.SUCCESS",
    summary: "退款成功",
    original_type: "refund",
};

/// An envelope around `plaintext`, encrypted; `corrupt` flips a bit of the ciphertext after
/// encryption (its GCM tag then fails) for the `ciphertext` tamper mode.
pub(super) fn envelope(
    sim: &WechatSim,
    id: &str,
    event: &Event,
    plaintext: &Value,
    now: DateTime<Utc>,
    corrupt: bool,
) -> String {
    let nonce = wechat::new_nonce(12);
    let mut ciphertext = wechat::encrypt_resource(
        &sim.config.apiv3_key,
        &nonce,
        event.original_type,
        plaintext.to_string().as_bytes(),
    )
    // The nonce is 12 characters by construction; nothing else can fail.
    .unwrap_or_default();
    if corrupt {
        ciphertext = corrupt_base64(&ciphertext);
    }
    json!({
        "id": id,
        "create_time": format_time(now),
        "resource_type": "encrypt-resource",
        "event_type": event.event_type,
        "summary": event.summary,
        "resource": {
            "original_type": event.original_type,
            "algorithm": RESOURCE_ALGORITHM,
            "ciphertext": ciphertext,
            "associated_data": event.original_type,
            "nonce": nonce,
        },
    })
    .to_string()
}

/// TRANSACTION.SUCCESS for `order` stating `amount_minor`, as if paid now (tampered payments
/// describe a payment the order does not have).
pub(super) fn payment_notification(
    sim: &WechatSim,
    order: &Order,
    id: &str,
    amount_minor: i64,
    now: DateTime<Utc>,
    corrupt: bool,
) -> String {
    let mut paid = order.clone();
    if paid.state == super::orders::TradeState::NotPay {
        paid.state = super::orders::TradeState::Success;
    }
    paid.paid_at.get_or_insert(now);
    let transaction = api::transaction(&paid, amount_minor);
    envelope(sim, id, &TRANSACTION_SUCCESS, &transaction, now, corrupt)
}

/// REFUND.SUCCESS for one refund of `order`.
pub(super) fn refund_notification(sim: &WechatSim, order: &Order, refund: &Refund) -> String {
    let now = sim.clock.now();
    let resource = json!({
        "mchid": order.mchid,
        "out_trade_no": order.out_trade_no,
        "transaction_id": order.transaction_id,
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "refund_status": if refund.succeeded { "SUCCESS" } else { "PROCESSING" },
        "success_time": format_time(refund.created_at),
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": order.amount_minor,
            "refund": refund.amount_minor,
            "payer_total": order.amount_minor,
            "payer_refund": refund.amount_minor,
        },
    });
    envelope(
        sim,
        &uuid::Uuid::new_v4().to_string(),
        &REFUND_SUCCESS,
        &resource,
        now,
        false,
    )
}

/// How a notification's headers are made.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HeaderTamper {
    /// Sign other content: the signature is well-formed and does not verify.
    pub(super) bad_signature: bool,
    /// Name a serial that is not the platform's.
    pub(super) wrong_serial: bool,
}

/// POSTs a signed notification; the answer's HTTP status, 0 if no answer came.
pub(super) async fn deliver(sim: &WechatSim, url: &str, body: &str, timestamp: i64) -> u16 {
    deliver_tampered(sim, url, body, timestamp, HeaderTamper::default()).await
}

pub(super) async fn deliver_tampered(
    sim: &WechatSim,
    url: &str,
    body: &str,
    timestamp: i64,
    tamper: HeaderTamper,
) -> u16 {
    let signed_body = if tamper.bad_signature {
        "tampered"
    } else {
        body
    };
    let mut request = sim
        .http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    for (name, value) in sim.signature_headers(signed_body, timestamp) {
        let value = if name == "wechatpay-serial" && tamper.wrong_serial {
            format!("{value}0")
        } else {
            value
        };
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            tracing::info!(%url, status, "WeChat Pay notification delivered");
            status
        }
        Err(err) => {
            tracing::warn!(%url, %err, "WeChat Pay notification not delivered");
            0
        }
    }
}

/// The same base64 with the first character changed, so the decoded bytes differ.
fn corrupt_base64(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}
