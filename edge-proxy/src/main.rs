//! The edge-proxy binary: REST/JSON on port 9000, translated into gRPC calls to the mesh.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use axum::serve::ListenerExt;
use clap::Parser;
use edge_proxy::{Forwarding, Upstreams, router};
use kit::{cli::Secret, client_address::TrustedProxies};

/// edge-proxy: REST/JSON for browsers, translated into gRPC calls to the mesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// HTTP listen address.
    #[arg(long, env = "EDGE_LISTEN_ADDR", default_value = "0.0.0.0:9000")]
    listen_addr: SocketAddr,
    /// auth-svc gRPC address.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:9001")]
    auth_url: String,
    /// billing-svc gRPC address.
    #[arg(long, env = "BILLING_URL", default_value = "http://127.0.0.1:9002")]
    billing_url: String,
    /// quota-svc gRPC address.
    #[arg(long, env = "QUOTA_URL", default_value = "http://127.0.0.1:9003")]
    quota_url: String,
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
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli = Cli::parse();
    kit::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let upstreams = Upstreams {
        auth: cli.auth_url,
        billing: cli.billing_url,
        quota: cli.quota_url,
    };
    let forwarding = Forwarding::new(cli.trusted_proxies, cli.service_key.expose())?;
    let app = router(
        &upstreams,
        forwarding,
        Duration::from_millis(cli.rpc_timeout_ms),
    )?;
    let listener = tokio::net::TcpListener::bind(cli.listen_addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding {}: {err}", cli.listen_addr))?;
    tracing::info!(addr = %cli.listen_addr, "edge-proxy serving");
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
    Ok(())
}
