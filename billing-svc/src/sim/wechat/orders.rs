//! The simulated WeChat Pay transactions, in memory, and their life: `NOTPAY` → `SUCCESS` (paid)
//! → `REFUND` (once refunded), or `NOTPAY` → `CLOSED` (closed by the merchant, or unpaid past
//! `time_expire`). Refunds are kept per `out_refund_no`, so a repeated request refunds nothing.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};

use crate::{
    providers::{alipay::BEIJING, wechat_v3::format_time},
    sim::order_book::{BookedOrder, NotPayable},
};

/// A transaction's `trade_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TradeState {
    NotPay,
    Success,
    Refund,
    Closed,
}

impl TradeState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            TradeState::NotPay => "NOTPAY",
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::Closed => "CLOSED",
        }
    }

    fn is_paid(self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// One refund of a transaction.
#[derive(Debug, Clone)]
pub(super) struct Refund {
    pub(super) out_refund_no: String,
    pub(super) refund_id: String,
    pub(super) amount_minor: i64,
    pub(super) created_at: DateTime<Utc>,
    /// `SUCCESS` once "the money went back" (at once here); the first answer says PROCESSING.
    pub(super) succeeded: bool,
}

/// One Native order.
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) out_trade_no: String,
    pub(super) mchid: String,
    pub(super) appid: String,
    pub(super) description: String,
    pub(super) amount_minor: i64,
    pub(super) currency: String,
    pub(super) notify_url: String,
    pub(super) time_expire: Option<DateTime<Utc>>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) code_url: String,
    pub(super) state: TradeState,
    /// WeChat Pay's number, assigned when the buyer pays (or a tampered payment is sent).
    pub(super) transaction_id: Option<String>,
    /// The same on every delivery of this order's payment notification.
    pub(super) notification_id: Option<String>,
    pub(super) paid_at: Option<DateTime<Utc>>,
    pub(super) refunds: Vec<Refund>,
}

/// Why an order cannot be closed: it is paid (`ORDERPAID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AlreadyPaid;

/// Why a refund was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefundRefusal {
    NotPaid,
    /// `amount.total` is not the order's amount.
    WrongTotal,
    /// More than what is left to refund.
    Exceeds,
}

/// What a refund request did: the refund, and whether this request made it.
#[derive(Debug, Clone)]
pub(super) struct Refunded {
    pub(super) refund: Refund,
    pub(super) new: bool,
}

impl BookedOrder for Order {
    fn out_trade_no(&self) -> &str {
        &self.out_trade_no
    }

    /// A retried request names the same merchant, amount and description.
    fn is_reopened_by(&self, again: &Self) -> bool {
        self.mchid == again.mchid
            && self.amount_minor == again.amount_minor
            && self.description == again.description
    }

    /// WeChat Pay closes an unpaid order once its `time_expire` has passed.
    fn expire_if_due(&mut self, now: DateTime<Utc>) {
        if self.state == TradeState::NotPay && self.time_expire.is_some_and(|expire| expire <= now)
        {
            self.state = TradeState::Closed;
        }
    }
}

impl Order {
    /// The transaction id, assigned on first use.
    pub(super) fn transaction_id(&mut self, now: DateTime<Utc>) -> String {
        self.transaction_id
            .get_or_insert_with(|| new_transaction_id(now))
            .clone()
    }

    /// Marks the order paid. Paying a paid order again changes nothing (its notification is
    /// sent again); a closed order cannot be paid.
    pub(super) fn pay(&mut self, now: DateTime<Utc>) -> Result<(), NotPayable> {
        match self.state {
            TradeState::Closed => Err(NotPayable),
            TradeState::Success | TradeState::Refund => Ok(()),
            TradeState::NotPay => {
                self.transaction_id(now);
                self.notification_id = Some(uuid::Uuid::new_v4().to_string());
                self.state = TradeState::Success;
                self.paid_at = Some(now);
                Ok(())
            }
        }
    }

    /// Closes a waiting order; closing a closed one succeeds again.
    pub(super) fn close(&mut self) -> Result<(), AlreadyPaid> {
        if self.state.is_paid() {
            return Err(AlreadyPaid);
        }
        self.state = TradeState::Closed;
        Ok(())
    }

    pub(super) fn refunded_minor(&self) -> i64 {
        self.refunds.iter().map(|refund| refund.amount_minor).sum()
    }

    /// Refunds `amount_minor` (> 0) of a paid order; a repeated `out_refund_no` answers the
    /// refund made before and moves no money.
    pub(super) fn refund(
        &mut self,
        out_refund_no: &str,
        amount_minor: i64,
        total_minor: i64,
        now: DateTime<Utc>,
    ) -> Result<Refunded, RefundRefusal> {
        if let Some(refund) = self
            .refunds
            .iter()
            .find(|refund| refund.out_refund_no == out_refund_no)
        {
            return Ok(Refunded {
                refund: refund.clone(),
                new: false,
            });
        }
        if !self.state.is_paid() {
            return Err(RefundRefusal::NotPaid);
        }
        if total_minor != self.amount_minor {
            return Err(RefundRefusal::WrongTotal);
        }
        if self.refunded_minor() + amount_minor > self.amount_minor {
            return Err(RefundRefusal::Exceeds);
        }
        let refund = Refund {
            out_refund_no: out_refund_no.to_owned(),
            refund_id: new_refund_id(now),
            amount_minor,
            created_at: now,
            succeeded: true,
        };
        self.refunds.push(refund.clone());
        self.state = TradeState::Refund;
        Ok(Refunded { refund, new: true })
    }

    /// The order as the control API shows it.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "outTradeNo": self.out_trade_no,
            "transactionId": self.transaction_id,
            "tradeNo": self.transaction_id,
            "status": self.state.as_str(),
            "amountTotal": self.amount_minor,
            "currency": self.currency,
            "description": self.description,
            "mchid": self.mchid,
            "appid": self.appid,
            "notifyUrl": self.notify_url,
            "codeUrl": self.code_url,
            "timeExpire": self.time_expire.map(format_time),
            "createTime": format_time(self.created_at),
            "successTime": self.paid_at.map(format_time),
            "notificationId": self.notification_id,
            "refundedTotal": self.refunded_minor(),
            "refunds": self.refunds.iter().map(|refund| json!({
                "outRefundNo": refund.out_refund_no,
                "refundId": refund.refund_id,
                "amount": refund.amount_minor,
            })).collect::<Vec<_>>(),
        })
    }
}

/// WeChat Pay's shape: `42000` + Beijing date + 15 digits (28 digits).
fn new_transaction_id(now: DateTime<Utc>) -> String {
    let digits: u64 = rand::thread_rng().gen_range(0..10_u64.pow(15));
    format!(
        "42000{}{digits:015}",
        now.with_timezone(&BEIJING).format("%Y%m%d")
    )
}

/// `50` + 10 digits + Beijing date + 11 digits, like WeChat Pay's refund ids.
fn new_refund_id(now: DateTime<Utc>) -> String {
    let mut random = rand::thread_rng();
    let head: u64 = random.gen_range(0..10_u64.pow(10));
    let tail: u64 = random.gen_range(0..10_u64.pow(11));
    format!(
        "50{head:010}{}{tail:011}",
        now.with_timezone(&BEIJING).format("%Y%m%d")
    )
}

/// A `weixin://wxpay/bizpayurl?pr=…` code, what Native orders answer.
pub(super) fn new_code_url() -> String {
    let code: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(7)
        .map(char::from)
        .collect();
    format!("weixin://wxpay/bizpayurl?pr={code}")
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use chrono::TimeDelta;

    use super::*;
    use crate::sim::order_book::{Inconsistent, OrderBook};

    fn order(now: DateTime<Utc>) -> Order {
        Order {
            out_trade_no: "o1".to_owned(),
            mchid: "1900000109".to_owned(),
            appid: "wx0000000000000001".to_owned(),
            description: "Pro".to_owned(),
            amount_minor: 1999,
            currency: "CNY".to_owned(),
            notify_url: String::new(),
            time_expire: Some(now + TimeDelta::minutes(15)),
            created_at: now,
            code_url: new_code_url(),
            state: TradeState::NotPay,
            transaction_id: None,
            notification_id: None,
            paid_at: None,
            refunds: Vec::new(),
        }
    }

    #[test]
    fn paying_assigns_the_transaction_id_and_notification_id_once() {
        let now = Utc::now();
        let mut order = order(now);
        order.pay(now).unwrap();
        let ids = (order.transaction_id.clone(), order.notification_id.clone());
        assert_eq!(order.transaction_id.as_ref().map(String::len), Some(28));
        order.pay(now + TimeDelta::minutes(1)).unwrap();
        assert_eq!((order.transaction_id, order.notification_id), ids);
    }

    #[test]
    fn closing_is_repeatable_until_paid_and_a_closed_order_cannot_be_paid() {
        let now = Utc::now();
        let mut waiting = order(now);
        waiting.close().unwrap();
        waiting.close().unwrap();
        assert_eq!(waiting.pay(now), Err(NotPayable));
        let mut paid = order(now);
        paid.pay(now).unwrap();
        assert_eq!(paid.close(), Err(AlreadyPaid));
    }

    #[test]
    fn refunds_add_up_to_the_amount_once_each() {
        let now = Utc::now();
        let mut order = order(now);
        assert_eq!(
            order.refund("r1", 999, 1999, now).unwrap_err(),
            RefundRefusal::NotPaid
        );
        order.pay(now).unwrap();
        let first = order.refund("r1", 999, 1999, now).unwrap();
        assert!(first.new);
        let again = order.refund("r1", 999, 1999, now).unwrap();
        assert!(!again.new);
        assert_eq!(again.refund.refund_id, first.refund.refund_id);
        assert_eq!(
            order.refund("r2", 1001, 1999, now).unwrap_err(),
            RefundRefusal::Exceeds
        );
        assert_eq!(
            order.refund("r2", 1, 2999, now).unwrap_err(),
            RefundRefusal::WrongTotal
        );
        order.refund("r2", 1000, 1999, now).unwrap();
        assert_eq!(order.refunded_minor(), 1999);
        assert_eq!(order.state, TradeState::Refund);
    }

    #[test]
    fn an_order_past_its_expiry_is_closed_when_next_seen() {
        let now = Utc::now();
        let book = OrderBook::default();
        book.open(order(now), now).unwrap();
        let at_expiry = now + TimeDelta::minutes(15);
        assert_eq!(
            book.with_order("o1", at_expiry, |order| order.pay(at_expiry)),
            Some(Err(NotPayable))
        );
        let mut dearer = order(now);
        dearer.amount_minor += 1;
        assert_eq!(book.open(dearer, now).unwrap_err(), Inconsistent);
    }
}
