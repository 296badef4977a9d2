//! Password attempts under the lockout rule ([`crate::domain::lockout`]): admitted before the
//! password is checked, settled after, and pruned once no limit counts them.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::State;
use crate::{
    domain::{
        ClientInfo,
        audit::EventType,
        lockout::{self, Verdict},
        sessions::{MAX_ADMISSION_WAIT, recheck_delay},
    },
    error::Error,
    store::{self, audit::NewEvent},
};

/// What the lockout rule made of a new password attempt.
enum Admission {
    /// Recorded (as a failure until settled); its id.
    Begun(Uuid),
    Wait,
    Locked {
        retry_after_secs: u64,
    },
}

/// Admits a password attempt on `key` from `client` before its password is checked:
/// `RESOURCE_EXHAUSTED` while locked, else the id of the attempt, recorded as a failure that
/// [`settle`] corrects. Deciding and recording are one step under advisory locks on the
/// account and the address, so concurrent guesses count each other and at most the limit is ever
/// checked. While the limit is full only of attempts still being checked, it waits for them
/// (a success among them resets the account).
pub async fn begin(
    state: &State,
    key: &str,
    subject: Option<Uuid>,
    client: &ClientInfo,
) -> Result<Uuid, Error> {
    let mut waited = std::time::Duration::ZERO;
    for retry in 0.. {
        match admit(state, key, subject, client).await? {
            Admission::Begun(id) => return Ok(id),
            Admission::Wait if waited < MAX_ADMISSION_WAIT => {
                let delay = recheck_delay(retry);
                tokio::time::sleep(delay).await;
                waited += delay;
            }
            Admission::Wait => break,
            Admission::Locked { retry_after_secs } => {
                return Err(Error::LockedOut { retry_after_secs });
            }
        }
    }
    Err(Error::LockedOut {
        retry_after_secs: 1,
    })
}

/// One admission transaction of [`begin`]; a lock-out is audited.
async fn admit(
    state: &State,
    key: &str,
    subject: Option<Uuid>,
    client: &ClientInfo,
) -> Result<Admission, Error> {
    let policy = state.config.lockout;
    let address_key = client.limit_key();
    let now = state.clock.now();
    let since = now - policy.window;
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        store::attempts::lock(conn, key, &address_key).await?;
        let account = store::attempts::of_account(conn, key, since).await?;
        let address = store::attempts::unsuccessful_of_address(conn, &address_key, since).await?;
        match lockout::judge(&policy, &account, &address, now) {
            Verdict::Allow => {
                let id = store::attempts::begin(conn, key, &address_key, now).await?;
                Ok(Admission::Begun(id))
            }
            Verdict::Wait => Ok(Admission::Wait),
            Verdict::LockedUntil(until) => {
                let retry_after_secs = lockout::retry_after_secs(until, now);
                let event = NewEvent {
                    event_type: EventType::LoginLocked,
                    actor: None,
                    subject,
                    client_address: &client.address,
                    details: json!({ "retry_after_secs": retry_after_secs }),
                };
                store::audit::record(conn, &event, now).await?;
                Ok(Admission::Locked { retry_after_secs })
            }
        }
    })
    .await
}

/// Records whether the password of attempt `id` (from [`begin`]) was right.
pub async fn settle(state: &State, id: Uuid, succeeded: bool) -> Result<(), Error> {
    let mut conn = state.pool.get().await?;
    Ok(store::attempts::settle(&mut conn, id, succeeded).await?)
}

/// How often old login and registration attempts are pruned.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes login and registration attempts that no limit counts any more every
/// [`PRUNE_INTERVAL`], so the tables stay small whatever an attacker tries. Every replica may
/// run it; deleting is idempotent.
pub fn spawn_pruning(state: &State) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            ticks.tick().await;
            let now = state.clock.now();
            let pruned = match state.pool.get().await {
                Ok(mut conn) => prune(&mut conn, &state, now).await,
                Err(err) => Err(err.into()),
            };
            match pruned {
                Ok(rows) => tracing::debug!(rows, "pruned old login and registration attempts"),
                Err(err) => tracing::warn!(%err, "pruning login and registration attempts failed"),
            }
        }
    });
}

/// Deletes the login attempts older than the lockout window and the registration attempts older
/// than their hour; returns how many.
async fn prune(
    conn: &mut AsyncPgConnection,
    state: &State,
    now: DateTime<Utc>,
) -> Result<usize, Error> {
    let logins = store::attempts::prune(conn, now - state.config.lockout.window).await?;
    let registrations = store::registrations::prune(conn, now - chrono::Duration::hours(1)).await?;
    Ok(logins + registrations)
}
