//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations.

use crate::state::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The public API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dia text-to-dialogue provider", description = "Voice generations with voice cloning, the voice library and request history."),
    paths(
        super::generations::create,
        super::models::list,
        super::voices::list, super::voices::upload, super::voices::fetch, super::voices::audio,
        super::voices::update, super::voices::remove,
        super::history::list, super::history::fetch, super::history::audio,
        super::admin::create_account, super::admin::create_key,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for name in ["api_key", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// Route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
