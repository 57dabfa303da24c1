//! The Pool page (admin): the nodes online, their models and features, load and health. A
//! session shows the admin token once to open it.

use super::session::{CarriesCsrf, Genuine, Session};
use super::{html, Nav};
use crate::db::{now_ms, on_pool, Db};
use crate::error::ApiError;
use crate::http::auth::same_secret;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use proto::ModelInfo;
use serde::Deserialize;

#[derive(sqlx::FromRow)]
struct NodeRow {
    id: String,
    replica_id: String,
    models: String,
    capacity: i64,
    active: i64,
    healthy: bool,
    draining: bool,
    gpu: Option<String>,
    last_seen: i64,
}

struct NodeView {
    row: NodeRow,
    models: Vec<ModelInfo>,
    seen_secs_ago: i64,
}

impl Db {
    /// Nodes heard from within `fresh_ms`, on any replica.
    async fn pool_nodes(&self, fresh_ms: i64) -> Result<Vec<NodeRow>, sqlx::Error> {
        let sql =
            "SELECT id, replica_id, models, capacity, active, healthy, draining, gpu, last_seen
                   FROM nodes WHERE last_seen > $1 ORDER BY id";
        on_pool!(self, p => sqlx::query_as(sql).bind(now_ms() - fresh_ms).fetch_all(p).await)
    }
}

#[derive(Template)]
#[template(path = "dashboard/pool.html")]
struct Pool {
    nav: Nav,
    unlocked: bool,
    admin_enabled: bool,
    error: Option<&'static str>,
    nodes: Vec<NodeView>,
}

pub async fn page(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    render(&state, &session, None).await
}

async fn render(
    state: &AppState,
    session: &Session,
    error: Option<&'static str>,
) -> Result<Response, ApiError> {
    let nodes = if session.admin {
        let fresh = state.config.heartbeat_timeout().as_millis() as i64;
        let now = now_ms();
        state
            .db
            .pool_nodes(fresh)
            .await?
            .into_iter()
            .map(|row| NodeView {
                models: serde_json::from_str(&row.models).unwrap_or_default(),
                seen_secs_ago: (now - row.last_seen) / 1000,
                row,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(html(Pool {
        nav: Nav::new("pool", session),
        unlocked: session.admin,
        admin_enabled: state.config.admin_token.is_some(),
        error,
        nodes,
    }))
}

#[derive(Deserialize)]
pub struct UnlockForm {
    csrf: String,
    admin_token: String,
}

impl CarriesCsrf for UnlockForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn unlock(
    State(state): State<AppState>,
    Genuine { session, form }: Genuine<UnlockForm>,
) -> Result<Response, ApiError> {
    let expected = state.config.admin_token.as_deref();
    if !expected.is_some_and(|t| same_secret(&form.admin_token, t)) {
        let page = render(&state, &session, Some("That admin token is not valid.")).await?;
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    }
    state.db.unlock_admin(&session).await?;
    Ok(Redirect::to("/pool").into_response())
}
