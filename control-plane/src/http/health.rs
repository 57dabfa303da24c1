//! Liveness and readiness probes.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(ready))
}

/// Ready when the store answers; nodes may join later, and they dial this same service.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
        }
    }
}
