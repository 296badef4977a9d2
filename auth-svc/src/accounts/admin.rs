//! Administration of accounts and the audit log: ListUsers, GetUser, UpdateUser, DeleteUser,
//! ListAuditEvents. The caller is an admin (checked by the handler).

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use kit::{caller::role, page};
use serde_json::json;
use uuid::Uuid;

use super::{ClientInfo, UserStatus};
use crate::{
    State,
    error::Error,
    store::{
        self,
        audit::{AuditFilter, AuditRow, NewEvent},
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

/// The validated, de-duplicated role list of UpdateUser.
pub fn parse_roles(roles: &[String]) -> Result<Vec<String>, Error> {
    let mut parsed: Vec<String> = Vec::new();
    for role in roles {
        if !role::ALL.contains(&role.as_str()) {
            return Err(Error::invalid(
                "roles",
                format!("unknown role {role:?} (known: {})", role::ALL.join(", ")),
            ));
        }
        if !parsed.contains(role) {
            parsed.push(role.clone());
        }
    }
    parsed.sort();
    Ok(parsed)
}

/// UpdateUser's changes; `None` leaves a field unchanged.
#[derive(Debug)]
pub struct UserUpdate {
    pub active: Option<bool>,
    pub roles: Option<Vec<String>>,
}

/// Admins may not lock themselves out.
pub fn check_self_update(admin: Uuid, user_id: Uuid, update: &UserUpdate) -> Result<(), Error> {
    if admin != user_id {
        return Ok(());
    }
    if update.active == Some(false) {
        return Err(Error::FailedPrecondition(
            "admins cannot disable themselves".into(),
        ));
    }
    if update
        .roles
        .as_ref()
        .is_some_and(|roles| !roles.iter().any(|r| r == role::ADMIN))
    {
        return Err(Error::FailedPrecondition(
            "admins cannot remove their own admin role".into(),
        ));
    }
    Ok(())
}

/// The `service` role is granted by `auth-svc service-key issue` alone (service = a service
/// account's key): UpdateUser may keep it on an account holding it, or take it away, never give it.
pub fn check_role_grant(current: &[String], requested: &[String]) -> Result<(), Error> {
    let holds = |roles: &[String]| roles.iter().any(|r| r == role::SERVICE);
    if holds(requested) && !holds(current) {
        return Err(Error::PermissionDenied(
            "roles: the service role is granted only by `auth-svc service-key issue`".into(),
        ));
    }
    Ok(())
}

pub async fn update_user(
    state: &State,
    client: &ClientInfo,
    admin: Uuid,
    user_id: Uuid,
    update: &UserUpdate,
) -> Result<UserRow, Error> {
    if update.active.is_none() && update.roles.is_none() {
        return Err(Error::invalid(
            "active",
            "set `active` or `roles` (or both)",
        ));
    }
    check_self_update(admin, user_id, update)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let (user, keys_affected) = conn
        .transaction::<_, Error, _>(async |conn| {
            let current = store::users::lock(conn, user_id)
                .await?
                .ok_or(Error::NotFound("user"))?;
            if current.status() == UserStatus::Deleted {
                return Err(Error::FailedPrecondition("the user is deleted".into()));
            }
            if let Some(roles) = &update.roles {
                check_role_grant(&current.roles(), roles)?;
            }
            let status = update.active.map(|active| {
                if active {
                    UserStatus::Active
                } else {
                    UserStatus::Disabled
                }
            });
            let change = AdminChange {
                status: status.map(|status| status.as_str().to_owned()),
                roles: update
                    .roles
                    .as_ref()
                    .map(|roles| roles.iter().cloned().map(Some).collect()),
                updated_at: now,
            };
            let user = store::users::update_admin(conn, user_id, &change).await?;
            let disabled =
                status == Some(UserStatus::Disabled) && current.status() == UserStatus::Active;
            if disabled {
                store::sessions::revoke_all_of_user(conn, user_id, None, "user_disabled", now)
                    .await?;
            }
            let event = NewEvent {
                event_type: "user.updated",
                actor: Some(admin),
                subject: Some(user_id),
                client_address: &client.address,
                details: json!({
                    "status": { "from": current.status, "to": user.status },
                    "roles": { "from": current.roles(), "to": user.roles() },
                }),
            };
            store::audit::record(conn, &event, now).await?;
            // The owner's status and roles bound what their API keys may do.
            let keys_affected = user.status != current.status || user.roles() != current.roles();
            Ok((user, keys_affected))
        })
        .await?;
    // So that this process applies the change at once; other services within their cache TTL.
    if keys_affected {
        state.credentials.forget_user_keys(user_id);
    }
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
            let keys = crate::api_keys::store::revoke_all_for_user(conn, user_id, now).await?;
            let event = NewEvent {
                event_type: "user.deleted",
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

/// ListAuditEvents' filters, validated: `from` must be before `to`.
pub fn audit_filter(
    subject: Option<Uuid>,
    event_type: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<AuditFilter, Error> {
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(Error::invalid("from", "must be before `to`"));
    }
    if event_type.chars().count() > 64 {
        return Err(Error::invalid(
            "event_type",
            "must be at most 64 characters",
        ));
    }
    Ok(AuditFilter {
        subject,
        event_type: Some(event_type.to_owned()).filter(|t| !t.is_empty()),
        from,
        to,
    })
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
    conn: &mut diesel_async::AsyncPgConnection,
    config: &super::Config,
    email: &str,
    username: &str,
    display_name: Option<&str>,
    password: &str,
    now: DateTime<Utc>,
) -> Result<UserRow, Error> {
    let email = super::validate::email("email", email)?;
    let username = super::validate::username(username)?;
    let display_name = display_name
        .map(super::validate::display_name)
        .transpose()?
        .unwrap_or_else(|| username.clone());
    super::password::check_policy(
        "password",
        password,
        &username,
        &email,
        config.password_min_strength,
    )?;
    let user = UserRow {
        id: Uuid::now_v7(),
        email,
        username,
        display_name,
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
            .map_err(super::users::already_exists)?;
        let event = NewEvent {
            event_type: "user.registered",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_known_and_deduplicated() {
        let roles = parse_roles(&["admin".into(), "admin".into()]).ok();
        assert_eq!(roles, Some(vec!["admin".to_owned()]));
        assert!(matches!(
            parse_roles(&["root".into()]),
            Err(Error::InvalidField(kit::error::FieldError {
                field: "roles",
                ..
            }))
        ));
    }

    #[test]
    fn admins_cannot_lock_themselves_out() {
        let me = Uuid::now_v7();
        let other = Uuid::now_v7();
        let disable = UserUpdate {
            active: Some(false),
            roles: None,
        };
        let demote = UserUpdate {
            active: None,
            roles: Some(Vec::new()),
        };
        assert!(check_self_update(me, other, &disable).is_ok());
        assert!(check_self_update(me, me, &disable).is_err());
        assert!(check_self_update(me, me, &demote).is_err());
    }

    #[test]
    fn the_service_role_is_kept_or_removed_but_never_granted() {
        let none: Vec<String> = Vec::new();
        let admin = vec![role::ADMIN.to_owned()];
        let service = vec![role::SERVICE.to_owned()];
        let both = vec![role::ADMIN.to_owned(), role::SERVICE.to_owned()];
        assert!(matches!(
            check_role_grant(&admin, &both),
            Err(Error::PermissionDenied(_))
        ));
        assert!(check_role_grant(&none, &service).is_err());
        assert!(check_role_grant(&service, &both).is_ok());
        assert!(check_role_grant(&service, &none).is_ok());
        assert!(check_role_grant(&none, &admin).is_ok());
    }

    #[test]
    fn audit_ranges_must_be_ordered() {
        let now = Utc::now();
        assert!(audit_filter(None, "", Some(now), Some(now)).is_err());
        assert!(audit_filter(None, "login.failed", None, Some(now)).is_ok());
    }
}
