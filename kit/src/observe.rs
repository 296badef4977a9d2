//! Per-RPC observability as a tower layer: a tracing span per call carrying the request id (taken
//! from `x-request-id` metadata or generated, and echoed back), and Prometheus metrics
//! `rpc_requests_total` / `rpc_duration_seconds` labelled by method and gRPC status code.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, Span};

/// The metadata key that carries a request id through the mesh.
pub const REQUEST_ID: &str = "x-request-id";

/// Adds [`Observe`] to every RPC.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// The request id of the RPC being served, available to handlers through request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= 128)
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        request
            .extensions_mut()
            .insert(RequestId(request_id.clone()));
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!("rpc", %method, request_id = %request_id);
        // Swap in the clone that was driven ready, as tower requires.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            async move {
                let response = inner.call(request).await?;
                let (mut parts, body) = response.into_parts();
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    parts.headers.insert(REQUEST_ID, value);
                }
                let mut recorder = Recorder {
                    method,
                    started,
                    span: Span::current(),
                    done: false,
                };
                // A trailers-only response (every error) carries its status in the headers.
                if let Some(code) = grpc_status(&parts.headers) {
                    recorder.finish(code);
                }
                Ok(Response::from_parts(
                    parts,
                    ObservedBody {
                        inner: body,
                        recorder,
                    },
                ))
            }
            .instrument(span),
        )
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

struct Recorder {
    method: String,
    started: Instant,
    span: Span,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let code_label = format!("{code:?}");
        metrics::counter!("rpc_requests_total", "method" => self.method.clone(), "code" => code_label.clone())
            .increment(1);
        metrics::histogram!("rpc_duration_seconds", "method" => self.method.clone(), "code" => code_label)
            .record(elapsed.as_secs_f64());
        let elapsed_ms = elapsed.as_secs_f64() * 1e3;
        // Successes are counted by the metrics; logging each one would cost the hot path.
        self.span.in_scope(|| match code {
            tonic::Code::Ok => tracing::debug!(?code, elapsed_ms, "rpc finished"),
            tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DataLoss
            | tonic::Code::Unavailable => {
                tracing::warn!(?code, elapsed_ms, "rpc failed")
            }
            _ => tracing::info!(?code, elapsed_ms, "rpc refused"),
        });
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A body dropped before its trailers means the client went away mid-call.
        if !self.done {
            self.finish(tonic::Code::Cancelled);
        }
    }
}

pin_project! {
    /// The response body, watched for the trailers that carry the final gRPC status.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        recorder: Recorder,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.recorder.finish(code);
                }
            }
            Some(Err(_)) => this.recorder.finish(tonic::Code::Internal),
            // gRPC always ends with trailers; an end without them is a broken response.
            None => this.recorder.finish(tonic::Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
