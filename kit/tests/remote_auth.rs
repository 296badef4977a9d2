//! RemoteAuth tells a bad presented key (UNAUTHENTICATED) from this service's own broken
//! credential or an outage (UNAVAILABLE), against a gRPC auth server that checks its caller.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use kit::{
    caller::{CredentialSource, RemoteAuth},
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
