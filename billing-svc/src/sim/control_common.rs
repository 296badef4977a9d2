//! What the Alipay and WeChat Pay control routes share: the `{out_trade_no}:pay` request and its
//! JSON answer, the order's state as JSON, and the checkout button's failure pages.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

/// At most this many deliveries per call: a typo must not flood the merchant.
const MAX_DELIVERIES: u32 = 20;

/// The body of `POST /sim/{provider}/orders/{out_trade_no}:pay`; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound(deserialize = "Tamper: Deserialize<'de> + Default")
)]
pub(super) struct PayRequest<Tamper> {
    pub(super) deliveries: u32,
    /// The provider's ways to spoil the notification; its default sends correct ones.
    pub(super) tamper: Tamper,
}

impl<Tamper: Default> Default for PayRequest<Tamper> {
    fn default() -> Self {
        Self {
            deliveries: 1,
            tamper: Tamper::default(),
        }
    }
}

/// The order number of `POST {orders_path}/{out_trade_no}:pay` (`target` is the last path
/// segment) and its request, an empty body asking for the defaults; or the error to answer.
pub(super) fn pay_request<'a, Tamper>(
    orders_path: &str,
    target: &'a str,
    body: &[u8],
) -> Result<(&'a str, PayRequest<Tamper>), BadPayRequest>
where
    Tamper: for<'de> Deserialize<'de> + Default,
{
    let Some(out_trade_no) = target.strip_suffix(":pay") else {
        return Err(BadPayRequest(
            StatusCode::NOT_FOUND,
            format!("POST needs {orders_path}/{{out_trade_no}}:pay"),
        ));
    };
    let request = if body.is_empty() {
        PayRequest::default()
    } else {
        serde_json::from_slice::<PayRequest<Tamper>>(body)
            .map_err(|err| BadPayRequest(StatusCode::BAD_REQUEST, err.to_string()))?
    };
    if request.deliveries > MAX_DELIVERIES {
        return Err(BadPayRequest(
            StatusCode::BAD_REQUEST,
            format!("deliveries is at most {MAX_DELIVERIES}"),
        ));
    }
    Ok((out_trade_no, request))
}

/// A pay request the control API refuses: its status and error message.
pub(super) struct BadPayRequest(StatusCode, String);

impl IntoResponse for BadPayRequest {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1)
    }
}

/// A payment made and how its notifications were answered.
pub(super) struct Paid<Order> {
    pub(super) order: Order,
    /// The provider's number for the payment (Alipay's `trade_no`, WeChat Pay's
    /// `transaction_id`).
    pub(super) trade_no: String,
    pub(super) notify_statuses: Vec<u16>,
}

/// Why the control API could not pay an order.
pub(super) enum PayFailure {
    UnknownOrder,
    NotPayable,
}

impl PayFailure {
    /// The page the checkout button shows, drawn by the provider's `message` page.
    pub(super) fn page(
        self,
        out_trade_no: &str,
        message: impl FnOnce(StatusCode, &str, &str) -> Response,
    ) -> Response {
        match self {
            PayFailure::UnknownOrder => {
                message(StatusCode::NOT_FOUND, "Unknown order", out_trade_no)
            }
            PayFailure::NotPayable => message(
                StatusCode::CONFLICT,
                "This order can no longer be paid",
                "It was closed by the merchant or its payment time has passed.",
            ),
        }
    }
}

/// The answer to `POST …/orders/{out_trade_no}:pay`.
pub(super) fn pay_answer<Order>(paid: Result<Paid<Order>, PayFailure>) -> Response {
    match paid {
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

/// The answer to `GET …/orders/{out_trade_no}`: the order as JSON, if there is one.
pub(super) fn state_answer(order: Option<Value>) -> Response {
    match order {
        Some(order) => Json(order).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "unknown order"),
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
