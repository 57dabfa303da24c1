//! `GET /docs`: the API reference page, Swagger UI rendering `/openapi.json`. Its assets are in
//! the binary (vendored in `assets/swagger-ui`), and its Content-Security-Policy lets the browser
//! load nothing from another origin.

use crate::state::AppState;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("../../assets/reference.html");
const INIT: &str = include_str!("../../assets/reference.js");
const BUNDLE: &str = include_str!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../../assets/swagger-ui/swagger-ui.css");

/// Same origin only; Swagger UI sets inline styles and draws icons from `data:` URLs.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'";

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/docs", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route("/docs/reference.js", get(|| asset("text/javascript", INIT)))
        .route("/docs/swagger-ui-bundle.js", get(|| asset("text/javascript", BUNDLE)))
        .route("/docs/swagger-ui.css", get(|| asset("text/css", CSS)))
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            // The assets change only with the binary; an hour spares reloads without going stale.
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}
