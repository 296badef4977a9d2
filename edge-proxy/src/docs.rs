//! `GET /docs`: Swagger UI on the edge's own `/openapi.json`. Its assets are compiled into the
//! binary (utoipa-swagger-ui's vendored copy), so the page works without any network.

use std::sync::{Arc, LazyLock};

use axum::{
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use utoipa_swagger_ui::Config;

static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    // No validator: Swagger UI would send the document to swagger.io's online one.
    Arc::new(Config::from("/openapi.json").validator_url("none"))
});

/// `/docs` → `/docs/`, where the page's relative asset links resolve.
pub async fn to_page() -> Redirect {
    Redirect::permanent("/docs/")
}

/// The Swagger UI page.
pub async fn page() -> Response {
    file("index.html")
}

/// One of its scripts, stylesheets or images.
pub async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}

fn file(name: &str) -> Response {
    match utoipa_swagger_ui::serve(name, CONFIG.clone()) {
        Ok(Some(file)) => (
            [(header::CONTENT_TYPE, file.content_type)],
            file.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            tracing::error!(%err, "serving Swagger UI");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
