//! The payment provider simulator behind the `provider-sim` binary: Alipay's HTTP protocol on
//! `/gateway.do` (page pay with a checkout page, trade query and close, signed answers and
//! notifications), plus a control API that lets tests pay orders and tamper with notifications.
//!
//! Routes:
//! - `GET|POST /gateway.do`: `alipay.trade.page.pay` (HTML checkout page), `alipay.trade.query`,
//!   `alipay.trade.close` and `alipay.trade.refund` (signed JSON), each request's RSA2 signature
//!   checked against the merchant's public key.
//! - `POST /sim/alipay/checkout/{out_trade_no}`: the checkout page's Pay button; pays like the
//!   control API, then sends the browser to the order's `return_url`.
//! - `POST /sim/alipay/orders/{out_trade_no}:pay` with an optional JSON body
//!   `{"deliveries": 1, "tamper": "none" | "signature" | "amount"}`: pays and notifies, answering
//!   `{"tradeNo": "…", "notifyStatuses": [200, …]}`.
//! - `GET /sim/alipay/orders/{out_trade_no}`: the order's state as JSON.
//! - WeChat Pay API v3 on its own paths (`/v3/…`, `/sim/wechatpay/…`) when configured: see
//!   [`wechat`].
//!
//! Orders live in memory. [`start`] runs the simulator inside a test process; [`test_keys`]
//! gives tests the two key pairs (merchant, "Alipay") it needs.

mod control;
mod control_common;
mod gateway;
mod notify;
mod order_book;
mod orders;
mod page;
pub mod wechat;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    routing::{get, post},
};
use kit::clock::Clock;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::providers::rsa_keys::{self, KeyError, PrivateKey, PublicKey};

/// How long the simulator waits for a merchant's notify endpoint.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the simulator needs to play Alipay.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// "Alipay's" private key: signs answers, notifications and return parameters.
    pub alipay_private_key: PrivateKey,
    /// The merchant's public key: checks the signature of every gateway request.
    pub merchant_public_key: PublicKey,
    /// The simulator's time: order expiry and the times it reports.
    pub clock: Arc<dyn Clock>,
}

/// The state every handler shares.
#[derive(Clone)]
struct Sim {
    config: Arc<SimConfig>,
    orders: Arc<order_book::OrderBook<orders::Order>>,
    http: reqwest::Client,
}

/// The simulator's routes (Alipay only).
pub fn router(config: SimConfig) -> Result<Router, reqwest::Error> {
    router_with_wechatpay(config, None)
}

/// The simulator's routes: Alipay's, and WeChat Pay's when `wechatpay` is given.
pub fn router_with_wechatpay(
    config: SimConfig,
    wechatpay: Option<wechat::WechatSimConfig>,
) -> Result<Router, reqwest::Error> {
    let http = reqwest::Client::builder().timeout(NOTIFY_TIMEOUT).build()?;
    let wechatpay = wechatpay
        .map(|wechatpay| wechat::router(wechatpay, Arc::clone(&config.clock), http.clone()))
        .unwrap_or_default();
    let sim = Sim {
        config: Arc::new(config),
        orders: Arc::default(),
        http,
    };
    Ok(Router::new()
        .route("/gateway.do", get(gateway::handle).post(gateway::handle))
        .route(
            "/sim/alipay/checkout/{out_trade_no}",
            post(control::checkout),
        )
        .route(
            // `{order}:pay` on POST: a path parameter cannot end in a literal, so the handler splits it.
            "/sim/alipay/orders/{order}",
            get(control::state).post(control::pay),
        )
        .with_state(sim)
        .merge(wechatpay))
}

/// Serves the simulator (Alipay only) on `listener` until `shutdown` completes.
pub async fn serve(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_wechatpay(config, None, listener, shutdown).await
}

/// Serves Alipay and, when given, WeChat Pay on `listener` until `shutdown` completes.
pub async fn serve_with_wechatpay(
    config: SimConfig,
    wechatpay: Option<wechat::WechatSimConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = router_with_wechatpay(config, wechatpay).map_err(io::Error::other)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running on a Tokio task (tests); dropping it stops the server.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

/// Starts the simulator on `listener` (bind `127.0.0.1:0`) in a Tokio task of the current
/// runtime.
pub fn start(config: SimConfig, listener: TcpListener) -> io::Result<RunningSim> {
    start_with_wechatpay(config, None, listener)
}

/// [`start`] with WeChat Pay too, when `wechatpay` is given.
pub fn start_with_wechatpay(
    config: SimConfig,
    wechatpay: Option<wechat::WechatSimConfig>,
    listener: TcpListener,
) -> io::Result<RunningSim> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_wechatpay(
        config,
        wechatpay,
        listener,
        async move {
            // A dropped sender stops the server as well as a sent one.
            let _ = stopped.await;
        },
    ));
    Ok(RunningSim {
        addr,
        stop: Some(stop),
        task,
    })
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to configure as Alipay's gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://{}/gateway.do", self.addr)
    }

    /// The URL to configure as WeChat Pay's base URL.
    pub fn wechatpay_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server, waiting for requests in flight.
    pub async fn stop(mut self) -> io::Result<()> {
        self.stop.take();
        (&mut self.task).await.map_err(io::Error::other)?
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// The two key pairs of a simulated deployment.
#[derive(Debug)]
pub struct TestKeys {
    /// Ours: signs gateway requests.
    pub merchant: PrivateKey,
    /// "Alipay's": signs answers and notifications.
    pub alipay: PrivateKey,
}

/// Key pairs for tests, generated once per process: 2048-bit generation takes seconds in debug
/// builds.
pub fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        #[expect(
            clippy::expect_used,
            reason = "a test helper: without randomness from the OS no test can run"
        )]
        let generate = || rsa_keys::generate().expect("generating a test RSA key");
        TestKeys {
            merchant: generate(),
            alipay: generate(),
        }
    })
}

/// The development key files `provider-sim keygen` writes: (private, public) per pair.
pub const KEY_FILES: [(&str, &str); 2] = [
    ("merchant-private.pem", "merchant-public.pem"),
    ("alipay-private.pem", "alipay-public.pem"),
];

/// Writes the merchant's and "Alipay's" key pairs as [`KEY_FILES`] in `dir`, keeping every file
/// that exists (a missing public key is derived from its private key). Returns the files written.
pub fn write_dev_keys(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    create_key_dir(dir)?;
    let mut written = Vec::new();
    for (private_name, public_name) in KEY_FILES {
        write_missing_key_pair(dir, private_name, public_name, &mut written)?;
    }
    Ok(written)
}

fn create_key_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Generates the private key of a pair in `dir` unless it exists, and derives the public key
/// unless it exists: development keys are never replaced. Adds the files it writes to `written`.
fn write_missing_key_pair(
    dir: &Path,
    private_name: &str,
    public_name: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), KeyError> {
    let (private_path, public_path) = (dir.join(private_name), dir.join(public_name));
    let private = if private_path.exists() {
        PrivateKey::from_file(&private_path)?
    } else {
        let key = rsa_keys::generate()?;
        key.write_pem(&private_path)?;
        written.push(private_path);
        key
    };
    if !public_path.exists() {
        private.public_key().write_pem(&public_path)?;
        written.push(public_path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn dev_keys_keep_existing_files_and_derive_a_missing_public_key() {
        let dir = std::env::temp_dir().join(format!("sim-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = test_keys();
        keys.merchant
            .write_pem(&dir.join("merchant-private.pem"))
            .unwrap();
        std::fs::write(dir.join("merchant-public.pem"), "kept as it is").unwrap();
        keys.alipay
            .write_pem(&dir.join("alipay-private.pem"))
            .unwrap();

        let written = write_dev_keys(&dir).unwrap();

        assert_eq!(written, vec![dir.join("alipay-public.pem")]);
        assert_eq!(
            std::fs::read_to_string(dir.join("merchant-public.pem")).unwrap(),
            "kept as it is"
        );
        let alipay_public = PublicKey::from_file(&dir.join("alipay-public.pem")).unwrap();
        assert!(rsa_keys::verify(
            &alipay_public,
            "x",
            &rsa_keys::sign(&keys.alipay, "x")
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
