//! Load generator for quota-svc's reads: CheckQuota for subjects with a counter and for free-tier
//! subjects without one, and ListQuotas of 10 metrics, at 64 concurrent calls, beside the same
//! server's health check (the gRPC floor) and PostgreSQL's own point select (`pgbench -S`'s
//! statement), all in one run against one release quota-svc. Writes a Markdown section to
//! `bench/results/quota-reads.md`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bench::{
    Stats, Table, ensure_built, ms, pgbench_tps,
    quota::{Fixture, LIMIT, QuotaRun, serving_channels},
    rate, run_concurrent, run_items, run_tool, verdict, write_section,
};
use clap::Parser;
use kit::{convert::timestamp, testing::Binary};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, ApplyEntitlementsRequest, CheckQuotaRequest, ConsumeRequest,
    ListQuotasRequest, MetricLimit, quota_service_client::QuotaServiceClient,
};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

/// quota-svc read benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    #[command(flatten)]
    run: QuotaRun,
    /// Concurrent calls of every case.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Subjects with a counter, read in turn.
    #[arg(long, default_value_t = 10_000)]
    subjects: usize,
    /// pgbench, for PostgreSQL's own point select; left out when it cannot run.
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/quota-reads.md")]
    output: PathBuf,
}

/// The free tier's metrics: ListQuotas answers all ten.
const METRICS: usize = 10;

fn metric(index: usize) -> String {
    format!("bench.metric{index}")
}

/// pgbench's clients for the point select, as the issue measured it.
const PGBENCH_CLIENTS: usize = 16;

/// `pgbench -S`'s built-in script over `pgbench -i`'s tables.
const POINT_SELECT: &str = "\\set aid random(1, 100000 * :scale)\n\
                            SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";

/// What the calling tasks share.
struct Shared {
    clients: Vec<QuotaServiceClient<Channel>>,
    health: Vec<HealthClient<Channel>>,
    key: MetadataValue<Ascii>,
    counted: Vec<Uuid>,
    next: AtomicU64,
}

impl Shared {
    /// Clients of `server` over `connections` HTTP/2 connections, once it serves.
    async fn connect(
        server: &Binary,
        connections: usize,
        key: MetadataValue<Ascii>,
        counted: Vec<Uuid>,
    ) -> anyhow::Result<Self> {
        let channels = serving_channels(server, connections).await?;
        Ok(Self {
            health: channels.iter().cloned().map(HealthClient::new).collect(),
            clients: channels.into_iter().map(QuotaServiceClient::new).collect(),
            key,
            counted,
            next: AtomicU64::new(0),
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-api-key", self.key.clone());
        request
    }

    fn client(&self, task: usize) -> QuotaServiceClient<Channel> {
        self.clients[task % self.clients.len()].clone()
    }

    fn next_counted(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.counted[usize::try_from(n).unwrap_or(0) % self.counted.len()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Health,
    CheckCounted,
    CheckFree,
    List,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Health => "health check (gRPC floor)",
            Case::CheckCounted => "CheckQuota, subject with a counter",
            Case::CheckFree => "CheckQuota, free-tier subject without a counter",
            Case::List => "ListQuotas, 10 metrics",
        }
    }

    /// The share of the health check's rate the issue asks for.
    fn target(self) -> Option<f64> {
        match self {
            Case::Health => None,
            Case::CheckCounted | Case::CheckFree => Some(0.30),
            Case::List => Some(0.20),
        }
    }

    async fn call(self, shared: &Shared, task: usize) -> Result<(), String> {
        let answered = match self {
            Case::Health => {
                let mut health = shared.health[task % shared.health.len()].clone();
                health.check(HealthCheckRequest::default()).await.map(drop)
            }
            Case::CheckCounted | Case::CheckFree => {
                let subject = if self == Case::CheckCounted {
                    shared.next_counted()
                } else {
                    Uuid::now_v7()
                };
                let request = shared.request(CheckQuotaRequest {
                    metric: metric(0),
                    subject: subject.to_string(),
                });
                shared.client(task).check_quota(request).await.map(drop)
            }
            Case::List => {
                let request = shared.request(ListQuotasRequest {
                    subject: shared.next_counted().to_string(),
                    ..Default::default()
                });
                let response = shared.client(task).list_quotas(request).await;
                match response {
                    Ok(response) if response.get_ref().quotas.len() == METRICS => Ok(()),
                    Ok(response) => {
                        return Err(format!("{} quotas listed", response.get_ref().quotas.len()));
                    }
                    Err(status) => Err(status),
                }
            }
        };
        answered.map_err(|status| status.to_string())
    }
}

// One thread, as the quota bench: fewer writes per call, less of the shared CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_built(&[&args.run.quota_bin], "-p quota-svc")?;
    let fixture = Fixture::start().await;
    let duration = args.run.duration();
    let counted: Vec<Uuid> = (0..args.subjects.max(1)).map(|_| Uuid::now_v7()).collect();
    let mut measured = Vec::new();
    for reads in [Reads::Coalesced, Reads::Alone] {
        let mut server = fixture.start_quota(&args.run.quota_bin, reads.env());
        let key = fixture.bench_key_metadata()?;
        let shared = Shared::connect(&server, args.connections, key, counted.clone()).await?;
        let shared = Arc::new(shared);
        if reads == Reads::Coalesced {
            prepare(&shared).await?;
            settle(&fixture)?;
        }
        for &case in reads.cases() {
            let stats = measure(&shared, case, &args, duration).await?;
            measured.push((reads, case, stats));
        }
        server.terminate(Duration::from_secs(20));
    }
    let point_select = measure_point_select(&fixture, &args, duration);
    let body = report(&measured, &point_select, &args);
    write_section(&args.output, "quota-svc reads", &body)?;
    eprintln!("{body}\nwritten to {}", args.output.display());
    Ok(())
}

/// How the measured quota-svc reads: coalesced (as deployed), or every call alone (the
/// comparison, `QUOTA_READ_WORKERS=0`), started after the first stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Coalesced,
    Alone,
}

impl Reads {
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Reads::Coalesced => &[],
            Reads::Alone => &[("QUOTA_READ_WORKERS", "0")],
        }
    }

    fn cases(self) -> &'static [Case] {
        match self {
            Reads::Coalesced => &[
                Case::Health,
                Case::CheckCounted,
                Case::CheckFree,
                Case::List,
            ],
            Reads::Alone => &[
                Case::CheckCounted,
                Case::CheckFree,
                Case::List,
                Case::Health,
            ],
        }
    }

    fn label(self, case: Case) -> String {
        match self {
            Reads::Coalesced => case.name().to_owned(),
            Reads::Alone => format!("{}, `QUOTA_READ_WORKERS=0`", case.name()),
        }
    }
}

async fn measure(
    shared: &Arc<Shared>,
    case: Case,
    args: &Args,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let task_shared = shared.clone();
    let (stats, error) = run_concurrent(args.concurrency, duration, move |task| {
        let shared = task_shared.clone();
        async move { case.call(&shared, task).await }
    })
    .await;
    if let Some(error) = error {
        anyhow::bail!("{}: {} errors, first: {error}", case.name(), stats.errors);
    }
    eprintln!(
        "{:>48} | {} | p50 {} | p99 {}",
        case.name(),
        rate(stats.per_second()),
        ms(stats.latency.p50()),
        ms(stats.latency.p99())
    );
    Ok(stats)
}

/// A default tier of [`METRICS`] metrics, and a counter of each for every counted subject (one
/// Consume per metric), so ListQuotas reads ten counters.
async fn prepare(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let limits: Vec<MetricLimit> = (0..METRICS)
        .map(|index| MetricLimit {
            metric: metric(index),
            limit: LIMIT,
            unlimited: false,
        })
        .collect();
    let mut admin = shared.client(0);
    admin
        .apply_default_entitlements(shared.request(ApplyDefaultEntitlementsRequest {
            limits: limits.clone(),
            version: 1,
        }))
        .await?;
    // One subject on a plan too, so the plan path's reads are not left out of the counted set.
    let now = chrono::Utc::now();
    admin
        .apply_entitlements(shared.request(ApplyEntitlementsRequest {
            subject: shared.counted[0].to_string(),
            plan_code: "bench".to_owned(),
            limits,
            period_start: Some(timestamp(now - chrono::TimeDelta::days(1))),
            period_end: Some(timestamp(now + chrono::TimeDelta::days(30))),
            version: 1,
        }))
        .await?;
    let consumes: Vec<(Uuid, usize)> = shared
        .counted
        .iter()
        .flat_map(|subject| (0..METRICS).map(move |index| (*subject, index)))
        .collect();
    let consume_shared = shared.clone();
    let (_, error) = run_items(256, consumes, move |(subject, index)| {
        let shared = consume_shared.clone();
        async move {
            let request = shared.request(ConsumeRequest {
                metric: metric(index),
                subject: subject.to_string(),
                amount: Some(1),
                idempotency_key: format!("prepare-{index}"),
                attributes: None,
            });
            match shared.client(index).consume(request).await {
                Ok(response) if response.get_ref().allowed => Ok(()),
                Ok(response) => Err(format!("denied: {:?}", response.get_ref())),
                Err(status) => Err(status.to_string()),
            }
        }
    })
    .await;
    match error {
        Some(error) => anyhow::bail!("creating the counters: {error}"),
        None => Ok(()),
    }
}

/// Vacuums and checkpoints after the 100,000 counters were written, so no case pays for the
/// autovacuum or checkpoint they would set off, and the planner knows the table.
fn settle(fixture: &Fixture) -> anyhow::Result<()> {
    let url = fixture.db.url();
    run_tool(
        Path::new("psql"),
        &[url, "-qc", "VACUUM ANALYZE", "-qc", "CHECKPOINT"],
    )
    .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// PostgreSQL's own point select on this machine: `pgbench -i` tables in the bench's database,
/// then `-S`'s statement with [`PGBENCH_CLIENTS`] clients.
fn measure_point_select(fixture: &Fixture, args: &Args, duration: Duration) -> Result<f64, String> {
    let url = fixture.db.url();
    run_tool(&args.pgbench, &["-i", "-q", "-s", "1", url])?;
    pgbench_tps(
        &args.pgbench,
        url,
        POINT_SELECT,
        PGBENCH_CLIENTS,
        duration,
        &[("scale", "1".to_owned())],
    )
}

fn report(
    measured: &[(Reads, Case, Stats)],
    point_select: &Result<f64, String>,
    args: &Args,
) -> String {
    // The faster of the two servers' health checks: the stricter floor.
    let floor = measured
        .iter()
        .filter(|(_, case, _)| *case == Case::Health)
        .map(|(_, _, stats)| stats.per_second())
        .fold(f64::NAN, f64::max);
    let mut table = Table::new(&[
        "Call",
        "Calls/s",
        "p50",
        "p99",
        "Share of the health check",
        "Target",
    ]);
    for (reads, case, stats) in measured {
        let share = stats.per_second() / floor;
        let target = match (reads, case.target()) {
            (Reads::Coalesced, Some(target)) => {
                format!("≥ {:.0}%: {}", target * 100.0, verdict(share >= target))
            }
            _ => "-".to_owned(),
        };
        table.row(vec![
            reads.label(*case),
            rate(stats.per_second()),
            ms(stats.latency.p50()),
            ms(stats.latency.p99()),
            format!("{:.0}%", share * 100.0),
            target,
        ]);
    }
    let point_select = match point_select {
        Ok(tps) => format!(
            "PostgreSQL's own point select in the same run (`pgbench -S`'s statement, {PGBENCH_CLIENTS} \
             clients, no gRPC): {} ({:.0}% of the health check).",
            rate(*tps),
            tps / floor * 100.0
        ),
        Err(why) => format!("PostgreSQL's own point select could not be measured: {why}"),
    };
    format!(
        "One release quota-svc (pool of 16), {} concurrent calls over {} HTTP/2 connections, \
         {} s per case, the load generator on the same 2 cores. Counted subjects: {} in turn, \
         each with a counter of all {METRICS} metrics; free-tier subjects: a new one per call. \
         Reads are coalesced into one statement per batch as deployed; the rows marked \
         `QUOTA_READ_WORKERS=0` come from a second quota-svc reading every call alone, started \
         after the first stopped, over the same (vacuumed) database. Shares are of the faster \
         of the two health checks.\n\n\
         {}\n{point_select}\n",
        args.concurrency,
        args.connections,
        args.run.duration_secs,
        args.subjects,
        table.render()
    )
}
