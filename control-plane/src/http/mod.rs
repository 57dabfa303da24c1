//! The HTTP API: each module's router merged here, layers added in one place.

pub mod admin;
pub mod auth;
pub mod generations;
pub mod health;
pub mod history;
pub mod models;
pub mod openapi;
pub mod reference;
pub mod transcriptions;
pub mod voices;
mod waiting;

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
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
        .merge(transcriptions::router(state.config.max_voice_bytes))
        .merge(history::router())
        .merge(models::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(openapi::router())
        .merge(reference::router())
        .merge(crate::dashboard::router())
        .merge(crate::nodes::ws::router())
        // After every route: it applies to the method routers registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(TraceLayer::new_for_http())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let msg = format!("{method} is not allowed on {}; the Allow header lists what is", uri.path());
    ApiError::new(ErrorKind::MethodNotAllowed, msg)
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

/// `Query` whose rejections (a `limit` that is not a number, say) use the API's error envelope.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(ApiError::new(ErrorKind::InvalidParameter, rejection.body_text()))
            }
        }
    }
}

/// `Multipart` whose rejections (no boundary, another content type) use the API's error envelope.
pub struct ApiMultipart(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Multipart::from_request(req, state).await {
            Ok(form) => Ok(Self(form)),
            Err(rejection) => {
                Err(ApiError::new(ErrorKind::InvalidParameter, rejection.body_text()))
            }
        }
    }
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
