//! `auth-svc keys rotate`, and the check of the signing key before serving.

use chrono::Utc;
use kit::ServerArgs;

use super::connect;
use crate::{config::KeysArgs, service::signing_keys};

/// `auth-svc keys rotate`: a new signing key becomes current; the previous one stays published
/// until its tokens have expired. Prints the new key id. Running servers switch within
/// [`signing_keys::RELOAD_INTERVAL`].
pub async fn rotate(server: &ServerArgs, keys: &KeysArgs) -> anyhow::Result<()> {
    let master_key = keys.master_key()?;
    let mut conn = connect(server).await?;
    let kid = signing_keys::rotate(&mut conn, &master_key, Utc::now()).await?;
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
    let kid = signing_keys::check_current(&mut conn, &master_key, Utc::now())
        .await
        .map_err(|err| anyhow::anyhow!("token signing key: {err}"))?;
    tracing::info!(%kid, "token signing key ready");
    Ok(())
}
