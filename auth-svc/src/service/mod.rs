//! The flows of auth-svc, one public function per RPC or CLI command: each takes the [`State`]
//! (or a connection) and plain arguments, applies `domain` rules and calls `store` inside
//! transactions it opens itself, so every transaction boundary is visible here and nowhere else.
//! Nothing here knows gRPC: `api` decodes requests into these arguments and maps the results.

pub mod admin;
pub mod api_key_cache;
pub mod api_keys;
pub mod attempts;
pub mod credentials;
pub mod mail;
pub mod passwords;
pub mod registration;
pub mod sessions;
pub mod signing_keys;
pub mod users;

use std::sync::Arc;

use kit::{client_address::TrustedProxies, clock::Clock, db::PgPool};

use crate::{config::Config, mailer::Mailer};

/// What the flows share; cheap to clone. Built by `State::new` in `lib.rs`.
#[derive(Clone)]
pub struct State {
    pub pool: PgPool,
    pub credentials: credentials::Credentials,
    pub config: Arc<Config>,
    pub mailer: Arc<dyn Mailer>,
    pub clock: Arc<dyn Clock>,
    pub trusted_proxies: TrustedProxies,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("config", &self.config)
            .field("mailer", &self.mailer)
            .finish_non_exhaustive()
    }
}
