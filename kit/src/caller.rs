//! Who is calling: authentication of a caller from request metadata, shared by every service.
//!
//! - `authorization: Bearer <jwt>`: an access token from auth-svc, verified locally against the
//!   JWKS. The JWKS is fetched from auth-svc and refetched when it is older than
//!   [`AuthConfig::jwks_refresh_interval`] or does not list the token's `kid` (at most once per
//!   [`MIN_JWKS_FETCH_INTERVAL`]), so a key auth-svc stops publishing stops verifying within the
//!   interval. The algorithm is pinned to EdDSA, so `alg: none` and HS256-with-the-public-key
//!   tokens are refused; a token claiming a longer life than [`AuthConfig::access_token_ttl`] or
//!   issued in the future is refused too (what a leaked key could mint is bounded like the rest).
//! - `x-api-key: <key>`, `authorization: ApiKey <key>` or `authorization: Bearer cmk_…`: an API key,
//!   verified through auth-svc's `VerifyApiKey` and cached for [`AuthConfig::api_key_cache_ttl`]
//!   (at most [`MAX_API_KEY_CACHE_TTL`]): that is the longest a revoked key keeps working in
//!   another process. The process that revokes a key forgets it at once ([`Authenticator::forget_api_keys`]).
//!   A refused key is remembered for a couple of seconds only; both caches are bounded, so a flood
//!   of made-up keys costs a fixed amount of memory and never slows the lookups down.
//!
//! Each RPC then states what it requires with [`Caller::require_scope`], [`Caller::require_admin`]
//! or [`Caller::require_service`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Status, metadata::MetadataMap, transport::Channel};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};

/// Scopes a credential can carry.
pub mod scope {
    /// Consume quota (`Consume`, `Refund`).
    pub const QUOTA_CONSUME: &str = "quota:consume";
    /// Read quotas and usage.
    pub const QUOTA_READ: &str = "quota:read";
    /// Read plans, subscriptions and payments.
    pub const BILLING_READ: &str = "billing:read";
    /// Subscribe, pay, cancel.
    pub const BILLING_WRITE: &str = "billing:write";
    /// Administer the mesh (requires the owner's `admin` role).
    pub const ADMIN: &str = "admin";
    /// Internal RPCs between services: only on a service account's key, issued by
    /// `auth-svc service-key issue` (a session never holds it).
    pub const SERVICE: &str = "service";
    /// Every scope, in a stable order.
    pub const ALL: [&str; 6] = [
        QUOTA_CONSUME,
        QUOTA_READ,
        BILLING_READ,
        BILLING_WRITE,
        ADMIN,
        SERVICE,
    ];
}

/// Roles a user can hold.
pub mod role {
    /// Administrators: the admin RPCs, and the `admin` scope on their keys.
    pub const ADMIN: &str = "admin";
    /// Service accounts: the `service` scope on their keys. Granted by `auth-svc service-key
    /// issue` alone, never through UpdateUser.
    pub const SERVICE: &str = "service";
    /// Every role.
    pub const ALL: [&str; 2] = [ADMIN, SERVICE];
}

/// The prefix that makes an API key recognisable (e.g. to secret scanners).
pub const API_KEY_PREFIX: &str = "cmk_";
/// The longest a verified API key is trusted without asking auth-svc again.
pub const MAX_API_KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// The session id (one per login).
    pub sid: String,
    /// The user's roles when the token was issued.
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// The scopes the roles grant: the user scopes always, `admin`/`service` with the role of that name.
pub fn scopes_of_roles<S: AsRef<str>>(roles: &[S]) -> BTreeSet<String> {
    let mut scopes: BTreeSet<String> = [
        scope::QUOTA_CONSUME,
        scope::QUOTA_READ,
        scope::BILLING_READ,
        scope::BILLING_WRITE,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for role in roles {
        match role.as_ref() {
            role::ADMIN => scopes.insert(scope::ADMIN.to_owned()),
            role::SERVICE => scopes.insert(scope::SERVICE.to_owned()),
            _ => false,
        };
    }
    scopes
}

/// SHA-256 of an API key: what auth-svc stores and what caches are keyed by.
pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token of a login session.
    Session { session_id: Uuid },
    /// An API key.
    ApiKey { key_id: Uuid },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub credential: Credential,
    pub roles: Vec<String>,
    /// What the caller may do: a session has the scopes of its roles; a key has its own scopes,
    /// limited to what its owner's roles allow.
    pub scopes: BTreeSet<String>,
}

impl Caller {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    pub fn is_admin(&self) -> bool {
        self.has_scope(scope::ADMIN)
    }

    /// `PERMISSION_DENIED` unless the caller holds `scope` (admins hold every user scope).
    pub fn require_scope(&self, scope: &str) -> Result<(), Status> {
        if self.has_scope(scope) || (self.is_admin() && scope != scope::SERVICE) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this call requires the `{scope}` scope"
            )))
        }
    }

    /// `PERMISSION_DENIED` unless the caller is an administrator.
    pub fn require_admin(&self) -> Result<(), Status> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Status::permission_denied("this call is for administrators"))
        }
    }

    /// `PERMISSION_DENIED` unless the caller is a service of the mesh (internal RPCs): an API key
    /// with the `service` scope, never a signed-in session, whatever its roles.
    pub fn require_service(&self) -> Result<(), Status> {
        if matches!(self.credential, Credential::ApiKey { .. }) && self.has_scope(scope::SERVICE) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this internal call requires an API key with the `service` scope",
            ))
        }
    }

    /// The session of a signed-in user; `PERMISSION_DENIED` for API keys.
    pub fn require_session(&self) -> Result<Uuid, Status> {
        match self.credential {
            Credential::Session { session_id } => Ok(session_id),
            Credential::ApiKey { .. } => Err(Status::permission_denied(
                "this call needs a signed-in user, not an API key",
            )),
        }
    }
}

/// What auth-svc says of a valid API key.
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub scopes: Vec<String>,
    pub owner_roles: Vec<String>,
    pub expires_at: Option<SystemTime>,
}

impl VerifiedKey {
    fn caller(&self) -> Caller {
        let allowed = scopes_of_roles(&self.owner_roles);
        Caller {
            user_id: self.user_id,
            credential: Credential::ApiKey {
                key_id: self.key_id,
            },
            roles: self.owner_roles.clone(),
            scopes: self
                .scopes
                .iter()
                .filter(|scope| allowed.contains(*scope))
                .cloned()
                .collect(),
        }
    }
}

/// Where verification material comes from: auth-svc over gRPC ([`RemoteAuth`]), or auth-svc's own
/// store when the authenticator runs inside auth-svc.
#[tonic::async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// The current JWKS.
    async fn jwks(&self) -> Result<Vec<proto::auth::Jwk>, Status>;
    /// The key's owner and scopes; `UNAUTHENTICATED` for an unknown, revoked or expired key.
    async fn verify_api_key(&self, key: &str) -> Result<VerifiedKey, Status>;
}

/// Token and cache settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Expected `iss` of access tokens.
    pub issuer: String,
    /// Expected `aud` of access tokens.
    pub audience: String,
    /// How long a verified API key is trusted (clamped to [`MAX_API_KEY_CACHE_TTL`]).
    pub api_key_cache_ttl: Duration,
    /// How long a fetched JWKS is used before it is fetched again (at least
    /// [`MIN_JWKS_FETCH_INTERVAL`]): the longest a key auth-svc no longer publishes keeps verifying.
    pub jwks_refresh_interval: Duration,
    /// The lifetime auth-svc gives access tokens (its `ACCESS_TOKEN_TTL_SECS`): a token whose
    /// `exp - iat` is longer is refused.
    pub access_token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "commerce-mesh".to_owned(),
            audience: "commerce-mesh".to_owned(),
            api_key_cache_ttl: Duration::from_secs(10),
            jwks_refresh_interval: Duration::from_secs(60),
            access_token_ttl: Duration::from_secs(900),
        }
    }
}

/// The JWKS is fetched at most this often, whatever asks for it (a stale set, an unknown `kid`,
/// a retry after a failed fetch), so tokens with made-up `kid`s cannot flood auth-svc.
pub const MIN_JWKS_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Clock skew tolerated on `exp` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// A refused key is remembered briefly so a flood of bad keys does not reach auth-svc each time.
const REFUSED_API_KEY_TTL: Duration = Duration::from_secs(2);
/// Refused keys remembered at once (a hash each): beyond that the least useful are evicted.
pub const REFUSED_API_KEY_CACHE_ENTRIES: u64 = 10_000;
/// Memory the verified keys may take, as weighed by [`cache_weight`].
const ACCEPTED_API_KEY_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The signing keys of the last successful JWKS fetch.
#[derive(Default)]
struct Jwks {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Authenticates callers; see the module documentation.
pub struct Authenticator {
    config: AuthConfig,
    validation: Validation,
    source: Arc<dyn CredentialSource>,
    clock: Arc<dyn Clock>,
    jwks: RwLock<Jwks>,
    /// When the JWKS was last asked for; held while a fetch runs, so one fetch runs at a time.
    jwks_fetch: tokio::sync::Mutex<Option<Instant>>,
    accepted_keys: Cache<[u8; 32], Arc<VerifiedKey>>,
    refused_keys: Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Judges `iat` by `clock` instead of the system time: a server whose own clock is moved in
    /// tests must accept the tokens it issues.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn new(mut config: AuthConfig, source: Arc<dyn CredentialSource>) -> Self {
        config.api_key_cache_ttl = config.api_key_cache_ttl.min(MAX_API_KEY_CACHE_TTL);
        config.jwks_refresh_interval = config.jwks_refresh_interval.max(MIN_JWKS_FETCH_INTERVAL);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // A zero TTL turns the cache off (every verification asks auth-svc).
        let accepted_keys = Cache::builder()
            .max_capacity(if config.api_key_cache_ttl.is_zero() {
                0
            } else {
                ACCEPTED_API_KEY_CACHE_BYTES
            })
            .weigher(|_, key: &Arc<VerifiedKey>| cache_weight(key))
            .time_to_live(config.api_key_cache_ttl.max(Duration::from_millis(1)))
            .build();
        let refused_keys = Cache::builder()
            .max_capacity(REFUSED_API_KEY_CACHE_ENTRIES)
            .time_to_live(REFUSED_API_KEY_TTL)
            .build();
        Self {
            config,
            validation,
            source,
            clock: Arc::new(SystemClock),
            jwks: RwLock::default(),
            jwks_fetch: tokio::sync::Mutex::new(None),
            accepted_keys,
            refused_keys,
        }
    }

    /// The caller of `request`, or `UNAUTHENTICATED`.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.authenticate_metadata(request.metadata()).await
    }

    /// The caller presenting `metadata`, or `UNAUTHENTICATED`.
    pub async fn authenticate_metadata(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        match presented_credential(metadata)? {
            Presented::Token(token) => self.verify_token(token).await,
            Presented::ApiKey(key) => self.verify_api_key(key).await,
        }
    }

    /// Verifies an access token and returns its caller.
    pub async fn verify_token(&self, token: &str) -> Result<Caller, Status> {
        let header = decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid_token());
        }
        let kid = header.kid.ok_or_else(invalid_token)?;
        let key = self.signing_key(&kid).await?;
        let claims = decode::<AccessClaims>(token, &key, &self.validation)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Status::unauthenticated("the access token has expired")
                }
                _ => invalid_token(),
            })?
            .claims;
        check_token_times(
            &claims,
            self.config.access_token_ttl,
            self.clock.now().timestamp(),
        )?;
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| invalid_token())?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| invalid_token())?;
        let mut scopes = scopes_of_roles(&claims.roles);
        // `service` is the scope of a service account's key, never of a session.
        scopes.remove(scope::SERVICE);
        Ok(Caller {
            user_id,
            credential: Credential::Session { session_id },
            scopes,
            roles: claims.roles,
        })
    }

    /// The key of `kid`, from a JWKS no older than the refresh interval when auth-svc answers.
    async fn signing_key(&self, kid: &str) -> Result<DecodingKey, Status> {
        let (known, fresh) = self.cached_signing_key(kid);
        match known {
            Some(key) if fresh => return Ok(key),
            // Stale: one verification refreshes while the others go on with the set they have.
            Some(key) => match self.jwks_fetch.try_lock() {
                Ok(last_fetch) => {
                    // A failure is logged and retried later; the known keys keep serving.
                    let _ = self.fetch_jwks(last_fetch).await;
                }
                Err(_) => return Ok(key),
            },
            // Unknown: a key published since the last fetch, or a made-up `kid`.
            None => self.fetch_jwks(self.jwks_fetch.lock().await).await?,
        }
        self.cached_signing_key(kid).0.ok_or_else(invalid_token)
    }

    /// The key of `kid` if the last fetched JWKS lists it, and whether that JWKS is fresh.
    fn cached_signing_key(&self, kid: &str) -> (Option<DecodingKey>, bool) {
        let Ok(jwks) = self.jwks.read() else {
            return (None, false);
        };
        let fresh = jwks
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.config.jwks_refresh_interval);
        (jwks.keys.get(kid).cloned(), fresh)
    }

    /// Fetches the JWKS and replaces the known keys with it (a key it no longer lists is
    /// dropped), unless a fetch was attempted less than [`MIN_JWKS_FETCH_INTERVAL`] ago (for
    /// example by the verification this one waited for). A failed fetch keeps the known keys.
    async fn fetch_jwks(
        &self,
        mut last_fetch: tokio::sync::MutexGuard<'_, Option<Instant>>,
    ) -> Result<(), Status> {
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_JWKS_FETCH_INTERVAL) {
            return Ok(());
        }
        *last_fetch = Some(Instant::now());
        let jwks = match self.source.jwks().await {
            Ok(jwks) => jwks,
            Err(status) => {
                tracing::warn!(%status, "fetching the JWKS failed; the keys fetched before stay in use");
                return Err(status);
            }
        };
        let mut keys = HashMap::with_capacity(jwks.len());
        for jwk in jwks {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            match DecodingKey::from_ed_components(&jwk.x) {
                Ok(key) => {
                    keys.insert(jwk.kid, key);
                }
                Err(err) => tracing::warn!(kid = %jwk.kid, %err, "skipping an unusable JWK"),
            }
        }
        if let Ok(mut current) = self.jwks.write() {
            *current = Jwks {
                keys,
                fetched_at: Some(Instant::now()),
            };
        }
        Ok(())
    }

    /// Verifies an API key (through the caches) and returns its caller.
    pub async fn verify_api_key(&self, key: &str) -> Result<Caller, Status> {
        if !key.starts_with(API_KEY_PREFIX) || key.len() > 128 {
            return Err(invalid_api_key());
        }
        let hash = hash_api_key(key);
        let verified = match self.accepted_keys.get(&hash) {
            Some(verified) => verified,
            None if self.refused_keys.contains_key(&hash) => return Err(invalid_api_key()),
            None => match self.source.verify_api_key(key).await {
                Ok(verified) => {
                    let verified = Arc::new(verified);
                    self.accepted_keys.insert(hash, Arc::clone(&verified));
                    verified
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated => {
                    self.refused_keys.insert(hash, ());
                    return Err(invalid_api_key());
                }
                Err(status) => return Err(status),
            },
        };
        if verified
            .expires_at
            .is_some_and(|expires_at| expires_at <= SystemTime::now())
        {
            return Err(Status::unauthenticated("the API key has expired"));
        }
        Ok(verified.caller())
    }

    /// Forgets cached keys matching `revoked` (call it when revoking keys, disabling or deleting a
    /// user), so this process refuses them at once.
    pub fn forget_api_keys(&self, revoked: impl Fn(&VerifiedKey) -> bool) {
        for (hash, key) in &self.accepted_keys {
            if revoked(&key) {
                self.accepted_keys.invalidate(&*hash);
            }
        }
    }

    /// How many API key verdicts (accepted and refused) are cached, once pending evictions ran.
    pub fn cached_api_keys(&self) -> u64 {
        self.accepted_keys.run_pending_tasks();
        self.refused_keys.run_pending_tasks();
        self.accepted_keys.entry_count() + self.refused_keys.entry_count()
    }
}

/// The bytes a verified key holds in the cache, roughly: the entry, its strings, and the cache's
/// own bookkeeping.
fn cache_weight(key: &VerifiedKey) -> u32 {
    let strings: usize = key
        .scopes
        .iter()
        .chain(&key.owner_roles)
        .map(|text| text.len() + size_of::<String>())
        .sum();
    u32::try_from(256 + size_of::<VerifiedKey>() + strings).unwrap_or(u32::MAX)
}

/// Refuses a token auth-svc would not issue at `now`: one living longer than `lifetime`, or
/// issued in the future (beyond the leeway). Only a leaked or misused signing key mints such
/// tokens; refusing them bounds what it can do to what a stolen token can.
fn check_token_times(claims: &AccessClaims, lifetime: Duration, now: i64) -> Result<(), Status> {
    let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
    if claims.iat > now.saturating_add(leeway) {
        return Err(Status::unauthenticated(
            "the access token is issued in the future",
        ));
    }
    let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    if claims.exp.saturating_sub(claims.iat) > lifetime {
        return Err(Status::unauthenticated(
            "the access token lives longer than the configured access-token lifetime",
        ));
    }
    Ok(())
}

fn invalid_token() -> Status {
    Status::unauthenticated("invalid access token")
}

fn invalid_api_key() -> Status {
    Status::unauthenticated("invalid API key")
}

enum Presented<'a> {
    Token(&'a str),
    ApiKey(&'a str),
}

fn presented_credential(metadata: &MetadataMap) -> Result<Presented<'_>, Status> {
    if let Some(value) = metadata.get("authorization") {
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
        let (kind, credential) = value.split_once(' ').ok_or_else(|| {
            Status::unauthenticated("expected `authorization: Bearer <token>` or `ApiKey <key>`")
        })?;
        let credential = credential.trim();
        return if kind.eq_ignore_ascii_case("bearer") {
            Ok(if credential.starts_with(API_KEY_PREFIX) {
                Presented::ApiKey(credential)
            } else {
                Presented::Token(credential)
            })
        } else if kind.eq_ignore_ascii_case("apikey") {
            Ok(Presented::ApiKey(credential))
        } else {
            Err(Status::unauthenticated(
                "expected `authorization: Bearer <token>` or `ApiKey <key>`",
            ))
        };
    }
    if let Some(value) = metadata.get("x-api-key") {
        let key = value.to_str().map_err(|_| invalid_api_key())?;
        return Ok(Presented::ApiKey(key.trim()));
    }
    Err(Status::unauthenticated(
        "missing credentials: send `authorization: Bearer <access token>` or `x-api-key: <API key>`",
    ))
}

/// auth-svc reached over gRPC with this service's own API key (which holds the `service` scope).
#[derive(Clone)]
pub struct RemoteAuth {
    client: proto::auth::auth_service_client::AuthServiceClient<Channel>,
    service_key: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// When auth-svc last judged this service's own key, and whether it accepted it.
    own_key_checked: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

/// How long a check of this service's own key is trusted (see [`RemoteAuth::own_key_works`]).
const OWN_KEY_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl std::fmt::Debug for RemoteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAuth").finish_non_exhaustive()
    }
}

impl RemoteAuth {
    /// Connects lazily to auth-svc at `url` (e.g. `http://127.0.0.1:9001`).
    pub fn new(url: &str, service_key: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Self::over(channel, service_key)
    }

    /// Over a channel of the caller's making, e.g. one balanced over auth-svc's replicas (the
    /// edge's); it should carry a request timeout, as [`RemoteAuth::new`]'s does.
    pub fn over(channel: Channel, service_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: proto::auth::auth_service_client::AuthServiceClient::new(channel),
            service_key: service_key
                .parse()
                .map_err(|_| anyhow::anyhow!("the service API key is not valid header text"))?,
            own_key_checked: Arc::default(),
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("x-api-key", self.service_key.clone());
        request
    }

    async fn call_verify(&self, key: String) -> Result<proto::auth::VerifyApiKeyResponse, Status> {
        let mut client = self.client.clone();
        Ok(client
            .verify_api_key(self.request(proto::auth::VerifyApiKeyRequest { key }))
            .await?
            .into_inner())
    }

    /// Maps a failed VerifyApiKey: a bad presented key is UNAUTHENTICATED; this service's own
    /// misconfiguration (its key revoked or without the `service` scope) or an outage is
    /// UNAVAILABLE and logged, so callers are not told their valid keys are invalid.
    async fn verify_failure(&self, status: Status) -> Status {
        match status.code() {
            // A malformed key is the caller's fault, like an unknown one.
            tonic::Code::InvalidArgument => invalid_api_key(),
            tonic::Code::Unauthenticated if self.own_key_works().await => status,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                tracing::error!(
                    code = ?status.code(),
                    "auth-svc refuses this service's own API key (revoked, or without the \
                     `service` scope): issue a new one with `auth-svc service-key issue`"
                );
                Status::unavailable("authentication is unavailable; retry later")
            }
            _ => unavailable_auth(status),
        }
    }

    /// Whether auth-svc accepts this service's own key, asked at most every
    /// [`OWN_KEY_CHECK_INTERVAL`]: VerifyApiKey answers UNAUTHENTICATED both for a bad presented
    /// key and for a bad caller key.
    async fn own_key_works(&self) -> bool {
        let mut checked = self.own_key_checked.lock().await;
        if let Some((at, works)) = *checked
            && at.elapsed() < OWN_KEY_CHECK_INTERVAL
        {
            return works;
        }
        let Ok(own_key) = self.service_key.to_str() else {
            return false;
        };
        let works = match self.call_verify(own_key.to_owned()).await {
            Ok(_) => true,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                false
            }
            // auth-svc is unreachable: nothing learnt about the key, so nothing remembered.
            Err(_) => return true,
        };
        *checked = Some((Instant::now(), works));
        works
    }
}

fn unavailable_auth(status: Status) -> Status {
    match status.code() {
        tonic::Code::Unauthenticated => status,
        _ => {
            tracing::warn!(%status, "auth-svc could not verify a credential");
            Status::unavailable("authentication is unavailable; retry later")
        }
    }
}

#[tonic::async_trait]
impl CredentialSource for RemoteAuth {
    async fn jwks(&self) -> Result<Vec<proto::auth::Jwk>, Status> {
        let mut client = self.client.clone();
        let response = client
            .get_jwks(Request::new(proto::auth::GetJwksRequest {}))
            .await
            .map_err(unavailable_auth)?;
        Ok(response.into_inner().keys)
    }

    async fn verify_api_key(&self, key: &str) -> Result<VerifiedKey, Status> {
        let response = match self.call_verify(key.to_owned()).await {
            Ok(response) => response,
            Err(status) => return Err(self.verify_failure(status).await),
        };
        let parse = |id: &str| {
            Uuid::parse_str(id).map_err(|_| Status::internal("auth-svc returned a malformed id"))
        };
        Ok(VerifiedKey {
            user_id: parse(&response.user_id)?,
            key_id: parse(&response.key_id)?,
            scopes: response.scopes,
            owner_roles: response.owner_roles,
            expires_at: response
                .expires_at
                .and_then(|at| SystemTime::try_from(at).ok()),
        })
    }
}

/// Encodes a 32-byte Ed25519 public key as the JWK `x` value.
pub fn jwk_x(public_key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(public_key)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    fn presented(pairs: &[(&'static str, &str)]) -> Result<String, tonic::Code> {
        let map = metadata(pairs);
        match presented_credential(&map) {
            Ok(Presented::Token(token)) => Ok(format!("token:{token}")),
            Ok(Presented::ApiKey(key)) => Ok(format!("key:{key}")),
            Err(status) => Err(status.code()),
        }
    }

    #[test]
    fn credentials_are_read_from_the_documented_headers() {
        assert_eq!(
            presented(&[("authorization", "Bearer abc.def.ghi")]),
            Ok("token:abc.def.ghi".into())
        );
        assert_eq!(
            presented(&[("authorization", "bearer cmk_123")]),
            Ok("key:cmk_123".into())
        );
        assert_eq!(
            presented(&[("authorization", "ApiKey cmk_456")]),
            Ok("key:cmk_456".into())
        );
        assert_eq!(
            presented(&[("x-api-key", "cmk_789")]),
            Ok("key:cmk_789".into())
        );
        assert_eq!(presented(&[]), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            presented(&[("authorization", "Basic dXNlcjpwdw==")]),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            presented(&[("authorization", "Bearer")]),
            Err(tonic::Code::Unauthenticated)
        );
    }

    fn caller(scopes: &[&str]) -> Caller {
        Caller {
            user_id: Uuid::nil(),
            credential: Credential::ApiKey {
                key_id: Uuid::nil(),
            },
            roles: Vec::new(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        }
    }

    #[test]
    fn roles_grant_their_scopes_and_nothing_more() {
        let plain = scopes_of_roles::<&str>(&[]);
        assert!(
            plain.contains(scope::QUOTA_CONSUME)
                && !plain.contains(scope::ADMIN)
                && !plain.contains(scope::SERVICE)
        );
        let admin = scopes_of_roles(&["admin"]);
        assert!(admin.contains(scope::ADMIN) && !admin.contains(scope::SERVICE));
        assert!(scopes_of_roles(&["service"]).contains(scope::SERVICE));
    }

    #[test]
    fn requirements_are_enforced() {
        let reader = caller(&[scope::QUOTA_READ]);
        assert!(reader.require_scope(scope::QUOTA_READ).is_ok());
        assert_eq!(
            reader
                .require_scope(scope::QUOTA_CONSUME)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            reader.require_admin().unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            reader.require_service().unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            reader.require_session().unwrap_err().code(),
            tonic::Code::PermissionDenied
        );

        let admin = caller(&[scope::ADMIN]);
        assert!(admin.require_scope(scope::BILLING_WRITE).is_ok());
        // Administrators are not services: internal RPCs stay closed to them.
        assert!(admin.require_service().is_err());

        let service_key = caller(&[scope::SERVICE]);
        assert!(service_key.require_service().is_ok());
        // Only a key is a service, whatever scopes a session claims.
        let session = Caller {
            credential: Credential::Session {
                session_id: Uuid::nil(),
            },
            ..service_key
        };
        assert!(session.require_service().is_err());
    }

    fn claims(iat: i64, exp: i64) -> AccessClaims {
        AccessClaims {
            sub: Uuid::nil().to_string(),
            sid: Uuid::nil().to_string(),
            roles: Vec::new(),
            iss: "commerce-mesh".into(),
            aud: "commerce-mesh".into(),
            iat,
            exp,
            jti: Uuid::nil().to_string(),
        }
    }

    #[test]
    fn tokens_live_no_longer_than_configured_and_are_not_issued_in_the_future() {
        let now = 1_000_000;
        let lifetime = Duration::from_secs(900);
        assert!(check_token_times(&claims(now, now + 900), lifetime, now).is_ok());
        assert!(check_token_times(&claims(now, now + 901), lifetime, now).is_err());
        // Within the clock-skew leeway, a token from a slightly fast clock is fine.
        assert!(check_token_times(&claims(now + 5, now + 905), lifetime, now).is_ok());
        assert!(check_token_times(&claims(now + 6, now + 906), lifetime, now).is_err());
    }

    #[test]
    fn a_key_keeps_only_the_scopes_its_owner_still_has() {
        let key = VerifiedKey {
            user_id: Uuid::nil(),
            key_id: Uuid::nil(),
            scopes: vec![scope::ADMIN.into(), scope::QUOTA_READ.into()],
            owner_roles: Vec::new(),
            expires_at: None,
        };
        let scopes = key.caller().scopes;
        assert!(scopes.contains(scope::QUOTA_READ));
        assert!(
            !scopes.contains(scope::ADMIN),
            "the owner lost the admin role"
        );
    }
}
