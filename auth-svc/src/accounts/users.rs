//! The account's own flows: Register, VerifyEmail, GetMe, UpdateMe, ChangePassword and the
//! password reset.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde_json::json;
use uuid::Uuid;

use super::{
    ClientInfo, UserStatus, password, secret,
    sessions::{begin_attempt, settle_attempt},
    validate,
};
use crate::{
    State, api_keys,
    error::Error,
    mailer::Mail,
    store::{
        self,
        audit::NewEvent,
        email_tokens::{EmailTokenRow, PASSWORD_RESET, VERIFY_EMAIL},
        users::{ProfileChange, UserRow},
    },
};

/// At most this many reset mails per account per hour; further requests still answer OK.
const MAX_RESET_MAILS_PER_HOUR: i64 = 3;

/// Register's input, unvalidated.
#[derive(Debug)]
pub struct Registration<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub display_name: &'a str,
}

pub(crate) fn already_exists(err: diesel::result::Error) -> Error {
    match store::users::conflicting_field(&err) {
        Some(field) => taken_error(field),
        None => err.into(),
    }
}

fn taken_error(field: &str) -> Error {
    match field {
        "email" => Error::AlreadyExists("email: already registered".into()),
        field => Error::AlreadyExists(format!("{field}: already taken")),
    }
}

/// A verification token for `email` (the account's, or the one it asks to change to) and the mail
/// carrying it there.
fn verification(
    state: &State,
    user: &UserRow,
    email: &str,
    now: DateTime<Utc>,
) -> (EmailTokenRow, Mail) {
    let (token, token_hash) = secret::new_token();
    let row = EmailTokenRow {
        token_hash,
        user_id: user.id,
        purpose: VERIFY_EMAIL.into(),
        email: email.to_owned(),
        created_at: now,
        expires_at: now + state.config.email_token_ttl,
        used_at: None,
    };
    let mail = Mail {
        to: email.to_owned(),
        subject: "Confirm your email address".into(),
        intro: format!(
            "Hello {}, please confirm your email address (the link is valid for 24 hours):",
            user.display_name
        ),
        link: format!("{}/verify-email?token={token}", state.config.public_url),
    };
    (row, mail)
}

/// Sends `mail` in the background: the answer must not wait for (or reveal) delivery.
fn send(state: &State, mail: Mail) {
    let mailer = state.mailer.clone();
    tokio::spawn(async move {
        let to = mail.to.clone();
        if let Err(err) = mailer.send(mail).await {
            tracing::error!(%to, %err, "mail not sent");
        }
    });
}

/// Register: validated, then limited (every attempt counts per address), then checked for a
/// taken email or username, and only then limited overall and hashed, so probes cost no argon2
/// run and cannot use up everyone's budget.
/// A taken email or username counts as a failed password attempt of the client address (the
/// budget logins share) and of that email, which bounds enumeration the way lockout bounds
/// guessing.
pub async fn register(
    state: &State,
    client: &ClientInfo,
    input: &Registration<'_>,
) -> Result<UserRow, Error> {
    let email = validate::email("email", input.email)?;
    let username = validate::username(input.username)?;
    let display_name = if input.display_name.trim().is_empty() {
        username.clone()
    } else {
        validate::display_name(input.display_name)?
    };
    password::check_policy(
        "password",
        input.password,
        &username,
        &email,
        state.config.password_min_strength,
    )?;
    let registration = admit_registration(state, client).await?;
    let key = format!(
        "registration:{}",
        hex::encode(secret::keyed_hash(&state.config.name_key, &email))
    );
    let attempt = begin_attempt(state, &key, None, client).await?;
    let taken = {
        let mut conn = state.pool.get().await?;
        store::users::taken_field(&mut conn, &email, &username).await?
    };
    settle_attempt(state, attempt, taken.is_none()).await?;
    if let Some(field) = taken {
        return Err(taken_error(field));
    }
    admit_hashing(state, registration).await?;
    // No connection is held while argon2 runs, so slow hashes cannot starve the pool.
    let hash = state.config.hasher.hash(input.password.to_owned()).await?;
    let now = state.clock.now();
    let user = UserRow {
        id: Uuid::now_v7(),
        email,
        username,
        display_name,
        password_hash: Some(hash),
        roles: Vec::new(),
        status: UserStatus::Active.as_str().into(),
        email_verified_at: None,
        created_at: now,
        updated_at: now,
        last_login_at: None,
        deleted_at: None,
        pending_email: None,
    };
    let (token, mail) = verification(state, &user, &user.email, now);
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        store::users::insert(conn, &user)
            .await
            .map_err(already_exists)?;
        store::email_tokens::insert(conn, &token).await?;
        let event = NewEvent {
            event_type: "user.registered",
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({ "username": user.username }),
        };
        store::audit::record(conn, &event, now).await?;
        Ok(())
    })
    .await?;
    send(state, mail);
    Ok(user)
}

/// Counts a registration attempt of `client` unless the address reached its hourly limit
/// (unknown addresses share no budget): `RESOURCE_EXHAUSTED` then. Returns the attempt's id.
async fn admit_registration(state: &State, client: &ClientInfo) -> Result<Uuid, Error> {
    let now = state.clock.now();
    let since = now - chrono::Duration::hours(1);
    let per_client = i64::from(state.config.registrations_per_client_hour);
    let address_key = client.limit_key();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if per_client > 0 && !address_key.is_empty() {
            store::registrations::lock(conn, Some(&address_key)).await?;
            let recent = store::registrations::count_since(conn, &address_key, since).await?;
            if recent >= per_client {
                return Err(Error::ResourceExhausted(
                    "too many registrations from this client; retry later".into(),
                ));
            }
        }
        Ok(store::registrations::record(conn, &address_key, now).await?)
    })
    .await
}

/// Lets attempt `attempt` hash its password unless everyone together reached the hourly limit of
/// hashing registrations (`RESOURCE_EXHAUSTED` then). Only attempts that get this far count, so
/// refused probes from many addresses cannot close sign-up for everyone.
async fn admit_hashing(state: &State, attempt: Uuid) -> Result<(), Error> {
    let overall = i64::from(state.config.registrations_per_hour);
    if overall == 0 {
        return Ok(());
    }
    let since = state.clock.now() - chrono::Duration::hours(1);
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        // Without the lock, concurrent registrations all count the same total and all pass.
        store::registrations::lock(conn, None).await?;
        if store::registrations::count_hashed_since(conn, since).await? >= overall {
            tracing::warn!(overall, "the hourly registration limit is reached");
            return Err(Error::ResourceExhausted(
                "too many registrations right now; retry later".into(),
            ));
        }
        Ok(store::registrations::mark_hashed(conn, attempt).await?)
    })
    .await
}

/// Consumes a single-use email token of `purpose`: `FAILED_PRECONDITION` when unknown, used or
/// expired.
async fn consume(
    conn: &mut diesel_async::AsyncPgConnection,
    purpose: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<EmailTokenRow, Error> {
    let row = store::email_tokens::lock(conn, purpose, &secret::hash(token))
        .await?
        .filter(|row| row.used_at.is_none() && row.expires_at > now)
        .ok_or_else(|| {
            Error::FailedPrecondition("the token is unknown, expired or already used".into())
        })?;
    store::email_tokens::mark_used(conn, &row.token_hash, now).await?;
    Ok(row)
}

pub async fn verify_email(
    state: &State,
    client: &ClientInfo,
    token: &str,
) -> Result<UserRow, Error> {
    let token = validate::required("token", token)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let row = consume(conn, VERIFY_EMAIL, token, now).await?;
        let user = store::users::lock(conn, row.user_id)
            .await?
            .filter(|user| user.status() != UserStatus::Deleted)
            .ok_or_else(no_longer_the_email)?;
        let user = if user.email == row.email {
            store::users::set_email_verified(conn, user.id, now).await?
        } else if user.pending_email.as_ref() == Some(&row.email) {
            // The new address is proven: only now does it become the account's email.
            store::users::adopt_pending_email(conn, user.id, &row.email, now)
                .await
                .map_err(already_exists)?
        } else {
            return Err(no_longer_the_email());
        };
        let event = NewEvent {
            event_type: "email.verified",
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({}),
        };
        store::audit::record(conn, &event, now).await?;
        Ok(user)
    })
    .await
}

fn no_longer_the_email() -> Error {
    Error::FailedPrecondition("the token is for an email the account no longer has".into())
}

/// The signed-in user's account; `UNAUTHENTICATED` once deleted.
pub async fn me(state: &State, user_id: Uuid) -> Result<UserRow, Error> {
    let mut conn = state.pool.get().await?;
    store::users::find(&mut conn, user_id)
        .await?
        .filter(|user| user.status() != UserStatus::Deleted)
        .ok_or(Error::Unauthenticated("the account no longer exists"))
}

/// UpdateMe's changes; `None` leaves a field unchanged.
#[derive(Debug)]
pub struct ProfileUpdate<'a> {
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    /// Required to change the email: an access token alone must not be enough to move the
    /// account (and its password resets) to another inbox.
    pub current_password: &'a str,
}

/// Checks `password` against `user`'s as one attempt of the account's lockout (a caller holding
/// only a stolen token cannot guess more freely here than at Login): `PERMISSION_DENIED` naming
/// `field` when wrong, `RESOURCE_EXHAUSTED` while locked.
pub(crate) async fn confirm_password(
    state: &State,
    client: &ClientInfo,
    user: &UserRow,
    field: &'static str,
    password: &str,
) -> Result<(), Error> {
    validate::required(field, password)?;
    let attempt = begin_attempt(state, &user.id.to_string(), Some(user.id), client).await?;
    let matches = state
        .config
        .hasher
        .verify(password.to_owned(), user.password_hash.clone())
        .await?;
    settle_attempt(state, attempt, matches).await?;
    if matches {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!("{field}: wrong password")))
    }
}

/// The notice to `user`'s old address that its email is now `new_email`: a takeover is then
/// not silent.
fn email_changed_notice(state: &State, user: &UserRow, new_email: &str) -> Mail {
    Mail {
        to: user.email.clone(),
        subject: "Your email address is being changed".into(),
        intro: format!(
            "Hello {}, someone signed in to your account {} asked to change its email address \
             to {new_email}; it changes once that address is confirmed. If you did this, there is \
             nothing to do. If you did not, someone knows your password: reset it at once.",
            user.display_name, user.username
        ),
        link: state.config.public_url.clone(),
    }
}

/// Applies `update`; returns the user and whether a verification mail was sent. A new email
/// needs the current password; the old address is told.
pub async fn update_me(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    update: &ProfileUpdate<'_>,
) -> Result<(UserRow, bool), Error> {
    let display_name = update
        .display_name
        .map(validate::display_name)
        .transpose()?;
    let email = update
        .email
        .map(|email| validate::email("email", email))
        .transpose()?;
    let mut password_confirmed = false;
    if let Some(email) = &email {
        let current = me(state, user_id).await?;
        if *email != current.email {
            confirm_password(
                state,
                client,
                &current,
                "current_password",
                update.current_password,
            )
            .await?;
            password_confirmed = true;
        }
    }
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let (user, mails) = conn
        .transaction::<_, Error, _>(async |conn| {
            let current = store::users::lock(conn, user_id)
                .await?
                .filter(|user| user.status() != UserStatus::Deleted)
                .ok_or(Error::Unauthenticated("the account no longer exists"))?;
            let asked_email = email.is_some();
            let new_email = email.filter(|email| *email != current.email);
            if new_email.is_some() && !password_confirmed {
                // Another UpdateMe changed the email between the check and this transaction.
                return Err(Error::FailedPrecondition(
                    "the email changed meanwhile; retry with current_password".into(),
                ));
            }
            // Whether another account holds the address is decided when its link is followed
            // (ALREADY_EXISTS then): answering here would tell anyone signed in which
            // addresses are registered.
            let change = ProfileChange {
                display_name,
                // Asking for the current email again cancels a pending change.
                pending_email: asked_email.then(|| new_email.clone()),
                updated_at: now,
            };
            let user = store::users::update_profile(conn, user_id, &change).await?;
            let mails = match &new_email {
                Some(new_email) => {
                    let (token, verify) = verification(state, &user, new_email, now);
                    store::email_tokens::insert(conn, &token).await?;
                    let event = NewEvent {
                        event_type: "email.changed",
                        actor: Some(user_id),
                        subject: Some(user_id),
                        client_address: &client.address,
                        details: json!({}),
                    };
                    store::audit::record(conn, &event, now).await?;
                    vec![verify, email_changed_notice(state, &current, new_email)]
                }
                None => Vec::new(),
            };
            Ok((user, mails))
        })
        .await?;
    let verification_sent = !mails.is_empty();
    for mail in mails {
        send(state, mail);
    }
    Ok((user, verification_sent))
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
                api_keys::revoke_all_for_user(conn, user_id, now).await?
            } else {
                Vec::new()
            };
            let event = NewEvent {
                event_type: "password.changed",
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
    let mail = conn
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
            let (token, token_hash) = secret::new_token();
            let row = EmailTokenRow {
                token_hash,
                user_id: user.id,
                purpose: PASSWORD_RESET.into(),
                email: user.email.clone(),
                created_at: now,
                expires_at: now + state.config.reset_token_ttl,
                used_at: None,
            };
            store::email_tokens::insert(conn, &row).await?;
            let event = NewEvent {
                event_type: "password.reset_requested",
                actor: None,
                subject: Some(user.id),
                client_address: &client.address,
                details: json!({}),
            };
            store::audit::record(conn, &event, now).await?;
            Ok(Some(Mail {
                to: user.email,
                subject: "Reset your password".into(),
                intro: "Someone asked to reset your password. If it was you, follow this link \
                        within 30 minutes; otherwise ignore this mail:"
                    .into(),
                link: format!("{}/reset-password?token={token}", state.config.public_url),
            }))
        })
        .await?;
    if let Some(mail) = mail {
        send(state, mail);
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
            let row = consume(conn, PASSWORD_RESET, token, now).await?;
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
            let keys = api_keys::revoke_all_for_user(conn, row.user_id, now).await?;
            let links_revoked =
                store::email_tokens::use_up(conn, row.user_id, PASSWORD_RESET, now).await?;
            let event = NewEvent {
                event_type: "password.reset",
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
