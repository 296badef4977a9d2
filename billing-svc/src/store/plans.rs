//! Plans.

use chrono::{DateTime, Utc};
use diesel::{OptionalExtension, QueryResult, prelude::*};
use diesel_async::RunQueryDsl;

use super::{Conn, schema::billing::plans};
use crate::domain::plan::{Interval, Period, PlanTerms, QuotaLimit};

/// A stored plan.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = plans, check_for_backend(diesel::pg::Pg))]
pub struct PlanRow {
    pub plan_code: String,
    pub name: String,
    pub description: String,
    pub price_amount_minor: i64,
    pub currency: String,
    pub billing_interval: String,
    pub interval_count: i32,
    pub quota_limits: serde_json::Value,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PlanRow {
    /// A new row of `terms`, created at `now`.
    pub fn new(terms: &PlanTerms, now: DateTime<Utc>) -> Self {
        Self {
            plan_code: terms.plan_code.clone(),
            name: terms.name.clone(),
            description: terms.description.clone(),
            price_amount_minor: terms.price_amount_minor,
            currency: terms.currency.clone(),
            billing_interval: terms.period.interval.as_str().to_owned(),
            interval_count: terms.period.count,
            quota_limits: limits_json(&terms.quota_limits),
            active: terms.active,
            created_at: now,
            updated_at: now,
        }
    }

    /// The plan's terms (the CHECK constraints keep the stored values parseable).
    pub fn terms(&self) -> PlanTerms {
        PlanTerms {
            plan_code: self.plan_code.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            price_amount_minor: self.price_amount_minor,
            currency: self.currency.clone(),
            period: self.period(),
            quota_limits: self.limits(),
            active: self.active,
        }
    }

    pub fn period(&self) -> Period {
        Period {
            interval: Interval::parse(&self.billing_interval).unwrap_or(Interval::Month),
            count: self.interval_count,
        }
    }

    pub fn limits(&self) -> Vec<QuotaLimit> {
        limits_of(&self.quota_limits)
    }
}

/// Quota limits as stored (a JSON array).
pub fn limits_json(limits: &[QuotaLimit]) -> serde_json::Value {
    serde_json::to_value(limits).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

/// Stored quota limits.
pub fn limits_of(json: &serde_json::Value) -> Vec<QuotaLimit> {
    serde_json::from_value(json.clone()).unwrap_or_default()
}

pub async fn insert(conn: &mut Conn, row: &PlanRow) -> QueryResult<PlanRow> {
    diesel::insert_into(plans::table)
        .values(row)
        .returning(PlanRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn get(conn: &mut Conn, code: &str) -> QueryResult<Option<PlanRow>> {
    plans::table
        .find(code)
        .select(PlanRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The plan, locked for an update.
pub async fn get_for_update(conn: &mut Conn, code: &str) -> QueryResult<Option<PlanRow>> {
    plans::table
        .find(code)
        .select(PlanRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Writes every field of `row` (its `plan_code` and `created_at` stay).
pub async fn update(conn: &mut Conn, row: &PlanRow) -> QueryResult<PlanRow> {
    diesel::update(plans::table.find(&row.plan_code))
        .set((
            plans::name.eq(&row.name),
            plans::description.eq(&row.description),
            plans::price_amount_minor.eq(row.price_amount_minor),
            plans::currency.eq(&row.currency),
            plans::billing_interval.eq(&row.billing_interval),
            plans::interval_count.eq(row.interval_count),
            plans::quota_limits.eq(&row.quota_limits),
            plans::active.eq(row.active),
            plans::updated_at.eq(row.updated_at),
        ))
        .returning(PlanRow::as_returning())
        .get_result(conn)
        .await
}

/// A page of plans, cheapest first then by code, after the `(price, code)` of the last page.
pub async fn list(
    conn: &mut Conn,
    include_inactive: bool,
    after: Option<(i64, &str)>,
    limit: i64,
) -> QueryResult<Vec<PlanRow>> {
    let mut query = plans::table
        .select(PlanRow::as_select())
        .order((plans::price_amount_minor, plans::plan_code))
        .limit(limit)
        .into_boxed();
    if !include_inactive {
        query = query.filter(plans::active.eq(true));
    }
    if let Some((price, code)) = after {
        query = query.filter(
            plans::price_amount_minor
                .gt(price)
                .or(plans::price_amount_minor
                    .eq(price)
                    .and(plans::plan_code.gt(code.to_owned()))),
        );
    }
    query.load(conn).await
}

/// Withdraws from sale every active plan not in `keep`; returns their codes.
pub async fn deactivate_all_but(
    conn: &mut Conn,
    keep: &[String],
    now: DateTime<Utc>,
) -> QueryResult<Vec<String>> {
    diesel::update(
        plans::table
            .filter(plans::active.eq(true))
            .filter(plans::plan_code.ne_all(keep)),
    )
    .set((plans::active.eq(false), plans::updated_at.eq(now)))
    .returning(plans::plan_code)
    .get_results(conn)
    .await
}
