//! A quota-svc in-process over a fresh database, a test issuer and a manual clock.

use std::sync::Arc;

use chrono::Utc;
use diesel::{QueryableByName, sql_query, sql_types::BigInt};
use diesel_async::RunQueryDsl;
use kit::{
    clock::ManualClock,
    convert::timestamp,
    testing::{InProcess, TestDb, TestIssuer, with_api_key, with_bearer},
};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, ApplyEntitlementsRequest, ConsumeRequest, ConsumeResponse,
    MetricLimit, quota_service_client::QuotaServiceClient,
};
use quota_svc::{MIGRATIONS, SPEC, Workers, routes};
use tonic::{Request, Status, transport::Channel};
use uuid::Uuid;

/// Read workers of every test server: concurrent reads are coalesced as in production.
const READ_WORKERS: usize = 2;

/// One quota-svc, in-process, with what its tests call it with.
pub struct QuotaServer {
    pub db: TestDb,
    pub issuer: Arc<TestIssuer>,
    pub clock: Arc<ManualClock>,
    pub server: InProcess,
    /// An API key with the `service` scope (what billing-svc uses).
    pub service_key: String,
    /// A backend's key: owner with the `service` role, scopes `quota:consume` and `quota:read`
    /// but not `service`.
    pub backend_key: String,
}

impl QuotaServer {
    pub async fn start() -> Self {
        Self::start_with(4).await
    }

    /// `batch_workers` = 0: one transaction per Consume.
    pub async fn start_with(batch_workers: usize) -> Self {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let issuer = Arc::new(TestIssuer::new());
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let authenticator = issuer.authenticator();
        let server_clock = clock.clone();
        let server = InProcess::start(
            SPEC,
            db.url(),
            MIGRATIONS,
            |_| {},
            move |pool| {
                let workers = Workers {
                    consume: batch_workers,
                    read: READ_WORKERS,
                };
                routes(pool, authenticator, server_clock, workers)
            },
        )
        .await;
        let service_key = issuer.add_api_key(
            Uuid::now_v7(),
            &["service", "quota:consume", "quota:read"],
            &["service"],
        );
        let backend_key = backend_key(&issuer);
        Self {
            db,
            issuer,
            clock,
            server,
            service_key,
            backend_key,
        }
    }

    /// Another quota-svc over the same database and callers: a second replica, with its own
    /// pool and its own copy of the default tier.
    pub async fn replica(&self) -> InProcess {
        let authenticator = self.issuer.authenticator();
        let clock = self.clock.clone();
        InProcess::start(
            SPEC,
            self.db.url(),
            MIGRATIONS,
            |_| {},
            move |pool| {
                let workers = Workers {
                    consume: 4,
                    read: READ_WORKERS,
                };
                routes(pool, authenticator, clock, workers)
            },
        )
        .await
    }

    pub fn client(&self) -> QuotaServiceClient<Channel> {
        QuotaServiceClient::new(self.server.channel.clone())
    }

    /// A request carrying the service API key.
    pub fn as_service<T>(&self, message: T) -> Request<T> {
        with_api_key(&self.service_key, message)
    }

    /// A request carrying a user's access token.
    pub fn as_user<T>(&self, user: Uuid, message: T) -> Request<T> {
        with_bearer(&self.issuer.token(user, &[]), message)
    }

    /// Gives `subject` a plan with `limits` for the period around now (one day each side).
    pub async fn plan(&self, subject: Uuid, limits: &[(&str, Option<i64>)], version: i64) {
        let now = self.clock_now();
        let request = ApplyEntitlementsRequest {
            subject: subject.to_string(),
            plan_code: "pro".to_owned(),
            limits: metric_limits(limits),
            period_start: Some(timestamp(now - chrono::TimeDelta::days(1))),
            period_end: Some(timestamp(now + chrono::TimeDelta::days(1))),
            version,
        };
        let response = self
            .client()
            .apply_entitlements(self.as_service(request))
            .await
            .unwrap()
            .into_inner();
        assert!(response.applied);
    }

    pub async fn defaults(&self, limits: &[(&str, Option<i64>)], version: i64) {
        let request = ApplyDefaultEntitlementsRequest {
            limits: metric_limits(limits),
            version,
        };
        self.client()
            .apply_default_entitlements(self.as_service(request))
            .await
            .unwrap();
    }

    /// Consumes `amount` of `metric` for `subject` with the service key.
    pub async fn consume(
        &self,
        subject: Uuid,
        metric: &str,
        amount: i64,
        key: &str,
    ) -> Result<ConsumeResponse, Status> {
        self.client()
            .consume(self.as_service(ConsumeRequest {
                metric: metric.to_owned(),
                subject: subject.to_string(),
                amount: Some(amount),
                idempotency_key: key.to_owned(),
                attributes: None,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    pub fn clock_now(&self) -> chrono::DateTime<Utc> {
        kit::clock::Clock::now(self.clock.as_ref())
    }

    /// `SELECT count(*)`-style checks on the quota schema.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect(SPEC.name).await;
        let row: Count = sql_query(sql).get_result(&mut conn).await.unwrap();
        row.n
    }
}

/// What `auth-svc service-key issue --scopes quota:consume,quota:read` gives a backend.
pub fn backend_key(issuer: &TestIssuer) -> String {
    issuer.add_api_key(
        Uuid::now_v7(),
        &["quota:consume", "quota:read"],
        &["service"],
    )
}

pub fn metric_limits(limits: &[(&str, Option<i64>)]) -> Vec<MetricLimit> {
    limits
        .iter()
        .map(|(metric, limit)| MetricLimit {
            metric: (*metric).to_owned(),
            limit: limit.unwrap_or(0),
            unlimited: limit.is_none(),
        })
        .collect()
}
