//! Who may refund a consumption: the caller that made it (the same user or service account), a
//! service or an admin. Every user session holds `quota:consume` and its usage log shows usage
//! ids and keys, so without this a user refunds what a backend charged them.

use diesel::sql_query;
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use kit::testing::{with_api_key, with_bearer};
use proto::quota::{CheckQuotaRequest, ConsumeRequest, RefundRequest, RefundResponse};
use quota_svc::SPEC;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use super::harness::QuotaServer;

/// A key of the service account `account`, as a backend holds it.
fn backend_key_of(quota: &QuotaServer, account: Uuid) -> String {
    quota
        .issuer
        .add_api_key(account, &["quota:consume", "quota:read"], &["service"])
}

fn consume(subject: &str, amount: i64, key: &str) -> ConsumeRequest {
    ConsumeRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_owned(),
        amount: Some(amount),
        idempotency_key: key.to_owned(),
        attributes: None,
    }
}

fn by_id(usage_id: &str) -> RefundRequest {
    RefundRequest {
        usage_id: usage_id.to_owned(),
        ..Default::default()
    }
}

fn by_key(subject: Uuid, key: &str) -> RefundRequest {
    RefundRequest {
        idempotency_key: key.to_owned(),
        subject: subject.to_string(),
        ..Default::default()
    }
}

async fn refund(
    quota: &QuotaServer,
    request: Request<RefundRequest>,
) -> Result<RefundResponse, Status> {
    quota
        .client()
        .refund(request)
        .await
        .map(tonic::Response::into_inner)
}

/// `used` of the user's `api.calls`, the refund events and the refunded keys.
async fn state(quota: &QuotaServer, user: Uuid) -> (i64, i64, i64) {
    let check = CheckQuotaRequest {
        metric: "api.calls".to_owned(),
        subject: user.to_string(),
    };
    let used = quota
        .client()
        .check_quota(quota.as_service(check))
        .await
        .unwrap()
        .into_inner()
        .quota
        .unwrap()
        .used;
    let refunds = quota
        .count("SELECT count(*) AS n FROM usage_events WHERE kind = 'refund'")
        .await;
    let refunded = quota
        .count("SELECT count(*) AS n FROM idempotency_keys WHERE refunded_at IS NOT NULL")
        .await;
    (used, refunds, refunded)
}

fn assert_refused(outcome: Result<RefundResponse, Status>) {
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("only the caller that made this consumption"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_refund_what_a_backend_charged_them() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let account = Uuid::now_v7();
    let backend = backend_key_of(&quota, account);
    let charged = quota
        .client()
        .consume(with_api_key(
            &backend,
            consume(&user.to_string(), 3, "job-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(charged.allowed);
    assert_eq!(state(&quota, user).await, (3, 0, 0));

    // The user's session, and the user's own key with `quota:consume`, by usage id (as
    // ListUsageEvents shows it) and by key: refused, nothing changes.
    let session = quota.issuer.token(user, &[]);
    let own_key = quota.issuer.add_api_key(user, &["quota:consume"], &[]);
    assert_refused(refund(&quota, with_bearer(&session, by_id(&charged.usage_id))).await);
    assert_refused(refund(&quota, with_bearer(&session, by_key(user, "job-1"))).await);
    assert_refused(refund(&quota, with_api_key(&own_key, by_id(&charged.usage_id))).await);
    assert_eq!(state(&quota, user).await, (3, 0, 0));

    // Another key of the same service account refunds it...
    let refunded = refund(
        &quota,
        with_api_key(&backend_key_of(&quota, account), by_key(user, "job-1")),
    )
    .await
    .unwrap();
    assert_eq!(
        (refunded.refunded_amount, refunded.already_refunded),
        (3, false)
    );
    assert_eq!(state(&quota, user).await, (0, 1, 1));
    // ...and a replay by the user is refused too, not reported as already refunded.
    assert_refused(refund(&quota, with_bearer(&session, by_key(user, "job-1"))).await);
    assert_eq!(state(&quota, user).await, (0, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_backend_cannot_refund_what_a_backend_charged() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let backend = &quota.backend_key;
    let charged = quota
        .client()
        .consume(with_api_key(
            backend,
            consume(&user.to_string(), 2, "job-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(charged.allowed);
    let other = backend_key_of(&quota, Uuid::now_v7());
    let refund_1 = RefundRequest {
        subject: user.to_string(),
        ..by_id(&charged.usage_id)
    };
    assert_refused(refund(&quota, with_api_key(&other, refund_1.clone())).await);
    assert_eq!(state(&quota, user).await, (2, 0, 0));
    // The same key refunds it.
    let refunded = refund(&quota, with_api_key(backend, refund_1))
        .await
        .unwrap();
    assert_eq!(refunded.refunded_amount, 2);
    assert_eq!(state(&quota, user).await, (0, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_or_an_admin_refunds_what_a_backend_charged() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    for key in ["job-1", "job-2"] {
        let charged = quota
            .client()
            .consume(with_api_key(
                &quota.backend_key,
                consume(&user.to_string(), 2, key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(charged.allowed);
    }
    let by_service = refund(&quota, quota.as_service(by_key(user, "job-1")))
        .await
        .unwrap();
    assert_eq!(by_service.refunded_amount, 2);
    let admin = quota.issuer.token(Uuid::now_v7(), &["admin"]);
    let by_admin = refund(&quota, with_bearer(&admin, by_key(user, "job-2")))
        .await
        .unwrap();
    assert_eq!(by_admin.refunded_amount, 2);
    assert_eq!(state(&quota, user).await, (0, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refunds_what_they_consumed_themselves() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let session = quota.issuer.token(user, &[]);
    let own_key = quota.issuer.add_api_key(user, &["quota:consume"], &[]);
    let with_session = quota
        .client()
        .consume(with_bearer(&session, consume("", 1, "upload-1")))
        .await
        .unwrap()
        .into_inner();
    let with_key_of_user = quota
        .client()
        .consume(with_api_key(&own_key, consume("", 2, "upload-2")))
        .await
        .unwrap()
        .into_inner();
    assert!(with_session.allowed && with_key_of_user.allowed);
    assert_eq!(
        quota
            .count(&format!(
                "SELECT count(*) AS n FROM idempotency_keys WHERE consumed_by = '{user}' AND \
             consumed_with = CASE idempotency_key WHEN 'upload-1' THEN 'session' ELSE 'api_key' END"
            ))
            .await,
        2
    );
    // Either of the user's credentials refunds either consumption: they are the same principal.
    let refunded = refund(
        &quota,
        with_api_key(&own_key, by_id(&with_session.usage_id)),
    )
    .await
    .unwrap();
    assert_eq!(refunded.refunded_amount, 1);
    let refunded = refund(&quota, with_bearer(&session, by_key(user, "upload-2")))
        .await
        .unwrap();
    assert_eq!(refunded.refunded_amount, 2);
    assert_eq!(state(&quota, user).await, (0, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_refund_consumptions_made_before_consumers_were_recorded() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let session = quota.issuer.token(user, &[]);
    for key in ["old-1", "old-2"] {
        let consumed = quota
            .client()
            .consume(with_bearer(&session, consume("", 1, key)))
            .await
            .unwrap()
            .into_inner();
        assert!(consumed.allowed);
    }
    // What a row made before the migration looks like.
    sql_query("UPDATE idempotency_keys SET consumed_by = NULL, consumed_with = NULL")
        .execute(&mut quota.db.connect(SPEC.name).await)
        .await
        .unwrap();
    let status = refund(&quota, with_bearer(&session, by_key(user, "old-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("only a service or an admin"),
        "{status:?}"
    );
    assert_eq!(state(&quota, user).await, (2, 0, 0));
    let admin = quota.issuer.token(Uuid::now_v7(), &["admin"]);
    refund(&quota, with_bearer(&admin, by_key(user, "old-1")))
        .await
        .unwrap();
    refund(&quota, quota.as_service(by_key(user, "old-2")))
        .await
        .unwrap();
    assert_eq!(state(&quota, user).await, (0, 2, 2));
}

/// Concurrent charges go through the batch transaction: each records the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_refund_a_batch_of_backend_charges() {
    let quota = QuotaServer::start_with(1).await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(100))], 1).await;
    let account = Uuid::now_v7();
    let backend = backend_key_of(&quota, account);
    let charged = join_all((0..40).map(|i| {
        let mut client = quota.client();
        let request = with_api_key(&backend, consume(&user.to_string(), 1, &format!("job-{i}")));
        async move { client.consume(request).await.unwrap().into_inner() }
    }))
    .await;
    assert!(charged.iter().all(|answer| answer.allowed));
    assert_eq!(
        quota
            .count(&format!(
                "SELECT count(*) AS n FROM idempotency_keys \
             WHERE consumed_by = '{account}' AND consumed_with = 'api_key'"
            ))
            .await,
        40
    );
    let session = quota.issuer.token(user, &[]);
    for answer in &charged {
        assert_refused(refund(&quota, with_bearer(&session, by_id(&answer.usage_id))).await);
    }
    assert_eq!(state(&quota, user).await, (40, 0, 0));
}

/// A user who consumes the key a backend is about to use (say a request id the user chose),
/// refunds it as their own consumption, and then has the backend charge that key, is not
/// answered with a replay: the backend's call is ALREADY_EXISTS and the backend does not do the
/// work for free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_take_a_backends_idempotency_key_to_have_its_charge_replayed() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let account = Uuid::now_v7();
    let backend = backend_key_of(&quota, account);
    let session = quota.issuer.token(user, &[]);
    let taken = quota
        .client()
        .consume(with_bearer(&session, consume("", 1, "req-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(taken.allowed);
    refund(&quota, with_bearer(&session, by_key(user, "req-1")))
        .await
        .unwrap();
    let status = quota
        .client()
        .consume(with_api_key(
            &backend,
            consume(&user.to_string(), 1, "req-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("another caller"), "{status:?}");
    assert_eq!(state(&quota, user).await, (0, 1, 1));

    // The other way round: the user is not answered with the backend's charge either, while
    // another key of the backend's account replays it.
    let charged = quota
        .client()
        .consume(with_api_key(
            &backend,
            consume(&user.to_string(), 2, "job-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(charged.allowed && !charged.replayed);
    let status = quota
        .client()
        .consume(with_bearer(&session, consume("", 2, "job-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let replayed = quota
        .client()
        .consume(with_api_key(
            &backend_key_of(&quota, account),
            consume(&user.to_string(), 2, "job-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(replayed.usage_id, charged.usage_id);
    assert_eq!(state(&quota, user).await, (2, 1, 1));
}
