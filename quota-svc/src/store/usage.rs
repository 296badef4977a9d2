//! The usage log: time series, event pages, and its maintenance (partitions ahead, expired
//! idempotency keys).

use chrono::{DateTime, TimeDelta, Utc};
use diesel::{
    QueryableByName,
    deserialize::FromSql,
    pg::{Pg, PgValue},
    sql_query,
    sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use kit::page::Cursor;
use uuid::Uuid;

use crate::domain::usage::EventKind;

/// One bucket of a usage series.
#[derive(Debug, QueryableByName)]
pub struct BucketSums {
    #[diesel(sql_type = Timestamptz)]
    pub bucket_start: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub consumed: i64,
    #[diesel(sql_type = BigInt)]
    pub refunded: i64,
}

/// Consumed and refunded units of `metric` per bucket (`date_trunc` unit, UTC) in
/// `[from, to)`; buckets without events are absent.
pub async fn series(
    conn: &mut AsyncPgConnection,
    subject: Uuid,
    metric: &str,
    unit: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BucketSums>, diesel::result::Error> {
    sql_query(
        "SELECT date_trunc($3, occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket_start, \
                COALESCE(sum(amount) FILTER (WHERE kind = 'consume'), 0)::int8 AS consumed, \
                COALESCE(sum(amount) FILTER (WHERE kind = 'refund'), 0)::int8 AS refunded \
         FROM usage_events \
         WHERE subject = $1 AND metric = $2 AND occurred_at >= $4 AND occurred_at < $5 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind::<SqlUuid, _>(subject)
    .bind::<Text, _>(metric)
    .bind::<Text, _>(unit)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}

/// One logged consumption or refund.
#[derive(Debug, QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = Timestamptz)]
    pub occurred_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    pub usage_id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: EventKind,
    #[diesel(sql_type = SqlUuid)]
    pub subject: Uuid,
    #[diesel(sql_type = Text)]
    pub metric: String,
    #[diesel(sql_type = BigInt)]
    pub amount: i64,
    #[diesel(sql_type = Text)]
    pub idempotency_key: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub attributes: Option<String>,
}

impl FromSql<Text, Pg> for EventKind {
    fn from_sql(value: PgValue<'_>) -> diesel::deserialize::Result<Self> {
        Ok(std::str::from_utf8(value.as_bytes())?.parse()?)
    }
}

/// Filters of an event page.
#[derive(Debug, Clone)]
pub struct EventFilter {
    pub subject: Uuid,
    pub metric: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Keyset position `(occurred_at, usage_id)`: events strictly before it (newest first).
    pub after: Option<Cursor>,
}

impl EventFilter {
    /// The filters a page token is bound to (all but the position).
    pub fn page_filters(&self) -> String {
        format!(
            "{} {:?} {:?} {:?}",
            self.subject, self.metric, self.from, self.to
        )
    }
}

/// Up to `limit` events, newest first.
pub async fn events(
    conn: &mut AsyncPgConnection,
    filter: &EventFilter,
    limit: i64,
) -> Result<Vec<EventRow>, diesel::result::Error> {
    let (after_at, after_id) = filter.after.map(|after| (after.at, after.id)).unzip();
    sql_query(
        "SELECT occurred_at, usage_id, kind, subject, metric, amount, idempotency_key, \
                attributes::text AS attributes \
         FROM usage_events \
         WHERE subject = $1 \
           AND ($2::text IS NULL OR metric = $2) \
           AND ($3::timestamptz IS NULL OR occurred_at >= $3) \
           AND ($4::timestamptz IS NULL OR occurred_at < $4) \
           AND ($5::timestamptz IS NULL OR (occurred_at, usage_id) < ($5, $6)) \
         ORDER BY occurred_at DESC, usage_id DESC \
         LIMIT $7",
    )
    .bind::<SqlUuid, _>(filter.subject)
    .bind::<Nullable<Text>, _>(filter.metric.as_deref())
    .bind::<Nullable<Timestamptz>, _>(filter.from)
    .bind::<Nullable<Timestamptz>, _>(filter.to)
    .bind::<Nullable<Timestamptz>, _>(after_at)
    .bind::<Nullable<SqlUuid>, _>(after_id)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Months of usage_events partitions kept ready: the current one and the next two.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;
/// Idempotency keys, and with them refunds, are kept at least this long and until the end of
/// the period their consumption counted in.
pub const KEY_RETENTION: TimeDelta = TimeDelta::hours(24);

#[derive(QueryableByName)]
struct Migrated {
    #[diesel(sql_type = Bool)]
    migrated: bool,
}

/// Whether the migration that brings the partition function has run: kit applies migrations
/// after the server started, so the first maintenance may come before them.
pub async fn partitions_migrated(
    conn: &mut AsyncPgConnection,
) -> Result<bool, diesel::result::Error> {
    let row: Migrated = sql_query(
        "SELECT to_regprocedure('ensure_usage_partitions(timestamptz, integer)') IS NOT NULL \
           AS migrated",
    )
    .get_result(conn)
    .await?;
    Ok(row.migrated)
}

/// Creates the usage_events partitions for the month of `now` and the next ones.
pub async fn ensure_partitions(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    sql_query("SELECT ensure_usage_partitions($1, $2)")
        .bind::<Timestamptz, _>(now)
        .bind::<Integer, _>(PARTITION_MONTHS_AHEAD)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes idempotency keys older than the retention whose period has ended. Returns how many.
///
/// This scans the table, hourly and off the hot path, because no index is both selective and
/// free for consumes: `resets_at <= now` is what selects, and an index on it is one more
/// B-tree insert per consumed row (about 15% on the key INSERT when measured); BRIN does not
/// fit, as neither column follows the heap order (periods end at different times per subject,
/// and the space the deletes free is reused). The
/// existing index on `usage_id` (UUIDv7, so ordered by time) could only bound `created_at`,
/// which excludes just the last day of a period's keys.
pub async fn delete_expired_keys(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    sql_query("DELETE FROM idempotency_keys WHERE created_at < $1 AND resets_at <= $2")
        .bind::<Timestamptz, _>(now - KEY_RETENTION)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await
}
