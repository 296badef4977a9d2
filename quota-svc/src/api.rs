//! The tonic implementation of `commerce.quota.v1.QuotaService`: decode, authorize, call the
//! operation in [`crate::service`], map the result.

use std::sync::Arc;

use kit::{
    caller::{Authenticator, Caller, Credential, role, scope},
    convert::{optional_time, required_time, timestamp, uuid},
    json,
    page::{self, Cursor},
};
use proto::quota::{self as pb, quota_service_server::QuotaService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        Counter, Source,
        batch::{Decision, Request as ConsumeInput},
        consumer::{Consumer, Refunder, SignedInWith},
        usage::{Bucket, EventKind},
        validate,
    },
    error::Error,
    service::Quota,
    store::{consume::Pending, entitlements::PlanLimits, usage::EventFilter},
};

/// The quota gRPC service.
#[derive(Clone)]
pub struct QuotaApi {
    pub(crate) quota: Arc<Quota>,
    pub(crate) auth: Arc<Authenticator>,
}

impl QuotaApi {
    async fn caller<T>(&self, request: &Request<T>, needs: &str) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(request).await?;
        caller.require_scope(needs)?;
        Ok(caller)
    }
}

/// The subject a request acts on: the caller unless it names another, which needs admin, the
/// `service` scope, or a service account's key with `quota:consume`: a backend charges its
/// users with such a key, which (without `service`) cannot call the internal RPCs.
fn subject(caller: &Caller, requested: &str) -> Result<Uuid, Error> {
    if requested.is_empty() {
        return Ok(caller.user_id);
    }
    let subject = uuid("subject", requested)?;
    let backend = caller.roles.iter().any(|held| held == role::SERVICE)
        && caller.has_scope(scope::QUOTA_CONSUME);
    if subject == caller.user_id || caller.is_admin() || caller.has_scope(scope::SERVICE) || backend
    {
        Ok(subject)
    } else {
        Err(Error::PermissionDenied(
            "naming another subject requires admin, the `service` scope, or an API key with \
             `quota:consume` of an owner with the `service` role"
                .to_owned(),
        ))
    }
}

/// The caller as the maker of a consumption.
fn consumer(caller: &Caller) -> Consumer {
    Consumer {
        principal: caller.user_id,
        with: match caller.credential {
            Credential::Session { .. } => SignedInWith::Session,
            Credential::ApiKey { .. } => SignedInWith::ApiKey,
        },
    }
}

/// The caller as a refunder: services and admins may refund any consumption.
fn refunder(caller: &Caller) -> Refunder {
    Refunder {
        principal: caller.user_id,
        privileged: caller.has_scope(scope::SERVICE) || caller.is_admin(),
    }
}

fn quota_state(metric: String, counter: &Counter) -> pb::QuotaState {
    pb::QuotaState {
        metric,
        limit: counter.limit.unwrap_or(0),
        used: counter.used,
        remaining: counter.remaining(),
        unlimited: counter.limit.is_none(),
        period_start: Some(timestamp(counter.period_start)),
        period_end: Some(timestamp(counter.period_end)),
        source: match counter.source {
            Source::Plan => pb::QuotaSource::Plan,
            Source::Default => pb::QuotaSource::Default,
        } as i32,
    }
}

fn consume_response(decision: Decision) -> Result<pb::ConsumeResponse, Error> {
    let answered = |answer: crate::domain::batch::Recorded, replayed| pb::ConsumeResponse {
        allowed: true,
        usage_id: answer.usage_id.to_string(),
        limit: answer.limit.unwrap_or(0),
        used: answer.used,
        remaining: answer.limit.map_or(0, |limit| (limit - answer.used).max(0)),
        unlimited: answer.limit.is_none(),
        resets_at: Some(timestamp(answer.resets_at)),
        replayed,
    };
    Ok(match decision {
        Decision::Allowed(answer) => answered(answer, false),
        Decision::Replayed(answer) => answered(answer, true),
        Decision::Denied { counter } => pb::ConsumeResponse {
            allowed: false,
            limit: counter.as_ref().and_then(|c| c.limit).unwrap_or(0),
            used: counter.as_ref().map_or(0, |c| c.used),
            remaining: counter.as_ref().map_or(0, Counter::remaining),
            // Denied on an unlimited metric: the sum would pass i64::MAX.
            unlimited: counter.as_ref().is_some_and(|c| c.limit.is_none()),
            resets_at: counter.as_ref().map(|c| timestamp(c.period_end)),
            ..Default::default()
        },
        Decision::KeyReused => return Err(Error::KeyReused),
        Decision::KeyTaken => return Err(Error::KeyTaken),
    })
}

fn limits(limits: Vec<pb::MetricLimit>) -> Result<Vec<(String, Option<i64>)>, Error> {
    let mut seen = std::collections::BTreeSet::new();
    limits
        .into_iter()
        .map(|limit| {
            validate::metric("limits.metric", &limit.metric)?;
            if !seen.insert(limit.metric.clone()) {
                return Err(Error::invalid(
                    "limits.metric",
                    format!("{:?} appears twice", limit.metric),
                ));
            }
            if limit.unlimited {
                Ok((limit.metric, None))
            } else {
                validate::limit(limit.limit)?;
                Ok((limit.metric, Some(limit.limit)))
            }
        })
        .collect()
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    #[tracing::instrument(skip_all)]
    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_READ).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        let size = page::page_size(request.page_size)?;
        let filters = subject.to_string();
        let after = page::decode_key_token(&request.page_token, &filters)?;
        let quotas = self.quota.list(subject).await?;
        let mut states: Vec<pb::QuotaState> = quotas
            .iter()
            .filter(|(metric, _)| after.as_ref().is_none_or(|after| *metric > after))
            .take(usize::try_from(size + 1).unwrap_or(usize::MAX))
            .map(|(metric, counter)| quota_state(metric.clone(), counter))
            .collect();
        let next_page_token = page::next_key_token(&mut states, size, &filters, |q| &q.metric);
        Ok(Response::new(pb::ListQuotasResponse {
            subject: subject.to_string(),
            quotas: states,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_quota(
        &self,
        request: Request<pb::CheckQuotaRequest>,
    ) -> Result<Response<pb::CheckQuotaResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_READ).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        validate::metric("metric", &request.metric)?;
        let counter = self.quota.check(subject, &request.metric).await?;
        Ok(Response::new(pb::CheckQuotaResponse {
            subject: subject.to_string(),
            quota: Some(quota_state(request.metric, &counter)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_CONSUME).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        validate::metric("metric", &request.metric)?;
        let amount = validate::amount(request.amount)?;
        validate::idempotency_key(&request.idempotency_key)?;
        let attributes = request
            .attributes
            .as_ref()
            .map(|attributes| validate::attributes(&json::from_struct(attributes)))
            .transpose()?;
        let decision = self
            .quota
            .consume(Pending {
                request: ConsumeInput {
                    subject,
                    metric: request.metric,
                    amount,
                    idempotency_key: request.idempotency_key,
                    consumer: consumer(&caller),
                },
                attributes,
            })
            .await?;
        Ok(Response::new(consume_response(decision)?))
    }

    #[tracing::instrument(skip_all)]
    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_CONSUME).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        let (usage_id, key) = match (
            request.usage_id.is_empty(),
            request.idempotency_key.is_empty(),
        ) {
            (false, true) => (Some(uuid("usage_id", &request.usage_id)?), None),
            (true, false) => {
                validate::idempotency_key(&request.idempotency_key)?;
                (None, Some(request.idempotency_key))
            }
            _ => {
                return Err(Error::invalid(
                    "usage_id",
                    "set exactly one of usage_id and idempotency_key",
                )
                .into());
            }
        };
        let refunded = self
            .quota
            .refund(subject, refunder(&caller), usage_id, key)
            .await?;
        Ok(Response::new(pb::RefundResponse {
            usage_id: refunded.usage_id.to_string(),
            refunded_amount: refunded.amount,
            already_refunded: refunded.already_refunded,
            quota: refunded
                .counter
                .as_ref()
                .map(|counter| quota_state(refunded.metric.clone(), counter)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_READ).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        validate::metric("metric", &request.metric)?;
        let from = required_time("from", request.from.as_ref())?;
        let to = required_time("to", request.to.as_ref())?;
        let (bucket, bucket_pb) = match pb::UsageBucket::try_from(request.bucket) {
            Ok(pb::UsageBucket::Hour) => (Bucket::Hour, pb::UsageBucket::Hour),
            Ok(pb::UsageBucket::Month) => (Bucket::Month, pb::UsageBucket::Month),
            Ok(pb::UsageBucket::Day | pb::UsageBucket::Unspecified) => {
                (Bucket::Day, pb::UsageBucket::Day)
            }
            Err(_) => return Err(Error::invalid("bucket", "unknown bucket size").into()),
        };
        let sums = self
            .quota
            .usage(subject, &request.metric, bucket, from, to)
            .await?;
        Ok(Response::new(pb::GetUsageResponse {
            subject: subject.to_string(),
            metric: request.metric,
            bucket: bucket_pb as i32,
            points: sums
                .into_iter()
                .map(|sums| pb::UsagePoint {
                    bucket_start: Some(timestamp(sums.bucket_start)),
                    consumed: sums.consumed,
                    refunded: sums.refunded,
                    net: sums.consumed - sums.refunded,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_usage_events(
        &self,
        request: Request<pb::ListUsageEventsRequest>,
    ) -> Result<Response<pb::ListUsageEventsResponse>, Status> {
        let caller = self.caller(&request, scope::QUOTA_READ).await?;
        let request = request.into_inner();
        let subject = subject(&caller, &request.subject)?;
        if !request.metric.is_empty() {
            validate::metric("metric", &request.metric)?;
        }
        let size = page::page_size(request.page_size)?;
        let mut filter = EventFilter {
            subject,
            metric: (!request.metric.is_empty()).then_some(request.metric),
            from: optional_time("from", request.from.as_ref())?,
            to: optional_time("to", request.to.as_ref())?,
            after: None,
        };
        let filters = filter.page_filters();
        filter.after = page::decode_token(&request.page_token, &filters)?;
        let mut rows = self.quota.events(&filter, size + 1).await?;
        let next_page_token = page::next_token(&mut rows, size, &filters, |row| Cursor {
            at: row.occurred_at,
            id: row.usage_id,
        });
        let events = rows
            .into_iter()
            .map(|row| pb::UsageEvent {
                usage_id: row.usage_id.to_string(),
                subject: row.subject.to_string(),
                metric: row.metric,
                kind: match row.kind {
                    EventKind::Consume => pb::UsageEventKind::Consume,
                    EventKind::Refund => pb::UsageEventKind::Refund,
                } as i32,
                amount: row.amount,
                idempotency_key: row.idempotency_key,
                attributes: row
                    .attributes
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .and_then(json::to_struct),
                occurred_at: Some(timestamp(row.occurred_at)),
            })
            .collect();
        Ok(Response::new(pb::ListUsageEventsResponse {
            events,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reset_quota(
        &self,
        request: Request<pb::ResetQuotaRequest>,
    ) -> Result<Response<pb::ResetQuotaResponse>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        caller.require_admin()?;
        let request = request.into_inner();
        if request.subject.is_empty() {
            return Err(Error::invalid("subject", "is required").into());
        }
        let subject = uuid("subject", &request.subject)?;
        validate::metric("metric", &request.metric)?;
        let counter = self.quota.reset(subject, request.metric.clone()).await?;
        Ok(Response::new(pb::ResetQuotaResponse {
            quota: Some(quota_state(request.metric, &counter)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn apply_entitlements(
        &self,
        request: Request<pb::ApplyEntitlementsRequest>,
    ) -> Result<Response<pb::ApplyEntitlementsResponse>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        caller.require_service()?;
        let request = request.into_inner();
        let subject = uuid("subject", &request.subject)?;
        validate::version(request.version)?;
        let limits = limits(request.limits)?;
        let period = if limits.is_empty() {
            None
        } else {
            let start = required_time("period_start", request.period_start.as_ref())?;
            let end = required_time("period_end", request.period_end.as_ref())?;
            if start >= end {
                return Err(Error::invalid("period_start", "must be before period_end").into());
            }
            Some((start, end))
        };
        let (applied, version) = self
            .quota
            .apply_plan(PlanLimits {
                subject,
                plan_code: request.plan_code,
                limits,
                period,
                version: request.version,
            })
            .await?;
        Ok(Response::new(pb::ApplyEntitlementsResponse {
            applied,
            version,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn apply_default_entitlements(
        &self,
        request: Request<pb::ApplyDefaultEntitlementsRequest>,
    ) -> Result<Response<pb::ApplyDefaultEntitlementsResponse>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        caller.require_service()?;
        let request = request.into_inner();
        validate::version(request.version)?;
        let limits = limits(request.limits)?;
        let (applied, version) = self.quota.apply_defaults(limits, request.version).await?;
        Ok(Response::new(pb::ApplyDefaultEntitlementsResponse {
            applied,
            version,
        }))
    }
}
