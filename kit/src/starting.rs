//! Answers a starting server's own RPCs UNAVAILABLE until its migrations have run. Before that its
//! tables may not exist (another replica or the init job may hold the migration lock), and a
//! query would fail INTERNAL; UNAVAILABLE tells clients and balancers to retry. Health and
//! reflection pass, so probes read NOT_SERVING and `grpcurl list` works meanwhile.

use std::{
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

/// Set once the server's migrations have run; shared by the layer and the task running them.
#[derive(Debug, Clone, Default)]
pub struct Migrated(Arc<AtomicBool>);

impl Migrated {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Adds [`UntilMigrated`] to every RPC.
#[derive(Debug, Clone)]
pub struct UntilMigratedLayer(pub Migrated);

impl<S> Layer<S> for UntilMigratedLayer {
    type Service = UntilMigrated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UntilMigrated {
            inner,
            migrated: self.0.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct UntilMigrated<S> {
    inner: S,
    migrated: Migrated,
}

/// gRPC services that need no database and answer while the server starts.
const ALWAYS_SERVED: [&str; 2] = ["/grpc.health.", "/grpc.reflection."];

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for UntilMigrated<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if self.migrated.get() || ALWAYS_SERVED.iter().any(|prefix| path.starts_with(prefix)) {
            return Either::Left(self.inner.call(request));
        }
        let status = tonic::Status::unavailable(
            "the service is starting: its database schema is not migrated yet; retry shortly",
        );
        Either::Right(ready(Ok(status.into_http())))
    }
}
