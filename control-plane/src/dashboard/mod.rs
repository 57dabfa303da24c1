//! The dashboard, served at `/`: server-rendered pages (askama templates, checked at build time)
//! and one small script, all in the binary; no page loads anything from another origin.
//!
//! Pages read the store directly; the page's script changes things through the public API
//! (the same handlers, errors and per-account isolation as curl), authenticated by the session
//! cookie and its CSRF header instead of a key. See `session` for the cookie and CSRF rules.

mod keys;
mod pages;
mod pool;
pub mod session;

use crate::state::AppState;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");

/// Same origin only, no inline script or style; recordings play from `blob:` URLs.
const CSP: &str = "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/sign-out", post(pages::sign_out))
        .route("/voices", get(pages::voices))
        .route("/playground", get(pages::playground))
        .route("/playground/generations", post(pages::enqueue))
        .route("/queue", get(pages::queue))
        .route("/keys", get(keys::page).post(keys::create))
        .route("/keys/revoke", post(keys::revoke))
        .route("/pool", get(pool::page))
        .route("/pool/unlock", post(pool::unlock))
        .route("/assets/dashboard.js", get(|| asset("text/javascript", SCRIPT)))
        .route("/assets/dashboard.css", get(|| asset("text/css", STYLE)))
        .layer(axum::middleware::map_response(headers))
}

/// Every dashboard response: the CSP, no referrer to other sites, and pages never cached (they
/// show one account's data).
async fn headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // The assets change only with the binary; an hour spares reloads without going stale.
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=3600")], body)
}

/// A rendered page.
fn html(page: impl askama::Template) -> axum::response::Response {
    match page.render() {
        Ok(body) => axum::response::Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered")
                .into_response()
        }
    }
}

/// What the layout of every signed-in page needs.
pub struct Nav {
    /// The page shown, to mark its link.
    pub current: &'static str,
    /// The session's CSRF token, for the forms and the script.
    pub csrf: String,
}

impl Nav {
    fn new(current: &'static str, session: &session::Session) -> Self {
        Self { current, csrf: session.csrf.clone() }
    }
}
