//! The keys half: signing keys, access tokens as kit's Authenticator sees them, API keys and
//! VerifyApiKey, against a real PostgreSQL.

use std::{sync::Arc, time::Duration};

use auth_svc::{
    MIGRATIONS, State,
    api::Api,
    domain::{
        api_key::{Grantor, KeyRequest},
        master_key::MasterKey,
    },
    service::{api_keys, signing_keys as keys},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName, sql_query,
    sql_types::{Array, Bytea, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use kit::{
    caller::{AccessClaims, hash_api_key, scope},
    testing::{TestDb, with_api_key, with_bearer},
};
use proto::auth::{
    CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest, VerifyApiKeyRequest,
    auth_service_server::AuthService,
};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::common::{self, MASTER_KEY};

fn master_key() -> MasterKey {
    MASTER_KEY.parse().unwrap()
}

/// A fresh database and the keys half's state on it.
pub struct Keys {
    pub db: TestDb,
    pub state: State,
}

impl Keys {
    pub async fn new() -> Self {
        let db = TestDb::new(&[("auth", MIGRATIONS)]).await;
        let state = Self::state_on(&db, "commerce-mesh", "commerce-mesh");
        Self { db, state }
    }

    /// Another server process on the same database, e.g. with other token settings.
    pub fn state_on(db: &TestDb, issuer: &str, audience: &str) -> State {
        let args = common::args(&["--issuer", issuer, "--audience", audience]);
        common::state(db, &args, Arc::default(), Arc::default())
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        self.db.connect("auth").await
    }

    /// Inserts an active user with `roles` and a verified email.
    pub async fn user(&self, roles: &[&str]) -> Uuid {
        let id = Uuid::now_v7();
        let name = format!("u{}", id.simple());
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        sql_query(
            "INSERT INTO users (id, email, username, display_name, roles, status, email_verified_at, created_at, updated_at) \
             VALUES ($1, $2 || '@example.com', $2, $2, $3, 'active', now(), now(), now())",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(&name)
        .bind::<Array<Text>, _>(&roles)
        .execute(&mut self.conn().await)
        .await
        .unwrap();
        id
    }

    /// A request carrying an access token of a session `user_id` (with `roles`) just signed in.
    pub async fn as_user<T>(&self, user_id: Uuid, roles: &[&str], message: T) -> Request<T> {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        let session = Uuid::now_v7();
        sql_query(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, client_address, user_agent) \
             VALUES ($1, $2, now(), now(), now() + interval '1 day', '', '')",
        )
        .bind::<SqlUuid, _>(session)
        .bind::<SqlUuid, _>(user_id)
        .execute(&mut self.conn().await)
        .await
        .unwrap();
        let (token, _) = self
            .state
            .credentials
            .signer
            .issue_access_token(user_id, session, &roles, Utc::now())
            .await
            .unwrap();
        with_bearer(&token, message)
    }

    /// A key created directly (as the operator would), with `scopes`.
    pub async fn key(
        &self,
        user_id: Uuid,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
    ) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let request = KeyRequest {
            name: "test key",
            scopes: &scopes,
            expires_at,
        };
        let (_, secret) = api_keys::create(
            &mut self.conn().await,
            user_id,
            &request,
            Grantor::Operator,
            "",
            Utc::now(),
        )
        .await
        .unwrap();
        secret
    }

    /// A service account's key, for VerifyApiKey callers.
    pub async fn service_key(&self) -> String {
        let service = self.user(&["service"]).await;
        self.key(service, &[scope::SERVICE], None).await
    }

    pub async fn verify(
        &self,
        caller_key: &str,
        key: &str,
    ) -> Result<proto::auth::VerifyApiKeyResponse, tonic::Status> {
        let request = with_api_key(
            caller_key,
            VerifyApiKeyRequest {
                key: key.to_owned(),
            },
        );
        Api::new(self.state.clone())
            .verify_api_key(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

fn create_request(scopes: &[&str]) -> CreateApiKeyRequest {
    CreateApiKeyRequest {
        name: "ci".to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_at: None,
        password: String::new(),
    }
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    row_text: String,
    #[diesel(sql_type = Bytea)]
    key_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    prefix: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_stored_only_as_hashes_and_listed_by_prefix() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let created = Api::new(keys.state.clone())
        .create_api_key(
            keys.as_user(user, &[], create_request(&["quota:read", "billing:read"]))
                .await,
        )
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret;
    assert!(secret.starts_with("cmk_") && secret.len() >= 47, "{secret}");
    let metadata = created.api_key.unwrap();
    assert_eq!(metadata.prefix, secret[..12]);

    let rows: Vec<KeyRow> =
        sql_query("SELECT row_to_json(api_keys)::text AS row_text, key_hash, prefix FROM api_keys")
            .load(&mut keys.conn().await)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key_hash, hash_api_key(&secret));
    assert_eq!(rows[0].prefix, secret[..12]);
    assert!(
        !rows[0].row_text.contains(&secret[12..]),
        "the secret is stored in clear: {}",
        rows[0].row_text
    );

    let listed = Api::new(keys.state.clone())
        .list_api_keys(keys.as_user(user, &[], ListApiKeysRequest::default()).await)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1);
    assert_eq!(listed.api_keys[0].prefix, secret[..12]);
    assert_eq!(listed.api_keys[0].scopes, ["quota:read", "billing:read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_scopes_are_limited_to_what_the_owner_may_grant() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let admin = keys.user(&["admin"]).await;
    let create = |user_id, roles: &'static [&'static str], scopes: &'static [&'static str]| {
        let keys = &keys;
        async move {
            Api::new(keys.state.clone())
                .create_api_key(keys.as_user(user_id, roles, create_request(scopes)).await)
                .await
        }
    };
    let status = create(user, &[], &["admin"]).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = create(user, &[], &["quota:read", "superpowers"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("scopes:"),
        "{}",
        status.message()
    );
    let status = create(user, &[], &[]).await.unwrap_err();
    assert!(
        status.message().starts_with("scopes:"),
        "{}",
        status.message()
    );
    // An admin is not a service: the service scope stays with service accounts.
    let status = create(admin, &["admin"], &["service"]).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        create(admin, &["admin"], &["admin", "quota:read"])
            .await
            .is_ok()
    );

    let past = CreateApiKeyRequest {
        expires_at: Some(kit::convert::timestamp(
            Utc::now() - chrono::Duration::seconds(1),
        )),
        ..create_request(&["quota:read"])
    };
    let status = Api::new(keys.state.clone())
        .create_api_key(keys.as_user(user, &[], past).await)
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("expires_at:"),
        "{}",
        status.message()
    );

    // API keys cannot create keys: only a signed-in user can.
    let key = keys.key(user, &["quota:read"], None).await;
    let status = Api::new(keys.state.clone())
        .create_api_key(with_api_key(&key, create_request(&["quota:read"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_api_key_answers_services_only() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let key = keys.key(user, &["quota:consume", "quota:read"], None).await;
    let service_key = keys.service_key().await;

    let verified = keys.verify(&service_key, &key).await.unwrap();
    assert_eq!(verified.user_id, user.to_string());
    assert_eq!(verified.scopes, ["quota:consume", "quota:read"]);
    assert!(verified.owner_roles.is_empty());

    let status = keys.verify(&key, &key).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = keys.verify("cmk_unknownkey", &key).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = keys.verify(&service_key, "not-a-key").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("key:"), "{}", status.message());
    let status = keys
        .verify(&service_key, "cmk_doesnotexist")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_are_refused_at_once() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let key = keys.key(user, &["quota:read"], None).await;
    let service_key = keys.service_key().await;
    let authenticator = &keys.state.credentials.authenticator;

    // Both caches now hold the key.
    keys.verify(&service_key, &key).await.unwrap();
    authenticator.verify_api_key(&key).await.unwrap();

    let listed = Api::new(keys.state.clone())
        .list_api_keys(keys.as_user(user, &[], ListApiKeysRequest::default()).await)
        .await
        .unwrap()
        .into_inner();
    let key_id = listed.api_keys[0].key_id.clone();

    // Another user cannot see it.
    let stranger = keys.user(&[]).await;
    let status = Api::new(keys.state.clone())
        .revoke_api_key(
            keys.as_user(
                stranger,
                &[],
                RevokeApiKeyRequest {
                    key_id: key_id.clone(),
                },
            )
            .await,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let revoked = Api::new(keys.state.clone())
        .revoke_api_key(
            keys.as_user(
                user,
                &[],
                RevokeApiKeyRequest {
                    key_id: key_id.clone(),
                },
            )
            .await,
        )
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoked_at.is_some());

    assert_eq!(
        keys.verify(&service_key, &key).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        authenticator.verify_api_key(&key).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Idempotent, and an admin may revoke any key.
    let admin = keys.user(&["admin"]).await;
    let again = Api::new(keys.state.clone())
        .revoke_api_key(
            keys.as_user(admin, &["admin"], RevokeApiKeyRequest { key_id })
                .await,
        )
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);

    // Created by the operator (no actor), revoked once by its owner: two audit events.
    let events: Vec<Event> = sql_query(
        "SELECT event_type, actor_user_id IS NOT NULL AS has_actor FROM audit_events ORDER BY occurred_at",
    )
    .load(&mut keys.conn().await)
    .await
    .unwrap();
    let events: Vec<(String, bool)> = events
        .into_iter()
        .map(|e| (e.event_type, e.has_actor))
        .collect();
    assert!(
        events.contains(&("api_key.created".to_owned(), false)),
        "{events:?}"
    );
    let revocations: Vec<_> = events
        .iter()
        .filter(|(kind, _)| kind == "api_key.revoked")
        .collect();
    assert_eq!(revocations, [&("api_key.revoked".to_owned(), true)]);
}

#[derive(QueryableByName)]
struct Event {
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    has_actor: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_keys_are_revoked_together() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let first = keys.key(user, &["quota:read"], None).await;
    let second = keys.key(user, &["billing:read"], None).await;
    let service_key = keys.service_key().await;
    keys.verify(&service_key, &first).await.unwrap();

    let revoked =
        auth_svc::store::api_keys::revoke_all_for_user(&mut keys.conn().await, user, Utc::now())
            .await
            .unwrap();
    assert_eq!(revoked.len(), 2);
    keys.state.credentials.forget_user_keys(user);
    for key in [&first, &second] {
        assert_eq!(
            keys.verify(&service_key, key).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_and_inactive_owners_are_refused() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let now = Utc::now();
    let key = keys
        .key(
            user,
            &["quota:read"],
            Some(now + chrono::Duration::minutes(5)),
        )
        .await;
    let verifier = &keys.state.credentials.api_keys;
    assert!(verifier.verify(&key, now).await.is_ok());
    // The cached answer does not outlive the expiry.
    let later = now + chrono::Duration::minutes(5);
    assert!(matches!(
        verifier.verify(&key, later).await,
        Err(auth_svc::error::Error::Unauthenticated(_))
    ));

    let other = keys.key(user, &["quota:read"], None).await;
    sql_query("UPDATE users SET status = 'disabled' WHERE id = $1")
        .bind::<SqlUuid, _>(user)
        .execute(&mut keys.conn().await)
        .await
        .unwrap();
    keys.state.credentials.forget_user_keys(user);
    assert!(verifier.verify(&other, now).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_newest_first_in_pages() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    for _ in 0..3 {
        keys.key(user, &["quota:read"], None).await;
    }
    let page = |token: String| {
        let keys = &keys;
        async move {
            Api::new(keys.state.clone())
                .list_api_keys(
                    keys.as_user(
                        user,
                        &[],
                        ListApiKeysRequest {
                            page_size: 2,
                            page_token: token,
                        },
                    )
                    .await,
                )
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = page(String::new()).await;
    assert_eq!(first.api_keys.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = page(first.next_page_token.clone()).await;
    assert_eq!(second.api_keys.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut ids: Vec<String> = first
        .api_keys
        .iter()
        .chain(&second.api_keys)
        .map(|k| k.key_id.clone())
        .collect();
    let listed = ids.clone();
    ids.sort();
    ids.reverse();
    assert_eq!(listed, ids, "newest first");
}

#[derive(QueryableByName)]
struct Used {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    used: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_is_written_in_batches() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let key = keys.key(user, &["quota:read"], None).await;
    let verifier = &keys.state.credentials.api_keys;
    for _ in 0..5 {
        verifier.verify(&key, Utc::now()).await.unwrap();
    }
    // Five uses, one pending update.
    assert_eq!(verifier.flush_usage().await.unwrap(), 1);
    let used: Used =
        sql_query("SELECT count(*) AS used FROM api_keys WHERE last_used_at IS NOT NULL")
            .get_result(&mut keys.conn().await)
            .await
            .unwrap();
    assert_eq!(used.used, 1);
    assert_eq!(verifier.flush_usage().await.unwrap(), 0);
}

#[derive(QueryableByName)]
struct SigningKeyRow {
    #[diesel(sql_type = Text)]
    kid: String,
    #[diesel(sql_type = Bytea)]
    public_key: Vec<u8>,
    #[diesel(sql_type = Bytea)]
    private_key_sealed: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_are_sealed_with_the_master_key() {
    let keys = Keys::new().await;
    let signer = &keys.state.credentials.signer;
    signer.read_jwks(Utc::now()).await.unwrap();
    let rows: Vec<SigningKeyRow> =
        sql_query("SELECT kid, public_key, private_key_sealed FROM signing_keys")
            .load(&mut keys.conn().await)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "the first key is created on first use");
    let row = &rows[0];
    let seed = master_key()
        .open(&row.private_key_sealed, row.kid.as_bytes())
        .unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed.clone().try_into().unwrap());
    assert_eq!(
        signing.verifying_key().to_bytes().as_slice(),
        row.public_key
    );
    assert!(
        !row.private_key_sealed
            .windows(32)
            .any(|window| window == seed.as_slice()),
        "the private key is stored in clear"
    );
    let other: MasterKey = hex_key(0x42).parse().unwrap();
    assert!(
        other
            .open(&row.private_key_sealed, row.kid.as_bytes())
            .is_err()
    );

    // A server given another master key refuses to start.
    let mut conn = keys.conn().await;
    let err = keys::check_current(&mut conn, &other, Utc::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AUTH_MASTER_KEY"), "{err}");
    assert!(
        keys::rotate(&mut conn, &other, Utc::now()).await.is_err(),
        "rotation with a wrong key"
    );
}

fn hex_key(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_previous_key_published_until_its_tokens_expired() {
    let keys = Keys::new().await;
    let now = Utc::now();
    let first = keys.state.credentials.signer.read_jwks(now).await.unwrap();
    assert_eq!(first.len(), 1);
    let user = keys.user(&[]).await;
    let old_token = keys.as_user(user, &[], ()).await;

    // Rotated a moment ago: long enough for the new key to sign, not for its tokens to expire.
    let rotated_at = now - auth_svc::domain::signing_key_ring::PUBLISH_BEFORE_SIGNING;
    let new_kid = keys::rotate(&mut keys.conn().await, &master_key(), rotated_at)
        .await
        .unwrap();
    let jwks = keys.state.credentials.signer.read_jwks(now).await.unwrap();
    let kids: Vec<&str> = jwks.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(
        kids,
        [new_kid.as_str(), first[0].kid.as_str()],
        "current first"
    );
    for jwk in &jwks {
        assert_eq!(
            (
                jwk.kty.as_str(),
                jwk.crv.as_str(),
                jwk.alg.as_str(),
                jwk.r#use.as_str()
            ),
            ("OKP", "Ed25519", "EdDSA", "sig")
        );
    }
    let after_expiry =
        now + chrono::Duration::minutes(15) + auth_svc::domain::signing_key_ring::RETIRE_MARGIN;
    let kids: Vec<String> = keys
        .state
        .credentials
        .signer
        .read_jwks(after_expiry)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, std::slice::from_ref(&new_kid));

    // A process started right after the rotation still signs with the previous key (a replica's
    // JWKS copy may not list the new one yet); once every copy lists it, with the new key. Tokens
    // of the old key still verify.
    let kid_signing_at = async |at| {
        let fresh = Keys::state_on(&keys.db, "commerce-mesh", "commerce-mesh");
        let (token, _) = fresh
            .credentials
            .signer
            .issue_access_token(user, Uuid::now_v7(), &[], at)
            .await
            .unwrap();
        (
            fresh,
            token.clone(),
            jsonwebtoken::decode_header(&token).unwrap().kid.unwrap(),
        )
    };
    let (_, _, kid) = kid_signing_at(rotated_at).await;
    assert_eq!(kid, first[0].kid);
    let (fresh, token, kid) = kid_signing_at(now).await;
    assert_eq!(kid, new_kid);
    let authenticator = &fresh.credentials.authenticator;
    assert!(authenticator.verify_token(&token).await.is_ok());
    assert!(authenticator.authenticate(&old_token).await.is_ok());
}

/// Splits a JWT into its header, claims and signature.
fn parts(token: &str) -> (serde_json::Value, serde_json::Value, String) {
    let mut split = token.split('.');
    let mut json =
        || serde_json::from_slice(&URL_SAFE_NO_PAD.decode(split.next().unwrap()).unwrap()).unwrap();
    let header = json();
    let claims = json();
    (header, claims, split.next().unwrap().to_owned())
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticator_accepts_only_genuine_tokens() {
    let keys = Keys::new().await;
    let user = keys.user(&[]).await;
    let now = Utc::now();
    let signer = &keys.state.credentials.signer;
    let authenticator = &keys.state.credentials.authenticator;
    let session = Uuid::now_v7();
    let (token, expires_at) = signer
        .issue_access_token(user, session, &["admin".to_owned()], now)
        .await
        .unwrap();
    assert!((expires_at - now).num_seconds().abs_diff(900) <= 1);
    let caller = authenticator.verify_token(&token).await.unwrap();
    assert_eq!(caller.user_id, user);
    assert!(caller.is_admin());
    let refused = |token: String| async move {
        let status = authenticator.verify_token(&token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    };

    let (header, claims, signature) = parts(&token);
    let kid = header["kid"].as_str().unwrap().to_owned();

    // Tampered claims (a role added) under the original signature.
    let mut tampered = claims.clone();
    tampered["roles"] = serde_json::json!(["admin", "service"]);
    refused(format!("{}.{}.{signature}", b64(&header), b64(&tampered))).await;
    // A tampered signature.
    let mut bad_signature = URL_SAFE_NO_PAD.decode(&signature).unwrap();
    bad_signature[0] ^= 1;
    refused(format!(
        "{}.{}.{}",
        b64(&header),
        b64(&claims),
        URL_SAFE_NO_PAD.encode(bad_signature)
    ))
    .await;
    // Expired.
    let (expired, _) = signer
        .issue_access_token(user, session, &[], now - chrono::Duration::hours(1))
        .await
        .unwrap();
    refused(expired).await;
    // Wrong audience, wrong issuer: same keys, other settings.
    for (issuer, audience) in [
        ("commerce-mesh", "elsewhere"),
        ("impostor", "commerce-mesh"),
    ] {
        let other = Keys::state_on(&keys.db, issuer, audience);
        let (token, _) = other
            .credentials
            .signer
            .issue_access_token(user, session, &[], now)
            .await
            .unwrap();
        refused(token).await;
    }
    // `alg: none`.
    let none = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    refused(format!("{}.{}.", b64(&none), b64(&claims))).await;
    // HS256 with the public key as the HMAC secret (algorithm confusion).
    let jwk = signer.read_jwks(now).await.unwrap().remove(0);
    let public_key = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
    let claims_struct: AccessClaims = serde_json::from_value(claims.clone()).unwrap();
    for secret in [public_key.clone(), jwk.x.clone().into_bytes()] {
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(
            &hs,
            &claims_struct,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        refused(forged).await;
    }
    // Signed by a key auth-svc never published.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&stranger).unwrap();
    for unknown_kid in ["unknown-kid", kid.as_str()] {
        let mut ed = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        ed.kid = Some(unknown_kid.to_owned());
        let forged = jsonwebtoken::encode(
            &ed,
            &claims_struct,
            &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        refused(forged).await;
    }
    // The genuine token still passes.
    assert!(authenticator.verify_token(&token).await.is_ok());
}

/// Runs an `auth-svc` command against `db` and returns its standard output.
fn auth_svc(db: &TestDb, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"))
        .args(args)
        .env("AUTH_DATABASE_URL", db.url())
        .env("AUTH_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "auth-svc {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn grpcurl_json(args: &[&str]) -> Result<serde_json::Value, String> {
    kit::testing::grpcurl_result(args).map(|stdout| serde_json::from_str(&stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_jwks_and_verifies_service_keys() {
    let db = TestDb::new(&[("auth", MIGRATIONS)]).await;
    // `just up` captures stdout: exactly the key.
    let first = auth_svc(&db, &["service-key", "issue", "--service", "billing"]);
    assert!(
        first.starts_with("cmk_") && first.ends_with('\n') && first.lines().count() == 1,
        "{first:?}"
    );
    let second = auth_svc(
        &db,
        &[
            "service-key",
            "issue",
            "--service",
            "billing",
            "--revoke-previous",
        ],
    );
    let (first, second) = (first.trim(), second.trim());
    // A backend's key: charges users' quotas, no internal RPCs.
    let backend = auth_svc(
        &db,
        &[
            "service-key",
            "issue",
            "--service",
            "shop",
            "--scopes",
            "quota:consume,quota:read",
        ],
    );
    let backend = backend.trim();
    // Unknown scopes, and scopes beyond a service account's role, are refused.
    for (scopes, expected) in [
        ("quota:consume,root", "possible values"),
        ("quota:read,admin", "beyond what this account may grant"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"))
            .args([
                "service-key",
                "issue",
                "--service",
                "shop",
                "--scopes",
                scopes,
            ])
            .env("AUTH_DATABASE_URL", db.url())
            .env("AUTH_MASTER_KEY", MASTER_KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "issued with {scopes}");
        assert!(output.stdout.is_empty(), "issued with {scopes}");
        assert!(stderr.contains(expected), "{scopes}: {stderr}");
    }

    let mut server = kit::testing::Binary::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_auth-svc")),
        "AUTH",
        db.url(),
        &[("AUTH_MASTER_KEY", MASTER_KEY), ("AUTH_LOG_MAIL", "true")],
    );
    let addr = server.addr.to_string();

    let get_jwks = || {
        grpcurl_json(&[
            "-plaintext",
            "-d",
            "{}",
            &addr,
            "commerce.auth.v1.AuthService/GetJwks",
        ])
        .unwrap()
    };
    let jwks = get_jwks();
    let published = jwks["keys"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{jwks}");
    assert_eq!(published[0]["kty"], "OKP");
    assert_eq!(published[0]["crv"], "Ed25519");
    assert_eq!(published[0]["alg"], "EdDSA");
    assert_eq!(published[0]["use"], "sig");

    let verify = |caller: &str, key: &str| {
        grpcurl_json(&[
            "-plaintext",
            "-H",
            &format!("x-api-key: {caller}"),
            "-d",
            &serde_json::json!({ "key": key }).to_string(),
            &addr,
            "commerce.auth.v1.AuthService/VerifyApiKey",
        ])
    };
    let verified = verify(second, second).unwrap();
    assert_eq!(verified["ownerRoles"], serde_json::json!(["service"]));
    assert_eq!(verified["scopes"], serde_json::json!(["service"]));
    let verified = verify(second, backend).unwrap();
    assert_eq!(verified["ownerRoles"], serde_json::json!(["service"]));
    assert_eq!(
        verified["scopes"],
        serde_json::json!(["quota:consume", "quota:read"])
    );
    let refused = verify(backend, second).unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    let refused = verify(second, first).unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    let refused = verify(first, second).unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");

    // A rotation by the CLI is published within the JWKS cache's lifetime (the server answers
    // GetJwks from memory), long before the new key signs anything.
    let kid = auth_svc(&db, &["keys", "rotate"]);
    let expected = [kid.trim(), published[0]["kid"].as_str().unwrap()];
    let published_by =
        std::time::Instant::now() + auth_svc::service::signing_keys::JWKS_CACHE_TTL * 2;
    loop {
        let jwks = get_jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        if kids == expected {
            break;
        }
        assert!(std::time::Instant::now() < published_by, "{kids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Uses noted since the last periodic write are written on shutdown.
    let (status, _) = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let used: Used = sql_query(
        "SELECT count(*) AS used FROM api_keys WHERE last_used_at IS NOT NULL AND revoked_at IS NULL",
    )
    .get_result(&mut db.connect("auth").await)
    .await
    .unwrap();
    assert_eq!(
        used.used, 2,
        "the verified service and backend keys' last use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_to_start_without_a_valid_master_key() {
    let db = TestDb::new(&[("auth", MIGRATIONS)]).await;
    // Creates the first signing key under MASTER_KEY.
    auth_svc(&db, &["keys", "rotate"]);
    let port = kit::testing::free_port().to_string();
    let other_key = "42".repeat(32);
    for (master_key, expected) in [
        (None, "AUTH_MASTER_KEY is not set"),
        (Some("c2hvcnQ="), "must be 32 bytes"),
        (
            Some("not-base64-S3CRET!"),
            "must be 32 bytes in base64 or hex",
        ),
        (Some(other_key.as_str()), "wrong AUTH_MASTER_KEY"),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"));
        command
            .env("AUTH_DATABASE_URL", db.url())
            .env("AUTH_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("AUTH_MASTER_KEY");
        if let Some(master_key) = master_key {
            command.env("AUTH_MASTER_KEY", master_key);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with {master_key:?}");
        assert!(stderr.contains(expected), "{master_key:?}: {stderr}");
        // Whatever is wrong with it, the key itself is never echoed.
        if let Some(master_key) = master_key {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(!stderr.contains(master_key), "{stderr}");
            assert!(!stdout.contains(master_key), "{stdout}");
        }
    }
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    let secrets = [
        (
            "AUTH_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        (
            "AUTH_DATABASE_URL",
            "postgres://app:db-pass-one@db:5432/commerce",
        ),
        (
            "DATABASE_URL",
            "postgres://app:db-pass-two@db:5432/commerce",
        ),
        ("SMTP_URL", "smtps://mailer:smtp-pass@smtp.example.com"),
    ];
    for args in [&["--help"][..], &["service-key", "issue", "--help"]] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_auth-svc"));
        command.args(args);
        for (name, value) in secrets {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        // The variables are listed, their values are not.
        assert!(help.contains("AUTH_DATABASE_URL"), "{help}");
        for (name, value) in secrets {
            assert!(!help.contains(value), "{args:?} shows {name}: {help}");
        }
        for password in ["db-pass-one", "db-pass-two", "smtp-pass"] {
            assert!(!help.contains(password), "{args:?}: {help}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_session_cannot_call_internal_rpcs() {
    let t = common::TestServer::start().await;
    let (admin_id, _) = t.admin("root").await;
    // Both roles, as an admin could grant itself before UpdateUser refused the `service` role.
    sql_query("UPDATE users SET roles = ARRAY['admin', 'service'] WHERE id = $1::uuid")
        .bind::<Text, _>(&admin_id)
        .execute(&mut t.db.connect("auth").await)
        .await
        .unwrap();
    let admin = t.login("root", common::PASSWORD).await.unwrap();
    let (user_id, _) = t.signup("alice").await;
    let scopes = vec!["quota:read".to_owned()];
    let (_, key) = api_keys::create(
        &mut t.db.connect("auth").await,
        user_id.parse().unwrap(),
        &KeyRequest {
            name: "alice",
            scopes: &scopes,
            expires_at: None,
        },
        Grantor::Operator,
        "",
        Utc::now(),
    )
    .await
    .unwrap();

    let refused = t
        .client()
        .verify_api_key(with_bearer(
            &admin.access_token,
            VerifyApiKeyRequest { key },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}
