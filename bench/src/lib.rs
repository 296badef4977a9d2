//! Shared helpers of the load generators in `src/bin/`: latency recording, a concurrent call
//! loop (closed) and a fixed-rate one (open), CPU accounting from `/proc`, the quota fixture the
//! quota and edge benches share, and the Markdown written to `bench/results/`.

pub mod cpu;
pub mod quota;

use std::{
    future::Future,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

// mimalloc in every load generator: it shares the cores with the servers; spend less of them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fails unless every binary a load generator starts was built (`packages`: what
/// `cargo build --release -p …` to run).
pub fn ensure_built(binaries: &[&Path], packages: &str) -> anyhow::Result<()> {
    for binary in binaries {
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build it with `cargo build --release {packages}`",
            binary.display()
        );
    }
    Ok(())
}

/// Latencies in microseconds, 1 µs to 60 s at three significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; a failure here is a programming error.
        match Histogram::new_with_bounds(1, 60_000_000, 3) {
            Ok(histogram) => Self(histogram),
            Err(err) => panic!("histogram bounds: {err}"),
        }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than panic regardless.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(quantile))
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }
}

/// The outcome of a load run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Latency,
}

impl Stats {
    /// Successful calls per second.
    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Calls made before measuring starts: the first moments of a run, when every task sends at
/// once into cold connections and queues, are not the steady state the figures describe.
pub const WARMUP: Duration = Duration::from_secs(1);

/// Runs `concurrency` tasks, each calling `call(task_index)` back to back for [`WARMUP`] and then
/// `duration`, and records the latency of every successful call begun after the warm-up. The
/// first error is returned too, so a misconfigured run is visible instead of reporting a fast
/// stream of failures.
pub async fn run_concurrent<F, Fut, E>(
    concurrency: usize,
    duration: Duration,
    call: F,
) -> (Stats, Option<E>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let measure_from = Instant::now() + WARMUP;
    let deadline = measure_from + duration;
    run_tasks(concurrency, measure_from, move |index| {
        (Instant::now() < deadline).then(|| call(index))
    })
    .await
}

/// Runs `concurrency` tasks that share `items`, calling `call(item)` once per item until none is
/// left, and records latencies as [`run_concurrent`] does.
pub async fn run_items<T, F, Fut, E>(
    concurrency: usize,
    items: Vec<T>,
    call: F,
) -> (Stats, Option<E>)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let items = Arc::new(Mutex::new(items.into_iter()));
    run_tasks(concurrency, Instant::now(), move |_| {
        let item = items.lock().ok()?.next()?;
        Some(call(item))
    })
    .await
}

/// Runs `concurrency` tasks that take items from `items`, each item once, and call `call(item)`
/// for [`WARMUP`] and then `duration`, or until no item is left; latencies are recorded as
/// [`run_concurrent`] does. The items not taken stay in `items` for the next run. When the
/// items run out before the deadline, the figures cover the time up to the last call's answer.
pub async fn run_items_for<T, F, Fut, E>(
    concurrency: usize,
    duration: Duration,
    items: Arc<Mutex<Vec<T>>>,
    call: F,
) -> (Stats, Option<E>)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let measure_from = Instant::now() + WARMUP;
    let deadline = measure_from + duration;
    run_tasks(concurrency, measure_from, move |_| {
        if Instant::now() >= deadline {
            return None;
        }
        let item = items.lock().ok()?.pop()?;
        Some(call(item))
    })
    .await
}

/// The loop shared by the runners: each task asks `next_call` for its next call until `None`;
/// calls begun before `measure_from` are made but not counted.
async fn run_tasks<N, Fut, E>(
    concurrency: usize,
    measure_from: Instant,
    next_call: N,
) -> (Stats, Option<E>)
where
    N: Fn(usize) -> Option<Fut> + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let tasks: Vec<_> = (0..concurrency)
        .map(|index| {
            let next_call = next_call.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut first_error = None;
                while let Some(call) = next_call(index) {
                    let begun = Instant::now();
                    let result = call.await;
                    let took = begun.elapsed();
                    if begun < measure_from {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            stats.latency.record(took);
                            stats.calls += 1;
                        }
                        Err(err) => {
                            stats.errors += 1;
                            first_error.get_or_insert(err);
                        }
                    }
                }
                (stats, first_error)
            })
        })
        .collect();
    let mut total = Stats::default();
    let mut first_error = None;
    for task in tasks {
        if let Ok((stats, error)) = task.await {
            total.calls += stats.calls;
            total.errors += stats.errors;
            total.latency.merge(&stats.latency);
            if first_error.is_none() {
                first_error = error;
            }
        }
    }
    total.elapsed = measure_from.elapsed();
    (total, first_error)
}

/// The outcome of an open-loop run: [`Stats`] whose latencies run from each call's due time, and
/// how late the load generator itself began the calls (its own stalls, part of those latencies).
#[derive(Debug, Clone, Default)]
pub struct OpenLoopStats {
    pub stats: Stats,
    /// The offered rate.
    pub offered: f64,
    /// From each measured call's due time to the moment its task began it.
    pub send_lag: Latency,
}

/// Open loop at a fixed offered rate: call `i` is due at `start + i / per_second` and begun then
/// (or as soon after as the generator gets to it), whether or not earlier calls have answered,
/// for [`WARMUP`] and then `duration`. Each latency runs from the due time, not from the send, so
/// a stall of the server or of the generator delays every call due during it and shows in the
/// percentiles instead of silently lowering the rate (coordinated omission). `Stats::elapsed`
/// runs to the last measured answer, so a server that falls behind shows a rate below the
/// offered one.
pub async fn run_open_loop<F, Fut, E>(
    per_second: f64,
    duration: Duration,
    call: F,
) -> (OpenLoopStats, Option<E>)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + duration;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut run = OpenLoopRecord::new(per_second, measure_from);
    for index in 0_u64.. {
        let due = start + Duration::from_secs_f64(index as f64 / per_second);
        if due >= end {
            break;
        }
        if due > Instant::now() {
            // tokio's timer has 1 ms ticks: the calls due within one leave together, up to 1 ms
            // late; that lateness is in the latencies and in `send_lag`.
            tokio::time::sleep_until(due.into()).await;
        } else if index % 16 == 0 {
            // Behind schedule: let the calls' tasks run, or on one thread nothing would answer.
            tokio::task::yield_now().await;
        }
        let call = call(index);
        in_flight.spawn(async move {
            let begun = Instant::now();
            let result = call.await;
            (due, begun, Instant::now(), result)
        });
        while let Some(done) = in_flight.try_join_next() {
            run.record(done);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        run.record(done);
    }
    run.finish()
}

/// What [`run_open_loop`] has counted so far.
struct OpenLoopRecord<E> {
    out: OpenLoopStats,
    first_error: Option<E>,
    measure_from: Instant,
    last_answer: Instant,
}

impl<E> OpenLoopRecord<E> {
    fn new(offered: f64, measure_from: Instant) -> Self {
        Self {
            out: OpenLoopStats {
                offered,
                ..OpenLoopStats::default()
            },
            first_error: None,
            measure_from,
            last_answer: measure_from,
        }
    }

    fn record<J>(&mut self, done: Result<(Instant, Instant, Instant, Result<(), E>), J>) {
        let Ok((due, begun, answered, result)) = done else {
            self.out.stats.errors += 1;
            return;
        };
        if due < self.measure_from {
            return;
        }
        self.last_answer = self.last_answer.max(answered);
        self.out
            .send_lag
            .record(begun.saturating_duration_since(due));
        match result {
            Ok(()) => {
                self.out.stats.calls += 1;
                self.out.stats.latency.record(answered - due);
            }
            Err(err) => {
                self.out.stats.errors += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }

    fn finish(mut self) -> (OpenLoopStats, Option<E>) {
        self.out.stats.elapsed = self.last_answer - self.measure_from;
        (self.out, self.first_error)
    }
}

/// A Markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|cell| (*cell).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        out.push_str(&line(&vec!["---".to_owned(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// How a target line reads.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// A duration as milliseconds with three decimals, e.g. `0.412 ms`.
pub fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// A rate rounded to whole calls per second, e.g. `21,345/s`.
pub fn rate(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped}/s")
}

/// Runs a PostgreSQL client tool (`psql`, `pgbench`); its standard output, or why it failed.
pub fn run_tool(tool: &Path, args: &[&str]) -> Result<String, String> {
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

/// PostgreSQL's own rate of one transaction per call: `pgbench` running `script` (pgbench's
/// script language; `defines` are its `-D name=value` variables) with `clients` clients for
/// `duration` against `database_url`. Returns the transactions committed per second.
pub fn pgbench_tps(
    pgbench: &Path,
    database_url: &str,
    script: &str,
    clients: usize,
    duration: Duration,
    defines: &[(&str, String)],
) -> Result<f64, String> {
    let file = std::env::temp_dir().join(format!(
        "bench-pgbench-{}-{}.sql",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::write(&file, script).map_err(|err| format!("{}: {err}", file.display()))?;
    let clients_arg = clients.max(1).to_string();
    // pgbench refuses more threads than clients.
    let threads = clients.clamp(1, 2).to_string();
    let seconds = duration.as_secs().max(1).to_string();
    let file_arg = file.to_string_lossy().into_owned();
    let defines: Vec<String> = defines
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let mut args = vec![
        "-n",
        "-c",
        clients_arg.as_str(),
        "-j",
        threads.as_str(),
        "-T",
        seconds.as_str(),
    ];
    for define in &defines {
        args.extend(["-D", define.as_str()]);
    }
    args.extend(["-f", file_arg.as_str(), database_url]);
    let output = run_tool(pgbench, &args);
    let _ = std::fs::remove_file(&file);
    let output = output?;
    output
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .ok_or_else(|| format!("no `tps = ` line in pgbench's output:\n{output}"))
}

/// Writes `## title` and `body` to `path` (replacing it), creating the directory.
pub fn write_section(path: &Path, title: &str, body: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("## {title}\n\n{body}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_markdown() {
        let mut table = Table::new(&["case", "rate"]);
        table.row(vec!["hot".into(), rate(21_345.4)]);
        assert_eq!(
            table.render(),
            "| case | rate |\n| --- | --- |\n| hot | 21,345/s |\n"
        );
    }

    #[tokio::test]
    async fn every_item_is_called_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let (stats, error) = run_items(3, (0..10).collect(), move |item: u32| {
            let record = Arc::clone(&record);
            async move {
                record.lock().map_err(|_| "poisoned")?.push(item);
                if item == 7 { Err("seven") } else { Ok(()) }
            }
        })
        .await;
        assert_eq!((stats.calls, stats.errors, error), (9, 1, Some("seven")));
        let mut seen = seen.lock().map(|seen| seen.clone()).unwrap_or_default();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn timed_item_runs_take_each_item_once_and_leave_the_rest() {
        let items = Arc::new(Mutex::new((0..10).collect::<Vec<u32>>()));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&taken);
        let (stats, error) = run_items_for(
            2,
            Duration::from_secs(60),
            Arc::clone(&items),
            move |item: u32| {
                let record = Arc::clone(&record);
                async move {
                    record.lock().map_err(|_| "poisoned")?.push(item);
                    Ok::<_, &str>(())
                }
            },
        )
        .await;
        assert_eq!((stats.errors, error), (0, None));
        assert!(stats.calls <= 10, "{stats:?}");
        let mut taken = taken.lock().map(|taken| taken.clone()).unwrap_or_default();
        taken.sort_unstable();
        assert_eq!(taken, (0..10).collect::<Vec<_>>());
        assert!(items.lock().map(|items| items.is_empty()).unwrap_or(false));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn open_loop_latency_runs_from_the_due_time_so_a_stall_shows() {
        // Every call takes 10 ms on a one-at-a-time resource (100/s at most): the later calls queue behind it,
        // and their latencies (from the due time) grow instead of the rate silently dropping.
        let resource = Arc::new(tokio::sync::Mutex::new(()));
        let (run, error) = run_open_loop(200.0, Duration::from_millis(500), move |_| {
            let resource = Arc::clone(&resource);
            async move {
                let _held = resource.lock().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, ()>(())
            }
        })
        .await;
        assert_eq!(error, None);
        assert_eq!(run.stats.calls, 100, "{run:?}");
        assert!(run.stats.per_second() < 60.0, "{run:?}");
        assert!(run.stats.latency.p99() > Duration::from_secs(1), "{run:?}");
        assert!(run.send_lag.p99() < Duration::from_millis(50), "{run:?}");
    }

    #[test]
    fn latency_quantiles_follow_the_recorded_values() {
        let mut latency = Latency::new();
        for micros in 1..=100 {
            latency.record(Duration::from_micros(micros));
        }
        assert_eq!(latency.count(), 100);
        assert_eq!(latency.p50(), Duration::from_micros(50));
        assert_eq!(latency.p99(), Duration::from_micros(99));
    }
}
