//! billing-svc: plans, subscriptions and payments through Alipay (and WeChat Pay), provider
//! notifications, and the entitlements it pushes to quota-svc.
//!
//! Layers: [`api`] (thin tonic handlers) → [`service`] (owns transactions) → [`domain`] (pure
//! rules) and [`store`] (all SQL); [`providers`] speak the payment providers' protocols;
//! [`dispatch`] delivers the entitlement outbox; [`lifecycle`] moves subscriptions and payments
//! at their times; [`sim`] is the provider simulator behind the `provider-sim` binary.

pub mod api;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod lifecycle;
pub mod providers;
pub mod service;
pub mod sim;
pub mod store;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use chrono::TimeDelta;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use kit::{
    ServiceSpec,
    caller::Authenticator,
    cli::{CallerArgs, Secret},
    clock::Clock,
    db::{Migrations, PgPool},
};
use proto::billing::billing_service_server::BillingServiceServer;
use tonic::service::Routes;

use crate::{
    api::BillingApi,
    dispatch::Dispatcher,
    providers::{
        PaymentProvider,
        alipay::{Alipay, AlipayConfig},
        rsa_keys::{PrivateKey, PublicKey},
        wechat::{WechatPay, WechatPayConfig},
        wechat_v3::{ApiV3Key, PRODUCTION_BASE_URL},
    },
    service::{Billing, Settings},
};

/// How billing-svc presents itself to the mesh.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "billing",
    grpc_service: "commerce.billing.v1.BillingService",
    port: 9002,
    admin_port: 9102,
};

/// The `billing` schema's migrations, embedded in the binary.
pub const MIGRATIONS: Migrations = Migrations(&EMBEDDED);
const EMBEDDED: EmbeddedMigrations = embed_migrations!("../migrations/billing");

/// billing-svc's own settings (beyond the common server flags).
#[derive(Debug, Clone, clap::Args)]
pub struct BillingArgs {
    #[command(flatten)]
    pub callers: CallerArgs,

    /// billing-svc's own API key (scope `service`): verifies callers' API keys with auth-svc
    /// and delivers entitlements to quota-svc.
    #[arg(long, env = "BILLING_SERVICE_API_KEY", hide_env_values = true)]
    pub service_api_key: Option<Secret>,

    /// quota-svc gRPC URL, where entitlements are delivered.
    #[arg(long, env = "QUOTA_URL", default_value = "http://127.0.0.1:9003")]
    pub quota_url: String,

    /// Public base URL of the edge, to which providers post notifications
    /// (`{url}/v1/webhooks/{provider}`).
    #[arg(
        long,
        env = "BILLING_PUBLIC_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub public_url: String,

    /// Where Alipay sends the buyer's browser after paying when a request names no return_url.
    #[arg(
        long,
        env = "BILLING_RETURN_URL",
        default_value = "http://localhost:9000/"
    )]
    pub return_url: String,

    /// Seconds a checkout can be paid before it is closed and canceled.
    #[arg(long, env = "CHECKOUT_EXPIRY_SECS", default_value_t = 7200)]
    pub checkout_expiry_secs: u32,

    /// Seconds a PAST_DUE subscription waits for a renewal before it expires.
    #[arg(long, env = "GRACE_PERIOD_SECS", default_value_t = 7 * 24 * 3600)]
    pub grace_period_secs: u32,

    /// Seconds between two rounds of the lifecycle worker.
    #[arg(long, env = "LIFECYCLE_INTERVAL_SECS", default_value_t = 30)]
    pub lifecycle_interval_secs: u32,

    /// Longest wait, in seconds, between two attempts to deliver entitlements to quota-svc.
    #[arg(long, env = "OUTBOX_MAX_BACKOFF_SECS", default_value_t = 60)]
    pub outbox_max_backoff_secs: u32,

    #[command(flatten)]
    pub alipay: AlipayArgs,

    #[command(flatten)]
    pub wechatpay: WechatPayArgs,
}

/// Alipay's settings; Alipay is offered when `ALIPAY_APP_ID` is set.
#[derive(Debug, Clone, clap::Args)]
pub struct AlipayArgs {
    /// Alipay open platform gateway (the sandbox:
    /// https://openapi-sandbox.dl.alipaydev.com/gateway.do).
    #[arg(
        long,
        env = "ALIPAY_GATEWAY_URL",
        default_value = "https://openapi.alipay.com/gateway.do"
    )]
    pub alipay_gateway_url: String,

    /// The application's app id; Alipay is disabled when unset.
    #[arg(long, env = "ALIPAY_APP_ID")]
    pub alipay_app_id: Option<String>,

    /// File holding the application (merchant) private key: PEM, or the bare base64 the
    /// Alipay console gives.
    #[arg(long, env = "ALIPAY_PRIVATE_KEY_FILE")]
    pub alipay_private_key_file: Option<std::path::PathBuf>,

    /// File holding the Alipay public key that signs Alipay's responses and notifications.
    #[arg(long, env = "ALIPAY_PUBLIC_KEY_FILE")]
    pub alipay_public_key_file: Option<std::path::PathBuf>,
}

impl AlipayArgs {
    /// The configured Alipay provider, if `ALIPAY_APP_ID` is set.
    pub fn provider(&self) -> anyhow::Result<Option<Arc<dyn PaymentProvider>>> {
        let Some(app_id) = &self.alipay_app_id else {
            return Ok(None);
        };
        let file = |path: &Option<std::path::PathBuf>, variable: &str| {
            path.clone()
                .with_context(|| format!("{variable} is required with ALIPAY_APP_ID"))
        };
        let private_key = file(&self.alipay_private_key_file, "ALIPAY_PRIVATE_KEY_FILE")?;
        let public_key = file(&self.alipay_public_key_file, "ALIPAY_PUBLIC_KEY_FILE")?;
        let config = AlipayConfig {
            gateway_url: self.alipay_gateway_url.clone(),
            app_id: app_id.clone(),
            merchant_private_key: PrivateKey::from_file(&private_key)
                .with_context(|| format!("ALIPAY_PRIVATE_KEY_FILE ({})", private_key.display()))?,
            alipay_public_key: PublicKey::from_file(&public_key)
                .with_context(|| format!("ALIPAY_PUBLIC_KEY_FILE ({})", public_key.display()))?,
        };
        Ok(Some(Arc::new(Alipay::new(config)?)))
    }
}

/// WeChat Pay's settings; WeChat Pay is offered when `WECHATPAY_MCHID` is set.
#[derive(Debug, Clone, clap::Args)]
pub struct WechatPayArgs {
    /// WeChat Pay API v3 base URL (the backup host: https://api2.mch.weixin.qq.com).
    #[arg(long, env = "WECHATPAY_BASE_URL", default_value = PRODUCTION_BASE_URL)]
    pub wechatpay_base_url: String,

    /// The merchant id (mchid); WeChat Pay is disabled when unset.
    #[arg(long, env = "WECHATPAY_MCHID")]
    pub wechatpay_mchid: Option<String>,

    /// The appid the orders belong to (official account, mini program or app bound to the
    /// merchant).
    #[arg(long, env = "WECHATPAY_APPID")]
    pub wechatpay_appid: Option<String>,

    /// File holding the merchant API private key (`apiclient_key.pem`, PEM).
    #[arg(long, env = "WECHATPAY_PRIVATE_KEY_FILE")]
    pub wechatpay_private_key_file: Option<std::path::PathBuf>,

    /// Serial number of the merchant API certificate (40 hex digits), sent as `serial_no`.
    #[arg(long, env = "WECHATPAY_MERCHANT_SERIAL")]
    pub wechatpay_merchant_serial: Option<String>,

    /// File holding the APIv3 key (the 32 characters set in the merchant platform), which
    /// decrypts notifications.
    #[arg(long, env = "WECHATPAY_APIV3_KEY_FILE")]
    pub wechatpay_apiv3_key_file: Option<std::path::PathBuf>,

    /// File holding the WeChat Pay platform public key (PEM) that signs answers and
    /// notifications.
    #[arg(long, env = "WECHATPAY_PLATFORM_PUBLIC_KEY_FILE")]
    pub wechatpay_platform_public_key_file: Option<std::path::PathBuf>,

    /// The platform public-key id (`PUB_KEY_ID_…`) or platform certificate serial that answers
    /// and notifications name in `Wechatpay-Serial`.
    #[arg(long, env = "WECHATPAY_PLATFORM_SERIAL")]
    pub wechatpay_platform_serial: Option<String>,
}

impl WechatPayArgs {
    /// The configured WeChat Pay provider, if `WECHATPAY_MCHID` is set.
    pub fn provider(&self) -> anyhow::Result<Option<Arc<dyn PaymentProvider>>> {
        let Some(mchid) = &self.wechatpay_mchid else {
            return Ok(None);
        };
        fn required<T: Clone>(value: &Option<T>, variable: &str) -> anyhow::Result<T> {
            value
                .clone()
                .with_context(|| format!("{variable} is required with WECHATPAY_MCHID"))
        }
        let private_key = required(
            &self.wechatpay_private_key_file,
            "WECHATPAY_PRIVATE_KEY_FILE",
        )?;
        let apiv3_key = required(&self.wechatpay_apiv3_key_file, "WECHATPAY_APIV3_KEY_FILE")?;
        let platform_key = required(
            &self.wechatpay_platform_public_key_file,
            "WECHATPAY_PLATFORM_PUBLIC_KEY_FILE",
        )?;
        let apiv3_text = std::fs::read_to_string(&apiv3_key)
            .with_context(|| format!("WECHATPAY_APIV3_KEY_FILE ({})", apiv3_key.display()))?;
        let config = WechatPayConfig {
            base_url: self.wechatpay_base_url.clone(),
            mchid: mchid.clone(),
            appid: required(&self.wechatpay_appid, "WECHATPAY_APPID")?,
            merchant_private_key: PrivateKey::from_file(&private_key).with_context(|| {
                format!("WECHATPAY_PRIVATE_KEY_FILE ({})", private_key.display())
            })?,
            merchant_serial: required(
                &self.wechatpay_merchant_serial,
                "WECHATPAY_MERCHANT_SERIAL",
            )?
            .trim()
            .to_owned(),
            apiv3_key: ApiV3Key::from_text(&apiv3_text)
                .with_context(|| format!("WECHATPAY_APIV3_KEY_FILE ({})", apiv3_key.display()))?,
            platform_public_key: PublicKey::from_file(&platform_key).with_context(|| {
                format!(
                    "WECHATPAY_PLATFORM_PUBLIC_KEY_FILE ({})",
                    platform_key.display()
                )
            })?,
            platform_serial: required(
                &self.wechatpay_platform_serial,
                "WECHATPAY_PLATFORM_SERIAL",
            )?
            .trim()
            .to_owned(),
        };
        Ok(Some(Arc::new(WechatPay::new(config)?)))
    }
}

impl BillingArgs {
    /// Authenticates callers through auth-svc with billing-svc's own API key.
    pub fn remote_authenticator(&self) -> anyhow::Result<Arc<Authenticator>> {
        self.callers
            .remote_authenticator(self.service_api_key.as_ref(), "BILLING_SERVICE_API_KEY")
    }

    /// The settings of the billing rules.
    pub fn settings(&self) -> Settings {
        Settings {
            checkout_expiry: TimeDelta::seconds(self.checkout_expiry_secs.into()),
            grace_period: TimeDelta::seconds(self.grace_period_secs.into()),
            public_url: self.public_url.clone(),
            default_return_url: self.return_url.clone(),
        }
    }

    /// The providers configured.
    pub fn providers(&self) -> anyhow::Result<Vec<Arc<dyn PaymentProvider>>> {
        Ok(self
            .alipay
            .provider()?
            .into_iter()
            .chain(self.wechatpay.provider()?)
            .collect())
    }

    /// The entitlement dispatcher's connection to quota-svc.
    pub fn dispatcher(&self, pool: PgPool, clock: Arc<dyn Clock>) -> anyhow::Result<Dispatcher> {
        let key = self
            .service_api_key
            .as_ref()
            .context("BILLING_SERVICE_API_KEY is required to deliver entitlements to quota-svc")?;
        Dispatcher::new(
            pool,
            clock,
            &self.quota_url,
            key.expose(),
            Duration::from_secs(self.outbox_max_backoff_secs.into()),
        )
    }
}

/// What billing-svc runs besides its handlers.
pub struct Workers {
    pub dispatcher: Dispatcher,
    /// Time between two lifecycle rounds.
    pub lifecycle_every: Duration,
}

/// The tonic routes billing-svc serves; starts the entitlement dispatcher and the lifecycle
/// worker, so it needs a tokio runtime.
pub fn routes(
    billing: Arc<Billing>,
    authenticator: Arc<Authenticator>,
    workers: Workers,
) -> anyhow::Result<Routes> {
    tokio::spawn(dispatch::run(
        workers.dispatcher,
        Arc::downgrade(&billing),
        billing.outbox_written(),
    ));
    tokio::spawn(lifecycle::run(
        Arc::downgrade(&billing),
        workers.lifecycle_every,
    ));
    Ok(Routes::new(BillingServiceServer::new(BillingApi {
        billing,
        auth: authenticator,
    })))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::sim::{test_keys, wechat};

    /// WeChat Pay's settings over the development files of a fresh directory.
    fn wechatpay_args(dir: &std::path::Path) -> WechatPayArgs {
        let files = wechat::KEY_FILES;
        // As a file gives them: with a final newline, which is not part of a serial.
        let serial = |name: &str| {
            Some(format!(
                "{}\n",
                std::fs::read_to_string(dir.join(name)).unwrap()
            ))
        };
        WechatPayArgs {
            wechatpay_base_url: PRODUCTION_BASE_URL.to_owned(),
            wechatpay_mchid: Some("1900000109".to_owned()),
            wechatpay_appid: Some("wxd678efh567hg6787".to_owned()),
            wechatpay_private_key_file: Some(dir.join(files.merchant_private)),
            wechatpay_merchant_serial: serial(files.merchant_serial),
            wechatpay_apiv3_key_file: Some(dir.join(files.apiv3_key)),
            wechatpay_platform_public_key_file: Some(dir.join(files.platform_public)),
            wechatpay_platform_serial: serial(files.platform_serial),
        }
    }

    #[test]
    fn wechat_pay_is_configured_from_its_files_and_names_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("wechatpay-args-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Existing keys are kept, which spares generating two in a debug build.
        let keys = test_keys();
        keys.merchant
            .write_pem(&dir.join(wechat::KEY_FILES.merchant_private))
            .unwrap();
        keys.alipay
            .write_pem(&dir.join(wechat::KEY_FILES.platform_private))
            .unwrap();
        wechat::write_dev_keys(&dir).unwrap();
        let args = wechatpay_args(&dir);

        let provider = args.provider().unwrap().unwrap();
        assert_eq!(provider.provider(), crate::domain::Provider::WechatPay);
        let disabled = WechatPayArgs {
            wechatpay_mchid: None,
            ..args.clone()
        };
        assert!(disabled.provider().unwrap().is_none());
        let no_appid = WechatPayArgs {
            wechatpay_appid: None,
            ..args.clone()
        };
        let err = no_appid.provider().err().unwrap();
        assert!(err.to_string().contains("WECHATPAY_APPID"), "{err}");
        std::fs::write(dir.join("short-key"), "too short").unwrap();
        let short_key = WechatPayArgs {
            wechatpay_apiv3_key_file: Some(dir.join("short-key")),
            ..args
        };
        let err = format!("{:#}", short_key.provider().err().unwrap());
        assert!(err.contains("WECHATPAY_APIV3_KEY_FILE"), "{err}");
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains("too short"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
