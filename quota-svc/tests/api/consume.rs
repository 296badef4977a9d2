//! Consume, Refund, rollover, entitlements, validation and permissions.

use chrono::{Datelike, TimeDelta};
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use kit::testing::{with_api_key, with_bearer};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, ApplyEntitlementsRequest, CheckQuotaRequest, ConsumeRequest,
    RefundRequest, ResetQuotaRequest,
};
use quota_svc::{
    SPEC,
    domain::{
        batch::{Decision, Request as BatchRequest},
        consumer::{Consumer, SignedInWith},
    },
    store::consume::{BatchError, Keys, Pending, consume_batch},
};
use tonic::Code;
use uuid::Uuid;

use super::harness::{QuotaServer, metric_limits};

async fn grant_concurrently(quota: &QuotaServer, subject: Uuid, calls: usize) -> usize {
    let results = join_all((0..calls).map(|i| {
        let client = quota.client();
        let request = quota.as_service(ConsumeRequest {
            metric: "api.calls".to_owned(),
            subject: subject.to_string(),
            amount: None,
            idempotency_key: format!("call-{i}"),
            attributes: None,
        });
        async move {
            let mut client = client;
            client.consume(request).await.unwrap().into_inner().allowed
        }
    }))
    .await;
    results.into_iter().filter(|allowed| *allowed).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_consumes_grant_exactly_the_limit() {
    for workers in [4, 0] {
        let quota = QuotaServer::start_with(workers).await;
        let subject = Uuid::now_v7();
        quota.plan(subject, &[("api.calls", Some(100))], 1).await;
        assert_eq!(
            grant_concurrently(&quota, subject, 500).await,
            100,
            "workers {workers}"
        );
        assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 100);
        assert_eq!(
            quota.count("SELECT count(*) AS n FROM usage_events").await,
            100
        );
        assert_eq!(
            quota
                .count("SELECT count(*) AS n FROM idempotency_keys")
                .await,
            100
        );
    }
}

/// A retry must replay even when the call it repeats used the last of the quota (a new call
/// would be denied), and a reused key is refused even for a metric without entitlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_when_no_room_is_left() {
    for workers in [4, 0] {
        let quota = QuotaServer::start_with(workers).await;
        let subject = Uuid::now_v7();
        quota.plan(subject, &[("api.calls", Some(3))], 1).await;
        let first = quota
            .consume(subject, "api.calls", 3, "last")
            .await
            .unwrap();
        assert!(first.allowed && !first.replayed, "workers {workers}");
        let retry = quota
            .consume(subject, "api.calls", 3, "last")
            .await
            .unwrap();
        assert!(retry.allowed && retry.replayed, "workers {workers}");
        assert_eq!(retry.usage_id, first.usage_id);
        let denied = quota
            .consume(subject, "api.calls", 1, "next")
            .await
            .unwrap();
        assert!(!denied.allowed && !denied.replayed, "workers {workers}");
        let reused = quota
            .consume(subject, "no.such.metric", 3, "last")
            .await
            .unwrap_err();
        assert_eq!(reused.code(), Code::AlreadyExists, "workers {workers}");
        assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 3);
    }
}

/// A batch that meets recorded keys: the attempt that assumes new keys fails and writes nothing;
/// the one that looks them up replays them and decides the rest as if one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_meeting_recorded_keys_rolls_back_then_replays_them() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(10))], 1).await;
    // Consumed by the subject itself, as the batch below: a replay answers only its consumer.
    let old = ConsumeRequest {
        metric: "api.calls".to_owned(),
        subject: String::new(),
        amount: Some(2),
        idempotency_key: "old".to_owned(),
        attributes: None,
    };
    let old = quota
        .client()
        .consume(quota.as_user(subject, old))
        .await
        .unwrap()
        .into_inner();
    let pending = |key: &str, amount: i64| Pending {
        request: BatchRequest {
            subject,
            metric: "api.calls".to_owned(),
            amount,
            idempotency_key: key.to_owned(),
            consumer: Consumer {
                principal: subject,
                with: SignedInWith::Session,
            },
        },
        attributes: None,
    };
    let state = async || {
        (
            quota.count("SELECT used AS n FROM entitlements").await,
            quota.count("SELECT count(*) AS n FROM usage_events").await,
        )
    };
    let mut conn = quota.db.connect(SPEC.name).await;
    let now = quota.clock_now();

    // An allowed retry of a recorded key fails the first attempt.
    let batch = [
        pending("new-1", 3),
        pending("old", 2),
        pending("new-1", 3),
        pending("new-2", 9),
        pending("old", 5),
    ];
    let attempt = consume_batch(&mut conn, &batch, now, Keys::AssumeNew).await;
    assert!(matches!(attempt, Err(BatchError::KeyRecorded)));
    assert_eq!(state().await, (2, 1));
    let decisions = consume_batch(&mut conn, &batch, now, Keys::LookUp)
        .await
        .unwrap();
    let Decision::Allowed(new_1) = &decisions[0] else {
        panic!("{decisions:?}")
    };
    assert_eq!(new_1.used, 5);
    assert!(
        matches!(&decisions[1], Decision::Replayed(r) if r.usage_id.to_string() == old.usage_id)
    );
    assert!(matches!(&decisions[2], Decision::Replayed(r) if r.usage_id == new_1.usage_id));
    assert!(matches!(&decisions[3], Decision::Denied { .. }));
    assert!(matches!(&decisions[4], Decision::KeyReused));
    assert_eq!(state().await, (5, 2));

    // A retry that would now be denied (no room) fails the first attempt too.
    let batch = [pending("fill", 5), pending("new-1", 3)];
    let attempt = consume_batch(&mut conn, &batch, now, Keys::AssumeNew).await;
    assert!(matches!(attempt, Err(BatchError::KeyRecorded)));
    assert_eq!(state().await, (5, 2));
    let decisions = consume_batch(&mut conn, &batch, now, Keys::LookUp)
        .await
        .unwrap();
    assert!(matches!(&decisions[0], Decision::Allowed(r) if r.used == 10));
    assert!(matches!(&decisions[1], Decision::Replayed(r) if r.usage_id == new_1.usage_id));
    assert_eq!(state().await, (10, 3));

    // The lock and the write stayed prepared on the connection through all these batches, and
    // the connection plans each call with its values.
    let prepared: Setting = diesel::sql_query(
        "SELECT count(*)::text AS value FROM pg_prepared_statements \
         WHERE (statement LIKE '%FOR UPDATE) e' OR statement LIKE 'WITH counters AS%') \
           AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(prepared.value, "2");
    let mode: Setting = diesel::sql_query("SELECT current_setting('plan_cache_mode') AS value")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode.value, "force_custom_plan");
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

/// Falling back to the free tier mid-month (a cancelled plan) keeps the month's usage, so the
/// month's free allowance is not handed out twice; refunded units do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_plan_falls_back_to_the_free_tier_with_the_months_usage() {
    let quota = QuotaServer::start().await;
    quota.defaults(&[("api.calls", Some(5))], 1).await;
    let quota_of = async |subject: Uuid| {
        let check = CheckQuotaRequest {
            metric: "api.calls".to_owned(),
            subject: subject.to_string(),
        };
        let counter = quota
            .client()
            .check_quota(quota.as_service(check))
            .await
            .unwrap()
            .into_inner()
            .quota
            .unwrap();
        (counter.limit, counter.used, counter.remaining)
    };

    let allowed = async |subject: Uuid, amount: i64, key: &str| {
        quota
            .consume(subject, "api.calls", amount, key)
            .await
            .unwrap()
            .allowed
    };

    // Three free units, then a plan (four units), then the plan is cancelled: the free tier
    // shows the month's seven units, capped at its five, and denies.
    let heavy = Uuid::now_v7();
    assert!(allowed(heavy, 3, "free-1").await);
    quota.plan(heavy, &[("api.calls", Some(100))], 1).await;
    assert!(allowed(heavy, 4, "paid-1").await);
    quota.plan(heavy, &[], 2).await;
    assert_eq!(quota_of(heavy).await, (5, 5, 0));
    assert!(!allowed(heavy, 1, "after").await);
    assert_eq!(quota_of(heavy).await, (5, 5, 0));

    // One free unit and two paid units, one of them refunded: two of five are used.
    let light = Uuid::now_v7();
    assert!(allowed(light, 1, "free-1").await);
    quota.plan(light, &[("api.calls", Some(100))], 1).await;
    assert!(allowed(light, 1, "paid-1").await);
    assert!(allowed(light, 1, "paid-2").await);
    let refund = RefundRequest {
        idempotency_key: "paid-2".to_owned(),
        subject: light.to_string(),
        ..Default::default()
    };
    quota
        .client()
        .refund(quota.as_service(refund))
        .await
        .unwrap();
    quota.plan(light, &[], 2).await;
    assert_eq!(quota_of(light).await, (5, 2, 3));
    assert!(allowed(light, 3, "after").await);
    assert_eq!(quota_of(light).await, (5, 5, 0));
    assert!(!allowed(light, 1, "more").await);
}

/// A plan used past the free allowance, then cancelled: refunds of its consumptions give back
/// only what the month's usage before the fallback, capped at the free limit, drops by; whether
/// the plan period ended with the month or not. After a reset by support they give nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_after_falling_back_to_the_free_tier_follow_the_capped_month_usage() {
    let quota = QuotaServer::start().await;
    quota.defaults(&[("api.calls", Some(5))], 1).await;
    let now = quota.clock_now();
    let (month_start, month_end) = quota_svc::domain::period::month_of(now);
    // Twelve units on a plan, which then ends: the free tier of five starts full.
    let twelve_on_a_plan = async |plan_end| {
        let subject = Uuid::now_v7();
        let plan = ApplyEntitlementsRequest {
            subject: subject.to_string(),
            plan_code: "pro".to_owned(),
            limits: metric_limits(&[("api.calls", Some(100))]),
            period_start: Some(kit::convert::timestamp(month_start)),
            period_end: Some(kit::convert::timestamp(plan_end)),
            version: 1,
        };
        quota
            .client()
            .apply_entitlements(quota.as_service(plan))
            .await
            .unwrap();
        for key in ["paid-1", "paid-2", "paid-3"] {
            assert!(
                quota
                    .consume(subject, "api.calls", 4, key)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        quota.clock.advance(TimeDelta::milliseconds(1));
        quota.plan(subject, &[], 2).await;
        assert!(
            !quota
                .consume(subject, "api.calls", 1, "free-1")
                .await
                .unwrap()
                .allowed
        );
        subject
    };
    let refund = async |subject: Uuid, key: &str| {
        let request = RefundRequest {
            idempotency_key: key.to_owned(),
            subject: subject.to_string(),
            ..Default::default()
        };
        let refunded = quota.client().refund(quota.as_service(request)).await;
        refunded.unwrap().into_inner().quota.unwrap().used
    };

    for plan_end in [month_end, now + TimeDelta::days(3)] {
        let subject = twelve_on_a_plan(plan_end).await;
        // Eight units left: still over the cap, nothing to give back.
        assert_eq!(refund(subject, "paid-1").await, 5, "plan ending {plan_end}");
        // Four left, then none.
        assert_eq!(refund(subject, "paid-2").await, 4, "plan ending {plan_end}");
        assert_eq!(refund(subject, "paid-3").await, 0, "plan ending {plan_end}");
        assert!(
            quota
                .consume(subject, "api.calls", 5, "free-2")
                .await
                .unwrap()
                .allowed
        );
        // The free tier's own consumption comes back whole.
        assert_eq!(refund(subject, "free-2").await, 0, "plan ending {plan_end}");
    }

    let subject = twelve_on_a_plan(month_end).await;
    quota.clock.advance(TimeDelta::milliseconds(1));
    let reset = ResetQuotaRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_string(),
    };
    let admin = quota.issuer.token(Uuid::now_v7(), &["admin"]);
    let as_admin = with_bearer(&admin, reset);
    quota.client().reset_quota(as_admin).await.unwrap();
    assert!(
        quota
            .consume(subject, "api.calls", 5, "free-2")
            .await
            .unwrap()
            .allowed
    );
    for key in ["paid-1", "paid-2", "paid-3"] {
        assert_eq!(
            refund(subject, key).await,
            5,
            "{key} was forgiven by the reset"
        );
    }
    assert_eq!(refund(subject, "free-2").await, 0);
}

/// One transaction per call: concurrent retries of one key race to record it; the losers roll
/// back and replay the winner's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_of_one_key_consume_once_without_batching() {
    let quota = QuotaServer::start_with(0).await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(100))], 1).await;
    let answers = join_all((0..40).map(|_| quota.consume(subject, "api.calls", 3, "job-7"))).await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|answer| answer.usage_id.as_str())
        .collect();
    assert_eq!(ids.len(), 1);
    assert!(
        answers
            .iter()
            .all(|answer| answer.allowed && answer.used == 3)
    );
    assert_eq!(answers.iter().filter(|answer| !answer.replayed).count(), 1);
    assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 3);
    assert_eq!(
        quota.count("SELECT count(*) AS n FROM usage_events").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_key_consume_once() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(10))], 1).await;
    let first = quota
        .consume(subject, "api.calls", 3, "order-1")
        .await
        .unwrap();
    assert!(first.allowed && !first.replayed);
    assert_eq!((first.used, first.remaining, first.limit), (3, 7, 10));
    // Sequential and concurrent retries replay the first answer.
    let again = quota
        .consume(subject, "api.calls", 3, "order-1")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.usage_id.as_str(), again.used),
        (first.usage_id.as_str(), 3)
    );
    let concurrent =
        join_all((0..50).map(|_| quota.consume(subject, "api.calls", 2, "order-2"))).await;
    let ids: std::collections::BTreeSet<String> = concurrent
        .into_iter()
        .map(|r| r.unwrap().usage_id)
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 5);
    // Another amount or metric with a used key is refused.
    let reused = quota
        .consume(subject, "api.calls", 4, "order-1")
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().starts_with("idempotency_key"));
    // The same key for another subject is another request.
    let other = Uuid::now_v7();
    quota.plan(other, &[("api.calls", Some(10))], 1).await;
    assert!(
        !quota
            .consume(other, "api.calls", 3, "order-1")
            .await
            .unwrap()
            .replayed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_and_unknown_metrics_are_denied_not_errors() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota
        .plan(subject, &[("api.calls", Some(2)), ("storage", None)], 1)
        .await;
    assert!(
        quota
            .consume(subject, "api.calls", 2, "a")
            .await
            .unwrap()
            .allowed
    );
    let denied = quota.consume(subject, "api.calls", 1, "b").await.unwrap();
    assert!(!denied.allowed && denied.usage_id.is_empty());
    assert_eq!((denied.used, denied.remaining), (2, 0));
    assert!(denied.resets_at.is_some());
    // A denied key is not remembered: the same key may succeed after a refund.
    let unlimited = quota
        .consume(subject, "storage", 1_000_000, "c")
        .await
        .unwrap();
    assert!(unlimited.allowed && unlimited.unlimited);
    let unknown = quota
        .consume(subject, "nothing.here", 1, "d")
        .await
        .unwrap();
    assert!(!unknown.allowed);
    assert_eq!(
        quota.count("SELECT count(*) AS n FROM usage_events").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_past_i64_max_are_denied_and_the_shard_keeps_serving() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota
        .plan(subject, &[("storage", None), ("api.calls", Some(10))], 1)
        .await;
    let first = quota
        .consume(subject, "storage", i64::MAX - 1, "a")
        .await
        .unwrap();
    assert!(first.allowed && first.unlimited);
    // The same subject's shard decides these; an overflow used to kill its worker.
    let over = quota.consume(subject, "storage", 2, "b").await.unwrap();
    assert!(!over.allowed && over.unlimited, "{over:?}");
    assert_eq!(over.used, i64::MAX - 1);
    let last = quota.consume(subject, "storage", 1, "c").await.unwrap();
    assert!(last.allowed);
    assert_eq!(last.used, i64::MAX);
    assert!(
        quota
            .consume(subject, "api.calls", 1, "d")
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        quota
            .count("SELECT used AS n FROM entitlements WHERE metric = 'storage'")
            .await,
        i64::MAX
    );
    assert_eq!(
        quota.count("SELECT count(*) AS n FROM usage_events").await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_give_back_once() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(10))], 1).await;
    let consumed = quota
        .consume(subject, "api.calls", 4, "job-1")
        .await
        .unwrap();
    quota
        .consume(subject, "api.calls", 1, "job-2")
        .await
        .unwrap();
    let by_id = RefundRequest {
        usage_id: consumed.usage_id.clone(),
        subject: subject.to_string(),
        ..Default::default()
    };
    let refunded = quota
        .client()
        .refund(quota.as_service(by_id.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!refunded.already_refunded);
    assert_eq!(refunded.refunded_amount, 4);
    assert_eq!(refunded.quota.unwrap().used, 1);
    let by_key = RefundRequest {
        idempotency_key: "job-1".to_owned(),
        subject: subject.to_string(),
        ..Default::default()
    };
    let twice = quota
        .client()
        .refund(quota.as_service(by_key))
        .await
        .unwrap()
        .into_inner();
    assert!(twice.already_refunded);
    assert_eq!(twice.quota.unwrap().used, 1);
    assert_eq!(
        quota
            .count("SELECT count(*) AS n FROM usage_events WHERE kind = 'refund'")
            .await,
        1
    );
    let missing = RefundRequest {
        usage_id: Uuid::now_v7().to_string(),
        subject: subject.to_string(),
        ..Default::default()
    };
    let status = quota
        .client()
        .refund(quota.as_service(missing))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let both = RefundRequest {
        idempotency_key: "job-2".to_owned(),
        ..by_id
    };
    let status = quota
        .client()
        .refund(quota.as_service(both))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periods_roll_over_on_the_first_call_after_their_end() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    // A two-day plan period around now.
    quota.plan(subject, &[("api.calls", Some(3))], 1).await;
    assert!(
        quota
            .consume(subject, "api.calls", 3, "a")
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !quota
            .consume(subject, "api.calls", 1, "b")
            .await
            .unwrap()
            .allowed
    );
    let first_end = quota
        .consume(subject, "api.calls", 1, "b")
        .await
        .unwrap()
        .resets_at
        .unwrap();
    // Seven days later (periods of two days): one call starts the period containing now,
    // four periods after the first.
    quota.clock.advance(TimeDelta::days(7));
    let rolled = quota.consume(subject, "api.calls", 1, "b").await.unwrap();
    assert!(rolled.allowed);
    assert_eq!(rolled.used, 1);
    assert_eq!(
        rolled.resets_at.unwrap().seconds - first_end.seconds,
        8 * 86_400
    );

    // Default tier: calendar months.
    quota.defaults(&[("free.calls", Some(2))], 1).await;
    let free = Uuid::now_v7();
    assert!(
        quota
            .consume(free, "free.calls", 2, "x")
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !quota
            .consume(free, "free.calls", 1, "y")
            .await
            .unwrap()
            .allowed
    );
    let now = quota.clock_now();
    let next_month = quota_svc::domain::period::month_of(now).1;
    quota.clock.set(next_month + TimeDelta::hours(1));
    let renewed = quota.consume(free, "free.calls", 1, "y").await.unwrap();
    assert!(renewed.allowed);
    let resets = chrono::DateTime::from_timestamp(renewed.resets_at.unwrap().seconds, 0).unwrap();
    assert_eq!(resets.day(), 1);
    assert_eq!(resets, quota_svc::domain::period::month_of(next_month).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entitlement_versions_are_ignored() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(100))], 5).await;
    let now = quota.clock_now();
    let stale = ApplyEntitlementsRequest {
        subject: subject.to_string(),
        plan_code: "old".to_owned(),
        limits: metric_limits(&[("api.calls", Some(1))]),
        period_start: Some(kit::convert::timestamp(now)),
        period_end: Some(kit::convert::timestamp(now + TimeDelta::days(30))),
        version: 4,
    };
    let response = quota
        .client()
        .apply_entitlements(quota.as_service(stale.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.applied);
    assert_eq!(response.version, 5);
    let check = CheckQuotaRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_string(),
    };
    let checked = quota
        .client()
        .check_quota(quota.as_service(check.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.quota.unwrap().limit, 100);
    // A newer version applies; removing the plan falls back to the defaults (none: NOT_FOUND).
    let newer = ApplyEntitlementsRequest {
        version: 6,
        ..stale
    };
    assert!(
        quota
            .client()
            .apply_entitlements(quota.as_service(newer))
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    let checked = quota
        .client()
        .check_quota(quota.as_service(check.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.quota.unwrap().limit, 1);
    let removed = ApplyEntitlementsRequest {
        subject: subject.to_string(),
        version: 7,
        ..Default::default()
    };
    quota
        .client()
        .apply_entitlements(quota.as_service(removed))
        .await
        .unwrap();
    let status = quota
        .client()
        .check_quota(quota.as_service(check))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(100))], 1).await;
    let good = ConsumeRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_string(),
        amount: Some(1),
        idempotency_key: "k".to_owned(),
        attributes: None,
    };
    let huge = prost_types::Struct {
        fields: [(
            "blob".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(5000))),
            },
        )]
        .into(),
    };
    let nul_value = attributes(&[("file", string("a\0.pdf"))]);
    let nul_key = attributes(&[("fi\0le", string("a.pdf"))]);
    let nested_nul = attributes(&[(
        "outer",
        prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: vec![string("x"), string("\0")],
                },
            )),
        },
    )]);
    let cases = [
        (
            "amount",
            ConsumeRequest {
                amount: Some(0),
                ..good.clone()
            },
        ),
        (
            "amount",
            ConsumeRequest {
                amount: Some(-5),
                ..good.clone()
            },
        ),
        (
            "metric",
            ConsumeRequest {
                metric: String::new(),
                ..good.clone()
            },
        ),
        (
            "metric",
            ConsumeRequest {
                metric: "Bad Metric".to_owned(),
                ..good.clone()
            },
        ),
        (
            "idempotency_key",
            ConsumeRequest {
                idempotency_key: String::new(),
                ..good.clone()
            },
        ),
        (
            "idempotency_key",
            ConsumeRequest {
                idempotency_key: "k".repeat(129),
                ..good.clone()
            },
        ),
        (
            "attributes",
            ConsumeRequest {
                attributes: Some(huge),
                ..good.clone()
            },
        ),
        (
            "subject",
            ConsumeRequest {
                subject: "not-a-uuid".to_owned(),
                ..good.clone()
            },
        ),
        // PostgreSQL text and jsonb cannot hold NUL.
        (
            "idempotency_key",
            ConsumeRequest {
                idempotency_key: "k\0".to_owned(),
                ..good.clone()
            },
        ),
        (
            "metric",
            ConsumeRequest {
                metric: "api.calls\0".to_owned(),
                ..good.clone()
            },
        ),
        (
            "attributes",
            ConsumeRequest {
                attributes: Some(nul_value),
                ..good.clone()
            },
        ),
        (
            "attributes",
            ConsumeRequest {
                attributes: Some(nul_key),
                ..good.clone()
            },
        ),
        (
            "attributes",
            ConsumeRequest {
                attributes: Some(nested_nul),
                ..good.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let status = quota
            .client()
            .consume(quota.as_service(request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 0);
    assert_eq!(
        quota.count("SELECT count(*) AS n FROM usage_events").await,
        0
    );
    assert_eq!(
        quota
            .count("SELECT count(*) AS n FROM idempotency_keys")
            .await,
        0
    );
    assert!(
        quota
            .client()
            .consume(quota.as_service(good))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
}

fn string(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

fn attributes(fields: &[(&str, prost_types::Value)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_nul_is_refused_alone_not_with_its_batch() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(1000))], 1).await;
    let request = |i: usize| ConsumeRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_string(),
        amount: None,
        idempotency_key: format!("good-{i}"),
        attributes: Some(attributes(&[("n", string(&i.to_string()))])),
    };
    // The same subject shares a shard, so the bad requests land in the good ones' batches.
    let bad = [
        ConsumeRequest {
            idempotency_key: "bad\0key".to_owned(),
            ..request(0)
        },
        ConsumeRequest {
            idempotency_key: "bad-attributes".to_owned(),
            attributes: Some(attributes(&[("file", string("a\0.pdf"))])),
            ..request(0)
        },
    ];
    let good = (0..300).map(|i| (true, request(i)));
    let all: Vec<(bool, ConsumeRequest)> = good
        .clone()
        .take(150)
        .chain(bad.into_iter().map(|request| (false, request)))
        .chain(good.skip(150))
        .collect();
    let results = join_all(all.into_iter().map(|(is_good, request)| {
        let mut client = quota.client();
        let request = quota.as_service(request);
        async move { (is_good, client.consume(request).await) }
    }))
    .await;
    for (is_good, result) in results {
        if is_good {
            assert!(result.unwrap().into_inner().allowed);
        } else {
            assert_eq!(result.unwrap_err().code(), Code::InvalidArgument);
        }
    }
    assert_eq!(quota.count("SELECT used AS n FROM entitlements").await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_and_services_name_other_subjects() {
    let quota = QuotaServer::start().await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    quota.plan(alice, &[("api.calls", Some(10))], 1).await;
    quota.plan(bob, &[("api.calls", Some(10))], 1).await;
    let request = |subject: &str| ConsumeRequest {
        metric: "api.calls".to_owned(),
        subject: subject.to_owned(),
        amount: None,
        idempotency_key: Uuid::now_v7().to_string(),
        attributes: None,
    };
    // A user consumes its own quota (empty subject or its own id), not another's.
    assert!(
        quota
            .client()
            .consume(quota.as_user(alice, request("")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let status = quota
        .client()
        .consume(quota.as_user(alice, request(&bob.to_string())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // An admin may.
    let admin = quota.issuer.token(Uuid::now_v7(), &["admin"]);
    let as_admin = with_bearer(&admin, request(&bob.to_string()));
    assert!(
        quota
            .client()
            .consume(as_admin)
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // An API key without `quota:consume` may not consume; a plain user key not for others.
    let reader = quota.issuer.add_api_key(alice, &["quota:read"], &[]);
    let status = quota
        .client()
        .consume(with_api_key(&reader, request("")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let consumer = quota.issuer.add_api_key(alice, &["quota:consume"], &[]);
    let status = quota
        .client()
        .consume(with_api_key(&consumer, request(&bob.to_string())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Entitlements are for services, resets for admins; no credentials is UNAUTHENTICATED.
    let apply = ApplyEntitlementsRequest {
        subject: alice.to_string(),
        version: 9,
        ..Default::default()
    };
    let status = quota
        .client()
        .apply_entitlements(quota.as_user(alice, apply))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let reset = ResetQuotaRequest {
        metric: "api.calls".to_owned(),
        subject: alice.to_string(),
    };
    let status = quota
        .client()
        .reset_quota(quota.as_service(reset.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let as_admin = with_bearer(&admin, reset);
    assert_eq!(
        quota
            .client()
            .reset_quota(as_admin)
            .await
            .unwrap()
            .into_inner()
            .quota
            .unwrap()
            .used,
        0
    );
    let status = quota.client().consume(request("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let expired = quota.issuer.expired_token(alice);
    let late = with_bearer(&expired, request(""));
    assert_eq!(
        quota.client().consume(late).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_key_charges_users_but_cannot_set_entitlements() {
    let quota = QuotaServer::start().await;
    let user = Uuid::now_v7();
    quota.plan(user, &[("api.calls", Some(10))], 1).await;
    let backend = &quota.backend_key;
    // Role `service` with `quota:consume` (no `service` scope) consumes, refunds and reads
    // for its users.
    let consumed = quota
        .client()
        .consume(with_api_key(
            backend,
            ConsumeRequest {
                metric: "api.calls".to_owned(),
                subject: user.to_string(),
                amount: Some(3),
                idempotency_key: "job-1".to_owned(),
                attributes: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(consumed.allowed);
    let refund = RefundRequest {
        idempotency_key: "job-1".to_owned(),
        subject: user.to_string(),
        ..Default::default()
    };
    assert_eq!(
        quota
            .client()
            .refund(with_api_key(backend, refund))
            .await
            .unwrap()
            .into_inner()
            .refunded_amount,
        3
    );
    let check = CheckQuotaRequest {
        metric: "api.calls".to_owned(),
        subject: user.to_string(),
    };
    assert_eq!(
        quota
            .client()
            .check_quota(with_api_key(backend, check.clone()))
            .await
            .unwrap()
            .into_inner()
            .quota
            .unwrap()
            .used,
        0
    );
    // The internal RPCs still need the `service` scope.
    let apply = ApplyEntitlementsRequest {
        subject: user.to_string(),
        version: 9,
        ..Default::default()
    };
    let status = quota
        .client()
        .apply_entitlements(with_api_key(backend, apply))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let defaults = ApplyDefaultEntitlementsRequest {
        limits: metric_limits(&[("api.calls", Some(1))]),
        version: 1,
    };
    let status = quota
        .client()
        .apply_default_entitlements(with_api_key(backend, defaults))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A service account's key without `quota:consume` does not name users.
    let reader = quota
        .issuer
        .add_api_key(Uuid::now_v7(), &["quota:read"], &["service"]);
    let status = quota
        .client()
        .check_quota(with_api_key(&reader, check))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_the_batch_with_unavailable() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(10))], 1).await;
    // Terminating the service's connections makes the next batch fail mid-flight.
    let mut conn = quota.db.connect("quota").await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ),
        &mut conn,
    )
    .await
    .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let results = join_all(
        keys.iter()
            .map(|key| quota.consume(subject, "api.calls", 1, key)),
    )
    .await;
    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }
    let granted = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.allowed))
        .count();
    assert_eq!(
        quota.count("SELECT used AS n FROM entitlements").await,
        i64::try_from(granted).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_after_a_day_and_the_end_of_their_period() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    // The plan period ends one day from now.
    quota.plan(subject, &[("api.calls", Some(10))], 1).await;
    let old = quota.consume(subject, "api.calls", 1, "old").await.unwrap();
    let kept = quota
        .consume(subject, "api.calls", 1, "kept")
        .await
        .unwrap();
    let start = quota.clock_now();
    let mut conn = quota.db.connect("quota").await;
    let expire = quota_svc::store::usage::delete_expired_keys;
    let refund = |usage_id: String| {
        let request = quota.as_service(RefundRequest {
            usage_id,
            subject: subject.to_string(),
            ..Default::default()
        });
        let mut client = quota.client();
        async move { client.refund(request).await }
    };
    // 23 hours later: younger than the retention, so still refundable.
    assert_eq!(
        expire(&mut conn, start + TimeDelta::hours(23))
            .await
            .unwrap(),
        0
    );
    quota.clock.advance(TimeDelta::hours(23));
    assert_eq!(
        refund(kept.usage_id)
            .await
            .unwrap()
            .into_inner()
            .refunded_amount,
        1
    );
    // 25 hours later: old enough and their period (ending at +24 h) is over.
    assert_eq!(
        expire(&mut conn, start + TimeDelta::hours(25))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        quota
            .count("SELECT count(*) AS n FROM idempotency_keys")
            .await,
        0
    );
    // The usage record stays in the history, but the refund window has closed, and says so.
    let status = refund(old.usage_id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status
            .message()
            .contains("at least 24 h and until the end of the period"),
        "{}",
        status.message()
    );
    assert_eq!(
        quota
            .count("SELECT count(*) AS n FROM usage_events WHERE kind = 'consume'")
            .await,
        2
    );
}
