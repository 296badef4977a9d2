//! The accounts half through the gRPC API of an in-process server on a real PostgreSQL: sessions
//! and refresh rotation, lockout, password reset, email verification, administration, what the
//! database stores, and the real binary driven with grpcurl.

use auth_svc::{MIGRATIONS, SPEC};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::RunQueryDsl;
use kit::testing::{
    Binary, assert_migrations_revert, assert_schema_rs_matches, grpcurl, with_api_key, with_bearer,
};
use proto::auth::{
    ChangePasswordRequest, ConfirmPasswordResetRequest, DeleteUserRequest, GetMeRequest,
    GetUserRequest, ListAuditEventsRequest, ListSessionsRequest, ListUsersRequest, LogoutRequest,
    RefreshRequest, RegisterRequest, RequestPasswordResetRequest, RevokeSessionRequest, RoleList,
    UpdateMeRequest, UpdateUserRequest, UserStatus, VerifyEmailRequest,
};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::common::{PASSWORD, TestServer, args, production_args, set_roles_request};

const NEW_PASSWORD: &str = "purple elephant drinking tea 77";

fn refresh(token: &str) -> RefreshRequest {
    RefreshRequest {
        refresh_token: token.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rs_matches_the_migrations() {
    assert_schema_rs_matches(
        SPEC.name,
        MIGRATIONS,
        include_str!("../../src/store/schema.rs"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_revert_and_reapply() {
    assert_migrations_revert(SPEC.name, MIGRATIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_of_a_rotated_token_revokes_the_session() {
    let t = TestServer::start().await;
    let (user_id, login) = t.signup("ada").await;
    assert_eq!(login.token_type, "Bearer");
    let me = t
        .client()
        .get_me(with_bearer(&login.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().user_id, user_id);

    let rotated = t
        .client()
        .refresh(refresh(&login.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.refresh_token, login.refresh_token);
    // The new access token works.
    t.client()
        .get_me(with_bearer(&rotated.access_token, GetMeRequest {}))
        .await
        .unwrap();

    // The old token again: theft. Refused, and the whole session with it.
    let reuse = t
        .client()
        .refresh(refresh(&login.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let after = t
        .client()
        .refresh(refresh(&rotated.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);

    let (admin_id, admin) = t.admin("root").await;
    let events = t
        .client()
        .list_audit_events(with_bearer(
            &admin.access_token,
            ListAuditEventsRequest {
                subject_user_id: user_id.clone(),
                event_type: "token.reuse_detected".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_ne!(admin_id, user_id);

    // Logout is idempotent and ends a session.
    let second = t.login("ada", PASSWORD).await.unwrap();
    for _ in 0..2 {
        t.client()
            .logout(LogoutRequest {
                refresh_token: second.refresh_token.clone(),
            })
            .await
            .unwrap();
    }
    let ended = t
        .client()
        .refresh(refresh(&second.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_lock_the_account_until_the_window_passes() {
    let t = TestServer::start().await;
    t.signup("grace").await;
    for _ in 0..5 {
        let err = t.login("grace", "wrong password 123").await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // Locked, even with the right password, and the delay is given.
    let locked = t.login("GRACE@example.com", PASSWORD).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    let retry_after: u64 = locked
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry_after), "{retry_after}");
    assert!(locked.message().contains(&retry_after.to_string()));

    // A restart changes nothing: the state is in PostgreSQL.
    let restarted = crate::common::state(
        &t.db,
        &args(&[]),
        std::sync::Arc::clone(&t.clock),
        std::sync::Arc::clone(&t.mailer),
    );
    let client = auth_svc::domain::ClientInfo::default();
    let again = auth_svc::service::sessions::login(&restarted, &client, "grace", PASSWORD).await;
    assert!(matches!(
        again,
        Err(auth_svc::error::Error::LockedOut { .. })
    ));

    t.clock
        .advance(chrono::Duration::minutes(15) + chrono::Duration::seconds(1));
    t.login("grace", PASSWORD).await.unwrap();
    // The success reset the account's counter: four more failures do not lock it.
    for _ in 0..4 {
        t.login("grace", "wrong password 123").await.unwrap_err();
    }
    t.login("grace", PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_older_than_the_window_are_pruned() {
    let t = TestServer::start().await;
    t.login("nobody", PASSWORD).await.unwrap_err();
    t.clock.advance(chrono::Duration::minutes(16));
    t.login("nobody", PASSWORD).await.unwrap_err();
    let mut conn = t.db.connect(SPEC.name).await;
    let before = kit::clock::Clock::now(&*t.clock) - chrono::Duration::minutes(15);
    let pruned = auth_svc::store::attempts::prune(&mut conn, before)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_failures_from_one_address_lock_that_address() {
    // The test stands for a load balancer (10.0.0.1) in front of the clients.
    let t = TestServer::with_args(args(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8"])).await;
    t.signup("hopper").await;
    let attempt = |name: String, address: &'static str| {
        let mut request = Request::new(proto::auth::LoginRequest {
            username_or_email: name,
            password: "not the password 9".into(),
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        let mut client = t.client();
        async move { client.login(request).await }
    };
    for n in 0..20 {
        let err = attempt(format!("nobody{n}"), "198.51.100.9, 10.0.0.1")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let locked = attempt("hopper".into(), "198.51.100.9").await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted);
    // Another client is not affected.
    let other = attempt("hopper".into(), "198.51.100.10").await.unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated);
}

/// How many of `results` failed with each code, in the order of `codes`.
fn count_codes<T>(results: &[Result<T, tonic::Status>], codes: &[Code]) -> Vec<usize> {
    codes
        .iter()
        .map(|code| {
            results
                .iter()
                .filter(|result| result.as_ref().err().map(tonic::Status::code) == Some(*code))
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_never_pass_the_limits() {
    // Full argon2 cost: every guess is still being checked while the others arrive. The test
    // stands for a trusted proxy forwarding several clients.
    let mut production = production_args();
    production.trusted_proxies = "127.0.0.1".parse().unwrap();
    let t = TestServer::with_args(production).await;
    t.register("turing").await;
    let guess = |name: String, address: &'static str| {
        let mut request = Request::new(proto::auth::LoginRequest {
            username_or_email: name,
            password: "not the password 9".into(),
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        let mut client = t.client();
        async move { client.login(request).await }
    };
    let codes = [Code::Unauthenticated, Code::ResourceExhausted];

    // 20 guesses at once on one account (from different addresses): 5 are checked.
    let addresses = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
    ];
    let at_once = (0..20).map(|n| guess("turing".into(), addresses[n % addresses.len()]));
    let results = futures::future::join_all(at_once).await;
    assert_eq!(count_codes(&results, &codes), [5, 15]);

    // 25 guesses at once from one address (on different names): 20 are checked.
    let at_once = (0..25).map(|n| guess(format!("nobody{n}"), "198.51.100.7"));
    let results = futures::future::join_all(at_once).await;
    assert_eq!(count_codes(&results, &codes), [20, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_client() {
    let t = TestServer::with_args(args(&[
        "--registrations-per-client-hour",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
    ]))
    .await;
    let register = |name: &str, address: &'static str| {
        let mut request = Request::new(RegisterRequest {
            email: format!("{name}@example.com"),
            username: name.to_owned(),
            password: PASSWORD.to_owned(),
            display_name: String::new(),
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        let mut client = t.client();
        async move { client.register(request).await }
    };
    register("one", "192.0.2.1").await.unwrap();
    register("two", "192.0.2.1").await.unwrap();
    let third = register("three", "192.0.2.1").await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    register("four", "192.0.2.2").await.unwrap();
    t.clock.advance(chrono::Duration::minutes(61));
    register("five", "192.0.2.1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_wrong_passwords_and_inactive_accounts_look_alike() {
    let t = TestServer::start().await;
    t.signup("alan").await;
    let (disabled_id, _) = t.signup("disabled").await;
    let (deleted_id, _) = t.signup("deleted").await;
    let (_, admin) = t.admin("root").await;
    t.client()
        .update_user(with_bearer(
            &admin.access_token,
            UpdateUserRequest {
                user_id: disabled_id,
                active: Some(false),
                roles: None,
            },
        ))
        .await
        .unwrap();
    t.client()
        .delete_user(with_bearer(
            &admin.access_token,
            DeleteUserRequest {
                user_id: deleted_id,
            },
        ))
        .await
        .unwrap();
    let mut answers = Vec::new();
    for (name, password) in [
        ("nobody", PASSWORD),
        ("alan", "wrong password 123"),
        ("disabled", PASSWORD),
        ("deleted", PASSWORD),
    ] {
        let err = t.login(name, password).await.unwrap_err();
        answers.push((err.code(), err.message().to_owned()));
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "{answers:?}"
    );
    assert_eq!(
        answers[0],
        (Code::Unauthenticated, "invalid credentials".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_works_once_and_never_after_expiry() {
    let t = TestServer::start().await;
    let (_, login) = t.signup("barbara").await;
    let request = || RequestPasswordResetRequest {
        email: "Barbara@Example.com".into(),
    };
    t.client().request_password_reset(request()).await.unwrap();
    // Unknown emails get the same answer and no mail.
    t.client()
        .request_password_reset(RequestPasswordResetRequest {
            email: "nobody@example.com".into(),
        })
        .await
        .unwrap();
    let token = t.mailer.token("barbara@example.com", "Reset", 0).await;
    let confirm = |token: &str, password: &str| ConfirmPasswordResetRequest {
        token: token.to_owned(),
        new_password: password.to_owned(),
    };
    let weak = t
        .client()
        .confirm_password_reset(confirm(&token, "password1"))
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument);
    assert!(weak.message().starts_with("new_password:"), "{weak:?}");
    t.client()
        .confirm_password_reset(confirm(&token, NEW_PASSWORD))
        .await
        .unwrap();
    // Sessions were revoked; the new password works, the old one does not.
    let revoked = t
        .client()
        .refresh(refresh(&login.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    t.login("barbara", NEW_PASSWORD).await.unwrap();
    t.login("barbara", PASSWORD).await.unwrap_err();
    // Used once: never again.
    let reused = t
        .client()
        .confirm_password_reset(confirm(&token, PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);

    t.client().request_password_reset(request()).await.unwrap();
    let late = t.mailer.token("barbara@example.com", "Reset", 1).await;
    t.clock.advance(chrono::Duration::minutes(31));
    let expired = t
        .client()
        .confirm_password_reset(confirm(&late, PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
}

#[derive(QueryableByName)]
struct Dump {
    #[diesel(sql_type = Text)]
    dump: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_never_holds_a_password_or_token_in_clear() {
    let t = TestServer::start().await;
    let (_, login) = t.signup("edsger").await;
    let verify = t.mailer.token("edsger@example.com", "Confirm", 0).await;
    t.client()
        .request_password_reset(RequestPasswordResetRequest {
            email: "edsger@example.com".into(),
        })
        .await
        .unwrap();
    let reset = t.mailer.token("edsger@example.com", "Reset", 0).await;
    let rotated = t
        .client()
        .refresh(refresh(&login.refresh_token))
        .await
        .unwrap()
        .into_inner();
    // A password typed into the username box: the failed attempt must not keep it.
    let typo = t
        .login(" Correct Horse Battery Staple 42", "x")
        .await
        .unwrap_err();
    assert_eq!(typo.code(), Code::Unauthenticated);

    let mut conn = t.db.connect(SPEC.name).await;
    let tables: Vec<Dump> = sql_query(
        "SELECT table_name::text AS dump FROM information_schema.tables \
         WHERE table_schema = 'auth' AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let mut everything = String::new();
    for table in tables {
        let rows: Vec<Dump> = sql_query(format!(
            "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') AS dump FROM {} t",
            table.dump
        ))
        .load(&mut conn)
        .await
        .unwrap();
        everything.push_str(&rows[0].dump);
    }
    assert!(everything.contains("$argon2id$"));
    for secret in [
        PASSWORD,
        &login.refresh_token,
        &rotated.refresh_token,
        &verify,
        &reset,
    ] {
        assert!(!everything.contains(secret), "{secret} is stored in clear");
        let raw = URL_SAFE_NO_PAD
            .decode(secret)
            .map(hex::encode)
            .unwrap_or_default();
        assert!(raw.is_empty() || !everything.contains(&raw));
    }
    // What is stored is the SHA-256 (bytea renders as hex).
    let hash = hex::encode(Sha256::digest(rotated.refresh_token.as_bytes()));
    assert!(everything.contains(&hash));
    // The attempt on the typed name counts under a keyed hash of the normalised name: its plain
    // SHA-256 could be guessed offline.
    let typed = hex::encode(Sha256::digest(PASSWORD.as_bytes()));
    assert!(!everything.contains(&typed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_refuse_non_admins() {
    let t = TestServer::start().await;
    let (user_id, login) = t.signup("mallory").await;
    let token = login.access_token.as_str();
    let denied = [
        t.client()
            .list_users(with_bearer(token, ListUsersRequest::default()))
            .await
            .map(drop),
        t.client()
            .get_user(with_bearer(
                token,
                GetUserRequest {
                    user_id: user_id.clone(),
                },
            ))
            .await
            .map(drop),
        t.client()
            .update_user(with_bearer(
                token,
                UpdateUserRequest {
                    user_id: user_id.clone(),
                    active: None,
                    roles: Some(RoleList {
                        values: vec!["admin".into()],
                    }),
                },
            ))
            .await
            .map(drop),
        t.client()
            .delete_user(with_bearer(
                token,
                DeleteUserRequest {
                    user_id: user_id.clone(),
                },
            ))
            .await
            .map(drop),
        t.client()
            .list_audit_events(with_bearer(token, ListAuditEventsRequest::default()))
            .await
            .map(drop),
    ];
    for result in denied {
        assert_eq!(result.unwrap_err().code(), Code::PermissionDenied);
    }
    let anonymous = t
        .client()
        .list_users(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let t = TestServer::start().await;
    let register =
        |email: &str, username: &str, password: &str, display_name: &str| RegisterRequest {
            email: email.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            display_name: display_name.to_owned(),
        };
    let long_email = format!("{}@example.com", "a".repeat(250));
    let cases = [
        (register("", "ada", PASSWORD, ""), "email:"),
        (register(&long_email, "ada", PASSWORD, ""), "email:"),
        (register("not-an-email", "ada", PASSWORD, ""), "email:"),
        (register("ada@example.com", "", PASSWORD, ""), "username:"),
        (
            register("ada@example.com", "a d a", PASSWORD, ""),
            "username:",
        ),
        (register("ada@example.com", "ada", "", ""), "password:"),
        (
            register("ada@example.com", "ada", "password1234", ""),
            "password:",
        ),
        (
            register("ada@example.com", "ada", &"x".repeat(129), ""),
            "password:",
        ),
        (
            register("ada@example.com", "ada", PASSWORD, &"n".repeat(65)),
            "display_name:",
        ),
    ];
    for (request, field) in cases {
        let err = t.client().register(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field} vs {err:?}");
    }
    let empty_login = t.login("", PASSWORD).await.unwrap_err();
    assert!(empty_login.message().starts_with("username_or_email:"));
    let empty_refresh = t.client().refresh(refresh("")).await.unwrap_err();
    assert!(empty_refresh.message().starts_with("refresh_token:"));

    // Taken email or username: ALREADY_EXISTS saying which.
    t.register("ada").await;
    let taken = t
        .client()
        .register(register("ADA@example.com", "other", PASSWORD, ""))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert!(taken.message().starts_with("email"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_verification_profile_changes_and_password_change() {
    let t = TestServer::with_args(args(&["--require-verified-email"])).await;
    t.register("donald").await;
    let unverified = t.login("donald", PASSWORD).await.unwrap_err();
    assert_eq!(unverified.code(), Code::FailedPrecondition);
    let token = t.mailer.token("donald@example.com", "Confirm", 0).await;
    let verified = t
        .client()
        .verify_email(VerifyEmailRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.user.unwrap().email_verified);
    let again = t
        .client()
        .verify_email(VerifyEmailRequest { token })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let first = t.login("donald", PASSWORD).await.unwrap();
    let second = t.login("donald", PASSWORD).await.unwrap();
    let updated = t
        .client()
        .update_me(with_bearer(
            &first.access_token,
            UpdateMeRequest {
                display_name: Some("Don".into()),
                email: Some("don@example.org".into()),
                current_password: PASSWORD.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.email_verification_required);
    let user = updated.user.unwrap();
    // The new address waits for its link; the verified one stays until then.
    assert_eq!(
        (
            user.display_name.as_str(),
            user.email.as_str(),
            user.email_verified,
            user.pending_email.as_str()
        ),
        ("Don", "donald@example.com", true, "don@example.org")
    );
    let token = t.mailer.token("don@example.org", "Confirm", 0).await;
    let adopted = t
        .client()
        .verify_email(VerifyEmailRequest { token })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (
            adopted.email.as_str(),
            adopted.email_verified,
            adopted.pending_email.as_str()
        ),
        ("don@example.org", true, "")
    );

    let sessions = t
        .client()
        .list_sessions(with_bearer(
            &first.access_token,
            ListSessionsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);

    let wrong = t
        .client()
        .change_password(with_bearer(
            &first.access_token,
            ChangePasswordRequest {
                old_password: "not my password 1".into(),
                new_password: NEW_PASSWORD.into(),
                revoke_api_keys: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    t.client()
        .change_password(with_bearer(
            &first.access_token,
            ChangePasswordRequest {
                old_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
                revoke_api_keys: false,
            },
        ))
        .await
        .unwrap();
    // The other session is revoked, the calling one stays.
    t.client()
        .refresh(refresh(&second.refresh_token))
        .await
        .unwrap_err();
    let kept = t
        .client()
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();

    // RevokeSession: unknown ids are NOT_FOUND, the own session can be revoked.
    let current = t
        .client()
        .list_sessions(with_bearer(
            &kept.access_token,
            ListSessionsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(current.len(), 1);
    let missing = t
        .client()
        .revoke_session(with_bearer(
            &kept.access_token,
            RevokeSessionRequest {
                session_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    t.client()
        .revoke_session(with_bearer(
            &kept.access_token,
            RevokeSessionRequest {
                session_id: current[0].session_id.clone(),
            },
        ))
        .await
        .unwrap();
    t.client()
        .refresh(refresh(&kept.refresh_token))
        .await
        .unwrap_err();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_disable_and_delete_users() {
    let t = TestServer::start().await;
    let (admin_id, admin) = t.admin("root").await;
    let token = admin.access_token.as_str();
    let (ada_id, ada) = t.verified_signup("ada").await;
    t.signup("alan").await;
    t.signup("grace").await;

    let page = |page_token: String| ListUsersRequest {
        username: "A".into(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let first = t
        .client()
        .list_users(with_bearer(token, page(String::new())))
        .await
        .unwrap()
        .into_inner();
    let names = |users: &[proto::auth::User]| -> Vec<String> {
        users.iter().map(|user| user.username.clone()).collect()
    };
    // Newest first; "root" does not match.
    assert_eq!(names(&first.users), ["grace", "alan"]);
    let second = t
        .client()
        .list_users(with_bearer(token, page(first.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&second.users), ["ada"]);
    assert!(second.next_page_token.is_empty());

    // Admins cannot lock themselves out.
    let myself = t
        .client()
        .update_user(with_bearer(
            token,
            UpdateUserRequest {
                user_id: admin_id.clone(),
                active: Some(false),
                roles: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(myself.code(), Code::FailedPrecondition);
    let unknown_role = t
        .client()
        .update_user(with_bearer(
            token,
            UpdateUserRequest {
                user_id: ada_id.clone(),
                active: None,
                roles: Some(RoleList {
                    values: vec!["root".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert!(unknown_role.message().starts_with("roles:"));

    // Ada's API key works until she is disabled; then it is refused at once (no cache delay).
    let key = t
        .api_key(&ada.access_token, "laptop", &["quota:read"])
        .await;
    let authenticator = &t.state.credentials.authenticator;
    authenticator.verify_api_key(&key).await.unwrap();
    let disabled = t
        .client()
        .update_user(with_bearer(
            token,
            UpdateUserRequest {
                user_id: ada_id.clone(),
                active: Some(false),
                roles: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(disabled.status, UserStatus::Disabled as i32);
    t.client()
        .refresh(refresh(&ada.refresh_token))
        .await
        .unwrap_err();
    let refused = authenticator.verify_api_key(&key).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    for _ in 0..2 {
        let deleted = t
            .client()
            .delete_user(with_bearer(
                token,
                DeleteUserRequest {
                    user_id: ada_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!(deleted.status, UserStatus::Deleted as i32);
        assert_eq!(
            (deleted.email.as_str(), deleted.username.as_str()),
            ("", "")
        );
    }
    let kept = t
        .client()
        .get_user(with_bearer(
            token,
            GetUserRequest {
                user_id: ada_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(kept.status, UserStatus::Deleted as i32);
    // The email and username are free again; the new account is another user.
    let again = t.register("ada").await;
    assert_ne!(again, ada_id);

    let events = t
        .client()
        .list_audit_events(with_bearer(
            token,
            ListAuditEventsRequest {
                subject_user_id: ada_id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "user.deleted",
            "user.updated",
            "api_key.created",
            "login.succeeded",
            "email.verified",
            "user.registered"
        ]
    );
    assert_eq!(events[0].actor_user_id, admin_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_role_is_refused_to_the_owners_api_keys_at_once() {
    let t = TestServer::start().await;
    let (_, root) = t.admin("root").await;
    let set_roles = |user_id: &str, roles: &[&str]| {
        let request = set_roles_request(&root.access_token, user_id, roles);
        let mut client = t.client();
        async move { client.update_user(request).await }
    };

    // An admin's key calls admin RPCs (and its verification is cached) until the role goes.
    let (deputy_id, deputy) = t.admin("deputy").await;
    let admin_key = t.api_key(&deputy.access_token, "ops", &["admin"]).await;
    let list_users = || {
        let request = with_api_key(&admin_key, ListUsersRequest::default());
        let mut client = t.client();
        async move { client.list_users(request).await }
    };
    list_users().await.unwrap();
    set_roles(&deputy_id, &[]).await.unwrap();
    let refused = list_users().await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The same for a service's key and the internal VerifyApiKey.
    let (robot_id, _) = t.signup("robot").await;
    make_service_account(&t, &robot_id).await;
    let service_key = t
        .key_in_store(
            &robot_id,
            &["service"],
            auth_svc::domain::api_key::Grantor::Operator,
        )
        .await;
    let verify = || {
        let request = proto::auth::VerifyApiKeyRequest {
            key: admin_key.clone(),
        };
        let request = with_api_key(&service_key, request);
        let mut client = t.client();
        async move { client.verify_api_key(request).await }
    };
    verify().await.unwrap();
    set_roles(&robot_id, &[]).await.unwrap();
    let refused = verify().await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_registers_logs_in_and_creates_admins() {
    let db = kit::testing::TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let server = Binary::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_auth-svc")),
        "AUTH",
        db.url(),
        &[
            ("AUTH_MASTER_KEY", crate::common::MASTER_KEY),
            ("AUTH_LOG_MAIL", "true"),
            ("ARGON2_MEMORY_KIB", "1024"),
            ("ARGON2_ITERATIONS", "1"),
        ],
    );
    let addr = server.addr.to_string();
    let call = |method: &str, body: &str| {
        let output = grpcurl(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            &format!("commerce.auth.v1.AuthService/{method}"),
        ]);
        assert!(
            output.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let registered = call(
        "Register",
        &serde_json::json!({
            "email": "linus@example.com",
            "username": "linus",
            "password": PASSWORD,
        })
        .to_string(),
    );
    assert_eq!(registered["user"]["username"], "linus");
    let login = call(
        "Login",
        &serde_json::json!({ "usernameOrEmail": "linus", "password": PASSWORD }).to_string(),
    );
    assert_eq!(login["tokenType"], "Bearer");
    assert!(login["accessToken"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(login["user"]["userId"], registered["user"]["userId"]);

    // `admin create` (as `just up` runs it), password from the environment, then from stdin.
    let admin_create = |username: &str, env_password: Option<&str>, stdin: &str| {
        use std::io::Write;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"));
        command
            .args(["admin", "create", "--email"])
            .arg(format!("{username}@localhost"))
            .args(["--username", username])
            .env("AUTH_DATABASE_URL", db.url())
            .env("AUTH_MASTER_KEY", crate::common::MASTER_KEY)
            .env_remove("ADMIN_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(password) = env_password {
            command.env("ADMIN_PASSWORD", password);
        }
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let created = admin_create("boss", Some(PASSWORD), "");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let admin_id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    uuid::Uuid::parse_str(&admin_id).unwrap();
    let from_stdin = admin_create("boss2", None, &format!("{NEW_PASSWORD}\n"));
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    let again = admin_create("boss", Some(PASSWORD), "");
    assert!(!again.status.success());

    let admin = call(
        "Login",
        &serde_json::json!({ "usernameOrEmail": "boss@localhost", "password": PASSWORD })
            .to_string(),
    );
    assert_eq!(admin["user"]["roles"][0], "admin");
    let bearer = format!(
        "authorization: Bearer {}",
        admin["accessToken"].as_str().unwrap()
    );
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &bearer,
        "-d",
        r#"{"username": "linus"}"#,
        &addr,
        "commerce.auth.v1.AuthService/ListUsers",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let users: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(users["users"][0]["email"], "linus@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_mail_goes_to_the_outbox_without_its_secret() {
    let db = kit::testing::TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let pool = kit::db::pool(db.url(), SPEC.name, 2, std::time::Duration::from_secs(5)).unwrap();
    let state = auth_svc::State::new(
        pool,
        &args(&["--log-mail"]),
        std::sync::Arc::new(kit::clock::SystemClock),
        None,
    )
    .unwrap();
    let registration = auth_svc::domain::validate::Registration {
        email: "niklaus@example.com",
        username: "niklaus",
        password: PASSWORD,
        display_name: None,
    };
    let client = auth_svc::domain::ClientInfo::default();
    auth_svc::service::registration::register(&state, &client, &registration)
        .await
        .unwrap();
    let mut conn = db.connect(SPEC.name).await;
    for _ in 0..100 {
        let rows: Vec<Dump> =
            sql_query("SELECT recipient || ' ' || subject || ' ' || body AS dump FROM outbox")
                .load(&mut conn)
                .await
                .unwrap();
        if let Some(row) = rows.into_iter().next() {
            assert!(
                row.dump.starts_with("niklaus@example.com Confirm"),
                "{}",
                row.dump
            );
            assert!(!row.dump.contains("token="), "{}", row.dump);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no outbox row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_at_full_argon2_cost_do_not_starve_a_small_pool() {
    // One pooled connection: a login that held it while argon2 runs would make the others wait
    // past the acquire timeout and fail with UNAVAILABLE.
    let t = TestServer::with_pool_size(production_args(), 1).await;
    t.register("ada").await;
    let logins = (0..12).map(|_| t.login("ada", PASSWORD));
    for result in futures::future::join_all(logins).await {
        let login = result.unwrap_or_else(|status| panic!("login failed: {status:?}"));
        assert!(!login.access_token.is_empty());
    }
}

/// A CreateApiKey request for a `quota:read` key, with `password` ("" for none).
fn key_request(password: &str) -> proto::auth::CreateApiKeyRequest {
    proto::auth::CreateApiKeyRequest {
        name: "laptop".into(),
        scopes: vec!["quota:read".into()],
        expires_at: None,
        password: password.into(),
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// The number in `details->>key` of the newest audit event of `event_type`.
async fn audited_count(t: &TestServer, event_type: &str, key: &str) -> i64 {
    sql_query(
        "SELECT (details->>$2)::bigint AS count FROM audit_events WHERE event_type = $1 \
         ORDER BY occurred_at DESC LIMIT 1",
    )
    .bind::<Text, _>(event_type)
    .bind::<Text, _>(key)
    .get_result::<Count>(&mut t.db.connect(SPEC.name).await)
    .await
    .unwrap()
    .count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatters_api_key_dies_when_the_owner_resets_the_password() {
    let t = TestServer::start().await;
    // Someone registered the owner's address first and holds a key (made before keys needed a
    // verified email, or leaked some other way), verified and cached by this process.
    let (squatter_id, squatter) = t.signup("victim").await;
    let key = t
        .key_in_store(
            &squatter_id,
            &["quota:read"],
            auth_svc::domain::api_key::Grantor::Owner,
        )
        .await;
    let authenticator = &t.state.credentials.authenticator;
    authenticator.verify_api_key(&key).await.unwrap();

    // The owner reclaims the address by "forgot password": the unverified address the account
    // registered with still gets the link.
    t.client()
        .request_password_reset(RequestPasswordResetRequest {
            email: "victim@example.com".into(),
        })
        .await
        .unwrap();
    let token = t.mailer.token("victim@example.com", "Reset", 0).await;
    t.client()
        .confirm_password_reset(ConfirmPasswordResetRequest {
            token,
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .unwrap();

    let refused = authenticator.verify_api_key(&key).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refresh_refused = t
        .client()
        .refresh(refresh(&squatter.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(refresh_refused.code(), Code::Unauthenticated);
    assert_eq!(
        audited_count(&t, "password.reset", "api_keys_revoked").await,
        1
    );
    let owner = t.login("victim", NEW_PASSWORD).await.unwrap();
    assert!(owner.user.unwrap().email_verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_access_token_cannot_mint_an_api_key_after_the_reauth_window() {
    let t = TestServer::start().await;
    let (_, login) = t.verified_signup("ada").await;
    let create = |token: &str, password: &str| {
        let request = with_bearer(token, key_request(password));
        let mut client = t.client();
        async move { client.create_api_key(request).await }
    };
    // Just signed in: no password needed.
    create(&login.access_token, "").await.unwrap();

    // Eleven minutes later the same session (as a thief holding its tokens) needs the password,
    // and refreshing does not make the sign-in recent again.
    t.clock.advance(chrono::Duration::minutes(11));
    let stale = create(&login.access_token, "").await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("sign in again"), "{stale:?}");
    let refreshed = t
        .client()
        .refresh(refresh(&login.refresh_token))
        .await
        .unwrap()
        .into_inner();
    let stale = create(&refreshed.access_token, "").await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    let wrong = create(&refreshed.access_token, "not the password 9")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    assert!(wrong.message().starts_with("password:"), "{wrong:?}");

    // The owner proves it: with the password, or by signing in again.
    create(&refreshed.access_token, PASSWORD).await.unwrap();
    let again = t.login("ada", PASSWORD).await.unwrap();
    create(&again.access_token, "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_account_cannot_create_api_keys() {
    let t = TestServer::start().await;
    let (_, login) = t.signup("alan").await;
    for password in ["", PASSWORD] {
        let refused = t
            .client()
            .create_api_key(with_bearer(&login.access_token, key_request(password)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(
            refused.message(),
            "verify your email address before creating API keys"
        );
    }
    t.verify_email("alan").await;
    t.api_key(&login.access_token, "laptop", &["quota:read"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_access_token_cannot_change_the_email() {
    let t = TestServer::start().await;
    let (_, login) = t.verified_signup("grace").await;
    let update = |current_password: &str| {
        let request = with_bearer(
            &login.access_token,
            UpdateMeRequest {
                display_name: None,
                email: Some("thief@example.org".into()),
                current_password: current_password.into(),
            },
        );
        let mut client = t.client();
        async move { client.update_me(request).await }
    };
    let missing = update("").await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(
        missing.message().starts_with("current_password:"),
        "{missing:?}"
    );
    // Guesses count towards the account's lockout: five wrong ones and even the right one waits.
    for _ in 0..5 {
        let wrong = update("a guess of the thief 1").await.unwrap_err();
        assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    }
    let locked = update(PASSWORD).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    let me = t
        .client()
        .get_me(with_bearer(&login.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (me.email.as_str(), me.email_verified),
        ("grace@example.com", true)
    );
    // The display name needs no password.
    t.client()
        .update_me(with_bearer(
            &login.access_token,
            UpdateMeRequest {
                display_name: Some("Grace H.".into()),
                email: None,
                current_password: String::new(),
            },
        ))
        .await
        .unwrap();
    // After the window, the owner with the password changes it.
    t.clock.advance(chrono::Duration::minutes(16));
    let changed = update(PASSWORD).await.unwrap().into_inner();
    assert_eq!(changed.user.unwrap().pending_email, "thief@example.org");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_address_is_told_of_an_email_change() {
    let t = TestServer::start().await;
    let (_, login) = t.verified_signup("edsger").await;
    t.change_email(&login.access_token, "edsger@new.example")
        .await
        .unwrap();
    let notice = t
        .mailer
        .mail("edsger@example.com", "email address is being changed", 0)
        .await;
    assert!(notice.intro.contains("edsger@new.example"), "{notice:?}");
    assert!(notice.intro.contains("If you did not"), "{notice:?}");
    assert!(!notice.link.contains("token="), "{notice:?}");
    t.mailer.token("edsger@new.example", "Confirm", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_not_mailed_to_an_unverified_changed_address() {
    let t = TestServer::start().await;
    let (user_id, login) = t.verified_signup("barbara").await;
    t.change_email(&login.access_token, "barbara@elsewhere.example")
        .await
        .unwrap();
    let reset = || {
        let mut client = t.client();
        async move {
            client
                .request_password_reset(RequestPasswordResetRequest {
                    email: "barbara@elsewhere.example".into(),
                })
                .await
        }
    };
    // The same answer, but no link: nothing proves this inbox is the owner's.
    reset().await.unwrap();
    let resets = || async {
        sql_query(
            "SELECT count(*) AS count FROM email_tokens \
             WHERE user_id = $1::uuid AND purpose = 'password_reset'",
        )
        .bind::<Text, _>(&user_id)
        .get_result::<Count>(&mut t.db.connect(SPEC.name).await)
        .await
        .unwrap()
        .count
    };
    assert_eq!(resets().await, 0);
    // Once verified, it gets one.
    let token = t
        .mailer
        .token("barbara@elsewhere.example", "Confirm", 0)
        .await;
    t.client()
        .verify_email(VerifyEmailRequest { token })
        .await
        .unwrap();
    reset().await.unwrap();
    assert_eq!(resets().await, 1);
    t.mailer
        .token("barbara@elsewhere.example", "Reset", 0)
        .await;
    assert_eq!(t.mailer.count("barbara@elsewhere.example", "Reset"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_stops_at_the_absolute_session_lifetime() {
    let t = TestServer::start().await;
    let (_, login) = t.signup("niklaus").await;
    // To the microsecond, as PostgreSQL keeps the sign-in time.
    let micros = |at: prost_types::Timestamp| at.seconds * 1_000_000 + i64::from(at.nanos / 1000);
    let end = micros(login.refresh_token_expires_at.unwrap());
    let mut refresh_token = login.refresh_token;
    // Refreshing every ten days never moves the end of the session (30 days after the login).
    for _ in 0..2 {
        t.clock.advance(chrono::Duration::days(10));
        let refreshed = t
            .client()
            .refresh(refresh(&refresh_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(micros(refreshed.refresh_token_expires_at.unwrap()), end);
        refresh_token = refreshed.refresh_token;
    }
    t.clock.advance(chrono::Duration::days(10));
    let over = t
        .client()
        .refresh(refresh(&refresh_token))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::Unauthenticated, "{over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_reset_link_dies_after_a_reset() {
    let t = TestServer::start().await;
    t.signup("tony").await;
    for _ in 0..2 {
        t.client()
            .request_password_reset(RequestPasswordResetRequest {
                email: "tony@example.com".into(),
            })
            .await
            .unwrap();
    }
    let older = t.mailer.token("tony@example.com", "Reset", 0).await;
    let newer = t.mailer.token("tony@example.com", "Reset", 1).await;
    let confirm = |token: String, password: &str| {
        let request = ConfirmPasswordResetRequest {
            token,
            new_password: password.into(),
        };
        let mut client = t.client();
        async move { client.confirm_password_reset(request).await }
    };
    confirm(newer, NEW_PASSWORD).await.unwrap();
    let dead = confirm(older, PASSWORD).await.unwrap_err();
    assert_eq!(dead.code(), Code::FailedPrecondition, "{dead:?}");
    t.login("tony", NEW_PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_reset_link_dies_after_a_password_change() {
    let t = TestServer::start().await;
    let (_, login) = t.signup("frances").await;
    t.client()
        .request_password_reset(RequestPasswordResetRequest {
            email: "frances@example.com".into(),
        })
        .await
        .unwrap();
    let link = t.mailer.token("frances@example.com", "Reset", 0).await;
    t.client()
        .change_password(with_bearer(
            &login.access_token,
            ChangePasswordRequest {
                old_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
                revoke_api_keys: false,
            },
        ))
        .await
        .unwrap();
    let dead = t
        .client()
        .confirm_password_reset(ConfirmPasswordResetRequest {
            token: link,
            new_password: "yet another long passphrase 31".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dead.code(), Code::FailedPrecondition, "{dead:?}");
    t.login("frances", NEW_PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_the_api_keys_a_thief_made_when_asked() {
    let t = TestServer::start().await;
    let (_, login) = t.verified_signup("margaret").await;
    let kept = t
        .api_key(&login.access_token, "kept", &["quota:read"])
        .await;
    let authenticator = &t.state.credentials.authenticator;
    let change = |old: &str, new: &str, revoke_api_keys: bool| {
        let request = with_bearer(
            &login.access_token,
            ChangePasswordRequest {
                old_password: old.into(),
                new_password: new.into(),
                revoke_api_keys,
            },
        );
        let mut client = t.client();
        async move { client.change_password(request).await }
    };
    // Not asked: the keys stay.
    change(PASSWORD, NEW_PASSWORD, false).await.unwrap();
    authenticator.verify_api_key(&kept).await.unwrap();
    // Asked: every key of the account is refused at once.
    change(NEW_PASSWORD, PASSWORD, true).await.unwrap();
    let refused = authenticator.verify_api_key(&kept).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        audited_count(&t, "password.changed", "api_keys_revoked").await,
        1
    );
}

/// Gives `user_id` the `service` role as `auth-svc service-key issue` does (UpdateUser cannot).
async fn make_service_account(t: &TestServer, user_id: &str) {
    sql_query("UPDATE users SET roles = ARRAY['service'] WHERE id = $1::uuid")
        .bind::<Text, _>(user_id)
        .execute(&mut t.db.connect(SPEC.name).await)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_grant_itself_the_service_role() {
    let t = TestServer::start().await;
    let (root_id, root) = t.admin("root").await;
    let set_roles = |user_id: &str, roles: &[&str]| {
        let request = set_roles_request(&root.access_token, user_id, roles);
        let mut client = t.client();
        async move { client.update_user(request).await }
    };
    let (user_id, _) = t.signup("mallet").await;
    for (target, roles) in [
        (&root_id, &["admin", "service"][..]),
        (&user_id, &["service"][..]),
    ] {
        let refused = set_roles(target, roles).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("auth-svc service-key issue"),
            "{}",
            refused.message()
        );
    }
    let root_now = t
        .client()
        .get_user(with_bearer(
            &root.access_token,
            GetUserRequest {
                user_id: root_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(root_now.roles, ["admin"]);

    // A service account keeps its role through UpdateUser, and can lose it.
    let (robot_id, _) = t.signup("robot").await;
    make_service_account(&t, &robot_id).await;
    set_roles(&robot_id, &["admin", "service"]).await.unwrap();
    let robot = set_roles(&robot_id, &[]).await.unwrap().into_inner();
    assert!(robot.user.unwrap().roles.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_cannot_squat_someone_elses_address() {
    let t = TestServer::start().await;
    // Mallory "changes" her email to the victim's address, which she cannot read.
    let (_, mallory) = t.verified_signup("mallory").await;
    t.change_email(&mallory.access_token, "victim@example.com")
        .await
        .unwrap();
    let squatters_link = t.mailer.token("victim@example.com", "Confirm", 0).await;
    // The address stays free: its owner registers, verifies it and can reset the password.
    t.register("victim").await;
    let owners_link = t.mailer.token("victim@example.com", "Confirm", 1).await;
    t.client()
        .verify_email(VerifyEmailRequest { token: owners_link })
        .await
        .unwrap();
    t.client()
        .request_password_reset(RequestPasswordResetRequest {
            email: "victim@example.com".into(),
        })
        .await
        .unwrap();
    t.mailer.token("victim@example.com", "Reset", 0).await;
    // Asking for a registered address reveals nothing (the answer comes with the link).
    t.change_email(&mallory.access_token, "victim@example.com")
        .await
        .unwrap();
    // Mallory's link, had she read it, no longer takes the address.
    let refused = t
        .client()
        .verify_email(VerifyEmailRequest {
            token: squatters_link,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    let me = t
        .client()
        .get_me(with_bearer(&mallory.access_token, GetMeRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.email, "mallory@example.com");
}
