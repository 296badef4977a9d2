//! Configuration shared by every server, read once at start from flags or environment variables.
//!
//! Each service names itself with a [`ServiceSpec`]; the service-specific variables are then
//! `<SVC>_LISTEN_ADDR`, `<SVC>_ADMIN_ADDR` and `<SVC>_DATABASE_URL` (falling back to `DATABASE_URL`),
//! so one shell can run the whole mesh. `--help` on each binary lists every variable and default.
//! Every secret variable `X` may instead be given as a file, `X_FILE` ([`with_secret_files`]).

use std::{ffi::OsString, fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, error::ErrorKind};

/// The default database: the local PostgreSQL that `just up` starts.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/commerce";

/// What distinguishes one server of the mesh from another.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Short name, also the PostgreSQL schema the service owns (`auth`, `billing`, `quota`).
    pub name: &'static str,
    /// Fully qualified gRPC service name, reported by tonic-health.
    pub grpc_service: &'static str,
    /// Default gRPC port.
    pub port: u16,
    /// Default port of the admin HTTP listener (Prometheus metrics).
    pub admin_port: u16,
}

impl ServiceSpec {
    /// Prefix of this service's environment variables, e.g. `AUTH`.
    pub fn env_prefix(&self) -> String {
        self.name.to_ascii_uppercase()
    }
}

/// A secret setting (a key, a password): taken by clap as an opaque string, so a malformed value
/// is never echoed in a parse error (check it afterwards with a message that does not quote it),
/// and `Debug` never shows it. Its argument also needs `hide_env_values = true`, so `--help` does
/// not print it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// How a service authenticates its callers through auth-svc (flattened into the services'
/// settings; each names its own service API key variable).
#[derive(Debug, Clone, Args)]
pub struct CallerArgs {
    /// auth-svc gRPC URL, for the JWKS and API key verification.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:9001")]
    pub auth_url: String,

    /// Expected `iss` of access tokens.
    #[arg(long, env = "AUTH_ISSUER", default_value = "commerce-mesh")]
    pub auth_issuer: String,

    /// Expected `aud` of access tokens.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "commerce-mesh")]
    pub auth_audience: String,

    /// Seconds a verified API key is trusted before auth-svc is asked again (at most 30).
    #[arg(long, env = "API_KEY_CACHE_TTL_SECS", default_value_t = 10)]
    pub api_key_cache_ttl_secs: u64,

    /// Lifetime auth-svc gives access tokens, in seconds (the same variable as auth-svc's):
    /// a token claiming a longer life is refused.
    #[arg(
        long,
        env = "ACCESS_TOKEN_TTL_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(60..=3600)
    )]
    pub access_token_ttl_secs: u64,
}

impl CallerArgs {
    /// The caller authentication settings.
    pub fn auth_config(&self) -> crate::caller::AuthConfig {
        crate::caller::AuthConfig {
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            api_key_cache_ttl: Duration::from_secs(self.api_key_cache_ttl_secs),
            access_token_ttl: Duration::from_secs(self.access_token_ttl_secs),
            ..crate::caller::AuthConfig::default()
        }
    }

    /// Authenticates callers through auth-svc, presenting `service_key` (named by
    /// `key_variable` in the error when missing) to verify their API keys.
    pub fn remote_authenticator(
        &self,
        service_key: Option<&Secret>,
        key_variable: &str,
    ) -> anyhow::Result<std::sync::Arc<crate::caller::Authenticator>> {
        let key = service_key.ok_or_else(|| {
            anyhow::anyhow!("{key_variable} is required to verify callers with auth-svc")
        })?;
        let source = crate::caller::RemoteAuth::new(&self.auth_url, key.expose())?;
        Ok(std::sync::Arc::new(crate::caller::Authenticator::new(
            self.auth_config(),
            std::sync::Arc::new(source),
        )))
    }
}

/// Settings every gRPC server of the mesh takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// gRPC listen address [default: 0.0.0.0:<the service's port>].
    #[arg(long, global = true)]
    pub listen_addr: Option<SocketAddr>,

    /// Admin HTTP listen address serving `/metrics` [default: 127.0.0.1:<the service's port + 100>].
    #[arg(long, global = true)]
    pub admin_addr: Option<SocketAddr>,

    /// PostgreSQL URL; falls back to $DATABASE_URL, then postgres://postgres@127.0.0.1:5432/commerce.
    #[arg(long, global = true)]
    pub database_url: Option<String>,

    /// Maximum number of pooled database connections.
    #[arg(long, global = true, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long a request waits for a pooled database connection, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub db_acquire_timeout_ms: u64,

    /// Per-RPC deadline in milliseconds (a shorter `grpc-timeout` from the client wins).
    #[arg(long, global = true, env = "RPC_TIMEOUT_MS", default_value_t = 10_000)]
    pub rpc_timeout_ms: u64,

    /// RPCs served at once across all connections; more wait for a slot.
    #[arg(
        long,
        global = true,
        env = "MAX_CONCURRENT_RPCS",
        default_value_t = 2_048
    )]
    pub max_concurrent_rpcs: usize,

    /// How long in-flight RPCs may finish after SIGTERM/SIGINT, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "SHUTDOWN_GRACE_MS",
        default_value_t = 3_000
    )]
    pub shutdown_grace_ms: u64,

    /// How often the database is probed for the health status, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "HEALTH_CHECK_INTERVAL_MS",
        default_value_t = 2_000
    )]
    pub health_check_interval_ms: u64,
}

impl ServerArgs {
    /// The gRPC address to bind.
    pub fn listen_addr(&self, spec: &ServiceSpec) -> SocketAddr {
        self.listen_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], spec.port)))
    }

    /// The admin HTTP address to bind.
    pub fn admin_addr(&self, spec: &ServiceSpec) -> SocketAddr {
        self.admin_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], spec.admin_port)))
    }

    /// The database URL after the documented fallbacks.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }
}

/// Parses the command line of a server binary whose clap type flattens [`ServerArgs`], binding the
/// service-specific environment variables (`<SVC>_LISTEN_ADDR`, `<SVC>_ADMIN_ADDR`,
/// `<SVC>_DATABASE_URL` with the `DATABASE_URL` fallback) and reading secrets from `*_FILE`.
pub fn parse<C: CommandFactory + FromArgMatches>(spec: &ServiceSpec) -> C {
    let prefix = spec.env_prefix();
    let fallback = env_secret("DATABASE_URL").unwrap_or_else(|err| exit_with(&err));
    let command = C::command()
        .mut_arg("listen_addr", |arg| {
            arg.env(format!("{prefix}_LISTEN_ADDR"))
        })
        .mut_arg("admin_addr", |arg| arg.env(format!("{prefix}_ADMIN_ADDR")))
        // The URL may hold a password: `--help` shows neither the variable's value nor the
        // DATABASE_URL fallback.
        .mut_arg("database_url", |arg| {
            let arg = arg
                .env(format!("{prefix}_DATABASE_URL"))
                .hide_env_values(true);
            match fallback {
                Some(fallback) if !fallback.is_empty() => {
                    arg.default_value(fallback).hide_default_value(true)
                }
                _ => arg,
            }
        });
    matches_of(command)
}

/// Parses the command line of a binary that is not a [`ServerArgs`] server (the edge), reading its
/// secrets from `*_FILE` like the servers do.
pub fn parse_plain<C: CommandFactory + FromArgMatches>() -> C {
    matches_of(C::command())
}

fn matches_of<C: FromArgMatches>(command: Command) -> C {
    let command = with_secret_files(command).unwrap_or_else(|err| exit_with(&err));
    let matches: ArgMatches = command.get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

fn exit_with(message: &str) -> ! {
    clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n")).exit()
}

/// Lets every secret argument (one whose environment value `--help` hides) be given as a file:
/// `<VARIABLE>_FILE` names a file holding the value, for Compose and Kubernetes secrets, which are
/// mounted as files (a value in the environment shows in `docker inspect` and `/proc`).
pub fn with_secret_files(command: Command) -> Result<Command, String> {
    with_secret_files_from(command, &|name| std::env::var_os(name))
}

fn with_secret_files_from(
    mut command: Command,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Command, String> {
    let secrets: Vec<(clap::Id, String)> = command
        .get_arguments()
        .filter(|arg| arg.is_hide_env_values_set())
        .filter_map(|arg| Some((arg.get_id().clone(), arg.get_env()?.to_str()?.to_owned())))
        .collect();
    for (id, variable) in secrets {
        if let Some(value) = secret_file(&variable, env)? {
            // As the default, so an explicit flag still wins; never shown by `--help`. A required
            // argument is then given, but clap counts only flags and variables as given.
            command = command.mut_arg(id, |arg| {
                arg.default_value(value)
                    .hide_default_value(true)
                    .required(false)
            });
        }
    }
    Ok(command)
}

/// The secret `variable` from the environment or from the file named by `<variable>_FILE`; for
/// secrets read outside clap (e.g. `ADMIN_PASSWORD`).
pub fn env_secret(variable: &str) -> Result<Option<String>, String> {
    env_secret_from(variable, &|name| std::env::var_os(name))
}

fn env_secret_from(
    variable: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, String> {
    if let Some(value) = secret_file(variable, env)? {
        return Ok(Some(value));
    }
    env(variable)
        .map(|value| {
            value
                .into_string()
                .map_err(|_| format!("{variable} is not valid UTF-8"))
        })
        .transpose()
}

/// The content of the file `<variable>_FILE` names, without its trailing line break; `None` when
/// that variable is unset. Setting both forms is refused: which one wins would be a guess.
fn secret_file(
    variable: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, String> {
    let file_variable = format!("{variable}_FILE");
    let Some(path) = env(&file_variable) else {
        return Ok(None);
    };
    if env(variable).is_some() {
        return Err(format!(
            "{variable} and {file_variable} are both set; set only one"
        ));
    }
    // The error names the variable and the path, never the content.
    let text = std::fs::read_to_string(&path).map_err(|err| {
        format!(
            "{file_variable}: reading {}: {err}",
            std::path::Path::new(&path).display()
        )
    })?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!(
            "{file_variable}: {} is empty",
            std::path::Path::new(&path).display()
        ));
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long, env = "TEST_KEY", hide_env_values = true)]
        key: Option<Secret>,
        #[arg(long, env = "TEST_REQUIRED_KEY", hide_env_values = true)]
        required_key: Secret,
        #[arg(long, env = "TEST_NAME")]
        name: Option<String>,
    }

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let path = std::env::temp_dir().join(format!("kit-cli-{}-{name}", std::process::id()));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }

        fn path(&self) -> OsString {
            self.0.clone().into_os_string()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse_with(env: &HashMap<&str, OsString>, args: &[&str]) -> Result<Cli, String> {
        let lookup = |name: &str| env.get(name).cloned();
        let command = with_secret_files_from(Cli::command(), &lookup)?;
        let matches = command
            .try_get_matches_from(std::iter::once("test").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        Cli::from_arg_matches(&matches).map_err(|err| err.to_string())
    }

    #[test]
    fn secrets_are_read_from_files_without_the_line_break() {
        let key = TempFile::new("key", "s3cret\n");
        let required = TempFile::new("required", "r3quired\r\n");
        let env = HashMap::from([
            ("TEST_KEY_FILE", key.path()),
            ("TEST_REQUIRED_KEY_FILE", required.path()),
        ]);
        let cli = parse_with(&env, &[]).unwrap();
        assert_eq!(cli.key.unwrap().expose(), "s3cret");
        assert_eq!(cli.required_key.expose(), "r3quired");
        // A flag still wins over the file.
        let cli = parse_with(&env, &["--key", "flag"]).unwrap();
        assert_eq!(cli.key.unwrap().expose(), "flag");
    }

    #[test]
    fn only_secret_arguments_take_a_file() {
        let name = TempFile::new("name", "from-file");
        let env = HashMap::from([("TEST_NAME_FILE", name.path())]);
        assert_eq!(
            parse_with(&env, &["--required-key", "k"]).unwrap().name,
            None
        );
    }

    #[test]
    fn both_forms_or_an_unreadable_or_empty_file_are_refused() {
        let key = TempFile::new("both", "s3cret");
        let env = HashMap::from([
            ("TEST_KEY_FILE", key.path()),
            ("TEST_KEY", OsString::from("other")),
        ]);
        let err = parse_with(&env, &["--required-key", "k"]).unwrap_err();
        assert!(err.contains("TEST_KEY and TEST_KEY_FILE"), "{err}");

        let env = HashMap::from([("TEST_KEY_FILE", OsString::from("/nonexistent/key"))]);
        let err = parse_with(&env, &["--required-key", "k"]).unwrap_err();
        assert!(
            err.contains("TEST_KEY_FILE: reading /nonexistent/key"),
            "{err}"
        );

        let empty = TempFile::new("empty", "\n");
        let env = HashMap::from([("TEST_KEY_FILE", empty.path())]);
        let err = parse_with(&env, &["--required-key", "k"]).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn a_secret_read_outside_clap_takes_a_file_too() {
        let password = TempFile::new("password", "pw\n");
        let lookup = |name: &str| (name == "ADMIN_PASSWORD_FILE").then(|| password.path());
        assert_eq!(
            env_secret_from("ADMIN_PASSWORD", &lookup)
                .unwrap()
                .as_deref(),
            Some("pw")
        );
        let lookup = |name: &str| (name == "ADMIN_PASSWORD").then(|| OsString::from("env"));
        assert_eq!(
            env_secret_from("ADMIN_PASSWORD", &lookup)
                .unwrap()
                .as_deref(),
            Some("env")
        );
        assert_eq!(env_secret_from("ADMIN_PASSWORD", &|_| None).unwrap(), None);
    }
}
