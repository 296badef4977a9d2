//! The WeChat Pay control routes: tests (and the QR page's Pay button) pay orders and decide how
//! the notification arrives; the order can be read back, and its `code_url` shown as a QR code.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::TimeDelta;
use serde::Deserialize;
use serde_json::json;

use super::{
    WechatSim,
    notify::{self, HeaderTamper},
    orders::{NotPayable, Order},
    page,
};

/// At most this many deliveries per call: a typo must not flood the merchant.
const MAX_DELIVERIES: u32 = 20;

/// How a test wants the payment's notification to arrive. Every mode but `none` leaves the
/// order unpaid and sends one notification with a fresh id.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Tamper {
    /// Pay the order and send correct notifications.
    #[default]
    None,
    /// A header signature that does not verify.
    Signature,
    /// Correctly signed and encrypted, for another amount.
    Amount,
    /// Correctly signed, naming a platform serial that is not the platform's.
    Serial,
    /// Correctly signed over a ciphertext that does not decrypt (its GCM tag fails).
    Ciphertext,
    /// Correctly signed, with a timestamp ten minutes old.
    Stale,
}

/// The body of `POST /sim/wechatpay/orders/{out_trade_no}:pay`; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PayRequest {
    deliveries: u32,
    tamper: Tamper,
}

impl Default for PayRequest {
    fn default() -> Self {
        Self {
            deliveries: 1,
            tamper: Tamper::None,
        }
    }
}

struct Paid {
    order: Order,
    transaction_id: String,
    notify_statuses: Vec<u16>,
}

enum PayFailure {
    UnknownOrder,
    NotPayable,
}

/// `POST /sim/wechatpay/orders/{out_trade_no}:pay`.
pub(super) async fn pay(
    State(sim): State<WechatSim>,
    Path(target): Path<String>,
    body: Bytes,
) -> Response {
    let Some(out_trade_no) = target.strip_suffix(":pay") else {
        return json_error(
            StatusCode::NOT_FOUND,
            "POST needs /sim/wechatpay/orders/{out_trade_no}:pay",
        );
    };
    let request = if body.is_empty() {
        PayRequest::default()
    } else {
        match serde_json::from_slice::<PayRequest>(&body) {
            Ok(request) => request,
            Err(err) => return json_error(StatusCode::BAD_REQUEST, &err.to_string()),
        }
    };
    if request.deliveries > MAX_DELIVERIES {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("deliveries is at most {MAX_DELIVERIES}"),
        );
    }
    match pay_order(&sim, out_trade_no, &request).await {
        Ok(paid) => Json(json!({
            "tradeNo": paid.transaction_id,
            "notifyStatuses": paid.notify_statuses,
        }))
        .into_response(),
        Err(PayFailure::UnknownOrder) => json_error(StatusCode::NOT_FOUND, "unknown order"),
        Err(PayFailure::NotPayable) => json_error(
            StatusCode::CONFLICT,
            "the order is closed and cannot be paid",
        ),
    }
}

/// `POST /sim/wechatpay/checkout/{out_trade_no}`: the QR page's Pay button (the buyer scanning
/// and confirming in WeChat).
pub(super) async fn checkout(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
) -> Response {
    match pay_order(&sim, &out_trade_no, &PayRequest::default()).await {
        Ok(paid) => page::paid(&paid.order),
        Err(PayFailure::UnknownOrder) => {
            page::message(StatusCode::NOT_FOUND, "Unknown order", &out_trade_no)
        }
        Err(PayFailure::NotPayable) => page::message(
            StatusCode::CONFLICT,
            "This order can no longer be paid",
            "It was closed by the merchant or its payment time has passed.",
        ),
    }
}

/// `GET /sim/wechatpay/orders/{out_trade_no}`.
pub(super) async fn state(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
) -> Response {
    match sim
        .orders
        .with_order(&out_trade_no, sim.clock.now(), |order| order.to_json())
    {
        Some(order) => Json(order).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "unknown order"),
    }
}

/// `GET /sim/wechatpay/orders/{out_trade_no}/qr`.
pub(super) async fn qr_page(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
) -> Response {
    match sim
        .orders
        .with_order(&out_trade_no, sim.clock.now(), |order| order.clone())
    {
        Some(order) => page::qr(&order),
        None => page::message(StatusCode::NOT_FOUND, "Unknown order", &out_trade_no),
    }
}

/// Pays (unless tampering) and sends the notifications, one after the other.
async fn pay_order(
    sim: &WechatSim,
    out_trade_no: &str,
    request: &PayRequest,
) -> Result<Paid, PayFailure> {
    let now = sim.clock.now();
    let (order, transaction_id, notification_id) = sim
        .orders
        .with_order(out_trade_no, now, |order| {
            let notification_id = match request.tamper {
                Tamper::None => {
                    order.pay(now)?;
                    order.notification_id.clone()
                }
                // Not WeChat Pay's own delivery: it does not share the genuine id.
                _ => None,
            };
            let transaction_id = order.transaction_id(now);
            Ok::<_, NotPayable>((order.clone(), transaction_id, notification_id))
        })
        .ok_or(PayFailure::UnknownOrder)?
        .map_err(|NotPayable| PayFailure::NotPayable)?;

    let id = notification_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let amount_minor = match request.tamper {
        Tamper::Amount => order.amount_minor + 1,
        _ => order.amount_minor,
    };
    let corrupt = matches!(request.tamper, Tamper::Ciphertext);
    let body = notify::payment_notification(sim, &order, &id, amount_minor, now, corrupt);
    let timestamp = match request.tamper {
        Tamper::Stale => (now - TimeDelta::minutes(10)).timestamp(),
        _ => now.timestamp(),
    };
    let headers = HeaderTamper {
        bad_signature: matches!(request.tamper, Tamper::Signature),
        wrong_serial: matches!(request.tamper, Tamper::Serial),
    };
    let copies = match request.tamper {
        Tamper::None => request.deliveries,
        _ => 1,
    };
    let mut notify_statuses = Vec::new();
    for _ in 0..copies {
        notify_statuses.push(
            notify::deliver_tampered(sim, &order.notify_url, &body, timestamp, headers).await,
        );
    }
    Ok(Paid {
        order,
        transaction_id,
        notify_statuses,
    })
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
