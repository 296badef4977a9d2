//! Provider notifications through the edge: applied once, duplicates acknowledged without
//! effect, and forged, tampered, late or foreign ones refused or ignored, every one recorded.

use billing_svc::{
    providers::{
        alipay::{NOTIFY_SIGN_EXCLUDED, format_beijing, sign_content},
        rsa_keys,
    },
    sim,
};
use kit::clock::Clock;
use proto::billing::PaymentStatus;
use serde_json::json;
use uuid::Uuid;

use super::harness::{APP_ID, Mesh, statuses};

/// A form notification like Alipay's, signed with "Alipay's" key, with `changes` applied.
fn notification(mesh: &Mesh, payment_id: &str, changes: &[(&str, &str)]) -> String {
    let now = format_beijing(mesh.clock.now());
    let out_trade_no = payment_id.replace('-', "");
    let mut params: Vec<(String, String)> = [
        ("notify_time", now.as_str()),
        ("notify_type", "trade_status_sync"),
        ("notify_id", "hand-made-1"),
        ("app_id", APP_ID),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("sign_type", "RSA2"),
        ("trade_no", "2027000000000001"),
        ("out_trade_no", out_trade_no.as_str()),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "19.99"),
        ("gmt_payment", now.as_str()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    for (key, value) in changes {
        if let Some(param) = params.iter_mut().find(|(name, _)| name == key) {
            param.1 = (*value).to_owned();
        }
    }
    let content = sign_content(
        params
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
        NOTIFY_SIGN_EXCLUDED,
    );
    params.push((
        "sign".to_owned(),
        rsa_keys::sign(&sim::test_keys().alipay, &content),
    ));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

impl Mesh {
    async fn post_notification(&self, provider: &str, body: String) -> (u16, String) {
        let response = self
            .http
            .post(format!("http://{}/v1/webhooks/{provider}", self.edge))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn payment_status(&self, user: Uuid, payment_id: &str) -> i32 {
        self.payment(user, payment_id).await.status
    }

    /// The recorded verdicts of the payment's notifications, oldest first.
    async fn verdicts(&self, payment_id: &str) -> Vec<String> {
        self.texts(&format!(
            "SELECT verdict AS v FROM payment_events WHERE payment_id = '{payment_id}' \
             ORDER BY received_at, event_id"
        ))
        .await
    }

    async fn outbox_rows(&self, user: Uuid) -> usize {
        self.texts(&format!(
            "SELECT version::text AS v FROM entitlement_outbox WHERE subject = '{user}'"
        ))
        .await
        .len()
    }
}

#[tokio::test]
async fn a_notification_delivered_three_times_applies_once() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    let answer = mesh.pay(&payment, json!({"deliveries": 3})).await;
    assert_eq!(statuses(&answer), [200, 200, 200]);
    assert_eq!(
        mesh.payment_status(user, &payment.payment_id).await,
        PaymentStatus::Succeeded as i32
    );
    assert_eq!(
        mesh.verdicts(&payment.payment_id).await,
        ["applied", "duplicate", "duplicate"]
    );
    assert_eq!(
        mesh.outbox_rows(user).await,
        1,
        "one entitlement, not three"
    );
    let bodies = mesh
        .texts(&format!(
            "SELECT convert_from(body, 'UTF8') AS v FROM payment_events \
             WHERE payment_id = '{}'",
            payment.payment_id
        ))
        .await;
    assert!(
        bodies.iter().all(|body| body.contains("sign=")),
        "raw bodies are kept"
    );
}

#[tokio::test]
async fn the_answer_to_alipay_is_exactly_success() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    let (status, body) = mesh
        .post_notification("alipay", notification(&mesh, &payment.payment_id, &[]))
        .await;
    assert_eq!((status, body.as_str()), (200, "success"));
    // Again: acknowledged again, nothing applied twice.
    let (status, body) = mesh
        .post_notification("alipay", notification(&mesh, &payment.payment_id, &[]))
        .await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(
        mesh.verdicts(&payment.payment_id).await,
        ["applied", "duplicate"]
    );
}

#[tokio::test]
async fn tampered_notifications_change_nothing_and_are_recorded() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();

    let forged = mesh.pay(&payment, json!({"tamper": "signature"})).await;
    assert_eq!(statuses(&forged), [401]);
    let cheaper = mesh.pay(&payment, json!({"tamper": "amount"})).await;
    assert_eq!(statuses(&cheaper), [400]);
    let (foreign, _) = mesh
        .post_notification(
            "alipay",
            notification(
                &mesh,
                &payment.payment_id,
                &[("app_id", "2021999999999999")],
            ),
        )
        .await;
    assert_eq!(foreign, 400);
    let (other_amount, _) = mesh
        .post_notification(
            "alipay",
            notification(&mesh, &payment.payment_id, &[("total_amount", "19.98")]),
        )
        .await;
    assert_eq!(other_amount, 400);

    assert_eq!(
        mesh.payment_status(user, &payment.payment_id).await,
        PaymentStatus::Pending as i32
    );
    assert_eq!(mesh.outbox_rows(user).await, 0);
    let refused = mesh
        .texts(
            "SELECT detail AS v FROM payment_events WHERE verdict = 'refused' ORDER BY received_at",
        )
        .await;
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused[0].contains("signature"), "{refused:?}");
    assert!(refused[1].contains("amount"), "{refused:?}");
    assert!(refused[2].contains("2021999999999999"), "{refused:?}");

    // The genuine one still applies afterwards.
    assert_eq!(mesh.pay_once(&payment).await, [200]);
    mesh.wait_for_limit(user, "analyses", 100).await;
}

#[tokio::test]
async fn a_late_notification_for_a_canceled_payment_is_acknowledged_and_not_applied() {
    let mesh = Mesh::start().await;
    let user = Uuid::now_v7();
    let payment = mesh.subscribe(user, "basic").await.payment.unwrap();
    mesh.cancel(user, false).await;
    let (status, body) = mesh
        .post_notification("alipay", notification(&mesh, &payment.payment_id, &[]))
        .await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(
        mesh.payment_status(user, &payment.payment_id).await,
        PaymentStatus::Canceled as i32
    );
    assert_eq!(mesh.verdicts(&payment.payment_id).await, ["duplicate"]);
    assert_eq!(mesh.outbox_rows(user).await, 0);
}

#[tokio::test]
async fn unknown_providers_and_orders_are_not_found_and_garbage_is_refused() {
    let mesh = Mesh::start().await;
    let (status, _) = mesh.post_notification("paypal", "a=b".to_owned()).await;
    assert_eq!(status, 404);
    let (status, _) = mesh
        .post_notification(
            "alipay",
            notification(&mesh, &Uuid::now_v7().to_string(), &[]),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = mesh
        .post_notification("alipay", "%%%not a form".to_owned())
        .await;
    assert!(status == 400 || status == 401, "{status}");
    let recorded = mesh.texts("SELECT verdict AS v FROM payment_events").await;
    assert_eq!(
        recorded,
        ["refused", "refused"],
        "each alipay notification is recorded"
    );
}
