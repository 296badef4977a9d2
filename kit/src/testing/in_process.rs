//! A service started inside the test process on ephemeral ports, stopped when dropped.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{service::Routes, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::{ServerArgs, ServiceSpec},
    db,
    server::{Listeners, Service, serve},
};

#[derive(Parser)]
struct DefaultArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// A running in-process server.
#[derive(Debug)]
pub struct InProcess {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts `spec` against `database_url` and waits until its health says SERVING.
    /// `configure` adjusts the defaults (e.g. a short health interval).
    pub async fn start(
        spec: ServiceSpec,
        database_url: &str,
        migrations: db::Migrations,
        configure: impl FnOnce(&mut ServerArgs),
        routes: impl FnOnce(db::PgPool) -> anyhow::Result<Routes>,
    ) -> Self {
        let mut args = DefaultArgs::try_parse_from(["test"])
            .unwrap_or_else(|err| panic!("default server args: {err}"))
            .server;
        args.database_url = Some(database_url.to_owned());
        args.health_check_interval_ms = 100;
        configure(&mut args);
        let pool = db::pool(
            database_url,
            spec.name,
            args.db_pool_size,
            args.db_acquire_timeout(),
        )
        .unwrap_or_else(|err| panic!("pool: {err}"));
        let listeners = Listeners {
            grpc: bind().await,
            admin: bind().await,
        };
        let addr = listeners
            .grpc
            .local_addr()
            .unwrap_or_else(|err| panic!("{err}"));
        let admin_addr = listeners
            .admin
            .local_addr()
            .unwrap_or_else(|err| panic!("{err}"));
        let routes = routes(pool.clone()).unwrap_or_else(|err| panic!("routes: {err}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Service {
            spec,
            args,
            migrations,
            pool,
            routes,
        };
        let task = tokio::spawn(serve(service, listeners, async move {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|err| panic!("{err}"))
            .connect_lazy();
        wait_for_health(&channel, ServingStatus::Serving, Duration::from_secs(20)).await;
        Self {
            addr,
            admin_addr,
            channel,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server (as SIGTERM would) and returns how its serve loop ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|err| panic!("binding an ephemeral port: {err}"))
}

/// Polls the overall health of the server behind `channel` until it reports `want`; panics after
/// `within`.
pub async fn wait_for_health(channel: &Channel, want: ServingStatus, within: Duration) {
    let mut client = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let last = match client.check(request).await {
            Ok(response) if response.get_ref().status == want as i32 => return,
            Ok(response) => format!("status {:?}", response.get_ref().status()),
            Err(status) => format!("error {status}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "health did not become {want:?} within {within:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
