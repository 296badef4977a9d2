//! Reconciliation of payments whose notification never came: the provider is asked, and its
//! answer applied through the same code as a notification ([`Billing::apply_trade`]), so a
//! notification arriving later is a duplicate. The lifecycle worker asks about every PENDING
//! payment older than [`RECONCILE_PAYMENTS_AFTER`]; GetPayment asks about its payment once it
//! is older than [`CONFIRM_ON_READ_AFTER`], so a polling client sees the success anyway.

use chrono::TimeDelta;
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::{Billing, TradeRefused};
use crate::{
    domain::{Provider, subscription::PaymentStatus},
    error::Error,
    providers::{Trade, TradeStatus},
    store::{
        events::{self, EventRow, Verdict},
        payments::{self, PaymentRow},
    },
};

/// How long a PENDING payment waits for its notification before the worker asks the provider.
pub const RECONCILE_PAYMENTS_AFTER: TimeDelta = TimeDelta::minutes(2);
/// How often the worker asks again about one payment that is still pending.
const RECONCILE_EVERY: TimeDelta = TimeDelta::minutes(1);
/// GetPayment asks the provider about a PENDING payment older than this…
pub const CONFIRM_ON_READ_AFTER: TimeDelta = TimeDelta::minutes(1);
/// …at most once per this interval per payment, however often clients poll.
const CONFIRM_ON_READ_EVERY: TimeDelta = TimeDelta::seconds(10);

impl Billing {
    /// Asks the providers about PENDING payments whose notification is overdue (one batch);
    /// returns how many were asked. Replicas claim different payments.
    pub async fn reconcile_payments(&self) -> Result<usize, Error> {
        const BATCH: i64 = 50;
        let now = self.now();
        let claimed = {
            let mut conn = self.conn().await?;
            conn.transaction(async |conn| {
                payments::claim_unconfirmed(
                    conn,
                    now - RECONCILE_PAYMENTS_AFTER,
                    now - RECONCILE_EVERY,
                    BATCH,
                    now,
                )
                .await
            })
            .await?
        };
        for payment in &claimed {
            if let Err(err) = self.ask_provider_about(payment).await {
                tracing::warn!(payment = %payment.payment_id, %err, "payment still unconfirmed");
            }
        }
        Ok(claimed.len())
    }

    /// `payment` as it is after asking its provider, when it is PENDING and overdue; a provider
    /// that cannot answer leaves it as it was (the client polls again).
    pub(super) async fn confirm_if_overdue(
        &self,
        payment: PaymentRow,
    ) -> Result<PaymentRow, Error> {
        let now = self.now();
        if payment.status() != PaymentStatus::Pending
            || payment.checkout_url.is_none()
            || now - payment.created_at < CONFIRM_ON_READ_AFTER
        {
            return Ok(payment);
        }
        let claimed = {
            let mut conn = self.conn().await?;
            payments::claim_check(
                &mut conn,
                payment.payment_id,
                now - CONFIRM_ON_READ_EVERY,
                now,
            )
            .await?
        };
        let Some(claimed) = claimed else {
            return Ok(payment);
        };
        if let Err(err) = self.ask_provider_about(&claimed).await {
            tracing::warn!(payment = %claimed.payment_id, %err, "payment still unconfirmed");
            return Ok(payment);
        }
        let mut conn = self.conn().await?;
        Ok(payments::get(&mut conn, payment.payment_id)
            .await?
            .unwrap_or(payment))
    }

    /// Queries the payment's provider and applies a paid, closed or failed trade.
    async fn ask_provider_about(&self, payment: &PaymentRow) -> Result<(), Error> {
        let provider_kind = payment.provider().ok_or_else(|| {
            Error::FailedPrecondition("the payment has no provider to ask".into())
        })?;
        let provider = self.provider(provider_kind)?;
        let Some(trade) = provider.query(&payment.out_trade_no()).await? else {
            return Ok(());
        };
        if trade.status == TradeStatus::Pending {
            return Ok(());
        }
        self.apply_reconciled(provider_kind, payment.payment_id, &trade)
            .await
    }

    /// Applies `trade` as a notification would be, recording it with its verdict.
    async fn apply_reconciled(
        &self,
        provider: Provider,
        payment_id: Uuid,
        trade: &Trade,
    ) -> Result<(), Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let applied = conn
            .transaction(async |conn| {
                let outcome = self.apply_trade(conn, provider, trade, now).await;
                let (verdict, detail) = match outcome {
                    Ok(applied) => (applied.verdict, applied.detail),
                    Err(TradeRefused::Db(err)) => return Err(Error::from(err)),
                    Err(refused) => (Verdict::Refused, refused.to_string()),
                };
                let record = EventRow {
                    event_id: Uuid::now_v7(),
                    provider: provider.as_str().to_owned(),
                    notification_id: None,
                    payment_id: Some(payment_id),
                    content_type: "application/json".to_owned(),
                    headers: serde_json::json!({ "source": "reconciliation" }),
                    body: serde_json::json!({
                        "out_trade_no": trade.out_trade_no,
                        "trade_no": trade.trade_no,
                        "status": format!("{:?}", trade.status),
                        "amount_minor": trade.amount_minor,
                        "currency": trade.currency,
                    })
                    .to_string()
                    .into_bytes(),
                    verdict: verdict.as_str().to_owned(),
                    detail,
                    received_at: now,
                };
                events::insert(conn, &record).await?;
                Ok(verdict == Verdict::Applied)
            })
            .await?;
        if applied {
            tracing::info!(payment = %payment_id, "payment reconciled with its provider");
            self.outbox_written.notify_one();
        }
        Ok(())
    }
}
