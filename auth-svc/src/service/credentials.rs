//! auth-svc's own credentials: the signer, the API key verifier, and the kit `Authenticator`
//! that checks callers against them directly (without the network hop other services make; see
//! [`crate::api::local_credentials`]).

use std::sync::Arc;

use kit::caller::Authenticator;
use uuid::Uuid;

use super::{api_key_cache::ApiKeys, signing_keys::Signer};

/// Everything that issues and checks credentials; cheap to clone.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub signer: Arc<Signer>,
    pub api_keys: Arc<ApiKeys>,
    pub authenticator: Arc<Authenticator>,
}

impl Credentials {
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
