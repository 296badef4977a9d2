//! Payments. Each transition applies only from the state it was decided from.

use chrono::{DateTime, Utc};
use diesel::{OptionalExtension, QueryResult, prelude::*};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, schema::billing::payments};
use crate::domain::{
    Provider,
    plan::{Interval, Period},
    subscription::{PaymentStatus, Purpose},
};

/// A stored payment.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = payments, check_for_backend(diesel::pg::Pg))]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub user_id: Uuid,
    pub subscription_id: Uuid,
    pub plan_code: String,
    pub purpose: String,
    pub provider: String,
    pub provider_trade_no: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub refunded_amount_minor: i64,
    pub billing_interval: String,
    pub interval_count: i32,
    pub status: String,
    pub checkout_kind: Option<String>,
    pub checkout_url: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the provider was last asked about it while PENDING.
    #[serde(default)]
    pub checked_at: Option<DateTime<Utc>>,
}

impl PaymentRow {
    pub fn status(&self) -> PaymentStatus {
        PaymentStatus::parse(&self.status).unwrap_or(PaymentStatus::Failed)
    }

    pub fn purpose(&self) -> Purpose {
        Purpose::parse(&self.purpose).unwrap_or(Purpose::Renewal)
    }

    pub fn provider(&self) -> Option<Provider> {
        self.provider.parse().ok()
    }

    /// The period this payment buys.
    pub fn period(&self) -> Period {
        Period {
            interval: Interval::parse(&self.billing_interval).unwrap_or(Interval::Month),
            count: self.interval_count,
        }
    }

    /// The merchant order number sent to the provider: the id without hyphens.
    pub fn out_trade_no(&self) -> String {
        self.payment_id.simple().to_string()
    }
}

pub async fn insert(conn: &mut Conn, row: &PaymentRow) -> QueryResult<()> {
    diesel::insert_into(payments::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn get(conn: &mut Conn, id: Uuid) -> QueryResult<Option<PaymentRow>> {
    payments::table
        .find(id)
        .select(PaymentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The subscription's PENDING payment, if any.
pub async fn pending_of(conn: &mut Conn, subscription: Uuid) -> QueryResult<Option<PaymentRow>> {
    payments::table
        .filter(payments::subscription_id.eq(subscription))
        .filter(payments::status.eq(PaymentStatus::Pending.as_str()))
        .select(PaymentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// PENDING → CANCELED; `None` if it was no longer pending.
pub async fn cancel_pending(
    conn: &mut Conn,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    leave_pending(conn, id, PaymentStatus::Canceled, now).await
}

/// PENDING → `to` without being paid; `None` if it was no longer pending.
async fn leave_pending(
    conn: &mut Conn,
    id: Uuid,
    to: PaymentStatus,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .find(id)
            .filter(payments::status.eq(PaymentStatus::Pending.as_str())),
    )
    .set((
        payments::status.eq(to.as_str()),
        payments::updated_at.eq(now),
    ))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Records the checkout the provider created, once.
pub async fn set_checkout(
    conn: &mut Conn,
    id: Uuid,
    kind: &str,
    url: &str,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .find(id)
            .filter(payments::checkout_url.is_null()),
    )
    .set((
        payments::checkout_kind.eq(kind),
        payments::checkout_url.eq(url),
        payments::updated_at.eq(now),
    ))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// PENDING → SUCCEEDED; `None` if it was not pending (a duplicate or late notification).
pub async fn succeed(
    conn: &mut Conn,
    id: Uuid,
    trade_no: Option<&str>,
    paid_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .find(id)
            .filter(payments::status.eq(PaymentStatus::Pending.as_str())),
    )
    .set((
        payments::status.eq(PaymentStatus::Succeeded.as_str()),
        payments::provider_trade_no.eq(trade_no),
        payments::paid_at.eq(paid_at),
        payments::updated_at.eq(now),
    ))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// PENDING → FAILED (the provider reported a failed payment).
pub async fn fail(
    conn: &mut Conn,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    leave_pending(conn, id, PaymentStatus::Failed, now).await
}

/// Sets a paid payment's refunded amount from `from` to `to`, with the `status` that follows
/// (see [`crate::domain::refund::status_after`]); `None` if it is not paid or its refunded
/// amount is no longer `from` (a concurrent refund came first).
pub async fn set_refunded(
    conn: &mut Conn,
    id: Uuid,
    from: i64,
    to: i64,
    status: PaymentStatus,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .find(id)
            .filter(payments::status.eq_any([
                PaymentStatus::Succeeded.as_str(),
                PaymentStatus::PartiallyRefunded.as_str(),
                PaymentStatus::Refunded.as_str(),
            ]))
            .filter(payments::refunded_amount_minor.eq(from)),
    )
    .set((
        payments::refunded_amount_minor.eq(to),
        payments::status.eq(status.as_str()),
        payments::updated_at.eq(now),
    ))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// The payment, locked until the transaction ends.
pub async fn get_for_update(conn: &mut Conn, id: Uuid) -> QueryResult<Option<PaymentRow>> {
    payments::table
        .find(id)
        .select(PaymentRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Claims up to `limit` PENDING payments created before `created_before` and not asked about
/// since `checked_before` (`FOR UPDATE SKIP LOCKED`: replicas take different ones), marking them
/// asked at `now`.
pub async fn claim_unconfirmed(
    conn: &mut Conn,
    created_before: DateTime<Utc>,
    checked_before: DateTime<Utc>,
    limit: i64,
    now: DateTime<Utc>,
) -> QueryResult<Vec<PaymentRow>> {
    let ids: Vec<Uuid> = payments::table
        .filter(payments::status.eq(PaymentStatus::Pending.as_str()))
        .filter(payments::checkout_url.is_not_null())
        .filter(payments::created_at.lt(created_before))
        .filter(
            payments::checked_at
                .is_null()
                .or(payments::checked_at.lt(checked_before)),
        )
        .order(payments::created_at.asc())
        .limit(limit)
        .select(payments::payment_id)
        .for_update()
        .skip_locked()
        .get_results(conn)
        .await?;
    diesel::update(payments::table.filter(payments::payment_id.eq_any(&ids)))
        .set(payments::checked_at.eq(now))
        .returning(PaymentRow::as_returning())
        .get_results(conn)
        .await
}

/// Marks one PENDING payment asked about at `now` unless it was asked since `checked_before`;
/// `None` if it is not pending or was asked too recently (the rate limit of GetPayment's check).
pub async fn claim_check(
    conn: &mut Conn,
    id: Uuid,
    checked_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .find(id)
            .filter(payments::status.eq(PaymentStatus::Pending.as_str()))
            .filter(
                payments::checked_at
                    .is_null()
                    .or(payments::checked_at.lt(checked_before)),
            ),
    )
    .set(payments::checked_at.eq(now))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// A page of a user's payments, newest first, after the `(created_at, payment_id)` of the last
/// page.
pub async fn list(
    conn: &mut Conn,
    user: Uuid,
    status: Option<PaymentStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<PaymentRow>> {
    let mut query = payments::table
        .filter(payments::user_id.eq(user))
        .select(PaymentRow::as_select())
        .order((payments::created_at.desc(), payments::payment_id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(payments::status.eq(status.as_str()));
    }
    if let Some((at, id)) = after {
        query = query.filter(
            payments::created_at
                .lt(at)
                .or(payments::created_at.eq(at).and(payments::payment_id.lt(id))),
        );
    }
    query.load(conn).await
}

/// One PENDING payment whose checkout expired by `now` (other than `passed`), locked and
/// skipped by other workers.
pub async fn claim_expired(
    conn: &mut Conn,
    now: DateTime<Utc>,
    passed: &[Uuid],
) -> QueryResult<Option<PaymentRow>> {
    payments::table
        .filter(payments::status.eq(PaymentStatus::Pending.as_str()))
        .filter(payments::expires_at.le(now))
        .filter(payments::payment_id.ne_all(passed))
        .order(payments::expires_at)
        .select(PaymentRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}
