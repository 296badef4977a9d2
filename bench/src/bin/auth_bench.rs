//! Load generator for auth-svc: logins per second, `VerifyApiKey` latency and throughput with the
//! verification cache hit (one key, repeatedly) and missed (every call a distinct fresh key), and
//! access-token verifications per second in kit's `Authenticator` (in-process).
//!
//! It needs a running auth-svc (release build), an API key with the `service` scope
//! (`auth-svc service-key issue --service bench`) and auth-svc's database; it registers its own
//! users (marking their emails verified in the database, as API keys need) and keys. Writes a
//! Markdown section to `bench/results/auth.md`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bench::{
    Stats, Table, WARMUP, ms, rate, run_concurrent, run_items, run_tool, verdict, write_section,
};
use clap::Parser;
use kit::caller::{AuthConfig, Authenticator, RemoteAuth};
use proto::auth::{
    CreateApiKeyRequest, LoginRequest, RegisterRequest, VerifyApiKeyRequest,
    auth_service_client::AuthServiceClient,
};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// auth-svc benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// auth-svc's gRPC URL.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:9001")]
    auth_url: String,
    /// An API key with the `service` scope, sent as `x-api-key` to VerifyApiKey.
    #[arg(long, env = "BENCH_SERVICE_KEY", hide_env_values = true)]
    service_key: String,
    /// auth-svc's database: the bench cannot read its users' mail, so it marks their emails
    /// verified there (API keys need a verified email).
    #[arg(long, env = "AUTH_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Seconds each timed case runs.
    #[arg(long, env = "BENCH_DURATION_SECS", default_value_t = 10)]
    duration_secs: u64,
    /// Concurrent Login calls (each login hashes a password with argon2id).
    #[arg(long, default_value_t = 16)]
    login_concurrency: usize,
    /// Concurrent VerifyApiKey calls: one cached run per value (comma-separated); the uncached
    /// run uses the largest.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 16])]
    verify_concurrency: Vec<usize>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct fresh keys for the uncached VerifyApiKey case (100 per bench user).
    #[arg(long, default_value_t = 2000)]
    uncached_keys: usize,
    /// Concurrent in-process token verifications.
    #[arg(long, default_value_t = 2)]
    jwt_concurrency: usize,
    /// Expected `iss` of access tokens.
    #[arg(long, env = "AUTH_ISSUER", default_value = "commerce-mesh")]
    issuer: String,
    /// Expected `aud` of access tokens.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "commerce-mesh")]
    audience: String,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/auth.md")]
    output: PathBuf,
}

/// Keys one user may hold (auth-svc's per-user limit).
const KEYS_PER_USER: usize = 100;
/// Registrations in flight during setup.
const SETUP_CONCURRENCY: usize = 4;

type Client = AuthServiceClient<Channel>;

struct BenchUser {
    username: String,
    password: String,
    access_token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_secs);
    let clients = connect(&args).await?;
    let service_key: MetadataValue<Ascii> = args
        .service_key
        .parse()
        .context("the service key is not valid header text")?;

    let users_needed = args
        .login_concurrency
        .max((args.uncached_keys + 1).div_ceil(KEYS_PER_USER))
        .max(1);
    eprintln!("registering {users_needed} bench users…");
    let users = Arc::new(register_users(&clients, users_needed).await?);
    mark_verified(&args.database_url, &users)?;

    eprintln!("creating {} API keys…", args.uncached_keys + 1);
    let mut fresh_keys = create_keys(&clients, &users, args.uncached_keys + 1).await?;
    let hot_key = fresh_keys.pop().context("no key was created")?;

    let mut table = Table::new(&[
        "case",
        "concurrency",
        "calls",
        "rate",
        "p50",
        "p99",
        "errors",
    ]);
    let mut row = |name: &str, concurrency: usize, stats: &Stats| {
        table.row(vec![
            name.to_owned(),
            concurrency.to_string(),
            stats.calls.to_string(),
            rate(stats.per_second()),
            ms(stats.latency.p50()),
            ms(stats.latency.p99()),
            stats.errors.to_string(),
        ]);
    };

    eprintln!("Login…");
    let login = {
        let (clients, users) = (clients.clone(), Arc::clone(&users));
        run_concurrent(args.login_concurrency, duration, move |index| {
            let mut client = clients[index % clients.len()].clone();
            let user = &users[index % users.len()];
            let request = LoginRequest {
                username_or_email: user.username.clone(),
                password: user.password.clone(),
            };
            async move { client.login(request).await.map(drop) }
        })
        .await
    };
    let login = report("Login", login)?;
    row("Login", args.login_concurrency, &login);

    // Warm the cache (and the connections) before timing.
    for client in &clients {
        verify_call(client, &service_key, hot_key.clone()).await?;
    }
    let mut cached_runs = Vec::new();
    for &concurrency in &args.verify_concurrency {
        eprintln!("VerifyApiKey, cached, {concurrency} concurrent…");
        let (clients, service_key, hot_key) =
            (clients.clone(), service_key.clone(), hot_key.clone());
        let cached = run_concurrent(concurrency, duration, move |index| {
            verify_call(
                &clients[index % clients.len()],
                &service_key,
                hot_key.clone(),
            )
        })
        .await;
        let cached = report("VerifyApiKey (cached)", cached)?;
        row("VerifyApiKey, cached (one key)", concurrency, &cached);
        cached_runs.push((concurrency, cached));
    }

    let uncached_concurrency = args.verify_concurrency.iter().copied().max().unwrap_or(16);
    eprintln!("VerifyApiKey, uncached…");
    let uncached = {
        let (clients, service_key) = (clients.clone(), service_key.clone());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        run_items(uncached_concurrency, fresh_keys, move |key: String| {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            verify_call(&clients[index % clients.len()], &service_key, key)
        })
        .await
    };
    let uncached = report("VerifyApiKey (uncached)", uncached)?;
    row(
        "VerifyApiKey, uncached (distinct fresh keys)",
        uncached_concurrency,
        &uncached,
    );

    eprintln!("token verification in kit…");
    let remote = RemoteAuth::new(&args.auth_url, &args.service_key)?;
    let authenticator = Arc::new(Authenticator::new(
        AuthConfig {
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            ..AuthConfig::default()
        },
        Arc::new(remote),
    ));
    let token: Arc<str> = users[0].access_token.as_str().into();
    // The first verification fetches the JWKS; the timed ones are pure signature checks.
    authenticator
        .verify_token(&token)
        .await
        .context("verifying a bench user's access token")?;
    let jwt = run_concurrent(args.jwt_concurrency, duration, move |_| {
        let (authenticator, token) = (Arc::clone(&authenticator), Arc::clone(&token));
        async move { authenticator.verify_token(&token).await.map(drop) }
    })
    .await;
    let jwt = report("verify_token", jwt)?;
    row(
        "Authenticator::verify_token (in-process)",
        args.jwt_concurrency,
        &jwt,
    );

    let targets: String = cached_runs
        .iter()
        .map(|(concurrency, cached)| {
            format!(
                "- VerifyApiKey cached, {concurrency} concurrent: p99 {} (target < 1 ms): {}; {} (target ≥ 20,000/s): {}\n",
                ms(cached.latency.p99()),
                verdict(cached.latency.p99() < Duration::from_millis(1)),
                rate(cached.per_second()),
                verdict(cached.per_second() >= 20_000.0),
            )
        })
        .collect();
    let body = format!(
        "auth-svc (release) on {url}, {cores} cores shared by client and server, {connections} HTTP/2 \
         connections, {secs} s per timed case after {warmup} s of warm-up; the uncached case \
         verifies {fresh} distinct keys once each.\n\n{table}\n{targets}",
        url = args.auth_url,
        cores = std::thread::available_parallelism().map_or(0, usize::from),
        connections = args.connections,
        secs = args.duration_secs,
        warmup = WARMUP.as_secs(),
        fresh = uncached.calls + uncached.errors,
        table = table.render(),
    );
    write_section(&args.output, "auth-svc", &body)?;
    #[expect(clippy::print_stdout, reason = "the report")]
    {
        println!("{body}");
    }
    Ok(())
}

/// One VerifyApiKey call for `key`, authenticated with the service key.
fn verify_call(
    client: &Client,
    service_key: &MetadataValue<Ascii>,
    key: String,
) -> impl Future<Output = Result<(), tonic::Status>> + use<> {
    let mut client = client.clone();
    let mut request = Request::new(VerifyApiKeyRequest { key });
    request
        .metadata_mut()
        .insert("x-api-key", service_key.clone());
    async move { client.verify_api_key(request).await.map(drop) }
}

/// The stats of a run, or the first error if every call failed.
fn report(case: &str, (stats, error): (Stats, Option<tonic::Status>)) -> anyhow::Result<Stats> {
    if let Some(status) = &error {
        eprintln!("{case}: {} errors, first: {status}", stats.errors);
        if stats.calls == 0 {
            anyhow::bail!("{case}: every call failed: {status}");
        }
    }
    Ok(stats)
}

async fn connect(args: &Args) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let channel = Channel::from_shared(args.auth_url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.auth_url))?;
        clients.push(AuthServiceClient::new(channel));
    }
    Ok(clients)
}

/// Registers and signs in `count` users with random names and strong random passwords, a few at
/// a time (each hashes a password).
async fn register_users(clients: &[Client], count: usize) -> anyhow::Result<Vec<BenchUser>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut users = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(SETUP_CONCURRENCY) {
        users.extend(register_batch(clients, &run, batch).await?);
    }
    Ok(users)
}

async fn register_batch(
    clients: &[Client],
    run: &str,
    indexes: &[usize],
) -> anyhow::Result<Vec<BenchUser>> {
    let mut tasks = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let mut client = clients[index % clients.len()].clone();
        let username = format!("bench-{}-{index}", &run[..12]);
        let password = format!("Bench!{}", uuid::Uuid::new_v4().simple());
        tasks.push(tokio::spawn(async move {
            client
                .register(RegisterRequest {
                    email: format!("{username}@bench.invalid"),
                    username: username.clone(),
                    password: password.clone(),
                    display_name: String::new(),
                })
                .await
                .with_context(|| format!("registering {username}"))?;
            let login = client
                .login(LoginRequest {
                    username_or_email: username.clone(),
                    password: password.clone(),
                })
                .await
                .with_context(|| format!("signing in {username}"))?
                .into_inner();
            anyhow::Ok(BenchUser {
                username,
                password,
                access_token: login.access_token,
            })
        }));
    }
    let mut users = Vec::with_capacity(tasks.len());
    for task in tasks {
        users.push(task.await??);
    }
    Ok(users)
}

/// Marks the emails of `users` verified, as their confirmation links would (with `psql`).
fn mark_verified(database_url: &str, users: &[BenchUser]) -> anyhow::Result<()> {
    // Bench usernames are `bench-<hex>-<n>`: nothing to quote.
    let names: Vec<String> = users
        .iter()
        .map(|user| format!("'{}'", user.username))
        .collect();
    let sql = format!(
        "UPDATE auth.users SET email_verified_at = now() WHERE username IN ({})",
        names.join(",")
    );
    run_tool(
        Path::new("psql"),
        &["-qAt", "-v", "ON_ERROR_STOP=1", "-c", &sql, database_url],
    )
    .map_err(|err| anyhow::anyhow!("marking the bench users verified: {err}"))?;
    Ok(())
}

/// Creates `count` keys spread over `users` (at most [`KEYS_PER_USER`] each); returns the secrets.
async fn create_keys(
    clients: &[Client],
    users: &[BenchUser],
    count: usize,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        count <= users.len() * KEYS_PER_USER,
        "{count} keys need more than {} users",
        users.len()
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, user) in users.iter().enumerate() {
        let keys_here = count
            .saturating_sub(index * KEYS_PER_USER)
            .min(KEYS_PER_USER);
        if keys_here == 0 {
            break;
        }
        let mut client = clients[index % clients.len()].clone();
        let bearer: MetadataValue<Ascii> = format!("Bearer {}", user.access_token).parse()?;
        tasks.push(tokio::spawn(async move {
            let mut secrets = Vec::with_capacity(keys_here);
            for _ in 0..keys_here {
                let mut request = Request::new(CreateApiKeyRequest {
                    name: "bench".to_owned(),
                    scopes: vec!["quota:read".to_owned()],
                    expires_at: None,
                    // Just signed in: the session is recent enough.
                    password: String::new(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                secrets.push(client.create_api_key(request).await?.into_inner().secret);
            }
            anyhow::Ok(secrets)
        }));
    }
    let mut secrets = Vec::with_capacity(count);
    for task in tasks {
        secrets.extend(task.await??);
    }
    eprintln!("  {} keys in {:?}", secrets.len(), started.elapsed());
    Ok(secrets)
}
