//! Admin endpoints (their own token): accounts, API keys, node credentials, and the pool's nodes.

use super::auth::Admin;
use super::{ApiJson, ApiPath};
use crate::db::nodes::{NodeCredentialRow, PoolNode};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use proto::ErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes under `/v1/admin`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/accounts", post(create_account))
        .route("/v1/admin/accounts/{id}/keys", post(create_key))
        .route("/v1/admin/nodes", get(list_nodes))
        .route("/v1/admin/nodes/{node_id}/credentials", post(create_node_credential))
        .route("/v1/admin/node-credentials", get(list_node_credentials))
        .route("/v1/admin/node-credentials/{id}", delete(revoke_node_credential))
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

/// A created node credential; the token is never shown again.
#[derive(Serialize, ToSchema)]
pub struct CreatedNodeCredential {
    /// What is stored.
    #[serde(flatten)]
    pub credential: NodeCredentialRow,
    /// The token the node sends as `Authorization: Bearer` (`NODE_JOIN_TOKEN` of `dia-node`).
    pub token: String,
}

/// Every node credential.
#[derive(Serialize, ToSchema)]
pub struct NodeCredentialList {
    /// Newest first.
    pub data: Vec<NodeCredentialRow>,
}

/// The nodes online.
#[derive(Serialize, ToSchema)]
pub struct NodeList {
    /// By id.
    pub data: Vec<PoolNode>,
}

/// Lists the nodes online on every replica: models, load, health, and each one's GPU or why it
/// reports none.
#[utoipa::path(get, path = "/v1/admin/nodes", tag = "admin", operation_id = "list_nodes",
    responses((status = 200, body = NodeList)),
    security(("admin_token" = [])))]
pub async fn list_nodes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<NodeList>, ApiError> {
    let fresh = state.config.heartbeat_timeout().as_millis() as i64;
    Ok(Json(NodeList { data: state.db.pool_nodes(fresh).await? }))
}

/// The longest node id; ids are pod or host names.
const MAX_NODE_ID_CHARS: usize = 128;

/// Creates a credential with which a node, and only a node with this id, joins the pool.
#[utoipa::path(post, path = "/v1/admin/nodes/{node_id}/credentials", tag = "admin", operation_id = "create_node_credential",
    params(("node_id" = String, Path, description = "The node id the credential is bound to (letters, digits, `.`, `_`, `-`)")),
    responses((status = 201, body = CreatedNodeCredential), (status = 400, description = "invalid_parameter", body = ErrorBody)),
    security(("admin_token" = [])))]
pub async fn create_node_credential(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(node_id): ApiPath<String>,
) -> Result<(StatusCode, Json<CreatedNodeCredential>), ApiError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if node_id.is_empty() || node_id.len() > MAX_NODE_ID_CHARS || !node_id.chars().all(valid) {
        let msg = format!(
            "a node id is 1 to {MAX_NODE_ID_CHARS} letters, digits, `.`, `_` or `-`; got \"{node_id}\""
        );
        return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
    }
    let (credential, token) = state.db.create_node_credential(&node_id).await?;
    Ok((StatusCode::CREATED, Json(CreatedNodeCredential { credential, token })))
}

/// Lists the node credentials (never their tokens).
#[utoipa::path(get, path = "/v1/admin/node-credentials", tag = "admin", operation_id = "list_node_credentials",
    responses((status = 200, body = NodeCredentialList)),
    security(("admin_token" = [])))]
pub async fn list_node_credentials(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<NodeCredentialList>, ApiError> {
    Ok(Json(NodeCredentialList { data: state.db.node_credentials().await? }))
}

/// Revokes a node credential: it stops joining at once, and a node connected with it is dropped
/// within a heartbeat interval (its jobs fail over).
#[utoipa::path(delete, path = "/v1/admin/node-credentials/{id}", tag = "admin", operation_id = "revoke_node_credential",
    params(("id" = String, Path, description = "The credential id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "not_found", body = ErrorBody)),
    security(("admin_token" = [])))]
pub async fn revoke_node_credential(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.db.revoke_node_credential(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(ErrorKind::NotFound, format!("no live node credential `{id}`")))
    }
}
