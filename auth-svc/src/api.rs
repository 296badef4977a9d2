//! The tonic implementation of `AuthService`: decode the request, authenticate and authorize the
//! caller, call the domain function, map the result. The keys half's RPCs delegate to `keys` and
//! `api_keys`.

use kit::{
    caller::Caller,
    convert::{from_timestamp, timestamp, uuid},
};
use proto::auth::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use crate::{
    State,
    accounts::{
        ClientInfo, UserStatus,
        admin::{self, UserUpdate},
        sessions::{self, Tokens},
        users::{self, ProfileUpdate, Registration},
    },
    api_keys,
    error::Error,
    keys,
    store::{audit::AuditRow, sessions::SessionRow, users::UserFilter, users::UserRow},
};

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct Api {
    state: State,
}

impl Api {
    pub fn new(state: State) -> Self {
        Self { state }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.state
            .credentials
            .authenticator
            .authenticate(request)
            .await
    }

    /// A signed-in user (API keys refused) and their session.
    async fn session<T>(&self, request: &Request<T>) -> Result<(Caller, uuid::Uuid), Status> {
        let caller = self.caller(request).await?;
        let session = caller.require_session()?;
        Ok((caller, session))
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.caller(request).await?;
        caller.require_admin()?;
        Ok(caller)
    }
}

fn user_status(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Disabled => pb::UserStatus::Disabled,
        UserStatus::Deleted => pb::UserStatus::Deleted,
    }
}

fn user(row: &UserRow) -> pb::User {
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

fn session(row: &SessionRow, current: uuid::Uuid) -> pb::Session {
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

fn audit_event(row: &AuditRow) -> pb::AuditEvent {
    let id = |id: Option<uuid::Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
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
type TokenFields = (
    String,
    Option<prost_types::Timestamp>,
    String,
    Option<prost_types::Timestamp>,
    Option<pb::User>,
);

fn tokens(tokens: Tokens) -> TokenFields {
    (
        tokens.access_token,
        Some(timestamp(tokens.access_token_expires_at)),
        tokens.refresh_token,
        Some(timestamp(tokens.refresh_token_expires_at)),
        Some(user(&tokens.user)),
    )
}

const TOKEN_TYPE: &str = "Bearer";

#[tonic::async_trait]
impl AuthService for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        let input = Registration {
            email: &request.email,
            username: &request.username,
            password: &request.password,
            display_name: &request.display_name,
        };
        let row = users::register(&self.state, &client, &input).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user(&row)),
            email_verification_required: true,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        let issued = sessions::login(
            &self.state,
            &client,
            &request.username_or_email,
            &request.password,
        )
        .await?;
        let (access_token, access_token_expires_at, refresh_token, refresh_token_expires_at, user) =
            tokens(issued);
        Ok(Response::new(pb::LoginResponse {
            access_token,
            access_token_expires_at,
            refresh_token,
            refresh_token_expires_at,
            token_type: TOKEN_TYPE.into(),
            user,
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let client = ClientInfo::of(&request);
        let issued =
            sessions::refresh(&self.state, &client, &request.into_inner().refresh_token).await?;
        let (access_token, access_token_expires_at, refresh_token, refresh_token_expires_at, user) =
            tokens(issued);
        Ok(Response::new(pb::RefreshResponse {
            access_token,
            access_token_expires_at,
            refresh_token,
            refresh_token_expires_at,
            token_type: TOKEN_TYPE.into(),
            user,
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let client = ClientInfo::of(&request);
        sessions::logout(&self.state, &client, &request.into_inner().refresh_token).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let client = ClientInfo::of(&request);
        users::request_password_reset(&self.state, &client, &request.into_inner().email).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn confirm_password_reset(
        &self,
        request: Request<pb::ConfirmPasswordResetRequest>,
    ) -> Result<Response<pb::ConfirmPasswordResetResponse>, Status> {
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        users::confirm_password_reset(&self.state, &client, &request.token, &request.new_password)
            .await?;
        Ok(Response::new(pb::ConfirmPasswordResetResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let client = ClientInfo::of(&request);
        let row = users::verify_email(&self.state, &client, &request.into_inner().token).await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: Some(user(&row)),
        }))
    }

    async fn get_me(
        &self,
        request: Request<pb::GetMeRequest>,
    ) -> Result<Response<pb::GetMeResponse>, Status> {
        let (caller, _) = self.session(&request).await?;
        let row = users::me(&self.state, caller.user_id).await?;
        Ok(Response::new(pb::GetMeResponse {
            user: Some(user(&row)),
        }))
    }

    async fn update_me(
        &self,
        request: Request<pb::UpdateMeRequest>,
    ) -> Result<Response<pb::UpdateMeResponse>, Status> {
        let (caller, _) = self.session(&request).await?;
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        let update = ProfileUpdate {
            display_name: request.display_name.as_deref(),
            email: request.email.as_deref(),
            current_password: &request.current_password,
        };
        let (row, email_verification_required) =
            users::update_me(&self.state, &client, caller.user_id, &update).await?;
        Ok(Response::new(pb::UpdateMeResponse {
            user: Some(user(&row)),
            email_verification_required,
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let (caller, session_id) = self.session(&request).await?;
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        users::change_password(
            &self.state,
            &client,
            caller.user_id,
            session_id,
            &request.old_password,
            &request.new_password,
            request.revoke_api_keys,
        )
        .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (caller, current) = self.session(&request).await?;
        let request = request.into_inner();
        let (rows, next_page_token) = sessions::list(
            &self.state,
            caller.user_id,
            request.page_size,
            &request.page_token,
        )
        .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: rows.iter().map(|row| session(row, current)).collect(),
            next_page_token,
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let (caller, _) = self.session(&request).await?;
        let client = ClientInfo::of(&request);
        let session_id = uuid("session_id", &request.into_inner().session_id)?;
        sessions::revoke(&self.state, &client, caller.user_id, session_id).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(&request).await?;
        let request = request.into_inner();
        let status = match pb::UserStatus::try_from(request.status) {
            Ok(pb::UserStatus::Unspecified) => None,
            Ok(pb::UserStatus::Active) => Some(UserStatus::Active),
            Ok(pb::UserStatus::Disabled) => Some(UserStatus::Disabled),
            Ok(pb::UserStatus::Deleted) => Some(UserStatus::Deleted),
            Err(_) => return Err(Error::invalid("status", "unknown status").into()),
        };
        let text = |value: &str| Some(value.trim().to_lowercase()).filter(|v| !v.is_empty());
        let filter = UserFilter {
            email: text(&request.email),
            username: text(&request.username),
            status,
        };
        let (rows, next_page_token) =
            admin::list_users(&self.state, &filter, request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: rows.iter().map(user).collect(),
            next_page_token,
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        self.admin(&request).await?;
        let user_id = uuid("user_id", &request.into_inner().user_id)?;
        let row = admin::get_user(&self.state, user_id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user(&row)),
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = self.admin(&request).await?;
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        let user_id = uuid("user_id", &request.user_id)?;
        let update = UserUpdate {
            active: request.active,
            roles: request
                .roles
                .map(|roles| admin::parse_roles(&roles.values))
                .transpose()?,
        };
        let row =
            admin::update_user(&self.state, &client, caller.user_id, user_id, &update).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user(&row)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = self.admin(&request).await?;
        let client = ClientInfo::of(&request);
        let user_id = uuid("user_id", &request.into_inner().user_id)?;
        let row = admin::delete_user(&self.state, &client, caller.user_id, user_id).await?;
        Ok(Response::new(pb::DeleteUserResponse {
            user: Some(user(&row)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.admin(&request).await?;
        let request = request.into_inner();
        let subject = Some(request.subject_user_id.as_str())
            .filter(|id| !id.is_empty())
            .map(|id| uuid("subject_user_id", id))
            .transpose()?;
        let from = request
            .from
            .as_ref()
            .map(|at| from_timestamp("from", at))
            .transpose()?;
        let to = request
            .to
            .as_ref()
            .map(|at| from_timestamp("to", at))
            .transpose()?;
        let filter = admin::audit_filter(subject, &request.event_type, from, to)?;
        let (rows, next_page_token) =
            admin::list_audit_events(&self.state, &filter, request.page_size, &request.page_token)
                .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.iter().map(audit_event).collect(),
            next_page_token,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        api_keys::create_api_key(&self.state, request).await
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        api_keys::list_api_keys(&self.state, request).await
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        api_keys::revoke_api_key(&self.state, request).await
    }

    async fn get_jwks(
        &self,
        request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        keys::get_jwks(&self.state, request).await
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        api_keys::verify_api_key(&self.state, request).await
    }
}
