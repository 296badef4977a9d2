//! auth-svc: accounts, sign-in sessions, API keys, the audit log and the JWT signing keys of
//! commerce-mesh (schema `auth`).
//!
//! `accounts` holds the account rules and flows, `keys` the token signing keys, `api_keys` the
//! programmatic credentials, `store` the queries, `api` the thin gRPC layer over them.

pub mod accounts;
pub mod api;
pub mod api_keys;
pub mod error;
pub mod keys;
pub mod local_auth;
pub mod mailer;
pub mod store;

use std::sync::Arc;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use kit::{
    ServiceSpec,
    client_address::{ClientAddressLayer, TrustedProxies},
    clock::Clock,
    db::{Migrations, PgPool},
};
use proto::auth::auth_service_server::AuthServiceServer;
use tonic::service::Routes;
use tower::Layer;

use accounts::AccountsArgs;
use keys::{KeysConfig, cli::KeysArgs};

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

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct State {
    pub pool: PgPool,
    pub credentials: local_auth::Credentials,
    pub config: Arc<accounts::Config>,
    pub mailer: Arc<dyn mailer::Mailer>,
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

impl State {
    /// The state of a server on `pool`. `mailer` replaces the one `args` configure (tests).
    /// Needs a tokio runtime (background tasks); touches no database yet.
    pub fn new(
        pool: PgPool,
        args: &AuthArgs,
        clock: Arc<dyn Clock>,
        mailer: Option<Arc<dyn mailer::Mailer>>,
    ) -> anyhow::Result<Self> {
        let master_key = args.keys.master_key()?;
        let config = accounts::Config::new(&args.accounts, &master_key)?;
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
            credentials: local_auth::Credentials::new(
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

/// The tonic routes serving `state`.
/// The tonic routes serving `state`. Each request's client address is decided before any
/// handler sees it.
pub fn routes(state: State) -> Routes {
    let client_address = ClientAddressLayer::new(
        state.trusted_proxies.clone(),
        Arc::clone(&state.credentials.authenticator),
    );
    Routes::new(client_address.layer(AuthServiceServer::new(api::Api::new(state))))
}
