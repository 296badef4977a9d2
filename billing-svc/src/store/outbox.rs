//! The entitlement outbox: rows written in the transaction of the change that causes them,
//! delivered to quota-svc by the dispatcher.

use chrono::{DateTime, Utc};
use diesel::{
    OptionalExtension, QueryResult,
    dsl::{exists, not},
    prelude::*,
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{
    Conn,
    schema::billing::{entitlement_outbox, entitlement_versions},
};

/// The subject that stands for the default (free tier) limits.
pub const DEFAULTS: Uuid = Uuid::nil();

/// An entitlement change for quota-svc.
#[derive(Debug, Clone, PartialEq)]
pub struct Entitlement {
    /// The user, or [`DEFAULTS`].
    pub subject: Uuid,
    /// Empty together with empty limits: the plan limits are withdrawn.
    pub plan_code: String,
    pub quota_limits: serde_json::Value,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// An undelivered row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = entitlement_outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub subject: Uuid,
    pub version: i64,
    pub plan_code: String,
    pub quota_limits: serde_json::Value,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub attempts: i32,
}

/// Queues `entitlement` under the subject's next version. The version row is locked until the
/// transaction ends, so a subject's versions follow the order its changes commit in.
pub async fn enqueue(
    conn: &mut Conn,
    entitlement: &Entitlement,
    now: DateTime<Utc>,
) -> QueryResult<i64> {
    let version: i64 = diesel::insert_into(entitlement_versions::table)
        .values((
            entitlement_versions::subject.eq(entitlement.subject),
            entitlement_versions::version.eq(1),
        ))
        .on_conflict(entitlement_versions::subject)
        .do_update()
        .set(entitlement_versions::version.eq(entitlement_versions::version + 1))
        .returning(entitlement_versions::version)
        .get_result(conn)
        .await?;
    diesel::insert_into(entitlement_outbox::table)
        .values((
            entitlement_outbox::subject.eq(entitlement.subject),
            entitlement_outbox::version.eq(version),
            entitlement_outbox::plan_code.eq(&entitlement.plan_code),
            entitlement_outbox::quota_limits.eq(&entitlement.quota_limits),
            entitlement_outbox::period_start.eq(entitlement.period.map(|(start, _)| start)),
            entitlement_outbox::period_end.eq(entitlement.period.map(|(_, end)| end)),
            entitlement_outbox::created_at.eq(now),
            entitlement_outbox::next_attempt_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(version)
}

/// The limits of the newest queued default entitlement, if any.
pub async fn latest_defaults(conn: &mut Conn) -> QueryResult<Option<serde_json::Value>> {
    entitlement_outbox::table
        .filter(entitlement_outbox::subject.eq(DEFAULTS))
        .order(entitlement_outbox::version.desc())
        .select(entitlement_outbox::quota_limits)
        .first(conn)
        .await
        .optional()
}

/// Up to `limit` rows due by `now` that are the newest of their subject (older ones are
/// superseded: quota-svc keeps only the highest version), locked and skipped by other
/// dispatchers.
pub async fn claim_due(
    conn: &mut Conn,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<OutboxRow>> {
    let newer = diesel::alias!(entitlement_outbox as newer);
    entitlement_outbox::table
        .filter(entitlement_outbox::delivered_at.is_null())
        .filter(entitlement_outbox::next_attempt_at.le(now))
        .filter(not(exists(
            newer
                .filter(
                    newer
                        .field(entitlement_outbox::subject)
                        .eq(entitlement_outbox::subject),
                )
                .filter(
                    newer
                        .field(entitlement_outbox::version)
                        .gt(entitlement_outbox::version),
                ),
        )))
        .order(entitlement_outbox::outbox_id)
        .limit(limit)
        .select(OutboxRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Marks the row delivered, and every older undelivered row of its subject superseded.
pub async fn delivered(conn: &mut Conn, row: &OutboxRow, now: DateTime<Utc>) -> QueryResult<()> {
    diesel::update(
        entitlement_outbox::table
            .filter(entitlement_outbox::subject.eq(row.subject))
            .filter(entitlement_outbox::version.le(row.version))
            .filter(entitlement_outbox::delivered_at.is_null()),
    )
    .set(entitlement_outbox::delivered_at.eq(now))
    .execute(conn)
    .await
    .map(drop)
}

/// Records a failed attempt; the next one waits until `retry_at`.
pub async fn failed(
    conn: &mut Conn,
    row: &OutboxRow,
    error: &str,
    retry_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(entitlement_outbox::table.find(row.outbox_id))
        .set((
            entitlement_outbox::attempts.eq(entitlement_outbox::attempts + 1),
            entitlement_outbox::last_error.eq(error),
            entitlement_outbox::next_attempt_at.eq(retry_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}
