//! auth-svc: accounts, sign-in sessions, API keys, the audit log and the JWT signing keys of
//! commerce-mesh (schema `auth`).
//!
//! Laid out like every service of the mesh (see `docs/architecture.md`): `api` (thin gRPC
//! handlers) → `service` (the flows, owning their transactions) → `domain` (pure rules) and
//! `store` (all SQL); `cli` holds the one-shot commands, `config` the settings, `mailer` the
//! outgoing mail. This file builds the server from them.

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod mailer;
pub mod service;
pub mod store;

use std::sync::Arc;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use kit::{
    ServiceSpec,
    caller::{AuthConfig, Authenticator},
    client_address::{ClientAddressLayer, TrustedProxies},
    clock::Clock,
    db::{Migrations, PgPool},
};
use proto::auth::auth_service_server::AuthServiceServer;
use tonic::service::Routes;
use tower::Layer;

use api::local_credentials::LocalCredentials;
use config::{AccountsArgs, KeysArgs};
pub use service::State;
use service::{
    api_key_cache::ApiKeys,
    credentials::Credentials,
    signing_keys::{KeysConfig, Signer},
};

/// How auth-svc presents itself to the mesh.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "auth",
    grpc_service: "commerce.auth.v1.AuthService",
    port: 9001,
    admin_port: 9101,
};

/// The `auth` schema's migrations, embedded in the binary.
pub const MIGRATIONS: Migrations = Migrations(&EMBEDDED);
const EMBEDDED: EmbeddedMigrations = embed_migrations!("../migrations/auth");

/// auth-svc's own settings (besides the common server flags).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    #[command(flatten)]
    pub accounts: AccountsArgs,
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Proxies whose `x-forwarded-for` is believed (comma-separated networks or addresses, e.g.
    /// a load balancer's subnet). The edge needs no entry: it vouches with its service key. By
    /// default only the TCP peer counts, so a client cannot choose the address that login limits
    /// and the audit log count by.
    #[arg(long, env = "AUTH_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

impl State {
    /// The state of a server on `pool`. `mailer` replaces the one `args` configure (tests).
    /// Built here, where the layers meet: its authenticator checks callers through
    /// [`LocalCredentials`], an `api` adapter.
    /// Needs a tokio runtime (background tasks); touches no database yet.
    pub fn new(
        pool: PgPool,
        args: &AuthArgs,
        clock: Arc<dyn Clock>,
        mailer: Option<Arc<dyn mailer::Mailer>>,
    ) -> anyhow::Result<Self> {
        let master_key = args.keys.master_key()?;
        let config = config::Config::new(&args.accounts, &master_key)?;
        let keys = KeysConfig {
            issuer: args.accounts.issuer.clone(),
            audience: args.accounts.audience.clone(),
            access_token_ttl: args.accounts.access_token_ttl(),
            master_key,
        };
        let mailer = match mailer {
            Some(mailer) => mailer,
            None => mailer::from_args(&args.accounts, pool.clone())?,
        };
        Ok(Self {
            credentials: credentials(
                pool.clone(),
                keys,
                args.keys.api_key_cache_ttl(),
                Arc::clone(&clock),
            ),
            config: Arc::new(config),
            mailer,
            clock,
            pool,
            trusted_proxies: args.trusted_proxies.clone(),
        })
    }
}

/// The tonic routes serving `state`. Each request's client address is decided before any
/// handler sees it.
pub fn routes(state: State) -> Routes {
    let client_address = ClientAddressLayer::new(
        state.trusted_proxies.clone(),
        Arc::clone(&state.credentials.authenticator),
    );
    Routes::new(client_address.layer(AuthServiceServer::new(api::Api::new(state))))
}

/// The credentials of a server on `pool`, checked in this process; starts the task writing API
/// key usage (so it needs a tokio runtime). Touches no database until first used.
fn credentials(
    pool: PgPool,
    keys: KeysConfig,
    api_key_cache_ttl: std::time::Duration,
    clock: Arc<dyn Clock>,
) -> Credentials {
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
    let source = LocalCredentials {
        signer: Arc::clone(&signer),
        api_keys: Arc::clone(&api_keys),
    };
    Credentials {
        signer,
        api_keys,
        authenticator: Arc::new(
            Authenticator::new(auth_config, Arc::new(source)).with_clock(clock),
        ),
    }
}
