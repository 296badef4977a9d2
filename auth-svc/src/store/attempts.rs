//! `login_attempts`: password attempts for the lockout rule.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::auth::login_attempts;
use crate::accounts::lockout::Attempt;

pub async fn record(
    conn: &mut AsyncPgConnection,
    account_key: &str,
    client_address: &str,
    succeeded: bool,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(login_attempts::table)
        .values((
            login_attempts::id.eq(Uuid::now_v7()),
            login_attempts::attempted_at.eq(now),
            login_attempts::account_key.eq(account_key),
            login_attempts::client_address.eq(client_address),
            login_attempts::succeeded.eq(succeeded),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// The account's attempts since `since`.
pub async fn of_account(
    conn: &mut AsyncPgConnection,
    account_key: &str,
    since: DateTime<Utc>,
) -> QueryResult<Vec<Attempt>> {
    let rows: Vec<(DateTime<Utc>, bool)> = login_attempts::table
        .filter(login_attempts::account_key.eq(account_key))
        .filter(login_attempts::attempted_at.gt(since))
        .select((login_attempts::attempted_at, login_attempts::succeeded))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(at, succeeded)| Attempt { at, succeeded })
        .collect())
}

/// The client's failures since `since` (none for an unknown address: clients without one would
/// otherwise lock each other out).
pub async fn failures_of_address(
    conn: &mut AsyncPgConnection,
    client_address: &str,
    since: DateTime<Utc>,
) -> QueryResult<Vec<DateTime<Utc>>> {
    if client_address.is_empty() {
        return Ok(Vec::new());
    }
    login_attempts::table
        .filter(login_attempts::client_address.eq(client_address))
        .filter(login_attempts::succeeded.eq(false))
        .filter(login_attempts::attempted_at.gt(since))
        .select(login_attempts::attempted_at)
        .load(conn)
        .await
}

/// Deletes attempts from before `before` (they no longer count); how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(login_attempts::table.filter(login_attempts::attempted_at.lt(before)))
        .execute(conn)
        .await
}
