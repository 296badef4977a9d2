//! Usage series, event pages, quota lists and the monthly partitions of the usage log.

use chrono::TimeDelta;
use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::RunQueryDsl;
use kit::convert::timestamp;
use proto::quota::{
    GetUsageRequest, ListQuotasRequest, ListUsageEventsRequest, RefundRequest, UsageBucket,
    UsageEventKind,
};
use tonic::Code;
use uuid::Uuid;

use super::harness::QuotaServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_series_sum_to_the_counters_and_events_page_newest_first() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota
        .plan(
            subject,
            &[("api.calls", Some(1000)), ("storage", Some(10))],
            1,
        )
        .await;
    let start = quota.clock_now();
    let mut refunded = None;
    for i in 0..12 {
        let response = quota
            .consume(subject, "api.calls", i % 3 + 1, &format!("k{i}"))
            .await
            .unwrap();
        refunded.get_or_insert(response.usage_id);
        quota.clock.advance(TimeDelta::minutes(20));
    }
    quota.consume(subject, "storage", 2, "s").await.unwrap();
    quota.clock.advance(TimeDelta::minutes(1));
    let refund = RefundRequest {
        usage_id: refunded.unwrap(),
        subject: subject.to_string(),
        ..Default::default()
    };
    quota
        .client()
        .refund(quota.as_service(refund))
        .await
        .unwrap();
    let usage = GetUsageRequest {
        metric: "api.calls".to_owned(),
        from: Some(timestamp(start - TimeDelta::hours(1))),
        to: Some(timestamp(quota.clock_now() + TimeDelta::hours(1))),
        bucket: UsageBucket::Hour as i32,
        subject: subject.to_string(),
    };
    let series = quota
        .client()
        .get_usage(quota.as_service(usage.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(series.points.len() >= 5, "{:?}", series.points);
    let net: i64 = series.points.iter().map(|p| p.net).sum();
    let consumed: i64 = series.points.iter().map(|p| p.consumed).sum();
    assert_eq!(consumed, 24);
    assert_eq!(
        net,
        quota
            .count("SELECT used AS n FROM entitlements WHERE metric = 'api.calls'")
            .await
    );
    for bucket in [UsageBucket::Day, UsageBucket::Month] {
        let request = GetUsageRequest {
            bucket: bucket as i32,
            ..usage.clone()
        };
        let series = quota
            .client()
            .get_usage(quota.as_service(request))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(series.points.iter().map(|p| p.net).sum::<i64>(), net);
    }
    let too_many = GetUsageRequest {
        from: Some(timestamp(start - TimeDelta::days(365))),
        ..usage
    };
    let status = quota
        .client()
        .get_usage(quota.as_service(too_many))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // 14 events (12 + 1 storage + 1 refund), pages of 5, newest first, no duplicates.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let request = ListUsageEventsRequest {
            subject: subject.to_string(),
            page_size: 5,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = quota
            .client()
            .list_usage_events(quota.as_service(request))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 14);
    assert_eq!(seen[0].kind, UsageEventKind::Refund as i32);
    assert!(
        seen.windows(2)
            .all(|w| w[0].occurred_at.unwrap().seconds >= w[1].occurred_at.unwrap().seconds)
    );
    let only_storage = ListUsageEventsRequest {
        subject: subject.to_string(),
        metric: "storage".to_owned(),
        ..Default::default()
    };
    let page = quota
        .client()
        .list_usage_events(quota.as_service(only_storage))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_list_plan_and_default_metrics_by_name() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota
        .defaults(&[("a.free", Some(5)), ("z.free", None)], 1)
        .await;
    quota
        .plan(subject, &[("m.plan", Some(7)), ("a.free", Some(50))], 1)
        .await;
    let mut token = String::new();
    let mut metrics = Vec::new();
    loop {
        let request = ListQuotasRequest {
            subject: subject.to_string(),
            page_size: 2,
            page_token: token.clone(),
        };
        let page = quota
            .client()
            .list_quotas(quota.as_service(request))
            .await
            .unwrap()
            .into_inner();
        metrics.extend(
            page.quotas
                .into_iter()
                .map(|q| (q.metric, q.limit, q.unlimited)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        metrics,
        vec![
            ("a.free".to_owned(), 50, false),
            ("m.plan".to_owned(), 7, false),
            ("z.free".to_owned(), 0, true)
        ]
    );
    // Stale defaults are ignored like stale plans.
    let stale = proto::quota::ApplyDefaultEntitlementsRequest {
        limits: vec![],
        version: 1,
    };
    let response = quota
        .client()
        .apply_default_entitlements(quota.as_service(stale))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.applied);
}

#[derive(QueryableByName)]
struct Partition {
    #[diesel(sql_type = Text)]
    partition: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_land_in_their_month_partition() {
    let quota = QuotaServer::start().await;
    let subject = Uuid::now_v7();
    quota.defaults(&[("api.calls", Some(10))], 1).await;
    quota.consume(subject, "api.calls", 1, "now").await.unwrap();
    let next_month = quota_svc::domain::period::month_of(quota.clock_now()).1 + TimeDelta::days(3);
    quota.clock.set(next_month);
    assert!(
        quota
            .consume(subject, "api.calls", 1, "later")
            .await
            .unwrap()
            .allowed
    );
    let mut conn = quota.db.connect("quota").await;
    let rows: Vec<Partition> = sql_query(
        "SELECT tableoid::regclass::text AS partition FROM usage_events ORDER BY occurred_at",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let names: Vec<String> = rows.into_iter().map(|row| row.partition).collect();
    assert_eq!(
        names,
        vec![
            format!(
                "usage_events_{}",
                (next_month - TimeDelta::days(10)).format("%Y_%m")
            ),
            format!("usage_events_{}", next_month.format("%Y_%m")),
        ]
    );
    // Maintenance keeps three months ready from the clock's month.
    quota.clock.set(next_month + TimeDelta::days(62));
    let later = quota_svc::domain::period::month_of(quota.clock_now()).0;
    sql_query("SELECT ensure_usage_partitions($1, 3)")
        .bind::<diesel::sql_types::Timestamptz, _>(later)
        .execute(&mut conn)
        .await
        .unwrap();
    let ahead = quota
        .count(&format!(
            "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'quota' AND tablename = 'usage_events_{}'",
            quota_svc::domain::period::add_months(later, 2).format("%Y_%m")
        ))
        .await;
    assert_eq!(ahead, 1);
}
