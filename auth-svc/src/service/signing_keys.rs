//! Token signing keys: Ed25519 key pairs in `signing_keys` (private halves sealed under
//! `AUTH_MASTER_KEY`), the [`Signer`] that mints access tokens with the current key, the JWKS of
//! published public keys, and rotation.
//!
//! A rotated key keeps verifying: its public half stays in the JWKS until every token it signed
//! has expired ([`ring::is_published`]). Replicas pick up a rotation within [`RELOAD_INTERVAL`].
//! `GetJwks` is public, so it is served from memory, read again at most every
//! [`JWKS_CACHE_TTL`]; a new key signs only after [`ring::PUBLISH_BEFORE_SIGNING`], by when every
//! replica's copy lists it.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::db::PgPool;
use rand::rngs::OsRng;
use uuid::Uuid;

use crate::{
    domain::{
        master_key::MasterKey,
        signing_key_ring::{self as ring, TokenSubject},
    },
    error::Error,
    store::signing_keys::{self as store, SigningKeyRow},
};

/// How often a replica re-reads which key is current, so a rotation made elsewhere (the CLI,
/// another replica) takes effect.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// How long a replica serves its copy of the JWKS: unauthenticated floods of `GetJwks` reach the
/// database at most once per interval.
pub const JWKS_CACHE_TTL: Duration = Duration::from_secs(5);

/// Token settings and the key sealing signing keys.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    pub master_key: MasterKey,
}

impl KeysConfig {
    fn token_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.access_token_ttl).unwrap_or(chrono::Duration::MAX)
    }
}

#[derive(Clone)]
struct CurrentKey {
    kid: String,
    key: EncodingKey,
    loaded_at: Instant,
}

/// Mints access tokens with the current signing key and publishes the JWKS. The current key is
/// loaded (or created, on a fresh database) on first use, after the migrations ran.
pub struct Signer {
    pool: PgPool,
    config: KeysConfig,
    current: RwLock<Option<CurrentKey>>,
    loading: tokio::sync::Mutex<()>,
    jwks: RwLock<Option<PublishedKeys>>,
    jwks_loading: tokio::sync::Mutex<()>,
}

/// The JWKS as last read.
#[derive(Clone)]
struct PublishedKeys {
    keys: Arc<Vec<proto::auth::Jwk>>,
    loaded_at: Instant,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(pool: PgPool, config: KeysConfig) -> Self {
        Self {
            pool,
            config,
            current: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            jwks: RwLock::new(None),
            jwks_loading: tokio::sync::Mutex::new(()),
        }
    }

    /// An access token for `user_id`'s session, signed with the current key, and its expiry.
    pub async fn issue_access_token(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &[String],
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), Error> {
        let current = self.current_key(now).await?;
        let subject = TokenSubject {
            user_id,
            session_id,
            roles,
        };
        let (claims, expires_at) = ring::access_claims(
            &subject,
            &self.config.issuer,
            &self.config.audience,
            self.config.token_ttl(),
            now,
            Uuid::now_v7(),
        );
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(current.kid);
        let token = jsonwebtoken::encode(&header, &claims, &current.key)
            .map_err(|err| Error::Internal(format!("signing an access token: {err}")))?;
        Ok((token, expires_at))
    }

    /// The public keys that verify unexpired tokens, current first, as read at most
    /// [`JWKS_CACHE_TTL`] ago.
    pub async fn jwks(&self) -> Result<Arc<Vec<proto::auth::Jwk>>, Error> {
        if let Some(keys) = self.fresh_jwks() {
            return Ok(keys);
        }
        // One read at a time; the others wait for its result.
        let _loading = self.jwks_loading.lock().await;
        if let Some(keys) = self.fresh_jwks() {
            return Ok(keys);
        }
        let keys = Arc::new(self.read_jwks(Utc::now()).await?);
        if let Ok(mut slot) = self.jwks.write() {
            *slot = Some(PublishedKeys {
                keys: Arc::clone(&keys),
                loaded_at: Instant::now(),
            });
        }
        Ok(keys)
    }

    fn fresh_jwks(&self) -> Option<Arc<Vec<proto::auth::Jwk>>> {
        let slot = self.jwks.read().ok()?;
        slot.as_ref()
            .filter(|published| published.loaded_at.elapsed() < JWKS_CACHE_TTL)
            .map(|published| Arc::clone(&published.keys))
    }

    /// The JWKS at `now`, read from the database.
    pub async fn read_jwks(&self, now: DateTime<Utc>) -> Result<Vec<proto::auth::Jwk>, Error> {
        let mut keys = store::all(&mut *self.pool.get().await?).await?;
        if !keys.iter().any(|key| key.rotated_at.is_none()) {
            // A fresh database: create the first key, so verifiers never see an empty JWKS.
            self.current_key(now).await?;
            keys = store::all(&mut *self.pool.get().await?).await?;
        }
        let public = keys.iter().filter_map(SigningKeyRow::public).collect();
        Ok(ring::published(public, self.config.token_ttl(), now)
            .iter()
            .map(ring::jwk)
            .collect())
    }

    /// The key to sign with at `now` ([`ring::signing_key`]), chosen again every
    /// [`RELOAD_INTERVAL`].
    async fn current_key(&self, now: DateTime<Utc>) -> Result<CurrentKey, Error> {
        if let Some(current) = self.fresh_current() {
            return Ok(current);
        }
        // One reload at a time; the others wait for its result.
        let _loading = self.loading.lock().await;
        if let Some(current) = self.fresh_current() {
            return Ok(current);
        }
        let mut conn = self.pool.get().await?;
        current_or_create(&mut conn, &self.config.master_key, now).await?;
        let rows = store::all(&mut conn).await?;
        let public: Vec<_> = rows.iter().filter_map(SigningKeyRow::public).collect();
        let chosen = ring::signing_key(&public, self.config.token_ttl(), now)
            .ok_or_else(|| Error::Internal("no current signing key".to_owned()))?;
        let row = rows
            .into_iter()
            .find(|row| row.kid == chosen.kid)
            .ok_or_else(|| Error::Internal("the chosen signing key vanished".to_owned()))?;
        let current = CurrentKey {
            key: open(&self.config.master_key, &row)?,
            kid: row.kid,
            loaded_at: Instant::now(),
        };
        if let Ok(mut slot) = self.current.write() {
            *slot = Some(current.clone());
        }
        Ok(current)
    }

    fn fresh_current(&self) -> Option<CurrentKey> {
        let slot = self.current.read().ok()?;
        slot.as_ref()
            .filter(|current| current.loaded_at.elapsed() < RELOAD_INTERVAL)
            .cloned()
    }
}

/// A new key pair as a row: the seed sealed under `master_key`, bound to the key's id.
pub fn generate(master_key: &MasterKey, now: DateTime<Utc>) -> Result<SigningKeyRow, Error> {
    let signing = SigningKey::generate(&mut OsRng);
    let public_key = signing.verifying_key().to_bytes();
    let kid = ring::kid_of(&public_key);
    let private_key_sealed = master_key.seal(signing.as_bytes(), kid.as_bytes())?;
    Ok(SigningKeyRow {
        kid,
        public_key: public_key.to_vec(),
        private_key_sealed,
        created_at: now,
        rotated_at: None,
    })
}

/// The signing key of `row`, unsealed with `master_key`.
fn open(master_key: &MasterKey, row: &SigningKeyRow) -> Result<EncodingKey, Error> {
    let seed: [u8; 32] = master_key
        .open(&row.private_key_sealed, row.kid.as_bytes())?
        .try_into()
        .map_err(|_| Error::Internal(format!("signing key {} has a malformed seed", row.kid)))?;
    let der = SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|err| Error::Internal(format!("encoding signing key {}: {err}", row.kid)))?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}

/// The current key, created if there is none (the first start on a fresh database; concurrent
/// starters agree on one through the single-current-key index).
async fn current_or_create(
    conn: &mut AsyncPgConnection,
    master_key: &MasterKey,
    now: DateTime<Utc>,
) -> Result<SigningKeyRow, Error> {
    if let Some(row) = store::current(conn).await? {
        return Ok(row);
    }
    let row = generate(master_key, now)?;
    if store::insert_if_none_current(conn, &row).await? {
        tracing::info!(kid = %row.kid, "created the first token signing key");
        return Ok(row);
    }
    store::current(conn)
        .await?
        .ok_or_else(|| Error::Internal("no current signing key after creating one".to_owned()))
}

/// The current key's id after checking that `master_key` opens it (creating the first key on a
/// fresh database).
pub async fn check_current(
    conn: &mut AsyncPgConnection,
    master_key: &MasterKey,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    let row = current_or_create(conn, master_key, now).await?;
    open(master_key, &row)?;
    Ok(row.kid)
}

/// Makes a new key current and retires the previous one at `now`; returns the new key's id.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    master_key: &MasterKey,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    let row = generate(master_key, now)?;
    conn.transaction::<_, Error, _>(async move |conn| {
        // A wrong master key must not retire a key it cannot replace consistently.
        if let Some(current) = store::current(conn).await? {
            open(master_key, &current)?;
        }
        store::retire_current(conn, now).await?;
        store::insert(conn, &row).await?;
        Ok(row.kid)
    })
    .await
}
