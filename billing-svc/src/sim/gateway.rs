//! `/gateway.do`, Alipay's single entry point: the request's `method` parameter picks the API.
//! Parameters come from the query string and, on POST, the form body (Alipay's SDKs split them
//! that way). Every request's RSA2 signature is checked with the merchant's public key; JSON
//! answers are signed with "Alipay's" key over the exact text of their response node.

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{Method, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};

use super::{
    Sim,
    notify::{BUYER_ID, BUYER_LOGON_ID},
    order_book::Inconsistent,
    orders::{NotClosable, Order, RefundRefusal, TradeState},
    page,
};
use crate::{
    domain::money::{format_yuan, parse_yuan},
    providers::{
        alipay::{
            AMOUNT_RANGE_MINOR, PAGE_PAY, REQUEST_SIGN_EXCLUDED, SUCCESS_CODE, TRADE_CLOSE,
            TRADE_NOT_EXIST, TRADE_QUERY, TRADE_REFUND, TRADE_STATUS_ERROR, format_beijing,
            parse_beijing, response_node_name, sign_content,
        },
        rsa_keys,
    },
};

const MAX_OUT_TRADE_NO_CHARS: usize = 64;

/// A refused request, in Alipay's terms (`code`/`msg` class, `sub_code`/`sub_msg` detail).
#[derive(Debug)]
struct GatewayError {
    code: &'static str,
    msg: &'static str,
    sub_code: &'static str,
    sub_msg: String,
}

impl GatewayError {
    fn missing(sub_code: &'static str, sub_msg: impl Into<String>) -> Self {
        Self {
            code: "40001",
            msg: "Missing Required Arguments",
            sub_code,
            sub_msg: sub_msg.into(),
        }
    }

    fn invalid(sub_code: &'static str, sub_msg: impl Into<String>) -> Self {
        Self {
            code: "40002",
            msg: "Invalid Arguments",
            sub_code,
            sub_msg: sub_msg.into(),
        }
    }

    fn business(sub_code: &'static str, sub_msg: impl Into<String>) -> Self {
        Self {
            code: "40004",
            msg: "Business Failed",
            sub_code,
            sub_msg: sub_msg.into(),
        }
    }

    fn node(&self) -> Value {
        json!({
            "code": self.code,
            "msg": self.msg,
            "sub_code": self.sub_code,
            "sub_msg": self.sub_msg,
        })
    }
}

type Params = BTreeMap<String, String>;

/// `GET|POST /gateway.do`.
pub(super) async fn handle(
    State(sim): State<Sim>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    body: Bytes,
) -> Response {
    let form = (method == Method::POST).then_some(&body[..]);
    let params = match collect_params(raw_query.as_deref().unwrap_or_default().as_bytes(), form) {
        Ok(params) => params,
        Err(error) => return answer(&sim, "error_response", error.node()),
    };
    let api = params.get("method").map(String::as_str).unwrap_or_default();
    let checked = check_signature(&sim, &params);
    if api == PAGE_PAY {
        return match checked.and_then(|()| page_pay(&sim, &params)) {
            Ok(order) => page::checkout(&order),
            Err(error) => page::message(
                StatusCode::BAD_REQUEST,
                "The payment request was refused",
                &format!("{} ({}): {}", error.sub_code, error.code, error.sub_msg),
            ),
        };
    }
    let operation: fn(&Sim, &Params) -> Result<Value, GatewayError> = match api {
        TRADE_QUERY => query,
        TRADE_CLOSE => close,
        TRADE_REFUND => refund,
        "" => {
            let error = GatewayError::missing("isv.missing-method", "缺少方法名参数");
            return answer(&sim, "error_response", error.node());
        }
        _ => {
            let error = GatewayError::invalid("isv.invalid-method", "不存在的方法名");
            return answer(&sim, "error_response", error.node());
        }
    };
    let node = checked
        .and_then(|()| operation(&sim, &params))
        .unwrap_or_else(|error| error.node());
    answer(&sim, &response_node_name(api), node)
}

/// The query string's parameters and the form body's, decoded; a name given twice is refused,
/// since it would leave open which value the signature covered.
fn collect_params(query: &[u8], form: Option<&[u8]>) -> Result<Params, GatewayError> {
    let mut params = Params::new();
    let pairs =
        form_urlencoded::parse(query).chain(form.into_iter().flat_map(form_urlencoded::parse));
    for (name, value) in pairs {
        if params
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(GatewayError::invalid(
                "isv.invalid-parameter",
                format!("parameter {name} given twice"),
            ));
        }
    }
    Ok(params)
}

fn check_signature(sim: &Sim, params: &Params) -> Result<(), GatewayError> {
    if params.get("app_id").is_none_or(String::is_empty) {
        return Err(GatewayError::missing("isv.missing-app-id", "缺少AppID参数"));
    }
    let Some(sign) = params.get("sign") else {
        return Err(GatewayError::missing(
            "isv.missing-signature",
            "缺少签名参数",
        ));
    };
    if params.get("sign_type").map(String::as_str) != Some("RSA2") {
        return Err(GatewayError::invalid(
            "isv.invalid-signature-type",
            "签名类型不是RSA2",
        ));
    }
    let content = sign_content(params, REQUEST_SIGN_EXCLUDED);
    if !rsa_keys::verify(&sim.config.merchant_public_key, &content, sign) {
        tracing::warn!(method = ?params.get("method"), "request signature does not verify");
        return Err(GatewayError::invalid(
            "isv.invalid-signature",
            "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配",
        ));
    }
    Ok(())
}

fn biz_content<T: DeserializeOwned>(params: &Params) -> Result<T, GatewayError> {
    let text = params
        .get("biz_content")
        .ok_or_else(|| GatewayError::missing("isv.missing-biz-content", "缺少biz_content参数"))?;
    serde_json::from_str(text).map_err(|err| {
        GatewayError::invalid("isv.invalid-parameter", format!("biz_content: {err}"))
    })
}

#[derive(Deserialize)]
struct PagePayContent {
    out_trade_no: String,
    total_amount: String,
    subject: String,
    product_code: String,
    time_expire: Option<String>,
}

/// Opens (or finds again) the order a page-pay request describes.
fn page_pay(sim: &Sim, params: &Params) -> Result<Order, GatewayError> {
    let content: PagePayContent = biz_content(params)?;
    let invalid = |what: &str| GatewayError::invalid("isv.invalid-parameter", what.to_owned());
    let length = content.out_trade_no.chars().count();
    if length == 0 || length > MAX_OUT_TRADE_NO_CHARS {
        return Err(invalid("out_trade_no must be 1 to 64 characters"));
    }
    if content.subject.is_empty() {
        return Err(invalid("subject is required"));
    }
    if content.product_code != "FAST_INSTANT_TRADE_PAY" {
        return Err(GatewayError::business(
            "ACQ.PRODUCT_CODE_ERROR",
            "page pay takes product_code FAST_INSTANT_TRADE_PAY",
        ));
    }
    let amount_minor = parse_yuan(&content.total_amount)
        .ok()
        .filter(|amount| AMOUNT_RANGE_MINOR.contains(amount))
        .ok_or_else(|| invalid("total_amount must be 0.01 to 100000000.00"))?;
    let time_expire = content
        .time_expire
        .map(|text| {
            parse_beijing(&text).ok_or_else(|| invalid("time_expire is not yyyy-MM-dd HH:mm:ss"))
        })
        .transpose()?;
    let param = |name: &str| params.get(name).cloned().unwrap_or_default();
    let now = sim.config.clock.now();
    sim.orders
        .open(
            Order {
                out_trade_no: content.out_trade_no,
                app_id: param("app_id"),
                amount_minor,
                subject: content.subject,
                notify_url: param("notify_url"),
                return_url: param("return_url"),
                time_expire,
                created_at: now,
                state: TradeState::WaitBuyerPay,
                trade_no: None,
                notify_id: None,
                paid_at: None,
                refunds: Vec::new(),
            },
            now,
        )
        .map_err(|Inconsistent| {
            GatewayError::business(
                "ACQ.CONTEXT_INCONSISTENT",
                "交易信息被篡改: this order number was opened with another amount or subject",
            )
        })
}

#[derive(Deserialize)]
struct TradeContent {
    out_trade_no: Option<String>,
    trade_no: Option<String>,
}

/// Runs `action` on the order the biz_content names (`trade_no` wins, as at Alipay).
fn with_named_order<T>(
    sim: &Sim,
    params: &Params,
    action: impl FnOnce(&mut Order) -> T,
) -> Result<T, GatewayError> {
    let content: TradeContent = biz_content(params)?;
    let now = sim.config.clock.now();
    let found = match (&content.trade_no, &content.out_trade_no) {
        (Some(trade_no), _) => sim.orders.with_order_where(
            |order| order.trade_no.as_deref() == Some(trade_no.as_str()),
            now,
            action,
        ),
        (None, Some(out_trade_no)) => sim.orders.with_order(out_trade_no, now, action),
        (None, None) => {
            return Err(GatewayError::missing(
                "isv.missing-parameter",
                "out_trade_no or trade_no is required",
            ));
        }
    };
    found.ok_or_else(|| GatewayError::business(TRADE_NOT_EXIST, "交易不存在"))
}

/// `alipay.trade.query`.
fn query(sim: &Sim, params: &Params) -> Result<Value, GatewayError> {
    let order = with_named_order(sim, params, |order| order.clone())?;
    let mut node = success_node(&order);
    let paid = order.state == TradeState::Success;
    let paid_amount = format_yuan(if paid { order.amount_minor } else { 0 });
    node.insert("trade_status".to_owned(), order.state.as_str().into());
    node.insert(
        "total_amount".to_owned(),
        format_yuan(order.amount_minor).into(),
    );
    node.insert("receipt_amount".to_owned(), paid_amount.clone().into());
    node.insert("buyer_pay_amount".to_owned(), paid_amount.into());
    if paid {
        node.insert("buyer_logon_id".to_owned(), BUYER_LOGON_ID.into());
        node.insert("buyer_user_id".to_owned(), BUYER_ID.into());
    }
    if let Some(paid_at) = order.paid_at {
        node.insert("send_pay_date".to_owned(), format_beijing(paid_at).into());
    }
    Ok(Value::Object(node))
}

/// `alipay.trade.close`: only a trade waiting for payment closes.
fn close(sim: &Sim, params: &Params) -> Result<Value, GatewayError> {
    let order = with_named_order(sim, params, |order| order.close().map(|()| order.clone()))?
        .map_err(|NotClosable| GatewayError::business(TRADE_STATUS_ERROR, "交易状态不合法"))?;
    Ok(Value::Object(success_node(&order)))
}

#[derive(Deserialize)]
struct RefundContent {
    refund_amount: String,
    out_request_no: Option<String>,
}

/// `alipay.trade.refund`: part or all of a paid trade; a full refund closes it.
fn refund(sim: &Sim, params: &Params) -> Result<Value, GatewayError> {
    let content: RefundContent = biz_content(params)?;
    let amount_minor = parse_yuan(&content.refund_amount)
        .ok()
        .filter(|amount| *amount > 0)
        .ok_or_else(|| {
            GatewayError::invalid("isv.invalid-parameter", "refund_amount must be positive")
        })?;
    let (order, refunded) = with_named_order(sim, params, |order| {
        // Alipay takes the order number as the request number when none is given.
        let request_no = content
            .out_request_no
            .clone()
            .unwrap_or_else(|| order.out_trade_no.clone());
        order
            .refund(&request_no, amount_minor)
            .map(|refunded| (order.clone(), refunded))
    })?
    .map_err(|refusal| match refusal {
        RefundRefusal::NotPaid => GatewayError::business(TRADE_STATUS_ERROR, "交易状态不合法"),
        RefundRefusal::Exceeds => {
            GatewayError::business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        }
    })?;
    let mut node = success_node(&order);
    let fund_change = if refunded.fund_change { "Y" } else { "N" };
    node.insert("fund_change".to_owned(), fund_change.into());
    node.insert(
        "refund_fee".to_owned(),
        format_yuan(refunded.total_minor).into(),
    );
    node.insert("buyer_logon_id".to_owned(), BUYER_LOGON_ID.into());
    node.insert(
        "gmt_refund_pay".to_owned(),
        format_beijing(sim.config.clock.now()).into(),
    );
    Ok(Value::Object(node))
}

/// `code` 10000 with the order's numbers, which every successful trade answer carries.
fn success_node(order: &Order) -> Map<String, Value> {
    let mut node = Map::new();
    node.insert("code".to_owned(), SUCCESS_CODE.into());
    node.insert("msg".to_owned(), "Success".into());
    node.insert("out_trade_no".to_owned(), order.out_trade_no.clone().into());
    if let Some(trade_no) = &order.trade_no {
        node.insert("trade_no".to_owned(), trade_no.clone().into());
    }
    node
}

/// A JSON answer `{"<node_name>": node, "sign": "…"}`, signed over the node's exact text.
fn answer(sim: &Sim, node_name: &str, node: Value) -> Response {
    let node_text = node.to_string();
    let sign = rsa_keys::sign(&sim.config.alipay_private_key, &node_text);
    let body = format!(
        "{{{}:{node_text},\"sign\":{}}}",
        Value::from(node_name),
        Value::from(sign)
    );
    ([(CONTENT_TYPE, "application/json;charset=utf-8")], body).into_response()
}
