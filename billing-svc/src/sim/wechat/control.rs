//! The WeChat Pay control routes: tests (and the QR page's Pay button) pay orders and decide how
//! the notification arrives; the order can be read back, and its `code_url` shown as a QR code.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::TimeDelta;
use serde::Deserialize;

use super::{
    WechatSim,
    notify::{self, HeaderTamper},
    orders::Order,
    page,
};
use crate::sim::{
    control_common::{self, Paid, PayFailure},
    order_book::NotPayable,
};

/// Where the control API keeps WeChat Pay's orders.
const ORDERS_PATH: &str = "/sim/wechatpay/orders";

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

type PayRequest = control_common::PayRequest<Tamper>;

/// `POST /sim/wechatpay/orders/{out_trade_no}:pay`.
pub(super) async fn pay(
    State(sim): State<WechatSim>,
    Path(target): Path<String>,
    body: Bytes,
) -> Response {
    match control_common::pay_request(ORDERS_PATH, &target, &body) {
        Ok((out_trade_no, request)) => {
            control_common::pay_answer(pay_order(&sim, out_trade_no, &request).await)
        }
        Err(refused) => refused.into_response(),
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
        Err(failure) => failure.page(&out_trade_no, page::message),
    }
}

/// `GET /sim/wechatpay/orders/{out_trade_no}`.
pub(super) async fn state(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
) -> Response {
    control_common::state_answer(
        sim.orders
            .with_order(&out_trade_no, sim.clock.now(), |order| order.to_json()),
    )
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
) -> Result<Paid<Order>, PayFailure> {
    let now = sim.clock.now();
    let (order, trade_no, notification_id) = sim
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
            let trade_no = order.transaction_id(now);
            Ok::<_, NotPayable>((order.clone(), trade_no, notification_id))
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
        trade_no,
        notify_statuses,
    })
}
