//! Server bootstrap shared by every gRPC service: health (SERVING only once migrations ran and the
//! database answers; the service's own RPCs UNAVAILABLE until the migrations ran), reflection v1
//! and v1alpha, per-RPC observability, timeout and concurrency limit, the admin `/metrics`
//! listener, and graceful shutdown that drains in-flight calls.

use std::{future::Future, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, sync::watch};
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::{
    cli::{ServerArgs, ServiceSpec},
    db::{self, PgPool},
    observe::ObserveLayer,
    starting::{Migrated, UntilMigratedLayer},
    telemetry,
};

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Everything a service hands to [`serve`].
pub struct Service {
    pub spec: ServiceSpec,
    pub args: ServerArgs,
    pub migrations: db::Migrations,
    pub pool: PgPool,
    /// The service's own tonic routes; health and reflection are added here.
    pub routes: Routes,
}

/// The sockets a server listens on, bound by the caller so tests can use port 0.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses of `spec`.
    pub async fn bind(spec: &ServiceSpec, args: &ServerArgs) -> anyhow::Result<Self> {
        let grpc_addr = args.listen_addr(spec);
        let admin_addr = args.admin_addr(spec);
        let grpc = TcpListener::bind(grpc_addr)
            .await
            .map_err(|err| anyhow::anyhow!("binding gRPC address {grpc_addr}: {err}"))?;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|err| anyhow::anyhow!("binding admin address {admin_addr}: {err}"))?;
        Ok(Self { grpc, admin })
    }
}

/// Serves `service` until `shutdown` completes, then drains in-flight RPCs for at most the grace
/// period. Migrations run first (retried while the database is unreachable); health reports
/// NOT_SERVING until they have run and whenever the database stops answering.
pub async fn serve(
    service: Service,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Service {
        spec,
        args,
        migrations,
        pool,
        routes,
    } = service;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_status(&reporter, &spec, ServingStatus::NotServing).await;

    let routes = with_reflection(routes.add_service(health_service), &spec)?;

    let (stopping_tx, stopping_rx) = watch::channel(false);
    let on_shutdown = {
        let reporter = reporter.clone();
        let stopping_tx = stopping_tx.clone();
        async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
            // Load balancers see NOT_SERVING before the listener closes.
            set_status(&reporter, &spec, ServingStatus::NotServing).await;
        }
    };

    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    tracing::info!(service = spec.name, %grpc_addr, %admin_addr, "serving");

    let admin = tokio::spawn(serve_admin(listeners.admin, stopping_rx.clone()));
    let migrated = Migrated::default();
    let watcher = tokio::spawn(watch_database(
        spec,
        args.clone(),
        Migration {
            migrations,
            done: migrated.clone(),
        },
        pool,
        reporter,
        stopping_rx.clone(),
    ));

    let server = tonic::transport::Server::builder()
        .timeout(args.rpc_timeout())
        .layer(
            tower::ServiceBuilder::new()
                .layer(ObserveLayer)
                .layer(GlobalConcurrencyLimitLayer::new(args.max_concurrent_rpcs))
                .layer(UntilMigratedLayer(migrated)),
        )
        .add_routes(routes)
        // Without TCP_NODELAY a response split over two writes waits for the peer's delayed
        // ACK (about 40 ms): the tail latency of every RPC.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            on_shutdown,
        );

    let grace = args.shutdown_grace();
    let mut stopping = stopping_rx;
    let grace_over = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = grace_over => tracing::warn!(?grace, "grace period over; dropping unfinished RPCs"),
    }
    let _ = stopping_tx.send(true);
    watcher.abort();
    admin.abort();
    tracing::info!(service = spec.name, "stopped");
    Ok(())
}

/// Adds reflection v1 and v1alpha (grpcurl still asks v1alpha) to `routes`, advertising only this
/// server's own services.
fn with_reflection(routes: Routes, spec: &ServiceSpec) -> anyhow::Result<Routes> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(spec.grpc_service)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    Ok(routes
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?))
}

async fn set_status(reporter: &HealthReporter, spec: &ServiceSpec, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(spec.grpc_service, status).await;
}

/// The migrations a server runs at start, and where it says they have run.
struct Migration {
    migrations: db::Migrations,
    done: Migrated,
}

/// Runs the migrations (retrying until the database answers), then probes the database at the
/// configured interval and reports the result as the health status.
async fn watch_database(
    spec: ServiceSpec,
    args: ServerArgs,
    migration: Migration,
    pool: PgPool,
    reporter: HealthReporter,
    stopping: watch::Receiver<bool>,
) {
    let interval = args.health_check_interval();
    loop {
        match db::migrate(args.database_url(), spec.name, migration.migrations).await {
            Ok(applied) => {
                tracing::info!(?applied, "migrations up to date");
                migration.done.set();
                break;
            }
            Err(err) => {
                tracing::warn!(%err, "migrations could not run; retrying");
                tokio::time::sleep(interval).await;
            }
        }
    }
    let mut last = None;
    loop {
        if *stopping.borrow() {
            return;
        }
        let probe =
            tokio::time::timeout(interval.max(Duration::from_secs(1)), db::ping(&pool)).await;
        let status = match probe {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(err)) => {
                tracing::warn!(%err, "database probe failed");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!("database probe timed out");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) && !*stopping.borrow() {
            tracing::info!(?status, "health");
            set_status(&reporter, &spec, status).await;
            last = Some(status);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves `/metrics` (Prometheus text) on the admin listener until `stopping` turns true.
pub async fn serve_admin(listener: TcpListener, mut stopping: watch::Receiver<bool>) {
    let handle = telemetry::metrics_handle();
    tokio::spawn(drain_metrics(handle.clone(), stopping.clone()));
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "admin listener failed");
    }
}

/// Folds recorded histogram samples into their buckets every few seconds. The recorder keeps each
/// sample until then; with no scraper calling `/metrics` they would pile up without bound (24 bytes
/// per RPC: about 0.9 GB an hour at 10,000 calls/s).
async fn drain_metrics(handle: PrometheusHandle, mut stopping: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = every.tick() => handle.run_upkeep(),
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// The `serve` command of a service binary: builds the pool, binds the configured addresses and
/// serves `routes` until SIGINT/SIGTERM.
pub async fn run(
    spec: ServiceSpec,
    args: ServerArgs,
    migrations: db::Migrations,
    routes: impl FnOnce(PgPool) -> anyhow::Result<Routes>,
) -> anyhow::Result<()> {
    let pool = db::pool(
        args.database_url(),
        spec.name,
        args.db_pool_size,
        args.db_acquire_timeout(),
    )?;
    let listeners = Listeners::bind(&spec, &args).await?;
    let routes = routes(pool.clone())?;
    let service = Service {
        spec,
        args,
        migrations,
        pool,
        routes,
    };
    serve(service, listeners, crate::shutdown::signal()).await
}

/// The `migrate` command of a service binary: applies pending migrations and exits.
pub async fn migrate(
    spec: ServiceSpec,
    args: &ServerArgs,
    migrations: db::Migrations,
) -> anyhow::Result<()> {
    let applied = db::migrate(args.database_url(), spec.name, migrations).await?;
    tracing::info!(schema = spec.name, ?applied, "migrations up to date");
    Ok(())
}
