//! Charging a user's quota from a Rust backend: [`QuotaMeter`] wraps the quota-svc gRPC client
//! with the backend's API key (a service account's key with `quota:consume`, from
//! `auth-svc service-key issue --scopes quota:consume,quota:read`) and names the user as the
//! subject. Consume before the work with an idempotency key derived from the request (so
//! retries charge once); refund with the same key when the work fails, after which a retry of
//! the work needs a new key (the old one replays its first, now refunded, answer).

use std::time::SystemTime;

use proto::quota::{ConsumeRequest, RefundRequest, quota_service_client::QuotaServiceClient};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use uuid::Uuid;

/// The answer to a consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the units were consumed; `false` means over the limit (or no such metric).
    pub allowed: bool,
    /// The consumption's id (`None` when not allowed).
    pub usage_id: Option<Uuid>,
    /// The period's limit (0 when unlimited).
    pub limit: i64,
    /// Units left in the period after this call (0 when unlimited).
    pub remaining: i64,
    pub unlimited: bool,
    /// When the period resets (`None` for a metric the user has no quota for).
    pub resets_at: Option<SystemTime>,
    /// The same idempotency key was charged before; this repeats that answer.
    pub replayed: bool,
}

/// A quota-svc client that charges users on behalf of a backend.
#[derive(Debug, Clone)]
pub struct QuotaMeter {
    client: QuotaServiceClient<Channel>,
    api_key: MetadataValue<Ascii>,
}

impl QuotaMeter {
    /// A meter over `channel` (e.g. `Channel::from_static("http://quota:9003").connect_lazy()`)
    /// sending `api_key` as `x-api-key`.
    pub fn new(channel: Channel, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: QuotaServiceClient::new(channel),
            api_key: api_key
                .parse()
                .map_err(|_| anyhow::anyhow!("the API key is not valid header text"))?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("x-api-key", self.api_key.clone());
        request
    }

    /// Consumes `amount` of `metric` for `subject`, once per `idempotency_key`.
    pub async fn consume(
        &self,
        subject: Uuid,
        metric: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<Decision, Status> {
        let response = self
            .client
            .clone()
            .consume(self.request(ConsumeRequest {
                metric: metric.to_owned(),
                subject: subject.to_string(),
                amount: Some(amount),
                idempotency_key: idempotency_key.to_owned(),
                attributes: None,
            }))
            .await?
            .into_inner();
        Ok(Decision {
            allowed: response.allowed,
            usage_id: Uuid::parse_str(&response.usage_id).ok(),
            limit: response.limit,
            remaining: response.remaining,
            unlimited: response.unlimited,
            resets_at: response
                .resets_at
                .and_then(|at| SystemTime::try_from(at).ok()),
            replayed: response.replayed,
        })
    }

    /// Gives back what `idempotency_key` consumed. Returns `false` if it had been refunded
    /// already (nothing changed).
    pub async fn refund(&self, subject: Uuid, idempotency_key: &str) -> Result<bool, Status> {
        let response = self
            .client
            .clone()
            .refund(self.request(RefundRequest {
                usage_id: String::new(),
                idempotency_key: idempotency_key.to_owned(),
                subject: subject.to_string(),
            }))
            .await?
            .into_inner();
        Ok(!response.already_refunded)
    }
}
