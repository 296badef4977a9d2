//! The header rules of protected routes: the request id, what the upstream is told (and what a
//! client may not tell it), and the quota headers of the answer.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use sha2::{Digest, Sha256};

/// The identity headers the edge sets for the upstream; whatever a client sent under these names
/// is removed first, so they cannot be forged.
pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const SCOPES: HeaderName = HeaderName::from_static("x-scopes");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Quota headers of the answer (the same names as the Python package's).
pub const QUOTA_LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
pub const QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
pub const QUOTA_RESET: HeaderName = HeaderName::from_static("x-quota-reset");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The client's credentials: the edge has checked them, and the upstream gets the identity
/// instead (a token or key passed on could be replayed by whoever runs the upstream).
const CREDENTIALS: [HeaderName; 2] = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];

/// The client's `X-Request-Id` when it is 1–128 visible ASCII characters, else a new UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The quota idempotency key of a request on the route `prefix`: `gw:<prefix>:<request id>`, so
/// it never collides with keys other callers choose, and a client's retry with the same
/// `X-Request-Id` is charged once. quota-svc takes at most 128 characters: a longer id is
/// replaced by its SHA-256 (`gw:<prefix>:#<hex>`), still one key per id.
pub fn idempotency_key(prefix: &str, request_id: &str) -> String {
    let key = format!("gw:{prefix}:{request_id}");
    if key.len() <= 128 {
        return key;
    }
    let digest = Sha256::digest(request_id.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("gw:{prefix}:#{hex}")
}

/// Who the edge says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Comma-separated, in a stable order.
    pub scopes: String,
}

/// The headers the upstream gets: the client's, minus connection headers (and those the
/// `Connection` header names), credentials, `Host` (the client sets the upstream's), `Expect`,
/// the forwarding headers and anything claiming an identity; plus the identity, the request id
/// and the client address and scheme as the edge decided them.
pub fn upstream_request(
    client: &HeaderMap,
    identity: &Identity,
    request_id: &str,
    client_addr: IpAddr,
    scheme: &str,
) -> HeaderMap {
    let mut headers = client.clone();
    remove_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        // The edge answered the client's `Expect: 100-continue` itself when it began reading.
        header::EXPECT,
        USER_ID,
        SCOPES,
        REQUEST_ID,
        FORWARDED_FOR,
        FORWARDED_PROTO,
        header::FORWARDED,
    ] {
        headers.remove(name);
    }
    for name in CREDENTIALS {
        headers.remove(name);
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(USER_ID, &identity.user_id);
    set(SCOPES, &identity.scopes);
    set(REQUEST_ID, request_id);
    set(FORWARDED_FOR, &client_addr.to_string());
    set(FORWARDED_PROTO, scheme);
    headers
}

/// Removes the connection-specific headers of one hop (both ways), and the ones `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// The scheme the client used: `https` only when a trusted proxy in front of the edge says so.
pub fn client_scheme(headers: &HeaderMap, peer_trusted: bool) -> &'static str {
    let said_https = headers
        .get(FORWARDED_PROTO)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    if peer_trusted && said_https {
        "https"
    } else {
        "http"
    }
}

/// A caller's quota after a charge, as the headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// `None` for an unlimited entitlement: limit and remaining are then left out.
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    /// The end of the period.
    pub resets_at: Option<SystemTime>,
}

impl QuotaState {
    /// After a refund of `cost` units: what remains grows back (never past the limit).
    pub fn given_back(&mut self, cost: i64) {
        if let (Some(remaining), Some(limit)) = (&mut self.remaining, self.limit) {
            *remaining = remaining.saturating_add(cost).min(limit);
        }
    }
}

/// `X-Quota-Limit`, `X-Quota-Remaining` (both left out when unlimited) and `X-Quota-Reset`, the
/// period's end in Unix seconds.
pub fn add_quota_headers(headers: &mut HeaderMap, quota: &QuotaState) {
    if let Some(limit) = quota.limit {
        headers.insert(QUOTA_LIMIT, HeaderValue::from(limit));
    }
    if let Some(remaining) = quota.remaining {
        headers.insert(QUOTA_REMAINING, HeaderValue::from(remaining));
    }
    if let Some(reset) = quota.resets_at.map(unix_seconds) {
        headers.insert(QUOTA_RESET, HeaderValue::from(reset));
    }
}

/// `Retry-After` of a denial: the seconds until the period resets, at least 1.
pub fn retry_after(resets_at: SystemTime, now: SystemTime) -> u64 {
    let wait = resets_at.duration_since(now).unwrap_or(Duration::ZERO);
    // A part of a second still to wait counts as a whole one.
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_valid_client_request_id_is_kept_and_any_other_replaced() {
        let id = |value: &str| request_id(&headers(&[("x-request-id", value)]));
        assert_eq!(id("req-42"), "req-42");
        assert_eq!(id(&"a".repeat(128)), "a".repeat(128));
        for bad in ["", "has space", &"a".repeat(129)] {
            let generated = id(bad);
            assert_ne!(generated, bad);
            assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
        }
        let none = request_id(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(&none).is_ok());
    }

    #[test]
    fn idempotency_keys_are_per_route_and_fit_quota_svcs_limit() {
        assert_eq!(idempotency_key("/demo", "r-1"), "gw:/demo:r-1");
        assert_ne!(
            idempotency_key("/demo", "r-1"),
            idempotency_key("/other", "r-1")
        );
        let longest_prefix = format!("/{}", "p".repeat(47));
        let long = idempotency_key(&longest_prefix, &"x".repeat(128));
        assert!(long.len() <= 128, "{}", long.len());
        assert!(long.starts_with(&format!("gw:{longest_prefix}:#")));
        assert_ne!(long, idempotency_key(&longest_prefix, &"y".repeat(128)));
        assert_eq!(long, idempotency_key(&longest_prefix, &"x".repeat(128)));
    }

    #[test]
    fn the_upstream_gets_the_edges_identity_never_the_clients_claims() {
        let client = headers(&[
            ("x-user-id", "forged-user"),
            ("X-Scopes", "admin"),
            ("x-request-id", "client-chosen"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("authorization", "Bearer secret"),
            ("x-api-key", "cmk_secret"),
            ("host", "edge.example.com"),
            ("expect", "100-continue"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
            ("accept", "*/*"),
        ]);
        let identity = Identity {
            user_id: "0190c3a4-0000-7000-8000-000000000001".to_owned(),
            scopes: "quota:consume,quota:read".to_owned(),
        };
        let sent = upstream_request(
            &client,
            &identity,
            "req-7",
            "198.51.100.4".parse().unwrap(),
            "http",
        );
        let one = |name: &str| {
            let values: Vec<_> = sent.get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{name}: {values:?}");
            values[0].to_str().unwrap().to_owned()
        };
        assert_eq!(one("x-user-id"), identity.user_id);
        assert_eq!(one("x-scopes"), identity.scopes);
        assert_eq!(one("x-request-id"), "req-7");
        assert_eq!(one("x-forwarded-for"), "198.51.100.4");
        assert_eq!(one("x-forwarded-proto"), "http");
        assert_eq!(one("content-type"), "application/json");
        assert_eq!(one("accept"), "*/*");
        for gone in [
            "forwarded",
            "authorization",
            "x-api-key",
            "host",
            "expect",
            "connection",
            "x-private",
            "keep-alive",
            "transfer-encoding",
            "te",
            "upgrade",
        ] {
            assert!(sent.get(gone).is_none(), "{gone} was forwarded");
        }
    }

    #[test]
    fn only_a_trusted_proxy_says_the_client_used_https() {
        let said = headers(&[("x-forwarded-proto", "HTTPS")]);
        assert_eq!(client_scheme(&said, true), "https");
        assert_eq!(client_scheme(&said, false), "http");
        assert_eq!(client_scheme(&HeaderMap::new(), true), "http");
    }

    #[test]
    fn quota_headers_leave_out_what_an_unlimited_entitlement_lacks() {
        let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut limited = HeaderMap::new();
        add_quota_headers(
            &mut limited,
            &QuotaState {
                limit: Some(1000),
                remaining: Some(998),
                resets_at: Some(reset),
            },
        );
        assert_eq!(limited[&QUOTA_LIMIT], "1000");
        assert_eq!(limited[&QUOTA_REMAINING], "998");
        assert_eq!(limited[&QUOTA_RESET], "1800000000");
        let mut unlimited = HeaderMap::new();
        add_quota_headers(
            &mut unlimited,
            &QuotaState {
                limit: None,
                remaining: None,
                resets_at: Some(reset),
            },
        );
        assert!(unlimited.get(&QUOTA_LIMIT).is_none());
        assert!(unlimited.get(&QUOTA_REMAINING).is_none());
        assert_eq!(unlimited[&QUOTA_RESET], "1800000000");
    }

    #[test]
    fn a_refund_gives_the_units_back_up_to_the_limit() {
        let mut quota = QuotaState {
            limit: Some(10),
            remaining: Some(7),
            resets_at: None,
        };
        quota.given_back(2);
        assert_eq!(quota.remaining, Some(9));
        quota.given_back(5);
        assert_eq!(quota.remaining, Some(10));
        let mut unlimited = QuotaState {
            limit: None,
            remaining: None,
            resets_at: None,
        };
        unlimited.given_back(1);
        assert_eq!(unlimited.remaining, None);
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_a_second() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(retry_after(now + Duration::from_secs(90), now), 90);
        assert_eq!(retry_after(now + Duration::from_millis(90_500), now), 91);
        assert_eq!(retry_after(now, now), 1);
        assert_eq!(retry_after(now - Duration::from_secs(5), now), 1);
    }
}
