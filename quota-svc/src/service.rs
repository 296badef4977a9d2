//! The quota operations the handlers call: each validates nothing of the wire format (api.rs
//! does), decides with the domain rules and runs its transaction in the store.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::{
    clock::Clock,
    db::{DbError, PgPool, PooledConn},
};
use uuid::Uuid;

use crate::{
    batcher::{self, Batcher},
    domain::{
        self, Counter, Holding,
        batch::Decision,
        consumer::{self, Refunder},
        usage::Bucket,
    },
    error::Error,
    read_batcher::ReadBatcher,
    store::{
        consume::{Keys, Pending},
        entitlements::{self, CountersQuery, DefaultTier, PlanLimits},
        usage::{self, BucketSums, EventFilter, EventRow},
    },
};

/// How often partitions are created ahead and expired keys deleted (and the retry delay when
/// the database is not ready yet).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
const MAINTENANCE_RETRY: Duration = Duration::from_secs(5);

/// How many times a read fetches the default tier and its counters again when they keep
/// changing between its statements (each time an ApplyDefaultEntitlements committed).
const DEFAULT_TIER_READS: usize = 4;

/// The quota operations, shared by the handlers: the pool, the clock and the consume batcher.
pub struct Quota {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    default_tier: DefaultTierCopy,
    /// `None`: one transaction per Consume call (the benchmark's comparison path).
    batcher: Option<Batcher>,
    reads: ReadBatcher,
}

/// How many batch workers coalesce concurrent calls; 0 runs each call alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// Consume shards, each committing one batch at a time.
    pub consume: usize,
    /// Read workers, each with one statement in flight.
    pub read: usize,
}

/// The result of a refund.
#[derive(Debug)]
pub struct Refunded {
    pub usage_id: Uuid,
    pub amount: i64,
    pub already_refunded: bool,
    pub metric: String,
    /// The metric's counter after the refund; `None` if the metric no longer exists.
    pub counter: Option<Counter>,
}

impl Quota {
    /// Starts the consume batch workers (when `workers.consume > 0`), the read workers (when
    /// `workers.read > 0`) and the maintenance task.
    pub fn start(pool: PgPool, clock: Arc<dyn Clock>, workers: Workers) -> Arc<Self> {
        let batcher = (workers.consume > 0)
            .then(|| Batcher::start(pool.clone(), clock.clone(), workers.consume));
        let quota = Arc::new(Self {
            reads: ReadBatcher::start(pool.clone(), workers.read),
            pool,
            clock,
            default_tier: DefaultTierCopy::default(),
            batcher,
        });
        tokio::spawn(maintain(Arc::downgrade(&quota)));
        quota
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn conn(&self) -> Result<PooledConn, Error> {
        Ok(self.pool.get().await.map_err(DbError::from)?)
    }

    /// Checks and consumes: batched with concurrent calls, or alone when batching is off.
    pub async fn consume(&self, pending: Pending) -> Result<Decision, Error> {
        match &self.batcher {
            Some(batcher) => batcher.consume(pending).await,
            // Boxed: inline, the transaction's state would make every Consume future (the
            // batched path's too) over 2 KB, copied at each move.
            None => {
                Box::pin(batcher::commit_alone(
                    &self.pool,
                    self.clock.as_ref(),
                    pending,
                    Keys::AssumeNew,
                ))
                .await
            }
        }
    }

    /// Gives a consumption back once, if `refunder` may refund it.
    pub async fn refund(
        &self,
        subject: Uuid,
        refunder: Refunder,
        usage_id: Option<Uuid>,
        idempotency_key: Option<String>,
    ) -> Result<Refunded, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let key = idempotency_key.as_deref();
            refund_inner(conn, subject, &refunder, usage_id, key, now).await
        })
        .await
    }

    /// The subject's quota for one metric; `NotFound` if the metric does not exist for it.
    pub async fn check(&self, subject: Uuid, metric: &str) -> Result<Counter, Error> {
        self.quotas(subject, Some(metric))
            .await?
            .remove(metric)
            .ok_or_else(|| metric_not_found(metric))
    }

    /// Every quota of the subject, by metric.
    pub async fn list(&self, subject: Uuid) -> Result<BTreeMap<String, Counter>, Error> {
        self.quotas(subject, None).await
    }

    /// The subject's quotas (only that of `only` when given): one statement reads its counters
    /// with the default tier's version, and the default tier comes from memory unless that
    /// version is not the copy's. A metric without a counter is at its default limit with
    /// nothing used: the store creates a counter holding the month's usage wherever a subject
    /// has some and no counter (a plan's metric falling back, a metric added back to the free
    /// tier), so a read agrees with what the next Consume decides.
    async fn quotas(
        &self,
        subject: Uuid,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Counter>, Error> {
        let now = self.now();
        let query = CountersQuery {
            subject,
            metric: only.map(str::to_owned),
        };
        let mut read = self.reads.read(query.clone()).await?;
        let mut defaults = self.default_tier.current();
        for _ in 0..DEFAULT_TIER_READS {
            if defaults.version == read.defaults_version {
                break;
            }
            defaults = self
                .default_tier
                .reload(&self.pool, read.defaults_version)
                .await?;
            // Changed again between the two statements: read the counters that go with it.
            if defaults.version != read.defaults_version {
                read = self.reads.read(query.clone()).await?;
            }
        }
        if defaults.version != read.defaults_version {
            return Err(Error::Unavailable(
                "the default tier kept changing during the read".to_owned(),
            ));
        }
        let limits = defaults
            .limits
            .iter()
            .filter(|(metric, _)| only.is_none_or(|only| only == metric));
        Ok(domain::effective_quotas(read.counters, limits, now))
    }

    /// Usage per bucket over `[from, to)`, every bucket present, oldest first.
    pub async fn usage(
        &self,
        subject: Uuid,
        metric: &str,
        bucket: Bucket,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<BucketSums>, Error> {
        let starts = bucket.starts(from, to)?;
        let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
            return Ok(Vec::new());
        };
        let mut conn = self.conn().await?;
        let sums = usage::series(
            &mut conn,
            subject,
            metric,
            bucket.unit(),
            *first,
            bucket.next(*last),
        )
        .await?;
        let mut by_start: BTreeMap<DateTime<Utc>, BucketSums> = sums
            .into_iter()
            .map(|sums| (sums.bucket_start, sums))
            .collect();
        Ok(starts
            .into_iter()
            .map(|start| {
                by_start.remove(&start).unwrap_or(BucketSums {
                    bucket_start: start,
                    consumed: 0,
                    refunded: 0,
                })
            })
            .collect())
    }

    /// A page of events, newest first.
    pub async fn events(&self, filter: &EventFilter, limit: i64) -> Result<Vec<EventRow>, Error> {
        let mut conn = self.conn().await?;
        Ok(usage::events(&mut conn, filter, limit).await?)
    }

    /// Sets `used` to 0 for the current period.
    pub async fn reset(&self, subject: Uuid, metric: String) -> Result<Counter, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let mut counter = entitlements::lock_counter(conn, subject, &metric, now)
                .await?
                .ok_or_else(|| metric_not_found(&metric))?;
            counter.used = 0;
            let holding = Holding::starting_at(now);
            entitlements::update_counter(conn, subject, &metric, &counter, &holding, now).await?;
            Ok(counter)
        })
        .await
    }

    /// Replaces a subject's plan limits if the version is newer.
    pub async fn apply_plan(&self, plan: PlanLimits) -> Result<(bool, i64), Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| Ok(entitlements::apply_plan(conn, &plan, now).await?))
            .await
    }

    /// Replaces the default tier if the version is newer.
    pub async fn apply_defaults(
        &self,
        limits: Vec<(String, Option<i64>)>,
        version: i64,
    ) -> Result<(bool, i64), Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            Ok(entitlements::apply_defaults(conn, &limits, version, now).await?)
        })
        .await
    }

    /// Creates the usage partitions ahead and deletes expired idempotency keys. `false`: the
    /// schema is not migrated yet, nothing done.
    pub async fn maintain_once(&self) -> Result<bool, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        if !usage::partitions_migrated(&mut conn).await? {
            return Ok(false);
        }
        usage::ensure_partitions(&mut conn, now).await?;
        let deleted = usage::delete_expired_keys(&mut conn, now).await?;
        tracing::debug!(deleted, "quota maintenance done");
        Ok(true)
    }
}

/// This replica's copy of the default tier, which changes a few times a year: reads use it while
/// the version their statement read is the copy's.
struct DefaultTierCopy {
    copy: RwLock<Arc<DefaultTier>>,
    /// One reload at a time: the reads that all saw a new version wait for one load, and hold
    /// no connection meanwhile.
    loading: tokio::sync::Mutex<()>,
}

impl Default for DefaultTierCopy {
    fn default() -> Self {
        // No stored version is negative: the first read loads the tier.
        Self {
            copy: RwLock::new(Arc::new(DefaultTier {
                version: -1,
                limits: Vec::new(),
            })),
            loading: tokio::sync::Mutex::new(()),
        }
    }
}

impl DefaultTierCopy {
    fn current(&self) -> Arc<DefaultTier> {
        self.copy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The tier as stored now, unless the copy already is of `seen` (a read's version), loaded
    /// meanwhile by another read.
    async fn reload(&self, pool: &PgPool, seen: i64) -> Result<Arc<DefaultTier>, Error> {
        let _loading = self.loading.lock().await;
        let current = self.current();
        if current.version == seen {
            return Ok(current);
        }
        let mut conn = pool.get().await.map_err(DbError::from)?;
        let loaded = Arc::new(entitlements::default_tier(&mut conn).await?);
        *self.copy.write().unwrap_or_else(PoisonError::into_inner) = loaded.clone();
        Ok(loaded)
    }
}

/// Runs [`Quota::maintain_once`] once migrations have run and then hourly, until the
/// operations are dropped.
async fn maintain(quota: std::sync::Weak<Quota>) {
    loop {
        let Some(strong) = quota.upgrade() else {
            return;
        };
        let wait = match strong.maintain_once().await {
            Ok(true) => MAINTENANCE_EVERY,
            Ok(false) => {
                tracing::debug!("quota maintenance waits for the migrations");
                MAINTENANCE_RETRY
            }
            Err(err) => {
                tracing::warn!(%err, "quota maintenance failed; retrying");
                MAINTENANCE_RETRY
            }
        };
        drop(strong);
        tokio::time::sleep(wait).await;
    }
}

async fn refund_inner(
    conn: &mut AsyncPgConnection,
    subject: Uuid,
    refunder: &Refunder,
    usage_id: Option<Uuid>,
    idempotency_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Refunded, Error> {
    let consumption = entitlements::lock_consumption(conn, subject, usage_id, idempotency_key)
        .await?
        .ok_or_else(|| {
            Error::NotFound(
                "no such consumption of the subject: a consumption can be refunded while its \
                 idempotency key is kept, at least 24 h and until the end of the period it \
                 counted in"
                    .to_owned(),
            )
        })?;
    // Before the counter is touched; a replay of a refund is refused alike.
    consumer::may_refund(refunder, consumption.consumed_by)?;
    let mut counter = entitlements::lock_counter(conn, subject, &consumption.metric, now).await?;
    let already_refunded = consumption.refunded_at.is_some();
    if !already_refunded {
        if let Some(counter) = counter.as_mut() {
            let metric = &consumption.metric;
            let mut holding = entitlements::holding(conn, subject, metric, counter).await?;
            counter.give_back(consumption.amount, consumption.created_at, &mut holding);
            entitlements::update_counter(conn, subject, metric, counter, &holding, now).await?;
        }
        entitlements::record_refund(conn, subject, &consumption, now).await?;
    }
    Ok(Refunded {
        usage_id: consumption.usage_id,
        amount: consumption.amount,
        already_refunded,
        metric: consumption.metric,
        counter,
    })
}

fn metric_not_found(metric: &str) -> Error {
    Error::NotFound(format!("metric {metric:?} does not exist for the subject"))
}
