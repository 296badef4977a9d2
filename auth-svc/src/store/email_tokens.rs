//! `email_tokens`: single-use verification and reset tokens (hashes only).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::auth::email_tokens;

pub const VERIFY_EMAIL: &str = "verify_email";
pub const PASSWORD_RESET: &str = "password_reset";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_tokens, check_for_backend(diesel::pg::Pg))]
pub struct EmailTokenRow {
    pub token_hash: Vec<u8>,
    pub user_id: Uuid,
    pub purpose: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &EmailTokenRow) -> QueryResult<()> {
    diesel::insert_into(email_tokens::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// The token for `purpose` with this hash, locked for the transaction.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    purpose: &str,
    token_hash: &[u8],
) -> QueryResult<Option<EmailTokenRow>> {
    email_tokens::table
        .find(token_hash)
        .filter(email_tokens::purpose.eq(purpose))
        .select(EmailTokenRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn mark_used(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(email_tokens::table.find(token_hash))
        .set(email_tokens::used_at.eq(now))
        .execute(conn)
        .await
        .map(drop)
}

/// How many `purpose` tokens the user was sent since `since` (rate limit of reset mail).
pub async fn count_since(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    purpose: &str,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    email_tokens::table
        .filter(email_tokens::user_id.eq(user_id))
        .filter(email_tokens::purpose.eq(purpose))
        .filter(email_tokens::created_at.gt(since))
        .count()
        .get_result(conn)
        .await
}

/// Marks every unused `purpose` token of `user_id` used (older reset links die once the password
/// changed); how many.
pub async fn use_up(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    purpose: &str,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(
        email_tokens::table
            .filter(email_tokens::user_id.eq(user_id))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null()),
    )
    .set(email_tokens::used_at.eq(now))
    .execute(conn)
    .await
}
