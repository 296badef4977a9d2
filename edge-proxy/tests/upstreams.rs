//! The edge in front of replicated services, as an operator runs it: two quota-svc processes behind
//! one `EDGE_QUOTA_UPSTREAM` share the calls, `/readyz` follows the services' health checks,
//! `/metrics` counts requests by route and status, CORS answers only configured origins, and
//! gRPC-Web calls reach every service.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use kit::testing::{
    Binary, TestDb, free_port, issue_service_key, start_auth_svc, workspace_binary,
};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const ORIGIN: &str = "https://app.example.com";

/// `curl -i`: (HTTP status, headers and body as text).
fn curl(args: &[&str]) -> (u16, String) {
    let (status, answer) = kit::testing::curl(&[&["-i"], args].concat());
    let text = answer
        .as_str()
        .map_or_else(|| answer.to_string(), str::to_owned);
    (status, text)
}

/// A unary gRPC-Web call with an empty request message (one uncompressed frame of length 0),
/// returning the response headers and body as curl prints them with `-i`.
fn grpc_web(base: &str, method: &str, content_type: &str) -> String {
    let frame: &[u8] = &[0, 0, 0, 0, 0];
    let body = if content_type.ends_with("-text") {
        "AAAAAAA=".as_bytes()
    } else {
        frame
    };
    let file = std::env::temp_dir().join(format!("grpc-web-{}", unique_name()));
    std::fs::write(&file, body).unwrap();
    let (status, answer) = curl(&[
        "-H",
        &format!("content-type: {content_type}"),
        "-H",
        "x-grpc-web: 1",
        "-H",
        &format!("accept: {content_type}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/{method}"),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A name unique in this process, for temporary files.
fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The sum of a Prometheus counter's samples whose labels contain `label`.
fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn scrape(admin: &str) -> String {
    curl(&[&format!("http://{admin}/metrics")]).1
}

/// Waits until `/readyz` answers `status`, returning its body.
fn wait_for_readiness(base: &str, status: u16) -> String {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = curl(&[&format!("{base}/readyz")]);
        if last.0 == status {
            return last.1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("/readyz never answered {status}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_calls_and_readiness_follows_their_health() {
    let db = TestDb::new(&[]).await;
    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let quota_key = issue_service_key(db.url(), MASTER_KEY, "quota-svc", "service");
    let billing_key = issue_service_key(db.url(), MASTER_KEY, "billing-svc", "service");
    let edge_key = issue_service_key(db.url(), MASTER_KEY, "edge-proxy", "service");
    let replica = || {
        let admin = format!("127.0.0.1:{}", free_port());
        let binary = Binary::start(
            &workspace_binary("quota-svc"),
            "QUOTA",
            db.url(),
            &[
                ("AUTH_URL", &auth_url),
                ("QUOTA_SERVICE_API_KEY", &quota_key),
                ("QUOTA_ADMIN_ADDR", &admin),
            ],
        );
        (binary, admin)
    };
    let (first, first_admin) = replica();
    let (mut second, second_admin) = replica();
    let billing = Binary::start(
        &workspace_binary("billing-svc"),
        "BILLING",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("BILLING_SERVICE_API_KEY", &billing_key),
        ],
    );
    let edge_admin = format!("127.0.0.1:{}", free_port());
    let edge = Binary::start(
        &workspace_binary("edge-proxy"),
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_BILLING_UPSTREAM", &format!("http://{}", billing.addr)),
            (
                "EDGE_QUOTA_UPSTREAM",
                &format!("http://{},http://{}", first.addr, second.addr),
            ),
            ("EDGE_SERVICE_KEY", &edge_key),
            ("EDGE_ADMIN_ADDR", &edge_admin),
            (
                "EDGE_CORS_ORIGINS",
                &format!("{ORIGIN}, https://other.example.com"),
            ),
        ],
    );
    let base = format!("http://{}", edge.addr);

    let ready = wait_for_readiness(&base, 200);
    assert!(ready.contains(r#""quota-svc":{"addresses""#), "{ready}");
    assert!(ready.contains(r#"["SERVING","SERVING"]"#), "{ready}");
    // Public: states, not the internal addresses.
    assert!(!ready.contains(&first.addr.to_string()), "{ready}");

    // Forty calls (refused for want of credentials, by quota-svc itself) spread over both.
    for _ in 0..40 {
        let (status, answer) = curl(&[&format!("{base}/v1/quotas")]);
        assert_eq!(status, 401, "{answer}");
    }
    let served = |admin: &str| counter(&scrape(admin), "rpc_requests_total", "ListQuotas");
    let (by_first, by_second) = (served(&first_admin), served(&second_admin));
    assert_eq!(by_first + by_second, 40.0, "{by_first} + {by_second}");
    assert!(
        by_first >= 5.0 && by_second >= 5.0,
        "one replica took almost everything: {by_first} / {by_second}"
    );

    // The edge's own request metrics, by route template and status.
    let metrics = scrape(&edge_admin);
    let listed = counter(
        &metrics,
        "edge_requests_total",
        r#"route="/v1/quotas",status="401""#,
    );
    assert_eq!(listed, 40.0, "{metrics}");
    // A made-up HTTP method is counted, under OTHER, not as a label of its own.
    let (status, _) = curl(&["-X", "BREW", &format!("{base}/v1/coffee")]);
    assert_eq!(status, 404);
    let metrics = scrape(&edge_admin);
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert_eq!(
        counter(&metrics, "edge_requests_total", r#"method="OTHER""#),
        1.0,
        "{metrics}"
    );

    // CORS: a preflight from a configured origin is answered with what a browser needs; another
    // origin gets no CORS headers (its browser refuses the call).
    let (status, preflight) = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        &format!("origin: {ORIGIN}"),
        "-H",
        "access-control-request-method: POST",
        "-H",
        "access-control-request-headers: authorization, content-type, x-grpc-web",
        &format!("{base}/v1/quotas/api.calls:consume"),
    ]);
    let preflight = preflight.to_ascii_lowercase();
    assert_eq!(status, 200, "{preflight}");
    assert!(
        preflight.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{preflight}"
    );
    assert!(
        preflight.contains("access-control-allow-methods:"),
        "{preflight}"
    );
    assert!(preflight.contains("x-grpc-web"), "{preflight}");
    let (_, simple) = curl(&[
        "-H",
        &format!("origin: {ORIGIN}"),
        &format!("{base}/v1/quotas"),
    ]);
    let simple = simple.to_ascii_lowercase();
    assert!(
        simple.contains("access-control-expose-headers:"),
        "{simple}"
    );
    assert!(
        simple.contains("grpc-status") && simple.contains("x-request-id"),
        "{simple}"
    );
    // The protected routes' quota headers are readable too.
    assert!(simple.contains("x-quota-remaining"), "{simple}");
    let (_, foreign) = curl(&[
        "-H",
        "origin: https://evil.example.net",
        &format!("{base}/v1/quotas"),
    ]);
    assert!(
        !foreign
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{foreign}"
    );

    // gRPC-Web reaches each service on the same port: auth-svc's keys, billing-svc's (empty) price
    // list, and quota-svc, which refuses a call without credentials in the gRPC-Web trailers.
    let jwks = grpc_web(
        &base,
        "commerce.auth.v1.AuthService/GetJwks",
        "application/grpc-web+proto",
    );
    assert!(
        jwks.contains("grpc-status:0") && jwks.contains("EdDSA"),
        "{jwks:?}"
    );
    let plans = grpc_web(
        &base,
        "commerce.billing.v1.BillingService/ListPlans",
        "application/grpc-web",
    );
    assert!(plans.contains("grpc-status:0"), "{plans:?}");
    let refused = grpc_web(
        &base,
        "commerce.quota.v1.QuotaService/ListQuotas",
        "application/grpc-web",
    );
    assert!(refused.contains("grpc-status: 16"), "{refused:?}");
    // The text variant: base64 frames both ways.
    let text = grpc_web(
        &base,
        "commerce.billing.v1.BillingService/ListPlans",
        "application/grpc-web-text",
    );
    assert!(
        text.contains("content-type: application/grpc-web-text"),
        "{text:?}"
    );
    // The trailer frame, base64: 0x80, its length, `grpc-status:0`.
    assert!(!text.contains("grpc-status: 14"), "{text:?}");
    let unknown = grpc_web(&base, "other.v1.Thing/Call", "application/grpc-web");
    assert!(unknown.contains("grpc-status: 12"), "{unknown:?}");
    let made_up = grpc_web(
        &base,
        "commerce.quota.v1.QuotaService/MadeUp",
        "application/grpc-web",
    );
    assert!(made_up.contains("grpc-status: 12"), "{made_up:?}");
    // Internal RPCs (no REST mapping) stay inside the mesh: gRPC-Web reaches what REST reaches.
    let internal = grpc_web(
        &base,
        "commerce.auth.v1.AuthService/VerifyApiKey",
        "application/grpc-web",
    );
    assert!(internal.contains("grpc-status: 12"), "{internal:?}");
    // gRPC-Web is counted by method, but a made-up path does not become a label of its own.
    let metrics = scrape(&edge_admin);
    assert_eq!(
        counter(
            &metrics,
            "edge_requests_total",
            r#"route="/commerce.auth.v1.AuthService/GetJwks""#
        ),
        1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("MadeUp"), "{metrics}");
    // A refused call counts under the status REST gives the refusal, not the 200 it travels in.
    assert_eq!(
        counter(
            &metrics,
            "edge_requests_total",
            r#"route="/commerce.quota.v1.QuotaService/ListQuotas",status="401""#
        ),
        1.0,
        "{metrics}"
    );

    // One replica stopping leaves the service ready (the other serves); both gone, it is not.
    second.terminate(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1100));
    let ready = wait_for_readiness(&base, 200);
    assert!(ready.contains("UNREACHABLE"), "{ready}");
    drop(first);
    let unready = wait_for_readiness(&base, 503);
    assert!(unready.contains(r#""quota-svc":{"addresses""#), "{unready}");
    assert!(unready.contains(r#""ready":false"#), "{unready}");
}
