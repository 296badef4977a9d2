//! Subscriptions. Each transition applies only from the state it was decided from.

use chrono::{DateTime, Utc};
use diesel::{OptionalExtension, QueryResult, prelude::*};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, schema::billing::subscriptions};
use crate::domain::subscription::{Activated, SubscriptionState, SubscriptionStatus};

const CURRENT: [&str; 3] = ["pending_payment", "active", "past_due"];

/// A stored subscription.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct SubscriptionRow {
    pub subscription_id: Uuid,
    pub user_id: Uuid,
    pub plan_code: String,
    pub status: String,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SubscriptionRow {
    /// A new PENDING_PAYMENT subscription.
    pub fn pending(user_id: Uuid, plan_code: &str, now: DateTime<Utc>) -> Self {
        Self {
            subscription_id: Uuid::now_v7(),
            user_id,
            plan_code: plan_code.to_owned(),
            status: SubscriptionStatus::PendingPayment.as_str().to_owned(),
            current_period_start: None,
            current_period_end: None,
            cancel_at_period_end: false,
            canceled_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn status(&self) -> SubscriptionStatus {
        SubscriptionStatus::parse(&self.status).unwrap_or(SubscriptionStatus::Expired)
    }

    pub fn state(&self) -> SubscriptionState {
        SubscriptionState {
            status: self.status(),
            plan_code: self.plan_code.clone(),
            period: self.current_period_start.zip(self.current_period_end),
            cancel_at_period_end: self.cancel_at_period_end,
        }
    }
}

pub async fn insert(conn: &mut Conn, row: &SubscriptionRow) -> QueryResult<()> {
    diesel::insert_into(subscriptions::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// The user's current (PENDING_PAYMENT, ACTIVE or PAST_DUE) subscription, locked.
pub async fn current_for_update(
    conn: &mut Conn,
    user: Uuid,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::user_id.eq(user))
        .filter(subscriptions::status.eq_any(CURRENT))
        .select(SubscriptionRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The user's current subscription (read only).
pub async fn current(conn: &mut Conn, user: Uuid) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::user_id.eq(user))
        .filter(subscriptions::status.eq_any(CURRENT))
        .select(SubscriptionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user's most recently created subscription, whatever its state.
pub async fn latest(conn: &mut Conn, user: Uuid) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::user_id.eq(user))
        .order((
            subscriptions::created_at.desc(),
            subscriptions::subscription_id.desc(),
        ))
        .select(SubscriptionRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn get(conn: &mut Conn, id: Uuid) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The subscription, locked.
pub async fn get_for_update(conn: &mut Conn, id: Uuid) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// `from` → ACTIVE with the activation's plan and period, `cancel_at_period_end` cleared.
pub async fn activate(
    conn: &mut Conn,
    id: Uuid,
    from: SubscriptionStatus,
    activated: &Activated,
    now: DateTime<Utc>,
) -> QueryResult<Option<SubscriptionRow>> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::status.eq(from.as_str())),
    )
    .set((
        subscriptions::status.eq(SubscriptionStatus::Active.as_str()),
        subscriptions::plan_code.eq(&activated.plan_code),
        subscriptions::current_period_start.eq(activated.period_start),
        subscriptions::current_period_end.eq(activated.period_end),
        subscriptions::cancel_at_period_end.eq(false),
        subscriptions::updated_at.eq(now),
    ))
    .returning(SubscriptionRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// `from` → CANCELED at `at`.
pub async fn cancel(
    conn: &mut Conn,
    id: Uuid,
    from: SubscriptionStatus,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Option<SubscriptionRow>> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::status.eq(from.as_str())),
    )
    .set((
        subscriptions::status.eq(SubscriptionStatus::Canceled.as_str()),
        subscriptions::canceled_at.eq(at),
        subscriptions::updated_at.eq(now),
    ))
    .returning(SubscriptionRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// `from` → `to` (PAST_DUE or EXPIRED), nothing else changing.
pub async fn move_to(
    conn: &mut Conn,
    id: Uuid,
    from: SubscriptionStatus,
    to: SubscriptionStatus,
    now: DateTime<Utc>,
) -> QueryResult<Option<SubscriptionRow>> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::status.eq(from.as_str())),
    )
    .set((
        subscriptions::status.eq(to.as_str()),
        subscriptions::updated_at.eq(now),
    ))
    .returning(SubscriptionRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// An ACTIVE subscription will be canceled when its period ends.
pub async fn cancel_at_period_end(
    conn: &mut Conn,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<SubscriptionRow>> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::status.eq(SubscriptionStatus::Active.as_str())),
    )
    .set((
        subscriptions::cancel_at_period_end.eq(true),
        subscriptions::updated_at.eq(now),
    ))
    .returning(SubscriptionRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Up to `limit` subscriptions in `status` whose period ended by `ended_by`, locked and skipped
/// by any other worker that holds them (so two workers never take the same row).
pub async fn claim_ended(
    conn: &mut Conn,
    status: SubscriptionStatus,
    ended_by: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::status.eq(status.as_str()))
        .filter(subscriptions::current_period_end.le(ended_by))
        .order(subscriptions::current_period_end)
        .limit(limit)
        .select(SubscriptionRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}
