//! Idempotency keys of the RPCs that create payments.

use chrono::{DateTime, Utc};
use diesel::{OptionalExtension, QueryResult, prelude::*};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, schema::billing::idempotency_keys};

/// A remembered request.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys, check_for_backend(diesel::pg::Pg))]
pub struct KeyRow {
    pub user_id: Uuid,
    pub operation: String,
    pub idempotency_key: String,
    pub request_fingerprint: Vec<u8>,
    pub payment_id: Uuid,
    pub response: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
}

/// The remembered request, locked so a concurrent retry of the same key waits for this one.
pub async fn get_for_update(
    conn: &mut Conn,
    user: Uuid,
    operation: &str,
    key: &str,
) -> QueryResult<Option<KeyRow>> {
    idempotency_keys::table
        .find((user, operation, key))
        .select(KeyRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn insert(conn: &mut Conn, row: &KeyRow) -> QueryResult<()> {
    diesel::insert_into(idempotency_keys::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// Stores the response to replay.
pub async fn set_response(
    conn: &mut Conn,
    user: Uuid,
    operation: &str,
    key: &str,
    response: &[u8],
) -> QueryResult<()> {
    diesel::update(idempotency_keys::table.find((user, operation, key)))
        .set(idempotency_keys::response.eq(response))
        .execute(conn)
        .await
        .map(drop)
}

/// Forgets keys created before `before` (kept at least 24 hours by the caller's choice).
pub async fn forget_before(conn: &mut Conn, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(idempotency_keys::table.filter(idempotency_keys::created_at.lt(before)))
        .execute(conn)
        .await
}
