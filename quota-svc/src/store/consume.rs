//! The consume batch transaction: one transaction decides and records a whole batch of
//! Consume requests (lock the distinct counters in a fixed order, create default-tier counters,
//! roll periods over, decide in memory, write every counter, usage event and key with one
//! statement).
//!
//! Almost every key is new, so the first attempt does not look the keys up: recording a key
//! that exists (a client's retry, or a concurrent transaction's) violates its primary key, the
//! batch rolls back having changed nothing, and the retry looks every key up first and replays
//! the recorded answers. The index probe a lookup costs per request is paid only then.
//!
//! Lookups join the request keys LATERAL to the tables so each is an index probe: a plain join
//! lets the planner hash-join against a sequential scan of a mid-sized table on every batch. The
//! counter UPDATE finds its rows by the `ctid` the lock returned (stable: we hold the lock).
//!
//! A lone call (on an idle shard, or every call with batching off) is first tried as one
//! statement, its own transaction ([`consume_in_one_statement`]); only what that cannot decide
//! takes the batch transaction.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use diesel::{
    OptionalExtension, QueryResult, QueryableByName,
    pg::Pg,
    query_builder::{AstPass, QueryFragment},
    serialize::ToSql,
    sql_query,
    sql_types::{Array, BigInt, HasSqlType, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{MONTH_USAGE, Prepared};
use crate::domain::{
    Counter, Source,
    batch::{self, CounterKey, Decision, IdempotencyKey, Recorded, Request},
    period,
};

/// A Consume request with its serialized attributes.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request: Request,
    /// JSON text, or `None` without attributes.
    pub attributes: Option<String>,
}

/// Why a batch transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// One of the batch's keys is already recorded; a retry that looks the keys up replays it.
    #[error("an idempotency key is already recorded")]
    KeyRecorded,
}

#[derive(QueryableByName)]
struct RecordedRow {
    #[diesel(sql_type = SqlUuid)]
    subject: Uuid,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = Text)]
    metric: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = SqlUuid)]
    usage_id: Uuid,
    #[diesel(sql_type = Nullable<BigInt>)]
    quota_limit: Option<i64>,
    #[diesel(sql_type = BigInt)]
    used: i64,
    #[diesel(sql_type = Timestamptz)]
    resets_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    consumed_by: Option<Uuid>,
}

impl RecordedRow {
    /// The row's idempotency key and its recorded answer.
    fn into_answer(self) -> (IdempotencyKey, Recorded) {
        (
            (self.subject, self.idempotency_key),
            Recorded {
                metric: self.metric,
                amount: self.amount,
                usage_id: self.usage_id,
                limit: self.quota_limit,
                used: self.used,
                resets_at: self.resets_at,
                consumed_by: self.consumed_by,
            },
        )
    }
}

/// Whether a batch attempt looks its idempotency keys up before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Decide every request as new; an existing key fails the attempt with
    /// [`BatchError::KeyRecorded`].
    AssumeNew,
    /// Replay the answers recorded for existing keys.
    LookUp,
}

/// Decides and records `batch` at `now` in one transaction; the decisions are in request order.
pub async fn consume_batch(
    conn: &mut AsyncPgConnection,
    batch: &[Pending],
    now: DateTime<Utc>,
    keys: Keys,
) -> Result<Vec<Decision>, BatchError> {
    conn.transaction(async |conn| consume_inner(conn, batch, now, keys).await)
        .await
}

async fn consume_inner(
    conn: &mut AsyncPgConnection,
    batch: &[Pending],
    now: DateTime<Utc>,
    keys: Keys,
) -> Result<Vec<Decision>, BatchError> {
    let previous = match keys {
        Keys::AssumeNew => HashMap::new(),
        Keys::LookUp => {
            recorded_answers(conn, batch.iter().map(|pending| &pending.request)).await?
        }
    };
    let wanted: BTreeSet<CounterKey> = batch
        .iter()
        .map(|pending| &pending.request)
        .filter(|request| {
            !previous.contains_key(&(request.subject, request.idempotency_key.clone()))
        })
        .map(|request| (request.subject, request.metric.clone()))
        .collect();
    let mut locked = lock_counters(conn, &wanted).await?;
    let missing: BTreeSet<CounterKey> = wanted
        .into_iter()
        .filter(|key| !locked.contains_key(key))
        .collect();
    if !missing.is_empty() {
        create_default_counters(conn, &missing, now).await?;
        locked.extend(lock_counters(conn, &missing).await?);
    }
    let mut tids = HashMap::with_capacity(locked.len());
    let mut counters = HashMap::with_capacity(locked.len());
    for (key, Locked { mut counter, tid }) in locked {
        counter.roll_over(now);
        tids.insert(key.clone(), tid);
        counters.insert(key, counter);
    }
    let requests: Vec<Request> = batch
        .iter()
        .map(|pending| pending.request.clone())
        .collect();
    let decisions = batch::apply(&mut counters, &previous, &requests, Uuid::now_v7);
    // A denial records no key, so a retry of an allowed call that now finds no room would be
    // denied instead of replayed: denied keys are looked up (again, now that the counters are
    // locked: another replica may have recorded one since the first lookup) before writing.
    let denied: Vec<&Request> = requests
        .iter()
        .zip(&decisions)
        .filter(|(_, decision)| matches!(decision, Decision::Denied { .. }))
        .map(|(request, _)| request)
        .collect();
    if !denied.is_empty() && !recorded_answers(conn, denied.into_iter()).await?.is_empty() {
        return Err(BatchError::KeyRecorded);
    }
    write(conn, batch, &decisions, &counters, &tids, now).await?;
    Ok(decisions)
}

/// Consumes a lone call in one statement, its own transaction: one round trip where the batch
/// transaction takes four. The counter's UPDATE is the check (it matches only while the period
/// runs and the amount fits, as [`batch::apply`] decides), and the event and the key are
/// inserted from what it returned. `None` when it did not match: nothing was written, and the
/// batch transaction decides the call (a new counter, a rollover, or a denial after looking the
/// key up). A recorded key fails the statement, changing nothing, with
/// [`BatchError::KeyRecorded`].
pub async fn consume_in_one_statement(
    conn: &mut AsyncPgConnection,
    pending: &Pending,
    usage_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Recorded>, BatchError> {
    let request = &pending.request;
    let consumed: Result<Option<RecordedRow>, _> = Prepared(
        sql_query(
            // `used <= limit - amount` cannot overflow where `used + amount <= limit` could; an
            // unlimited counter still stops at the largest bigint, as the batch does.
            "WITH counter AS ( \
               UPDATE entitlements SET used = used + $3, updated_at = $5 \
               WHERE subject = $1 AND metric = $2 AND $5 < period_end \
                 AND used <= COALESCE(quota_limit, 9223372036854775807) - $3 \
               RETURNING quota_limit, used, period_end \
             ), events AS ( \
               INSERT INTO usage_events \
                 (occurred_at, usage_id, kind, subject, metric, amount, idempotency_key, \
                  attributes) \
               SELECT $5, $6, 'consume', $1, $2, $3, $4, $7::jsonb FROM counter \
             ) \
             INSERT INTO idempotency_keys \
               (subject, idempotency_key, usage_id, metric, amount, quota_limit, used, \
                resets_at, created_at, consumed_by, consumed_with) \
             SELECT $1, $4, $6, $2, $3, quota_limit, used, period_end, $5, $8, $9 \
             FROM counter \
             RETURNING subject, idempotency_key, metric, amount, usage_id, quota_limit, used, \
                       resets_at, consumed_by",
        )
        .bind::<SqlUuid, _>(request.subject)
        .bind::<Text, _>(&request.metric)
        .bind::<BigInt, _>(request.amount)
        .bind::<Text, _>(&request.idempotency_key)
        .bind::<Timestamptz, _>(now)
        .bind::<SqlUuid, _>(usage_id)
        .bind::<Nullable<Text>, _>(pending.attributes.as_deref())
        .bind::<SqlUuid, _>(request.consumer.principal)
        .bind::<Text, _>(request.consumer.with.as_str()),
    )
    .get_result(conn)
    .await
    .optional();
    consumed
        .map(|row| row.map(|row| row.into_answer().1))
        .map_err(key_recorded_or)
}

/// The answers already recorded for the keys of `requests`.
async fn recorded_answers<'a>(
    conn: &mut AsyncPgConnection,
    requests: impl Iterator<Item = &'a Request>,
) -> Result<HashMap<IdempotencyKey, Recorded>, BatchError> {
    let (subjects, keys): (Vec<Uuid>, Vec<String>) = requests
        .map(|request| (request.subject, request.idempotency_key.clone()))
        .unzip();
    let rows: Vec<RecordedRow> = sql_query(
        "SELECT i.subject, i.idempotency_key, i.metric, i.amount, i.usage_id, i.quota_limit, \
                i.used, i.resets_at, i.consumed_by \
         FROM unnest($1::uuid[], $2::text[]) AS k(subject, idempotency_key), \
         LATERAL (SELECT * FROM idempotency_keys i \
                  WHERE i.subject = k.subject AND i.idempotency_key = k.idempotency_key) i",
    )
    .bind::<Array<SqlUuid>, _>(&subjects)
    .bind::<Array<Text>, _>(&keys)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(RecordedRow::into_answer).collect())
}

#[derive(QueryableByName)]
struct LockedRow {
    #[diesel(sql_type = SqlUuid)]
    subject: Uuid,
    #[diesel(sql_type = Text)]
    metric: String,
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    quota_limit: Option<i64>,
    #[diesel(sql_type = BigInt)]
    used: i64,
    #[diesel(sql_type = Timestamptz)]
    period_start: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    period_end: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    tid: String,
}

/// A locked counter and where its row is (`ctid`).
#[derive(Debug, Clone)]
pub struct Locked {
    pub counter: Counter,
    tid: String,
}

/// Locks the existing counters of `keys` in the set's order (the nested loop follows the
/// array), so concurrent batches and replicas always lock in the same order and cannot
/// deadlock on them.
pub async fn lock_counters(
    conn: &mut AsyncPgConnection,
    keys: &BTreeSet<CounterKey>,
) -> Result<HashMap<CounterKey, Locked>, diesel::result::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (subjects, metrics): (Vec<Uuid>, Vec<String>) = keys.iter().cloned().unzip();
    let rows: Vec<LockedRow> = Prepared(
        sql_query(
            "SELECT e.subject, e.metric, e.source, e.quota_limit, e.used, e.period_start, \
                e.period_end, e.tid \
         FROM unnest($1::uuid[], $2::text[]) AS k(subject, metric), \
         LATERAL (SELECT *, ctid::text AS tid FROM entitlements e \
                  WHERE e.subject = k.subject AND e.metric = k.metric FOR UPDATE) e",
        )
        .bind::<Array<SqlUuid>, _>(&subjects)
        .bind::<Array<Text>, _>(&metrics),
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let counter = Counter {
                limit: row.quota_limit,
                used: row.used,
                period_start: row.period_start,
                period_end: row.period_end,
                source: Source::parse(&row.source),
            };
            (
                (row.subject, row.metric),
                Locked {
                    counter,
                    tid: row.tid,
                },
            )
        })
        .collect())
}

/// Creates default-tier counters (this calendar month, holding the month's usage up to the
/// limit) for the `keys` whose metric has a default; a counter another replica created
/// meanwhile is kept.
pub async fn create_default_counters(
    conn: &mut AsyncPgConnection,
    keys: &BTreeSet<CounterKey>,
    now: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let (subjects, metrics): (Vec<Uuid>, Vec<String>) = keys.iter().cloned().unzip();
    let (start, end) = period::month_of(now);
    sql_query(format!(
        "INSERT INTO entitlements \
           (subject, metric, source, quota_limit, used, period_start, period_end, updated_at, \
            counting_since, seed_held, seed_usage) \
         SELECT k.subject, k.metric, 'default', d.quota_limit, \
                LEAST(m.used, COALESCE(d.quota_limit, m.used)), $3, $4, $5, \
                $5, LEAST(m.used, COALESCE(d.quota_limit, m.used)), m.used \
         FROM unnest($1::uuid[], $2::text[]) AS k(subject, metric) \
         JOIN default_entitlements d ON d.metric = k.metric \
         CROSS JOIN LATERAL ({MONTH_USAGE}) m \
         ORDER BY k.subject, k.metric \
         ON CONFLICT (subject, metric) DO NOTHING"
    ))
    .bind::<Array<SqlUuid>, _>(&subjects)
    .bind::<Array<Text>, _>(&metrics)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes every locked counter, the usage events and the idempotency keys of the allowed
/// requests in one statement. A key that is already recorded aborts the batch.
async fn write(
    conn: &mut AsyncPgConnection,
    batch: &[Pending],
    decisions: &[Decision],
    counters: &HashMap<CounterKey, Counter>,
    tids: &HashMap<CounterKey, String>,
    now: DateTime<Utc>,
) -> Result<(), BatchError> {
    let mut rows = Rows {
        now,
        counters: CounterColumns::with_capacity(counters.len()),
        allowed: AllowedColumns::default(),
    };
    for (key, counter) in counters {
        if let Some(tid) = tids.get(key) {
            rows.counters.push(tid, counter);
        }
    }
    for (pending, decision) in batch.iter().zip(decisions) {
        if let Decision::Allowed(answer) = decision {
            rows.allowed.push(pending, answer);
        }
    }
    let written = Prepared(rows).execute(conn).await;
    written.map(|_| ()).map_err(key_recorded_or)
}

/// What [`write`] stores with its one statement. The statement binds each array where it names
/// the column the array fills: in a list of sixteen positional parameters, two arrays of one
/// type could trade places without an error.
struct Rows<'a> {
    now: DateTime<Utc>,
    counters: CounterColumns<'a>,
    allowed: AllowedColumns<'a>,
}

/// The locked counters, a row per index.
struct CounterColumns<'a> {
    /// Where the row is (`ctid`), as the lock returned it.
    tid: Vec<&'a str>,
    used: Vec<i64>,
    period_start: Vec<DateTime<Utc>>,
    period_end: Vec<DateTime<Utc>>,
}

impl<'a> CounterColumns<'a> {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            tid: Vec::with_capacity(capacity),
            used: Vec::with_capacity(capacity),
            period_start: Vec::with_capacity(capacity),
            period_end: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, tid: &'a str, counter: &Counter) {
        self.tid.push(tid);
        self.used.push(counter.used);
        self.period_start.push(counter.period_start);
        self.period_end.push(counter.period_end);
    }
}

/// The usage event and the idempotency key of each allowed request, a request per index.
#[derive(Default)]
struct AllowedColumns<'a> {
    usage_id: Vec<Uuid>,
    subject: Vec<Uuid>,
    metric: Vec<&'a str>,
    amount: Vec<i64>,
    idempotency_key: Vec<&'a str>,
    /// JSON text.
    attributes: Vec<Option<&'a str>>,
    quota_limit: Vec<Option<i64>>,
    used: Vec<i64>,
    resets_at: Vec<DateTime<Utc>>,
    consumed_by: Vec<Uuid>,
    consumed_with: Vec<&'static str>,
}

impl<'a> AllowedColumns<'a> {
    fn push(&mut self, pending: &'a Pending, answer: &'a Recorded) {
        let request = &pending.request;
        self.usage_id.push(answer.usage_id);
        self.subject.push(request.subject);
        self.metric.push(&answer.metric);
        self.amount.push(answer.amount);
        self.idempotency_key.push(&request.idempotency_key);
        self.attributes.push(pending.attributes.as_deref());
        self.quota_limit.push(answer.limit);
        self.used.push(answer.used);
        self.resets_at.push(answer.resets_at);
        self.consumed_by.push(request.consumer.principal);
        self.consumed_with.push(request.consumer.with.as_str());
    }
}

impl QueryFragment<Pg> for Rows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let (c, u) = (&self.counters, &self.allowed);
        out.push_sql(
            "WITH counters AS ( \
               UPDATE entitlements e \
               SET used = c.used, period_start = c.period_start, period_end = c.period_end, \
                   updated_at = ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(
            ", counting_since = CASE WHEN e.period_start = c.period_start \
                 THEN e.counting_since ELSE c.period_start END, \
               seed_held = CASE WHEN e.period_start = c.period_start THEN e.seed_held ELSE 0 END, \
               seed_usage = CASE WHEN e.period_start = c.period_start THEN e.seed_usage ELSE 0 END \
               FROM (SELECT ",
        );
        let mut select = Unnested::new(&mut out);
        select.column::<Text, _>("tid", "tid", &c.tid)?;
        select.column::<BigInt, _>("used", "int8", &c.used)?;
        select.column::<Timestamptz, _>("period_start", "timestamptz", &c.period_start)?;
        select.column::<Timestamptz, _>("period_end", "timestamptz", &c.period_end)?;
        // The allowed requests' rows, unnested once for both inserts.
        out.push_sql(
            ") AS c \
               WHERE e.ctid = c.tid \
             ), u AS (SELECT ",
        );
        let mut select = Unnested::new(&mut out);
        select.column::<SqlUuid, _>("usage_id", "uuid", &u.usage_id)?;
        select.column::<SqlUuid, _>("subject", "uuid", &u.subject)?;
        select.column::<Text, _>("metric", "text", &u.metric)?;
        select.column::<BigInt, _>("amount", "int8", &u.amount)?;
        select.column::<Text, _>("idempotency_key", "text", &u.idempotency_key)?;
        select.column::<Nullable<Text>, _>("attributes", "text", &u.attributes)?;
        select.column::<Nullable<BigInt>, _>("quota_limit", "int8", &u.quota_limit)?;
        select.column::<BigInt, _>("used", "int8", &u.used)?;
        select.column::<Timestamptz, _>("resets_at", "timestamptz", &u.resets_at)?;
        select.column::<SqlUuid, _>("consumed_by", "uuid", &u.consumed_by)?;
        select.column::<Text, _>("consumed_with", "text", &u.consumed_with)?;
        out.push_sql(
            "), events AS ( \
               INSERT INTO usage_events \
                 (occurred_at, usage_id, kind, subject, metric, amount, idempotency_key, \
                  attributes) \
               SELECT ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(
            ", u.usage_id, 'consume', u.subject, u.metric, u.amount, u.idempotency_key, \
                      u.attributes::jsonb \
               FROM u \
             ) \
             INSERT INTO idempotency_keys \
               (subject, idempotency_key, usage_id, metric, amount, quota_limit, used, resets_at, \
                created_at, consumed_by, consumed_with) \
             SELECT u.subject, u.idempotency_key, u.usage_id, u.metric, u.amount, u.quota_limit, \
                    u.used, u.resets_at, ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(", u.consumed_by, u.consumed_with FROM u");
        Ok(())
    }
}

/// A select list of arrays unnested in step, as `unnest(a, b, …)` unnests them, each array
/// bound next to the name of the column it fills.
struct Unnested<'p, 'a, 'b> {
    out: &'p mut AstPass<'a, 'b, Pg>,
    first: bool,
}

impl<'p, 'a, 'b> Unnested<'p, 'a, 'b> {
    fn new(out: &'p mut AstPass<'a, 'b, Pg>) -> Self {
        Self { out, first: true }
    }

    /// `unnest($n::<element_type>[]) AS <name>`.
    fn column<ST: 'static, V>(
        &mut self,
        name: &str,
        element_type: &str,
        values: &'b V,
    ) -> QueryResult<()>
    where
        Pg: HasSqlType<Array<ST>>,
        V: ToSql<Array<ST>, Pg> + ?Sized,
    {
        if !std::mem::take(&mut self.first) {
            self.out.push_sql(", ");
        }
        self.out.push_sql("unnest(");
        self.out.push_bind_param::<Array<ST>, V>(values)?;
        self.out.push_sql("::");
        self.out.push_sql(element_type);
        self.out.push_sql("[]) AS ");
        self.out.push_sql(name);
        Ok(())
    }
}

/// [`BatchError::KeyRecorded`] when `err` is a recorded idempotency key, else the error.
fn key_recorded_or(err: diesel::result::Error) -> BatchError {
    if kit::error::violated_unique_constraint(&err) == Some("idempotency_keys_pkey") {
        tracing::debug!("an idempotency key is already recorded; retrying with lookups");
        return BatchError::KeyRecorded;
    }
    err.into()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use diesel::sql_types::Nullable;
    use kit::testing::TestDb;

    use super::*;
    use crate::{
        MIGRATIONS, SPEC,
        domain::consumer::{Consumer, SignedInWith},
    };

    #[derive(QueryableByName)]
    struct State {
        #[diesel(sql_type = BigInt)]
        used: i64,
        #[diesel(sql_type = BigInt)]
        events: i64,
        #[diesel(sql_type = BigInt)]
        keys: i64,
    }

    async fn state(conn: &mut AsyncPgConnection, subject: Uuid) -> State {
        sql_query(
            "SELECT (SELECT used FROM entitlements WHERE subject = $1) AS used, \
                    (SELECT count(*) FROM usage_events WHERE subject = $1) AS events, \
                    (SELECT count(*) FROM idempotency_keys WHERE subject = $1) AS keys",
        )
        .bind::<SqlUuid, _>(subject)
        .get_result(conn)
        .await
        .unwrap()
    }

    /// A fresh database, a connection to it, now, and a period end ten days ahead.
    async fn fresh() -> (TestDb, AsyncPgConnection, DateTime<Utc>, DateTime<Utc>) {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let conn = db.connect(SPEC.name).await;
        let now = Utc::now();
        (db, conn, now, now + chrono::Duration::days(10))
    }

    /// A counter of `limit` holding `used`, whose period ends at `period_end`.
    async fn counter(
        conn: &mut AsyncPgConnection,
        limit: Option<i64>,
        used: i64,
        period_end: DateTime<Utc>,
    ) -> Uuid {
        let subject = Uuid::now_v7();
        let start = period_end - chrono::Duration::days(30);
        sql_query(
            "INSERT INTO entitlements (subject, metric, source, quota_limit, used, period_start, \
               period_end, updated_at, counting_since) \
             VALUES ($1, 'api.calls', 'plan', $2, $3, $4, $5, $4, $4)",
        )
        .bind::<SqlUuid, _>(subject)
        .bind::<Nullable<BigInt>, _>(limit)
        .bind::<BigInt, _>(used)
        .bind::<Timestamptz, _>(start)
        .bind::<Timestamptz, _>(period_end)
        .execute(conn)
        .await
        .unwrap();
        subject
    }

    /// The one backend that charges every subject of these tests.
    const BACKEND: Consumer = Consumer {
        principal: Uuid::from_u128(1),
        with: SignedInWith::ApiKey,
    };

    fn pending(subject: Uuid, amount: i64, key: &str) -> Pending {
        Pending {
            request: Request {
                subject,
                metric: "api.calls".to_owned(),
                amount,
                idempotency_key: key.to_owned(),
                consumer: BACKEND,
            },
            attributes: Some(r#"{"file":"a.pdf"}"#.to_owned()),
        }
    }

    #[derive(Debug, PartialEq, QueryableByName)]
    struct KeyConsumer {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
        #[diesel(sql_type = SqlUuid)]
        consumed_by: Uuid,
        #[diesel(sql_type = Text)]
        consumed_with: String,
    }

    /// Every consumption records the caller that made it, next to its own key: in a batch of
    /// callers of both kinds (the arrays line up) and in the one statement.
    #[tokio::test]
    async fn each_consumption_records_who_made_it() {
        let (_db, mut conn, now, running) = fresh().await;
        let subject = counter(&mut conn, Some(20), 0, running).await;
        let user = Consumer {
            principal: subject,
            with: SignedInWith::Session,
        };
        let backend = BACKEND;
        let by = |consumer: Consumer, amount, key| {
            let mut pending = pending(subject, amount, key);
            pending.request.consumer = consumer;
            pending
        };
        let batch = [
            by(user, 1, "a"),
            by(backend, 2, "b"),
            by(backend, 3, "c"),
            by(user, 4, "d"),
        ];
        let decisions = consume_batch(&mut conn, &batch, now, Keys::AssumeNew)
            .await
            .unwrap();
        assert!(
            decisions
                .iter()
                .all(|decision| matches!(decision, Decision::Allowed(_)))
        );
        consume_in_one_statement(&mut conn, &by(backend, 1, "e"), Uuid::now_v7(), now)
            .await
            .unwrap()
            .unwrap();
        let recorded: Vec<KeyConsumer> = sql_query(
            "SELECT idempotency_key, consumed_by, consumed_with FROM idempotency_keys \
             WHERE subject = $1 ORDER BY idempotency_key",
        )
        .bind::<SqlUuid, _>(subject)
        .load(&mut conn)
        .await
        .unwrap();
        let expected: Vec<KeyConsumer> = [
            ("a", user),
            ("b", backend),
            ("c", backend),
            ("d", user),
            ("e", backend),
        ]
        .into_iter()
        .map(|(key, consumer)| KeyConsumer {
            idempotency_key: key.to_owned(),
            consumed_by: consumer.principal,
            consumed_with: consumer.with.as_str().to_owned(),
        })
        .collect();
        assert_eq!(recorded, expected);
    }

    /// The one-statement consume writes the counter, the event and the key when the amount fits
    /// the running period, and otherwise writes nothing and leaves the call to the batch path.
    #[tokio::test]
    async fn one_statement_consumes_only_what_fits_the_running_period() {
        let (_db, mut conn, now, running) = fresh().await;

        let subject = counter(&mut conn, Some(5), 3, running).await;
        let id = Uuid::now_v7();
        let answer = consume_in_one_statement(&mut conn, &pending(subject, 2, "k1"), id, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (answer.used, answer.limit, answer.usage_id),
            (5, Some(5), id)
        );
        assert_eq!(answer.resets_at.timestamp(), running.timestamp());
        let after = state(&mut conn, subject).await;
        assert_eq!((after.used, after.events, after.keys), (5, 1, 1));

        // Past the limit: nothing written.
        let over =
            consume_in_one_statement(&mut conn, &pending(subject, 1, "k2"), Uuid::now_v7(), now)
                .await;
        assert!(matches!(over, Ok(None)));
        let after = state(&mut conn, subject).await;
        assert_eq!((after.used, after.events, after.keys), (5, 1, 1));

        // A recorded key: the statement fails whole.
        let fresh = counter(&mut conn, Some(5), 0, running).await;
        let mut retry = pending(fresh, 1, "k1");
        consume_in_one_statement(&mut conn, &retry, Uuid::now_v7(), now)
            .await
            .unwrap()
            .unwrap();
        retry.request.amount = 2;
        let reused = consume_in_one_statement(&mut conn, &retry, Uuid::now_v7(), now).await;
        assert!(matches!(reused, Err(BatchError::KeyRecorded)));
        let after = state(&mut conn, fresh).await;
        assert_eq!((after.used, after.events, after.keys), (1, 1, 1));

        // The period ending now or before (the batch path rolls it over), and an unlimited
        // counter one short of the largest bigint asked for two (no overflow error): nothing
        // written.
        let ended = counter(&mut conn, Some(5), 0, now - chrono::Duration::days(1)).await;
        let ending_now = counter(&mut conn, Some(5), 0, now).await;
        let full = counter(&mut conn, None, i64::MAX - 1, running).await;
        for (subject, amount) in [(ended, 1), (ending_now, 1), (full, 2)] {
            let outcome = consume_in_one_statement(
                &mut conn,
                &pending(subject, amount, "k"),
                Uuid::now_v7(),
                now,
            )
            .await;
            assert!(matches!(outcome, Ok(None)));
            assert_eq!(state(&mut conn, subject).await.events, 0);
        }
        assert_eq!(state(&mut conn, full).await.used, i64::MAX - 1);
        // Unlimited, up to the largest bigint exactly.
        let last = consume_in_one_statement(&mut conn, &pending(full, 1, "k"), Uuid::now_v7(), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((last.used, last.limit), (i64::MAX, None));

        // No counter at all (the batch path creates a default one or denies).
        let missing = consume_in_one_statement(
            &mut conn,
            &pending(Uuid::now_v7(), 1, "k"),
            Uuid::now_v7(),
            now,
        )
        .await;
        assert!(matches!(missing, Ok(None)));
    }

    /// What the one statement stores (counter, event, key) is what a batch of one stores for
    /// the same call at the same time.
    #[tokio::test]
    async fn one_statement_stores_what_a_batch_of_one_stores() {
        let (_db, mut conn, now, running) = fresh().await;
        let alone = counter(&mut conn, Some(5), 3, running).await;
        let batched = counter(&mut conn, Some(5), 3, running).await;

        consume_in_one_statement(&mut conn, &pending(alone, 2, "k"), Uuid::now_v7(), now)
            .await
            .unwrap()
            .unwrap();
        let decisions = consume_batch(&mut conn, &[pending(batched, 2, "k")], now, Keys::AssumeNew)
            .await
            .unwrap();
        assert!(matches!(decisions[..], [Decision::Allowed(_)]));
        assert_eq!(
            stored(&mut conn, alone).await,
            stored(&mut conn, batched).await
        );
    }

    #[derive(Debug, PartialEq, QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        rows: String,
    }

    /// The subject's counter, events and keys, without the columns that name the subject or the
    /// consumption.
    async fn stored(conn: &mut AsyncPgConnection, subject: Uuid) -> Stored {
        sql_query(
            "SELECT concat_ws(' | ', \
               (SELECT (to_jsonb(e) - 'subject')::text FROM entitlements e WHERE subject = $1), \
               (SELECT string_agg((to_jsonb(u) - 'subject' - 'usage_id')::text, ',') \
                FROM usage_events u WHERE subject = $1), \
               (SELECT string_agg((to_jsonb(k) - 'subject' - 'usage_id')::text, ',') \
                FROM idempotency_keys k WHERE subject = $1)) AS rows",
        )
        .bind::<SqlUuid, _>(subject)
        .get_result(conn)
        .await
        .unwrap()
    }
}
