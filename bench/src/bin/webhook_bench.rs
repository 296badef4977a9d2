//! Load generator for billing-svc's webhook path: Alipay `TRADE_SUCCESS` notifications applied
//! per second with p50/p99, at 1, 16 and 64 concurrent calls, each over payments of its own (a
//! verified RSA2 signature and one transaction per notification), then the same notifications
//! sent again (verified and recorded as duplicates, nothing applied); beside them, in the same
//! run, PostgreSQL's own rate of a one-statement `INSERT` transaction (pgbench) at the same
//! client counts, and the ratio.
//!
//! Self-contained: it drops and creates its own database (`commerce_bench_billing` on
//! 127.0.0.1:5432), runs billing's migrations, serves billing-svc in-process over gRPC on a free
//! port of 127.0.0.1 with an Alipay provider whose keys are generated at start, subscribes its
//! users through `CreateSubscription`, and signs their notifications with "Alipay's" key before
//! any clock starts (signing is the provider's cost, not billing's). After the run it checks that
//! every call answered `success`, that every notified payment is SUCCEEDED and that every
//! notification was recorded with the verdict expected. Writes a Markdown section to
//! `bench/results/webhook.md`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bench::{
    Stats, Table, WARMUP, ms, pgbench_tps, rate, run_concurrent, run_items, run_items_for,
    run_tool, write_section,
};
use billing_svc::{
    MIGRATIONS, SPEC, Workers,
    dispatch::Dispatcher,
    domain::{money::format_yuan, plan::PlansFile},
    providers::{
        PaymentProvider,
        alipay::{Alipay, AlipayConfig, NOTIFY_SIGN_EXCLUDED, format_beijing, sign_content},
        rsa_keys::{self, PrivateKey},
    },
    routes,
    service::{Billing, Settings},
};
use chrono::{TimeDelta, Utc};
use clap::Parser;
use kit::{
    clock::{ManualClock, SystemClock},
    testing::{InProcess, TestIssuer},
};
use proto::{
    billing::{
        CreateSubscriptionRequest, HandleWebhookRequest, PaymentProvider as PbProvider,
        billing_service_client::BillingServiceClient,
    },
    google::api::HttpBody,
};
use tonic::{Request, transport::Channel};
use uuid::Uuid;

/// billing-svc webhook benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Seconds each timed case measures (after 1 s of warm-up).
    #[arg(long, default_value_t = 3)]
    duration_secs: u64,
    /// The concurrent calls of each case (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// billing-svc's database connections (DB_POOL_SIZE; its default).
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// The PostgreSQL server (its `postgres` database administers the bench's own).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// The bench's database, dropped and created at start and dropped at the end.
    #[arg(long, default_value = "commerce_bench_billing")]
    database: String,
    /// Payments prepared for the first case; later cases get enough for the rate measured so
    /// far (see `--max-payments`).
    #[arg(long, default_value_t = 1_500)]
    first_payments: usize,
    /// The most payments prepared in all (each costs two RSA signatures to prepare).
    #[arg(long, default_value_t = 40_000)]
    max_payments: usize,
    /// pgbench, for PostgreSQL's own one-transaction rate (`psql` is taken from beside it).
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// Leaves PostgreSQL's own rate out (quicker runs while tuning).
    #[arg(long)]
    no_baseline: bool,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/webhook.md")]
    output: PathBuf,
}

/// The merchant application the provider is configured with and the notifications name.
const APP_ID: &str = "2021000000000001";
const PLAN: &str = "bench-monthly";
const PLANS: &str = r#"
[free]
limits = { "analyses" = 10 }

[[plan]]
code = "bench-monthly"
name = "Bench"
price = 1999
currency = "CNY"
interval = "month"
limits = { "analyses" = 1000, "exports" = "unlimited" }
"#;
const FORM: &str = "application/x-www-form-urlencoded";
/// Concurrent CreateSubscription calls while preparing. Few: a checkout holds its pooled
/// connection while it takes a second one to store the checkout and a third to read the
/// subscription back, so as many checkouts at once as the pool has connections take them all
/// and wait for each other until the pool's acquire timeout fails every one.
const PREPARE_CONCURRENCY: usize = 4;

/// What a case sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A pending payment's first notification: verified and applied.
    Applied,
    /// An applied notification again: verified, recorded, nothing applied.
    Duplicate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Applied => "applied",
            Kind::Duplicate => "duplicate",
        }
    }
}

struct Case {
    kind: Kind,
    concurrency: usize,
    stats: Stats,
    /// The prepared payments ran out before the case's time was up.
    ran_out: bool,
}

/// A pending payment and its signed notification.
struct Prepared {
    body: Vec<u8>,
}

/// The load generator's side: connections to billing-svc and what the calls share.
struct Target {
    clients: Vec<BillingServiceClient<Channel>>,
    next_client: AtomicUsize,
    issuer: Arc<TestIssuer>,
    alipay_key: Arc<PrivateKey>,
    /// Numbers the notifications (notify_id, trade_no).
    serial: AtomicU64,
}

impl Target {
    fn client(&self) -> BillingServiceClient<Channel> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        self.clients[n % self.clients.len()].clone()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // billing-svc's own logs, when asked for (RUST_LOG=warn): it is quiet otherwise.
    if std::env::var_os("RUST_LOG").is_some() {
        kit::telemetry::init_tracing();
    }
    let psql = args.pgbench.with_file_name("psql");
    let admin_url = format!("{}/postgres", args.postgres);
    let url = format!("{}/{}", args.postgres, args.database);
    let admin = |sql: &str| {
        run_tool(
            &psql,
            &["-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql, &admin_url],
        )
    };
    admin(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        args.database
    ))
    .map_err(anyhow::Error::msg)?;
    admin(&format!("CREATE DATABASE {}", args.database)).map_err(anyhow::Error::msg)?;
    let duration = Duration::from_secs(args.duration_secs);

    let baselines = if args.no_baseline {
        Err("left out (--no-baseline)".to_owned())
    } else {
        measure_baselines(&psql, &args, &url, duration)
    };

    eprintln!("generating the merchant's and Alipay's RSA keys");
    let merchant_key = rsa_keys::generate()?;
    let alipay_key = rsa_keys::generate()?;

    // billing-svc on a runtime of its own (as in its binary: one worker per core); the load
    // generator on one thread, as the quota bench's.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let issuer = Arc::new(TestIssuer::new());
    let (server, billing) = server_runtime.block_on(start_billing(
        &url,
        args.pool_size,
        issuer.clone(),
        merchant_key,
        &alipay_key,
    ))?;
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = client_runtime.block_on(run(
        &args,
        server.addr,
        issuer,
        Arc::new(alipay_key),
        duration,
    ));
    drop(client_runtime);
    drop(server);
    drop(billing);
    server_runtime.shutdown_timeout(Duration::from_secs(5));
    let outcome = outcome.and_then(|run| {
        verify(&psql, &url, &run)?;
        Ok(run)
    });
    let dropped = admin(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        args.database
    ));
    let run = outcome?;
    dropped.map_err(anyhow::Error::msg)?;
    let body = report(&run, &baselines, &args);
    write_section(&args.output, "billing-svc webhooks", &body)?;
    eprintln!("{body}\nwritten to {}", args.output.display());
    Ok(())
}

/// Migrates the database and serves billing-svc on a free port of 127.0.0.1 with the plans
/// applied.
async fn start_billing(
    url: &str,
    pool_size: usize,
    issuer: Arc<TestIssuer>,
    merchant_key: PrivateKey,
    alipay_key: &PrivateKey,
) -> anyhow::Result<(InProcess, Arc<Billing>)> {
    kit::db::migrate(url, SPEC.name, MIGRATIONS).await?;
    let alipay: Arc<dyn PaymentProvider> = Arc::new(Alipay::new(AlipayConfig {
        // Page pay signs a redirect URL and calls nothing; nothing here calls the gateway.
        gateway_url: "http://127.0.0.1:9/gateway.do".to_owned(),
        app_id: APP_ID.to_owned(),
        merchant_private_key: merchant_key,
        alipay_public_key: alipay_key.public_key(),
    })?);
    let settings = Settings {
        checkout_expiry: TimeDelta::hours(2),
        grace_period: TimeDelta::days(7),
        public_url: "http://127.0.0.1:9".to_owned(),
        default_return_url: "http://localhost:9000/".to_owned(),
    };
    let service_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
    let authenticator = issuer.authenticator();
    let (billing_tx, billing_rx) = std::sync::mpsc::channel();
    let server = InProcess::start(
        SPEC,
        url,
        MIGRATIONS,
        |server| server.db_pool_size = pool_size,
        move |pool| {
            // Entitlement delivery is not measured: no quota-svc runs. The dispatcher runs and
            // looks at the outbox after every commit, as in billing-svc, but its clock stays an
            // hour before the run, so no row is ever due and nothing is sent. (Pointed at an
            // unreachable quota-svc with the real clock, it would retry every row after 1, 2,
            // 4 s ... during the cases: work a deployed billing-svc does not do.)
            let dispatcher = Dispatcher::new(
                pool.clone(),
                Arc::new(ManualClock::new(Utc::now() - TimeDelta::hours(1))),
                "http://127.0.0.1:9",
                &service_key,
                Duration::from_secs(60),
            )?;
            let billing = Arc::new(Billing::new(
                pool,
                Arc::new(SystemClock),
                vec![alipay],
                settings,
            ));
            billing_tx.send(billing.clone())?;
            routes(
                billing,
                authenticator,
                Workers {
                    dispatcher,
                    // One round at start; nothing expires during the run.
                    lifecycle_every: Duration::from_secs(3600),
                },
            )
        },
    )
    .await;
    let billing = billing_rx.recv()?;
    billing
        .apply_plans_file(&PlansFile::parse(PLANS).map_err(anyhow::Error::msg)?)
        .await?;
    Ok((server, billing))
}

/// What the run did, for the report and the checks.
struct Run {
    cases: Vec<Case>,
    /// Payments prepared in all.
    prepared: usize,
    /// Notifications answered `success` on first delivery (warm-up included).
    applied: u64,
    /// Duplicates answered `success` (warm-up included).
    duplicates: u64,
    /// Calls that did not answer `success` (warm-up included).
    failures: u64,
    first_failure: Option<String>,
    /// Wall time spent preparing payments (CreateSubscription and signing).
    preparing: Duration,
}

async fn run(
    args: &Args,
    addr: std::net::SocketAddr,
    issuer: Arc<TestIssuer>,
    alipay_key: Arc<PrivateKey>,
    duration: Duration,
) -> anyhow::Result<Run> {
    let url = format!("http://{addr}");
    let clients = (0..args.connections.max(1))
        .map(|_| {
            Channel::from_shared(url.clone())
                .map(|endpoint| BillingServiceClient::new(endpoint.connect_lazy()))
        })
        .collect::<Result<_, _>>()?;
    let target = Arc::new(Target {
        clients,
        next_client: AtomicUsize::new(0),
        issuer,
        alipay_key,
        serial: AtomicU64::new(0),
    });
    let pool: Arc<Mutex<Vec<Prepared>>> = Arc::default();
    let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut run = Run {
        cases: Vec::new(),
        prepared: 0,
        applied: 0,
        duplicates: 0,
        failures: 0,
        first_failure: None,
        preparing: Duration::ZERO,
    };
    let window = WARMUP + duration;
    let mut best_rate = 0.0_f64;
    let mut previous: Option<usize> = None;
    for &concurrency in &args.concurrency {
        // Enough pending payments for the case: the first case's guess, then the best rate so
        // far over warm-up and measurement, times the square root of the step in concurrency
        // (the rate grows more slowly than the calls in flight on cores shared with PostgreSQL)
        // and a quarter to spare, topped up from what earlier cases left. Should they run out
        // all the same, the case's figures cover the time up to its last answer.
        let want = match previous {
            None => args.first_payments,
            Some(previous) => {
                let growth = (concurrency as f64 / previous as f64)
                    .sqrt()
                    .clamp(1.0, 4.0);
                (best_rate * growth * 1.25 * window.as_secs_f64()).ceil() as usize
            }
        };
        let have = pool.lock().map(|pool| pool.len()).unwrap_or(0);
        let add = want
            .saturating_sub(have)
            .min(args.max_payments.saturating_sub(run.prepared));
        if add > 0 {
            let began = Instant::now();
            let made = prepare(&target, add).await?;
            run.preparing += began.elapsed();
            eprintln!(
                "prepared {add} payments in {:.1} s",
                began.elapsed().as_secs_f64()
            );
            run.prepared += add;
            if let Ok(mut pool) = pool.lock() {
                pool.extend(made);
            }
        }
        let (target_, sent_, failures_, first_) = (
            target.clone(),
            sent.clone(),
            failures.clone(),
            first_failure.clone(),
        );
        let (stats, error) = run_items_for(
            concurrency,
            duration,
            pool.clone(),
            move |item: Prepared| {
                let (target, sent, failures, first) = (
                    target_.clone(),
                    sent_.clone(),
                    failures_.clone(),
                    first_.clone(),
                );
                async move {
                    let result = deliver(target.client(), item.body.clone()).await;
                    match &result {
                        Ok(()) => {
                            if let Ok(mut sent) = sent.lock() {
                                sent.push(item.body);
                            }
                        }
                        Err(error) => note_failure(&failures, &first, error),
                    }
                    result
                }
            },
        )
        .await;
        let ran_out = pool.lock().map(|pool| pool.is_empty()).unwrap_or(true);
        log_case(
            Kind::Applied,
            concurrency,
            &stats,
            error.as_deref(),
            ran_out,
        );
        best_rate = best_rate.max(stats.per_second());
        previous = Some(concurrency);
        run.cases.push(Case {
            kind: Kind::Applied,
            concurrency,
            stats,
            ran_out,
        });
    }
    run.applied = sent.lock().map(|sent| sent.len() as u64).unwrap_or(0);

    // Duplicates: the applied notifications again, round and round.
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new(sent.lock().map(|sent| sent.clone()).unwrap_or_default());
    anyhow::ensure!(!bodies.is_empty(), "no notification was applied");
    let next = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    for &concurrency in &args.concurrency {
        let (target_, bodies_, next_, duplicates_, failures_, first_) = (
            target.clone(),
            bodies.clone(),
            next.clone(),
            duplicates.clone(),
            failures.clone(),
            first_failure.clone(),
        );
        let (stats, error) = run_concurrent(concurrency, duration, move |_| {
            let (target, duplicates, failures, first) = (
                target_.clone(),
                duplicates_.clone(),
                failures_.clone(),
                first_.clone(),
            );
            let body = bodies_[next_.fetch_add(1, Ordering::Relaxed) % bodies_.len()].clone();
            async move {
                let result = deliver(target.client(), body).await;
                match &result {
                    Ok(()) => {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => note_failure(&failures, &first, error),
                }
                result
            }
        })
        .await;
        log_case(
            Kind::Duplicate,
            concurrency,
            &stats,
            error.as_deref(),
            false,
        );
        run.cases.push(Case {
            kind: Kind::Duplicate,
            concurrency,
            stats,
            ran_out: false,
        });
    }
    run.duplicates = duplicates.load(Ordering::Relaxed);
    run.failures = failures.load(Ordering::Relaxed);
    run.first_failure = first_failure.lock().ok().and_then(|first| first.clone());
    Ok(run)
}

fn note_failure(failures: &AtomicU64, first: &Mutex<Option<String>>, error: &str) {
    failures.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut first) = first.lock() {
        first.get_or_insert_with(|| error.to_owned());
    }
}

fn log_case(kind: Kind, concurrency: usize, stats: &Stats, error: Option<&str>, ran_out: bool) {
    if let Some(error) = error {
        eprintln!(
            "{} / {concurrency}: {} errors, first: {error}",
            kind.name(),
            stats.errors
        );
    }
    eprintln!(
        "{:>9} | {concurrency:>3} | {} | p50 {} | p99 {} | max {} | {:.1} s measured{}",
        kind.name(),
        rate(stats.per_second()),
        ms(stats.latency.p50()),
        ms(stats.latency.p99()),
        ms(stats.latency.max()),
        stats.elapsed.as_secs_f64(),
        if ran_out {
            " (the prepared payments ran out)"
        } else {
            ""
        }
    );
}

/// One HandleWebhook with `body`; an error unless billing-svc answered exactly `success`.
async fn deliver(mut client: BillingServiceClient<Channel>, body: Vec<u8>) -> Result<(), String> {
    let answer = client
        .handle_webhook(HandleWebhookRequest {
            provider: "alipay".to_owned(),
            body: Some(HttpBody {
                content_type: FORM.to_owned(),
                data: body,
                extensions: Vec::new(),
            }),
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    if answer.data != b"success" {
        return Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&answer.data)
        ));
    }
    Ok(())
}

/// `count` new users, each subscribed to the plan through CreateSubscription (a pending Alipay
/// payment), and each payment's TRADE_SUCCESS notification signed with Alipay's key.
async fn prepare(target: &Arc<Target>, count: usize) -> anyhow::Result<Vec<Prepared>> {
    let payments = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (target_, payments_) = (target.clone(), payments.clone());
    let (stats, error) = run_items(PREPARE_CONCURRENCY, vec![(); count], move |()| {
        let (target, payments) = (target_.clone(), payments_.clone());
        async move {
            let user = Uuid::now_v7();
            let mut request = Request::new(CreateSubscriptionRequest {
                plan_code: PLAN.to_owned(),
                provider: PbProvider::Alipay as i32,
                idempotency_key: Uuid::now_v7().to_string(),
                ..Default::default()
            });
            let token = target.issuer.token(user, &[]);
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token is not header text".to_owned())?,
            );
            let payment = target
                .client()
                .create_subscription(request)
                .await
                .map_err(|status| format!("CreateSubscription: {status}"))?
                .into_inner()
                .payment
                .ok_or("CreateSubscription answered no payment")?;
            payments
                .lock()
                .map_err(|_| "poisoned".to_owned())?
                .push((payment.payment_id, payment.amount_minor));
            Ok::<_, String>(())
        }
    })
    .await;
    if let Some(error) = error {
        anyhow::bail!(
            "preparing payments: {} failed, first: {error}",
            stats.errors
        );
    }
    let payments = std::mem::take(&mut *payments.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    anyhow::ensure!(
        payments.len() == count,
        "created {} of {count} payments",
        payments.len()
    );
    // Signing is CPU work: on every core, off the load generator's only thread.
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let first_serial = target.serial.fetch_add(count as u64, Ordering::Relaxed);
    let mut signers = Vec::new();
    for (index, chunk) in payments.chunks(count.div_ceil(threads).max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let key = target.alipay_key.clone();
        let base = first_serial + (index * count.div_ceil(threads).max(1)) as u64;
        signers.push(tokio::task::spawn_blocking(move || {
            chunk
                .iter()
                .zip(base..)
                .map(|((payment_id, amount_minor), serial)| Prepared {
                    body: notification(&key, payment_id, *amount_minor, serial),
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut prepared = Vec::with_capacity(count);
    for signer in signers {
        prepared.extend(signer.await?);
    }
    Ok(prepared)
}

/// The form body Alipay posts when `payment_id` is paid, signed with Alipay's key as Alipay signs
/// it (RSA2 over the sorted parameters but `sign` and `sign_type`).
fn notification(
    alipay_key: &PrivateKey,
    payment_id: &str,
    amount_minor: i64,
    serial: u64,
) -> Vec<u8> {
    let now = format_beijing(Utc::now());
    let mut params: Vec<(&str, String)> = vec![
        ("notify_time", now.clone()),
        ("notify_type", "trade_status_sync".to_owned()),
        ("notify_id", format!("bench-{serial}")),
        ("app_id", APP_ID.to_owned()),
        ("charset", "utf-8".to_owned()),
        ("version", "1.0".to_owned()),
        ("sign_type", "RSA2".to_owned()),
        ("trade_no", format!("2027{serial:024}")),
        ("out_trade_no", payment_id.replace('-', "")),
        ("trade_status", "TRADE_SUCCESS".to_owned()),
        ("total_amount", format_yuan(amount_minor)),
        ("gmt_payment", now),
    ];
    let content = sign_content(
        params.iter().map(|(key, value)| (*key, value.as_str())),
        NOTIFY_SIGN_EXCLUDED,
    );
    params.push(("sign", rsa_keys::sign(alipay_key, &content)));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
        .into_bytes()
}

/// What the database says after the run: every notified payment SUCCEEDED and its subscription
/// ACTIVE, the rest still PENDING, and every notification recorded with the verdict expected.
fn verify(psql: &std::path::Path, url: &str, run: &Run) -> anyhow::Result<()> {
    if run.failures > 0 {
        anyhow::bail!(
            "{} calls did not answer `success`; first: {}",
            run.failures,
            run.first_failure.as_deref().unwrap_or("?")
        );
    }
    let counts = |sql: &str| -> anyhow::Result<BTreeMap<String, u64>> {
        let output = run_tool(psql, &["-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
            .map_err(anyhow::Error::msg)?;
        output
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, count) = line
                    .split_once('|')
                    .with_context(|| format!("unexpected psql line {line:?}"))?;
                Ok((name.to_owned(), count.parse()?))
            })
            .collect()
    };
    let expect = |what: &str, got: BTreeMap<String, u64>, want: &[(&str, u64)]| {
        let want: BTreeMap<String, u64> = want
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| ((*name).to_owned(), *count))
            .collect();
        anyhow::ensure!(got == want, "{what}: expected {want:?}, found {got:?}");
        Ok(())
    };
    let pending = run.prepared as u64 - run.applied;
    expect(
        "payments by status",
        counts("SELECT status, count(*) FROM billing.payments GROUP BY status")?,
        &[("succeeded", run.applied), ("pending", pending)],
    )?;
    expect(
        "subscriptions by status",
        counts("SELECT status, count(*) FROM billing.subscriptions GROUP BY status")?,
        &[("active", run.applied), ("pending_payment", pending)],
    )?;
    expect(
        "notifications by verdict",
        counts("SELECT verdict, count(*) FROM billing.payment_events GROUP BY verdict")?,
        &[("applied", run.applied), ("duplicate", run.duplicates)],
    )?;
    expect(
        "entitlement outbox rows of users",
        counts(&format!(
            "SELECT 'queued', count(*) FROM billing.entitlement_outbox WHERE subject <> '{}'",
            Uuid::nil()
        ))?,
        &[("queued", run.applied)],
    )?;
    eprintln!(
        "checked: {} payments SUCCEEDED with their subscriptions ACTIVE and one entitlement \
         queued each, {pending} still PENDING, {} notifications recorded as applied and {} as \
         duplicates, none refused",
        run.applied, run.applied, run.duplicates
    );
    Ok(())
}

/// The one-statement transaction PostgreSQL commits per call on its own.
const BASELINE_SCRIPT: &str = "INSERT INTO baseline.log (amount) VALUES (1);\n";

/// pgbench's rate of [`BASELINE_SCRIPT`] at each concurrency, or why it could not be measured.
fn measure_baselines(
    psql: &std::path::Path,
    args: &Args,
    url: &str,
    duration: Duration,
) -> Result<Vec<(usize, f64)>, String> {
    let sql = |statements: &[&str]| {
        let mut arguments = vec!["-qX", "-v", "ON_ERROR_STOP=1"];
        for statement in statements {
            arguments.extend(["-c", statement]);
        }
        arguments.push(url);
        run_tool(psql, &arguments)
    };
    sql(&[
        "CREATE SCHEMA baseline",
        "CREATE TABLE baseline.log (id bigserial PRIMARY KEY, amount integer NOT NULL, \
         at timestamptz NOT NULL DEFAULT now())",
    ])?;
    let measured = args
        .concurrency
        .iter()
        .map(|&clients| {
            let tps = pgbench_tps(&args.pgbench, url, BASELINE_SCRIPT, clients, duration, &[])?;
            eprintln!("  pgbench | {clients:>3} | {} commits", rate(tps));
            Ok((clients, tps))
        })
        .collect();
    // The webhook cases should not pay for the baseline's rows or its WAL.
    sql(&["DROP SCHEMA baseline CASCADE", "CHECKPOINT"])?;
    measured
}

fn report(run: &Run, baselines: &Result<Vec<(usize, f64)>, String>, args: &Args) -> String {
    let pgbench = |concurrency: usize| {
        baselines.as_ref().ok().and_then(|measured| {
            measured
                .iter()
                .find(|(clients, _)| *clients == concurrency)
                .map(|(_, tps)| *tps)
        })
    };
    let mut table = Table::new(&[
        "notifications",
        "concurrency",
        "notifications/s",
        "p50",
        "p99",
        "measured",
        "pgbench one-INSERT commits/s",
        "webhook / pgbench",
    ]);
    for case in &run.cases {
        let baseline = pgbench(case.concurrency);
        table.row(vec![
            case.kind.name().to_owned(),
            case.concurrency.to_string(),
            rate(case.stats.per_second()),
            ms(case.stats.latency.p50()),
            ms(case.stats.latency.p99()),
            format!(
                "{} in {:.1} s{}",
                case.stats.calls,
                case.stats.elapsed.as_secs_f64(),
                if case.ran_out {
                    " (the prepared payments ran out)"
                } else {
                    ""
                }
            ),
            baseline.map_or_else(|| "not measured".to_owned(), rate),
            baseline.map_or_else(
                || "-".to_owned(),
                |tps| format!("{:.2}", case.stats.per_second() / tps.max(f64::EPSILON)),
            ),
        ]);
    }
    let baseline_note = match baselines {
        Ok(_) => String::new(),
        Err(why) => format!("\nPostgreSQL alone was not measured: {why}\n"),
    };
    format!(
        "Alipay `TRADE_SUCCESS` notifications through `HandleWebhook` (gRPC, a form body as the \
         edge passes it on) to billing-svc served in this process (release build, \
         DB_POOL_SIZE={}), over {} HTTP/2 connections, {} s per case after {} s of warm-up, on \
         this machine's PostgreSQL ({} cores shared by the load generator, billing-svc and \
         PostgreSQL). Run: {}.\n\n\
         - **applied**: each call a pending payment's first notification: the RSA2 signature \
         (2048-bit SHA256withRSA) verified, then one transaction: the payment PENDING → \
         SUCCEEDED, its subscription ACTIVE, the user's entitlement version and outbox row \
         written, the notification recorded; answered `success`. Every call goes to a payment \
         of its own; the notifications were signed before the clock started (signing is \
         Alipay's cost).\n\
         - **duplicate**: the applied notifications sent again: verified, recorded as \
         duplicates in one transaction, nothing applied, answered `success`.\n\
         - **pgbench**: PostgreSQL alone committing a one-statement `INSERT` transaction with \
         as many clients as the case has calls in flight, measured in the same run before \
         billing-svc started (billing-svc itself uses at most its pool's {} connections); \
         **webhook / pgbench** is the case's rate over it.\n\
         - Entitlement delivery is not measured: no quota-svc runs, and billing's dispatcher \
         finds nothing due (its clock is held before the run). A deployed billing-svc also \
         sends each applied payment's entitlements (an `ApplyEntitlements` call and an outbox \
         `UPDATE`).\n\n{}{}\n\
         Checked after the run: every call answered `success`; {} payments SUCCEEDED (each \
         notified once, their subscriptions ACTIVE, one entitlement queued each), the {} \
         prepared but not sent still PENDING; {} notifications recorded as applied, {} as \
         duplicates, none refused. Preparing the {} payments (CreateSubscription and signing) \
         took {:.1} s.\n",
        args.pool_size,
        args.connections,
        args.duration_secs,
        WARMUP.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.pool_size,
        table.render(),
        baseline_note,
        run.applied,
        run.prepared as u64 - run.applied,
        run.applied,
        run.duplicates,
        run.prepared,
        run.preparing.as_secs_f64(),
    )
}
