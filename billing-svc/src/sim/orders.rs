//! The simulator's trades, in memory, and their life: `WAIT_BUYER_PAY` → `TRADE_SUCCESS` (paid)
//! or `TRADE_CLOSED` (closed by the merchant, or unpaid past `time_expire`).

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};

use super::order_book::{BookedOrder, NotPayable};
use crate::{
    domain::money::format_yuan,
    providers::alipay::{BEIJING, format_beijing},
};

/// A trade's `trade_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TradeState {
    WaitBuyerPay,
    Success,
    Closed,
}

impl TradeState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            TradeState::WaitBuyerPay => "WAIT_BUYER_PAY",
            TradeState::Success => "TRADE_SUCCESS",
            TradeState::Closed => "TRADE_CLOSED",
        }
    }
}

/// One trade, as opened by a page-pay request.
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) out_trade_no: String,
    pub(super) app_id: String,
    pub(super) amount_minor: i64,
    pub(super) subject: String,
    pub(super) notify_url: String,
    pub(super) return_url: String,
    pub(super) time_expire: Option<DateTime<Utc>>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) state: TradeState,
    /// Alipay's number, assigned when the buyer first pays (or a tampered payment is sent).
    pub(super) trade_no: Option<String>,
    /// The same on every delivery of this order's payment notification.
    pub(super) notify_id: Option<String>,
    pub(super) paid_at: Option<DateTime<Utc>>,
    /// Refunds made: (`out_request_no`, amount in fen).
    pub(super) refunds: Vec<(String, i64)>,
}

/// Why a refund was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefundRefusal {
    /// The trade is not paid (`ACQ.TRADE_STATUS_ERROR`).
    NotPaid,
    /// More than what is left to refund (`ACQ.REFUND_AMT_NOT_EQUAL_TOTAL`).
    Exceeds,
}

/// What a refund request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refunded {
    /// Everything refunded on the trade so far.
    pub(super) total_minor: i64,
    /// False when the request repeated an earlier one and moved no money.
    pub(super) fund_change: bool,
}

/// Why an order cannot be closed: it is not waiting for payment (`ACQ.TRADE_STATUS_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotClosable;

impl BookedOrder for Order {
    fn out_trade_no(&self) -> &str {
        &self.out_trade_no
    }

    /// The buyer reloading the cashier asks for the same amount and subject.
    fn is_reopened_by(&self, again: &Self) -> bool {
        self.amount_minor == again.amount_minor && self.subject == again.subject
    }

    /// Alipay closes an unpaid trade once its `time_expire` has passed.
    fn expire_if_due(&mut self, now: DateTime<Utc>) {
        if self.state == TradeState::WaitBuyerPay
            && self.time_expire.is_some_and(|expire| expire <= now)
        {
            self.state = TradeState::Closed;
        }
    }
}

impl Order {
    /// The trade number, assigned on first use.
    pub(super) fn trade_no(&mut self, now: DateTime<Utc>) -> String {
        self.trade_no
            .get_or_insert_with(|| new_trade_no(now))
            .clone()
    }

    /// Marks the order paid. Paying a paid order again changes nothing (its notification is
    /// sent again); a closed order cannot be paid.
    pub(super) fn pay(&mut self, now: DateTime<Utc>) -> Result<(), NotPayable> {
        match self.state {
            TradeState::Closed => Err(NotPayable),
            TradeState::Success => Ok(()),
            TradeState::WaitBuyerPay => {
                self.trade_no(now);
                self.notify_id = Some(new_notify_id());
                self.state = TradeState::Success;
                self.paid_at = Some(now);
                Ok(())
            }
        }
    }

    pub(super) fn close(&mut self) -> Result<(), NotClosable> {
        if self.state != TradeState::WaitBuyerPay {
            return Err(NotClosable);
        }
        self.state = TradeState::Closed;
        Ok(())
    }

    fn refunded_minor(&self) -> i64 {
        self.refunds.iter().map(|(_, amount)| amount).sum()
    }

    /// Refunds `amount_minor` (> 0) of a paid order. A repeated `out_request_no` refunds
    /// nothing again; refunding the whole amount closes the trade, as at Alipay.
    pub(super) fn refund(
        &mut self,
        out_request_no: &str,
        amount_minor: i64,
    ) -> Result<Refunded, RefundRefusal> {
        if self.refunds.iter().any(|(no, _)| no == out_request_no) {
            return Ok(Refunded {
                total_minor: self.refunded_minor(),
                fund_change: false,
            });
        }
        if self.state != TradeState::Success {
            return Err(RefundRefusal::NotPaid);
        }
        if self.refunded_minor() + amount_minor > self.amount_minor {
            return Err(RefundRefusal::Exceeds);
        }
        self.refunds.push((out_request_no.to_owned(), amount_minor));
        if self.refunded_minor() == self.amount_minor {
            self.state = TradeState::Closed;
        }
        Ok(Refunded {
            total_minor: self.refunded_minor(),
            fund_change: true,
        })
    }

    /// The order as the control API shows it.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "outTradeNo": self.out_trade_no,
            "tradeNo": self.trade_no,
            "status": self.state.as_str(),
            "totalAmount": format_yuan(self.amount_minor),
            "subject": self.subject,
            "appId": self.app_id,
            "notifyUrl": self.notify_url,
            "returnUrl": self.return_url,
            "timeExpire": self.time_expire.map(format_beijing),
            "gmtCreate": format_beijing(self.created_at),
            "gmtPayment": self.paid_at.map(format_beijing),
            "notifyId": self.notify_id,
            "refundedAmount": format_yuan(self.refunded_minor()),
        })
    }
}

/// Alipay's shape: the Beijing date and 20 digits.
fn new_trade_no(now: DateTime<Utc>) -> String {
    let digits: u128 = rand::thread_rng().gen_range(0..10_u128.pow(20));
    format!(
        "{}{digits:020}",
        now.with_timezone(&BEIJING).format("%Y%m%d")
    )
}

pub(super) fn new_notify_id() -> String {
    format!("{:032x}", rand::random::<u128>())
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
            app_id: "app".to_owned(),
            amount_minor: 1999,
            subject: "Pro".to_owned(),
            notify_url: String::new(),
            return_url: String::new(),
            time_expire: Some(now + TimeDelta::minutes(15)),
            created_at: now,
            state: TradeState::WaitBuyerPay,
            trade_no: None,
            notify_id: None,
            paid_at: None,
            refunds: Vec::new(),
        }
    }

    #[test]
    fn paying_assigns_the_trade_number_and_notify_id_once() {
        let now = Utc::now();
        let mut order = order(now);
        order.pay(now).unwrap();
        let (trade_no, notify_id) = (order.trade_no.clone(), order.notify_id.clone());
        assert_eq!(order.state, TradeState::Success);
        assert_eq!(trade_no.as_ref().map(String::len), Some(28));

        order.pay(now + TimeDelta::minutes(1)).unwrap();

        assert_eq!((order.trade_no, order.notify_id), (trade_no, notify_id));
        assert_eq!(order.paid_at, Some(now));
    }

    #[test]
    fn only_a_waiting_order_closes_and_a_closed_one_cannot_be_paid() {
        let now = Utc::now();
        let mut paid = order(now);
        paid.pay(now).unwrap();
        assert_eq!(paid.close(), Err(NotClosable));

        let mut waiting = order(now);
        waiting.close().unwrap();
        assert_eq!(waiting.close(), Err(NotClosable));
        assert_eq!(waiting.pay(now), Err(NotPayable));
    }

    #[test]
    fn refunds_add_up_to_the_amount_once_each_and_a_full_refund_closes_the_trade() {
        let now = Utc::now();
        let mut order = order(now);
        assert_eq!(order.refund("r1", 999), Err(RefundRefusal::NotPaid));
        order.pay(now).unwrap();

        let first = order.refund("r1", 999).unwrap();
        assert_eq!((first.total_minor, first.fund_change), (999, true));
        assert!(!order.refund("r1", 999).unwrap().fund_change);
        assert_eq!(order.refund("r2", 1001), Err(RefundRefusal::Exceeds));
        let rest = order.refund("r2", 1000).unwrap();

        assert_eq!((rest.total_minor, rest.fund_change), (1999, true));
        assert_eq!(order.state, TradeState::Closed);
        assert!(!order.refund("r2", 1000).unwrap().fund_change);
    }

    #[test]
    fn an_order_past_its_expiry_is_closed_when_next_seen() {
        let now = Utc::now();
        let book = OrderBook::default();
        book.open(order(now), now).unwrap();

        let just_before = now + TimeDelta::minutes(15) - TimeDelta::seconds(1);
        assert_eq!(
            book.with_order("o1", just_before, |order| order.state),
            Some(TradeState::WaitBuyerPay)
        );
        let at_expiry = now + TimeDelta::minutes(15);
        assert_eq!(
            book.with_order("o1", at_expiry, |order| order.pay(at_expiry)),
            Some(Err(NotPayable))
        );
    }

    #[test]
    fn reopening_an_order_finds_it_unless_amount_or_subject_differ() {
        let now = Utc::now();
        let book = OrderBook::default();
        book.open(order(now), now).unwrap();
        book.with_order("o1", now, |order| order.pay(now))
            .unwrap()
            .unwrap();
        let trade_no = book
            .with_order("o1", now, |order| order.trade_no.clone())
            .unwrap()
            .unwrap();

        assert_eq!(
            book.open(order(now), now).unwrap().state,
            TradeState::Success
        );
        assert!(
            book.with_order_where(
                |order| order.trade_no.as_deref() == Some(trade_no.as_str()),
                now,
                |_| ()
            )
            .is_some()
        );
        let mut dearer = order(now);
        dearer.amount_minor += 1;
        assert_eq!(book.open(dearer, now).unwrap_err(), Inconsistent);
    }
}
