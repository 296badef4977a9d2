//! `/readyz`: the edge is ready when every upstream service has an address whose gRPC health
//! check says SERVING. The answer is cached for a second, so a load balancer probing often does
//! not turn into a stream of health checks.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long one readiness answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);
/// How long one address may take to answer its health check.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// One address of an upstream service, with its own connection (the balanced channel hides
/// which replica answers).
struct Address {
    url: String,
    channel: Channel,
}

/// The upstream services' addresses, and the last answer.
pub struct Readiness {
    services: Vec<(&'static str, Vec<Address>)>,
    last: Mutex<Option<(Instant, bool, Value)>>,
}

impl Readiness {
    /// `services`: each service's name and addresses.
    pub fn new(services: Vec<(&'static str, Vec<String>)>) -> anyhow::Result<Self> {
        let services = services
            .into_iter()
            .map(|(name, urls)| {
                let addresses = urls
                    .into_iter()
                    .map(|url| {
                        let channel = Channel::from_shared(url.clone())?
                            .connect_timeout(CHECK_TIMEOUT)
                            .connect_lazy();
                        Ok(Address { url, channel })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((name, addresses))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            services,
            last: Mutex::new(None),
        })
    }

    /// 200 when ready, else 503; the body names every address and what its check said.
    pub async fn answer(self: Arc<Self>) -> Response {
        let mut last = self.last.lock().await;
        let fresh = last
            .as_ref()
            .filter(|(at, _, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, ready, body)| (*ready, body.clone()));
        let (ready, body) = match fresh {
            Some(answer) => answer,
            None => {
                let (ready, body) = self.check().await;
                *last = Some((Instant::now(), ready, body.clone()));
                (ready, body)
            }
        };
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(body)).into_response()
    }

    /// Every address of every service at once, so one silent replica costs one timeout in all.
    /// The public answer names services and states; the addresses go to the log.
    async fn check(&self) -> (bool, Value) {
        let services = self.services.iter().map(|(name, addresses)| async move {
            let checks = addresses.iter().map(|address| async move {
                (
                    address.url.as_str(),
                    serving_status(address.channel.clone()).await,
                )
            });
            (*name, futures::future::join_all(checks).await)
        });
        let mut ready = true;
        let mut report = serde_json::Map::new();
        for (name, states) in futures::future::join_all(services).await {
            let serving = states.iter().any(|(_, state)| state == "SERVING");
            ready &= serving;
            for (url, state) in states.iter().filter(|(_, state)| state != "SERVING") {
                tracing::warn!(service = name, url, state, "upstream address not serving");
            }
            report.insert(
                name.to_owned(),
                json!({
                    "ready": serving,
                    "addresses": states.into_iter().map(|(_, state)| state).collect::<Vec<_>>(),
                }),
            );
        }
        (ready, json!({ "ready": ready, "services": report }))
    }
}

/// The health check's status name, or why there is none.
async fn serving_status(channel: Channel) -> String {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(reply)) => ServingStatus::try_from(reply.into_inner().status).map_or_else(
            |_| "UNKNOWN".to_owned(),
            |status| status.as_str_name().to_owned(),
        ),
        Ok(Err(status)) => {
            tracing::debug!(error = status.message(), "health check failed");
            "UNREACHABLE".to_owned()
        }
        Err(_) => "NO_ANSWER".to_owned(),
    }
}
