//! Admin endpoints (their own token): accounts and API keys.

use super::auth::Admin;
use super::{ApiJson, ApiPath};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use proto::ErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes under `/v1/admin`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/accounts", post(create_account))
        .route("/v1/admin/accounts/{id}/keys", post(create_key))
}

/// A new account.
#[derive(Deserialize, ToSchema)]
pub struct NewAccount {
    /// Display name.
    pub name: String,
}

/// A created key; the key itself is never shown again.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The account.
    pub account_id: String,
    /// The API key.
    pub api_key: String,
}

/// A fresh random API key.
pub(crate) fn new_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("dia_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Creates an account with a first API key.
#[utoipa::path(post, path = "/v1/admin/accounts", tag = "admin", operation_id = "create_account", request_body = NewAccount,
    responses((status = 201, body = CreatedKey), (status = 400, description = "invalid_json, invalid_parameter", body = ErrorBody)),
    security(("admin_token" = [])))]
pub async fn create_account(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let account_id = state.db.create_account(&body.name).await?;
    let api_key = new_key();
    state.db.add_api_key(&account_id, &api_key).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { account_id, api_key })))
}

/// Adds an API key to an account.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/keys", tag = "admin", operation_id = "create_api_key",
    params(("id" = String, Path, description = "The account id")),
    responses((status = 201, body = CreatedKey), (status = 404, description = "not_found", body = ErrorBody)),
    security(("admin_token" = [])))]
pub async fn create_key(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(account_id): ApiPath<String>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let api_key = new_key();
    if !state.db.add_api_key(&account_id, &api_key).await? {
        return Err(ApiError::new(ErrorKind::NotFound, format!("no account `{account_id}`")));
    }
    Ok((StatusCode::CREATED, Json(CreatedKey { account_id, api_key })))
}
