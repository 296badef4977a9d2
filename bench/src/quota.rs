//! The quota-svc fixture the quota and edge benches share: a fresh database cloned from the
//! migrated quota template, kit's test issuer serving JWKS/VerifyApiKey, the service's own key and
//! the load generator's, and the release quota-svc binary started over them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kit::testing::{AuthServer, Binary, TestDb, TestIssuer, wait_for_health};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, MetricLimit, quota_service_client::QuotaServiceClient,
};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

/// The metric every bench consumes.
pub const METRIC: &str = "bench.calls";
/// Large enough that no case runs out: every call is a real consume.
pub const LIMIT: i64 = 1_000_000_000_000;

/// The flags the quota-svc load generators share, flattened into each one's own.
#[derive(Debug, Clone, clap::Args)]
pub struct QuotaRun {
    /// The quota-svc binary to start (`cargo build --release -p quota-svc`).
    #[arg(long, env = "QUOTA_BIN", default_value = "target/release/quota-svc")]
    pub quota_bin: PathBuf,
    /// Seconds each timed case runs, after its warm-up.
    #[arg(long, env = "BENCH_DURATION_SECS", default_value_t = 5)]
    pub duration_secs: u64,
}

impl QuotaRun {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }
}

/// A database, a test auth server and the keys a bench's quota-svc and load generator use.
pub struct Fixture {
    pub db: TestDb,
    pub issuer: Arc<TestIssuer>,
    pub auth: AuthServer,
    /// quota-svc's own service key (QUOTA_SERVICE_API_KEY).
    pub own_key: String,
    /// The load generator's key: a service that may consume and read for any subject.
    pub bench_key: String,
}

impl Fixture {
    pub async fn start() -> Self {
        let db = TestDb::new(&[(quota_svc::SPEC.name, quota_svc::MIGRATIONS)]).await;
        let issuer = Arc::new(TestIssuer::new());
        let auth = AuthServer::start(issuer.clone()).await;
        let own_key = issuer.add_api_key(Uuid::now_v7(), &["service"], &["service"]);
        let bench_key = issuer.add_api_key(
            Uuid::now_v7(),
            &["service", "quota:consume", "quota:read"],
            &["service"],
        );
        Self {
            db,
            issuer,
            auth,
            own_key,
            bench_key,
        }
    }

    /// Starts `quota_bin` on a free port over this fixture's database and auth, quiet but for
    /// warnings, with `env` on top.
    pub fn start_quota(&self, quota_bin: &Path, env: &[(&str, &str)]) -> Binary {
        let auth_url = self.auth.url();
        let mut all = vec![
            ("AUTH_URL", auth_url.as_str()),
            ("QUOTA_SERVICE_API_KEY", self.own_key.as_str()),
            ("RUST_LOG", "warn"),
        ];
        all.extend_from_slice(env);
        Binary::start(quota_bin, "QUOTA", self.db.url(), &all)
    }

    /// The load generator's key as gRPC metadata.
    pub fn bench_key_metadata(&self) -> anyhow::Result<MetadataValue<Ascii>> {
        self.bench_key
            .parse()
            .map_err(|_| anyhow::anyhow!("the API key is not header text"))
    }
}

/// `connections` lazily connected channels to `server`, once its health check says it serves.
pub async fn serving_channels(server: &Binary, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let url = format!("http://{}", server.addr);
    let channels: Vec<Channel> = (0..connections.max(1))
        .map(|_| Channel::from_shared(url.clone()).map(|endpoint| endpoint.connect_lazy()))
        .collect::<Result<_, _>>()?;
    wait_for_health(
        &channels[0],
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    Ok(channels)
}

/// [`METRIC`] limited to [`LIMIT`].
pub fn limit() -> MetricLimit {
    MetricLimit {
        metric: METRIC.to_owned(),
        limit: LIMIT,
        unlimited: false,
    }
}

/// Gives every subject without a plan [`limit`] (the default tier), so any new subject can
/// consume; version 1, so once per quota-svc database.
pub async fn apply_default_tier(
    client: &mut QuotaServiceClient<Channel>,
    key: &MetadataValue<Ascii>,
) -> anyhow::Result<()> {
    let mut request = Request::new(ApplyDefaultEntitlementsRequest {
        limits: vec![limit()],
        version: 1,
    });
    request.metadata_mut().insert("x-api-key", key.clone());
    client.apply_default_entitlements(request).await?;
    Ok(())
}
