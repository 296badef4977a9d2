//! edge-proxy: REST/JSON for browsers and HTTP clients, translated into gRPC calls to the mesh from
//! the contracts' `google.api.http` annotations (no hand-written routes).
//!
//! Credentials (`authorization`, `x-api-key`), `x-request-id`, `user-agent` and the payment
//! providers' signature headers are passed on as gRPC metadata. auth-svc's brute-force limits
//! count by client address, so the edge decides it (the TCP peer, or behind trusted proxies the
//! right-most untrusted `x-forwarded-for` entry), sends it to auth-svc as the only
//! `x-forwarded-for` entry and vouches for it with its own service key in `x-proxy-key`; whatever
//! a client sent in those headers is dropped. The other services get neither: the service key
//! would let them make internal RPCs they have no business with.
//!
//! In front of existing HTTP backends, the protected routes of [`gateway`] authenticate, charge
//! quota and forward with the caller's identity in headers.

mod codec;
mod docs;
pub mod gateway;
mod grpc_web;
mod openapi;
mod ready;
pub mod routes;
mod transcode;

use std::{
    collections::HashSet,
    net::SocketAddr,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use http::uri::PathAndQuery;
use kit::client_address::{
    FORWARDED_FOR_HEADER, PROXY_KEY_HEADER, TrustedProxies, client_of, forwarded_chain,
};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::{
    Status,
    metadata::{MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    codec::DynamicCodec,
    routes::{PathVariables, Route},
    transcode::BadRequest,
};

/// Where the gRPC services are: one or more addresses each, balanced (replicas of a service).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub auth: Vec<String>,
    pub billing: Vec<String>,
    pub quota: Vec<String>,
}

/// Everything the edge's router is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub upstreams: Upstreams,
    pub forwarding: Forwarding,
    /// Deadline of each call to a service.
    pub rpc_timeout: Duration,
    /// Browser origins allowed to call the edge cross-origin (CORS); none by default.
    pub cors_origins: Vec<HeaderValue>,
    /// Protected routes to HTTP upstreams (`EDGE_ROUTES`); none by default.
    pub gateway: Option<gateway::GatewaySettings>,
}

impl Settings {
    /// The defaults besides the upstreams and the forwarding: a 10 s deadline, no CORS origins,
    /// no protected routes.
    pub fn new(upstreams: Upstreams, forwarding: Forwarding) -> Self {
        Self {
            upstreams,
            forwarding,
            rpc_timeout: Duration::from_secs(10),
            cors_origins: Vec::new(),
            gateway: None,
        }
    }
}

/// Request headers a cross-origin browser may send: credentials, JSON, gRPC-Web's own.
const CORS_REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "x-api-key",
    "x-request-id",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
];

/// Response headers a cross-origin browser's script may read: gRPC-Web's status trailers sent
/// as headers, the request id, when to come back, and the protected routes' quota.
const CORS_EXPOSED_HEADERS: [&str; 8] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    "retry-after",
    "x-quota-limit",
    "x-quota-remaining",
    "x-quota-reset",
];

/// Headers passed on to the services as metadata.
const FORWARDED_HEADERS: [&str; 8] = [
    "authorization",
    "x-api-key",
    "x-request-id",
    "user-agent",
    "wechatpay-signature",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-serial",
];

/// Largest request body accepted (REST and gRPC-Web).
const MAX_BODY_BYTES: usize = 1 << 20;

struct Edge {
    routes: Vec<Route>,
    /// The annotated RPCs as gRPC paths (`/commerce.quota.v1.QuotaService/Consume`): the only
    /// methods gRPC-Web may call (internal RPCs stay inside the mesh), and so the only gRPC-Web
    /// metric labels.
    grpc_methods: HashSet<String>,
    /// The services by contract package.
    services: [Service; 3],
    forwarding: Forwarding,
    rpc_timeout: Duration,
}

/// One upstream service.
#[derive(Clone)]
struct Service {
    package: &'static str,
    /// Balanced over the service's addresses.
    channel: Channel,
    /// The first address: the authority of calls forwarded as they come (gRPC-Web), which
    /// need a full URI.
    origin: Uri,
    kind: Upstream,
}

impl Service {
    fn new(package: &'static str, urls: &[String], kind: Upstream) -> anyhow::Result<Self> {
        let name = package.split('.').nth(1).unwrap_or(package);
        let first = urls
            .first()
            .ok_or_else(|| anyhow::anyhow!("no address for {name}-svc"))?;
        let origin = first
            .parse()
            .map_err(|err| anyhow::anyhow!("{name}-svc address {first:?}: {err}"))?;
        Ok(Self {
            package,
            channel: balanced_channel(name, urls)?,
            origin,
            kind,
        })
    }
}

impl Edge {
    /// The service of a contract package; `None` for a package no upstream serves (refused when
    /// the edge starts).
    fn upstream_of(&self, package: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|service| service.package == package)
    }
}

/// How the edge tells the services who the client is.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Proxies in front of the edge whose `x-forwarded-for` is believed (none by default).
    pub trusted_proxies: TrustedProxies,
    /// The edge's own API key with the `service` scope, vouching for the address it forwards.
    pub service_key: HeaderValue,
}

impl Forwarding {
    /// `service_key` must be valid header text.
    pub fn new(trusted_proxies: TrustedProxies, service_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            trusted_proxies,
            service_key: HeaderValue::from_str(service_key)
                .map_err(|_| anyhow::anyhow!("the edge's service key is not valid header text"))?,
        })
    }
}

/// The edge's HTTP router.
pub fn router(settings: Settings) -> anyhow::Result<Router> {
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)?;
    let upstreams = &settings.upstreams;
    let mut edge = Edge {
        routes: routes::from_pool(&pool)?,
        grpc_methods: HashSet::new(),
        services: [
            Service::new("commerce.auth.v1", &upstreams.auth, Upstream::Auth)?,
            Service::new("commerce.billing.v1", &upstreams.billing, Upstream::Other)?,
            Service::new("commerce.quota.v1", &upstreams.quota, Upstream::Other)?,
        ],
        forwarding: settings.forwarding,
        rpc_timeout: settings.rpc_timeout,
    };
    if let Some(orphan) = edge.routes.iter().find(|route| {
        let package = route.method.parent_service().package_name().to_owned();
        edge.upstream_of(&package).is_none()
    }) {
        anyhow::bail!(
            "{} {} ({}) belongs to a package the edge has no upstream for",
            orphan.http_method,
            orphan.template,
            orphan.method.full_name()
        );
    }
    // gRPC-Web reaches what REST reaches: the annotated RPCs, never the internal ones.
    edge.grpc_methods = edge
        .routes
        .iter()
        .map(|route| {
            let service = route.method.parent_service();
            format!("/{}/{}", service.full_name(), route.method.name())
        })
        .collect();
    let gateway = settings
        .gateway
        .map(|gateway| {
            // A template's first segment (`/v1/...`) is the API's: protected routes stay out of it.
            let taken: HashSet<String> = edge
                .routes
                .iter()
                .filter_map(|route| route.template.trim_start_matches('/').split('/').next())
                .filter(|segment| !segment.starts_with('{'))
                .map(str::to_owned)
                .collect();
            let quota = edge
                .upstream_of("commerce.quota.v1")
                .ok_or_else(|| anyhow::anyhow!("no quota-svc upstream"))?;
            let service_key = edge
                .forwarding
                .service_key
                .to_str()
                .map_err(|_| anyhow::anyhow!("the edge's service key is not visible ASCII"))?;
            gateway::Gateway::new(
                gateway,
                gateway::Mesh {
                    auth_urls: &upstreams.auth,
                    quota_channel: quota.channel.clone(),
                    service_key,
                    trusted_proxies: edge.forwarding.trusted_proxies.clone(),
                    rpc_timeout: edge.rpc_timeout,
                    taken_segments: &taken,
                },
            )
            .map(Arc::new)
        })
        .transpose()?;
    let edge = Arc::new(edge);
    let readiness = Arc::new(ready::Readiness::new(vec![
        ("auth-svc", upstreams.auth.clone()),
        ("billing-svc", upstreams.billing.clone()),
        ("quota-svc", upstreams.quota.clone()),
    ])?);
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readiness.clone().answer()))
        .route("/openapi.json", openapi::serve(&edge.routes)?)
        .route("/docs", get(docs::to_page))
        .route("/docs/", get(docs::page))
        .route("/docs/{*file}", get(docs::asset))
        .fallback(transcode_call)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            edge.clone(),
            grpc_web::or_rest,
        ))
        .with_state(edge);
    // Outside gRPC-Web and the REST routes: a protected prefix is the gateway's whatever the
    // content type, and its bodies stream past the REST body limit.
    let router = match gateway {
        Some(gateway) => router.layer(middleware::from_fn_with_state(gateway, gateway::or_next)),
        None => router,
    };
    // Without origins no CORS layer at all: it would answer every OPTIONS itself.
    Ok(if settings.cors_origins.is_empty() {
        router
    } else {
        router.layer(cors(settings.cors_origins))
    })
}

/// One channel over all of a service's addresses, balanced by tower (power of two choices).
fn balanced_channel(service: &str, urls: &[String]) -> anyhow::Result<Channel> {
    let endpoints = urls
        .iter()
        .map(|url| {
            Endpoint::from_shared(url.clone())
                .map(|endpoint| endpoint.connect_timeout(Duration::from_secs(3)))
                .map_err(|err| anyhow::anyhow!("{service}-svc address {url:?}: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// CORS for the configured origins only (none: no CORS headers at all, so browsers refuse
/// cross-origin calls); preflights are answered by the edge itself.
fn cors(origins: Vec<HeaderValue>) -> CorsLayer {
    let headers = |names: &[&'static str]| {
        names
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect::<Vec<_>>()
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(headers(&CORS_REQUEST_HEADERS))
        .expose_headers(headers(&CORS_EXPOSED_HEADERS))
        .max_age(Duration::from_secs(600))
}

/// Every REST call: the route, the request message, the RPC, and its answer in HTTP terms,
/// counted in the request metrics by route template and status.
async fn transcode_call(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let (template, response) = match find_route(&edge.routes, &method, uri.path()) {
        Err(refusal) => ("unmatched".to_owned(), refusal.into_response()),
        Ok((route, variables)) => {
            let response = match decode_request(route, variables, &uri, &headers, &body) {
                Err(refusal) => refusal.into_response(),
                Ok(message) => match call_service(&edge, route, message, &headers, peer).await {
                    Ok(reply) => reply_response(route, &reply),
                    Err(status) => status_response(&status),
                },
            };
            (route.template.clone(), response)
        }
    };
    record_request(&method, template, response.status(), started);
    response
}

/// A call the edge answers itself, before any service sees it.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: tonic::Code,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message, None)
    }
}

/// The route for `method` on `path` and its path variables. A path that exists under another
/// method is 405, not 404, so the client learns that only its method is wrong.
fn find_route<'a>(
    routes: &'a [Route],
    method: &Method,
    path: &str,
) -> Result<(&'a Route, PathVariables), Refusal> {
    let mut path_matched = false;
    let found = routes.iter().find_map(|route| {
        let variables = route.matches(path)?;
        path_matched = true;
        (route.http_method == method).then_some((route, variables))
    });
    found.ok_or_else(|| {
        if path_matched {
            Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: tonic::Code::Unimplemented,
                message: format!("{method} is not allowed on {path}"),
            }
        } else {
            Refusal {
                status: StatusCode::NOT_FOUND,
                code: tonic::Code::NotFound,
                message: format!("no route for {method} {path}"),
            }
        }
    })
}

/// The RPC's request message from the body, the path variables and the query string; the
/// content type only matters to `google.api.HttpBody` bodies, which keep it.
fn decode_request(
    route: &Route,
    variables: PathVariables,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<DynamicMessage, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    transcode::request_message(route, variables, uri.query(), content_type, body).map_err(
        |BadRequest(problem)| Refusal {
            status: StatusCode::BAD_REQUEST,
            code: tonic::Code::InvalidArgument,
            message: problem,
        },
    )
}

/// Calls the route's RPC on the service that owns it, with the client's metadata and the edge's
/// deadline. The edge's own failures are statuses too, so that one mapping turns every failed
/// call into HTTP: a bad RPC path is 500 "internal error", an unreachable service 503.
async fn call_service(
    edge: &Edge,
    route: &Route,
    message: DynamicMessage,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<tonic::Response<DynamicMessage>, Status> {
    let service = route.method.parent_service();
    let upstream = edge
        .upstream_of(service.package_name())
        .ok_or_else(|| Status::internal("internal error"))?;
    let mut request = tonic::Request::new(message);
    forward_metadata(
        headers,
        peer,
        &edge.forwarding,
        upstream.kind,
        request.metadata_mut(),
    );
    request.set_timeout(edge.rpc_timeout);
    let rpc_path = format!("/{}/{}", service.full_name(), route.method.name());
    let rpc_path =
        PathAndQuery::from_str(&rpc_path).map_err(|_| Status::internal("internal error"))?;
    let mut grpc = tonic::client::Grpc::new(upstream.channel.clone());
    grpc.ready().await.map_err(|err| {
        tracing::warn!(%err, "upstream not ready");
        Status::unavailable("the service is unavailable")
    })?;
    grpc.unary(request, rpc_path, DynamicCodec::new(route.method.output()))
        .await
}

/// A service's reply as HTTP: proto3 JSON of the reply or of its `response_body` field (or an
/// `HttpBody`'s own bytes and content type),
/// with the request id the service logged it under.
fn reply_response(route: &Route, reply: &tonic::Response<DynamicMessage>) -> Response {
    let (content_type, bytes) =
        match transcode::response_body(reply.get_ref(), &route.response_body) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(%err, "serialising a response");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    tonic::Code::Internal,
                    "internal error",
                    None,
                );
            }
        };
    let mut out = Response::new(Body::from(bytes));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        out.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    copy_request_id(&mut out, metadata_text(reply.metadata(), "x-request-id"));
    out
}

/// A failed call as HTTP: the status's code and message in the JSON error body, with its request
/// id, and `Retry-After` when the service said when to come back (auth-svc's login lockout).
fn status_response(status: &Status) -> Response {
    let mut out = error_response(
        transcode::http_status(status.code()),
        status.code(),
        status.message(),
        metadata_text(status.metadata(), "x-request-id"),
    );
    if let Some(retry_after) = metadata_text(status.metadata(), "retry-after")
        && let Ok(value) = HeaderValue::from_str(retry_after)
    {
        out.headers_mut().insert(header::RETRY_AFTER, value);
    }
    out
}

/// A metadata entry as text; one that is not visible ASCII is left out rather than guessed at.
fn metadata_text<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).and_then(|value| value.to_str().ok())
}

/// Which service a call goes to, as far as the metadata it gets is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// auth-svc, whose limits count by the client address the edge vouches for.
    Auth,
    /// billing-svc or quota-svc: no client address, and never the edge's service key.
    Other,
}

fn forward_metadata(
    headers: &HeaderMap,
    peer: SocketAddr,
    forwarding: &Forwarding,
    upstream: Upstream,
    metadata: &mut MetadataMap,
) {
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok())
            && let Ok(value) = value.parse()
        {
            metadata.insert(name, value);
        }
    }
    if upstream != Upstream::Auth {
        return;
    }
    if let Some((client, key)) = vouched_client(headers, peer, forwarding)
        && let (Ok(client), Ok(key)) = (
            MetadataValue::try_from(client.as_bytes()),
            MetadataValue::try_from(key.as_bytes()),
        )
    {
        metadata.insert(FORWARDED_FOR_HEADER, client);
        metadata.insert(PROXY_KEY_HEADER, key);
    }
}

/// For auth-svc: the client address the edge decided on (`x-forwarded-for`) and the edge's key
/// that vouches for it (`x-proxy-key`).
fn vouched_client(
    headers: &HeaderMap,
    peer: SocketAddr,
    forwarding: &Forwarding,
) -> Option<(HeaderValue, HeaderValue)> {
    let chain = forwarded_chain(headers);
    let client = client_of(
        peer.ip(),
        false,
        chain.as_deref(),
        &forwarding.trusted_proxies,
    );
    let client = HeaderValue::from_str(&client.to_string()).ok()?;
    Some((client, forwarding.service_key.clone()))
}

/// Counts a request in the edge's metrics by method, route (template or gRPC method) and status.
fn record_request(method: &Method, route: String, status: StatusCode, started: Instant) {
    // Any token is a valid method: only the standard ones become labels of their own.
    let method = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => method.as_str(),
        _ => "OTHER",
    };
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status.as_str().to_owned()),
    ];
    metrics::counter!("edge_requests_total", &labels).increment(1);
    metrics::histogram!("edge_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
}

fn copy_request_id(response: &mut Response, request_id: Option<&str>) {
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("x-request-id", value);
    }
}

fn error_response(
    status: StatusCode,
    code: tonic::Code,
    message: &str,
    request_id: Option<&str>,
) -> Response {
    let mut response = Response::new(Body::from(transcode::error_body(code, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    copy_request_id(&mut response, request_id);
    response
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn only_auth_svc_gets_the_edges_service_key_and_the_client_address() {
        let forwarding = Forwarding::new(TrustedProxies::default(), "cmk_edge_key").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("r-1"));
        headers.insert(PROXY_KEY_HEADER, HeaderValue::from_static("cmk_forged"));
        headers.insert(FORWARDED_FOR_HEADER, HeaderValue::from_static("6.6.6.6"));
        let peer: SocketAddr = "198.51.100.4:5555".parse().unwrap();
        let sent = |upstream| {
            let mut metadata = MetadataMap::new();
            forward_metadata(&headers, peer, &forwarding, upstream, &mut metadata);
            metadata
        };

        let auth = sent(Upstream::Auth);
        assert_eq!(auth.get(PROXY_KEY_HEADER).unwrap(), "cmk_edge_key");
        assert_eq!(auth.get(FORWARDED_FOR_HEADER).unwrap(), "198.51.100.4");
        assert_eq!(auth.get("x-request-id").unwrap(), "r-1");

        // billing-svc and quota-svc: a service key there would allow internal RPCs.
        let other = sent(Upstream::Other);
        assert!(other.get(PROXY_KEY_HEADER).is_none(), "{other:?}");
        assert!(other.get(FORWARDED_FOR_HEADER).is_none(), "{other:?}");
        assert_eq!(other.get("x-request-id").unwrap(), "r-1");
    }
}
