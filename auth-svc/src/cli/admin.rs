//! `auth-svc admin create`: the first administrator of a fresh mesh.

use std::io::Read;

use anyhow::Context;
use chrono::Utc;
use kit::ServerArgs;

use super::connect;
use crate::{AuthArgs, config::Config, service::admin};

/// The password from `ADMIN_PASSWORD` (or the file `ADMIN_PASSWORD_FILE` names), else the first
/// line of stdin; never a flag (flags are visible to other users of the machine).
fn admin_password() -> anyhow::Result<String> {
    if let Some(password) = kit::cli::env_secret("ADMIN_PASSWORD").map_err(anyhow::Error::msg)? {
        return Ok(password);
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the password from stdin")?;
    let password = input.lines().next().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "set ADMIN_PASSWORD or pipe the password into stdin"
    );
    Ok(password)
}

/// `auth-svc admin create`: an administrator, the password read as [`admin_password`] says.
pub async fn create(
    server: &ServerArgs,
    auth: &AuthArgs,
    email: &str,
    username: &str,
    display_name: Option<&str>,
) -> anyhow::Result<()> {
    let password = admin_password()?;
    let config = Config::new(&auth.accounts, &auth.keys.master_key()?)?;
    let mut conn = connect(server).await?;
    let user = admin::create_admin(
        &mut conn,
        &config,
        email,
        username,
        display_name,
        &password,
        Utc::now(),
    )
    .await?;
    tracing::info!(user_id = %user.id, username = %user.username, "administrator created");
    #[expect(
        clippy::print_stdout,
        reason = "the command's output, captured by scripts"
    )]
    {
        println!("{}", user.id);
    }
    Ok(())
}
