//! The tonic implementation of `commerce.billing.v1.BillingService`: authorize, validate through
//! [`crate::domain::validate`], call the operation in [`crate::service`], map the result.

use std::sync::Arc;

use kit::{
    caller::{Authenticator, Caller, scope},
    convert::{timestamp, uuid},
    page::{self, Cursor},
};
use proto::{
    billing::{self as pb, billing_service_server::BillingService},
    google::api::HttpBody,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        Provider,
        plan::{Interval, Period, PlanChange, PlanField, PlanTerms, QuotaLimit},
        subscription::{PaymentStatus, SubscriptionStatus},
        validate,
    },
    error::Error,
    providers::RawNotification,
    service::{Billing, CheckoutRequest, CheckoutResult, RefundRequest},
    store::{payments::PaymentRow, plans::PlanRow, subscriptions::SubscriptionRow},
};

/// The billing gRPC service.
#[derive(Clone)]
pub struct BillingApi {
    pub(crate) billing: Arc<Billing>,
    pub(crate) auth: Arc<Authenticator>,
}

/// The signature headers WeChat Pay sends, which the edge passes on as metadata.
const NOTIFICATION_HEADERS: [&str; 4] = [
    "wechatpay-signature",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-serial",
];

impl BillingApi {
    async fn caller<T>(&self, request: &Request<T>, needs: &str) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(request).await?;
        caller.require_scope(needs)?;
        Ok(caller)
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(request).await?;
        caller.require_admin()?;
        Ok(caller)
    }
}

fn provider(value: i32) -> Result<Provider, Error> {
    match pb::PaymentProvider::try_from(value) {
        Ok(pb::PaymentProvider::Alipay) => Ok(Provider::Alipay),
        Ok(pb::PaymentProvider::WechatPay) => Ok(Provider::WechatPay),
        Ok(pb::PaymentProvider::Unspecified) => Err(Error::invalid("provider", "is required")),
        Err(_) => Err(Error::invalid("provider", "unknown payment provider")),
    }
}

fn provider_pb(provider: Option<Provider>) -> pb::PaymentProvider {
    match provider {
        Some(Provider::Alipay) => pb::PaymentProvider::Alipay,
        Some(Provider::WechatPay) => pb::PaymentProvider::WechatPay,
        None => pb::PaymentProvider::Unspecified,
    }
}

fn interval(value: i32) -> Result<Interval, Error> {
    match pb::BillingInterval::try_from(value) {
        Ok(pb::BillingInterval::Month) => Ok(Interval::Month),
        Ok(pb::BillingInterval::Year) => Ok(Interval::Year),
        _ => Err(Error::invalid("billing_interval", "must be MONTH or YEAR")),
    }
}

fn quota_limits(limits: Vec<pb::QuotaLimit>) -> Vec<QuotaLimit> {
    limits
        .into_iter()
        .map(|limit| QuotaLimit {
            metric: limit.metric,
            limit: (!limit.unlimited).then_some(limit.limit),
        })
        .collect()
}

/// A checkout request's common fields.
fn checkout_request(
    caller: &Caller,
    provider_value: i32,
    return_url: String,
    idempotency_key: String,
) -> Result<CheckoutRequest, Error> {
    let provider = provider(provider_value)?;
    validate::idempotency_key(&idempotency_key)?;
    let return_url = (!return_url.is_empty()).then_some(return_url);
    if let Some(url) = &return_url {
        validate::return_url(url)?;
    }
    Ok(CheckoutRequest {
        user: caller.user_id,
        provider,
        return_url,
        idempotency_key,
    })
}

fn plan_pb(row: PlanRow) -> pb::Plan {
    let period = row.period();
    let quota_limits = row
        .limits()
        .into_iter()
        .map(|limit| pb::QuotaLimit {
            metric: limit.metric,
            limit: limit.limit.unwrap_or(0),
            unlimited: limit.limit.is_none(),
        })
        .collect();
    pb::Plan {
        plan_code: row.plan_code,
        name: row.name,
        description: row.description,
        price_amount_minor: row.price_amount_minor,
        currency: row.currency,
        billing_interval: match period.interval {
            Interval::Month => pb::BillingInterval::Month,
            Interval::Year => pb::BillingInterval::Year,
        } as i32,
        interval_count: period.count,
        quota_limits,
        active: row.active,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

fn subscription_pb(row: SubscriptionRow) -> pb::Subscription {
    let status = match row.status() {
        SubscriptionStatus::PendingPayment => pb::SubscriptionStatus::PendingPayment,
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::PastDue => pb::SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled => pb::SubscriptionStatus::Canceled,
        SubscriptionStatus::Expired => pb::SubscriptionStatus::Expired,
    };
    pb::Subscription {
        subscription_id: row.subscription_id.to_string(),
        user_id: row.user_id.to_string(),
        plan_code: row.plan_code,
        status: status as i32,
        current_period_start: row.current_period_start.map(timestamp),
        current_period_end: row.current_period_end.map(timestamp),
        cancel_at_period_end: row.cancel_at_period_end,
        canceled_at: row.canceled_at.map(timestamp),
        created_at: Some(timestamp(row.created_at)),
    }
}

fn payment_status_pb(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Succeeded => pb::PaymentStatus::Succeeded,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
        PaymentStatus::Canceled => pb::PaymentStatus::Canceled,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
        PaymentStatus::PartiallyRefunded => pb::PaymentStatus::PartiallyRefunded,
    }
}

/// A ListPayments status filter; `None` for any status.
fn payment_status(value: i32) -> Result<Option<PaymentStatus>, Error> {
    Ok(match pb::PaymentStatus::try_from(value) {
        Ok(pb::PaymentStatus::Unspecified) => None,
        Ok(pb::PaymentStatus::Pending) => Some(PaymentStatus::Pending),
        Ok(pb::PaymentStatus::Succeeded) => Some(PaymentStatus::Succeeded),
        Ok(pb::PaymentStatus::Failed) => Some(PaymentStatus::Failed),
        Ok(pb::PaymentStatus::Canceled) => Some(PaymentStatus::Canceled),
        Ok(pb::PaymentStatus::Refunded) => Some(PaymentStatus::Refunded),
        Ok(pb::PaymentStatus::PartiallyRefunded) => Some(PaymentStatus::PartiallyRefunded),
        Err(_) => return Err(Error::invalid("status", "unknown payment status")),
    })
}

fn payment_pb(row: PaymentRow) -> pb::Payment {
    let status = row.status();
    // The checkout is shown only while it can still be paid.
    let checkout = match (
        status,
        row.checkout_kind.as_deref(),
        row.checkout_url.clone(),
    ) {
        (PaymentStatus::Pending, Some("redirect_url"), Some(url)) => {
            Some(pb::payment::Checkout::RedirectUrl(url))
        }
        (PaymentStatus::Pending, Some("qr_code_url"), Some(url)) => {
            Some(pb::payment::Checkout::QrCodeUrl(url))
        }
        _ => None,
    };
    pb::Payment {
        payment_id: row.payment_id.to_string(),
        user_id: row.user_id.to_string(),
        subscription_id: row.subscription_id.to_string(),
        plan_code: row.plan_code.clone(),
        provider: provider_pb(row.provider()) as i32,
        provider_trade_no: row.provider_trade_no.clone().unwrap_or_default(),
        amount_minor: row.amount_minor,
        currency: row.currency.clone(),
        refunded_amount_minor: row.refunded_amount_minor,
        status: payment_status_pb(status) as i32,
        created_at: Some(timestamp(row.created_at)),
        paid_at: row.paid_at.map(timestamp),
        checkout,
    }
}

fn checkout_pb(result: CheckoutResult) -> (Option<pb::Subscription>, Option<pb::Payment>) {
    (
        Some(subscription_pb(result.subscription)),
        Some(payment_pb(result.payment)),
    )
}

/// The filters a ListPayments page token is bound to.
fn payment_filters(user: uuid::Uuid, status: i32) -> String {
    format!("{user}/{status}")
}

/// A ListPlans page position: the last plan's price and code.
fn plan_key(plan: &pb::Plan) -> String {
    format!("{}:{}", plan.price_amount_minor, plan.plan_code)
}

fn parse_plan_key(key: &str) -> Result<(i64, String), Error> {
    key.split_once(':')
        .and_then(|(price, code)| Some((price.parse().ok()?, code.to_owned())))
        .ok_or_else(|| Error::invalid("page_token", "not a token from a previous page"))
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    #[tracing::instrument(skip_all)]
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        if request.get_ref().include_inactive {
            self.admin(&request).await?;
        }
        let request = request.into_inner();
        let limit = page::page_size(request.page_size).map_err(Error::from)?;
        let filters = format!("inactive={}", request.include_inactive);
        let after = page::decode_key_token(&request.page_token, &filters)
            .map_err(Error::from)?
            .map(|key| parse_plan_key(&key))
            .transpose()?;
        let rows = self
            .billing
            .list_plans(request.include_inactive, after, limit + 1)
            .await?;
        let mut plans: Vec<pb::Plan> = rows.into_iter().map(plan_pb).collect();
        let next_page_token = page::next_page(&mut plans, limit, |last| {
            page::encode_key_token(&plan_key(last), &filters)
        });
        Ok(Response::new(pb::ListPlansResponse {
            plans,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let code = request.into_inner().plan_code;
        validate::plan_code("plan_code", &code).map_err(Error::from)?;
        let plan = self.billing.get_plan(&code).await?;
        Ok(Response::new(pb::GetPlanResponse {
            plan: Some(plan_pb(plan)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::CreatePlanResponse>, Status> {
        self.admin(&request).await?;
        let plan = request
            .into_inner()
            .plan
            .ok_or_else(|| Error::invalid("plan", "is required"))?;
        let terms = PlanTerms {
            plan_code: plan.plan_code,
            name: plan.name,
            description: plan.description,
            price_amount_minor: plan.price_amount_minor,
            currency: plan.currency,
            period: Period {
                interval: interval(plan.billing_interval)?,
                count: plan.interval_count,
            },
            quota_limits: quota_limits(plan.quota_limits),
            active: plan.active,
        };
        terms.validate().map_err(Error::from)?;
        let created = self.billing.create_plan(&terms).await?;
        Ok(Response::new(pb::CreatePlanResponse {
            plan: Some(plan_pb(created)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_plan(
        &self,
        request: Request<pb::UpdatePlanRequest>,
    ) -> Result<Response<pb::UpdatePlanResponse>, Status> {
        self.admin(&request).await?;
        let request = request.into_inner();
        validate::plan_code("plan_code", &request.plan_code).map_err(Error::from)?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid("update_mask", "is required and must name fields").into());
        }
        let plan = request.plan.unwrap_or_default();
        let changes = paths
            .iter()
            .map(|path| {
                let field = PlanField::parse(path).ok_or_else(|| {
                    Error::invalid("update_mask", format!("unknown or read-only path {path:?}"))
                })?;
                Ok(match field {
                    PlanField::Name => PlanChange::Name(plan.name.clone()),
                    PlanField::Description => PlanChange::Description(plan.description.clone()),
                    PlanField::Price => PlanChange::Price(plan.price_amount_minor),
                    PlanField::Currency => PlanChange::Currency(plan.currency.clone()),
                    PlanField::Interval => PlanChange::Interval(interval(plan.billing_interval)?),
                    PlanField::IntervalCount => PlanChange::IntervalCount(plan.interval_count),
                    PlanField::QuotaLimits => {
                        PlanChange::QuotaLimits(quota_limits(plan.quota_limits.clone()))
                    }
                    PlanField::Active => PlanChange::Active(plan.active),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let updated = self
            .billing
            .update_plan(&request.plan_code, |terms| {
                for change in changes {
                    terms.apply(change);
                }
            })
            .await?;
        Ok(Response::new(pb::UpdatePlanResponse {
            plan: Some(plan_pb(updated)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_WRITE).await?;
        let request = request.into_inner();
        validate::plan_code("plan_code", &request.plan_code).map_err(Error::from)?;
        let checkout = checkout_request(
            &caller,
            request.provider,
            request.return_url,
            request.idempotency_key,
        )?;
        let result = self
            .billing
            .create_subscription(&request.plan_code, checkout)
            .await?;
        let (subscription, payment) = checkout_pb(result);
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription,
            payment,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_current_subscription(
        &self,
        request: Request<pb::GetCurrentSubscriptionRequest>,
    ) -> Result<Response<pb::GetCurrentSubscriptionResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_READ).await?;
        let current = self.billing.current_subscription(caller.user_id).await?;
        Ok(Response::new(pb::GetCurrentSubscriptionResponse {
            subscription: current.map(subscription_pb),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::CancelSubscriptionResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_WRITE).await?;
        let at_period_end = request.into_inner().at_period_end;
        let subscription = self
            .billing
            .cancel_subscription(caller.user_id, at_period_end)
            .await?;
        Ok(Response::new(pb::CancelSubscriptionResponse {
            subscription: Some(subscription_pb(subscription)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn change_plan(
        &self,
        request: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::ChangePlanResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_WRITE).await?;
        let request = request.into_inner();
        validate::plan_code("plan_code", &request.plan_code).map_err(Error::from)?;
        let checkout = checkout_request(
            &caller,
            request.provider,
            request.return_url,
            request.idempotency_key,
        )?;
        let result = self
            .billing
            .change_plan(&request.plan_code, checkout)
            .await?;
        let (subscription, payment) = checkout_pb(result);
        Ok(Response::new(pb::ChangePlanResponse {
            subscription,
            payment,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_payment(
        &self,
        request: Request<pb::CreatePaymentRequest>,
    ) -> Result<Response<pb::CreatePaymentResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_WRITE).await?;
        let request = request.into_inner();
        let subscription_id =
            uuid("subscription_id", &request.subscription_id).map_err(Error::from)?;
        let checkout = checkout_request(
            &caller,
            request.provider,
            request.return_url,
            request.idempotency_key,
        )?;
        let result = self
            .billing
            .create_payment(subscription_id, checkout)
            .await?;
        Ok(Response::new(pb::CreatePaymentResponse {
            payment: Some(payment_pb(result.payment)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_READ).await?;
        let id = uuid("payment_id", &request.get_ref().payment_id).map_err(Error::from)?;
        let payment = self
            .billing
            .get_payment(id, caller.user_id, caller.is_admin())
            .await?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(payment_pb(payment)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let caller = self.caller(&request, scope::BILLING_READ).await?;
        let request = request.into_inner();
        let user = if request.user_id.is_empty() {
            caller.user_id
        } else {
            uuid("user_id", &request.user_id).map_err(Error::from)?
        };
        if user != caller.user_id && !caller.is_admin() {
            return Err(Error::PermissionDenied(
                "listing another user's payments requires admin".to_owned(),
            )
            .into());
        }
        let status = payment_status(request.status)?;
        let limit = page::page_size(request.page_size).map_err(Error::from)?;
        let filters = payment_filters(user, request.status);
        let after = page::decode_token(&request.page_token, &filters)
            .map_err(Error::from)?
            .map(|cursor| (cursor.at, cursor.id));
        let mut rows = self
            .billing
            .list_payments(user, status, after, limit + 1)
            .await?;
        let next_page_token = page::next_token(&mut rows, limit, &filters, |row| Cursor {
            at: row.created_at,
            id: row.payment_id,
        });
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: rows.into_iter().map(payment_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(payment = %request.get_ref().payment_id))]
    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let caller = self.admin(&request).await?;
        let request = request.into_inner();
        let payment_id = uuid("payment_id", &request.payment_id).map_err(Error::from)?;
        let payment = self
            .billing
            .refund_payment(&RefundRequest {
                payment_id,
                amount_minor: request.amount_minor,
                reason: request.reason,
                idempotency_key: request.idempotency_key,
                requested_by: caller.user_id,
            })
            .await?;
        Ok(Response::new(pb::RefundPaymentResponse {
            payment: Some(payment_pb(payment)),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider = %request.get_ref().provider))]
    async fn handle_webhook(
        &self,
        request: Request<pb::HandleWebhookRequest>,
    ) -> Result<Response<HttpBody>, Status> {
        let headers = NOTIFICATION_HEADERS
            .iter()
            .filter_map(|name| {
                let value = request.metadata().get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect();
        let request = request.into_inner();
        let body = request
            .body
            .ok_or_else(|| Error::invalid("body", "is required"))?;
        let ack = self
            .billing
            .handle_notification(
                &request.provider,
                RawNotification {
                    content_type: body.content_type,
                    body: body.data,
                    headers,
                },
            )
            .await?;
        Ok(Response::new(HttpBody {
            content_type: ack.content_type.to_owned(),
            data: ack.body,
            extensions: Vec::new(),
        }))
    }
}
