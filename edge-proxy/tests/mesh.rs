//! The whole mesh as users run it: auth-svc, quota-svc and the edge proxy as real binaries on one
//! fresh database, with service keys issued by the auth-svc CLI as `just up` does. A browser signs up
//! and spends its quota through the edge with curl; an existing backend charges that user with its
//! service key over gRPC with grpcurl.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use kit::testing::{
    Binary, SignedUp, TestDb, curl, curl_post as post, grpcurl_result, issue_service_key, sign_up,
    start_auth_svc, workspace_binary,
};
use serde_json::{Value, json};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Issues a service account's key with `scopes` through the auth-svc CLI, as `just up` does.
fn service_key(db: &TestDb, service: &str, scopes: &str) -> String {
    issue_service_key(db.url(), MASTER_KEY, service, scopes)
}

fn grpcurl_json(addr: &str, key: &str, method: &str, body: &Value) -> Result<Value, String> {
    let header = format!("x-api-key: {key}");
    grpcurl_result(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &body.to_string(),
        addr,
        method,
    ])
    .map(|stdout| serde_json::from_str(&stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spend_quota_through_the_edge_and_backends_charge_them_with_service_keys() {
    let db = TestDb::new(&[]).await;
    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let quota_key = service_key(&db, "quota-svc", "service");
    let billing_key = service_key(&db, "billing-svc", "service");
    let edge_key = service_key(&db, "edge-proxy", "service");
    let backend_key = service_key(&db, "python-backend", "quota:consume,quota:read");
    let quota = Binary::start(
        &workspace_binary("quota-svc"),
        "QUOTA",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("QUOTA_SERVICE_API_KEY", &quota_key),
        ],
    );
    let quota_addr = quota.addr.to_string();
    let quota_url = format!("http://{quota_addr}");
    let edge = Binary::start(
        &workspace_binary("edge-proxy"),
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_QUOTA_UPSTREAM", &quota_url),
            ("EDGE_SERVICE_KEY", &edge_key),
        ],
    );
    let base = format!("http://{}", edge.addr);

    // The free tier, as billing-svc sets it: 3 analyses a month. A backend's key may not.
    let free_tier = json!({"limits": [{"metric": "analyses", "limit": "3"}], "version": "1"});
    let refused = grpcurl_json(
        &quota_addr,
        &backend_key,
        "commerce.quota.v1.QuotaService/ApplyDefaultEntitlements",
        &free_tier,
    )
    .unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    let applied = grpcurl_json(
        &quota_addr,
        &billing_key,
        "commerce.quota.v1.QuotaService/ApplyDefaultEntitlements",
        &free_tier,
    )
    .unwrap();
    assert_eq!(applied["applied"], true);

    // API keys need a verified email: Ada follows the link of her confirmation mail.
    let SignedUp { user_id, bearer } = sign_up(&auth, &base, "ada");
    let as_user = ["-H", bearer.as_str()];
    let consume_url = format!("{base}/v1/quotas/analyses:consume");

    let (status, first) = post(
        &consume_url,
        &as_user,
        &json!({"idempotencyKey": "upload-1"}),
    );
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["allowed"], true);
    assert_eq!(first["remaining"], "2");
    let (_, retried) = post(
        &consume_url,
        &as_user,
        &json!({"idempotencyKey": "upload-1"}),
    );
    assert_eq!(retried["replayed"], true);
    assert_eq!(retried["usageId"], first["usageId"]);

    // The user may not charge someone else.
    let (status, _) = post(
        &consume_url,
        &as_user,
        &json!({"idempotencyKey": "x", "subject": "00000000-0000-7000-8000-000000000000"}),
    );
    assert_eq!(status, 403);

    // The backend charges the user over gRPC with its service key.
    let mut backend_charges = Vec::new();
    for key in ["job-1", "job-2"] {
        let charged = grpcurl_json(
            &quota_addr,
            &backend_key,
            "commerce.quota.v1.QuotaService/Consume",
            &json!({"metric": "analyses", "subject": user_id, "idempotencyKey": key}),
        )
        .unwrap();
        assert_eq!(charged["allowed"], true, "{charged}");
        backend_charges.push(charged["usageId"].as_str().unwrap().to_owned());
    }
    // The fourth is over the limit: a decision, not an error.
    let (status, denied) = post(
        &consume_url,
        &as_user,
        &json!({"idempotencyKey": "upload-2"}),
    );
    assert_eq!(status, 200, "{denied}");
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["remaining"], "0");

    // The user sees the backend's charges in the usage log, but may not refund them: that would
    // be using the product for free.
    let (status, refused) = post(
        &format!("{base}/v1/usage/{}:refund", backend_charges[0]),
        &as_user,
        &json!({}),
    );
    assert_eq!(status, 403, "{refused}");

    // A refund of the user's own consumption gives one back; the user's own view agrees.
    let usage_id = first["usageId"].as_str().unwrap();
    let (status, refunded) = post(
        &format!("{base}/v1/usage/{usage_id}:refund"),
        &as_user,
        &json!({}),
    );
    assert_eq!(status, 200, "{refunded}");
    let (status, quotas) = curl(&["-H", &bearer, &format!("{base}/v1/quotas")]);
    assert_eq!(status, 200, "{quotas}");
    assert_eq!(quotas["quotas"][0]["metric"], "analyses");
    assert_eq!(quotas["quotas"][0]["used"], "2");
    // The usage series over the query string: enum by name, RFC 3339 times.
    let now = chrono::Utc::now();
    let usage_url = format!(
        "{base}/v1/usage?metric=analyses&bucket=USAGE_BUCKET_DAY&from={}&to={}",
        (now - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let (status, usage) = curl(&["-H", &bearer, &usage_url]);
    assert_eq!(status, 200, "{usage}");
    let points = usage["points"].as_array().expect("points");
    let net: i64 = points
        .iter()
        .map(|point| point["net"].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(net, 2, "{usage}");

    // A user key with only quota:read cannot consume; internal RPCs refuse users.
    let (_, created) = post(
        &format!("{base}/v1/api-keys"),
        &as_user,
        &json!({"name": "reader", "scopes": ["quota:read"]}),
    );
    let reader = created["secret"].as_str().expect("a key").to_owned();
    let reader_header = format!("x-api-key: {reader}");
    let (status, _) = post(
        &consume_url,
        &["-H", &reader_header],
        &json!({"idempotencyKey": "r"}),
    );
    assert_eq!(status, 403);
    let (status, _) = curl(&["-H", &reader_header, &format!("{base}/v1/quotas/analyses")]);
    assert_eq!(status, 200);
    let refused = grpcurl_json(
        &quota_addr,
        &reader,
        "commerce.quota.v1.QuotaService/ApplyDefaultEntitlements",
        &json!({"limits": [], "version": "2"}),
    );
    assert!(refused.unwrap_err().contains("PermissionDenied"));

    // SIGTERM stops each process promptly and cleanly, although the edge still holds
    // connections to the services.
    for (name, mut process) in [
        ("auth-svc", auth),
        ("quota-svc", quota),
        ("edge-proxy", edge),
    ] {
        let (exit, took) = process.terminate(Duration::from_secs(5));
        assert!(exit.success(), "{name} exited with {exit:?}");
        assert!(
            took < Duration::from_secs(5),
            "{name} took {took:?} to stop"
        );
    }
}
