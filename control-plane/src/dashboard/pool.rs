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
    /// Its GPU's last readings, in a line.
    readings: Option<String>,
    seen_secs_ago: i64,
}

impl NodeView {
    fn new(node: PoolNode, now_ms: i64) -> Self {
        let gpu = match &node.gpu {
            Some(g) => format!("{}, {}", g.name, gib(g.memory_total_bytes)),
            None => format!("no GPU: {}", node.gpu_unavailable.as_deref().unwrap_or_default()),
        };
        let readings = node.gpu_readings.as_ref().map(|r| {
            let mut line = format!(
                "{} % busy, {} of {} used, {} °C",
                r.utilization_percent,
                gib(r.memory_used_bytes),
                gib(r.memory_total_bytes),
                r.temperature_celsius
            );
            if let Some(watts) = r.power_watts {
                line += &format!(", {watts:.0} W");
                if let Some(limit) = r.power_limit_watts {
                    line += &format!(" of {limit:.0}");
                }
            }
            if let Some(xid) = r.last_xid {
                line += &format!(", XID {xid}");
            }
            line
        });
        Self { gpu, readings, seen_secs_ago: (now_ms - node.last_seen) / 1000, node }
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
            unhealthy_reason: None,
            draining: false,
            gpu,
            gpu_unavailable: gpu_unavailable.map(Into::into),
            gpu_readings: None,
            last_seen: 0,
        }
    }

    #[test]
    fn each_node_shows_its_gpu_and_readings_or_why_it_has_none_and_why_it_is_unhealthy() {
        let h100 = GpuInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-5d2f1c3e".into(),
            memory_total_bytes: 85_520_809_984,
            driver_version: "550.54.15".into(),
            cuda_version: "12.4".into(),
        };
        let cpu = node("cpu-0", None, Some("no CUDA device: the node runs on the CPU"));
        let mut hot = node("gpu-0", Some(h100), None);
        hot.healthy = false;
        hot.unhealthy_reason = Some("GPU at 91 °C, its slowdown threshold is 90 °C".into());
        hot.gpu_readings = Some(proto::GpuReadings {
            utilization_percent: 97,
            memory_used_bytes: 1 << 31,
            memory_total_bytes: 85_520_809_984,
            temperature_celsius: 91,
            slowdown_temperature_celsius: Some(90),
            power_watts: Some(612.4),
            power_limit_watts: Some(700.0),
            ecc_uncorrected_errors: Some(0),
            xid_errors: 0,
            last_xid: None,
        });
        let page = Pool {
            nav: Nav { current: "pool", csrf: "t".into() },
            unlocked: true,
            admin_enabled: true,
            error: None,
            nodes: vec![NodeView::new(hot, 0), NodeView::new(cpu, 0)],
        };
        let html = page.render().unwrap();
        assert!(
            html.contains(
                "<td>NVIDIA H100 80GB HBM3, 79.6 GiB<div class=\"readings\">97 % busy, 2.0 GiB of \
                 79.6 GiB used, 91 °C, 612 W of 700</div></td>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<td>unhealthy: GPU at 91 °C, its slowdown threshold is 90 °C</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>no GPU: no CUDA device: the node runs on the CPU</td>"),
            "{html}"
        );
    }
}
