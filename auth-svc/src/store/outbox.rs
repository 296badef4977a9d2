//! `outbox`: mail kept instead of sent when no SMTP server is configured.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::auth::outbox;

pub async fn insert(
    conn: &mut AsyncPgConnection,
    recipient: &str,
    subject: &str,
    body: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(Uuid::now_v7()),
            outbox::recipient.eq(recipient),
            outbox::subject.eq(subject),
            outbox::body.eq(body),
            outbox::created_at.eq(now),
        ))
        .execute(conn)
        .await
        .map(drop)
}
