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

mod codec;
pub mod routes;
mod transcode;

use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::Response,
    routing::get,
};
use http::uri::PathAndQuery;
use kit::client_address::{
    FORWARDED_FOR_HEADER, PROXY_KEY_HEADER, TrustedProxies, client_of, forwarded_chain,
};
use prost_reflect::DescriptorPool;
use tonic::{
    metadata::{Ascii, MetadataMap, MetadataValue},
    transport::Channel,
};

use crate::{codec::DynamicCodec, routes::Route, transcode::BadRequest};

/// Where the gRPC services are.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub auth: String,
    pub billing: String,
    pub quota: String,
}

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

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1 << 20;

struct Edge {
    routes: Vec<Route>,
    auth: Channel,
    billing: Channel,
    quota: Channel,
    forwarding: Forwarding,
    rpc_timeout: Duration,
}

/// How the edge tells the services who the client is.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Proxies in front of the edge whose `x-forwarded-for` is believed (none by default).
    pub trusted_proxies: TrustedProxies,
    /// The edge's own API key with the `service` scope, vouching for the address it forwards.
    pub service_key: MetadataValue<Ascii>,
}

impl Forwarding {
    /// `service_key` must be valid header text.
    pub fn new(trusted_proxies: TrustedProxies, service_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            trusted_proxies,
            service_key: service_key
                .parse()
                .map_err(|_| anyhow::anyhow!("the edge's service key is not valid header text"))?,
        })
    }
}

/// The edge's HTTP router.
pub fn router(
    upstreams: &Upstreams,
    forwarding: Forwarding,
    rpc_timeout: Duration,
) -> anyhow::Result<Router> {
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)?;
    let channel = |url: &str| -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy())
    };
    let edge = Edge {
        routes: routes::from_pool(&pool)?,
        auth: channel(&upstreams.auth)?,
        billing: channel(&upstreams.billing)?,
        quota: channel(&upstreams.quota)?,
        forwarding,
        rpc_timeout,
    };
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(transcode_call)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(edge)))
}

async fn transcode_call(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let mut path_matched = false;
    let found = edge.routes.iter().find_map(|route| {
        let variables = route.matches(path)?;
        path_matched = true;
        (route.http_method == method).then_some((route, variables))
    });
    let Some((route, variables)) = found else {
        return if path_matched {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                tonic::Code::Unimplemented,
                &format!("{method} is not allowed on {path}"),
                None,
            )
        } else {
            error_response(
                StatusCode::NOT_FOUND,
                tonic::Code::NotFound,
                &format!("no route for {method} {path}"),
                None,
            )
        };
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let message =
        match transcode::request_message(route, variables, uri.query(), content_type, &body) {
            Ok(message) => message,
            Err(BadRequest(problem)) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    &problem,
                    None,
                );
            }
        };

    let service = route.method.parent_service();
    let (channel, upstream) = match service.package_name() {
        "commerce.auth.v1" => (edge.auth.clone(), Upstream::Auth),
        "commerce.billing.v1" => (edge.billing.clone(), Upstream::Other),
        _ => (edge.quota.clone(), Upstream::Other),
    };
    let mut request = tonic::Request::new(message);
    forward_metadata(
        &headers,
        peer,
        &edge.forwarding,
        upstream,
        request.metadata_mut(),
    );
    request.set_timeout(edge.rpc_timeout);
    let rpc_path = format!("/{}/{}", service.full_name(), route.method.name());
    let Ok(rpc_path) = PathAndQuery::from_str(&rpc_path) else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            "internal error",
            None,
        );
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        tracing::warn!(%err, "upstream not ready");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            "the service is unavailable",
            None,
        );
    }
    match grpc
        .unary(request, rpc_path, DynamicCodec::new(route.method.output()))
        .await
    {
        Ok(response) => {
            let request_id = response.metadata().get("x-request-id").cloned();
            match transcode::response_body(response.get_ref()) {
                Ok((content_type, bytes)) => {
                    let mut out = Response::new(Body::from(bytes));
                    if let Ok(value) = HeaderValue::from_str(&content_type) {
                        out.headers_mut().insert(header::CONTENT_TYPE, value);
                    }
                    copy_request_id(
                        &mut out,
                        request_id.as_ref().and_then(|id| id.to_str().ok()),
                    );
                    out
                }
                Err(err) => {
                    tracing::error!(%err, "serialising a response");
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        tonic::Code::Internal,
                        "internal error",
                        None,
                    )
                }
            }
        }
        Err(status) => {
            let mut out = error_response(
                transcode::http_status(status.code()),
                status.code(),
                status.message(),
                status
                    .metadata()
                    .get("x-request-id")
                    .and_then(|id| id.to_str().ok()),
            );
            if let Some(retry_after) = status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                && let Ok(value) = HeaderValue::from_str(retry_after)
            {
                out.headers_mut().insert(header::RETRY_AFTER, value);
            }
            out
        }
    }
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
    let chain = forwarded_chain(headers);
    let client = client_of(
        peer.ip(),
        false,
        chain.as_deref(),
        &forwarding.trusted_proxies,
    );
    if let Ok(value) = client.to_string().parse() {
        metadata.insert(FORWARDED_FOR_HEADER, value);
        metadata.insert(PROXY_KEY_HEADER, forwarding.service_key.clone());
    }
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
