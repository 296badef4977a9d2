//! The real quota-svc binary: what every server of the mesh promises (reflection, health,
//! SIGTERM), two replicas on one database, grpcurl, and a Python client.

use std::{process::Command, sync::Arc, time::Duration};

use diesel_async::RunQueryDsl;
use futures::future::join_all;
use kit::{
    convert::timestamp,
    testing::{
        AuthServer, Binary, TestDb, TestIssuer, assert_grpcurl_lists, free_port, grpcurl_ok,
        grpcurl_result, with_api_key,
    },
};
use proto::quota::{
    ApplyEntitlementsRequest, CheckQuotaRequest, ConsumeRequest,
    quota_service_client::QuotaServiceClient,
};
use quota_svc::{MIGRATIONS, SPEC};
use tonic::transport::Channel;
use uuid::Uuid;

use super::harness::{backend_key, metric_limits};

struct Replicas {
    db: TestDb,
    _auth: AuthServer,
    binaries: Vec<Binary>,
    service_key: String,
    backend_key: String,
}

impl Replicas {
    async fn start(count: usize) -> Self {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let issuer = Arc::new(TestIssuer::new());
        let auth = AuthServer::start(issuer.clone()).await;
        let own_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
        let service_key = issuer.add_api_key(
            Uuid::now_v7(),
            &["service", "quota:consume", "quota:read"],
            &["service"],
        );
        let backend_key = backend_key(&issuer);
        let auth_url = auth.url();
        let binaries = (0..count)
            .map(|_| {
                Binary::start(
                    std::path::Path::new(env!("CARGO_BIN_EXE_quota-svc")),
                    "QUOTA",
                    db.url(),
                    &[("AUTH_URL", &auth_url), ("QUOTA_SERVICE_API_KEY", &own_key)],
                )
            })
            .collect();
        let replicas = Self {
            db,
            _auth: auth,
            binaries,
            service_key,
            backend_key,
        };
        for binary in &replicas.binaries {
            kit::testing::wait_for_health(
                &replicas.channel(binary),
                tonic_health_serving(),
                Duration::from_secs(30),
            )
            .await;
        }
        replicas
    }

    fn channel(&self, binary: &Binary) -> Channel {
        Channel::from_shared(format!("http://{}", binary.addr))
            .unwrap()
            .connect_lazy()
    }

    async fn plan(&self, subject: Uuid, limit: i64) {
        let now = chrono::Utc::now();
        let request = ApplyEntitlementsRequest {
            subject: subject.to_string(),
            plan_code: "pro".to_owned(),
            limits: metric_limits(&[("api.calls", Some(limit))]),
            period_start: Some(timestamp(now - chrono::TimeDelta::days(1))),
            period_end: Some(timestamp(now + chrono::TimeDelta::days(30))),
            version: 1,
        };
        QuotaServiceClient::new(self.channel(&self.binaries[0]))
            .apply_entitlements(with_api_key(&self.service_key, request))
            .await
            .unwrap();
    }
}

fn tonic_health_serving() -> tonic_health::pb::health_check_response::ServingStatus {
    tonic_health::pb::health_check_response::ServingStatus::Serving
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_reflection_and_health_and_stops_on_sigterm() {
    // Started means the binary already reported SERVING to a health client.
    let mut replicas = Replicas::start(1).await;
    let addr = replicas.binaries[0].addr.to_string();

    assert_grpcurl_lists(&addr, "commerce.quota.v1.QuotaService");
    for body in ["{}", r#"{"service":"commerce.quota.v1.QuotaService"}"#] {
        let health = grpcurl_ok(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(health.contains("\"SERVING\""), "{body}: {health}");
    }

    replicas.binaries[0].assert_stops_on_sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_grant_exactly_the_limit() {
    let replicas = Replicas::start(2).await;
    let subject = Uuid::now_v7();
    replicas.plan(subject, 100).await;
    let clients: Vec<_> = replicas
        .binaries
        .iter()
        .map(|binary| QuotaServiceClient::new(replicas.channel(binary)))
        .collect();
    let results = join_all((0..500).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = with_api_key(
            &replicas.service_key,
            ConsumeRequest {
                metric: "api.calls".to_owned(),
                subject: subject.to_string(),
                amount: None,
                idempotency_key: format!("k{i}"),
                attributes: None,
            },
        );
        async move { client.consume(request).await.unwrap().into_inner().allowed }
    }))
    .await;
    assert_eq!(results.iter().filter(|allowed| **allowed).count(), 100);
    let mut conn = replicas.db.connect("quota").await;
    #[derive(diesel::QueryableByName)]
    struct Used {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        used: i64,
    }
    let used: Used = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT used FROM entitlements"),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(used.used, 100);
    // Concurrent reads on both replicas (coalesced into batches) agree with what was consumed.
    let reads = join_all((0..200).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = with_api_key(
            &replicas.service_key,
            CheckQuotaRequest {
                metric: "api.calls".to_owned(),
                subject: subject.to_string(),
            },
        );
        async move {
            client
                .check_quota(request)
                .await
                .unwrap()
                .into_inner()
                .quota
        }
    }))
    .await;
    for quota in reads {
        let quota = quota.unwrap();
        assert_eq!((quota.limit, quota.used, quota.remaining), (100, 100, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_a_python_backend_consume_from_the_binary() {
    let replicas = Replicas::start(1).await;
    let subject = Uuid::now_v7();
    replicas.plan(subject, 2).await;
    let addr = replicas.binaries[0].addr.to_string();
    // Both consume as a backend does: a service account's key without the `service` scope.
    let key_header = format!("x-api-key: {}", replicas.backend_key);
    let body = format!(
        r#"{{"metric":"api.calls","subject":"{subject}","amount":"1","idempotencyKey":"curl-1"}}"#
    );
    let output = grpcurl_ok(&[
        "-plaintext",
        "-H",
        &key_header,
        "-d",
        &body,
        &addr,
        "commerce.quota.v1.QuotaService/Consume",
    ]);
    let answer: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["used"], "1");

    // The Python client expects a fresh subject with a limit of 2.
    let python_subject = Uuid::now_v7();
    replicas.plan(python_subject, 2).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/consume_client.py"
    );
    let output = Command::new("python3")
        .args([
            script,
            &addr,
            &replicas.backend_key,
            &python_subject.to_string(),
            "api.calls",
        ])
        .output()
        .expect("python3 is needed");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// While another process holds the migration lock (a replica or the init job migrating), a
/// starting replica lists its services and reads NOT_SERVING, and answers its own RPCs
/// UNAVAILABLE (retry) rather than INTERNAL from tables that do not exist yet; once the lock is
/// released it migrates and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answers_unavailable_until_its_schema_is_migrated() {
    let db = TestDb::new(&[]).await;
    let mut migrating = db.connect("public").await;
    let lock = "SELECT pg_advisory_lock(hashtext('commerce-mesh migrations quota'))";
    diesel::sql_query(lock)
        .execute(&mut migrating)
        .await
        .unwrap();
    let issuer = Arc::new(TestIssuer::new());
    let auth = AuthServer::start(issuer.clone()).await;
    let own_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
    let service_key = issuer.add_api_key(Uuid::now_v7(), &["service", "quota:read"], &["service"]);
    let replica = Binary::start_listening(
        free_port(),
        std::path::Path::new(env!("CARGO_BIN_EXE_quota-svc")),
        "QUOTA",
        db.url(),
        &[
            ("AUTH_URL", &auth.url()),
            ("QUOTA_SERVICE_API_KEY", &own_key),
        ],
    );
    let addr = replica.addr.to_string();
    let check = |expected: &str| {
        let key = format!("x-api-key: {service_key}");
        let body = format!(r#"{{"subject":"{}","metric":"api.calls"}}"#, Uuid::now_v7());
        let args = [
            "-plaintext",
            "-H",
            key.as_str(),
            "-d",
            body.as_str(),
            addr.as_str(),
            "commerce.quota.v1.QuotaService/CheckQuota",
        ];
        let answer = grpcurl_result(&args).unwrap_err();
        assert!(answer.contains(expected), "{answer}");
    };

    assert_grpcurl_lists(&addr, "commerce.quota.v1.QuotaService");
    let health = grpcurl_ok(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("NOT_SERVING"), "{health}");
    check("Code: Unavailable");

    let unlock = "SELECT pg_advisory_unlock(hashtext('commerce-mesh migrations quota'))";
    diesel::sql_query(unlock)
        .execute(&mut migrating)
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    kit::testing::wait_for_health(&channel, tonic_health_serving(), Duration::from_secs(30)).await;
    // Migrated: the metric simply does not exist for the subject (no free tier applied).
    check("Code: NotFound");
}
