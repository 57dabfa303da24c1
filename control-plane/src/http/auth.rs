//! `Authorization: Bearer` extractors: API keys of accounts, and the admin token.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use proto::ErrorKind;

/// The account whose API key authenticated the request.
pub struct Account(pub String);

/// Proof that the request carried the admin token.
pub struct Admin;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|k| !k.is_empty())
}

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or_else(|| {
            ApiError::new(
                ErrorKind::MissingApiKey,
                "send your API key as `Authorization: Bearer <key>`",
            )
        })?;
        match state.db.account_for_key(key).await? {
            Some(account) => Ok(Self(account)),
            None => Err(ApiError::new(ErrorKind::InvalidApiKey, "the API key is not valid")),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match (&state.config.admin_token, bearer(parts)) {
            (Some(expected), Some(given)) if expected == given => Ok(Self),
            (None, _) => Err(ApiError::new(
                ErrorKind::InvalidAdminToken,
                "admin endpoints are disabled (no ADMIN_TOKEN)",
            )),
            _ => Err(ApiError::new(
                ErrorKind::InvalidAdminToken,
                "the admin token is missing or wrong",
            )),
        }
    }
}
