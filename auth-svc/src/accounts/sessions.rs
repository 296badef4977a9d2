//! Sign-in sessions: Login (with lockout), refresh-token rotation with reuse detection, Logout,
//! and the signed-in user's session list.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use kit::page;
use serde_json::json;
use uuid::Uuid;

use super::{
    ClientInfo, UserStatus,
    lockout::{self, Verdict},
    secret, validate,
};
use crate::{
    State,
    error::Error,
    store::{
        self,
        audit::NewEvent,
        sessions::{RefreshTokenRow, SessionRow},
        users::UserRow,
    },
};

/// The one answer to every failed sign-in, so nobody learns which accounts exist.
pub const INVALID_CREDENTIALS: &str = "invalid credentials";
const INVALID_REFRESH_TOKEN: &str = "invalid or expired refresh token";

/// What Login and Refresh return.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
    pub user: UserRow,
}

/// What becomes of a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Exchange it for a new pair.
    Rotate,
    /// It was exchanged before: someone else holds the chain. Revoke the session.
    Reused,
    /// Refuse it (revoked or expired session or token, or the user is not active).
    Refuse,
}

/// The rotation rule for `token` of `session` owned by a user in `status`; a session older than
/// `max_lifetime` is over whatever its tokens say (sessions of before the limit included).
pub fn judge_refresh(
    token: &RefreshTokenRow,
    session: &SessionRow,
    status: UserStatus,
    max_lifetime: chrono::Duration,
    now: DateTime<Utc>,
) -> RefreshVerdict {
    if session.revoked_at.is_some() {
        RefreshVerdict::Refuse
    } else if token.rotated_at.is_some() {
        RefreshVerdict::Reused
    } else if token.expires_at <= now
        || session.expires_at <= now
        || session.created_at + max_lifetime <= now
        || status != UserStatus::Active
    {
        RefreshVerdict::Refuse
    } else {
        RefreshVerdict::Rotate
    }
}

/// When a refresh token issued at `now` in a session signed in at `signed_in_at` expires: `ttl`
/// later, but never after the session's absolute end, so refreshing cannot extend it forever.
pub fn refresh_expiry(
    signed_in_at: DateTime<Utc>,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    max_lifetime: chrono::Duration,
) -> DateTime<Utc> {
    (now + ttl).min(signed_in_at + max_lifetime)
}

/// Whether `session` (the caller's, if it exists) is a sign-in of the last `window`: unrevoked
/// and created (at Login; refreshes do not renew it) less than `window` before `now`.
pub fn signed_in_within(
    session: Option<&SessionRow>,
    window: chrono::Duration,
    now: DateTime<Utc>,
) -> bool {
    session.is_some_and(|session| session.revoked_at.is_none() && now - session.created_at < window)
}

/// The lockout key of a sign-in: the account when one matched, else the name tried (so unknown
/// names lock the same way and lockout reveals nothing either), keyed-hashed: what was typed may
/// be a password put into the wrong box, and a plain hash of it could be brute-forced offline.
fn account_key(state: &State, user: Option<&UserRow>, name: &str) -> String {
    user.map_or_else(
        || {
            let hash = secret::keyed_hash(&state.config.name_key, name);
            format!("name:{}", hex::encode(hash))
        },
        |user| user.id.to_string(),
    )
}

/// How long a password attempt waits before asking again, the `retry`th time (0-based), when the
/// limit is full only of attempts still being checked: doubling from 20 ms up to 320 ms, so a
/// crowd of waiters does not re-run the admission transaction every few milliseconds.
pub fn recheck_delay(retry: u32) -> std::time::Duration {
    std::time::Duration::from_millis(20 << retry.min(4))
}

/// The longest a password attempt waits for others to be checked; then it is refused as if
/// locked for a second (a check takes far less unless the server is overloaded).
pub const MAX_ADMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
/// [`settle_attempt`] corrects. Deciding and recording are one step under advisory locks on the
/// account and the address, so concurrent guesses count each other and at most the limit is ever
/// checked. While the limit is full only of attempts still being checked, it waits for them
/// (a success among them resets the account).
pub(crate) async fn begin_attempt(
    state: &State,
    key: &str,
    subject: Option<Uuid>,
    client: &ClientInfo,
) -> Result<Uuid, Error> {
    let policy = state.config.lockout;
    let address_key = client.limit_key();
    let mut waited = std::time::Duration::ZERO;
    for retry in 0.. {
        let now = state.clock.now();
        let since = now - policy.window;
        let mut conn = state.pool.get().await?;
        let admission = conn
            .transaction::<_, Error, _>(async |conn| {
                store::attempts::lock(conn, key, &address_key).await?;
                let account = store::attempts::of_account(conn, key, since).await?;
                let address =
                    store::attempts::unsuccessful_of_address(conn, &address_key, since).await?;
                match lockout::judge(&policy, &account, &address, now) {
                    Verdict::Allow => {
                        let id = store::attempts::begin(conn, key, &address_key, now).await?;
                        Ok(Admission::Begun(id))
                    }
                    Verdict::Wait => Ok(Admission::Wait),
                    Verdict::LockedUntil(until) => {
                        let retry_after_secs = lockout::retry_after_secs(until, now);
                        let event = NewEvent {
                            event_type: "login.locked",
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
            .await?;
        drop(conn);
        match admission {
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

/// Records whether the password of attempt `id` (from [`begin_attempt`]) was right.
pub(crate) async fn settle_attempt(state: &State, id: Uuid, succeeded: bool) -> Result<(), Error> {
    let mut conn = state.pool.get().await?;
    Ok(store::attempts::settle(&mut conn, id, succeeded).await?)
}

pub async fn login(
    state: &State,
    client: &ClientInfo,
    username_or_email: &str,
    password: &str,
) -> Result<Tokens, Error> {
    let name = validate::required("username_or_email", username_or_email)?
        .trim()
        .to_lowercase();
    validate::required("password", password)?;
    let user = {
        let mut conn = state.pool.get().await?;
        store::users::find_by_login(&mut conn, &name).await?
    };
    let key = account_key(state, user.as_ref(), &name);
    let subject = user.as_ref().map(|user| user.id);
    let attempt = begin_attempt(state, &key, subject, client).await?;
    let now = state.clock.now();
    // Disabled accounts and service accounts (no password) fail exactly like a wrong password.
    let hash = user
        .as_ref()
        .filter(|user| user.status() == UserStatus::Active)
        .and_then(|user| user.password_hash.clone());
    // No connection is held while argon2 runs, so slow hashes cannot starve the pool.
    let matches = state
        .config
        .hasher
        .verify(password.to_owned(), hash)
        .await?;
    let mut conn = state.pool.get().await?;
    let user = match user {
        Some(user) if matches => user,
        other => {
            let reason = match &other {
                None => "unknown_user",
                Some(user) if user.status() != UserStatus::Active => "inactive_account",
                Some(user) if user.password_hash.is_none() => "no_password",
                Some(_) => "wrong_password",
            };
            conn.transaction::<_, Error, _>(async |conn| {
                store::attempts::settle(conn, attempt, false).await?;
                let event = NewEvent {
                    event_type: "login.failed",
                    actor: None,
                    subject,
                    client_address: &client.address,
                    details: json!({ "reason": reason }),
                };
                store::audit::record(conn, &event, now).await?;
                Ok(())
            })
            .await?;
            return Err(Error::Unauthenticated(INVALID_CREDENTIALS));
        }
    };
    if state.config.require_verified_email && user.email_verified_at.is_none() {
        store::attempts::settle(&mut conn, attempt, true).await?;
        return Err(Error::FailedPrecondition(
            "verify your email address before signing in".into(),
        ));
    }
    let (refresh_token, refresh_hash) = secret::new_token();
    let refresh_expires_at = refresh_expiry(
        now,
        now,
        state.config.refresh_token_ttl,
        state.config.session_max_lifetime,
    );
    let session = SessionRow {
        id: Uuid::now_v7(),
        user_id: user.id,
        created_at: now,
        last_used_at: now,
        expires_at: refresh_expires_at,
        revoked_at: None,
        revoke_reason: None,
        client_address: client.address.clone(),
        user_agent: client.user_agent.clone(),
    };
    let token = RefreshTokenRow {
        token_hash: refresh_hash,
        session_id: session.id,
        issued_at: now,
        expires_at: refresh_expires_at,
        rotated_at: None,
    };
    conn.transaction::<_, Error, _>(async |conn| {
        store::attempts::settle(conn, attempt, true).await?;
        store::users::set_last_login(conn, user.id, now).await?;
        store::sessions::insert(conn, &session).await?;
        store::sessions::insert_token(conn, &token).await?;
        let event = NewEvent {
            event_type: "login.succeeded",
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({ "session_id": session.id }),
        };
        store::audit::record(conn, &event, now).await?;
        Ok(())
    })
    .await?;
    let user = UserRow {
        last_login_at: Some(now),
        ..user
    };
    // The signer may need a connection of its own (loading the current key): never hold two.
    drop(conn);
    let (access_token, access_token_expires_at) = state
        .credentials
        .signer
        .issue_access_token(user.id, session.id, &user.roles(), now)
        .await?;
    Ok(Tokens {
        access_token,
        access_token_expires_at,
        refresh_token,
        refresh_token_expires_at: refresh_expires_at,
        user,
    })
}

pub async fn refresh(state: &State, client: &ClientInfo, token: &str) -> Result<Tokens, Error> {
    let presented = secret::hash(validate::required("refresh_token", token)?);
    let now = state.clock.now();
    let (new_token, new_hash) = secret::new_token();
    let config = &state.config;
    let mut conn = state.pool.get().await?;
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            let Some((token, session)) = store::sessions::lock_token(conn, &presented).await?
            else {
                return Ok(None);
            };
            let user = store::users::find(conn, session.user_id)
                .await?
                .ok_or_else(|| Error::Internal("a session without its user".into()))?;
            match judge_refresh(&token, &session, user.status(), config.session_max_lifetime, now)
            {
                RefreshVerdict::Refuse => Ok(None),
                RefreshVerdict::Reused => {
                    store::sessions::revoke(conn, session.id, "refresh_token_reuse", now).await?;
                    let event = NewEvent {
                        event_type: "token.reuse_detected",
                        actor: None,
                        subject: Some(user.id),
                        client_address: &client.address,
                        details: json!({ "session_id": session.id }),
                    };
                    store::audit::record(conn, &event, now).await?;
                    tracing::warn!(session_id = %session.id, "refresh token reused; session revoked");
                    Ok(None)
                }
                RefreshVerdict::Rotate => {
                    let expires_at = refresh_expiry(
                        session.created_at,
                        now,
                        config.refresh_token_ttl,
                        config.session_max_lifetime,
                    );
                    store::sessions::mark_rotated(conn, &presented, now).await?;
                    let next = RefreshTokenRow {
                        token_hash: new_hash,
                        session_id: session.id,
                        issued_at: now,
                        expires_at,
                        rotated_at: None,
                    };
                    store::sessions::insert_token(conn, &next).await?;
                    store::sessions::touch(conn, session.id, now, expires_at).await?;
                    Ok(Some((session.id, expires_at, user)))
                }
            }
        })
        .await?;
    // The session id, new expiry and user of a rotated token; `None`: refused (after committing
    // any revocation for reuse).
    drop(conn);
    let Some((session_id, expires_at, user)) = outcome else {
        return Err(Error::Unauthenticated(INVALID_REFRESH_TOKEN));
    };
    let (access_token, access_token_expires_at) = state
        .credentials
        .signer
        .issue_access_token(user.id, session_id, &user.roles(), now)
        .await?;
    Ok(Tokens {
        access_token,
        access_token_expires_at,
        refresh_token: new_token,
        refresh_token_expires_at: expires_at,
        user,
    })
}

/// Revokes the session of `token`; unknown or revoked tokens are fine (idempotent).
pub async fn logout(state: &State, client: &ClientInfo, token: &str) -> Result<(), Error> {
    let presented = secret::hash(validate::required("refresh_token", token)?);
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let Some((_, session)) = store::sessions::lock_token(conn, &presented).await? else {
            return Ok(());
        };
        if store::sessions::revoke(conn, session.id, "logout", now).await? {
            let event = NewEvent {
                event_type: "logout",
                actor: Some(session.user_id),
                subject: Some(session.user_id),
                client_address: &client.address,
                details: json!({ "session_id": session.id }),
            };
            store::audit::record(conn, &event, now).await?;
        }
        Ok(())
    })
    .await
}

/// How often old login and registration attempts are pruned.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes login and registration attempts that no limit counts any more every
/// [`PRUNE_INTERVAL`], so the tables stay small whatever an attacker tries. Every replica may run it; deleting is idempotent.
pub fn spawn_attempt_pruning(state: &State) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            ticks.tick().await;
            let now = state.clock.now();
            let pruned = match state.pool.get().await {
                Ok(mut conn) => prune_attempts(&mut conn, &state, now).await,
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
async fn prune_attempts(
    conn: &mut diesel_async::AsyncPgConnection,
    state: &State,
    now: DateTime<Utc>,
) -> Result<usize, Error> {
    let logins = store::attempts::prune(conn, now - state.config.lockout.window).await?;
    let registrations = store::registrations::prune(conn, now - chrono::Duration::hours(1)).await?;
    Ok(logins + registrations)
}

/// A page of `user_id`'s active sessions and the next page token.
pub async fn list(
    state: &State,
    user_id: Uuid,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<SessionRow>, String), Error> {
    let limit = page::page_size(page_size)?;
    let after = page::decode_token(page_token, "sessions")?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let mut rows = store::sessions::list_active(&mut conn, user_id, now, after, limit + 1).await?;
    let next = page::next_token(&mut rows, limit, "sessions", |row| page::Cursor {
        at: row.created_at,
        id: row.id,
    });
    Ok((rows, next))
}

/// Revokes one of `user_id`'s sessions (idempotent); `NOT_FOUND` for anyone else's.
pub async fn revoke(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<(), Error> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        store::sessions::find_of_user(conn, user_id, session_id)
            .await?
            .ok_or(Error::NotFound("session"))?;
        if store::sessions::revoke(conn, session_id, "revoked_by_user", now).await? {
            let event = NewEvent {
                event_type: "session.revoked",
                actor: Some(user_id),
                subject: Some(user_id),
                client_address: &client.address,
                details: json!({ "session_id": session_id }),
            };
            store::audit::record(conn, &event, now).await?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    const LIFETIME: Duration = Duration::days(30);

    fn fixtures(now: DateTime<Utc>) -> (RefreshTokenRow, SessionRow) {
        let session = SessionRow {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            created_at: now,
            last_used_at: now,
            expires_at: now + Duration::days(30),
            revoked_at: None,
            revoke_reason: None,
            client_address: String::new(),
            user_agent: String::new(),
        };
        let token = RefreshTokenRow {
            token_hash: vec![0; 32],
            session_id: session.id,
            issued_at: now,
            expires_at: now + Duration::days(30),
            rotated_at: None,
        };
        (token, session)
    }

    #[test]
    fn refresh_rotates_once_and_reuse_is_theft() {
        let now = Utc::now();
        let (mut token, mut session) = fixtures(now);
        let active = UserStatus::Active;
        assert_eq!(
            judge_refresh(&token, &session, active, LIFETIME, now),
            RefreshVerdict::Rotate
        );
        token.rotated_at = Some(now);
        assert_eq!(
            judge_refresh(&token, &session, active, LIFETIME, now),
            RefreshVerdict::Reused
        );
        session.revoked_at = Some(now);
        assert_eq!(
            judge_refresh(&token, &session, active, LIFETIME, now),
            RefreshVerdict::Refuse
        );
    }

    #[test]
    fn waiting_admissions_back_off_and_give_up() {
        let delays: Vec<u128> = (0..6)
            .map(|retry| recheck_delay(retry).as_millis())
            .collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 320]);
        // About a dozen checks in the longest wait, not one every 20 ms (150).
        let mut waited = std::time::Duration::ZERO;
        let mut checks = 0;
        while waited < MAX_ADMISSION_WAIT {
            waited += recheck_delay(checks);
            checks += 1;
        }
        assert!(checks <= 14, "{checks} checks");
    }

    #[test]
    fn expired_tokens_and_inactive_users_are_refused() {
        let now = Utc::now();
        let (token, session) = fixtures(now);
        let later = now + Duration::days(31);
        assert_eq!(
            judge_refresh(&token, &session, UserStatus::Active, LIFETIME, later),
            RefreshVerdict::Refuse
        );
        for status in [UserStatus::Disabled, UserStatus::Deleted] {
            assert_eq!(
                judge_refresh(&token, &session, status, LIFETIME, now),
                RefreshVerdict::Refuse
            );
        }
    }

    #[test]
    fn a_session_ends_at_its_absolute_lifetime_however_often_refreshed() {
        let signed_in = Utc::now();
        let (mut token, mut session) = fixtures(signed_in);
        let ttl = Duration::days(30);
        let lifetime = Duration::days(7);
        // Refreshed a day before the end: the new token stops at the end, not 30 days later.
        let late = signed_in + Duration::days(6);
        let expiry = refresh_expiry(signed_in, late, ttl, lifetime);
        assert_eq!(expiry, signed_in + lifetime);
        assert_eq!(
            refresh_expiry(signed_in, signed_in, Duration::days(1), lifetime),
            signed_in + Duration::days(1)
        );
        // A session whose tokens still run (e.g. issued before the limit) ends anyway.
        token.expires_at = signed_in + Duration::days(60);
        session.expires_at = token.expires_at;
        let active = UserStatus::Active;
        assert_eq!(
            judge_refresh(&token, &session, active, lifetime, late),
            RefreshVerdict::Rotate
        );
        assert_eq!(
            judge_refresh(&token, &session, active, lifetime, signed_in + lifetime),
            RefreshVerdict::Refuse
        );
    }

    #[test]
    fn only_a_fresh_unrevoked_sign_in_is_recent() {
        let signed_in = Utc::now();
        let (_, mut session) = fixtures(signed_in);
        let window = Duration::minutes(10);
        let within = signed_in + Duration::minutes(9);
        assert!(signed_in_within(Some(&session), window, within));
        assert!(!signed_in_within(
            Some(&session),
            window,
            signed_in + window
        ));
        assert!(!signed_in_within(None, window, within));
        session.revoked_at = Some(signed_in);
        assert!(!signed_in_within(Some(&session), window, within));
    }
}
