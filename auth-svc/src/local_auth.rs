//! auth-svc's own credentials: the signer, the API key verifier, and a kit `Authenticator` that
//! reads them directly (a `CredentialSource` without the network hop other services make).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::Utc;
use kit::{
    caller::{AuthConfig, Authenticator, CredentialSource, VerifiedKey},
    clock::Clock,
    db::PgPool,
};
use tonic::Status;
use uuid::Uuid;

use crate::{
    api_keys::verifier::ApiKeys,
    error::Error,
    keys::{KeysConfig, Signer},
};

/// Everything that issues and checks credentials; cheap to clone.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub signer: Arc<Signer>,
    pub api_keys: Arc<ApiKeys>,
    pub authenticator: Arc<Authenticator>,
}

impl Credentials {
    /// Builds the credentials of a server on `pool` and starts the task writing API key usage
    /// (so it needs a tokio runtime). Touches no database until first used.
    pub fn new(
        pool: PgPool,
        keys: KeysConfig,
        api_key_cache_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let auth_config = AuthConfig {
            issuer: keys.issuer.clone(),
            audience: keys.audience.clone(),
            api_key_cache_ttl,
            access_token_ttl: keys.access_token_ttl,
            ..AuthConfig::default()
        };
        let signer = Arc::new(Signer::new(pool.clone(), keys));
        let api_keys = Arc::new(ApiKeys::new(pool, api_key_cache_ttl));
        api_keys.spawn_usage_flusher();
        let source = LocalSource {
            signer: Arc::clone(&signer),
            api_keys: Arc::clone(&api_keys),
        };
        Self {
            signer,
            api_keys,
            authenticator: Arc::new(
                Authenticator::new(auth_config, Arc::new(source)).with_clock(clock),
            ),
        }
    }

    /// Forgets the cached verifications of key `key_id` (it was revoked).
    pub fn forget_key(&self, key_id: Uuid) {
        self.api_keys.forget(|key| key.id == key_id);
        self.authenticator
            .forget_api_keys(|key| key.key_id == key_id);
    }

    /// Forgets the cached verifications of every key of `user_id` (disabled, deleted, roles
    /// changed, or their keys revoked), so this process applies the change at once.
    pub fn forget_user_keys(&self, user_id: Uuid) {
        self.api_keys.forget(|key| key.user_id == user_id);
        self.authenticator
            .forget_api_keys(|key| key.user_id == user_id);
    }
}

struct LocalSource {
    signer: Arc<Signer>,
    api_keys: Arc<ApiKeys>,
}

#[tonic::async_trait]
impl CredentialSource for LocalSource {
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
