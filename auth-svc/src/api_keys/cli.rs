//! `auth-svc service-key issue`: API keys of service accounts, for the mesh's own services and
//! for the backends that charge their users' quotas.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{
    ServerArgs,
    caller::{role, scope},
};
use uuid::Uuid;

use super::{
    domain::{Grantor, KeyRequest},
    store,
};
use crate::{
    accounts::validate::{SERVICE_EMAIL_DOMAIN, SERVICE_USERNAME_PREFIX},
    error::Error,
    keys::cli::connect,
};

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

fn account_name(service: &str) -> Result<String, Error> {
    let valid = (1..=28).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::invalid(
            "service",
            "1–28 characters of a-z, 0-9 and -",
        ));
    }
    Ok(format!("{SERVICE_USERNAME_PREFIX}{service}"))
}

/// The id of service account `username`, created (active, role `service`, no password) if
/// missing; an existing account of that name must hold the `service` role.
async fn ensure_service_account(
    conn: &mut AsyncPgConnection,
    username: &str,
    now: DateTime<Utc>,
) -> Result<Uuid, Error> {
    let email = format!("{username}@{SERVICE_EMAIL_DOMAIN}");
    store::insert_service_account(conn, username, &email, now).await?;
    let (id, owner) = store::find_by_username(conn, username)
        .await?
        .ok_or_else(|| Error::Internal(format!("service account {username} vanished")))?;
    if !owner.roles.iter().any(|held| held == role::SERVICE) || !owner.is_active() {
        return Err(Error::PermissionDenied(format!(
            "{username} exists but is not an active service account"
        )));
    }
    Ok(id)
}

/// Runs `service-key issue`.
pub async fn issue_service_key(server: &ServerArgs, args: &IssueServiceKey) -> anyhow::Result<()> {
    let username = account_name(&args.service)?;
    let mut conn = connect(server).await?;
    let now = Utc::now();
    let scopes = &args.scopes;
    let revoke_previous = args.revoke_previous;
    let (row, secret, revoked) = conn
        .transaction::<_, Error, _>(async move |conn| {
            let user_id = ensure_service_account(conn, &username, now).await?;
            let revoked = if revoke_previous {
                store::revoke_all_for_user(conn, user_id, now).await?
            } else {
                Vec::new()
            };
            let request = KeyRequest {
                name: &format!("{username} service key"),
                scopes,
                expires_at: None,
            };
            let (row, secret) =
                super::create(conn, user_id, &request, Grantor::Operator, "", now).await?;
            Ok((row, secret, revoked))
        })
        .await?;
    tracing::info!(
        key_id = %row.id,
        scopes = ?row.scopes(),
        revoked = revoked.len(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_become_account_names() {
        assert_eq!(account_name("quota").ok().as_deref(), Some("svc-quota"));
        for bad in ["", "Quota", "a_b", &"x".repeat(29)] {
            assert!(account_name(bad).is_err(), "{bad:?}");
        }
    }
}
