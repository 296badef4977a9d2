//! gRPC-Web on the edge's port: a browser's `application/grpc-web(+proto)` or `-text` call is
//! turned into gRPC by tonic-web and forwarded, frames untouched, to the service that owns the
//! method's package. The client-address rules are the REST path's: what a client claims in
//! `x-forwarded-for` or `x-proxy-key` is dropped, and only auth-svc gets the address the edge
//! vouches for.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, Uri, header},
    middleware::Next,
    response::Response,
};
use futures::future::BoxFuture;
use http_body_util::{BodyStream, Limited, StreamBody};
use kit::client_address::{FORWARDED_FOR_HEADER, PROXY_KEY_HEADER};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

use crate::{
    Edge, FORWARDED_HEADERS, MAX_BODY_BYTES, Upstream, record_request, transcode, vouched_client,
};

/// gRPC's own request headers, as tonic-web leaves them after translating.
const GRPC_HEADERS: [&str; 5] = [
    "content-type",
    "te",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// Whether a request speaks gRPC-Web (any of its content types).
fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|content_type| content_type.starts_with("application/grpc-web"))
}

/// Middleware: gRPC-Web calls go to their service, everything else on to the REST routes.
pub(crate) async fn or_rest(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !is_grpc_web(request.headers()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let known = edge.grpc_methods.contains(&path);
    // The REST path's body limit (DefaultBodyLimit only binds extractors; this body streams).
    let request = request.map(|body| axum::body::Body::new(Limited::new(body, MAX_BODY_BYTES)));
    let service = tonic_web::GrpcWebLayer::new().layer(Forwarder { edge, peer });
    let response = match service.oneshot(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    };
    // The path is the client's: only a callable method becomes a label of its own.
    let route = if known { path } else { "unmatched".to_owned() };
    record_request(&method, route, label_status(response.headers()), started);
    response
}

/// The status a gRPC-Web answer is counted under: a refused call is trailers-only, its gRPC
/// status a header, and counts as the HTTP status REST answers the same refusal with; an answer
/// with a body (its status in the trailer frame at the end) counts as 200.
fn label_status(headers: &HeaderMap) -> StatusCode {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(StatusCode::OK, |code| {
            transcode::http_status(tonic::Code::from(code))
        })
}

/// The package of a gRPC path `/commerce.quota.v1.QuotaService/Consume`.
fn package_of(path: &str) -> Option<&str> {
    let (service, _method) = path.strip_prefix('/')?.split_once('/')?;
    Some(service.rsplit_once('.')?.0)
}

/// Sends a (translated) gRPC request to the service owning its package.
#[derive(Clone)]
struct Forwarder {
    edge: Arc<Edge>,
    peer: SocketAddr,
}

impl Service<http::Request<tonic::body::Body>> for Forwarder {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (edge, peer) = (self.edge.clone(), self.peer);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let callable = edge.grpc_methods.contains(&path);
            let Some(upstream) = package_of(&path)
                .filter(|_| callable)
                .and_then(|package| edge.upstream_of(package))
            else {
                return Ok(Status::unimplemented(format!("no service serves {path}")).into_http());
            };
            // HTTP/2 needs the scheme and authority a browser's HTTP/1.1 request line lacks.
            let mut uri = upstream.origin.clone().into_parts();
            uri.path_and_query = request.uri().path_and_query().cloned();
            match Uri::from_parts(uri) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Ok(Status::internal("internal error").into_http()),
            }
            // Decided from the client's chain before its claims are dropped.
            let vouched = (upstream.kind == Upstream::Auth)
                .then(|| vouched_client(request.headers(), peer, &edge.forwarding))
                .flatten();
            // The same metadata as a REST call gets, plus gRPC's own headers: nothing about the
            // browser's HTTP/1.1 connection, and no client claims about its address.
            *request.version_mut() = http::Version::HTTP_2;
            let mut headers = HeaderMap::new();
            for name in FORWARDED_HEADERS.iter().chain(&GRPC_HEADERS) {
                if let Some(value) = request.headers().get(*name) {
                    headers.insert(*name, value.clone());
                }
            }
            if let Some((client, key)) = vouched {
                headers.insert(FORWARDED_FOR_HEADER, client);
                headers.insert(PROXY_KEY_HEADER, key);
            }
            *request.headers_mut() = headers;
            // tonic-web passes on the body's exact size hint, which is the size of the base64
            // text for `-text` calls; hyper would send it as content-length, longer than the
            // decoded frames, and the service would reset the stream. Unknown size instead.
            let mut request =
                request.map(|body| tonic::body::Body::new(StreamBody::new(BodyStream::new(body))));
            // The REST path's deadline: the service hears of it, and the edge stops waiting.
            if !request.headers().contains_key("grpc-timeout")
                && let Ok(value) = format!("{}m", edge.rpc_timeout.as_millis()).parse()
            {
                request.headers_mut().insert("grpc-timeout", value);
            }
            let call = upstream.channel.clone().oneshot(request);
            match tokio::time::timeout(edge.rpc_timeout, call).await {
                Err(_) => {
                    Ok(Status::deadline_exceeded("the service did not answer in time").into_http())
                }
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => {
                    tracing::warn!(?err, "upstream not reachable for gRPC-Web");
                    Ok(Status::unavailable("the service is unavailable").into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_is_the_service_name_without_its_last_part() {
        assert_eq!(
            package_of("/commerce.quota.v1.QuotaService/Consume"),
            Some("commerce.quota.v1")
        );
        assert_eq!(package_of("/NoPackage/Call"), None);
        assert_eq!(package_of("/v1/quotas"), None);
    }
}
