//! demo-backend: the tiny HTTP service `just up` puts behind the edge's protected route `/demo`
//! (deploy/routes.toml), so the gateway can be tried with curl. It trusts the identity headers
//! the edge sets, which is only safe because nothing but the edge can reach it (it listens on
//! loopback).

use std::{net::SocketAddr, process::ExitCode};

use axum::{
    Json, Router,
    body::Body,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// demo-backend: an HTTP service that echoes who the edge says is calling.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// HTTP listen address (keep it private: the edge is the only client it should have).
    #[arg(long, env = "DEMO_BACKEND_ADDR", default_value = "127.0.0.1:9090")]
    listen_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    kit::telemetry::init_tracing();
    let cli = Cli::parse();
    kit::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/hello", get(hello))
        .route("/digest", post(digest))
        .route("/fail", get(fail));
    let listener = tokio::net::TcpListener::bind(cli.listen_addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding {}: {err}", cli.listen_addr))?;
    tracing::info!(addr = %cli.listen_addr, "demo-backend serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(kit::shutdown::signal())
        .await?;
    Ok(())
}

/// The identity the edge passed on.
fn caller(headers: &HeaderMap) -> Value {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    json!({
        "userId": header("x-user-id"),
        "scopes": header("x-scopes").map(|scopes| scopes.split(',').collect::<Vec<_>>()),
        "requestId": header("x-request-id"),
    })
}

/// `GET /hello`: who is calling.
async fn hello(headers: HeaderMap) -> Json<Value> {
    Json(json!({ "hello": caller(&headers) }))
}

/// `POST /digest`: a little work on the body, read as it streams in: its size and SHA-256.
async fn digest(headers: HeaderMap, body: Body) -> Result<Json<Value>, StatusCode> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Json(json!({
        "caller": caller(&headers),
        "bytes": bytes,
        "sha256": sha256,
    })))
}

/// `GET /fail`: a failing backend, to watch the edge give the units back.
async fn fail() -> (StatusCode, Json<Value>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "the demo backend failed on purpose" })),
    )
}
