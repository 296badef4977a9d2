//! API keys: `CreateApiKey`, `ListApiKeys`, `RevokeApiKey` and the internal `VerifyApiKey`.
//! Secrets are `cmk_` plus 43 random base62 characters; only their SHA-256 is stored, with a
//! 12-character prefix to recognise them in lists.

pub mod cli;
pub mod domain;
pub mod store;
pub mod verifier;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{
    caller::hash_api_key,
    convert::{from_timestamp, timestamp, uuid},
    page,
};
use proto::auth::{
    CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest, ListApiKeysResponse,
    RevokeApiKeyRequest, RevokeApiKeyResponse, VerifyApiKeyRequest, VerifyApiKeyResponse,
};
use rand::rngs::OsRng;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use domain::Grantor;
use domain::{KeyRequest, MAX_UNREVOKED_KEYS_PER_USER};
use store::ApiKeyRow;
pub use store::revoke_all_for_user;

use crate::{
    State,
    accounts::{ClientInfo, UserStatus, client_address, sessions, users},
    error::Error,
    store::audit::{self, NewEvent},
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
        let owner = store::lock_owner(conn, user_id)
            .await?
            .filter(store::Owner::is_active)
            .ok_or(Error::Unauthenticated("the account is not active"))?;
        let key = domain::validate(request, &owner.roles, grantor, now)?;
        if store::count_unrevoked(conn, user_id).await? >= MAX_UNREVOKED_KEYS_PER_USER {
            return Err(Error::ResourceExhausted(format!(
                "at most {MAX_UNREVOKED_KEYS_PER_USER} unrevoked API keys per user; revoke one first"
            )));
        }
        let secret = domain::generate_secret(&mut OsRng);
        let row = ApiKeyRow {
            id: Uuid::now_v7(),
            user_id,
            name: key.name,
            prefix: domain::display_prefix(&secret),
            key_hash: hash_api_key(&secret).to_vec(),
            scopes: key.scopes.into_iter().map(Some).collect(),
            created_at: now,
            expires_at: key.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        store::insert(conn, &row).await?;
        let event = NewEvent {
            event_type: "api_key.created",
            actor: (grantor == Grantor::Owner).then_some(user_id),
            subject: Some(user_id),
            client_address,
            details: serde_json::json!({ "key_id": row.id, "scopes": row.scopes() }),
        };
        audit::record(conn, &event, now).await?;
        Ok((row, secret))
    })
    .await
}

fn to_proto(row: &ApiKeyRow) -> proto::auth::ApiKey {
    proto::auth::ApiKey {
        key_id: row.id.to_string(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        scopes: row.scopes(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: row.expires_at.map(timestamp),
        last_used_at: row.last_used_at.map(timestamp),
        revoked_at: row.revoked_at.map(timestamp),
    }
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
        let user = crate::store::users::find(&mut conn, user_id)
            .await?
            .filter(|user| user.status() == UserStatus::Active)
            .ok_or(Error::Unauthenticated("the account is not active"))?;
        let session = crate::store::sessions::find_of_user(&mut conn, user_id, session_id).await?;
        (user, session)
    };
    if user.email_verified_at.is_none() {
        return Err(Error::FailedPrecondition(
            "verify your email address before creating API keys".into(),
        ));
    }
    if !password.is_empty() {
        return users::confirm_password(state, client, &user, "password", password).await;
    }
    let window = state.config.api_key_reauth;
    if sessions::signed_in_within(session.as_ref(), window, state.clock.now()) {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "creating an API key needs a sign-in of the last {} minutes: sign in again, or send \
             your password in `password`",
            window.num_minutes()
        )))
    }
}

/// `CreateApiKey`: a signed-in user creates a key for themselves.
pub async fn create_api_key(
    state: &State,
    request: Request<CreateApiKeyRequest>,
) -> Result<Response<CreateApiKeyResponse>, Status> {
    let caller = state
        .credentials
        .authenticator
        .authenticate(&request)
        .await?;
    let session_id = caller.require_session()?;
    let client = ClientInfo::of(&request);
    let request = request.into_inner();
    let expires_at = request
        .expires_at
        .as_ref()
        .map(|at| from_timestamp("expires_at", at))
        .transpose()?;
    let key_request = KeyRequest {
        name: &request.name,
        scopes: &request.scopes,
        expires_at,
    };
    confirm_owner(
        state,
        &client,
        caller.user_id,
        session_id,
        &request.password,
    )
    .await?;
    let mut conn = state.pool.get().await.map_err(Error::from)?;
    let (row, secret) = create(
        &mut conn,
        caller.user_id,
        &key_request,
        Grantor::Owner,
        &client.address,
        state.clock.now(),
    )
    .await?;
    tracing::info!(key_id = %row.id, user_id = %row.user_id, "API key created");
    Ok(Response::new(CreateApiKeyResponse {
        api_key: Some(to_proto(&row)),
        secret,
    }))
}

/// `ListApiKeys`: the signed-in user's unrevoked keys, newest first.
pub async fn list_api_keys(
    state: &State,
    request: Request<ListApiKeysRequest>,
) -> Result<Response<ListApiKeysResponse>, Status> {
    let caller = state
        .credentials
        .authenticator
        .authenticate(&request)
        .await?;
    caller.require_session()?;
    let request = request.into_inner();
    let limit = page::page_size(request.page_size)?;
    // No filters: every token of this listing carries the same fingerprint.
    let after = page::decode_token(&request.page_token, "")?;
    let mut conn = state.pool.get().await.map_err(Error::from)?;
    let mut rows = store::list_unrevoked(&mut conn, caller.user_id, after, limit + 1)
        .await
        .map_err(Error::from)?;
    let next_page_token = page::next_token(&mut rows, limit, "", |row| page::Cursor {
        at: row.created_at,
        id: row.id,
    });
    Ok(Response::new(ListApiKeysResponse {
        api_keys: rows.iter().map(to_proto).collect(),
        next_page_token,
    }))
}

/// `RevokeApiKey`: the owner (signed in) or an admin revokes a key; idempotent. This process
/// refuses the key from now on.
pub async fn revoke_api_key(
    state: &State,
    request: Request<RevokeApiKeyRequest>,
) -> Result<Response<RevokeApiKeyResponse>, Status> {
    let caller = state
        .credentials
        .authenticator
        .authenticate(&request)
        .await?;
    if !caller.is_admin() {
        caller.require_session()?;
    }
    let key_id = uuid("key_id", &request.get_ref().key_id)?;
    let (caller_id, caller_is_admin) = (caller.user_id, caller.is_admin());
    let client_address = client_address(&request);
    let now = state.clock.now();
    let mut conn = state.pool.get().await.map_err(Error::from)?;
    let row = conn
        .transaction::<_, Error, _>(async move |conn| {
            let before = store::find(conn, key_id)
                .await?
                .filter(|row| row.user_id == caller_id || caller_is_admin)
                .ok_or(Error::NotFound("API key"))?;
            let row = store::revoke(conn, key_id, now)
                .await?
                .ok_or(Error::NotFound("API key"))?;
            if before.revoked_at.is_none() {
                let event = NewEvent {
                    event_type: "api_key.revoked",
                    actor: Some(caller_id),
                    subject: Some(row.user_id),
                    client_address: &client_address,
                    details: serde_json::json!({ "key_id": row.id }),
                };
                audit::record(conn, &event, now).await?;
            }
            Ok(row)
        })
        .await?;
    state.credentials.forget_key(key_id);
    tracing::info!(%key_id, by = %caller_id, "API key revoked");
    Ok(Response::new(RevokeApiKeyResponse {
        api_key: Some(to_proto(&row)),
    }))
}

/// `VerifyApiKey` (internal): a service resolves a client's key to its owner and scopes.
pub async fn verify_api_key(
    state: &State,
    request: Request<VerifyApiKeyRequest>,
) -> Result<Response<VerifyApiKeyResponse>, Status> {
    let caller = state
        .credentials
        .authenticator
        .authenticate(&request)
        .await?;
    caller.require_service()?;
    let key = request.into_inner().key;
    if key.is_empty() {
        return Err(Error::invalid("key", "is required").into());
    }
    let usable = state
        .credentials
        .api_keys
        .verify(&key, state.clock.now())
        .await?;
    Ok(Response::new(VerifyApiKeyResponse {
        user_id: usable.user_id.to_string(),
        key_id: usable.id.to_string(),
        scopes: usable.scopes.clone(),
        expires_at: usable.expires_at.map(timestamp),
        owner_roles: usable.owner_roles.clone(),
    }))
}
