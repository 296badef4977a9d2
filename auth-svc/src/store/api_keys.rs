//! Queries on `api_keys` (and the owner columns of `users` they need). Each takes the caller's
//! connection, so the caller decides the transaction.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use kit::page::Cursor;
use uuid::Uuid;

use crate::store::schema::auth::{api_keys, users};

/// The status of an account that may use its keys.
const ACTIVE: &str = "active";

/// A row of `api_keys`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub key_hash: Vec<u8>,
    pub scopes: Vec<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.iter().flatten().cloned().collect()
    }
}

/// An owner's roles and status.
#[derive(Debug, Clone)]
pub struct Owner {
    pub roles: Vec<String>,
    pub status: String,
}

impl Owner {
    pub fn is_active(&self) -> bool {
        self.status == ACTIVE
    }
}

/// Locks the owner's row for the rest of the transaction (so concurrent creations count keys one
/// after the other) and returns its roles and status.
pub async fn lock_owner(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<Owner>> {
    let row: Option<(Vec<Option<String>>, String)> = users::table
        .find(user_id)
        .select((users::roles, users::status))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(roles, status)| Owner {
        roles: roles.into_iter().flatten().collect(),
        status,
    }))
}

/// Creates service account `username` with `email` (active, role `service`, no password: it
/// cannot log in) unless a non-deleted account holds the name already.
pub async fn insert_service_account(
    conn: &mut AsyncPgConnection,
    username: &str,
    email: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(users::table)
        .values((
            users::id.eq(Uuid::now_v7()),
            users::email.eq(email),
            users::username.eq(username),
            users::display_name.eq(username),
            users::roles.eq(vec![Some(kit::caller::role::SERVICE.to_owned())]),
            users::status.eq(ACTIVE),
            users::created_at.eq(now),
            users::updated_at.eq(now),
        ))
        // The account exists already (unique username among non-deleted accounts).
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// The id, roles and status of the non-deleted account named `username`.
pub async fn find_by_username(
    conn: &mut AsyncPgConnection,
    username: &str,
) -> QueryResult<Option<(Uuid, Owner)>> {
    let row: Option<(Uuid, Vec<Option<String>>, String)> = users::table
        .filter(users::username.eq(username))
        .filter(users::status.ne("deleted"))
        .select((users::id, users::roles, users::status))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(id, roles, status)| {
        let roles = roles.into_iter().flatten().collect();
        (id, Owner { roles, status })
    }))
}

/// How many unrevoked keys `user_id` holds.
pub async fn count_unrevoked(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<i64> {
    api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .filter(api_keys::revoked_at.is_null())
        .count()
        .get_result(conn)
        .await
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &ApiKeyRow) -> QueryResult<()> {
    diesel::insert_into(api_keys::table)
        .values(row)
        .execute(conn)
        .await?;
    Ok(())
}

/// Up to `limit` unrevoked keys of `user_id`, newest first, after `after`.
pub async fn list_unrevoked(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> QueryResult<Vec<ApiKeyRow>> {
    let mut query = api_keys::table
        .filter(api_keys::user_id.eq(user_id))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKeyRow::as_select())
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(
            api_keys::created_at.lt(after.at).or(api_keys::created_at
                .eq(after.at)
                .and(api_keys::id.lt(after.id))),
        );
    }
    query.load(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .find(id)
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Sets `revoked_at` unless already set; returns the key as it now is (`None`: no such key).
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<ApiKeyRow>> {
    let revoked = diesel::update(
        api_keys::table
            .find(id)
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(now))
    .returning(ApiKeyRow::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match revoked {
        Some(row) => Ok(Some(row)),
        None => find(conn, id).await,
    }
}

/// Revokes every unrevoked key of `user_id` at `now` (a user deleted or disabled); returns their
/// ids.
pub async fn revoke_all_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Vec<Uuid>> {
    diesel::update(
        api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(now))
    .returning(api_keys::id)
    .get_results(conn)
    .await
}

/// What verification needs of a usable key: unrevoked, owner active.
#[derive(Debug, Clone)]
pub struct UsableKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub owner_roles: Vec<String>,
}

/// The unrevoked key whose secret hashes to `hash`, if its owner is active: one indexed lookup.
pub async fn find_usable(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
) -> QueryResult<Option<UsableKey>> {
    type Row = (
        Uuid,
        Uuid,
        Vec<Option<String>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Vec<Option<String>>,
    );
    let row: Option<Row> = api_keys::table
        .inner_join(users::table)
        .filter(api_keys::key_hash.eq(hash))
        .filter(api_keys::revoked_at.is_null())
        .filter(users::status.eq(ACTIVE))
        .select((
            api_keys::id,
            api_keys::user_id,
            api_keys::scopes,
            api_keys::expires_at,
            api_keys::last_used_at,
            users::roles,
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(
        |(id, user_id, scopes, expires_at, last_used_at, roles)| UsableKey {
            id,
            user_id,
            scopes: scopes.into_iter().flatten().collect(),
            expires_at,
            last_used_at,
            owner_roles: roles.into_iter().flatten().collect(),
        },
    ))
}

/// Records when keys were last used, in one statement; never moves a time backwards.
pub async fn record_last_used(
    conn: &mut AsyncPgConnection,
    used: &[(Uuid, DateTime<Utc>)],
) -> QueryResult<usize> {
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.iter().copied().unzip();
    diesel::sql_query(
        "UPDATE api_keys SET last_used_at = used.at \
           FROM unnest($1, $2) AS used(id, at) \
          WHERE api_keys.id = used.id \
            AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < used.at)",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Array<Timestamptz>, _>(times)
    .execute(conn)
    .await
}
