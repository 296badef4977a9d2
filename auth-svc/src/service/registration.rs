//! Register: validated, then limited (every attempt counts per address), then checked for a
//! taken email or username, and only then limited overall and hashed, so probes cost no argon2
//! run and cannot use up everyone's budget. A taken email or username counts as a failed
//! password attempt of the client address (the budget logins share) and of that email, which
//! bounds enumeration the way lockout bounds guessing.

use diesel_async::AsyncConnection;
use serde_json::json;
use uuid::Uuid;

use super::{State, attempts, mail};
use crate::{
    domain::{
        ClientInfo, UserStatus,
        audit::EventType,
        sessions::registration_key,
        validate::{self, Registration, ValidRegistration},
    },
    error::Error,
    store::{self, audit::NewEvent, users::UserRow},
};

/// Creates an account from `input` and mails its verification link.
pub async fn register(
    state: &State,
    client: &ClientInfo,
    input: &Registration<'_>,
) -> Result<UserRow, Error> {
    let valid = validate::registration(input, state.config.password_min_strength)?;
    let registration = admit_registration(state, client).await?;
    check_not_taken(state, client, &valid).await?;
    admit_hashing(state, registration).await?;
    // No connection is held while argon2 runs, so slow hashes cannot starve the pool.
    let hash = state.config.hasher.hash(input.password.to_owned()).await?;
    let now = state.clock.now();
    let user = UserRow {
        id: Uuid::now_v7(),
        email: valid.email,
        username: valid.username,
        display_name: valid.display_name,
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
    let (token, verification) = mail::verification(state, &user, &user.email, now);
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        store::users::insert(conn, &user)
            .await
            .map_err(already_exists)?;
        store::email_tokens::insert(conn, &token).await?;
        let event = NewEvent {
            event_type: EventType::UserRegistered,
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({ "username": user.username }),
        };
        Ok(store::audit::record(conn, &event, now).await?)
    })
    .await?;
    mail::send(state, verification);
    Ok(user)
}

/// `ALREADY_EXISTS` when a non-deleted account holds the email or username; either way one
/// attempt of the email's lockout key, failed when taken.
async fn check_not_taken(
    state: &State,
    client: &ClientInfo,
    valid: &ValidRegistration,
) -> Result<(), Error> {
    let key = registration_key(&state.config.name_key, &valid.email);
    let attempt = attempts::begin(state, &key, None, client).await?;
    let taken = {
        let mut conn = state.pool.get().await?;
        store::users::taken_field(&mut conn, &valid.email, &valid.username).await?
    };
    attempts::settle(state, attempt, taken.is_none()).await?;
    taken.map_or(Ok(()), |field| Err(taken_error(field)))
}

/// The error of a statement that collided with another account's email or username.
pub fn already_exists(err: diesel::result::Error) -> Error {
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
