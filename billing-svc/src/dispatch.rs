//! The entitlement dispatcher: delivers the outbox to quota-svc (`ApplyEntitlements`,
//! `ApplyDefaultEntitlements`) with billing's service key, at least once, newest version per
//! subject, retrying with capped exponential backoff. quota-svc ignores versions it has seen,
//! so a repeated delivery changes nothing.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use chrono::TimeDelta;
use diesel_async::AsyncConnection;
use kit::{
    clock::Clock,
    convert::timestamp,
    db::{DbError, PgPool},
};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, ApplyEntitlementsRequest, MetricLimit,
    quota_service_client::QuotaServiceClient,
};
use tokio::sync::Notify;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::{
    error::Error,
    service::Billing,
    store::{
        outbox::{self, DEFAULTS, OutboxRow},
        plans::limits_of,
    },
};

/// Rows delivered per transaction.
const BATCH: i64 = 50;
/// How often the outbox is looked at when nothing pokes the dispatcher (another replica's
/// writes, retries coming due).
const POLL: Duration = Duration::from_secs(1);

/// Delivers the outbox.
pub struct Dispatcher {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    quota: QuotaServiceClient<Channel>,
    service_key: MetadataValue<tonic::metadata::Ascii>,
    max_backoff: Duration,
}

impl Dispatcher {
    /// A dispatcher to quota-svc at `quota_url` (connected lazily, so quota-svc may be down).
    pub fn new(
        pool: PgPool,
        clock: Arc<dyn Clock>,
        quota_url: &str,
        service_key: &str,
        max_backoff: Duration,
    ) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(quota_url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self {
            pool,
            clock,
            quota: QuotaServiceClient::new(channel),
            service_key: service_key
                .parse()
                .map_err(|_| anyhow::anyhow!("the service API key is not valid metadata"))?,
            max_backoff,
        })
    }

    /// Delivers the rows that are due; returns how many were delivered.
    pub async fn deliver_due(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        conn.transaction(async |conn| {
            let rows = outbox::claim_due(conn, now, BATCH).await?;
            let mut delivered = 0;
            for row in &rows {
                match self.send(row).await {
                    Ok(()) => {
                        outbox::delivered(conn, row, now).await?;
                        delivered += 1;
                    }
                    Err(status) => {
                        let wait = backoff(row.attempts, self.max_backoff);
                        tracing::warn!(subject = %row.subject, version = row.version, code = ?status.code(), message = status.message(), retry_in = ?wait, "entitlement delivery failed");
                        let retry_at = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
                        outbox::failed(conn, row, status.message(), retry_at).await?;
                    }
                }
            }
            Ok(delivered)
        })
        .await
    }

    async fn send(&self, row: &OutboxRow) -> Result<(), tonic::Status> {
        let limits: Vec<MetricLimit> = limits_of(&row.quota_limits)
            .into_iter()
            .map(|limit| MetricLimit {
                metric: limit.metric,
                limit: limit.limit.unwrap_or(0),
                unlimited: limit.limit.is_none(),
            })
            .collect();
        let mut quota = self.quota.clone();
        if row.subject == DEFAULTS {
            quota
                .apply_default_entitlements(self.signed(ApplyDefaultEntitlementsRequest {
                    limits,
                    version: row.version,
                }))
                .await?;
        } else {
            quota
                .apply_entitlements(self.signed(ApplyEntitlementsRequest {
                    subject: row.subject.to_string(),
                    plan_code: row.plan_code.clone(),
                    limits,
                    period_start: row.period_start.map(timestamp),
                    period_end: row.period_end.map(timestamp),
                    version: row.version,
                }))
                .await?;
        }
        Ok(())
    }

    fn signed<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("x-api-key", self.service_key.clone());
        request
    }
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s, … up to `max`.
pub fn backoff(attempts: i32, max: Duration) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    Duration::from_secs(1u64 << exponent).min(max)
}

/// Delivers whenever entitlements were queued here, and every second for the rest, until
/// billing-svc is dropped.
pub async fn run(dispatcher: Dispatcher, billing: Weak<Billing>, written: Arc<Notify>) {
    loop {
        if billing.strong_count() == 0 {
            return;
        }
        match dispatcher.deliver_due().await {
            // A full batch: more may be waiting.
            Ok(delivered) if delivered as i64 == BATCH => continue,
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "entitlement dispatch failed; retrying"),
        }
        tokio::select! {
            () = written.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, cap), Duration::from_secs(1));
        assert_eq!(backoff(3, cap), Duration::from_secs(8));
        assert_eq!(backoff(6, cap), cap);
        assert_eq!(backoff(i32::MAX, cap), cap);
        assert_eq!(backoff(-1, cap), Duration::from_secs(1));
    }
}
