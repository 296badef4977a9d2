//! auth-svc's rows as the contract's messages.

use kit::convert::timestamp;
use proto::auth as pb;
use uuid::Uuid;

use crate::{
    domain::UserStatus,
    service::sessions::Tokens,
    store::{api_keys::ApiKeyRow, audit::AuditRow, sessions::SessionRow, users::UserRow},
};

pub fn user_status(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Disabled => pb::UserStatus::Disabled,
        UserStatus::Deleted => pb::UserStatus::Deleted,
    }
}

pub fn user(row: &UserRow) -> pb::User {
    pb::User {
        user_id: row.id.to_string(),
        email: row.email.clone(),
        email_verified: row.email_verified_at.is_some(),
        username: row.username.clone(),
        display_name: row.display_name.clone(),
        roles: row.roles(),
        status: user_status(row.status()).into(),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        last_login_at: row.last_login_at.map(timestamp),
        pending_email: row.pending_email.clone().unwrap_or_default(),
    }
}

pub fn session(row: &SessionRow, current: Uuid) -> pb::Session {
    pb::Session {
        session_id: row.id.to_string(),
        created_at: Some(timestamp(row.created_at)),
        last_used_at: Some(timestamp(row.last_used_at)),
        expires_at: Some(timestamp(row.expires_at)),
        client_address: row.client_address.clone(),
        user_agent: row.user_agent.clone(),
        current: row.id == current,
    }
}

pub fn audit_event(row: &AuditRow) -> pb::AuditEvent {
    let id = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    pb::AuditEvent {
        event_id: row.id.to_string(),
        event_type: row.event_type.clone(),
        occurred_at: Some(timestamp(row.occurred_at)),
        actor_user_id: id(row.actor_user_id),
        subject_user_id: id(row.subject_user_id),
        client_address: row.client_address.clone(),
        details: kit::json::to_struct(row.details.clone()),
    }
}

/// The fields Login and Refresh responses share: access token and expiry, refresh token and
/// expiry, user.
pub type TokenFields = (
    String,
    Option<prost_types::Timestamp>,
    String,
    Option<prost_types::Timestamp>,
    Option<pb::User>,
);

pub fn tokens(tokens: Tokens) -> TokenFields {
    (
        tokens.access_token,
        Some(timestamp(tokens.access_token_expires_at)),
        tokens.refresh_token,
        Some(timestamp(tokens.refresh_token_expires_at)),
        Some(user(&tokens.user)),
    )
}

pub fn api_key(row: &ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
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

/// The status ListUsers filters by; `None` for any.
pub fn status_filter(status: i32) -> Option<Option<UserStatus>> {
    match pb::UserStatus::try_from(status) {
        Ok(pb::UserStatus::Unspecified) => Some(None),
        Ok(pb::UserStatus::Active) => Some(Some(UserStatus::Active)),
        Ok(pb::UserStatus::Disabled) => Some(Some(UserStatus::Disabled)),
        Ok(pb::UserStatus::Deleted) => Some(Some(UserStatus::Deleted)),
        Err(_) => None,
    }
}
