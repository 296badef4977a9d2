//! Rules of the signing key ring, without storage: key ids, which public keys are published,
//! and the claims of an access token.

use chrono::{DateTime, Duration, Utc};
use kit::caller::{AccessClaims, jwk_x};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a rotated key stays published beyond the access token lifetime: covers the verifiers'
/// clock leeway and skew between hosts.
pub const RETIRE_MARGIN: Duration = Duration::minutes(5);

/// A signing key's public half and lifecycle, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub public_key: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

/// The RFC 7638 thumbprint of an Ed25519 public key: a stable `kid` derived from the key itself.
pub fn kid_of(public_key: &[u8; 32]) -> String {
    // The members in lexicographic order, no whitespace, as RFC 7638 requires.
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jwk_x(public_key)
    );
    jwk_x(&Sha256::digest(canonical.as_bytes()).into())
}

/// Whether `key` may still verify unexpired tokens at `now`: the current key, or one rotated less
/// than the token lifetime (plus margin) ago.
pub fn is_published(key: &PublicKey, token_ttl: Duration, now: DateTime<Utc>) -> bool {
    key.rotated_at
        .is_none_or(|rotated_at| now < rotated_at + token_ttl + RETIRE_MARGIN)
}

/// The keys to publish at `now`: current first, then the others newest first.
pub fn published(
    mut keys: Vec<PublicKey>,
    token_ttl: Duration,
    now: DateTime<Utc>,
) -> Vec<PublicKey> {
    keys.retain(|key| is_published(key, token_ttl, now));
    keys.sort_by(|a, b| {
        a.rotated_at
            .is_some()
            .cmp(&b.rotated_at.is_some())
            .then(b.created_at.cmp(&a.created_at))
    });
    keys
}

/// How long a new key is published before it signs: longer than a replica keeps its copy of the
/// JWKS (`crate::service::signing_keys::JWKS_CACHE_TTL`), so every copy lists a key before any token signed with it exists.
pub const PUBLISH_BEFORE_SIGNING: Duration = Duration::seconds(10);

/// The key to sign with at `now`: the current key once it has been published for
/// [`PUBLISH_BEFORE_SIGNING`]; until then the key it replaced (still published), or the current
/// key if there is none (a fresh database: no token exists that a stale copy could miss).
pub fn signing_key(
    keys: &[PublicKey],
    token_ttl: Duration,
    now: DateTime<Utc>,
) -> Option<&PublicKey> {
    let current = keys.iter().find(|key| key.rotated_at.is_none())?;
    if current.created_at + PUBLISH_BEFORE_SIGNING <= now {
        return Some(current);
    }
    keys.iter()
        .filter(|key| key.rotated_at.is_some() && is_published(key, token_ttl, now))
        .max_by_key(|key| key.rotated_at)
        .or(Some(current))
}

/// The JWKS entry of a key.
pub fn jwk(key: &PublicKey) -> proto::auth::Jwk {
    proto::auth::Jwk {
        kty: "OKP".to_owned(),
        crv: "Ed25519".to_owned(),
        x: jwk_x(&key.public_key),
        kid: key.kid.clone(),
        alg: "EdDSA".to_owned(),
        r#use: "sig".to_owned(),
    }
}

/// What an access token says.
#[derive(Debug, Clone)]
pub struct TokenSubject<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub roles: &'a [String],
}

/// The claims of an access token issued at `now`, with its expiry.
pub fn access_claims(
    subject: &TokenSubject<'_>,
    issuer: &str,
    audience: &str,
    ttl: Duration,
    now: DateTime<Utc>,
    jti: Uuid,
) -> (AccessClaims, DateTime<Utc>) {
    // Whole seconds, as the JWT carries them, so the reported expiry equals the claim.
    let issued_at = now.timestamp();
    let expires_at = issued_at + ttl.num_seconds();
    let claims = AccessClaims {
        sub: subject.user_id.to_string(),
        sid: subject.session_id.to_string(),
        roles: subject.roles.to_vec(),
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        iat: issued_at,
        exp: expires_at,
        jti: jti.to_string(),
    };
    let expiry = DateTime::from_timestamp(expires_at, 0).unwrap_or(now + ttl);
    (claims, expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, created_min: i64, rotated_min: Option<i64>) -> PublicKey {
        let at = |minutes| DateTime::UNIX_EPOCH + Duration::minutes(minutes);
        PublicKey {
            kid: kid.to_owned(),
            public_key: [0; 32],
            created_at: at(created_min),
            rotated_at: rotated_min.map(at),
        }
    }

    #[test]
    fn rotated_keys_stay_published_until_their_tokens_expired() {
        let ttl = Duration::minutes(15);
        let keys = vec![
            key("oldest", 0, Some(100)),
            key("previous", 100, Some(200)),
            key("current", 200, None),
        ];
        let at = |minutes| DateTime::UNIX_EPOCH + Duration::minutes(minutes);
        let kids = |now| {
            published(keys.clone(), ttl, now)
                .into_iter()
                .map(|key| key.kid)
                .collect::<Vec<_>>()
        };
        // Rotated at 200: tokens signed until then expire by 215, plus the margin.
        assert_eq!(kids(at(201)), ["current", "previous"]);
        assert_eq!(kids(at(219)), ["current", "previous"]);
        assert_eq!(kids(at(220)), ["current"]);
        assert_eq!(kids(at(110)), ["current", "previous", "oldest"]);
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let public_key: [u8; 32] =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, x)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .unwrap_or_else(|| panic!("example key"));
        assert_eq!(
            kid_of(&public_key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn claims_carry_the_subject_and_expire_after_the_ttl() {
        let now = DateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::milliseconds(700);
        let roles = vec!["admin".to_owned()];
        let subject = TokenSubject {
            user_id: Uuid::from_u128(1),
            session_id: Uuid::from_u128(2),
            roles: &roles,
        };
        let (claims, expires_at) = access_claims(
            &subject,
            "iss",
            "aud",
            Duration::minutes(15),
            now,
            Uuid::from_u128(3),
        );
        assert_eq!(claims.sub, Uuid::from_u128(1).to_string());
        assert_eq!(claims.sid, Uuid::from_u128(2).to_string());
        assert_eq!(claims.roles, roles);
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), ("iss", "aud"));
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(expires_at.timestamp(), claims.exp);
    }

    #[test]
    fn a_new_key_signs_only_once_every_jwks_copy_lists_it() {
        let ttl = Duration::minutes(15);
        let at =
            |seconds| DateTime::UNIX_EPOCH + Duration::minutes(200) + Duration::seconds(seconds);
        let keys = vec![key("previous", 100, Some(200)), key("current", 200, None)];
        let kid = |now| signing_key(&keys, ttl, now).map(|key| key.kid.as_str());
        assert_eq!(kid(at(0)), Some("previous"));
        assert_eq!(kid(at(9)), Some("previous"));
        assert_eq!(kid(at(10)), Some("current"));
        // A fresh database has only the current key: it signs at once.
        let first = vec![key("first", 200, None)];
        assert_eq!(
            signing_key(&first, ttl, at(0)).map(|key| key.kid.as_str()),
            Some("first")
        );
    }
}
