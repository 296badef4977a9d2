//! The control routes: tests (and the checkout page's Pay button) pay orders and decide how the
//! notification arrives; the order's state can be read back.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    Sim,
    control_common::{self, Paid, PayFailure},
    notify::{self, deliver},
    order_book::NotPayable,
    orders::{Order, new_notify_id},
    page,
};
use crate::providers::rsa_keys;

/// Where the control API keeps Alipay's orders.
const ORDERS_PATH: &str = "/sim/alipay/orders";

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

type PayRequest = control_common::PayRequest<Tamper>;

/// `POST /sim/alipay/orders/{out_trade_no}:pay`.
pub(super) async fn pay(
    State(sim): State<Sim>,
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
        Err(failure) => failure.page(&out_trade_no, page::message),
    }
}

/// `GET /sim/alipay/orders/{out_trade_no}`.
pub(super) async fn state(State(sim): State<Sim>, Path(out_trade_no): Path<String>) -> Response {
    let now = sim.config.clock.now();
    control_common::state_answer(
        sim.orders
            .with_order(&out_trade_no, now, |order| order.to_json()),
    )
}

/// Pays (unless tampering) and sends the notifications, one after the other.
async fn pay_order(
    sim: &Sim,
    out_trade_no: &str,
    request: &PayRequest,
) -> Result<Paid<Order>, PayFailure> {
    let now = sim.config.clock.now();
    let (order, trade_no, notify_id) = sim
        .orders
        .with_order(out_trade_no, now, |order| {
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
