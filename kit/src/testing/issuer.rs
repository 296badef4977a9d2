//! A token and API key issuer for tests of services that authenticate callers before auth-svc
//! is involved: it mints real EdDSA JWTs with its own Ed25519 key, keeps API keys registered in
//! it, and is a [`CredentialSource`] (in-process) or serves GetJwks/VerifyApiKey over gRPC
//! ([`AuthServer`]) for real binaries started with `AUTH_URL` pointing at it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::{
    GetJwksRequest, GetJwksResponse, Jwk, VerifyApiKeyRequest, VerifyApiKeyResponse,
    auth_service_server::{AuthService, AuthServiceServer},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::caller::{
    API_KEY_PREFIX, AccessClaims, AuthConfig, Authenticator, CredentialSource, VerifiedKey, jwk_x,
};

/// One Ed25519 signing key of the issuer.
struct SigningPair {
    kid: String,
    key: SigningKey,
    encoding: EncodingKey,
}

impl SigningPair {
    fn generate() -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .unwrap_or_else(|err| panic!("encoding the test key: {err}"));
        Self {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            key,
            kid: format!("test-{}", Uuid::new_v4().simple()),
        }
    }

    fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: jwk_x(self.key.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: "EdDSA".to_owned(),
            r#use: "sig".to_owned(),
        }
    }
}

/// Mints access tokens and API keys for tests. Like auth-svc, it can rotate its signing key
/// (the retired ones stay published until dropped).
pub struct TestIssuer {
    /// Published keys; the last one signs.
    keys: Mutex<Vec<SigningPair>>,
    config: AuthConfig,
    api_keys: Mutex<HashMap<String, VerifiedKey>>,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer").finish_non_exhaustive()
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// A fresh key, issuer and audience `commerce-mesh` (the services' defaults).
    pub fn new() -> Self {
        Self {
            keys: Mutex::new(vec![SigningPair::generate()]),
            config: AuthConfig::default(),
            api_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The settings a service verifying this issuer's tokens uses by default.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// An authenticator trusting this issuer, as a service would build over auth-svc.
    pub fn authenticator(self: &Arc<Self>) -> Arc<Authenticator> {
        Arc::new(Authenticator::new(self.config.clone(), self.clone()))
    }

    /// Signs with a new key from now on; the previous keys stay published.
    pub fn rotate_key(&self) {
        self.keys().push(SigningPair::generate());
    }

    /// Stops publishing every key but the current one, as auth-svc does once the tokens of a
    /// retired key have expired (or at once, after a key leaked).
    pub fn drop_retired_keys(&self) {
        let mut keys = self.keys();
        let retired = keys.len() - 1;
        keys.drain(..retired);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Vec<SigningPair>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A valid 15-minute access token for `user_id` with `roles`.
    pub fn token(&self, user_id: Uuid, roles: &[&str]) -> String {
        self.token_with(user_id, roles, &self.config.audience, 0, 900)
    }

    /// A token that expired a minute ago (beyond the verifier's leeway).
    pub fn expired_token(&self, user_id: Uuid) -> String {
        self.token_with(user_id, &[], &self.config.audience, -120, -60)
    }

    /// A valid token for another audience.
    pub fn other_audience_token(&self, user_id: Uuid) -> String {
        self.token_with(user_id, &[], "someone-else", 0, 900)
    }

    /// A token issued now that lives `lifetime` (auth-svc never issues one longer than its
    /// configured access-token lifetime).
    pub fn token_living(&self, user_id: Uuid, lifetime: Duration) -> String {
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        self.token_with(user_id, &[], &self.config.audience, 0, lifetime)
    }

    /// A 15-minute token whose `iat` is `ahead` in the future.
    pub fn token_issued_ahead(&self, user_id: Uuid, ahead: Duration) -> String {
        let ahead = i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX);
        self.token_with(user_id, &[], &self.config.audience, ahead, ahead + 900)
    }

    /// A token signed with the current key whose `iat` and `exp` are these offsets from now, in
    /// seconds.
    fn token_with(
        &self,
        user_id: Uuid,
        roles: &[&str],
        audience: &str,
        issued_in: i64,
        expires_in: i64,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        let claims = AccessClaims {
            sub: user_id.to_string(),
            sid: Uuid::new_v4().to_string(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            iss: self.config.issuer.clone(),
            aud: audience.to_owned(),
            iat: now + issued_in,
            exp: now + expires_in,
            jti: Uuid::new_v4().to_string(),
        };
        let keys = self.keys();
        let signing = keys
            .last()
            .unwrap_or_else(|| panic!("the test issuer has no signing key"));
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, &claims, &signing.encoding)
            .unwrap_or_else(|err| panic!("signing a test token: {err}"))
    }

    /// Registers a new API key of `user_id` (whose roles are `owner_roles`) with `scopes`;
    /// returns the key.
    pub fn add_api_key(&self, user_id: Uuid, scopes: &[&str], owner_roles: &[&str]) -> String {
        let key = format!("{API_KEY_PREFIX}{}", Uuid::new_v4().simple());
        let verified = VerifiedKey {
            user_id,
            key_id: Uuid::new_v4(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            owner_roles: owner_roles.iter().map(|role| (*role).to_owned()).collect(),
            expires_at: None,
        };
        if let Ok(mut keys) = self.api_keys.lock() {
            keys.insert(key.clone(), verified);
        }
        key
    }

    /// Forgets `key`: VerifyApiKey refuses it from now on.
    pub fn revoke_api_key(&self, key: &str) {
        if let Ok(mut keys) = self.api_keys.lock() {
            keys.remove(key);
        }
    }

    /// The published keys.
    fn jwks(&self) -> Vec<Jwk> {
        self.keys().iter().map(SigningPair::jwk).collect()
    }

    fn verified(&self, key: &str) -> Result<VerifiedKey, Status> {
        self.api_keys
            .lock()
            .ok()
            .and_then(|keys| keys.get(key).cloned())
            .ok_or_else(|| Status::unauthenticated("invalid API key"))
    }
}

#[tonic::async_trait]
impl CredentialSource for TestIssuer {
    async fn jwks(&self) -> Result<Vec<Jwk>, Status> {
        Ok(TestIssuer::jwks(self))
    }

    async fn verify_api_key(&self, key: &str) -> Result<VerifiedKey, Status> {
        self.verified(key)
    }
}

/// GetJwks and VerifyApiKey of a [`TestIssuer`] served over gRPC on an ephemeral port (every
/// other auth RPC is UNIMPLEMENTED); stopped when dropped.
#[derive(Debug)]
pub struct AuthServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl AuthServer {
    pub async fn start(issuer: Arc<TestIssuer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("binding the test auth server: {err}"));
        let addr = listener.local_addr().unwrap_or_else(|err| panic!("{err}"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthServiceServer::new(IssuerService(issuer)))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            addr,
            stop: Some(stop),
        }
    }

    /// The URL to give a service as `AUTH_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct IssuerService(Arc<TestIssuer>);

#[tonic::async_trait]
impl AuthService for IssuerService {
    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            keys: self.0.jwks(),
        }))
    }

    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        // Like auth-svc: only callers holding the `service` scope may verify keys.
        let caller = request
            .metadata()
            .get("x-api-key")
            .and_then(|key| key.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing credentials"))?;
        if !self
            .0
            .verified(caller)?
            .scopes
            .iter()
            .any(|scope| scope == "service")
        {
            return Err(Status::permission_denied("requires the `service` scope"));
        }
        let key = &request.get_ref().key;
        let well_formed = key.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !well_formed {
            return Err(Status::invalid_argument("key: is not an API key"));
        }
        let verified = self.0.verified(key)?;
        Ok(Response::new(VerifyApiKeyResponse {
            user_id: verified.user_id.to_string(),
            key_id: verified.key_id.to_string(),
            scopes: verified.scopes,
            expires_at: None,
            owner_roles: verified.owner_roles,
        }))
    }
}
