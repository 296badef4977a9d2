//! What every server of the mesh promises, proven on billing-svc: grpcurl sees the service,
//! health and reflection; health follows the database; SIGTERM stops the process promptly with
//! exit code 0; request ids are echoed; metrics are exported.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::{net::SocketAddr, time::Duration};

use std::sync::Arc;

use billing_svc::{
    MIGRATIONS, SPEC, Workers,
    dispatch::Dispatcher,
    service::{Billing, Settings},
};
use chrono::TimeDelta;
use kit::{
    clock::SystemClock,
    db::PgPool,
    testing::{
        Binary, InProcess, TcpProxy, TestDb, TestIssuer, assert_grpcurl_lists, grpcurl, grpcurl_ok,
        wait_for_health, with_metadata,
    },
};
use proto::billing::{ListPlansRequest, billing_service_client::BillingServiceClient};
use tonic::service::Routes;
use tonic_health::pb::health_check_response::ServingStatus;

/// billing-svc with no provider and no reachable quota-svc: what these promises need.
fn routes(pool: PgPool) -> anyhow::Result<Routes> {
    let clock = Arc::new(SystemClock);
    let workers = Workers {
        dispatcher: Dispatcher::new(
            pool.clone(),
            clock.clone(),
            "http://127.0.0.1:9",
            "cmk_unused",
            Duration::from_secs(60),
        )?,
        lifecycle_every: Duration::from_secs(3600),
    };
    let settings = Settings {
        checkout_expiry: TimeDelta::hours(2),
        grace_period: TimeDelta::days(7),
        public_url: "http://127.0.0.1:9000".to_owned(),
        default_return_url: "http://localhost:9000/".to_owned(),
    };
    let billing = Arc::new(Billing::new(pool, clock, Vec::new(), settings));
    billing_svc::routes(
        billing,
        Arc::new(TestIssuer::new()).authenticator(),
        workers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_reflection_and_health_and_stops_on_sigterm() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let mut server = Binary::start(
        env!("CARGO_BIN_EXE_billing-svc").as_ref(),
        "BILLING",
        db.url(),
        &[("BILLING_SERVICE_API_KEY", "cmk_unused")],
    );
    let addr = server.addr.to_string();

    assert_grpcurl_lists(&addr, "commerce.billing.v1.BillingService");
    // Reflection serves the full contract, so grpcurl can describe messages too.
    let described = grpcurl_ok(&["-plaintext", &addr, "describe", "commerce.billing.v1.Plan"]);
    assert!(described.contains("amount_minor"), "{described}");

    let mut status = String::new();
    for _ in 0..100 {
        let output = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        status = String::from_utf8_lossy(&output.stdout).into_owned();
        if status.contains("\"SERVING\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        status.contains("\"SERVING\""),
        "health never said SERVING: {status}"
    );

    server.assert_stops_on_sigterm();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    let server = InProcess::start(
        SPEC,
        &db.url_via(proxy.addr()),
        MIGRATIONS,
        |args| args.db_acquire_timeout_ms = 500,
        routes,
    )
    .await;

    proxy.set_up(false);
    wait_for_health(
        &server.channel,
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    proxy.set_up(true);
    wait_for_health(
        &server.channel,
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_for_a_database_that_is_down_at_start() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    proxy.set_up(false);
    let url = db.url_via(proxy.addr());
    let starting = tokio::spawn(async move {
        InProcess::start(
            SPEC,
            &url,
            MIGRATIONS,
            |args| args.db_acquire_timeout_ms = 500,
            routes,
        )
        .await
    });
    // Migrations cannot run yet, so the server must not claim to serve.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !starting.is_finished(),
        "the server reported SERVING without its database"
    );
    proxy.set_up(true);
    let server = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("SERVING once the database is back")
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_metrics_count_rpcs_by_code() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let server = InProcess::start(SPEC, db.url(), MIGRATIONS, |_| {}, routes).await;
    let mut client = BillingServiceClient::new(server.channel.clone());

    let request = with_metadata(
        "x-request-id",
        "test-request-42",
        ListPlansRequest::default(),
    );
    let listed = client.list_plans(request).await.unwrap();
    assert_eq!(
        listed.metadata().get("x-request-id").unwrap(),
        "test-request-42"
    );

    let metrics = reqwest_get(server.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"rpc_requests_total{method="/commerce.billing.v1.BillingService/ListPlans",code="Ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("rpc_duration_seconds_bucket"), "{metrics}");
    server.shutdown().await.unwrap();
}

/// A plain HTTP/1.1 GET with curl, the way an operator scrapes the admin port.
async fn reqwest_get(addr: SocketAddr, path: &str) -> String {
    let url = format!("http://{addr}{path}");
    let output = tokio::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "curl {url} failed");
    String::from_utf8(output.stdout).unwrap()
}
