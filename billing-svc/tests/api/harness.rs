//! The in-process mesh billing's tests run against: billing-svc and quota-svc over one fresh
//! database, a test token issuer, the edge (where providers post notifications), the provider
//! simulator, a manual clock shared by all of them, and a TCP proxy in front of quota-svc so a
//! test can take it down.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use billing_svc::{
    MIGRATIONS, SPEC, Workers,
    dispatch::Dispatcher,
    domain::plan::PlansFile,
    providers::{
        PaymentProvider,
        alipay::{Alipay, AlipayConfig},
        wechat::{WechatPay, WechatPayConfig},
    },
    routes,
    service::{Billing, Settings},
    sim::{self, RunningSim, SimConfig},
};
use chrono::{TimeDelta, Utc};
use kit::{
    client_address::TrustedProxies,
    clock::ManualClock,
    testing::{InProcess, TcpProxy, TestDb, TestIssuer, with_bearer},
};
use proto::{
    billing::{
        CancelSubscriptionRequest, CreateSubscriptionRequest, CreateSubscriptionResponse,
        GetCurrentSubscriptionRequest, GetPaymentRequest, Payment, PaymentProvider as PbProvider,
        Subscription, billing_service_client::BillingServiceClient, payment::Checkout,
    },
    quota::{CheckQuotaRequest, QuotaState, quota_service_client::QuotaServiceClient},
};
use serde_json::{Value, json};
use tonic::{Request, Status, transport::Channel};
use uuid::Uuid;

/// The merchant app id the tests configure.
pub const APP_ID: &str = "2021000000000001";

/// The WeChat Pay merchant and app the tests configure.
pub const WECHATPAY_MCHID: &str = "1900000109";
pub const WECHATPAY_APPID: &str = "wxd678efh567hg6787";

/// The plans every test starts with.
pub const PLANS: &str = r#"
[free]
limits = { "analyses" = 10 }

[[plan]]
code = "basic"
name = "Basic"
price = 1999
currency = "CNY"
interval = "month"
limits = { "analyses" = 100 }

[[plan]]
code = "pro"
name = "Pro"
price = 9900
currency = "CNY"
interval = "month"
limits = { "analyses" = 1000, "exports" = "unlimited" }
"#;

pub struct Mesh {
    pub db: TestDb,
    pub issuer: Arc<TestIssuer>,
    pub clock: Arc<ManualClock>,
    pub billing: Arc<Billing>,
    pub billing_server: InProcess,
    pub quota_server: InProcess,
    /// In front of quota-svc: `set_up(false)` takes it down for billing.
    pub quota_proxy: TcpProxy,
    pub sim: RunningSim,
    /// In front of the simulator's gateway as billing reaches it: `set_up(false)` makes the
    /// payment provider unreachable.
    pub provider_proxy: TcpProxy,
    pub edge: SocketAddr,
    pub http: reqwest::Client,
}

impl Mesh {
    /// The mesh with Alipay as its only provider (WeChat Pay is not configured).
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// The mesh with Alipay and WeChat Pay, both against the simulator.
    pub async fn start_with_wechatpay() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(with_wechatpay: bool) -> Self {
        let db = TestDb::new(&[
            (SPEC.name, MIGRATIONS),
            (quota_svc::SPEC.name, quota_svc::MIGRATIONS),
        ])
        .await;
        let issuer = Arc::new(TestIssuer::new());
        let clock = Arc::new(ManualClock::new(Utc::now()));

        let quota_clock = clock.clone();
        let quota_auth = issuer.authenticator();
        let quota_server = InProcess::start(
            quota_svc::SPEC,
            db.url(),
            quota_svc::MIGRATIONS,
            |_| {},
            move |pool| {
                let workers = quota_svc::Workers {
                    consume: 1,
                    read: 1,
                };
                quota_svc::routes(pool, quota_auth, quota_clock, workers)
            },
        )
        .await;
        let quota_proxy = TcpProxy::start(quota_server.addr).await;

        let keys = sim::test_keys();
        let sim = sim::start_with_wechatpay(
            SimConfig {
                alipay_private_key: keys.alipay.clone(),
                merchant_public_key: keys.merchant.public_key(),
                clock: clock.clone(),
            },
            Some(sim::wechat::test_config()),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .unwrap();

        let provider_proxy = TcpProxy::start(sim.addr()).await;

        // The edge's address is the notify URL's base, so it is bound before billing starts.
        let edge_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge = edge_listener.local_addr().unwrap();
        let alipay: Arc<dyn PaymentProvider> = Arc::new(
            Alipay::new(AlipayConfig {
                gateway_url: format!("http://{}/gateway.do", provider_proxy.addr()),
                app_id: APP_ID.to_owned(),
                merchant_private_key: keys.merchant.clone(),
                alipay_public_key: keys.alipay.public_key(),
            })
            .unwrap(),
        );
        let wechatpay: Arc<dyn PaymentProvider> = Arc::new(
            WechatPay::new(WechatPayConfig {
                base_url: format!("http://{}", provider_proxy.addr()),
                mchid: WECHATPAY_MCHID.to_owned(),
                appid: WECHATPAY_APPID.to_owned(),
                merchant_private_key: keys.merchant.clone(),
                merchant_serial: sim::wechat::TEST_MERCHANT_SERIAL.to_owned(),
                apiv3_key: sim::wechat::test_apiv3_key(),
                platform_public_key: keys.alipay.public_key(),
                platform_serial: sim::wechat::TEST_PLATFORM_SERIAL.to_owned(),
            })
            .unwrap(),
        );
        let providers: Vec<Arc<dyn PaymentProvider>> = if with_wechatpay {
            vec![alipay, wechatpay]
        } else {
            vec![alipay]
        };
        let service_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
        let settings = Settings {
            checkout_expiry: TimeDelta::hours(2),
            grace_period: TimeDelta::days(7),
            public_url: format!("http://{edge}"),
            default_return_url: "http://localhost:9000/".to_owned(),
        };
        let billing_auth = issuer.authenticator();
        let quota_url = format!("http://{}", quota_proxy.addr());
        let billing_clock = clock.clone();
        let (billing_tx, billing_rx) = std::sync::mpsc::channel();
        let billing_server = InProcess::start(
            SPEC,
            db.url(),
            MIGRATIONS,
            |_| {},
            move |pool| {
                let dispatcher = Dispatcher::new(
                    pool.clone(),
                    billing_clock.clone(),
                    &quota_url,
                    &service_key,
                    Duration::from_secs(2),
                )?;
                let billing = Arc::new(Billing::new(pool, billing_clock, providers, settings));
                billing_tx.send(billing.clone())?;
                routes(
                    billing,
                    billing_auth,
                    Workers {
                        dispatcher,
                        // The tests run the lifecycle themselves.
                        lifecycle_every: Duration::from_secs(3600),
                    },
                )
            },
        )
        .await;
        let billing = billing_rx.recv().unwrap();

        let router = edge_proxy::router(edge_proxy::Settings::new(
            edge_proxy::Upstreams {
                auth: vec!["http://127.0.0.1:9".to_owned()],
                billing: vec![format!("http://{}", billing_server.addr)],
                quota: vec![format!("http://{}", quota_server.addr)],
            },
            // No auth-svc here (the issuer fakes it): nothing verifies the key.
            edge_proxy::Forwarding::new(TrustedProxies::default(), "cmk_unused").unwrap(),
        ))
        .unwrap();
        tokio::spawn(async move {
            axum::serve(
                edge_listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });

        let mesh = Self {
            db,
            issuer,
            clock,
            billing,
            billing_server,
            quota_server,
            quota_proxy,
            sim,
            provider_proxy,
            edge,
            http: reqwest::Client::new(),
        };
        mesh.billing
            .apply_plans_file(&PlansFile::parse(PLANS).unwrap())
            .await
            .unwrap();
        mesh
    }

    pub fn billing_client(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.billing_server.channel.clone())
    }

    pub fn quota_client(&self) -> QuotaServiceClient<Channel> {
        QuotaServiceClient::new(self.quota_server.channel.clone())
    }

    /// A request carrying `user`'s access token.
    pub fn as_user<T>(&self, user: Uuid, message: T) -> Request<T> {
        with_bearer(&self.issuer.token(user, &[]), message)
    }

    /// A request carrying an administrator's access token.
    pub fn as_admin<T>(&self, message: T) -> Request<T> {
        with_bearer(&self.issuer.token(Uuid::now_v7(), &["admin"]), message)
    }

    /// Subscribes `user` to `plan` with Alipay.
    pub async fn subscribe(&self, user: Uuid, plan: &str) -> CreateSubscriptionResponse {
        self.subscribe_with(user, plan, PbProvider::Alipay).await
    }

    /// Subscribes `user` to `plan` paying with `provider`.
    pub async fn subscribe_with(
        &self,
        user: Uuid,
        plan: &str,
        provider: PbProvider,
    ) -> CreateSubscriptionResponse {
        self.billing_client()
            .create_subscription(self.as_user(
                user,
                CreateSubscriptionRequest {
                    plan_code: plan.to_owned(),
                    provider: provider as i32,
                    idempotency_key: Uuid::now_v7().to_string(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// The user's current subscription.
    pub async fn current(&self, user: Uuid) -> Option<Subscription> {
        self.billing_client()
            .get_current_subscription(self.as_user(user, GetCurrentSubscriptionRequest {}))
            .await
            .unwrap()
            .into_inner()
            .subscription
    }

    /// One of the user's payments.
    pub async fn payment(&self, user: Uuid, payment_id: &str) -> Payment {
        self.billing_client()
            .get_payment(self.as_user(
                user,
                GetPaymentRequest {
                    payment_id: payment_id.to_owned(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    /// Cancels the user's subscription, now or at its period's end.
    pub async fn cancel(&self, user: Uuid, at_period_end: bool) -> Subscription {
        self.billing_client()
            .cancel_subscription(self.as_user(user, CancelSubscriptionRequest { at_period_end }))
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap()
    }

    /// Opens the payment's checkout page, as the buyer's browser does (the provider knows an
    /// order from then on).
    pub async fn open_checkout(&self, payment: &Payment) {
        let Some(Checkout::RedirectUrl(url)) = &payment.checkout else {
            panic!("no redirect URL: {payment:?}");
        };
        let page = self.http.get(url).send().await.unwrap();
        assert!(page.status().is_success(), "{}", page.status());
    }

    /// Opens the checkout and tells the simulator to pay it; returns its JSON answer.
    pub async fn pay(&self, payment: &Payment, body: Value) -> Value {
        self.open_checkout(payment).await;
        let out_trade_no = payment.payment_id.replace('-', "");
        let response = self
            .http
            .post(format!(
                "http://{}/sim/alipay/orders/{out_trade_no}:pay",
                self.sim.addr()
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    /// Pays once and returns the notify statuses.
    pub async fn pay_once(&self, payment: &Payment) -> Vec<u64> {
        statuses(&self.pay(payment, json!({"deliveries": 1})).await)
    }

    /// The simulator's view of the payment's order.
    pub async fn order(&self, payment_id: &str) -> Value {
        self.http
            .get(format!(
                "http://{}/sim/alipay/orders/{}",
                self.sim.addr(),
                payment_id.replace('-', "")
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The user's quota of `metric` as quota-svc answers it.
    pub async fn quota(&self, user: Uuid, metric: &str) -> Result<QuotaState, Status> {
        let response = self
            .quota_client()
            .check_quota(self.as_user(
                user,
                CheckQuotaRequest {
                    metric: metric.to_owned(),
                    ..Default::default()
                },
            ))
            .await?;
        Ok(response.into_inner().quota.unwrap())
    }

    /// Waits (up to 10 s) until the user's limit of `metric` is `limit`.
    pub async fn wait_for_limit(&self, user: Uuid, metric: &str, limit: i64) -> QuotaState {
        let mut last = None;
        for _ in 0..200 {
            match self.quota(user, metric).await {
                Ok(state) if state.limit == limit && !state.unlimited => return state,
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the limit of {metric} never became {limit}: {last:?}");
    }

    /// Rows of `sql` (a query returning one text column `v`) in the billing schema.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        use diesel::{QueryableByName, sql_types::Text};
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            v: String,
        }
        let mut conn = self.db.connect(SPEC.name).await;
        diesel::sql_query(sql)
            .load::<Row>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.v)
            .collect()
    }
}

/// The `notifyStatuses` of a simulator answer.
pub fn statuses(answer: &Value) -> Vec<u64> {
    answer["notifyStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|status| status.as_u64().unwrap())
        .collect()
}
