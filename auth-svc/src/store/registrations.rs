//! `registration_attempts`: every Register call, for the per-address and overall limits.

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

/// Attempts since `since`, from `client_address` or (`None`) from anywhere.
pub async fn count_since(
    conn: &mut AsyncPgConnection,
    client_address: Option<&str>,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    let mut query = registration_attempts::table
        .filter(registration_attempts::attempted_at.gt(since))
        .into_boxed();
    if let Some(address) = client_address {
        query = query.filter(registration_attempts::client_address.eq(address));
    }
    query.count().get_result(conn).await
}

pub async fn record(
    conn: &mut AsyncPgConnection,
    client_address: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(registration_attempts::table)
        .values((
            registration_attempts::id.eq(Uuid::now_v7()),
            registration_attempts::attempted_at.eq(now),
            registration_attempts::client_address.eq(client_address),
        ))
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
