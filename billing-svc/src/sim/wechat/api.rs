//! WeChat Pay's v3 endpoints: Native order, query by `out_trade_no`, close, refund. Each request's
//! `Authorization` must name the merchant serial and verify with the merchant's public key over
//! `METHOD\nURL\ntimestamp\nnonce\nbody\n`; every answer, errors included, is signed.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header::AUTHORIZATION},
    response::Response,
};
use chrono::DateTime;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{
    WechatSim, notify,
    orders::{AlreadyPaid, Order, RefundRefusal, Refunded, TradeState, new_code_url},
};
use crate::{
    providers::{
        rsa_keys,
        wechat_v3::{Authorization, ORDER_NOT_EXIST, SIGN_ERROR, format_time, request_message},
    },
    sim::order_book::Inconsistent,
};

/// A refused request, WeChat Pay style: an HTTP status and `{code, message}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "PARAM_ERROR", message)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ORDER_NOT_EXIST, "订单不存在")
    }
}

type ApiResult = Result<(StatusCode, String), ApiError>;

fn answer(sim: &WechatSim, result: ApiResult) -> Response {
    match result {
        Ok((status, body)) => sim.signed(status, body),
        Err(error) => sim.signed(
            error.status,
            json!({ "code": error.code, "message": error.message }).to_string(),
        ),
    }
}

/// The merchant the request's valid signature names.
fn authenticate(
    sim: &WechatSim,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Result<String, ApiError> {
    let sign_error = |message: &str| {
        tracing::warn!(%uri, message, "request signature refused");
        ApiError::new(StatusCode::UNAUTHORIZED, SIGN_ERROR, message)
    };
    let authorization = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(Authorization::parse)
        .ok_or_else(|| sign_error("Authorization 缺失或格式错误"))?;
    if authorization.serial_no != sim.config.merchant_serial {
        return Err(sign_error("商户证书序列号有误"));
    }
    let target = uri
        .path_and_query()
        .map(|target| target.as_str())
        .unwrap_or("/");
    let message = request_message(
        method.as_str(),
        target,
        &authorization.timestamp,
        &authorization.nonce_str,
        body,
    );
    if !rsa_keys::verify(
        &sim.config.merchant_public_key,
        &message,
        &authorization.signature,
    ) {
        return Err(sign_error("签名错误"));
    }
    Ok(authorization.mchid)
}

/// The merchant a JSON request's valid signature names, and the request.
fn authenticated_json<T: DeserializeOwned>(
    sim: &WechatSim,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, T), ApiError> {
    let body = std::str::from_utf8(body).map_err(|_| ApiError::param("body is not UTF-8"))?;
    let mchid = authenticate(sim, method, uri, headers, body)?;
    let request =
        serde_json::from_str(body).map_err(|err| ApiError::param(format!("输入源错误: {err}")))?;
    Ok((mchid, request))
}

#[derive(Deserialize)]
struct NativeOrder {
    appid: String,
    mchid: String,
    description: String,
    out_trade_no: String,
    time_expire: Option<String>,
    notify_url: String,
    amount: NativeAmount,
}

#[derive(Deserialize)]
struct NativeAmount {
    total: i64,
    currency: Option<String>,
}

/// `POST /v3/pay/transactions/native`.
pub(super) async fn native_order(
    State(sim): State<WechatSim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let (mchid, request): (_, NativeOrder) =
            authenticated_json(&sim, &method, &uri, &headers, &body)?;
        if request.mchid != mchid {
            return Err(ApiError::param("mchid 与请求头不一致"));
        }
        let length = request.out_trade_no.chars().count();
        if !(6..=32).contains(&length) {
            return Err(ApiError::param("out_trade_no 长度须为 6 到 32"));
        }
        if request.description.is_empty() || request.appid.is_empty() {
            return Err(ApiError::param("description 和 appid 必填"));
        }
        if request.notify_url.is_empty() || request.notify_url.contains('?') {
            return Err(ApiError::param("notify_url 必填且不能携带参数"));
        }
        let currency = request.amount.currency.unwrap_or_else(|| "CNY".to_owned());
        if request.amount.total <= 0 || currency != "CNY" {
            return Err(ApiError::param(
                "amount.total 须为正整数, currency 须为 CNY",
            ));
        }
        let time_expire = request
            .time_expire
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|time| time.to_utc())
                    .map_err(|_| ApiError::param("time_expire 须为 RFC 3339"))
            })
            .transpose()?;
        let now = sim.clock.now();
        let order = sim
            .orders
            .open(
                Order {
                    out_trade_no: request.out_trade_no,
                    mchid,
                    appid: request.appid,
                    description: request.description,
                    amount_minor: request.amount.total,
                    currency,
                    notify_url: request.notify_url,
                    time_expire,
                    created_at: now,
                    code_url: new_code_url(),
                    state: TradeState::NotPay,
                    transaction_id: None,
                    notification_id: None,
                    paid_at: None,
                    refunds: Vec::new(),
                },
                now,
            )
            .map_err(|Inconsistent| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "商户订单号重复: this out_trade_no was placed with other parameters",
                )
            })?;
        match order.state {
            TradeState::NotPay => {}
            TradeState::Success | TradeState::Refund => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ORDERPAID",
                    "该订单已支付",
                ));
            }
            TradeState::Closed => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ORDER_CLOSED",
                    "订单已关闭",
                ));
            }
        }
        Ok((
            StatusCode::OK,
            json!({ "code_url": order.code_url }).to_string(),
        ))
    })();
    answer(&sim, result)
}

#[derive(Deserialize)]
pub(super) struct MchidQuery {
    mchid: Option<String>,
}

/// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=…`.
pub(super) async fn query(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
    Query(params): Query<MchidQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        let mchid = authenticate(&sim, &method, &uri, &headers, "")?;
        if params.mchid.as_deref() != Some(mchid.as_str()) {
            return Err(ApiError::param("mchid 与请求头不一致"));
        }
        let order = sim
            .orders
            .with_order(&out_trade_no, sim.clock.now(), |order| order.clone())
            .filter(|order| order.mchid == mchid)
            .ok_or_else(ApiError::not_found)?;
        Ok((
            StatusCode::OK,
            transaction(&order, order.amount_minor).to_string(),
        ))
    })();
    answer(&sim, result)
}

#[derive(Deserialize)]
struct CloseRequest {
    mchid: String,
}

/// `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close`: 204 when closed (again).
pub(super) async fn close(
    State(sim): State<WechatSim>,
    Path(out_trade_no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let (mchid, request): (_, CloseRequest) =
            authenticated_json(&sim, &method, &uri, &headers, &body)?;
        if request.mchid != mchid {
            return Err(ApiError::param("mchid 与请求头不一致"));
        }
        sim.orders
            .with_order(&out_trade_no, sim.clock.now(), |order| {
                if order.mchid == mchid {
                    Some(order.close())
                } else {
                    None
                }
            })
            .flatten()
            .ok_or_else(ApiError::not_found)?
            .map_err(|AlreadyPaid| {
                ApiError::new(StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付")
            })?;
        Ok((StatusCode::NO_CONTENT, String::new()))
    })();
    answer(&sim, result)
}

#[derive(Deserialize)]
struct RefundRequest {
    out_trade_no: String,
    out_refund_no: String,
    notify_url: Option<String>,
    amount: RefundAmount,
}

#[derive(Deserialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    currency: String,
}

/// `POST /v3/refund/domestic/refunds`: the first answer of a refund says PROCESSING and its
/// REFUND.SUCCESS notification follows; a repeated `out_refund_no` answers SUCCESS.
pub(super) async fn refund(
    State(sim): State<WechatSim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let (mchid, request): (_, RefundRequest) =
            authenticated_json(&sim, &method, &uri, &headers, &body)?;
        if request.amount.refund <= 0 || request.amount.currency != "CNY" {
            return Err(ApiError::param(
                "amount.refund 须为正整数, currency 须为 CNY",
            ));
        }
        if request.out_refund_no.is_empty() || request.out_refund_no.chars().count() > 64 {
            return Err(ApiError::param("out_refund_no 长度须为 1 到 64"));
        }
        let now = sim.clock.now();
        let (order, refunded) = sim
            .orders
            .with_order(&request.out_trade_no, now, |order| {
                if order.mchid != mchid {
                    return None;
                }
                let refunded = order.refund(
                    &request.out_refund_no,
                    request.amount.refund,
                    request.amount.total,
                    now,
                );
                Some(refunded.map(|refunded| (order.clone(), refunded)))
            })
            .flatten()
            .ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "订单不存在")
            })?
            .map_err(|refusal| match refusal {
                RefundRefusal::NotPaid => {
                    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单未支付")
                }
                RefundRefusal::WrongTotal => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "订单金额与原订单不一致",
                ),
                RefundRefusal::Exceeds => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "申请退款金额超过订单可退金额",
                ),
            })?;
        let Refunded { refund, new } = refunded;
        if new && let Some(notify_url) = request.notify_url.filter(|url| !url.is_empty()) {
            let (sim, order, refund) = (sim.clone(), order.clone(), refund.clone());
            tokio::spawn(async move {
                let body = notify::refund_notification(&sim, &order, &refund);
                notify::deliver(&sim, &notify_url, &body, sim.clock.now().timestamp()).await;
            });
        }
        let status = if new { "PROCESSING" } else { "SUCCESS" };
        Ok((
            StatusCode::OK,
            json!({
                "refund_id": refund.refund_id,
                "out_refund_no": refund.out_refund_no,
                "transaction_id": order.transaction_id,
                "out_trade_no": order.out_trade_no,
                "channel": "ORIGINAL",
                "user_received_account": "支付用户零钱",
                "success_time": (!new).then(|| format_time(refund.created_at)),
                "create_time": format_time(refund.created_at),
                "status": status,
                "funds_account": "AVAILABLE",
                "amount": {
                    "total": order.amount_minor,
                    "refund": refund.amount_minor,
                    "payer_total": order.amount_minor,
                    "payer_refund": refund.amount_minor,
                    "settlement_refund": refund.amount_minor,
                    "settlement_total": order.amount_minor,
                    "discount_refund": 0,
                    "currency": "CNY",
                    "refund_fee": 0,
                },
            })
            .to_string(),
        ))
    })();
    answer(&sim, result)
}

/// The Transaction object of a query answer or a notification, stating `amount_minor`.
pub(super) fn transaction(order: &Order, amount_minor: i64) -> Value {
    let paid = matches!(order.state, TradeState::Success | TradeState::Refund);
    let mut transaction = json!({
        "appid": order.appid,
        "mchid": order.mchid,
        "out_trade_no": order.out_trade_no,
        "trade_type": "NATIVE",
        "trade_state": order.state.as_str(),
        "trade_state_desc": match order.state {
            TradeState::NotPay => "订单未支付",
            TradeState::Success => "支付成功",
            TradeState::Refund => "订单发生过退款",
            TradeState::Closed => "订单已关闭",
        },
        "attach": "",
        "amount": { "total": amount_minor, "currency": order.currency },
    });
    if paid && let Some(fields) = transaction.as_object_mut() {
        fields.insert(
            "transaction_id".to_owned(),
            order.transaction_id.clone().into(),
        );
        fields.insert("bank_type".to_owned(), "OTHERS".into());
        fields.insert(
            "success_time".to_owned(),
            order.paid_at.map(format_time).into(),
        );
        fields.insert(
            "payer".to_owned(),
            json!({ "openid": notify::PAYER_OPENID }),
        );
        fields.insert(
            "amount".to_owned(),
            json!({
                "total": amount_minor,
                "payer_total": amount_minor,
                "currency": order.currency,
                "payer_currency": order.currency,
            }),
        );
    }
    transaction
}
