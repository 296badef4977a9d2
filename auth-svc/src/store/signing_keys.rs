//! Queries on `signing_keys`. Each takes the caller's connection, so the caller decides the
//! transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::auth::signing_keys;
use crate::domain::signing_key_ring::PublicKey;

/// A row of `signing_keys`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys, check_for_backend(diesel::pg::Pg))]
pub struct SigningKeyRow {
    pub kid: String,
    pub public_key: Vec<u8>,
    pub private_key_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

impl SigningKeyRow {
    /// The public half; `None` if the stored bytes are not a 32-byte key (the table's CHECK
    /// prevents that).
    pub fn public(&self) -> Option<PublicKey> {
        Some(PublicKey {
            kid: self.kid.clone(),
            public_key: self.public_key.as_slice().try_into().ok()?,
            created_at: self.created_at,
            rotated_at: self.rotated_at,
        })
    }
}

/// The current key, if any.
pub async fn current(conn: &mut AsyncPgConnection) -> QueryResult<Option<SigningKeyRow>> {
    signing_keys::table
        .filter(signing_keys::rotated_at.is_null())
        .select(SigningKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Every key, current or rotated.
pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<SigningKeyRow>> {
    signing_keys::table
        .select(SigningKeyRow::as_select())
        .load(conn)
        .await
}

/// Inserts `row` as the current key unless one exists (a concurrent start won); returns whether
/// it was inserted.
pub async fn insert_if_none_current(
    conn: &mut AsyncPgConnection,
    row: &SigningKeyRow,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(signing_keys::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Marks the current key rotated at `now`; returns how many keys that concerned (0 or 1).
pub async fn retire_current(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(signing_keys::table.filter(signing_keys::rotated_at.is_null()))
        .set(signing_keys::rotated_at.eq(now))
        .execute(conn)
        .await
}

/// Inserts `row` (the caller has retired the previous current key in the same transaction).
pub async fn insert(conn: &mut AsyncPgConnection, row: &SigningKeyRow) -> QueryResult<()> {
    diesel::insert_into(signing_keys::table)
        .values(row)
        .execute(conn)
        .await?;
    Ok(())
}
