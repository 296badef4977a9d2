//! Passwords: checking one under the lockout rule, ChangePassword and the password reset.

use diesel_async::AsyncConnection;
use serde_json::json;
use uuid::Uuid;

use super::{State, attempts, mail};
use crate::{
    domain::{ClientInfo, UserStatus, audit::EventType, password, validate},
    error::Error,
    store::{self, audit::NewEvent, email_tokens::PASSWORD_RESET, users::UserRow},
};

/// At most this many reset mails per account per hour; further requests still answer OK.
const MAX_RESET_MAILS_PER_HOUR: i64 = 3;

/// Checks `password` against `user`'s as one attempt of the account's lockout (a caller holding
/// only a stolen token cannot guess more freely here than at Login): `PERMISSION_DENIED` naming
/// `field` when wrong, `RESOURCE_EXHAUSTED` while locked.
pub async fn confirm_password(
    state: &State,
    client: &ClientInfo,
    user: &UserRow,
    field: &'static str,
    password: &str,
) -> Result<(), Error> {
    validate::required(field, password)?;
    let attempt = attempts::begin(state, &user.id.to_string(), Some(user.id), client).await?;
    let matches = state
        .config
        .hasher
        .verify(password.to_owned(), user.password_hash.clone())
        .await?;
    attempts::settle(state, attempt, matches).await?;
    if matches {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!("{field}: wrong password")))
    }
}

/// ChangePassword: needs the old password (wrong ones count towards lockout); revokes every
/// session but `session_id` and every unused reset link, and the API keys if asked.
pub async fn change_password(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    session_id: Uuid,
    old_password: &str,
    new_password: &str,
    revoke_api_keys: bool,
) -> Result<(), Error> {
    let user = {
        let mut conn = state.pool.get().await?;
        store::users::find(&mut conn, user_id)
            .await?
            .filter(|user| user.status() == UserStatus::Active)
            .ok_or(Error::Unauthenticated("the account is not active"))?
    };
    confirm_password(state, client, &user, "old_password", old_password).await?;
    let now = state.clock.now();
    let new_hash = new_password_hash(state, &user, new_password).await?;
    let mut conn = state.pool.get().await?;
    let keys_revoked = conn
        .transaction::<_, Error, _>(async |conn| {
            store::users::set_password(conn, user_id, &new_hash, now).await?;
            let revoked = store::sessions::revoke_all_of_user(
                conn,
                user_id,
                Some(session_id),
                "password_changed",
                now,
            )
            .await?;
            let links_revoked =
                store::email_tokens::use_up(conn, user_id, PASSWORD_RESET, now).await?;
            let keys = if revoke_api_keys {
                store::api_keys::revoke_all_for_user(conn, user_id, now).await?
            } else {
                Vec::new()
            };
            let event = NewEvent {
                event_type: EventType::PasswordChanged,
                actor: Some(user_id),
                subject: Some(user_id),
                client_address: &client.address,
                details: json!({
                    "sessions_revoked": revoked,
                    "reset_links_revoked": links_revoked,
                    "api_keys_revoked": keys.len(),
                }),
            };
            store::audit::record(conn, &event, now).await?;
            Ok(!keys.is_empty())
        })
        .await?;
    if keys_revoked {
        state.credentials.forget_user_keys(user_id);
    }
    Ok(())
}

/// RequestPasswordReset: mails a reset link if an active account has `email` and it may receive
/// one (see [`store::users::find_resettable_by_email`]); answers the same either way.
pub async fn request_password_reset(
    state: &State,
    client: &ClientInfo,
    email: &str,
) -> Result<(), Error> {
    let email = validate::email("email", email)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let reset = conn
        .transaction::<_, Error, _>(async |conn| {
            let Some(user) = store::users::find_resettable_by_email(conn, &email).await? else {
                return Ok(None);
            };
            let recent = store::email_tokens::count_since(
                conn,
                user.id,
                PASSWORD_RESET,
                now - chrono::Duration::hours(1),
            )
            .await?;
            if recent >= MAX_RESET_MAILS_PER_HOUR {
                return Ok(None);
            }
            let (row, reset) = mail::password_reset(state, &user, now);
            store::email_tokens::insert(conn, &row).await?;
            let event = NewEvent {
                event_type: EventType::PasswordResetRequested,
                actor: None,
                subject: Some(user.id),
                client_address: &client.address,
                details: json!({}),
            };
            store::audit::record(conn, &event, now).await?;
            Ok(Some(reset))
        })
        .await?;
    if let Some(reset) = reset {
        mail::send(state, reset);
    }
    Ok(())
}

/// The hash of `new_password` for `user`, if it passes the password rules (`new_password`
/// names the field in the error).
async fn new_password_hash(
    state: &State,
    user: &UserRow,
    new_password: &str,
) -> Result<String, Error> {
    password::check_policy(
        "new_password",
        new_password,
        &user.username,
        &user.email,
        state.config.password_min_strength,
    )?;
    state.config.hasher.hash(new_password.to_owned()).await
}

/// ConfirmPasswordReset: sets the password, marks the email verified, revokes every session,
/// API key and other reset link: whoever held the account before the owner proved the inbox
/// keeps nothing.
pub async fn confirm_password_reset(
    state: &State,
    client: &ClientInfo,
    token: &str,
    new_password: &str,
) -> Result<(), Error> {
    let token = validate::required("token", token)?;
    validate::required("new_password", new_password)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    // One transaction: a new password failing the policy rolls back, so the token stays usable.
    let user_id = conn
        .transaction::<_, Error, _>(async |conn| {
            let row = mail::consume_token(conn, PASSWORD_RESET, token, now).await?;
            let user = store::users::lock(conn, row.user_id)
                .await?
                .filter(|user| user.status() == UserStatus::Active)
                .ok_or_else(|| {
                    Error::FailedPrecondition(
                        "the token is unknown, expired or already used".into(),
                    )
                })?;
            let hash = new_password_hash(state, &user, new_password).await?;
            store::users::set_password(conn, row.user_id, &hash, now).await?;
            if user.email == row.email && user.email_verified_at.is_none() {
                store::users::set_email_verified(conn, row.user_id, now).await?;
            }
            let revoked =
                store::sessions::revoke_all_of_user(conn, row.user_id, None, "password_reset", now)
                    .await?;
            let keys = store::api_keys::revoke_all_for_user(conn, row.user_id, now).await?;
            let links_revoked =
                store::email_tokens::use_up(conn, row.user_id, PASSWORD_RESET, now).await?;
            let event = NewEvent {
                event_type: EventType::PasswordReset,
                actor: Some(row.user_id),
                subject: Some(row.user_id),
                client_address: &client.address,
                details: json!({
                    "sessions_revoked": revoked,
                    "api_keys_revoked": keys.len(),
                    "reset_links_revoked": links_revoked,
                }),
            };
            store::audit::record(conn, &event, now).await?;
            Ok(row.user_id)
        })
        .await?;
    state.credentials.forget_user_keys(user_id);
    Ok(())
}
