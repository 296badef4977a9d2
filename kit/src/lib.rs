//! What every commerce-mesh server shares: configuration ([`cli`]), the database pool and
//! migrations ([`db`]), the server bootstrap ([`server`]), per-RPC observability ([`observe`]),
//! logging and metrics ([`telemetry`]), the `healthcheck` subcommand ([`healthcheck`]), the client address of a request ([`client_address`]), shutdown ([`shutdown`]), error mapping ([`error`]), the
//! handlers' helpers (wire conversions in [`convert`] and [`json`], pagination in [`page`], the
//! time source in [`clock`]), the quota client for backends ([`metering`]) and, behind the
//! `testing` feature, the test harness ([`testing`]).

pub mod caller;
pub mod cli;
pub mod client_address;
pub mod clock;
pub mod convert;
pub mod db;
pub mod error;
pub mod healthcheck;
pub mod json;
pub mod metering;
pub mod observe;
pub mod page;
pub mod server;
pub mod shutdown;
pub mod starting;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;

pub use cli::{ServerArgs, ServiceSpec};

/// Logs a failed command and turns its outcome into the process exit code.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
