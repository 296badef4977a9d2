//! Refunds of payments. A refund leaves `pending` or `processing` once, for `succeeded` or
//! `failed`.

use chrono::{DateTime, Utc};
use diesel::{OptionalExtension, QueryResult, prelude::*};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, schema::billing::refunds};
use crate::domain::refund::RefundState;

/// A stored refund.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = refunds, check_for_backend(diesel::pg::Pg))]
pub struct RefundRow {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub idempotency_key: String,
    pub request_fingerprint: Vec<u8>,
    pub out_refund_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: String,
    pub provider_refund_id: Option<String>,
    pub requested_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RefundRow {
    pub fn state(&self) -> RefundState {
        // The CHECK constraint admits only known states.
        RefundState::parse(&self.status).unwrap_or(RefundState::Failed)
    }
}

pub async fn insert(conn: &mut Conn, row: &RefundRow) -> QueryResult<()> {
    diesel::insert_into(refunds::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// The refund of `payment` made with idempotency key `key`.
pub async fn by_key(conn: &mut Conn, payment: Uuid, key: &str) -> QueryResult<Option<RefundRow>> {
    refunds::table
        .filter(refunds::payment_id.eq(payment))
        .filter(refunds::idempotency_key.eq(key))
        .select(RefundRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The refund the provider knows as `out_refund_no`, locked against a concurrent update.
pub async fn by_out_refund_no_for_update(
    conn: &mut Conn,
    out_refund_no: &str,
) -> QueryResult<Option<RefundRow>> {
    refunds::table
        .filter(refunds::out_refund_no.eq(out_refund_no))
        .select(RefundRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Moves an open refund (pending or processing) to `to` with the provider's id of it (`None`
/// clears nothing the caller did not read: pass the row's own when the provider names none);
/// `None` if it was final already.
pub async fn settle(
    conn: &mut Conn,
    id: Uuid,
    to: RefundState,
    provider_refund_id: Option<&str>,
    now: DateTime<Utc>,
) -> QueryResult<Option<RefundRow>> {
    diesel::update(refunds::table.find(id).filter(refunds::status.eq_any([
        RefundState::Pending.as_str(),
        RefundState::Processing.as_str(),
    ])))
    .set((
        refunds::status.eq(to.as_str()),
        refunds::provider_refund_id.eq(provider_refund_id),
        refunds::updated_at.eq(now),
    ))
    .returning(RefundRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Open refunds last touched before `before`, oldest first, claimed (`FOR UPDATE SKIP LOCKED`)
/// so replicas reconciling at once take different ones.
pub async fn claim_unsettled(
    conn: &mut Conn,
    before: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<RefundRow>> {
    refunds::table
        .filter(refunds::status.eq_any([
            RefundState::Pending.as_str(),
            RefundState::Processing.as_str(),
        ]))
        .filter(refunds::updated_at.lt(before))
        .order(refunds::updated_at.asc())
        .limit(limit)
        .select(RefundRow::as_select())
        .for_update()
        .skip_locked()
        .get_results(conn)
        .await
}

/// Marks a refund as just looked at: the reconciliation worker leaves it alone for a while.
pub async fn touch(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> QueryResult<()> {
    diesel::update(refunds::table.find(id))
        .set(refunds::updated_at.eq(now))
        .execute(conn)
        .await
        .map(drop)
}
