//! Load generator for quota-svc: Consume calls per second and p50/p99 latency for one hot
//! (subject, metric) and for 10,000 subjects, at 1, 64 and 512 concurrent calls, for the batched
//! path and the one-transaction-per-call path (`QUOTA_BATCHING=false`), measured in the same run
//! against the same PostgreSQL, plus their ratio, and the gRPC floor: the same server's health
//! check at each concurrency, which no call can beat with the load generator on the same cores.
//!
//! Self-contained: it creates a fresh database (cloned from the migrated quota template), serves
//! JWKS/VerifyApiKey from kit's test issuer for the service key, and starts the release
//! quota-svc binary twice (batched, then per call) on free ports. Writes a Markdown section to
//! `bench/results/quota.md`.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bench::{
    Stats, Table, WARMUP, ensure_built, ms,
    quota::{Fixture, METRIC, QuotaRun, apply_default_tier, limit, serving_channels},
    rate, run_concurrent, run_items, verdict, write_section,
};
use clap::Parser;
use kit::{
    convert::timestamp,
    testing::{Binary, TestDb},
};
use proto::quota::{
    ApplyEntitlementsRequest, ConsumeRequest, quota_service_client::QuotaServiceClient,
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

/// quota-svc benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    #[command(flatten)]
    run: QuotaRun,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Distinct subjects of the many-keys case.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Consume batches in flight in the batched quota-svc (QUOTA_BATCH_WORKERS).
    #[arg(long, default_value_t = 2)]
    batch_workers: usize,
    /// Database connections of each quota-svc (DB_POOL_SIZE).
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// The concurrent calls of each case (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
    concurrency: Vec<usize>,
    /// The paths to measure (comma-separated); the ratio needs both.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "batched,per-call"
    )]
    paths: Vec<Mode>,
    /// pgbench, for PostgreSQL's own one-transaction-per-call limits on this machine; the
    /// comparison with the figures the targets were set from is left out when it is missing.
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// Leaves PostgreSQL's own limits out (quicker runs while tuning).
    #[arg(long)]
    no_baseline: bool,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/quota.md")]
    output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Batched,
    PerCall,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::PerCall => "per-call transaction",
        }
    }
}

/// One measured case.
struct Case {
    keys: &'static str,
    concurrency: usize,
    mode: Mode,
    stats: Stats,
}

struct Target {
    clients: Vec<QuotaServiceClient<Channel>>,
    /// Health clients on the same connections, for the gRPC floor.
    health: Vec<HealthClient<Channel>>,
    key: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Target {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-api-key", self.key.clone());
        request
    }
}

// One thread: the calls a wake-up sends on a connection leave in one write (about 0.1 writev per
// call). On the work-stealing runtime the connection task ran right after each call and wrote it
// alone (0.9 per call), and the load generator took half again as much of the CPU it shares
// with quota-svc and PostgreSQL.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_built(&[&args.run.quota_bin], "-p quota-svc")?;
    let fixture = Fixture::start().await;
    let duration = args.run.duration();
    let baselines = if args.no_baseline {
        Err("left out (--no-baseline)".to_owned())
    } else {
        measure_baselines(&fixture.db, &args)
    };
    let mut cases = Vec::new();
    let mut floor = Vec::new();
    for &mode in &args.paths {
        let batching = (mode == Mode::Batched).to_string();
        let pool_size = args.pool_size.to_string();
        let workers = args.batch_workers.to_string();
        let mut server = fixture.start_quota(
            &args.run.quota_bin,
            &[
                ("QUOTA_BATCHING", &batching),
                ("DB_POOL_SIZE", &pool_size),
                ("QUOTA_BATCH_WORKERS", &workers),
            ],
        );
        let target = connect(&server, args.connections, &fixture).await?;
        if floor.is_empty() {
            floor = measure_floor(&target, &args.concurrency, duration).await?;
        }
        cases.extend(run_mode(&target, mode, &args, duration).await?);
        server.terminate(Duration::from_secs(20));
    }
    let body = report(&cases, &floor, &baselines, &args);
    write_section(&args.output, "quota-svc", &body)?;
    eprintln!("{body}\nwritten to {}", args.output.display());
    Ok(())
}

async fn connect(server: &Binary, connections: usize, fixture: &Fixture) -> anyhow::Result<Target> {
    let channels = serving_channels(server, connections).await?;
    Ok(Target {
        health: channels.iter().cloned().map(HealthClient::new).collect(),
        clients: channels.into_iter().map(QuotaServiceClient::new).collect(),
        key: fixture.bench_key_metadata()?,
    })
}

/// The gRPC floor: the same server's `grpc.health.v1.Health/Check` (no caller authentication, no
/// database) over the same connections at each concurrency. On a machine the load generator
/// shares with the server, no RPC can do better than this; a consume's figures are read
/// against it.
async fn measure_floor(
    target: &Target,
    concurrencies: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<(usize, Stats)>> {
    let mut floor = Vec::new();
    for &concurrency in concurrencies {
        let health = target.health.clone();
        let (stats, error) = run_concurrent(concurrency, duration, move |task| {
            let mut client = health[task % health.len()].clone();
            async move {
                client
                    .check(HealthCheckRequest::default())
                    .await
                    .map(drop)
                    .map_err(|status| status.to_string())
            }
        })
        .await;
        if let Some(error) = error {
            anyhow::bail!("health check at {concurrency} concurrent: {error}");
        }
        eprintln!(
            "{:>20} | {:>11} | {concurrency:>3} | {} | p50 {} | p99 {}",
            "gRPC floor",
            "no quota",
            rate(stats.per_second()),
            ms(stats.latency.p50()),
            ms(stats.latency.p99())
        );
        floor.push((concurrency, stats));
    }
    Ok(floor)
}

/// Sets up fresh subjects for `mode` and measures every case.
async fn run_mode(
    target: &Target,
    mode: Mode,
    args: &Args,
    duration: Duration,
) -> anyhow::Result<Vec<Case>> {
    let mut admin = target.clients[0].clone();
    let now = chrono::Utc::now();
    let hot = Uuid::now_v7();
    admin
        .apply_entitlements(target.request(ApplyEntitlementsRequest {
            subject: hot.to_string(),
            plan_code: "bench".to_owned(),
            limits: vec![limit()],
            period_start: Some(timestamp(now - chrono::TimeDelta::days(1))),
            period_end: Some(timestamp(now + chrono::TimeDelta::days(30))),
            version: 1,
        }))
        .await?;
    // The many subjects use the default tier; their counters are created before measuring.
    apply_default_tier(&mut admin, &target.key).await?;
    let many: Arc<Vec<Uuid>> = Arc::new((0..args.keys).map(|_| Uuid::now_v7()).collect());
    let shared = Arc::new(Shared {
        clients: target.clients.clone(),
        key: target.key.clone(),
        next_key: AtomicU64::new(0),
        run: Uuid::now_v7().simple().to_string(),
    });
    let warm = shared.clone();
    let (warmed, error) = run_items(256, many.to_vec(), move |subject| {
        let shared = warm.clone();
        async move { shared.consume(subject, 0).await }
    })
    .await;
    if let Some(error) = error {
        anyhow::bail!(
            "creating the counters of {} subjects: {error}",
            warmed.errors
        );
    }
    let mut cases = Vec::new();
    for (keys, subjects) in [
        ("one hot key", Arc::new(vec![hot])),
        ("10,000 keys", many.clone()),
    ] {
        for &concurrency in &args.concurrency {
            let shared = shared.clone();
            let subjects = subjects.clone();
            let (stats, error) = run_concurrent(concurrency, duration, move |task| {
                let shared = shared.clone();
                let subjects = subjects.clone();
                async move {
                    let n = shared.next_key.fetch_add(1, Ordering::Relaxed);
                    let subject = subjects[usize::try_from(n).unwrap_or(0) % subjects.len()];
                    shared.consume(subject, task).await
                }
            })
            .await;
            if let Some(error) = error {
                eprintln!(
                    "{} / {keys} / {concurrency}: {} errors, first: {error}",
                    mode.name(),
                    stats.errors
                );
            }
            eprintln!(
                "{:>20} | {keys:>11} | {concurrency:>3} | {} | p50 {} | p90 {} | p95 {} | p99 {} | p999 {} | max {}",
                mode.name(),
                rate(stats.per_second()),
                ms(stats.latency.p50()),
                ms(stats.latency.quantile(0.9)),
                ms(stats.latency.quantile(0.95)),
                ms(stats.latency.p99()),
                ms(stats.latency.quantile(0.999)),
                ms(stats.latency.max())
            );
            cases.push(Case {
                keys,
                concurrency,
                mode,
                stats,
            });
        }
    }
    Ok(cases)
}

/// What the calling tasks share.
struct Shared {
    clients: Vec<QuotaServiceClient<Channel>>,
    key: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    next_key: AtomicU64,
    /// Makes this run's idempotency keys unique.
    run: String,
}

impl Shared {
    /// One Consume of 1 with a fresh idempotency key; an error unless allowed.
    async fn consume(&self, subject: Uuid, task: usize) -> Result<(), String> {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(ConsumeRequest {
            metric: METRIC.to_owned(),
            subject: subject.to_string(),
            amount: None,
            idempotency_key: format!("{}-{n}", self.run),
            attributes: None,
        });
        request.metadata_mut().insert("x-api-key", self.key.clone());
        let mut client = self.clients[task % self.clients.len()].clone();
        match client.consume(request).await {
            Ok(response) if response.get_ref().allowed => Ok(()),
            Ok(response) => Err(format!("denied: {:?}", response.get_ref())),
            Err(status) => Err(status.to_string()),
        }
    }
}

/// One transaction per call on PostgreSQL alone, as the issue measured the machine the targets
/// were set on: pgbench running an `UPDATE … RETURNING` of a counter and an `INSERT` of a log row
/// per transaction. Measured in the same run, it tells how this machine compares with that one.
struct Baseline {
    keys: &'static str,
    /// The pgbench script (`:counters` is the number of counter rows).
    script: &'static str,
    /// The figure for this transaction (commits/s).
    reference: f64,
    /// The batched target at 512 concurrent calls (consumes/s), set against `reference`.
    target: f64,
}

const BASELINES: [Baseline; 2] = [
    Baseline {
        keys: "one hot key",
        script: "BEGIN;\n\
                 UPDATE baseline.counters SET used = used + 1 WHERE id = 1 RETURNING used;\n\
                 INSERT INTO baseline.log (counter, amount) VALUES (1, 1);\n\
                 COMMIT;\n",
        // The middle of the 1,500-1,900.
        reference: 1_700.0,
        target: 15_000.0,
    },
    Baseline {
        keys: "10,000 keys",
        script: "\\set id random(1, :counters)\n\
                 BEGIN;\n\
                 UPDATE baseline.counters SET used = used + 1 WHERE id = :id RETURNING used;\n\
                 INSERT INTO baseline.log (counter, amount) VALUES (:id, 1);\n\
                 COMMIT;\n",
        reference: 6_600.0,
        target: 20_000.0,
    },
];

/// pgbench's clients: about where one transaction per call peaks on 2 cores.
const BASELINE_CLIENTS: usize = 16;

/// Commits/s of each [`BASELINES`] script in this run, or why they could not be measured.
fn measure_baselines(db: &TestDb, args: &Args) -> Result<Vec<f64>, String> {
    let setup = format!(
        "CREATE SCHEMA baseline; \
         CREATE TABLE baseline.counters (id integer PRIMARY KEY, used bigint NOT NULL); \
         INSERT INTO baseline.counters SELECT id, 0 FROM generate_series(1, {}) AS id; \
         CREATE TABLE baseline.log (id bigserial PRIMARY KEY, counter integer NOT NULL, \
           amount integer NOT NULL, at timestamptz NOT NULL DEFAULT now());",
        args.keys
    );
    let psql = args.pgbench.with_file_name("psql");
    run_tool(
        &psql,
        &["-qX", "-v", "ON_ERROR_STOP=1", "-c", &setup, db.url()],
    )?;
    let dir = std::env::temp_dir().join(format!("quota-bench-{}", Uuid::now_v7().simple()));
    std::fs::create_dir(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let measured = BASELINES
        .iter()
        .enumerate()
        .map(|(index, baseline)| {
            let script = dir.join(format!("baseline-{index}.sql"));
            std::fs::write(&script, baseline.script)
                .map_err(|err| format!("{}: {err}", script.display()))?;
            let output = run_tool(
                &args.pgbench,
                &[
                    "-n",
                    "-c",
                    &BASELINE_CLIENTS.to_string(),
                    "-j",
                    "2",
                    "-T",
                    &args.run.duration_secs.to_string(),
                    "-D",
                    &format!("counters={}", args.keys),
                    "-f",
                    &script.to_string_lossy(),
                    db.url(),
                ],
            )?;
            let commits = output
                .lines()
                .find_map(|line| line.strip_prefix("tps = "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|tps| tps.parse::<f64>().ok())
                .ok_or_else(|| format!("no `tps = ` line in pgbench's output:\n{output}"))?;
            eprintln!(
                "{:>20} | {:>11} | {} commits/s",
                "pgbench",
                baseline.keys,
                rate(commits)
            );
            Ok(commits)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    // The quota cases that follow should not pay for the baseline's dead rows or its WAL.
    run_tool(
        &psql,
        &[
            "-qX",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "DROP SCHEMA baseline CASCADE",
            "-c",
            "CHECKPOINT",
            db.url(),
        ],
    )?;
    measured
}

/// Runs a PostgreSQL client tool; its standard output, or why it failed.
fn run_tool(tool: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(tool)
        .args(args)
        .output()
        .map_err(|err| format!("{} could not run: {err}", tool.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            tool.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The comparison with PostgreSQL alone: this machine against the one the targets were set on.
fn baseline_report(cases: &[Case], baselines: &Result<Vec<f64>, String>) -> String {
    let measured = match baselines {
        Ok(measured) => measured,
        Err(why) => return format!("PostgreSQL alone was not measured: {why}\n"),
    };
    let mut table = Table::new(&[
        "keys",
        "pgbench commits/s (this run)",
        "the issue's figure",
        "this machine / the issue's",
        "batched at 512 / pgbench",
        "target / the issue's figure",
    ]);
    for (baseline, &commits) in BASELINES.iter().zip(measured) {
        let batched = case_at(cases, baseline.keys, 512, Mode::Batched);
        table.row(vec![
            baseline.keys.to_owned(),
            rate(commits),
            rate(baseline.reference),
            format!("{:.2}", commits / baseline.reference),
            batched.map_or_else(
                || "not run".to_owned(),
                |case| {
                    format!(
                        "{:.1}×",
                        case.stats.per_second() / commits.max(f64::EPSILON)
                    )
                },
            ),
            format!("{:.1}×", baseline.target / baseline.reference),
        ]);
    }
    format!(
        "PostgreSQL alone, one transaction per call (pgbench, {BASELINE_CLIENTS} clients, an \
         `UPDATE … RETURNING` and a log `INSERT` per transaction), measured in the same run, \
         against the figures the targets were set from:\n\n{}",
        table.render()
    )
}

/// The measured case of `keys` at `concurrency` on `mode`'s path, if it ran.
fn case_at<'a>(cases: &'a [Case], keys: &str, concurrency: usize, mode: Mode) -> Option<&'a Case> {
    cases
        .iter()
        .find(|case| case.keys == keys && case.concurrency == concurrency && case.mode == mode)
}

/// The floor's table: each concurrency's health checks, and the batched consumes' p99 against
/// theirs.
fn floor_report(cases: &[Case], floor: &[(usize, Stats)]) -> String {
    let mut table = Table::new(&[
        "concurrency",
        "health checks/s",
        "p50",
        "p99",
        "batched consume p99 / floor p99 (hot key, 10,000 keys)",
    ]);
    for (concurrency, stats) in floor {
        let against = |keys: &str| {
            case_at(cases, keys, *concurrency, Mode::Batched).map_or_else(
                || "not run".to_owned(),
                |case| {
                    format!(
                        "{:.1}×",
                        case.stats.latency.p99().as_secs_f64()
                            / stats.latency.p99().as_secs_f64().max(f64::EPSILON)
                    )
                },
            )
        };
        table.row(vec![
            concurrency.to_string(),
            rate(stats.per_second()),
            ms(stats.latency.p50()),
            ms(stats.latency.p99()),
            format!("{}, {}", against("one hot key"), against("10,000 keys")),
        ]);
    }
    format!(
        "The gRPC floor, measured in the same run: the same quota-svc's \
         `grpc.health.v1.Health/Check` (no caller authentication, no database) over the same \
         connections. No call can be faster than this with the load generator on the same \
         cores:\n\n{}",
        table.render()
    )
}

/// The Markdown section: every case, the batched/per-call ratios, the targets, the gRPC floor
/// and PostgreSQL alone.
fn report(
    cases: &[Case],
    floor: &[(usize, Stats)],
    baselines: &Result<Vec<f64>, String>,
    args: &Args,
) -> String {
    let mut table = Table::new(&[
        "keys",
        "concurrency",
        "path",
        "consumes/s",
        "p50",
        "p99",
        "errors",
    ]);
    for case in cases {
        table.row(vec![
            case.keys.to_owned(),
            case.concurrency.to_string(),
            case.mode.name().to_owned(),
            rate(case.stats.per_second()),
            ms(case.stats.latency.p50()),
            ms(case.stats.latency.p99()),
            case.stats.errors.to_string(),
        ]);
    }
    let mut ratios = Table::new(&["keys", "concurrency", "batched / per-call throughput"]);
    for batched in cases.iter().filter(|case| case.mode == Mode::Batched) {
        if let Some(per_call) = case_at(cases, batched.keys, batched.concurrency, Mode::PerCall) {
            ratios.row(vec![
                batched.keys.to_owned(),
                batched.concurrency.to_string(),
                format!(
                    "{:.1}×",
                    batched.stats.per_second() / per_call.stats.per_second().max(f64::EPSILON)
                ),
            ]);
        }
    }
    let floor_p99 = floor
        .iter()
        .find(|(concurrency, _)| *concurrency == 512)
        .map_or_else(
            || "not measured".to_owned(),
            |(_, stats)| ms(stats.latency.p99()),
        );
    let mut targets = String::new();
    for (keys, minimum) in [("10,000 keys", 20_000.0), ("one hot key", 15_000.0)] {
        if let Some(case) = case_at(cases, keys, 512, Mode::Batched) {
            targets.push_str(&format!(
                "- {keys}, 512 concurrent, batched: {} (target ≥ {}): {}; p99 {} (target < 25 ms): {} \
                 (the gRPC floor's p99: {floor_p99})\n",
                rate(case.stats.per_second()),
                rate(minimum),
                verdict(case.stats.per_second() >= minimum),
                ms(case.stats.latency.p99()),
                verdict(case.stats.latency.p99() < Duration::from_millis(25)),
            ));
        }
    }
    if let (Some(batched), Some(per_call)) = (
        case_at(cases, "one hot key", 512, Mode::Batched),
        case_at(cases, "one hot key", 512, Mode::PerCall),
    ) {
        let ratio = batched.stats.per_second() / per_call.stats.per_second().max(f64::EPSILON);
        targets.push_str(&format!(
            "- one hot key, 512 concurrent: batched / per-call {ratio:.1}× (target ≥ 8×): {}\n",
            verdict(ratio >= 8.0)
        ));
    }
    format!(
        "Consume of 1 unit with a fresh idempotency key per call, {} s per case after {} s of \
         warm-up, over {} HTTP/2 connections; quota-svc release build with DB_POOL_SIZE={} and QUOTA_BATCH_WORKERS={} on this machine's \
         PostgreSQL ({} cores). Batched = concurrent calls coalesced into one transaction per \
         batch (default); per-call = QUOTA_BATCHING=false, one transaction per call. \
         Run: {}.\n\n{}\n{}\n{}\n{}\n{}",
        args.run.duration_secs,
        WARMUP.as_secs(),
        args.connections,
        args.pool_size,
        args.batch_workers,
        std::thread::available_parallelism().map_or(0, usize::from),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        table.render(),
        ratios.render(),
        targets,
        floor_report(cases, floor),
        baseline_report(cases, baselines)
    )
}
