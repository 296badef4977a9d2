//! The edge's description of itself, through the real binary: `/openapi.json` lists every REST
//! route of the contracts and is valid OpenAPI 3.1 (openapi-spec-validator), `/docs` serves Swagger
//! UI from the binary and renders the operations in headless Chromium, and schemathesis finds
//! every answer of a running mesh (auth-svc, quota-svc, billing-svc, edge) within the document.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "tests, which print a skipped check, the screenshot's path and schemathesis' counts"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use kit::testing::{
    Binary, TestDb, curl_post, issue_service_key, start_auth_svc, workspace_binary,
};
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn start_edge(env: &[(&str, &str)]) -> Binary {
    let mut env = env.to_vec();
    env.push(("EDGE_SERVICE_KEY", "cmk_unused"));
    Binary::start(env!("CARGO_BIN_EXE_edge-proxy").as_ref(), "EDGE", "", &env)
}

/// GET `url`: (status, content type, body).
fn get(url: &str) -> (u16, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code} %{content_type}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (status, content_type) = tail.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        content_type.to_owned(),
        body.to_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("edge-openapi-{}-{name}", std::process::id()))
}

/// openapi-spec-validator on `document` (installed by deploy/dev/test-tools.sh).
fn validate(document: &Value, name: &str) -> Output {
    let file = scratch(name);
    std::fs::write(&file, document.to_string()).unwrap();
    Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .expect("python3 with openapi-spec-validator (deploy/dev/test-tools.sh)")
}

#[test]
fn the_document_lists_every_annotated_rpc_and_is_valid_openapi_3_1() {
    let edge = start_edge(&[]);
    let (status, content_type, body) = get(&format!("http://{}/openapi.json", edge.addr));
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let document: Value = serde_json::from_str(&body).unwrap();

    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let routes = edge_proxy::routes::from_pool(&pool).unwrap();
    assert!(routes.len() > 40, "{} routes", routes.len());
    for route in &routes {
        let operation = &document["paths"][route.openapi_path()]
            [route.http_method.as_str().to_ascii_lowercase()];
        let id = format!(
            "{}_{}",
            route.method.parent_service().name(),
            route.method.name()
        );
        assert!(
            operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&id),
            "{} {} missing: {operation}",
            route.http_method,
            route.openapi_path()
        );
    }
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|methods| methods.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, routes.len(), "operations beyond the routes");
    // The additional binding of Refund is a route of its own.
    assert_eq!(
        document["paths"]["/v1/usage:refund"]["post"]["operationId"],
        "QuotaService_Refund_2"
    );

    // Security as the contracts' `Auth:` lines say.
    let security = |path: &str, method: &str| document["paths"][path][method]["security"].clone();
    assert_eq!(security("/v1/auth/register", "post"), json!([]));
    assert_eq!(
        security("/v1/users/me", "get"),
        json!([{ "bearerAuth": [] }])
    );
    assert_eq!(
        security("/v1/quotas/{metric}:consume", "post"),
        json!([{ "bearerAuth": [] }, { "apiKeyAuth": [] }])
    );
    assert_eq!(
        security("/v1/plans", "get"),
        json!([{}, { "bearerAuth": [] }, { "apiKeyAuth": [] }])
    );

    // Operations carry their comments, parameters and proto3 JSON schemas.
    let consume = &document["paths"]["/v1/quotas/{metric}:consume"]["post"];
    assert_eq!(
        consume["summary"],
        "Atomically checks and consumes `amount` units of a metric."
    );
    assert_eq!(consume["parameters"][0]["name"], "metric");
    assert_eq!(consume["parameters"][0]["in"], "path");
    let body = &consume["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["idempotencyKey"].is_object(), "{body}");
    assert!(body["properties"].get("metric").is_none(), "{body}");
    let schemas = &document["components"]["schemas"];
    let consumed = &schemas["commerce.quota.v1.ConsumeResponse"]["properties"];
    assert_eq!(consumed["limit"]["type"], "string");
    assert_eq!(consumed["resetsAt"]["format"], "date-time");
    assert_eq!(
        schemas["commerce.billing.v1.PaymentStatus"]["enum"][2],
        "PAYMENT_STATUS_SUCCEEDED"
    );
    let payment = schemas["commerce.billing.v1.Payment"]["description"]
        .as_str()
        .unwrap();
    assert!(
        payment.contains("At most one of `redirectUrl`, `qrCodeUrl`"),
        "{payment}"
    );
    let usage_query: Vec<&str> = document["paths"]["/v1/usage"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect();
    assert_eq!(usage_query, ["metric", "from", "to", "bucket", "subject"]);
    let webhook = &document["paths"]["/v1/webhooks/{provider}"]["post"];
    assert!(
        webhook["requestBody"]["content"]["*/*"].is_object(),
        "{webhook}"
    );
    assert!(
        webhook["responses"]["200"]["content"]["text/plain"].is_object(),
        "{webhook}"
    );
    assert_eq!(
        document["paths"]["/v1/plans"]["get"]["responses"]["default"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Error"
    );

    let checked = validate(&document, "openapi.json");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The validator does refuse a broken document: a parameter in a place OpenAPI 3 has not.
    let mut broken = document.clone();
    broken["paths"]["/v1/plans"]["get"]["parameters"][0]["in"] = json!("body");
    assert!(!validate(&broken, "broken.json").status.success());
}

#[test]
fn docs_serve_swagger_ui_from_the_binary_and_render_the_operations() {
    let edge = start_edge(&[]);
    let base = format!("http://{}", edge.addr);
    let redirect = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(format!("{base}/docs"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&redirect.stdout),
        format!("308 {base}/docs/")
    );
    let (status, content_type, page) = get(&format!("{base}/docs/"));
    assert_eq!((status, content_type.as_str()), (200, "text/html"));
    assert!(page.contains("swagger-ui-bundle.js"), "{page}");
    let (status, _, initializer) = get(&format!("{base}/docs/swagger-initializer.js"));
    assert_eq!(status, 200);
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    let (status, content_type, bundle) = get(&format!("{base}/docs/swagger-ui-bundle.js"));
    assert_eq!((status, content_type.as_str()), (200, "text/javascript"));
    assert!(bundle.len() > 100_000, "{} bytes", bundle.len());
    assert_eq!(get(&format!("{base}/docs/no-such-file.js")).0, 404);

    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        println!("skipping the rendering check: /usr/bin/chromium is not installed");
        return;
    }
    let browse = |extra: &[&str]| {
        let output = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1280,2400",
                "--virtual-time-budget=15000",
            ])
            .args(extra)
            .arg(format!("{base}/docs/"))
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "chromium failed: {complaints}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // The page as rendered: Swagger UI fetched the document and lists the operations.
    let dom = browse(&["--dump-dom"]);
    for shown in ["/v1/auth/register", "Creates an account.", "QuotaService"] {
        assert!(dom.contains(shown), "{shown} not rendered:\n{dom}");
    }
    let screenshot = scratch("docs.png");
    browse(&[&format!("--screenshot={}", screenshot.display())]);
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    println!("screenshot of /docs: {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_of_the_mesh_in_the_document() {
    let db = TestDb::new(&[]).await;
    let auth = start_auth_svc(db.url(), MASTER_KEY);
    let auth_url = format!("http://{}", auth.addr);
    let service_key = |service| issue_service_key(db.url(), MASTER_KEY, service, "service");
    let quota = Binary::start(
        &workspace_binary("quota-svc"),
        "QUOTA",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("QUOTA_SERVICE_API_KEY", &service_key("quota-svc")),
        ],
    );
    let quota_url = format!("http://{}", quota.addr);
    // No payment provider configured: checkouts are FAILED_PRECONDITION, everything else is real.
    let billing = Binary::start(
        &workspace_binary("billing-svc"),
        "BILLING",
        db.url(),
        &[
            ("AUTH_URL", &auth_url),
            ("QUOTA_URL", &quota_url),
            ("BILLING_SERVICE_API_KEY", &service_key("billing-svc")),
        ],
    );
    let billing_url = format!("http://{}", billing.addr);
    let edge = Binary::start(
        env!("CARGO_BIN_EXE_edge-proxy").as_ref(),
        "EDGE",
        "",
        &[
            ("EDGE_AUTH_UPSTREAM", &auth_url),
            ("EDGE_QUOTA_UPSTREAM", &quota_url),
            ("EDGE_BILLING_UPSTREAM", &billing_url),
            ("EDGE_SERVICE_KEY", &service_key("edge-proxy")),
        ],
    );
    let base = format!("http://{}", edge.addr);
    let (status, login) = curl_post(
        &format!("{base}/v1/auth/register"),
        &[],
        &json!({"email": "ada@example.org", "username": "ada", "password": "correct horse battery staple 42"}),
    );
    assert_eq!(status, 200, "{login}");
    let (status, login) = curl_post(
        &format!("{base}/v1/auth/login"),
        &[],
        &json!({"usernameOrEmail": "ada", "password": "correct horse battery staple 42"}),
    );
    assert_eq!(status, 200, "{login}");
    let bearer = format!(
        "Authorization: Bearer {}",
        login["accessToken"].as_str().unwrap()
    );

    for (caller, credentials) in [
        ("anonymous", &[][..]),
        ("signed in", &["-H", bearer.as_str()][..]),
    ] {
        let run = tokio::process::Command::new("schemathesis")
            .args(["run", &format!("{base}/openapi.json")])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,\
                 content_type_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "20",
                "--seed",
                "14",
                // One: Hypothesis' lambda descriptions race in CPython 3.11's parser across
                // threads ("AST constructor recursion depth mismatch"), failing a run for nothing.
                "--workers",
                "1",
                "--request-timeout",
                "20",
            ])
            .args(credentials)
            .env("NO_COLOR", "1")
            // Its example cache goes to the working directory: not into the repository.
            .current_dir(std::env::temp_dir())
            .output()
            .await
            .expect("schemathesis (deploy/dev/test-tools.sh)");
        let report = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "schemathesis, {caller}:\n{report}\n{}\nedge log:\n{}",
            String::from_utf8_lossy(&run.stderr),
            edge.log()
        );
        let counted = report.lines().find(|line| line.contains(" generated, "));
        println!(
            "schemathesis, {caller}: {}",
            counted.unwrap_or_default().trim()
        );
    }
}
