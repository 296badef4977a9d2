//! The client address of a request, which brute-force limits and the audit log count by, so it
//! must not be something a client can choose.
//!
//! A forwarded address (`x-forwarded-for`) is honoured only from a hop that is trusted: a peer in
//! a configured proxy network ([`TrustedProxies`]), or a peer that vouches for itself with a
//! service API key in [`PROXY_KEY_HEADER`] (the edge). Of a forwarded chain the right-most
//! untrusted entry is the client: every entry left of it was written by someone we cannot trust,
//! the client included. Several `x-forwarded-for` lines are one chain in their order (some proxies
//! add a line rather than append to the client's).
//!
//! Limits count by [`limit_key`], which groups the addresses one client is likely to hold.

use std::{
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use ipnet::IpNet;
use tonic::{server::NamedService, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use crate::caller::Authenticator;

/// The header in which a proxy presents its own service API key to vouch for the
/// `x-forwarded-for` it sends. The edge strips it from clients (it forwards only known headers).
pub const PROXY_KEY_HEADER: &str = "x-proxy-key";
/// The forwarded chain, `client, proxy1, proxy2`.
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

/// Networks whose hosts are proxies allowed to forward a client address (e.g. a load balancer's
/// subnet). Empty by default: nobody is trusted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of networks (`10.0.0.0/8`) or single addresses (`192.0.2.7`).
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is neither a network (10.0.0.0/8) nor an IP"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// The client behind `peer`: `peer` itself unless it is trusted (`peer_trusted`, or in
/// `proxies`); then the right-most entry of `forwarded_for` that is not in `proxies`. An entry
/// that is not an IP address ends the walk at the hop that wrote it, which is trusted, so what a
/// client writes can never be chosen.
pub fn client_of(
    peer: IpAddr,
    peer_trusted: bool,
    forwarded_for: Option<&str>,
    proxies: &TrustedProxies,
) -> IpAddr {
    if !(peer_trusted || proxies.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.unwrap_or_default().rsplit(',') {
        let Some(address) = parse_entry(entry) else {
            break;
        };
        client = address;
        if !proxies.contains(address) {
            break;
        }
    }
    client
}

/// The `x-forwarded-for` chain of `headers`: all its lines in order, joined with `,` (HAProxy's
/// `option forwardfor` adds a line after the client's instead of appending to it, so the first
/// line alone may be the client's own). A line that is not text becomes an empty entry, which ends
/// the walk of [`client_of`] like any entry that is not an address. `None` without the header.
pub fn forwarded_chain(headers: &http::HeaderMap) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all(FORWARDED_FOR_HEADER)
        .iter()
        .map(|line| line.to_str().unwrap_or_default())
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// What limits count `address` by: an IPv6 address by its /64 (`2001:db8:1:2::/64`), since one
/// subscriber usually holds a whole /64 and would otherwise get a fresh budget per address; an
/// IPv4-mapped IPv6 address as the IPv4 address it is; any other IPv4 address as itself.
pub fn limit_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("{}/64", Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// An `x-forwarded-for` entry: an address, maybe with a port (`192.0.2.7:4711`, `[2001:db8::1]:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|at| at.ip()))
}

/// The client address decided by [`ClientAddressLayer`], in a request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Decides each request's [`ClientAddress`] before any handler runs: from the TCP peer, or from
/// `x-forwarded-for` when the peer is a trusted proxy or vouches with a service key.
#[derive(Clone)]
pub struct ClientAddressLayer {
    trust: Arc<Trust>,
}

struct Trust {
    proxies: TrustedProxies,
    authenticator: Arc<Authenticator>,
}

impl std::fmt::Debug for ClientAddressLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAddressLayer")
            .field("proxies", &self.trust.proxies)
            .finish_non_exhaustive()
    }
}

impl ClientAddressLayer {
    /// Trusts peers in `proxies`, and peers presenting a key that `authenticator` accepts as a
    /// service's.
    pub fn new(proxies: TrustedProxies, authenticator: Arc<Authenticator>) -> Self {
        Self {
            trust: Arc::new(Trust {
                proxies,
                authenticator,
            }),
        }
    }
}

/// What a request says about its client: the TCP peer, its `x-forwarded-for` and its proxy key.
struct Claimed {
    peer: IpAddr,
    forwarded_for: Option<String>,
    proxy_key: Option<http::HeaderValue>,
}

impl Claimed {
    fn of<B>(request: &http::Request<B>) -> Option<Self> {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)?
            .ip();
        let headers = request.headers();
        Some(Self {
            peer,
            forwarded_for: forwarded_chain(headers),
            proxy_key: headers.get(PROXY_KEY_HEADER).cloned(),
        })
    }
}

impl Trust {
    async fn client(&self, claimed: Claimed) -> IpAddr {
        let vouched = match &claimed.proxy_key {
            Some(key) if claimed.forwarded_for.is_some() => self.vouches(key).await,
            _ => false,
        };
        client_of(
            claimed.peer,
            vouched,
            claimed.forwarded_for.as_deref(),
            &self.proxies,
        )
    }

    /// Whether `key` is a service's API key.
    async fn vouches(&self, key: &http::HeaderValue) -> bool {
        let Ok(key) = key.to_str() else {
            return false;
        };
        match self.authenticator.verify_api_key(key).await {
            Ok(caller) if caller.require_service().is_ok() => true,
            outcome => {
                tracing::warn!(
                    refused = ?outcome.err().map(|status| status.code()),
                    "a proxy key that is not a service's API key: its x-forwarded-for is ignored"
                );
                false
            }
        }
    }
}

impl<S> Layer<S> for ClientAddressLayer {
    type Service = ClientAddressService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddressService {
            inner,
            trust: Arc::clone(&self.trust),
        }
    }
}

/// See [`ClientAddressLayer`].
#[derive(Clone)]
pub struct ClientAddressService<S> {
    inner: S,
    trust: Arc<Trust>,
}

impl<S: NamedService> NamedService for ClientAddressService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for ClientAddressService<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the ready one is taken for this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let trust = Arc::clone(&self.trust);
        let claimed = Claimed::of(&request);
        Box::pin(async move {
            if let Some(claimed) = claimed {
                let address = trust.client(claimed).await;
                request.extensions_mut().insert(ClientAddress(address));
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let none = TrustedProxies::default();
        assert_eq!(
            client_of(ip("198.51.100.9"), false, Some("203.0.113.1"), &none),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.0.2.7".parse().unwrap();
        // The client wrote "1.2.3.4" itself; the load balancer appended the client's real address.
        let chain = "1.2.3.4, 203.0.113.5, 10.1.1.1";
        assert_eq!(
            client_of(ip("192.0.2.7"), false, Some(chain), &proxies),
            ip("203.0.113.5")
        );
        // A vouched peer (the edge) forwards the one address it decided.
        assert_eq!(
            client_of(
                ip("127.0.0.1"),
                true,
                Some("203.0.113.5"),
                &TrustedProxies::default()
            ),
            ip("203.0.113.5")
        );
        // Everything trusted: the left-most entry.
        assert_eq!(
            client_of(ip("10.0.0.2"), false, Some("10.0.0.3"), &proxies),
            ip("10.0.0.3")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_of(ip("10.0.0.2"), false, None, &proxies),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn garbage_in_the_chain_stops_at_the_hop_that_wrote_it() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            client_of(
                ip("10.0.0.2"),
                false,
                Some("203.0.113.5, unknown"),
                &proxies
            ),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_of(ip("10.0.0.2"), false, Some("[2001:db8::1]:443"), &proxies),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn a_client_line_before_the_proxy_line_is_not_the_client() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(forwarded_chain(&headers), None);
        // The client's own line first, then the one a trusted proxy added.
        headers.append(FORWARDED_FOR_HEADER, "1.2.3.4".parse().unwrap());
        headers.append(
            FORWARDED_FOR_HEADER,
            "203.0.113.5, 10.1.1.1".parse().unwrap(),
        );
        let chain = forwarded_chain(&headers).unwrap();
        assert_eq!(chain, "1.2.3.4,203.0.113.5, 10.1.1.1");
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            client_of(ip("10.0.0.2"), false, Some(&chain), &proxies),
            ip("203.0.113.5")
        );
        // A line that is not text ends the walk at the hop that wrote the line after it.
        let mut headers = http::HeaderMap::new();
        headers.append(
            FORWARDED_FOR_HEADER,
            http::HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        headers.append(FORWARDED_FOR_HEADER, "10.1.1.1".parse().unwrap());
        let chain = forwarded_chain(&headers).unwrap();
        assert_eq!(
            client_of(ip("10.0.0.2"), false, Some(&chain), &proxies),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn one_ipv6_64_is_one_limit_key() {
        assert_eq!(limit_key(ip("2001:db8:1:2::7")), "2001:db8:1:2::/64");
        assert_eq!(
            limit_key(ip("2001:db8:1:2:ffff:1:2:3")),
            limit_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:3::1")),
            limit_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(limit_key(ip("::ffff:192.0.2.9")), "192.0.2.9");
        assert_eq!(limit_key(ip("192.0.2.9")), "192.0.2.9");
        assert_eq!(limit_key(ip("::1")), "::/64");
    }

    #[test]
    fn proxy_lists_are_checked() {
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("not-an-ip".parse::<TrustedProxies>().is_err());
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        let v6: TrustedProxies = "::1, fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("::1")) && v6.contains(ip("fd12::3")));
    }
}
