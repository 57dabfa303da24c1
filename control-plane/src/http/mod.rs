//! The HTTP API: each module's router merged here, layers added in one place.

pub mod admin;
pub mod auth;
pub mod generations;
pub mod health;
pub mod history;
pub mod models;
pub mod openapi;
pub mod voices;

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::{middleware, Router};
use proto::ErrorKind;
use tower_http::trace::TraceLayer;

/// Biggest JSON body; the script limit is far smaller, this only bounds memory.
const MAX_JSON_BYTES: usize = 1024 * 1024;

/// The whole router with its layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(generations::router())
        .merge(voices::router(state.config.max_voice_bytes))
        .merge(history::router())
        .merge(models::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(openapi::router())
        .merge(crate::nodes::ws::router())
        .route("/metrics", axum::routing::get(crate::metrics::serve))
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(TraceLayer::new_for_http())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

/// `Json` whose rejections use the API's error envelope.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    let kind = match &rejection {
        JsonRejection::JsonDataError(_) => ErrorKind::InvalidParameter,
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::RequestTooLarge,
        _ => ErrorKind::InvalidJson,
    };
    ApiError::new(kind, rejection.body_text())
}

/// `Path` whose rejections (an id that is not a number, say) use the API's error envelope.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(ApiError::new(ErrorKind::InvalidParameter, rejection.body_text()))
            }
        }
    }
}
