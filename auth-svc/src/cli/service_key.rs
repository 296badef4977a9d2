//! `auth-svc service-key issue`: API keys of service accounts, for the mesh's own services and
//! for the backends that charge their users' quotas.

use chrono::Utc;
use kit::{ServerArgs, caller::scope};

use super::connect;
use crate::{domain::api_key::service_account_name, service::api_keys};

/// Issue an API key for a service account; prints only the key.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueServiceKey {
    /// The service's name, e.g. `quota`: 1–28 characters of `a-z`, `0-9` and `-`. Its account is
    /// `svc-<name>` (role `service`, no password: it cannot log in), created if missing.
    #[arg(long)]
    pub service: String,
    /// The key's scopes, comma-separated. `service` lets the mesh's own services call the
    /// internal RPCs (VerifyApiKey, ApplyEntitlements); a backend that charges its users gets
    /// `quota:consume,quota:read` and never `service`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = scope::SERVICE,
        value_parser = clap::builder::PossibleValuesParser::new(scope::ALL),
    )]
    pub scopes: Vec<String>,
    /// Revoke the account's earlier keys (servers refuse them within their cache TTL).
    #[arg(long)]
    pub revoke_previous: bool,
}

/// Runs `service-key issue`.
pub async fn issue_service_key(server: &ServerArgs, args: &IssueServiceKey) -> anyhow::Result<()> {
    // Checked before connecting: a bad name needs no database.
    let username = service_account_name(&args.service)?;
    let mut conn = connect(server).await?;
    let (row, secret, revoked) = api_keys::issue_service_key(
        &mut conn,
        &username,
        &args.scopes,
        args.revoke_previous,
        Utc::now(),
    )
    .await?;
    tracing::info!(
        key_id = %row.id,
        scopes = ?row.scopes(),
        revoked,
        "issued a service API key"
    );
    #[expect(
        clippy::print_stdout,
        reason = "the command's output, captured by scripts"
    )]
    {
        println!("{secret}");
    }
    Ok(())
}
