//! The simulator's HTML: the checkout page a page-pay redirect lands on, and message pages.
//! Self-contained (inline CSS, no external assets), so it works offline.

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

use super::orders::{Order, TradeState};
use crate::{domain::money::format_yuan, providers::alipay::format_beijing};

const STYLE: &str = "body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
background:#f0f2f5;color:#1f2329}main{max-width:420px;margin:64px auto;background:#fff;\
border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:32px}header{color:#1677ff;\
font-weight:600;font-size:14px;letter-spacing:.04em;text-transform:uppercase}h1{font-size:20px;\
margin:12px 0 4px}.amount{font-size:40px;font-weight:600;margin:16px 0}dl{display:grid;\
grid-template-columns:auto 1fr;gap:6px 16px;font-size:14px;color:#646a73}dd{margin:0;color:#1f2329;\
word-break:break-all}button{width:100%;margin-top:24px;padding:12px;font-size:16px;border:0;\
border-radius:8px;background:#1677ff;color:#fff;cursor:pointer}button:hover{background:#0958d9}\
.note{margin-top:16px;font-size:12px;color:#8f959e}";

/// The cashier: amount, subject, order number and, while the order waits, a Pay button.
pub(super) fn checkout(order: &Order) -> Response {
    let action = match order.state {
        TradeState::WaitBuyerPay => format!(
            "<form method=\"post\" action=\"/sim/alipay/checkout/{}\"><button type=\"submit\">Pay \
             ¥{}</button></form>",
            escape(
                &form_urlencoded::byte_serialize(order.out_trade_no.as_bytes()).collect::<String>()
            ),
            format_yuan(order.amount_minor),
        ),
        TradeState::Success => "<p class=\"note\">This order is paid.</p>".to_owned(),
        TradeState::Closed => {
            "<p class=\"note\">This order is closed and can no longer be paid.</p>".to_owned()
        }
    };
    let expires = order
        .time_expire
        .map(|expire| {
            format!(
                "<dt>Pay before</dt><dd>{} (UTC+8)</dd>",
                format_beijing(expire)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>{subject}</h1><div class=\"amount\">¥{amount}</div><dl><dt>Order</dt><dd>{order_no}</dd>\
         <dt>Status</dt><dd>{status}</dd>{expires}</dl>{action}\
         <p class=\"note\">Alipay simulator: no money moves.</p>",
        subject = escape(&order.subject),
        amount = format_yuan(order.amount_minor),
        order_no = escape(&order.out_trade_no),
        status = order.state.as_str(),
    );
    document(StatusCode::OK, "Alipay checkout", &body)
}

/// A page with a title and one message (errors, confirmations).
pub(super) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text));
    document(status, title, &body)
}

fn document(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><main><header>Alipay · simulator\
         </header>{body}</main></body></html>",
        escape(title)
    );
    (status, Html(html)).into_response()
}

/// Escapes text for HTML element content and double-quoted attributes.
pub(super) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
