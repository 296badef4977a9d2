//! Settings of the accounts half: token lifetimes, password hashing and policy, email.

use std::time::Duration;

use kit::cli::Secret;

use crate::domain::{lockout, master_key::MasterKey, password::Hasher, secret::HashKey};

/// Account, token and mail settings (flattened into the binary's command line).
#[derive(Debug, Clone, clap::Args)]
pub struct AccountsArgs {
    /// `iss` claim of the access tokens auth-svc issues (verifiers must expect the same).
    #[arg(long, env = "AUTH_ISSUER", default_value = "commerce-mesh")]
    pub issuer: String,
    /// `aud` claim of the access tokens auth-svc issues (verifiers must expect the same).
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "commerce-mesh")]
    pub audience: String,
    /// Lifetime of access tokens, in seconds (60–3600).
    #[arg(
        long,
        env = "ACCESS_TOKEN_TTL_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(60..=3600)
    )]
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens (and idle sessions), in days (1–365).
    #[arg(
        long,
        env = "REFRESH_TOKEN_TTL_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=365)
    )]
    pub refresh_token_ttl_days: u32,
    /// Absolute lifetime of a session, in days from its sign-in (1–365): refreshing never extends
    /// it further, so a stolen refresh token cannot be kept alive forever.
    #[arg(
        long,
        env = "SESSION_MAX_LIFETIME_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=365)
    )]
    pub session_max_lifetime_days: u32,
    /// CreateApiKey without the password needs a sign-in at most this many minutes old (1–1440),
    /// so a stolen access token cannot be turned into a lasting key.
    #[arg(
        long,
        env = "API_KEY_REAUTH_MINUTES",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1440)
    )]
    pub api_key_reauth_minutes: u32,
    /// argon2id memory cost in KiB (OWASP: 19456 = 19 MiB).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: 2).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes (OWASP: 1).
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Minimum zxcvbn strength score (0–4) of new passwords.
    #[arg(
        long,
        env = "PASSWORD_MIN_STRENGTH",
        default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(0..=4)
    )]
    pub password_min_strength: u8,
    /// Registration attempts allowed per client address per hour, refused ones included (0:
    /// unlimited, e.g. for load tests).
    #[arg(long, env = "REGISTRATIONS_PER_CLIENT_HOUR", default_value_t = 20)]
    pub registrations_per_client_hour: u32,
    /// Registrations allowed per hour from all clients together that get as far as hashing the
    /// password (refused probes do not count): a bound on the argon2 work sign-ups can cause (0:
    /// unlimited).
    #[arg(long, env = "REGISTRATIONS_PER_HOUR", default_value_t = 2000)]
    pub registrations_per_hour: u32,
    /// Refuse Login until the account's email is verified.
    #[arg(long, env = "AUTH_REQUIRE_VERIFIED_EMAIL")]
    pub require_verified_email: bool,
    /// SMTP server for verification and reset mail, e.g. `smtps://user:pass@smtp.example.com`.
    /// Required unless `--log-mail` is set.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Development only: without `SMTP_URL`, keep mail in the `outbox` table and write its secret
    /// link (a reset link signs its reader in) to the log. Without this setting auth-svc refuses
    /// to start with no `SMTP_URL`, so production never logs reset links by accident.
    #[arg(long, env = "AUTH_LOG_MAIL")]
    pub log_mail: bool,
    /// Sender of auth-svc's mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "commerce-mesh <no-reply@localhost>"
    )]
    pub mail_from: String,
    /// Base URL of the links in mail (`<PUBLIC_URL>/verify-email?token=…`,
    /// `<PUBLIC_URL>/reset-password?token=…`), e.g. the web front end.
    #[arg(long, env = "PUBLIC_URL", default_value = "http://localhost:9000")]
    pub public_url: String,
}

impl AccountsArgs {
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }
}

/// The accounts settings the handlers use.
#[derive(Debug)]
pub struct Config {
    pub refresh_token_ttl: chrono::Duration,
    pub session_max_lifetime: chrono::Duration,
    pub api_key_reauth: chrono::Duration,
    pub email_token_ttl: chrono::Duration,
    pub reset_token_ttl: chrono::Duration,
    pub require_verified_email: bool,
    pub registrations_per_client_hour: u32,
    pub registrations_per_hour: u32,
    pub password_min_strength: u8,
    pub public_url: String,
    pub lockout: lockout::Policy,
    pub hasher: Hasher,
    /// Keys the stored form of login names that matched no account (and of registration
    /// emails), derived from the master key.
    pub name_key: HashKey,
}

impl Config {
    pub fn new(args: &AccountsArgs, master_key: &MasterKey) -> anyhow::Result<Self> {
        Ok(Self {
            refresh_token_ttl: chrono::Duration::days(i64::from(args.refresh_token_ttl_days)),
            session_max_lifetime: chrono::Duration::days(i64::from(args.session_max_lifetime_days)),
            api_key_reauth: chrono::Duration::minutes(i64::from(args.api_key_reauth_minutes)),
            email_token_ttl: chrono::Duration::hours(24),
            reset_token_ttl: chrono::Duration::minutes(30),
            require_verified_email: args.require_verified_email,
            registrations_per_client_hour: args.registrations_per_client_hour,
            registrations_per_hour: args.registrations_per_hour,
            password_min_strength: args.password_min_strength,
            public_url: args.public_url.trim_end_matches('/').to_owned(),
            lockout: lockout::Policy::default(),
            hasher: Hasher::new(
                args.argon2_memory_kib,
                args.argon2_iterations,
                args.argon2_parallelism,
            )?,
            name_key: HashKey::new(master_key.derive("commerce-mesh auth login names")),
        })
    }
}

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
