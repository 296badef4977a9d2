//! Coalesces concurrent Consume calls into one transaction per batch. Requests are sharded by
//! subject over a few queues, each drained by one worker: it waits for the first request, then
//! takes whatever else is already queued (up to [`MAX_BATCH`]) without waiting for more, so a
//! busy service commits hundreds together. A call that finds its shard idle (no batch running,
//! nothing queued, and the last batch a lone call) commits itself at once in its own task,
//! sparing an idle service the two hand-overs to and from the worker; under load, where the
//! first call after a commit would otherwise go alone and hold up the calls queued behind it,
//! everything goes through the worker. One batch per shard is in flight, several across shards;
//! as a subject's counters live in one shard, concurrent batches of a replica never wait on each
//! other's row locks, and a hot subject gets large batches instead of many small ones queued on
//! the same row.

use std::{
    hash::{BuildHasher, RandomState},
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::FutureExt;
use kit::{
    clock::Clock,
    db::{DbError, PgPool},
};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    domain::batch::Decision,
    error::Error,
    store::consume::{BatchError, Keys, Pending, consume_batch, consume_in_one_statement},
};

/// The most requests committed in one transaction.
pub const MAX_BATCH: usize = 500;
/// Requests waiting in a shard before callers wait to enqueue.
const QUEUE: usize = 8_192;
/// Attempts of one batch after races for a key, deadlocks or serialization conflicts.
const MAX_ATTEMPTS: usize = 5;
/// After a batch replayed a key, its shard looks keys up first for this long: retries come in
/// bursts, and each would otherwise cost its batch an attempt that is rolled back.
const LOOK_UP_AFTER_REPLAY: Duration = Duration::from_secs(1);

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<Decision, Error>>,
}

/// One shard: its queue, and the turn a batch holds while it runs.
#[derive(Clone)]
struct Shard {
    queue: mpsc::Sender<Job>,
    turn: Arc<Mutex<Turn>>,
}

/// What a shard's batches pass on to the next one.
struct Turn {
    /// Calls in the last batch.
    last_batch: usize,
    /// Until when batches look their keys up first (see [`LOOK_UP_AFTER_REPLAY`]).
    look_up_until: Instant,
}

impl Turn {
    fn keys(&self) -> Keys {
        if Instant::now() < self.look_up_until {
            Keys::LookUp
        } else {
            Keys::AssumeNew
        }
    }

    fn finished(&mut self, calls: usize, decisions: &[Decision]) {
        self.last_batch = calls;
        if decisions.iter().any(|decision| {
            matches!(
                decision,
                Decision::Replayed(_) | Decision::KeyReused | Decision::KeyTaken
            )
        }) {
            self.look_up_until = Instant::now() + LOOK_UP_AFTER_REPLAY;
        }
    }
}

/// The handle the handlers enqueue on; the workers stop when it is dropped.
#[derive(Clone)]
pub struct Batcher {
    shards: Vec<Shard>,
    hasher: RandomState,
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl Batcher {
    /// Starts `shards` shards (at least 1), one worker each, on the current runtime.
    pub fn start(pool: PgPool, clock: Arc<dyn Clock>, shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                let (queue, receiver) = mpsc::channel(QUEUE);
                let turn = Arc::new(Mutex::new(Turn {
                    last_batch: 1,
                    look_up_until: Instant::now(),
                }));
                tokio::spawn(work(receiver, turn.clone(), pool.clone(), clock.clone()));
                Shard { queue, turn }
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            pool,
            clock,
        }
    }

    /// Decides `pending` in the next batch of its subject's shard; answers once that batch
    /// committed.
    pub async fn consume(&self, pending: Pending) -> Result<Decision, Error> {
        let hash = self.hasher.hash_one(pending.request.subject);
        let shard = usize::try_from(hash % self.shards.len() as u64).unwrap_or(0);
        let shard = &self.shards[shard];
        if shard.queue.capacity() == shard.queue.max_capacity()
            && let Ok(mut turn) = shard.turn.try_lock()
            && turn.last_batch <= 1
        {
            // Boxed, so the transaction's state does not enlarge every queued call's future.
            let keys = turn.keys();
            let decision =
                Box::pin(commit_alone(&self.pool, self.clock.as_ref(), pending, keys)).await?;
            turn.finished(1, std::slice::from_ref(&decision));
            return Ok(decision);
        }
        let (reply, answer) = oneshot::channel();
        shard
            .queue
            .send(Job { pending, reply })
            .await
            .map_err(|_| Error::Unavailable("the consume queue is closed".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the consume worker stopped".to_owned()))?
    }
}

async fn work(
    mut receiver: mpsc::Receiver<Job>,
    turn: Arc<Mutex<Turn>>,
    pool: PgPool,
    clock: Arc<dyn Clock>,
) {
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        // Waits for a call committing itself; what queued meanwhile joins this batch.
        let mut turn = turn.lock().await;
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch: Vec<Pending> = jobs.iter().map(|job| job.pending.clone()).collect();
        match guarded(run_batch(&pool, clock.as_ref(), &batch, turn.keys())).await {
            Ok(decisions) => {
                turn.finished(batch.len(), &decisions);
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

/// Decides and commits `pending` in a transaction of its own: in one statement when its key
/// is taken as new and its counter decides it, else as a batch of one.
pub async fn commit_alone(
    pool: &PgPool,
    clock: &dyn Clock,
    pending: Pending,
    keys: Keys,
) -> Result<Decision, Error> {
    guarded(decide_alone(pool, clock, pending, keys)).await
}

async fn decide_alone(
    pool: &PgPool,
    clock: &dyn Clock,
    pending: Pending,
    mut keys: Keys,
) -> Result<Decision, Error> {
    if keys == Keys::AssumeNew {
        let mut conn = pool
            .get()
            .await
            .map_err(|err| Error::Unavailable(DbError::from(err).to_string()))?;
        match consume_in_one_statement(&mut conn, &pending, Uuid::now_v7(), clock.now()).await {
            Ok(Some(answer)) => return Ok(Decision::Allowed(answer)),
            Ok(None) => {}
            // A deadlock or conflict changed nothing either: the batch path retries it.
            Err(BatchError::Db(err)) if retryable(&err) => {}
            Err(BatchError::KeyRecorded) => keys = Keys::LookUp,
            Err(BatchError::Db(err)) => return Err(Error::Unavailable(err.to_string())),
        }
    }
    run_batch(pool, clock, &[pending], keys)
        .await?
        .pop()
        .ok_or_else(|| Error::Unavailable("empty batch result".to_owned()))
}

/// `work`, where a panic (a bug) fails only the calls it decides: unwinding out of the worker
/// would close the shard's queue and leave its subjects UNAVAILABLE until a restart. Unwind
/// safety: the work shares only the pool, which discards a connection left inside a
/// transaction, and the clock, which it only reads.
async fn guarded<T>(work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(Error::Unavailable("the consume batch panicked".to_owned())))
}

/// Commits `batch` in one transaction. An attempt with [`Keys::AssumeNew`] that meets a
/// recorded key (a retry, or another transaction first) is followed by one that looks the keys up
/// and replays; that switch is not counted as an attempt. Races for a key, deadlocks and
/// serialization conflicts are retried. Any failure is `Unavailable`: nothing of the batch was
/// consumed.
async fn run_batch(
    pool: &PgPool,
    clock: &dyn Clock,
    batch: &[Pending],
    mut keys: Keys,
) -> Result<Vec<Decision>, Error> {
    let mut attempts = 0;
    while attempts < MAX_ATTEMPTS {
        let mut conn = pool
            .get()
            .await
            .map_err(|err| Error::Unavailable(DbError::from(err).to_string()))?;
        match consume_batch(&mut conn, batch, clock.now(), keys).await {
            Ok(decisions) => return Ok(decisions),
            Err(BatchError::KeyRecorded) if keys == Keys::AssumeNew => keys = Keys::LookUp,
            Err(BatchError::KeyRecorded) => attempts += 1,
            Err(BatchError::Db(err)) if retryable(&err) => attempts += 1,
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

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use kit::{clock::SystemClock, testing::TestDb};
    use uuid::Uuid;

    use super::*;
    use crate::{
        MIGRATIONS, SPEC,
        domain::{
            batch::Request,
            consumer::{Consumer, SignedInWith},
        },
    };

    fn pending(subject: Uuid, key: &str) -> Pending {
        Pending {
            request: Request {
                subject,
                metric: "api.calls".to_owned(),
                amount: 1,
                idempotency_key: key.to_owned(),
                consumer: Consumer {
                    principal: subject,
                    with: SignedInWith::Session,
                },
            },
            attributes: None,
        }
    }

    /// A call never commits while its shard's turn is taken (one batch per shard in flight, the
    /// idle path included); calls queued behind the turn are committed together by the worker
    /// once it is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_wait_for_the_shards_turn_and_the_worker_commits_them() {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let free_tier = [("api.calls".to_owned(), Some(10))];
        crate::store::entitlements::apply_defaults(
            &mut db.connect(SPEC.name).await,
            &free_tier,
            1,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let pool = kit::db::pool(db.url(), SPEC.name, 2, Duration::from_secs(5)).unwrap();
        let batcher = Batcher::start(pool, Arc::new(SystemClock), 1);
        let subject = Uuid::now_v7();
        let consume = |key: &'static str| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.consume(pending(subject, key)).await })
        };

        // Idle: the call commits in its own task.
        assert!(matches!(
            consume("alone").await.unwrap(),
            Ok(Decision::Allowed(_))
        ));

        // The turn taken: calls wait, then the worker commits them in one batch.
        let held = self::held_turn(&batcher).await;
        let queued = [consume("q1"), consume("q2")];
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(queued.iter().all(|call| !call.is_finished()));
        drop(held);
        for call in queued {
            assert!(matches!(call.await.unwrap(), Ok(Decision::Allowed(_))));
        }
        assert_eq!(batcher.shards[0].turn.lock().await.last_batch, 2);

        // The worker's batch of two counted; a lone call then commits and counts as one.
        match consume("after").await.unwrap() {
            Ok(Decision::Allowed(answer)) => assert_eq!(answer.used, 4),
            other => panic!("expected allowed, got {other:?}"),
        }
        assert_eq!(batcher.shards[0].turn.lock().await.last_batch, 1);
    }

    async fn held_turn(batcher: &Batcher) -> tokio::sync::OwnedMutexGuard<Turn> {
        batcher.shards[0].turn.clone().lock_owned().await
    }
}
