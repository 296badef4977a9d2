//! The auth-svc binary: `serve` (default), `migrate`, `healthcheck`, `admin create`, `keys rotate` and
//! `service-key issue`.

use std::{process::ExitCode, sync::Arc};

use auth_svc::{
    AuthArgs, MIGRATIONS, SPEC, State,
    cli::{self, service_key::IssueServiceKey},
    service::attempts,
};
use clap::{Parser, Subcommand};
use kit::{ServerArgs, clock::SystemClock};

// mimalloc: glibc malloc took a quarter of the CPU of a loaded server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// auth-svc: accounts, sessions, API keys and token signing keys (gRPC on port 9001).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
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
    /// Manage accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage the token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the API keys of the mesh's services.
    #[command(subcommand)]
    ServiceKey(ServiceKeyCommand),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an administrator (active, email verified). The password is read from the
    /// ADMIN_PASSWORD environment variable (or the file ADMIN_PASSWORD_FILE names), else from the
    /// first line of stdin; it is never a
    /// flag (flags are visible to other users of the machine). Prints the new user id.
    Create {
        /// The administrator's email address.
        #[arg(long)]
        email: String,
        /// The administrator's username.
        #[arg(long)]
        username: String,
        /// Name shown to people; defaults to the username.
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a new signing key that becomes current; prints its kid.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum ServiceKeyCommand {
    /// Issue an API key for a mesh service; prints only the key.
    Issue(IssueServiceKey),
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli: Cli = kit::cli::parse(&SPEC);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.server, cli.auth).await,
        Command::Migrate => kit::server::migrate(SPEC, &cli.server, MIGRATIONS).await,
        Command::Healthcheck(check) => kit::healthcheck::server(&SPEC, &cli.server, &check).await,
        Command::Admin(AdminCommand::Create {
            email,
            username,
            display_name,
        }) => {
            cli::admin::create(
                &cli.server,
                &cli.auth,
                &email,
                &username,
                display_name.as_deref(),
            )
            .await
        }
        Command::Keys(KeysCommand::Rotate) => cli::keys::rotate(&cli.server, &cli.auth.keys).await,
        Command::ServiceKey(ServiceKeyCommand::Issue(args)) => {
            cli::service_key::issue_service_key(&cli.server, &args).await
        }
    };
    kit::exit_code(result)
}

async fn serve(server: ServerArgs, auth: AuthArgs) -> anyhow::Result<()> {
    cli::keys::preflight(&server, &auth.keys).await?;
    let mut api_keys = None;
    kit::server::run(SPEC, server, MIGRATIONS, |pool| {
        let state = State::new(pool, &auth, Arc::new(SystemClock), None)?;
        api_keys = Some(Arc::clone(&state.credentials.api_keys));
        attempts::spawn_pruning(&state);
        Ok(auth_svc::routes(state))
    })
    .await?;
    // API key uses noted since the last periodic write (at most a few seconds of them).
    if let Some(api_keys) = api_keys {
        api_keys.flush_usage().await?;
    }
    Ok(())
}
