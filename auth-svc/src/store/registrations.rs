//! `registration_attempts`: every Register call, for the per-address limit, and whether it got as
//! far as hashing, for the overall one.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::auth::registration_attempts;

/// Serialises the registration limit of `client_address`, or (`None`) the overall one, until the
/// transaction ends, so concurrent attempts count each other.
pub async fn lock(conn: &mut AsyncPgConnection, client_address: Option<&str>) -> QueryResult<()> {
    let key = match client_address {
        Some(address) => format!("auth.registration_attempts {address}"),
        None => "auth.registration_attempts overall".to_owned(),
    };
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Attempts from `client_address` since `since`.
pub async fn count_since(
    conn: &mut AsyncPgConnection,
    client_address: &str,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    registration_attempts::table
        .filter(registration_attempts::attempted_at.gt(since))
        .filter(registration_attempts::client_address.eq(client_address))
        .count()
        .get_result(conn)
        .await
}

/// Attempts from anywhere since `since` that got as far as hashing.
pub async fn count_hashed_since(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    registration_attempts::table
        .filter(registration_attempts::attempted_at.gt(since))
        .filter(registration_attempts::hashed)
        .count()
        .get_result(conn)
        .await
}

/// Records an attempt; returns its id.
pub async fn record(
    conn: &mut AsyncPgConnection,
    client_address: &str,
    now: DateTime<Utc>,
) -> QueryResult<Uuid> {
    let id = Uuid::now_v7();
    diesel::insert_into(registration_attempts::table)
        .values((
            registration_attempts::id.eq(id),
            registration_attempts::attempted_at.eq(now),
            registration_attempts::client_address.eq(client_address),
        ))
        .execute(conn)
        .await?;
    Ok(id)
}

/// Marks attempt `id` as one that hashes a password.
pub async fn mark_hashed(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(registration_attempts::table.find(id))
        .set(registration_attempts::hashed.eq(true))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes attempts before `before`; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(
        registration_attempts::table.filter(registration_attempts::attempted_at.lt(before)),
    )
    .execute(conn)
    .await
}
