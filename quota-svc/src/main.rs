//! The quota-svc binary: `serve` (default), `migrate` or `healthcheck`.

use std::{process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use kit::{ServerArgs, clock::SystemClock};
use quota_svc::{MIGRATIONS, QuotaArgs, SPEC, routes};

// mimalloc: glibc malloc took a quarter of the CPU of a loaded server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// quota-svc: per-period quotas, check-and-consume, refunds and usage logs (gRPC on port 9003).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    quota: QuotaArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 when this server, at its configured listen address, reports SERVING (the health
    /// check of the container images, which have no shell or grpcurl).
    Healthcheck(kit::healthcheck::HealthcheckArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli: Cli = kit::cli::parse(&SPEC);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.server, cli.quota).await,
        Command::Migrate => kit::server::migrate(SPEC, &cli.server, MIGRATIONS).await,
        Command::Healthcheck(check) => kit::healthcheck::server(&SPEC, &cli.server, &check).await,
    };
    kit::exit_code(result)
}

async fn serve(server: ServerArgs, quota: QuotaArgs) -> anyhow::Result<()> {
    let authenticator = quota.remote_authenticator()?;
    let workers = quota.workers();
    kit::server::run(SPEC, server, MIGRATIONS, move |pool| {
        routes(pool, authenticator, Arc::new(SystemClock), workers)
    })
    .await
}
