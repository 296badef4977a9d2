//! The `healthcheck` subcommand every binary has: container images carry no shell, curl or
//! grpcurl, so Compose's and the image's health checks run the binary itself. gRPC servers are
//! asked `grpc.health.v1.Health/Check`; the edge, an HTTP server, answers `GET /healthz`.
//! Kubernetes probes the same endpoints natively (`grpc:` and `httpGet:` probes).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::cli::{ServerArgs, ServiceSpec};
use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Flags of the `healthcheck` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// Address to probe [default: the server's configured listen address, on loopback when it
    /// listens on every interface].
    #[arg(long)]
    pub addr: Option<SocketAddr>,

    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
}

impl HealthcheckArgs {
    /// The address to probe for a server listening on `listen`.
    pub fn target(&self, listen: SocketAddr) -> SocketAddr {
        self.addr.unwrap_or_else(|| loopback_for(listen))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `0.0.0.0:port` cannot be connected to everywhere; the same port on loopback reaches the server.
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// The `healthcheck` command of a gRPC server binary: probes its configured listen address.
pub async fn server(
    spec: &ServiceSpec,
    args: &ServerArgs,
    check: &HealthcheckArgs,
) -> anyhow::Result<()> {
    grpc(check.target(args.listen_addr(spec)), check.timeout()).await
}

/// Succeeds when the gRPC server at `addr` reports its overall health (service "") SERVING.
pub async fn grpc(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .with_context(|| format!("health check of {addr}"))?
            .into_inner()
            .status();
        anyhow::ensure!(
            status == ServingStatus::Serving,
            "{addr} reports {}",
            status.as_str_name()
        );
        Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}

/// Succeeds when the HTTP server at `addr` answers `GET path` with a 2xx status.
pub async fn http(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that matters: "HTTP/1.1 200 OK".
        let mut head = [0_u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .with_context(|| format!("reading the answer of {addr}"))?;
        let head = String::from_utf8_lossy(&head);
        let status = head
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .with_context(|| format!("{addr} did not answer HTTP: {head:?}"))?;
        anyhow::ensure!(
            status.starts_with('2'),
            "GET {path} on {addr}: status {status}"
        );
        Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use tokio::net::TcpListener;

    const WITHIN: Duration = Duration::from_secs(5);

    async fn bind() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        bind().await.1
    }

    #[tokio::test]
    async fn grpc_check_follows_the_reported_status() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let (listener, addr) = bind().await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let err = grpc(addr, WITHIN).await.unwrap_err();
        assert!(format!("{err:#}").contains("NOT_SERVING"), "{err:#}");
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        grpc(addr, WITHIN).await.unwrap();
    }

    #[tokio::test]
    async fn grpc_check_fails_when_nothing_listens() {
        assert!(grpc(closed_port().await, WITHIN).await.is_err());
    }

    #[tokio::test]
    async fn grpc_check_gives_up_after_the_timeout() {
        // Accepts connections but never speaks HTTP/2.
        let (listener, addr) = bind().await;
        let err = grpc(addr, Duration::from_millis(200)).await.unwrap_err();
        assert!(format!("{err:#}").contains("within"), "{err:#}");
        drop(listener);
    }

    #[tokio::test]
    async fn http_check_wants_a_2xx_answer() {
        let (listener, addr) = bind().await;
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/readyz",
                axum::routing::get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        http(addr, "/healthz", WITHIN).await.unwrap();
        let err = http(addr, "/readyz", WITHIN).await.unwrap_err();
        assert!(format!("{err:#}").contains("status 503"), "{err:#}");
        assert!(http(closed_port().await, "/healthz", WITHIN).await.is_err());
    }

    #[test]
    fn the_target_is_the_listen_address_on_loopback_unless_given() {
        let args = HealthcheckArgs {
            addr: None,
            timeout_ms: 1,
        };
        assert_eq!(
            args.target("0.0.0.0:9003".parse().unwrap()),
            "127.0.0.1:9003".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            args.target("[::]:9003".parse().unwrap()),
            "[::1]:9003".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            args.target("10.0.0.5:9013".parse().unwrap()),
            "10.0.0.5:9013".parse::<SocketAddr>().unwrap()
        );
        let given = HealthcheckArgs {
            addr: Some("127.0.0.1:1".parse().unwrap()),
            timeout_ms: 1,
        };
        assert_eq!(
            given.target("0.0.0.0:9003".parse().unwrap()),
            "127.0.0.1:1".parse::<SocketAddr>().unwrap()
        );
    }
}
