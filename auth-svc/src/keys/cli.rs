//! Command-line settings of the keys half and the `keys rotate` command.

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{ServerArgs, cli::Secret};

use super::MasterKey;
use crate::{MIGRATIONS, SPEC};

/// Signing-key and API-key settings (flattened into the binary's command line).
#[derive(Debug, Clone, clap::Args)]
pub struct KeysArgs {
    /// Key that encrypts the token signing keys at rest: 32 bytes as base64 or 64 hex digits
    /// (e.g. `openssl rand -base64 32`). Required to serve and to rotate keys; keep it secret and
    /// stable across restarts.
    #[arg(long, env = "AUTH_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<Secret>,
    /// How long auth-svc trusts a verified API key without reading the database, in seconds
    /// (0–30; 0 disables the cache). Revoking a key in this process takes effect at once.
    #[arg(
        long,
        env = "API_KEY_CACHE_TTL_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=30)
    )]
    pub api_key_cache_ttl_secs: u64,
}

impl KeysArgs {
    /// The master key, or an error saying how to provide one (never quoting what was given).
    pub fn master_key(&self) -> anyhow::Result<MasterKey> {
        let text = self.master_key.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "AUTH_MASTER_KEY is not set: give 32 bytes as base64 or hex (e.g. `openssl rand -base64 32`)"
            )
        })?;
        text.expose().parse().map_err(anyhow::Error::msg)
    }

    pub fn api_key_cache_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.api_key_cache_ttl_secs)
    }
}

/// Applies pending migrations, then connects to the `auth` schema (for one-shot commands).
pub async fn connect(server: &ServerArgs) -> anyhow::Result<AsyncPgConnection> {
    kit::db::migrate(server.database_url(), SPEC.name, MIGRATIONS).await?;
    let url = kit::db::url_with_schema(server.database_url(), SPEC.name)?;
    Ok(AsyncPgConnection::establish(&url).await?)
}

/// `auth-svc keys rotate`: a new signing key becomes current; the previous one stays published
/// until its tokens have expired. Prints the new key id. Running servers switch within
/// [`super::RELOAD_INTERVAL`].
pub async fn rotate(server: &ServerArgs, keys: &KeysArgs) -> anyhow::Result<()> {
    let master_key = keys.master_key()?;
    let mut conn = connect(server).await?;
    let kid = super::rotate(&mut conn, &master_key, Utc::now()).await?;
    tracing::info!(%kid, "rotated the token signing key");
    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        println!("{kid}");
    }
    Ok(())
}

/// Run before serving: applies migrations and refuses to start unless `AUTH_MASTER_KEY` opens the
/// current signing key (creating the first key on a fresh database).
pub async fn preflight(server: &ServerArgs, keys: &KeysArgs) -> anyhow::Result<()> {
    let master_key = keys.master_key()?;
    let mut conn = connect(server).await?;
    let kid = super::check_current(&mut conn, &master_key, Utc::now())
        .await
        .map_err(|err| anyhow::anyhow!("token signing key: {err}"))?;
    tracing::info!(%kid, "token signing key ready");
    Ok(())
}
