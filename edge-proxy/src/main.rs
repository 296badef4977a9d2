//! The edge-proxy binary: REST/JSON on port 9000, translated into gRPC calls to the mesh.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use axum::http::HeaderValue;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use edge_proxy::{
    Forwarding, Settings, Upstreams,
    gateway::{self, GatewaySettings},
    router,
};
use kit::{caller::AuthConfig, cli::Secret, client_address::TrustedProxies};

/// edge-proxy: REST/JSON for browsers, translated into gRPC calls to the mesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// HTTP listen address.
    #[arg(long, env = "EDGE_LISTEN_ADDR", default_value = "0.0.0.0:9000")]
    listen_addr: SocketAddr,
    /// Admin listener (`/metrics`), on loopback by default.
    #[arg(long, env = "EDGE_ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    admin_addr: SocketAddr,
    /// auth-svc's gRPC addresses, comma-separated (several replicas are balanced).
    #[arg(
        long,
        env = "EDGE_AUTH_UPSTREAM",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9001"
    )]
    auth_upstream: Vec<String>,
    /// billing-svc's gRPC addresses, comma-separated.
    #[arg(
        long,
        env = "EDGE_BILLING_UPSTREAM",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9002"
    )]
    billing_upstream: Vec<String>,
    /// quota-svc's gRPC addresses, comma-separated.
    #[arg(
        long,
        env = "EDGE_QUOTA_UPSTREAM",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9003"
    )]
    quota_upstream: Vec<String>,
    /// Browser origins allowed to call the edge cross-origin (CORS), comma-separated, e.g.
    /// `https://app.example.com`. None by default.
    #[arg(
        long,
        env = "EDGE_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    cors_origins: Vec<String>,
    /// Proxies in front of the edge (comma-separated networks or addresses, e.g. the load
    /// balancer's subnet): their `X-Forwarded-For` is believed, up to its right-most entry
    /// outside them. None by default: the TCP peer is the client.
    #[arg(long, env = "EDGE_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxies,
    /// The edge's API key with the `service` scope (`auth-svc service-key issue --service
    /// edge-proxy`): it vouches for the client address the edge forwards to auth-svc.
    #[arg(long, env = "EDGE_SERVICE_KEY", hide_env_values = true)]
    service_key: Secret,
    /// Deadline of each call to a service, in milliseconds.
    #[arg(long, env = "EDGE_RPC_TIMEOUT_MS", default_value_t = 10_000)]
    rpc_timeout_ms: u64,
    /// Protected routes to HTTP upstreams: a TOML file of `[[route]]`s (docs/edge.md), e.g.
    /// `deploy/routes.toml`. None by default.
    #[arg(long, env = "EDGE_ROUTES")]
    routes: Option<String>,
    /// The key protected routes charge quotas with: a service account's key with
    /// `quota:consume` only (`auth-svc service-key issue --service edge-gateway --scopes
    /// quota:consume`). Required when a route names a metric.
    #[arg(long, env = "EDGE_QUOTA_API_KEY", hide_env_values = true)]
    quota_api_key: Option<Secret>,
    /// Expected `iss` of access tokens presented on protected routes.
    #[arg(long, env = "AUTH_ISSUER", default_value = "commerce-mesh")]
    auth_issuer: String,
    /// Expected `aud` of access tokens presented on protected routes.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "commerce-mesh")]
    auth_audience: String,
    /// Seconds a verified API key is trusted before auth-svc is asked again (at most 30).
    #[arg(long, env = "API_KEY_CACHE_TTL_SECS", default_value_t = 10)]
    api_key_cache_ttl_secs: u64,
    /// Lifetime auth-svc gives access tokens, in seconds (the same variable as auth-svc's): a
    /// token claiming a longer life is refused.
    #[arg(
        long,
        env = "ACCESS_TOKEN_TTL_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(60..=3600)
    )]
    access_token_ttl_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Exit 0 when this edge, at its configured listen address, answers `GET /healthz` (the
    /// health check of the container image, which has no shell or curl).
    Healthcheck(kit::healthcheck::HealthcheckArgs),
}

impl Cli {
    /// The protected routes, when `EDGE_ROUTES` names a file (read and checked now: a bad file
    /// stops the edge).
    fn gateway(&self) -> anyhow::Result<Option<GatewaySettings>> {
        let Some(path) = &self.routes else {
            return Ok(None);
        };
        Ok(Some(GatewaySettings {
            routes: gateway::load(path)?,
            quota_key: self.quota_api_key.clone(),
            auth: AuthConfig {
                issuer: self.auth_issuer.clone(),
                audience: self.auth_audience.clone(),
                api_key_cache_ttl: Duration::from_secs(self.api_key_cache_ttl_secs),
                access_token_ttl: Duration::from_secs(self.access_token_ttl_secs),
                ..AuthConfig::default()
            },
        }))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    // Secrets (EDGE_SERVICE_KEY) may come from files: EDGE_SERVICE_KEY_FILE.
    let cli: Cli = kit::cli::parse_plain();
    let result = match &cli.command {
        None | Some(Command::Serve) => run(cli).await,
        Some(Command::Healthcheck(check)) => {
            kit::healthcheck::http(check.target(cli.listen_addr), "/healthz", check.timeout()).await
        }
    };
    kit::exit_code(result)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cors_origins = cli
        .cors_origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            // A browser's Origin is scheme://host[:port]: no path, no wildcard (`*` with
            // credentials is what CORS exists to prevent).
            if origin == "*" || origin.matches('/').count() != 2 {
                anyhow::bail!(
                    "EDGE_CORS_ORIGINS: {origin:?} is not an origin like https://app.example.com"
                );
            }
            HeaderValue::from_str(origin)
                .map_err(|_| anyhow::anyhow!("EDGE_CORS_ORIGINS: {origin:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gateway = cli.gateway()?;
    let settings = Settings {
        upstreams: Upstreams {
            auth: cli.auth_upstream,
            billing: cli.billing_upstream,
            quota: cli.quota_upstream,
        },
        forwarding: Forwarding::new(cli.trusted_proxies, cli.service_key.expose())?,
        rpc_timeout: Duration::from_millis(cli.rpc_timeout_ms),
        cors_origins,
        gateway,
    };
    let app = router(settings)?;
    let listener = tokio::net::TcpListener::bind(cli.listen_addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding {}: {err}", cli.listen_addr))?;
    let admin = tokio::net::TcpListener::bind(cli.admin_addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding admin address {}: {err}", cli.admin_addr))?;
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(kit::server::serve_admin(admin, stopping));
    tracing::info!(addr = %cli.listen_addr, admin = %cli.admin_addr, "edge-proxy serving");
    // Browsers' small requests and responses must not wait for delayed ACKs (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(kit::shutdown::signal())
    .await?;
    let _ = stopping_tx.send(true);
    let _ = admin.await;
    Ok(())
}
