//! API keys: CreateApiKey, ListApiKeys, RevokeApiKey, the internal VerifyApiKey, and the keys of
//! service accounts (`auth-svc service-key issue`). Secrets are `cmk_` plus 43 random base62
//! characters; only their SHA-256 is stored, with a 12-character prefix to recognise them in lists.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{
    caller::{hash_api_key, role},
    page,
};
use rand::rngs::OsRng;
use uuid::Uuid;

use std::sync::Arc;

use super::{State, passwords};
use crate::{
    domain::{
        ClientInfo, UserStatus,
        api_key::{self, Grantor, KeyRequest, MAX_UNREVOKED_KEYS_PER_USER},
        audit::EventType,
        sessions::signed_in_within,
        validate::SERVICE_EMAIL_DOMAIN,
    },
    error::Error,
    store::{
        self,
        api_keys::{ApiKeyRow, Owner, UsableKey},
        audit::NewEvent,
    },
};

/// Creates a key for `user_id` at `now` in one transaction with its audit event (the owner's
/// row is locked, so the per-user limit holds under concurrency); returns the stored row and the
/// secret.
pub async fn create(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    request: &KeyRequest<'_>,
    grantor: Grantor,
    client_address: &str,
    now: DateTime<Utc>,
) -> Result<(ApiKeyRow, String), Error> {
    conn.transaction::<_, Error, _>(async move |conn| {
        let owner = store::api_keys::lock_owner(conn, user_id)
            .await?
            .filter(Owner::is_active)
            .ok_or(Error::Unauthenticated("the account is not active"))?;
        let key = api_key::validate(request, &owner.roles, grantor, now)?;
        if store::api_keys::count_unrevoked(conn, user_id).await? >= MAX_UNREVOKED_KEYS_PER_USER {
            return Err(Error::ResourceExhausted(format!(
                "at most {MAX_UNREVOKED_KEYS_PER_USER} unrevoked API keys per user; revoke one first"
            )));
        }
        let secret = api_key::generate_secret(&mut OsRng);
        let row = ApiKeyRow {
            id: Uuid::now_v7(),
            user_id,
            name: key.name,
            prefix: api_key::display_prefix(&secret),
            key_hash: hash_api_key(&secret).to_vec(),
            scopes: key.scopes.into_iter().map(Some).collect(),
            created_at: now,
            expires_at: key.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        store::api_keys::insert(conn, &row).await?;
        let event = NewEvent {
            event_type: EventType::ApiKeyCreated,
            actor: (grantor == Grantor::Owner).then_some(user_id),
            subject: Some(user_id),
            client_address,
            details: serde_json::json!({ "key_id": row.id, "scopes": row.scopes() }),
        };
        store::audit::record(conn, &event, now).await?;
        Ok((row, secret))
    })
    .await
}

/// A key outlives sessions and password changes, so only a proven owner may mint one: the email
/// is verified, and the caller signed in within the configured minutes or sends the password
/// (checked as ChangePassword checks the old one, towards lockout).
async fn confirm_owner(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    session_id: Uuid,
    password: &str,
) -> Result<(), Error> {
    let (user, session) = {
        let mut conn = state.pool.get().await?;
        let user = store::users::find(&mut conn, user_id)
            .await?
            .filter(|user| user.status() == UserStatus::Active)
            .ok_or(Error::Unauthenticated("the account is not active"))?;
        let session = store::sessions::find_of_user(&mut conn, user_id, session_id).await?;
        (user, session)
    };
    if user.email_verified_at.is_none() {
        return Err(Error::FailedPrecondition(
            "verify your email address before creating API keys".into(),
        ));
    }
    if !password.is_empty() {
        return passwords::confirm_password(state, client, &user, "password", password).await;
    }
    let window = state.config.api_key_reauth;
    let signed_in_at = session
        .filter(|session| session.revoked_at.is_none())
        .map(|session| session.created_at);
    if signed_in_within(signed_in_at, window, state.clock.now()) {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "creating an API key needs a sign-in of the last {} minutes: sign in again, or send \
             your password in `password`",
            window.num_minutes()
        )))
    }
}

/// CreateApiKey: the signed-in user `user_id` (in session `session_id`) creates a key for
/// themselves, once they prove they own the account; returns the stored row and the secret.
pub async fn create_for_owner(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    session_id: Uuid,
    request: &KeyRequest<'_>,
    password: &str,
) -> Result<(ApiKeyRow, String), Error> {
    confirm_owner(state, client, user_id, session_id, password).await?;
    let mut conn = state.pool.get().await?;
    let (row, secret) = create(
        &mut conn,
        user_id,
        request,
        Grantor::Owner,
        &client.address,
        state.clock.now(),
    )
    .await?;
    tracing::info!(key_id = %row.id, user_id = %row.user_id, "API key created");
    Ok((row, secret))
}

/// A page of `user_id`'s unrevoked keys, newest first, and the next page token.
pub async fn list(
    state: &State,
    user_id: Uuid,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<ApiKeyRow>, String), Error> {
    let limit = page::page_size(page_size)?;
    // No filters: every token of this listing carries the same fingerprint.
    let after = page::decode_token(page_token, "")?;
    let mut conn = state.pool.get().await?;
    let mut rows = store::api_keys::list_unrevoked(&mut conn, user_id, after, limit + 1).await?;
    let next = page::next_token(&mut rows, limit, "", |row| page::Cursor {
        at: row.created_at,
        id: row.id,
    });
    Ok((rows, next))
}

/// RevokeApiKey: the owner or an admin (`caller_is_admin`) revokes a key; idempotent, audited
/// once. This process refuses the key from now on.
pub async fn revoke(
    state: &State,
    client: &ClientInfo,
    caller_id: Uuid,
    caller_is_admin: bool,
    key_id: Uuid,
) -> Result<ApiKeyRow, Error> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            let before = store::api_keys::find(conn, key_id)
                .await?
                .filter(|row| row.user_id == caller_id || caller_is_admin)
                .ok_or(Error::NotFound("API key"))?;
            let row = store::api_keys::revoke(conn, key_id, now)
                .await?
                .ok_or(Error::NotFound("API key"))?;
            if before.revoked_at.is_none() {
                let event = NewEvent {
                    event_type: EventType::ApiKeyRevoked,
                    actor: Some(caller_id),
                    subject: Some(row.user_id),
                    client_address: &client.address,
                    details: serde_json::json!({ "key_id": row.id }),
                };
                store::audit::record(conn, &event, now).await?;
            }
            Ok(row)
        })
        .await?;
    state.credentials.forget_key(key_id);
    tracing::info!(%key_id, by = %caller_id, "API key revoked");
    Ok(row)
}

/// VerifyApiKey: the owner and scopes of a usable `key`.
pub async fn verify(state: &State, key: &str) -> Result<Arc<UsableKey>, Error> {
    if key.is_empty() {
        return Err(Error::invalid("key", "is required"));
    }
    state
        .credentials
        .api_keys
        .verify(key, state.clock.now())
        .await
}

/// `service-key issue`: a key with `scopes` for the service account `username` (from
/// [`api_key::service_account_name`]; created if missing), optionally revoking its earlier keys,
/// in one transaction. Returns the key's row, its secret and how many keys were revoked.
pub async fn issue_service_key(
    conn: &mut AsyncPgConnection,
    username: &str,
    scopes: &[String],
    revoke_previous: bool,
    now: DateTime<Utc>,
) -> Result<(ApiKeyRow, String, usize), Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        let user_id = ensure_service_account(conn, username, now).await?;
        let revoked = if revoke_previous {
            store::api_keys::revoke_all_for_user(conn, user_id, now).await?
        } else {
            Vec::new()
        };
        let request = KeyRequest {
            name: &format!("{username} service key"),
            scopes,
            expires_at: None,
        };
        let (row, secret) = create(conn, user_id, &request, Grantor::Operator, "", now).await?;
        Ok((row, secret, revoked.len()))
    })
    .await
}

/// The id of service account `username`, created (active, role `service`, no password) if
/// missing; an existing account of that name must hold the `service` role.
async fn ensure_service_account(
    conn: &mut AsyncPgConnection,
    username: &str,
    now: DateTime<Utc>,
) -> Result<Uuid, Error> {
    let email = format!("{username}@{SERVICE_EMAIL_DOMAIN}");
    store::api_keys::insert_service_account(conn, username, &email, now).await?;
    let (id, owner) = store::api_keys::find_by_username(conn, username)
        .await?
        .ok_or_else(|| Error::Internal(format!("service account {username} vanished")))?;
    if !owner.roles.iter().any(|held| held == role::SERVICE) || !owner.is_active() {
        return Err(Error::PermissionDenied(format!(
            "{username} exists but is not an active service account"
        )));
    }
    Ok(id)
}
