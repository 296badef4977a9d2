//! Load generator for edge-proxy: what REST/JSON through the edge costs against the same calls
//! over direct gRPC, on the same quota-svc in the same run.
//!
//! Closed loop: a read (`GET /v1/quotas/{metric}?subject=…`, CheckQuota) and a consume
//! (`POST /v1/quotas/{metric}:consume`, a fresh idempotency key per call) over 10,000 subjects,
//! at each concurrency through the edge with wrk (`bench/wrk/edge.lua`, one connection per
//! call in flight) and directly from this load generator over HTTP/2. Open loop: consumes
//! offered at a fixed rate (15,000/s) over the same subjects, direct and through the edge (an
//! HTTP/1.1 client of our own, since wrk waits for each answer before the next call), latency
//! counted from each call's due time. Each case also records the CPU each process spent per
//! call, read from `/proc`, so a missed target says where the time went.
//!
//! Self-contained like the quota bench: a fresh database, kit's test issuer for every key, the
//! release quota-svc and edge-proxy binaries on free ports. Writes `bench/results/edge.md`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bench::{
    OpenLoopStats, Stats, Table, WARMUP,
    cpu::{Sample, Spent, Watched, child_running},
    ensure_built, ms,
    quota::{Fixture, METRIC, QuotaRun, apply_default_tier, serving_channels},
    rate, run_concurrent, run_items, run_open_loop, verdict, write_section,
};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{
    StatusCode,
    client::conn::http1::SendRequest,
    header::{CONTENT_TYPE, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;
use kit::testing::Binary;
use proto::quota::{CheckQuotaRequest, ConsumeRequest, quota_service_client::QuotaServiceClient};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use uuid::Uuid;

/// The wrk script: many subjects, a fresh idempotency key per consume, figures in one line.
const WRK_SCRIPT: &str = include_str!("../../wrk/edge.lua");

/// edge-proxy benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    #[command(flatten)]
    run: QuotaRun,
    /// The edge-proxy binary to start.
    #[arg(long, env = "EDGE_BIN", default_value = "target/release/edge-proxy")]
    edge_bin: PathBuf,
    /// wrk, the closed-loop HTTP load generator (`apt-get install wrk`).
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// Calls in flight of each closed-loop case (comma-separated); through the edge, one
    /// HTTP/1.1 connection each.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections of the direct gRPC calls (as in the quota bench).
    #[arg(long, default_value_t = 8)]
    grpc_connections: usize,
    /// Distinct subjects the calls go to.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Consumes per second the open loop offers.
    #[arg(long, default_value_t = 15_000.0)]
    open_rate: f64,
    /// Seconds the open loop runs, after the warm-up.
    #[arg(long, default_value_t = 10)]
    open_duration_secs: u64,
    /// HTTP/1.1 connections of the open-loop client through the edge (a call waits for a free
    /// one, and that wait counts in its latency).
    #[arg(long, default_value_t = 256)]
    http_connections: usize,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/edge.md")]
    output: PathBuf,
}

/// The open-loop goal: p99 under this at the offered rate.
const OPEN_LOOP_P99: Duration = Duration::from_millis(25);
/// The closed-loop goals: what the edge may add at p50, and the throughput it must keep.
const EDGE_P50_ADDED: Duration = Duration::from_micros(500);
const EDGE_THROUGHPUT_SHARE: f64 = 0.6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    Consume,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Read => "read (CheckQuota)",
            Call::Consume => "consume",
        }
    }

    /// The wrk script's mode argument.
    fn wrk_mode(self) -> &'static str {
        match self {
            Call::Read => "read",
            Call::Consume => "consume",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Edge,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct gRPC",
            Route::Edge => "through the edge",
        }
    }
}

/// A case's figures, whichever tool measured them.
#[derive(Debug, Clone)]
struct Figures {
    calls: u64,
    errors: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu: Spent,
}

impl Figures {
    fn of(stats: &Stats, cpu: Spent) -> Self {
        Self {
            calls: stats.calls,
            errors: stats.errors,
            per_second: stats.per_second(),
            p50: stats.latency.p50(),
            p99: stats.latency.p99(),
            cpu,
        }
    }

    /// CPU microseconds per successful call.
    fn per_call(&self, seconds: f64) -> String {
        format!("{:.0}", seconds * 1e6 / (self.calls.max(1) as f64))
    }

    /// The client's CPU: wrk's (a child that exited) and this process's.
    fn client_seconds(&self) -> f64 {
        self.cpu.generator + self.cpu.exited_children
    }

    /// All the machine's parties per call: edge, quota-svc, PostgreSQL and the client.
    fn total_seconds(&self) -> f64 {
        self.cpu.server(EDGE) + self.cpu.server(QUOTA) + self.cpu.postgres + self.client_seconds()
    }
}

const EDGE: &str = "edge-proxy";
const QUOTA: &str = "quota-svc";

/// One closed-loop case.
struct Closed {
    call: Call,
    concurrency: usize,
    route: Route,
    figures: Figures,
}

/// One open-loop case.
struct Open {
    route: Route,
    run: OpenLoopStats,
    figures: Figures,
}

/// Everything the calls need.
struct Mesh {
    clients: Vec<QuotaServiceClient<Channel>>,
    key: MetadataValue<Ascii>,
    subjects: Arc<Vec<Uuid>>,
    edge: SocketAddr,
    /// The bench's API key as text, for wrk and the HTTP client.
    key_text: String,
    watched: Watched,
    /// Makes this run's idempotency keys unique.
    run: String,
    next_key: AtomicU64,
}

// One thread, as in the quota bench: the calls a wake-up sends on a connection leave in one
// write, and the load generator takes less of the cores it shares with the servers.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_built(
        &[&args.run.quota_bin, &args.edge_bin],
        "-p quota-svc -p edge-proxy",
    )?;
    // Other work on the machine skews every figure; the section says how busy it was.
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fixture = Fixture::start().await;
    let quota = fixture.start_quota(&args.run.quota_bin, &[]);
    let quota_url = format!("http://{}", quota.addr);
    let auth_url = fixture.auth.url();
    // Any service key the test issuer knows: the edge only uses it towards auth-svc.
    let edge_key = fixture
        .issuer
        .add_api_key(Uuid::now_v7(), &["service"], &["service"]);
    // Binary::start sets EDGE_ADMIN_ADDR to a free port too, for an edge that has one.
    let edge = Binary::start(
        &args.edge_bin,
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_QUOTA_UPSTREAM", &quota_url),
            ("EDGE_SERVICE_KEY", &edge_key),
            ("RUST_LOG", "warn"),
        ],
    );
    let servers = [(EDGE, &args.edge_bin), (QUOTA, &args.run.quota_bin)]
        .into_iter()
        .map(|(name, program)| {
            child_running(program)
                .map(|pid| (name, pid))
                .with_context(|| format!("no child process runs {}", program.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mesh = Arc::new(prepare(&args, &fixture, &quota, edge.addr, servers).await?);
    let dir = std::env::temp_dir().join(format!("edge-bench-{}", mesh.run));
    std::fs::create_dir_all(&dir)?;
    let result = run_all(&args, &mesh, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (closed, open) = result?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = [load_before, load_after]
        .map(|load| load.split_whitespace().next().unwrap_or("?").to_owned());
    let body = report(&closed, &open, &args, &load);
    write_section(&args.output, "edge-proxy", &body)?;
    eprintln!("{body}\nwritten to {}", args.output.display());
    Ok(())
}

/// Connects, gives the subjects the default tier and creates their counters, so every measured
/// call reads or updates an existing row.
async fn prepare(
    args: &Args,
    fixture: &Fixture,
    quota: &Binary,
    edge: SocketAddr,
    servers: Vec<(&'static str, u32)>,
) -> anyhow::Result<Mesh> {
    let channels = serving_channels(quota, args.grpc_connections).await?;
    let mut clients: Vec<_> = channels.into_iter().map(QuotaServiceClient::new).collect();
    let key = fixture.bench_key_metadata()?;
    apply_default_tier(&mut clients[0], &key).await?;
    let mesh = Mesh {
        clients,
        key,
        subjects: Arc::new((0..args.keys.max(1)).map(|_| Uuid::now_v7()).collect()),
        edge,
        key_text: fixture.bench_key.clone(),
        watched: Watched::new(servers),
        run: Uuid::now_v7().simple().to_string(),
        next_key: AtomicU64::new(0),
    };
    let mesh = Arc::new(mesh);
    let warm = Arc::clone(&mesh);
    let (warmed, error) = run_items(256, mesh.subjects.to_vec(), move |subject| {
        let mesh = Arc::clone(&warm);
        async move { mesh.call(Call::Consume, subject, 0).await }
    })
    .await;
    if let Some(error) = error {
        anyhow::bail!(
            "creating the counters of {} subjects: {error}",
            warmed.errors
        );
    }
    Arc::into_inner(mesh).context("the warm-up still holds the mesh")
}

impl Mesh {
    /// One direct gRPC call on connection `task`; an error unless it succeeded (and a consume
    /// was allowed).
    async fn call(&self, call: Call, subject: Uuid, task: usize) -> Result<(), String> {
        let mut client = self.clients[task % self.clients.len()].clone();
        let subject = subject.to_string();
        match call {
            Call::Read => {
                let mut request = Request::new(CheckQuotaRequest {
                    metric: METRIC.to_owned(),
                    subject,
                });
                request.metadata_mut().insert("x-api-key", self.key.clone());
                client.check_quota(request).await.map(drop)
            }
            Call::Consume => {
                let mut request = Request::new(ConsumeRequest {
                    metric: METRIC.to_owned(),
                    subject,
                    amount: Some(1),
                    idempotency_key: self.idempotency_key(),
                    attributes: None,
                });
                request.metadata_mut().insert("x-api-key", self.key.clone());
                match client.consume(request).await {
                    Ok(response) if response.get_ref().allowed => Ok(()),
                    Ok(response) => return Err(format!("denied: {:?}", response.get_ref())),
                    Err(status) => Err(status),
                }
            }
        }
        .map_err(|status| status.to_string())
    }

    fn idempotency_key(&self) -> String {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.run)
    }

    /// The subject of the `n`th call: the calls walk all of them.
    fn subject(&self, n: u64) -> Uuid {
        self.subjects[usize::try_from(n).unwrap_or(0) % self.subjects.len()]
    }

    /// The JSON body of a consume through the edge (int64 `amount` as a string, as proto3 JSON
    /// writes it).
    fn consume_body(&self, subject: Uuid) -> String {
        format!(
            r#"{{"subject":"{subject}","amount":"1","idempotencyKey":"{}"}}"#,
            self.idempotency_key()
        )
    }
}

/// Every case: closed loop per call and concurrency (direct, then through the edge), then the
/// open loop.
async fn run_all(
    args: &Args,
    mesh: &Arc<Mesh>,
    dir: &Path,
) -> anyhow::Result<(Vec<Closed>, Vec<Open>)> {
    let subjects_file = dir.join("subjects.txt");
    let lines: Vec<String> = mesh.subjects.iter().map(Uuid::to_string).collect();
    std::fs::write(&subjects_file, lines.join("\n") + "\n")?;
    let script = dir.join("edge.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let wrk = Wrk {
        program: &args.wrk,
        script: &script,
        subjects: &subjects_file,
    };
    let duration = args.run.duration();
    let mut closed = Vec::new();
    for call in [Call::Read, Call::Consume] {
        for &concurrency in &args.concurrency {
            let direct = closed_direct(mesh, call, concurrency, duration).await?;
            log_case(call.name(), concurrency, Route::Direct, &direct);
            closed.push(Closed {
                call,
                concurrency,
                route: Route::Direct,
                figures: direct,
            });
            let edge = wrk.run(mesh, call, concurrency, duration).await?;
            log_case(call.name(), concurrency, Route::Edge, &edge);
            closed.push(Closed {
                call,
                concurrency,
                route: Route::Edge,
                figures: edge,
            });
        }
    }
    let pool = Arc::new(Http1Pool::connect(mesh, args.http_connections).await?);
    // One consume through the edge first: a misrouted or refused call fails here, loudly.
    pool.consume(mesh, mesh.subject(0))
        .await
        .map_err(|err| anyhow::anyhow!("a consume through the edge: {err}"))?;
    let open_duration = Duration::from_secs(args.open_duration_secs);
    let mut open = Vec::new();
    for route in [Route::Direct, Route::Edge] {
        let case = open_loop(mesh, &pool, route, args.open_rate, open_duration).await?;
        log_case("open-loop consume", 0, route, &case.figures);
        open.push(case);
    }
    Ok((closed, open))
}

fn log_case(name: &str, concurrency: usize, route: Route, figures: &Figures) {
    eprintln!(
        "{name:>18} | {concurrency:>3} | {:>16} | {} | p50 {} | p99 {} | errors {} | CPU µs/call edge {} quota {} pg {} client {}",
        route.name(),
        rate(figures.per_second),
        ms(figures.p50),
        ms(figures.p99),
        figures.errors,
        figures.per_call(figures.cpu.server(EDGE)),
        figures.per_call(figures.cpu.server(QUOTA)),
        figures.per_call(figures.cpu.postgres),
        figures.per_call(figures.client_seconds()),
    );
}

/// Samples the CPU times once the warm-up of a run that starts now is over.
fn sample_after_warmup(mesh: &Arc<Mesh>) -> tokio::task::JoinHandle<Sample> {
    let mesh = Arc::clone(mesh);
    tokio::spawn(async move {
        tokio::time::sleep(WARMUP).await;
        mesh.watched.sample()
    })
}

/// `concurrency` direct gRPC calls in flight, back to back.
async fn closed_direct(
    mesh: &Arc<Mesh>,
    call: Call,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let before = sample_after_warmup(mesh);
    let shared = Arc::clone(mesh);
    let (stats, error) = run_concurrent(concurrency, duration, move |task| {
        let mesh = Arc::clone(&shared);
        async move {
            let n = mesh.next_key.fetch_add(1, Ordering::Relaxed);
            mesh.call(call, mesh.subject(n), task).await
        }
    })
    .await;
    let spent = before.await?.until(&mesh.watched.sample());
    if let Some(error) = error {
        eprintln!(
            "direct {} / {concurrency}: first error: {error}",
            call.name()
        );
    }
    Ok(Figures::of(&stats, spent))
}

/// wrk and the files its script reads.
struct Wrk<'a> {
    program: &'a Path,
    script: &'a Path,
    subjects: &'a Path,
}

impl Wrk<'_> {
    /// One closed-loop case through the edge: a warm-up run of [`WARMUP`], then the measured
    /// one, each with its own idempotency keys.
    async fn run(
        &self,
        mesh: &Mesh,
        call: Call,
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<Figures> {
        self.once(mesh, call, concurrency, WARMUP).await?;
        let before = mesh.watched.sample();
        let (calls, errors, elapsed, p50, p99) =
            self.once(mesh, call, concurrency, duration).await?;
        let cpu = before.until(&mesh.watched.sample());
        Ok(Figures {
            calls,
            errors,
            per_second: calls as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            p50,
            p99,
            cpu,
        })
    }

    /// Runs wrk once; its successful calls, errors, duration, p50 and p99.
    async fn once(
        &self,
        mesh: &Mesh,
        call: Call,
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<(u64, u64, Duration, Duration, Duration)> {
        let prefix = format!("{}-wrk-{}", mesh.run, Uuid::now_v7().simple());
        // tokio's process, not std's: the test auth server runs on this thread and must keep
        // answering while wrk runs.
        let output = tokio::process::Command::new(self.program)
            .args(["-t1", "--timeout", "10s"])
            .arg(format!("-c{}", concurrency.max(1)))
            // wrk's durations are whole seconds.
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("-s")
            .arg(self.script)
            .args(["-H", &format!("x-api-key: {}", mesh.key_text)])
            .args(["-H", "content-type: application/json"])
            .arg(format!("http://{}/", mesh.edge))
            .args(["--", call.wrk_mode(), &prefix])
            .arg(self.subjects)
            .arg(METRIC)
            .output()
            .await
            .with_context(|| format!("running {}", self.program.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "wrk failed ({}): {}{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("edge-bench "))
            .with_context(|| format!("no figures in wrk's output:\n{stdout}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .with_context(|| format!("no {name} in wrk's line: {line}"))
        };
        let requests = field("requests")?;
        let errors = field("errors")?;
        Ok((
            requests.saturating_sub(errors),
            errors,
            Duration::from_micros(field("duration_us")?),
            Duration::from_micros(field("p50_us")?),
            Duration::from_micros(field("p99_us")?),
        ))
    }
}

/// How an allowed consume reads in the edge's JSON.
const ALLOWED: &[u8] = b"\"allowed\":true";

/// HTTP/1.1 keep-alive connections to the edge, one call at a time each, as wrk and browsers
/// use it. A call waits for a free connection.
struct Http1Pool {
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    free: tokio::sync::Semaphore,
    host: HeaderValue,
    key: HeaderValue,
}

impl Http1Pool {
    async fn connect(mesh: &Mesh, connections: usize) -> anyhow::Result<Self> {
        let mut idle = Vec::new();
        for _ in 0..connections.max(1) {
            let stream = tokio::net::TcpStream::connect(mesh.edge).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            idle.push(sender);
        }
        Ok(Self {
            free: tokio::sync::Semaphore::new(idle.len()),
            idle: Mutex::new(idle),
            host: HeaderValue::from_str(&mesh.edge.to_string())?,
            key: HeaderValue::from_str(&mesh.key_text)?,
        })
    }

    /// One consume of 1 for `subject` through the edge; an error unless it answered 200 with
    /// `allowed`.
    async fn consume(&self, mesh: &Mesh, subject: Uuid) -> Result<(), String> {
        let path = format!("/v1/quotas/{METRIC}:consume");
        let request = hyper::Request::post(path)
            .header(HOST, self.host.clone())
            .header("x-api-key", self.key.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(mesh.consume_body(subject))))
            .map_err(|err| err.to_string())?;
        let _permit = self.free.acquire().await.map_err(|err| err.to_string())?;
        let mut sender = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())
            .ok_or("no connection left to the edge")?;
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        // A connection that failed is dropped; the pool shrinks and the errors are counted.
        let (status, body) = answer.map_err(|err| err.to_string())?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        let allowed = body.windows(ALLOWED.len()).any(|window| window == ALLOWED);
        if status == StatusCode::OK && allowed {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// Consumes offered at `per_second` for the warm-up and `duration`, direct or through the edge.
async fn open_loop(
    mesh: &Arc<Mesh>,
    pool: &Arc<Http1Pool>,
    route: Route,
    per_second: f64,
    duration: Duration,
) -> anyhow::Result<Open> {
    let before = sample_after_warmup(mesh);
    let shared = Arc::clone(mesh);
    let pool = Arc::clone(pool);
    let (run, error) = run_open_loop(per_second, duration, move |index| {
        let mesh = Arc::clone(&shared);
        let pool = Arc::clone(&pool);
        async move {
            let subject = mesh.subject(index);
            match route {
                Route::Direct => {
                    let task = usize::try_from(index).unwrap_or(0);
                    mesh.call(Call::Consume, subject, task).await
                }
                Route::Edge => pool.consume(&mesh, subject).await,
            }
        }
    })
    .await;
    let spent = before.await?.until(&mesh.watched.sample());
    if let Some(error) = error {
        eprintln!("open loop {}: first error: {error}", route.name());
    }
    let figures = Figures::of(&run.stats, spent);
    Ok(Open {
        route,
        run,
        figures,
    })
}

/// The closed-loop case of `call` at `concurrency` on `route`, if it ran.
fn closed_at(cases: &[Closed], call: Call, concurrency: usize, route: Route) -> Option<&Figures> {
    cases
        .iter()
        .find(|case| case.call == call && case.concurrency == concurrency && case.route == route)
        .map(|case| &case.figures)
}

/// The CPU columns every table shares: µs per call of each process and the machine's load.
const CPU_HEADER: [&str; 5] = [
    "edge CPU µs/call",
    "quota-svc",
    "PostgreSQL",
    "client",
    "machine busy",
];

/// Calls/s, p50 and p99: the columns of every case.
fn rate_and_latency(figures: &Figures) -> [String; 3] {
    [rate(figures.per_second), ms(figures.p50), ms(figures.p99)]
}

fn cpu_cells(figures: &Figures) -> Vec<String> {
    vec![
        figures.per_call(figures.cpu.server(EDGE)),
        figures.per_call(figures.cpu.server(QUOTA)),
        figures.per_call(figures.cpu.postgres),
        figures.per_call(figures.client_seconds()),
        figures
            .cpu
            .machine_busy
            .map_or_else(|| "?".to_owned(), |busy| format!("{:.0}%", busy * 100.0)),
    ]
}

/// The Markdown section: both loops' tables, the edge's cost against direct gRPC, the goals met
/// or not, and where the CPU went.
fn report(closed: &[Closed], open: &[Open], args: &Args, load: &[String; 2]) -> String {
    let mut header = vec![
        "call",
        "concurrency",
        "path",
        "calls/s",
        "p50",
        "p99",
        "errors",
    ];
    header.extend(CPU_HEADER);
    let mut table = Table::new(&header);
    for case in closed {
        let figures = &case.figures;
        let mut row = vec![
            case.call.name().to_owned(),
            case.concurrency.to_string(),
            case.route.name().to_owned(),
        ];
        row.extend(rate_and_latency(figures));
        row.push(figures.errors.to_string());
        row.extend(cpu_cells(figures));
        table.row(row);
    }
    let mut ratios = Table::new(&[
        "call",
        "concurrency",
        "edge p50 − direct p50",
        "< 0.5 ms",
        "edge / direct calls/s",
        "≥ 60%",
        "CPU µs per call, edge path − direct",
    ]);
    let mut goals_met = true;
    for case in closed.iter().filter(|case| case.route == Route::Direct) {
        let Some(edge) = closed_at(closed, case.call, case.concurrency, Route::Edge) else {
            continue;
        };
        let direct = &case.figures;
        let added = edge.p50.as_secs_f64() - direct.p50.as_secs_f64();
        let share = edge.per_second / direct.per_second.max(f64::EPSILON);
        let p50_met = added < EDGE_P50_ADDED.as_secs_f64();
        let share_met = share >= EDGE_THROUGHPUT_SHARE;
        goals_met &= p50_met && share_met;
        let per_call =
            |figures: &Figures| figures.total_seconds() * 1e6 / figures.calls.max(1) as f64;
        ratios.row(vec![
            case.call.name().to_owned(),
            case.concurrency.to_string(),
            format!("{:+.3} ms", added * 1000.0),
            verdict(p50_met).to_owned(),
            format!("{:.0}%", share * 100.0),
            verdict(share_met).to_owned(),
            format!(
                "{:.0} − {:.0} = {:+.0} (edge-proxy itself {})",
                per_call(edge),
                per_call(direct),
                per_call(edge) - per_call(direct),
                edge.per_call(edge.cpu.server(EDGE)),
            ),
        ]);
    }
    let mut header = vec![
        "path",
        "offered",
        "achieved",
        "p50",
        "p99",
        "p99 < 25 ms",
        "generator lag p99",
        "errors",
        "CPU µs/call in all",
        "cores the offered rate needs",
    ];
    header.extend(CPU_HEADER);
    let mut open_table = Table::new(&header);
    for case in open {
        let figures = &case.figures;
        let mut row = vec![case.route.name().to_owned(), rate(case.run.offered)];
        row.extend(rate_and_latency(figures));
        row.extend([
            verdict(figures.p99 < OPEN_LOOP_P99).to_owned(),
            ms(case.run.send_lag.p99()),
            figures.errors.to_string(),
            figures.per_call(figures.total_seconds()),
            // At the offered rate every call costs this much of the cores: above the cores there
            // are, the backlog and the latencies grow for as long as the run lasts.
            format!(
                "{:.2}",
                case.run.offered * figures.total_seconds() / figures.calls.max(1) as f64
            ),
        ]);
        row.extend(cpu_cells(figures));
        open_table.row(row);
    }
    format!(
        "REST/JSON through edge-proxy against the same calls over direct gRPC, on one quota-svc \
         (release build, defaults) over {keys} subjects in the same run ({cores} cores, load \
         average {load_before} before and {load_after} after, other work included; {run}). Read = `GET /v1/quotas/{METRIC}?subject=…` (CheckQuota); consume = `POST \
         /v1/quotas/{METRIC}:consume` with `{{\"subject\":…,\"amount\":\"1\",\"idempotencyKey\":…}}`, \
         a fresh key per call. The caller's `x-api-key` is verified by quota-svc (the edge \
         authenticates nothing itself).\n\n\
         Closed loop, {secs} s per case after {warmup} s of warm-up: through the edge, wrk \
         (one thread, one HTTP/1.1 keep-alive connection per call in flight, \
         `bench/wrk/edge.lua`); direct, this load generator (one thread) over \
         {grpc} HTTP/2 connections with the same number of calls in flight. CPU µs per call \
         from `/proc`: each process's user + system time over the measured part, divided by \
         the calls; client = wrk plus this process (which also serves the test auth; \
         API keys are cached by quota-svc).\n\n{table}\n\
         Goals: the edge adds < 0.5 ms at p50, and keeps ≥ 60% of the direct throughput \
         ({all}):\n\n{ratios}\n\
         Open loop: consumes offered at {offered} for {open_secs} s after {warmup} s of warm-up, \
         call i due at start + i / rate and sent then whether or not earlier calls have \
         answered; latency from the due time, so stalls are not hidden (no coordinated \
         omission). Direct over {grpc} HTTP/2 connections; through the edge, our HTTP/1.1 \
         client over {http} keep-alive connections (a call waits for a free one, and the wait \
         counts). Achieved = the measured calls over the time until the last answered; \
         generator lag = how late the load generator itself began calls (tokio's timer ticks \
         in 1 ms; more is the generator's own thread falling behind), already inside the \
         latencies; cores needed = offered rate × CPU per call in all.\n\n{open_table}",
        keys = args.keys,
        cores = std::thread::available_parallelism().map_or(0, usize::from),
        run = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        load_before = load[0],
        load_after = load[1],
        secs = args.run.duration_secs,
        warmup = WARMUP.as_secs(),
        grpc = args.grpc_connections,
        table = table.render(),
        all = if goals_met { "all met" } else { "NOT all met" },
        ratios = ratios.render(),
        offered = rate(args.open_rate),
        open_secs = args.open_duration_secs,
        http = args.http_connections,
        open_table = open_table.render(),
    )
}
