//! The control routes: tests (and the checkout page's Pay button) pay orders and decide how the
//! notification arrives; the order's state can be read back.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    Sim,
    notify::{self, deliver},
    orders::{Lookup, NotPayable, Order, new_notify_id},
    page,
};
use crate::providers::rsa_keys;

/// At most this many deliveries per call: a typo must not flood the merchant.
const MAX_DELIVERIES: u32 = 20;

/// How a test wants the payment's notification to arrive.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Tamper {
    /// Pay the order and send correct notifications.
    #[default]
    None,
    /// Leave the order unpaid and send one notification whose signature does not verify.
    Signature,
    /// Leave the order unpaid and send one correctly signed notification for another amount.
    Amount,
}

/// The body of `POST /sim/alipay/orders/{out_trade_no}:pay`; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct PayRequest {
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

/// A payment made and how its notifications were answered.
struct Paid {
    order: Order,
    trade_no: String,
    notify_statuses: Vec<u16>,
}

enum PayFailure {
    UnknownOrder,
    NotPayable,
}

/// `POST /sim/alipay/orders/{out_trade_no}:pay`.
pub(super) async fn pay(
    State(sim): State<Sim>,
    Path(target): Path<String>,
    body: Bytes,
) -> Response {
    let Some(out_trade_no) = target.strip_suffix(":pay") else {
        return json_error(
            StatusCode::NOT_FOUND,
            "POST needs /sim/alipay/orders/{out_trade_no}:pay",
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
            "tradeNo": paid.trade_no,
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

/// `POST /sim/alipay/checkout/{out_trade_no}`: the checkout page's Pay button.
pub(super) async fn checkout(State(sim): State<Sim>, Path(out_trade_no): Path<String>) -> Response {
    match pay_order(&sim, &out_trade_no, &PayRequest::default()).await {
        Ok(paid) if paid.order.return_url.is_empty() => page::message(
            StatusCode::OK,
            "Payment successful",
            &format!("Order {out_trade_no} is paid."),
        ),
        Ok(paid) => {
            let mut params =
                notify::return_params(&paid.order, &paid.trade_no, sim.config.clock.now());
            notify::sign(&mut params, &sim.config.alipay_private_key);
            Redirect::to(&notify::with_query(&paid.order.return_url, &params)).into_response()
        }
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

/// `GET /sim/alipay/orders/{out_trade_no}`.
pub(super) async fn state(State(sim): State<Sim>, Path(out_trade_no): Path<String>) -> Response {
    let now = sim.config.clock.now();
    match sim
        .orders
        .with_order(Lookup::OutTradeNo(&out_trade_no), now, |order| {
            order.to_json()
        }) {
        Some(order) => Json(order).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "unknown order"),
    }
}

/// Pays (unless tampering) and sends the notifications, one after the other.
async fn pay_order(
    sim: &Sim,
    out_trade_no: &str,
    request: &PayRequest,
) -> Result<Paid, PayFailure> {
    let now = sim.config.clock.now();
    let (order, trade_no, notify_id) = sim
        .orders
        .with_order(Lookup::OutTradeNo(out_trade_no), now, |order| {
            let notify_id = match request.tamper {
                Tamper::None => {
                    order.pay(now)?;
                    order.notify_id.clone()
                }
                // A tampered notification is not Alipay's own delivery, so it does not share
                // the notify_id that the genuine ones carry.
                Tamper::Signature | Tamper::Amount => None,
            };
            let trade_no = order.trade_no(now);
            Ok::<_, NotPayable>((order.clone(), trade_no, notify_id))
        })
        .ok_or(PayFailure::UnknownOrder)?
        .map_err(|NotPayable| PayFailure::NotPayable)?;

    let key = &sim.config.alipay_private_key;
    let notify_id = notify_id.unwrap_or_else(new_notify_id);
    let amount_minor = match request.tamper {
        Tamper::Amount => order.amount_minor + 1,
        Tamper::None | Tamper::Signature => order.amount_minor,
    };
    let mut form = notify::notification(&order, &trade_no, &notify_id, amount_minor, now);
    notify::sign(&mut form, key);
    let copies = match request.tamper {
        Tamper::None => request.deliveries,
        Tamper::Signature => {
            // A genuine signature, but of other content: well-formed and not verifying.
            form.insert("sign", rsa_keys::sign(key, "tampered"));
            1
        }
        Tamper::Amount => 1,
    };
    let mut notify_statuses = Vec::new();
    // Alipay sends nothing for an order opened without a notify_url.
    if !order.notify_url.is_empty() {
        for _ in 0..copies {
            notify_statuses.push(deliver(&sim.http, &order.notify_url, &form).await);
        }
    }
    Ok(Paid {
        order,
        trade_no,
        notify_statuses,
    })
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
