//! The passing of time: period ends, grace periods and checkout expiry, with two workers at
//! once; and entitlements that wait for quota-svc while it is down.

use chrono::TimeDelta;
use proto::billing::{PaymentStatus, SubscriptionStatus};
use uuid::Uuid;

use super::harness::Mesh;

impl Mesh {
    /// A user with a paid `basic` subscription whose limits reached quota-svc.
    async fn paid_user(&self) -> Uuid {
        let user = Uuid::now_v7();
        let payment = self.subscribe(user, "basic").await.payment.unwrap();
        assert_eq!(self.pay_once(&payment).await, [200]);
        user
    }
}

#[tokio::test]
async fn an_unrenewed_subscription_falls_back_to_the_free_tier_then_expires() {
    let mesh = Mesh::start().await;
    let user = mesh.paid_user().await;
    mesh.wait_for_limit(user, "analyses", 100).await;
    assert_eq!(
        mesh.billing.run_lifecycle().await.unwrap(),
        0,
        "nothing is due yet"
    );

    mesh.clock.advance(TimeDelta::days(32));
    assert_eq!(mesh.billing.run_lifecycle().await.unwrap(), 1);
    let past_due = mesh.current(user).await.unwrap();
    assert_eq!(past_due.status, SubscriptionStatus::PastDue as i32);
    mesh.wait_for_limit(user, "analyses", 10).await;

    mesh.clock.advance(TimeDelta::days(8));
    assert_eq!(mesh.billing.run_lifecycle().await.unwrap(), 1);
    assert!(mesh.current(user).await.is_none(), "expired is not current");
    let status = mesh
        .texts(&format!(
            "SELECT status AS v FROM subscriptions WHERE user_id = '{user}'"
        ))
        .await;
    assert_eq!(status, ["expired"]);
}

#[tokio::test]
async fn cancel_at_period_end_keeps_the_plan_until_then() {
    let mesh = Mesh::start().await;
    let user = mesh.paid_user().await;
    let canceling = mesh.cancel(user, true).await;
    assert_eq!(canceling.status, SubscriptionStatus::Active as i32);
    assert!(canceling.cancel_at_period_end);
    mesh.wait_for_limit(user, "analyses", 100).await;

    mesh.clock.advance(TimeDelta::days(32));
    assert_eq!(mesh.billing.run_lifecycle().await.unwrap(), 1);
    assert!(mesh.current(user).await.is_none());
    let canceled_at = mesh
        .texts(&format!(
            "SELECT (canceled_at = current_period_end)::text AS v FROM subscriptions \
             WHERE user_id = '{user}' AND status = 'canceled'"
        ))
        .await;
    assert_eq!(canceled_at, ["true"], "canceled when the period ended");
    mesh.wait_for_limit(user, "analyses", 10).await;
}

#[tokio::test]
async fn an_expired_checkout_is_closed_at_the_provider_and_canceled() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    mesh.open_checkout(&payment).await;
    mesh.clock.advance(TimeDelta::hours(3));
    assert_eq!(mesh.billing.run_lifecycle().await.unwrap(), 1);
    let canceled = mesh.payment(user, &payment.payment_id).await;
    assert_eq!(canceled.status, PaymentStatus::Canceled as i32);
    assert!(mesh.current(user).await.is_none(), "never paid: expired");
    let order = mesh.order(&payment.payment_id).await;
    assert_eq!(order["status"], "TRADE_CLOSED", "{order}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_at_once_never_process_a_subscription_twice() {
    let mesh = Mesh::start().await;
    let mut users = Vec::new();
    for _ in 0..12 {
        users.push(mesh.paid_user().await);
    }
    mesh.clock.advance(TimeDelta::days(32));
    let (first, second) = tokio::join!(mesh.billing.run_lifecycle(), mesh.billing.run_lifecycle());
    assert_eq!(first.unwrap() + second.unwrap(), users.len());
    for user in users {
        let withdrawals = mesh
            .texts(&format!(
                "SELECT version::text AS v FROM entitlement_outbox \
                 WHERE subject = '{user}' AND plan_code = ''"
            ))
            .await;
        assert_eq!(withdrawals.len(), 1, "{user}");
    }
}

#[tokio::test]
async fn limits_paid_while_quota_is_down_arrive_when_it_is_back() {
    let mesh = Mesh::start().await;
    mesh.wait_for_limit(Uuid::now_v7(), "analyses", 10).await;
    mesh.quota_proxy.set_up(false);
    let user = mesh.paid_user().await;
    assert_eq!(
        mesh.current(user).await.unwrap().status,
        SubscriptionStatus::Active as i32
    );
    // The dispatcher tries, fails and backs off.
    let mut attempts = Vec::new();
    for _ in 0..100 {
        attempts = mesh
            .texts(&format!(
                "SELECT attempts::text AS v FROM entitlement_outbox \
                 WHERE subject = '{user}' AND attempts > 0 AND delivered_at IS NULL"
            ))
            .await;
        if !attempts.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(attempts.len(), 1, "the delivery was attempted and failed");

    mesh.quota_proxy.set_up(true);
    mesh.clock.advance(TimeDelta::seconds(5));
    mesh.wait_for_limit(user, "analyses", 100).await;
    let delivered = mesh
        .texts(&format!(
            "SELECT (delivered_at IS NOT NULL)::text AS v FROM entitlement_outbox \
             WHERE subject = '{user}'"
        ))
        .await;
    assert_eq!(delivered, ["true"]);
}
