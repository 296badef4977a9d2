//! Administration of accounts and the audit log: ListUsers, GetUser, UpdateUser, DeleteUser,
//! ListAuditEvents, and `auth-svc admin create`. The caller is an admin (checked by `api`).

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{caller::role, page};
use serde_json::json;
use uuid::Uuid;

use super::{State, registration};
use crate::{
    config::Config,
    domain::{
        ClientInfo, UserStatus,
        admin::{self, UserUpdate},
        audit::{AuditFilter, EventType},
        validate::{self, Registration},
    },
    error::Error,
    store::{
        self,
        audit::{AuditRow, NewEvent},
        users::{AdminChange, UserFilter, UserRow},
    },
};

/// A page of users matching `filter` and the next page token.
pub async fn list_users(
    state: &State,
    filter: &UserFilter,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<UserRow>, String), Error> {
    let limit = page::page_size(page_size)?;
    let filters = format!("users:{filter:?}");
    let after = page::decode_token(page_token, &filters)?;
    let mut conn = state.pool.get().await?;
    let mut rows = store::users::list(&mut conn, filter, after, limit + 1).await?;
    let next = page::next_token(&mut rows, limit, &filters, |row| page::Cursor {
        at: row.created_at,
        id: row.id,
    });
    Ok((rows, next))
}

pub async fn get_user(state: &State, user_id: Uuid) -> Result<UserRow, Error> {
    let mut conn = state.pool.get().await?;
    store::users::find(&mut conn, user_id)
        .await?
        .ok_or(Error::NotFound("user"))
}

/// UpdateUser: enables or disables an account (disabling ends its sessions) and sets its roles.
pub async fn update_user(
    state: &State,
    client: &ClientInfo,
    admin: Uuid,
    user_id: Uuid,
    update: &UserUpdate,
) -> Result<UserRow, Error> {
    admin::check_update(admin, user_id, update)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let (before, user) = conn
        .transaction::<_, Error, _>(async |conn| {
            let before = store::users::lock(conn, user_id)
                .await?
                .ok_or(Error::NotFound("user"))?;
            let user = apply_update(conn, client, admin, &before, update, now).await?;
            Ok((before, user))
        })
        .await?;
    // The owner's status and roles bound what their API keys may do: this process applies the
    // change at once, other services within their cache TTL.
    if user.status != before.status || user.roles() != before.roles() {
        state.credentials.forget_user_keys(user_id);
    }
    Ok(user)
}

/// Applies `update` by `admin` to the locked account `current`, audited; returns it as updated.
async fn apply_update(
    conn: &mut AsyncPgConnection,
    client: &ClientInfo,
    admin: Uuid,
    current: &UserRow,
    update: &UserUpdate,
    now: DateTime<Utc>,
) -> Result<UserRow, Error> {
    if current.status() == UserStatus::Deleted {
        return Err(Error::FailedPrecondition("the user is deleted".into()));
    }
    if let Some(roles) = &update.roles {
        admin::check_role_grant(&current.roles(), roles)?;
    }
    let status = update.status();
    let change = AdminChange {
        status: status.map(|status| status.as_str().to_owned()),
        roles: update
            .roles
            .as_ref()
            .map(|roles| roles.iter().cloned().map(Some).collect()),
        updated_at: now,
    };
    let user = store::users::update_admin(conn, current.id, &change).await?;
    if status == Some(UserStatus::Disabled) && current.status() == UserStatus::Active {
        store::sessions::revoke_all_of_user(conn, current.id, None, "user_disabled", now).await?;
    }
    let event = NewEvent {
        event_type: EventType::UserUpdated,
        actor: Some(admin),
        subject: Some(current.id),
        client_address: &client.address,
        details: json!({
            "status": { "from": current.status, "to": user.status },
            "roles": { "from": current.roles(), "to": user.roles() },
        }),
    };
    store::audit::record(conn, &event, now).await?;
    Ok(user)
}

/// Soft delete (idempotent): sessions and API keys revoked, email and username released.
pub async fn delete_user(
    state: &State,
    client: &ClientInfo,
    admin: Uuid,
    user_id: Uuid,
) -> Result<UserRow, Error> {
    if admin == user_id {
        return Err(Error::FailedPrecondition(
            "admins cannot delete themselves".into(),
        ));
    }
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let user = conn
        .transaction::<_, Error, _>(async |conn| {
            let current = store::users::lock(conn, user_id)
                .await?
                .ok_or(Error::NotFound("user"))?;
            if current.status() == UserStatus::Deleted {
                return Ok(current);
            }
            let user = store::users::mark_deleted(conn, user_id, now).await?;
            let sessions =
                store::sessions::revoke_all_of_user(conn, user_id, None, "user_deleted", now)
                    .await?;
            let keys = store::api_keys::revoke_all_for_user(conn, user_id, now).await?;
            let event = NewEvent {
                event_type: EventType::UserDeleted,
                actor: Some(admin),
                subject: Some(user_id),
                client_address: &client.address,
                details: json!({
                    "username": current.username,
                    "sessions_revoked": sessions,
                    "api_keys_revoked": keys.len(),
                }),
            };
            store::audit::record(conn, &event, now).await?;
            Ok(user)
        })
        .await?;
    state.credentials.forget_user_keys(user_id);
    Ok(user)
}

pub async fn list_audit_events(
    state: &State,
    filter: &AuditFilter,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<AuditRow>, String), Error> {
    let limit = page::page_size(page_size)?;
    let filters = format!("audit:{filter:?}");
    let after = page::decode_token(page_token, &filters)?;
    let mut conn = state.pool.get().await?;
    let mut rows = store::audit::list(&mut conn, filter, after, limit + 1).await?;
    let next = page::next_token(&mut rows, limit, &filters, |row| page::Cursor {
        at: row.occurred_at,
        id: row.id,
    });
    Ok((rows, next))
}

/// `auth-svc admin create`: an active admin with a verified email (the operator vouches for it).
pub async fn create_admin(
    conn: &mut AsyncPgConnection,
    config: &Config,
    email: &str,
    username: &str,
    display_name: Option<&str>,
    password: &str,
    now: DateTime<Utc>,
) -> Result<UserRow, Error> {
    let registration = Registration {
        email,
        username,
        password,
        display_name,
    };
    let valid = validate::registration(&registration, config.password_min_strength)?;
    let user = UserRow {
        id: Uuid::now_v7(),
        email: valid.email,
        username: valid.username,
        display_name: valid.display_name,
        password_hash: Some(config.hasher.hash(password.to_owned()).await?),
        roles: vec![Some(role::ADMIN.to_owned())],
        status: UserStatus::Active.as_str().into(),
        email_verified_at: Some(now),
        created_at: now,
        updated_at: now,
        last_login_at: None,
        deleted_at: None,
        pending_email: None,
    };
    conn.transaction::<_, Error, _>(async |conn| {
        store::users::insert(conn, &user)
            .await
            .map_err(registration::already_exists)?;
        let event = NewEvent {
            event_type: EventType::UserRegistered,
            actor: None,
            subject: Some(user.id),
            client_address: "",
            details: json!({ "username": user.username, "roles": [role::ADMIN], "via": "cli" }),
        };
        store::audit::record(conn, &event, now).await?;
        Ok(())
    })
    .await?;
    Ok(user)
}
