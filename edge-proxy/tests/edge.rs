//! The edge proxy binary in front of a real service binary, driven with curl: `/healthz`, REST
//! routes transcoded to gRPC, errors as JSON with HTTP statuses, and a clean stop on SIGTERM.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::{process::Command, time::Duration};

use kit::testing::{
    Binary, TestDb, grpcurl, issue_service_key, start_auth_svc, verify_email_by_logged_link,
    workspace_binary,
};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// `curl` returning (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

#[test]
fn healthz_answers_and_sigterm_stops_the_proxy() {
    let mut edge = Binary::start(
        env!("CARGO_BIN_EXE_edge-proxy").as_ref(),
        "EDGE",
        "",
        &[("EDGE_SERVICE_KEY", "cmk_unused")],
    );
    assert_eq!(
        curl(&[&format!("http://{}/healthz", edge.addr)]),
        (200, "ok".to_owned())
    );

    let (exit, took) = edge.terminate(Duration::from_secs(5));
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    // Its log went to a file, not a terminal: plain text, no colour codes for a collector to choke on.
    let log = edge.log();
    assert!(log.contains("edge-proxy serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_are_transcoded_and_errors_come_back_as_json() {
    let db = TestDb::new(&[]).await;
    // No auth-svc: the public price list needs none, and the key is only presented to it.
    let billing = Binary::start(
        &workspace_binary("billing-svc"),
        "BILLING",
        db.url(),
        &[("BILLING_SERVICE_API_KEY", "cmk_unused")],
    );
    let billing_url = format!("http://{}", billing.addr);
    // Listening comes before the migrations; SERVING after them.
    let billing_addr = billing.addr.to_string();
    for _ in 0..100 {
        let health = grpcurl(&["-plaintext", &billing_addr, "grpc.health.v1.Health/Check"]);
        if String::from_utf8_lossy(&health.stdout).contains("\"SERVING\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let edge = Binary::start(
        env!("CARGO_BIN_EXE_edge-proxy").as_ref(),
        "EDGE",
        "",
        &[
            ("EDGE_BILLING_UPSTREAM", &billing_url),
            ("EDGE_SERVICE_KEY", "cmk_unused"),
        ],
    );
    let base = format!("http://{}", edge.addr);

    // A routed call reaches billing-svc: its (empty) price list as proto3 JSON.
    let (status, body) = curl(&[&format!("{base}/v1/plans?pageSize=10")]);
    assert_eq!(status, 200, "{body}");
    let plans: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plans["plans"], serde_json::json!([]));
    // A gRPC status comes back as HTTP with the JSON error body: a refund needs an admin.
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-d",
        "{}",
        &format!("{base}/v1/payments/0190c3a4-0000-7000-8000-000000000000:refund"),
    ]);
    assert_eq!(status, 401, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["status"], "UNAUTHENTICATED");

    let (status, body) = curl(&[&format!("{base}/v1/nothing-here")]);
    assert_eq!(status, 404, "{body}");

    let (status, body) = curl(&["-X", "DELETE", &format!("{base}/v1/plans")]);
    assert_eq!(status, 405, "{body}");

    let (status, body) = curl(&[
        "-X",
        "POST",
        "-d",
        "{not json",
        &format!("{base}/v1/subscriptions"),
    ]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not valid JSON"), "{body}");

    let (status, body) = curl(&[&format!("{base}/v1/plans?noSuchField=1")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("noSuchField"), "{body}");
}

/// JSON from curl with a 2xx status, or a panic showing the body.
fn curl_json(args: &[&str]) -> serde_json::Value {
    let (status, body) = curl(args);
    assert!((200..300).contains(&status), "HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_up_logs_in_and_manages_api_keys_through_the_edge() {
    let db = TestDb::new(&[]).await;
    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let edge_key = issue_service_key(db.url(), MASTER_KEY, "edge-proxy", "service");
    let edge = Binary::start(
        &workspace_binary("edge-proxy"),
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_SERVICE_KEY", &edge_key),
        ],
    );
    let base = format!("http://{}", edge.addr);
    let json = ["-H", "content-type: application/json"];

    let registered = curl_json(&[
        &json[..],
        &[
            "-d",
            r#"{"email":" Ada@Example.org ","username":"ada","password":"correct horse battery staple 42","displayName":"Ada"}"#,
            &format!("{base}/v1/auth/register"),
        ],
    ]
    .concat());
    assert_eq!(registered["user"]["email"], "ada@example.org");
    // API keys need a verified email: Ada follows the link of her confirmation mail.
    verify_email_by_logged_link(&auth, &base, "ada@example.org");

    let (status, body) = curl(
        &[
            &json[..],
            &[
                "-d",
                r#"{"email":"x@example.org","username":"x","password":"short"}"#,
                &format!("{base}/v1/auth/register"),
            ],
        ]
        .concat(),
    );
    assert_eq!(status, 400, "{body}");

    let login = curl_json(
        &[
            &json[..],
            &[
                "-d",
                r#"{"usernameOrEmail":"ada","password":"correct horse battery staple 42"}"#,
                &format!("{base}/v1/auth/login"),
            ],
        ]
        .concat(),
    );
    let access = login["accessToken"].as_str().unwrap().to_owned();
    let bearer = format!("authorization: Bearer {access}");

    let me = curl_json(&["-H", &bearer, &format!("{base}/v1/users/me")]);
    assert_eq!(me["user"]["username"], "ada");

    let (status, _) = curl(&[&format!("{base}/v1/users/me")]);
    assert_eq!(status, 401);
    let (status, _) = curl(&["-H", &bearer, &format!("{base}/v1/users")]);
    assert_eq!(status, 403, "listing users is for administrators");

    let created = curl_json(
        &[
            &json[..],
            &[
                "-H",
                &bearer,
                "-d",
                r#"{"name":"backend","scopes":["quota:consume","quota:read"]}"#,
                &format!("{base}/v1/api-keys"),
            ],
        ]
        .concat(),
    );
    assert!(created["secret"].as_str().unwrap().starts_with("cmk_"));
    let key_id = created["apiKey"]["keyId"].as_str().unwrap().to_owned();
    let listed = curl_json(&["-H", &bearer, &format!("{base}/v1/api-keys")]);
    assert_eq!(listed["apiKeys"][0]["keyId"], key_id.as_str());
    let (status, body) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &bearer,
        &format!("{base}/v1/api-keys/{key_id}"),
    ]);
    assert_eq!(status, 200, "{body}");

    let jwks = curl_json(&[&format!("{base}/.well-known/jwks.json")]);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    let refreshed = curl_json(
        &[
            &json[..],
            &[
                "-d",
                &format!(
                    r#"{{"refreshToken":"{}"}}"#,
                    login["refreshToken"].as_str().unwrap()
                ),
                &format!("{base}/v1/auth/refresh"),
            ],
        ]
        .concat(),
    );
    assert_ne!(refreshed["refreshToken"], login["refreshToken"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_forwards_the_client_address_it_decided_not_one_a_client_wrote() {
    let db = TestDb::new(&[]).await;
    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let edge_key = issue_service_key(db.url(), MASTER_KEY, "edge-proxy", "service");
    let edge = |trusted: &str| {
        Binary::start(
            &workspace_binary("edge-proxy"),
            "EDGE",
            "",
            &[
                ("EDGE_AUTH_UPSTREAM", &auth_url),
                ("EDGE_SERVICE_KEY", &edge_key),
                ("EDGE_TRUSTED_PROXIES", trusted),
            ],
        )
    };
    let json = ["-H", "content-type: application/json"];
    // The client connects from 127.0.0.2 (Linux routes all of 127/8 to lo), so its address is
    // not the edge's own 127.0.0.1. Each of `forwarded_for` is a header line of its own.
    let post = |base: &str, path: &str, body: &str, forwarded_for: &[&str]| {
        let lines: Vec<String> = forwarded_for
            .iter()
            .map(|line| format!("x-forwarded-for: {line}"))
            .collect();
        let mut args = vec!["--interface", "127.0.0.2"];
        args.extend(json);
        for line in &lines {
            args.extend(["-H", line.as_str()]);
        }
        let url = format!("{base}{path}");
        args.extend(["-d", body, &url]);
        curl_json(&args)
    };
    let password = "correct horse battery staple 42";
    let login = format!(r#"{{"usernameOrEmail":"ada","password":"{password}"}}"#);
    // The address auth-svc recorded for a session opened through `base` with `forwarded_for`.
    let session_address = |base: &str, forwarded_for: &[&str]| {
        let login = post(base, "/v1/auth/login", &login, forwarded_for);
        let bearer = format!(
            "authorization: Bearer {}",
            login["accessToken"].as_str().unwrap()
        );
        let sessions = curl_json(&[
            "-H",
            &bearer,
            &format!("{base}/v1/users/me/sessions?pageSize=1"),
        ]);
        sessions["sessions"][0]["clientAddress"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let direct = edge("");
    let base = format!("http://{}", direct.addr);
    post(
        &base,
        "/v1/auth/register",
        &format!(r#"{{"email":"ada@example.org","username":"ada","password":"{password}"}}"#),
        &["6.6.6.6"],
    );
    // Nobody is trusted in front of this edge: the client's claim is dropped.
    assert_eq!(session_address(&base, &["6.6.6.6"]), "127.0.0.2");

    // Behind a trusted load balancer (here: the client's 127.0.0.2), its right-most untrusted
    // entry, whether it appends to the client's line or adds a line of its own (HAProxy).
    let behind_proxy = edge("127.0.0.2");
    let base = format!("http://{}", behind_proxy.addr);
    assert_eq!(
        session_address(&base, &["6.6.6.6, 203.0.113.9"]),
        "203.0.113.9"
    );
    assert_eq!(
        session_address(&base, &["6.6.6.6", "203.0.113.9"]),
        "203.0.113.9"
    );
}
