//! The kit `CredentialSource` of auth-svc itself: its `Authenticator` reads the signer's JWKS and
//! verifies API keys in this process instead of calling `GetJwks` / `VerifyApiKey` over the
//! network as the other services do.

use std::{sync::Arc, time::SystemTime};

use chrono::Utc;
use kit::caller::{CredentialSource, VerifiedKey};
use tonic::Status;

use crate::{
    error::Error,
    service::{api_key_cache::ApiKeys, signing_keys::Signer},
};

/// Credentials checked against this process's signer and API key verifier.
pub struct LocalCredentials {
    pub signer: Arc<Signer>,
    pub api_keys: Arc<ApiKeys>,
}

#[tonic::async_trait]
impl CredentialSource for LocalCredentials {
    async fn jwks(&self) -> Result<Vec<proto::auth::Jwk>, Status> {
        Ok(self.signer.jwks().await?.as_ref().clone())
    }

    async fn verify_api_key(&self, key: &str) -> Result<VerifiedKey, Status> {
        let usable = match self.api_keys.verify(key, Utc::now()).await {
            Ok(usable) => usable,
            // A malformed credential is an authentication failure of the caller.
            Err(Error::InvalidField(_)) => {
                return Err(Status::unauthenticated("invalid API key"));
            }
            Err(err) => return Err(err.into()),
        };
        Ok(VerifiedKey {
            user_id: usable.user_id,
            key_id: usable.id,
            scopes: usable.scopes.clone(),
            owner_roles: usable.owner_roles.clone(),
            expires_at: usable.expires_at.map(SystemTime::from),
        })
    }
}
