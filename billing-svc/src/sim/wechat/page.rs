//! The WeChat Pay simulator's HTML: the order's `code_url` as a QR code (the picture a merchant
//! shows for a Native payment) with a Pay button standing in for the buyer's phone, and message
//! pages. Self-contained (inline SVG and CSS), so it works offline.

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use qrcode::{QrCode, render::svg};

use super::orders::{Order, TradeState};
use crate::{domain::money::format_yuan, providers::wechat_v3::format_time, sim::page::escape};

const STYLE: &str = "body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
background:#ededed;color:#191919}main{max-width:420px;margin:48px auto;background:#fff;\
border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:32px;text-align:center}\
header{color:#07c160;font-weight:600;font-size:14px;letter-spacing:.04em;text-transform:uppercase}\
h1{font-size:20px;margin:12px 0 4px}.amount{font-size:40px;font-weight:600;margin:16px 0}\
.qr svg{width:240px;height:240px}.code{font-family:monospace;font-size:12px;color:#576b95;\
word-break:break-all}dl{display:grid;grid-template-columns:auto 1fr;gap:6px 16px;font-size:14px;\
color:#7f7f7f;text-align:left}dd{margin:0;color:#191919;word-break:break-all}button{width:100%;\
margin-top:24px;padding:12px;font-size:16px;border:0;border-radius:8px;background:#07c160;\
color:#fff;cursor:pointer}button:hover{background:#06ad56}.note{margin-top:16px;font-size:12px;\
color:#8f959e}";

/// The order's QR code, amount and description and, while the order waits, a Pay button.
pub(super) fn qr(order: &Order) -> Response {
    let action = match order.state {
        TradeState::NotPay => format!(
            "<form method=\"post\" action=\"/sim/wechatpay/checkout/{}\"><button type=\"submit\">\
             Pay ¥{}</button></form>",
            escape(
                &form_urlencoded::byte_serialize(order.out_trade_no.as_bytes()).collect::<String>()
            ),
            format_yuan(order.amount_minor),
        ),
        TradeState::Success | TradeState::Refund => {
            "<p class=\"note\">This order is paid.</p>".to_owned()
        }
        TradeState::Closed => {
            "<p class=\"note\">This order is closed and can no longer be paid.</p>".to_owned()
        }
    };
    let expires = order
        .time_expire
        .map(|expire| format!("<dt>Pay before</dt><dd>{}</dd>", format_time(expire)))
        .unwrap_or_default();
    let body = format!(
        "<h1>{description}</h1><div class=\"amount\">¥{amount}</div>\
         <div class=\"qr\" role=\"img\" aria-label=\"QR code of {code}\">{svg}</div>\
         <p class=\"code\">{code}</p><dl><dt>Order</dt><dd>{order_no}</dd>\
         <dt>Status</dt><dd>{status}</dd>{expires}</dl>{action}\
         <p class=\"note\">WeChat Pay simulator: scan nothing, press Pay; no money moves.</p>",
        description = escape(&order.description),
        amount = format_yuan(order.amount_minor),
        code = escape(&order.code_url),
        svg = qr_svg(&order.code_url),
        order_no = escape(&order.out_trade_no),
        status = order.state.as_str(),
    );
    document(StatusCode::OK, "WeChat Pay", &body)
}

/// The page after the Pay button.
pub(super) fn paid(order: &Order) -> Response {
    message(
        StatusCode::OK,
        "Payment successful",
        &format!(
            "Order {} is paid (¥{}).",
            order.out_trade_no,
            format_yuan(order.amount_minor)
        ),
    )
}

/// A page with a title and one message.
pub(super) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text));
    document(status, title, &body)
}

/// `text` as an inline SVG QR code (medium error correction, the encoder's default). A
/// `code_url` is a few dozen bytes, far below a QR code's capacity, so encoding cannot fail for
/// one; should it, the page shows the URL alone.
fn qr_svg(text: &str) -> String {
    let Ok(code) = QrCode::new(text.as_bytes()) else {
        return String::new();
    };
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // The XML declaration belongs to a standalone file, not inside HTML.
    match svg.split_once("?>") {
        Some((declaration, rest)) if declaration.starts_with("<?xml") => rest.to_owned(),
        _ => svg,
    }
}

fn document(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><main><header>WeChat Pay · \
         simulator</header>{body}</main></body></html>",
        escape(title)
    );
    (status, Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_inline_svg_without_an_xml_declaration() {
        let svg = qr_svg("weixin://wxpay/bizpayurl?pr=abc1234");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<path"), "{svg}");
    }
}
