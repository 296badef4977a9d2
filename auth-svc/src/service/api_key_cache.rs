//! `VerifyApiKey`'s fast path: verified keys cached in memory for a short TTL (a bounded
//! concurrent cache: made-up keys are never cached, and expiry needs no sweep under a lock), and
//! `last_used_at` updates coalesced in memory and written in one statement every few seconds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};
use kit::{caller::hash_api_key, db::PgPool};
use moka::sync::Cache;
use uuid::Uuid;

use crate::{
    domain::api_key as domain,
    error::Error,
    store::api_keys::{self as store, UsableKey},
};

/// `last_used_at` is recorded at most this often per key (the contract says once a minute).
pub const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::minutes(1);
/// How often coalesced `last_used_at` updates are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Keys noted as used before notes older than the granularity are swept.
const SWEEP_AT: usize = 100_000;
/// Verified keys cached at once (each a few hundred bytes).
const CACHE_ENTRIES: u64 = 100_000;

#[derive(Default)]
struct Usage {
    /// Not yet written.
    pending: HashMap<Uuid, DateTime<Utc>>,
    /// Last time noted per key, to skip notes within the granularity.
    noted: HashMap<Uuid, DateTime<Utc>>,
}

/// Verifies API keys; see the module documentation.
pub struct ApiKeys {
    pool: PgPool,
    ttl: Duration,
    cache: Cache<[u8; 32], Arc<UsableKey>>,
    usage: Mutex<Usage>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// `ttl` 0 disables the cache (every verification reads the database).
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        let ttl = ttl.min(kit::caller::MAX_API_KEY_CACHE_TTL);
        let cache = Cache::builder()
            .max_capacity(if ttl.is_zero() { 0 } else { CACHE_ENTRIES })
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build();
        Self {
            pool,
            ttl,
            cache,
            usage: Mutex::new(Usage::default()),
        }
    }

    /// The usable key with secret `key` at `now`: `INVALID_ARGUMENT` for a malformed secret,
    /// `UNAUTHENTICATED` for an unknown, revoked or expired key or an owner who is not active.
    pub async fn verify(&self, key: &str, now: DateTime<Utc>) -> Result<Arc<UsableKey>, Error> {
        domain::check_secret_form(key)?;
        let hash = hash_api_key(key);
        let usable = match self.cache.get(&hash) {
            Some(usable) => usable,
            None => {
                let mut conn = self.pool.get().await?;
                let usable = store::find_usable(&mut conn, &hash)
                    .await?
                    .map(Arc::new)
                    .ok_or(Error::Unauthenticated("invalid API key"))?;
                self.cache.insert(hash, Arc::clone(&usable));
                usable
            }
        };
        if usable.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::Unauthenticated("the API key has expired"));
        }
        self.note_used(&usable, now);
        Ok(usable)
    }

    /// Drops cached keys matching `revoked`, so the next verification reads the database.
    pub fn forget(&self, revoked: impl Fn(&UsableKey) -> bool) {
        for (hash, key) in &self.cache {
            if revoked(&key) {
                self.cache.invalidate(&*hash);
            }
        }
    }

    fn note_used(&self, key: &UsableKey, now: DateTime<Utc>) {
        let Ok(mut usage) = self.usage.lock() else {
            return;
        };
        let last = usage.noted.get(&key.id).copied().or(key.last_used_at);
        if last.is_some_and(|at| now - at < LAST_USED_GRANULARITY) {
            return;
        }
        if usage.noted.len() >= SWEEP_AT {
            usage
                .noted
                .retain(|_, at| now - *at < LAST_USED_GRANULARITY);
        }
        usage.noted.insert(key.id, now);
        usage.pending.insert(key.id, now);
    }

    /// Writes the pending `last_used_at` updates in one statement; returns how many keys.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let pending: Vec<(Uuid, DateTime<Utc>)> = match self.usage.lock() {
            Ok(mut usage) => usage.pending.drain().collect(),
            Err(_) => return Ok(0),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let written = async {
            let mut conn = self.pool.get().await?;
            Ok::<_, Error>(store::record_last_used(&mut conn, &pending).await?)
        }
        .await;
        match written {
            Ok(_) => Ok(pending.len()),
            Err(err) => {
                // Keep the notes for the next flush; a newer note for the same key wins.
                if let Ok(mut usage) = self.usage.lock() {
                    for (id, at) in pending {
                        usage.pending.entry(id).or_insert(at);
                    }
                }
                Err(err)
            }
        }
    }

    /// Flushes usage every [`FLUSH_INTERVAL`] while `self` is alive.
    pub fn spawn_usage_flusher(self: &Arc<Self>) {
        let this: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(FLUSH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(api_keys) = this.upgrade() else {
                    return;
                };
                if let Err(err) = api_keys.flush_usage().await {
                    tracing::warn!(%err, "writing API key last_used_at failed; retrying later");
                }
            }
        });
    }
}
