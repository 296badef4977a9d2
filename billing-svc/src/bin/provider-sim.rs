//! provider-sim: a payment provider simulator speaking Alipay's open-platform protocol and,
//! when configured, WeChat Pay API v3, for development and end-to-end tests (`serve`, the
//! default), and `keygen` for development keys.
//! Routes and behaviour: `billing_svc::sim`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use billing_svc::{
    providers::rsa_keys::{PrivateKey, PublicKey},
    sim::{self, SimConfig, wechat},
};
use clap::{Args, Parser, Subcommand};
use kit::clock::SystemClock;
use tokio::net::TcpListener;

/// provider-sim: Alipay's gateway and checkout page, and WeChat Pay API v3 with its QR page, and
/// their notifications, simulated (HTTP on port 9080).
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

    /// Directory of the WeChat Pay development files `keygen --provider wechatpay` writes
    /// (merchant public key and serial, platform private key and serial, APIv3 key). WeChat Pay
    /// is simulated only when set.
    #[arg(long, global = true, env = "SIM_WECHATPAY_KEY_DIR")]
    wechatpay_key_dir: Option<PathBuf>,
}

/// Whose development keys `keygen` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyProvider {
    /// merchant-{private,public}.pem, alipay-{private,public}.pem
    Alipay,
    /// merchant-{private,public}.pem, merchant-serial, platform-{private,public}.pem,
    /// platform-serial, apiv3-key
    Wechatpay,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the simulator (the default).
    Serve,
    /// Write development key material into DIR, keeping the files that exist: Alipay's key
    /// pairs, or WeChat Pay's key pairs with their serials and an APIv3 key.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "alipay")]
        provider: KeyProvider,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.serve).await,
        Command::Keygen { dir, provider } => keygen(&dir, provider),
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
    let wechatpay = args
        .wechatpay_key_dir
        .as_deref()
        .map(wechat::config_from_dir)
        .transpose()
        .context("SIM_WECHATPAY_KEY_DIR")?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(
        addr = %args.addr,
        wechatpay = wechatpay.is_some(),
        "provider simulator listening; Alipay's gateway at /gateway.do, WeChat Pay's API at /v3/"
    );
    sim::serve_with_wechatpay(config, wechatpay, listener, kit::shutdown::signal()).await?;
    Ok(())
}

fn keygen(dir: &std::path::Path, provider: KeyProvider) -> anyhow::Result<()> {
    let written = match provider {
        KeyProvider::Alipay => sim::write_dev_keys(dir)?,
        KeyProvider::Wechatpay => wechat::write_dev_keys(dir)?,
    };
    if written.is_empty() {
        tracing::info!(dir = %dir.display(), "every key file exists; nothing written");
    }
    for path in written {
        tracing::info!(path = %path.display(), "key file written");
    }
    Ok(())
}
