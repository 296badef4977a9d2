//! The gateway: the edge in front of existing HTTP backends. A request under a protected route's
//! prefix (`EDGE_ROUTES`) is authenticated through kit as the services authenticate theirs,
//! charged to the caller's quota with its request id as the idempotency key, and forwarded with
//! its body streamed both ways; the upstream learns who called from `X-User-Id`, `X-Scopes` and
//! `X-Request-Id`, never from anything the client wrote. A 5xx answer, an unreachable upstream or
//! one that does not answer in time gives the units back.

mod config;
mod headers;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    middleware::Next,
    response::Response,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use kit::{
    caller::{AuthConfig, Authenticator, Caller, Credential, RemoteAuth},
    cli::Secret,
    client_address::{TrustedProxies, client_of, forwarded_chain},
    metering::QuotaMeter,
};
use tonic::{
    Status,
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

pub use self::config::{CredentialKind, RouteConfig, load, parse};
use self::headers::{Identity, QuotaState};
use crate::{error_response, record_request};

/// How long the edge waits for a TCP connection to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the gateway is built from (besides the edge's upstreams and keys).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The protected routes, validated ([`load`]).
    pub routes: Vec<RouteConfig>,
    /// The key the edge charges quotas with: a service account's key with `quota:consume` and
    /// nothing else (`auth-svc service-key issue --service edge-gateway --scopes
    /// quota:consume`). Required when a route names a metric.
    pub quota_key: Option<Secret>,
    /// Which access tokens are accepted (issuer, audience, lifetime, API key cache).
    pub auth: AuthConfig,
}

/// The protected routes and what serving them needs.
pub(crate) struct Gateway {
    routes: Vec<RouteConfig>,
    authenticator: Authenticator,
    meter: Option<QuotaMeter>,
    client: Client<HttpConnector, Body>,
    trusted_proxies: TrustedProxies,
    /// Deadline of each call to auth-svc or quota-svc.
    rpc_timeout: Duration,
}

/// The mesh the gateway calls, as the edge has it.
pub(crate) struct Mesh<'a> {
    pub auth_urls: &'a [String],
    pub quota_channel: Channel,
    /// The edge's service key: it lets auth-svc verify callers' API keys for the gateway.
    pub service_key: &'a str,
    pub trusted_proxies: TrustedProxies,
    pub rpc_timeout: Duration,
    /// First path segments of the transcoded routes, which no protected route may take.
    pub taken_segments: &'a HashSet<String>,
}

impl Gateway {
    pub(crate) fn new(settings: GatewaySettings, mesh: Mesh<'_>) -> anyhow::Result<Self> {
        config::refuse_clashes(&settings.routes, mesh.taken_segments)?;
        if settings.quota_key.is_none()
            && let Some(route) = settings.routes.iter().find(|route| route.metric.is_some())
        {
            anyhow::bail!(
                "EDGE_QUOTA_API_KEY is required: route {} charges quota (`auth-svc service-key \
                 issue --service edge-gateway --scopes quota:consume`)",
                route.prefix
            );
        }
        let meter = settings
            .quota_key
            .as_ref()
            .map(|key| QuotaMeter::new(mesh.quota_channel, key.expose()))
            .transpose()
            .map_err(|_| anyhow::anyhow!("EDGE_QUOTA_API_KEY is not valid header text"))?;
        let auth_endpoints = mesh
            .auth_urls
            .iter()
            .map(|url| {
                Endpoint::from_shared(url.clone())
                    .map(|endpoint| {
                        endpoint
                            .connect_timeout(CONNECT_TIMEOUT)
                            .timeout(mesh.rpc_timeout)
                    })
                    .map_err(|err| anyhow::anyhow!("auth-svc address {url:?}: {err}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let source = RemoteAuth::over(
            Channel::balance_list(auth_endpoints.into_iter()),
            mesh.service_key,
        )?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(Self {
            routes: settings.routes,
            authenticator: Authenticator::new(settings.auth, Arc::new(source)),
            meter,
            client: Client::builder(TokioExecutor::new()).build(connector),
            trusted_proxies: mesh.trusted_proxies,
            rpc_timeout: mesh.rpc_timeout,
        })
    }
}

/// The route whose prefix `path` is under (`/demo` takes `/demo` and `/demo/…`); the longest
/// prefix wins.
fn route_for<'a>(routes: &'a [RouteConfig], path: &str) -> Option<&'a RouteConfig> {
    routes
        .iter()
        .filter(|route| {
            path.strip_prefix(route.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|route| route.prefix.len())
}

/// Middleware: requests under a protected prefix are the gateway's (whatever their content
/// type), everything else goes on to gRPC-Web and the REST routes.
pub(crate) async fn or_next(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Some(route) = route_for(&gateway.routes, request.uri().path()) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = headers::request_id(request.headers());
    let mut response = match gateway.serve(route, peer, request, &request_id).await {
        Ok(response) => response,
        Err(refused) => refused.into_response(&request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(headers::REQUEST_ID, value);
    }
    // The configured prefix, never the client's path: the label set stays bounded.
    record_request(&method, route.prefix.clone(), response.status(), started);
    response
}

/// A charge made for a request, to give back if the upstream fails.
struct Charge {
    subject: Uuid,
    key: String,
    quota: QuotaState,
}

impl Gateway {
    /// Authenticates, charges, forwards; refunds the charge when the upstream fails.
    async fn serve(
        &self,
        route: &RouteConfig,
        peer: SocketAddr,
        request: Request,
        request_id: &str,
    ) -> Result<Response, Refused> {
        let caller = self.authenticate(route, request.headers()).await?;
        // A path that cannot be forwarded is refused before anything is charged.
        let uri = upstream_uri(route, request.uri())?;
        let charge = self.charge(route, caller.user_id, request_id).await?;
        let outcome = self
            .forward(route, &caller, peer, request, uri, request_id)
            .await;
        let failed = outcome
            .as_ref()
            .map_or(true, |response| response.status().is_server_error());
        let mut quota = charge.as_ref().map(|charge| charge.quota);
        if let Some(charge) = &charge
            && failed
            && self.refund(charge, request_id).await
            && let Some(quota) = &mut quota
        {
            quota.given_back(route.cost);
        }
        let mut response = outcome.map_err(|refused| refused.with_quota(quota))?;
        if let Some(quota) = &quota {
            headers::add_quota_headers(response.headers_mut(), quota);
        }
        Ok(response)
    }

    /// The caller, if its credential is of a kind the route accepts and holds the route's scope.
    async fn authenticate(
        &self,
        route: &RouteConfig,
        headers: &HeaderMap,
    ) -> Result<Caller, Refused> {
        let mut credentials = HeaderMap::new();
        for name in [header::AUTHORIZATION.as_str(), "x-api-key"] {
            if let Some(value) = headers.get(name) {
                credentials.insert(name, value.clone());
            }
        }
        let caller = self
            .authenticator
            .authenticate_metadata(&MetadataMap::from_headers(credentials))
            .await
            .map_err(Refused::from_auth)?;
        let kind = match caller.credential {
            Credential::Session { .. } => CredentialKind::Jwt,
            Credential::ApiKey { .. } => CredentialKind::ApiKey,
        };
        if !route.credentials.contains(&kind) {
            return Err(Refused::Unauthenticated(match kind {
                CredentialKind::Jwt => "this route takes an API key, not an access token",
                CredentialKind::ApiKey => "this route takes an access token, not an API key",
            }));
        }
        caller
            .require_scope(&route.scope)
            .map_err(|status| Refused::Forbidden(status.message().to_owned()))?;
        Ok(caller)
    }

    /// Charges the route's cost to `subject`, once per request id; `None` for a free route.
    async fn charge(
        &self,
        route: &RouteConfig,
        subject: Uuid,
        request_id: &str,
    ) -> Result<Option<Charge>, Refused> {
        let (Some(metric), Some(meter)) = (&route.metric, &self.meter) else {
            return Ok(None);
        };
        let key = headers::idempotency_key(&route.prefix, request_id);
        let consume = meter.consume(subject, metric, route.cost, &key);
        let decision = tokio::time::timeout(self.rpc_timeout, consume)
            .await
            .map_err(|_| Refused::quota_unavailable(&Status::deadline_exceeded("timed out")))?
            .map_err(|status| match status.code() {
                tonic::Code::AlreadyExists => Refused::RequestIdReused,
                _ => Refused::quota_unavailable(&status),
            })?;
        let quota = QuotaState {
            limit: (!decision.unlimited).then_some(decision.limit),
            remaining: (!decision.unlimited).then_some(decision.remaining),
            resets_at: decision.resets_at,
        };
        if decision.allowed {
            return Ok(Some(Charge {
                subject,
                key,
                quota,
            }));
        }
        Err(match quota.resets_at {
            Some(resets_at) => Refused::QuotaExceeded(quota, resets_at),
            // quota-svc knows no entitlement of this metric for the caller: waiting won't help.
            None => Refused::Forbidden(format!("your plan includes no `{metric}` quota")),
        })
    }

    /// Gives a failed request's units back; whether this call did. A failure is logged (the key
    /// can still be refunded by hand while quota-svc keeps it).
    async fn refund(&self, charge: &Charge, request_id: &str) -> bool {
        let Some(meter) = &self.meter else {
            return false;
        };
        let refund = meter.refund(charge.subject, &charge.key);
        match tokio::time::timeout(self.rpc_timeout, refund).await {
            Ok(Ok(refunded)) => refunded,
            Ok(Err(status)) => {
                tracing::error!(request_id, key = charge.key, %status, "refunding a failed request");
                false
            }
            Err(_) => {
                tracing::error!(
                    request_id,
                    key = charge.key,
                    "refunding a failed request timed out"
                );
                false
            }
        }
    }

    /// Sends the request to `uri` with the edge's identity headers, body streamed; the answer
    /// comes back streamed too, minus its connection headers.
    async fn forward(
        &self,
        route: &RouteConfig,
        caller: &Caller,
        peer: SocketAddr,
        request: Request,
        uri: Uri,
        request_id: &str,
    ) -> Result<Response, Refused> {
        let (parts, body) = request.into_parts();
        let chain = forwarded_chain(&parts.headers);
        let client = client_of(peer.ip(), false, chain.as_deref(), &self.trusted_proxies);
        let scheme =
            headers::client_scheme(&parts.headers, self.trusted_proxies.contains(peer.ip()));
        let identity = Identity {
            user_id: caller.user_id.to_string(),
            scopes: caller.scopes.iter().cloned().collect::<Vec<_>>().join(","),
        };
        let mut upstream = http::Request::new(body);
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() =
            headers::upstream_request(&parts.headers, &identity, request_id, client, scheme);
        let answer = tokio::time::timeout(route.timeout, self.client.request(upstream)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                tracing::warn!(request_id, route = route.prefix, err = ?err, "upstream unreachable");
                return Err(Refused::Upstream(UpstreamFailure::Unreachable, None));
            }
            Err(_) => {
                tracing::warn!(request_id, route = route.prefix, "upstream timed out");
                return Err(Refused::Upstream(UpstreamFailure::TimedOut, None));
            }
        };
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// The upstream URL of `uri`: the upstream's base path, then the request's path (without the
/// prefix when the route strips it) and query.
fn upstream_uri(route: &RouteConfig, uri: &Uri) -> Result<Uri, Refused> {
    let path = uri.path();
    // `..` would let a client step out of the prefix at an upstream that resolves it.
    let dot_segment = |segment: &str| {
        matches!(
            segment.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
    };
    if path.split('/').any(dot_segment) {
        return Err(Refused::BadPath);
    }
    let rest = if route.strip_prefix {
        &path[route.prefix.len()..]
    } else {
        path
    };
    let base = route.upstream.path().trim_end_matches('/');
    let mut target = format!("{base}{rest}");
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = route.upstream.clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| Refused::BadPath)?);
    Uri::from_parts(parts).map_err(|_| Refused::BadPath)
}

/// Why the gateway answered a request itself. One table below gives each its HTTP status and
/// gRPC code, in the edge's JSON error body; internal causes go to the log only.
#[derive(Debug)]
enum Refused {
    Unauthenticated(&'static str),
    /// The credential's message from kit (an unknown key, an expired token).
    BadCredential(String),
    Forbidden(String),
    QuotaExceeded(QuotaState, SystemTime),
    RequestIdReused,
    BadPath,
    AuthUnavailable,
    QuotaUnavailable,
    /// The upstream failed, with the caller's quota after the refund (for the headers).
    Upstream(UpstreamFailure, Option<QuotaState>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamFailure {
    Unreachable,
    TimedOut,
}

impl Refused {
    /// A failed authentication: the caller's fault, or auth-svc's absence.
    fn from_auth(status: Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated => Self::BadCredential(status.message().to_owned()),
            tonic::Code::PermissionDenied => Self::Forbidden(status.message().to_owned()),
            _ => Self::AuthUnavailable,
        }
    }

    /// quota-svc failed or refused the edge's own key: logged, and the client told to retry.
    fn quota_unavailable(status: &Status) -> Self {
        tracing::error!(code = ?status.code(), message = status.message(), "charging quota failed");
        Self::QuotaUnavailable
    }

    /// The caller's quota travels with an upstream failure, so its answer shows it too.
    fn with_quota(self, quota: Option<QuotaState>) -> Self {
        match (self, quota) {
            (Self::Upstream(failure, _), quota) => Self::Upstream(failure, quota),
            (refused, _) => refused,
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let (status, code, message) = match &self {
            Self::Unauthenticated(message) => (
                StatusCode::UNAUTHORIZED,
                tonic::Code::Unauthenticated,
                (*message).to_owned(),
            ),
            Self::BadCredential(message) => (
                StatusCode::UNAUTHORIZED,
                tonic::Code::Unauthenticated,
                message.clone(),
            ),
            Self::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                tonic::Code::PermissionDenied,
                message.clone(),
            ),
            Self::QuotaExceeded(..) => (
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                "quota exceeded".to_owned(),
            ),
            Self::RequestIdReused => (
                StatusCode::CONFLICT,
                tonic::Code::AlreadyExists,
                "this X-Request-Id was used for another request".to_owned(),
            ),
            Self::BadPath => (
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                "the path may not hold `.` or `..` segments".to_owned(),
            ),
            Self::AuthUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                "authentication is unavailable; retry later".to_owned(),
            ),
            Self::QuotaUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                "quota is unavailable; retry later with the same X-Request-Id".to_owned(),
            ),
            Self::Upstream(UpstreamFailure::Unreachable, _) => (
                StatusCode::BAD_GATEWAY,
                tonic::Code::Unavailable,
                "the upstream service could not be reached".to_owned(),
            ),
            Self::Upstream(UpstreamFailure::TimedOut, _) => (
                StatusCode::GATEWAY_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                "the upstream service did not answer in time".to_owned(),
            ),
        };
        let mut response = error_response(status, code, &message, Some(request_id));
        match &self {
            Self::QuotaExceeded(quota, resets_at) => {
                headers::add_quota_headers(response.headers_mut(), quota);
                let wait = headers::retry_after(*resets_at, SystemTime::now());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            Self::Upstream(_, Some(quota)) => {
                headers::add_quota_headers(response.headers_mut(), quota)
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn route(prefix: &str, upstream: &str, strip_prefix: bool) -> RouteConfig {
        let mut route = parse(&format!(
            "[[route]]\nprefix = {prefix:?}\nupstream = {upstream:?}\ncredentials = [\"jwt\"]\n\
             scope = \"quota:read\"\nstrip_prefix = {strip_prefix}"
        ))
        .unwrap()
        .remove(0);
        route.strip_prefix = strip_prefix;
        route
    }

    #[test]
    fn the_upstream_path_keeps_or_strips_the_prefix_under_the_base_path() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        let kept = route("/demo", "http://10.0.0.5:9090", false);
        assert_eq!(
            upstream_uri(&kept, &uri("/demo/hello?x=1&y=2")).unwrap(),
            uri("http://10.0.0.5:9090/demo/hello?x=1&y=2")
        );
        let stripped = route("/demo", "http://10.0.0.5:9090/api/", true);
        assert_eq!(
            upstream_uri(&stripped, &uri("/demo/hello")).unwrap(),
            uri("http://10.0.0.5:9090/api/hello")
        );
        assert_eq!(
            upstream_uri(&stripped, &uri("/demo")).unwrap(),
            uri("http://10.0.0.5:9090/api")
        );
        let bare = route("/demo", "http://10.0.0.5:9090", true);
        assert_eq!(
            upstream_uri(&bare, &uri("/demo")).unwrap(),
            uri("http://10.0.0.5:9090/")
        );
        for escape in ["/demo/../admin", "/demo/./x", "/demo/%2E%2E/admin"] {
            assert!(upstream_uri(&kept, &uri(escape)).is_err(), "{escape}");
        }
    }

    #[test]
    fn every_refusal_has_its_status_and_the_json_error_body() {
        let resets_at = SystemTime::now() + Duration::from_secs(120);
        let exceeded = Refused::QuotaExceeded(
            QuotaState {
                limit: Some(10),
                remaining: Some(0),
                resets_at: Some(resets_at),
            },
            resets_at,
        )
        .into_response("r-1");
        assert_eq!(exceeded.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = exceeded.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((119..=120).contains(&retry), "{retry}");
        assert_eq!(exceeded.headers()["x-quota-limit"], "10");
        assert_eq!(exceeded.headers()["x-quota-remaining"], "0");
        assert_eq!(exceeded.headers()["content-type"], "application/json");
        for (refused, status) in [
            (
                Refused::Upstream(UpstreamFailure::Unreachable, None),
                StatusCode::BAD_GATEWAY,
            ),
            (
                Refused::Upstream(UpstreamFailure::TimedOut, None),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (Refused::RequestIdReused, StatusCode::CONFLICT),
            (Refused::QuotaUnavailable, StatusCode::SERVICE_UNAVAILABLE),
            (Refused::Unauthenticated("no"), StatusCode::UNAUTHORIZED),
            (Refused::Forbidden("no".into()), StatusCode::FORBIDDEN),
        ] {
            assert_eq!(refused.into_response("r-1").status(), status);
        }
    }

    #[test]
    fn the_longest_prefix_takes_a_path_on_segment_boundaries() {
        let routes = vec![
            route("/demo", "http://127.0.0.1:1", false),
            route("/demo/deep", "http://127.0.0.1:2", false),
        ];
        let pick = |path: &str| route_for(&routes, path).map(|route| route.prefix.as_str());
        assert_eq!(pick("/demo"), Some("/demo"));
        assert_eq!(pick("/demo/x"), Some("/demo"));
        assert_eq!(pick("/demo/deep/x"), Some("/demo/deep"));
        assert_eq!(pick("/demos"), None);
    }
}
