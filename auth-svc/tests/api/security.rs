//! Tests named after the attacks they stop: forged client addresses, registration probing, logged
//! reset links, guessable stored login names, JWKS floods and look-alike service accounts.

use auth_svc::{MIGRATIONS, SPEC};
use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::RunQueryDsl;
use kit::testing::{TestDb, issue_service_key, with_bearer};
use proto::auth::{GetJwksRequest, ListSessionsRequest, LoginRequest, RegisterRequest};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::common::{MASTER_KEY, PASSWORD, TestServer, args};

/// `message` with the given metadata entries.
fn with_entries<T>(pairs: &[(&'static str, &str)], message: T) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in pairs {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

fn login_request(name: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username_or_email: name.to_owned(),
        password: password.to_owned(),
    }
}

fn registration(name: &str, email: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.to_owned(),
        username: name.to_owned(),
        password: PASSWORD.to_owned(),
        display_name: String::new(),
    }
}

/// The client address auth-svc recorded for a fresh session of `name`, signed in with `metadata`.
async fn session_address(t: &TestServer, name: &str, metadata: &[(&'static str, &str)]) -> String {
    let login = t
        .client()
        .login(with_entries(metadata, login_request(name, PASSWORD)))
        .await
        .unwrap()
        .into_inner();
    let sessions = t
        .client()
        .list_sessions(with_bearer(
            &login.access_token,
            ListSessionsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    sessions[0].client_address.clone()
}

/// One failed login on an unknown name from each of `addresses` (in `x-forwarded-for`).
async fn spray(t: &TestServer, addresses: impl Iterator<Item = String>) {
    for (n, address) in addresses.enumerate() {
        let err = t
            .client()
            .login(with_entries(
                &[("x-forwarded-for", &address)],
                login_request(&format!("nobody{n}"), "not the password 9"),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_address_buys_no_fresh_failure_budget() {
    let t = TestServer::start().await;
    t.signup("hopper").await;
    // A password spray that claims a new address on every attempt.
    spray(&t, (0..20).map(|n| format!("203.0.113.{n}"))).await;
    let locked = t
        .client()
        .login(with_entries(
            &[("x-forwarded-for", "198.51.100.77")],
            login_request("hopper", PASSWORD),
        ))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_address_does_not_pass_the_registration_limit_or_reach_the_audit_log() {
    let t = TestServer::with_args(args(&["--registrations-per-client-hour", "2"])).await;
    let register = async |name: &str, forged: &str| {
        t.client()
            .register(with_entries(
                &[("x-forwarded-for", forged)],
                registration(name, &format!("{name}@example.com")),
            ))
            .await
    };
    register("one", "203.0.113.1").await.unwrap();
    register("two", "203.0.113.2").await.unwrap();
    let third = register("three", "203.0.113.3").await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");

    #[derive(QueryableByName)]
    struct Address {
        #[diesel(sql_type = Text)]
        client_address: String,
    }
    let recorded: Vec<Address> = sql_query("SELECT client_address FROM audit_events")
        .load(&mut t.db.connect(SPEC.name).await)
        .await
        .unwrap();
    assert!(!recorded.is_empty());
    for row in recorded {
        assert_eq!(row.client_address, "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_proxy_holding_a_service_key_may_forward_the_client_address() {
    let t = TestServer::start().await;
    let (_, login) = t.verified_signup("grace").await;
    let service_key = issue_service_key(t.db.url(), MASTER_KEY, "edge-proxy", "service");
    fn forwarded(key: &str) -> [(&'static str, &str); 2] {
        [("x-forwarded-for", "203.0.113.5"), ("x-proxy-key", key)]
    }
    assert_eq!(
        session_address(&t, "grace", &forwarded(&service_key)).await,
        "203.0.113.5"
    );
    // A user's own key (no `service` scope) or a made-up one vouches for nothing.
    let user_key = t
        .api_key(&login.access_token, "mine", &["quota:read"])
        .await;
    for key in [user_key.as_str(), "cmk_made_up_123"] {
        assert_eq!(
            session_address(&t, "grace", &forwarded(key)).await,
            "127.0.0.1",
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
    let t = TestServer::with_args(args(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"])).await;
    t.signup("ada").await;
    // The client wrote 6.6.6.6 itself; the load balancer (10.0.0.9) appended its real address.
    let chain = [("x-forwarded-for", "6.6.6.6, 203.0.113.8, 10.0.0.9")];
    assert_eq!(session_address(&t, "ada", &chain).await, "203.0.113.8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_line_before_a_trusted_proxys_own_line_is_not_the_client() {
    let t = TestServer::with_args(args(&["--trusted-proxies", "127.0.0.1"])).await;
    t.signup("ada").await;
    // HAProxy's `option forwardfor` adds a line after the one the client wrote itself.
    let mut request = Request::new(login_request("ada", PASSWORD));
    for line in ["6.6.6.6", "203.0.113.8"] {
        request
            .metadata_mut()
            .append("x-forwarded-for", line.parse().unwrap());
    }
    let login = t.client().login(request).await.unwrap().into_inner();
    let sessions = t
        .client()
        .list_sessions(with_bearer(
            &login.access_token,
            ListSessionsRequest {
                page_size: 10,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let addresses = sessions.iter().map(|s| s.client_address.as_str());
    assert!(
        addresses.clone().any(|a| a == "203.0.113.8"),
        "{sessions:?}"
    );
    assert!(!addresses.clone().any(|a| a == "6.6.6.6"), "{sessions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addresses_of_one_ipv6_64_share_one_failure_budget() {
    let t = TestServer::with_args(args(&["--trusted-proxies", "127.0.0.1"])).await;
    t.signup("hopper").await;
    // A password spray from a new address of the attacker's /64 on every attempt.
    spray(&t, (1..=20).map(|n| format!("2001:db8:1:2::{n:x}"))).await;
    let from = async |address: &str| {
        t.client()
            .login(with_entries(
                &[("x-forwarded-for", address)],
                login_request("hopper", PASSWORD),
            ))
            .await
    };
    let locked = from("2001:db8:1:2:ffff::1").await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    // Another /64 is someone else.
    from("2001:db8:1:3::1").await.unwrap();
    // The session records the full address, not the /64.
    assert_eq!(
        session_address(&t, "hopper", &[("x-forwarded-for", "2001:db8:1:3::1")]).await,
        "2001:db8:1:3::1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_do_not_pass_the_hourly_limit_together() {
    let t = TestServer::with_args(args(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--registrations-per-hour",
        "2",
    ]))
    .await;
    let attempts = (0..12).map(|n| {
        let mut client = t.client();
        async move {
            let address = format!("192.0.2.{n}");
            client
                .register(with_entries(
                    &[("x-forwarded-for", &address)],
                    registration(&format!("racer{n}"), &format!("racer{n}@example.com")),
                ))
                .await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let codes: Vec<Code> = outcomes
        .iter()
        .map(|outcome| {
            outcome
                .as_ref()
                .map_or_else(tonic::Status::code, |_| Code::Ok)
        })
        .collect();
    let admitted = codes.iter().filter(|code| **code == Code::Ok).count();
    assert_eq!(admitted, 2, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_for_registered_emails_is_limited_like_failed_logins() {
    let t = TestServer::with_args(args(&["--registrations-per-client-hour", "0"])).await;
    t.register("victim").await;
    let probe = async |n: usize, email: &str| {
        t.client()
            .register(registration(&format!("prober{n}"), email))
            .await
    };
    // The same address, five times: then that email is locked like an account.
    for n in 0..5 {
        let taken = probe(n, "victim@example.com").await.unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    }
    let locked = probe(5, "victim@example.com").await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    // Taken usernames count too; twenty refusals lock the client's address for logins as well.
    for n in 0..15 {
        let taken = t
            .client()
            .register(registration("victim", &format!("other{n}@example.com")))
            .await
            .unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    }
    let login = t.login("victim", PASSWORD).await.unwrap_err();
    assert_eq!(login.code(), Code::ResourceExhausted, "{login:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registrations_count_towards_the_hourly_limits() {
    let t = TestServer::with_args(args(&["--registrations-per-client-hour", "3"])).await;
    t.register("taken").await;
    for n in 0..2 {
        let refused = t
            .client()
            .register(registration("taken", &format!("x{n}@example.com")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists);
    }
    let limited = t
        .client()
        .register(registration("fresh", "fresh@example.com"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");

    // All clients together are limited too.
    let t = TestServer::with_args(args(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--registrations-per-hour",
        "2",
    ]))
    .await;
    let register = async |n: usize| {
        let address = format!("192.0.2.{n}");
        t.client()
            .register(with_entries(
                &[("x-forwarded-for", &address)],
                registration(&format!("user{n}"), &format!("user{n}@example.com")),
            ))
            .await
    };
    register(1).await.unwrap();
    register(2).await.unwrap();
    let limited = register(3).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_names_and_their_domain_cannot_be_registered() {
    let t = TestServer::start().await;
    for (name, email, field) in [
        ("svc-edge-proxy", "edge@example.com", "username"),
        ("svc-quota", "q@example.com", "username"),
        ("mallory", "svc-quota@service.invalid", "email"),
    ] {
        let refused = t
            .client()
            .register(registration(name, email))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}");
        assert!(refused.message().starts_with(field), "{refused:?}");
        assert!(refused.message().contains("reserved"), "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_typed_into_the_name_box_is_not_stored_as_a_plain_hash() {
    let t = TestServer::start().await;
    let typed = "tr0ub4dor&3";
    t.login(typed, "whatever it was").await.unwrap_err();
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        account_key: String,
    }
    let keys: Vec<Key> = sql_query("SELECT account_key FROM login_attempts")
        .load(&mut t.db.connect(SPEC.name).await)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let plain = format!("name:{}", hex::encode(Sha256::digest(typed.as_bytes())));
    assert_ne!(keys[0].account_key, plain, "an offline guess would find it");
    assert!(!keys[0].account_key.contains(typed));
    // Still the same key each time, so unknown names lock like accounts.
    t.login(typed, "again").await.unwrap_err();
    let distinct: Vec<Key> = sql_query("SELECT DISTINCT account_key FROM login_attempts")
        .load(&mut t.db.connect(SPEC.name).await)
        .await
        .unwrap();
    assert_eq!(distinct.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_jwks_is_answered_from_memory_not_by_the_database() {
    let t = TestServer::start().await;
    let jwks = async || {
        let keys = t
            .client()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        keys.into_iter().map(|key| key.kid).collect::<Vec<_>>()
    };
    let before = jwks().await;
    assert_eq!(before.len(), 1);
    // A rotation the server has not read yet: a flood of calls must not read the database.
    auth_svc::service::signing_keys::rotate(
        &mut t.db.connect(SPEC.name).await,
        &MASTER_KEY.parse().unwrap(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    for _ in 0..50 {
        assert_eq!(jwks().await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_auth_svc_refuses_to_start_rather_than_log_reset_links() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let pool = kit::db::pool(db.url(), SPEC.name, 1, std::time::Duration::from_secs(5)).unwrap();
    let refused = auth_svc::State::new(
        pool.clone(),
        &args(&[]),
        std::sync::Arc::new(kit::clock::SystemClock),
        None,
    )
    .unwrap_err();
    assert!(refused.to_string().contains("SMTP_URL"), "{refused:#}");
    auth_svc::State::new(
        pool,
        &args(&["--log-mail"]),
        std::sync::Arc::new(kit::clock::SystemClock),
        None,
    )
    .unwrap();

    // The binary says so and exits (killed and failed if it serves instead).
    let log = std::env::temp_dir().join(format!("auth-no-smtp-{}.log", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .env("AUTH_DATABASE_URL", db.url())
        .env("AUTH_MASTER_KEY", MASTER_KEY)
        .env(
            "AUTH_LISTEN_ADDR",
            format!("127.0.0.1:{}", kit::testing::free_port()),
        )
        .env(
            "AUTH_ADMIN_ADDR",
            format!("127.0.0.1:{}", kit::testing::free_port()),
        )
        .env_remove("SMTP_URL")
        .env_remove("AUTH_LOG_MAIL")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("auth-svc started without SMTP_URL");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(stderr.contains("AUTH_LOG_MAIL=true"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_from_many_addresses_do_not_close_sign_up_for_everyone() {
    let t = TestServer::with_args(args(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--registrations-per-hour",
        "2",
    ]))
    .await;
    t.register("taken").await;
    // Refused probes from many addresses cost no argon2 run, so they use none of the hour's budget.
    for n in 0..5 {
        let address = format!("192.0.2.{n}");
        let refused = t
            .client()
            .register(with_entries(
                &[("x-forwarded-for", &address)],
                registration("taken", &format!("probe{n}@example.com")),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    }
    t.client()
        .register(with_entries(
            &[("x-forwarded-for", "198.51.100.1")],
            registration("newcomer", "newcomer@example.com"),
        ))
        .await
        .unwrap();
}
