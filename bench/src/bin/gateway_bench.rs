//! Load generator for the edge's gateway (protected routes): a trivial HTTP upstream called
//! directly, and the same upstream through a protected route, in one run.
//!
//! The upstream is a hyper server on a thread of this process answering `ok` to everything.
//! Through the edge, each call is `GET /bench/hello` with one of many users' API keys and a fresh
//! `X-Request-Id`: the edge authenticates the key (cached after its first use, as in
//! production), consumes one unit of a metric with a huge limit in quota-svc (a real charge per
//! call, PostgreSQL included) and forwards. Closed loop at each concurrency, one HTTP/1.1
//! keep-alive connection per call in flight, for both paths. Writes `bench/results/gateway.md`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bench::{
    Stats, Table, WARMUP,
    cpu::{Spent, Watched},
    ensure_built, ms,
    quota::{Fixture, METRIC, QuotaRun, apply_default_tier},
    rate, run_concurrent, run_items, write_section,
};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Request, Response, StatusCode,
    client::conn::http1::SendRequest,
    header::{HOST, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use kit::testing::{Binary, wait_for_health};
use proto::quota::quota_service_client::QuotaServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

/// gateway benchmark (see the module documentation).
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    #[command(flatten)]
    run: QuotaRun,
    /// The edge-proxy binary to start.
    #[arg(long, env = "EDGE_BIN", default_value = "target/release/edge-proxy")]
    edge_bin: PathBuf,
    /// Calls in flight of each case (comma-separated), one HTTP/1.1 connection each.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    concurrency: Vec<usize>,
    /// Users calling through the edge, each with an API key of its own.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Where the Markdown section goes.
    #[arg(long, default_value = "bench/results/gateway.md")]
    output: PathBuf,
}

const EDGE: &str = "edge-proxy";
const QUOTA: &str = "quota-svc";
/// The protected route's prefix.
const PREFIX: &str = "/bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Gateway,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "upstream directly",
            Path::Gateway => "through the protected route",
        }
    }
}

/// One case's figures.
struct Case {
    path: Path,
    concurrency: usize,
    stats: Stats,
    cpu: Spent,
}

impl Case {
    /// CPU microseconds per successful call of one party.
    fn per_call(&self, seconds: f64) -> String {
        format!("{:.0}", seconds * 1e6 / (self.stats.calls.max(1) as f64))
    }
}

/// What the calls need.
struct Target {
    upstream: SocketAddr,
    edge: SocketAddr,
    /// `x-api-key` values of the users.
    keys: Vec<HeaderValue>,
    /// Makes this run's request ids unique.
    run: String,
    next: AtomicU64,
}

impl Target {
    /// One GET on `sender`; an error unless it answered 200.
    async fn call(&self, path: Path, sender: &mut SendRequest<Empty<Bytes>>) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let request = match path {
            Path::Direct => Request::get("/hello")
                .header(HOST, self.upstream.to_string())
                .body(Empty::new()),
            Path::Gateway => Request::get(format!("{PREFIX}/hello"))
                .header(HOST, self.edge.to_string())
                .header(
                    "x-api-key",
                    self.keys[usize::try_from(n).unwrap_or(0) % self.keys.len()].clone(),
                )
                .header("x-request-id", format!("{}-{n}", self.run))
                .body(Empty::new()),
        }
        .map_err(|err| err.to_string())?;
        sender.ready().await.map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

// One thread, as in the other benches: the load generator takes less of the shared cores.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_built(
        &[&args.run.quota_bin, &args.edge_bin],
        "-p quota-svc -p edge-proxy",
    )?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let upstream = start_upstream()?;
    let fixture = Fixture::start().await;
    let quota = fixture.start_quota(&args.run.quota_bin, &[]);
    let quota_url = format!("http://{}", quota.addr);
    let channel = Channel::from_shared(quota_url.clone())?.connect_lazy();
    wait_for_health(&channel, ServingStatus::Serving, Duration::from_secs(30)).await;
    apply_default_tier(
        &mut QuotaServiceClient::new(channel),
        &fixture.bench_key_metadata()?,
    )
    .await?;
    let issuer = &fixture.issuer;
    let edge_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
    let gateway_key = issuer.add_api_key(Uuid::now_v7(), &["quota:consume"], &["service"]);
    let keys = (0..args.users.max(1))
        .map(|_| {
            let key = issuer.add_api_key(Uuid::now_v7(), &["quota:consume"], &[]);
            HeaderValue::from_str(&key).context("an API key as a header")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let run = Uuid::now_v7().simple().to_string();
    let routes = std::env::temp_dir().join(format!("gateway-bench-{run}.toml"));
    std::fs::write(
        &routes,
        format!(
            "[[route]]\nprefix = \"{PREFIX}\"\nupstream = \"http://{upstream}\"\n\
             credentials = [\"api_key\"]\nscope = \"quota:consume\"\nmetric = \"{METRIC}\"\n\
             strip_prefix = true\n"
        ),
    )?;
    let auth_url = fixture.auth.url();
    let edge = Binary::start(
        &args.edge_bin,
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_QUOTA_UPSTREAM", &quota_url),
            ("EDGE_SERVICE_KEY", &edge_key),
            ("EDGE_QUOTA_API_KEY", &gateway_key),
            ("EDGE_ROUTES", &routes.display().to_string()),
            // Keys verified once per 30 s, as a busy production edge would.
            ("API_KEY_CACHE_TTL_SECS", "30"),
            ("RUST_LOG", "warn"),
        ],
    );
    let watched = Watched::new(vec![(EDGE, edge.pid()), (QUOTA, quota.pid())]);
    let target = Arc::new(Target {
        upstream,
        edge: edge.addr,
        keys,
        run,
        next: AtomicU64::new(0),
    });
    let result = run_all(&args, &target, &watched).await;
    let _ = std::fs::remove_file(&routes);
    let cases = result?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = [load_before, load_after]
        .map(|load| load.split_whitespace().next().unwrap_or("?").to_owned());
    let body = report(&cases, &args, &load);
    write_section(&args.output, "gateway (protected routes)", &body)?;
    eprintln!("{body}\nwritten to {}", args.output.display());
    Ok(())
}

/// The trivial upstream: `200 ok` to every request, HTTP/1.1 keep-alive, on a thread of its own
/// so it does not compete with the load generator's.
fn start_upstream() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

/// Every case: at each concurrency, the upstream directly and then through the edge.
async fn run_all(
    args: &Args,
    target: &Arc<Target>,
    watched: &Watched,
) -> anyhow::Result<Vec<Case>> {
    // One call through the edge first: a misrouted or refused call fails here, loudly.
    let mut probe = connect(target.edge).await?;
    target
        .call(Path::Gateway, &mut probe)
        .await
        .map_err(|err| anyhow::anyhow!("a call through the protected route: {err}"))?;
    warm_up(target).await?;
    let duration = args.run.duration();
    let mut cases = Vec::new();
    for &concurrency in &args.concurrency {
        for path in [Path::Direct, Path::Gateway] {
            let case = run_case(target, watched, path, concurrency, duration).await?;
            eprintln!(
                "{:>28} | {concurrency:>3} | {} | p50 {} | p99 {} | errors {} | CPU µs/call edge {} quota {} pg {}",
                path.name(),
                rate(case.stats.per_second()),
                ms(case.stats.latency.p50()),
                ms(case.stats.latency.p99()),
                case.stats.errors,
                case.per_call(case.cpu.server(EDGE)),
                case.per_call(case.cpu.server(QUOTA)),
                case.per_call(case.cpu.postgres),
            );
            cases.push(case);
        }
    }
    Ok(cases)
}

/// Every user once through the edge, so that the measured calls are the steady state: the edge
/// has verified and cached each key, and quota-svc has created each user's counter (a first
/// consume takes a slower path).
async fn warm_up(target: &Arc<Target>) -> anyhow::Result<()> {
    const CONNECTIONS: usize = 16;
    let connections = Arc::new(open(target.edge, CONNECTIONS).await?);
    let shared = Arc::clone(target);
    // One call per item: the calls take the keys in turn, so each user exactly once.
    let (_, error) = run_items(CONNECTIONS, (0..target.keys.len()).collect(), move |item| {
        let target = Arc::clone(&shared);
        let connections = Arc::clone(&connections);
        async move {
            let mut sender = connections[item % CONNECTIONS].lock().await;
            target.call(Path::Gateway, &mut sender).await
        }
    })
    .await;
    match error {
        Some(error) => anyhow::bail!("warming up through the protected route: {error}"),
        None => Ok(()),
    }
}

/// `count` HTTP/1.1 connections to `addr`, each to be used by one caller at a time.
async fn open(
    addr: SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<Mutex<SendRequest<Empty<Bytes>>>>> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(Mutex::new(connect(addr).await?));
    }
    Ok(connections)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `concurrency` calls in flight on `path`, each task on its own connection.
async fn run_case(
    target: &Arc<Target>,
    watched: &Watched,
    path: Path,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Case> {
    let addr = match path {
        Path::Direct => target.upstream,
        Path::Gateway => target.edge,
    };
    let connections = Arc::new(open(addr, concurrency.max(1)).await?);
    let sampled = {
        let watched = watched.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WARMUP).await;
            watched.sample()
        })
    };
    let shared = Arc::clone(target);
    let (stats, error) = run_concurrent(concurrency.max(1), duration, move |task| {
        let target = Arc::clone(&shared);
        let connections = Arc::clone(&connections);
        async move {
            let mut sender = connections[task].lock().await;
            target.call(path, &mut sender).await
        }
    })
    .await;
    let cpu = sampled.await?.until(&watched.sample());
    if let Some(error) = error {
        eprintln!("{} / {concurrency}: first error: {error}", path.name());
    }
    Ok(Case {
        path,
        concurrency,
        stats,
        cpu,
    })
}

fn report(cases: &[Case], args: &Args, load: &[String; 2]) -> String {
    let mut table = Table::new(&[
        "path",
        "concurrency",
        "requests/s",
        "p50",
        "p99",
        "errors",
        "edge CPU µs/call",
        "quota-svc",
        "PostgreSQL",
        "machine busy",
    ]);
    for case in cases {
        table.row(vec![
            case.path.name().to_owned(),
            case.concurrency.to_string(),
            rate(case.stats.per_second()),
            ms(case.stats.latency.p50()),
            ms(case.stats.latency.p99()),
            case.stats.errors.to_string(),
            case.per_call(case.cpu.server(EDGE)),
            case.per_call(case.cpu.server(QUOTA)),
            case.per_call(case.cpu.postgres),
            case.cpu
                .machine_busy
                .map_or_else(|| "?".to_owned(), |busy| format!("{:.0}%", busy * 100.0)),
        ]);
    }
    let mut added = Table::new(&[
        "concurrency",
        "p50 added by the gateway",
        "p99 added",
        "gateway / direct requests/s",
    ]);
    for direct in cases.iter().filter(|case| case.path == Path::Direct) {
        let Some(gateway) = cases
            .iter()
            .find(|case| case.path == Path::Gateway && case.concurrency == direct.concurrency)
        else {
            continue;
        };
        let delta = |pick: fn(&Stats) -> Duration| {
            let difference = pick(&gateway.stats).as_secs_f64() - pick(&direct.stats).as_secs_f64();
            format!("{:+.3} ms", difference * 1000.0)
        };
        added.row(vec![
            direct.concurrency.to_string(),
            delta(|stats| stats.latency.p50()),
            delta(|stats| stats.latency.p99()),
            format!(
                "{:.1}%",
                100.0 * gateway.stats.per_second() / direct.stats.per_second().max(f64::EPSILON)
            ),
        ]);
    }
    format!(
        "A trivial HTTP upstream (hyper, `200 ok`) called directly, and through the edge's \
         protected route `{PREFIX}` in the same run ({cores} cores, load average {before} before \
         and {after} after, other work included; {when}). Through the route each request carries \
         one of {users} users' API keys and a fresh `X-Request-Id`; every user called once before \
         (its key verified through VerifyApiKey, kit's test issuer standing in for auth-svc, and cached by the edge; its quota counter created), so the edge consumes one unit of `{METRIC}` per request in \
         quota-svc (PostgreSQL, limit never reached) before forwarding; release builds. Closed \
         loop, {secs} s per case after {warmup} s of warm-up, one HTTP/1.1 keep-alive connection \
         per request in flight, from this load generator (one thread); CPU µs per request from \
         `/proc` over the measured part.\n\n{table}\n{added}",
        cores = std::thread::available_parallelism().map_or(0, usize::from),
        before = load[0],
        after = load[1],
        when = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        users = args.users,
        secs = args.run.duration_secs,
        warmup = WARMUP.as_secs(),
        table = table.render(),
        added = added.render(),
    )
}
