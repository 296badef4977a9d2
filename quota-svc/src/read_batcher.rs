//! Coalesces concurrent CheckQuota and ListQuotas reads into one statement per batch. A read that
//! finds nothing else reading goes alone in its own task; otherwise it queues, and the first free
//! worker takes it with whatever else is queued (up to [`MAX_BATCH`]) and answers them all from
//! one round trip. Under load a read then costs PostgreSQL a share of one statement instead of a
//! statement of its own, and the service a share of one pool checkout.
//!
//! A batch that fails (a dropped connection, an exhausted pool, a bug) hands each of its reads
//! back to its caller, which reads alone: every call gets its own answer or its own error.

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
    /// Dropped unanswered when the batch failed: the caller then reads alone.
    reply: oneshot::Sender<CountersRead>,
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
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadBatcher {
    /// Starts `workers` workers on the current runtime, each with at most one batch (one pooled
    /// connection) in flight; 0 reads every call alone.
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
            return self.read_alone(query).await;
        };
        if self.running.load(Ordering::Relaxed) == 0 && queue.capacity() == queue.max_capacity() {
            return self.read_alone(query).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            query: query.clone(),
            reply,
        };
        if queue.send(job).await.is_ok()
            && let Ok(read) = answer.await
        {
            return Ok(read);
        }
        self.read_alone(query).await
    }

    async fn read_alone(&self, query: CountersQuery) -> Result<CountersRead, Error> {
        let _running = Running::start(&self.running);
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        let mut reads =
            entitlements::read_counters(&mut conn, std::slice::from_ref(&query)).await?;
        Ok(reads.pop().unwrap_or_default())
    }
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
        // A panic (a bug) or an error fails only this batch: its callers read alone.
        let answered = AssertUnwindSafe(read_batch(&pool, &queries))
            .catch_unwind()
            .await;
        match answered {
            Ok(Ok(reads)) => {
                for (job, read) in jobs.into_iter().zip(reads) {
                    let _ = job.reply.send(read);
                }
            }
            Ok(Err(err)) => tracing::debug!(%err, "read batch failed; its calls read alone"),
            Err(_) => tracing::error!("read batch panicked; its calls read alone"),
        }
    }
}

async fn read_batch(pool: &PgPool, queries: &[CountersQuery]) -> Result<Vec<CountersRead>, Error> {
    let mut conn = pool.get().await.map_err(DbError::from)?;
    Ok(entitlements::read_counters(&mut conn, queries).await?)
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

    fn metrics(read: &CountersRead) -> Vec<&str> {
        read.counters
            .iter()
            .map(|(metric, _)| metric.as_str())
            .collect()
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

    /// A batch that fails hands its reads back: each is read alone, so a call queued behind a
    /// failing batch still gets its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_leaves_each_call_to_read_alone() {
        let (db, counted) = with_counters().await;
        let pool = kit::db::pool(db.url(), SPEC.name, 1, Duration::from_millis(300)).unwrap();
        let reads = ReadBatcher::start(pool.clone(), 1);
        let waiting = |count: usize| {
            let pool = pool.clone();
            async move {
                while pool.status().waiting != count {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let held = pool.get().await.unwrap();
        let alone = tokio::spawn({
            let reads = reads.clone();
            async move { reads.read(query(counted, None)).await }
        });
        waiting(1).await;
        // Something is reading: this one queues, and the worker's batch waits for the pool.
        let queued = tokio::spawn({
            let reads = reads.clone();
            async move { reads.read(query(counted, Some("calls"))).await }
        });
        waiting(2).await;
        let batch_waits_since = tokio::time::Instant::now();
        // Both time out (300 ms); the queued call then waits for the pool again, alone.
        assert!(alone.await.unwrap().is_err());
        tokio::time::sleep_until(batch_waits_since + Duration::from_millis(450)).await;
        assert_eq!(pool.status().waiting, 1);
        drop(held);
        assert_eq!(metrics(&queued.await.unwrap().unwrap()), ["calls"]);
    }
}
