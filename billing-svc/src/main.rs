//! The billing-svc binary: `serve` (default), `migrate`, `healthcheck`, or `plans apply FILE`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use billing_svc::{
    BillingArgs, MIGRATIONS, SPEC, Workers, domain::plan::PlansFile, routes, service::Billing,
};
use clap::{Parser, Subcommand};
use kit::{ServerArgs, clock::SystemClock};

// mimalloc, as in every binary of the mesh: glibc malloc cost a quarter of a loaded server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// billing-svc: plans, subscriptions and payments (gRPC on port 9002).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    billing: BillingArgs,
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
    /// Manage plans.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PlansCommand {
    /// Makes the plans match a TOML file: creates and updates the plans it lists, withdraws the
    /// others from sale, and queues its `[free]` limits for quota-svc. Idempotent.
    Apply {
        /// The plans file, e.g. deploy/plans.toml.
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli: Cli = kit::cli::parse(&SPEC);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.server, cli.billing).await,
        Command::Migrate => kit::server::migrate(SPEC, &cli.server, MIGRATIONS).await,
        Command::Healthcheck(check) => kit::healthcheck::server(&SPEC, &cli.server, &check).await,
        Command::Plans {
            command: PlansCommand::Apply { file },
        } => apply_plans(&cli.server, &cli.billing, &file).await,
    };
    kit::exit_code(result)
}

async fn serve(server: ServerArgs, billing: BillingArgs) -> anyhow::Result<()> {
    let authenticator = billing.remote_authenticator()?;
    let providers = billing.providers()?;
    kit::server::run(SPEC, server, MIGRATIONS, move |pool| {
        let clock = Arc::new(SystemClock);
        let workers = Workers {
            dispatcher: billing.dispatcher(pool.clone(), clock.clone())?,
            lifecycle_every: std::time::Duration::from_secs(billing.lifecycle_interval_secs.into()),
        };
        let service = Arc::new(Billing::new(pool, clock, providers, billing.settings()));
        routes(service, authenticator, workers)
    })
    .await
}

async fn apply_plans(
    server: &ServerArgs,
    billing: &BillingArgs,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plans =
        PlansFile::parse(&text).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
    kit::server::migrate(SPEC, server, MIGRATIONS).await?;
    let pool = kit::db::pool(
        server.database_url(),
        SPEC.name,
        1,
        server.db_acquire_timeout(),
    )?;
    let service = Billing::new(pool, Arc::new(SystemClock), Vec::new(), billing.settings());
    let applied = service
        .apply_plans_file(&plans)
        .await
        .map_err(|err| anyhow::anyhow!("applying {}: {err}", file.display()))?;
    tracing::info!(
        created = ?applied.created,
        updated = ?applied.updated,
        deactivated = ?applied.deactivated,
        free_tier_version = ?applied.defaults_version,
        "plans applied; the free tier reaches quota-svc through billing-svc's outbox"
    );
    Ok(())
}
