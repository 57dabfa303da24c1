//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations.

use crate::error::ErrorBody;
use crate::state::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The public API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dia text-to-dialogue provider", description = "Voice generations with voice cloning, transcriptions, the voice library and request history. Every error answers `{\"error\": {\"type\", \"message\"}}`."),
    paths(
        super::generations::create,
        super::transcriptions::create,
        super::models::list,
        super::voices::list, super::voices::upload, super::voices::fetch, super::voices::audio,
        super::voices::update, super::voices::remove,
        super::history::list, super::history::fetch, super::history::audio, super::history::cancel,
        super::admin::create_account, super::admin::create_key, super::admin::list_nodes,
        super::admin::create_node_credential, super::admin::list_node_credentials,
        super::admin::revoke_node_credential,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "generations", description = "Dialogue synthesis with optional voice cloning"),
        (name = "transcriptions", description = "Speech to text (OpenAI-compatible)"),
        (name = "models", description = "What the online pool offers"),
        (name = "voices", description = "The account's voice library"),
        (name = "history", description = "Every accepted request and its audio"),
        (name = "admin", description = "Accounts, API keys, node credentials and the pool's nodes (admin token)"),
    ),
    modifiers(&BearerAuth, &CommonErrors)
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

/// The errors any operation can answer, added here rather than repeated on every handler: 401
/// from its credentials and 500 from the store.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                add_common_errors(op);
            }
        }
    }
}

fn add_common_errors(op: &mut Operation) {
    let unauthorized = unauthorized_types(op);
    let responses = &mut op.responses.responses;
    if let Some(types) = unauthorized {
        responses.entry("401".into()).or_insert_with(|| error_response(types).into());
    }
    responses.entry("500".into()).or_insert_with(|| error_response("internal_error").into());
}

/// The error types of a 401 from the operation's security scheme, if it has one. utoipa keeps
/// a requirement's scheme private; serialised, each requirement is `{"<scheme>": []}`.
fn unauthorized_types(op: &Operation) -> Option<&'static str> {
    let security = serde_json::to_value(&op.security).unwrap_or_default();
    let uses = |scheme| security.as_array().into_iter().flatten().any(|r| r.get(scheme).is_some());
    if uses("admin_token") {
        Some("invalid_admin_token")
    } else if uses("api_key") {
        Some("missing_api_key, invalid_api_key")
    } else {
        None
    }
}

/// A response with the error envelope, listing the error types it may carry.
fn error_response(types: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(types)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(<ErrorBody as ToSchema>::name())))
                .build(),
        )
        .build()
}

/// Audio bytes, as documented for binary responses.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct AudioFile(pub Vec<u8>);

/// Route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
