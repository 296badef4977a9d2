//! `login_attempts`: password attempts for the lockout rule.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::auth::login_attempts;
use crate::domain::lockout::{Attempt, Outcome};

/// Serialises the lockout decisions on `account_key` and on `client_address` (if known) until
/// the transaction ends, across connections and replicas. Always the account first, so two
/// transactions never wait for each other crosswise.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    account_key: &str,
    client_address: &str,
) -> QueryResult<()> {
    let mut keys = vec![format!("auth.login_attempts account {account_key}")];
    if !client_address.is_empty() {
        keys.push(format!("auth.login_attempts address {client_address}"));
    }
    for key in keys {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(key)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Records an attempt whose password is about to be checked: a failure until
/// [`settle`]d otherwise. Returns its id.
pub async fn begin(
    conn: &mut AsyncPgConnection,
    account_key: &str,
    client_address: &str,
    now: DateTime<Utc>,
) -> QueryResult<Uuid> {
    let id = Uuid::now_v7();
    diesel::insert_into(login_attempts::table)
        .values((
            login_attempts::id.eq(id),
            login_attempts::attempted_at.eq(now),
            login_attempts::account_key.eq(account_key),
            login_attempts::client_address.eq(client_address),
            login_attempts::succeeded.eq(false),
            login_attempts::checking.eq(true),
        ))
        .execute(conn)
        .await?;
    Ok(id)
}

/// Records the outcome of the check of attempt `id`.
pub async fn settle(conn: &mut AsyncPgConnection, id: Uuid, succeeded: bool) -> QueryResult<()> {
    diesel::update(login_attempts::table.find(id))
        .set((
            login_attempts::succeeded.eq(succeeded),
            login_attempts::checking.eq(false),
        ))
        .execute(conn)
        .await
        .map(drop)
}

fn attempt((at, succeeded, checking): (DateTime<Utc>, bool, bool)) -> Attempt {
    let outcome = match (succeeded, checking) {
        (true, _) => Outcome::Succeeded,
        (false, true) => Outcome::Checking,
        (false, false) => Outcome::Failed,
    };
    Attempt { at, outcome }
}

/// The account's attempts since `since`.
pub async fn of_account(
    conn: &mut AsyncPgConnection,
    account_key: &str,
    since: DateTime<Utc>,
) -> QueryResult<Vec<Attempt>> {
    let rows: Vec<(DateTime<Utc>, bool, bool)> = login_attempts::table
        .filter(login_attempts::account_key.eq(account_key))
        .filter(login_attempts::attempted_at.gt(since))
        .select((
            login_attempts::attempted_at,
            login_attempts::succeeded,
            login_attempts::checking,
        ))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(attempt).collect())
}

/// The client's unsuccessful attempts (failed or still being checked) since `since`; none for an
/// unknown address: clients without one would otherwise lock each other out.
pub async fn unsuccessful_of_address(
    conn: &mut AsyncPgConnection,
    client_address: &str,
    since: DateTime<Utc>,
) -> QueryResult<Vec<Attempt>> {
    if client_address.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(DateTime<Utc>, bool, bool)> = login_attempts::table
        .filter(login_attempts::client_address.eq(client_address))
        // As the partial index `login_attempts_by_address` reads.
        .filter(diesel::dsl::not(login_attempts::succeeded))
        .filter(login_attempts::attempted_at.gt(since))
        .select((
            login_attempts::attempted_at,
            login_attempts::succeeded,
            login_attempts::checking,
        ))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(attempt).collect())
}

/// Deletes attempts from before `before` (they no longer count); how many.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(login_attempts::table.filter(login_attempts::attempted_at.lt(before)))
        .execute(conn)
        .await
}
