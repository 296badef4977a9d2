//! The edge in front of an existing HTTP backend (protected routes, `EDGE_ROUTES`): auth-svc,
//! quota-svc and the edge as real binaries, a test backend in this process that records what it
//! is sent, and curl as the client. Identity headers reach the backend and forged ones never do;
//! quota is charged once per request id and given back when the backend fails or cannot be
//! reached; 50 MB stream through both ways while the edge's memory stays flat.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    routing::{any, get, put},
};
use futures::StreamExt;
use kit::testing::{
    Binary, SignedUp, TestDb, curl_post, free_port, issue_service_key, sign_up, start_auth_svc,
    with_api_key, workspace_binary,
};
use proto::quota::{
    ApplyDefaultEntitlementsRequest, MetricLimit, quota_service_client::QuotaServiceClient,
};
use serde_json::{Value, json};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const METRIC: &str = "api.requests";
const FREE_LIMIT: i64 = 6;
const FIFTY_MB: u64 = 50 * 1024 * 1024;

/// The backend behind the edge: it keeps the headers of every request it is sent.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<HeaderMap>>>);

impl Seen {
    fn all(&self) -> Vec<HeaderMap> {
        self.0.lock().unwrap().clone()
    }
}

/// Starts the backend on its own thread and runtime (curl blocks the test's threads) and
/// returns its address.
fn start_backend(seen: Seen) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let remember = |State(seen): State<Seen>, headers: HeaderMap| async move {
        seen.0.lock().unwrap().push(headers);
    };
    let app = Router::new()
        .route("/echo", any(remember))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "backend broke") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "too late"
            }),
        )
        .route("/upload", put(count_upload))
        .route("/download", get(download))
        .with_state(seen);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// Reads the upload as it streams in and answers its size.
async fn count_upload(body: Body) -> String {
    let mut stream = body.into_data_stream();
    let mut bytes = 0;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.unwrap().len();
    }
    bytes.to_string()
}

/// `?bytes=N`: N bytes, made as they are sent.
async fn download(Query(query): Query<std::collections::HashMap<String, u64>>) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let total = query["bytes"];
    let chunks = (0..total.div_ceil(CHUNK)).map(move |index| {
        let size = CHUNK.min(total - index * CHUNK);
        Ok::<_, std::io::Error>(vec![b'x'; usize::try_from(size).unwrap()])
    });
    Body::from_stream(futures::stream::iter(chunks))
}

/// An answer as curl saw it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn number(&self, name: &str) -> i64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .parse()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// curl with `args`, keeping the status, the headers and the body.
fn curl(args: &[&str]) -> Answer {
    let output = Command::new("curl")
        .args(["-sS", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    // An upload's `100 Continue` comes first; the answer is what follows it.
    while text.starts_with("HTTP/1.1 100")
        && let Some((_, rest)) = text.split_once("\r\n\r\n")
    {
        text = rest.to_owned();
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status from curl {args:?}: {text}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The mesh with an edge serving `routes` (a TOML text; `{backend}` stands for the backend's
/// address), and a verified, signed-in user.
struct Mesh {
    _db: TestDb,
    auth: Binary,
    _quota: Binary,
    edge: Binary,
    edge_admin: String,
    base: String,
    /// `authorization: Bearer …` of the user.
    bearer: String,
    user_id: String,
}

impl Mesh {
    async fn start(routes: &str, backend: SocketAddr) -> Self {
        let db = TestDb::new(&[]).await;
        let auth = start_auth_svc(db.url(), MASTER_KEY);
        let auth_url = format!("http://{}", auth.addr);
        let key =
            |service: &str, scopes: &str| issue_service_key(db.url(), MASTER_KEY, service, scopes);
        let quota_key = key("quota-svc", "service");
        let billing_key = key("billing-svc", "service");
        let edge_key = key("edge-proxy", "service");
        // The gateway charges with a key that can do nothing else.
        let gateway_key = key("edge-gateway", "quota:consume");
        let quota = Binary::start(
            &workspace_binary("quota-svc"),
            "QUOTA",
            db.url(),
            &[
                ("AUTH_URL", &auth_url),
                ("QUOTA_SERVICE_API_KEY", &quota_key),
            ],
        );
        let quota_url = format!("http://{}", quota.addr);
        apply_free_tier(&quota_url, &billing_key).await;
        let routes_file = std::env::temp_dir().join(format!("edge-routes-{}.toml", free_port()));
        std::fs::write(
            &routes_file,
            routes.replace("{backend}", &backend.to_string()),
        )
        .unwrap();
        let edge_admin = format!("127.0.0.1:{}", free_port());
        let edge = Binary::start(
            &workspace_binary("edge-proxy"),
            "EDGE",
            "",
            &[
                ("EDGE_AUTH_UPSTREAM", &auth_url),
                ("EDGE_QUOTA_UPSTREAM", &quota_url),
                ("EDGE_SERVICE_KEY", &edge_key),
                ("EDGE_QUOTA_API_KEY", &gateway_key),
                ("EDGE_ROUTES", routes_file.to_str().unwrap()),
                ("EDGE_ADMIN_ADDR", &edge_admin),
            ],
        );
        let base = format!("http://{}", edge.addr);
        let SignedUp { user_id, bearer } = sign_up(&auth, &base, "ada");
        Self {
            _db: db,
            auth,
            _quota: quota,
            edge,
            edge_admin,
            base,
            bearer,
            user_id,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The user's units of METRIC used this month, as quota-svc says.
    fn used(&self) -> i64 {
        let (status, quota) = kit::testing::curl(&[
            "-H",
            &self.bearer,
            &self.url(&format!("/v1/quotas/{METRIC}")),
        ]);
        assert_eq!(status, 200, "{quota}");
        quota["quota"]["used"].as_str().unwrap().parse().unwrap()
    }

    /// A new API key of the user with `scopes`, as `x-api-key: …`.
    fn api_key(&self, scopes: &[&str]) -> String {
        let (status, created) = curl_post(
            &self.url("/v1/api-keys"),
            &["-H", &self.bearer],
            &json!({"name": "test", "scopes": scopes}),
        );
        assert_eq!(status, 200, "{created}");
        format!("x-api-key: {}", created["secret"].as_str().unwrap())
    }
}

/// The free tier: FREE_LIMIT units of METRIC a month, set as billing-svc sets it (retried while
/// quota-svc is still migrating).
async fn apply_free_tier(quota_url: &str, billing_key: &str) {
    let mut client = QuotaServiceClient::new(
        tonic::transport::Channel::from_shared(quota_url.to_owned())
            .unwrap()
            .connect_lazy(),
    );
    let mut last = None;
    for _ in 0..100 {
        let request = ApplyDefaultEntitlementsRequest {
            limits: vec![MetricLimit {
                metric: METRIC.to_owned(),
                limit: FREE_LIMIT,
                unlimited: false,
            }],
            version: 1,
        };
        match client
            .apply_default_entitlements(with_api_key(billing_key, request))
            .await
        {
            Ok(_) => return,
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the free tier was never applied: {last:?}");
}

const ROUTES: &str = r#"
[[route]]
prefix = "/app"
upstream = "http://{backend}"
credentials = ["jwt", "api_key"]
scope = "quota:consume"
metric = "api.requests"
strip_prefix = true

[[route]]
prefix = "/readers"
upstream = "http://{backend}"
credentials = ["api_key"]
scope = "quota:read"
strip_prefix = true

[[route]]
prefix = "/slow"
upstream = "http://{backend}"
credentials = ["jwt"]
scope = "quota:consume"
metric = "api.requests"
cost = 2
timeout_ms = 500
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_route_charges_once_forwards_the_identity_and_refunds_failures() {
    let seen = Seen::default();
    let backend = start_backend(seen.clone());
    let nobody = free_port();
    let routes = format!(
        "{ROUTES}\n[[route]]\nprefix = \"/down\"\nupstream = \"http://127.0.0.1:{nobody}\"\n\
         credentials = [\"jwt\"]\nscope = \"quota:consume\"\nmetric = \"api.requests\"\n"
    );
    let mesh = Mesh::start(&routes, backend).await;
    let bearer = mesh.bearer.as_str();

    // No credentials: 401 in the edge's JSON error body; the backend hears nothing.
    let anonymous = curl(&[&mesh.url("/app/echo")]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.json()["status"], "UNAUTHENTICATED");
    assert!(anonymous.header("x-request-id").is_some());
    assert!(seen.all().is_empty());

    // A signed-in user who claims to be someone else with more scopes, from elsewhere.
    let forged = [
        "-H",
        bearer,
        "-H",
        "x-user-id: 00000000-0000-7000-8000-000000000000",
        "-H",
        "X-Scopes: admin,service",
        "-H",
        "x-forwarded-for: 6.6.6.6",
        "-H",
        "x-request-id: req-1",
    ];
    let first = curl(&[&forged[..], &[&mesh.url("/app/echo")]].concat());
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-request-id"), Some("req-1"));
    assert_eq!(first.number("x-quota-limit"), FREE_LIMIT);
    assert_eq!(first.number("x-quota-remaining"), FREE_LIMIT - 1);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reset = u64::try_from(first.number("x-quota-reset")).unwrap();
    assert!(reset > now && reset <= now + 32 * 86_400, "{reset}");
    let sent = seen.all();
    assert_eq!(sent.len(), 1);
    let values = |name: &str| -> Vec<String> {
        sent[0]
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values("x-user-id"), [mesh.user_id.as_str()]);
    let scopes = values("x-scopes");
    assert_eq!(scopes.len(), 1);
    assert!(scopes[0].split(',').any(|scope| scope == "quota:consume"));
    assert!(!scopes[0].contains("admin") && !scopes[0].contains("service"));
    assert_eq!(values("x-request-id"), ["req-1"]);
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"]);
    assert!(
        values("authorization").is_empty(),
        "the token was passed on"
    );

    // The client retries with the same request id: forwarded again, charged once.
    let retried = curl(&[&forged[..], &[&mesh.url("/app/echo")]].concat());
    assert_eq!(retried.status, 200);
    assert_eq!(retried.number("x-quota-remaining"), FREE_LIMIT - 1);
    assert_eq!(seen.all().len(), 2);
    assert_eq!(mesh.used(), 1);

    // The backend answers 500: passed on as it is, and the unit comes back.
    let failed = curl(&["-H", bearer, &mesh.url("/app/fail")]);
    assert_eq!(failed.status, 500);
    assert_eq!(failed.body, "backend broke");
    assert_eq!(failed.number("x-quota-remaining"), FREE_LIMIT - 1);
    assert_eq!(mesh.used(), 1);

    // Nothing listens upstream: 502 with the JSON body, refunded.
    let down = curl(&["-H", bearer, &mesh.url("/down/anything")]);
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(down.json()["status"], "UNAVAILABLE");
    assert_eq!(mesh.used(), 1);
    // The upstream takes longer than the route's 500 ms: 504, refunded (both units).
    let slow = curl(&["-H", bearer, &mesh.url("/slow")]);
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.json()["status"], "DEADLINE_EXCEEDED");
    assert_eq!(mesh.used(), 1);

    // A path that steps out of the prefix is refused before anything is charged.
    let escape = curl(&["--path-as-is", "-H", bearer, &mesh.url("/app/../v1/quotas")]);
    assert_eq!(escape.status, 400, "{}", escape.body);
    assert_eq!(escape.json()["status"], "INVALID_ARGUMENT");
    assert_eq!(mesh.used(), 1);

    // Credentials and scopes per route: /readers takes API keys only; /app needs quota:consume.
    let token_refused = curl(&["-H", bearer, &mesh.url("/readers/echo")]);
    assert_eq!(token_refused.status, 401, "{}", token_refused.body);
    let reader = mesh.api_key(&["quota:read"]);
    let read = curl(&["-H", &reader, &mesh.url("/readers/echo")]);
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.header("x-quota-limit").is_none(), "a free route");
    let last_scopes = seen.all().last().unwrap()["x-scopes"].clone();
    assert_eq!(last_scopes, "quota:read");
    let scope_refused = curl(&["-H", &reader, &mesh.url("/app/echo")]);
    assert_eq!(scope_refused.status, 403, "{}", scope_refused.body);
    assert_eq!(scope_refused.json()["status"], "PERMISSION_DENIED");
    let bad_key = curl(&["-H", "x-api-key: cmk_made_up", &mesh.url("/app/echo")]);
    assert_eq!(bad_key.status, 401, "{}", bad_key.body);
    assert_eq!(mesh.used(), 1);

    // The rest of the month's units, then 429 with when to come back.
    let writer = mesh.api_key(&["quota:consume"]);
    for left in (0..FREE_LIMIT - 1).rev() {
        let spent = curl(&["-H", &writer, &mesh.url("/app/echo")]);
        assert_eq!(spent.status, 200, "{}", spent.body);
        assert_eq!(spent.number("x-quota-remaining"), left);
    }
    let over = curl(&["-H", &writer, &mesh.url("/app/echo")]);
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.json()["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(over.number("x-quota-limit"), FREE_LIMIT);
    assert_eq!(over.number("x-quota-remaining"), 0);
    let retry_after = over.number("retry-after");
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        (over.number("x-quota-reset") - retry_after - i64::try_from(now).unwrap()).abs() < 60,
        "Retry-After counts to the reset"
    );
    assert_eq!(mesh.used(), FREE_LIMIT);

    // Counted by the configured prefix, whatever the path under it.
    let (_, metrics) = kit::testing::curl(&[&format!("http://{}/metrics", mesh.edge_admin)]);
    let metrics = metrics.as_str().unwrap().to_owned();
    let count = |labels: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with("edge_requests_total") && line.contains(labels))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count(r#"route="/app",status="200""#), 7.0, "{metrics}");
    assert_eq!(count(r#"route="/app",status="429""#), 1.0, "{metrics}");
    assert_eq!(count(r#"route="/down",status="502""#), 1.0, "{metrics}");
    assert!(!metrics.contains("/app/echo"), "{metrics}");
    drop(mesh.auth);
}

/// The edge's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(edge: &Binary) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", edge.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_up_and_down_without_the_edge_buffering_them() {
    let backend = start_backend(Seen::default());
    let mesh = Mesh::start(ROUTES, backend).await;
    let bearer = mesh.bearer.as_str();
    // Connections, caches and the key verified once, before the peak is read.
    let warm = curl(&["-H", bearer, &mesh.url("/app/echo")]);
    assert_eq!(warm.status, 200, "{}", warm.body);
    let before = peak_rss(&mesh.edge);

    let file = std::env::temp_dir().join(format!("gateway-upload-{}", free_port()));
    std::fs::write(&file, vec![b'u'; usize::try_from(FIFTY_MB).unwrap()]).unwrap();
    let uploaded = curl(&[
        "-H",
        bearer,
        "-T",
        file.to_str().unwrap(),
        &mesh.url("/app/upload"),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(uploaded.status, 200, "{}", uploaded.body);
    assert_eq!(uploaded.body, FIFTY_MB.to_string());

    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .args(["-H", bearer])
        .arg(mesh.url(&format!("/app/download?bytes={FIFTY_MB}")))
        .output()
        .unwrap();
    let downloaded = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(downloaded, format!("200 {FIFTY_MB}"));

    let grown = peak_rss(&mesh.edge).saturating_sub(before);
    assert!(
        grown < 16 * 1024 * 1024,
        "the edge's peak memory grew by {} MiB over 50 MB each way",
        grown / (1024 * 1024)
    );
    assert_eq!(mesh.used(), 3);
}
