//! The tonic implementation of `AuthService`: every RPC decodes its request, authenticates and
//! authorizes the caller, calls one `service` function and maps the result. Nothing below this
//! module knows gRPC.

mod client;
mod convert;
pub mod local_credentials;

use kit::{
    caller::Caller,
    convert::{from_timestamp, timestamp, uuid},
};
use proto::auth::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use self::{
    client::client_info,
    convert::{audit_event, session, tokens, user},
};
use crate::{
    domain::{
        admin::{self, UserUpdate},
        api_key::KeyRequest,
        validate::Registration,
    },
    error::Error,
    service::{
        self, State, api_keys, passwords, registration, sessions,
        users::{self, ProfileUpdate},
    },
    store::users::UserFilter,
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

const TOKEN_TYPE: &str = "Bearer";

#[tonic::async_trait]
impl AuthService for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let client = client_info(&request);
        let request = request.into_inner();
        let input = Registration {
            email: &request.email,
            username: &request.username,
            password: &request.password,
            // Blank: the username (the contract's default).
            display_name: Some(request.display_name.as_str())
                .filter(|name| !name.trim().is_empty()),
        };
        let row = registration::register(&self.state, &client, &input).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user(&row)),
            email_verification_required: true,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = client_info(&request);
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
        let client = client_info(&request);
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
        let client = client_info(&request);
        sessions::logout(&self.state, &client, &request.into_inner().refresh_token).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let client = client_info(&request);
        passwords::request_password_reset(&self.state, &client, &request.into_inner().email)
            .await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn confirm_password_reset(
        &self,
        request: Request<pb::ConfirmPasswordResetRequest>,
    ) -> Result<Response<pb::ConfirmPasswordResetResponse>, Status> {
        let client = client_info(&request);
        let request = request.into_inner();
        passwords::confirm_password_reset(
            &self.state,
            &client,
            &request.token,
            &request.new_password,
        )
        .await?;
        Ok(Response::new(pb::ConfirmPasswordResetResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let client = client_info(&request);
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
        let client = client_info(&request);
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
        let client = client_info(&request);
        let request = request.into_inner();
        passwords::change_password(
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
        let client = client_info(&request);
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
        let status = convert::status_filter(request.status)
            .ok_or_else(|| Error::invalid("status", "unknown status"))?;
        let text = |value: &str| Some(value.trim().to_lowercase()).filter(|v| !v.is_empty());
        let filter = UserFilter {
            email: text(&request.email),
            username: text(&request.username),
            status,
        };
        let (rows, next_page_token) = service::admin::list_users(
            &self.state,
            &filter,
            request.page_size,
            &request.page_token,
        )
        .await?;
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
        let row = service::admin::get_user(&self.state, user_id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user(&row)),
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let caller = self.admin(&request).await?;
        let client = client_info(&request);
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
            service::admin::update_user(&self.state, &client, caller.user_id, user_id, &update)
                .await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user(&row)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = self.admin(&request).await?;
        let client = client_info(&request);
        let user_id = uuid("user_id", &request.into_inner().user_id)?;
        let row =
            service::admin::delete_user(&self.state, &client, caller.user_id, user_id).await?;
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
        let (rows, next_page_token) = service::admin::list_audit_events(
            &self.state,
            &filter,
            request.page_size,
            &request.page_token,
        )
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
        let (caller, session_id) = self.session(&request).await?;
        let client = client_info(&request);
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
        let (row, secret) = api_keys::create_for_owner(
            &self.state,
            &client,
            caller.user_id,
            session_id,
            &key_request,
            &request.password,
        )
        .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(convert::api_key(&row)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let (caller, _) = self.session(&request).await?;
        let request = request.into_inner();
        let (rows, next_page_token) = api_keys::list(
            &self.state,
            caller.user_id,
            request.page_size,
            &request.page_token,
        )
        .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.iter().map(convert::api_key).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = self.caller(&request).await?;
        // Admins may revoke any key with any credential; owners only from a sign-in.
        if !caller.is_admin() {
            caller.require_session()?;
        }
        let client = client_info(&request);
        let key_id = uuid("key_id", &request.get_ref().key_id)?;
        let row = api_keys::revoke(
            &self.state,
            &client,
            caller.user_id,
            caller.is_admin(),
            key_id,
        )
        .await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(convert::api_key(&row)),
        }))
    }

    /// Public: no credentials.
    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.state.credentials.signer.jwks().await?;
        Ok(Response::new(pb::GetJwksResponse {
            keys: keys.as_ref().clone(),
        }))
    }

    /// Internal: a service resolves a client's key to its owner and scopes.
    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        self.caller(&request).await?.require_service()?;
        let usable = api_keys::verify(&self.state, &request.into_inner().key).await?;
        Ok(Response::new(pb::VerifyApiKeyResponse {
            user_id: usable.user_id.to_string(),
            key_id: usable.id.to_string(),
            scopes: usable.scopes.clone(),
            expires_at: usable.expires_at.map(timestamp),
            owner_roles: usable.owner_roles.clone(),
        }))
    }
}
