//! The billing operations the handlers, the CLI and the background workers call. Each owns its
//! transactions; none knows the wire format. Provider calls happen outside transactions, so a
//! slow provider never holds a row lock, except where closing an order must decide its row.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::AsyncConnection;
use kit::{
    clock::Clock,
    db::{DbError, PgPool, PooledConn},
    error::is_unique_violation,
};
use tokio::sync::Notify;
use uuid::Uuid;

mod reconcile;
mod refunds;

pub use refunds::RefundRequest;

use crate::{
    domain::{
        Provider, fingerprint,
        plan::{PlanTerms, PlansFile},
        subscription::{
            self, Cancellation, PaymentStatus, Purpose, SubscriptionStatus, payment_succeeded,
        },
    },
    error::Error,
    providers::{
        Acknowledgement, Checkout, CheckoutOrder, NotificationEvent, PaymentProvider,
        RawNotification, Refusal, Trade, TradeStatus,
    },
    store::{
        Conn,
        events::{self, EventRow, Verdict},
        idempotency::{self, KeyRow},
        outbox::{self, DEFAULTS, Entitlement},
        payments::{self, PaymentRow},
        plans::{self, PlanRow},
        subscriptions::{self, SubscriptionRow},
    },
};

/// billing's settings that shape its rules.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a checkout can be paid.
    pub checkout_expiry: TimeDelta,
    /// How long a PAST_DUE subscription waits for a renewal before it EXPIRES.
    pub grace_period: TimeDelta,
    /// The public base URL the providers post notifications to (the edge): the notify URL is
    /// `{base}/v1/webhooks/{provider}`.
    pub public_url: String,
    /// Where Alipay sends the browser after paying when the request names no `return_url`.
    pub default_return_url: String,
}

/// A created (or replayed) checkout: the subscription it is for and the payment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckoutResult {
    pub subscription: SubscriptionRow,
    pub payment: PaymentRow,
}

/// What a checkout request asks for, with its idempotency key.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub user: Uuid,
    pub provider: Provider,
    pub return_url: Option<String>,
    pub idempotency_key: String,
}

/// What a checkout request opens; each kind has its own idempotency keys.
#[derive(Debug, Clone, Copy)]
enum Opening<'a> {
    /// CreateSubscription.
    Subscription { plan_code: &'a str },
    /// CreatePayment.
    Payment { subscription_id: Uuid },
    /// ChangePlan.
    PlanChange { plan_code: &'a str },
}

impl Opening<'_> {
    /// The RPC, which scopes idempotency keys.
    fn operation(&self) -> &'static str {
        match self {
            Opening::Subscription { .. } => "create_subscription",
            Opening::Payment { .. } => "create_payment",
            Opening::PlanChange { .. } => "change_plan",
        }
    }

    /// The request's parameters: the same key with others is refused.
    fn fingerprint(&self, request: &CheckoutRequest) -> Vec<u8> {
        let target = match self {
            Opening::Subscription { plan_code } | Opening::PlanChange { plan_code } => {
                (*plan_code).to_owned()
            }
            Opening::Payment { subscription_id } => subscription_id.to_string(),
        };
        fingerprint::of(&[
            &target,
            request.provider.as_str(),
            request.return_url.as_deref().unwrap_or(""),
        ])
    }
}

/// What a checkout request's transaction decided: a payment to open at the provider, or the
/// remembered answer.
enum Opened {
    /// The payment, and the PENDING payment it superseded.
    New(Box<(PaymentRow, Option<PaymentRow>)>),
    Replayed(Box<CheckoutResult>),
}

/// What `plans apply` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlansApplied {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deactivated: Vec<String>,
    /// The version of the default limits queued for quota-svc, when they changed.
    pub defaults_version: Option<i64>,
}

/// The billing operations.
pub struct Billing {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    providers: HashMap<Provider, Arc<dyn PaymentProvider>>,
    settings: Settings,
    /// Poked after a commit that queued entitlements, so the dispatcher sends them at once.
    outbox_written: Arc<Notify>,
}

/// How many times a transaction that lost a race on a unique index is tried again.
const RACE_RETRIES: usize = 3;

impl Billing {
    pub fn new(
        pool: PgPool,
        clock: Arc<dyn Clock>,
        providers: Vec<Arc<dyn PaymentProvider>>,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            clock,
            providers: providers
                .into_iter()
                .map(|provider| (provider.provider(), provider))
                .collect(),
            settings,
            outbox_written: Arc::new(Notify::new()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Notified whenever entitlements were queued.
    pub fn outbox_written(&self) -> Arc<Notify> {
        self.outbox_written.clone()
    }

    async fn conn(&self) -> Result<PooledConn, Error> {
        Ok(self.pool.get().await.map_err(DbError::from)?)
    }

    fn provider(&self, provider: Provider) -> Result<&Arc<dyn PaymentProvider>, Error> {
        self.providers.get(&provider).ok_or_else(|| {
            Error::FailedPrecondition(format!("payments with {provider} are not configured"))
        })
    }

    // ---------------------------------------------------------------------------------------
    // Plans
    // ---------------------------------------------------------------------------------------

    pub async fn list_plans(
        &self,
        include_inactive: bool,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<PlanRow>, Error> {
        let mut conn = self.conn().await?;
        let after = after.as_ref().map(|(price, code)| (*price, code.as_str()));
        Ok(plans::list(&mut conn, include_inactive, after, limit).await?)
    }

    pub async fn get_plan(&self, code: &str) -> Result<PlanRow, Error> {
        let mut conn = self.conn().await?;
        plans::get(&mut conn, code)
            .await?
            .ok_or_else(|| no_plan(code))
    }

    pub async fn create_plan(&self, terms: &PlanTerms) -> Result<PlanRow, Error> {
        let mut conn = self.conn().await?;
        match plans::insert(&mut conn, &PlanRow::new(terms, self.now())).await {
            Err(err) if is_unique_violation(&err) => Err(Error::AlreadyExists(format!(
                "plan_code: {:?} is taken",
                terms.plan_code
            ))),
            other => Ok(other?),
        }
    }

    /// Replaces the plan's terms with what `change` makes of them, validated as a whole.
    pub async fn update_plan(
        &self,
        code: &str,
        change: impl FnOnce(&mut PlanTerms) + Send,
    ) -> Result<PlanRow, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let row = plans::get_for_update(conn, code)
                .await?
                .ok_or_else(|| no_plan(code))?;
            let mut terms = row.terms();
            change(&mut terms);
            terms.plan_code = row.plan_code.clone();
            terms.validate()?;
            let mut updated = PlanRow::new(&terms, now);
            updated.created_at = row.created_at;
            Ok(plans::update(conn, &updated).await?)
        })
        .await
    }

    /// Makes the plans match the file: creates, updates, and withdraws from sale plans it no
    /// longer lists; queues the free tier's limits for quota-svc when they changed. One
    /// transaction, so it is idempotent and all-or-nothing.
    pub async fn apply_plans_file(&self, file: &PlansFile) -> Result<PlansApplied, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let applied = conn
            .transaction(async |conn| {
                let mut applied = PlansApplied::default();
                for terms in &file.plans {
                    match plans::get_for_update(conn, &terms.plan_code).await? {
                        None => {
                            plans::insert(conn, &PlanRow::new(terms, now)).await?;
                            applied.created.push(terms.plan_code.clone());
                        }
                        Some(row) if row.terms() != *terms => {
                            let mut updated = PlanRow::new(terms, now);
                            updated.created_at = row.created_at;
                            plans::update(conn, &updated).await?;
                            applied.updated.push(terms.plan_code.clone());
                        }
                        Some(_) => {}
                    }
                }
                let listed: Vec<String> = file
                    .plans
                    .iter()
                    .map(|plan| plan.plan_code.clone())
                    .collect();
                applied.deactivated = plans::deactivate_all_but(conn, &listed, now).await?;
                let free = plans::limits_json(&file.free);
                if outbox::latest_defaults(conn).await?.as_ref() != Some(&free) {
                    let defaults = Entitlement {
                        subject: DEFAULTS,
                        plan_code: String::new(),
                        quota_limits: free,
                        period: None,
                    };
                    applied.defaults_version = Some(outbox::enqueue(conn, &defaults, now).await?);
                }
                Ok::<_, Error>(applied)
            })
            .await?;
        self.outbox_written.notify_one();
        Ok(applied)
    }

    // ---------------------------------------------------------------------------------------
    // Subscriptions and payments
    // ---------------------------------------------------------------------------------------

    /// Starts a subscription to `plan_code` in PENDING_PAYMENT with its first checkout; a
    /// PENDING_PAYMENT one of the caller's is canceled and replaced.
    pub async fn create_subscription(
        &self,
        plan_code: &str,
        request: CheckoutRequest,
    ) -> Result<CheckoutResult, Error> {
        self.checkout(Opening::Subscription { plan_code }, &request)
            .await
    }

    /// Pays for one period of the caller's subscription at its plan's current price.
    pub async fn create_payment(
        &self,
        subscription_id: Uuid,
        request: CheckoutRequest,
    ) -> Result<CheckoutResult, Error> {
        self.checkout(Opening::Payment { subscription_id }, &request)
            .await
    }

    /// Opens a payment for moving the caller's ACTIVE or PAST_DUE subscription to `plan_code`.
    pub async fn change_plan(
        &self,
        plan_code: &str,
        request: CheckoutRequest,
    ) -> Result<CheckoutResult, Error> {
        self.checkout(Opening::PlanChange { plan_code }, &request)
            .await
    }

    /// Writes the rows of a new checkout: the payment, and the PENDING payment it supersedes.
    async fn open(
        &self,
        conn: &mut Conn,
        opening: &Opening<'_>,
        request: &CheckoutRequest,
        now: DateTime<Utc>,
    ) -> Result<(PaymentRow, Option<PaymentRow>), Error> {
        let (subscription, plan, purpose, superseded) = match *opening {
            Opening::Subscription { plan_code } => {
                let plan = purchasable_plan(conn, plan_code).await?;
                let mut superseded = None;
                if let Some(current) = subscriptions::current_for_update(conn, request.user).await?
                {
                    if current.status() != SubscriptionStatus::PendingPayment {
                        return Err(Error::FailedPrecondition(format!(
                            "you already have a subscription that is {}; use ChangePlan",
                            current.status
                        )));
                    }
                    superseded = cancel_pending_payment(conn, current.subscription_id, now).await?;
                    subscriptions::cancel(
                        conn,
                        current.subscription_id,
                        SubscriptionStatus::PendingPayment,
                        now,
                        now,
                    )
                    .await?;
                }
                let subscription = SubscriptionRow::pending(request.user, &plan.plan_code, now);
                subscriptions::insert(conn, &subscription).await?;
                (subscription, plan, Purpose::FirstPeriod, superseded)
            }
            Opening::Payment { subscription_id } => {
                let subscription = subscriptions::get_for_update(conn, subscription_id)
                    .await?
                    .filter(|subscription| subscription.user_id == request.user)
                    .ok_or_else(|| Error::NotFound("no such subscription".to_owned()))?;
                let purpose = subscription::purpose_of_new_payment(subscription.status())
                    .map_err(|refused| Error::FailedPrecondition(refused.to_string()))?;
                let plan = plans::get(conn, &subscription.plan_code)
                    .await?
                    .ok_or_else(|| no_plan(&subscription.plan_code))?;
                let superseded = cancel_pending_payment(conn, subscription_id, now).await?;
                (subscription, plan, purpose, superseded)
            }
            Opening::PlanChange { plan_code } => {
                let subscription = subscriptions::current_for_update(conn, request.user)
                    .await?
                    .ok_or_else(no_subscription)?;
                if subscription.status() == SubscriptionStatus::PendingPayment {
                    return Err(Error::FailedPrecondition(
                        "the subscription is not paid yet: pay it (CreatePayment) or start \
                         again (CreateSubscription)"
                            .to_owned(),
                    ));
                }
                let plan = purchasable_plan(conn, plan_code).await?;
                if plan.plan_code == subscription.plan_code {
                    return Err(Error::FailedPrecondition(format!(
                        "the subscription is already on plan {:?}",
                        plan.plan_code
                    )));
                }
                let superseded =
                    cancel_pending_payment(conn, subscription.subscription_id, now).await?;
                (subscription, plan, Purpose::ChangePlan, superseded)
            }
        };
        let payment = self.new_payment(&subscription, &plan, purpose, request.provider, now);
        payments::insert(conn, &payment).await?;
        Ok((payment, superseded))
    }

    fn new_payment(
        &self,
        subscription: &SubscriptionRow,
        plan: &PlanRow,
        purpose: Purpose,
        provider: Provider,
        now: DateTime<Utc>,
    ) -> PaymentRow {
        PaymentRow {
            checked_at: None,
            payment_id: Uuid::now_v7(),
            user_id: subscription.user_id,
            subscription_id: subscription.subscription_id,
            plan_code: plan.plan_code.clone(),
            purpose: purpose.as_str().to_owned(),
            provider: provider.as_str().to_owned(),
            provider_trade_no: None,
            amount_minor: plan.price_amount_minor,
            currency: plan.currency.clone(),
            refunded_amount_minor: 0,
            billing_interval: plan.billing_interval.clone(),
            interval_count: plan.interval_count,
            status: PaymentStatus::Pending.as_str().to_owned(),
            checkout_kind: None,
            checkout_url: None,
            expires_at: now + self.settings.checkout_expiry,
            paid_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The idempotent checkout every payment-creating RPC shares:
    /// 1. one transaction remembers the key and runs `open` (which writes the subscription and
    ///    payment rows), or finds the key: same parameters → the remembered answer, or the
    ///    payment to resume if its checkout was never created; other parameters → KeyReused;
    /// 2. outside it, the provider creates the checkout (a failure leaves the key to resume);
    /// 3. a second transaction stores the checkout and the answer to replay.
    async fn checkout(
        &self,
        opening: Opening<'_>,
        request: &CheckoutRequest,
    ) -> Result<CheckoutResult, Error> {
        let provider = self.provider(request.provider)?.clone();
        let operation = opening.operation();
        let fingerprint = opening.fingerprint(request);
        let mut conn = self.conn().await?;
        let mut attempt = 0;
        let opened = loop {
            let now = self.now();
            let result = conn
                .transaction(async |conn| {
                    let remembered = idempotency::get_for_update(
                        conn,
                        request.user,
                        operation,
                        &request.idempotency_key,
                    )
                    .await?;
                    if let Some(key) = remembered {
                        return resume(conn, &key, &fingerprint).await;
                    }
                    let (payment, superseded) = self.open(conn, &opening, request, now).await?;
                    idempotency::insert(
                        conn,
                        &KeyRow {
                            user_id: request.user,
                            operation: operation.to_owned(),
                            idempotency_key: request.idempotency_key.clone(),
                            request_fingerprint: fingerprint.clone(),
                            payment_id: payment.payment_id,
                            response: None,
                            created_at: now,
                        },
                    )
                    .await?;
                    Ok(Opened::New(Box::new((payment, superseded))))
                })
                .await;
            match result {
                // A concurrent request with the same key, or for the same user, committed
                // first: decide again from what it wrote.
                Err(Error::Db(DbError::Query(err)))
                    if is_unique_violation(&err) && attempt < RACE_RETRIES =>
                {
                    attempt += 1;
                }
                other => break other?,
            }
        };
        let (payment, superseded) = match opened {
            Opened::Replayed(result) => return Ok(*result),
            Opened::New(opened) => *opened,
        };
        // No connection is held across the provider calls: a pool's worth of checkouts
        // waiting on providers would otherwise starve the rest.
        drop(conn);
        self.close_at_providers(superseded.as_slice()).await;
        let result = if payment.checkout_url.is_none() && payment.status() == PaymentStatus::Pending
        {
            let checkout = provider
                .create_checkout(&self.order(&payment, request)?)
                .await?;
            self.store_checkout(&payment, &checkout).await?
        } else {
            let mut conn = self.conn().await?;
            let subscription = subscription_of(&mut conn, &payment).await?;
            CheckoutResult {
                subscription,
                payment,
            }
        };
        let answer = serde_json::to_vec(&result).map_err(|err| {
            Error::FailedPrecondition(format!("the answer could not be stored: {err}"))
        })?;
        let mut conn = self.conn().await?;
        idempotency::set_response(
            &mut conn,
            request.user,
            operation,
            &request.idempotency_key,
            &answer,
        )
        .await?;
        Ok(result)
    }

    fn order(
        &self,
        payment: &PaymentRow,
        request: &CheckoutRequest,
    ) -> Result<CheckoutOrder, Error> {
        Ok(CheckoutOrder {
            out_trade_no: payment.out_trade_no(),
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
            subject: format!("commerce-mesh plan {}", payment.plan_code),
            notify_url: format!(
                "{}/v1/webhooks/{}",
                self.settings.public_url.trim_end_matches('/'),
                payment.provider
            ),
            return_url: request
                .return_url
                .clone()
                .unwrap_or_else(|| self.settings.default_return_url.clone()),
            expires_at: payment.expires_at,
        })
    }

    async fn store_checkout(
        &self,
        payment: &PaymentRow,
        checkout: &Checkout,
    ) -> Result<CheckoutResult, Error> {
        let (kind, url) = match checkout {
            Checkout::RedirectUrl(url) => ("redirect_url", url),
            Checkout::QrCodeUrl(url) => ("qr_code_url", url),
        };
        let now = self.now();
        let mut conn = self.conn().await?;
        let payment =
            match payments::set_checkout(&mut conn, payment.payment_id, kind, url, now).await? {
                Some(updated) => updated,
                // A concurrent retry stored it first; both checkouts are for the same order.
                None => payments::get(&mut conn, payment.payment_id)
                    .await?
                    .ok_or_else(no_payment)?,
            };
        let subscription = subscription_of(&mut conn, &payment).await?;
        Ok(CheckoutResult {
            subscription,
            payment,
        })
    }

    /// Closes superseded or canceled checkouts at their providers so they can no longer be
    /// paid. Best effort: the payment is already CANCELED here, and a notification for it
    /// would be recorded and not applied.
    async fn close_at_providers(&self, closed: &[PaymentRow]) {
        for payment in closed {
            let Some(provider) = payment.provider().and_then(|p| self.providers.get(&p)) else {
                continue;
            };
            if let Err(err) = provider.close(&payment.out_trade_no()).await {
                tracing::warn!(payment = %payment.payment_id, %err, "closing a canceled checkout failed");
            }
        }
    }

    /// The caller's current subscription (PENDING_PAYMENT, ACTIVE or PAST_DUE), if any.
    pub async fn current_subscription(&self, user: Uuid) -> Result<Option<SubscriptionRow>, Error> {
        let mut conn = self.conn().await?;
        Ok(subscriptions::current(&mut conn, user).await?)
    }

    /// Cancels the caller's current subscription now or at its period's end. Repeating a
    /// cancellation that took effect returns the canceled subscription.
    pub async fn cancel_subscription(
        &self,
        user: Uuid,
        at_period_end: bool,
    ) -> Result<SubscriptionRow, Error> {
        let now = self.now();
        let mut conn = self.conn().await?;
        let (subscription, closed) = conn
            .transaction(async |conn| {
                let Some(current) = subscriptions::current_for_update(conn, user).await? else {
                    return match subscriptions::latest(conn, user).await? {
                        Some(done) if done.status() == SubscriptionStatus::Canceled => {
                            Ok((done, Vec::new()))
                        }
                        _ => Err(no_subscription()),
                    };
                };
                match subscription::cancellation(&current.state(), at_period_end) {
                    Cancellation::AlreadyDone => Ok((current, Vec::new())),
                    Cancellation::AtPeriodEnd => {
                        let updated =
                            subscriptions::cancel_at_period_end(conn, current.subscription_id, now)
                                .await?
                                .ok_or_else(changed_meanwhile)?;
                        Ok((updated, Vec::new()))
                    }
                    Cancellation::Now => {
                        let closed =
                            cancel_pending_payment(conn, current.subscription_id, now).await?;
                        let canceled = subscriptions::cancel(
                            conn,
                            current.subscription_id,
                            current.status(),
                            now,
                            now,
                        )
                        .await?
                        .ok_or_else(changed_meanwhile)?;
                        if current.status() == SubscriptionStatus::Active {
                            outbox::enqueue(conn, &withdrawal(user), now).await?;
                        }
                        Ok::<_, Error>((canceled, closed.into_iter().collect()))
                    }
                }
            })
            .await?;
        self.outbox_written.notify_one();
        self.close_at_providers(&closed).await;
        Ok(subscription)
    }

    /// One payment of `user` (any user's for an admin).
    pub async fn get_payment(
        &self,
        id: Uuid,
        user: Uuid,
        admin: bool,
    ) -> Result<PaymentRow, Error> {
        let payment = {
            let mut conn = self.conn().await?;
            payments::get(&mut conn, id)
                .await?
                .filter(|payment| admin || payment.user_id == user)
                .ok_or_else(no_payment)?
        };
        self.confirm_if_overdue(payment).await
    }

    /// A page of a user's payments, newest first.
    pub async fn list_payments(
        &self,
        user: Uuid,
        status: Option<PaymentStatus>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, Error> {
        let mut conn = self.conn().await?;
        Ok(payments::list(&mut conn, user, status, after, limit).await?)
    }

    // ---------------------------------------------------------------------------------------
    // Notifications
    // ---------------------------------------------------------------------------------------

    /// Verifies, records and applies a provider's notification; the answer is the body the
    /// provider expects. Every notification is recorded, whatever becomes of it; a duplicate
    /// is acknowledged again and changes nothing.
    pub async fn handle_notification(
        &self,
        provider_name: &str,
        raw: RawNotification,
    ) -> Result<Acknowledgement, Error> {
        let unknown = || Error::NotFound(format!("no payment provider {provider_name:?}"));
        let provider_kind: Provider = provider_name.parse().map_err(|_| unknown())?;
        let provider = self
            .providers
            .get(&provider_kind)
            .ok_or_else(unknown)?
            .clone();
        let now = self.now();
        let mut record = EventRow {
            event_id: Uuid::now_v7(),
            provider: provider_kind.as_str().to_owned(),
            notification_id: None,
            payment_id: None,
            content_type: raw.content_type.clone(),
            headers: serde_json::Value::Object(
                raw.headers
                    .iter()
                    .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
                    .collect(),
            ),
            body: raw.body.clone(),
            verdict: Verdict::Refused.as_str().to_owned(),
            detail: String::new(),
            received_at: now,
        };
        let notification = match provider.verify_notification(&raw, now) {
            Ok(notification) => notification,
            Err(refusal) => {
                record.detail = refusal.to_string();
                self.record(&record).await?;
                return Err(match refusal {
                    Refusal::BadSignature | Refusal::Stale => {
                        Error::Unauthenticated(refusal.to_string())
                    }
                    Refusal::Malformed(_) | Refusal::WrongMerchant(_) => {
                        Error::invalid("body", refusal.to_string())
                    }
                });
            }
        };
        record.notification_id = Some(notification.notification_id.clone());
        let mut conn = self.conn().await?;
        let outcome = conn
            .transaction(async |conn| {
                let outcome = match &notification.event {
                    NotificationEvent::Trade(trade) => {
                        self.apply_trade(conn, provider_kind, trade, now).await
                    }
                    NotificationEvent::Refund(refund) => {
                        self.apply_refund_update(conn, provider_kind, refund, now)
                            .await
                    }
                };
                // A database failure rolls everything back; the provider retries.
                if let Err(TradeRefused::Db(err)) = outcome {
                    return Err(Error::from(err));
                }
                let (verdict, detail, payment_id) = match &outcome {
                    Ok(applied) => (
                        applied.verdict,
                        applied.detail.clone(),
                        Some(applied.payment_id),
                    ),
                    Err(refused) => (Verdict::Refused, refused.to_string(), refused.payment_id()),
                };
                record.verdict = verdict.as_str().to_owned();
                record.detail = detail;
                record.payment_id = payment_id;
                events::insert(conn, &record).await?;
                Ok::<_, Error>(outcome)
            })
            .await?;
        match outcome {
            Ok(_) => {
                self.outbox_written.notify_one();
                Ok(provider.acknowledgement())
            }
            Err(TradeRefused::UnknownOrder) => Err(Error::NotFound(
                "the notification names no payment of ours".to_owned(),
            )),
            Err(TradeRefused::Db(err)) => Err(err.into()),
            Err(refused) => Err(Error::invalid("body", refused.to_string())),
        }
    }

    async fn record(&self, record: &EventRow) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        Ok(events::insert(&mut conn, record).await?)
    }

    /// Applies a trade's state as the provider reports it to our payment, inside the caller's
    /// transaction: a paid trade succeeds a PENDING payment and activates, renews or moves its
    /// subscription; a closed one cancels it. A payment no longer PENDING is left alone.
    async fn apply_trade(
        &self,
        conn: &mut Conn,
        provider: Provider,
        trade: &Trade,
        now: DateTime<Utc>,
    ) -> Result<TradeApplied, TradeRefused> {
        let payment_id =
            Uuid::try_parse(&trade.out_trade_no).map_err(|_| TradeRefused::UnknownOrder)?;
        let payment = payments::get(conn, payment_id)
            .await?
            .filter(|payment| payment.provider() == Some(provider))
            .ok_or(TradeRefused::UnknownOrder)?;
        if trade.amount_minor != payment.amount_minor || trade.currency != payment.currency {
            return Err(TradeRefused::Mismatch {
                payment_id,
                expected: format!("{} {}", payment.amount_minor, payment.currency),
                got: format!("{} {}", trade.amount_minor, trade.currency),
            });
        }
        let applied = |verdict, detail: String| TradeApplied {
            payment_id,
            verdict,
            detail,
        };
        let duplicate = || {
            applied(
                Verdict::Duplicate,
                format!("the payment is already {}", payment.status),
            )
        };
        match trade.status {
            TradeStatus::Paid => {
                let paid_at = trade.paid_at.unwrap_or(now);
                let Some(paid) =
                    payments::succeed(conn, payment_id, trade.trade_no.as_deref(), paid_at, now)
                        .await?
                else {
                    return Ok(duplicate());
                };
                let detail = self.activate(conn, &paid, paid_at, now).await?;
                Ok(applied(Verdict::Applied, detail))
            }
            TradeStatus::Closed => Ok(
                match payments::cancel_pending(conn, payment_id, now).await? {
                    Some(_) => applied(Verdict::Applied, "the checkout was closed".to_owned()),
                    None => duplicate(),
                },
            ),
            TradeStatus::Failed => Ok(match payments::fail(conn, payment_id, now).await? {
                Some(_) => applied(Verdict::Applied, "the payment failed".to_owned()),
                None => duplicate(),
            }),
            TradeStatus::Pending => Ok(applied(
                Verdict::Duplicate,
                "the trade is not paid yet".to_owned(),
            )),
        }
    }

    /// What a succeeded payment does to its subscription, with the entitlements it queues.
    async fn activate(
        &self,
        conn: &mut Conn,
        paid: &PaymentRow,
        paid_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<String, TradeRefused> {
        let subscription = subscriptions::get_for_update(conn, paid.subscription_id)
            .await?
            .ok_or(TradeRefused::UnknownOrder)?;
        let state = subscription.state();
        let activated = match payment_succeeded(
            &state,
            paid.purpose(),
            &paid.plan_code,
            paid.period(),
            paid_at,
        ) {
            Ok(activated) => activated,
            Err(refused) => {
                // Cannot happen while a subscription's end cancels its pending payment in the
                // same transaction; if it does, the money is recorded and a person decides.
                tracing::error!(payment = %paid.payment_id, %refused, "paid, but the subscription cannot take it: refund needed");
                return Ok(format!("paid, but {refused}: refund needed"));
            }
        };
        let active = subscriptions::activate(
            conn,
            subscription.subscription_id,
            state.status,
            &activated,
            now,
        )
        .await?
        .ok_or(TradeRefused::Db(diesel::result::Error::NotFound))?;
        let plan = plans::get(conn, &active.plan_code)
            .await?
            .ok_or(TradeRefused::UnknownOrder)?;
        let (start, end) = subscription::interval_at(
            activated.period_start,
            activated.period_end,
            plan.period(),
            now.max(activated.period_start),
        );
        outbox::enqueue(
            conn,
            &Entitlement {
                subject: active.user_id,
                plan_code: plan.plan_code.clone(),
                quota_limits: plan.quota_limits.clone(),
                period: Some((start, end)),
            },
            now,
        )
        .await?;
        Ok(format!(
            "subscription {} active on {} until {}",
            active.subscription_id, active.plan_code, activated.period_end
        ))
    }

    // ---------------------------------------------------------------------------------------
    // The passing of time (the lifecycle worker)
    // ---------------------------------------------------------------------------------------

    /// Moves every subscription and payment whose time came: ACTIVE past its period → PAST_DUE
    /// (or CANCELED when set to cancel at period end), limits withdrawn; PAST_DUE past the grace
    /// period → EXPIRED; PENDING checkouts past expiry → closed at the provider and CANCELED
    /// (their PENDING_PAYMENT subscription EXPIRED). Rows are claimed with `FOR UPDATE SKIP
    /// LOCKED`, so replicas running this at once never take the same row. Returns how many
    /// transitions it made.
    pub async fn run_lifecycle(&self) -> Result<usize, Error> {
        const BATCH: i64 = 100;
        let mut moved = 0;
        loop {
            let now = self.now();
            let mut conn = self.conn().await?;
            let (count, closed) = conn
                .transaction(async |conn| {
                    let mut closed = Vec::new();
                    let ended =
                        subscriptions::claim_ended(conn, SubscriptionStatus::Active, now, BATCH)
                            .await?;
                    for row in &ended {
                        let from = SubscriptionStatus::Active;
                        let at = row.current_period_end.unwrap_or(now);
                        match subscription::period_ended(row.cancel_at_period_end) {
                            subscription::PeriodEnded::Canceled => {
                                closed.extend(
                                    cancel_pending_payment(conn, row.subscription_id, now).await?,
                                );
                                subscriptions::cancel(conn, row.subscription_id, from, at, now)
                                    .await?;
                            }
                            subscription::PeriodEnded::PastDue => {
                                subscriptions::move_to(
                                    conn,
                                    row.subscription_id,
                                    from,
                                    SubscriptionStatus::PastDue,
                                    now,
                                )
                                .await?;
                            }
                        }
                        outbox::enqueue(conn, &withdrawal(row.user_id), now).await?;
                    }
                    let grace_ended = now - self.settings.grace_period;
                    let lapsed = subscriptions::claim_ended(
                        conn,
                        SubscriptionStatus::PastDue,
                        grace_ended,
                        BATCH,
                    )
                    .await?;
                    for row in &lapsed {
                        closed
                            .extend(cancel_pending_payment(conn, row.subscription_id, now).await?);
                        subscriptions::move_to(
                            conn,
                            row.subscription_id,
                            SubscriptionStatus::PastDue,
                            SubscriptionStatus::Expired,
                            now,
                        )
                        .await?;
                    }
                    Ok::<_, Error>((ended.len() + lapsed.len(), closed))
                })
                .await?;
            self.close_at_providers(&closed).await;
            if count > 0 {
                self.outbox_written.notify_one();
            }
            moved += count;
            if count < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        moved += self.expire_checkouts().await?;
        let mut conn = self.conn().await?;
        idempotency::forget_before(&mut conn, self.now() - TimeDelta::days(2)).await?;
        Ok(moved)
    }

    /// Closes each PENDING payment past its expiry at the provider, then cancels it, one row
    /// lock at a time. A close the provider refuses (e.g. the trade was paid and its
    /// notification is still on its way) leaves the payment for the next round.
    async fn expire_checkouts(&self) -> Result<usize, Error> {
        let mut expired = 0;
        let mut failed: Vec<Uuid> = Vec::new();
        loop {
            let now = self.now();
            let mut conn = self.conn().await?;
            let done = conn
                .transaction(async |conn| {
                    let Some(payment) = payments::claim_expired(conn, now, &failed).await? else {
                        return Ok::<_, Error>(None);
                    };
                    let provider = payment.provider().and_then(|p| self.providers.get(&p));
                    if let Some(provider) = provider
                        && let Err(err) = provider.close(&payment.out_trade_no()).await
                    {
                        tracing::warn!(payment = %payment.payment_id, %err, "closing an expired checkout failed; retried later");
                        return Ok(Some((payment.payment_id, false)));
                    }
                    payments::cancel_pending(conn, payment.payment_id, now).await?;
                    subscriptions::move_to(
                        conn,
                        payment.subscription_id,
                        SubscriptionStatus::PendingPayment,
                        SubscriptionStatus::Expired,
                        now,
                    )
                    .await?;
                    Ok(Some((payment.payment_id, true)))
                })
                .await?;
            match done {
                None => return Ok(expired),
                Some((_, true)) => expired += 1,
                Some((id, false)) => failed.push(id),
            }
        }
    }
}

/// The subject's plan limits withdrawn: quota-svc falls back to the free tier.
fn withdrawal(user: Uuid) -> Entitlement {
    Entitlement {
        subject: user,
        plan_code: String::new(),
        quota_limits: serde_json::Value::Array(Vec::new()),
        period: None,
    }
}

/// The remembered request of an idempotency key.
async fn resume(conn: &mut Conn, key: &KeyRow, fingerprint: &[u8]) -> Result<Opened, Error> {
    if key.request_fingerprint != fingerprint {
        return Err(Error::KeyReused);
    }
    if let Some(answer) = key
        .response
        .as_deref()
        .and_then(|bytes| serde_json::from_slice::<CheckoutResult>(bytes).ok())
    {
        return Ok(Opened::Replayed(Box::new(answer)));
    }
    let payment = payments::get(conn, key.payment_id)
        .await?
        .ok_or_else(no_payment)?;
    Ok(Opened::New(Box::new((payment, None))))
}

/// The subscription a payment is for.
async fn subscription_of(conn: &mut Conn, payment: &PaymentRow) -> Result<SubscriptionRow, Error> {
    subscriptions::get(conn, payment.subscription_id)
        .await?
        .ok_or_else(no_subscription)
}

/// Cancels the subscription's PENDING payment, if it has one; returns it to close at the
/// provider after commit.
async fn cancel_pending_payment(
    conn: &mut Conn,
    subscription: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<PaymentRow>, Error> {
    let Some(pending) = payments::pending_of(conn, subscription).await? else {
        return Ok(None);
    };
    Ok(payments::cancel_pending(conn, pending.payment_id, now).await?)
}

/// An active plan, or NOT_FOUND / FAILED_PRECONDITION.
async fn purchasable_plan(conn: &mut Conn, code: &str) -> Result<PlanRow, Error> {
    let plan = plans::get(conn, code).await?.ok_or_else(|| no_plan(code))?;
    if !plan.active {
        return Err(Error::FailedPrecondition(format!(
            "plan {code:?} is not on sale"
        )));
    }
    Ok(plan)
}

fn no_plan(code: &str) -> Error {
    Error::NotFound(format!("no plan {code:?}"))
}

fn no_subscription() -> Error {
    Error::NotFound("you have no current subscription".to_owned())
}

fn no_payment() -> Error {
    Error::NotFound("no such payment".to_owned())
}

fn changed_meanwhile() -> Error {
    Error::FailedPrecondition("the subscription changed meanwhile; retry".to_owned())
}

/// A trade applied to a payment (or left alone as a duplicate).
struct TradeApplied {
    payment_id: Uuid,
    verdict: Verdict,
    detail: String,
}

/// Why a verified trade was not applied. Recorded with the notification.
#[derive(Debug, thiserror::Error)]
enum TradeRefused {
    #[error("no payment of ours has this order number")]
    UnknownOrder,
    #[error("amount or currency does not match the payment: expected {expected}, got {got}")]
    Mismatch {
        payment_id: Uuid,
        expected: String,
        got: String,
    },
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
}

impl TradeRefused {
    fn payment_id(&self) -> Option<Uuid> {
        match self {
            TradeRefused::Mismatch { payment_id, .. } => Some(*payment_id),
            _ => None,
        }
    }
}
