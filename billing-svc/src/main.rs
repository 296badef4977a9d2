//! The billing-svc binary: `serve` (default) or `migrate`.

use std::process::ExitCode;

use billing_svc::{MIGRATIONS, SPEC, routes};
use clap::{Parser, Subcommand};
use kit::ServerArgs;

/// billing-svc: plans, subscriptions and payments (gRPC on port 9002).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli: Cli = kit::cli::parse(&SPEC);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => kit::server::run(SPEC, cli.server, MIGRATIONS, routes).await,
        Command::Migrate => kit::server::migrate(SPEC, &cli.server, MIGRATIONS).await,
    };
    kit::exit_code(result)
}
