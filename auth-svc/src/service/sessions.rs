//! Sign-in sessions: Login (with lockout), refresh-token rotation with reuse detection, Logout,
//! and the signed-in user's session list.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::page;
use serde_json::json;
use uuid::Uuid;

use super::{State, attempts};
use crate::{
    domain::{
        ClientInfo, UserStatus,
        audit::EventType,
        secret,
        sessions::{PresentedRefresh, RefreshVerdict, account_key, judge_refresh, refresh_expiry},
        validate,
    },
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

/// Login: the password is checked under the lockout rule, then a session starts.
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
    let (user, attempt, now) = check_password(state, client, &name, password).await?;
    if state.config.require_verified_email && user.email_verified_at.is_none() {
        attempts::settle(state, attempt, true).await?;
        return Err(Error::FailedPrecondition(
            "verify your email address before signing in".into(),
        ));
    }
    let (session, refresh_token) = start_session(state, client, &user, attempt, now).await?;
    let user = UserRow {
        last_login_at: Some(now),
        ..user
    };
    issue(state, user, &session, refresh_token, now).await
}

/// The active account `name` (username or email) names, if `password` is its password, with the
/// attempt (open, for the caller to settle) and the time the sign-in counts from. Any failure is
/// audited and answers [`INVALID_CREDENTIALS`], whatever its reason.
async fn check_password(
    state: &State,
    client: &ClientInfo,
    name: &str,
    password: &str,
) -> Result<(UserRow, Uuid, DateTime<Utc>), Error> {
    let user = {
        let mut conn = state.pool.get().await?;
        store::users::find_by_login(&mut conn, name).await?
    };
    let subject = user.as_ref().map(|user| user.id);
    let key = account_key(&state.config.name_key, subject, name);
    let attempt = attempts::begin(state, &key, subject, client).await?;
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
    match user {
        Some(user) if matches => Ok((user, attempt, now)),
        other => {
            let reason = match &other {
                None => "unknown_user",
                Some(user) if user.status() != UserStatus::Active => "inactive_account",
                Some(user) if user.password_hash.is_none() => "no_password",
                Some(_) => "wrong_password",
            };
            let mut conn = state.pool.get().await?;
            conn.transaction::<_, Error, _>(async |conn| {
                store::attempts::settle(conn, attempt, false).await?;
                let event = NewEvent {
                    event_type: EventType::LoginFailed,
                    actor: None,
                    subject,
                    client_address: &client.address,
                    details: json!({ "reason": reason }),
                };
                Ok(store::audit::record(conn, &event, now).await?)
            })
            .await?;
            Err(Error::Unauthenticated(INVALID_CREDENTIALS))
        }
    }
}

/// Starts a session of `user` at `now`, settling its sign-in `attempt` as a success in the same
/// transaction; returns the session and its first refresh token.
async fn start_session(
    state: &State,
    client: &ClientInfo,
    user: &UserRow,
    attempt: Uuid,
    now: DateTime<Utc>,
) -> Result<(SessionRow, String), Error> {
    let (refresh_token, refresh_hash) = secret::new_token();
    let expires_at = refresh_expiry(
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
        expires_at,
        revoked_at: None,
        revoke_reason: None,
        client_address: client.address.clone(),
        user_agent: client.user_agent.clone(),
    };
    let token = RefreshTokenRow {
        token_hash: refresh_hash,
        session_id: session.id,
        issued_at: now,
        expires_at,
        rotated_at: None,
    };
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        store::attempts::settle(conn, attempt, true).await?;
        store::users::set_last_login(conn, user.id, now).await?;
        store::sessions::insert(conn, &session).await?;
        store::sessions::insert_token(conn, &token).await?;
        let event = NewEvent {
            event_type: EventType::LoginSucceeded,
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({ "session_id": session.id }),
        };
        Ok(store::audit::record(conn, &event, now).await?)
    })
    .await?;
    Ok((session, refresh_token))
}

/// The tokens of `session` for `user`: a new access token beside `refresh_token`. Called with
/// no connection held: the signer may need one of its own (loading the current key).
async fn issue(
    state: &State,
    user: UserRow,
    session: &SessionRow,
    refresh_token: String,
    now: DateTime<Utc>,
) -> Result<Tokens, Error> {
    let (access_token, access_token_expires_at) = state
        .credentials
        .signer
        .issue_access_token(user.id, session.id, &user.roles(), now)
        .await?;
    Ok(Tokens {
        access_token,
        access_token_expires_at,
        refresh_token,
        refresh_token_expires_at: session.expires_at,
        user,
    })
}

/// Refresh: exchanges a refresh token for a new pair, once; a token presented again revokes its
/// session (someone else holds the chain).
pub async fn refresh(state: &State, client: &ClientInfo, token: &str) -> Result<Tokens, Error> {
    let presented = secret::hash(validate::required("refresh_token", token)?);
    let now = state.clock.now();
    let (new_token, new_hash) = secret::new_token();
    let mut conn = state.pool.get().await?;
    let rotated = conn
        .transaction::<_, Error, _>(async |conn| {
            let Some((token, session)) = store::sessions::lock_token(conn, &presented).await?
            else {
                return Ok(None);
            };
            let user = store::users::find(conn, session.user_id)
                .await?
                .ok_or_else(|| Error::Internal("a session without its user".into()))?;
            let judged = PresentedRefresh {
                token_expires_at: token.expires_at,
                token_rotated: token.rotated_at.is_some(),
                session_created_at: session.created_at,
                session_expires_at: session.expires_at,
                session_revoked: session.revoked_at.is_some(),
                owner: user.status(),
            };
            match judge_refresh(&judged, state.config.session_max_lifetime, now) {
                RefreshVerdict::Refuse => Ok(None),
                RefreshVerdict::Reused => {
                    revoke_for_reuse(conn, client, &session, now).await?;
                    Ok(None)
                }
                RefreshVerdict::Rotate => {
                    let session = rotate(conn, state, &presented, new_hash, session, now).await?;
                    Ok(Some((session, user)))
                }
            }
        })
        .await?;
    drop(conn);
    // Refused (after committing any revocation for reuse).
    let Some((session, user)) = rotated else {
        return Err(Error::Unauthenticated(INVALID_REFRESH_TOKEN));
    };
    issue(state, user, &session, new_token, now).await
}

/// A refresh token was presented twice: its session ends, audited.
async fn revoke_for_reuse(
    conn: &mut AsyncPgConnection,
    client: &ClientInfo,
    session: &SessionRow,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    store::sessions::revoke(conn, session.id, "refresh_token_reuse", now).await?;
    let event = NewEvent {
        event_type: EventType::TokenReuseDetected,
        actor: None,
        subject: Some(session.user_id),
        client_address: &client.address,
        details: json!({ "session_id": session.id }),
    };
    store::audit::record(conn, &event, now).await?;
    tracing::warn!(session_id = %session.id, "refresh token reused; session revoked");
    Ok(())
}

/// Marks the `presented` token used and stores its successor (`new_hash`); returns the session
/// as it now is (used now, expiring with the new token).
async fn rotate(
    conn: &mut AsyncPgConnection,
    state: &State,
    presented: &[u8],
    new_hash: Vec<u8>,
    session: SessionRow,
    now: DateTime<Utc>,
) -> Result<SessionRow, Error> {
    let expires_at = refresh_expiry(
        session.created_at,
        now,
        state.config.refresh_token_ttl,
        state.config.session_max_lifetime,
    );
    store::sessions::mark_rotated(conn, presented, now).await?;
    let next = RefreshTokenRow {
        token_hash: new_hash,
        session_id: session.id,
        issued_at: now,
        expires_at,
        rotated_at: None,
    };
    store::sessions::insert_token(conn, &next).await?;
    store::sessions::touch(conn, session.id, now, expires_at).await?;
    Ok(SessionRow {
        last_used_at: now,
        expires_at,
        ..session
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
                event_type: EventType::Logout,
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
                event_type: EventType::SessionRevoked,
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
