//! Coalesces concurrent Consume calls into one transaction per batch. Requests are sharded by
//! subject over a few queues, each drained by one worker: it waits for the first request, then
//! takes whatever else is already queued (up to [`MAX_BATCH`]) without waiting for more, so an
//! idle service commits a lone call in one transaction while a busy one commits hundreds
//! together. One batch per shard is in flight, several across shards; as a subject's counters
//! live in one shard, concurrent batches of a replica never wait on each other's row locks, and
//! a hot subject gets large batches instead of many small ones queued on the same row.

use std::{
    hash::{BuildHasher, RandomState},
    panic::AssertUnwindSafe,
    sync::Arc,
};

use futures::FutureExt;
use kit::db::{DbError, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::{
    clock::Clock,
    domain::batch::Decision,
    error::Error,
    store::consume::{BatchError, Keys, Pending, consume_batch},
};

/// The most requests committed in one transaction.
pub const MAX_BATCH: usize = 500;
/// Requests waiting in a shard before callers wait to enqueue.
const QUEUE: usize = 8_192;
/// Attempts of one batch: a first one that met a recorded key, and retries after races or deadlocks.
const MAX_ATTEMPTS: usize = 5;

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<Decision, Error>>,
}

/// The handle the handlers enqueue on; the workers stop when it is dropped.
#[derive(Clone)]
pub struct Batcher {
    shards: Vec<mpsc::Sender<Job>>,
    hasher: RandomState,
}

impl Batcher {
    /// Starts `shards` shards (at least 1), one worker each, on the current runtime.
    pub fn start(pool: PgPool, clock: Arc<dyn Clock>, shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                let (queue, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(work(receiver, pool.clone(), clock.clone()));
                queue
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
        }
    }

    /// Decides `pending` in the next batch of its subject's shard; answers once that batch
    /// committed.
    pub async fn consume(&self, pending: Pending) -> Result<Decision, Error> {
        let hash = self.hasher.hash_one(pending.request.subject);
        let shard = usize::try_from(hash % self.shards.len() as u64).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        self.shards[shard]
            .send(Job { pending, reply })
            .await
            .map_err(|_| Error::Unavailable("the consume queue is closed".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the consume worker stopped".to_owned()))?
    }
}

async fn work(mut receiver: mpsc::Receiver<Job>, pool: PgPool, clock: Arc<dyn Clock>) {
    loop {
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
        let batch: Vec<Pending> = jobs.iter().map(|job| job.pending.clone()).collect();
        // A panic (a bug) fails only its batch: unwinding out of the worker would close the
        // shard's queue and leave its subjects UNAVAILABLE until a restart. Unwind safety: the
        // batch shares only the pool, which discards a connection left inside a transaction,
        // and the clock, which it only reads.
        let result = AssertUnwindSafe(run_batch(&pool, clock.as_ref(), &batch))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable("the consume batch panicked".to_owned())));
        match result {
            Ok(decisions) => {
                for (job, decision) in jobs.into_iter().zip(decisions) {
                    let _ = job.reply.send(Ok(decision));
                }
            }
            Err(err) => {
                let cause = err.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Unavailable(cause.clone())));
                }
            }
        }
    }
}

/// Commits `batch` in one transaction. The first attempt assumes every key is new; once a key
/// turns out to be recorded (a retry, or another transaction first), the next attempts look the
/// keys up and replay. Deadlocks and serialization conflicts are retried too. Any failure is
/// `Unavailable`: nothing of the batch was consumed.
pub async fn run_batch(
    pool: &PgPool,
    clock: &dyn Clock,
    batch: &[Pending],
) -> Result<Vec<Decision>, Error> {
    let mut keys = Keys::AssumeNew;
    for _ in 0..MAX_ATTEMPTS {
        let mut conn = pool
            .get()
            .await
            .map_err(|err| Error::Unavailable(DbError::from(err).to_string()))?;
        match consume_batch(&mut conn, batch, clock.now(), keys).await {
            Ok(decisions) => return Ok(decisions),
            Err(BatchError::KeyRecorded) => keys = Keys::LookUp,
            Err(BatchError::Db(err)) if retryable(&err) => continue,
            Err(BatchError::Db(err)) => return Err(Error::Unavailable(err.to_string())),
        }
    }
    Err(Error::Unavailable(
        "the batch kept conflicting with concurrent writers".to_owned(),
    ))
}

fn retryable(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error::DatabaseError};
    kit::error::is_serialization_failure(err)
        || matches!(err, DatabaseError(DatabaseErrorKind::Unknown, info) if info.message().contains("deadlock"))
}
