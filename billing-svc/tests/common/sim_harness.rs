//! The harness the provider simulator's tests share (`alipay_sim`, `wechat_sim`): the simulator
//! on 127.0.0.1:0 with a manual clock, a receiver standing in for the merchant's notify endpoint,
//! the provider under test configured against both, and the simulator's control API.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router, body::Bytes, extract::State, http::HeaderMap, response::Response, routing::post,
};
use billing_svc::{
    providers::{CheckoutOrder, RawNotification},
    sim::{self, RunningSim, SimConfig, test_keys, wechat::WechatSimConfig},
};
use chrono::{TimeDelta, Utc};
use kit::clock::{Clock, ManualClock};
use reqwest::{StatusCode, redirect::Policy};
use serde_json::Value;
use tokio::net::TcpListener;

/// The merchant's notify endpoint, the way a provider expects it to behave.
#[derive(Clone, Copy)]
pub struct Receiver {
    /// The webhook path notifications are posted to.
    pub path: &'static str,
    /// The headers each notification keeps besides its content type: the ones verifying it reads.
    pub headers: &'static [&'static str],
    /// The acknowledgement the provider expects.
    pub ack: fn() -> Response,
}

/// A simulator, a notification receiver and a provider configured against both.
pub struct SimHarness<P> {
    pub sim: RunningSim,
    pub clock: Arc<ManualClock>,
    pub notifications: Arc<Mutex<Vec<RawNotification>>>,
    pub notify_url: String,
    pub provider: P,
    /// Shows redirects instead of following them: Alipay's Pay button sends the buyer on.
    pub http: reqwest::Client,
    /// Where the control API keeps this provider's orders, such as `/sim/alipay/orders`.
    orders_path: &'static str,
}

impl<P> SimHarness<P> {
    /// Starts the simulator (with WeChat Pay when `wechatpay` is given) and `receiver`, and
    /// configures the provider against the simulator with `provider`.
    pub async fn start_with(
        wechatpay: Option<WechatSimConfig>,
        orders_path: &'static str,
        receiver: Receiver,
        provider: impl FnOnce(&RunningSim) -> P,
    ) -> Self {
        let keys = test_keys();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let sim = sim::start_with_wechatpay(
            SimConfig {
                alipay_private_key: keys.alipay.clone(),
                merchant_public_key: keys.merchant.public_key(),
                clock: clock.clone(),
            },
            wechatpay,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .unwrap();
        let notifications = Arc::default();
        let receiver_addr = start_receiver(receiver, Arc::clone(&notifications)).await;
        Self {
            notify_url: format!("http://{receiver_addr}{}", receiver.path),
            provider: provider(&sim),
            sim,
            clock,
            notifications,
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            orders_path,
        }
    }

    /// A new order of ¥19.99 expiring in 15 minutes, notified to the receiver.
    pub fn checkout_order(&self, return_url: &str) -> CheckoutOrder {
        CheckoutOrder {
            out_trade_no: uuid::Uuid::new_v4().simple().to_string(),
            amount_minor: 1999,
            currency: "CNY".to_owned(),
            subject: "Pro <monthly>".to_owned(),
            notify_url: self.notify_url.clone(),
            return_url: return_url.to_owned(),
            expires_at: self.clock.now() + TimeDelta::minutes(15),
        }
    }

    /// The simulator's URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim.addr())
    }

    /// The simulator's view of an order.
    pub async fn state(&self, out_trade_no: &str) -> (StatusCode, Value) {
        let url = self.url(&format!("{}/{out_trade_no}", self.orders_path));
        let response = self.http.get(url).send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Pays an order through the control API, with `body` as its options.
    pub async fn pay(&self, out_trade_no: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = self.url(&format!("{}/{out_trade_no}:pay", self.orders_path));
        let request = self.http.post(url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// The notifications received so far.
    pub fn received(&self) -> Vec<RawNotification> {
        self.notifications.lock().unwrap().clone()
    }
}

/// What the receiver's handler needs.
#[derive(Clone)]
struct Recorder {
    receiver: Receiver,
    notifications: Arc<Mutex<Vec<RawNotification>>>,
}

/// The merchant's notify endpoint: records every POST with the headers `receiver` names and
/// acknowledges it.
async fn start_receiver(
    receiver: Receiver,
    notifications: Arc<Mutex<Vec<RawNotification>>>,
) -> SocketAddr {
    async fn record(State(recorder): State<Recorder>, headers: HeaderMap, body: Bytes) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        recorder
            .notifications
            .lock()
            .unwrap()
            .push(RawNotification {
                content_type: header("content-type"),
                body: body.to_vec(),
                headers: recorder
                    .receiver
                    .headers
                    .iter()
                    .map(|&name| (name.to_owned(), header(name)))
                    .collect(),
            });
        (recorder.receiver.ack)()
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(receiver.path, post(record))
        .with_state(Recorder {
            receiver,
            notifications,
        });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
