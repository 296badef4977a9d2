//! `users`: accounts.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use kit::page::Cursor;
use uuid::Uuid;

use super::schema::auth::users;
use crate::domain::UserStatus;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub roles: Vec<Option<String>>,
    pub status: String,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// A new address waiting for its verification; `email` changes only then.
    pub pending_email: Option<String>,
}

impl UserRow {
    /// The CHECK constraint admits only known statuses; anything else would refuse everything.
    pub fn status(&self) -> UserStatus {
        self.status.parse().unwrap_or(UserStatus::Deleted)
    }

    pub fn roles(&self) -> Vec<String> {
        self.roles.iter().flatten().cloned().collect()
    }
}

/// Which unique constraint a new or changed account collides with.
pub fn conflicting_field(err: &diesel::result::Error) -> Option<&'static str> {
    match kit::error::violated_unique_constraint(err)? {
        "users_email_key" => Some("email"),
        "users_username_key" => Some("username"),
        _ => None,
    }
}

/// Which of `email` and `username` a non-deleted account holds already (email first), the way
/// [`conflicting_field`] would report it on insert.
pub async fn taken_field(
    conn: &mut AsyncPgConnection,
    email: &str,
    username: &str,
) -> QueryResult<Option<&'static str>> {
    let holders: Vec<(String, String)> = users::table
        .filter(users::email.eq(email).or(users::username.eq(username)))
        .filter(users::status.ne(UserStatus::Deleted.as_str()))
        .select((users::email, users::username))
        .load(conn)
        .await?;
    Ok(if holders.iter().any(|(held, _)| held == email) {
        Some("email")
    } else if holders.is_empty() {
        None
    } else {
        Some("username")
    })
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &UserRow) -> QueryResult<()> {
    diesel::insert_into(users::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The account, locked for the rest of the transaction.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The non-deleted account with this (normalised) username or email.
pub async fn find_by_login(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::username.eq(name).or(users::email.eq(name)))
        .filter(users::status.ne(UserStatus::Deleted.as_str()))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The active account with this (normalised) email, where a reset link may go: an account's
/// `email` is verified or still the one it registered with (whoever registered it first cannot
/// read that inbox, so the link lets its owner reclaim the account). A changed address waits in
/// `pending_email` until verified and gets nothing: it proves nothing about the account's owner.
pub async fn find_resettable_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email))
        .filter(users::status.eq(UserStatus::Active.as_str()))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn set_last_login(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(users::table.find(id))
        .set(users::last_login_at.eq(now))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn set_password(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    hash: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(users::table.find(id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(now)))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn set_email_verified(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((users::email_verified_at.eq(now), users::updated_at.eq(now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Makes the verified pending address `email` the account's email.
pub async fn adopt_pending_email(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    email: &str,
    now: DateTime<Utc>,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::email.eq(email),
            users::pending_email.eq(None::<String>),
            users::email_verified_at.eq(now),
            users::updated_at.eq(now),
        ))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Profile changes of UpdateMe; `None` leaves a column unchanged.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = users)]
pub struct ProfileChange {
    pub display_name: Option<String>,
    /// `Some(None)` cancels a pending email change.
    pub pending_email: Option<Option<String>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn update_profile(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    change: &ProfileChange,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set(change)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Admin changes of UpdateUser; `None` leaves a column unchanged.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = users)]
pub struct AdminChange {
    pub status: Option<String>,
    pub roles: Option<Vec<Option<String>>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn update_admin(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    change: &AdminChange,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set(change)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Soft delete: the email and username are released, the record stays.
pub async fn mark_deleted(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::status.eq(UserStatus::Deleted.as_str()),
            users::email.eq(""),
            users::username.eq(""),
            users::deleted_at.eq(now),
            users::updated_at.eq(now),
        ))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Filters of ListUsers.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub email: Option<String>,
    pub username: Option<String>,
    /// `None`: every status except deleted.
    pub status: Option<UserStatus>,
}

/// `pattern` for a case-insensitive substring match, with LIKE wildcards escaped.
fn contains(pattern: &str) -> String {
    let escaped = pattern
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Users newest first, after `after`, at most `limit`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &UserFilter,
    after: Option<Cursor>,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    let mut query = users::table.select(UserRow::as_select()).into_boxed();
    if let Some(email) = &filter.email {
        query = query.filter(users::email.ilike(contains(email)));
    }
    if let Some(username) = &filter.username {
        query = query.filter(users::username.ilike(contains(username)));
    }
    query = match filter.status {
        Some(status) => query.filter(users::status.eq(status.as_str())),
        None => query.filter(users::status.ne(UserStatus::Deleted.as_str())),
    };
    if let Some(cursor) = after {
        query = query.filter(
            users::created_at
                .lt(cursor.at)
                .or(users::created_at.eq(cursor.at).and(users::id.lt(cursor.id))),
        );
    }
    query
        .order((users::created_at.desc(), users::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}
