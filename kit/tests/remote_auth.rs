//! Authentication over a gRPC auth server that checks its caller: RemoteAuth tells a bad presented
//! key (UNAUTHENTICATED) from this service's own broken credential or an outage (UNAVAILABLE), and
//! the Authenticator follows the JWKS, bounds token lifetimes and keeps its key caches bounded.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use kit::{
    caller::{
        AuthConfig, Authenticator, CredentialSource, MIN_JWKS_FETCH_INTERVAL,
        REFUSED_API_KEY_CACHE_ENTRIES, RemoteAuth,
    },
    testing::{AuthServer, TestIssuer},
};
use tonic::Code;
use uuid::Uuid;

fn service_key(issuer: &TestIssuer) -> String {
    issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"])
}

async fn verify_code(auth: &RemoteAuth, key: &str) -> Code {
    match auth.verify_api_key(key).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn bad_presented_keys_are_unauthenticated() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let auth = RemoteAuth::new(&server.url(), &service_key(&issuer)).unwrap();
    let user = Uuid::now_v7();
    let key = issuer.add_api_key(user, &["quota:consume"], &["user"]);

    assert_eq!(auth.verify_api_key(&key).await.unwrap().user_id, user);
    assert_eq!(
        verify_code(&auth, "cmk_unknown0key").await,
        Code::Unauthenticated
    );
    // auth-svc answers INVALID_ARGUMENT for a malformed key; callers see an invalid key.
    assert_eq!(
        verify_code(&auth, "cmk_not-base62").await,
        Code::Unauthenticated
    );
    issuer.revoke_api_key(&key);
    assert_eq!(verify_code(&auth, &key).await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_broken_own_key_is_unavailable_not_the_callers_fault() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let key = issuer.add_api_key(Uuid::now_v7(), &["quota:consume"], &["user"]);

    let revoked = service_key(&issuer);
    issuer.revoke_api_key(&revoked);
    let auth = RemoteAuth::new(&server.url(), &revoked).unwrap();
    assert_eq!(verify_code(&auth, &key).await, Code::Unavailable);

    let without_scope = issuer.add_api_key(Uuid::now_v7(), &["quota:read"], &["service"]);
    let auth = RemoteAuth::new(&server.url(), &without_scope).unwrap();
    assert_eq!(verify_code(&auth, &key).await, Code::Unavailable);

    drop(server);
    let auth = RemoteAuth::new(&server_url_of_nothing(), &service_key(&issuer)).unwrap();
    assert_eq!(verify_code(&auth, &key).await, Code::Unavailable);
}

/// An address nothing listens on.
fn server_url_of_nothing() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// An authenticator as a service builds it, over `server` with its own service key.
fn authenticator(server: &AuthServer, issuer: &TestIssuer, config: AuthConfig) -> Authenticator {
    let remote = RemoteAuth::new(&server.url(), &service_key(issuer)).unwrap();
    Authenticator::new(config, Arc::new(remote))
}

async fn token_code(auth: &Authenticator, token: &str) -> Code {
    match auth.verify_token(token).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn a_key_dropped_from_the_jwks_stops_verifying_after_the_refresh_interval() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let interval = Duration::from_secs(1);
    let auth = authenticator(
        &server,
        &issuer,
        AuthConfig {
            jwks_refresh_interval: interval,
            ..issuer.config().clone()
        },
    );
    let user = Uuid::now_v7();
    let old_token = issuer.token(user, &[]);
    assert_eq!(token_code(&auth, &old_token).await, Code::Ok);

    // Rotated: the new key is fetched on its unknown kid, the retired one keeps verifying.
    issuer.rotate_key();
    let new_token = issuer.token(user, &[]);
    tokio::time::sleep(MIN_JWKS_FETCH_INTERVAL + Duration::from_millis(100)).await;
    assert_eq!(token_code(&auth, &new_token).await, Code::Ok);
    assert_eq!(token_code(&auth, &old_token).await, Code::Ok);

    // Dropped (its tokens expired, or it leaked): refused once the JWKS is refreshed.
    issuer.drop_retired_keys();
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert_eq!(token_code(&auth, &old_token).await, Code::Unauthenticated);
    assert_eq!(token_code(&auth, &new_token).await, Code::Ok);
}

#[tokio::test]
async fn a_token_living_longer_than_the_configured_lifetime_is_refused() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let auth = authenticator(&server, &issuer, issuer.config().clone());
    let user = Uuid::now_v7();
    let lifetime = issuer.config().access_token_ttl;

    let as_issued = issuer.token_living(user, lifetime);
    assert_eq!(token_code(&auth, &as_issued).await, Code::Ok);
    let long = issuer.token_living(user, lifetime + Duration::from_secs(1));
    assert_eq!(token_code(&auth, &long).await, Code::Unauthenticated);
    let forever = issuer.token_living(user, Duration::from_secs(10 * 365 * 86_400));
    assert_eq!(token_code(&auth, &forever).await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let auth = authenticator(&server, &issuer, issuer.config().clone());
    let user = Uuid::now_v7();

    // A clock a second fast is within the leeway; a token minted for later is not.
    let skewed = issuer.token_issued_ahead(user, Duration::from_secs(1));
    assert_eq!(token_code(&auth, &skewed).await, Code::Ok);
    let ahead = issuer.token_issued_ahead(user, Duration::from_secs(3600));
    assert_eq!(token_code(&auth, &ahead).await, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_api_keys_keeps_the_cache_bounded() {
    let issuer = Arc::new(TestIssuer::new());
    let server = AuthServer::start(issuer.clone()).await;
    let auth = authenticator(&server, &issuer, issuer.config().clone());
    let user = Uuid::now_v7();
    let key = issuer.add_api_key(user, &["quota:read"], &[]);
    assert_eq!(auth.verify_api_key(&key).await.unwrap().user_id, user);

    let flood = REFUSED_API_KEY_CACHE_ENTRIES + 2_000;
    let refused = stream::iter(0..flood)
        .map(|_| {
            let auth = &auth;
            async move {
                let made_up = format!("cmk_{}", Uuid::new_v4().simple());
                auth.verify_api_key(&made_up).await.unwrap_err().code()
            }
        })
        .buffer_unordered(32)
        .filter(|code| std::future::ready(*code == Code::Unauthenticated))
        .count()
        .await;
    assert_eq!(u64::try_from(refused).unwrap(), flood);

    let cached = auth.cached_api_keys();
    assert!(
        cached <= REFUSED_API_KEY_CACHE_ENTRIES + 1,
        "{cached} verdicts cached after {flood} made-up keys"
    );
    // The genuine key still verifies.
    assert_eq!(auth.verify_api_key(&key).await.unwrap().user_id, user);
}
