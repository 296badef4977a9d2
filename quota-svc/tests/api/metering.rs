//! kit::metering::QuotaMeter, the Rust backends' client, against quota-svc.

use kit::metering::QuotaMeter;
use uuid::Uuid;

use super::harness::QuotaServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_charges_its_user_and_refunds_failed_work() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("analysis.runs", Some(2))], 1).await;
    let meter = QuotaMeter::new(quota.server.channel.clone(), &quota.backend_key).unwrap();

    let first = meter
        .consume(user, "analysis.runs", 1, "req-1")
        .await
        .unwrap();
    assert!(first.allowed && first.usage_id.is_some() && !first.replayed);
    assert_eq!(first.remaining, 1);
    assert!(
        meter
            .consume(user, "analysis.runs", 1, "req-1")
            .await
            .unwrap()
            .replayed
    );
    assert!(
        meter
            .consume(user, "analysis.runs", 1, "req-2")
            .await
            .unwrap()
            .allowed
    );
    let over = meter
        .consume(user, "analysis.runs", 1, "req-3")
        .await
        .unwrap();
    assert!(!over.allowed && over.resets_at.is_some());

    // The work of req-2 failed: refund once, and the unit is available again.
    assert!(meter.refund(user, "req-2").await.unwrap());
    assert!(!meter.refund(user, "req-2").await.unwrap());
    assert!(
        meter
            .consume(user, "analysis.runs", 1, "req-3")
            .await
            .unwrap()
            .allowed
    );

    let status = meter
        .consume(user, "analysis.runs", 0, "req-4")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
