//! Refunds (admin RefundPayment) and their reconciliation.
//!
//! A refund is recorded, and its amount reserved on the payment, in one transaction before the
//! provider is asked; the payment row is locked meanwhile, so concurrent refunds of one payment
//! see each other and never add up to more than was paid. The provider is called outside any
//! transaction with the refund's name derived from the idempotency key: a retry, or the
//! reconciliation worker, asks again under the same name and the provider refunds once. A
//! refund the provider refuses or gives up on releases its reservation.

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::{Billing, TradeApplied, TradeRefused};
use crate::{
    domain::{
        refund::{self, RefundRefused, RefundState},
        subscription::PaymentStatus,
        validate,
    },
    error::Error,
    providers::{ProviderError, RefundOrder, RefundStatus, RefundUpdate},
    store::{
        Conn,
        events::Verdict,
        payments::{self, PaymentRow},
        refunds::{self, RefundRow},
    },
};

/// The longest reason the contract allows.
const MAX_REASON_CHARS: usize = 256;

/// How long a refund waits for the provider's answer before the reconciliation worker asks
/// again (a crash between recording and asking, a lost answer, a notification that never came).
pub const RECONCILE_REFUNDS_AFTER: TimeDelta = TimeDelta::minutes(2);

/// What RefundPayment asks for.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub payment_id: Uuid,
    /// `None` (or 0): the whole refundable remainder.
    pub amount_minor: Option<i64>,
    pub reason: String,
    pub idempotency_key: String,
    /// The admin asking.
    pub requested_by: Uuid,
}

impl Billing {
    /// RefundPayment: records the refund (or finds the one of this idempotency key), asks the
    /// provider while it is open, and answers the payment as it then is.
    pub async fn refund_payment(&self, request: &RefundRequest) -> Result<PaymentRow, Error> {
        validate::idempotency_key(&request.idempotency_key)?;
        validate::text("reason", &request.reason, 0, MAX_REASON_CHARS)?;
        let refund = self.record_refund(request).await?;
        if refund.state().is_open() {
            self.ask_provider_to_refund(&refund).await?;
        }
        let mut conn = self.conn().await?;
        payments::get(&mut conn, request.payment_id)
            .await?
            .ok_or_else(|| Error::NotFound("payment not found".to_owned()))
    }

    /// The refund of the request's idempotency key: the earlier one for a retry (the same
    /// parameters, else [`Error::KeyReused`]), or a new one whose amount is reserved on the
    /// locked payment.
    async fn record_refund(&self, request: &RefundRequest) -> Result<RefundRow, Error> {
        let fingerprint = refund::request_fingerprint(request.amount_minor, &request.reason);
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let payment = payments::get_for_update(conn, request.payment_id)
                .await?
                .ok_or_else(|| Error::NotFound("payment not found".to_owned()))?;
            if let Some(earlier) =
                refunds::by_key(conn, payment.payment_id, &request.idempotency_key).await?
            {
                return if earlier.request_fingerprint == fingerprint {
                    Ok(earlier)
                } else {
                    Err(Error::KeyReused)
                };
            }
            let status = payment.status();
            if !matches!(
                status,
                PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
            ) {
                return Err(Error::FailedPrecondition(format!(
                    "the payment is {}: only a SUCCEEDED or PARTIALLY_REFUNDED payment can be \
                     refunded",
                    status.as_str()
                )));
            }
            let provider = payment.provider().ok_or_else(|| {
                Error::FailedPrecondition("the payment has no provider to refund through".into())
            })?;
            self.provider(provider)?;
            let amount = refund::amount(
                request.amount_minor,
                payment.amount_minor,
                payment.refunded_amount_minor,
            )
            .map_err(|refused| match refused {
                RefundRefused::NothingLeft => Error::FailedPrecondition(refused.to_string()),
                RefundRefused::NotPositive | RefundRefused::AboveRemainder { .. } => {
                    Error::invalid("amount_minor", refused.to_string())
                }
            })?;
            add_refunded(conn, &payment, amount, now)
                .await?
                .ok_or_else(|| Error::FailedPrecondition("the payment changed meanwhile".into()))?;
            let row = RefundRow {
                refund_id: Uuid::now_v7(),
                payment_id: payment.payment_id,
                idempotency_key: request.idempotency_key.clone(),
                request_fingerprint: fingerprint,
                out_refund_no: refund::out_refund_no(payment.payment_id, &request.idempotency_key),
                amount_minor: amount,
                currency: payment.currency.clone(),
                reason: request.reason.clone(),
                status: RefundState::Pending.as_str().to_owned(),
                provider_refund_id: None,
                requested_by: request.requested_by,
                created_at: now,
                updated_at: now,
            };
            refunds::insert(conn, &row).await?;
            tracing::info!(
                payment = %payment.payment_id,
                refund = %row.refund_id,
                amount,
                "refund recorded"
            );
            Ok(row)
        })
        .await
    }

    /// Asks the payment's provider for `refund` and applies its answer. An unreachable provider
    /// leaves the refund open (the caller may retry; the worker will); a refusal releases it.
    async fn ask_provider_to_refund(&self, refund: &RefundRow) -> Result<(), Error> {
        let payment = {
            let mut conn = self.conn().await?;
            payments::get(&mut conn, refund.payment_id)
                .await?
                .ok_or_else(|| Error::NotFound("payment not found".to_owned()))?
        };
        let provider_kind = payment.provider().ok_or_else(|| {
            Error::FailedPrecondition("the payment has no provider to refund through".into())
        })?;
        let provider = self.provider(provider_kind)?;
        let order = RefundOrder {
            out_trade_no: payment.out_trade_no(),
            out_refund_no: refund.out_refund_no.clone(),
            amount_minor: refund.amount_minor,
            total_minor: payment.amount_minor,
            currency: refund.currency.clone(),
            reason: refund.reason.clone(),
            notify_url: format!("{}/v1/webhooks/{provider_kind}", self.settings.public_url),
        };
        let answer = provider.refund(&order).await;
        let (to, provider_refund_id) = match &answer {
            Ok(update) => (state_of(update.status), update.refund_id.clone()),
            Err(ProviderError::Refused { .. }) => (RefundState::Failed, None),
            Err(ProviderError::Unavailable { .. }) => {
                // Touched, so the worker gives the provider its time before asking again.
                self.touch_refund(refund, self.now()).await?;
                return answer.map(drop).map_err(Error::from);
            }
        };
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            settle(conn, &refund.out_refund_no, to, provider_refund_id, now).await
        })
        .await?;
        match answer {
            Err(ProviderError::Refused { code, message, .. }) => Err(Error::FailedPrecondition(
                format!("{provider_kind} refused the refund: {code}: {message}"),
            )),
            _ => Ok(()),
        }
    }

    async fn touch_refund(&self, refund: &RefundRow, now: DateTime<Utc>) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        refunds::touch(&mut conn, refund.refund_id, now).await?;
        Ok(())
    }

    /// A refund's outcome as the provider notified it, inside the notification's transaction.
    pub(super) async fn apply_refund_update(
        &self,
        conn: &mut Conn,
        provider: crate::domain::Provider,
        update: &RefundUpdate,
        now: DateTime<Utc>,
    ) -> Result<TradeApplied, TradeRefused> {
        let refund = refunds::by_out_refund_no_for_update(conn, &update.out_refund_no)
            .await?
            .ok_or(TradeRefused::UnknownOrder)?;
        let payment = payments::get(conn, refund.payment_id)
            .await?
            .filter(|payment| {
                payment.provider() == Some(provider)
                    && payment.out_trade_no() == update.out_trade_no
            })
            .ok_or(TradeRefused::UnknownOrder)?;
        if update.amount_minor != refund.amount_minor {
            return Err(TradeRefused::Mismatch {
                payment_id: payment.payment_id,
                expected: format!("a refund of {} {}", refund.amount_minor, refund.currency),
                got: format!("a refund of {}", update.amount_minor),
            });
        }
        let to = state_of(update.status);
        let settled = settle(
            conn,
            &refund.out_refund_no,
            to,
            update.refund_id.clone(),
            now,
        )
        .await?;
        Ok(TradeApplied {
            payment_id: payment.payment_id,
            verdict: if settled.is_some() {
                Verdict::Applied
            } else {
                Verdict::Duplicate
            },
            detail: format!("refund {} {}", refund.refund_id, to.as_str()),
        })
    }

    /// Asks the providers again about refunds still open after [`RECONCILE_REFUNDS_AFTER`]
    /// (one batch); returns how many were asked. Replicas claim different refunds.
    pub async fn reconcile_refunds(&self) -> Result<usize, Error> {
        const BATCH: i64 = 50;
        let now = self.now();
        let claimed = {
            let mut conn = self.conn().await?;
            conn.transaction(async |conn| {
                let rows =
                    refunds::claim_unsettled(conn, now - RECONCILE_REFUNDS_AFTER, BATCH).await?;
                for row in &rows {
                    // Leased: nobody asks about it again before the interval passes.
                    refunds::touch(conn, row.refund_id, now).await?;
                }
                Ok::<_, Error>(rows)
            })
            .await?
        };
        for refund in &claimed {
            if let Err(err) = self.ask_provider_to_refund(refund).await {
                tracing::warn!(refund = %refund.refund_id, %err, "refund still open");
            }
        }
        Ok(claimed.len())
    }
}

/// Our state of a refund the provider reports as `status`.
fn state_of(status: RefundStatus) -> RefundState {
    match status {
        RefundStatus::Succeeded => RefundState::Succeeded,
        RefundStatus::Processing => RefundState::Processing,
        RefundStatus::Failed => RefundState::Failed,
    }
}

/// Moves the open refund `out_refund_no` to `to`; a failed refund releases its reservation on
/// the payment. `None` when nothing changed (already final, or still processing).
async fn settle(
    conn: &mut Conn,
    out_refund_no: &str,
    to: RefundState,
    provider_refund_id: Option<String>,
    now: DateTime<Utc>,
) -> Result<Option<RefundRow>, diesel::result::Error> {
    let Some(refund) = refunds::by_out_refund_no_for_update(conn, out_refund_no).await? else {
        return Ok(None);
    };
    if !refund.state().is_open() || refund.state() == to {
        return Ok(None);
    }
    let provider_refund_id = provider_refund_id.or_else(|| refund.provider_refund_id.clone());
    let Some(settled) = refunds::settle(
        conn,
        refund.refund_id,
        to,
        provider_refund_id.as_deref(),
        now,
    )
    .await?
    else {
        return Ok(None);
    };
    if to == RefundState::Failed {
        let payment = payments::get_for_update(conn, refund.payment_id)
            .await?
            .ok_or(diesel::result::Error::NotFound)?;
        add_refunded(conn, &payment, -refund.amount_minor, now)
            .await?
            .ok_or(diesel::result::Error::NotFound)?;
        tracing::warn!(refund = %refund.refund_id, "refund failed at the provider; released");
    }
    Ok(Some(settled))
}

/// Adds `delta` (negative: a release) to the locked `payment`'s refunded amount, its status
/// following; `None` if the payment changed since it was read.
async fn add_refunded(
    conn: &mut Conn,
    payment: &PaymentRow,
    delta: i64,
    now: DateTime<Utc>,
) -> Result<Option<PaymentRow>, diesel::result::Error> {
    let refunded = payment.refunded_amount_minor + delta;
    payments::set_refunded(
        conn,
        payment.payment_id,
        payment.refunded_amount_minor,
        refunded,
        refund::status_after(payment.amount_minor, refunded),
        now,
    )
    .await
}
