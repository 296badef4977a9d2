//! Provider notifications exactly as they arrived, with the verdict (audit).

use chrono::{DateTime, Utc};
use diesel::{QueryResult, prelude::*};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Conn, schema::billing::payment_events};

/// What was made of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It changed a payment.
    Applied,
    /// Verified, but the payment had already left PENDING: acknowledged, nothing changed.
    Duplicate,
    /// Not verified or not matching our payment: nothing changed.
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::Refused => "refused",
        }
    }
}

/// A notification to record.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = payment_events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub event_id: Uuid,
    pub provider: String,
    pub notification_id: Option<String>,
    pub payment_id: Option<Uuid>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub verdict: String,
    pub detail: String,
    pub received_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut Conn, row: &EventRow) -> QueryResult<()> {
    diesel::insert_into(payment_events::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}
