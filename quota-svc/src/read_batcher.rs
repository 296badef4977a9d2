//! Coalesces concurrent CheckQuota and ListQuotas reads into one statement per batch. A read that
//! finds nothing else reading runs alone, in its caller's task; otherwise it queues, and the first
//! free worker takes it with whatever else is queued (up to [`MAX_BATCH`]) and answers them all
//! from one round trip. Under load a read then costs PostgreSQL a share of one statement instead
//! of a statement of its own, and the service a share of one pool checkout.
//!
//! A batch that finds the database unavailable (no pooled connection in time, a lost connection)
//! answers each of its reads UNAVAILABLE, as a read alone would: retrying each alone would queue
//! a batch's worth of callers on the pool at its worst moment. A batch that fails otherwise (a
//! bug, a panic) hands each read back to its caller, which reads alone and gets its own answer or
//! error.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures::FutureExt;
use kit::db::{DbError, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    error::Error,
    store::entitlements::{self, CountersQuery, CountersRead},
};

/// The most reads answered by one statement.
pub const MAX_BATCH: usize = 256;
/// Reads waiting before callers wait to enqueue.
const QUEUE: usize = 8_192;

struct Job {
    query: CountersQuery,
    /// Dropped unanswered when the batch failed other than by the database being unavailable:
    /// the caller then reads alone.
    reply: oneshot::Sender<Result<CountersRead, Error>>,
}

/// The handle the service reads through; the workers stop when every handle is dropped.
#[derive(Clone)]
pub struct ReadBatcher {
    pool: PgPool,
    /// `None`: every read alone (the benchmark's comparison path).
    queue: Option<mpsc::Sender<Job>>,
    /// Statements running now, alone or batched.
    running: Arc<AtomicUsize>,
}

/// Counts a running statement until dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        Self(running.clone())
    }

    /// Counts the caller's statement if none is running; `None` if one is. One caller of a
    /// burst after a quiet spell reads alone, the others queue behind it.
    fn claim_idle(running: &Arc<AtomicUsize>) -> Option<Self> {
        running
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| Self(running.clone()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadBatcher {
    /// Starts `workers` workers on the current runtime, each with at most one batch (one pooled
    /// connection) in flight; 0 reads every call alone. Reads alone (one when nothing else
    /// runs, and those of a batch that failed) take connections of their own besides.
    pub fn start(pool: PgPool, workers: usize) -> Self {
        let running = Arc::new(AtomicUsize::new(0));
        let queue = (workers > 0).then(|| {
            let (queue, receiver) = mpsc::channel(QUEUE);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..workers {
                tokio::spawn(work(receiver.clone(), pool.clone(), running.clone()));
            }
            queue
        });
        Self {
            pool,
            queue,
            running,
        }
    }

    /// The counters `query` asks for, with the default tier's version they go with.
    pub async fn read(&self, query: CountersQuery) -> Result<CountersRead, Error> {
        let Some(queue) = &self.queue else {
            let running = Running::start(&self.running);
            return read_alone(&self.pool, query, running).await;
        };
        if queue.capacity() == queue.max_capacity()
            && let Some(running) = Running::claim_idle(&self.running)
        {
            return read_alone(&self.pool, query, running).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            query: query.clone(),
            reply,
        };
        if queue.send(job).await.is_ok()
            && let Ok(answered) = answer.await
        {
            return answered;
        }
        let running = Running::start(&self.running);
        read_alone(&self.pool, query, running).await
    }
}

async fn read_alone(
    pool: &PgPool,
    query: CountersQuery,
    _running: Running,
) -> Result<CountersRead, Error> {
    let mut reads = read_batch(pool, std::slice::from_ref(&query)).await?;
    reads
        .pop()
        .ok_or_else(|| Error::Unavailable("the read statement answered nothing".to_owned()))
}

async fn work(receiver: Arc<Mutex<mpsc::Receiver<Job>>>, pool: PgPool, running: Arc<AtomicUsize>) {
    loop {
        let jobs = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        let _running = Running::start(&running);
        let queries: Vec<CountersQuery> = jobs.iter().map(|job| job.query.clone()).collect();
        let answered = AssertUnwindSafe(read_batch(&pool, &queries))
            .catch_unwind()
            .await;
        match answered {
            Ok(Ok(reads)) => {
                for (job, read) in jobs.into_iter().zip(reads) {
                    let _ = job.reply.send(Ok(read));
                }
            }
            Ok(Err(err)) if database_unavailable(&err) => {
                let cause = err.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Unavailable(cause.clone())));
                }
            }
            Ok(Err(err)) => tracing::warn!(%err, "read batch failed; its calls read alone"),
            Err(_) => tracing::error!("read batch panicked; its calls read alone"),
        }
    }
}

/// Reads `queries` in one statement on one pooled connection.
async fn read_batch(pool: &PgPool, queries: &[CountersQuery]) -> Result<Vec<CountersRead>, Error> {
    let mut conn = pool.get().await.map_err(DbError::from)?;
    Ok(entitlements::read_counters(&mut conn, queries).await?)
}

/// The database did not answer: no pooled connection in time, or the connection broke.
fn database_unavailable(err: &Error) -> bool {
    match err {
        Error::Db(DbError::Pool(_) | DbError::Connect(_)) => true,
        Error::Db(DbError::Query(query)) => kit::error::is_connection_lost(query),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use std::{collections::BTreeSet, time::Duration};

    use chrono::Utc;
    use kit::testing::TestDb;
    use uuid::Uuid;

    use super::*;
    use crate::{
        MIGRATIONS, SPEC,
        store::{consume::create_default_counters, entitlements::apply_defaults},
    };

    fn query(subject: Uuid, metric: Option<&str>) -> CountersQuery {
        CountersQuery {
            subject,
            metric: metric.map(str::to_owned),
        }
    }

    /// The metrics of the counters read, sorted (the statement has no order).
    fn metrics(read: &CountersRead) -> Vec<&str> {
        let mut metrics: Vec<&str> = read
            .counters
            .iter()
            .map(|(metric, _)| metric.as_str())
            .collect();
        metrics.sort_unstable();
        metrics
    }

    /// A database whose free tier has `calls` (10) and `files` (5), and a subject holding a
    /// counter of each.
    async fn with_counters() -> (TestDb, Uuid) {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let mut conn = db.connect(SPEC.name).await;
        let tier = [
            ("calls".to_owned(), Some(10)),
            ("files".to_owned(), Some(5)),
        ];
        apply_defaults(&mut conn, &tier, 3, Utc::now())
            .await
            .unwrap();
        let subject = Uuid::now_v7();
        let keys = BTreeSet::from([(subject, "calls".to_owned()), (subject, "files".to_owned())]);
        create_default_counters(&mut conn, &keys, Utc::now())
            .await
            .unwrap();
        (db, subject)
    }

    /// One statement answers reads of one metric, of all metrics, of a subject without counters
    /// and of a metric the subject has no counter of, each with its own rows, in order.
    #[tokio::test]
    async fn one_statement_answers_each_read_with_its_own_counters() {
        let (db, counted) = with_counters().await;
        let mut conn = db.connect(SPEC.name).await;
        let other = Uuid::now_v7();
        let queries = [
            query(counted, None),
            query(other, Some("calls")),
            query(counted, Some("files")),
            query(counted, Some("unknown")),
            query(other, None),
            query(counted, Some("calls")),
        ];
        let reads = entitlements::read_counters(&mut conn, &queries)
            .await
            .unwrap();
        let found: Vec<Vec<&str>> = reads.iter().map(metrics).collect();
        let none: Vec<&str> = Vec::new();
        assert_eq!(
            found,
            [
                vec!["calls", "files"],
                none.clone(),
                vec!["files"],
                none.clone(),
                none,
                vec!["calls"],
            ]
        );
        assert!(reads.iter().all(|read| read.defaults_version == 3));
        let files = &reads[2].counters[0].1;
        assert_eq!((files.limit, files.used), (Some(5), 0));
    }

    /// Reads made while one is running queue and are answered together, each with its own
    /// subject's counters.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_each_get_their_own_answer() {
        let (db, counted) = with_counters().await;
        let pool = kit::db::pool(db.url(), SPEC.name, 2, Duration::from_secs(5)).unwrap();
        let reads = ReadBatcher::start(pool, 1);
        let calls: Vec<_> = (0..200)
            .map(|n| {
                let reads = reads.clone();
                let subject = if n % 2 == 0 { counted } else { Uuid::now_v7() };
                tokio::spawn(async move { (n, reads.read(query(subject, None)).await) })
            })
            .collect();
        for call in calls {
            let (n, read) = call.await.unwrap();
            let expected: &[&str] = if n % 2 == 0 { &["calls", "files"] } else { &[] };
            assert_eq!(metrics(&read.unwrap()), expected, "read {n}");
        }
    }

    fn spawn_read(
        reads: &ReadBatcher,
        query: CountersQuery,
    ) -> tokio::task::JoinHandle<Result<CountersRead, Error>> {
        let reads = reads.clone();
        tokio::spawn(async move { reads.read(query).await })
    }

    async fn until(done: impl Fn() -> bool) {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A batch that fails on one read's input hands its reads back: each reads alone, so the
    /// others still get their answers and only the bad one fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_leaves_each_call_to_read_alone() {
        let (db, counted) = with_counters().await;
        let pool = kit::db::pool(db.url(), SPEC.name, 1, Duration::from_secs(10)).unwrap();
        let reads = ReadBatcher::start(pool.clone(), 1);
        let queued = |count: usize| {
            let queue = reads.queue.clone().unwrap();
            move || queue.max_capacity() - queue.capacity() == count
        };
        let held = pool.get().await.unwrap();
        // Alone (nothing was running), then a batch of one in the worker: both wait for the pool.
        let alone = spawn_read(&reads, query(counted, None));
        until(|| pool.status().waiting == 1).await;
        let first_batch = spawn_read(&reads, query(counted, Some("files")));
        until(|| pool.status().waiting == 2).await;
        // Queued behind the worker's batch, so the next batch holds both.
        let good = spawn_read(&reads, query(counted, Some("calls")));
        let bad = spawn_read(&reads, query(counted, Some("nul\0byte")));
        until(queued(2)).await;
        drop(held);

        assert_eq!(metrics(&alone.await.unwrap().unwrap()), ["calls", "files"]);
        assert_eq!(metrics(&first_batch.await.unwrap().unwrap()), ["files"]);
        assert_eq!(metrics(&good.await.unwrap().unwrap()), ["calls"]);
        assert!(matches!(bad.await.unwrap(), Err(Error::Db(_))));
    }

    /// A batch that gets no connection in time answers its reads UNAVAILABLE, as a read alone
    /// would, rather than sending each back to wait for the pool again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_without_a_connection_answers_unavailable() {
        let (db, counted) = with_counters().await;
        let pool = kit::db::pool(db.url(), SPEC.name, 1, Duration::from_millis(300)).unwrap();
        let reads = ReadBatcher::start(pool.clone(), 1);
        let held = pool.get().await.unwrap();
        let alone = spawn_read(&reads, query(counted, None));
        until(|| pool.status().waiting == 1).await;
        let batched = spawn_read(&reads, query(counted, None));
        until(|| pool.status().waiting == 2).await;
        assert!(matches!(
            alone.await.unwrap(),
            Err(Error::Db(DbError::Pool(_)))
        ));
        assert!(matches!(batched.await.unwrap(), Err(Error::Unavailable(_))));
        assert_eq!(pool.status().waiting, 0);
        drop(held);
    }
}
