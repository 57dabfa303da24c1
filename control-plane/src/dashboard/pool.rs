//! The Pool page (admin): the nodes online, their models and features, load, health and GPU. A
//! session shows the admin token once to open it.

use super::session::{CarriesCsrf, Genuine, Session};
use super::{html, Nav};
use crate::db::nodes::PoolNode;
use crate::db::now_ms;
use crate::error::ApiError;
use crate::http::auth::same_secret;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

struct NodeView {
    node: PoolNode,
    /// Its GPU's name and memory, or why it has none.
    gpu: String,
    seen_secs_ago: i64,
}

impl NodeView {
    fn new(node: PoolNode, now_ms: i64) -> Self {
        let gpu = match &node.gpu {
            Some(g) => format!("{}, {}", g.name, gib(g.memory_total_bytes)),
            None => format!("no GPU: {}", node.gpu_unavailable.as_deref().unwrap_or_default()),
        };
        Self { gpu, seen_secs_ago: (now_ms - node.last_seen) / 1000, node }
    }
}

/// Bytes in GiB, one decimal: how GPU memory is usually quoted.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
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
        state.db.pool_nodes(fresh).await?.into_iter().map(|n| NodeView::new(n, now)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::GpuInfo;

    fn node(id: &str, gpu: Option<GpuInfo>, gpu_unavailable: Option<&str>) -> PoolNode {
        PoolNode {
            id: id.into(),
            replica_id: "r".into(),
            models: vec![],
            capacity: 1,
            active: 0,
            healthy: true,
            draining: false,
            gpu,
            gpu_unavailable: gpu_unavailable.map(Into::into),
            last_seen: 0,
        }
    }

    #[test]
    fn each_node_shows_its_gpu_or_why_it_has_none() {
        let h100 = GpuInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-5d2f1c3e".into(),
            memory_total_bytes: 85_520_809_984,
            driver_version: "550.54.15".into(),
            cuda_version: "12.4".into(),
        };
        let cpu = node("cpu-0", None, Some("no CUDA device: the node runs on the CPU"));
        let page = Pool {
            nav: Nav { current: "pool", csrf: "t".into() },
            unlocked: true,
            admin_enabled: true,
            error: None,
            nodes: vec![NodeView::new(node("gpu-0", Some(h100), None), 0), NodeView::new(cpu, 0)],
        };
        let html = page.render().unwrap();
        assert!(html.contains("<td>NVIDIA H100 80GB HBM3, 79.6 GiB</td>"), "{html}");
        assert!(
            html.contains("<td>no GPU: no CUDA device: the node runs on the CPU</td>"),
            "{html}"
        );
    }
}
