//! provider-sim: a payment provider simulator speaking Alipay's open-platform protocol, for
//! development and end-to-end tests (`serve`, the default), and `keygen` for development keys.
//! Routes and behaviour: `billing_svc::sim`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use billing_svc::{
    providers::rsa_keys::{PrivateKey, PublicKey},
    sim::{self, SimConfig},
};
use clap::{Args, Parser, Subcommand};
use kit::clock::SystemClock;
use tokio::net::TcpListener;

/// provider-sim: Alipay's gateway, checkout page and notifications, simulated (HTTP on port 9080).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// HTTP listen address.
    #[arg(
        long,
        global = true,
        env = "PROVIDER_SIM_ADDR",
        default_value = "127.0.0.1:9080"
    )]
    addr: SocketAddr,

    /// PEM file of the simulator's ("Alipay's") private key, which signs answers and
    /// notifications. Required to serve.
    #[arg(long, global = true, env = "SIM_ALIPAY_PRIVATE_KEY_FILE")]
    alipay_private_key_file: Option<PathBuf>,

    /// PEM file of the merchant's public key, which checks the signature of our requests.
    /// Required to serve.
    #[arg(long, global = true, env = "SIM_MERCHANT_PUBLIC_KEY_FILE")]
    merchant_public_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the simulator (the default).
    Serve,
    /// Write development key pairs (merchant-{private,public}.pem, alipay-{private,public}.pem)
    /// into DIR, keeping the files that exist.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.serve).await,
        Command::Keygen { dir } => keygen(&dir),
    };
    kit::exit_code(result)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let alipay_key = args
        .alipay_private_key_file
        .context("SIM_ALIPAY_PRIVATE_KEY_FILE (--alipay-private-key-file) is required")?;
    let merchant_key = args
        .merchant_public_key_file
        .context("SIM_MERCHANT_PUBLIC_KEY_FILE (--merchant-public-key-file) is required")?;
    let config = SimConfig {
        alipay_private_key: PrivateKey::from_file(&alipay_key)?,
        merchant_public_key: PublicKey::from_file(&merchant_key)?,
        clock: Arc::new(SystemClock),
    };
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, "provider simulator listening; gateway at /gateway.do");
    sim::serve(config, listener, kit::shutdown::signal()).await?;
    Ok(())
}

fn keygen(dir: &std::path::Path) -> anyhow::Result<()> {
    let written = sim::write_dev_keys(dir)?;
    if written.is_empty() {
        tracing::info!(dir = %dir.display(), "every key file exists; nothing written");
    }
    for path in written {
        tracing::info!(path = %path.display(), "key file written");
    }
    Ok(())
}
