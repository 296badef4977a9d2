//! Reads (CheckQuota, ListQuotas) come from one statement and a copy of the default tier held
//! by each replica: they never show a stale default tier, and never disagree with the Consume
//! that follows them, whatever path left the subject without a counter.

use chrono::TimeDelta;
use diesel::sql_query;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use proto::quota::{
    CheckQuotaRequest, ListQuotasRequest, QuotaState, quota_service_client::QuotaServiceClient,
};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use super::harness::QuotaServer;

async fn check(
    quota: &QuotaServer,
    client: &mut QuotaServiceClient<Channel>,
    subject: Uuid,
    metric: &str,
) -> Result<QuotaState, tonic::Status> {
    let request = CheckQuotaRequest {
        metric: metric.to_owned(),
        subject: subject.to_string(),
    };
    let response = client.check_quota(quota.as_service(request)).await?;
    Ok(response.into_inner().quota.unwrap())
}

async fn list(
    quota: &QuotaServer,
    client: &mut QuotaServiceClient<Channel>,
    subject: Uuid,
) -> Vec<QuotaState> {
    let request = ListQuotasRequest {
        subject: subject.to_string(),
        ..Default::default()
    };
    let response = client.list_quotas(quota.as_service(request)).await.unwrap();
    response.into_inner().quotas
}

/// What CheckQuota and ListQuotas say of `metric` is what Consume then decides with: the whole
/// `remaining` is allowed and leaves 0, one more unit is denied.
async fn assert_read_agrees_with_consume(quota: &QuotaServer, subject: Uuid, metric: &str) {
    let mut client = quota.client();
    let read = check(quota, &mut client, subject, metric).await.unwrap();
    let listed = list(quota, &mut client, subject).await;
    assert_eq!(
        listed.iter().find(|state| state.metric == metric),
        Some(&read),
        "ListQuotas and CheckQuota differ"
    );
    assert!(!read.unlimited, "{read:?}");
    assert_eq!(read.used + read.remaining, read.limit, "{read:?}");
    let key = Uuid::now_v7().to_string();
    if read.remaining > 0 {
        let consumed = quota
            .consume(subject, metric, read.remaining, &key)
            .await
            .unwrap();
        assert!(consumed.allowed, "the read said {read:?}");
        assert_eq!(consumed.remaining, 0, "the read said {read:?}");
    }
    let more = quota
        .consume(subject, metric, 1, &format!("{key}-more"))
        .await
        .unwrap();
    assert!(!more.allowed, "the read said {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_the_default_tier_another_replica_just_applied() {
    let quota = QuotaServer::start().await;
    let replica = quota.replica().await;
    let mut other = QuotaServiceClient::new(replica.channel.clone());
    let subject = Uuid::now_v7();
    quota
        .defaults(&[("api.calls", Some(5)), ("exports", Some(1))], 1)
        .await;
    // The replica reads, and so holds version 1.
    let before = check(&quota, &mut other, subject, "api.calls")
        .await
        .unwrap();
    assert_eq!((before.limit, before.used), (5, 0));

    quota
        .defaults(&[("api.calls", Some(7)), ("storage", None)], 2)
        .await;
    let after = check(&quota, &mut other, subject, "api.calls")
        .await
        .unwrap();
    assert_eq!((after.limit, after.remaining), (7, 7));
    let removed = check(&quota, &mut other, subject, "exports").await;
    assert_eq!(removed.unwrap_err().code(), Code::NotFound);
    let listed = list(&quota, &mut other, subject).await;
    let metrics: Vec<(&str, i64, bool)> = listed
        .iter()
        .map(|state| (state.metric.as_str(), state.limit, state.unlimited))
        .collect();
    assert_eq!(metrics, [("api.calls", 7, false), ("storage", 0, true)]);

    // A subject with a default counter: the new limit is on the counter itself.
    let counted = Uuid::now_v7();
    assert!(
        quota
            .consume(counted, "api.calls", 6, "six")
            .await
            .unwrap()
            .allowed
    );
    check(&quota, &mut other, counted, "api.calls")
        .await
        .unwrap();
    quota.defaults(&[("api.calls", Some(4))], 3).await;
    let clamped = check(&quota, &mut other, counted, "api.calls")
        .await
        .unwrap();
    assert_eq!((clamped.limit, clamped.used), (4, 4));
    replica.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_agree_with_the_next_consume_on_every_path_to_a_quota() {
    let quota = QuotaServer::start().await;
    quota
        .defaults(&[("api.calls", Some(5)), ("exports", Some(3))], 1)
        .await;

    // Free tier, never consumed: no counter.
    let fresh = Uuid::now_v7();
    assert_read_agrees_with_consume(&quota, fresh, "api.calls").await;

    // Free tier with a counter, part used.
    let partly = Uuid::now_v7();
    quota.consume(partly, "api.calls", 2, "two").await.unwrap();
    assert_read_agrees_with_consume(&quota, partly, "api.calls").await;

    // On a plan.
    let paying = Uuid::now_v7();
    quota.plan(paying, &[("api.calls", Some(40))], 1).await;
    quota.consume(paying, "api.calls", 9, "nine").await.unwrap();
    assert_read_agrees_with_consume(&quota, paying, "api.calls").await;

    // A plan that ends mid-month after 3 units of a free metric and 12 of another: the free
    // tier holds the month's usage up to its limit.
    for (used, metric) in [(3, "exports"), (12, "api.calls")] {
        let lapsed = Uuid::now_v7();
        quota.plan(lapsed, &[(metric, Some(100))], 1).await;
        quota.consume(lapsed, metric, used, "paid").await.unwrap();
        quota.plan(lapsed, &[], 2).await;
        let read = check(&quota, &mut quota.client(), lapsed, metric)
            .await
            .unwrap();
        assert_eq!(read.used, used.min(read.limit), "{metric}: {read:?}");
        assert_read_agrees_with_consume(&quota, lapsed, metric).await;
    }

    // A metric dropped from the free tier after a subject used 2 of it, then added back.
    let returning = Uuid::now_v7();
    quota
        .consume(returning, "exports", 2, "early")
        .await
        .unwrap();
    quota.defaults(&[("api.calls", Some(5))], 2).await;
    let gone = check(&quota, &mut quota.client(), returning, "exports").await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    quota
        .defaults(&[("api.calls", Some(5)), ("exports", Some(3))], 3)
        .await;
    let back = check(&quota, &mut quota.client(), returning, "exports")
        .await
        .unwrap();
    assert_eq!((back.limit, back.used), (3, 2));
    assert_read_agrees_with_consume(&quota, returning, "exports").await;

    // Next month: counters of last month read as a new period.
    let (_, month_end) = quota_svc::domain::period::month_of(quota.clock_now());
    quota
        .clock
        .advance(month_end - quota.clock_now() + TimeDelta::hours(1));
    let rolled = check(&quota, &mut quota.client(), partly, "api.calls")
        .await
        .unwrap();
    assert_eq!((rolled.used, rolled.remaining), (0, 5));
    assert_read_agrees_with_consume(&quota, partly, "api.calls").await;
}

/// A database written before reads stopped summing the usage log can hold a month's usage
/// without a counter (a plan fell back to the free tier and nothing was consumed since). The
/// migration gives those subjects the counter the next Consume would have created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_gives_uncounted_usage_its_counter() {
    let quota = QuotaServer::start().await;
    quota.defaults(&[("api.calls", Some(5))], 1).await;
    let subject = Uuid::now_v7();
    quota.plan(subject, &[("api.calls", Some(100))], 1).await;
    for key in ["a", "b", "c"] {
        quota.consume(subject, "api.calls", 2, key).await.unwrap();
    }
    let mut conn = quota.db.connect(quota_svc::SPEC.name).await;
    // What an older quota-svc left when the plan ended.
    sql_query(format!(
        "DELETE FROM entitlements WHERE subject = '{subject}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.batch_execute(include_str!(
        "../../../migrations/quota/2026-12-03-000000_counters_where_usage/up.sql"
    ))
    .await
    .unwrap();
    let read = check(&quota, &mut quota.client(), subject, "api.calls")
        .await
        .unwrap();
    assert_eq!((read.limit, read.used), (5, 5), "6 units, capped at 5");
    assert_eq!(
        quota
            .count(&format!(
                "SELECT seed_usage AS n FROM entitlements WHERE subject = '{subject}'"
            ))
            .await,
        6
    );
    assert_read_agrees_with_consume(&quota, subject, "api.calls").await;
}
