//! The API-keys page: create (the key shown once), list, revoke.

use super::pages::CsrfForm;
use super::session::{CarriesCsrf, Genuine, Session};
use super::{html, Nav};
use crate::db::{on_pool, Db};
use crate::error::ApiError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// A key as listed: never the key itself.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_hash: String,
    prefix: Option<String>,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl Db {
    async fn list_keys(&self, account: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
        let sql = "SELECT key_hash, prefix, created_at, last_used_at FROM api_keys
                   WHERE account_id = $1 ORDER BY created_at, key_hash";
        on_pool!(self, p => sqlx::query_as(sql).bind(account).fetch_all(p).await)
    }

    /// Deletes a key of the account (its sessions go with it); false when it is not there.
    async fn revoke_key(&self, account: &str, key_hash: &str) -> Result<bool, sqlx::Error> {
        let sql = "DELETE FROM api_keys WHERE account_id = $1 AND key_hash = $2";
        let n = on_pool!(self, p => sqlx::query(sql).bind(account).bind(key_hash).execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}

#[derive(Template)]
#[template(path = "dashboard/keys.html")]
struct Keys {
    nav: Nav,
    keys: Vec<KeyRow>,
    created: Option<String>,
}

async fn render(
    state: &AppState,
    session: &Session,
    created: Option<String>,
) -> Result<Response, ApiError> {
    let keys = state.db.list_keys(&session.account).await?;
    Ok(html(Keys { nav: Nav::new("keys", session), keys, created }))
}

pub async fn page(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    render(&state, &session, None).await
}

/// Creates a key and shows it, this once.
pub async fn create(
    State(state): State<AppState>,
    Genuine { session, .. }: Genuine<CsrfForm>,
) -> Result<Response, ApiError> {
    let key = crate::http::admin::new_key();
    state.db.add_api_key(&session.account, &key).await?;
    render(&state, &session, Some(key)).await
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    key_hash: String,
}

impl CarriesCsrf for RevokeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    Genuine { session, form }: Genuine<RevokeForm>,
) -> Result<Response, ApiError> {
    if state.db.revoke_key(&session.account, &form.key_hash).await? {
        state.keys.forget(&form.key_hash);
    }
    // Revoking the key this session signed in with ends the session: the page then asks to sign in.
    Ok(Redirect::to("/keys").into_response())
}
