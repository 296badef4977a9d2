//! `audit_events`: the security log.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use kit::page::Cursor;
use uuid::Uuid;

use super::schema::auth::audit_events;
use crate::domain::audit::{AuditFilter, EventType};

/// An event to record. `details` never holds secrets.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub event_type: EventType,
    pub actor: Option<Uuid>,
    pub subject: Option<Uuid>,
    pub client_address: &'a str,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    pub actor_user_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub client_address: String,
    pub details: serde_json::Value,
}

pub async fn record(
    conn: &mut AsyncPgConnection,
    event: &NewEvent<'_>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(audit_events::table)
        .values((
            audit_events::id.eq(Uuid::now_v7()),
            audit_events::occurred_at.eq(now),
            audit_events::event_type.eq(event.event_type.as_str()),
            audit_events::actor_user_id.eq(event.actor),
            audit_events::subject_user_id.eq(event.subject),
            audit_events::client_address.eq(event.client_address),
            audit_events::details.eq(&event.details),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Events newest first, after `after`, at most `limit`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &AuditFilter,
    after: Option<Cursor>,
    limit: i64,
) -> QueryResult<Vec<AuditRow>> {
    let mut query = audit_events::table
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(subject) = filter.subject {
        query = query.filter(audit_events::subject_user_id.eq(subject));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(audit_events::event_type.eq(event_type));
    }
    if let Some(from) = filter.from {
        query = query.filter(audit_events::occurred_at.ge(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(audit_events::occurred_at.lt(to));
    }
    if let Some(cursor) = after {
        query = query.filter(
            audit_events::occurred_at
                .lt(cursor.at)
                .or(audit_events::occurred_at
                    .eq(cursor.at)
                    .and(audit_events::id.lt(cursor.id))),
        );
    }
    query
        .order((audit_events::occurred_at.desc(), audit_events::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}
